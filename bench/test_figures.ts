/**
 * Figures the bench's tests judge and print: a load run, the signed-link
 * section and the cache-modes section as their targets want them unless told
 * otherwise, and scripted workloads.
 *
 * @module
 */

import type { ListingRun, ListingsReport } from "./listings.ts";
import {
  type CacheModesReport,
  countCacheRun,
  type RequestRecord,
  type WorkloadRequest,
} from "./cache_modes.ts";
import type { EventNotificationsRun } from "./event_notifications.ts";
import type { LargeObjectsReport, LargeRun } from "./large_objects.ts";
import type { Throughput } from "./measure.ts";
import { type SignedLinkCost, signedLinkCost } from "./signed_links.ts";

/** One load run's figures: 100 requests at this rate. */
export function throughput(
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

/** The signed-link section with every target met, or with these changes. */
export function signedLinks(changes: Partial<SignedLinkCost> = {}): SignedLinkCost {
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

export const A = "/assets/a.bin";
export const B = "/assets/b.bin";

/** A workload of these requests (rotation before `rotateAt`) and what each cost. */
export function scripted(
  steps: [Partial<WorkloadRequest>, Partial<RequestRecord>][],
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

/** Section 6's figures: Workers Cache as the target wants it unless `changes` say otherwise. */
export function cacheModes(changes: Partial<RequestRecord> = {}): CacheModesReport {
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

/** Section 7's figures with every target met, or with these changes. */
export function eventNotifications(
  changes: Partial<EventNotificationsRun> = {},
): EventNotificationsRun {
  return {
    notificationToMissMs: { median: 12, max: 30 },
    freshMisses: 20,
    rounds: 20,
    bursts: [{
      events: 10_000,
      deliveries: 380,
      purges: { tags: 20, everything: 2, refused: 0, segments: 2 },
      purgesPer1000Events: 2.2,
      acknowledgedAfterS: 16,
      unacknowledged: 0,
    }],
    ...changes,
  };
}

/** Section 8's figures that meet every target, with `changes` to one run's. */
export function largeObjects(changes: Partial<LargeRun> = {}): LargeObjectsReport {
  const run = (workload: LargeRun["workload"], segments: LargeRun["segments"]): LargeRun => ({
    workload,
    segments,
    visits: 72,
    wrong: 0,
    b2RequestsPer1000: segments === "on" ? 100 : 1000,
    b2MiBPer1000: segments === "on" ? 800 : 2000,
    servedMiBPer1000: 2000,
    hitRatio: segments === "on" ? 0.9 : 0,
    repeatB2Requests: segments === "on" ? 0 : 24,
    uniqueSegmentMiB: 72 * 800 / 1000,
    segmentMiB: segments === "on" ? 72 * 800 / 1000 : 0,
    ownMiB: segments === "on" ? 0 : 72 * 2000 / 1000,
    ownServedMiB: segments === "on" ? 0 : 72 * 2000 / 1000,
    cachedTtfbMs: segments === "on" ? 1.1 : null,
    b2TtfbMs: 50,
    ...(workload === "video" && segments === "on" && changes),
  });
  return {
    segmentingAvailable: true,
    segmentBytes: 8 * 1024 * 1024,
    b2LatencyMs: 40,
    runs: [run("video", "off"), run("tiles", "off"), run("video", "on"), run("tiles", "on")],
    smallHitTtfbMs: 0.3,
    smallCacheApiTtfbMs: 1,
    stream: { segments: "on", bytes: 2e9, seconds: 45, peakRssMiB: 80, startRssMiB: 75 },
    floor: { ttfbMs: 1, oursTtfbMs: 1.1, rssGrowthMiB: 3, bytes: 2e9 },
  };
}

/** A listings section that meets its targets: one list call a page per minute, or fewer. */
export function listings(changes: Partial<ListingRun> = {}): ListingsReport {
  const run = (name: string, ttl: number, classC: number): ListingRun => ({
    name,
    ttl,
    views: 1000,
    pages: 4,
    listCalls: classC - 1,
    authorizations: 1,
    classC,
    classB: classC - 1,
    uploads: 0,
    errors: 0,
    ...changes,
  });
  return {
    folderNames: 2500,
    spanSeconds: 3600,
    runs: [run("cache on, TTL 60 s (the default)", 60, 200), run("cache off", 0, 1001)],
  };
}
