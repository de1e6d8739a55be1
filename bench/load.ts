/**
 * A small HTTP load generator for when `wrk` is not installed: keeps
 * `connections` requests in flight, each loop on its own HTTP client so each
 * holds one keep-alive connection, until `seconds` pass or `maxRequests` are
 * sent. Prints one JSON line shaped like `wrk_report.lua`'s.
 *
 * ```sh
 * deno run --allow-net bench/load.ts http://127.0.0.1:8787/1k.bin --connections 16 --seconds 3
 * ```
 *
 * It runs in a process of its own so that its work is not counted against
 * the origin, which lives in the benchmark's process.
 *
 * @module
 */

import { parseArgs } from "node:util";

/** What one run measured; latencies in microseconds, as wrk reports them. */
export interface LoadResult {
  requests: number;
  durationUs: number;
  /** Failed requests and answers other than 2xx. */
  errors: number;
  p50Us: number;
  p99Us: number;
}

/** How hard and how long to push. */
export interface LoadOptions {
  /** Requests in flight at once. @default 16 */
  connections?: number;
  /** @default 3 */
  seconds?: number;
  /** A bound on the total, whatever the time. @default 1_000_000 */
  maxRequests?: number;
}

/** Sends GET requests to `url` as {@linkcode LoadOptions} says and measures them. */
export async function load(url: string, options: LoadOptions = {}): Promise<LoadResult> {
  const { connections = 16, seconds = 3, maxRequests = 1_000_000 } = options;
  const latencies: number[] = [];
  let errors = 0;
  let sent = 0;
  const start = performance.now();
  const deadline = start + seconds * 1000;
  const loop = async () => {
    using client = Deno.createHttpClient({ poolMaxIdlePerHost: 1 });
    while (performance.now() < deadline && sent < maxRequests) {
      sent++;
      const begun = performance.now();
      try {
        const response = await fetch(url, { client });
        await response.arrayBuffer();
        if (!response.ok) errors++;
      } catch {
        errors++;
      }
      latencies.push(performance.now() - begun);
    }
  };
  await Promise.all(Array.from({ length: connections }, loop));
  const durationUs = Math.round((performance.now() - start) * 1000);
  latencies.sort((a, b) => a - b);
  const at = (q: number) =>
    Math.round(
      (latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))] ?? 0) * 1000,
    );
  return { requests: latencies.length, durationUs, errors, p50Us: at(0.5), p99Us: at(0.99) };
}

if (import.meta.main) {
  const { values, positionals } = parseArgs({
    args: Deno.args,
    allowPositionals: true,
    options: {
      connections: { type: "string", default: "16" },
      seconds: { type: "string", default: "3" },
      "max-requests": { type: "string", default: "1000000" },
    },
  });
  const [url] = positionals;
  if (url === undefined) {
    console.error("Usage: load.ts <url> [--connections 16] [--seconds 3] [--max-requests N]");
    Deno.exit(2);
  }
  const result = await load(url, {
    connections: Number(values.connections),
    seconds: Number(values.seconds),
    maxRequests: Number(values["max-requests"]),
  });
  console.log(JSON.stringify(result));
}
