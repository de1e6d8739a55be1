/**
 * Runs a worker upload in workerd, Cloudflare's runtime, on this machine through miniflare:
 * what `dev`, `demo`, the tests and the bench serve from. Only the local platform imports it,
 * so no production command (nor `deno compile`) downloads miniflare and workerd.
 *
 * ```ts
 * const worker = await startLocalWorker(upload);
 * const answer = await fetch(`${worker.url}/hello.txt`);
 * await worker.dispose();
 * ```
 *
 * @module
 */

import process from "node:process";
import type { Readable } from "node:stream";
// Inline, not a deno.json import: `deno task` installs every npm package of deno.json's imports
// before it runs any task (denoland/deno#28999), which made `deno task refresh` download
// miniflare, workerd and sharp (about 192 MB) to an empty cache.
// deno-lint-ignore no-import-prefix
import { Miniflare } from "npm:miniflare@4";
import { ConfigError, type WorkerUpload } from "../main.ts";

/** A worker module running in workerd on this machine. */
export interface LocalWorker {
  /** `http://127.0.0.1:<port>`. */
  url: string;
  /**
   * The miniflare instance running workerd, for the tests and the bench. Its type is
   * miniflare's own, left out of this module's documentation.
   *
   * @ignore
   */
  miniflare: Miniflare;
  /** Stops workerd. */
  dispose(): Promise<void>;
}

/**
 * Runs an upload in workerd (Cloudflare's runtime) through miniflare, with
 * the same module and bindings Cloudflare would get. `port: 0` picks one.
 */
export async function startLocalWorker(
  upload: WorkerUpload,
  options: {
    port?: number;
    /** Where the edge cache lives, so a second worker can share it (a redeploy). */
    cachePersist?: string;
    /** Gets what the worker prints (its `console.error`, as `wrangler tail` would). */
    onLog?: (text: string) => void;
    /** Runs this module as the main one, importing the upload's as `./<main_module>`: the
     * Workers Cache stand-in's wrapper, which hands the worker a `ctx.cache`. */
    wrapper?: { path: string; contents: string };
    /** Bindings served by functions in this process (for the wrapper). */
    serviceBindings?: Record<string, (request: Request) => Promise<Response>>;
  } = {},
): Promise<LocalWorker> {
  const { onLog } = options;
  const signals = ["SIGINT", "SIGTERM"] as const;
  const before = signals.map((signal) => process.listeners(signal));
  const miniflare = new Miniflare({
    modules: [
      ...(options.wrapper ? [{ type: "ESModule" as const, ...options.wrapper }] : []),
      { type: "ESModule", path: upload.metadata.main_module, contents: upload.module },
    ],
    // Miniflare's own Request and Response types, which Deno's are at run time.
    ...(options.serviceBindings && { serviceBindings: options.serviceBindings as never }),
    compatibilityDate: upload.metadata.compatibility_date,
    bindings: Object.fromEntries(upload.metadata.bindings.map((b) => [b.name, b.text])),
    host: "127.0.0.1",
    port: options.port ?? 0,
    ...(options.cachePersist && { cachePersist: options.cachePersist }),
    ...(onLog && {
      handleRuntimeStdio(stdout: Readable, stderr: Readable) {
        stdout.on("data", (chunk: Uint8Array) => onLog(String(chunk)));
        stderr.on("data", (chunk: Uint8Array) => onLog(String(chunk)));
      },
    }),
  });
  // Its constructor adds signal handlers that exit with 130 at once, before the caller can
  // dispose workerd and close what it opened: Ctrl-C is the caller's to handle. (Its `exit`
  // hook stays, so workerd still stops if the process ends some other way.)
  signals.forEach((signal, i) => {
    for (const listener of process.listeners(signal)) {
      if (!before[i]!.includes(listener)) process.removeListener(signal, listener);
    }
  });
  try {
    const url = (await miniflare.ready).origin;
    return { url, miniflare, dispose: () => miniflare.dispose() };
  } catch (error) {
    await miniflare.dispose().catch(() => {});
    throw error;
  }
}

/**
 * Runs `start`, which listens on `port`; a port already taken becomes a
 * {@linkcode ConfigError} (exit 2) naming the port and `--port`, instead of
 * the runtime's `AddrInUse` stack.
 */
export async function listenOn<T>(
  port: number,
  command: "dev" | "demo",
  start: () => Promise<T>,
): Promise<T> {
  try {
    return await start();
  } catch (error) {
    if (!(error instanceof Deno.errors.AddrInUse)) throw error;
    throw new ConfigError([
      `Port ${port} is taken: another program (or a ${command} still running) listens on ` +
      `127.0.0.1:${port}. Stop it, or choose another port: deno task ${command} --port ${
        port === 65535 ? 8788 : port + 1
      }.`,
    ]);
  }
}
