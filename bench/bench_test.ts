import assert from "node:assert/strict";
import {
  type BenchReport,
  type CacheModesReport,
  cacheWorkload,
  countCacheRun,
  describeWorkload,
  explainWorkerRuns,
  formatCacheModes,
  formatSignedLinks,
  judge,
  judgeCacheModes,
  judgeSignedLinks,
  type RequestRecord,
  type SignedLinkCost,
  signedLinkCost,
  type Throughput,
} from "./bench.ts";
import { load } from "./load.ts";

function throughput(
  requestsPerSecond: number,
  originRequests = 100,
  workerdCpuUs: number | null = 400,
): Throughput {
  return {
    requestsPerSecond,
    workerdCpuUs,
    p50Ms: 5,
    p99Ms: 50,
    requests: 100,
    errors: 0,
    originRequests,
  };
}

function measured(changes: {
  uncachedRatio?: number;
  peakRss1GiB?: number;
  cliMs?: number;
} = {}): Omit<BenchReport, "targets" | "seconds"> {
  const stream = (bytes: number, peakRssMiB: number) => ({
    cacheTtl: "0",
    bytes,
    ttfbMs: 10,
    mibPerSecond: 300,
    peakRssMiB,
    rssSamples: 10,
  });
  return {
    date: "2026-11-29T00:00:00Z",
    cores: 2,
    deno: "2.9.6",
    miniflare: "4",
    workerOverhead: {
      loadGenerator: "test",
      placement: "test",
      connections: 16,
      rounds: 1,
      roundSeconds: 1,
      floor: throughput(1000),
      uncached: throughput(1000 * (changes.uncachedRatio ?? 1)),
      cacheHit: throughput(1500, 0),
      cacheFloor: throughput(1500, 0),
      uncachedRatio: changes.uncachedRatio ?? 1,
      cacheHitRatio: 1.5,
      cacheHitFloorRatio: 1,
      perRound: [],
    },
    signedLinks: signedLinks(),
    streaming: [stream(1024 ** 2, 50), stream(1024 ** 3, changes.peakRss1GiB ?? 51)],
    refresh: [{
      scenario: "bucket name and id given",
      roundTrips: 3,
      expectedRoundTrips: 3,
      inProcessMs: 155,
      cliMs: changes.cliMs ?? 250,
      latencyFloorMs: 150,
      floorMs: 240,
    }],
    startup: { denoRunMs: 90, compiledMs: null },
    cacheModes: cacheModes(),
  };
}

Deno.test("judge() meets every target when the figures do", () => {
  const missed = judge(measured()).filter((target) => !target.met);
  assert.deepEqual(missed, []);
});

Deno.test("judge() says by how much each target is missed", () => {
  const targets = judge(measured({ uncachedRatio: 0.9, peakRss1GiB: 90, cliMs: 300 }));
  const missed = targets.filter((target) => !target.met).map((t) => `${t.name}: ${t.detail}`);
  assert.deepEqual(missed, [
    "worker, uncached: >= 0.95 x floor throughput: 0.90 x (-0.05)",
    "streaming (TTL 0): 1 GiB peak within 32 MiB of 1 MiB: +40.0 MiB (-8.0 MiB to spare)",
    "refresh: CLI wall time <= 1.2 x floor: worst 1.25 x (bucket name and id given; -0.05 to spare)",
  ]);
});

function signedLinks(changes: Partial<SignedLinkCost> = {}): SignedLinkCost {
  const cost = signedLinkCost([
    { public: throughput(1000), signed: throughput(990), publicWithPrefixes: throughput(1000) },
  ], {
    loadGenerator: "test",
    placement: "test",
    check: {
      repetitions: 5000,
      rounds: 5,
      publicUs: 5,
      signedUs: 20,
      publicWithPrefixesUs: 6,
      signedExtraUs: 15,
      publicWithPrefixesExtraUs: 1,
    },
  });
  return { ...cost, ...changes };
}

