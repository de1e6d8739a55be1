import assert from "node:assert/strict";
import {
  cacheWorkload,
  countCacheRun,
  describeWorkload,
  explainWorkerRuns,
  formatCacheModes,
  judgeCacheModes,
} from "./cache_modes.ts";
import { A, B, cacheModes, scripted } from "./test_figures.ts";

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
