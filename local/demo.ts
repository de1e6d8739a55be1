/**
 * `demo`: the whole chain on this machine. Stand-ins for B2 (holding a few sample files) and
 * for the Cloudflare API, a real `refresh` against them, then the worker the stand-in
 * "deployed", run in workerd behind the Workers Cache stand-in: a `MISS`, a `HIT`, a purge,
 * an upload that B2's Event Notification turns into a `MISS` with no purge typed, a folder
 * listing (`/files/`, with a key that can only list), and `curl` lines to try. Nothing leaves
 * the machine.
 *
 * ```sh
 * deno task demo              # deno run -A --lock=deno.lock local/demo.ts
 * deno task demo --port 9000
 * ```
 *
 * @module
 */

import {
  type Config,
  type Context,
  type Job,
  loadWorkerModule,
  main,
  parseConfig,
  purge,
  refresh,
  send,
  summary,
  type WorkerUpload,
} from "../main.ts";
import { type FakeB2, startFakeB2 } from "./fake_b2.ts";
import { startFakeCloudflare } from "./fake_cloudflare.ts";
import { startWorkersCache } from "./workers_cache.ts";
import { listenOn } from "./workerd.ts";
import { untilStopped } from "./shutdown.ts";

/** The sample files the demo's stand-in bucket holds, from `fixtures/`. */
const DEMO_FILES = [
  "index.html",
  "hello.txt",
  "video/sample.mp4",
  "images/logo.svg",
];

/**
 * A folder without an index file, so that `/files/` shows a listing (`WORKER_LISTING=on`):
 * a subfolder, sizes from bytes to MiB, and a name that must stay text.
 */
const LISTED_FILES = [
  { name: "site/files/notes & ideas.txt", body: "Listed, escaped, linked.\n" },
  { name: "site/files/<img src=x onerror=alert(1)>.txt", body: "A name is text.\n" },
  { name: "site/files/archive.bin", body: { size: 5 * 1024 * 1024 + 123 } },
  { name: "site/files/data/measurements.csv", body: "day,value\n1,42\n" },
  { name: "site/files/.hidden", body: "never listed" },
];

/** The demo's listing key: it can only list the demo bucket under `site/`. */
const LISTING_KEY = {
  keyId: "fake-listing-key-id",
  applicationKey: "fake-listing-key",
  capabilities: ["listFiles"],
  restrictToBucket: "demo-bucket",
  namePrefix: "site/",
};

/** Runs the demo until Ctrl-C, SIGTERM, SIGHUP, or the launcher that started it is gone. */
export async function runDemo({ ctx, io, flags }: Job): Promise<number> {
  using stop = untilStopped();
  // Where the worker runs here: B2's webhook POSTs to its public address arrive there.
  let local: string | undefined;
  const b2 = startFakeB2({
    buckets: [{
      id: "bucket-demo",
      name: "demo-bucket",
      files: [...await demoFiles(), ...LISTED_FILES],
    }],
    keys: [LISTING_KEY],
    capabilities: [
      "listBuckets",
      "readFiles",
      "shareFiles",
      "readBucketNotifications",
      "writeBucketNotifications",
    ],
    webhookFetch: (url, init) => {
      const { pathname, search } = new URL(url);
      return fetch(`${local}${pathname}${search}`, init);
    },
  });
  const cloudflare = startFakeCloudflare();
  const say = (line: string) => io.stdout(line);
  try {
    say(
      "This demo runs entirely on this machine: B2 and the Cloudflare API are local stand-ins\n" +
        `(B2 at ${b2.url}, Cloudflare API at ${cloudflare.url}); nothing is sent anywhere.\n`,
    );
    const config = parseConfig({
      B2_APPLICATION_KEY_ID: "fake-key-id",
      B2_APPLICATION_KEY: "fake-application-key",
      B2_API_URL: b2.url,
      B2_BUCKET_NAME: "demo-bucket",
      B2_FILE_PREFIX: "site/",
      CLOUDFLARE_ACCOUNT_ID: "acc00000000000000000000000000001",
      CLOUDFLARE_API_TOKEN: "fake-cf-token",
      CLOUDFLARE_API_BASE_URL: cloudflare.url,
      B2_EVENT_NOTIFICATIONS: "on",
      WORKER_LISTING: "on",
      B2_LISTING_KEY_ID: LISTING_KEY.keyId,
      B2_LISTING_KEY: LISTING_KEY.applicationKey,
    }, { b2: true, cloudflare: true });
    const result = await refresh(config, { ...ctx, log: (line) => say(`  ${line}`) }, {
      module: await loadWorkerModule(),
    });
    say(`\n${summary(result)}`);
    const deployed = cloudflare.scripts.get(config.workerName);
    if (!deployed) throw new Error("the stand-in Cloudflare API holds no worker after the refresh");
    const worker = await listenOn(
      flags.port,
      "demo",
      () => startWorkersCache({ port: flags.port }),
    );
    local = worker.url;
    try {
      await worker.deploy({
        metadata: deployed.metadata as WorkerUpload["metadata"],
        module: deployed.module,
      });
      // Ctrl-C while it started up stops it now, not after saying it is ready.
      if (!stop.wasStopped()) {
        say(await tour(worker.url, { config, ctx, b2 }));
        await stop.stopped;
      }
    } finally {
      await worker.close();
    }
    say("Stopped.");
    return 0;
  } finally {
    await Promise.all([b2.close(), cloudflare.close()]);
  }
}

