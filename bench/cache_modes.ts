/**
 * Section 6 of the bench: how often each edge cache mode (Workers Cache, the
 * Cache API, off) runs the worker and asks B2 over one deterministic mixed
 * workload, with a token rotation halfway, on the Workers Cache stand-in's
 * clock; and why Workers Cache ran the worker each time it did (issue 8).
 *
 * @module
 */

import { parseConfig } from "../main.ts";
import { startWorkersCache } from "../local/workers_cache.ts";
import { seededRandom, table, type Target } from "./measure.ts";
import { ourUpload, startBenchB2 } from "./processes.ts";

/** The cache modes compared, in the order they are run and printed. */
export const CACHE_MODES = ["workers-cache", "cache-api", "off"] as const;
/** One of {@linkcode CACHE_MODES}. */
export type CacheModeName = typeof CACHE_MODES[number];

/** One object of the workload's bucket. */
export interface WorkloadObject {
  /** The public path, `/assets/o-007.bin`; the B2 name without the leading `/`. */
  path: string;
  bytes: number;
}

/** What one visitor asks. */
export interface WorkloadRequest {
  /** Seconds since the workload began, on the stand-in's clock. */
  at: number;
  kind: "get" | "head" | "range" | "query" | "conditional";
  method: "GET" | "HEAD";
  /** Path and query as sent. */
  url: string;
  /** The object asked for. */
  object: string;
  /** `bytes=a-b` for a range. */
  range?: string;
}

/** A deterministic mixed workload: see {@linkcode cacheWorkload}. */
export interface CacheWorkload {
  seed: number;
  objects: WorkloadObject[];
  requests: WorkloadRequest[];
  /** The redeploy with a new download token happens before this request. */
  rotateAt: number;
  /** Seconds the workload spans on the stand-in's clock. */
  seconds: number;
  zipfExponent: number;
}

/** How {@linkcode cacheWorkload} shapes the workload. */
export interface CacheWorkloadOptions {
  /** @default 8 */
  seed?: number;
  /** @default 3000 */
  requests?: number;
  /** @default 300 */
  objects?: number;
  /** Popularity of rank r is proportional to r^-s. @default 1.1 */
  zipfExponent?: number;
  /** @default 172800 (two days: every object cached early expires once) */
  seconds?: number;
}

// Workload of section 6. Two days of traffic against the default WORKER_CACHE_TTL of one day
// makes entries expire during the run; a Zipf exponent near 1 is what web object popularity
// is commonly fitted with, so a few objects take most requests and half are asked once.
const WORKLOAD_SEED = 8;
const WORKLOAD_REQUESTS = 3000;
const WORKLOAD_OBJECTS = 300;
const WORKLOAD_ZIPF = 1.1;
const WORKLOAD_SECONDS = 2 * 86_400;
const WORKLOAD_MIN_BYTES = 512;
const WORKLOAD_MAX_BYTES = 64 * 1024;
/** What each kind of request is, in cumulative shares: the rest are plain GETs. */
const WORKLOAD_MIX: [WorkloadRequest["kind"], number][] = [
  ["head", 0.1],
  ["range", 0.22],
  ["query", 0.32],
  ["conditional", 0.44],
];
const QUERY_VARIANTS = [
  "?utm_source=newsletter",
  "?utm_source=x",
  "?utm_source=mastodon",
  "?v=2",
  "?fbclid=IwAR0bench",
];
/**
 * cf-cache-status values that mean an entry had expired
 * (https://developers.cloudflare.com/cache/concepts/cache-responses/).
 */
const EXPIRY_STATUSES = new Set(["EXPIRED", "UPDATING", "REVALIDATED", "STALE"]);

/**
 * The mixed workload of section 6, the same for a given seed: objects of
 * Zipf-like popularity, plain GETs, HEADs, ranges, query variants of public
 * paths, and browsers' conditional requests (only for objects asked before,
 * whose ETag a browser would hold), spread evenly over `seconds`, with a
 * token rotation halfway.
 */
