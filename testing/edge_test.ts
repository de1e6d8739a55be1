/**
 * The whole chain, end to end: `main.ts` commands run as a user runs them
 * (`run()`, the real `refresh` and `purge`) against the fake B2 and the fake
 * Cloudflare API; every upload Cloudflare accepts goes live in workerd behind
 * the Workers Cache stand-in, exactly as uploaded; visitors, purges and the
 * next refreshes go through that stand-in. The unit tests
 * (`worker_template_test.ts`, `main_test.ts`, `workers_cache_test.ts`) pin
 * each header and each decision; these prove what they add up to, as issues
 * 8 and 11 ask ("Proof"): the cache outlives tokens and outages, purges
 * reach exactly what they name, and a protected object is never served to a
 * request that would be refused.
 *
 * @module
 */

import assert from "node:assert/strict";
import {
  deriveEventSecret,
  derivePurgeKey,
  generateSigningKey,
  run,
  signLink,
  signPurge,
  type WorkerMetadata,
} from "../main.ts";
import {
  type FakeB2,
  type FakeB2Options,
  type FakeFile,
  patternByte,
  signEventBody,
  startFakeB2,
} from "../local/fake_b2.ts";
import { listingTag, objectTag } from "../worker_template.ts";
import { type FakeCloudflare, startFakeCloudflare } from "../local/fake_cloudflare.ts";
import { startWorkersCache, type WorkersCache } from "../local/workers_cache.ts";

// Distinctive, so that any appearance in an answer or in output is a leak.
const BUCKET = "vault-e9d2";
const B2_KEY = "fake-application-key";
const WORKER = "b2-private-cdn";
// Where the fake Cloudflare says the worker answers (its account subdomain is "fake-subdomain"):
// requests there go to the stand-in.
const WORKERS_DEV_SUFFIX = ".fake-subdomain.workers.dev";
const PURGE_PATH = "/.well-known/b2-private-cdn/purge";
const HELLO = "hello from B2\n";
const PATTERN_SIZE = 1000;
const SIGNING_KEY = generateSigningKey();
const SIGNED = { WORKER_SIGNED_PREFIXES: "/members/", WORKER_SIGNING_KEY: SIGNING_KEY };
// The defaults refresh deploys (docs/edge-cache.md): one day fresh, a day of
// stale-while-revalidate, a week of stale-if-error.
const DAY = 86_400;

const FILES: FakeFile[] = [
  { name: "site/hello.txt", body: HELLO, contentType: "text/plain" },
  { name: "site/a", body: "object a" },
  { name: "site/a-2", body: "object a-2" },
  { name: "site/docs/one.txt", body: "doc one" },
  { name: "site/docs/two.txt", body: "doc two" },
  { name: "site/members/a.txt", body: "members only" },
  { name: "site/pattern.bin", body: { size: PATTERN_SIZE } },
  { name: "v2/hello.txt", body: "hello from the new prefix\n" },
];

/** What a visitor got. `body` is decoded byte for byte (latin1), so binary compares exactly. */
interface Visit {
  status: number;
  /** `cf-cache-status`, or `none` when Workers Cache is off. */
  label: string;
  headers: Headers;
  body: string;
}

interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

interface Edge {
  b2: FakeB2;
  cloudflare: FakeCloudflare;
  cache: WorkersCache;
  /** Moves the stand-in's clock (not workerd's, nor B2's). */
  advance(seconds: number): void;
  /** Moves B2's clock, which decides when download tokens expire. */
  advanceB2(seconds: number): void;
  /** Runs `main.ts <args>` with the edge's settings plus `env`. */
  cli(args: string[], env?: Record<string, string>): Promise<CliResult>;
  visit(path: string, init?: RequestInit): Promise<Visit>;
  /** `METHOD path` of each download B2 got since the last call. */
  b2Asked(): string[];
  /** The download token of the version answering now. */
  liveToken(): string;
  /** Each version that went live: how many purges the stand-in had done by then. */
  deploys: { purgesBefore: number }[];
  /** Signed purge requests that reached the stand-in, whatever they answered. */
  purgePosts: number;
  /** Deploys wait for the next pause of the CLI (`ctx.sleep`), as a deploy spreading would. */
  propagateOnSleep: boolean;
  close(): Promise<void>;
}

/**
 * A fake B2 and Cloudflare account, and the stand-in where each accepted
 * upload goes live. `env` is added to every command's settings.
 */