async function demoFiles() {
  return await Promise.all(DEMO_FILES.map(async (name) => ({
    name: `site/${name}`,
    body: await Deno.readFile(new URL(`./fixtures/${name}`, import.meta.url)),
    contentType: contentTypeOf(name),
  })));
}

/** What the demo shows once the worker answers: the cache at work, then what to try. */
async function tour(
  url: string,
  options: { config: Config; ctx: Context; b2: FakeB2 },
): Promise<string> {
  const { ctx } = options;
  return `\nThe deployed worker now runs in workerd (Cloudflare's runtime) at ${url}, ` +
    "behind a stand-in for Workers Cache (local/workers_cache.ts).\n" +
    await showCacheStatus(`${url}/hello.txt`, ctx) +
    await showPurge(`${url}/hello.txt`, options) +
    await showCacheStatus(`${url}/hello.txt`, ctx) +
    await showUpload(options.b2) +
    await showCacheStatus(`${url}/hello.txt`, ctx) +
    await showListing(`${url}/files/`, ctx) +
    "Try it:\n" +
    `  curl -i ${url}/\n` +
    `  open ${url}/files/ in a browser   # a folder listing; ?format=json for scripts\n` +
    `  curl -i ${url}/hello.txt\n` +
    `  curl -i -H "Range: bytes=0-99" ${url}/video/sample.mp4\n` +
    `  curl -I ${url}/images/logo.svg\n` +
    `  curl -i ${url}/a%2Fb   # refused: an encoded "/" (400)\n` +
    "Ctrl-C (or SIGTERM) stops it, workerd included.";
}

/** Purges one object as `deno task purge <path> --url <origin>` would, and says so. */
async function showPurge(url: string, options: { config: Config; ctx: Context }): Promise<string> {
  const object = new URL(url);
  const report = await purge(options.config, options.ctx, {
    paths: [object.pathname],
    prefixes: [],
    all: false,
    url: object.origin,
  });
  return `  $ deno task purge ${object.pathname} --url ${object.origin}   # with the demo's key\n` +
    `    purged ${report.purged.paths} path in ${report.requests} signed request to the worker\n`;
}

/**
 * Replaces `hello.txt` in the stand-in bucket: B2 sends the worker a signed Event
 * Notification (the rule refresh set, `B2_EVENT_NOTIFICATIONS=on`) and it purges the tag.
 */
async function showUpload(b2: FakeB2): Promise<string> {
  const deliveries = await b2.upload("demo-bucket", {
    name: "site/hello.txt",
    body: "Hello again: replaced in the bucket, fresh at the edge at once.\n",
    contentType: "text/plain; charset=utf-8",
  });
  const statuses = deliveries.map((d) => d.status).join(", ");
  return "  (an upload replaces site/hello.txt in the bucket; no purge is typed)\n" +
    `    B2 sent ${deliveries.length} signed notification; the worker answered ${statuses}\n`;
}

/** Asks for a folder's listing as JSON, and shows what it lists. */
async function showListing(url: string, ctx: Context): Promise<string> {
  const response = await send(ctx, {
    service: "Verify",
    step: "ask the demo's worker for a listing",
    url: `${url}?format=json`,
    retry: false,
  });
  const listing = await response.json() as {
    folders: { name: string }[];
    files: { name: string }[];
  };
  const names = [...listing.folders, ...listing.files].map((entry) => entry.name);
  return `  $ curl -s '${url}?format=json'   # WORKER_LISTING=on, a key that can only list\n` +
    `    ${names.join("  ")}\n`;
}

/** Asks for `url` twice as `curl -sI` would, and shows the `cf-cache-status` of each answer. */
async function showCacheStatus(url: string, ctx: Context): Promise<string> {
  const lines = [];
  for (let i = 0; i < 2; i++) {
    // Once each, as curl would: a retry would show a different answer than the one asked.
    const response = await send(ctx, {
      service: "Verify",
      step: "ask the demo's worker",
      url,
      init: { method: "HEAD" },
      retry: false,
    });
    await response.body?.cancel();
    const status = response.headers.get("cf-cache-status");
    lines.push(
      `  $ curl -sI ${url} | grep -i cf-cache-status\n    ` +
        (status === null
          ? "(none: this version was uploaded without cache_options, so Workers Cache is off)"
          : `cf-cache-status: ${status}`),
    );
  }
  return `${lines.join("\n")}\n`;
}

function contentTypeOf(name: string): string {
  const types: Record<string, string> = {
    html: "text/html; charset=utf-8",
    txt: "text/plain; charset=utf-8",
    mp4: "video/mp4",
    svg: "image/svg+xml",
  };
  return types[name.split(".").pop() ?? ""] ?? "application/octet-stream";
}

if (import.meta.main) await main({ args: ["demo", ...Deno.args], local: { demo: runDemo } });