Deno.test("signedLinkCost() takes medians of per-round differences, not differences of medians", () => {
  // Drift between rounds: each round's signed case costs 10 µs more than its public one, while
  // the medians of each case alone would be 100 µs apart.
  const round = (publicUs: number, signedUs: number, rate: number) => ({
    public: throughput(rate, 100, publicUs),
    signed: throughput(rate * 0.9, 100, signedUs),
    publicWithPrefixes: throughput(rate, 100, publicUs + 1),
  });
  const cost = signedLinkCost([
    round(500, 510, 1000),
    round(400, 410, 1200),
    round(600, 610, 800),
    round(300, 800, 2000),
  ], { loadGenerator: "test", placement: "test", check: null });
  assert.equal(cost.signedExtraCpuUs, 10);
  assert.equal(cost.publicWithPrefixesExtraCpuUs, 1);
  assert.ok(Math.abs(cost.signedRatio - 0.9) < 1e-9, String(cost.signedRatio));
  assert.equal(cost.public.workerdCpuUs, 450);
  assert.equal(cost.signed.workerdCpuUs, 560);
  assert.equal(cost.rounds, 4);
  assert.equal(cost.signed.requests, 400);
});

Deno.test("signedLinkCost() has no CPU difference when a round could not read workerd's", () => {
  const cost = signedLinkCost([{
    public: throughput(1000, 100, null),
    signed: throughput(1000),
    publicWithPrefixes: throughput(1000),
  }], { loadGenerator: "test", placement: "test", check: null });
  assert.equal(cost.signedExtraCpuUs, null);
  assert.equal(cost.publicWithPrefixesExtraCpuUs, null);
});

Deno.test("judgeSignedLinks() judges a signed link end to end and the check alone", async (t) => {
  await t.step("met", () => {
    assert.deepEqual(judgeSignedLinks(signedLinks()).map((t) => [t.met, t.detail]), [
      [true, "+0.0 µs (+50.0 µs to spare)"],
      [true, "+15.0 µs (+35.0 µs to spare)"],
      [true, "+1.0 µs (+9.0 µs to spare)"],
    ]);
  });
  await t.step("missed, by how much", () => {
    const check = { ...signedLinks().check!, signedExtraUs: 62.5, publicWithPrefixesExtraUs: 12 };
    const targets = judgeSignedLinks(signedLinks({ check, signedExtraCpuUs: 115.2 }));
    assert.deepEqual(targets.map((t) => [t.met, t.detail]), [
      [false, "+115.2 µs (-65.2 µs to spare)"],
      [false, "+62.5 µs (-12.5 µs to spare)"],
      [false, "+12.0 µs (-2.0 µs to spare)"],
    ]);
  });
  await t.step("failed requests miss every target, however cheap the check", () => {
    const cost = signedLinks();
    const targets = judgeSignedLinks({ ...cost, signed: { ...cost.signed, errors: 3 } });
    assert.deepEqual(targets.map((t) => t.met), [false, false, false]);
    assert.match(targets[1]!.detail, /; 3 failed requests in the HTTP rounds$/);
  });
  await t.step("not measured is not met", () => {
    const targets = judgeSignedLinks(signedLinks({ check: null, signedExtraCpuUs: null }));
    assert.deepEqual(targets.map((t) => t.met), [false, false, false]);
    assert.match(targets[0]!.detail, /^not measured/);
  });
});

Deno.test("formatSignedLinks() prints each case and the differences to the feature off", () => {
  const text = formatSignedLinks(signedLinks()).join("\n");
  assert.match(
    text,
    /^5\. Signed links: 1 KiB object, WORKER_CACHE_TTL=0, 16 connections, 1 alternated/,
  );
  assert.match(text, /prefixes on, signed link +990 +400 µs/);
  assert.match(text, /signed link \+0\.0 µs CPU\/req, 0\.99 x req\/s/);
  assert.match(
    text,
    /5\.0 µs feature off, 20\.0 µs signed \(\+15\.0\), 6\.0 µs public with prefixes \(\+1\.0\)/,
  );
  assert.match(formatSignedLinks(signedLinks({ check: null })).join("\n"), /not measured/);
});

