/**
 * An A/B micro-measure of the worker's own JavaScript per request: the default export's
 * `fetch()` of two versions of `worker_template.ts`, called in this process (Deno's V8, not
 * workerd), B2 and the Cache API replaced by in-memory stand-ins, so that what is left is the
 * worker's work and the runtime's Request/Response/Headers. Versions and cases are interleaved
 * in every round, the order rotated, and the process's CPU time per request is taken (user +
 * system, `process.cpuUsage()`): on a shared machine, read the spread before the median.
 *
 * ```sh
 * git show 6ef2f9b:worker_template.ts > /tmp/old_worker_template.ts
 * deno run -A bench/fetch_ab.ts /tmp/old_worker_template.ts worker_template.ts
 * ```
 *
 * Options after the two modules: `--rounds N` (default 15), `--requests N` per case, version
 * and round (default 2000).
 *
 * @module
 */

import process from "node:process";
import { parseArgs } from "node:util";
import { generateSigningKey, signLink } from "../main.ts";
import type { Env, ExecutionContext } from "../worker_template.ts";
import { alternatedRounds, median } from "./measure.ts";
import { smallObject } from "./processes.ts";

type Worker = {
  fetch(request: Request, env: Env, ctx: ExecutionContext): Promise<Response>;
};

const SITE = "https://cdn.example.com";
const BASE: Env = {
  B2_DOWNLOAD_TOKEN: "token",
  B2_DOWNLOAD_URL: "https://f000.backblazeb2.invalid",
  B2_BUCKET_NAME: "bench-bucket",
  B2_FILE_PREFIX: "",
  WORKER_FINGERPRINT: "ab",
};
const BODY = smallObject();
// What B2 answers a download with, as local/fake_b2.ts writes it.
const B2_HEADERS = {
  "Content-Type": "application/octet-stream",
  "Content-Length": String(BODY.byteLength),
  "Last-Modified": "Tue, 14 Nov 2023 22:13:20 GMT",
  "X-Bz-File-Id": "4_zbench_f1",
  "X-Bz-File-Name": "1k.bin",
  "X-Bz-Content-Sha1": "da39a3ee5e6b4b0d3255bfef95601890afd80709",
  "X-Bz-Upload-Timestamp": "1700000000000",
};

/** The Cache API's `caches.default`, kept in a Map: enough for a hit's lookup and a put. */
class MemoryCache {
  #kept = new Map<string, Response>();
  match(request: Request | string): Promise<Response | undefined> {
    const key = typeof request === "string" ? request : request.url;
    return Promise.resolve(this.#kept.get(key)?.clone());
  }
  async put(request: Request | string, response: Response): Promise<void> {
    const key = typeof request === "string" ? request : request.url;
    this.#kept.set(key, new Response(await response.arrayBuffer(), response));
  }
  delete(request: Request | string): Promise<boolean> {
    return Promise.resolve(this.#kept.delete(typeof request === "string" ? request : request.url));
  }
}

/** Every fetch the worker makes is B2's download of the 1 KiB object. */
function stubRuntime(): void {
  globalThis.fetch = () => Promise.resolve(new Response(BODY, { headers: B2_HEADERS }));
  Object.defineProperty(globalThis, "caches", {
    value: { default: new MemoryCache() },
    configurable: true,
  });
}

async function cases(key: string) {
  const now = Math.floor(Date.now() / 1000);
  const link = await signLink(SITE, "/members/1k.bin", { key, expires: now + 3600 });
  const prefixes = { WORKER_SIGNED_PREFIXES: "/members/", WORKER_SIGNING_KEY: key };
  return {
    uncached: { url: `${SITE}/1k.bin`, env: { ...BASE, WORKER_CACHE_TTL: "0" } },
    hit: { url: `${SITE}/1k.bin`, env: { ...BASE, WORKER_CACHE_MODE: "cache-api" } },
    signed: { url: link.url, env: { ...BASE, WORKER_CACHE_TTL: "0", ...prefixes } },
    publicWithPrefixes: {
      url: `${SITE}/1k.bin`,
      env: { ...BASE, WORKER_CACHE_TTL: "0", ...prefixes },
    },
  };
}

async function main(): Promise<void> {
  const { values, positionals } = parseArgs({
    args: Deno.args,
    allowPositionals: true,
    options: {
      rounds: { type: "string", default: "15" },
      requests: { type: "string", default: "2000" },
    },
  });
  const [a, b] = positionals;
  if (!a || !b) throw new Error("Usage: fetch_ab.ts <module A> <module B> [--rounds N]");
  const rounds = Number(values.rounds);
  const requests = Number(values.requests);
  stubRuntime();
  const load = async (path: string) =>
    (await import(new URL(path, `file://${Deno.cwd()}/`).href)).default as Worker;
  const versions = { A: await load(a), B: await load(b) };
  const all = await cases(generateSigningKey());
  const ctx: ExecutionContext = { waitUntil() {} };
  const once = async (worker: Worker, name: keyof typeof all) => {
    const { url, env } = all[name];
    const response = await worker.fetch(new Request(url), env, ctx);
    if (response.status !== 200) throw new Error(`${name}: ${response.status}`);
    await response.arrayBuffer();
  };
  const names = Object.keys(all) as (keyof typeof all)[];
  const runs = names.flatMap((name) => [`${name} A`, `${name} B`] as const);
  const measure = async (run: string) => {
    const [name, version] = run.split(" ") as [keyof typeof all, "A" | "B"];
    const started = process.cpuUsage();
    for (let i = 0; i < requests; i++) await once(versions[version], name);
    const spent = process.cpuUsage(started);
    return (spent.user + spent.system) / requests;
  };
  // Warm both versions' JIT and the hit's cache entry before anything counts.
  for (const run of runs) {
    const [name, version] = run.split(" ") as [keyof typeof all, "A" | "B"];
    for (let i = 0; i < requests / 4; i++) await once(versions[version], name);
  }
  const perRound = await alternatedRounds({ cases: runs, rounds }, measure);
  const spread = (values: number[]) => {
    const sorted = values.toSorted((x, y) => x - y);
    return `${sorted[0]!.toFixed(1)} to ${sorted.at(-1)!.toFixed(1)}`;
  };
  console.log(`A: ${a}\nB: ${b}\n${rounds} rounds of ${requests} requests per case and version`);
  console.log("case                  A µs/req  B µs/req  B-A per round: median (min to max)");
  for (const name of names) {
    const as = perRound.map((r) => r[`${name} A`]);
    const bs = perRound.map((r) => r[`${name} B`]);
    const diffs = perRound.map((r) => r[`${name} B`] - r[`${name} A`]);
    console.log(
      `${name.padEnd(20)}  ${median(as).toFixed(1).padStart(8)}  ${
        median(bs).toFixed(1).padStart(8)
      }  ${median(diffs).toFixed(1)} (${spread(diffs)}), B lower in ${
        diffs.filter((d) => d < 0).length
      } of ${rounds}`,
    );
  }
}

if (import.meta.main) await main();
