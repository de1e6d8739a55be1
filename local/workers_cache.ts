/**
 * A stand-in for Cloudflare's Workers Cache: an HTTP server on this machine
 * that sits in front of a worker running in workerd (miniflare) and follows
 * the rules Cloudflare documents for that cache (developers.cloudflare.com/
 * workers/cache/: its configuration, cache-keys, purge and limitations pages).
 * No miniflare or workerd version emulates it (Cloudflare left it out on
 * purpose, workerd issue 6865), so tests, `dev`, `demo` and the bench put this in front of the worker.
 *
 * Each rule the documentation does not settle is marked `Assumption:` and
 * takes the case that is worst for this project's worker, so that a worker
 * that passes here also works if Cloudflare turns out to be stricter.
 *
 * ```ts
 * const cache = await startWorkersCache();
 * await cache.deploy(upload); // upload.metadata.cache_options turns caching on
 * const first = await fetch(`${cache.url}/hello.txt`); // cf-cache-status: MISS
 * const second = await fetch(`${cache.url}/hello.txt`); // cf-cache-status: HIT
 * await cache.close();
 * ```
 *
 * @module
 */

import { stripTypeScriptTypes } from "node:module";
import type { WorkerUpload } from "../main.ts";
import { type LocalWorker, startLocalWorker } from "./workerd.ts";

/** What ctx.cache.purge takes, as Cloudflare documents it. */
export interface PurgeOptions {
  tags?: string[];
  pathPrefixes?: string[];
  purgeEverything?: boolean;
}

/** What ctx.cache.purge resolves to. */
export interface PurgeResult {
  success: boolean;
  errors: { code: number; message: string }[];
}

/** Live counters. */
export interface WorkersCacheStats {
  /** The worker's own loopback calls through `ctx.exports`, which the cache serves too. */
  loopback: { requests: number; hits: number; workerRuns: number };
  /** Answers given to visitors. */
  requests: number;
  /** Answers taken from storage without waiting for the worker (HIT, UPDATING). */
  hits: number;
  /** Requests the worker got: misses, revalidations (background ones too), passes. */
  workerRuns: number;
  /** Answers by `cf-cache-status` (`none` when caching is off). */
  statuses: Record<string, number>;
}

/** The running stand-in. */
export interface WorkersCache {
  /** Where visitors go: `http://127.0.0.1:<port>`. */
  url: string;
  /**
   * (Re)deploys: runs this upload in workerd behind the cache; the previous
   * workerd is stopped once the new one answers and its requests are done,
   * background revalidations included.
   * `metadata.cache_options` is read as Cloudflare would: absent or
   * `enabled: false` = no caching and no `cf-cache-status`. Each deploy is a
   * new version, part of the key unless `cross_version_cache`.
   */
  deploy(upload: WorkerUpload): Promise<void>;
  /** Live counters since start (or since {@linkcode WorkersCache.resetStats}). */
  readonly stats: WorkersCacheStats;
  resetStats(): void;
  /** Every ctx.cache.purge or invalidate the worker called, in order, with what it answered. */
  readonly purges: {
    operation: "purge" | "invalidate";
    /** The entrypoint that called it: a purge reaches only that one's entries. */
    entrypoint: string;
    options: PurgeOptions;
    result: PurgeResult;
  }[];
  /**
   * Resolves once every background revalidation, answer being stored and loopback call started
   * so far has finished.
   */
  idle(): Promise<void>;
  close(): Promise<void>;
}

/** See {@linkcode WorkersCacheOptions.rangedMiss}. */
export type RangedMiss = "slice" | "whole" | "removed";

/** How the stand-in is set up. */
export interface WorkersCacheOptions {
  /** @default 0 (any free port) */
  port?: number;
  /** The cache's clock (ms), so tests can make entries stale without waiting. @default Date.now */
  now?: () => number;
  /**
   * The largest object stored, checked against its complete size (a 200's
   * `Content-Length`, the total of a 206's `Content-Range`, or the bytes read), so that tests
   * can put an object over the limit without sending 512 MB.
   * @default 512 MB
   */
  maxObjectBytes?: number;
  /**
   * What a ranged miss does. Cloudflare documents only that the `Range` reaches the worker
   * and that a 206 is never stored ("Status codes that are never cached",
   * developers.cloudflare.com/workers/cache/configuration/); what the visitor whose range
   * the worker answered with a whole 200 receives is not documented.
   * Assumption: `"slice"` (default), the cache stores the 200 and answers this visitor's
   * range from it, as it answers later ones; `"whole"`, the 200 reaches the visitor as the
   * worker sent it (HTTP lets a server ignore `Range`, RFC 9110 14.2); `"removed"`, the
   * cache removes `Range` and `If-Range` before the worker and slices the answer itself
   * (what this stand-in did before the documentation was read closely; no source says so).
   * @default "slice"
   */
  rangedMiss?: RangedMiss;
  /**
   * Bytes the cache holds before it evicts what was used least recently, so that a long
   * stream of segments does not fill this machine's memory. Assumption: Cloudflare documents no
   * capacity, and evicts what is rarely used (developers.cloudflare.com/cache/concepts/
   * retention-vs-freshness/).
   * @default 2 GiB
   */
  capacityBytes?: number;
  /** How long the worker may take to send its headers before it counts as failed. @default 100 s */
  workerTimeoutMs?: number;
  /** Gets what the worker prints. */
  onLog?: (text: string) => void;
  /**
   * Whether `private` or `no-store` in a header that does not govern (the browsers'
   * `Cache-Control` under a `Cloudflare-CDN-Cache-Control`) still keeps an answer out.
   * Assumption: its configuration page does not say, so each case is a worst one: `true` for
   * the hit ratio (nothing such an answer says is stored), `false` for safety (it is stored, so
   * what the worker lets the cache keep must be safe to serve).
   * @default true
   */
  privateAnywhereBypasses?: boolean;
  /** How workerd is started. @default startLocalWorker of `./workerd.ts` */
  startLocalWorker?: typeof startLocalWorker;
}

/**
 * developers.cloudflare.com/workers/cache/limitations/: "the Free-plan limit (512 MB) applies to
 * every plan for now".
 */
const MAX_OBJECT_BYTES = 512 * 1024 * 1024;
/** Assumption: Cloudflare's proxy read timeout (100 s, its 524 error) bounds a worker's answer. */
const WORKER_TIMEOUT_MS = 100_000;
/** The binding through which the shim's ctx.cache reaches this stand-in. */
const CACHE_BINDING = "__WORKERS_CACHE";
const SHIM_PATH = "workers_cache_shim.js";
/**
 * Which entrypoint a request is for, between this stand-in and the shim: visitors reach only
 * the default one (developers.cloudflare.com/workers/cache/cache-keys/: the entrypoint is in the
 * key), so a visitor's own header of that name is dropped.
 */
