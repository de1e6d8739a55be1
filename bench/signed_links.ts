/**
 * Section 5 of the bench: what the signature check costs a request
 * (issue 11). One object served under load by a worker without protected
 * prefixes, through a signed link by one with them, and on a public path by
 * that same worker, in alternated rounds; and the check alone, repeated in
 * workerd by `check_probe_worker.ts`, apart from the HTTP hop whose noise
 * hides a few microseconds.
 *
 * @module
 */

import { stripTypeScriptTypes } from "node:module";
import { generateSigningKey, signLink, type WorkerUpload } from "../main.ts";
import {
  alternatedRounds,
  CONNECTIONS,
  fetchOk,
  type LoadGenerator,
  type LoadRounds,
  loadRounds,
  median,
  medianRatio,
  signed,
  summarizeCases,
  table,
  type Target,
  type Throughput,
  THROUGHPUT_COLUMNS,
  throughputRow,
} from "./measure.ts";
import {
  type FakeB2,
  ourUpload,
  pinning,
  preciseCpuSeconds,
  type RunningWorker,
  smallObject,
  startBenchB2,
  startWorker,
} from "./processes.ts";

// Shorter rounds than section 1 keep the section near 40 s; the CPU figures come from
// nanosecond counters, so a round of a few thousand requests is enough.
const SIGNED_ROUNDS = 5;
const SIGNED_ROUND_SECONDS = 2;
const SIGNED_PREFIX = "/members/";
/** The object behind the protected prefix; the same bytes lie at `/1k.bin`. */
const SIGNED_PATH = `${SIGNED_PREFIX}1k.bin`;
// The check runs before any cache lookup, so every request pays it with the cache on or off.
// Off, each request is a hop to the origin (about 480 µs of workerd CPU here, p99 near 60 ms);
// on, each is a hit in miniflare's simulated Cache API (about 600 µs, p99 near a second), a
// larger and noisier base that would hide a difference of a few microseconds.
const SIGNED_CACHE_TTL = "0";
// The probe's repetitions per request: enough CPU time (tens of ms) that scheduling noise
// is small against it, little enough that the whole probe takes a few seconds.
const CHECK_REPETITIONS = 5_000;
const CHECK_ROUNDS = 5;
// Targets. A signed link may cost a request
// under 50 µs of workerd CPU more than a public one: 0.5 % of the 10 ms of CPU a request gets on
// Workers' free plan, a tenth of what our worker spends on an uncached request here. A public
// path on a worker with protected prefixes only has its path compared, far below 10 µs: judged on
// the check alone (checkInWorkerd), since the HTTP rounds swing by more than that.
const MAX_SIGNED_EXTRA_CPU_US = 50;
const MAX_PUBLIC_WITH_PREFIXES_EXTRA_CPU_US = 10;

const CASES = ["public", "signed", "publicWithPrefixes"] as const;
type Case = typeof CASES[number];
/** How `check_probe_worker.ts` imports the worker; pointed at the upload's module to run it. */
const PROBE_WORKER_IMPORT = '"../worker_template.ts"';

/**
 * The signed-link work of one request (read the bindings, parse the URL,
 * check, set the browser headers) in workerd, repeated without HTTP around
 * it: workerd CPU µs per repetition, medians across rounds.
 */
export interface CheckCost {
  repetitions: number;
  rounds: number;
  /** No protected prefixes (the feature off), a public path. */
  publicUs: number;
  /** Prefixes on, a valid signed link. */
  signedUs: number;
  /** Prefixes on, a public path. */
  publicWithPrefixesUs: number;
  /** Median across rounds of signed minus public. */
  signedExtraUs: number;
  /** Median across rounds of publicWithPrefixes minus public. */
  publicWithPrefixesExtraUs: number;
}

