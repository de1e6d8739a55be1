/**
 * Section 1 of the bench: what our worker adds to a visitor's request, a
 * 1 KiB object served uncached and from the edge cache, against the
 * pass-through worker (`pass_through_worker.ts`) doing the same, in
 * alternated rounds under load.
 *
 * @module
 */

import type { WorkerUpload } from "../main.ts";
import {
  CONNECTIONS,
  fetchOk,
  type LoadGenerator,
  type LoadRounds,
  loadRounds,
  medianRatio,
  ms,
  signed,
  summarizeCases,
  table,
  type Target,
  type Throughput,
  THROUGHPUT_COLUMNS,
  throughputRow,
} from "./measure.ts";
import {
  BENCH_BUCKET,
  cpuSeconds,
  type FakeB2,
  ourUpload,
  passThroughUpload,
  pinning,
  type RunningWorker,
  smallObject,
  startBenchB2,
  startWorker,
} from "./processes.ts";

const ROUND_SECONDS = 3;
// Rounds alternate the cases so that drift (JIT, CPU frequency, neighbours) hits each alike;
// ratios are taken within a round and the median across rounds.
const ROUNDS = 7;
// Target (issue 5).
const MIN_THROUGHPUT_RATIO = 0.95;

const CASES = ["floor", "uncached", "cacheHit", "cacheFloor"] as const;
type Case = typeof CASES[number];

/** Section 1: the cost of our worker against a pass-through one. */
export interface WorkerOverhead extends LoadRounds {
  /** Medians across rounds. */
  floor: Throughput;
  uncached: Throughput;
  cacheHit: Throughput;
  /** The pass-through worker serving its hits from the same edge cache. */
  cacheFloor: Throughput;
  /** Median across rounds of ours (uncached) / floor requests per second. */
  uncachedRatio: number;
  /** Median across rounds of cache hits / floor (uncached) requests per second. */
  cacheHitRatio: number;
  /** Median across rounds of our cache hits / the pass-through worker's cache hits. */
  cacheHitFloorRatio: number;
  /** Every round, for whoever wants the spread. */
  perRound: Record<Case, Throughput>[];
}

/** Starts the four workers, each on its own workerd, and the URL of the object on each. */
async function startCases(
  stack: AsyncDisposableStack,
  module: string,
  b2: FakeB2,
): Promise<Record<Case, { url: string; pid: number | undefined }>> {
  const start = async (upload: WorkerUpload) => {
    const worker = await startWorker(upload);
    stack.defer(() => worker.dispose());
    return worker;
  };
  // WORKER_CACHE_TTL 0 turns the edge cache off, so every request reaches the origin.
  const uncachedUpload = ourUpload(module, b2, { WORKER_CACHE_TTL: "0" });
  const uncached = await start(uncachedUpload);
  const cached = await start(ourUpload(module, b2, {}));
  const floor = await start(await passThroughUpload(b2.url, uncachedUpload, "off"));
  const cacheFloor = await start(await passThroughUpload(b2.url, uncachedUpload, "on"));
  const token = b2.issueDownloadToken(BENCH_BUCKET, "", 86_400);
  const direct = (worker: RunningWorker) => ({
    url: `${worker.url}/file/${BENCH_BUCKET}/1k.bin?Authorization=${token}`,
    pid: worker.pid,
  });
  return {
    floor: direct(floor),
    uncached: { url: `${uncached.url}/1k.bin`, pid: uncached.pid },
    cacheHit: { url: `${cached.url}/1k.bin`, pid: cached.pid },
    cacheFloor: direct(cacheFloor),
  };
}

/** The cache is written after the answer is sent (waitUntil): waits until a hit is a hit. */
async function untilCached(url: string, b2: FakeB2): Promise<void> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const before = b2.requests.length;
    await fetchOk(url);
    if (b2.requests.length === before) break;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

export async function benchWorkerOverhead(
  module: string,
  generator: LoadGenerator,
): Promise<WorkerOverhead> {
  await using stack = new AsyncDisposableStack();
  const { placement } = stack.use(await pinning());
  const b2 = startBenchB2([{ name: "1k.bin", body: smallObject() }]);
  stack.defer(() => b2.close());
  const targets = await startCases(stack, module, b2);
  for (const { url } of Object.values(targets)) await fetchOk(url);
  for (const { url } of [targets.cacheHit, targets.cacheFloor]) await untilCached(url, b2);
  const perRound = await loadRounds(generator, {
    cases: CASES,
    rounds: ROUNDS,
    seconds: ROUND_SECONDS,
    targets,
    origin: b2,
    cpuSeconds,
  });
  return {
    loadGenerator: generator.name,
    placement,
    connections: CONNECTIONS,
    rounds: ROUNDS,
    roundSeconds: ROUND_SECONDS,
    ...summarizeCases(perRound, CASES),
    uncachedRatio: medianRatio(perRound, { of: "uncached", to: "floor" }),
    cacheHitRatio: medianRatio(perRound, { of: "cacheHit", to: "floor" }),
    cacheHitFloorRatio: medianRatio(perRound, { of: "cacheHit", to: "cacheFloor" }),
    perRound,
  };
}

/** Judges section 1 against the targets of issue 5. */
export function judgeWorkerOverhead(w: WorkerOverhead): Target[] {
  const uncachedMargin = w.uncachedRatio - MIN_THROUGHPUT_RATIO;
  return [
    {
      name: `worker, uncached: >= ${MIN_THROUGHPUT_RATIO} x floor throughput`,
      met: uncachedMargin >= 0 && w.uncached.errors === 0,
      detail: `${w.uncachedRatio.toFixed(2)} x (${signed(uncachedMargin, 2)})`,
    },
    {
      name: `worker, cache hits: >= ${MIN_THROUGHPUT_RATIO} x the pass-through worker's hits`,
      met: w.cacheHitFloorRatio >= MIN_THROUGHPUT_RATIO && w.cacheHit.errors === 0,
      detail: `${w.cacheHitFloorRatio.toFixed(2)} x (${
        signed(w.cacheHitFloorRatio - MIN_THROUGHPUT_RATIO, 2)
      })`,
    },
    {
      name: "worker, cache hits faster than the floor's uncached",
      met: w.cacheHitRatio > 1 && w.cacheHit.originRequests === 0 && w.cacheHit.errors === 0,
      detail: `${w.cacheHitRatio.toFixed(2)} x floor req/s, p50 ${ms(w.cacheHit.p50Ms)} vs ${
        ms(w.floor.p50Ms)
      }; origin reached ${w.cacheHit.originRequests} times`,
    },
  ];
}

/** Section 1 as `deno task bench` prints it. */
export function formatWorkerOverhead(w: WorkerOverhead): string[] {
  return [
    `1. Worker overhead: 1 KiB object, ${w.connections} connections, ${w.rounds} alternated rounds of ${w.roundSeconds} s per case (medians)`,
    `   load: ${w.loadGenerator}; ${w.placement}`,
    table([
      THROUGHPUT_COLUMNS,
      throughputRow("pass-through worker (floor)", w.floor),
      throughputRow("ours, edge cache off (TTL 0)", w.uncached),
      throughputRow("pass-through + Cache API, hit", w.cacheFloor),
      throughputRow("ours, cache hit", w.cacheHit),
    ]),
    `  ours/floor: uncached ${w.uncachedRatio.toFixed(2)} x, cache hit ${
      w.cacheHitRatio.toFixed(2)
    } x; our hits / pass-through hits ${
      w.cacheHitFloorRatio.toFixed(2)
    } x (medians of per-round ratios)`,
  ];
}
