import assert from "node:assert/strict";
import {
  alternatedRounds,
  formatSections,
  median,
  medianRatio,
  summarizeRuns,
  table,
} from "./measure.ts";
import { throughput } from "./test_figures.ts";

Deno.test("median() takes the middle value, or the mean of the two middle ones", () => {
  assert.equal(median([3, 1, 2]), 2);
  assert.equal(median([4, 1, 3, 2]), 2.5);
  assert.equal(median([7]), 7);
});

Deno.test("summarizeRuns() takes medians of rates and latencies and sums the counts", () => {
  const runs = [throughput(1000, 10, 300), throughput(3000, 0, 500), throughput(2000, 5, 400)];
  runs[1] = { ...runs[1]!, p50Ms: 9, errors: 2 };
  assert.deepEqual(summarizeRuns(runs), {
    requestsPerSecond: 2000,
    workerdCpuUs: 400,
    p50Ms: 5,
    p99Ms: 50,
    requests: 300,
    errors: 2,
    originRequests: 15,
  });
  const unread = summarizeRuns([throughput(1000), throughput(1000, 100, null)]);
  assert.equal(unread.workerdCpuUs, null);
});

Deno.test("medianRatio() takes the ratio within each round, then the median", () => {
  // The cases drift together: a ratio of medians would say 1.5, each round says 0.9.
  const perRound = [
    { a: throughput(900), b: throughput(1000) },
    { a: throughput(2700), b: throughput(3000) },
    { a: throughput(1800), b: throughput(2000) },
  ];
  assert.ok(Math.abs(medianRatio(perRound, { of: "a", to: "b" }) - 0.9) < 1e-9);
});

Deno.test("alternatedRounds() rotates which case runs first from round to round", async () => {
  const order: string[] = [];
  const perRound = await alternatedRounds(
    { cases: ["a", "b", "c"], rounds: 4 },
    (name) => {
      order.push(name);
      return Promise.resolve(order.length);
    },
  );
  assert.deepEqual(order, ["a", "b", "c", "b", "c", "a", "c", "a", "b", "a", "b", "c"]);
  assert.deepEqual(perRound[1], { b: 4, c: 5, a: 6 });
  assert.equal(perRound.length, 4);
});

Deno.test("formatSections() prints the machine, each section, the targets and the time", () => {
  const text = formatSections({
    date: "2026-12-02T00:00:00Z",
    cores: 2,
    deno: "2.9.6",
    miniflare: "4.1",
    targets: [{ name: "one", met: true, detail: "ok" }, { name: "two", met: false, detail: "no" }],
    seconds: 41.6,
  }, [["1. First"], ["2. Second", "  more"]]);
  assert.equal(
    text,
    [
      "b2-private-cdn bench, 2026-12-02T00:00:00Z",
      "machine: 2 cores, Deno 2.9.6, workerd via miniflare 4.1",
      "",
      "1. First",
      "",
      "2. Second",
      "  more",
      "",
      "Targets",
      "  ✓ one: ok",
      "  ✗ two: no",
      "",
      "(42 s)",
    ].join("\n"),
  );
});

Deno.test("table() aligns the first column left and the rest right, three spaces apart", () => {
  assert.equal(
    table([["case", "req/s"], ["floor", "12,345"], ["ours, hit", "9"]]),
    "  case         req/s\n  floor       12,345\n  ours, hit        9",
  );
});
