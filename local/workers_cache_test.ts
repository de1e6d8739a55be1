/**
 * Tests of the Workers Cache stand-in, one documented rule each, with
 * a scripted worker (`scripted_origin.ts`) whose answers each test writes as a
 * Deno function, and the stand-in's clock in the test's hands.
 */

import assert from "node:assert/strict";
import http from "node:http";
import { stripTypeScriptTypes } from "node:module";
import {
  type CacheCheckReport,
  checkCache,
  defaultContext,
  loadWorkerModule,
  run,
  signPurge,
  type WorkerUpload,
  workerUpload,
} from "../main.ts";
import { startFakeB2 } from "./fake_b2.ts";
import {
  completeSize,
  type RangedMiss,
  startWorkersCache,
  type WorkersCache,
} from "./workers_cache.ts";

type OriginHandler = (request: Request) => Response | Promise<Response>;

interface Seen {
  method: string;
  path: string;
  headers: Headers;
}

interface Answer {
  status: number;
  /** `cf-cache-status`, or `none`. */
  label: string;
  headers: Headers;
  body: string;
}

interface Harness {
  cache: WorkersCache;
  /** The stand-in's clock, in ms; tests move it. */
  clock: { now: number };
  /** What the worker's origin answers; replaced by each test. */
  origin: OriginHandler;
  /** Requests that reached the origin (so the worker ran), since the last call. */
  seen(): Seen[];
  get(path: string, init?: RequestInit): Promise<Answer>;
  deploy(cacheOptions?: object): Promise<void>;
  cacheCall(operation: "purge" | "invalidate", options: unknown): Promise<Answer>;
  close(): Promise<void>;
}

const ON = { enabled: true, cross_version_cache: true };
const ORIGIN_MODULE = stripTypeScriptTypes(
  await Deno.readTextFile(new URL("../testing/scripted_origin.ts", import.meta.url)),
  { mode: "transform" },
);

function text(body: string, headers: Record<string, string> = {}, status = 200): Response {
  return new Response(body, { status, headers });
}

async function harness(
  options: {
    maxObjectBytes?: number;
    workerTimeoutMs?: number;
    cacheOptions?: object;
    privateAnywhereBypasses?: boolean;
    rangedMiss?: RangedMiss;
    capacityBytes?: number;
  } = {},
): Promise<Harness> {
  const clock = { now: 1_800_000_000_000 };
  const requests: Seen[] = [];
  let read = 0;
  const h = {} as Harness;
  h.origin = () => text("default", { "cache-control": "max-age=60" });
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, (request) => {
    const url = new URL(request.url);
    requests.push({
      method: request.method,
      path: url.pathname + url.search,
      headers: request.headers,
    });
    return h.origin(request);
  });
  const cache = await startWorkersCache({
    now: () => clock.now,
    ...(options.maxObjectBytes && { maxObjectBytes: options.maxObjectBytes }),
    ...(options.workerTimeoutMs && { workerTimeoutMs: options.workerTimeoutMs }),
    ...(options.privateAnywhereBypasses !== undefined &&
      { privateAnywhereBypasses: options.privateAnywhereBypasses }),
    ...(options.rangedMiss && { rangedMiss: options.rangedMiss }),
    ...(options.capacityBytes && { capacityBytes: options.capacityBytes }),
  });
  const upload = (cacheOptions?: object): WorkerUpload => ({
    metadata: {
      main_module: "worker.js",
      compatibility_date: "2026-07-01",
      bindings: [{
        type: "plain_text",
        name: "ORIGIN_URL",
        text: `http://127.0.0.1:${server.addr.port}`,
      }],
      ...(cacheOptions && { cache_options: cacheOptions }),
    } as WorkerUpload["metadata"],
    module: ORIGIN_MODULE,
  });
  Object.assign(h, {
    cache,
    clock,
    seen() {
      const fresh = requests.slice(read);
      read = requests.length;
      return fresh;
    },
    async get(path: string, init: RequestInit = {}) {
      const response = await fetch(`${cache.url}${path}`, init);
      return {
        status: response.status,
        label: response.headers.get("cf-cache-status") ?? "none",
        headers: response.headers,
        body: await response.text(),
      };
    },
    deploy: (cacheOptions?: object) => cache.deploy(upload(cacheOptions)),
    cacheCall(operation: string, body: unknown) {
      return h.get(`/__cache/${operation}`, { method: "POST", body: JSON.stringify(body) });
    },
    async close() {
      await cache.close();
      await server.shutdown();
    },
  });
  await h.deploy("cacheOptions" in options ? options.cacheOptions : ON);
  return h;
}

/** Runs `body` with a fresh stand-in and scripted worker, closing both whatever happens. */
async function withCache(
  options: Parameters<typeof harness>[0],
  body: (h: Harness) => Promise<void>,
): Promise<void> {
  const h = await harness(options);
  try {
    await body(h);
  } finally {
    await h.close();
  }
}

function labels(answers: Answer[]): string[] {
  return answers.map((a) => a.label);
}

Deno.test("the key is the path and query, not the host", () =>
  withCache({}, async (h) => {
    h.origin = (request) =>
      text(`body of ${new URL(request.url).search}`, { "cache-control": "max-age=60" });
    assert.deepEqual(labels([await h.get("/a"), await h.get("/a")]), ["MISS", "HIT"]);
    // fetch() sends the URL's host whatever it is told; node:http sends the Host given.
    assert.equal(await labelWithHost(h.cache.url, "/a", "other.example"), "HIT");
    assert.equal(h.seen().length, 1, "another host shares the entry");
    assert.equal((await h.get("/a?x=1")).label, "MISS");
    assert.equal((await h.get("/a?x=1")).label, "HIT");
    assert.equal((await h.get("/a?y=1&x=1")).label, "MISS", "order matters");
    assert.equal((await h.get("/a/")).label, "MISS", "a trailing slash matters");
    assert.equal(
      (await h.get("/a", { headers: { "x-forwarded-host": "evil.example" } })).label,
      "MISS",
      "anti-poisoning headers are part of the key",
    );
    assert.equal(h.seen().length, 4);
  }));

function labelWithHost(base: string, path: string, host: string): Promise<string> {
  const url = new URL(base);
  return new Promise((resolve, reject) => {
    http.get(
      { host: url.hostname, port: Number(url.port), path, headers: { host } },
      (response) => {
        response.resume();
        response.on("end", () => resolve(String(response.headers["cf-cache-status"])));
      },
    ).on("error", reject);
  });
}

Deno.test("the version is part of the key unless cross_version_cache", async (t) => {
  await withCache({ cacheOptions: { enabled: true } }, async (h) => {
    await t.step("without it, a redeploy starts cold", async () => {
      assert.deepEqual(labels([await h.get("/v"), await h.get("/v")]), ["MISS", "HIT"]);
      await h.deploy({ enabled: true });
      assert.equal((await h.get("/v")).label, "MISS");
    });
    await t.step("with it, entries survive redeploys", async () => {
      await h.deploy(ON);
      assert.deepEqual(labels([await h.get("/w"), await h.get("/w")]), ["MISS", "HIT"]);
      await h.deploy(ON);
      assert.equal((await h.get("/w")).label, "HIT");
    });
  });
});

Deno.test("without cache_options, or with enabled false, nothing is cached", async (t) => {
  for (const cacheOptions of [undefined, { enabled: false, cross_version_cache: true }]) {
    await t.step(
      JSON.stringify(cacheOptions ?? "absent"),
      () =>
        withCache({ cacheOptions }, async (h) => {
          h.origin = () =>
            text("x", {
              "cache-control": "max-age=60",
              "cloudflare-cdn-cache-control": "max-age=600",
              "cache-tag": "t",
            });
          const answers = [await h.get("/n"), await h.get("/n")];
          assert.deepEqual(labels(answers), ["none", "none"]);
          assert.equal(h.seen().length, 2);
          assert.equal(answers[0]!.headers.get("cache-tag"), "t", "not stripped either");
          const purge = await h.cacheCall("purge", { purgeEverything: true });
          assert.equal(purge.status, 501, "no ctx.cache is given");
        }),
    );
  }
});

Deno.test("GET and HEAD share an entry; a HEAD miss reaches the worker as GET", () =>
  withCache({}, async (h) => {
    h.origin = () => text("0123456789", { "cache-control": "max-age=60" });
    const head = await h.get("/h", { method: "HEAD" });
    assert.deepEqual([head.label, head.body, head.headers.get("content-length")], [
      "MISS",
      "",
      "10",
    ]);
    assert.deepEqual(h.seen().map((s) => s.method), ["GET"]);
    const get = await h.get("/h");
    assert.deepEqual([get.label, get.body], ["HIT", "0123456789"], "the full body was stored");
    assert.equal((await h.get("/h", { method: "HEAD" })).label, "HIT");
    assert.equal(h.seen().length, 0);
  }));

/** An origin that honours one `bytes=a-b` range with a 206, as B2 does. */
function ranged(body: string, headers: Record<string, string>): OriginHandler {
  return (request) => {
    const match = /^bytes=(\d+)-(\d*)$/.exec(request.headers.get("range") ?? "");
    if (!match) return text(body, headers);
    const start = Number(match[1]);
    const end = match[2] === "" ? body.length - 1 : Math.min(Number(match[2]), body.length - 1);
    return text(body.slice(start, end + 1), {
      ...headers,
      "content-range": `bytes ${start}-${end}/${body.length}`,
    }, 206);
  };
}

