/**
 * The floors of a worker hop, for the benchmark: a module worker that sends
 * each request on to `ORIGIN` with the same path and query and returns the
 * answer untouched. With `CACHE` set to `on` it first looks the URL up in
 * the edge cache (`caches.default`) and keeps what it fetched there, so its
 * hits are the least a cache hit can cost. Whatever our worker costs beyond
 * these is its own.
 *
 * `worker_overhead.ts` strips the types and runs it in workerd, like the
 * real worker.
 *
 * @module
 */

/** The bindings. */
export interface Env {
  /** Like `http://127.0.0.1:8000`: where every request goes. */
  ORIGIN: string;
  /** `on` to serve from the edge cache. @default "off" */
  CACHE?: string;
}

/** The part of the Workers runtime this module uses; Deno's lib does not declare it. */
interface ExecutionContext {
  waitUntil(promise: Promise<unknown>): void;
}

export default {
  async fetch(request: Request, env: Env, ctx: ExecutionContext): Promise<Response> {
    const url = new URL(request.url);
    const origin = new URL(url.pathname + url.search, env.ORIGIN);
    if (env.CACHE !== "on") return fetch(origin, request);
    const cache = (caches as unknown as { default: Cache }).default;
    const hit = await cache.match(request.url);
    if (hit) return hit;
    const response = await fetch(origin, request);
    const copy = new Response(response.body, response);
    copy.headers.set("Cache-Control", "public, max-age=86400");
    ctx.waitUntil(cache.put(request.url, copy.clone()));
    return copy;
  },
};
