import assert from "node:assert/strict";
import { type BenchReport, judge } from "./bench.ts";
import {
  cacheModes,
  eventNotifications,
  largeObjects,
  listings,
  signedLinks,
  throughput,
} from "./test_figures.ts";

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
    eventNotifications: eventNotifications(),
    largeObjects: largeObjects(),
    listings: listings(),
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
