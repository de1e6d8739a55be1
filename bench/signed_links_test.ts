import assert from "node:assert/strict";
import { formatSignedLinks, judgeSignedLinks, signedLinkCost } from "./signed_links.ts";
import { signedLinks, throughput } from "./test_figures.ts";

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