export function cacheWorkload(options: CacheWorkloadOptions = {}): CacheWorkload {
  const {
    seed = WORKLOAD_SEED,
    requests: count = WORKLOAD_REQUESTS,
    objects: objectCount = WORKLOAD_OBJECTS,
    zipfExponent = WORKLOAD_ZIPF,
    seconds = WORKLOAD_SECONDS,
  } = options;
  const random = seededRandom(seed);
  const digits = String(objectCount).length;
  const objects = Array.from({ length: objectCount }, (_, i) => ({
    path: `/assets/o-${String(i + 1).padStart(digits, "0")}.bin`,
    // Log-uniform sizes: many small objects, few large ones.
    bytes: Math.round(
      WORKLOAD_MIN_BYTES * (WORKLOAD_MAX_BYTES / WORKLOAD_MIN_BYTES) ** random(),
    ),
  }));
  const cumulative: number[] = [];
  let total = 0;
  for (let rank = 1; rank <= objectCount; rank++) {
    total += rank ** -zipfExponent;
    cumulative.push(total);
  }
  const pick = (): WorkloadObject => {
    const target = random() * total;
    let low = 0;
    let high = objectCount - 1;
    while (low < high) {
      const middle = (low + high) >> 1;
      if (cumulative[middle]! < target) low = middle + 1;
      else high = middle;
    }
    return objects[low]!;
  };
  const asked = new Set<string>();
  const requests: WorkloadRequest[] = [];
  for (let i = 0; i < count; i++) {
    const object = pick();
    const roll = random();
    let kind = WORKLOAD_MIX.find(([, upTo]) => roll < upTo)?.[0] ?? "get";
    // A browser revalidates only what it holds.
    if (kind === "conditional" && !asked.has(object.path)) kind = "get";
    const at = Math.round(i * seconds / count);
    const base = { at, kind, object: object.path };
    if (kind === "head") requests.push({ ...base, method: "HEAD", url: object.path });
    else if (kind === "query") {
      const variant = QUERY_VARIANTS[Math.floor(random() * QUERY_VARIANTS.length)]!;
      requests.push({ ...base, method: "GET", url: object.path + variant });
    } else if (kind === "range") {
      const start = Math.floor(random() * object.bytes);
      const end = Math.min(object.bytes - 1, start + Math.floor(random() * 16384));
      requests.push({ ...base, method: "GET", url: object.path, range: `bytes=${start}-${end}` });
    } else requests.push({ ...base, method: "GET", url: object.path });
    asked.add(object.path);
  }
  return { seed, objects, requests, rotateAt: Math.floor(count / 2), seconds, zipfExponent };
}

/** What one workload request cost, as measured. */
export interface RequestRecord {
  /** HTTP status of each answer the visitor got: one, or a 301 and the followed answer. */
  statuses: number[];
  /** `cf-cache-status` of each answer; `none` when absent. */
  cacheStatuses: string[];
  /** Worker runs it caused, background revalidations included. */
  workerRuns: number;
  b2Gets: number;
  b2Heads: number;
}

/** Why Workers Cache ran the worker, counted over a run (see {@linkcode explainWorkerRuns}). */
export interface WorkerRunCauses {
  /** Requests for a cache key (path and query) not asked before. */
  first: number;
  /** Answers marked EXPIRED, UPDATING, REVALIDATED or STALE. */
  expiry: number;
  /** Browsers' own conditional requests: the stand-in assumes the cache passes them on. */
  conditional: number;
  /** Runs none of these explain. */
  other: number;
  /** B2 fetches in requests with none of these causes. */
  otherB2: number;
  /** Requests answered HIT on every hop that still ran the worker. */
  hitsThatRan: number;
  /** Of `other`, those after the token rotation. */
  otherAfterRotation: number;
}

/** One cache mode's figures over the workload. */
export interface CacheModeRun {
  mode: CacheModeName;
  requests: number;
  /** HTTP answers, 301s followed included. */
  answers: number;
  workerRuns: number;
  b2Gets: number;
  b2Heads: number;
  /** Requests answered without B2 being asked (background revalidation included). */
  hits: number;
  /** B2 fetches after the rotation for objects fetched whole before it. */
  b2AfterRotationForCached: number;
  /** Answers that were not 200, 206, 301 or 304. */
  errors: number;
  /** Answers by `cf-cache-status`. */
  cacheStatuses: Record<string, number>;
  causes: WorkerRunCauses;
  seconds: number;
}