Deno.test("load() keeps its connections busy, counts failures and stops at its bound", async () => {
  let served = 0;
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, () => {
    served++;
    return new Response("x", { status: served % 2 === 0 ? 500 : 200 });
  });
  try {
    const result = await load(`http://127.0.0.1:${server.addr.port}/`, {
      connections: 4,
      seconds: 10,
      maxRequests: 200,
    });
    assert.equal(result.requests, 200);
    assert.equal(served, 200);
    assert.equal(result.errors, 100);
    assert.ok(result.p50Us > 0 && result.p50Us <= result.p99Us, JSON.stringify(result));
    assert.ok(result.durationUs < 10e6, "stopped at 200 requests, not after 10 s");
  } finally {
    await server.shutdown();
  }
});

// ---------------------------------------------------------------------------
// 6. Edge cache modes
// ---------------------------------------------------------------------------

Deno.test("cacheWorkload() is the same for a seed and mixes every kind of request", () => {
  const workload = cacheWorkload();
  assert.deepEqual(cacheWorkload(), workload);
  assert.notDeepEqual(cacheWorkload({ seed: 9 }).requests, workload.requests);
  assert.equal(workload.requests.length, 3000);
  assert.equal(workload.rotateAt, 1500);
  const kinds = describeWorkload(workload).kinds;
  for (const kind of ["get", "head", "range", "query", "conditional"]) {
    assert.ok((kinds[kind] ?? 0) > 100, `${kind}: ${kinds[kind]}`);
  }
  // Zipf-like: the most popular object takes a large share, many are asked once or never.
  const counts = new Map<string, number>();
  for (const r of workload.requests) counts.set(r.object, (counts.get(r.object) ?? 0) + 1);
  const first = workload.objects[0]!.path;
  assert.ok(counts.get(first)! > 3000 * 0.1, `top object asked ${counts.get(first)} times`);
  const rare = workload.objects.filter((o) => (counts.get(o.path) ?? 0) <= 1).length;
  assert.ok(rare > 300 / 5, `${rare} objects asked at most once`);
});

Deno.test("cacheWorkload() asks well-formed requests in time order", () => {
  const workload = cacheWorkload({ requests: 1500, seconds: 3000 });
  const asked = new Set<string>();
  let last = 0;
  for (const r of workload.requests) {
    const object = workload.objects.find((o) => o.path === r.object)!;
    assert.ok(r.at >= last && r.at < 3000, `at ${r.at}`);
    last = r.at;
    if (r.kind === "conditional") assert.ok(asked.has(r.object), "revalidates what it holds");
    if (r.kind === "head") assert.equal(r.method, "HEAD");
    if (r.kind === "query") assert.match(r.url, /^\/assets\/o-\d+\.bin\?[a-z_]+=\w+$/);
    else assert.equal(r.url, r.object);
    if (r.kind === "range") {
      const [, start, end] = /^bytes=(\d+)-(\d+)$/.exec(r.range ?? "")!.map(Number);
      assert.ok(start! <= end! && end! < object.bytes, `${r.range} of ${object.bytes}`);
    } else assert.equal(r.range, undefined);
    asked.add(r.object);
  }
});

const A = "/assets/a.bin";
const B = "/assets/b.bin";

/** A workload of these requests (rotation before `rotateAt`) and what each cost. */
function scripted(
  steps: [Partial<import("./bench.ts").WorkloadRequest>, Partial<RequestRecord>][],
  rotateAt = steps.length,
) {
  const requests = steps.map(([r], i) => ({
    at: i,
    kind: "get" as const,
    method: "GET" as const,
    url: r.object ?? A,
    object: A,
    ...r,
  }));
  const records = steps.map(([, record]) => ({
    statuses: [200],
    cacheStatuses: ["HIT"],
    workerRuns: 0,
    b2Gets: 0,
    b2Heads: 0,
    ...record,
  }));
  return { workload: { requests, rotateAt }, records };
}