Deno.test("a ranged miss reaches the worker with its Range; a 206 is never stored", () =>
  withCache({}, async (h) => {
    h.origin = ranged("0123456789", { "cache-control": "public, max-age=60" });
    const answers = [
      await h.get("/r", { headers: { range: "bytes=2-4" } }),
      await h.get("/r", { headers: { range: "bytes=2-4" } }),
      await h.get("/r", { headers: { range: "bytes=0-", "if-range": '"v1"' } }),
    ];
    assert.deepEqual(answers.map((a) => [a.status, a.label, a.body]), [
      [206, "MISS", "234"],
      [206, "MISS", "234"],
      [206, "MISS", "0123456789"],
    ]);
    assert.equal(answers[0]!.headers.get("content-range"), "bytes 2-4/10");
    const seen = h.seen();
    assert.deepEqual(seen.map((s) => s.headers.get("range")), [
      "bytes=2-4",
      "bytes=2-4",
      "bytes=0-",
    ]);
    assert.equal(seen[2]!.headers.get("if-range"), '"v1"', "If-Range reaches the worker too");
    // Only a request without Range fills the entry, and ranges are then answered from it.
    assert.equal((await h.get("/r")).label, "MISS");
    const hit = await h.get("/r", { headers: { range: "bytes=2-4" } });
    assert.deepEqual([hit.status, hit.label, hit.body], [206, "HIT", "234"]);
    assert.equal(h.seen().length, 1);
  }));

Deno.test("a whole 200 to a ranged miss is stored and later ranges are answered from it", async (t) => {
  const cases: [RangedMiss, [number, string]][] = [
    ["slice", [206, "234"]],
    ["whole", [200, "0123456789"]],
    ["removed", [206, "234"]],
  ];
  for (const [rangedMiss, [status, body]] of cases) {
    await t.step(`rangedMiss: "${rangedMiss}"`, () =>
      withCache({ rangedMiss }, async (h) => {
        h.origin = () => text("0123456789", { "cache-control": "max-age=60" });
        const first = await h.get("/r", { headers: { range: "bytes=2-4" } });
        assert.deepEqual([first.status, first.label, first.body], [status, "MISS", body]);
        assert.equal(
          h.seen()[0]!.headers.get("range"),
          rangedMiss === "removed" ? null : "bytes=2-4",
        );
        const suffix = await h.get("/r", { headers: { range: "bytes=-3" } });
        assert.deepEqual([suffix.status, suffix.label, suffix.body], [206, "HIT", "789"]);
        assert.equal(suffix.headers.get("content-range"), "bytes 7-9/10");
        const beyond = await h.get("/r", { headers: { range: "bytes=10-" } });
        assert.deepEqual([beyond.status, beyond.headers.get("content-range")], [416, "bytes */10"]);
        const whole = await h.get("/r");
        assert.deepEqual([whole.status, whole.body], [200, "0123456789"]);
        const stale = await h.get("/r", { headers: { range: "bytes=0-1", "if-range": '"old"' } });
        assert.deepEqual([stale.status, stale.body], [200, "0123456789"], "If-Range not matching");
        assert.equal(h.seen().length, 0);
      }));
  }
});

Deno.test("a 206 made by the worker is never stored, whatever its headers", () =>
  withCache({}, async (h) => {
    h.origin = () =>
      text("01", { "cache-control": "public, max-age=60", "content-range": "bytes 0-1/10" }, 206);
    const answers = [await h.get("/p"), await h.get("/p")];
    assert.deepEqual(answers.map((a) => [a.status, a.label]), [[206, "MISS"], [206, "MISS"]]);
    assert.equal(h.seen().length, 2);
  }));

Deno.test("completeSize() is the whole object's size: Content-Range's total, else Content-Length", () => {
  const size = (status: number, headers: Record<string, string>) =>
    completeSize(status, new Headers(headers));
  assert.equal(
    size(206, { "content-range": "bytes 0-0/21474836480", "content-length": "1" }),
    21474836480,
  );
  assert.equal(size(206, { "content-range": "bytes 0-0/*" }), undefined);
  assert.equal(size(200, { "content-length": "536870913" }), 536870913);
  assert.equal(size(200, {}), undefined);
});

Deno.test("Cloudflare-CDN-Cache-Control wins over CDN-Cache-Control over Cache-Control", async (t) => {
  await withCache({}, async (h) => {
    await t.step("Cloudflare-CDN-Cache-Control governs and is stripped", async () => {
      h.origin = () =>
        text("x", {
          "cloudflare-cdn-cache-control": "max-age=100",
          "cdn-cache-control": "max-age=10",
          "cache-control": "max-age=1",
        });
      const miss = await h.get("/c1");
      assert.equal(miss.headers.get("cloudflare-cdn-cache-control"), null);
      assert.equal(miss.headers.get("cdn-cache-control"), "max-age=10");
      assert.equal(miss.headers.get("cache-control"), "max-age=1");
      h.clock.now += 50_000;
      const hit = await h.get("/c1");
      assert.equal(hit.label, "HIT");
      assert.equal(hit.headers.get("cloudflare-cdn-cache-control"), null);
    });
    await t.step("then CDN-Cache-Control, passed on", async () => {
      h.origin = () =>
        text("x", { "cdn-cache-control": "max-age=100", "cache-control": "max-age=1" });
      await h.get("/c2");
      h.clock.now += 50_000;
      assert.equal((await h.get("/c2")).label, "HIT");
    });
    await t.step("then Cache-Control", async () => {
      h.origin = () => text("x", { "cache-control": "max-age=10" });
      await h.get("/c3");
      h.clock.now += 11_000;
      assert.notEqual((await h.get("/c3")).label, "HIT");
    });
  });
});

Deno.test("answers that bypass the cache", async (t) => {
  const cases: [string, Record<string, string>, RequestInit?][] = [
    ["Set-Cookie", { "cache-control": "public, max-age=60", "set-cookie": "a=1" }],
    ["private", { "cache-control": "private, max-age=60" }],
    ["no-store", { "cache-control": "no-store" }],
    ["no-store in the governing CDN header", {
      "cloudflare-cdn-cache-control": "no-store",
      "cache-control": "public, max-age=60",
    }],
    // Assumption in workers_cache.ts: the worst case, private anywhere bypasses.
    ["private in Cache-Control under a public Cloudflare-CDN-Cache-Control", {
      "cloudflare-cdn-cache-control": "public, max-age=600",
      "cache-control": "private, max-age=60",
    }],
    ["Vary: *", { "cache-control": "public, max-age=60", vary: "*" }],
    ["a request with Authorization, max-age only", { "cache-control": "max-age=60" }, {
      headers: { authorization: "Bearer x" },
    }],
  ];
  await withCache({}, async (h) => {
    for (const [name, headers, init] of cases) {
      await t.step(name, async () => {
        h.origin = () => text("x", headers);
        const path = `/b-${encodeURIComponent(name)}`;
        assert.deepEqual(labels([await h.get(path, init), await h.get(path, init)]), [
          "BYPASS",
          "BYPASS",
        ]);
        assert.equal(h.seen().length, 2);
      });
    }
  });
});

Deno.test("privateAnywhereBypasses: false lets only the governing header keep an answer out", () =>
  withCache({ privateAnywhereBypasses: false }, async (h) => {
    h.origin = () =>
      text("x", {
        "cloudflare-cdn-cache-control": "public, max-age=600",
        "cache-control": "private, max-age=60",
      });
    const [first, second] = [await h.get("/p"), await h.get("/p")];
    assert.deepEqual(labels([first, second]), ["MISS", "HIT"]);
    assert.equal(second.headers.get("cache-control"), "private, max-age=60");
    assert.equal(h.seen().length, 1);
    h.origin = () =>
      text("x", { "cloudflare-cdn-cache-control": "private", "cache-control": "max-age=60" });
    assert.deepEqual(labels([await h.get("/q"), await h.get("/q")]), ["BYPASS", "BYPASS"]);
  }));

Deno.test("a request with Authorization is cached when the answer says public, s-maxage or must-revalidate", async (t) => {
  await withCache({}, async (h) => {
    for (const control of ["public, max-age=60", "s-maxage=60", "max-age=60, must-revalidate"]) {
      await t.step(control, async () => {
        h.origin = () => text("x", { "cache-control": control });
        const path = `/auth-${encodeURIComponent(control)}`;
        const init = { headers: { authorization: "Bearer x" } };
        assert.deepEqual(labels([await h.get(path, init), await h.get(path, init)]), [
          "MISS",
          "HIT",
        ]);
      });
    }
    await t.step("an entry without them is not used for such a request", async () => {
      h.origin = () => text("x", { "cache-control": "max-age=60" });
      assert.equal((await h.get("/auth-later")).label, "MISS");
      h.seen();
      const authorized = await h.get("/auth-later", { headers: { authorization: "Bearer x" } });
      assert.equal(authorized.label, "BYPASS");
      assert.equal(h.seen().length, 1);
    });
  });
});

Deno.test("Vary is honoured byte for byte", () =>
  withCache({}, async (h) => {
    h.origin = (request) =>
      text(`for ${request.headers.get("origin")}`, {
        "cache-control": "max-age=60",
        vary: "Origin",
      });
    const a = { headers: { origin: "https://a.example" } };
    const b = { headers: { origin: "https://A.example" } };
    assert.deepEqual(labels([await h.get("/v", a), await h.get("/v", b), await h.get("/v", a)]), [
      "MISS",
      "MISS",
      "HIT",
    ]);
    const hit = await h.get("/v", b);
    assert.deepEqual([hit.label, hit.body], ["HIT", "for https://A.example"]);
    assert.equal((await h.get("/v")).label, "MISS", "no Origin is a value too");
  }));

