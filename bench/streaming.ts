/**
 * Section 2 of the bench: one object of 1 MiB and one of 1 GiB streamed
 * through our worker, with the edge cache on and off, while workerd's memory
 * is sampled: a streaming worker's peak stays flat however large the object.
 *
 * @module
 */

import { MIB, ms, signed, table, type Target } from "./measure.ts";
import { memoryOf, ourUpload, resetPeak, startBenchB2, startWorker } from "./processes.ts";

const STREAM_SIZES = [MIB, 1024 * MIB];
const RSS_SAMPLE_MS = 20;
// Target (issue 5).
const STREAM_RSS_MARGIN_MIB = 32;

/** Section 2: one object streamed through the worker. */
export interface StreamRun {
  /** The worker's WORKER_CACHE_TTL. */
  cacheTtl: string;
  bytes: number;
  ttfbMs: number;
  mibPerSecond: number;
  /** Highest VmRSS of the workerd process seen while streaming, in MiB. */
  peakRssMiB: number | null;
  rssSamples: number;
}

/** Streams `url` as fast as it comes while sampling the RSS of `pid`. */
async function streamOnce(
  url: string,
  pid: number | undefined,
): Promise<Omit<StreamRun, "cacheTtl">> {
  const exact = pid !== undefined && resetPeak(pid);
  let peak = pid === undefined ? undefined : memoryOf(pid, "VmRSS");
  let samples = 0;
  const sample = () => {
    const rss = pid === undefined ? undefined : memoryOf(pid, "VmRSS");
    if (rss === undefined) return;
    samples++;
    peak = Math.max(peak ?? 0, rss);
  };
  const timer = setInterval(sample, RSS_SAMPLE_MS);
  try {
    const started = performance.now();
    const response = await fetch(url);
    if (!response.ok || !response.body) throw new Error(`${url} answered ${response.status}`);
    let ttfbMs = 0;
    let bytes = 0;
    for await (const chunk of response.body) {
      if (bytes === 0) ttfbMs = performance.now() - started;
      bytes += chunk.byteLength;
    }
    const seconds = (performance.now() - started) / 1000;
    sample();
    // VmHWM catches a peak between two samples.
    if (exact && pid !== undefined) peak = Math.max(peak ?? 0, memoryOf(pid, "VmHWM") ?? 0);
    return {
      bytes,
      ttfbMs,
      mibPerSecond: bytes / MIB / seconds,
      peakRssMiB: peak === undefined ? null : peak / MIB,
      rssSamples: samples,
    };
  } finally {
    clearInterval(timer);
  }
}

export async function benchStreaming(module: string): Promise<StreamRun[]> {
  await using stack = new AsyncDisposableStack();
  const b2 = startBenchB2([
    { name: "warm-up.bin", body: { size: MIB } },
    ...STREAM_SIZES.map((size) => ({ name: `${size}.bin`, body: { size } })),
  ]);
  stack.defer(() => b2.close());
  const runs: StreamRun[] = [];
  // As deployed (each answer also written to the edge cache), and with the cache off.
  for (const cacheTtl of ["86400", "0"]) {
    const worker = await startWorker(ourUpload(module, b2, { WORKER_CACHE_TTL: cacheTtl }));
    try {
      await streamOnce(`${worker.url}/warm-up.bin`, worker.pid);
      for (const size of STREAM_SIZES) {
        const run = await streamOnce(`${worker.url}/${size}.bin`, worker.pid);
        if (run.bytes !== size) throw new Error(`streamed ${run.bytes} of ${size} bytes`);
        runs.push({ cacheTtl, ...run });
      }
    } finally {
      await worker.dispose();
    }
  }
  return runs;
}

/** Judges section 2 against issue 5's target, for each cache TTL streamed. */
export function judgeStreaming(streaming: StreamRun[]): Target[] {
  return [...new Set(streaming.map((s) => s.cacheTtl))].map((cacheTtl) => {
    const name =
      `streaming (TTL ${cacheTtl}): 1 GiB peak within ${STREAM_RSS_MARGIN_MIB} MiB of 1 MiB`;
    const runs = streaming.filter((s) => s.cacheTtl === cacheTtl);
    const small = runs.find((s) => s.bytes === STREAM_SIZES[0]);
    const large = runs.find((s) => s.bytes === STREAM_SIZES[1]);
    if (small?.peakRssMiB == null || large?.peakRssMiB == null) {
      return {
        name,
        met: false,
        detail: "not measured: no /proc to read workerd's memory from",
      };
    }
    const growth = large.peakRssMiB - small.peakRssMiB;
    return {
      name,
      met: growth <= STREAM_RSS_MARGIN_MIB,
      detail: `${signed(growth, 1)} MiB (${
        (STREAM_RSS_MARGIN_MIB - growth).toFixed(1)
      } MiB to spare)`,
    };
  });
}

/** Section 2 as `deno task bench` prints it. */
export function formatStreaming(streaming: StreamRun[]): string[] {
  const size = (bytes: number) =>
    bytes >= 1024 * MIB ? `${bytes / 1024 / MIB} GiB` : `${bytes / MIB} MiB`;
  return [
    `2. Streaming through our worker (workerd RSS sampled every ${RSS_SAMPLE_MS} ms, plus VmHWM)`,
    table([
      ["object", "cache TTL", "TTFB", "MiB/s", "peak RSS"],
      ...streaming.map((s) => [
        size(s.bytes),
        s.cacheTtl,
        ms(s.ttfbMs),
        s.mibPerSecond.toFixed(0),
        s.peakRssMiB === null ? "n/a" : `${s.peakRssMiB.toFixed(1)} MiB`,
      ]),
    ]),
  ];
}