Deno.test("explainWorkerRuns() puts each worker run down to its cause", async (t) => {
  await t.step("first requests, a query's redirect, expiries and conditional requests", () => {
    const { workload, records } = scripted([
      [{}, { cacheStatuses: ["MISS"], workerRuns: 1, b2Gets: 1 }],
      [{ kind: "head", method: "HEAD" }, {}],
      // A new query key answered 301 by the worker, then the path from the cache.
      [{ kind: "query", url: `${A}?utm_source=x` }, {
        statuses: [301, 200],
        cacheStatuses: ["MISS", "HIT"],
        workerRuns: 1,
      }],
      // Both keys new: two runs, both first.
      [{ kind: "query", url: `${B}?v=2`, object: B }, {
        statuses: [301, 200],
        cacheStatuses: ["MISS", "MISS"],
        workerRuns: 2,
        b2Gets: 1,
      }],
      [{}, { cacheStatuses: ["UPDATING"], workerRuns: 1, b2Heads: 1 }],
      [{ kind: "conditional" }, { statuses: [304], cacheStatuses: ["BYPASS"], workerRuns: 1 }],
      [{ kind: "range", range: "bytes=0-9" }, { statuses: [206] }],
    ]);
    assert.deepEqual(explainWorkerRuns(workload, records), {
      first: 4,
      expiry: 1,
      conditional: 1,
      other: 0,
      otherB2: 0,
      hitsThatRan: 0,
      otherAfterRotation: 0,
    });
  });
  await t.step("a rotation that empties the cache, and a hit that ran the worker", () => {
    const { workload, records } = scripted([
      [{}, { cacheStatuses: ["MISS"], workerRuns: 1, b2Gets: 1 }],
      [{}, { workerRuns: 1 }],
      [{}, { cacheStatuses: ["MISS"], workerRuns: 1, b2Gets: 1 }],
      // A conditional request's run does not make the key's first: the next GET still is.
      [{ object: B, url: B, kind: "conditional" }, {
        cacheStatuses: ["BYPASS"],
        workerRuns: 1,
        b2Heads: 1,
      }],
      [{ object: B, url: B }, { cacheStatuses: ["MISS"], workerRuns: 1, b2Gets: 1 }],
    ], 2);
    assert.deepEqual(explainWorkerRuns(workload, records), {
      first: 2,
      expiry: 0,
      conditional: 1,
      other: 2,
      otherB2: 1,
      hitsThatRan: 1,
      otherAfterRotation: 1,
    });
  });
});

Deno.test("countCacheRun() adds up a mode's requests, hits, B2 fetches and errors", () => {
  const { workload, records } = scripted([
    [{}, { cacheStatuses: ["none"], workerRuns: 1, b2Gets: 1 }],
    [{ object: B, url: B, kind: "range" }, { cacheStatuses: ["none"], workerRuns: 1, b2Gets: 1 }],
    [{ kind: "head", method: "HEAD" }, { cacheStatuses: ["none"], workerRuns: 1, b2Heads: 1 }],
    // After the rotation: A was fetched whole before it, B only as a range.
    [{}, { cacheStatuses: ["none"], workerRuns: 1, b2Gets: 1 }],
    [{ object: B, url: B }, { cacheStatuses: ["none"], workerRuns: 1, b2Gets: 1 }],
    [{}, { statuses: [502], cacheStatuses: ["none"], workerRuns: 1 }],
    // An expiry's fetch is not the rotation's.
    [{}, { cacheStatuses: ["UPDATING"], workerRuns: 1, b2Heads: 1 }],
  ], 3);
  const run = countCacheRun("off", workload, records, 2);
  assert.deepEqual({ ...run, causes: undefined }, {
    mode: "off",
    requests: 7,
    answers: 7,
    workerRuns: 7,
    b2Gets: 4,
    b2Heads: 2,
    hits: 1,
    b2AfterRotationForCached: 1,
    errors: 1,
    cacheStatuses: { none: 6, UPDATING: 1 },
    causes: undefined,
    seconds: 2,
  });
});

