/**
 * The worker the Workers Cache stand-in's tests put behind it: it hands each
 * request to the test's own HTTP server (`ORIGIN_URL`), so a test writes the
 * origin's behaviour as a Deno function next to its assertions, and it calls
 * `ctx.cache` for `POST /__cache/purge` and `POST /__cache/invalidate`.
 * An answer with `x-origin-throw` makes it throw, as a failing worker would.
 * `/__loopback/<path>` asks its `Side` entrypoint for `<path>` through
 * `ctx.exports` (which hands it to the origin as `/side/<path>`) and keeps the
 * answer itself out of the cache, so that only the loopback call is cached;
 * `POST /__loopback/__cache/purge` purges as `Side`.
 *
 * @module
 */

interface Env {
  ORIGIN_URL: string;
}

interface CacheContext {
  cache?: Record<"purge" | "invalidate", (options: unknown) => Promise<unknown>>;
  exports?: Record<string, { fetch(request: Request): Promise<Response> } | undefined>;
}

export default {
  async fetch(request: Request, env: Env, ctx: CacheContext): Promise<Response> {
    const url = new URL(request.url);
    if (url.pathname.startsWith("/__loopback/") && ctx.exports?.Side) {
      const path = url.pathname.slice("/__loopback".length) + url.search;
      const body = request.method === "POST" ? await request.text() : undefined;
      const call = new Request(`https://side.invalid${path}`, {
        method: request.method,
        headers: request.headers,
        ...(body !== undefined && { body }),
      });
      const answer = await ctx.exports.Side.fetch(call);
      const headers = new Headers(answer.headers);
      headers.set("cloudflare-cdn-cache-control", "no-store");
      return new Response(answer.body, { status: answer.status, headers });
    }
    return await toOrigin(request, env, ctx, "");
  },
};

/** The loopback entrypoint: the same origin, under `/side`. */
export const Side = {
  fetch(request: Request, env: Env, ctx: CacheContext): Promise<Response> {
    return toOrigin(request, env, ctx, "/side");
  },
};

async function toOrigin(
  request: Request,
  env: Env,
  ctx: CacheContext,
  under: string,
): Promise<Response> {
  const url = new URL(request.url);
  const operation = /^\/__cache\/(purge|invalidate)$/.exec(url.pathname)?.[1];
  if (request.method === "POST" && operation) {
    if (!ctx.cache) return Response.json({ error: "no ctx.cache" }, { status: 501 });
    const cache = ctx.cache[operation as "purge" | "invalidate"];
    return Response.json(await cache(await request.json()));
  }
  const headers = new Headers(request.headers);
  headers.delete("host");
  const answer = await fetch(`${env.ORIGIN_URL}${under}${url.pathname}${url.search}`, {
    method: request.method,
    headers,
    redirect: "manual",
  });
  if (answer.headers.has("x-origin-throw")) {
    await answer.body?.cancel();
    throw new Error("the origin asked the worker to throw");
  }
  return new Response(answer.body, answer);
}