/** Section 5: what the signature check costs a request (issue 11). */
export interface SignedLinkCost extends LoadRounds {
  /** The workers' WORKER_CACHE_TTL. */
  cacheTtl: string;
  /** Medians across rounds. A worker without protected prefixes, the object on its path. */
  public: Throughput;
  /** A worker protecting the path, the same object through a valid signed link. */
  signed: Throughput;
  /** That worker, the same bytes on a path it does not protect. */
  publicWithPrefixes: Throughput;
  /** Median across rounds of signed minus public workerd CPU per request, in µs. */
  signedExtraCpuUs: number | null;
  /** Median across rounds of publicWithPrefixes minus public workerd CPU per request, in µs. */
  publicWithPrefixesExtraCpuUs: number | null;
  /** Median across rounds of signed / public requests per second. */
  signedRatio: number;
  /** Median across rounds of publicWithPrefixes / public requests per second. */
  publicWithPrefixesRatio: number;
  /** The signed-link work alone, repeated in workerd; null without /proc. */
  check: CheckCost | null;
  perRound: Record<Case, Throughput>[];
}

// ---------------------------------------------------------------------------
// The check alone
// ---------------------------------------------------------------------------

/** `check_probe_worker.ts` in workerd in front of the worker's own module, as uploaded. */
async function startProbe(upload: WorkerUpload): Promise<RunningWorker> {
  const probe = await Deno.readTextFile(new URL("check_probe_worker.ts", import.meta.url));
  if (!probe.includes(PROBE_WORKER_IMPORT)) {
    throw new Error(`check_probe_worker.ts no longer imports ${PROBE_WORKER_IMPORT}`);
  }
  const contents = stripTypeScriptTypes(probe, { mode: "transform" })
    .replace(PROBE_WORKER_IMPORT, JSON.stringify(`./${upload.metadata.main_module}`));
  return await startWorker(upload, { wrapper: { path: "check_probe_worker.js", contents } });
}

/** What has the probe repeat one case `count` times: workerd CPU µs per repetition. */
async function probeRunner(
  probe: RunningWorker,
  key: string,
): Promise<(name: Case, count: number) => Promise<number>> {
  const now = Math.floor(Date.now() / 1000);
  const link = await signLink("https://cdn.example.com", SIGNED_PATH, {
    key,
    expires: now + 3600,
  });
  const cases = {
    signed: { url: link.url, off: false, access: "signed" },
    publicWithPrefixes: { url: "https://cdn.example.com/1k.bin", off: false, access: "public" },
    public: { url: "https://cdn.example.com/1k.bin", off: true, access: "public" },
  };
  return async (name, count) => {
    const { url, off, access } = cases[name];
    const query = new URLSearchParams({ n: String(count), url });
    if (off) query.set("off", "");
    const cpuBefore = preciseCpuSeconds(probe.pid);
    const response = await fetch(`${probe.url}/?${query}`);
    const answer = await response.text();
    const cpu = (preciseCpuSeconds(probe.pid) ?? NaN) - (cpuBefore ?? NaN);
    // A refusal or a wrong reading would make the figure meaningless.
    if (answer !== access) throw new Error(`check probe: ${name} answered "${answer}"`);
    return cpu * 1e6 / count;
  };
}

/**
 * The signed-link work of one request in workerd, apart from HTTP:
 * `check_probe_worker.ts` repeats it CHECK_REPETITIONS times per request,
 * in front of the worker's own module, and workerd's CPU time per repetition is
 * taken, in alternated rounds, for a signed link, a public path with
 * prefixes on, and the same public path with the feature off.
 */
async function checkInWorkerd(upload: WorkerUpload, key: string): Promise<CheckCost | null> {
  const probe = await startProbe(upload);
  try {
    const run = await probeRunner(probe, key);
    for (const name of ["signed", "publicWithPrefixes", "public"] as const) {
      await run(name, CHECK_REPETITIONS / 10);
    }
    const perRound = await alternatedRounds(
      { cases: CASES, rounds: CHECK_ROUNDS },
      (name) => run(name, CHECK_REPETITIONS),
    );
    if (perRound.some((r) => Object.values(r).some(Number.isNaN))) return null;
    return {
      repetitions: CHECK_REPETITIONS,
      rounds: CHECK_ROUNDS,
      publicUs: median(perRound.map((r) => r.public)),
      signedUs: median(perRound.map((r) => r.signed)),
      publicWithPrefixesUs: median(perRound.map((r) => r.publicWithPrefixes)),
      signedExtraUs: median(perRound.map((r) => r.signed - r.public)),
      publicWithPrefixesExtraUs: median(perRound.map((r) => r.publicWithPrefixes - r.public)),
    };
  } finally {
    await probe.dispose();
  }
}

