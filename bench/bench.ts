/**
 * Measures what the worker adds to a visitor's request, how it streams a
 * large object, how few round trips a refresh makes, how fast the CLI
 * starts, what a signed link costs a request, and how often each edge cache
 * mode runs the worker and asks B2 over one mixed workload, all on this
 * machine against the stand-in servers, and prints one table (or, with
 * `--json`, one JSON object) with the targets of issues 5, 8 and 11.
 *
 * ```sh
 * deno task bench            # deno run -A bench/bench.ts
 * deno task bench --json
 * deno task bench --load fetch   # the Deno fetch loop even where wrk is installed
 * deno task bench --only signed-links   # the signature check's cost alone, under a minute
 * deno task bench --only cache-modes    # the cache modes over one workload, under a minute
 * deno task bench --only event-notifications   # notification to MISS, bursts; about a minute
 * deno task bench --only large-objects  # video and map ranges, segments on and off
 * deno task bench --only large-objects --full-stream  # and the whole 20 GB video streamed
 * deno task bench --only listings       # folder listings' B2 transactions, under a minute
 * ```
 *
 * Everything runs on 127.0.0.1, every loop is bounded in time or count, and
 * every process and temporary directory it starts is gone when it ends. It
 * takes about four minutes on 2 cores.
 *
 * Each section is a file of its own: `worker_overhead.ts`, `streaming.ts`,
 * `refresh.ts`, `startup.ts`, `signed_links.ts`, `cache_modes.ts`,
 * `event_notifications.ts`, `large_objects.ts`, `listings.ts`; they
 * share `measure.ts` (figures and the report's printing) and `processes.ts`
 * (workerd, /proc, pinning).
 *
 * @module
 */

import { parseArgs } from "node:util";
import { loadWorkerModule } from "../main.ts";
import {
  benchCacheModes,
  type CacheModesReport,
  formatCacheModes,
  judgeCacheModes,
} from "./cache_modes.ts";
import {
  benchEventNotifications,
  type EventNotificationsRun,
  formatEventNotifications,
  judgeEventNotifications,
} from "./event_notifications.ts";
import {
  benchLargeObjects,
  formatLargeObjects,
  judgeLargeObjects,
  type LargeObjectsReport,
} from "./large_objects.ts";
import { benchListings, formatListings, judgeListings, type ListingsReport } from "./listings.ts";
import {
  formatSections,
  type LoadChoice,
  type MachineFacts,
  measureReport,
  pickLoadGenerator,
  type Target,
  type Verdict,
} from "./measure.ts";
import { stopChildrenOnInterrupt } from "./processes.ts";
import { benchRefresh, formatRefresh, judgeRefresh, type RefreshRun } from "./refresh.ts";
import {
  benchSignedLinks,
  formatSignedLinks,
  judgeSignedLinks,
  type SignedLinkCost,
} from "./signed_links.ts";
import { benchCompiled, benchDenoRun, formatStartup, type Startup } from "./startup.ts";
import { benchStreaming, formatStreaming, judgeStreaming, type StreamRun } from "./streaming.ts";
import {
  benchWorkerOverhead,
  formatWorkerOverhead,
  judgeWorkerOverhead,
  type WorkerOverhead,
} from "./worker_overhead.ts";

/** How the benchmark is run. */
export interface BenchOptions {
  /** Print one JSON object instead of the table. @default false */
  json: boolean;
  /** `wrk` when it is installed, else the Deno fetch loop of `load.ts`. @default "auto" */
  load: LoadChoice;
  /** Large objects: stream the whole 20 GB video, not its first 45 s. @default false */
  fullStream?: boolean;
}

/** Everything the run measured. */
export interface BenchReport extends MachineFacts, Verdict {
  workerOverhead: WorkerOverhead;
  signedLinks: SignedLinkCost;
  streaming: StreamRun[];
  refresh: RefreshRun[];
  startup: Startup;
  cacheModes: CacheModesReport;
  eventNotifications: EventNotificationsRun;
  largeObjects: LargeObjectsReport;
  listings: ListingsReport;
}

/** The listings section alone (`--only listings`), with its targets. */
export interface ListingsAloneReport extends MachineFacts, Verdict {
  listings: ListingsReport;
}