const ENTRYPOINT_HEADER = "x-workers-cache-entrypoint";
/** The URL of a loopback call, from the shim. */
const LOOPBACK_URL_HEADER = "x-workers-cache-loopback-url";
const CAPACITY_BYTES = 2 * 1024 * 1024 * 1024;
/** The import in the shim's source that is pointed at the upload's main module. */
const SHIM_WORKER_IMPORT = `"../worker_template.ts"`;

/**
 * developers.cloudflare.com/workers/cache/cache-keys/: request headers that are part of the key
 * against cache poisoning. Assumption: only the three it names (the "..." are not listed anywhere).
 */
const KEY_HEADERS = ["x-forwarded-host", "x-http-method-override", "forwarded"];

/**
 * developers.cloudflare.com/workers/cache/configuration/: "200 two hours, 404 three
 * minutes, 405 one minute, and others; 401/403/500 only with explicit directives; 520-526 and worker-made 206 never".
 * Assumption: the "others" are those of Cloudflare's zone cache (301 two hours, 302/303 twenty
 * minutes, 410 three minutes); any status not listed is stored only with explicit directives.
 */
const HEURISTIC_SECONDS: Record<number, number> = {
  200: 7200,
  301: 7200,
  302: 1200,
  303: 1200,
  404: 180,
  410: 180,
  405: 60,
};

/** developers.cloudflare.com/workers/cache/purge/ (Cache-Tag). */
const MAX_TAG_LENGTH = 1024;
const MAX_TAGS = 1000;
/**
 * developers.cloudflare.com/workers/cache/purge/: "5 purge requests a minute (bursts to 25), up to
 * 100 operations".
 */
const PURGE_BURST = 25;
const PURGES_PER_MINUTE = 5;
const MAX_PURGE_OPERATIONS = 100;

/**
 * The headers that decide, most important first
 * (developers.cloudflare.com/workers/cache/configuration/).
 * Only the first is stripped before the visitor.
 */
const CONTROL_HEADERS = ["cloudflare-cdn-cache-control", "cdn-cache-control", "cache-control"];

type Directives = Map<string, string | true>;

/** How an answer may be kept, worked out from its headers once. */
interface Policy {
  /** Seconds it is fresh; 0 when it must be revalidated before any use. */
  lifetime: number;
  noCache: boolean;
  /** Seconds after expiry it may be served while it is revalidated in the background. */
  staleWhileRevalidate: number;
  /** Seconds after expiry it may be served when the worker fails; Infinity without a bound. */
  staleIfError: number;
  /** Whether it may answer a request that carries `Authorization`. */
  forAuthorized: boolean;
}

interface Entry {
  /** The worker's entrypoint that answered it: only its own purges reach it. */
  entrypoint: string;
  /** Path and query, for prefix purges. */
  path: string;
  /** The request header values the answer's `Vary` names, as sent. */
  vary: [string, string | null][];
  status: number;
  /** As the worker sent them (control headers included, so a 304 can update them). */
  headers: Headers;
  body: Uint8Array<ArrayBuffer>;
  /** Lowercase. */
  tags: Set<string>;
  /** When it was fetched or last revalidated (ms). */
  storedAt: number;
  /** Set by an invalidation: stale from then on. */
  invalidatedAt?: number;
  policy: Policy;
  updating?: boolean;
}

/**
 * An answer being stored: its bytes so far, read by every request that waits on it, and how it
 * ended (stored, or failed and not stored).
 */
interface Fill {
  status: number;
  headers: Headers;
  /** The bytes of the whole answer, from its `Content-Length`. */
  size: number;
  vary: [string, string | null][];
  chunks: Uint8Array[];
  ended?: "stored" | Error;
  /** Wakes the readers that wait for more. */
  wake: Set<() => void>;
  /** Settles once it is stored or failed. */
  done: Promise<unknown>;
  /** What a purge matches it by, as for a stored entry. */
  entrypoint: string;
  path: string;
  tags: Set<string>;
  /** How many purges had been made when the worker was asked for it. */
  since: number;
  /** Its lifetime and who it may answer, as the entry will have. */
  policy: Policy;
}

/** A purge or invalidation made, for the answers that were being asked for meanwhile. */
interface PurgeRecord {
  seq: number;
  operation: "purge" | "invalidate";
  at: number;
  matches: (entry: Pick<Entry, "entrypoint" | "path" | "tags">) => boolean;
}

/** The purges kept for answers still coming; older ones count as matching (the safe side). */
const PURGE_LOG_LENGTH = 100;

interface Deployment {
  worker: LocalWorker;
  version: number;
  caching: boolean;
  crossVersion: boolean;
  inFlight: Set<Promise<unknown>>;
}

/** What a worker call gave: an answer, or the reason there is none. */
type WorkerResult = { response: Response } | { failure: "threw" | "timed out"; message: string };