// ---------------------------------------------------------------------------
// Under load
// ---------------------------------------------------------------------------

/**
 * The two workers, each on its own workerd, and each case's URL on them;
 * the check alone measured in between, as it always was.
 */
async function startCases(
  stack: AsyncDisposableStack,
  module: string,
  b2: FakeB2,
): Promise<{
  targets: Record<Case, { url: string; pid: number | undefined }>;
  check: CheckCost | null;
  /** The protected path without a signature. */
  unsigned: string;
}> {
  const key = generateSigningKey();
  const off = await startWorker(ourUpload(module, b2, { WORKER_CACHE_TTL: SIGNED_CACHE_TTL }));
  stack.defer(() => off.dispose());
  const onUpload = ourUpload(module, b2, {
    WORKER_CACHE_TTL: SIGNED_CACHE_TTL,
    WORKER_SIGNED_PREFIXES: SIGNED_PREFIX,
    WORKER_SIGNING_KEY: key,
  });
  const check = await checkInWorkerd(onUpload, key);
  const on = await startWorker(onUpload);
  stack.defer(() => on.dispose());
  // Each round is seconds long; an hour outlives the run and stays within WORKER_SIGNED_MAX_TTL.
  const link = await signLink(on.url, SIGNED_PATH, {
    key,
    expires: new Date(Date.now() + 3600_000),
  });
  const targets = {
    public: { url: `${off.url}${SIGNED_PATH}`, pid: off.pid },
    signed: { url: link.url, pid: on.pid },
    publicWithPrefixes: { url: `${on.url}/1k.bin`, pid: on.pid },
  };
  return { targets, check, unsigned: `${on.url}${SIGNED_PATH}` };
}

/**
 * What the signature check adds to a request: one object served by a worker
 * without protected prefixes, through a signed link by one with them, and on
 * a public path by that same worker, in alternated rounds.
 */
export async function benchSignedLinks(
  module: string,
  generator: LoadGenerator,
): Promise<SignedLinkCost> {
  await using stack = new AsyncDisposableStack();
  const { placement } = stack.use(await pinning());
  const body = smallObject();
  const b2 = startBenchB2([{ name: "1k.bin", body }, { name: SIGNED_PATH.slice(1), body }]);
  stack.defer(() => b2.close());
  const { targets, check, unsigned: unsignedUrl } = await startCases(stack, module, b2);
  // Measuring a refusal would flatter the check: the protected path must refuse without the
  // signature and serve with it, the same bytes as the public one.
  const unsigned = await fetch(unsignedUrl);
  await unsigned.arrayBuffer();
  if (unsigned.status !== 403) {
    throw new Error(`${SIGNED_PATH} without a signature answered ${unsigned.status}, not 403`);
  }
  for (const { url } of Object.values(targets)) await fetchOk(url);
  const perRound = await loadRounds(generator, {
    cases: CASES,
    rounds: SIGNED_ROUNDS,
    seconds: SIGNED_ROUND_SECONDS,
    targets,
    origin: b2,
    cpuSeconds: preciseCpuSeconds,
  });
  return signedLinkCost(perRound, { loadGenerator: generator.name, placement, check });
}

/** Medians across rounds of each case and of the per-round differences to the public case. */
export function signedLinkCost(
  perRound: SignedLinkCost["perRound"],
  context: Pick<SignedLinkCost, "loadGenerator" | "placement" | "check">,
): SignedLinkCost {
  const extraCpu = (name: "signed" | "publicWithPrefixes") =>
    perRound.every((r) => r[name].workerdCpuUs !== null && r.public.workerdCpuUs !== null)
      ? median(perRound.map((r) => r[name].workerdCpuUs! - r.public.workerdCpuUs!))
      : null;
  return {
    ...context,
    connections: CONNECTIONS,
    rounds: perRound.length,
    roundSeconds: SIGNED_ROUND_SECONDS,
    cacheTtl: SIGNED_CACHE_TTL,
    ...summarizeCases(perRound, CASES),
    signedExtraCpuUs: extraCpu("signed"),
    publicWithPrefixesExtraCpuUs: extraCpu("publicWithPrefixes"),
    signedRatio: medianRatio(perRound, { of: "signed", to: "public" }),
    publicWithPrefixesRatio: medianRatio(perRound, { of: "publicWithPrefixes", to: "public" }),
    perRound,
  };
}