/** The event-notifications section alone (`--only event-notifications`), with its targets. */
export interface EventNotificationsReport extends MachineFacts, Verdict {
  eventNotifications: EventNotificationsRun;
}

/** The signed-link section alone (`--only signed-links`), with its targets. */
export interface SignedLinksReport extends MachineFacts, Verdict {
  signedLinks: SignedLinkCost;
}

/** The cache-modes section alone (`--only cache-modes`), with its targets. */
export interface CacheModesAloneReport extends MachineFacts, Verdict {
  cacheModes: CacheModesReport;
}

/** The large-objects section alone (`--only large-objects`), with its targets. */
export interface LargeObjectsAloneReport extends MachineFacts, Verdict {
  largeObjects: LargeObjectsReport;
}

/** The sections `--only` runs alone. */
const ALONE = ["signed-links", "cache-modes", "event-notifications", "large-objects", "listings"];

/** Runs every section in turn and judges the targets. */
export async function bench(options: BenchOptions): Promise<BenchReport> {
  const log = (line: string) => {
    if (!options.json) console.error(line);
  };
  return await measureReport(async () => {
    const module = await loadWorkerModule();
    const generator = await pickLoadGenerator(options.load);
    log(`1/6 worker overhead (${generator.name})...`);
    const workerOverhead = await benchWorkerOverhead(module, generator);
    log("2/6 streaming 1 MiB and 1 GiB...");
    const streaming = await benchStreaming(module);
    // Start-up before the refresh, whose floor includes it.
    log("3/6 start-up, deno run and deno compile...");
    const denoRunMs = await benchDenoRun();
    const compiled = await benchCompiled();
    log("4/6 refresh...");
    const refresh = await benchRefresh(module, denoRunMs);
    log("5/6 signed links...");
    const signedLinks = await benchSignedLinks(module, generator);
    log("6/6 cache modes, one workload through each...");
    const cacheModes = await benchCacheModes(module, log);
    log("and event notifications: notification to MISS, bursts of 1,000 and 10,000...");
    const eventNotifications = await benchEventNotifications(module);
    log("and large objects by ranges, segments off and on...");
    const largeObjects = await benchLargeObjects(module, { log, full: options.fullStream });
    log("and folder listings: B2 transactions per 1,000 views...");
    const listings = await benchListings(module, log);
    const startup = { denoRunMs, ...compiled };
    return {
      workerOverhead,
      signedLinks,
      streaming,
      refresh,
      startup,
      cacheModes,
      eventNotifications,
      largeObjects,
      listings,
    };
  }, judge);
}

/** Judges the measured figures against the targets of issues 5, 8 and 11. */
export function judge(report: Omit<BenchReport, "targets" | "seconds">): Target[] {
  const [roundTrips, cliTime, inProcessTime] = judgeRefresh(report.refresh);
  // In the order the report has always listed them.
  return [
    ...judgeWorkerOverhead(report.workerOverhead),
    ...judgeStreaming(report.streaming),
    roundTrips,
    ...judgeSignedLinks(report.signedLinks),
    cliTime,
    inProcessTime,
    ...judgeCacheModes(report.cacheModes),
    ...judgeEventNotifications(report.eventNotifications),
    ...judgeLargeObjects(report.largeObjects),
    ...judgeListings(report.listings),
  ];
}

/** The report as the table `deno task bench` prints. */
export function formatReport(report: BenchReport): string {
  return formatSections(report, [
    formatWorkerOverhead(report.workerOverhead),
    formatStreaming(report.streaming),
    formatRefresh(report.refresh),
    formatStartup(report.startup),
    formatSignedLinks(report.signedLinks),
    formatCacheModes(report.cacheModes),
    formatEventNotifications(report.eventNotifications),
    formatLargeObjects(report.largeObjects),
    formatListings(report.listings),
  ]);
}

/** Runs section 5 alone: under a minute, for rerunning it on a quieter machine. */
export async function benchSignedLinksAlone(options: BenchOptions): Promise<SignedLinksReport> {
  return await measureReport(async () => {
    const generator = await pickLoadGenerator(options.load);
    if (!options.json) console.error(`signed links (${generator.name})...`);
    return { signedLinks: await benchSignedLinks(await loadWorkerModule(), generator) };
  }, (measured) => judgeSignedLinks(measured.signedLinks));
}