/** Section 6: the cache modes side by side. */
export interface CacheModesReport {
  workload: Omit<CacheWorkload, "requests" | "objects"> & {
    requests: number;
    objects: number;
    /** Requests by kind. */
    kinds: Record<string, number>;
    /** Distinct Workers Cache keys (path and query) the workload touches. */
    keys: number;
  };
  cacheTtl: number;
  runs: CacheModeRun[];
}

/** The Workers Cache keys a request touches: its URL, and the path a 301 sends it to. */
function keysOf(request: WorkloadRequest, record: RequestRecord): string[] {
  return record.statuses[0] === 301 ? [request.url, request.object] : [request.url];
}

/**
 * Sorts the worker runs of a Workers Cache run by cause: a key asked for the
 * first time (a conditional request does not fill the cache, so it does not
 * count as the key's first), an expired entry, a browser's conditional
 * request; whatever is left is `other`, which the target wants at 0.
 */
export function explainWorkerRuns(
  workload: Pick<CacheWorkload, "requests" | "rotateAt">,
  records: RequestRecord[],
): WorkerRunCauses {
  const seen = new Set<string>();
  const causes: WorkerRunCauses = {
    first: 0,
    expiry: 0,
    conditional: 0,
    other: 0,
    otherB2: 0,
    hitsThatRan: 0,
    otherAfterRotation: 0,
  };
  records.forEach((record, i) => {
    const request = workload.requests[i]!;
    const conditional = request.kind === "conditional" ? 1 : 0;
    const fresh = conditional ? 0 : keysOf(request, record).filter((key) => !seen.has(key)).length;
    if (!conditional) { for (const key of keysOf(request, record)) seen.add(key); }
    const expired = record.cacheStatuses.filter((s) => EXPIRY_STATUSES.has(s)).length;
    const allowed = fresh + expired + conditional;
    const first = Math.min(fresh, record.workerRuns);
    const expiry = Math.min(expired, record.workerRuns - first);
    const cond = Math.min(conditional, record.workerRuns - first - expiry);
    const other = record.workerRuns - first - expiry - cond;
    causes.first += first;
    causes.expiry += expiry;
    causes.conditional += cond;
    causes.other += other;
    if (i >= workload.rotateAt) causes.otherAfterRotation += other;
    if (allowed === 0) causes.otherB2 += record.b2Gets + record.b2Heads;
    if (record.workerRuns > 0 && record.cacheStatuses.every((s) => s === "HIT")) {
      causes.hitsThatRan++;
    }
  });
  return causes;
}

/** Adds up one mode's records into its figures. */
export function countCacheRun(
  mode: CacheModeName,
  workload: Pick<CacheWorkload, "requests" | "rotateAt">,
  records: RequestRecord[],
  seconds = 0,
): CacheModeRun {
  const sum = (pick: (r: RequestRecord) => number) => records.reduce((n, r) => n + pick(r), 0);
  const cacheStatuses: Record<string, number> = {};
  for (const status of records.flatMap((r) => r.cacheStatuses)) {
    cacheStatuses[status] = (cacheStatuses[status] ?? 0) + 1;
  }
  // Objects fetched whole from B2 (a GET other than a range) before the rotation.
  const cached = new Set<string>();
  let b2AfterRotationForCached = 0;
  records.forEach((record, i) => {
    const request = workload.requests[i]!;
    if (i < workload.rotateAt) {
      if (record.b2Gets > 0 && request.kind !== "range") cached.add(request.object);
    } else if (cached.has(request.object) && request.kind !== "conditional") {
      const expired = record.cacheStatuses.some((s) => EXPIRY_STATUSES.has(s));
      if (!expired) b2AfterRotationForCached += record.b2Gets + record.b2Heads;
    }
  });
  return {
    mode,
    requests: records.length,
    answers: sum((r) => r.statuses.length),
    workerRuns: sum((r) => r.workerRuns),
    b2Gets: sum((r) => r.b2Gets),
    b2Heads: sum((r) => r.b2Heads),
    hits: records.filter((r) => r.b2Gets + r.b2Heads === 0).length,
    b2AfterRotationForCached,
    errors: records.flatMap((r) => r.statuses).filter((s) => ![200, 206, 301, 304].includes(s))
      .length,
    cacheStatuses,
    causes: explainWorkerRuns(workload, records),
    seconds,
  };
}