// ---------------------------------------------------------------------------
// Targets and the report
// ---------------------------------------------------------------------------

/**
 * Judges the signed-link section against the targets of issue 11: a signed
 * link end to end (the HTTP rounds) and the check alone in workerd, and a
 * public path with prefixes on on the check alone, since the HTTP rounds
 * swing by more than the few microseconds that one can cost.
 */
export function judgeSignedLinks(s: SignedLinkCost): Target[] {
  const errors = s.public.errors + s.signed.errors + s.publicWithPrefixes.errors;
  const judged = (name: string, extra: number | null | undefined, max: number): Target => ({
    name,
    met: extra != null && extra < max && errors === 0,
    detail:
      (extra == null
        ? "not measured: no /proc to read workerd's CPU time from"
        : `${signed(extra, 1)} µs (${signed(max - extra, 1)} µs to spare)`) +
      (errors > 0 ? `; ${errors} failed requests in the HTTP rounds` : ""),
  });
  return [
    judged(
      `signed links: a signed link adds < ${MAX_SIGNED_EXTRA_CPU_US} µs workerd CPU/request`,
      s.signedExtraCpuUs,
      MAX_SIGNED_EXTRA_CPU_US,
    ),
    judged(
      `signed links: the check alone adds < ${MAX_SIGNED_EXTRA_CPU_US} µs`,
      s.check?.signedExtraUs,
      MAX_SIGNED_EXTRA_CPU_US,
    ),
    judged(
      `signed links: a public path with prefixes on adds < ${MAX_PUBLIC_WITH_PREFIXES_EXTRA_CPU_US} µs (check alone)`,
      s.check?.publicWithPrefixesExtraUs,
      MAX_PUBLIC_WITH_PREFIXES_EXTRA_CPU_US,
    ),
  ];
}

/** Section 5 as `deno task bench` prints it, numbered `number`. */
export function formatSignedLinks(s: SignedLinkCost, number = 5): string[] {
  const extra = (us: number | null, ratio: number) =>
    `${us === null ? "n/a" : `${signed(us, 1)} µs`} CPU/req, ${ratio.toFixed(2)} x req/s`;
  return [
    `${number}. Signed links: 1 KiB object, WORKER_CACHE_TTL=${s.cacheTtl}, ${s.connections} connections, ${s.rounds} alternated rounds of ${s.roundSeconds} s per case (medians)`,
    `   load: ${s.loadGenerator}; ${s.placement}`,
    table([
      THROUGHPUT_COLUMNS,
      throughputRow("no protected prefixes, public path", s.public),
      throughputRow("prefixes on, signed link", s.signed),
      throughputRow("prefixes on, public path", s.publicWithPrefixes),
    ]),
    `  vs no prefixes: signed link ${extra(s.signedExtraCpuUs, s.signedRatio)}; public path ${
      extra(s.publicWithPrefixesExtraCpuUs, s.publicWithPrefixesRatio)
    } (medians of per-round differences)`,
    s.check === null
      ? "  the check alone in workerd: not measured (no /proc)"
      : `  the check alone in workerd (${s.check.rounds} rounds of ${s.check.repetitions} repetitions): ${
        s.check.publicUs.toFixed(1)
      } µs feature off, ${s.check.signedUs.toFixed(1)} µs signed (${
        signed(s.check.signedExtraUs, 1)
      }), ${s.check.publicWithPrefixesUs.toFixed(1)} µs public with prefixes (${
        signed(s.check.publicWithPrefixesExtraUs, 1)
      })`,
  ];
}