Deno.test("heuristic lifetimes when an answer has no Cache-Control", async (t) => {
  const cases: [number, number | undefined][] = [
    [200, 7200],
    [404, 180],
    [405, 60],
    [401, undefined],
    [403, undefined],
    [500, undefined],
  ];
  await withCache({}, async (h) => {
    for (const [status, seconds] of cases) {
      await t.step(`${status}: ${seconds ?? "not"} stored`, async () => {
        h.origin = () => text("x", {}, status);
        const path = `/heuristic-${status}`;
        await h.get(path);
        const start = h.clock.now;
        if (seconds === undefined) {
          assert.equal((await h.get(path)).label, "DYNAMIC");
          return;
        }
        h.clock.now = start + (seconds - 1) * 1000;
        assert.equal((await h.get(path)).label, "HIT");
        h.clock.now = start + (seconds + 1) * 1000;
        assert.equal((await h.get(path)).label, "EXPIRED");
      });
    }
    await t.step("401, 403 and 500 are stored with explicit directives", async () => {
      for (const status of [401, 403, 500]) {
        h.origin = () => text("x", { "cache-control": "max-age=60" }, status);
        assert.deepEqual(labels([await h.get(`/e${status}`), await h.get(`/e${status}`)]), [
          "MISS",
          "HIT",
        ]);
      }
    });
    await t.step("520-526 never, even with directives", async () => {
      h.origin = () => text("x", { "cache-control": "public, max-age=60" }, 522);
      assert.deepEqual(labels([await h.get("/e522"), await h.get("/e522")]), [
        "DYNAMIC",
        "DYNAMIC",
      ]);
    });
  });
});

Deno.test("answers over the size limit are never stored; a whole one's ranges are sliced here", () =>
  withCache({ maxObjectBytes: 1000 }, async (h) => {
    const big = "x".repeat(999) + "0123456789";
    h.origin = () => text(big, { "cache-control": "public, max-age=60" });
    assert.deepEqual(labels([await h.get("/big"), await h.get("/big")]), ["MISS", "MISS"]);
    const range = await h.get("/big", { headers: { range: "bytes=1000-1004" } });
    assert.deepEqual([range.status, range.label, range.body], [206, "MISS", "12345"]);
    const seen = h.seen();
    assert.equal(seen.length, 3);
    assert.equal(seen[2]!.headers.get("range"), "bytes=1000-1004", "the worker sees the Range");
    h.origin = () => text("y".repeat(1000), { "cache-control": "public, max-age=60" });
    assert.deepEqual(labels([await h.get("/fits"), await h.get("/fits")]), ["MISS", "HIT"]);
    // Without Content-Length the limit is found while reading.
    h.origin = () =>
      new Response(
        ReadableStream.from([big.slice(0, 500), big.slice(500)]).pipeThrough(
          new TextEncoderStream(),
        ),
        {
          headers: { "cache-control": "public, max-age=60" },
        },
      );
    const streamed = [await h.get("/streamed"), await h.get("/streamed")];
    assert.deepEqual(labels(streamed), ["MISS", "MISS"]);
    assert.equal(streamed[1]!.body, big);
  }));

Deno.test("stale-while-revalidate serves the stale copy and revalidates in the background", () =>
  withCache({}, async (h) => {
    let version = "v1";
    h.origin = () =>
      text(version, {
        "cache-control": "max-age=10, stale-while-revalidate=60",
        etag: `"${version}"`,
      });
    await h.get("/swr");
    h.seen();
    version = "v2";
    h.clock.now += 30_000;
    const updating = await h.get("/swr");
    assert.deepEqual([updating.label, updating.body], ["UPDATING", "v1"]);
    await h.cache.idle();
    assert.equal(h.seen()[0]?.headers.get("if-none-match"), '"v1"');
    const fresh = await h.get("/swr");
    assert.deepEqual([fresh.label, fresh.body], ["HIT", "v2"]);
    h.clock.now += 200_000;
    const late = await h.get("/swr");
    assert.deepEqual([late.label, late.body], ["EXPIRED", "v2"], "past the window it waits");
  }));

/**
 * An origin's answer that sends `head` at once and `tail` once `release()` is called, with the
 * Content-Length of both.
 */
function heldAnswer(head: string, tail: string, headers: Record<string, string>) {
  const { promise: released, resolve: release } = Promise.withResolvers<void>();
  const encoder = new TextEncoder();
  const origin = () =>
    new Response(
      new ReadableStream({
        async start(controller) {
          controller.enqueue(encoder.encode(head));
          await released;
          controller.enqueue(encoder.encode(tail));
          controller.close();
        },
      }),
      {
        headers: { "content-length": String(encoder.encode(head + tail).length), ...headers },
      },
    );
  return { origin, release };
}

Deno.test("an answer being stored reaches its caller as the worker sends it, and a miss meanwhile shares it", () =>
  withCache({}, async (h) => {
    const held = heldAnswer("first-", "last", { "cache-control": "max-age=60" });
    h.origin = held.origin;
    const first = await fetch(`${h.cache.url}/s`);
    const reader = first.body!.getReader();
    const chunk = await reader.read();
    assert.equal(new TextDecoder().decode(chunk.value), "first-", "before the worker's last byte");
    const second = fetch(`${h.cache.url}/s`);
    await new Promise((wait) => setTimeout(wait, 100));
    held.release();
    let rest = "";
    for (let next = await reader.read(); !next.done; next = await reader.read()) {
      rest += new TextDecoder().decode(next.value);
    }
    assert.equal(rest, "last");
    const shared = await second;
    assert.deepEqual([shared.headers.get("cf-cache-status"), await shared.text()], [
      "MISS",
      "first-last",
    ]);
    assert.equal(h.seen().length, 1, "the worker was asked once");
    const after = await h.get("/s");
    assert.deepEqual([after.label, after.body], ["HIT", "first-last"]);
  }));

Deno.test("a purge while an answer is being stored reaches it: not shared with later misses, not stored", async (t) => {
  for (const purge of [{ tags: ["v1-tag"] }, { pathPrefixes: ["/p"] }]) {
    await t.step(JSON.stringify(purge), () =>
      withCache({}, async (h) => {
        const held = heldAnswer("old-", "v1", {
          "cache-control": "max-age=60",
          "cache-tag": "v1-tag",
        });
        h.origin = held.origin;
        const first = await fetch(`${h.cache.url}/p`);
        const reader = first.body!.getReader();
        await reader.read();
        // The object is replaced and purged while its old answer is still being stored.
        assert.equal(JSON.parse((await h.cacheCall("purge", purge)).body).success, true);
        h.origin = () => text("new-v2", { "cache-control": "max-age=60" });
        // Whatever is shared, the old answer ends soon after (a test that fails, never hangs).
        const released = setTimeout(held.release, 300);
        const after = await h.get("/p");
        assert.deepEqual([after.label, after.body], ["MISS", "new-v2"], "not the purged fill");
        clearTimeout(released);
        held.release();
        while (!(await reader.read()).done);
        await h.cache.idle();
        h.origin = () => text("new-v3", { "cache-control": "max-age=60" });
        const later = await h.get("/p");
        assert.notEqual(later.body, "old-v1", "the purged answer was not stored");
      }));
  }
});

Deno.test("a request with Authorization shares an answer being stored only if it says public", async (t) => {
  for (const [control, shared] of [["max-age=60", false], ["public, max-age=60", true]] as const) {
    await t.step(control, () =>
      withCache({}, async (h) => {
        const held = heldAnswer("for-", "all", { "cache-control": control });
        h.origin = held.origin;
        const first = await fetch(`${h.cache.url}/a`);
        const reader = first.body!.getReader();
        await reader.read();
        const released = setTimeout(held.release, 300);
        const authorized = await h.get("/a", { headers: { Authorization: "Bearer x" } });
        clearTimeout(released);
        held.release();
        while (!(await reader.read()).done);
        assert.equal(authorized.body, "for-all");
        assert.equal(h.seen().length, shared ? 1 : 2, "the worker asked again unless public");
      }));
  }
});

Deno.test("a background revalidation started before a redeploy finishes on the version that began it", () =>
  withCache({}, async (h) => {
    h.origin = () =>
      text("v1", { "cache-control": "public, max-age=60, stale-while-revalidate=600" });
    assert.equal((await h.get("/r")).label, "MISS");
    const { promise: release, resolve } = Promise.withResolvers<void>();
    h.origin = async () => {
      await release;
      return text("v2", { "cache-control": "public, max-age=60, stale-while-revalidate=600" });
    };
    h.clock.now += 61_000;
    assert.deepEqual([(await h.get("/r")).label], ["UPDATING"]);
    // The origin answers well after the new version has started: the old version must still
    // be there to pass its answer on.
    const released = setTimeout(resolve, 1500);
    await h.deploy(ON);
    clearTimeout(released);
    resolve();
    await h.cache.idle();
    const after = await h.get("/r");
    assert.deepEqual([after.label, after.body], ["HIT", "v2"]);
  }));

