/**
 * The main module the Workers Cache stand-in (`workers_cache.ts`) runs in
 * workerd in front of the worker: it calls the worker's own `fetch`, unchanged,
 * with a `ctx` that also has `cache` (`purge`, `invalidate`), as Cloudflare's
 * runtime gives a cache-enabled worker (developers.cloudflare.com/workers/cache/purge/). Those
 * calls go to the stand-in through a service binding, which the worker never sees.
 *
 * The stand-in loads this file with its types stripped and points the import
 * below at the upload's main module; it is type checked against the real
 * worker meanwhile.
 *
 * @module
 */

import worker from "../worker_template.ts";

/** The part of workerd's `ExecutionContext` a worker may use. */
interface RuntimeContext {
  waitUntil(promise: Promise<unknown>): void;
  passThroughOnException(): void;
}

interface CacheService {
  fetch(url: string, init: RequestInit): Promise<Response>;
}

type Handler = (request: Request, env: unknown, ctx: unknown) => Promise<Response>;

export default {
  fetch(request: Request, env: Record<string, unknown>, ctx: RuntimeContext): Promise<Response> {
    // Named here, not in a module constant: a worker module may only export functions and
    // its handler, and workerd is strict about what the main module exports.
    const { __WORKERS_CACHE: service, ...bindings } = env;
    const call = async (operation: string, options: unknown) => {
      const answer = await (service as CacheService).fetch(`http://workers-cache/${operation}`, {
        method: "POST",
        body: JSON.stringify(options ?? {}),
      });
      return await answer.json();
    };
    const context = {
      waitUntil: (promise: Promise<unknown>) => ctx.waitUntil(promise),
      passThroughOnException: () => ctx.passThroughOnException(),
      // Assumption: a version without caching has no ctx.cache at all (the worst case for
      // a worker, which must guard it; its type is optional in @cloudflare/workers-types).
      ...(service !== undefined && {
        cache: {
          purge: (options: unknown) => call("purge", options),
          invalidate: (options: unknown) => call("invalidate", options),
        },
      }),
    };
    return (worker.fetch as unknown as Handler)(request, bindings, context);
  },
};