/** Runs section 6 alone: under a minute. */
export async function benchCacheModesAlone(options: BenchOptions): Promise<CacheModesAloneReport> {
  return await measureReport(async () => {
    const log = options.json ? undefined : (line: string) => console.error(line);
    return { cacheModes: await benchCacheModes(await loadWorkerModule(), log) };
  }, (measured) => judgeCacheModes(measured.cacheModes));
}

/** Runs section 7 alone: about a minute, most of it B2's retries after a coalesced burst. */
export async function benchEventNotificationsAlone(
  options: BenchOptions,
): Promise<EventNotificationsReport> {
  return await measureReport(async () => {
    if (!options.json) console.error("event notifications...");
    return { eventNotifications: await benchEventNotifications(await loadWorkerModule()) };
  }, (measured) => judgeEventNotifications(measured.eventNotifications));
}

/** Runs section 8 alone: about two minutes. */
export async function benchLargeObjectsAlone(
  options: BenchOptions,
): Promise<LargeObjectsAloneReport> {
  return await measureReport(async () => {
    const log = options.json ? undefined : (line: string) => console.error(line);
    const module = await loadWorkerModule();
    return { largeObjects: await benchLargeObjects(module, { log, full: options.fullStream }) };
  }, (measured) => judgeLargeObjects(measured.largeObjects));
}

/** Runs section 9 alone: under a minute. */
export async function benchListingsAlone(options: BenchOptions): Promise<ListingsAloneReport> {
  return await measureReport(async () => {
    const log = options.json ? undefined : (line: string) => console.error(line);
    return { listings: await benchListings(await loadWorkerModule(), log) };
  }, (measured) => judgeListings(measured.listings));
}

/** The flags, checked; exits 2 on bad usage. */
function parseFlags(args: string[]): { options: BenchOptions; only: string | undefined } {
  const { values } = parseArgs({
    args,
    options: {
      json: { type: "boolean", default: false },
      load: { type: "string", default: "auto" },
      only: { type: "string" },
      "full-stream": { type: "boolean", default: false },
    },
  });
  const load = values.load;
  if (load !== "auto" && load !== "wrk" && load !== "fetch") {
    console.error(`--load must be auto, wrk or fetch, not "${load}".`);
    Deno.exit(2);
  }
  if (values.only !== undefined && !ALONE.includes(values.only)) {
    console.error(
      `--only takes ${ALONE.join(" or ")} (the sections that run alone), not "${values.only}".`,
    );
    Deno.exit(2);
  }
  return {
    options: { json: values.json, load, fullStream: values["full-stream"] },
    only: values.only,
  };
}

/** Runs what the flags ask and prints it, as text or one JSON object. */
async function run(options: BenchOptions, only: string | undefined): Promise<string> {
  if (only === "signed-links") {
    const report = await benchSignedLinksAlone(options);
    return options.json
      ? JSON.stringify(report)
      : formatSections(report, [formatSignedLinks(report.signedLinks)]);
  }
  if (only === "cache-modes") {
    const report = await benchCacheModesAlone(options);
    return options.json
      ? JSON.stringify(report)
      : formatSections(report, [formatCacheModes(report.cacheModes)]);
  }
  if (only === "event-notifications") {
    const report = await benchEventNotificationsAlone(options);
    return options.json
      ? JSON.stringify(report)
      : formatSections(report, [formatEventNotifications(report.eventNotifications)]);
  }
  if (only === "large-objects") {
    const report = await benchLargeObjectsAlone(options);
    return options.json
      ? JSON.stringify(report)
      : formatSections(report, [formatLargeObjects(report.largeObjects)]);
  }
  if (only === "listings") {
    const report = await benchListingsAlone(options);
    return options.json
      ? JSON.stringify(report)
      : formatSections(report, [formatListings(report.listings)]);
  }
  const report = await bench(options);
  return options.json ? JSON.stringify(report) : formatReport(report);
}

async function main(): Promise<void> {
  const { options, only } = parseFlags(Deno.args);
  const release = stopChildrenOnInterrupt();
  try {
    console.log(await run(options, only));
  } finally {
    release();
  }
}

if (import.meta.main) await main();