/** Starts the stand-in; {@linkcode WorkersCache.deploy} puts a worker behind it. */
export async function startWorkersCache(options: WorkersCacheOptions = {}): Promise<WorkersCache> {
  const now = options.now ?? Date.now;
  const maxObjectBytes = options.maxObjectBytes ?? MAX_OBJECT_BYTES;
  const workerTimeoutMs = options.workerTimeoutMs ?? WORKER_TIMEOUT_MS;
  const rules = { privateAnywhere: options.privateAnywhereBypasses ?? true };
  const rangedMiss = options.rangedMiss ?? "slice";
  const shim = await loadShim();
  const startWorker = options.startLocalWorker ?? startLocalWorker;
  // The Cache API (caches.default) survives deploys on Cloudflare, so a worker in that mode
  // keeps its entries across versions here too.
  const cachePersist = await Deno.makeTempDir({ prefix: "workers-cache-" });
  /** Key -> the entries of its variants (Vary), the least recently used first. */
  const store = new Map<string, Entry[]>();
  /** Key -> the answer being stored for it, which later misses of that key read too. */
  const fills = new Map<string, Fill>();
  /** Key -> the answer of the miss the worker is being asked for, once it comes. */
  const misses = new Map<string, Promise<Fill | undefined>>();
  const capacity = options.capacityBytes ?? CAPACITY_BYTES;
  let storedBytes = 0;
  const background = new Set<Promise<unknown>>();
  const purges: WorkersCache["purges"] = [];
  let stats = emptyStats();
  let purgeTokens = PURGE_BURST;
  /** The latest purges, the oldest first, and how many were made in all. */
  const purgeLog: PurgeRecord[] = [];
  let purgeCount = 0;
  let purgeTokensAt = now();
  let deployment: Deployment | undefined;
  let versions = 0;

  const server = Deno.serve(
    { hostname: "127.0.0.1", port: options.port ?? 0, onListen: () => {} },
    async (visitor) => {
      const current = deployment;
      if (!current) return new Response("No worker is deployed yet.\n", { status: 503 });
      const request = new Request(visitor);
      request.headers.delete(ENTRYPOINT_HEADER);
      const answer = await track(current, handle(request, current));
      stats.requests++;
      const status = answer.headers.get("cf-cache-status") ?? "none";
      stats.statuses[status] = (stats.statuses[status] ?? 0) + 1;
      if (status === "HIT" || status === "UPDATING") stats.hits++;
      return answer;
    },
  );

  function track<T>(current: Deployment, work: Promise<T>): Promise<T> {
    current.inFlight.add(work);
    return work.finally(() => current.inFlight.delete(work));
  }

  async function handle(request: Request, current: Deployment): Promise<Response> {
    const url = new URL(request.url);
    if (!current.caching) {
      // Assumption: without caching the answer passes untouched, control headers and
      // Cache-Tag included (nothing documents them being stripped then).
      const result = await callWorker(current, request, { headers: request.headers });
      return "response" in result ? result.response : failureAnswer(result);
    }
    // developers.cloudflare.com/workers/cache/cache-keys/: "Only GET and HEAD are cached".
    if (request.method !== "GET" && request.method !== "HEAD") {
      const result = await callWorker(current, request, { headers: request.headers });
      if (!("response" in result)) return failureAnswer(result);
      return visitorAnswer(result.response, "DYNAMIC");
    }
    const key = cacheKey(url, request.headers, current);

    // Assumption: the cache does not answer a browser's own conditional request itself; it
    // reaches the worker (not documented). That is the worst case: every
    // browser revalidation runs the worker, which must answer 304 correctly.
    if (request.headers.has("if-none-match") || request.headers.has("if-modified-since")) {
      return await fill(request, { key, label: "MISS", conditional: true }, current);
    }

    let entry = lookUp(key, request.headers);
    if (!entry) {
      // developers.cloudflare.com/workers/cache/ (index): "concurrent misses for one key are
      // collapsed per data centre": a miss while the worker is asked for the key waits for its
      // answer, and reads it as it is stored; if it may not be stored, asks the worker itself.
      const pending = fills.get(key) ?? await misses.get(key);
      // Not onto an answer asked for before a purge that matches it, nor onto one a request
      // with Authorization may not be answered from (as lookUp() refuses a stored one).
      const authorized = !request.headers.has("authorization") || pending?.policy.forAuthorized;
      if (
        pending && authorized && !purgedSince(pending.since, pending) &&
        pending.vary.every(([name, value]) => request.headers.get(name) === value)
      ) {
        return serveFill(pending, request, "MISS");
      }
      entry = lookUp(key, request.headers);
      if (!entry) return await firstMiss(request, key, current);
    }
    const staleFor = staleSeconds(entry);
    if (staleFor < 0) return serve(entry, request, "HIT");
    if (!entry.policy.noCache && staleFor <= entry.policy.staleWhileRevalidate) {
      if (!entry.updating) {
        entry.updating = true;
        // Tracked with the version that began it, so a redeploy lets it finish there (as
        // Cloudflare lets an old version finish what it started) instead of stopping it.
        const work = track(current, revalidate(entry, request, key, current)).finally(() => {
          entry.updating = false;
        });
        background.add(work);
        work.finally(() => background.delete(work));
      }
      return serve(entry, request, "UPDATING");
    }
    return await revalidate(entry, request, key, current);
  }

  /** Seconds since the entry went stale: negative while fresh. */
  function staleSeconds(entry: Entry): number {
    const expiry = Math.min(
      entry.storedAt + entry.policy.lifetime * 1000,
      entry.invalidatedAt ?? Infinity,
    );
    if (entry.policy.noCache) return Math.max(0, (now() - expiry) / 1000);
    return (now() - expiry) / 1000;
  }

  function lookUp(key: string, headers: Headers): Entry | undefined {
    const variants = store.get(key);
    const entry = variants?.find((candidate) =>
      candidate.vary.every(([name, value]) => headers.get(name) === value)
    );
    if (variants && entry) {
      store.delete(key);
      store.set(key, variants);
    }
    // developers.cloudflare.com/workers/cache/configuration/: a request with Authorization is not
    // answered from an entry unless it said public, s-maxage or must-revalidate.
    if (entry && headers.has("authorization") && !entry.policy.forAuthorized) return undefined;
    return entry;
  }

  /** A miss no other request is asking the worker for: the others wait for it. */
  async function firstMiss(request: Request, key: string, current: Deployment): Promise<Response> {
    const { promise, resolve } = Promise.withResolvers<Fill | undefined>();
    misses.set(key, promise);
    try {
      return await fill(request, { key, label: "MISS" }, current);
    } finally {
      resolve(fills.get(key));
      if (misses.get(key) === promise) misses.delete(key);
    }
  }

  /** Asks the worker for the whole object, stores what may be stored, answers the visitor. */
  async function fill(
    request: Request,
    how: { key: string; label: string; conditional?: boolean },
    current: Deployment,
  ): Promise<Response> {
    const headers = workerHeaders(request.headers, {
      keepConditional: how.conditional,
      keepRange: rangedMiss !== "removed",
    });
    const since = purgeCount;
    const result = await callWorker(current, request, { method: "GET", headers });
    if (!("response" in result)) return failureAnswer(result);
    return await keepAndAnswer(result.response, request, { ...how, current, since });
  }

  /**
   * Sends the worker a conditional request built from the entry's validators
   * (developers.cloudflare.com/workers/cache/configuration/): 304 keeps the body (REVALIDATED),
   * another answer replaces it (EXPIRED), a failure serves the stale copy when
   * stale-if-error allows (STALE).
   */
  async function revalidate(
    entry: Entry,
    request: Request,
    key: string,
    current: Deployment,
  ): Promise<Response> {
    // The stored whole object is what is revalidated, so the visitor's Range stays here.
    const headers = workerHeaders(request.headers, {});
    const etag = entry.headers.get("etag");
    const lastModified = entry.headers.get("last-modified");
    if (etag !== null) headers.set("If-None-Match", etag);
    if (lastModified !== null) headers.set("If-Modified-Since", lastModified);
    const since = purgeCount;
    const result = await callWorker(current, request, { method: "GET", headers });
    const failed = !("response" in result) || isFailure(result.response.status);
    // stale-if-error counts from expiry; a no-cache entry is never used unvalidated.
    // Assumption: stale-if-error does not cover no-cache entries (the worst case).
    if (failed && !entry.policy.noCache && staleSeconds(entry) <= entry.policy.staleIfError) {
      if ("response" in result) await result.response.body?.cancel();
      return serve(entry, request, "STALE");
    }
    if (!("response" in result)) return failureAnswer(result);
    const response = result.response;
    if (response.status === 304) {
      await response.body?.cancel();
      // RFC 9111 4.3.4: the stored headers are updated from the 304's (a new lifetime, say).
      for (const [name, value] of response.headers) {
        if (!["content-length", "content-encoding", "transfer-encoding"].includes(name)) {
          entry.headers.set(name, value);
        }
      }
      const verdict = storability(entry.status, entry.headers, request.headers, rules);
      if (verdict.store) {
        entry.policy = verdict.policy;
        entry.tags = cacheTags(entry.headers.get("cache-tag"));
        entry.storedAt = now();
        entry.invalidatedAt = undefined;
        return serve(entry, request, "REVALIDATED");
      }
      forget(key, entry);
      return serve(entry, request, verdict.label);
    }
    return await keepAndAnswer(response, request, {
      key,
      label: "EXPIRED",
      replacing: entry,
      current,
      since,
    });
  }

  /** Stores the worker's answer when the rules allow, then answers the visitor. */
  async function keepAndAnswer(
    response: Response,
    request: Request,
    how: { key: string; label: string; replacing?: Entry; current: Deployment; since: number },
  ): Promise<Response> {
    const verdict = response.status === 304
      ? { store: false as const, label: "BYPASS" }
      : storability(response.status, response.headers, request.headers, rules);
    if (!verdict.store) {
      // An expired entry whose worker answer may not be kept is gone; the visitor is told why
      // the worker was asked (EXPIRED), not that this answer bypasses.
      if (how.replacing) forget(how.key, how.replacing);
      return visitorAnswer(response, how.replacing ? how.label : verdict.label, request);
    }
    const size = completeSize(response.status, response.headers);
    if ((size ?? 0) > maxObjectBytes) {
      // developers.cloudflare.com/workers/cache/limitations/: "Larger answers are not stored (MISS
      // every time)".
      return visitorAnswer(response, "MISS", request);
    }
    if (size !== undefined && response.body && !nullBodyStatus(response.status)) {
      const fill = startFill(response, request, { ...how, size, policy: verdict.policy });
      // A HEAD has no body to stream: it is answered once the entry is kept, as a GET right
      // after it finds it.
      if (request.method === "HEAD") await fill.done;
      return serveFill(fill, request, how.label, {
        whole: rangedMiss === "whole" && !how.replacing,
      });
    }
    const read = await readUpTo(response.body, maxObjectBytes);
    if (read.rest) {
      return visitorAnswer(new Response(read.rest, response), "MISS", request);
    }
    const entry: Entry = {
      ...described(request, response),
      status: response.status,
      headers: new Headers(response.headers),
      body: read.bytes,
      storedAt: now(),
      policy: verdict.policy,
    };
    // As for a streamed answer (startFill()): a purge made meanwhile reaches it.
    storeUnlessPurged(entry, { ...how, request });
    return serve(entry, request, how.label, { whole: rangedMiss === "whole" && !how.replacing });
  }

  /** Where an answer is kept and what purges it: its entrypoint, path, varied headers, tags. */
  function described(request: Request, response: Response) {
    const url = new URL(request.url);
    return {
      entrypoint: request.headers.get(ENTRYPOINT_HEADER) ?? "default",
      path: url.pathname + url.search,
      vary: varyValues(response.headers.get("vary"), request.headers),
      tags: cacheTags(response.headers.get("cache-tag")),
    };
  }

  /**
   * Keeps `entry` under `key` in place of `replacing` and of its own variant, unless a purge made
   * since `since` reaches it: then it is not kept, or kept stale after an invalidation.
   * Assumption: a purge made while an answer is being stored reaches it too
   * (developers.cloudflare.com/workers/cache/purge/ does not say what happens to a fill under
   * way; the docs promise that a purged entry is gone, so the stand-in takes the side that never
   * serves a purged one).
   */
  function storeUnlessPurged(
    entry: Entry,
    where: { key: string; request: Request; since: number; replacing?: Entry },
  ): void {
    const purged = purgedSince(where.since, entry);
    if (purged?.operation === "purge") return;
    if (purged) entry.invalidatedAt = purged.at;
    const variants = (store.get(where.key) ?? []).filter((other) =>
      other !== where.replacing &&
      !other.vary.every(([name, value]) => where.request.headers.get(name) === value)
    );
    keep(where.key, [...variants, entry]);
  }

  /**
   * Stores an answer of known length as it streams from the worker, once it is complete and as
   * long as it said. Assumption: the cache streams an answer it stores to the requests waiting on
   * it as the worker sends it, rather than after its last byte (not documented for Workers Cache;
   * Cloudflare's cache streams what it fills from an origin, and collapses concurrent misses
   * onto one fill). A worker that fails midway leaves nothing stored and its readers cut short.
   * Assumption: the fill goes on when its caller, or every reader, stops reading (not documented;
   * the worker's keepSegment() cancels its one-byte read at once and counts on it).
   */
  function startFill(
    response: Response,
    request: Request,
    how: {
      key: string;
      replacing?: Entry;
      size: number;
      policy: Policy;
      current: Deployment;
      since: number;
    },
  ): Fill {
    const fill: Fill = {
      ...described(request, response),
      since: how.since,
      policy: how.policy,
      status: response.status,
      headers: new Headers(response.headers),
      size: how.size,
      chunks: [],
      wake: new Set(),
      done: Promise.resolve(),
    };
    const ended = (how: Fill["ended"]) => {
      fill.ended = how;
      for (const wake of fill.wake) wake();
    };
    const arrived = (chunk: Uint8Array) => {
      fill.chunks.push(chunk);
      for (const wake of fill.wake) wake();
    };
    fills.set(how.key, fill);
    const work = (async () => {
      const bytes = await readAll(response.body!, { limit: how.size, onChunk: arrived });
      if (bytes.byteLength !== how.size) {
        throw new Error(`the worker sent ${bytes.byteLength} of ${how.size} bytes`);
      }
      const entry: Entry = {
        entrypoint: fill.entrypoint,
        path: fill.path,
        vary: fill.vary,
        status: fill.status,
        headers: fill.headers,
        body: bytes,
        tags: fill.tags,
        storedAt: now(),
        policy: how.policy,
      };
      storeUnlessPurged(entry, { ...how, request });
    })().then(
      () => ended("stored"),
      (error) => ended(error instanceof Error ? error : new Error(String(error))),
    ).finally(() => {
      if (fills.get(how.key) === fill) fills.delete(how.key);
    });
    fill.done = work;
    background.add(work);
    work.finally(() => background.delete(work));
    // A redeploy lets the version that answered finish storing it.
    track(how.current, work);
    return fill;
  }

  /** An answer being stored, as {@linkcode serve} answers from a stored one. */
  function serveFill(
    fill: Fill,
    request: Request,
    label: string,
    how: { whole?: boolean } = {},
  ): Response {
    const headers = clientHeaders(fill.headers, label);
    headers.set("Age", "0");
    const head = request.method === "HEAD";
    const range = fill.status === 200 && !how.whole && ifRangeHolds(request.headers, fill.headers)
      ? parseRange(request.headers.get("range"), fill.size)
      : undefined;
    if (range === "unsatisfiable") {
      const refused = new Headers({
        "content-range": `bytes */${fill.size}`,
        "cf-cache-status": label,
      });
      return new Response(null, { status: 416, headers: refused });
    }
    const bytes = range ?? { start: 0, end: fill.size - 1 };
    headers.set("Content-Length", String(bytes.end - bytes.start + 1));
    if (range) headers.set("Content-Range", `bytes ${range.start}-${range.end}/${fill.size}`);
    return new Response(head ? null : fillReader(fill, bytes), {
      status: range ? 206 : fill.status,
      headers,
    });
  }

  /** Stores a key's variants, then evicts the least recently used keys past the capacity. */
  function keep(key: string, variants: Entry[]): void {
    for (const old of store.get(key) ?? []) {
      if (!variants.includes(old)) storedBytes -= old.body.byteLength;
    }
    store.delete(key);
    store.set(key, variants);
    storedBytes += variants.at(-1)!.body.byteLength;
    for (const [oldest, entries] of store) {
      if (storedBytes <= capacity || oldest === key) break;
      for (const entry of entries) storedBytes -= entry.body.byteLength;
      store.delete(oldest);
    }
  }

  function forget(key: string, entry: Entry): void {
    const variants = store.get(key) ?? [];
    if (!variants.includes(entry)) return;
    storedBytes -= entry.body.byteLength;
    const left = variants.filter((other) => other !== entry);
    if (left.length > 0) store.set(key, left);
    else store.delete(key);
  }

  /** Calls the worker as `init` says (a GET for the cache); any other method keeps its body. */
  async function callWorker(
    current: Deployment,
    request: Request,
    init: { method?: string; headers: Headers },
  ): Promise<WorkerResult> {
    if (init.headers.has(ENTRYPOINT_HEADER)) stats.loopback.workerRuns++;
    else stats.workerRuns++;
    const method = init.method ?? request.method;
    const body = ["GET", "HEAD"].includes(method) ? undefined : await request.arrayBuffer();
    const { promise: timeout, resolve } = Promise.withResolvers<WorkerResult>();
    const timer = setTimeout(
      () => resolve({ failure: "timed out", message: `no answer in ${workerTimeoutMs} ms` }),
      workerTimeoutMs,
    );
    const call = current.worker.miniflare.dispatchFetch(request.url, {
      method,
      headers: init.headers,
      ...(body && body.byteLength > 0 && { body }),
      redirect: "manual",
    } as never).then(
      (response): WorkerResult => {
        // miniflare's own Response: made a Deno one, so callers can stream and copy it.
        const headers = new Headers(response.headers as unknown as Headers);
        return {
          response: new Response(response.body as ReadableStream<Uint8Array> | null, {
            status: response.status,
            headers,
          }),
        };
      },
      (error): WorkerResult => ({ failure: "threw", message: String(error) }),
    );
    try {
      const result = await Promise.race([call, timeout]);
      if (!("response" in result) && result.failure === "timed out") {
        call.then((late) => {
          if ("response" in late) late.response.body?.cancel();
        });
      }
      return result;
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * An entry's answer for this request: the whole object, a 206 slice, a 416, or a HEAD.
   * `whole`: the range is not applied (the `"whole"` case of a ranged miss).
   */
  function serve(
    entry: Entry,
    request: Request,
    label: string,
    how: { whole?: boolean } = {},
  ): Response {
    const headers = clientHeaders(entry.headers, label);
    headers.set("Age", String(Math.max(0, Math.floor((now() - entry.storedAt) / 1000))));
    const head = request.method === "HEAD";
    const size = entry.body.byteLength;
    // developers.cloudflare.com/workers/cache/configuration/: the cache answers 206 slices (or 416)
    // itself.
    const range = entry.status === 200 && !how.whole &&
        ifRangeHolds(request.headers, entry.headers)
      ? parseRange(request.headers.get("range"), size)
      : undefined;
    if (range === "unsatisfiable") {
      const refused = new Headers({ "content-range": `bytes */${size}`, "cf-cache-status": label });
      return new Response(null, { status: 416, headers: refused });
    }
    if (range) {
      headers.set("Content-Range", `bytes ${range.start}-${range.end}/${size}`);
      headers.set("Content-Length", String(range.end - range.start + 1));
      const body = head ? null : entry.body.slice(range.start, range.end + 1);
      return new Response(body, { status: 206, headers });
    }
    headers.set("Content-Length", String(size));
    return new Response(head || nullBodyStatus(entry.status) ? null : entry.body, {
      status: entry.status,
      headers,
    });
  }

  /**
   * An answer that was not stored, as the visitor gets it: a 206 the worker made passes as
   * it is; a whole 200 to a range is sliced here unless `rangedMiss` is `"whole"`.
   * Assumption: that holds for answers too large to store as well (the edge reads through
   * the whole object to the range, the worst case for time to first byte).
   */
  function visitorAnswer(response: Response, label: string, request?: Request): Response {
    const headers = clientHeaders(response.headers, label);
    const head = request?.method === "HEAD";
    const size = Number(response.headers.get("content-length") ?? NaN);
    const range = request && response.status === 200 && Number.isInteger(size) &&
        rangedMiss !== "whole" && ifRangeHolds(request.headers, response.headers)
      ? parseRange(request.headers.get("range"), size)
      : undefined;
    if (range === "unsatisfiable") {
      response.body?.cancel();
      const refused = new Headers({ "content-range": `bytes */${size}`, "cf-cache-status": label });
      return new Response(null, { status: 416, headers: refused });
    }
    if (range && response.body) {
      headers.set("Content-Range", `bytes ${range.start}-${range.end}/${size}`);
      headers.set("Content-Length", String(range.end - range.start + 1));
      if (head) {
        response.body.cancel();
        return new Response(null, { status: 206, headers });
      }
      return new Response(sliceStream(response.body, range), { status: 206, headers });
    }
    if (head) {
      // Assumption: for a HEAD (a GET for the worker) whose answer is not stored, the cache
      // stops reading the worker's body once it has the headers; not documented, and a cache
      // that read on would only cost the worker more of the B2 bytes it fetched.
      response.body?.cancel();
      return new Response(null, { status: response.status, headers });
    }
    return new Response(response.body, { status: response.status, headers });
  }

  async function purge(operation: "purge" | "invalidate", request: Request): Promise<Response> {
    const options = await request.json() as PurgeOptions;
    const entrypoint = request.headers.get(ENTRYPOINT_HEADER) ?? "default";
    const result = applyPurge(operation, options, entrypoint);
    purges.push({ operation, entrypoint, options, result });
    return Response.json(result);
  }

  /**
   * A loopback call of the worker to one of its entrypoints (`ctx.exports`), cached like a
   * visitor's request under that entrypoint's keys (developers.cloudflare.com/workers/cache/
   * configuration/: caching applies to "loopback fetch() calls between entrypoints via
   * ctx.exports").
   */
  async function loopback(call: Request): Promise<Response> {
    const current = deployment!;
    const headers = new Headers(call.headers);
    const url = headers.get(LOOPBACK_URL_HEADER) ?? "";
    headers.delete(LOOPBACK_URL_HEADER);
    const request = new Request(url, {
      method: call.method,
      headers,
      ...(!["GET", "HEAD"].includes(call.method) && { body: await call.arrayBuffer() }),
    });
    // Assumption: a loopback answer goes through the cache as a visitor's does (its control
    // headers and Cache-Tag stripped, cf-cache-status added); the worker reads only its body,
    // status and length.
    // Tracked as background work too, so that idle() also waits for what the worker asked of
    // itself after its answer (a segment it keeps meanwhile).
    const work = track(current, handle(request, current));
    background.add(work);
    work.finally(() => background.delete(work));
    const answer = await work;
    stats.loopback.requests++;
    const status = answer.headers.get("cf-cache-status");
    if (status === "HIT" || status === "UPDATING") stats.loopback.hits++;
    return answer;
  }

  /**
   * The latest purge made after the `since`-th that reaches an answer being stored; one too old
   * to be kept counts as reaching it.
   */
  function purgedSince(
    since: number,
    answer: Pick<Entry, "entrypoint" | "path" | "tags">,
  ): PurgeRecord | undefined {
    const oldest = purgeLog[0]?.seq ?? purgeCount + 1;
    if (since + 1 < oldest) {
      return {
        seq: since + 1,
        operation: "purge",
        at: now(),
        matches: () => true,
      };
    }
    const reaching = purgeLog.filter((record) => record.seq > since && record.matches(answer));
    return reaching.find((record) => record.operation === "purge") ?? reaching.at(-1);
  }

  function applyPurge(
    operation: "purge" | "invalidate",
    options: PurgeOptions,
    entrypoint: string,
  ): PurgeResult {
    const tags = (options.tags ?? []).map((tag) => tag.toLowerCase());
    const prefixes = options.pathPrefixes ?? [];
    const operations = tags.length + prefixes.length + (options.purgeEverything ? 1 : 0);
    // Assumption: the codes of these refusals are not documented; these are placeholders.
    if (operations === 0) {
      return refusal(400, "Nothing to purge: give tags, pathPrefixes or purgeEverything.");
    }
    if (operations > MAX_PURGE_OPERATIONS) {
      return refusal(400, `${operations} operations; at most ${MAX_PURGE_OPERATIONS} a request.`);
    }
    // Assumption: a prefix with a scheme or host is refused, not silently matched against
    // nothing (developers.cloudflare.com/workers/cache/purge/: "Prefixes are paths without scheme
    // or host").
    const bad = prefixes.find((prefix) => !prefix.startsWith("/"));
    if (bad !== undefined) return refusal(400, `"${bad}" is not a path starting with "/".`);
    const elapsed = now() - purgeTokensAt;
    // Assumption: every entrypoint's purges draw on this one budget (the docs do not say
    // whether the limit is a worker's or an entrypoint's; sharing it is the worst case).
    purgeTokens = Math.min(PURGE_BURST, purgeTokens + elapsed * PURGES_PER_MINUTE / 60_000);
    purgeTokensAt = now();
    if (purgeTokens < 1) {
      return refusal(429, `Rate limited: ${PURGES_PER_MINUTE} purges a minute, bursts to 25.`);
    }
    purgeTokens -= 1;
    // Assumption: a purge reaches the entries of every version, not just the current one's.
    // Only the calling entrypoint's (developers.cloudflare.com/workers/cache/purge/: "Purge is
    // scoped to the entrypoint that calls it").
    const matches = (entry: Pick<Entry, "entrypoint" | "path" | "tags">) =>
      entry.entrypoint === entrypoint && (options.purgeEverything === true ||
        tags.some((tag) => entry.tags.has(tag)) ||
        prefixes.some((prefix) => entry.path.startsWith(prefix)));
    purgeLog.push({ seq: ++purgeCount, operation, at: now(), matches });
    if (purgeLog.length > PURGE_LOG_LENGTH) purgeLog.shift();
    for (const [key, entries] of store) {
      for (const entry of entries) {
        if (!matches(entry)) continue;
        // Assumption: an invalidated entry is stale at once, so its stale directives decide
        // what happens next (developers.cloudflare.com/workers/cache/purge/: invalidate "marks
        // entries stale").
        if (operation === "invalidate") entry.invalidatedAt = now();
        else forget(key, entry);
      }
    }
    return { success: true, errors: [] };
  }

  return {
    url: `http://127.0.0.1:${server.addr.port}`,
    async deploy(upload) {
      const cacheOptions = (upload.metadata as { cache_options?: unknown }).cache_options as
        | { enabled?: unknown; cross_version_cache?: unknown }
        | undefined;
      const caching = cacheOptions?.enabled === true;
      const worker = await startWorker(upload, {
        wrapper: { path: SHIM_PATH, contents: shimFor(shim, upload.metadata.main_module) },
        ...(caching && {
          serviceBindings: {
            [CACHE_BINDING]: (request: Request) => {
              const operation = new URL(request.url).pathname.slice(1);
              if (operation === "loopback") return loopback(request);
              return purge(operation === "invalidate" ? "invalidate" : "purge", request);
            },
          },
        }),
        cachePersist,
        ...(options.onLog && { onLog: options.onLog }),
      });
      const previous = deployment;
      deployment = {
        worker,
        version: ++versions,
        caching,
        crossVersion: caching && cacheOptions?.cross_version_cache === true,
        inFlight: new Set(),
      };
      if (previous) {
        while (previous.inFlight.size > 0) await Promise.allSettled(previous.inFlight);
        await previous.worker.dispose();
      }
    },
    get stats() {
      return stats;
    },
    resetStats() {
      stats = emptyStats();
    },
    purges,
    async idle() {
      while (background.size > 0) await Promise.allSettled(background);
    },
    async close() {
      while (background.size > 0) await Promise.allSettled(background);
      await server.shutdown();
      await deployment?.worker.dispose();
      await Deno.remove(cachePersist, { recursive: true }).catch(() => {});
    },
  };
}

function refusal(code: number, message: string): PurgeResult {
  return { success: false, errors: [{ code, message }] };
}

function emptyStats(): WorkersCacheStats {
  return {
    requests: 0,
    hits: 0,
    workerRuns: 0,
    statuses: {},
    loopback: { requests: 0, hits: 0, workerRuns: 0 },
  };
}

async function loadShim(): Promise<string> {
  // Fetched when the demo runs main.ts from a URL, where Deno reads only file URLs.
  const url = new URL("./workers_cache_shim.ts", import.meta.url);
  const source = url.protocol === "file:"
    ? await Deno.readTextFile(url)
    : await fetch(url).then((response) => response.text());
  return stripTypeScriptTypes(source, { mode: "transform" });
}

function shimFor(shim: string, mainModule: string): string {
  if (!shim.includes(SHIM_WORKER_IMPORT)) {
    throw new Error(`workers_cache_shim.ts no longer imports ${SHIM_WORKER_IMPORT}`);
  }
  return shim.replace(SHIM_WORKER_IMPORT, JSON.stringify(`./${mainModule}`));
}

/**
 * developers.cloudflare.com/workers/cache/cache-keys/: the path and query as sent (order and
 * trailing slash matter), the anti-poisoning headers, the entrypoint, and the version unless
 * cross-version; not the host.
 * Assumption: entries stored by a version without cross_version_cache stay that version's
 * (a later cross-version deploy starts cold: the worst case).
 */
function cacheKey(url: URL, headers: Headers, current: Deployment): string {
  const version = current.crossVersion ? "*" : String(current.version);
  const entrypoint = headers.get(ENTRYPOINT_HEADER) ?? "default";
  const guarded = KEY_HEADERS.map((name) => headers.get(name) ?? "").join("\n");
  return `${entrypoint}\n${version}\n${guarded}\n${url.pathname}${url.search}`;
}

/**
 * The headers the worker gets for a cacheable request: the visitor's `Range` and `If-Range`
 * when `keepRange` (developers.cloudflare.com/workers/cache/configuration/, "Status codes
 * that are never cached": "a Range request that produces a 206 will always result in MISS.
 * Return a full 200 response and let the cache satisfy subsequent Range requests"), and the
 * body uncompressed, since the cache stores the object itself.
 */
function workerHeaders(
  visitor: Headers,
  how: { keepConditional?: boolean; keepRange?: boolean },
): Headers {
  const headers = new Headers(visitor);
  if (!how.keepRange) {
    headers.delete("range");
    headers.delete("if-range");
  }
  if (!how.keepConditional) {
    headers.delete("if-none-match");
    headers.delete("if-modified-since");
  }
  headers.set("accept-encoding", "identity");
  return headers;
}

/** The headers a visitor sees: the first control header and Cache-Tag stripped, the status. */
function clientHeaders(headers: Headers, label: string): Headers {
  const out = new Headers(headers);
  // developers.cloudflare.com/workers/cache/configuration/: Cloudflare-CDN-Cache-Control is "used
  // and stripped before the client", CDN-Cache-Control and Cache-Control are passed on; Cache-Tag is stripped.
  out.delete("cloudflare-cdn-cache-control");
  out.delete("cache-tag");
  out.delete("content-encoding");
  out.set("cf-cache-status", label);
  return out;
}

function failureAnswer(result: Exclude<WorkerResult, { response: Response }>): Response {
  // Assumption: Cloudflare's own error pages, without a cf-cache-status, for a worker that
  // threw (error 1101, 500) or did not answer in time (524).
  const status = result.failure === "threw" ? 500 : 524;
  return new Response(`The worker ${result.failure}: ${result.message}\n`, { status });
}

/** A worker answer that lets stale-if-error serve the stored copy: a 5xx. */
function isFailure(status: number): boolean {
  return status >= 500;
}

function nullBodyStatus(status: number): boolean {
  return status === 204 || status === 304;
}

function parseDirectives(value: string | null): Directives {
  const directives: Directives = new Map();
  for (const part of (value ?? "").split(",")) {
    const [name = "", argument] = part.split("=", 2);
    const key = name.trim().toLowerCase();
    if (key !== "") directives.set(key, argument?.trim().replace(/^"|"$/g, "") ?? true);
  }
  return directives;
}

function seconds(directives: Directives, name: string): number | undefined {
  const value = directives.get(name);
  if (typeof value !== "string" || !/^\d+$/.test(value)) return undefined;
  return Number(value);
}

type Verdict = { store: true; policy: Policy } | { store: false; label: string };

/**
 * Whether an answer may be stored, and how (developers.cloudflare.com/workers/cache/configuration/:
 * bypass, heuristic lifetimes, Headers that control it). `request` is the visitor's.
 */
function storability(
  status: number,
  headers: Headers,
  request: Headers,
  rules: { privateAnywhere: boolean },
): Verdict {
  const present = CONTROL_HEADERS.filter((name) => headers.has(name));
  const governing = parseDirectives(present[0] ? headers.get(present[0]) : null);
  const all = present.map((name) => parseDirectives(headers.get(name)));
  // developers.cloudflare.com/workers/cache/configuration/ (heuristic lifetimes): 520-526 are never
  // stored.
  if (status >= 520 && status <= 526) return { store: false, label: "DYNAMIC" };
  // developers.cloudflare.com/workers/cache/configuration/ ("Status codes that are never
  // cached"): "206 Partial Content is not cached. ... a Range request that produces a 206
  // will always result in MISS", whatever else its headers say.
  if (status === 206) return { store: false, label: "MISS" };
  if (headers.has("set-cookie")) return { store: false, label: "BYPASS" };
  // Assumption (by default): private or no-store in ANY of the three headers bypasses, even
  // when a CDN header governs (not documented; the worst case for the hit
  // ratio). `privateAnywhereBypasses: false` takes the other case: only the governing one.
  const deciding = rules.privateAnywhere ? all : [governing];
  if (deciding.some((d) => d.has("private") || d.has("no-store"))) {
    return { store: false, label: "BYPASS" };
  }
  const vary = (headers.get("vary") ?? "").split(",").map((name) => name.trim());
  if (vary.includes("*")) return { store: false, label: "BYPASS" };
  // Assumption: s-maxage, must-revalidate and proxy-revalidate in any of the three headers
  // switch the stale directives off (the worst case: the docs do not say which header).
  const strict = all.some((d) =>
    d.has("s-maxage") || d.has("must-revalidate") || d.has("proxy-revalidate")
  );
  const forAuthorized = governing.has("public") || governing.has("s-maxage") ||
    governing.has("must-revalidate");
  if (request.has("authorization") && !forAuthorized) return { store: false, label: "BYPASS" };
  const explicit = seconds(governing, "s-maxage") ?? seconds(governing, "max-age") ??
    expiresSeconds(headers);
  const noCache = governing.has("no-cache");
  // Assumption: max-age=0 stores an answer that must be revalidated before each use, as
  // no-cache does (zone caches bypass it instead; for a worker this is the costlier case).
  let lifetime: number;
  if (explicit !== undefined) lifetime = explicit;
  else if (noCache) lifetime = 0;
  else {
    const heuristic = HEURISTIC_SECONDS[status];
    if (heuristic === undefined) return { store: false, label: "DYNAMIC" };
    lifetime = heuristic;
  }
  const ifError = seconds(governing, "stale-if-error");
  return {
    store: true,
    policy: {
      lifetime,
      noCache,
      staleWhileRevalidate: strict ? -1 : seconds(governing, "stale-while-revalidate") ?? -1,
      // developers.cloudflare.com/workers/cache/configuration/: unset means indefinitely (unless
      // one of the three is present); stale-if-error=0 turns it off.
      staleIfError: strict ? -1 : ifError === undefined ? Infinity : ifError === 0 ? -1 : ifError,
      forAuthorized,
    },
  };
}

/**
 * The size of the whole object an answer is part of: the total of a 206's `Content-Range`
 * (`bytes a-b/total`), else `Content-Length`; `undefined` when neither says. The size limit
 * is checked against this, not against the part sent: a small range does not make a larger
 * object cacheable (developers.cloudflare.com/cache/reference/range-requests/, "Caching
 * limitations").
 */
export function completeSize(status: number, headers: Headers): number | undefined {
  if (status === 206) {
    const total = /\/(\d+)\s*$/.exec(headers.get("content-range") ?? "")?.[1];
    return total === undefined ? undefined : Number(total);
  }
  const length = headers.get("content-length");
  return length !== null && /^\d+$/.test(length.trim()) ? Number(length) : undefined;
}

/** RFC 9111 4.2.1: Expires, when no max-age says otherwise. */
function expiresSeconds(headers: Headers): number | undefined {
  const expires = Date.parse(headers.get("expires") ?? "");
  if (Number.isNaN(expires)) return undefined;
  const date = Date.parse(headers.get("date") ?? "");
  return Math.max(0, Math.floor((expires - (Number.isNaN(date) ? Date.now() : date)) / 1000));
}

/**
 * developers.cloudflare.com/workers/cache/purge/ (Cache-Tag): comma-separated, printable ASCII, at
 * most 1024 characters a tag and 1000 tags, case-insensitive, invalid ones dropped silently.
 * Assumption: a space inside a tag makes it invalid, and tags past the 1000th are dropped.
 */
function cacheTags(header: string | null): Set<string> {
  const tags = (header ?? "").split(",").map((tag) => tag.trim())
    .filter((tag) => tag.length > 0 && tag.length <= MAX_TAG_LENGTH && /^[\x21-\x7e]+$/.test(tag))
    .map((tag) => tag.toLowerCase());
  return new Set(tags.slice(0, MAX_TAGS));
}

/** developers.cloudflare.com/workers/cache/cache-keys/: "Vary is honoured byte for byte". */
function varyValues(vary: string | null, request: Headers): [string, string | null][] {
  return (vary ?? "").split(",").map((name) => name.trim().toLowerCase())
    .filter((name) => name !== "")
    .map((name) => [name, request.get(name)]);
}

/**
 * One `bytes=` range within `size` bytes; `undefined` for no range or one ignored.
 * Assumption: several ranges are answered with the whole object (HTTP allows it).
 */
function parseRange(
  header: string | null,
  size: number,
): { start: number; end: number } | "unsatisfiable" | undefined {
  const match = /^bytes=(\d*)-(\d*)$/.exec(header?.trim() ?? "");
  if (!match) return undefined;
  const [, first = "", last = ""] = match;
  if (first === "") {
    if (last === "") return undefined;
    const suffix = Number(last);
    return suffix === 0 || size === 0
      ? "unsatisfiable"
      : { start: Math.max(0, size - suffix), end: size - 1 };
  }
  const start = Number(first);
  const end = last === "" ? Infinity : Number(last);
  if (end < start) return undefined;
  if (start >= size) return "unsatisfiable";
  return { start, end: Math.min(end, size - 1) };
}

/** RFC 9110 13.1.5: the range applies only while If-Range names the stored object (strongly). */
function ifRangeHolds(request: Headers, stored: Headers): boolean {
  const ifRange = request.get("if-range");
  if (ifRange === null) return true;
  return ifRange === stored.get("last-modified") ||
    (!ifRange.startsWith("W/") && ifRange === stored.get("etag"));
}

/** Reads a body while it fits in `limit`; past that, hands back the rest as a stream. */
async function readUpTo(
  body: ReadableStream<Uint8Array> | null,
  limit: number,
): Promise<{ bytes: Uint8Array<ArrayBuffer>; rest?: ReadableStream<Uint8Array> }> {
  if (!body) return { bytes: new Uint8Array() };
  const reader = body.getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    chunks.push(value);
    total += value.byteLength;
    if (total > limit) {
      const read = chunks;
      const rest = new ReadableStream<Uint8Array>({
        start(controller) {
          for (const chunk of read) controller.enqueue(chunk);
        },
        async pull(controller) {
          const next = await reader.read();
          if (next.done) controller.close();
          else controller.enqueue(next.value);
        },
        cancel: (reason) => reader.cancel(reason),
      });
      return { bytes: new Uint8Array(), rest };
    }
  }
  return { bytes: new Uint8Array(await new Blob(chunks as BlobPart[]).arrayBuffer()) };
}

/** The bytes of `range` from a stream of the whole object; stops reading once they are sent. */
function sliceStream(
  body: ReadableStream<Uint8Array>,
  range: { start: number; end: number },
): ReadableStream<Uint8Array> {
  let offset = 0;
  return body.pipeThrough(
    new TransformStream<Uint8Array, Uint8Array>({
      transform(chunk, controller) {
        const from = Math.max(range.start - offset, 0);
        const to = Math.min(range.end + 1 - offset, chunk.byteLength);
        offset += chunk.byteLength;
        if (from < to) controller.enqueue(chunk.subarray(from, to));
        if (offset > range.end) controller.terminate();
      },
    }),
  );
}

/**
 * The bytes `range` of a fill, as they arrive: each chunk is handed on as soon as it is read
 * from the worker, and the stream ends only once the fill is stored (so a request made right
 * after finds the entry), or errors when the fill failed.
 */
function fillReader(fill: Fill, range: { start: number; end: number }): ReadableStream<Uint8Array> {
  let index = 0;
  let offset = 0;
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      for (;;) {
        const chunk = fill.chunks[index];
        if (chunk && offset <= range.end) {
          index++;
          const from = Math.max(range.start - offset, 0);
          const to = Math.min(range.end + 1 - offset, chunk.byteLength);
          offset += chunk.byteLength;
          if (from < to) return controller.enqueue(chunk.subarray(from, to));
          continue;
        }
        if (fill.ended instanceof Error) return controller.error(fill.ended);
        if (fill.ended === "stored") return controller.close();
        await new Promise<void>((resolve) => {
          const wake = () => {
            fill.wake.delete(wake);
            resolve();
          };
          fill.wake.add(wake);
        });
      }
    },
  }, { highWaterMark: 0 });
}

/** The whole body, handing each chunk to `onChunk` as it comes; throws past `limit` bytes. */
async function readAll(
  body: ReadableStream<Uint8Array>,
  how: { limit: number; onChunk: (chunk: Uint8Array) => void },
): Promise<Uint8Array<ArrayBuffer>> {
  const chunks: Uint8Array[] = [];
  let total = 0;
  for await (const chunk of body) {
    total += chunk.byteLength;
    if (total > how.limit) throw new Error(`the worker sent more than ${how.limit} bytes`);
    chunks.push(chunk);
    how.onChunk(chunk);
  }
  return new Uint8Array(await new Blob(chunks as BlobPart[]).arrayBuffer());
}