Deno.test("stale-if-error serves the stored copy when the worker fails", async (t) => {
  await withCache({ workerTimeoutMs: 1_000 }, async (h) => {
    const failures: [string, OriginHandler][] = [
      ["a 5xx", () => text("down", { "cache-control": "no-store" }, 503)],
      ["a throw", () => text("", { "x-origin-throw": "1" })],
      ["a timeout", () => new Promise((resolve) => setTimeout(() => resolve(text("late")), 3_000))],
    ];
    for (const [name, failure] of failures) {
      await t.step(`${name}: indefinitely when unset`, async () => {
        const path = `/sie-${name.replace(/ /g, "-")}`;
        h.origin = () => text("kept", { "cache-control": "max-age=10" });
        await h.get(path);
        h.origin = failure;
        h.clock.now += 365 * 86_400_000;
        const stale = await h.get(path);
        assert.deepEqual([stale.status, stale.label, stale.body], [200, "STALE", "kept"]);
      });
    }
    const off: [string, string][] = [
      ["stale-if-error=0", "max-age=10, stale-if-error=0"],
      ["past stale-if-error=30", "max-age=10, stale-if-error=30"],
      ["s-maxage", "s-maxage=10"],
      ["must-revalidate", "max-age=10, must-revalidate"],
      ["proxy-revalidate", "max-age=10, proxy-revalidate"],
    ];
    for (const [name, control] of off) {
      await t.step(`not with ${name}`, async () => {
        const path = `/sie-off-${encodeURIComponent(name)}`;
        h.origin = () => text("kept", { "cache-control": control });
        await h.get(path);
        h.origin = failures[0]![1];
        h.clock.now += 50_000;
        const failed = await h.get(path);
        assert.deepEqual([failed.status, failed.label], [503, "EXPIRED"]);
      });
    }
    await t.step("within stale-if-error=30", async () => {
      h.origin = () => text("kept", { "cache-control": "max-age=10, stale-if-error=30" });
      await h.get("/sie-within");
      h.origin = failures[0]![1];
      h.clock.now += 30_000;
      assert.equal((await h.get("/sie-within")).label, "STALE");
    });
  });
});

Deno.test("s-maxage, must-revalidate and proxy-revalidate switch stale-while-revalidate off", async (t) => {
  await withCache({}, async (h) => {
    for (const extra of ["s-maxage=10", "must-revalidate", "proxy-revalidate"]) {
      await t.step(extra, async () => {
        const path = `/strict-${extra}`;
        h.origin = () =>
          text("x", {
            "cache-control": `max-age=10, stale-while-revalidate=600, ${extra}`,
            etag: '"e"',
          });
        await h.get(path);
        h.clock.now += 20_000;
        h.origin = () => new Response(null, { status: 304, headers: { etag: '"e"' } });
        assert.equal((await h.get(path)).label, "REVALIDATED");
      });
    }
  });
});

Deno.test("revalidation sends the stored validators; 304 keeps the body, 200 replaces it", async (t) => {
  await withCache({}, async (h) => {
    const lastModified = "Tue, 14 Nov 2023 22:13:20 GMT";
    h.origin = () =>
      text("first", { "cache-control": "max-age=10", etag: '"1"', "last-modified": lastModified });
    await h.get("/rv");
    h.seen();
    await t.step("304: REVALIDATED, the body kept, the lifetime taken from the 304", async () => {
      h.clock.now += 20_000;
      h.origin = () =>
        new Response(null, {
          status: 304,
          headers: { "cache-control": "max-age=1000", etag: '"1"' },
        });
      const revalidated = await h.get("/rv");
      assert.deepEqual([revalidated.label, revalidated.body], ["REVALIDATED", "first"]);
      const [conditional] = h.seen();
      assert.equal(conditional?.headers.get("if-none-match"), '"1"');
      assert.equal(conditional?.headers.get("if-modified-since"), lastModified);
      h.clock.now += 500_000;
      assert.equal((await h.get("/rv")).label, "HIT", "renewed for 1000 s");
    });
    await t.step("200: EXPIRED, replaced", async () => {
      h.clock.now += 1_000_000;
      h.origin = () => text("second", { "cache-control": "max-age=10", etag: '"2"' });
      const replaced = await h.get("/rv");
      assert.deepEqual([replaced.label, replaced.body], ["EXPIRED", "second"]);
      const hit = await h.get("/rv");
      assert.deepEqual([hit.label, hit.body], ["HIT", "second"]);
    });
  });
});

Deno.test("no-cache stores the answer but revalidates it every time", () =>
  withCache({}, async (h) => {
    h.origin = () => text("body", { "cache-control": "max-age=600, no-cache", etag: '"n"' });
    assert.equal((await h.get("/nc")).label, "MISS");
    h.seen();
    h.origin = () => new Response(null, { status: 304, headers: { etag: '"n"' } });
    const again = await h.get("/nc");
    assert.deepEqual([again.label, again.body], ["REVALIDATED", "body"]);
    assert.equal(h.seen()[0]?.headers.get("if-none-match"), '"n"');
    assert.equal((await h.get("/nc")).label, "REVALIDATED");
  }));

Deno.test("a browser's conditional request reaches the worker (assumption)", () =>
  withCache({}, async (h) => {
    h.origin = (request) =>
      request.headers.get("if-none-match") === '"c"'
        ? new Response(null, { status: 304, headers: { etag: '"c"' } })
        : text("body", { "cache-control": "max-age=60", etag: '"c"' });
    await h.get("/cond");
    h.seen();
    const conditional = await h.get("/cond", { headers: { "if-none-match": '"c"' } });
    assert.equal(conditional.status, 304);
    assert.equal(h.seen().length, 1);
    assert.equal((await h.get("/cond")).label, "HIT", "the entry stays");
  }));

Deno.test("Cache-Tag is parsed, case-insensitive, invalid tags dropped, and stripped", () =>
  withCache({}, async (h) => {
    const long = "t".repeat(1025);
    h.origin = (request) =>
      text("x", {
        "cache-control": "max-age=600",
        "cache-tag": new URL(request.url).pathname === "/t1"
          ? `Alpha, with space,${long}, shared`
          : "shared",
      });
    const first = await h.get("/t1");
    assert.equal(first.headers.get("cache-tag"), null);
    await h.get("/t2");
    for (const tag of ["with space", long, "nothing"]) {
      assert.equal(
        (await h.cacheCall("purge", { tags: [tag] })).body,
        '{"success":true,"errors":[]}',
      );
      assert.equal((await h.get("/t1")).label, "HIT", `"${tag.slice(0, 20)}" tags nothing`);
    }
    await h.cacheCall("purge", { tags: ["ALPHA"] });
    assert.deepEqual(labels([await h.get("/t1"), await h.get("/t2")]), ["MISS", "HIT"]);
    await h.cacheCall("purge", { tags: ["shared"] });
    assert.deepEqual(labels([await h.get("/t1"), await h.get("/t2")]), ["MISS", "MISS"]);
  }));

Deno.test("ctx.cache.purge by prefix and everything; invalidate marks stale", async (t) => {
  await withCache({}, async (h) => {
    h.origin = () => text("x", { "cache-control": "max-age=600", etag: '"p"' });
    const paths = ["/a", "/a-2", "/a?x=1", "/b/c"];
    const fill = async () => {
      for (const path of paths) await h.get(path);
    };
    await t.step("a prefix purges every path and query it starts", async () => {
      await fill();
      await h.cacheCall("purge", { pathPrefixes: ["/a"] });
      assert.deepEqual(labels(await Promise.all(paths.map((p) => h.get(p)))), [
        "MISS",
        "MISS",
        "MISS",
        "HIT",
      ]);
    });
    await t.step("a prefix must be a path", async () => {
      const refused = JSON.parse(
        (await h.cacheCall("purge", { pathPrefixes: ["example.com/a"] })).body,
      );
      assert.equal(refused.success, false);
    });
    await t.step("purgeEverything", async () => {
      await h.cacheCall("purge", { purgeEverything: true });
      assert.deepEqual(labels([await h.get("/b/c")]), ["MISS"]);
    });
    await t.step("invalidate: the next request revalidates", async () => {
      await h.get("/b/c");
      await h.cacheCall("invalidate", { pathPrefixes: ["/b/"] });
      h.origin = () => new Response(null, { status: 304, headers: { etag: '"p"' } });
      assert.deepEqual(labels([await h.get("/b/c"), await h.get("/b/c")]), ["REVALIDATED", "HIT"]);
    });
    assert.deepEqual(h.cache.purges.map((p) => [p.operation, p.result.success]), [
      ["purge", true],
      ["purge", false],
      ["purge", true],
      ["invalidate", true],
    ]);
  });
});

Deno.test("ctx.cache.purge limits: 100 operations, 5 a minute with bursts to 25", () =>
  withCache({}, async (h) => {
    const purge = async (options: unknown) =>
      JSON.parse((await h.cacheCall("purge", options)).body);
    const many = Array.from({ length: 101 }, (_, i) => `tag${i}`);
    assert.equal((await purge({ tags: many })).success, false);
    assert.equal((await purge({ tags: many.slice(1), purgeEverything: true })).success, false);
    assert.equal((await purge({})).success, false);
    for (let i = 0; i < 25; i++) {
      assert.equal((await purge({ tags: many.slice(0, 100) })).success, true);
    }
    const limited = await purge({ tags: ["x"] });
    assert.equal(limited.success, false);
    assert.match(limited.errors[0].message, /Rate limited/);
    h.clock.now += 12_000;
    assert.equal((await purge({ tags: ["x"] })).success, true, "one more after 12 s");
    assert.equal((await purge({ tags: ["x"] })).success, false);
  }));

Deno.test("every answer carries cf-cache-status; what is not GET or HEAD is DYNAMIC", () =>
  withCache({}, async (h) => {
    h.origin = () => text("x", { "cache-control": "max-age=60" });
    const post = await h.get("/form", { method: "POST", body: "x" });
    assert.equal(post.label, "DYNAMIC");
    assert.equal(h.seen()[0]?.method, "POST");
    assert.deepEqual(h.cache.stats, {
      requests: 1,
      hits: 0,
      workerRuns: 1,
      loopback: { requests: 0, hits: 0, workerRuns: 0 },
      statuses: { DYNAMIC: 1 },
    });
  }));

// ---------------------------------------------------------------------------
// main.ts check-cache, against the stand-in
// ---------------------------------------------------------------------------

const QUIET_CTX = { sleep: () => Promise.resolve(), log: () => {} };

function outcomes(report: CacheCheckReport): Record<string, string> {
  return Object.fromEntries(report.findings.map((f) => [f.check, f.outcome]));
}