async function startEdge(
  options: {
    env?: Record<string, string>;
    privateAnywhereBypasses?: boolean;
    b2?: FakeB2Options;
  } = {},
): Promise<Edge> {
  const clocks = { cache: Date.now(), b2: 0 };
  const b2 = startFakeB2({
    buckets: [{ id: "bucket-edge", name: BUCKET, files: structuredClone(FILES) }],
    now: () => Date.now() + clocks.b2 * 1000,
    // B2's webhook POSTs reach the worker's workers.dev address, which leads to the stand-in.
    webhookFetch: (url, init) => network(url, init),
    ...options.b2,
  });
  const cloudflare = startFakeCloudflare();
  const logs: string[] = [];
  const cache = await startWorkersCache({
    now: () => clocks.cache,
    onLog: (text) => logs.push(text),
    ...(options.privateAnywhereBypasses !== undefined &&
      { privateAnywhereBypasses: options.privateAnywhereBypasses }),
  });
  const env = {
    B2_APPLICATION_KEY_ID: "fake-key-id",
    B2_APPLICATION_KEY: B2_KEY,
    B2_BUCKET_NAME: BUCKET,
    B2_FILE_PREFIX: "site/",
    B2_API_URL: b2.url,
    CLOUDFLARE_ACCOUNT_ID: "acc00000000000000000000000000001",
    CLOUDFLARE_API_TOKEN: "fake-cf-token",
    CLOUDFLARE_API_BASE_URL: cloudflare.url,
    ...options.env,
  };
  const secrets = [
    B2_KEY,
    "fake-cf-token",
    SIGNING_KEY,
    await derivePurgeKey(B2_KEY),
    (await deriveEventSecret(B2_KEY)).secret,
    LISTING_KEY,
  ];
  let pending: WorkerMetadata | undefined;
  let seen = 0;

  const goLive = async () => {
    const stored = cloudflare.scripts.get(WORKER);
    if (!stored) throw new Error("an upload was accepted but the fake Cloudflare holds none");
    e.deploys.push({ purgesBefore: cache.purges.length });
    await cache.deploy({ metadata: stored.metadata as WorkerMetadata, module: stored.module });
  };
  const settle = async () => {
    if (!pending) return;
    pending = undefined;
    await goLive();
  };

  /** The network as the CLI sees it: the worker's host leads to the stand-in. */
  const network = async (input: string | URL | Request, init?: RequestInit) => {
    const url = new URL(input instanceof Request ? input.url : input);
    if (url.hostname.endsWith(WORKERS_DEV_SUFFIX)) {
      if (url.pathname === PURGE_PATH) e.purgePosts++;
      return await fetch(`${cache.url}${url.pathname}${url.search}`, init);
    }
    const response = await fetch(input, init);
    const upload = init?.method === "PUT" && response.ok &&
      new RegExp(`/workers/scripts/${WORKER}$`).test(url.pathname);
    if (upload) {
      pending = cloudflare.scripts.get(WORKER)!.metadata as WorkerMetadata;
      if (!e.propagateOnSleep) await settle();
    }
    return response;
  };

  const leaks = (where: string, text: string) => {
    for (const secret of [...secrets, ...b2.downloadTokens.keys(), ...b2.accountTokens]) {
      assert.ok(!text.includes(secret), `${where} shows a secret`);
    }
  };

  const e: Edge = {
    b2,
    cloudflare,
    cache,
    deploys: [],
    purgePosts: 0,
    propagateOnSleep: false,
    advance(seconds) {
      clocks.cache += seconds * 1000;
    },
    advanceB2(seconds) {
      clocks.b2 += seconds;
    },
    async cli(args, extra = {}) {
      const stdout: string[] = [];
      const stderr: string[] = [];
      const code = await run({
        args,
        env: { ...env, ...extra },
        readEnvFile: () => Promise.resolve(undefined),
        io: { stdout: (t) => stdout.push(t), stderr: (t) => stderr.push(t) },
        ctx: {
          fetch: network as typeof fetch,
          // A pause of the CLI is when a deploy in flight reaches the edge.
          sleep: () => settle(),
          random: () => 0.5,
          timeoutMs: 10_000,
        },
      });
      // Whatever was uploaded reaches the edge in the end.
      await settle();
      const result = { code, stdout: stdout.join("\n"), stderr: stderr.join("\n") };
      leaks(`main.ts ${args.join(" ")}`, result.stdout + result.stderr);
      return result;
    },
    async visit(path, init = {}) {
      const response = await fetch(`${cache.url}${path}`, { redirect: "manual", ...init });
      const body = new TextDecoder("latin1").decode(await response.bytes());
      const visit = {
        status: response.status,
        label: response.headers.get("cf-cache-status") ?? "none",
        headers: response.headers,
        body,
      };
      leaks(`${init.method ?? "GET"} ${path}`, JSON.stringify([...response.headers]) + body);
      for (const name of response.headers.keys()) {
        assert.ok(!/^x-bz|^x-b2cdn-browser|^cache-tag$|^cloudflare-cdn/.test(name), name);
      }
      return visit;
    },
    b2Asked() {
      const fresh = b2.requests.slice(seen).filter((r) => r.path.startsWith("/file/"));
      seen = b2.requests.length;
      return fresh.map((r) => `${r.method} ${r.path.replace(`/file/${BUCKET}`, "")}`);
    },
    liveToken() {
      const stored = cloudflare.scripts.get(WORKER)!.metadata;
      return stored.bindings.find((b) => b.name === "B2_DOWNLOAD_TOKEN")!.text!;
    },
    async close() {
      await cache.close();
      await Promise.all([b2.close(), cloudflare.close()]);
      leaks("what the worker printed", logs.join(""));
    },
  };
  return e;
}

async function withEdge(
  options: Parameters<typeof startEdge>[0],
  body: (e: Edge) => Promise<void>,
): Promise<void> {
  const e = await startEdge(options);
  try {
    await body(e);
  } finally {
    await e.close();
  }
}

/**
 * The worker's purges of visitors' entries. The Segments entrypoint, where large objects'
 * segments are kept (a purge reaches only the entrypoint that calls it), is purged only of
 * what visitors' entries were purged of first: checked here, so every test that reads purges
 * checks it. Its own tests check that each purge reaches it.
 */
function visitorPurges(e: Edge): Edge["cache"]["purges"] {
  const all = e.cache.purges;
  for (const [i, p] of all.entries()) {
    if (p.entrypoint !== "Segments") continue;
    const before = all.slice(0, i).filter((q) => q.entrypoint === "default" && q.result.success);
    const everything = before.some((q) => q.options.purgeEverything);
    const tags = new Set(before.flatMap((q) => q.options.tags ?? []));
    const prefixes = new Set(before.flatMap((q) => q.options.pathPrefixes ?? []));
    assert.ok(
      everything ||
        ((p.options.tags ?? []).every((tag) => tags.has(tag)) &&
          (p.options.pathPrefixes ?? []).every((prefix) => prefixes.has(prefix)) &&
          !p.options.purgeEverything),
      `Segments purged of ${JSON.stringify(p.options)} before visitors' entries were`,
    );
  }
  return all.filter((p) => p.entrypoint === "default");
}

/** What `visit` makes of these bytes of the pattern file. */
function patternText(start: number, end: number): string {
  const bytes = Uint8Array.from({ length: end - start + 1 }, (_, i) => patternByte(start + i));
  return new TextDecoder("latin1").decode(bytes);
}

/** `[status, label, body]`: what most assertions here compare. */
function seen(visit: Visit): [number, string, string] {
  return [visit.status, visit.label, visit.body];
}

async function refreshed(e: Edge, env: Record<string, string> = {}): Promise<CliResult> {
  const result = await e.cli(["refresh"], env);
  assert.equal(result.code, 0, result.stderr);
  return result;
}

// ---------------------------------------------------------------------------
// Issue 8: Workers Cache
// ---------------------------------------------------------------------------

