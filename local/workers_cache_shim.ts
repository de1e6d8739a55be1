/**
 * The main module the Workers Cache stand-in (`workers_cache.ts`) runs in
 * workerd in front of the worker: it calls the worker's own entrypoints,
 * unchanged, with a `ctx` that also has `cache` (`purge`, `invalidate`), as
 * Cloudflare's runtime gives a cache-enabled worker
 * (developers.cloudflare.com/workers/cache/purge/), and `exports`, whose
 * loopback calls go through the stand-in as Workers Cache caches them
 * (developers.cloudflare.com/workers/cache/configuration/). Those calls reach
 * the stand-in through a service binding, which the worker never sees.
 *
 * The stand-in loads this file with its types stripped and points the import
 * below at the upload's main module; it is type checked against the real
 * worker meanwhile.
 *
 * @module
 */

import * as entrypoints from "../worker_template.ts";

/** The part of workerd's `ExecutionContext` a worker may use. */
interface RuntimeContext {
  waitUntil(promise: Promise<unknown>): void;
  passThroughOnException(): void;
}

interface CacheService {
  fetch(url: string, init: RequestInit): Promise<Response>;
}

type Handler = (request: Request, env: unknown, ctx: unknown) => Promise<Response>;

/** Which of the worker's entrypoints a request from the stand-in is for (see workers_cache.ts). */
const ENTRYPOINT_HEADER = "x-workers-cache-entrypoint";
/** The URL a loopback call asked for, as the stand-in gets it. */
const LOOPBACK_URL_HEADER = "x-workers-cache-loopback-url";
/** The worker's entrypoints that `ctx.exports` offers: those with a `fetch`. */
const ENTRYPOINTS = Object.keys(entrypoints).filter((key) =>
  typeof (entrypoints as Record<string, { fetch?: unknown }>)[key]?.fetch === "function"
);

export default {
  fetch(request: Request, env: Record<string, unknown>, ctx: RuntimeContext): Promise<Response> {
    const { __WORKERS_CACHE: service, ...bindings } = env;
    const name = request.headers.get(ENTRYPOINT_HEADER) ?? "default";
    const headers = new Headers(request.headers);
    headers.delete(ENTRYPOINT_HEADER);
    const inbound = new Request(request, { headers });
    return run(name, inbound, { service: service as CacheService | undefined, bindings, ctx });
  },
};

interface Runtime {
  /** Absent when the version has caching off. */
  service: CacheService | undefined;
  bindings: Record<string, unknown>;
  ctx: RuntimeContext;
}

/** Calls entrypoint `name` of the worker as workerd would, with this `ctx`. */
function run(name: string, request: Request, runtime: Runtime): Promise<Response> {
  const entrypoint = (entrypoints as Record<string, { fetch?: Handler } | undefined>)[name];
  if (typeof entrypoint?.fetch !== "function") {
    return Promise.resolve(new Response(`No entrypoint ${name}\n`, { status: 500 }));
  }
  return entrypoint.fetch(request, runtime.bindings, contextFor(name, runtime));
}

function contextFor(name: string, runtime: Runtime) {
  const { service, ctx } = runtime;
  const call = async (operation: string, options: unknown) => {
    const answer = await service!.fetch(`http://workers-cache/${operation}`, {
      method: "POST",
      headers: { [ENTRYPOINT_HEADER]: name },
      body: JSON.stringify(options ?? {}),
    });
    return await answer.json();
  };
  const loopback = (target: string) => ({
    fetch: async (request: Request) => {
      // Without caching a loopback call reaches the entrypoint as it is.
      if (!service) return await run(target, request, runtime);
      const headers = new Headers(request.headers);
      headers.set(ENTRYPOINT_HEADER, target);
      headers.set(LOOPBACK_URL_HEADER, request.url);
      const body = ["GET", "HEAD"].includes(request.method) ? undefined : await request.text();
      return await service.fetch("http://workers-cache/loopback", {
        method: request.method,
        headers,
        ...(body !== undefined && { body }),
      });
    },
  });
  return {
    waitUntil: (promise: Promise<unknown>) => ctx.waitUntil(promise),
    passThroughOnException: () => ctx.passThroughOnException(),
    exports: Object.fromEntries(ENTRYPOINTS.map((target) => [target, loopback(target)])),
    // Assumption: a version without caching has no ctx.cache at all (the worst case for
    // a worker, which must guard it; its type is optional in @cloudflare/workers-types).
    ...(service !== undefined && {
      cache: {
        purge: (options: unknown) => call("purge", options),
        invalidate: (options: unknown) => call("invalidate", options),
      },
    }),
  };
}