Deno.test("checkCache() reports MISS, HIT, HEAD and ranges of the real worker behind the stand-in", async () => {
  const b2 = startFakeB2({
    buckets: [{
      id: "bucket-site",
      name: "site",
      files: [
        { name: "hello.txt", body: "hello from B2\n", contentType: "text/plain" },
        { name: "big.bin", body: { size: 3_000_000 } },
      ],
    }],
  });
  const cache = await startWorkersCache({ maxObjectBytes: 1_000_000 });
  try {
    await deployRealWorker(cache, b2);
    const report = await checkCache(`${cache.url}/hello.txt`, defaultContext(QUIET_CTX), {
      largeUrl: `${cache.url}/big.bin`,
    });
    assert.deepEqual(outcomes(report), {
      "first GET": "ok",
      "second GET": "ok",
      "HEAD after GET": "ok",
      "range after GET": "ok",
      "browser revalidation": "note",
      purge: "not checked",
      "ranged miss": "not checked",
      "shaped misses": "not checked",
      "range of the large object": "ok",
    }, JSON.stringify(report.findings, null, 2));
    assert.equal(report.healthy, true);
    assert.match(report.url, /\/hello\.txt$/);
    const downloads = b2.requests.filter((r) =>
      r.method === "GET" && r.path === "/file/site/hello.txt"
    );
    assert.equal(downloads.length, 1, "HEAD, range and revalidation never download again");
  } finally {
    await cache.close();
    await b2.close();
  }
});

Deno.test("checkCache() with a purge: after a conditional or a HEAD as the first request, the real worker's edge still gives a GET the whole object", async () => {
  const b2 = startFakeB2({
    buckets: [{
      id: "bucket-site",
      name: "site",
      files: [{ name: "hello.txt", body: "hello from B2\n", contentType: "text/plain" }],
    }],
  });
  const cache = await startWorkersCache();
  try {
    await deployRealWorker(cache, b2, { WORKER_PURGE_KEY: PURGE_KEY });
    const firstPurgeMs = Date.now();
    let purges = 0;
    const purge = async (url: URL) => {
      const body = JSON.stringify({ paths: [url.pathname] });
      // Each signed at a second of its own (well within the worker's window): the worker
      // refuses a signature it has seen, and the body is the same each time.
      const nowMs = firstPurgeMs + 1000 * purges++;
      const purged = await fetch(`${cache.url}/.well-known/b2-private-cdn/purge`, {
        method: "POST",
        headers: await signPurge(body, { key: PURGE_KEY, nowMs }),
        body,
      });
      assert.equal(purged.status, 200, await purged.text());
    };
    const report = await checkCache(`${cache.url}/hello.txt`, defaultContext(QUIET_CTX), {
      purge,
    });
    const finding = (check: string) => report.findings.find((f) => f.check === check);
    assert.deepEqual(finding("GET after a conditional miss"), {
      check: "GET after a conditional miss",
      outcome: "ok",
      detail: "conditional: 304, cf-cache-status BYPASS; then GET: 200, cf-cache-status MISS, " +
        "14 of 14 bytes",
    });
    assert.deepEqual(finding("GET after a HEAD miss"), {
      check: "GET after a HEAD miss",
      outcome: "ok",
      detail: "HEAD: 200, cf-cache-status MISS; then GET: 200, cf-cache-status HIT, 14 of 14 bytes",
    });
    assert.equal(report.healthy, true, JSON.stringify(report.findings, null, 2));
  } finally {
    await cache.close();
    await b2.close();
  }
});

Deno.test("checkCache() reports an edge that keeps a visitor's 304 as the answer for everyone", async () => {
  // An edge that, after a purge, stores whatever the first request got, a 304 included.
  let kept: { status: number; body: string } | undefined;
  const fetch = (_: unknown, init?: RequestInit) => {
    const headers = new Headers(init?.headers);
    let label = "HIT";
    if (!kept) {
      label = "MISS";
      const conditional = headers.get("if-none-match") === '"v1"';
      kept = conditional ? { status: 304, body: "" } : { status: 200, body: "0123456789" };
    }
    const status = kept.status;
    const body = init?.method === "HEAD" || status === 304 ? null : kept.body;
    return Promise.resolve(
      new Response(body, {
        status,
        headers: { "cf-cache-status": label, etag: '"v1"', "content-length": "10" },
      }),
    );
  };
  const ctx = defaultContext({ ...QUIET_CTX, fetch });
  const report = await checkCache("https://cdn.example/a", ctx, {
    purge: () => {
      kept = undefined;
      return Promise.resolve();
    },
  });
  const finding = report.findings.find((f) => f.check === "GET after a conditional miss")!;
  assert.equal(finding.outcome, "problem");
  assert.match(
    finding.detail,
    /^conditional: 304, cf-cache-status MISS; then GET: 304, cf-cache-status HIT, 0 of 10 bytes: the cache kept what a visitor's conditional shaped as the answer for everyone/,
  );
  assert.equal(report.healthy, false);
});

/** The real worker, in Workers Cache mode, behind `cache`, serving bucket "site" of `b2`. */
async function deployRealWorker(
  cache: WorkersCache,
  b2: Pick<ReturnType<typeof startFakeB2>, "issueDownloadToken" | "url">,
  bindings: Record<string, string> = {},
) {
  const upload = workerUpload(await loadWorkerModule(), {
    downloadToken: b2.issueDownloadToken("site", "", 3600),
    downloadUrl: b2.url,
    bucketName: "site",
    prefix: "",
    issuedAt: Date.now(),
    expiresAt: Date.now() + 3600_000,
    options: {
      urlStyle: "plain",
      indexFile: "index.html",
      cacheTtl: 86400,
      cacheControl: "",
      corsOrigins: "",
      cacheMode: "workers-cache",
    },
  });
  for (const [name, text] of Object.entries(bindings)) {
    upload.metadata.bindings.push({ type: "plain_text", name, text });
  }
  await cache.deploy(upload);
}

// Issue 14, point 1: the worker answers a ranged miss of an object under the limit with the
// whole 200, which the cache keeps and answers the seeks from.
Deno.test("the worker: a player's bytes=0- and its seeks reach B2 once for an object under the limit", async () => {
  const b2 = startFakeB2({
    buckets: [{
      id: "bucket-site",
      name: "site",
      files: [{ name: "v.mp4", body: { size: 100_000 } }],
    }],
  });
  const cache = await startWorkersCache();
  try {
    await deployRealWorker(cache, b2);
    const ranges = ["bytes=0-", "bytes=50000-", "bytes=0-", "bytes=50000-"];
    const labels: string[] = [];
    for (const range of ranges) {
      const answer = await fetch(`${cache.url}/v.mp4`, { headers: { Range: range } });
      // Read to its end: the fill is stored by then (a request during it would share it).
      await answer.arrayBuffer();
      labels.push(`${answer.status} ${answer.headers.get("cf-cache-status")}`);
    }
    assert.deepEqual(labels, ["206 MISS", "206 HIT", "206 HIT", "206 HIT"]);
    const downloads = b2.requests.filter((r) =>
      r.method === "GET" && r.path === "/file/site/v.mp4"
    );
    assert.equal(downloads.length, 1, "one B2 download, then the cache");
  } finally {
    await cache.close();
    await b2.close();
  }
});

Deno.test("checkCache() says Workers Cache is off when no cf-cache-status comes back", () =>
  withCache({ cacheOptions: undefined }, async (h) => {
    const report = await checkCache(`${h.cache.url}/x`, defaultContext(QUIET_CTX));
    assert.equal(report.healthy, false);
    assert.deepEqual(outcomes(report), { "first GET": "problem" });
    assert.match(report.findings[0]!.detail, /no cf-cache-status at all.*cache_options/);
  }));

Deno.test("checkCache() checks a purge it is given, and says when none is", async (t) => {
  await withCache({}, async (h) => {
    h.origin = () => text("x", { "cache-control": "max-age=600" });
    await t.step("a purge that works", async () => {
      const purged: string[] = [];
      const report = await checkCache(`${h.cache.url}/p`, defaultContext(QUIET_CTX), {
        purge: async (url) => {
          purged.push(url.pathname);
          await h.cacheCall("purge", { pathPrefixes: [url.pathname] });
        },
      });
      // Once so that the first GET is a MISS, once to see the purge take effect, once so that
      // a range is the first request, once so that a HEAD is (an object without validators
      // takes no conditional).
      assert.deepEqual(purged, ["/p", "/p", "/p", "/p"]);
      assert.equal(outcomes(report)["first GET"], "ok");
      assert.equal(outcomes(report).purge, "ok");
      assert.match(report.findings.find((f) => f.check === "purge")!.detail, /MISS after/);
    });
    await t.step("a purge that does not reach the entry", async () => {
      const report = await checkCache(`${h.cache.url}/p`, defaultContext(QUIET_CTX), {
        purge: () => Promise.resolve(),
      });
      assert.equal(outcomes(report).purge, "problem");
      assert.equal(report.healthy, false);
    });
  });
});