Deno.test("a refresh with a new token keeps every cached object: HEAD and ranges are hits, B2 is not asked", () =>
  withEdge({}, async (e) => {
    await refreshed(e);
    const firstToken = e.liveToken();
    assert.deepEqual(seen(await e.visit("/hello.txt")), [200, "MISS", HELLO]);
    assert.deepEqual(seen(await e.visit("/pattern.bin")), [
      200,
      "MISS",
      patternText(0, PATTERN_SIZE - 1),
    ]);
    assert.deepEqual(e.b2Asked(), ["GET /site/hello.txt", "GET /site/pattern.bin"]);

    await refreshed(e);
    assert.notEqual(e.liveToken(), firstToken);
    assert.equal(e.deploys.length, 2);
    const runs = e.cache.stats.workerRuns;
    const cases: [string, RequestInit, [number, string, string]][] = [
      ["/hello.txt", {}, [200, "HIT", HELLO]],
      ["/hello.txt", { method: "HEAD" }, [200, "HIT", ""]],
      ["/pattern.bin", { headers: { Range: "bytes=10-19" } }, [206, "HIT", patternText(10, 19)]],
      ["/pattern.bin", { headers: { Range: "bytes=-5" } }, [206, "HIT", patternText(995, 999)]],
      ["/pattern.bin", { headers: { Range: "bytes=990-" } }, [206, "HIT", patternText(990, 999)]],
      ["/pattern.bin", { method: "HEAD", headers: { Range: "bytes=0-9" } }, [206, "HIT", ""]],
      ["/pattern.bin", { headers: { Range: "bytes=1000-" } }, [416, "HIT", ""]],
    ];
    for (const [path, init, expected] of cases) {
      const visit = await e.visit(path, init);
      assert.deepEqual(seen(visit), expected, `${path} ${JSON.stringify(init)}`);
      if (visit.status === 206) assert.match(visit.headers.get("content-range")!, /\/1000$/);
    }
    assert.deepEqual(e.b2Asked(), []);
    assert.equal(e.cache.stats.workerRuns, runs, "no hit runs the worker");
    assert.deepEqual(e.cache.purges, [], "a token-only refresh purges nothing");
    assert.equal(e.purgePosts, 0);
  }));

Deno.test("stale objects: refreshed in the background, and served through a B2 outage or a dead token", async (t) => {
  await withEdge({}, async (e) => {
    await refreshed(e);
    for (const path of ["/hello.txt", "/a"]) assert.equal((await e.visit(path)).label, "MISS");
    e.b2Asked();

    await t.step("stale-while-revalidate: the stale copy at once, B2 asked behind it", async () => {
      e.b2.putFile(BUCKET, {
        name: "site/hello.txt",
        body: "hello, replaced\n",
        uploadTimestamp: 1_750_000_000_000,
      });
      e.advance(DAY + 60);
      assert.deepEqual(seen(await e.visit("/hello.txt")), [200, "UPDATING", HELLO]);
      assert.deepEqual(seen(await e.visit("/a")), [200, "UPDATING", "object a"]);
      await e.cache.idle();
      // A changed object is downloaded again; an unchanged one costs B2 a HEAD.
      assert.deepEqual(e.b2Asked().sort(), [
        "GET /site/hello.txt",
        "HEAD /site/a",
        "HEAD /site/hello.txt",
      ]);
      assert.deepEqual(seen(await e.visit("/hello.txt")), [200, "HIT", "hello, replaced\n"]);
      assert.deepEqual(seen(await e.visit("/a")), [200, "HIT", "object a"]);
      assert.deepEqual(e.b2Asked(), []);
    });

    // Past the lifetime and the stale-while-revalidate window: stale-if-error decides.
    e.advance(2 * DAY + 60);
    const staleOrFailing = async (why: string) => {
      assert.deepEqual(seen(await e.visit("/hello.txt")), [200, "STALE", "hello, replaced\n"], why);
      assert.deepEqual(seen(await e.visit("/a", { method: "HEAD" })), [200, "STALE", ""], why);
      const uncached = await e.visit("/docs/one.txt");
      assert.deepEqual([uncached.status, uncached.body], [502, "Bad gateway\n"], why);
      assert.notEqual(uncached.label, "HIT", why);
      assert.deepEqual(e.b2Asked(), [
        "HEAD /site/hello.txt",
        "HEAD /site/a",
        "GET /site/docs/one.txt",
      ]);
    };

    await t.step("a B2 outage", async () => {
      e.b2.fail("/file/", { status: 503, code: "service_unavailable", times: 3 });
      await staleOrFailing("B2 answering 503");
    });

    await t.step("an expired token", async () => {
      e.advanceB2(8 * DAY);
      await staleOrFailing("B2 answering 401 expired_auth_token");
    });

    await t.step("a revoked token, after a refresh that found B2 again", async () => {
      await refreshed(e);
      assert.deepEqual(e.cache.purges, []);
      e.b2.downloadTokens.delete(e.liveToken());
      await staleOrFailing("B2 answering 401 bad_auth_token");
    });

    await t.step("past stale-if-error (a week), the generic 502", async () => {
      e.advance(7 * DAY);
      const visit = await e.visit("/hello.txt");
      assert.deepEqual([visit.status, visit.body], [502, "Bad gateway\n"]);
      assert.deepEqual(e.b2Asked(), ["HEAD /site/hello.txt"]);
    });
  });
});

Deno.test("CORS on hits: * for every origin without Vary; a list splits the entry by Origin", async (t) => {
  await withEdge({ env: { WORKER_CORS_ORIGINS: "*" } }, async (e) => {
    await refreshed(e);
    await t.step("*", async () => {
      const answers = [
        await e.visit("/hello.txt", { headers: { Origin: "https://one.example" } }),
        await e.visit("/hello.txt"),
        await e.visit("/hello.txt", { headers: { Origin: "https://two.example" } }),
      ];
      assert.deepEqual(answers.map((a) => a.label), ["MISS", "HIT", "HIT"]);
      for (const answer of answers) {
        assert.equal(answer.headers.get("access-control-allow-origin"), "*");
        assert.equal(answer.headers.get("vary"), null);
      }
      assert.deepEqual(e.b2Asked(), ["GET /site/hello.txt"]);
    });

    await t.step("a list of origins", async () => {
      const app = "https://app.example";
      const shop = "https://shop.example";
      // A change of CORS origins purges what was stored with "*".
      await refreshed(e, { WORKER_CORS_ORIGINS: `${app},${shop}` });
      assert.deepEqual(visitorPurges(e).map((p) => p.options), [{ purgeEverything: true }]);
      const visits: [string | undefined, string, string | null][] = [
        [app, "MISS", app],
        [shop, "MISS", shop],
        [undefined, "MISS", null],
        [app, "HIT", app],
        [shop, "HIT", shop],
        [undefined, "HIT", null],
        ["https://evil.example", "MISS", null],
      ];
      for (const [origin, label, allowed] of visits) {
        const answer = await e.visit("/hello.txt", origin ? { headers: { Origin: origin } } : {});
        assert.deepEqual(
          [answer.status, answer.label, answer.headers.get("access-control-allow-origin")],
          [200, label, allowed],
          `Origin ${origin}`,
        );
        assert.equal(answer.headers.get("vary"), "Origin");
      }
      // The cost of a list: one download per origin seen (and one without).
      assert.equal(e.b2Asked().length, 4);
    });
  });
});

