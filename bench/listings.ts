/**
 * Section 9 of the bench: what folder listings (`WORKER_LISTING=on`) cost in B2 transactions.
 * The worker in workerd behind the Workers Cache stand-in, on the stand-in's clock, gets 1,000
 * views of a folder of 2,500 names (three pages of 1,000) spread over an hour, and the B2
 * stand-in counts what it is asked: `b2_list_file_names` and `b2_authorize_account` (Class C)
 * and the probes for the folder's index file (Class B downloads). Runs: the cache on at two
 * TTLs, on with an upload into the folder every ten minutes (event notifications purging the
 * listing), and off.
 *
 * @module
 */

import type { FakeFile } from "../local/fake_b2.ts";
import { startWorkersCache } from "../local/workers_cache.ts";
import { seededRandom, table, type Target } from "./measure.ts";
import {
  BENCH_BUCKET,
  benchEventSecret,
  ourUpload,
  setBenchEventRule,
  startBenchB2,
} from "./processes.ts";

const FOLDER_NAMES = 2_500;
const VIEWS = 1_000;
const SPAN_SECONDS = 3_600;
const UPLOAD_EVERY_SECONDS = 600;
const SEED = 24;
const DEFAULT_TTL = 60;
const COALESCE_SECONDS = 1;
const LISTING_KEY = {
  keyId: "bench-listing-key-id",
  applicationKey: "bench-listing-key",
  capabilities: ["listFiles"],
  restrictToBucket: BENCH_BUCKET,
  namePrefix: null,
};
/**
 * What visitors ask, in cumulative shares: mostly the first page, some scripts' JSON, fewer
 * later pages (`from` is where each page starts, as the page's own links write it).
 */
const VIEW_MIX: [string, number][] = [
  ["/archive/", 0.6],
  ["/archive/?format=json", 0.75],
  ["/archive/?from=f-1000.bin", 0.9],
  ["/archive/?from=f-2000.bin", 1],
];
/** B2's price of Class C transactions past the 2,500 free a day (API_FACTS, Billing). */
const CLASS_C_USD_PER_1000 = 0.004;

/** One run's counts over the views. */
export interface ListingRun {
  name: string;
  /** `WORKER_LISTING_TTL`; 0 with the cache off. */
  ttl: number;
  views: number;
  /** Distinct page URLs asked. */
  pages: number;
  /** Each returns at most 1,000 names (a page), so each is one Class C transaction. */
  listCalls: number;
  authorizations: number;
  /** Class C transactions: list calls (a call per 1,000 names) and authorizations. */
  classC: number;
  /** Class B: the worker's probes for the folder's index file. */
  classB: number;
  uploads: number;
  errors: number;
}

/** Section 9. */
export interface ListingsReport {
  folderNames: number;
  spanSeconds: number;
  runs: ListingRun[];
}

/** The views of one run: which page, when (seconds on the stand-in's clock). */
export function listingViews(count = VIEWS, seed = SEED): { at: number; url: string }[] {
  const random = seededRandom(seed);
  return Array.from({ length: count }, (_, i) => {
    const roll = random();
    const url = VIEW_MIX.find(([, upTo]) => roll < upTo)?.[0] ?? VIEW_MIX[0]![0];
    return { at: Math.round(i * SPAN_SECONDS / count), url };
  });
}

function folderFiles(): FakeFile[] {
  return Array.from({ length: FOLDER_NAMES }, (_, i) => ({
    name: `archive/f-${String(i).padStart(4, "0")}.bin`,
    body: { size: 100 + i },
  }));
}