Deno.test("checkCache() reports what a ranged miss returns and whether it fills the cache", async (t) => {
  const purgeWith = (h: Harness) => async (url: URL) => {
    await h.cacheCall("purge", { pathPrefixes: [url.pathname] });
  };
  const cases: [string, RangedMiss, OriginHandler, [string, RegExp, string, RegExp]][] = [
    [
      "a whole 200, sliced for the first visitor",
      "slice",
      () => text("0123456789", { "cache-control": "max-age=600" }),
      [
        "note",
        /^206 bytes 0-9\/10, cf-cache-status MISS, 10 bytes: the first visitor of a range gets the range/,
        "ok",
        /HIT.*filled the cache/,
      ],
    ],
    [
      "a whole 200, passed on whole",
      "whole",
      () => text("0123456789", { "cache-control": "max-age=600" }),
      [
        "note",
        /^200 \(no content-range\), cf-cache-status MISS.*gets the whole object/,
        "ok",
        /filled the cache/,
      ],
    ],
    [
      "a 206 from the worker (today's ranged answer)",
      "slice",
      ranged("0123456789", {
        "cache-control": "max-age=600",
      }),
      [
        "note",
        /^206 bytes 0-9\/10, cf-cache-status MISS/,
        "problem",
        /MISS.*has not filled the cache, so players' ranges and seeks reach the worker and B2/,
      ],
    ],
  ];
  for (
    const [name, rangedMiss, origin, [missOutcome, missDetail, repeatOutcome, repeatDetail]]
      of cases
  ) {
    await t.step(name, () =>
      withCache({ rangedMiss }, async (h) => {
        h.origin = origin;
        const report = await checkCache(`${h.cache.url}/r`, defaultContext(QUIET_CTX), {
          purge: purgeWith(h),
        });
        const finding = (check: string) => report.findings.find((f) => f.check === check)!;
        assert.equal(finding("ranged miss").outcome, missOutcome);
        assert.match(finding("ranged miss").detail, missDetail);
        assert.equal(finding("range after ranged miss").outcome, repeatOutcome);
        assert.match(finding("range after ranged miss").detail, repeatDetail);
        assert.equal(report.healthy, repeatOutcome === "ok");
      }));
  }
});