Deno.test("purge: a path exactly, a prefix, everything, through main.ts and the worker's ctx.cache", async (t) => {
  await withEdge({}, async (e) => {
    await refreshed(e);
    const paths = ["/a", "/a-2", "/docs/one.txt", "/docs/two.txt", "/hello.txt"];
    const labels = async () => {
      const out: Record<string, string> = {};
      for (const path of paths) out[path] = (await e.visit(path)).label;
      return out;
    };
    const all = (label: string) => Object.fromEntries(paths.map((path) => [path, label]));
    assert.deepEqual(await labels(), all("MISS"));

    await t.step("a path: /a goes, /a-2 stays", async () => {
      const { code, stdout } = await e.cli(["purge", "/a"]);
      assert.equal(code, 0);
      assert.match(stdout, /^Purged 1 path and 0 prefixes from Workers Cache in 1 request to /);
      assert.deepEqual(await labels(), { ...all("HIT"), "/a": "MISS" });
    });

    await t.step("a prefix", async () => {
      assert.equal((await e.cli(["purge", "--prefix", "/docs/"])).code, 0);
      assert.deepEqual(await labels(), {
        ...all("HIT"),
        "/docs/one.txt": "MISS",
        "/docs/two.txt": "MISS",
      });
    });

    await t.step("everything", async () => {
      const { code, stdout } = await e.cli(["purge", "--all"]);
      assert.equal(code, 0);
      assert.match(stdout, /Large objects' segments were purged too, everywhere/);
      assert.deepEqual(await labels(), all("MISS"));
    });

    await t.step("each reached the Segments entrypoint too, at once", async () => {
      const tag = await objectTag("site/a");
      assert.deepEqual(e.cache.purges.map((p) => [p.entrypoint, p.options]), [
        ["default", { tags: [tag] }],
        ["Segments", { tags: [tag] }],
        ["default", { pathPrefixes: ["/docs/"] }],
        ["Segments", { pathPrefixes: ["/docs/"] }],
        ["default", { purgeEverything: true }],
        ["Segments", { purgeEverything: true }],
      ]);
    });

    await t.step("forged, unsigned, stale and replayed requests purge nothing", async () => {
      assert.deepEqual(await labels(), all("HIT"));
      const post = async (path: string, headers: Record<string, string>, body: string) => {
        const response = await fetch(`${e.cache.url}${path}`, { method: "POST", headers, body });
        const answer = {
          status: response.status,
          headers: Object.fromEntries([...response.headers].filter(([name]) => name !== "date")),
          body: await response.text(),
        };
        return answer;
      };
      const order = JSON.stringify({ everything: true });
      const key = await derivePurgeKey(B2_KEY);
      const anyPost = await post("/hello.txt", {}, order);
      assert.equal(anyPost.status, 405);
      const signed = await signPurge(order, { key, nowMs: Date.now() });
      const purges = visitorPurges(e).length;
      const cases: [string, Record<string, string>, string][] = [
        ["unsigned", {}, order],
        ["forged", await signPurge(order, { key: "0f".repeat(32), nowMs: Date.now() }), order],
        ["stale", await signPurge(order, { key, nowMs: Date.now() - 400_000 }), order],
        ["another body", signed, JSON.stringify({ paths: ["/a"] })],
      ];
      for (const [what, headers, body] of cases) {
        assert.deepEqual(await post(PURGE_PATH, headers, body), anyPost, what);
      }
      assert.equal(visitorPurges(e).length, purges, "nothing reached ctx.cache");
      const once = await post(PURGE_PATH, signed, order);
      assert.equal(once.status, 200);
      assert.equal(visitorPurges(e).length, purges + 1);
      assert.deepEqual(await labels(), all("MISS"));
      assert.deepEqual(await post(PURGE_PATH, signed, order), anyPost, "replayed");
      assert.equal(visitorPurges(e).length, purges + 1);
      assert.deepEqual(await labels(), all("HIT"));
    });
  });
});

Deno.test("refresh purges once the new version answers, retries a refused purge, and a token-only run keeps the cache", async (t) => {
  await withEdge({}, async (e) => {
    await refreshed(e);
    assert.deepEqual(seen(await e.visit("/hello.txt")), [200, "MISS", HELLO]);

    await t.step("a new prefix: purged once the new version answers, not before", async () => {
      e.propagateOnSleep = true;
      const { stdout } = await refreshed(e, { B2_FILE_PREFIX: "v2/" });
      e.propagateOnSleep = false;
      assert.match(stdout, /purged everything: what the site serves changed/);
      // The old version answered first and purged nothing (it is not the expected one);
      // the purge came once the new one was live.
      assert.equal(e.purgePosts, 2);
      assert.deepEqual(visitorPurges(e).map((p) => [p.options, p.result.success]), [
        [{ purgeEverything: true }, true],
      ]);
      assert.equal(e.deploys.at(-2)!.purgesBefore, 0, "the new version went live before it");
      assert.deepEqual(seen(await e.visit("/hello.txt")), [
        200,
        "MISS",
        "hello from the new prefix\n",
      ]);
      assert.deepEqual(seen(await e.visit("/hello.txt")), [
        200,
        "HIT",
        "hello from the new prefix\n",
      ]);
    });

    await t.step("a purge refused by the rate limit is done by the next run", async () => {
      // Five purges a minute with bursts to 25: spend them all.
      let drained = 0;
      while ((await e.cli(["purge", "--all"])).code === 0) drained++;
      assert.ok(drained <= 25, `${drained} purges went through`);
      assert.deepEqual(seen(await e.visit("/hello.txt")).slice(0, 2), [200, "MISS"]);

      const failed = await e.cli(["refresh"], { WORKER_CORS_ORIGINS: "*", B2_FILE_PREFIX: "v2/" });
      assert.equal(failed.code, 1);
      assert.match(failed.stderr, /try again in 60 s\. The worker is deployed and remembers/);
      assert.equal(visitorPurges(e).at(-1)!.result.success, false);
      const live = e.cloudflare.scripts.get(WORKER)!.metadata.bindings;
      assert.equal(live.find((b) => b.name === "WORKER_PURGE_PENDING")?.text, "all");
      assert.equal((await e.visit("/hello.txt")).label, "HIT", "still cached: not purged");

      e.advance(60);
      const retried = await refreshed(e, { WORKER_CORS_ORIGINS: "*", B2_FILE_PREFIX: "v2/" });
      assert.match(
        retried.stdout,
        /purged everything: a purge of an earlier refresh is still owed/,
      );
      assert.deepEqual(visitorPurges(e).at(-1)!.options, { purgeEverything: true });
      assert.equal(visitorPurges(e).at(-1)!.result.success, true);
      assert.equal((await e.visit("/hello.txt")).label, "MISS");
      e.b2Asked();
    });

    await t.step("a token-only refresh purges nothing and keeps the cache", async () => {
      const posts = e.purgePosts;
      const purges = visitorPurges(e).length;
      const { stdout } = await refreshed(e, { WORKER_CORS_ORIGINS: "*", B2_FILE_PREFIX: "v2/" });
      assert.doesNotMatch(stdout, /purged/);
      assert.deepEqual([e.purgePosts, visitorPurges(e).length], [posts, purges]);
      assert.deepEqual(seen(await e.visit("/hello.txt")).slice(0, 2), [200, "HIT"]);
      assert.deepEqual(e.b2Asked(), []);
    });
  });
});

Deno.test("a query on a public path: the cached 301 to the canonical URL, which stays one entry", () =>
  withEdge({}, async (e) => {
    await refreshed(e);
    for (const query of ["?utm_source=mail", "?utm_source=mail", "?v=2"]) {
      const visit = await e.visit(`/hello.txt${query}`);
      assert.equal(visit.status, 301, query);
      assert.equal(visit.headers.get("location"), "/hello.txt", query);
    }
    assert.deepEqual(
      [
        (await e.visit("/hello.txt?utm_source=mail")).label,
        (await e.visit("/hello.txt?v=2")).label,
      ],
      ["HIT", "HIT"],
    );
    const followed = await fetch(`${e.cache.url}/hello.txt?utm_source=other`);
    assert.deepEqual([followed.status, await followed.text()], [200, HELLO]);
    assert.deepEqual(seen(await e.visit("/hello.txt")), [200, "HIT", HELLO]);
    assert.deepEqual(e.b2Asked(), ["GET /site/hello.txt"], "one download for every variant");
  }));

// ---------------------------------------------------------------------------
// Issue 11: signed links, with Workers Cache and with the Cache API
// ---------------------------------------------------------------------------

/**
 * The two edges signed links must be safe with: Workers Cache taking the case in which it
 * stores a signed answer (its private Cache-Control does not keep it out; the unsafe case),
 * and the Cache API, where the worker checks before its cache.
 */
const MODES = [
  ["Workers Cache", { privateAnywhereBypasses: false }],
  ["Cache API", { env: { WORKER_CACHE_MODE: "cache-api" } }],
] as const;

/** And Workers Cache in the other case, which costs links their hits but must still serve them. */
const LINK_MODES = [
  ...MODES,
  ["Workers Cache, private keeping signed answers out", { privateAnywhereBypasses: true }],
] as const;

function nowSeconds(): number {
  return Math.floor(Date.now() / 1000);
}

/** Path and query of a link signed for `path` at the stand-in. */
async function signed(e: Edge, path: string, expires: number): Promise<string> {
  const { url } = await signLink(e.cache.url, path, { key: SIGNING_KEY, expires });
  return url.slice(e.cache.url.length);
}

Deno.test("signed links behind each edge cache: refusals never stored, ranges and HEAD served, expiry final", async (t) => {
  const edges = await Promise.all(
    LINK_MODES.map(([, options]) =>
      startEdge({ ...options, env: { ...SIGNED, ...("env" in options && options.env) } })
    ),
  );
  try {
    for (const e of edges) await refreshed(e);
    for (const [index, [mode, options]] of LINK_MODES.entries()) {
      const e = edges[index]!;
      const kept = !("privateAnywhereBypasses" in options && options.privateAnywhereBypasses);
      await t.step(`${mode}: a link serves 200, 206 and HEAD`, async () => {
        const link = await signed(e, "/members/a.txt", nowSeconds() + 600);
        const first = await e.visit(link);
        assert.deepEqual([first.status, first.body], [200, "members only"]);
        assert.match(first.headers.get("cache-control")!, /^private, max-age=(59\d|600)$/);
        const range = await e.visit(link, { headers: { Range: "bytes=8-11" } });
        assert.deepEqual([range.status, range.body], [206, "only"]);
        assert.equal(range.headers.get("content-range"), "bytes 8-11/12");
        const head = await e.visit(link, { method: "HEAD" });
        assert.deepEqual([head.status, head.body, head.headers.get("content-length")], [
          200,
          "",
          "12",
        ]);
        // One download where the answer is kept; the whole object each time where not.
        assert.deepEqual(e.b2Asked(), Array(kept ? 1 : 3).fill("GET /site/members/a.txt"));
        const labels = [first, range, head].map((v) => v.label);
        // The worker answers a range with the whole object (so that a public one is kept),
        // which a private answer's headers keep out: BYPASS, and the edge slices it.
        if (!kept) assert.deepEqual(labels, ["BYPASS", "BYPASS", "BYPASS"]);
        else if (mode === "Workers Cache") assert.deepEqual(labels, ["MISS", "HIT", "HIT"]);
      });

      await t.step(
        `${mode}: unsigned, expired and tampered get one 403, B2 not asked`,
        async () => {
          const expires = nowSeconds() + 600;
          const link = await signed(e, "/members/a.txt", expires);
          const neighbour = await signLink(e.cache.url, "/members/sub/", {
            key: SIGNING_KEY,
            expires,
            prefix: true,
          });
          const refused = [
            "/members/a.txt",
            "/%6Dembers/a.txt",
            await signed(e, "/members/a.txt", nowSeconds() - 1),
            link.replace("/members/a.txt", "/members/b.txt"),
            link.replace(`exp=${expires}`, `exp=${expires + 1}`),
            link.replace("/members/a.txt", "/members/a.txt/"),
            `/members/a.txt?${neighbour.query}`,
          ];
          const runs = e.cache.stats.workerRuns;
          for (const path of [...refused, ...refused]) {
            const visit = await e.visit(path);
            assert.deepEqual([visit.status, visit.body], [403, "Forbidden\n"], path);
            assert.equal(visit.headers.get("cache-control"), "no-store", path);
          }
          assert.equal(e.cache.stats.workerRuns, runs + 2 * refused.length, "none is stored");
          assert.deepEqual(e.b2Asked(), []);
        },
      );

      await t.step(`${mode}: public paths are unaffected`, async () => {
        const answers = [await e.visit("/hello.txt"), await e.visit("/hello.txt")];
        for (const answer of answers) {
          assert.deepEqual([answer.status, answer.body], [200, HELLO]);
          assert.equal(answer.headers.get("cache-control"), "public, max-age=3600");
        }
        assert.deepEqual(e.b2Asked(), ["GET /site/hello.txt"]);
      });
    }

    await t.step(
      "an expired link is refused, even with its copy cached and B2 failing",
      async () => {
        const expires = nowSeconds() + 4;
        const links = await Promise.all(edges.map((e) => signed(e, "/members/a.txt", expires)));
        for (const [index, e] of edges.entries()) {
          assert.equal((await e.visit(links[index]!)).status, 200);
          e.b2Asked();
        }
        const [workersCache, cacheApi] = edges as [Edge, Edge, Edge];
        assert.equal((await workersCache.visit(links[0]!)).label, "HIT");
        // Workers Cache: the entry's lifetime ends with the link, and it is never served stale,
        // even while the worker (whose clock still takes the link) cannot reach B2.
        workersCache.b2.fail("/file/", { status: 503, times: 1 });
        workersCache.advance(5);
        const failing = await workersCache.visit(links[0]!);
        assert.ok([502, 403].includes(failing.status), `${failing.status} ${failing.body}`);
        assert.ok(!["HIT", "STALE", "UPDATING"].includes(failing.label), failing.label);
        workersCache.b2Asked();
        // Once the link has expired for the worker too: refused at every edge, B2 not asked.
        const wait = expires * 1000 - Date.now();
        if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait + 50));
        cacheApi.b2.fail("/file/", { status: 503, times: 1 });
        for (const [index, e] of edges.entries()) {
          const visit = await e.visit(links[index]!);
          const [mode] = LINK_MODES[index]!;
          assert.deepEqual([visit.status, visit.body], [403, "Forbidden\n"], mode);
          assert.deepEqual(e.b2Asked(), [], mode);
        }
      },
    );
  } finally {
    await Promise.all(edges.map((e) => e.close()));
  }
});