/** Requests by kind and the distinct Workers Cache keys of a workload, for the report. */
export function describeWorkload(workload: CacheWorkload): CacheModesReport["workload"] {
  const kinds: Record<string, number> = {};
  const keys = new Set<string>();
  for (const request of workload.requests) {
    kinds[request.kind] = (kinds[request.kind] ?? 0) + 1;
    keys.add(request.url).add(request.object);
  }
  return {
    seed: workload.seed,
    rotateAt: workload.rotateAt,
    seconds: workload.seconds,
    zipfExponent: workload.zipfExponent,
    requests: workload.requests.length,
    objects: workload.objects.length,
    kinds,
    keys: keys.size,
  };
}

/** Sends one workload request as a browser would (following a 301) and records its cost. */
async function sendWorkloadRequest(
  request: WorkloadRequest,
  target: { url: string; client: Deno.HttpClient; etags: Map<string, string> },
): Promise<Pick<RequestRecord, "statuses" | "cacheStatuses">> {
  const statuses: number[] = [];
  const cacheStatuses: string[] = [];
  let url = request.url;
  for (let hop = 0; hop < 2; hop++) {
    const headers = new Headers();
    if (request.range) headers.set("Range", request.range);
    const etag = target.etags.get(request.object);
    if (request.kind === "conditional" && etag) headers.set("If-None-Match", etag);
    const response = await fetch(`${target.url}${url}`, {
      method: request.method,
      headers,
      redirect: "manual",
      client: target.client,
    });
    await response.arrayBuffer();
    statuses.push(response.status);
    cacheStatuses.push(response.headers.get("cf-cache-status") ?? "none");
    const answered = response.headers.get("etag");
    if (answered && (response.status === 200 || response.status === 206)) {
      target.etags.set(request.object, answered);
    }
    const location = response.headers.get("location");
    if (response.status !== 301 || location === null) break;
    url = new URL(location, `${target.url}${url}`).pathname;
  }
  return { statuses, cacheStatuses };
}

/**
 * Runs the workload against one cache mode: the worker in workerd behind the
 * Workers Cache stand-in (which passes every request on when the upload's
 * cache_options say disabled, as Cloudflare does), on the stand-in's clock,
 * one request at a time so that each worker run and B2 fetch is the request's
 * own; redeployed with a new download token at `rotateAt`.
 */
async function runCacheMode(
  module: string,
  mode: CacheModeName,
  workload: CacheWorkload,
): Promise<CacheModeRun> {
  const started = performance.now();
  await using stack = new AsyncDisposableStack();
  const b2 = startBenchB2(
    workload.objects.map((o) => ({ name: o.path.slice(1), body: { size: o.bytes } })),
  );
  stack.defer(() => b2.close());
  let at = 0;
  const epoch = Date.now();
  const cache = await startWorkersCache({ now: () => epoch + at * 1000 });
  stack.defer(() => cache.close());
  await cache.deploy(ourUpload(module, b2, { WORKER_CACHE_MODE: mode }));
  const client = stack.use(Deno.createHttpClient({}));
  const etags = new Map<string, string>();
  const records: RequestRecord[] = [];
  for (const [i, request] of workload.requests.entries()) {
    if (i === workload.rotateAt) {
      await cache.deploy(ourUpload(module, b2, { WORKER_CACHE_MODE: mode }));
    }
    at = request.at;
    const runsBefore = cache.stats.workerRuns;
    const b2Before = b2.requests.length;
    const answer = await sendWorkloadRequest(request, { url: cache.url, client, etags });
    // A background revalidation is the cost of the request that started it.
    await cache.idle();
    const asked = b2.requests.slice(b2Before);
    records.push({
      ...answer,
      workerRuns: cache.stats.workerRuns - runsBefore,
      b2Gets: asked.filter((r) => r.method === "GET").length,
      b2Heads: asked.filter((r) => r.method === "HEAD").length,
    });
  }
  return countCacheRun(mode, workload, records, (performance.now() - started) / 1000);
}

