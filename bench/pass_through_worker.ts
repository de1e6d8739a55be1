/**
 * The floors of a worker hop, for the benchmark: a module worker that sends
 * each request on to `ORIGIN` with the same path and query and returns the
 * answer untouched. With `CACHE` set to `on` it first looks the URL up in
 * the edge cache (`caches.default`) and keeps what it fetched there, so its
 * hits are the least a cache hit can cost. With `SEGMENT` set, a range is
 * read as aligned segments of that many bytes, each fetched through the
 * worker's own `Segment` entrypoint (`ctx.exports`), whose answers Workers
 * Cache keeps: the least a segmented answer can cost, in time and memory.
 * Whatever our worker costs beyond these is its own.
 *
 * `processes.ts` strips the types and runs it in workerd, like the
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
  /** Bytes of a segment: ranges, aligned to it, are read segment by segment. @default "" */
  SEGMENT?: string;
}

/** The part of the Workers runtime this module uses; Deno's lib does not declare it. */
interface ExecutionContext {
  waitUntil(promise: Promise<unknown>): void;
  exports?: Record<string, { fetch(request: Request): Promise<Response> }>;
}

export default {
  async fetch(request: Request, env: Env, ctx: ExecutionContext): Promise<Response> {
    const url = new URL(request.url);
    const range = /^bytes=(\d+)-(\d+)$/.exec(request.headers.get("range") ?? "");
    if (env.SEGMENT && range && ctx.exports?.Segment) {
      return segmented(url, [Number(range[1]), Number(range[2])], { env, ctx });
    }
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

/**
 * A range as one 206 fed segment by segment from the Segment entrypoint, each
 * asked for the bytes the range takes of it (the answer itself is never stored).
 */
function segmented(
  url: URL,
  [start, end]: [number, number],
  { env, ctx }: { env: Env; ctx: ExecutionContext },
): Response {
  const size = Number(env.SEGMENT);
  const { FixedLengthStream } = globalThis as unknown as {
    FixedLengthStream: new (length: number) => TransformStream<Uint8Array, Uint8Array>;
  };
  const { readable, writable } = new FixedLengthStream(end - start + 1);
  ctx.waitUntil((async () => {
    for (let index = Math.floor(start / size); index * size <= end; index++) {
      const query = new URLSearchParams(url.search);
      query.set("index", String(index));
      const from = Math.max(start, index * size) - index * size;
      const to = Math.min(end, (index + 1) * size - 1) - index * size;
      const segment = await ctx.exports!.Segment!.fetch(
        new Request(`https://segment.invalid${url.pathname}?${query}`, {
          headers: { Range: `bytes=${from}-${to}` },
        }),
      );
      await segment.body!.pipeTo(writable, { preventClose: true });
    }
    await writable.close();
  })());
  return new Response(readable, {
    status: 206,
    headers: { "Cloudflare-CDN-Cache-Control": "no-store" },
  });
}

/** The entrypoint that reads one segment from ORIGIN, kept by Workers Cache. */
export const Segment = {
  async fetch(request: Request, env: Env): Promise<Response> {
    const url = new URL(request.url);
    const size = Number(env.SEGMENT);
    const offset = Number(url.searchParams.get("index")) * size;
    // The rest of the query is the origin's (B2 takes its token as ?Authorization=).
    const query = new URLSearchParams(url.search);
    query.delete("index");
    const answer = await fetch(new URL(`${url.pathname}?${query}`, env.ORIGIN), {
      headers: { Range: `bytes=${offset}-${offset + size - 1}` },
    });
    return new Response(answer.body, {
      status: 200,
      headers: {
        "Content-Length": answer.headers.get("Content-Length") ?? "",
        "Cloudflare-CDN-Cache-Control": "public, max-age=86400",
      },
    });
  },
};