Deno.test("a prefix made private after its objects were cached is refused unsigned, with each edge cache", async (t) => {
  const edges = await Promise.all(MODES.map(([, options]) => startEdge(options)));
  try {
    for (const [index, [mode, options]] of MODES.entries()) {
      const e = edges[index]!;
      const env = "env" in options ? options.env : {};
      await t.step(mode, async () => {
        await refreshed(e, env);
        for (let i = 0; i < 2; i++) {
          assert.equal((await e.visit("/members/a.txt")).body, "members only");
          assert.equal((await e.visit("/hello.txt")).body, HELLO);
        }
        assert.equal(e.b2Asked().length, 2, "both cached while public");

        await refreshed(e, { ...env, ...SIGNED });
        const unsigned = await e.visit("/members/a.txt");
        assert.deepEqual([unsigned.status, unsigned.body], [403, "Forbidden\n"]);
        const link = await e.visit(await signed(e, "/members/a.txt", nowSeconds() + 600));
        assert.deepEqual([link.status, link.body], [200, "members only"]);
        assert.equal((await e.visit("/hello.txt")).body, HELLO);
        if (mode === "Workers Cache") {
          // The refresh that added the prefix purged: copies made while public are gone.
          assert.deepEqual(visitorPurges(e).map((p) => p.options), [{ purgeEverything: true }]);
          assert.deepEqual(e.b2Asked().sort(), ["GET /site/hello.txt", "GET /site/members/a.txt"]);
        } else {
          // The worker checks before caches.default, so its copy is still used, for links only.
          assert.deepEqual(e.b2Asked(), []);
        }
      });
    }
  } finally {
    await Promise.all(edges.map((e) => e.close()));
  }
});