/** Section 6: the same workload through each cache mode. */
export async function benchCacheModes(
  module: string,
  log: (line: string) => void = () => {},
): Promise<CacheModesReport> {
  const workload = cacheWorkload();
  const runs: CacheModeRun[] = [];
  for (const mode of CACHE_MODES) {
    log(`   ${mode}...`);
    runs.push(await runCacheMode(module, mode, workload));
  }
  return {
    workload: describeWorkload(workload),
    cacheTtl: parseConfig({}).worker.cacheTtl,
    runs,
  };
}

/**
 * Judges section 6 against issue 8's target: with Workers Cache the worker
 * runs, and B2 is asked, only for first requests, expiries and (as the
 * stand-in assumes, the worst case) browsers' conditional requests; never
 * because of the rotation; and no hit runs the worker.
 */
export function judgeCacheModes(report: CacheModesReport): Target[] {
  const run = report.runs.find((r) => r.mode === "workers-cache");
  if (!run) {
    return [{ name: "cache modes: Workers Cache", met: false, detail: "not measured" }];
  }
  const c = run.causes;
  const errors = run.errors > 0 ? `; ${run.errors} answers failed` : "";
  return [
    {
      name: "cache modes: Workers Cache runs the worker only for first requests and expiries",
      met: c.other === 0 && run.errors === 0,
      detail: `${c.first} first, ${c.expiry} expiries, ${c.conditional} browsers' conditional ` +
        `requests (passed on, as the stand-in assumes), ${c.other} other${errors}`,
    },
    {
      name: "cache modes: Workers Cache asks B2 nothing because of the token rotation",
      met: c.otherAfterRotation === 0 && c.otherB2 === 0 && run.b2AfterRotationForCached === 0 &&
        run.errors === 0,
      detail: `${run.b2AfterRotationForCached} B2 fetches after it for objects cached before, ` +
        `${c.otherB2} B2 fetches without a first request or expiry`,
    },
    {
      name: "cache modes: no Workers Cache hit runs the worker",
      met: c.hitsThatRan === 0 && (run.cacheStatuses.HIT ?? 0) > 0,
      detail: `${c.hitsThatRan} of ${run.cacheStatuses.HIT ?? 0} HIT answers ran it`,
    },
  ];
}

function perThousand(count: number, requests: number): string {
  return (count * 1000 / requests).toFixed(0);
}

/** Section 6 as `deno task bench` prints it, numbered `number`. */
export function formatCacheModes(report: CacheModesReport, number = 6): string[] {
  const w = report.workload;
  const kinds = ["get", "head", "range", "query", "conditional"]
    .map((kind) => `${(w.kinds[kind] ?? 0).toLocaleString("en-US")} ${kind}`).join(", ");
  const workersCache = report.runs.find((r) => r.mode === "workers-cache");
  return [
    `${number}. Edge cache modes: ${
      w.requests.toLocaleString("en-US")
    } requests for ${w.objects} objects (Zipf s=${w.zipfExponent}, seed ${w.seed}) over ${
      w.seconds / 3600
    } h of the stand-in's clock, WORKER_CACHE_TTL ${report.cacheTtl} s, new token before request ${w.rotateAt}`,
    `   mix: ${kinds}; ${w.keys} Workers Cache keys (path and query)`,
    table([
      [
        "mode",
        "worker runs/1k",
        "B2 GET/1k",
        "B2 HEAD/1k",
        "hit ratio",
        "B2 after rotation, fetched before",
        "errors",
        "time",
      ],
      ...report.runs.map((r) => [
        r.mode,
        perThousand(r.workerRuns, r.requests),
        perThousand(r.b2Gets, r.requests),
        perThousand(r.b2Heads, r.requests),
        `${(r.hits * 100 / r.requests).toFixed(1)} %`,
        String(r.b2AfterRotationForCached),
        String(r.errors),
        `${r.seconds.toFixed(0)} s`,
      ]),
    ]),
    "  hit ratio: requests answered without asking B2; cache-api expires on workerd's own clock, " +
    "so not within the run",
    ...(workersCache
      ? [
        `  workers-cache: ${
          Object.entries(workersCache.cacheStatuses).sort(([, a], [, b]) => b - a)
            .map(([status, count]) => `${status} ${count.toLocaleString("en-US")}`).join(", ")
        }; worker runs: ${workersCache.causes.first} first, ${workersCache.causes.expiry} expiry, ${workersCache.causes.conditional} conditional, ${workersCache.causes.other} other`,
      ]
      : []),
  ];
}
