/**
 * `dev`: the worker that `refresh` would deploy, with a real B2 token, served on this machine
 * in workerd behind the Workers Cache stand-in, as Cloudflare would run it. Needs only the B2
 * settings; nothing is deployed.
 *
 * ```sh
 * deno task dev               # deno run -A --lock=deno.lock local/dev.ts
 * deno task dev --port 9000
 * ```
 *
 * @module
 */

import { isoSeconds, type Job, loadWorkerModule, main, prepareWorker } from "../main.ts";
import { startWorkersCache } from "./workers_cache.ts";
import { listenOn } from "./workerd.ts";
import { untilStopped } from "./shutdown.ts";

/** Serves the worker until Ctrl-C, SIGTERM, SIGHUP, or the launcher that started it is gone. */
export async function runDev({ config, ctx, io, flags }: Job): Promise<number> {
  using stop = untilStopped();
  // With the purge key refresh would give it, so that `purge` and `check-cache` work here too.
  const prepared = await prepareWorker(config.b2!, {
    module: await loadWorkerModule(),
    options: config.worker,
    ...(config.purgeSecret && { purgeSecret: config.purgeSecret.value }),
  }, ctx);
  // As deployed, Workers Cache answers hits before the worker runs; miniflare has no such
  // cache, so the stand-in sits in front, as in the demo. It reads the upload's cache_options,
  // so in the other modes it passes every request to the worker, as Cloudflare would.
  const worker = await listenOn(flags.port, "dev", () => startWorkersCache({ port: flags.port }));
  try {
    await worker.deploy(prepared.upload);
  } catch (error) {
    await worker.close();
    throw error;
  }
  const mode = config.worker.cacheMode;
  // Ctrl-C while it started up stops it now, not after saying it is ready.
  if (!stop.wasStopped()) {
    io.stdout(
      `The worker that refresh would deploy runs in workerd at ${worker.url}\n` +
        (mode === "workers-cache"
          ? "behind a stand-in for Workers Cache (local/workers_cache.ts): hits are answered " +
            "before the worker runs, and every answer says cf-cache-status.\n"
          : `Edge cache: ${mode}${
            config.worker.cacheTtl === 0 ? " (WORKER_CACHE_TTL=0)" : ""
          }: every request runs the worker, as on Cloudflare.\n`) +
        `It reads bucket "${prepared.bucket.name}" with a fresh token until ` +
        `${isoSeconds(prepared.expiresAt)}. Ctrl-C stops it.`,
    );
    await stop.stopped;
  }
  await worker.close();
  io.stderr("Stopped.");
  return 0;
}

if (import.meta.main) await main({ args: ["dev", ...Deno.args], local: { dev: runDev } });