// ---------------------------------------------------------------------------
// Issue 15: Event notifications
// ---------------------------------------------------------------------------

const EVENTS = {
  env: { B2_EVENT_NOTIFICATIONS: "on" },
  b2: {
    capabilities: [
      "listBuckets",
      "readFiles",
      "shareFiles",
      "readBucketNotifications",
      "writeBucketNotifications",
    ],
  },
};

/** Our rule on the edge's bucket, as refresh set it. */
function ourRule(e: Edge) {
  const rule = e.b2.notificationRules.get("bucket-edge")?.find((r) => r.name.startsWith("b2cdn-"));
  if (!rule) throw new Error("refresh set no rule");
  return rule;
}

/** A notification body as B2 sends it (reference guide), for names of any bucket. */
function notification(changes: { name: string; bucketName?: string; eventType?: string }[]) {
  return JSON.stringify({
    events: changes.map((c, i) => ({
      accountId: "fake-account",
      bucketId: "bucket-edge",
      bucketName: c.bucketName ?? BUCKET,
      eventId: `event-${i}`,
      eventTimestamp: Date.now(),
      eventType: c.eventType ?? "b2:ObjectCreated:Upload",
      eventVersion: 1,
      matchedRuleName: "b2cdn-b2-private-cdn",
      objectName: c.name,
      objectSize: 1,
      objectVersionId: `4_z_${i}`,
    })),
  });
}

Deno.test("a signed notification purges exactly the changed object: its next GET is a MISS from B2, a neighbour stays a HIT", () =>
  withEdge(EVENTS, async (e) => {
    await refreshed(e, EVENTS.env);
    for (const path of ["/a", "/a-2", "/a", "/a-2"]) await e.visit(path);
    assert.deepEqual(seen(await e.visit("/a")), [200, "HIT", "object a"]);
    e.b2Asked();

    const [delivery] = await e.b2.upload(BUCKET, { name: "site/a", body: "object a, replaced" });
    assert.equal(delivery?.status, 200);
    assert.match(delivery!.signature!, /^v1=[0-9a-f]{64}$/);
    assert.deepEqual(visitorPurges(e).map((p) => p.options), [{
      tags: [await objectTag("site/a")],
    }]);
    assert.deepEqual(seen(await e.visit("/a")), [200, "MISS", "object a, replaced"]);
    assert.deepEqual(seen(await e.visit("/a-2")), [200, "HIT", "object a-2"]);
    assert.deepEqual(e.b2Asked(), ["GET /site/a"]);

    // A hidden (deleted) object: its cached copy goes, and the next visitor gets the 404.
    await e.b2.hide(BUCKET, "site/a-2");
    assert.deepEqual(seen(await e.visit("/a-2")).slice(0, 2), [404, "MISS"]);

    // A replay (or B2 delivering twice) of what this isolate purged since: nothing again.
    const purges = visitorPurges(e).length;
    const replayed = await e.b2.deliver(ourRule(e), delivery!.body);
    assert.equal(replayed.status, 200);
    assert.equal(visitorPurges(e).length, purges);
    assert.deepEqual(seen(await e.visit("/a")), [200, "HIT", "object a, replaced"]);
  }));

