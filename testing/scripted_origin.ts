/**
 * The worker the Workers Cache stand-in's tests put behind it: it hands each
 * request to the test's own HTTP server (`ORIGIN_URL`), so a test writes the
 * origin's behaviour as a Deno function next to its assertions, and it calls
 * `ctx.cache` for `POST /__cache/purge` and `POST /__cache/invalidate`.
 * An answer with `x-origin-throw` makes it throw, as a failing worker would.
 *
 * @module
 */

interface Env {
  ORIGIN_URL: string;
}

interface CacheContext {
  cache?: Record<"purge" | "invalidate", (options: unknown) => Promise<unknown>>;
}

export default {
  async fetch(request: Request, env: Env, ctx: CacheContext): Promise<Response> {
    const url = new URL(request.url);
    const operation = /^\/__cache\/(purge|invalidate)$/.exec(url.pathname)?.[1];
    if (request.method === "POST" && operation) {
      if (!ctx.cache) return Response.json({ error: "no ctx.cache" }, { status: 501 });
      const cache = ctx.cache[operation as "purge" | "invalidate"];
      return Response.json(await cache(await request.json()));
    }
    const headers = new Headers(request.headers);
    headers.delete("host");
    const answer = await fetch(`${env.ORIGIN_URL}${url.pathname}${url.search}`, {
      method: request.method,
      headers,
      redirect: "manual",
    });
    if (answer.headers.has("x-origin-throw")) {
      await answer.body?.cancel();
      throw new Error("the origin asked the worker to throw");
    }
    return new Response(answer.body, answer);
  },
};