Deno.test("checkCache() tells a large object sent whole, or slowly, for a range", async (t) => {
  const size = 3 * 1024 * 1024;
  await t.step(
    "sent whole: read no further than needed",
    () =>
      withCache({ cacheOptions: undefined }, async (h) => {
        h.origin = () => new Response(new Uint8Array(size));
        const finding = (await checkCache(`${h.cache.url}/s`, defaultContext(QUIET_CTX), {
          largeUrl: `${h.cache.url}/big`,
        })).findings.at(-1)!;
        assert.equal(finding.check, "range of the large object");
        assert.equal(finding.outcome, "problem");
        assert.match(finding.detail, /200 for bytes=0-0: the whole object is sent/);
        const read = Number(/\((\d+) bytes read before stopping/.exec(finding.detail)?.[1]);
        assert.ok(read >= 1024 * 1024 && read < size, `${read} bytes read`);
      }),
  );
  await t.step("206, but slow to start", () =>
    withCache({}, async (h) => {
      h.origin = () =>
        new Response(new Uint8Array(size), { headers: { "cache-control": "max-age=60" } });
      let clock = 0;
      // Each reading of the clock is 1.5 s after the last: every first byte "takes" 3 s.
      const ctx = defaultContext({ ...QUIET_CTX, now: () => (clock += 1_500) });
      const finding = (await checkCache(`${h.cache.url}/s`, ctx, {
        largeUrl: `${h.cache.url}/big`,
      })).findings.at(-1)!;
      assert.equal(finding.outcome, "problem");
      assert.match(finding.detail, /^206, first byte in \d+ ms.*: slow/);
    }));
});

Deno.test("check-cache takes --url or WORKER_DOMAIN, and exits 1 on a problem, 2 without a URL", async (t) => {
  const asked: string[] = [];
  const cli = async (args: string[], env: Record<string, string> = {}) => {
    const stdout: string[] = [];
    const stderr: string[] = [];
    const code = await run({
      args: ["check-cache", ...args],
      env,
      readEnvFile: () => Promise.resolve(undefined),
      io: { stdout: (t) => stdout.push(t), stderr: (t) => stderr.push(t) },
      ctx: {
        ...QUIET_CTX,
        fetch: (input) => {
          asked.push(String(input));
          return Promise.resolve(new Response("Not found\n", { status: 404 }));
        },
      },
    });
    return { code, stdout: stdout.join("\n"), stderr: stderr.join("\n") };
  };
  await t.step("no URL", async () => {
    const { code, stderr } = await cli([]);
    assert.equal(code, 2);
    assert.match(stderr, /--url .*WORKER_DOMAIN/);
  });
  await t.step("WORKER_DOMAIN", async () => {
    const { code, stdout } = await cli([], { WORKER_DOMAIN: "cdn.example.com" });
    assert.equal(code, 1);
    assert.equal(asked.at(-1), "https://cdn.example.com/");
    assert.match(stdout, /PROBLEM\n {2}problem {5}first GET: answered 404/);
  });
  await t.step("a concrete route's host, but --url wins", async () => {
    await cli([], { WORKER_ROUTE: "img.example.com/*" });
    assert.match(asked.at(-1)!, /^https:\/\/img\.example\.com\//);
    await cli(["--url", "https://other.example/a.txt"], { WORKER_DOMAIN: "cdn.example.com" });
    assert.equal(asked.at(-1), "https://other.example/a.txt");
  });
  await t.step(
    "with the purge key, the purge goes beside the object, under its route",
    async () => {
      const { code, stdout } = await cli(["--url", "https://site.example/cdn/img/a.png"], {
        B2_APPLICATION_KEY: "k".repeat(40),
      });
      assert.equal(code, 1);
      assert.deepEqual(asked.slice(-2), [
        "https://site.example/cdn/img/.well-known/b2-private-cdn/purge",
        "https://site.example/cdn/img/a.png",
      ]);
      // The purge is a finding of its own, not the end of the check.
      assert.match(
        stdout,
        /purge: The answer from https:\/\/site\.example\/cdn\/img\/\.well-known\/b2-private-cdn\/purge \(404\) is not the worker's/,
      );
      assert.match(stdout, /first GET: answered 404/);
      assert.doesNotMatch(stdout, /not checked/);
      assert.ok(!stdout.includes("k".repeat(40)));
    },
  );
});

Deno.test("checkCache() reports an answer that is never stored, and a HEAD or range not from the cache", async (t) => {
  await t.step(
    "MISS every time (over the size limit)",
    () =>
      withCache({ maxObjectBytes: 10 }, async (h) => {
        h.origin = () => text("more than ten bytes", { "cache-control": "max-age=60" });
        const report = await checkCache(`${h.cache.url}/big`, defaultContext(QUIET_CTX));
        assert.deepEqual(outcomes(report), { "first GET": "ok", "second GET": "problem" });
        assert.match(report.findings[1]!.detail, /MISS, not HIT, after 6 tries/);
      }),
  );
  // An edge that stores GETs but passes HEAD and ranges on to the worker.
  const edge = (range: { label: string; whole: boolean }) => {
    let gets = 0;
    return (_: unknown, init?: RequestInit) => {
      const headers = new Headers(init?.headers);
      const ranged = headers.has("range");
      const label = init?.method === "HEAD"
        ? "MISS"
        : ranged
        ? range.label
        : gets++
        ? "HIT"
        : "MISS";
      const sliced = ranged && !range.whole;
      const body = init?.method === "HEAD"
        ? null
        : sliced
        ? "0123456789".slice(0, 10)
        : "0123456789";
      return Promise.resolve(
        new Response(body, {
          status: sliced ? 206 : 200,
          headers: {
            "cf-cache-status": label,
            "content-length": "10",
            ...(sliced && { "content-range": "bytes 0-9/10" }),
          },
        }),
      );
    };
  };
  for (const range of [{ label: "HIT", whole: true }, { label: "MISS", whole: false }]) {
    await t.step(`HEAD by the worker, range ${JSON.stringify(range)}`, async () => {
      const ctx = defaultContext({ ...QUIET_CTX, fetch: edge(range) });
      const report = await checkCache("https://cdn.example/a", ctx);
      assert.deepEqual(outcomes(report), {
        "first GET": "ok",
        "second GET": "ok",
        "HEAD after GET": "problem",
        "range after GET": "problem",
        purge: "not checked",
        "ranged miss": "not checked",
        "shaped misses": "not checked",
      });
      if (range.whole) assert.match(report.findings[3]!.detail, /whole object came back/);
    });
  }
});

const PURGE_KEY = "ab".repeat(32);

// Issue 14, point 3: an object past the cache's limit (lowered here, in the stand-in and in the
// worker alike) is never stored whole; its aligned segments are kept in Workers Cache itself,
// as the answers of the worker's Segments entrypoint to its own loopback calls (ctx.exports).
Deno.test("the worker: an object over the limit is served from aligned segments kept in Workers Cache", async (t) => {
  const size = 5500;
  const b2 = startFakeB2({
    buckets: [{
      id: "bucket-site",
      name: "site",
      files: [{ name: "v.mp4", body: { size } }, { name: "w.mp4", body: { size: 100_000 } }],
    }],
  });
  const cache = await startWorkersCache({ maxObjectBytes: 2500 });
  const bindings = {
    WORKER_SEGMENT_SIZE: "1000",
    WORKER_SEGMENT_THRESHOLD: "2500",
    WORKER_PURGE_KEY: PURGE_KEY,
  };
  const pattern = (start: number, end: number) =>
    Array.from({ length: end - start + 1 }, (_, i) => (start + i) % 251);
  const asked = () =>
    b2.requests.filter((r) => r.method === "GET" && r.path === "/file/site/v.mp4")
      .map((r) => r.headers.get("range"));
  const visit = async (range: string) => {
    const answer = await fetch(`${cache.url}/v.mp4`, { headers: { Range: range } });
    const body = [...await answer.bytes()];
    return { status: answer.status, range: answer.headers.get("content-range"), body };
  };
  // The worker keeps facts in ctx.waitUntil, after its answer.
  const settled = () => new Promise((resolve) => setTimeout(resolve, 200));
  try {
    await deployRealWorker(cache, b2, bindings);
    await t.step(
      "a first range: B2's answer to the visitor's own bytes tells the size, then aligned segments",
      async () => {
        const first = await visit("bytes=1900-3100");
        assert.deepEqual(first, {
          status: 206,
          range: `bytes 1900-3100/${size}`,
          body: pattern(1900, 3100),
        });
        await settled();
        // Its own bytes in the first segment, that segment kept meanwhile, and one loopback
        // call (and B2 request) for each next segment.
        assert.deepEqual(asked().sort(), [
          "bytes=1000-1999",
          "bytes=1900-1999",
          "bytes=2000-2999",
          "bytes=3000-3999",
        ]);
        assert.deepEqual(cache.stats.loopback, { requests: 3, hits: 0, workerRuns: 3 });
        await settled();
      },
    );

    await t.step("repeats and a token rotation are answered from Workers Cache", async () => {
      const again = await visit("bytes=1000-3999");
      assert.deepEqual([again.status, again.body], [206, pattern(1000, 3999)]);
      // Refresh uploads a new version with a new token; entries are shared across versions.
      await deployRealWorker(cache, b2, bindings);
      const rotated = await visit("bytes=2500-2600");
      assert.deepEqual(rotated.body, pattern(2500, 2600));
      assert.equal(asked().length, 4, "B2 was asked nothing");
      assert.deepEqual(cache.stats.loopback, { requests: 7, hits: 4, workerRuns: 3 });
    });

    await t.step("an open-ended range and a GET without Range are byte-exact", async () => {
      const open = await visit("bytes=5000-");
      assert.deepEqual([open.range, open.body], [`bytes 5000-5499/${size}`, pattern(5000, 5499)]);
      assert.deepEqual(asked().slice(4), ["bytes=5000-5499"], "the last segment is shorter");
      const whole = await fetch(`${cache.url}/v.mp4`);
      assert.equal(whole.status, 200);
      assert.deepEqual([...await whole.bytes()], pattern(0, size - 1));
      assert.deepEqual(asked().slice(5), ["bytes=0-999", "bytes=4000-4999"]);
    });

    await t.step("HEAD and a conditional GET download nothing more", async () => {
      const head = await fetch(`${cache.url}/v.mp4`, { method: "HEAD" });
      assert.deepEqual([head.status, head.headers.get("content-length")], [200, String(size)]);
      const etag = head.headers.get("etag")!;
      const notModified = await fetch(`${cache.url}/v.mp4`, { headers: { "If-None-Match": etag } });
      assert.equal(notModified.status, 304);
      await settled();
      assert.equal(asked().length, 7);
      // An object of 100 segments not read yet: a HEAD reaches the worker as a GET, whose
      // body the cache stops reading (it cannot keep it whole). B2 gets the whole GET, left
      // unread, the first segment (read before the answer starts) and the few the
      // connection took before the cancel reached the worker: each next segment is asked
      // for only once the one before was taken, so with 8 MiB segments that is the first.
      const first = await fetch(`${cache.url}/w.mp4`, { method: "HEAD" });
      assert.deepEqual([first.status, first.headers.get("content-length")], [200, "100000"]);
      await settled();
      const w = b2.requests.filter((r) => r.method === "GET" && r.path === "/file/site/w.mp4")
        .map((r) => r.headers.get("range"));
      assert.deepEqual(w.slice(0, 2), [null, "bytes=0-999"]);
      assert.ok(w.length <= 10, `B2 was asked ${JSON.stringify(w)} for a HEAD`);
    });

    await t.step("visitors never reach a segment: the entrypoint is the worker's own", async () => {
      const query = "version=4_z5_f5500&size=1000&index=1&length=1000";
      const answer = await fetch(`${cache.url}/v.mp4?${query}`, {
        headers: { "x-workers-cache-entrypoint": "Segments" },
        redirect: "manual",
      });
      await answer.body?.cancel();
      assert.deepEqual([answer.status, answer.headers.get("location")], [301, "/v.mp4"]);
    });

    await t.step("a purge of the path reaches the segments in Workers Cache too", async () => {
      const body = JSON.stringify({ paths: ["/v.mp4"] });
      const purged = await fetch(`${cache.url}/.well-known/b2-private-cdn/purge`, {
        method: "POST",
        headers: await signPurge(body, { key: PURGE_KEY, nowMs: Date.now() }),
        body,
      });
      const answer = await purged.json();
      assert.equal(purged.status, 200);
      assert.equal(answer.largeObjects.factsForgotten, 1);
      assert.match(answer.largeObjects.reach, /^segments: Workers Cache, everywhere/);
      const tag = answer.purged.tags[0];
      assert.deepEqual(cache.purges.map((p) => [p.entrypoint, p.options, p.result.success]), [
        ["default", { tags: [tag] }, true],
        ["Segments", { tags: [tag] }, true],
      ]);
      const after = await visit("bytes=1000-1999");
      assert.deepEqual(after.body, pattern(1000, 1999));
      await settled();
      // The visitor's own bytes, which tell the facts again, and the segment kept meanwhile.
      assert.deepEqual(asked().slice(7), ["bytes=1000-1999", "bytes=1000-1999"]);
    });

    await t.step(
      "facts that outlived a replacement: the segment's 409 starts over on the new version",
      async () => {
        // Replaced (the fake's file ids follow the size), while the old version's facts are
        // still kept here, as in a data centre the purge did not reach.
        b2.putFile("site", { name: "v.mp4", body: { size: size + 100 } });
        const answer = await fetch(`${cache.url}/v.mp4`, { headers: { Range: "bytes=2000-2099" } });
        assert.deepEqual(
          [answer.status, answer.headers.get("content-range"), answer.headers.get("etag")],
          [206, `bytes 2000-2099/${size + 100}`, `"4_f5x${size + 100}"`],
        );
        assert.deepEqual([...await answer.bytes()], pattern(2000, 2099));
        await settled();
        // The old version's segment (refused, 409, never stored), the visitor's own bytes that
        // tell the new version, and the new version's segment, kept meanwhile.
        assert.deepEqual(asked().slice(9), [
          "bytes=2000-2999",
          "bytes=2000-2099",
          "bytes=2000-2999",
        ]);
      },
    );

    await t.step(
      "a browser's copy of a replaced version is not confirmed from old facts",
      async () => {
        const old = `"4_f5x${size + 100}"`;
        b2.putFile("site", { name: "v.mp4", body: { size: size + 200 } });
        const mark = asked().length;
        const answer = await fetch(`${cache.url}/v.mp4`, { headers: { "If-None-Match": old } });
        assert.deepEqual(
          [answer.status, answer.headers.get("etag")],
          [200, `"4_f5x${size + 200}"`],
          "the new version, not a 304 from the facts of the old one",
        );
        assert.deepEqual([...await answer.bytes()], pattern(0, size + 199));
        // The one-byte check of the old version's first segment, refused by B2.
        assert.equal(asked()[mark], "bytes=0-999");
      },
    );
  } finally {
    await cache.close();
    await b2.close();
  }
});

// Issue 25: the first viewer of a large object waits for one B2 round trip, no more. B2 is
// asked for the visitor's own bytes (their answer tells the facts), and the segment is kept in
// Workers Cache meanwhile, through the Segments entrypoint.
Deno.test("the worker: a first range of an unknown large object costs one B2 round trip", async (t) => {
  const size = 5500;
  const latencyMs = 400;
  const names = ["start.mp4", "middle.mp4", "end.mp4", "zero.mp4", "replaced.mp4"];
  const b2 = startFakeB2({
    buckets: [{
      id: "bucket-site",
      name: "site",
      files: names.map((name) => ({ name, body: { size } })),
    }],
    latencyMs,
  });
  const cache = await startWorkersCache({ maxObjectBytes: 2500 });
  const bindings = { WORKER_SEGMENT_SIZE: "1000", WORKER_SEGMENT_THRESHOLD: "2500" };
  const pattern = (start: number, end: number) =>
    Array.from({ length: end - start + 1 }, (_, i) => (start + i) % 251);
  const asked = (name: string) =>
    b2.requests.filter((r) => r.method === "GET" && r.path === `/file/site/${name}`)
      .map((r) => r.headers.get("range"));
  const visit = async (name: string, range: string) => {
    const started = performance.now();
    const answer = await fetch(`${cache.url}/${name}`, { headers: { Range: range } });
    const body: number[] = [];
    let ttfb = NaN;
    for await (const chunk of answer.body!) {
      ttfb = Number.isNaN(ttfb) ? performance.now() - started : ttfb;
      body.push(...chunk);
    }
    return {
      status: answer.status,
      range: answer.headers.get("content-range"),
      etag: answer.headers.get("etag"),
      body,
      ttfb,
    };
  };
  try {
    await deployRealWorker(cache, b2, bindings);
    const cases = [
      { step: "at the start of a segment", name: "start.mp4", from: 2000, to: 2199, own: 2199 },
      { step: "in the middle of a segment", name: "middle.mp4", from: 2400, to: 2599, own: 2599 },
      // Past the segment's end: the rest from the next segment, read through Workers Cache.
      { step: "at the end of a segment", name: "end.mp4", from: 2900, to: 3099, own: 2999 },
    ];
    for (const { step, name, from, to, own } of cases) {
      await t.step(step, async () => {
        const first = await visit(name, `bytes=${from}-${to}`);
        assert.deepEqual([first.status, first.range, first.body], [
          206,
          `bytes ${from}-${to}/${size}`,
          pattern(from, to),
        ]);
        // One round trip of B2 (two would take twice its latency), the answer that told the
        // object's size being the visitor's own bytes.
        assert.ok(first.ttfb < 1.8 * latencyMs, `first byte after ${first.ttfb.toFixed(0)} ms`);
        await cache.idle();
        const next = to > 2999 ? ["bytes=3000-3999"] : [];
        assert.deepEqual(
          asked(name).sort(),
          [`bytes=${from}-${own}`, "bytes=2000-2999", ...next].sort(),
        );
        const again = await visit(name, `bytes=${from}-${to}`);
        assert.deepEqual(again.body, pattern(from, to));
        assert.equal(asked(name).length, 2 + next.length, "the segments kept answer a repeat");
      });
    }

    await t.step(
      "a known object: a range inside a segment not kept reads its own bytes",
      async () => {
        const inside = await visit("start.mp4", "bytes=3400-3499");
        assert.deepEqual([inside.range, inside.body], [
          `bytes 3400-3499/${size}`,
          pattern(3400, 3499),
        ]);
        assert.ok(inside.ttfb < 1.8 * latencyMs, `first byte after ${inside.ttfb.toFixed(0)} ms`);
        // Asked of Workers Cache only if kept, then the visitor's bytes and the segment.
        await cache.idle();
        assert.deepEqual(asked("start.mp4").slice(2), ["bytes=3400-3499", "bytes=3000-3999"]);
        // A range from a segment's first byte reads the segment itself: no more to wait for.
        const aligned = await visit("start.mp4", "bytes=4000-4099");
        assert.deepEqual(aligned.body, pattern(4000, 4099));
        assert.deepEqual(asked("start.mp4").slice(4), ["bytes=4000-4999"]);
      },
    );

    await t.step(
      "a first range a segment or more into an object that turns out small",
      async () => {
        b2.putFile("site", { name: "small.mp4", body: { size: 2000 } });
        const first = await visit("small.mp4", "bytes=1500-1599");
        assert.deepEqual([first.range, first.body], ["bytes 1500-1599/2000", pattern(1500, 1599)]);
        // The visitor's own bytes, then the whole object, which the cache keeps.
        assert.deepEqual(asked("small.mp4"), ["bytes=1500-1599", null]);
        const again = await visit("small.mp4", "bytes=100-199");
        assert.deepEqual(again.body, pattern(100, 199));
        assert.equal(asked("small.mp4").length, 2);
      },
    );

    await t.step(
      "at the object's first byte: the whole GET, cut after the visitor's bytes",
      async () => {
        const first = await visit("zero.mp4", "bytes=0-199");
        assert.deepEqual([first.status, first.range, first.body], [
          206,
          `bytes 0-199/${size}`,
          pattern(0, 199),
        ]);
        assert.ok(first.ttfb < 1.8 * latencyMs, `first byte after ${first.ttfb.toFixed(0)} ms`);
        await cache.idle();
        assert.deepEqual(asked("zero.mp4"), [null, "bytes=0-999"]);
      },
    );

    await t.step("replaced between the facts and the segment: never mixed", async () => {
      // B2 holds a new version by the time the segment is asked for: the facts came with the
      // visitor's own bytes, of the old version, which he gets whole.
      const replacing = b2.front((answer, request) => {
        if (request.headers.get("range") === "bytes=2400-2599") {
          b2.putFile("site", { name: "replaced.mp4", body: { size: size + 100 } });
        }
        return answer;
      });
      try {
        const front = { url: replacing.url, issueDownloadToken: b2.issueDownloadToken.bind(b2) };
        await deployRealWorker(cache, front, bindings);
        const old = await visit("replaced.mp4", "bytes=2400-2599");
        assert.deepEqual([old.status, old.range, old.etag, old.body], [
          206,
          `bytes 2400-2599/${size}`,
          `"4_f12x${size}"`,
          pattern(2400, 2599),
        ]);
        await cache.idle();
        // The worker forgets the facts after the 409, in ctx.waitUntil.
        await new Promise((resolve) => setTimeout(resolve, 300));
        // The segment's B2 answer named the new version: refused (409), not kept, the old
        // facts forgotten; the next range learns the new version from its own bytes.
        assert.deepEqual(asked("replaced.mp4"), ["bytes=2400-2599", "bytes=2000-2999"]);
        const next = await visit("replaced.mp4", "bytes=2400-2599");
        assert.deepEqual([next.range, next.etag, next.body], [
          `bytes 2400-2599/${size + 100}`,
          `"4_f12x${size + 100}"`,
          pattern(2400, 2599),
        ]);
        await cache.idle();
        assert.deepEqual(asked("replaced.mp4").slice(2), ["bytes=2400-2599", "bytes=2000-2999"]);
      } finally {
        await replacing.close();
      }
    });
  } finally {
    await cache.close();
    await b2.close();
  }
});

Deno.test("the worker: a visitor who stops reading stops the B2 read that serves only him", async () => {
  const segment = 64 * 1024 * 1024;
  const b2 = startFakeB2({
    buckets: [{ id: "bucket-site", name: "site", files: [{ name: "v.mp4", body: { size: 1e9 } }] }],
  });
  const sent = new Map<string | null, number>();
  const counting = b2.front((answer, request) => {
    const range = request.headers.get("range");
    const counted = answer.body?.pipeThrough(
      new TransformStream<Uint8Array, Uint8Array>({
        transform(chunk, controller) {
          sent.set(range, (sent.get(range) ?? 0) + chunk.byteLength);
          controller.enqueue(chunk);
        },
      }),
    );
    return new Response(counted ?? null, answer);
  });
  const cache = await startWorkersCache();
  try {
    const front = { url: counting.url, issueDownloadToken: b2.issueDownloadToken.bind(b2) };
    await deployRealWorker(cache, front, { WORKER_SEGMENT_SIZE: String(segment) });
    const from = segment + 1024;
    const end = 2 * segment - 1;
    const answer = await fetch(`${cache.url}/v.mp4`, { headers: { Range: `bytes=${from}-` } });
    const reader = answer.body!.getReader();
    await reader.read();
    await reader.cancel();
    // At most twelve segments an answer (the subrequest budget): a shorter 206 says so.
    assert.equal(
      answer.headers.get("content-range"),
      `bytes ${from}-${13 * segment - 1}/1000000000`,
    );
    await cache.idle();
    await new Promise((resolve) => setTimeout(resolve, 500));
    const own = sent.get(`bytes=${from}-${end}`) ?? 0;
    assert.ok(own > 0 && own < segment / 4, `B2 sent ${own} bytes of the visitor's own read`);
    // The segment, read meanwhile for the next visitor, is read whole and kept.
    assert.equal(sent.get(`bytes=${segment}-${end}`), segment);
    const before = b2.requests.length;
    const kept = await fetch(`${cache.url}/v.mp4`, {
      headers: { Range: `bytes=${from}-${from + 9}` },
    });
    assert.equal((await kept.bytes()).byteLength, 10);
    assert.equal(b2.requests.length, before, "from Workers Cache");
  } finally {
    await cache.close();
    await counting.close();
    await b2.close();
  }
});

// ---------------------------------------------------------------------------
// Loopback calls through ctx.exports, and the cache's capacity
// ---------------------------------------------------------------------------

Deno.test("loopback calls through ctx.exports are cached under their entrypoint's own keys", async (t) => {
  await withCache({}, async (h) => {
    h.origin = (request) =>
      text(new URL(request.url).pathname, { "cache-control": "max-age=60", "cache-tag": "t" });
    await t.step(
      "a loopback call is a MISS, then a HIT that does not run the entrypoint",
      async () => {
        assert.equal((await h.get("/__loopback/x")).body, "/side/x");
        assert.equal((await h.get("/__loopback/x")).body, "/side/x");
        assert.deepEqual(h.seen().map((s) => s.path), ["/side/x"]);
        assert.deepEqual(h.cache.stats.loopback, { requests: 2, hits: 1, workerRuns: 1 });
        // The visitors' answers themselves said no-store: each ran the default entrypoint.
        assert.deepEqual([h.cache.stats.requests, h.cache.stats.workerRuns], [2, 2]);
      },
    );
    await t.step("the same path from a visitor is another entry", async () => {
      assert.equal((await h.get("/x")).label, "MISS");
      assert.deepEqual(h.seen().map((s) => s.path), ["/x"]);
    });
    await t.step("a visitor cannot name an entrypoint", async () => {
      const answer = await h.get("/y", { headers: { "x-workers-cache-entrypoint": "Side" } });
      assert.equal(answer.body, "/y");
      h.seen();
    });
    await t.step("a purge reaches only the entrypoint that calls it", async () => {
      await h.cacheCall("purge", { tags: ["t"] });
      assert.equal((await h.get("/__loopback/x")).body, "/side/x");
      assert.deepEqual(h.seen(), [], "the default entrypoint's purge left Side's entry");
      const side = await h.get("/__loopback/__cache/purge", {
        method: "POST",
        body: JSON.stringify({ tags: ["t"] }),
      });
      assert.deepEqual(JSON.parse(side.body), { success: true, errors: [] });
      assert.deepEqual(h.cache.purges.map((p) => p.entrypoint), ["default", "Side"]);
      await h.get("/__loopback/x");
      assert.deepEqual(h.seen().map((s) => s.path), ["/side/x"]);
    });
  });
});

Deno.test("past its capacity the cache evicts what was used least recently", () =>
  withCache({ capacityBytes: 25 }, async (h) => {
    h.origin = (request) =>
      text(new URL(request.url).pathname.padEnd(10, "."), { "cache-control": "max-age=60" });
    for (const path of ["/a", "/b", "/a", "/c", "/a", "/b"]) await h.get(path);
    // /a and /b filled 20 bytes; /a was used again, so /c's 10 evicted /b, asked again last.
    assert.deepEqual(h.seen().map((s) => s.path), ["/a", "/b", "/c", "/b"]);
  }));