Deno.test("unsigned, forged and altered notifications purge nothing and get what any POST gets", () =>
  withEdge(EVENTS, async (e) => {
    await refreshed(e, EVENTS.env);
    await e.visit("/a");
    const url = new URL(ourRule(e).targetConfiguration.url);
    const body = notification([{ name: "site/a" }]);
    const { secret } = await deriveEventSecret(B2_KEY);
    const post = async (path: string, headers: Record<string, string>, sent = body) => {
      const response = await fetch(`${e.cache.url}${path}`, {
        method: "POST",
        headers,
        body: sent,
      });
      const headerList = [...response.headers].filter(([name]) => name !== "date");
      return [response.status, headerList, await response.text()];
    };
    const anyPost = await post("/a", {});
    assert.equal(anyPost[0], 405);
    const target = url.pathname + url.search;
    const cases: [string, Record<string, string>, string?][] = [
      ["unsigned", {}],
      ["signed with another secret", {
        "x-bz-event-notification-signature": await signEventBody("A".repeat(32), body),
      }],
      ["a signature of another body", {
        "x-bz-event-notification-signature": await signEventBody(secret, body),
      }, notification([{ name: "site/a-2" }])],
      ["not v1", {
        "x-bz-event-notification-signature": (await signEventBody(secret, body)).replace(
          "v1",
          "v2",
        ),
      }],
    ];
    for (const [what, headers, sent] of cases) {
      assert.deepEqual(await post(target, headers, sent), anyPost, what);
    }
    assert.deepEqual(e.cache.purges, []);
    assert.deepEqual(seen(await e.visit("/a")), [200, "HIT", "object a"]);
  }));

Deno.test("events outside the prefix, of another bucket or of no object purge nothing", () =>
  withEdge(EVENTS, async (e) => {
    await refreshed(e, EVENTS.env);
    await e.visit("/hello.txt");
    const delivery = await e.b2.deliver(
      ourRule(e),
      notification([
        { name: "v2/hello.txt" },
        { name: "site/hello.txt", bucketName: "another-bucket" },
        { name: "site/hello.txt", eventType: "b2:TestEvent" },
        { name: "site/hello.txt", eventType: "b2:MultipartUploadCreated:LiveRead" },
      ]),
    );
    assert.equal(delivery.status, 200);
    assert.deepEqual(e.cache.purges, []);
    assert.deepEqual(seen(await e.visit("/hello.txt")), [200, "HIT", HELLO]);
  }));

Deno.test("a signed body with no events list is answered 200 and purges nothing, so B2 does not retry it", () =>
  withEdge(EVENTS, async (e) => {
    await refreshed(e, EVENTS.env);
    await e.visit("/hello.txt");
    for (const body of ["{}", '{"events":"site/hello.txt"}', "not JSON", "null"]) {
      const delivery = await e.b2.deliver(ourRule(e), body);
      assert.equal(delivery.status, 200, body);
    }
    assert.deepEqual(e.cache.purges, []);
    assert.deepEqual(seen(await e.visit("/hello.txt")), [200, "HIT", HELLO]);
  }));

/** Redeploys the live worker with WORKER_EVENT_COALESCE_SECONDS set, as refresh never does. */
async function coalescingFor(e: Edge, seconds: number): Promise<void> {
  const stored = e.cloudflare.scripts.get(WORKER)!;
  const metadata = structuredClone(stored.metadata) as WorkerMetadata;
  metadata.bindings.push({
    type: "plain_text",
    name: "WORKER_EVENT_COALESCE_SECONDS",
    text: String(seconds),
  });
  await e.cache.deploy({ metadata, module: stored.module });
}

Deno.test("notifications purge the segments one window after visitors' entries, all together", () =>
  withEdge(EVENTS, async (e) => {
    await refreshed(e, EVENTS.env);
    await coalescingFor(e, 1);
    const deliveries = [
      ...await e.b2.notify(BUCKET, [{ name: "site/a" }]),
      ...await e.b2.notify(BUCKET, [{ name: "site/b" }]),
    ];
    assert.deepEqual(deliveries.map((d) => d.status), [200, 200]);
    const tags = [await objectTag("site/a"), await objectTag("site/b")];
    assert.deepEqual(visitorPurges(e).map((p) => p.options), [{ tags: [tags[0]] }, {
      tags: [tags[1]],
    }]);
    const segments = () => e.cache.purges.filter((p) => p.entrypoint === "Segments");
    assert.deepEqual(segments(), [], "not yet: B2 is answered first");
    await new Promise((resolve) => setTimeout(resolve, 1_300));
    assert.deepEqual(segments().map((p) => [p.options, p.result.success]), [[{ tags }, true]]);
  }));

Deno.test("a refused purge of the segments stays owed, and the next delivery's purge takes it along", () =>
  withEdge(EVENTS, async (e) => {
    await refreshed(e, EVENTS.env);
    await coalescingFor(e, 1);
    // Spend the stand-in's purge budget (25, which both entrypoints share) down to one from
    // outside, as other purges would: each signed purge takes two.
    const left = () => 25 - e.cache.purges.filter((p) => p.result.success).length;
    while (left() >= 3) assert.equal((await e.cli(["purge", "--all"])).code, 0);
    assert.equal(left(), 1);
    const window = () => new Promise((resolve) => setTimeout(resolve, 1_300));
    const segments = () =>
      e.cache.purges.filter((p) => p.entrypoint === "Segments" && p.options.tags)
        .map((p) => [p.options.tags, p.result.success]);
    const [a, b] = [await objectTag("site/a"), await objectTag("site/b")];
    // The last purge goes to visitors' entries; the segments' purge after it is refused.
    assert.deepEqual((await e.b2.notify(BUCKET, [{ name: "site/a" }])).map((d) => d.status), [200]);
    await window();
    assert.deepEqual(segments(), [[[a], false]]);
    e.advance(60);
    assert.deepEqual((await e.b2.notify(BUCKET, [{ name: "site/b" }])).map((d) => d.status), [200]);
    await window();
    assert.deepEqual(segments(), [[[a], false], [[a, b], true]], "the owed tag goes along");
  }));

const BURST_WINDOW_SECONDS = 5;