/** One run: the views against a fresh stand-in and worker. */
async function runListings(
  module: string,
  run: { name: string; ttl: number; uploads: boolean },
): Promise<ListingRun> {
  await using stack = new AsyncDisposableStack();
  let at = 0;
  const epoch = Date.now();
  const cache = await startWorkersCache({ now: () => epoch + at * 1000 });
  stack.defer(() => cache.close());
  const b2 = startBenchB2(folderFiles(), {
    keys: [LISTING_KEY],
    webhookFetch: (url, init) => {
      const { pathname, search } = new URL(url);
      return fetch(`${cache.url}${pathname}${search}`, init);
    },
  });
  stack.defer(() => b2.close());
  const derived = await benchEventSecret();
  const settings = {
    WORKER_CACHE_MODE: run.ttl === 0 ? "off" : "workers-cache",
    WORKER_LISTING: "on",
    WORKER_LISTING_TTL: String(run.ttl),
    B2_LISTING_KEY_ID: LISTING_KEY.keyId,
    B2_LISTING_KEY: LISTING_KEY.applicationKey,
    B2_API_URL: b2.url,
    ...(run.uploads && { B2_EVENT_NOTIFICATIONS: "on" }),
  };
  const upload = ourUpload(module, b2, settings, { eventSecret: derived.secret });
  // A Segments purge follows each notification one window later (15 s by default); a short
  // window lets it run before workerd stops.
  upload.metadata.bindings.push({
    type: "plain_text",
    name: "WORKER_EVENT_COALESCE_SECONDS",
    text: String(COALESCE_SECONDS),
  });
  await cache.deploy(upload);
  if (run.uploads) setBenchEventRule(b2, cache.url, derived);
  const from = b2.requests.length;
  let uploads = 0;
  let errors = 0;
  const views = listingViews();
  for (const view of views) {
    if (run.uploads && view.at >= (uploads + 1) * UPLOAD_EVERY_SECONDS) {
      uploads++;
      await b2.upload(BENCH_BUCKET, { name: `archive/new-${uploads}.bin`, body: "new" });
    }
    at = view.at;
    const answer = await fetch(`${cache.url}${view.url}`);
    // Read whole, as a browser would: a body left unread breaks workerd's pipe.
    await answer.arrayBuffer();
    if (answer.status !== 200) errors++;
    await cache.idle();
  }
  if (uploads > 0) await new Promise((resolve) => setTimeout(resolve, COALESCE_SECONDS * 1500));
  const asked = b2.requests.slice(from);
  const lists = asked.filter((r) => r.path.endsWith("/b2_list_file_names"));
  const authorizations = asked.filter((r) => r.path.endsWith("/b2_authorize_account")).length;
  return {
    name: run.name,
    ttl: run.ttl,
    views: views.length,
    pages: new Set(views.map((v) => v.url)).size,
    listCalls: lists.length,
    authorizations,
    classC: lists.length + authorizations,
    classB: asked.filter((r) => r.path.startsWith("/file/")).length,
    uploads,
    errors,
  };
}

/** Section 9: the same views with the cache on (two TTLs, and with uploads) and off. */
export async function benchListings(
  module: string,
  log: (line: string) => void = () => {},
): Promise<ListingsReport> {
  const runs: ListingRun[] = [];
  for (
    const run of [
      { name: "cache on, TTL 60 s (the default)", ttl: 60, uploads: false },
      { name: "cache on, TTL 300 s", ttl: 300, uploads: false },
      { name: "cache on, TTL 60 s, an upload every 10 min", ttl: 60, uploads: true },
      { name: "cache off", ttl: 0, uploads: false },
    ]
  ) {
    log(`   ${run.name}...`);
    runs.push(await runListings(module, run));
  }
  return { folderNames: FOLDER_NAMES, spanSeconds: SPAN_SECONDS, runs };
}

/** Class C transactions per 1,000 views. */
function perThousandViews(run: ListingRun): number {
  return run.classC * 1000 / run.views;
}

/**
 * The target: with the cache on, a page costs B2 at most one list call per TTL window
 * (the first view of the window), plus one call per page after each upload's purge, plus
 * the isolate's authorization; and no view fails.
 */
export function judgeListings(report: ListingsReport): Target[] {
  return report.runs.filter((run) => run.ttl > 0).map((run) => {
    const windows = Math.ceil(report.spanSeconds / run.ttl) + 1;
    const most = run.pages * (windows + run.uploads) + 1;
    return {
      name: `listings: ${run.name}, at most one list call a page per TTL`,
      met: run.classC <= most && run.errors === 0,
      detail: `${run.classC} Class C for ${run.views} views (at most ${most}), ` +
        `${perThousandViews(run).toFixed(0)} per 1,000 views; ${run.errors} failed`,
    };
  });
}

/** The section's lines in the report. */
export function formatListings(report: ListingsReport): string[] {
  const rows = [
    ["run", "list calls", "authorize", "Class C /1,000 views", "Class B (index probes)", "uploads"],
    ...report.runs.map((run) => [
      run.name,
      String(run.listCalls),
      String(run.authorizations),
      perThousandViews(run).toFixed(1),
      String(run.classB),
      String(run.uploads),
    ]),
  ];
  // The cache bounds what a page costs by time, not by views: one list call a TTL at most.
  const month = 30 * 86_400 / DEFAULT_TTL;
  return [
    `Folder listings: ${report.runs[0]?.views ?? 0} views of a folder of ` +
    `${report.folderNames} names (${report.runs[0]?.pages ?? 0} page URLs) over ` +
    `${report.spanSeconds / 60} min, Workers Cache stand-in`,
    table(rows),
    `  a page URL viewed all month at the default TTL: at most ${month.toLocaleString("en-US")} ` +
    `Class C, $${(month * CLASS_C_USD_PER_1000 / 1000).toFixed(2)} past the 2,500 free a day`,
  ];
}