/** Section 6's figures: Workers Cache as the target wants it unless `changes` say otherwise. */
function cacheModes(changes: Partial<RequestRecord> = {}): CacheModesReport {
  const { workload, records } = scripted([
    [{}, { cacheStatuses: ["MISS"], workerRuns: 1, b2Gets: 1 }],
    [{}, {}],
    [{ kind: "head", method: "HEAD" }, {}],
    [{}, { ...changes }],
  ], 2);
  const none = records.map((r) => ({ ...r, cacheStatuses: ["none"], workerRuns: 1 }));
  return {
    workload: {
      seed: 8,
      rotateAt: 2,
      seconds: 4,
      zipfExponent: 1.1,
      requests: 4,
      objects: 1,
      kinds: { get: 3, head: 1 },
      keys: 1,
    },
    cacheTtl: 86400,
    runs: [
      countCacheRun("workers-cache", workload, records, 1),
      countCacheRun("cache-api", workload, none, 1),
      countCacheRun("off", workload, none.map((r) => ({ ...r, b2Gets: 1 })), 1),
    ],
  };
}

Deno.test("judgeCacheModes() meets the target only when nothing but first requests and expiries run the worker", async (t) => {
  await t.step("met", () => {
    assert.deepEqual(judgeCacheModes(cacheModes()).map((t) => [t.met, t.detail]), [
      [
        true,
        "1 first, 0 expiries, 0 browsers' conditional requests (passed on, as the stand-in assumes), 0 other",
      ],
      [
        true,
        "0 B2 fetches after it for objects cached before, 0 B2 fetches without a first request or expiry",
      ],
      [true, "0 of 3 HIT answers ran it"],
    ]);
  });
  await t.step("a rotation that empties the cache misses all three", () => {
    const targets = judgeCacheModes(cacheModes({ workerRuns: 1, b2Gets: 1 }));
    assert.deepEqual(targets.map((t) => [t.met, t.detail]), [
      [
        false,
        "1 first, 0 expiries, 0 browsers' conditional requests (passed on, as the stand-in assumes), 1 other",
      ],
      [
        false,
        "1 B2 fetches after it for objects cached before, 1 B2 fetches without a first request or expiry",
      ],
      [false, "1 of 3 HIT answers ran it"],
    ]);
  });
  await t.step("failed answers miss the first two", () => {
    const failed = judgeCacheModes(cacheModes({ statuses: [502], cacheStatuses: ["MISS"] }));
    assert.deepEqual(failed.map((t) => t.met), [false, false, true]);
    assert.match(failed[0]!.detail, /; 1 answers failed$/);
  });
  await t.step("a run without any HIT, or without Workers Cache, is not met", () => {
    const report = cacheModes();
    const noHits = report.runs[0]!;
    const cold = { ...noHits, cacheStatuses: { MISS: 4 } };
    assert.equal(judgeCacheModes({ ...report, runs: [cold] })[2]!.met, false);
    const unmeasured = judgeCacheModes({ ...report, runs: report.runs.slice(1) });
    assert.deepEqual(unmeasured.map((t) => t.met), [false]);
  });
});

Deno.test("formatCacheModes() prints each mode per 1,000 requests, side by side", () => {
  const lines = formatCacheModes(cacheModes());
  const text = lines.join("\n");
  assert.match(text, /^6\. Edge cache modes: 4 requests for 1 objects \(Zipf s=1\.1, seed 8\)/);
  assert.match(text, /mix: 3 get, 1 head, 0 range, 0 query, 0 conditional; 1 Workers Cache keys/);
  assert.match(text, /\n {2}workers-cache +250 +250 +0 +75\.0 % +0 +0 +1 s\n/);
  assert.match(text, /\n {2}cache-api +1000 +250 +0 +75\.0 % +0 +0 +1 s\n/);
  assert.match(text, /\n {2}off +1000 +1000 +0 +0\.0 % +2 +0 +1 s\n/);
  assert.match(text, /workers-cache: HIT 3, MISS 1; worker runs: 1 first, 0 expiry/);
});