Deno.test("a burst of uploads is coalesced: tag purges while the budget lasts, then everything, and nothing is acknowledged unpurged", () =>
  withEdge(EVENTS, async (e) => {
    await refreshed(e, EVENTS.env);
    // A short coalescing window, so that the burst ends within the test, yet longer than the
    // burst's 31 deliveries take on a loaded machine: the Segments purge comes one window after
    // the first, and must find the visitors' purge of everything done (with 1 s it did not).
    await coalescingFor(e, BURST_WINDOW_SECONDS);
    await e.visit("/hello.txt");

    const names = Array.from({ length: 1500 }, (_, i) => ({ name: `site/bulk/${i}.bin` }));
    const first = await e.b2.notify(BUCKET, [...names, { name: "site/hello.txt" }]);
    assert.equal(first.length, 31, "50 events a POST");
    const refused = first.filter((d) => d.status !== 200);
    assert.ok(refused.length > 0 && refused.every((d) => d.status === 503 && d.retryAfter));
    const kinds = visitorPurges(e).map((p) => p.options.purgeEverything ? "everything" : "tags");
    // Visitors' entries first: the budget of 25 goes to their tag purges, 5 kept in reserve;
    // the segments follow one window later, in one purge.
    assert.deepEqual(kinds, [...Array(20).fill("tags"), "everything"]);
    assert.ok(visitorPurges(e).every((p) => p.result.success), "none was refused by the cache");

    // B2 delivers again what was not answered 200; once the window has passed, one more
    // purge of everything covers them all.
    await new Promise((resolve) => setTimeout(resolve, BURST_WINDOW_SECONDS * 1000 + 100));
    const again = [];
    for (const delivery of refused) again.push(await e.b2.deliver(ourRule(e), delivery.body));
    assert.deepEqual(again.map((d) => d.status), refused.map(() => 200));
    assert.equal(visitorPurges(e).length, 22);
    // One purge of the Segments entrypoint a window, each covering all that came before it.
    const segments = e.cache.purges.filter((p) => p.entrypoint === "Segments");
    assert.ok(segments.length >= 1 && segments.length <= 3, `${segments.length} Segments purges`);
    assert.ok(segments.some((p) => p.options.purgeEverything && p.result.success));
    assert.equal(seen(await e.visit("/hello.txt"))[1], "MISS");
  }));

Deno.test("in cache-api mode a delivery never names more copies than it may delete: the rule's batch fits, a larger one is answered 503", () =>
  withEdge({ ...EVENTS, env: { ...EVENTS.env, WORKER_CACHE_MODE: "cache-api" } }, async (e) => {
    const refresh = await e.cli(["refresh"], { ...EVENTS.env, WORKER_CACHE_MODE: "cache-api" });
    assert.equal(refresh.code, 0, refresh.stderr);
    assert.equal(ourRule(e).maxEventsPerBatch, 13, "three Cache API keys a change, 40 a delivery");
    await e.visit("/a");
    await e.visit("/a");
    e.b2Asked();

    // Index pages (two keys each, three with a large object's facts), the worst case: all 200.
    const names = Array.from({ length: 38 }, (_, i) => ({ name: `site/d${i}/index.html` }));
    const deliveries = await e.b2.notify(BUCKET, [...names, { name: "site/a" }]);
    assert.deepEqual(deliveries.map((d) => d.status), [200, 200, 200]);
    assert.equal((await e.visit("/a")).body, "object a");
    assert.deepEqual(e.b2Asked(), ["GET /site/a"], "its copy here was deleted");

    // A rule from before refresh lowered the batch: 50 events, more than one delivery may
    // delete. Not acknowledged: B2 keeps them until refresh sets the batch that fits.
    await e.visit("/a");
    const bulk = Array.from({ length: 49 }, (_, i) => ({ name: `site/bulk/${i}.bin` }));
    const oversized = await e.b2.deliver(
      ourRule(e),
      notification([{ name: "site/a" }, ...bulk]),
    );
    assert.equal(oversized.status, 503);
    assert.ok(Number(oversized.retryAfter) > 0, "with Retry-After");
    assert.deepEqual(e.cache.purges, [], "no Workers Cache purge in this mode");
  }));

Deno.test("in cache-api mode a notification deletes the copy where it lands, and says so", () =>
  withEdge({ ...EVENTS, env: { ...EVENTS.env, WORKER_CACHE_MODE: "cache-api" } }, async (e) => {
    const refresh = await e.cli(["refresh"], { ...EVENTS.env, WORKER_CACHE_MODE: "cache-api" });
    assert.equal(refresh.code, 0, refresh.stderr);
    for (const path of ["/a", "/a", "/a-2"]) await e.visit(path);
    assert.deepEqual(e.b2Asked(), ["GET /site/a", "GET /site/a-2"], "the second /a was kept");

    const [delivery] = await e.b2.upload(BUCKET, { name: "site/a", body: "object a, replaced" });
    assert.equal(delivery?.status, 200);
    assert.equal((await e.visit("/a")).body, "object a, replaced");
    assert.equal((await e.visit("/a-2")).body, "object a-2");
    assert.deepEqual(e.b2Asked(), ["GET /site/a"]);
    assert.deepEqual(e.cache.purges, [], "no Workers Cache purge in this mode");
  }));

// ---------------------------------------------------------------------------
// Issue 24: Folder listings
// ---------------------------------------------------------------------------

const LISTING_KEY = "listing-application-key-e9d2";
const LISTING = {
  env: {
    ...EVENTS.env,
    ...SIGNED,
    WORKER_LISTING: "on",
    B2_LISTING_KEY_ID: "listing-key-id",
    B2_LISTING_KEY: LISTING_KEY,
  },
  b2: {
    ...EVENTS.b2,
    keys: [{
      keyId: "listing-key-id",
      applicationKey: LISTING_KEY,
      capabilities: ["listFiles"],
      restrictToBucket: BUCKET,
      namePrefix: "site/",
    }],
  },
};

Deno.test("a listing is kept at the edge for its TTL, and an upload into its folder purges it and the folders above", () =>
  withEdge(LISTING, async (e) => {
    await refreshed(e, LISTING.env);
    const lists = () => e.b2.requests.filter((r) => r.path.endsWith("b2_list_file_names")).length;
    const first = await e.visit("/docs/");
    assert.deepEqual([first.status, first.label], [200, "MISS"]);
    assert.match(first.body, /<a href="\/docs\/one\.txt">one\.txt<\/a>/);
    assert.deepEqual(seen(await e.visit("/docs/")).slice(0, 2), [200, "HIT"]);
    const top = await e.visit("/");
    assert.match(top.body, /<a href="\/docs\/">docs\/<\/a>/);
    assert.doesNotMatch(top.body, /members/, "a signed prefix is not listed");
    assert.equal(lists(), 2);

    const [delivery] = await e.b2.upload(BUCKET, { name: "site/docs/new/three.txt", body: "3" });
    assert.equal(delivery?.status, 200);
    const tags = visitorPurges(e).at(-1)!.options.tags!;
    assert.ok(tags.includes(await listingTag("site/docs/new/")));
    assert.ok(tags.includes(await listingTag("site/docs/")));
    assert.ok(tags.includes(await listingTag("site/")));
    const after = await e.visit("/docs/");
    assert.equal(after.label, "MISS");
    assert.match(after.body, /<a href="\/docs\/new\/">new\/<\/a>/);
    assert.equal(lists(), 3);

    // The TTL: a minute later the stand-in asks the worker again.
    assert.equal((await e.visit("/docs/")).label, "HIT");
    e.advance(61);
    assert.notEqual((await e.visit("/docs/")).label, "HIT");
  }));
