import assert from "node:assert/strict";
import {
  type BenchReport,
  formatSignedLinks,
  judge,
  judgeSignedLinks,
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
