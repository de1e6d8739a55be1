#!/usr/bin/env -S deno run --allow-net --allow-env --allow-read --unstable-cron
/**
 * b2-private-cdn keeps a Cloudflare Worker authorized to serve a private
 * Backblaze B2 bucket: it gets a B2 download token for the bucket and prefix
 * and deploys the worker with the token as a secret binding.
 *
 * ```sh
 * deno run --allow-net --allow-env --allow-read main.ts refresh
 * ./main.ts status --min-remaining 48h   # the first line runs it with those flags
 * deno task demo   # in a clone: the whole chain on this machine, no account needed
 * ```
 *
 * Sections, in the order of the flow:
 * - Configuration: flags, then the environment, then `.env` become one `Config`; names that
 *   are no setting get the nearest one; one syntax for times.
 * - HTTP: `Context`, the one request helper, retries, `ApiError`.
 * - B2: authorize, find the bucket, get the download token.
 * - The worker module: `worker_template.ts` and its bindings, as uploaded.
 * - Cloudflare: the token verified and the account and zone found from it (discovery), then
 *   upload, route, custom domain, workers.dev, leftovers.
 * - Event notifications: the bucket's B2 rule that tells the worker what changed
 *   (`B2_EVENT_NOTIFICATIONS`), kept by refresh and read by status.
 * - The refresh itself: B2, then the upload and the steps after it, then verify; the dry
 *   run's read-only plan (`--dry-run`).
 * - Purge: signed purge requests the worker answers.
 * - Status and cron: what is deployed, and refreshing when due.
 * - Dead man's switch: the pings of `REFRESH_PING_URL` around a refresh or cron run.
 * - Signed links: links the worker checks (`sign`).
 * - The edge check: Workers Cache as the real edge answers (`check-cache`).
 * - Setup: `init`, which asks for the key and token, checks them and writes `.env`.
 * - Commands: the command table and help, each command's output, the command line, `run()`.
 * - Main: `main()`, the only code that touches `Deno.args`, `Deno.env` and `Deno.exit`.
 * - Deno Deploy: the `Deno.cron` job and `/health` ({@linkcode startOnDeploy}).
 *
 * As a module it offers {@linkcode parseConfig}, {@linkcode defaultContext},
 * {@linkcode loadWorkerModule}, {@linkcode refresh}, {@linkcode status}, {@linkcode purge},
 * {@linkcode refreshIfDue}, {@linkcode scheduleRefresh}, {@linkcode signLink},
 * {@linkcode generateSigningKey}, {@linkcode checkCache}, {@linkcode run}, {@linkcode main} and
 * {@linkcode startOnDeploy}; what else is exported is `@internal`, for the tests and `local/`.
 *
 * @example Renew the token and deploy, from code
 * ```ts ignore
 * import { defaultContext, loadWorkerModule, parseConfig, refresh } from "./main.ts";
 *
 * const config = parseConfig(Deno.env.toObject(), { b2: true, cloudflare: true });
 * const result = await refresh(config, defaultContext(), { module: await loadWorkerModule() });
 * console.log(`token valid until ${result.expiresAt}`);
 * ```
 *
 * @module
 */

// `parseEnv` and `stripTypeScriptTypes` arrived in Deno 2.8.2. A named import of a missing
// export fails before any code runs, so these two are read from namespaces and checked by
// `runtimeProblem()` before use, which lets an older Deno say what to upgrade.
import { parseArgs, type ParseArgsConfig } from "node:util";
import * as nodeUtil from "node:util";
import * as nodeModule from "node:module";
// The worker's pure rules, so that what the CLI signs and checks is what the worker accepts:
// one definition each. A URL run fetches this file anyway (it is also what is uploaded).
import {
  type ActiveContent,
  type CacheMode,
  canonicalPath,
  encodePath,
  type Env,
  eventsPerBatch,
  fromBase64Url,
  fromHex,
  isProtected,
  purgeMessage,
  sharedFacts,
  signedLinkMessage,
  signedLinkQuery,
  toBase64Url,
  toHex,
  urlPath,
  validDownloadName,
} from "./worker_template.ts";

export type { ActiveContent, CacheMode, Env };

/** What the worker defines and this file must agree with, from the worker. */
const FACTS: ReturnType<typeof sharedFacts> = sharedFacts();
const PURGE_PATH = FACTS.purgePath;
const EVENTS_PATH = FACTS.eventsPath;
const PURGE_TIMESTAMP_HEADER = FACTS.purgeTimestampHeader;
const PURGE_SIGNATURE_HEADER = FACTS.purgeSignatureHeader;
const DEFAULT_STALE_WHILE_REVALIDATE = FACTS.defaultStaleWhileRevalidate;
const DEFAULT_STALE_IF_ERROR = FACTS.defaultStaleIfError;
const DEFAULT_SEGMENT_SIZE = FACTS.defaultSegmentSize;
const DEFAULT_SIGNED_MAX_TTL = FACTS.defaultSignedMaxTtl;

const parseEnv = nodeUtil.parseEnv;
const stripTypeScriptTypes = nodeModule.stripTypeScriptTypes;

/** The version printed by `--version`. */
export const VERSION = "0.1.0";

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

/** B2's longest download authorization: one week. */
const MAX_TOKEN_TTL = 604_800;
const DAY = 86_400;
/** Cloudflare's rule for script names. */
const WORKER_NAME_PATTERN = /^[a-z]([a-z0-9_-]{0,61}[a-z0-9])?$/;

/** What the worker does with a request; passed to it as plain-text bindings. */
export interface WorkerOptions {
  /** `plain`: `/<path>` serves `<prefix><path>`; `b2`: `/file/<bucket>/<name>`. @default "plain" */
  urlStyle: "plain" | "b2";
  /** Served for `/` and paths ending in `/`; empty turns it off. @default "index.html" */
  indexFile: string;
  /** Seconds the edge keeps an object. @default 86400 */
  cacheTtl: number;
  /** `Cache-Control` for browsers; empty keeps the object's own. @default "" */
  cacheControl: string;
  /** Empty (no CORS), `*`, or a comma list of origins. @default "" */
  corsOrigins: string;
  /** `serve` (a static site), `sandbox` (no script runs) or `download`. @default "serve" */
  activeContent?: ActiveContent;
  /** `WORKER_CACHE_MODE`, but always `off` when `WORKER_CACHE_TTL=0`. @default "workers-cache" */
  cacheMode: CacheMode;
  /** Workers Cache: seconds a stale object is served while revalidated. @default 86400 */
  staleWhileRevalidate?: number;
  /** Workers Cache: seconds a stale object is served while the worker fails. @default 604800 */
  staleIfError?: number;
  /** Bytes of one segment of a large object; 0 turns segmenting off. @default 8388608 */
  segmentSize?: number;
  /** Signed links; the keys go to the worker as secret bindings. @default undefined (none) */
  signing?: SigningOptions;
  /** The worker purges what B2 notifies it changed; refresh keeps the rule. @default false */
  eventNotifications?: boolean;
  /** Folder listings (`WORKER_LISTING=on`); the key goes as secret bindings. @default undefined (off) */
  listing?: ListingOptions;
}

/** Folder listings: the key that may only list, where it authorizes, how long listings keep. */
export interface ListingOptions {
  /** `B2_LISTING_KEY_ID`. */
  keyId: string;
  /** `B2_LISTING_KEY`; a secret. */
  key: string;
  /** `B2_API_URL`, where refresh authorized it. */
  apiUrl: string;
  /** `WORKER_LISTING_TTL`: seconds the edge keeps a listing. @default 60 */
  ttl: number;
}

/** Which paths need a signed link, and the keys that sign them. */
export interface SigningOptions {
  /** Canonical (decoded) public path prefixes, each ending in `/`; `/` protects everything. */
  prefixes: string[];
  /** `WORKER_SIGNING_KEY`: at least 32 random bytes, base64url. */
  key: string;
  /** The key before the last rotation, accepted until `previousUntil`. */
  previousKey?: string;
  /** Milliseconds since the epoch. */
  previousUntil?: number;
  /** The longest life a link may have, in seconds. @default 604800 */
  maxTtl: number;
  /** How each prefix was read (a folder, or a file), as refresh reports it. @default [] */
  readings?: string[];
}

const CACHE_MODES: readonly CacheMode[] = ["workers-cache", "cache-api", "off"];
const ACTIVE_CONTENT: readonly ActiveContent[] = ["serve", "sandbox", "download"];

/** How to reach B2 and what to authorize. */
export interface B2Config {
  /** The application key's id (`B2_APPLICATION_KEY_ID`). */
  keyId: string;
  /** The application key itself (`B2_APPLICATION_KEY`); a secret. */
  applicationKey: string;
  /** Where `b2_authorize_account` is called (`B2_API_URL`). @default "https://api.backblazeb2.com" */
  apiUrl: string;
  /** At least one of `bucketName` and `bucketId`; the other is resolved. */
  bucketName?: string;
  /** The bucket's id; looked up from `bucketName` when absent. */
  bucketId?: string;
  /** Serve only names under this prefix (`B2_FILE_PREFIX`). @default "" (the whole bucket) */
  prefix: string;
  /** Seconds the download token lives. @default 604800 */
  tokenTtl: number;
}

/** Cloudflare credentials: a scoped API token, or the legacy global key. */
export type CloudflareAuth = { token: string } | { email: string; key: string };

/** Where the worker goes and how it is reached. */
export interface CloudflareConfig {
  /** The worker's account (`CLOUDFLARE_ACCOUNT_ID`); `""` until found from the token. */
  accountId: string;
  /** The API token, or the legacy global key. */
  auth: CloudflareAuth;
  /** The Cloudflare API (`CLOUDFLARE_API_BASE_URL`). @default "https://api.cloudflare.com/client/v4" */
  apiBaseUrl: string;
  /** The worker script's name (`WORKER_NAME`). @default "b2-private-cdn" */
  workerName: string;
  /** The zone of the route or domain (`CLOUDFLARE_ZONE_ID`); found from their host when absent. */
  zoneId?: string;
  /** A route such as `cdn.example.com/*` on `zoneId`. */
  route?: string;
  /** A custom domain such as `cdn.example.com` on `zoneId`. */
  domain?: string;
  /** The worker answers at `<worker>.<subdomain>.workers.dev`. @default !route && !domain */
  workersDev: boolean;
}

/** Everything a command may need, parsed and validated once. */
export interface Config {
  /** B2 settings; present when the command needs B2. */
  b2?: B2Config;
  /** Cloudflare settings; present when the command needs Cloudflare. */
  cloudflare?: CloudflareConfig;
  /** What the worker does with a request. */
  worker: WorkerOptions;
  /** The worker script's name (`WORKER_NAME`). */
  workerName: string;
  /** Fetched after deploying; must answer 2xx. */
  verifyUrl?: string;
  /**
   * Where the worker answers on the site, known from the settings alone: `WORKER_DOMAIN`'s
   * origin, else a one-host route's fixed part (`https://example.com/cdn`).
   */
  site?: string;
  /** The site's origin alone: `WORKER_DOMAIN`'s, else a one-host route's host's. */
  origin?: string;
  /** `B2_BUCKET_NAME`, whether or not the command needs B2 (render shows it). */
  bucketName?: string;
  /** `B2_FILE_PREFIX`, whether or not the command needs B2; absent for the whole bucket. */
  filePrefix?: string;
  /** Five-field cron expression, UTC. @default "17 4 * * *" */
  refreshSchedule: string;
  /** `cron` refreshes at start when less than this many seconds are left. @default 6 days */
  refreshMargin: number;
  /** `REFRESH_PING_URL`: the dead man's switch each refresh run pings. */
  pingUrl?: string;
  /** What the purge key is derived from: `WORKER_PURGE_KEY`, else `B2_APPLICATION_KEY`. */
  purgeSecret?: { from: "WORKER_PURGE_KEY" | "B2_APPLICATION_KEY"; value: string };
  /** Settings that work but contradict each other, each with its fix; absent when none. */
  warnings?: string[];
}

/** A configuration problem; `problems` lists each thing to change. Exit code 2. */
export class ConfigError extends Error {
  /** One line per problem, each naming what to set. */
  readonly problems: string[];
  /** Makes the error from its problems; the message lists them all. */
  constructor(problems: string[]) {
    super(
      problems.length === 1
        ? problems[0]
        : `The configuration has ${problems.length} problems:\n  - ${problems.join("\n  - ")}`,
    );
    this.name = "ConfigError";
    this.problems = problems;
  }
}

/** One setting the tool reads: its kind, default and check, and its line in `--help`. */
export interface Setting {
  /**
   * How the value is read and checked: `text` as given (trimmed); `secret` the same, never
   * printed and never a flag; `integer` and `duration` (`90s`, `30m`, `48h`, `6d`) within
   * `min`..`max`; `enum` one of `values`; `list` comma-separated, each item checked; `url` an
   * http(s) URL; `time` an ISO 8601 time.
   */
  kind: "text" | "secret" | "integer" | "duration" | "enum" | "list" | "url" | "time";
  /** One line for `--help`. */
  about: string;
  /** The value when unset, as written in `.env`. @default undefined (none) */
  default?: string;
  /** `enum`: the allowed values (compared in lower case); `list`: values that stand alone. */
  values?: readonly string[];
  /** `integer`, `duration`: the least value, in seconds for a duration. @default 0 */
  min?: number;
  /** `integer`, `duration`: the greatest value; every duration has one, which its hint names. */
  max?: number;
  /** Not a secret, but a credential all the same: no flag, since flags show in `ps`. */
  credential?: true;
  /** Empty is a value of its own (not "unset"), such as `WORKER_INDEX_FILE=` for none. */
  emptyIsValue?: true;
  /** Read as given, spaces included. */
  untrimmed?: true;
  /** What a good value looks like, after "must be"; derived from the kind when absent. */
  hint?: string;
  /** Whether a value (each item of a list) is good; the problem then says `hint`. */
  valid?: (value: string) => boolean;
  /** A value's (each item's) problem in full, naming the setting; `undefined` when good. */
  check?: (value: string) => string | undefined;
}

/** Once a day at 04:17 UTC: an odd minute, away from the top-of-the-hour rush. */
const DEFAULT_SCHEDULE = "17 4 * * *";
const YEAR = 365 * DAY;
/** What a listing key may have: listing names, and seeing its own bucket's name. */
const LISTING_CAPABILITIES = ["listFiles", "listBuckets"];
/** Segments of large objects: 1 to 64 MiB in steps of 64 KiB. */
const MIN_SEGMENT_SIZE = 1024 * 1024;
const MAX_SEGMENT_SIZE = 64 * 1024 * 1024;
const SEGMENT_STEP = 64 * 1024;

/**
 * The settings the tool reads, in `--help`'s order. Credentials have no flag,
 * since flags show in `ps`; secrets are also never printed.
 * @internal
 */
export const VARIABLES = {
  B2_APPLICATION_KEY_ID: { kind: "text", credential: true, about: "B2 application key id" },
  B2_APPLICATION_KEY: { kind: "secret", about: "B2 application key" },
  B2_BUCKET_NAME: {
    kind: "text",
    check: bucketNameProblem,
    about: "bucket name (or B2_BUCKET_ID)",
  },
  B2_BUCKET_ID: { kind: "text", about: "bucket id (or B2_BUCKET_NAME)" },
  B2_FILE_PREFIX: {
    kind: "text",
    untrimmed: true,
    default: "",
    about: "serve only names under this prefix (default: whole bucket)",
  },
  B2_TOKEN_TTL: {
    kind: "duration",
    min: 1,
    max: MAX_TOKEN_TTL,
    default: "7d",
    about: "download token lifetime, at most 7d",
  },
  B2_API_URL: {
    kind: "url",
    default: "https://api.backblazeb2.com",
    about: "the B2 native API",
  },
  B2_EVENT_NOTIFICATIONS: {
    kind: "enum",
    values: ["on", "off"],
    default: "off",
    hint: "on or off",
    about: "on: B2 tells the worker what changed and it purges exactly that",
  },
  B2_LISTING_KEY_ID: {
    kind: "text",
    credential: true,
    about: "WORKER_LISTING: id of a B2 key that can only list the bucket under the prefix",
  },
  B2_LISTING_KEY: { kind: "secret", about: "WORKER_LISTING: that key" },
  CLOUDFLARE_ACCOUNT_ID: {
    kind: "text",
    check: (value: string): string | undefined =>
      readCloudflareId("CLOUDFLARE_ACCOUNT_ID", value).problem,
    about: "account that owns the worker (found when the token sees one)",
  },
  CLOUDFLARE_API_TOKEN: { kind: "secret", about: 'API token with "Workers Scripts: Edit"' },
  CLOUDFLARE_EMAIL: { kind: "text", credential: true, about: "legacy global key: account email" },
  CLOUDFLARE_API_KEY: { kind: "secret", about: "legacy global key" },
  CLOUDFLARE_API_BASE_URL: {
    kind: "url",
    default: "https://api.cloudflare.com/client/v4",
    about: "the Cloudflare API",
  },
  CLOUDFLARE_ZONE_ID: {
    kind: "text",
    check: (value: string): string | undefined =>
      readCloudflareId("CLOUDFLARE_ZONE_ID", value).problem,
    about: "zone for WORKER_ROUTE / WORKER_DOMAIN (found from their host)",
  },
  WORKER_NAME: {
    kind: "text",
    default: "b2-private-cdn",
    hint: '1-63 lowercase letters, digits, "-" or "_", starting with a letter',
    valid: (name: string): boolean => WORKER_NAME_PATTERN.test(name),
    about: "the worker script's name",
  },
  WORKER_ROUTE: {
    kind: "text",
    check: routeProblem,
    about: "route to point at the worker, e.g. cdn.example.com/*",
  },
  WORKER_DOMAIN: {
    kind: "text",
    hint: "a host name like cdn.example.com",
    valid: (host: string): boolean => /^[a-z0-9.-]+$/i.test(host),
    about: "custom domain for the worker, e.g. cdn.example.com",
  },
  WORKER_WORKERS_DEV: {
    kind: "enum",
    values: ["on", "off", "auto"],
    default: "auto",
    hint: "on, off or auto",
    about: "answer on workers.dev too: on, off, or auto (on without route/domain)",
  },
  WORKER_URL_STYLE: {
    kind: "enum",
    values: ["plain", "b2"],
    default: "plain",
    about: "plain or b2 (/file/<bucket>/<name>)",
  },
  WORKER_INDEX_FILE: {
    kind: "text",
    default: "index.html",
    emptyIsValue: true,
    hint: 'a file name without "/"',
    valid: (name: string): boolean => !/[/\\]/.test(name) && name !== "." && name !== "..",
    about: "served for / and dir/; empty: off",
  },
  WORKER_CACHE_TTL: {
    kind: "duration",
    max: YEAR,
    default: "1d",
    about: "how long the edge keeps an object; 0: no edge cache",
  },
  WORKER_CACHE_CONTROL: {
    kind: "text",
    default: "",
    about: "Cache-Control for browsers (default: the object's own)",
  },
  WORKER_CORS_ORIGINS: {
    kind: "list",
    default: "",
    values: ["*"],
    hint: '"*" or origins like https://example.com',
    valid: (origin: string): boolean => URL.canParse(origin) && new URL(origin).origin === origin,
    about: "empty (no CORS), * or a comma list of origins",
  },
  WORKER_ACTIVE_CONTENT: {
    kind: "enum",
    values: ACTIVE_CONTENT,
    default: "serve",
    about: "HTML, SVG and XML: serve (a static site), sandbox or download (uploads)",
  },
  WORKER_SIGNED_PREFIXES: {
    kind: "list",
    check: (prefix: string): string | undefined =>
      canonicalPath(prefix) === undefined
        ? `WORKER_SIGNED_PREFIXES must list paths like /members/ (starting with "/", no empty, ` +
          `"." or ".." segment, "%" written as %25), not "${prefix}".`
        : undefined,
    about: "path prefixes that need a signed link, e.g. /members/ (default: none)",
  },
  WORKER_SIGNING_KEY: {
    kind: "secret",
    check: (key: string): string | undefined => signingKeyProblems("WORKER_SIGNING_KEY", key)[0],
    about: "signs links; deno run main.ts keygen prints one",
  },
  WORKER_SIGNING_KEY_PREVIOUS: {
    kind: "secret",
    check: (key: string): string | undefined =>
      signingKeyProblems("WORKER_SIGNING_KEY_PREVIOUS", key)[0],
    about: "the key before a rotation",
  },
  WORKER_SIGNING_KEY_PREVIOUS_UNTIL: {
    kind: "time",
    about: "time the previous key's links stop working, e.g. 2026-12-31T00:00:00Z",
  },
  WORKER_SIGNED_MAX_TTL: {
    kind: "duration",
    min: 60,
    max: YEAR,
    default: "7d",
    about: "longest life of a signed link",
  },
  WORKER_CACHE_MODE: {
    kind: "enum",
    values: CACHE_MODES,
    default: "workers-cache",
    about: "workers-cache, cache-api or off; WORKER_CACHE_TTL=0 means off",
  },
  WORKER_STALE_WHILE_REVALIDATE: {
    kind: "duration",
    max: YEAR,
    default: "1d",
    about: "Workers Cache: how long served stale while revalidating",
  },
  WORKER_STALE_IF_ERROR: {
    kind: "duration",
    max: YEAR,
    default: "7d",
    about: "Workers Cache: how long served stale while B2 or the token fails",
  },
  WORKER_SEGMENT_SIZE: {
    kind: "integer",
    max: MAX_SEGMENT_SIZE,
    default: `${DEFAULT_SEGMENT_SIZE}`,
    hint: `0 (off) or bytes from ${MIN_SEGMENT_SIZE} to ${MAX_SEGMENT_SIZE}, a multiple of 65536`,
    valid: (text: string): boolean => {
      const size = Number(text);
      return size === 0 || (size >= MIN_SEGMENT_SIZE && size % SEGMENT_STEP === 0);
    },
    about: "bytes of one segment of an object too large to cache whole; 0: off",
  },
  WORKER_LISTING: {
    kind: "enum",
    values: ["on", "off"],
    default: "off",
    hint: "on or off",
    about: "on: a folder path without its index file lists the folder",
  },
  WORKER_LISTING_TTL: {
    kind: "duration",
    max: DAY,
    // Without event notifications, a new upload shows in its folder's listing a minute later.
    default: "1m",
    about: "how long the edge keeps a listing",
  },
  WORKER_PURGE_KEY: {
    kind: "secret",
    check: (key: string): string | undefined =>
      key.length < MIN_PURGE_KEY_LENGTH
        ? `WORKER_PURGE_KEY must be at least ${MIN_PURGE_KEY_LENGTH} characters ` +
          "(e.g. openssl rand -hex 32), or unset to derive it from B2_APPLICATION_KEY."
        : undefined,
    about: "signs purge requests (default: derived from B2_APPLICATION_KEY)",
  },
  VERIFY_URL: { kind: "url", about: "fetched after deploying; must answer 2xx" },
  REFRESH_SCHEDULE: {
    kind: "text",
    default: DEFAULT_SCHEDULE,
    hint: `a five-field cron expression such as "${DEFAULT_SCHEDULE}"`,
    valid: (schedule: string): boolean => schedule.split(/\s+/).length === 5,
    about: "cron schedule, UTC",
  },
  REFRESH_MARGIN: {
    kind: "duration",
    max: MAX_TOKEN_TTL,
    default: "6d",
    about: "cron refreshes at start below this time left",
  },
  // A credential: whoever holds the URL can report runs that never happened.
  REFRESH_PING_URL: {
    kind: "url",
    credential: true,
    about: "dead man's switch: pinged at each run's start and end (healthchecks.io, Uptime Kuma)",
  },
} satisfies Record<string, Setting>;

/** A variable the tool reads: a key of {@linkcode VARIABLES}. */
export type Variable = keyof typeof VARIABLES;

/** Raw values by variable name: flags over the environment over `.env`. */
export type Settings = Partial<Record<Variable, string>>;

const SETTINGS = Object.entries(VARIABLES) as [Variable, Setting][];

/** `--b2-bucket-name` for `B2_BUCKET_NAME`: every variable but the secrets has a flag. */
function flagName(variable: string): string {
  return variable.toLowerCase().replaceAll("_", "-");
}

/** A secret or a credential: it has no flag, and its value is never quoted back. */
function isCredential(setting: Setting): boolean {
  return setting.kind === "secret" || setting.credential === true;
}

const SETTING_FLAGS = SETTINGS.filter(([, v]) => !isCredential(v)).map(([name]) => name);

/** The names of the secret variables, whose values never reach any output. */
const SECRET_VARIABLES = SETTINGS
  .filter(([, v]) => v.kind === "secret").map(([name]) => name);

/** The prefixes of this tool's settings: a name with one of them that is no setting is a typo. */
const SETTING_PREFIXES = ["B2_", "CLOUDFLARE_", "WORKER_", "REFRESH_"] as const;

/**
 * Names with our prefixes that the b2 CLI or wrangler read, which users keep in the same
 * environment: never warned about. wrangler 4.86 (`npm pack wrangler`, its `variableName:`
 * and `readEnv()` calls in wrangler-dist/cli.js); the b2 CLI: `B2_ACCOUNT_INFO` (b2sdk's
 * sqlite_account_info.py, Debian's python3-b2sdk 1.17.3); Assumption: the rest of the b2 names
 * from the b2 CLI's README, not read here, since its current source is on PyPI only. The names
 * we share with them (`B2_APPLICATION_KEY_ID`, `CLOUDFLARE_API_TOKEN`...) are our settings.
 * @internal
 */
export const FOREIGN_VARIABLES: ReadonlySet<string> = new Set([
  // the b2 CLI
  "B2_ACCOUNT_INFO",
  "B2_ENVIRONMENT",
  "B2_DESTINATION_SSE_C_KEY_B64",
  "B2_DESTINATION_SSE_C_KEY_ID",
  "B2_SOURCE_SSE_C_KEY_B64",
  "B2_USER_AGENT_APPEND",
  // wrangler
  "CLOUDFLARE_ACCESS_CLIENT_ID",
  "CLOUDFLARE_ACCESS_CLIENT_SECRET",
  "CLOUDFLARE_API_USER_SERVICE_KEY",
  "CLOUDFLARE_BASE_URL",
  "CLOUDFLARE_COMPLIANCE_REGION",
  "CLOUDFLARE_CONTAINER_REGISTRY",
  "CLOUDFLARE_ENV",
  "CLOUDFLARE_INCLUDE_PROCESS_ENV",
  "CLOUDFLARE_LOAD_DEV_VARS_FROM_DOT_ENV",
]);

/**
 * A warning for each name (from `where`: `.env`, the environment) with one of our prefixes that
 * is neither a setting nor read by the b2 CLI or wrangler: most likely a misspelt setting.
 */
function unknownSettings(names: Iterable<string>, where: string): string[] {
  const settings = Object.keys(VARIABLES);
  return [...names]
    .filter((name) =>
      SETTING_PREFIXES.some((prefix) => name.startsWith(prefix)) &&
      !Object.hasOwn(VARIABLES, name) && !FOREIGN_VARIABLES.has(name)
    )
    .map((name) => {
      const near = closestName(name, settings);
      return `${name} (in ${where}) is not a setting of this tool and is ignored; ` +
        (near.close
          ? `did you mean ${near.name}?`
          : `the nearest is ${near.name} (deno run main.ts help settings lists them all).`);
    });
}

/**
 * The name in `names` nearest to `name` by edit distance (a swap of two neighbours counts
 * one), and whether it is near enough to be what was meant.
 */
function closestName(name: string, names: readonly string[]): { name: string; close: boolean } {
  let best = { name: names[0] ?? "", distance: Infinity };
  for (const candidate of names) {
    const distance = editDistance(name.toUpperCase(), candidate.toUpperCase());
    if (distance < best.distance) best = { name: candidate, distance };
  }
  return { name: best.name, close: best.distance <= Math.max(2, Math.floor(name.length / 5)) };
}

/** Optimal string alignment distance: insertions, deletions, substitutions and swaps. */
function editDistance(a: string, b: string): number {
  const rows = [...Array(a.length + 1)].map((_, i) => [i, ...Array(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) rows[0]![j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const row = rows[i]!;
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      row[j] = Math.min(rows[i - 1]![j]! + 1, row[j - 1]! + 1, rows[i - 1]![j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) {
        row[j] = Math.min(row[j]!, rows[i - 2]![j - 2]! + 1);
      }
    }
  }
  return rows[a.length]![b.length]!;
}

/**
 * What is wrong with a route pattern by Cloudflare's rules and ours, or `undefined`. Cloudflare:
 * one host (a leading `*` allowed), an optional path ending in `*`, no `*` elsewhere, no query
 * (developers.cloudflare.com/workers/configuration/routing/routes/, "Validity").
 */
function routeProblem(route: string): string | undefined {
  const example = "write it like cdn.example.com/* (or example.com/files/*)";
  if (/[\s,]/.test(route)) {
    return `WORKER_ROUTE is one route pattern, not a list: "${route}". Set one, ${example}; ` +
      "for a second host, give it WORKER_DOMAIN or a second worker (WORKER_NAME).";
  }
  const scheme = /^[a-z][a-z0-9+.-]*:\/\//i.exec(route)?.[0];
  if (scheme) {
    // Cloudflare accepts a scheme, but then runs the worker for that scheme only, and plain
    // http:// requests go to the DNS record's origin instead (same page, "Validity").
    return `WORKER_ROUTE must not start with ${scheme}: write "${route.slice(scheme.length)}". ` +
      "This is our rule, not Cloudflare's: with a scheme, Cloudflare runs the worker for " +
      "that scheme only, and the other requests go past it to the DNS record's origin.";
  }
  if (!/^[^/]+\/\S*$/.test(route)) {
    return `WORKER_ROUTE must look like cdn.example.com/*, not "${route}".`;
  }
  if (route.includes("?")) {
    return `WORKER_ROUTE cannot hold a query (Cloudflare refuses one in a route pattern): ` +
      `"${route}". End the path with * instead, which matches any query: ${example}.`;
  }
  const slash = route.indexOf("/");
  const host = route.slice(0, slash);
  const path = route.slice(slash);
  if (host.slice(1).includes("*") || path.slice(0, -1).includes("*")) {
    return `WORKER_ROUTE may have a * only at the start of its host and the end of its path ` +
      `(Cloudflare refuses one in the middle): "${route}"; ${example}.`;
  }
  return undefined;
}

const CLOUDFLARE_ID = /^[0-9a-f]{32}$/i;
/** The dashboard, whose addresses start with the account id: `dash.cloudflare.com/<id>/...`. */
const DASHBOARD_HOST = "dash.cloudflare.com";
type CloudflareIdSetting = "CLOUDFLARE_ACCOUNT_ID" | "CLOUDFLARE_ZONE_ID";

/**
 * Reads a Cloudflare id setting: the id (lower case) from 32 hexadecimal characters, or from a
 * dashboard address pasted whole, whose first path segment is the account id, with a `note` to
 * say so. A zone's dashboard address names its domain, not its zone id: a `problem`, which says
 * how to get the id.
 */
function readCloudflareId(
  name: CloudflareIdSetting,
  raw: string,
): { id?: string; note?: string; problem?: string } {
  const value = raw.trim();
  if (CLOUDFLARE_ID.test(value)) return { id: value.toLowerCase() };
  const address = dashboardAddress(value);
  const account = name === "CLOUDFLARE_ACCOUNT_ID";
  if (address && account) {
    return {
      id: address.account,
      note: `CLOUDFLARE_ACCOUNT_ID is a dashboard address: took the account id ` +
        `${address.account} from it (the part after ${DASHBOARD_HOST}/); write just that id ` +
        "to silence this note.",
    };
  }
  const leaveOut = account
    ? "or leave it out: it is found when the token sees one account"
    : "or leave it out: it is found from WORKER_ROUTE or WORKER_DOMAIN when the token may " +
      'read the zone ("Zone: Read")';
  if (address) {
    return {
      problem: `CLOUDFLARE_ZONE_ID is a dashboard address, which holds the account id ` +
        `${address.account}${address.domain ? ` and the domain ${address.domain}` : ""} but ` +
        "no zone id: copy the Zone ID from the domain's Overview page (API section), " +
        leaveOut + ".",
    };
  }
  return {
    problem: `${name} must be the ${account ? "account" : "zone"} id, 32 hexadecimal characters ` +
      (account
        ? `(as in ${DASHBOARD_HOST}/<account id>/...)`
        : "(the domain's Overview page, API section)") +
      `, not "${value}"; ${leaveOut}.`,
  };
}

/** The account id and the domain in a dashboard address, with or without its scheme. */
function dashboardAddress(value: string): { account: string; domain?: string } | undefined {
  const withScheme = /^[a-z]+:\/\//i.test(value) ? value : `https://${value}`;
  if (!URL.canParse(withScheme)) return undefined;
  const url = new URL(withScheme);
  if (url.hostname !== DASHBOARD_HOST) return undefined;
  const [account = "", second = ""] = url.pathname.split("/").filter(Boolean);
  if (!CLOUDFLARE_ID.test(account)) return undefined;
  const domain = second.includes(".") ? second : undefined;
  return { account: account.toLowerCase(), ...(domain && { domain }) };
}

/**
 * Why B2 would refuse `name` as a bucket name, or `undefined` when it would not. B2's rule
 * (backblaze.com/apidocs/b2-create-bucket): 6 to 63 characters, letters, digits and "-", not
 * starting with "b2-", which Backblaze reserves; b2sdk's simulator refuses any other character
 * as "illegal bucket name" (b2sdk `raw_simulator.py`, `create_bucket`).
 */
function bucketNameProblem(name: string): string | undefined {
  const bad = [...new Set(name.replace(/[A-Za-z0-9-]/g, ""))].map((c) => JSON.stringify(c));
  const why = bad.length > 0
    ? `${bad.join(", ")} ${bad.length === 1 ? "is" : "are"} not allowed`
    : name.length < 6 || name.length > 63
    ? `it has ${name.length} characters`
    : name.toLowerCase().startsWith("b2-")
    ? 'names starting with "b2-" are reserved'
    : undefined;
  if (!why) return undefined;
  return `B2_BUCKET_NAME "${name}" is no name B2 allows (${why}): a bucket name has 6 to 63 ` +
    'letters, digits and "-", and does not start with "b2-". Copy it from the Buckets page ' +
    "of the B2 web console.";
}

/**
 * The names to try, most specific first, when looking for the zone of a route or custom
 * domain, as wrangler walks them (workers-sdk `getZoneIdFromHost`): the host without scheme,
 * `*.`, path or port, then each parent, never a bare top-level domain.
 *
 * ```ts
 * zoneCandidates("*.cdn.example.co.uk/*"); // ["cdn.example.co.uk", "example.co.uk", "co.uk"]
 * ```
 * @internal
 */
export function zoneCandidates(target: string): string[] {
  const host = target.trim().toLowerCase()
    .replace(/^[a-z][a-z0-9+.-]*:\/\//, "")
    .replace(/^\*\.?/, "")
    .replace(/[/?#].*$/, "")
    .replace(/:\d+$/, "")
    .replace(/\.$/, "");
  const labels = host.split(".").filter(Boolean);
  return labels.slice(0, -1).map((_, i) => labels.slice(i).join("."));
}

/** What a command needs from the configuration; see `COMMANDS` for each command's. */
export interface Needs {
  /** The B2 settings must be complete: the key and the bucket. */
  b2?: boolean;
  /** The Cloudflare settings must be complete: the account and its credentials. */
  cloudflare?: boolean;
  /**
   * The same, unless `WORKER_DOMAIN` or a route with one host says where the worker answers
   * (`purge`, which otherwise asks Cloudflare for the workers.dev address).
   */
  cloudflareUnlessSite?: boolean;
  /**
   * The Cloudflare settings are read (and must be complete) when `CLOUDFLARE_ACCOUNT_ID` is
   * set and no site is (`check-cache`, which then asks for the workers.dev address).
   */
  cloudflareIfAccount?: boolean;
  /** Signed purge requests: `WORKER_PURGE_KEY` or `B2_APPLICATION_KEY` (with Workers Cache). */
  purgeKey?: boolean;
  /** Refreshes on `REFRESH_SCHEDULE` (`cron`): each token must outlive the gap to the next run. */
  schedule?: boolean;
  /** `status --min-remaining`, in seconds: a fresh token must have more. */
  minRemaining?: number;
  /** The B2 settings must be complete when `B2_EVENT_NOTIFICATIONS=on` (status reads the rule). */
  b2ForEvents?: boolean;
}

/** A setting's value once read: text, a number (seconds, milliseconds) or a list. */
type Value = string | number | string[];

/** Every setting read and checked, by name, with the problems found. */
interface Reading {
  values: Partial<Record<Variable, Value>>;
  /** The settings given (not their defaults), by name. */
  given: Set<Variable>;
  problems: string[];
  /** What was understood in a way worth saying, such as an id read from an address. */
  notes: string[];
}

/**
 * Walks {@linkcode VARIABLES}: each setting given is checked by its kind,
 * each unset or bad one takes its default, and every problem is collected.
 */
function readSettings(settings: Settings): Reading {
  const reading: Reading = { values: {}, given: new Set(), problems: [], notes: [] };
  for (const [name, setting] of SETTINGS) {
    const raw = setting.untrimmed ? settings[name] : settings[name]?.trim();
    const given = raw !== undefined && (raw !== "" || setting.emptyIsValue === true);
    let value = given ? readValue(name, setting, raw, reading.problems) : undefined;
    if (value === undefined && setting.default !== undefined) {
      value = readValue(name, setting, setting.default, []);
    }
    if (given) reading.given.add(name);
    if (value !== undefined) reading.values[name] = value;
  }
  return reading;
}

/** One value read by its setting's kind; `undefined` (with a problem) when it is bad. */
function readValue(
  name: Variable,
  setting: Setting,
  raw: string,
  problems: string[],
): Value | undefined {
  // A secret's or credential's value is never quoted back, whatever its check: a ping URL
  // holds its check's token, a key id more than the four characters output may show.
  const not = (text: string) => isCredential(setting) ? "" : `, not "${text}"`;
  const bad = (hint: string) => {
    problems.push(`${name} must be ${setting.hint ?? hint}${not(raw)}.`);
    return undefined;
  };
  const checked = (text: string) => {
    const problem = setting.check?.(text) ??
      (setting.valid?.(text) === false ? `${name} must be ${setting.hint}${not(text)}.` : "");
    if (problem) problems.push(problem);
    return !problem;
  };
  const { min = 0, max = Infinity } = setting;
  switch (setting.kind) {
    case "integer": {
      const value = Number(raw);
      const good = /^\d+$/.test(raw) && value >= min && value <= max;
      if (!good) return bad(`a whole number from ${min} to ${max}`);
      return checked(raw) ? value : undefined;
    }
    case "duration": {
      const seconds = parseDuration(raw);
      const good = seconds !== undefined && seconds >= min && seconds <= max;
      const range = `from ${shortDuration(min)} to ${shortDuration(max)}`;
      return good ? seconds : bad(`a duration ${range}, written ${DURATION_SYNTAX}`);
    }
    case "enum": {
      const value = raw.toLowerCase();
      const values = setting.values ?? [];
      const listed = values.map((v) => `"${v}"`);
      const hint = `${listed.slice(0, -1).join(", ")} or ${listed.at(-1)}`;
      return values.includes(value) ? value : bad(hint);
    }
    case "url": {
      const good = URL.canParse(raw) && /^https?:$/.test(new URL(raw).protocol);
      return good ? raw.replace(/\/+$/, "") : bad("an http(s) URL");
    }
    case "time": {
      const ms = ISO_TIME.test(raw) ? Date.parse(raw) : NaN;
      return Number.isNaN(ms) ? bad("an ISO 8601 time such as 2026-12-31T00:00:00Z") : ms;
    }
    case "list": {
      // A list's `values` stand alone for the whole list, such as WORKER_CORS_ORIGINS=*.
      if (setting.values?.includes(raw)) return [raw];
      return raw.split(",").map((item) => item.trim()).filter(Boolean).filter(checked);
    }
    default:
      return checked(raw) ? raw : undefined;
  }
}

/** Reads a value of the walk by its type. */
function valueOf(reading: Reading) {
  return {
    text: (name: Variable) => reading.values[name] as string | undefined,
    number: (name: Variable) => reading.values[name] as number,
    list: (name: Variable) => (reading.values[name] as string[] | undefined) ?? [],
  };
}

/**
 * Turns raw settings into a {@linkcode Config}, reporting every problem at
 * once as a {@linkcode ConfigError}: every setting given is checked, whatever
 * the command, and what `needs` asks for must be set.
 *
 * @example Settings as the environment gives them, checked for a refresh
 * ```ts ignore
 * const config = parseConfig(Deno.env.toObject(), { b2: true, cloudflare: true });
 * ```
 */
export function parseConfig(settings: Settings, needs: Needs = {}): Config {
  const reading = readSettings(settings);
  const { problems } = reading;
  const value = valueOf(reading);
  const worker = workerOptions(reading);
  const where = { domain: value.text("WORKER_DOMAIN"), route: value.text("WORKER_ROUTE") };
  const site = workerAddress(where);
  const origin = workerAddress(where, { origin: true });
  const verifyUrl = value.text("VERIFY_URL");
  const pingUrl = value.text("REFRESH_PING_URL");
  const bucketName = value.text("B2_BUCKET_NAME");
  const filePrefix = value.text("B2_FILE_PREFIX");
  const purgeFrom = value.text("WORKER_PURGE_KEY") ? "WORKER_PURGE_KEY" : "B2_APPLICATION_KEY";
  const purgeSecret = value.text(purgeFrom);
  const config: Config = {
    worker,
    workerName: value.text("WORKER_NAME")!,
    refreshSchedule: value.text("REFRESH_SCHEDULE")!,
    refreshMargin: value.number("REFRESH_MARGIN"),
    ...(purgeSecret && { purgeSecret: { from: purgeFrom, value: purgeSecret } }),
    ...(verifyUrl && { verifyUrl }),
    ...(pingUrl && { pingUrl }),
    ...(site && { site }),
    ...(origin && { origin }),
    ...(bucketName && { bucketName }),
    ...(filePrefix && { filePrefix }),
  };
  if (needs.b2 || (needs.b2ForEvents && worker.eventNotifications)) config.b2 = b2Config(reading);
  const forPurge = needs.cloudflareUnlessSite && !site;
  const forCheck = needs.cloudflareIfAccount && !origin &&
    value.text("CLOUDFLARE_ACCOUNT_ID") !== undefined;
  if (needs.cloudflare || forPurge || forCheck) {
    const before = problems.length;
    config.cloudflare = cloudflareConfig(reading);
    if (!needs.cloudflare && problems.length > before) {
      const why = `${forPurge ? "Purge" : "check-cache"} must know where the worker answers: ` +
        "pass --url https://<host>, or set WORKER_DOMAIN (or a WORKER_ROUTE with one host); " +
        "without them it asks Cloudflare for the workers.dev address, which needs the settings " +
        "below.";
      problems.splice(before, 0, why);
    }
  }
  if (needs.purgeKey && !config.purgeSecret && worker.cacheMode === "workers-cache") {
    problems.push(NO_PURGE_SECRET);
  }
  const warnings = [...reading.notes, ...tokenLifeProblems(reading, needs)];
  if (problems.length > 0) throw new ConfigError(problems);
  if (warnings.length > 0) config.warnings = warnings;
  return config;
}

/** What the worker does, from the walk; signed-link and URL-style problems join the rest. */
function workerOptions(reading: Reading): WorkerOptions {
  const value = valueOf(reading);
  const cacheTtl = value.number("WORKER_CACHE_TTL");
  const signing = signingOptions(reading);
  const listing = listingOptions(reading);
  const worker: WorkerOptions = {
    urlStyle: value.text("WORKER_URL_STYLE") === "b2" ? "b2" : "plain",
    indexFile: value.text("WORKER_INDEX_FILE")!,
    cacheTtl,
    cacheControl: value.text("WORKER_CACHE_CONTROL")!,
    corsOrigins: value.list("WORKER_CORS_ORIGINS").join(","),
    activeContent: value.text("WORKER_ACTIVE_CONTENT") as ActiveContent,
    // A lifetime of 0 keeps nothing whichever cache is named: it wins, as it always meant off.
    cacheMode: cacheTtl === 0 ? "off" : value.text("WORKER_CACHE_MODE") as CacheMode,
    staleWhileRevalidate: value.number("WORKER_STALE_WHILE_REVALIDATE"),
    staleIfError: value.number("WORKER_STALE_IF_ERROR"),
    segmentSize: value.number("WORKER_SEGMENT_SIZE"),
    ...(signing && { signing }),
    ...(value.text("B2_EVENT_NOTIFICATIONS") === "on" && { eventNotifications: true }),
    ...(listing && { listing }),
  };
  if (signing && worker.urlStyle === "b2") {
    // In B2's URL shape every path the worker serves is /file/<bucket>/<name>: a prefix outside
    // it would protect nothing while the paths it was meant for stay public.
    const bucket = value.text("B2_BUCKET_NAME");
    const under = bucket ? `/file/${bucket}/` : "/file/";
    for (const prefix of signing.prefixes.filter((p) => !p.startsWith(under))) {
      reading.problems.push(
        `WORKER_SIGNED_PREFIXES: with WORKER_URL_STYLE=b2 every path is ${under}<name>, so ` +
          `"${prefix}" would protect nothing; write it as ${under}${prefix.replace(/^\//, "")}.`,
      );
    }
  }
  return worker;
}

/** The listing settings when `WORKER_LISTING=on`, each missing one a problem. */
function listingOptions(reading: Reading): ListingOptions | undefined {
  const value = valueOf(reading);
  if (value.text("WORKER_LISTING") !== "on") return undefined;
  const keyId = value.text("B2_LISTING_KEY_ID");
  const key = value.text("B2_LISTING_KEY");
  if (!keyId || !key) {
    reading.problems.push(
      "Set B2_LISTING_KEY_ID and B2_LISTING_KEY: WORKER_LISTING=on needs a second B2 key that " +
        "can only list, e.g. b2 key create --bucket <bucket> [--name-prefix <B2_FILE_PREFIX>] " +
        "<name> listFiles (see docs/configuration.md, Keys).",
    );
  }
  return {
    keyId: keyId ?? "",
    key: key ?? "",
    apiUrl: value.text("B2_API_URL")!,
    ttl: value.number("WORKER_LISTING_TTL"),
  };
}

/** The B2 settings, each missing one a problem. */
function b2Config(reading: Reading): B2Config {
  const value = valueOf(reading);
  const keyId = value.text("B2_APPLICATION_KEY_ID");
  const applicationKey = value.text("B2_APPLICATION_KEY");
  const bucketName = value.text("B2_BUCKET_NAME");
  const bucketId = value.text("B2_BUCKET_ID");
  if (!keyId) reading.problems.push("Set B2_APPLICATION_KEY_ID to the id of a B2 application key.");
  if (!applicationKey) reading.problems.push("Set B2_APPLICATION_KEY to the B2 application key.");
  // A bad name given is a problem of its own already.
  if (!reading.given.has("B2_BUCKET_NAME") && !reading.given.has("B2_BUCKET_ID")) {
    reading.problems.push("Set B2_BUCKET_NAME (or B2_BUCKET_ID) to the bucket to serve.");
  }
  return {
    keyId: keyId ?? "",
    applicationKey: applicationKey ?? "",
    apiUrl: value.text("B2_API_URL")!,
    ...(bucketName && { bucketName }),
    ...(bucketId && { bucketId }),
    prefix: value.text("B2_FILE_PREFIX")!,
    tokenTtl: value.number("B2_TOKEN_TTL"),
  };
}

/** The Cloudflare settings, each missing one a problem. */
function cloudflareConfig(reading: Reading): CloudflareConfig {
  const value = valueOf(reading);
  const problems = reading.problems;
  // Left out, they are found before the first other call (findCloudflareIds).
  const accountId = cloudflareIdOf(reading, "CLOUDFLARE_ACCOUNT_ID");
  const token = value.text("CLOUDFLARE_API_TOKEN");
  const email = value.text("CLOUDFLARE_EMAIL");
  const key = value.text("CLOUDFLARE_API_KEY");
  let auth: CloudflareAuth = { token: token ?? "" };
  if (!token && email && key) auth = { email, key };
  else if (!token && (email || key)) {
    problems.push(
      `Set ${email ? "CLOUDFLARE_API_KEY" : "CLOUDFLARE_EMAIL"} too: the legacy global key ` +
        "needs both, or set CLOUDFLARE_API_TOKEN instead.",
    );
  } else if (!token) {
    problems.push(
      'Set CLOUDFLARE_API_TOKEN to an API token with "Workers Scripts: Edit" ' +
        "(or CLOUDFLARE_EMAIL and CLOUDFLARE_API_KEY for the legacy global key).",
    );
  }
  const zoneId = cloudflareIdOf(reading, "CLOUDFLARE_ZONE_ID");
  const route = value.text("WORKER_ROUTE");
  const domain = value.text("WORKER_DOMAIN");
  const named = reading.given.has("WORKER_ROUTE") || reading.given.has("WORKER_DOMAIN");
  const workersDev = value.text("WORKER_WORKERS_DEV");
  return {
    accountId: accountId ?? "",
    auth,
    apiBaseUrl: value.text("CLOUDFLARE_API_BASE_URL")!,
    workerName: value.text("WORKER_NAME")!,
    ...(zoneId && { zoneId }),
    ...(route && { route }),
    ...(domain && { domain }),
    // A workers.dev URL is outside the zone's WAF and Access rules
    // (developers.cloudflare.com/workers/configuration/routing/workers-dev/), so by default
    // it is only on when nothing else reaches the worker.
    workersDev: workersDev === "on" || (workersDev === "auto" && !named),
  };
}

/** An id setting's id (its value was checked by its `check`), noting one read from an address. */
function cloudflareIdOf(reading: Reading, name: CloudflareIdSetting): string | undefined {
  const raw = valueOf(reading).text(name);
  if (raw === undefined) return undefined;
  const { id, note } = readCloudflareId(name, raw);
  if (note) reading.notes.push(note);
  return id;
}

/** The settings of signed links: any one given turns them on (and may make a problem). */
const SIGNING_SETTINGS: readonly Variable[] = [
  "WORKER_SIGNED_PREFIXES",
  "WORKER_SIGNING_KEY",
  "WORKER_SIGNING_KEY_PREVIOUS",
  "WORKER_SIGNING_KEY_PREVIOUS_UNTIL",
  "WORKER_SIGNED_MAX_TTL",
];

/**
 * The signed-link settings, or `undefined` when none is set. Protected prefixes without a key and
 * half a rotation are problems (a weak key is one already, from its check).
 */
function signingOptions(reading: Reading): SigningOptions | undefined {
  const value = valueOf(reading);
  const given = (name: Variable) => reading.given.has(name);
  if (!SIGNING_SETTINGS.some(given)) return undefined;
  const problems = reading.problems;
  const indexFile = value.text("WORKER_INDEX_FILE") ?? "";
  const read = value.list("WORKER_SIGNED_PREFIXES").map((raw) => prefixReading(raw, indexFile));
  const prefixes = read.flatMap((one) => one && "prefix" in one ? [one.prefix] : []);
  const readings = read.flatMap((one) => one && "reading" in one ? [one.reading] : []);
  problems.push(...read.flatMap((one) => one && "problem" in one ? [one.problem] : []));
  if (prefixes.length > 0 && !given("WORKER_SIGNING_KEY")) {
    problems.push(
      "Set WORKER_SIGNING_KEY: WORKER_SIGNED_PREFIXES protects paths, and links need a key " +
        "(deno run main.ts keygen prints one; keep it in .env on every machine that refreshes " +
        "or signs).",
    );
  }
  const previous = given("WORKER_SIGNING_KEY_PREVIOUS");
  const until = given("WORKER_SIGNING_KEY_PREVIOUS_UNTIL");
  if (previous && !until) {
    problems.push(
      "Set WORKER_SIGNING_KEY_PREVIOUS_UNTIL to the time links signed with " +
        "WORKER_SIGNING_KEY_PREVIOUS stop working, e.g. 2026-12-31T00:00:00Z.",
    );
  } else if (until && !previous) {
    problems.push(
      "WORKER_SIGNING_KEY_PREVIOUS_UNTIL is set without WORKER_SIGNING_KEY_PREVIOUS: " +
        "set the previous key, or remove the time.",
    );
  }
  const previousKey = value.text("WORKER_SIGNING_KEY_PREVIOUS");
  const previousUntil = reading.values.WORKER_SIGNING_KEY_PREVIOUS_UNTIL as number | undefined;
  return {
    prefixes,
    ...(readings.length > 0 && { readings }),
    key: value.text("WORKER_SIGNING_KEY") ?? "",
    ...(previousKey && { previousKey }),
    ...(previous && previousUntil !== undefined && { previousUntil }),
    maxTtl: value.number("WORKER_SIGNED_MAX_TTL"),
  };
}

/**
 * How one of WORKER_SIGNED_PREFIXES is read: ending in `/`, a folder (it and every path under it);
 * otherwise a file, which also covers a folder of that name and, when it is the index file, the
 * folder that serves it (the worker checks the name finally served). A folder named like the index
 * file could mean either, and is refused. `undefined` for a malformed one (its check says so).
 */
function prefixReading(
  raw: string,
  indexFile: string,
): { prefix: string; reading: string } | { problem: string } | undefined {
  const path = canonicalPath(raw);
  if (path === undefined) return undefined;
  const folder = path.endsWith("/");
  const file = folder ? path.slice(0, -1) : path;
  const parent = file.slice(0, file.lastIndexOf("/") + 1);
  const indexNamed = indexFile !== "" && file.slice(parent.length) === indexFile;
  if (folder && path !== "/" && indexNamed) {
    return {
      problem: `WORKER_SIGNED_PREFIXES: "${raw}" is a folder named like WORKER_INDEX_FILE ` +
        `(${indexFile}): write "${urlPath(file)}" to protect that file (and ${urlPath(parent)}, ` +
        `which serves it), or "${urlPath(parent)}" to protect the whole folder.`,
    };
  }
  const reading = folder
    ? `${urlPath(path)} (a folder: it and every path under it)`
    : `${urlPath(file)} (a file${indexNamed ? `, and ${urlPath(parent)}, which serves it` : ""}; ` +
      `and every path under ${urlPath(file)}/, were it a folder)`;
  return { prefix: `${file}/`, reading };
}

/** What `status` asks of a token by default (`--min-remaining`), and Deno Deploy's `/health`. */
const STATUS_MIN_REMAINING = 2 * DAY;

/**
 * Whether `B2_TOKEN_TTL` fits the schedule that renews it. A token that dies before the next run
 * is a problem for `cron`, which runs on `REFRESH_SCHEDULE`; for the other commands, which cannot
 * know what runs them, it and a token that `status` would call short before each run are
 * warnings. Returns the warnings; pushes the problems.
 */
function tokenLifeProblems(reading: Reading, needs: Needs): string[] {
  const value = valueOf(reading);
  const ttl = value.number("B2_TOKEN_TTL");
  const schedule = value.text("REFRESH_SCHEDULE")!;
  if (!(needs.b2 || needs.schedule || needs.minRemaining !== undefined)) return [];
  const gap = scheduleGap(schedule);
  if (gap === undefined) return [];
  const wanted = needs.minRemaining ?? STATUS_MIN_REMAINING;
  const runs = `REFRESH_SCHEDULE "${schedule}" refreshes every ${formatDuration(gap)} at most`;
  if (ttl <= gap) {
    const fixes = tokenLifeFixes({ ttl, gap, wanted, expiring: true });
    const text = `B2_TOKEN_TTL is ${ttl} (${formatDuration(ttl)}), but ${runs}: each token ` +
      `would expire before the next run and the site fail until it; ${fixes}.`;
    if (needs.schedule) reading.problems.push(text);
    return needs.schedule ? [] : [
      `${text} (A warning here, as this command may be run on another schedule: then set ` +
      "REFRESH_SCHEDULE to that schedule.)",
    ];
  }
  if (ttl >= gap + wanted) return [];
  const setting = needs.minRemaining !== undefined ? "--min-remaining" : "status's default";
  return [
    `B2_TOKEN_TTL is ${ttl} (${formatDuration(ttl)}), and ${runs}, so before each run the ` +
    `token has less than the ${formatDuration(wanted)} ${setting} asks for, and status ` +
    `reports it although refresh cannot fix that; ${tokenLifeFixes({ ttl, gap, wanted })}.`,
  ];
}

/** Hourly, at an odd minute: what the schedule advice suggests, and Deno Deploy's schedule. */
const HOURLY = "17 * * * *";

/**
 * The changes that would make each token outlive the gap between runs by `wanted` seconds, each
 * one that would work and only those: a longer `B2_TOKEN_TTL` (a week at most), an hourly
 * schedule (when the runs are further apart), or asking less of status.
 */
function tokenLifeFixes(
  facts: { ttl: number; gap: number; wanted: number; expiring?: boolean },
): string {
  const { ttl, gap, wanted, expiring } = facts;
  const needed = gap + wanted;
  const fixes: string[] = [];
  if (needed <= MAX_TOKEN_TTL) {
    fixes.push(
      `set B2_TOKEN_TTL to at least ${needed} (${formatDuration(needed)}; the default ` +
        `${MAX_TOKEN_TTL} is a week)`,
    );
  } else if (expiring && ttl < MAX_TOKEN_TTL && gap < MAX_TOKEN_TTL) {
    fixes.push(`set B2_TOKEN_TTL=${MAX_TOKEN_TTL} (a week, the longest B2 allows)`);
  }
  if (gap > 3600 && 3600 + wanted <= MAX_TOKEN_TTL) {
    const longer = ttl < 3600 + wanted ? ` with B2_TOKEN_TTL=${MAX_TOKEN_TTL}` : "";
    fixes.push(`refresh more often (e.g. REFRESH_SCHEDULE="${HOURLY}", hourly${longer})`);
  }
  if (!expiring && ttl > gap) {
    fixes.push(`ask status for no more than ${formatDuration(ttl - gap)} (--min-remaining)`);
  }
  return fixes.join(", or ");
}

/** The field bounds of a cron expression: minute, hour, day of month, month, day of week. */
const CRON_FIELDS = [[0, 59], [0, 23], [1, 31], [1, 12], [0, 7]] as const;

/** The values a cron field allows (`*`, `5`, `1-5`, `*\/15`, lists); `undefined` if unread. */
function cronField(field: string, [low, high]: readonly [number, number]): Set<number> | undefined {
  const allowed = new Set<number>();
  for (const part of field.split(",")) {
    const match = /^(\*|(\d+)(?:-(\d+))?)(?:\/(\d+))?$/.exec(part);
    if (!match) return undefined;
    const from = match[2] === undefined ? low : Number(match[2]);
    const to = match[3] !== undefined
      ? Number(match[3])
      : match[2] === undefined || match[4]
      ? high
      : from;
    const step = Number(match[4] ?? 1);
    if (from < low || to > high || from > to || step < 1) return undefined;
    for (let n = from; n <= to; n += step) allowed.add(n);
  }
  return allowed;
}

/**
 * The longest time, in seconds, between two runs of a five-field UTC cron expression, found over
 * eight years of days (leap days included); `undefined` for one it cannot read (`MON`).
 * @internal
 */
export function scheduleGap(schedule: string): number | undefined {
  const fields = schedule.trim().split(/\s+/);
  if (fields.length !== 5) return undefined;
  const sets = fields.map((field, i) => cronField(field, CRON_FIELDS[i]!));
  if (sets.some((set) => set === undefined)) return undefined;
  const [minutes, hours, days, months, weekdays] = sets as Set<number>[];
  if (weekdays!.has(7)) weekdays!.add(0);
  const times = [...hours!].flatMap((h) => [...minutes!].map((m) => h * 60 + m))
    .sort((a, b) => a - b);
  // cron: with both day fields restricted, a day matching either runs.
  const either = fields[2] !== "*" && fields[4] !== "*";
  let longest = 0;
  for (let i = 1; i < times.length; i++) longest = Math.max(longest, times[i]! - times[i - 1]!);
  let last: number | undefined;
  const start = Date.UTC(2026, 0, 1) / 60_000;
  for (let day = 0; day < 8 * 366; day++) {
    const date = new Date((start + day * 1440) * 60_000);
    const byMonth = days!.has(date.getUTCDate());
    const byWeek = weekdays!.has(date.getUTCDay());
    if (!months!.has(date.getUTCMonth() + 1) || !(either ? byMonth || byWeek : byMonth && byWeek)) {
      continue;
    }
    const first = day * 1440 + times[0]!;
    if (last !== undefined) longest = Math.max(longest, first - last);
    last = day * 1440 + times.at(-1)!;
  }
  return last === undefined || longest === 0 ? undefined : longest * 60;
}

/** What a signing key must hold at least: HMAC-SHA256's own output size. */
const MIN_SIGNING_KEY_BYTES = 32;
const ISO_TIME = /^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2}))?$/;

/** Why a signing key is not good enough, naming the variable; empty when it is. */
function signingKeyProblems(name: string, key: string): string[] {
  const fix = "deno run main.ts keygen prints a good one";
  if (!/^[A-Za-z0-9_-]+={0,2}$/.test(key)) {
    return [`${name} must be base64url (A-Z, a-z, 0-9, "-" and "_"); ${fix}.`];
  }
  const bytes = fromBase64Url(key);
  if (bytes.length < MIN_SIGNING_KEY_BYTES) {
    return [
      `${name} holds ${bytes.length} bytes, fewer than the ${MIN_SIGNING_KEY_BYTES} a signing ` +
      `key needs; ${fix}.`,
    ];
  }
  // Random bytes repeat no run of 6 (odds about n² / 2⁴⁹), while a key like "AAAA..." or a
  // phrase said twice does. A test of shape, not of randomness: keygen is the way.
  const runs = new Set<string>();
  for (let i = 0; i + 6 <= bytes.length; i++) {
    const run = bytes.subarray(i, i + 6).join(",");
    if (runs.has(run)) return [`${name} does not look random (it repeats itself); ${fix}.`];
    runs.add(run);
  }
  return [];
}

/** What purge and `needs.purgeKey` say when there is nothing to derive the purge key from. */
const NO_PURGE_SECRET = "Set B2_APPLICATION_KEY (or WORKER_PURGE_KEY): purge requests are " +
  "signed with a key derived from it, as refresh gave the worker.";
/** Short keys are guessable offline from one captured purge request. */
const MIN_PURGE_KEY_LENGTH = 32;
/** Fixed, so that every machine derives the same purge key from the same secret. */
const PURGE_KEY_INFO = "b2-private-cdn purge key v1";

/**
 * The worker's purge key: HKDF-SHA256 of `WORKER_PURGE_KEY`, else of `B2_APPLICATION_KEY`, as 64
 * hex characters. Every machine that refreshes or purges holds one of the two, so none stores it.
 * @internal
 */
export async function derivePurgeKey(secret: string): Promise<string> {
  return toHex(await hkdf(secret, PURGE_KEY_INFO, 32));
}

/** `length` bytes of HKDF-SHA256 of `secret` (no salt) with `info`: alike on every machine. */
async function hkdf(secret: string, info: string, length: number): Promise<Uint8Array> {
  const bytes = (text: string) => new TextEncoder().encode(text);
  const key = await crypto.subtle.importKey("raw", bytes(secret), "HKDF", false, ["deriveBits"]);
  const params = { name: "HKDF", hash: "SHA-256", salt: new Uint8Array(0), info: bytes(info) };
  return new Uint8Array(await crypto.subtle.deriveBits(params, key, length * 8));
}

/** How every time setting and flag is written; `.env.example` and the docs say it once. */
const DURATION_SYNTAX = "90s, 15m, 12h, 7d or plain seconds";

/** The units of a duration, largest first, in seconds. */
const DURATION_UNITS = [["d", DAY], ["h", 3600], ["m", 60], ["s", 1]] as const;

/** `7d`, `12h`, `90s`: seconds in the largest unit that holds them exactly. */
function shortDuration(seconds: number): string {
  const [unit, size] = DURATION_UNITS.find(([, size]) => seconds > 0 && seconds % size === 0) ??
    ["s", 1];
  return `${seconds / size}${unit}`;
}

/**
 * Seconds in a duration as every time setting and flag takes it: `90s`, `15m`, `12h`, `7d` or
 * plain seconds (`90`); `undefined` if it is none of those.
 * @internal
 */
export function parseDuration(text: string): number | undefined {
  const match = /^(\d+)\s*([smhd]?)$/.exec(text.trim());
  if (!match) return undefined;
  return Number(match[1]) * (DURATION_UNITS.find(([unit]) => unit === match[2])?.[1] ?? 1);
}

/**
 * `5d 3h`, `2h 5m`, `40s`: the two largest units of a span of seconds.
 * @internal
 */
export function formatDuration(seconds: number): string {
  const sign = seconds < 0 ? "-" : "";
  const left = Math.floor(Math.abs(seconds));
  const first = DURATION_UNITS.findIndex(([, size]) => left >= size);
  if (first === -1 || first === DURATION_UNITS.length - 1) return `${sign}${left}s`;
  const [unit, size] = DURATION_UNITS[first]!;
  const [nextUnit, nextSize] = DURATION_UNITS[first + 1]!;
  const next = Math.floor((left % size) / nextSize);
  return `${sign}${Math.floor(left / size)}${unit} ${next}${nextUnit}`;
}

/** `text` ending as a sentence does, so that another can follow it. */
function sentence(text: string): string {
  return /[.!?]$/.test(text) ? text : `${text}.`;
}

/** `1 path`, `2 paths`. */
function count(n: number, one: string, many: string): string {
  return `${n} ${n === 1 ? one : many}`;
}

/**
 * ISO 8601 UTC to the second.
 * @internal
 */
export function isoSeconds(ms: number): string {
  return new Date(ms).toISOString().replace(/\.\d{3}Z$/, "Z");
}

// ---------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------

/** What the core is given instead of reaching for globals. */
export interface Context {
  /** Every HTTP request goes through this. */
  fetch: typeof fetch;
  /** Milliseconds since the epoch. */
  now: () => number;
  /** Waits between attempts. */
  sleep: (ms: number) => Promise<void>;
  /** In [0, 1): the jitter of retries. */
  random: () => number;
  /** Progress lines for `--verbose` and the demo. */
  log: (line: string) => void;
  /** Values that must never be printed; the tokens met on the way are added. */
  secrets: Set<string>;
  /** Milliseconds one attempt may take. @default 30000 */
  timeoutMs: number;
  /** Further attempts after a failure a retry can fix. @default 4 */
  retries: number;
  /**
   * Milliseconds one request may take across all its attempts and pauses, so a hanging API
   * ends the run in about a minute, not five timeouts. @default 60000
   */
  budgetMs: number;
}

/**
 * A {@linkcode Context} with the real network and clock.
 *
 * @example The real network and clock, with a shorter timeout
 * ```ts ignore
 * const ctx = defaultContext({ timeoutMs: 10_000 });
 * ```
 */
export function defaultContext(overrides: Partial<Context> = {}): Context {
  return {
    fetch: globalThis.fetch,
    now: Date.now,
    sleep: (ms) => new Promise((resolve) => setTimeout(resolve, ms)),
    random: Math.random,
    log: () => {},
    secrets: new Set(),
    timeoutMs: 30_000,
    retries: 4,
    budgetMs: 60_000,
    ...overrides,
  };
}

/** The first pause between attempts; doubled each time, with full jitter. */
const RETRY_BASE_MS = 500;
/** A longer `Retry-After` than this is not waited out: the run fails and says when to retry. */
const RETRY_AFTER_LIMIT_MS = 120_000;
/** How much of an answer that is not what was expected an error quotes. */
const QUOTED_BODY_CHARS = 80;

/**
 * An API answered with an error, or could not be reached. Exit code 1.
 *
 * @example What B2 said, and what to change
 * ```ts ignore
 * try {
 *   await refresh(config, ctx, { module });
 * } catch (error) {
 *   if (error instanceof ApiError && error.service === "B2") {
 *     console.error(error.code, error.serverMessage, error.hint);
 *   }
 * }
 * ```
 */
export class ApiError extends Error {
  /** Which API failed. */
  readonly service: Service;
  /** The HTTP status of the last answer, or 0 when no answer came. */
  readonly status: number;
  /**
   * The service's own error code (`unauthorized`, `10000`), or when no answer came why:
   * `timeout`, `dns`, `certificate`, `blocked-port` or `network`, with the runtime's words
   * in `cause` (`dns error: failed to lookup address information: ...`).
   */
  readonly code: string;
  /** The service's own words for the error, as it answered them, when it gave any. */
  readonly serverMessage?: string;
  /** What to change, when this tool knows: `check B2_APPLICATION_KEY_ID and B2_APPLICATION_KEY`. */
  readonly hint?: string;
  /** What failed and what the service said, without the hint. */
  readonly problem: string;
  /** Makes the error; the message is `problem`, then `. Fix: <hint>.` when there is a hint. */
  constructor(
    problem: string,
    details: Pick<ApiError, "service" | "status" | "code" | "serverMessage" | "hint"> & {
      cause?: string;
    },
  ) {
    super(
      details.hint ? `${problem}. Fix: ${details.hint}.` : problem,
      details.cause === undefined ? undefined : { cause: details.cause },
    );
    this.name = "ApiError";
    this.service = details.service;
    this.status = details.status;
    this.code = details.code;
    if (details.serverMessage !== undefined) this.serverMessage = details.serverMessage;
    if (details.hint) this.hint = details.hint;
    this.problem = problem;
  }
}

/** Why this tool refuses to go on, though nothing refused it. */
type RefusalCode =
  /** `WORKER_ROUTE` runs another Worker, and `--take-over` was not given. */
  | "route_held"
  /** `WORKER_DOMAIN` is another Worker's custom domain (Cloudflare's 100116), and no `--take-over`. */
  | "domain_held"
  /** `WORKER_DOMAIN` has an ordinary DNS record (Cloudflare's 100117), and no `--take-over`. */
  | "dns_record_in_the_way"
  /** `--take-over` must delete a DNS record, and the token may not. */
  | "dns_edit_needed"
  /** The B2 key lacks a capability the event rule needs. */
  | "missing_capability"
  /** B2 answered another rule's signing secret masked: writing it back would change it. */
  | "masked_secret"
  /** Another rule's prefix overlaps ours for the same events, which B2 refuses. */
  | "rule_overlap"
  /** The bucket has B2's 25 rules already. */
  | "too_many_rules";

/**
 * This tool's own refusal to change something it was not told to change, or cannot: the
 * message says what to run or set instead. Exit code 1.
 */
class RefusalError extends Error {
  /** The message says what was left as it was and what to do. */
  constructor(message: string, readonly code: RefusalCode) {
    super(message);
    this.name = "RefusalError";
  }
}

/** Whether `error` is an operation's failure to report (an API's, ours), not a bug. */
function isOperationError(
  error: unknown,
): error is ApiError | RefusalError | IncompleteDeployError {
  return error instanceof ApiError || error instanceof RefusalError ||
    error instanceof IncompleteDeployError;
}

/** Who answers: the two APIs, the deployed worker (purge), or a URL checked on it. */
export type Service = "B2" | "Cloudflare" | "Verify" | "Worker" | "Ping";

/**
 * One request as {@linkcode send} makes it.
 * @internal
 */
export interface Call {
  /** Who is asked; errors and `--verbose` lines name it. */
  service: Service;
  /** What the request is for, as in "Cannot <step>". */
  step: string;
  url: string;
  /** Method, headers, body; the signal is the helper's own. */
  init?: RequestInit;
  /**
   * Whether failures a retry can fix are retried. `false` for a request the caller repeats
   * itself (`verify`, the edge check) or that must not repeat as sent (a signed purge).
   * @default true
   */
  retry?: boolean;
  /** What to check when it cannot be reached. @default the service's URL setting */
  check?: string;
}

/** Which setting points at each service, for errors that name what to check. */
const URL_SETTING: Record<Service, string> = {
  B2: "B2_API_URL",
  Cloudflare: "CLOUDFLARE_API_BASE_URL",
  Verify: "the URL",
  Ping: "REFRESH_PING_URL",
  Worker: "the URL (--url)",
};

function isRetryable(status: number): boolean {
  return status === 408 || status === 429 || status >= 500;
}

/** Milliseconds from a `Retry-After` header (seconds or an HTTP date). */
function retryAfterMs(header: string | null, now: number): number | undefined {
  if (!header) return undefined;
  if (/^\d+$/.test(header.trim())) return Number(header) * 1000;
  const date = Date.parse(header);
  return Number.isNaN(date) ? undefined : Math.max(0, date - now);
}

/** Why a request got no answer, in the runtime's own words, and whether trying again can help. */
interface NetworkFailure {
  code: "timeout" | "dns" | "certificate" | "blocked-port" | "network";
  /** The runtime's cause: `dns error: failed to lookup address information: ...`. */
  cause: string;
  retryable: boolean;
}

/**
 * Classifies what `fetch` threw. Deno throws `TypeError("fetch failed")` whose `cause` says
 * what happened (`error sending request for url (...): client error (Connect): dns error:
 * ...`); that cause is kept, less the URL and the client's framing. A name that does not
 * resolve, a certificate that is refused and a port Deno blocks stay so on a second try.
 */
function networkFailure(error: unknown, timeoutMs: number): NetworkFailure {
  if (error instanceof DOMException && error.name === "TimeoutError") {
    return { code: "timeout", cause: `timed out after ${timeoutMs / 1000} s`, retryable: true };
  }
  const outer = error instanceof Error ? error.message : String(error);
  const inner = error instanceof Error && error.cause instanceof Error ? error.cause.message : "";
  const cause = (inner || outer)
    .replace(/^error sending request for url \(.*?\): /, "")
    .replace(/^client error \(\w+\): /, "");
  // The fetch spec's "bad ports" (fetch.spec.whatwg.org/#bad-port): Deno refuses them at once,
  // as a TypeError, or as NotCapable in some versions.
  if (/Requests to port \d+ are blocked/.test(outer)) {
    return { code: "blocked-port", cause: outer.replace(/^Fetch failed: /, ""), retryable: false };
  }
  if (/dns error|failed to lookup address/i.test(cause)) {
    return { code: "dns", cause, retryable: false };
  }
  if (/certificate/i.test(cause)) return { code: "certificate", cause, retryable: false };
  return { code: "network", cause, retryable: true };
}

/** What to do about a request that got no answer. */
function networkAdvice(failure: NetworkFailure, call: { service: Service; check: string }): string {
  const { check } = call;
  switch (failure.code) {
    case "dns":
      return `The host name does not resolve: check ${check} and this machine's DNS`;
    case "certificate":
      return `Its TLS certificate was refused: check ${check} (https for a host with a ` +
        "certificate the system trusts)";
    case "blocked-port":
      return `Deno refuses that port as browsers do: use another port in ${check}`;
    default:
      // A ping's trouble never stops the run it reports on, and its warning names the URL:
      // there is nothing to run again.
      return call.service === "Ping"
        ? "Check the network"
        : `Check the network and ${check}, then run again`;
  }
}

/**
 * Sends one request: the one way this tool speaks HTTP. Network errors, timeouts, 408, 429
 * and 5xx are retried (`ctx.retries` times at most) with exponential backoff and jitter,
 * honouring `Retry-After`, all within `ctx.budgetMs`; a DNS failure, a refused certificate
 * and a port Deno blocks are not, since a retry cannot fix them. Each attempt times out after
 * `ctx.timeoutMs`. The answer is returned whatever its status once it is final or the retries
 * or the budget are spent; no answer at all is an {@linkcode ApiError} that keeps the
 * runtime's cause. Nothing in `ctx.secrets` reaches its messages.
 * @internal
 */
export async function send(ctx: Context, call: Call): Promise<Response> {
  const { service, step } = call;
  // The APIs by name; the worker and a checked URL by their host.
  const who = service === "B2" || service === "Cloudflare" ? service : new URL(call.url).host;
  const retries = call.retry === false ? 0 : ctx.retries;
  const deadline = ctx.now() + ctx.budgetMs;
  for (let attempt = 0;; attempt++) {
    let waitMs = RETRY_BASE_MS * 2 ** attempt * (0.5 + ctx.random() / 2);
    const timeoutMs = Math.max(1, Math.min(ctx.timeoutMs, deadline - ctx.now()));
    let failure: string;
    try {
      const response = await ctx.fetch(call.url, {
        ...call.init,
        signal: AbortSignal.timeout(timeoutMs),
      });
      if (!isRetryable(response.status) || attempt >= retries) return response;
      const retryAfter = retryAfterMs(response.headers.get("retry-after"), ctx.now());
      if (retryAfter !== undefined && retryAfter > RETRY_AFTER_LIMIT_MS) return response;
      waitMs = Math.max(waitMs, retryAfter ?? 0);
      if (ctx.now() + waitMs >= deadline) return response;
      await response.body?.cancel();
      failure = `answered ${response.status}`;
    } catch (error) {
      // Deno's own refusal of a permission is no network fault: `run()` names the flag.
      if (error instanceof Deno.errors.NotCapable && !/port \d+/.test(error.message)) throw error;
      const why = networkFailure(error, timeoutMs);
      // No pause is begun that would end past the budget.
      const spent = attempt < retries && ctx.now() + waitMs >= deadline;
      failure = why.code === "timeout" ? why.cause : `could not be reached: ${why.cause}`;
      if (!why.retryable || attempt >= retries || spent) {
        const tries = count(attempt + 1, "attempt", "attempts");
        const what = why.code === "timeout" && spent
          ? `gave no answer within ${ctx.budgetMs / 1000} s in all`
          : failure;
        throw new ApiError(
          redact(
            `Cannot ${step}: ${who} ${what} (${tries}${why.retryable ? "" : ", no retry"}). ` +
              `${networkAdvice(why, { service, check: call.check ?? URL_SETTING[service] })}.`,
            ctx.secrets,
          ),
          { service, status: 0, code: why.code, cause: redact(why.cause, ctx.secrets) },
        );
      }
    }
    ctx.log(
      redact(`  ${who} ${failure}; retrying in ${(waitMs / 1000).toFixed(1)} s`, ctx.secrets),
    );
    await ctx.sleep(waitMs);
  }
}

/** What an API's success that is not JSON means: something in front of it answered. */
const NOT_JSON_FIX = {
  B2: "B2 answers JSON: check that B2_API_URL is the B2 API (https://api.backblazeb2.com)",
  Cloudflare: "The API answers JSON: check that CLOUDFLARE_API_BASE_URL is " +
    "https://api.cloudflare.com/client/v4",
};

/**
 * An API's answer as JSON, or `undefined` with what it was instead (`text/html, not JSON:
 * "<!DOCTYPE html>..."`), for errors that say what came back; a success that is not JSON is
 * such an error itself, with {@linkcode NOT_JSON_FIX}.
 */
async function readJson(
  response: Response,
  call: { service: "B2" | "Cloudflare"; step: string; ctx: Context },
): Promise<{ json: unknown; received: string }> {
  const text = await response.text();
  try {
    return { json: JSON.parse(text), received: "JSON" };
  } catch {
    const type = response.headers.get("content-type")?.split(";")[0] || "no content type";
    const quoted = text.length > QUOTED_BODY_CHARS
      ? `${text.slice(0, QUOTED_BODY_CHARS)}...`
      : text;
    const received = text.trim() === ""
      ? `an empty body (${type})`
      : `${type}, not JSON: ${JSON.stringify(quoted)}`;
    if (!response.ok) return { json: undefined, received };
    const { service, step } = call;
    throw new ApiError(
      redact(
        `Cannot ${step}: ${service} answered ${response.status} with ${received}. ` +
          `${NOT_JSON_FIX[service]}, not a proxy or web page in front of it.`,
        call.ctx.secrets,
      ),
      { service, status: response.status, code: "not_json" },
    );
  }
}

// ---------------------------------------------------------------------------
// B2
// ---------------------------------------------------------------------------

/** What `b2_authorize_account` (v4) told us; a `null` restriction is none. */
interface B2Authorization {
  accountId: string;
  /** Authorizes the API calls that follow; a secret. */
  authorizationToken: string;
  apiUrl: string;
  downloadUrl: string;
  /** The buckets the key is restricted to. */
  buckets: { id: string; name: string }[] | null;
  capabilities: string[];
  namePrefix: string | null;
}

/** The bucket being served. */
interface Bucket {
  id: string;
  name: string;
}

/** Why B2 refuses, with the fix; by B2 error code. */
const B2_HINTS: Record<string, string> = {
  unauthorized:
    "the key lacks a capability or is restricted elsewhere; see docs/configuration.md, Keys",
  bad_auth_token: "check B2_APPLICATION_KEY_ID and B2_APPLICATION_KEY",
  expired_auth_token: "run again; the account token expired",
  access_denied: "the key is not allowed to do this; see docs/configuration.md, Keys",
  transaction_cap_exceeded: "raise the Class C transaction cap in the B2 web console",
  too_many_requests: "B2 is rate limiting; run again later",
  service_unavailable: "B2 is busy; run again later",
  bad_request: "check B2_BUCKET_ID, B2_BUCKET_NAME and B2_FILE_PREFIX",
};

/** Which key an authorization is for, in messages. */
interface KeyPair {
  /** What the key is, after "authorize". */
  what: string;
  /** What to check when B2 refuses it. */
  credentials: string;
}

const APPLICATION_KEY_PAIR: KeyPair = {
  what: "the B2 application key",
  credentials: "check B2_APPLICATION_KEY_ID and B2_APPLICATION_KEY",
};
const LISTING_KEY_PAIR: KeyPair = {
  what: "the B2 listing key",
  credentials: "check B2_LISTING_KEY_ID and B2_LISTING_KEY",
};

/**
 * The B2 native API for one application key, made once from the B2 settings and the context:
 * each method is one endpoint, through {@linkcode send}. {@linkcode B2Client.authorize} comes
 * first; the calls after it carry the account token it got.
 */
class B2Client {
  #auth: B2Authorization | undefined;
  readonly #pair: KeyPair;

  /**
   * A client for `config`'s key; with `auth`, one this run's authorize call already made;
   * `pair` names the key in messages (the application key by default).
   */
  constructor(
    readonly config: B2Config,
    readonly ctx: Context,
    options: { auth?: B2Authorization; pair?: KeyPair } = {},
  ) {
    this.#auth = options.auth;
    this.#pair = options.pair ?? APPLICATION_KEY_PAIR;
  }

  /** The key's authorization, once {@linkcode B2Client.authorize} has it. */
  get auth(): B2Authorization {
    if (!this.#auth) throw new Error("B2Client: authorize() comes first");
    return this.#auth;
  }

  /** `b2_authorize_account` (v4): what the key may do, and the token the calls after it use. */
  async authorize(): Promise<B2Authorization> {
    const { config, ctx } = this;
    ctx.secrets.add(config.applicationKey);
    // The key as the Basic header carries it: a server that echoes it must not print it.
    const basic = btoa(`${config.keyId}:${config.applicationKey}`);
    ctx.secrets.add(basic);
    const pair = this.#pair;
    const answer = await this.#send<AuthorizeAnswer>(`authorize ${pair.what}`, {
      authorizing: true,
      url: `${config.apiUrl}/b2api/v4/b2_authorize_account`,
      init: { headers: { authorization: `Basic ${basic}` } },
    });
    ctx.secrets.add(answer.authorizationToken);
    const storage = answer.apiInfo?.storageApi;
    if (!storage?.apiUrl || !storage.downloadUrl) {
      throw new ApiError(
        `Cannot authorize ${pair.what}: the answer has no apiInfo.storageApi. ` +
          "Check that B2_API_URL points at the B2 native API.",
        { service: "B2", status: 200, code: "unexpected_answer" },
      );
    }
    const allowed = storage.allowed ?? {};
    this.#auth = {
      accountId: answer.accountId,
      authorizationToken: answer.authorizationToken,
      apiUrl: storage.apiUrl.replace(/\/+$/, ""),
      downloadUrl: storage.downloadUrl.replace(/\/+$/, ""),
      buckets: allowed.buckets?.map((b) => ({ id: b.id, name: b.name ?? "" })) ?? null,
      capabilities: allowed.capabilities ?? [],
      namePrefix: allowed.namePrefix ?? null,
    };
    return this.#auth;
  }

  /**
   * `b2_list_buckets`: the account's bucket of this name or id, whatever its type; without
   * either, every bucket the key may see.
   */
  async listBuckets(which: { bucketName?: string; bucketId?: string } = {}): Promise<Bucket[]> {
    const named = which.bucketName ?? which.bucketId;
    const answer = await this.#call<{ buckets: { bucketId: string; bucketName: string }[] }>(
      named ? `find bucket "${named}"` : "list the buckets the key can see",
      "v4/b2_list_buckets",
      {
        accountId: this.auth.accountId,
        ...which,
        // Without it B2 leaves out restricted and shared buckets
        // (www.backblaze.com/apidocs/b2-list-buckets, "bucketTypes").
        bucketTypes: ["all"],
      },
    );
    return answer.buckets.map((b) => ({ id: b.bucketId, name: b.bucketName }));
  }

  /** `b2_get_download_authorization`: a download token for the names under `prefix`. */
  async getDownloadAuthorization(
    request: { bucket: Bucket; prefix: string; validSeconds: number },
  ): Promise<string> {
    const answer = await this.#call<{ authorizationToken: string }>(
      `get a download authorization for bucket "${request.bucket.name}"`,
      "v4/b2_get_download_authorization",
      {
        bucketId: request.bucket.id,
        fileNamePrefix: request.prefix,
        validDurationInSeconds: request.validSeconds,
      },
    );
    this.ctx.secrets.add(answer.authorizationToken);
    return answer.authorizationToken;
  }

  /** `b2_get_bucket_notification_rules` (documented as v3 GET); their secrets are kept secret. */
  async getNotificationRules(bucket: Bucket): Promise<NotificationRule[]> {
    const answer = await this.#call<{ eventNotificationRules?: NotificationRule[] }>(
      `read the Event Notification rules of bucket "${bucket.name}"`,
      `v3/b2_get_bucket_notification_rules?bucketId=${encodeURIComponent(bucket.id)}`,
    );
    for (const rule of answer.eventNotificationRules ?? []) {
      const secret = rule.targetConfiguration?.hmacSha256SigningSecret;
      if (secret) this.ctx.secrets.add(secret);
    }
    return answer.eventNotificationRules ?? [];
  }

  /** `b2_set_bucket_notification_rules`: replaces all of the bucket's rules. */
  async setNotificationRules(bucket: Bucket, rules: NotificationRule[]): Promise<void> {
    await this.#call(
      `set the Event Notification rules of bucket "${bucket.name}"`,
      "v4/b2_set_bucket_notification_rules",
      { bucketId: bucket.id, eventNotificationRules: rules },
    );
  }

  /** One call with the account token: a POST of `body` as JSON, or a GET without one. */
  async #call<T>(step: string, endpoint: string, body?: unknown): Promise<T> {
    const { apiUrl, authorizationToken } = this.auth;
    return await this.#send<T>(step, {
      url: `${apiUrl}/b2api/${endpoint}`,
      init: body === undefined ? { headers: { authorization: authorizationToken } } : {
        method: "POST",
        headers: { authorization: authorizationToken, "content-type": "application/json" },
        body: JSON.stringify(body),
      },
    });
  }

  /**
   * One request to B2, through {@linkcode send}: its JSON, or an {@linkcode ApiError} with B2's
   * code and the fix. A 401 to the authorize call itself is the key pair, whatever code B2 gives.
   */
  async #send<T>(
    step: string,
    request: Pick<Call, "url" | "init"> & { authorizing?: boolean },
  ): Promise<T> {
    const { ctx } = this;
    const response = await send(ctx, { ...request, service: "B2", step });
    const { json, received } = await readJson(response, { service: "B2", step, ctx });
    const body = json as { code?: string; message?: string } | undefined;
    if (response.ok) return body as T;
    const code = body?.code ?? "unknown";
    const detail = body ? (body.message ? `: ${body.message}` : "") : ` (${received})`;
    const { credentials } = this.#pair;
    const hint = request.authorizing && response.status === 401
      ? credentials
      : B2_HINTS[code] ?? (response.status === 401 ? credentials : "");
    throw new ApiError(`Cannot ${step}: B2 answered ${response.status} ${code}${detail}`, {
      service: "B2",
      status: response.status,
      code,
      ...(body?.message && { serverMessage: body.message }),
      ...(hint && { hint }),
    });
  }
}

/** What `b2_authorize_account` answers, as far as this tool reads it. */
interface AuthorizeAnswer {
  accountId: string;
  authorizationToken: string;
  apiInfo?: {
    storageApi?: {
      apiUrl: string;
      downloadUrl: string;
      allowed?: {
        buckets?: { id: string; name: string | null }[] | null;
        capabilities?: string[];
        namePrefix?: string | null;
      };
    };
  };
}

/** What a serving key is made with: the bucket found by name, its download token made and used. */
const SERVING_CAPABILITIES = "listBuckets,readFiles,shareFiles";

/**
 * Checks what the key allows before anything else is asked of B2, so a
 * mismatch names the key to make instead of failing half way.
 */
function checkKey(auth: B2Authorization, config: B2Config): void {
  const problems: string[] = [];
  const wanted = config.bucketName ?? config.bucketId ?? "";
  const makeKey = `Make a key with: ${keyCreate(config, SERVING_CAPABILITIES)}`;
  if (!auth.capabilities.includes("shareFiles")) {
    problems.push(
      `The B2 key lacks the shareFiles capability, which download tokens need ` +
        `(it has: ${auth.capabilities.join(", ") || "none"}). ${makeKey}.`,
    );
  }
  if (auth.buckets && auth.buckets.length > 0) {
    const match = auth.buckets.some((b) =>
      (config.bucketName === undefined || b.name === config.bucketName) &&
      (config.bucketId === undefined || b.id === config.bucketId)
    );
    if (!match) {
      problems.push(
        `The B2 key is restricted to bucket ${
          auth.buckets.map((b) => `"${b.name}"`).join(", ")
        }, not "${wanted}". Set B2_BUCKET_NAME to that bucket, or ${makeKey}.`,
      );
    }
  }
  if (auth.namePrefix && !config.prefix.startsWith(auth.namePrefix)) {
    problems.push(
      `The B2 key only reaches names starting with "${auth.namePrefix}", but B2_FILE_PREFIX ` +
        `is "${config.prefix}". Set B2_FILE_PREFIX under "${auth.namePrefix}", or ${makeKey}.`,
    );
  }
  if (problems.length > 0) throw new ConfigError(problems);
}

/** The b2 CLI's command that makes a key with `capabilities` for the bucket, under the prefix. */
function keyCreate(
  b2: Pick<B2Config, "bucketName" | "prefix">,
  capabilities: string,
  name = "<name>",
): string {
  const prefix = b2.prefix ? ` --name-prefix ${b2.prefix}` : "";
  return `b2 key create --bucket ${b2.bucketName ?? "<bucket>"}${prefix} ${name} ${capabilities}`;
}

/**
 * Authorizes the listing key (`WORKER_LISTING`) at the address the worker will use, and refuses
 * it when it could do more than list this bucket under the prefix: the worker holds it at the
 * edge, so it must be worth nothing else to whoever reads it. Every capability but
 * {@linkcode LISTING_CAPABILITIES}, a key for every bucket or another, and a name prefix other
 * than `B2_FILE_PREFIX` (wider reaches more; narrower could not list the top) are problems,
 * each named. Exit code 2.
 */
async function checkListingKey(
  b2: B2Client,
  served: { listing: ListingOptions; bucket: Bucket; prefix: string },
): Promise<void> {
  const { listing, bucket, prefix } = served;
  const auth = await new B2Client(
    { ...b2.config, keyId: listing.keyId, applicationKey: listing.key, apiUrl: listing.apiUrl },
    b2.ctx,
    { pair: LISTING_KEY_PAIR },
  ).authorize();
  const makeKey = `Make one with: ${keyCreate({ bucketName: bucket.name, prefix }, "listFiles")}`;
  const problems: string[] = [];
  const beyond = auth.capabilities.filter((c) => !LISTING_CAPABILITIES.includes(c));
  if (beyond.length > 0) {
    problems.push(
      `B2_LISTING_KEY can do more than list: it has ${beyond.join(", ")}. The worker keeps ` +
        `this key at the edge, so it must only list. ${makeKey}.`,
    );
  }
  if (!auth.capabilities.includes("listFiles")) {
    problems.push(
      `B2_LISTING_KEY lacks the listFiles capability, which listings need. ${makeKey}.`,
    );
  }
  const buckets = auth.buckets ?? [];
  if (buckets.length !== 1 || buckets[0]!.id !== bucket.id) {
    const reach = auth.buckets === null
      ? "every bucket of the account"
      : `bucket ${buckets.map((b) => `"${b.name}"`).join(", ")}`;
    problems.push(`B2_LISTING_KEY reaches ${reach}, not only "${bucket.name}". ${makeKey}.`);
  }
  if ((auth.namePrefix ?? "") !== prefix) {
    const reach = auth.namePrefix ? `names starting with "${auth.namePrefix}"` : "every name";
    problems.push(
      `B2_LISTING_KEY reaches ${reach}, but B2_FILE_PREFIX is "${prefix}": the key must be ` +
        `restricted to exactly that prefix. ${makeKey}.`,
    );
  }
  if (problems.length > 0) throw new ConfigError(problems);
}

/**
 * Finds whichever of the bucket's name and id is missing: from the authorize
 * answer when it names the bucket, else with `b2_list_buckets`.
 */
async function resolveBucket(
  b2: B2Client,
  wanted: Pick<B2Config, "bucketName" | "bucketId">,
): Promise<Bucket> {
  const { bucketName, bucketId } = wanted;
  if (bucketName !== undefined && bucketId !== undefined) {
    return { id: bucketId, name: bucketName };
  }
  const known = b2.auth.buckets?.find((b) =>
    b.name !== "" && (b.name === bucketName || b.id === bucketId)
  );
  if (known) return known;
  if (!b2.auth.capabilities.includes("listBuckets")) {
    throw new ConfigError([
      `The B2 key lacks listBuckets, so the bucket's ${bucketName ? "id" : "name"} cannot be ` +
      `looked up. Set ${bucketName ? "B2_BUCKET_ID" : "B2_BUCKET_NAME"} as well, ` +
      "or give the key the listBuckets capability.",
    ]);
  }
  const [bucket] = await b2.listBuckets(bucketName ? { bucketName } : { bucketId: bucketId! });
  if (!bucket) {
    throw new ConfigError([
      `No bucket ${bucketName ? `named "${bucketName}"` : `with id "${bucketId}"`} in this ` +
      `B2 account. Check ${bucketName ? "B2_BUCKET_NAME" : "B2_BUCKET_ID"}.`,
    ]);
  }
  return bucket;
}

// ---------------------------------------------------------------------------
// The worker module
// ---------------------------------------------------------------------------

/** The name of the uploaded module. */
const MAIN_MODULE = "worker.js";
/** The runtime behaviour the worker was written and tested against (workerd in miniflare 4). */
const COMPATIBILITY_DATE = "2026-07-01";

/** A binding this tool sets: a key of the worker's {@linkcode Env}, so no file misspells one. */
type BindingName = keyof Env & string;

/** A Cloudflare Worker binding as the upload metadata carries it. */
export interface Binding {
  /** `secret_text` for the token, `plain_text` for the rest. */
  type: "plain_text" | "secret_text";
  /** The binding's name as the worker sees it in `env`. */
  name: string;
  /** The binding's value. */
  text: string;
}

/**
 * Workers Cache for this version (developers.cloudflare.com/workers/cache/configuration/). Sent on
 * every upload, `enabled: false` included, since the setting belongs to each
 * version; `cross_version_cache` keeps the cache across daily refreshes.
 */
export interface CacheOptions {
  /** Whether this version's answers go through Workers Cache; the API requires the field. */
  enabled: boolean;
  /** Serve entries written by earlier versions; without it each refresh starts cold. */
  cross_version_cache?: boolean;
}

/** The upload's `metadata` part. */
export interface WorkerMetadata {
  /** The module that exports the worker (`worker.js`). */
  main_module: string;
  /** The Workers runtime behaviour the module was tested against. */
  compatibility_date: string;
  /** Every binding the worker gets. */
  bindings: Binding[];
  /** From {@linkcode cacheOptionsFor}; every upload carries it, since the setting is per version. */
  cache_options?: CacheOptions;
}

/** What is uploaded: metadata and the one module. */
export interface WorkerUpload {
  /** The upload's `metadata` part. */
  metadata: WorkerMetadata;
  /** The worker's JavaScript. */
  module: string;
}

/**
 * The facts the worker's bindings carry; times in milliseconds since the epoch.
 * @internal
 */
export interface WorkerFacts {
  /** The B2 download token; only ever a secret binding. */
  downloadToken: string;
  /** Where the worker fetches files from. */
  downloadUrl: string;
  bucketName: string;
  prefix: string;
  issuedAt: number;
  expiresAt: number;
  options: WorkerOptions;
  /** From {@linkcode derivePurgeKey}; without it the worker takes no purge requests. */
  purgeKey?: string;
  /** From {@linkcode servingFingerprint}. */
  fingerprint?: string;
  /** A purge still owed (`all`), remembered by the worker for the next refresh. */
  purgePending?: string;
  /** `REFRESH_PINGED`: the run's dead man's switch and when it pinged ({@linkcode pingedBinding}). */
  pinged?: string;
  /** From {@linkcode deriveEventSecret}: what B2 signs notifications with; a secret binding. */
  eventSecret?: string;
}

/** The `cache_options` an upload carries for a cache mode. */
function cacheOptionsFor(mode: CacheMode): CacheOptions {
  return mode === "workers-cache"
    ? { enabled: true, cross_version_cache: true }
    : { enabled: false };
}

/**
 * What a URL serves depends on what this hashes and on nothing else the tool sets, the worker's
 * `ANSWER_FORMAT` included. A new token does not change it, so the daily refresh purges nothing.
 */
async function servingFingerprint(
  module: string,
  facts: Pick<WorkerFacts, "bucketName" | "prefix" | "options">,
): Promise<string> {
  // A module without the constant (a test's stand-in) counts as format 0.
  const format = /\bconst ANSWER_FORMAT = (\d+);/.exec(module)?.[1] ?? "0";
  const { urlStyle, indexFile, cacheControl, corsOrigins, cacheMode, signing } = facts.options;
  const shape = JSON.stringify([
    Number(format),
    facts.bucketName,
    facts.prefix,
    urlStyle,
    indexFile,
    cacheControl,
    corsOrigins,
    cacheMode,
    // A path made private, or a key revoked, must stop being served from copies cached before:
    // prefixes and keys are part of what an answer depends on. Only a truncated hash of them
    // is ever stored, which says nothing about a 256-bit key.
    signing?.prefixes ?? [],
    signing?.key ?? "",
    signing?.previousKey ?? "",
    // An earlier end for the previous key revokes its links sooner: their copies must go too.
    signing?.previousUntil ?? 0,
    // Workers Cache keeps the headers it sets. The default adds nothing, as below.
    ...(facts.options.activeContent ?? "serve") === "serve" ? [] : [facts.options.activeContent],
    // Segments are kept under keys holding their size: another size starts them afresh. The
    // default adds nothing, so deploys from before segments keep their fingerprint (and the
    // upgrade purges nothing).
    ...(facts.options.segmentSize ?? DEFAULT_SEGMENT_SIZE) === DEFAULT_SEGMENT_SIZE
      ? []
      : [facts.options.segmentSize],
    // A folder's answer is a listing or a 404 by this; off (the default) adds nothing.
    ...(facts.options.listing ? ["listing", facts.options.listing.ttl] : []),
  ]);
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(shape));
  return `${format}-${toHex(new Uint8Array(digest)).slice(0, 16)}`;
}

/**
 * The JavaScript uploaded as the worker: `worker_template.ts` with its types
 * stripped by the runtime, so what runs is exactly what was type checked.
 *
 * @example What refresh uploads
 * ```ts ignore
 * const module = await loadWorkerModule();
 * ```
 */
export async function loadWorkerModule(): Promise<string> {
  const source = new TextDecoder().decode(await readBeside("./worker_template.ts"));
  return stripTypeScriptTypes(source, { mode: "transform" });
}

/**
 * A file shipped beside this module: read from disk when it runs from a path (or a
 * compiled binary), fetched when it runs from a URL (raw GitHub, JSR), where
 * `Deno.readFile` refuses anything but a file URL.
 */
async function readBeside(path: string): Promise<Uint8Array<ArrayBuffer>> {
  const url = new URL(path, import.meta.url);
  if (url.protocol === "file:") return await Deno.readFile(url);
  // Not through `send()`: this is part of loading the tool, like its own import (which
  // fetched the same URL a moment ago), with no Context yet and no API behind it.
  const response = await fetch(url);
  if (!response.ok) {
    await response.body?.cancel();
    throw new Error(
      `Cannot fetch ${url.href}, which ships with main.ts: it answered ${response.status}. ` +
        "Run main.ts from a URL that serves the whole repository, or from a clone.",
    );
  }
  return new Uint8Array(await response.arrayBuffer());
}

/**
 * The upload for these facts: the token only ever as a `secret_text` binding.
 * @internal
 */
export function workerUpload(module: string, facts: WorkerFacts): WorkerUpload {
  const { options } = facts;
  return {
    metadata: {
      main_module: MAIN_MODULE,
      compatibility_date: COMPATIBILITY_DATE,
      bindings: [
        secret("B2_DOWNLOAD_TOKEN", facts.downloadToken),
        plain("B2_DOWNLOAD_URL", facts.downloadUrl),
        plain("B2_BUCKET_NAME", facts.bucketName),
        plain("B2_FILE_PREFIX", facts.prefix),
        plain("B2_TOKEN_ISSUED_AT", isoSeconds(facts.issuedAt)),
        plain("B2_TOKEN_EXPIRES_AT", isoSeconds(facts.expiresAt)),
        plain("WORKER_URL_STYLE", options.urlStyle),
        plain("WORKER_INDEX_FILE", options.indexFile),
        plain("WORKER_CACHE_TTL", String(options.cacheTtl)),
        plain("WORKER_CACHE_CONTROL", options.cacheControl),
        plain("WORKER_CORS_ORIGINS", options.corsOrigins),
        plain("WORKER_ACTIVE_CONTENT", options.activeContent ?? "serve"),
        ...signingBindings(options.signing),
        plain("WORKER_CACHE_MODE", options.cacheMode),
        plain(
          "WORKER_STALE_WHILE_REVALIDATE",
          String(options.staleWhileRevalidate ?? DEFAULT_STALE_WHILE_REVALIDATE),
        ),
        plain("WORKER_STALE_IF_ERROR", String(options.staleIfError ?? DEFAULT_STALE_IF_ERROR)),
        plain("WORKER_SEGMENT_SIZE", String(options.segmentSize ?? DEFAULT_SEGMENT_SIZE)),
        ...(facts.purgeKey ? [secret("WORKER_PURGE_KEY", facts.purgeKey)] : []),
        ...(facts.fingerprint ? [plain("WORKER_FINGERPRINT", facts.fingerprint)] : []),
        ...(facts.purgePending ? [plain("WORKER_PURGE_PENDING", facts.purgePending)] : []),
        ...(facts.pinged ? [plain("REFRESH_PINGED", facts.pinged)] : []),
        ...(facts.eventSecret ? [secret(EVENT_SECRET_BINDING, facts.eventSecret)] : []),
        ...listingBindings(options.listing),
      ],
      cache_options: cacheOptionsFor(options.cacheMode),
    },
    module,
  };
}

/** A `plain_text` binding of the worker's {@linkcode Env}. */
function plain(name: BindingName, text: string): Binding {
  return { type: "plain_text", name, text };
}

/** A `secret_text` binding of the worker's {@linkcode Env}: never shown once set. */
function secret(name: BindingName, text: string): Binding {
  return { type: "secret_text", name, text };
}

/** The listing bindings: the key (and its id) only ever as `secret_text`. None when off. */
function listingBindings(listing: ListingOptions | undefined): Binding[] {
  if (!listing) return [];
  return [
    plain("WORKER_LISTING", "on"),
    plain("WORKER_LISTING_TTL", String(listing.ttl)),
    plain("B2_API_URL", listing.apiUrl),
    secret("B2_LISTING_KEY_ID", listing.keyId),
    secret("B2_LISTING_KEY", listing.key),
  ];
}

/** The signed-link bindings: the keys only ever as `secret_text`. None without signing. */
function signingBindings(signing: SigningOptions | undefined): Binding[] {
  if (!signing) return [];
  return [
    // Percent-encoded again, since the worker decodes what it reads exactly once.
    plain("WORKER_SIGNED_PREFIXES", signing.prefixes.map(encodePath).join(",")),
    plain("WORKER_SIGNED_MAX_TTL", String(signing.maxTtl)),
    secret("WORKER_SIGNING_KEY", signing.key),
    ...(signing.previousKey && signing.previousUntil !== undefined
      ? [
        secret("WORKER_SIGNING_KEY_PREVIOUS", signing.previousKey),
        plain("WORKER_SIGNING_KEY_PREVIOUS_UNTIL", isoSeconds(signing.previousUntil)),
      ]
      : []),
  ];
}

/** The metadata with secret values replaced, for printing. */
function maskSecrets(metadata: WorkerMetadata): WorkerMetadata {
  return {
    ...metadata,
    bindings: metadata.bindings.map((b) =>
      b.type === "secret_text" ? { ...b, text: "(secret, not shown)" } : b
    ),
  };
}

// ---------------------------------------------------------------------------
// Cloudflare
// ---------------------------------------------------------------------------

/** What Cloudflare's envelope says went wrong, with the fix; by error code. */
function cloudflareHint(status: number, code: number, config: CloudflareConfig): string {
  if (code === 10000 || code === 9109 || status === 401 || status === 403) {
    return "email" in config.auth
      ? "check CLOUDFLARE_EMAIL and CLOUDFLARE_API_KEY"
      : 'check CLOUDFLARE_API_TOKEN: it needs "Workers Scripts: Edit" on the account ' +
        '(and "Workers Routes: Edit" on the zone for WORKER_ROUTE), and CLOUDFLARE_ACCOUNT_ID';
  }
  if (code === 7003 || code === 7000) return "check CLOUDFLARE_ACCOUNT_ID and CLOUDFLARE_ZONE_ID";
  if (code === 10063) {
    return "this account has no workers.dev subdomain yet, which Cloudflare wants before a " +
      "first Worker is uploaded: open https://dash.cloudflare.com/" +
      `${config.accountId}/workers/onboarding once (it makes one), then run again`;
  }
  if (code === 10021) return "the worker was refused as uploaded; report this as a bug";
  if (status === 429) {
    return "Cloudflare is rate limiting (1200 requests per 5 minutes); run again later";
  }
  if (status >= 500) return "Cloudflare is having trouble; run again later";
  return "";
}

interface Envelope<T> {
  success: boolean;
  errors?: { code: number; message: string }[];
  result: T;
}

/**
 * The Cloudflare API for one account and worker, made once from the Cloudflare settings and
 * the context: each method is one endpoint, through {@linkcode send}, with the credentials set
 * once; a refusal is an {@linkcode ApiError} with Cloudflare's code, message and the fix.
 */
class CloudflareClient {
  readonly #auth: Record<string, string>;

  /** A client for `config`'s account and worker. */
  constructor(readonly config: CloudflareConfig, readonly ctx: Context) {
    this.#auth = "token" in config.auth
      ? { authorization: `Bearer ${config.auth.token}` }
      : { "x-auth-email": config.auth.email, "x-auth-key": config.auth.key };
  }

  /** `PUT .../workers/scripts/{name}`: code, configuration and secrets, in one call. */
  async uploadWorker(upload: WorkerUpload): Promise<void> {
    const { metadata, module } = upload;
    const form = new FormData();
    form.append("metadata", new Blob([JSON.stringify(metadata)], { type: "application/json" }));
    const type = "application/javascript+module";
    form.append(metadata.main_module, new Blob([module], { type }), metadata.main_module);
    await this.#call(`upload worker "${this.config.workerName}"`, {
      method: "PUT",
      path: this.#script(""),
      body: form,
    });
  }

  /** `GET .../workers/scripts/{name}/settings`; `undefined` when there is no such worker. */
  async workerSettings(): Promise<WorkerSettings | undefined> {
    try {
      const settings = await this.#call<
        { bindings?: WorkerSettings["bindings"]; cache_options?: CacheOptions }
      >(`read the settings of worker "${this.config.workerName}"`, {
        path: this.#script("/settings"),
      });
      const cacheOptions = settings.cache_options;
      return {
        bindings: settings.bindings ?? [],
        ...(typeof cacheOptions?.enabled === "boolean" && { cacheOptions }),
      };
    } catch (error) {
      if (error instanceof ApiError && error.code === "10007") return undefined;
      throw error;
    }
  }

  /**
   * `GET /user/tokens/verify`, or with `accountId` `GET /accounts/{id}/tokens/verify`: whether
   * the API token is active; needs no permission.
   */
  async verifyToken(options: { accountId?: string } = {}): Promise<{ status?: string }> {
    return await this.#call(
      options.accountId ? "verify the account's API token" : "verify the API token",
      {
        path: options.accountId
          ? `/accounts/${options.accountId}/tokens/verify`
          : "/user/tokens/verify",
      },
    );
  }

  /** `GET /accounts`, every page: the accounts the credential sees (an account's token: its own). */
  async listAccounts(): Promise<CloudflareAccount[]> {
    return await this.#list<CloudflareAccount>("list the accounts the token can see", "/accounts");
  }

  /** `GET /zones?name=`, within the account when it is known: the zone of that name, if seen. */
  async zonesNamed(name: string): Promise<CloudflareZone[]> {
    const query = new URLSearchParams({
      name,
      ...(this.config.accountId && { "account.id": this.config.accountId }),
    });
    return await this.#call<CloudflareZone[]>(`look up zone "${name}"`, {
      path: `/zones?${query}`,
    });
  }

  /** `GET /zones/{zone}/workers/routes` (needs "Workers Routes: Edit" on the zone). */
  async listRoutes(): Promise<ZoneRoute[]> {
    return await this.#call<ZoneRoute[]>("list the zone's routes", {
      path: `/zones/${this.config.zoneId}/workers/routes`,
    });
  }

  /** `POST /zones/{zone}/workers/routes`, or with `id` `PUT` (take over) that route. */
  async putRoute(options: { id?: string } = {}): Promise<void> {
    const { zoneId, route } = this.config;
    await this.#call(options.id ? `take over route "${route}"` : `create route "${route}"`, {
      method: options.id ? "PUT" : "POST",
      path: `/zones/${zoneId}/workers/routes${options.id ? `/${options.id}` : ""}`,
      json: { pattern: route, script: this.config.workerName },
    });
  }

  /** `DELETE /zones/{zone}/workers/routes/{id}`. */
  async deleteRoute(route: { id: string; pattern: string }): Promise<void> {
    await this.#call(`remove route "${route.pattern}"`, {
      method: "DELETE",
      path: `/zones/${this.config.zoneId}/workers/routes/${route.id}`,
    });
  }

  /** `GET /accounts/{id}/workers/scripts`: the account's Workers (needs Workers Scripts). */
  async listScripts(): Promise<{ id: string }[]> {
    return await this.#call<{ id: string }[]>("list the account's Workers", {
      path: `/accounts/${this.config.accountId}/workers/scripts`,
    });
  }

  /** `GET /accounts/{id}/workers/domains`: who holds a hostname, and what runs this worker. */
  async listDomains(): Promise<CustomDomain[]> {
    return await this.#call<CustomDomain[]>("list the custom domains", {
      path: `/accounts/${this.config.accountId}/workers/domains`,
    });
  }

  /** `PUT /accounts/{id}/workers/domains`: `WORKER_DOMAIN` runs the worker. */
  async attachDomain(options: { override: boolean }): Promise<void> {
    const { domain, workerName, zoneId, accountId } = this.config;
    await this.#call(`attach custom domain "${domain}"`, {
      method: "PUT",
      path: `/accounts/${accountId}/workers/domains`,
      json: {
        hostname: domain,
        service: workerName,
        zone_id: zoneId,
        ...(options.override && { override_existing_origin: true }),
      },
    });
  }

  /** `DELETE /accounts/{id}/workers/domains/{id}`. */
  async deleteDomain(domain: { id: string; hostname: string }): Promise<void> {
    await this.#call(`remove custom domain "${domain.hostname}"`, {
      method: "DELETE",
      path: `/accounts/${this.config.accountId}/workers/domains/${domain.id}`,
    });
  }

  /** `GET /zones/{zone}/dns_records?name=`: the zone's records named `hostname`. */
  async dnsRecords(hostname: string): Promise<DnsRecord[]> {
    return await this.#call<DnsRecord[]>(`read the DNS records of "${hostname}"`, {
      path: `/zones/${this.config.zoneId}/dns_records?name=${encodeURIComponent(hostname)}`,
    });
  }

  /** `DELETE /zones/{zone}/dns_records/{id}`. */
  async deleteDnsRecord(record: DnsRecord): Promise<void> {
    await this.#call(`delete DNS record ${describeRecord(record)}`, {
      method: "DELETE",
      path: `/zones/${this.config.zoneId}/dns_records/${record.id}`,
    });
  }

  /** The worker's workers.dev address; `undefined` when the account has no subdomain. */
  async workersDevAddress(): Promise<string | undefined> {
    const subdomain = await this.accountSubdomain();
    return subdomain && workersDevUrl(this.config, subdomain);
  }

  /** `GET /accounts/{id}/workers/subdomain`; `undefined` when it never chose one (10007). */
  async accountSubdomain(): Promise<string | undefined> {
    try {
      const answer = await this.#call<{ subdomain: string }>(
        "read the account's workers.dev subdomain",
        { path: `/accounts/${this.config.accountId}/workers/subdomain` },
      );
      return answer.subdomain || undefined;
    } catch (error) {
      if (error instanceof ApiError && error.code === "10007") return undefined;
      throw error;
    }
  }

  /** `POST .../workers/scripts/{name}/subdomain`: on or off at workers.dev; previews off. */
  async setWorkersDev(enabled: boolean): Promise<void> {
    await this.#call(`turn workers.dev ${enabled ? "on" : "off"}`, {
      method: "POST",
      path: this.#script("/subdomain"),
      headers: SCRIPT_API_DATE,
      json: { enabled, previews_enabled: false },
    });
  }

  /** `GET .../workers/scripts/{name}/subdomain`: whether it answers at workers.dev. */
  async workersDevEnabled(): Promise<boolean> {
    const state = await this.#call<{ enabled: boolean }>(
      "read the worker's workers.dev setting",
      { path: this.#script("/subdomain"), headers: SCRIPT_API_DATE },
    );
    return state.enabled;
  }

  /**
   * Every item of a list endpoint, page by page (from 1) until a page comes back short, which is
   * when `page * per_page` reaches `result_info.total_count` (workers-sdk `cfetch`).
   */
  async #list<T>(step: string, path: string): Promise<T[]> {
    const items: T[] = [];
    const join = path.includes("?") ? "&" : "?";
    for (let page = 1;; page++) {
      const batch = await this.#call<T[]>(step, {
        path: `${path}${join}page=${page}&per_page=${LIST_PAGE_SIZE}`,
      });
      items.push(...batch);
      if (batch.length < LIST_PAGE_SIZE) return items;
    }
  }

  /** The worker script's path, and `rest` after it. */
  #script(rest: string): string {
    return `/accounts/${this.config.accountId}/workers/scripts/${this.config.workerName}${rest}`;
  }

  /** One call, a GET unless said: credentials, envelope check, result or {@linkcode ApiError}. */
  async #call<T>(
    step: string,
    request: {
      method?: string;
      path: string;
      body?: BodyInit;
      json?: unknown;
      headers?: Record<string, string>;
    },
  ): Promise<T> {
    const headers = new Headers({ ...request.headers, ...this.#auth });
    let body = request.body;
    if (request.json !== undefined) {
      headers.set("content-type", "application/json");
      body = JSON.stringify(request.json);
    }
    const response = await send(this.ctx, {
      url: this.config.apiBaseUrl + request.path,
      init: { method: request.method ?? "GET", headers, body },
      service: "Cloudflare",
      step,
    });
    return await this.#result<T>(response, step);
  }

  /** The result of Cloudflare's envelope, or what it says went wrong as an {@linkcode ApiError}. */
  async #result<T>(response: Response, step: string): Promise<T> {
    const { json, received } = await readJson(response, {
      service: "Cloudflare",
      step,
      ctx: this.ctx,
    });
    const envelope = json as Envelope<T> | undefined;
    if (response.ok && envelope?.success) return envelope.result;
    const error = envelope?.errors?.[0];
    const code = error?.code ?? 0;
    const hint = cloudflareHint(response.status, code, this.config);
    throw new ApiError(
      `Cannot ${step}: Cloudflare answered ${response.status}` +
        (error
          ? ` error ${error.code}: ${error.message}`
          : envelope === undefined
          ? ` (${received})`
          : ""),
      {
        service: "Cloudflare",
        status: response.status,
        code: String(code),
        ...(error && { serverMessage: error.message }),
        ...(hint && { hint }),
      },
    );
  }
}

/** An account the credential can see, as `GET /accounts` lists it. */
interface CloudflareAccount {
  id: string;
  /** The name the dashboard shows. */
  name: string;
}

/** A zone, as `GET /zones` lists it; its name is the domain, such as `example.com`. */
interface CloudflareZone {
  id: string;
  name: string;
}

/** Items asked for a page of a list; Cloudflare's most (API_FACTS, Discovery). */
const LIST_PAGE_SIZE = 50;

/**
 * Verifies the API token, needing no permission, and says who owns it: a `user` (made under My
 * Profile) or an `account` (made under the account's API Tokens). `/user/tokens/verify` for a
 * user's token; a token that is not a user's gets 1000 there (wrangler's `whoami` reads it so),
 * and is then verified at `/accounts/{id}/tokens/verify` of the one account it sees (API_FACTS,
 * Discovery).
 */
async function verifyToken(cf: CloudflareClient): Promise<"user" | "account"> {
  // Cloudflare answered 200, and says the token is disabled or expired.
  const active = (answer: { status?: string }) => {
    if (answer.status === "active") return;
    throw new ApiError(
      `CLOUDFLARE_API_TOKEN is ${answer.status ?? "not active"}: make a new one (My Profile > ` +
        "API Tokens, or the account's API Tokens page) and set it.",
      { service: "Cloudflare", status: 200, code: "token_not_active" },
    );
  };
  let refused: ApiError;
  try {
    active(await cf.verifyToken());
    return "user";
  } catch (error) {
    if (!(error instanceof ApiError) || error.code !== "1000") throw error;
    refused = error;
  }
  const invalid = (answer: ApiError) =>
    new ApiError(
      "CLOUDFLARE_API_TOKEN is not a valid API token: Cloudflare verified it neither as a " +
        "user's token nor as an account's. Copy it again (it is shown once), or make a new one.",
      {
        service: "Cloudflare",
        status: answer.status,
        code: answer.code,
        serverMessage: answer.serverMessage,
      },
    );
  const accounts = await cf.listAccounts().catch((error) => {
    throw error instanceof ApiError && error.status < 500 ? invalid(error) : error;
  });
  const [account] = accounts;
  if (accounts.length !== 1 || !account) throw invalid(refused);
  try {
    active(await cf.verifyToken({ accountId: account.id }));
  } catch (error) {
    throw error instanceof ApiError && error.code === "1000" ? invalid(error) : error;
  }
  return "account";
}

/**
 * The zone of a route's or custom domain's host: each name of {@linkcode zoneCandidates} in
 * turn, first found wins, as wrangler walks them. `undefined` when none is visible: the
 * domain is elsewhere, or the token lacks "Zone: Read", which Cloudflare may answer with an
 * empty list rather than a refusal (API_FACTS, Discovery).
 */
async function findZone(cf: CloudflareClient, target: string): Promise<CloudflareZone | undefined> {
  for (const name of zoneCandidates(target)) {
    const [zone] = await cf.zonesNamed(name);
    if (zone) return zone;
  }
  return undefined;
}

/** Why no zone was found for `target`, and the two ways out. */
function noZone(config: CloudflareConfig, target: string): string {
  return `Cannot find the zone of "${target}" (tried ${zoneCandidates(target).join(", ")}` +
    `${config.accountId ? ` in account ${config.accountId}` : ""}): the domain is not on this ` +
    'account, or the token lacks "Zone: Read" (Zone > Zone > Read), without which Cloudflare ' +
    "lists no zone. Add that permission to the token, or set CLOUDFLARE_ZONE_ID (the " +
    "domain's Overview page, API section).";
}

/** Why no account was taken from those the token sees (none, or several: no guess). */
function noAccountTaken(accounts: CloudflareAccount[]): ConfigError {
  return new ConfigError([
    accounts.length === 0
      ? "CLOUDFLARE_ACCOUNT_ID is not set, and the token sees no account to take: set it " +
        `to the account that owns the worker (${DASHBOARD_HOST}/<account id>/...).`
      : `CLOUDFLARE_ACCOUNT_ID is not set, and the token sees ${accounts.length} accounts: ` +
        `set it to one of them (${describeAccounts(accounts)}), or run deno task init, ` +
        "which offers the choice.",
  ]);
}

/** The accounts, one a line, as a choice is offered: `name: id`. */
function describeAccounts(accounts: CloudflareAccount[]): string {
  return accounts.map((a) => `${a.name || "(no name)"}: ${a.id}`).join("; ");
}

/**
 * Fills in what the settings left out: the account, when the token sees exactly one, and the
 * zone of the route or custom domain, from its host. Runs before any other Cloudflare call, so
 * a missing id fails before anything is written. Returns `config` itself when nothing is missing.
 */
async function findCloudflareIds(
  config: CloudflareConfig,
  ctx: Context,
): Promise<CloudflareConfig> {
  const found = { ...config };
  if (!found.accountId) {
    const accounts = await new CloudflareClient(config, ctx).listAccounts();
    const [only] = accounts;
    if (accounts.length !== 1 || !only) throw noAccountTaken(accounts);
    found.accountId = only.id;
    ctx.log(`Cloudflare: account ${only.id} (${only.name}), the one the token sees`);
  }
  const target = found.route ?? found.domain;
  if (!found.zoneId && target) {
    const zone = await findZone(new CloudflareClient(found, ctx), target);
    if (!zone) throw new ConfigError([noZone(found, target)]);
    found.zoneId = zone.id;
    ctx.log(`Cloudflare: zone ${zone.name} is ${zone.id}`);
  }
  return found.accountId === config.accountId && found.zoneId === config.zoneId ? config : found;
}

/** What a route or domain step did. */
export type Change = "created" | "unchanged" | "taken over";

/** A route of the zone, as `GET /zones/{zone}/workers/routes` lists it. */
interface ZoneRoute {
  id: string;
  /** What requests it matches, such as `cdn.example.com/*`. */
  pattern: string;
  /** Absent or empty for a route that runs no Worker. */
  script?: string;
}

/** A custom domain of the account, as `GET /accounts/{id}/workers/domains` lists it. */
interface CustomDomain {
  id: string;
  /** The whole host name it answers on, such as `cdn.example.com`. */
  hostname: string;
  /** The name of the Worker script it runs. */
  service: string;
}

/** An ordinary DNS record, as `GET /zones/{zone}/dns_records` lists it. */
interface DnsRecord {
  id: string;
  name: string;
  type: string;
  content: string;
  proxied?: boolean;
}

/** A route or custom domain that runs this worker but is no longer configured. */
interface Leftover {
  /** Which API it is removed through (routes are per zone, custom domains per account). */
  kind: "route" | "custom domain";
  /** The route pattern or the hostname. */
  name: string;
  id: string;
}

/** The person-run command that opts in to moving a route or hostname to this worker. */
const TAKE_OVER_COMMAND =
  "deno run --allow-net --allow-env --allow-read main.ts refresh --take-over";

function describeRecord(record: DnsRecord): string {
  return `${record.type} ${record.name} -> ${record.content}` +
    (record.proxied ? " (proxied)" : "");
}

/**
 * Makes sure `config.route` runs the worker. A route that runs another Worker (or none) is left
 * alone unless `takeOver`, as wrangler does; the API itself would re-point it
 * (developers.cloudflare.com/api/resources/workers/subresources/routes/).
 */
async function ensureRoute(
  cf: CloudflareClient,
  options: { routes: ZoneRoute[]; takeOver: boolean },
): Promise<{ change: Change; from?: string }> {
  const { route, workerName } = cf.config;
  const existing = options.routes.find((r) => r.pattern === route);
  if (!existing) {
    await cf.putRoute();
    return { change: "created" };
  }
  if (existing.script === workerName) return { change: "unchanged" };
  const holder = existing.script ? `worker "${existing.script}"` : "no worker";
  if (!options.takeOver) {
    throw new RefusalError(
      `Cannot point route "${route}" at worker "${workerName}": it runs ${holder}, and ` +
        "this tool only changes a route another Worker holds when told to; it was left as " +
        `it is. To move it (${holder} stops serving ${route}), run once by hand: ` +
        `${TAKE_OVER_COMMAND}. Or set WORKER_ROUTE to a pattern no other Worker uses.`,
      "route_held",
    );
  }
  await cf.putRoute({ id: existing.id });
  return { change: "taken over", from: holder };
}

/**
 * The zone's A, AAAA and CNAME records named `hostname`, or `undefined` when
 * the token may not read DNS ("DNS: Read").
 */
async function conflictingRecords(
  cf: CloudflareClient,
  hostname: string,
): Promise<DnsRecord[] | undefined> {
  try {
    return (await cf.dnsRecords(hostname)).filter((r) => ["A", "AAAA", "CNAME"].includes(r.type));
  } catch (error) {
    if (error instanceof ApiError && (error.status === 403 || error.status === 401)) {
      return undefined;
    }
    throw error;
  }
}

/**
 * Makes sure `config.domain` is a custom domain of the worker (Cloudflare makes its DNS record
 * and certificate). Another Worker's hostname (409 100116) and a hostname with an ordinary DNS
 * record (409 100117) are only moved with `takeOver`: the first by `override_existing_origin`,
 * the second by deleting the record, which no flag replaces
 * (developers.cloudflare.com/workers/configuration/routing/custom-domains/).
 */
async function ensureDomain(
  cf: CloudflareClient,
  options: { domains: CustomDomain[]; takeOver: boolean },
): Promise<{ change: Change; from?: string; deleted?: string[] }> {
  const { zoneId, domain, workerName } = cf.config;
  if (!zoneId || !domain) throw new Error("ensureDomain needs zoneId and domain");
  const existing = options.domains.find((d) => d.hostname === domain);
  if (existing?.service === workerName) return { change: "unchanged" };
  const otherWorker = (holder: string) =>
    new RefusalError(
      `Cannot attach custom domain "${domain}" to worker "${workerName}": it is the custom ` +
        `domain of worker "${holder}" (Cloudflare error 100116), and this tool only moves ` +
        "another Worker's hostname when told to; it was left as it is. To move it (worker " +
        `"${holder}" stops serving it), run once by hand: ${TAKE_OVER_COMMAND} ` +
        "(it sends override_existing_origin).",
      "domain_held",
    );
  if (existing && !options.takeOver) throw otherWorker(existing.service);
  try {
    await cf.attachDomain({ override: existing !== undefined });
    return existing
      ? { change: "taken over", from: `worker "${existing.service}"` }
      : { change: "created" };
  } catch (error) {
    if (!(error instanceof ApiError) || error.status !== 409) throw error;
    if (error.code === "100116") {
      // Attached elsewhere since the list was read.
      const holder = (await cf.listDomains()).find((d) => d.hostname === domain);
      throw otherWorker(holder?.service ?? "(another Worker)");
    }
    if (error.code !== "100117") throw error;
  }
  const records = await conflictingRecords(cf, domain);
  const what = records
    ? `the DNS record${records.length === 1 ? "" : "s"} ${records.map(describeRecord).join(", ")}`
    : 'a DNS record (an A, AAAA or CNAME; CLOUDFLARE_API_TOKEN lacks "DNS: Read" on the ' +
      "zone, which would show it)";
  if (!options.takeOver) {
    throw new RefusalError(
      `Cannot attach custom domain "${domain}" to worker "${workerName}": the hostname has ` +
        `${what} (Cloudflare error 100117), which no setting overrides; it was left as it ` +
        "is. Either keep it and set WORKER_ROUTE=" + `${domain}/* instead of WORKER_DOMAIN ` +
        "(a proxied record plus a route moves the site with no DNS change), or run once by " +
        `hand: ${TAKE_OVER_COMMAND}, which deletes the record (the token needs "DNS: Edit" ` +
        "on the zone) and attaches the domain; its new certificate then takes a few minutes, " +
        `during which https://${domain}/ does not answer.`,
      "dns_record_in_the_way",
    );
  }
  const deleted = await deleteRecords(cf, { records, what });
  await cf.attachDomain({ override: existing !== undefined });
  return { change: "taken over", from: what, deleted };
}

/**
 * Deletes the DNS records that keep `config.domain` from becoming a custom domain (a take-over
 * the user asked for), and says which; `records` is undefined when the token could not read
 * them, which also means it cannot delete them.
 */
async function deleteRecords(
  cf: CloudflareClient,
  options: { records: DnsRecord[] | undefined; what: string },
): Promise<string[]> {
  const needEdit = new RefusalError(
    `Cannot take over "${cf.config.domain}": deleting ${options.what} needs "DNS: Edit" on the ` +
      "zone. Add it to CLOUDFLARE_API_TOKEN (or delete the record in the dashboard), then run " +
      `${TAKE_OVER_COMMAND} again.`,
    "dns_edit_needed",
  );
  if (!options.records) throw needEdit;
  const deleted: string[] = [];
  for (const record of options.records) {
    try {
      await cf.deleteDnsRecord(record);
    } catch (error) {
      if (error instanceof ApiError && error.status === 403) throw needEdit;
      throw error;
    }
    deleted.push(describeRecord(record));
  }
  return deleted;
}

/** The routes and custom domains that run this worker but are no longer configured. */
function findLeftovers(
  config: CloudflareConfig,
  found: { routes?: ZoneRoute[]; domains?: CustomDomain[] },
): Leftover[] {
  return [
    ...(found.routes ?? []).filter((r) =>
      r.script === config.workerName && r.pattern !== config.route
    ).map((r): Leftover => ({ kind: "route", name: r.pattern, id: r.id })),
    ...(found.domains ?? []).filter((d) =>
      d.service === config.workerName && d.hostname !== config.domain
    ).map((d): Leftover => ({ kind: "custom domain", name: d.hostname, id: d.id })),
  ];
}

/** Deletes a leftover route or custom domain (`--remove-leftovers`). */
async function removeLeftover(cf: CloudflareClient, leftover: Leftover): Promise<void> {
  if (leftover.kind === "route") await cf.deleteRoute({ id: leftover.id, pattern: leftover.name });
  else await cf.deleteDomain({ id: leftover.id, hostname: leftover.name });
}

/** Whether the worker answers on workers.dev, and where. */
interface WorkersDev {
  /** Whether it answers there, as `GET .../workers/scripts/{name}/subdomain` reports it. */
  enabled: boolean;
  /** `https://<worker>.<account subdomain>.workers.dev/`, when it answers there. */
  url?: string;
  /** Why it cannot be on although WORKER_WORKERS_DEV asks for it. */
  problem?: string;
}

/** Selects the current semantics of the script subdomain endpoint, as wrangler does. */
const SCRIPT_API_DATE = { "cloudflare-workers-script-api-date": "2025-08-01" };

/** Where the worker answers on workers.dev, given the account's subdomain. */
function workersDevUrl(config: CloudflareConfig, subdomain: string): string {
  return `https://${config.workerName}.${subdomain}.workers.dev/`;
}

function noSubdomain(config: CloudflareConfig): string {
  return "this Cloudflare account has no workers.dev subdomain, so the worker cannot answer " +
    "there. Choose one at https://dash.cloudflare.com/" +
    `${config.accountId}/workers/onboarding, or set WORKER_ROUTE or WORKER_DOMAIN ` +
    "(and WORKER_WORKERS_DEV=off)";
}

/**
 * Sets whether the worker answers at `<worker>.<subdomain>.workers.dev`, on
 * every deploy as wrangler does; preview URLs stay off
 * (developers.cloudflare.com/workers/configuration/routing/workers-dev/).
 */
async function applyWorkersDev(cf: CloudflareClient): Promise<WorkersDev> {
  const { config } = cf;
  const url = config.workersDev ? await cf.workersDevAddress() : undefined;
  if (config.workersDev && !url) return { enabled: false, problem: noSubdomain(config) };
  await cf.setWorkersDev(config.workersDev);
  return url ? { enabled: true, url } : { enabled: false };
}

/** Reads whether the deployed worker answers on workers.dev, for `status`. */
async function readWorkersDev(cf: CloudflareClient): Promise<WorkersDev> {
  const { config } = cf;
  if (!await cf.workersDevEnabled()) return { enabled: false };
  const url = await cf.workersDevAddress();
  return url ? { enabled: true, url } : { enabled: false, problem: noSubdomain(config) };
}

// ---------------------------------------------------------------------------
// Event notifications
// ---------------------------------------------------------------------------

/** The secret binding the worker verifies notifications with. */
const EVENT_SECRET_BINDING: BindingName = "B2_EVENT_NOTIFICATION_SECRET";
/** Fixed, so that every machine derives the same signing secret from the same configuration. */
const EVENT_SECRET_INFO = "b2-private-cdn event notifications v1";
const ALPHANUMERIC = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
/**
 * What changes an object as a visitor sees it: created or replaced, deleted, hidden
 * (backblaze.com/docs/cloud-storage-event-notifications-reference-guide, event types).
 */
const EVENT_TYPES = ["b2:HideMarkerCreated:*", "b2:ObjectCreated:*", "b2:ObjectDeleted:*"];
/** What the rule calls need (backblaze.com/apidocs/b2-get-bucket-notification-rules, -set-). */
const EVENT_CAPABILITIES = ["readBucketNotifications", "writeBucketNotifications"];
/** The guide: "To enable this feature, contact the Support team to request access." */
const EVENTS_GUIDE =
  "https://www.backblaze.com/docs/cloud-storage-event-notifications-reference-guide";

/** One Event Notification rule, as B2's two calls carry it. */
interface NotificationRule {
  /** 6-63 letters, digits and `-`, unique in the bucket. */
  name: string;
  /** Such as `b2:ObjectCreated:*`. */
  eventTypes: string[];
  /** Names under this prefix; `""` for all. */
  objectNamePrefix: string;
  isEnabled: boolean;
  /** 1-50. @default 1 */
  maxEventsPerBatch?: number;
  /** Where B2 POSTs, and what it signs with. */
  targetConfiguration: {
    targetType: string;
    url: string;
    /** 32 alphanumerics; a secret. */
    hmacSha256SigningSecret?: string;
    customHeaders?: { name: string; value: string }[] | null;
  };
  /** Read only: B2 stopped delivering (repeated failures). */
  isSuspended?: boolean;
  /** Read only: why, `""` when not suspended. */
  suspensionReason?: string;
}

/** What refresh did to the bucket's rule, and what status found. */
export type RuleChange = "created" | "updated" | "unchanged" | "removed";

/**
 * The signing secret B2 signs notifications with, HKDF-SHA256 of what the
 * purge key comes from (`WORKER_PURGE_KEY`, else `B2_APPLICATION_KEY`): 32
 * alphanumerics, as B2 requires. `urlKey` (16 hex) goes into the webhook's
 * URL, so a changed secret changes the rule, which B2 cannot be asked about.
 * @internal
 */
export async function deriveEventSecret(
  secret: string,
): Promise<{ secret: string; urlKey: string }> {
  const bits = await hkdf(secret, EVENT_SECRET_INFO, 40);
  // 256 is 4 × 62 + 8: the first 8 characters are a little likelier, 190 bits remain.
  const characters = Array.from(bits.subarray(0, 32), (byte) => ALPHANUMERIC[byte % 62]);
  return { secret: characters.join(""), urlKey: toHex(bits.subarray(32)) };
}

/** `b2cdn-<worker>`: B2 takes letters, digits and `-` (names starting `b2-` are reserved). */
function eventRuleName(workerName: string): string {
  return `b2cdn-${workerName.replaceAll("_", "-")}`.slice(0, 63);
}

/**
 * The rule this tool keeps: B2 POSTs to the worker's address, signed with the derived secret,
 * which joins `ctx.secrets`. A worker with no public address is a `ConfigError`.
 */
async function eventRule(
  config: Config,
  where: { ctx: Context; workersDev: string | false | undefined },
): Promise<NotificationRule> {
  const { ctx, workersDev } = where;
  const { domain, route } = config.cloudflare!;
  const base = workerAddress({ domain, route, workersDevUrl: workersDev || undefined });
  if (!base) {
    throw new ConfigError([
      "B2_EVENT_NOTIFICATIONS=on needs a public HTTPS address of the worker for B2 to call: " +
      "set WORKER_DOMAIN, a WORKER_ROUTE with one host, or WORKER_WORKERS_DEV=on.",
    ]);
  }
  const b2 = config.b2!;
  const derived = await deriveEventSecret(config.purgeSecret?.value ?? b2.applicationKey);
  ctx.secrets.add(derived.secret);
  return {
    name: eventRuleName(config.workerName),
    eventTypes: EVENT_TYPES,
    objectNamePrefix: b2.prefix,
    isEnabled: true,
    // B2's largest (50: a bulk upload costs 50 times fewer deliveries), except in cache-api
    // mode, where it is what one delivery's Cache API deletions cover (the worker's rule).
    maxEventsPerBatch: eventsPerBatch(config.worker.cacheMode),
    targetConfiguration: {
      targetType: "webhook",
      url: `${base}${EVENTS_PATH}?key=${derived.urlKey}`,
      hmacSha256SigningSecret: derived.secret,
      customHeaders: [],
    },
  };
}

/**
 * The rules to write back: every rule as B2 gave it but ours, replaced by `ours` (removed when
 * `undefined`); `undefined` when nothing would change. A rule of someone else's whose secret B2
 * gave masked cannot be written back unchanged, so that is refused rather than altered.
 */
function mergeEventRules(
  present: NotificationRule[],
  ours: NotificationRule | undefined,
  name: string,
): NotificationRule[] | undefined {
  const mine = present.find((rule) => rule.name === name);
  const others = present.filter((rule) => rule.name !== name);
  if (!ours && !mine) return undefined;
  if (ours && mine && !mine.isSuspended && sameRule(mine, ours)) return undefined;
  for (const rule of others) {
    const secret = rule.targetConfiguration?.hmacSha256SigningSecret;
    // Assumption: B2 answers a rule's secret as it was set (b2-sdk-python's integration test
    // compares set and get with it); a masked one would be lost by writing it back.
    if (secret && !/^[A-Za-z0-9]{32}$/.test(secret)) {
      throw new RefusalError(
        `Cannot change the bucket's Event Notification rules: B2 answered rule "${rule.name}" ` +
          "with its signing secret masked, and writing all rules back would change it. Add or " +
          `remove rule "${name}" by hand (b2 bucket notification-rule), or set ` +
          "B2_EVENT_NOTIFICATIONS=off.",
        "masked_secret",
      );
    }
  }
  if (ours) checkRoomFor(ours, others);
  // isSuspended and suspensionReason are read only: B2 ignores them on set.
  const kept = others.map(({ isSuspended: _s, suspensionReason: _r, ...rule }) => rule);
  return [...kept, ...(ours ? [ours] : [])].sort((a, b) => a.name < b.name ? -1 : 1);
}

/** B2's limit of rules a bucket (backblaze.com/apidocs/b2-set-bucket-notification-rules). */
const MAX_RULES = 25;

/**
 * Refuses, naming what to change, what B2's set call would: more than 25
 * rules, or a rule whose prefix overlaps ours (one starts with the other)
 * for an event type of ours (the reference guide: prefixes "may not overlap"
 * for the same event type; ours take whole groups, `b2:ObjectCreated:*`).
 */
function checkRoomFor(ours: NotificationRule, others: NotificationRule[]): void {
  const group = (type: string) => type.slice(0, type.lastIndexOf(":"));
  const groups = new Set(ours.eventTypes.map(group));
  const prefix = ours.objectNamePrefix;
  const clash = others.find((rule) =>
    (rule.objectNamePrefix.startsWith(prefix) || prefix.startsWith(rule.objectNamePrefix)) &&
    rule.eventTypes.some((type) => groups.has(group(type)))
  );
  if (clash) {
    throw new RefusalError(
      `Cannot add Event Notification rule "${ours.name}" (${ours.eventTypes.join(" ")} under ` +
        `"${prefix}"): rule "${clash.name}" (${clash.eventTypes.join(" ")} under ` +
        `"${clash.objectNamePrefix}") overlaps it, and B2 refuses two rules whose prefixes ` +
        `overlap for the same event type. Narrow rule "${clash.name}" to a prefix outside ` +
        `"${prefix}" or to other event types, or delete it (b2 bucket notification-rule ` +
        `update|delete b2://<bucket>/${clash.objectNamePrefix} ${clash.name}); or set ` +
        "B2_EVENT_NOTIFICATIONS=off.",
      "rule_overlap",
    );
  }
  if (others.length + 1 > MAX_RULES) {
    throw new RefusalError(
      `Cannot add Event Notification rule "${ours.name}": the bucket has ${others.length} ` +
        `other rules, and B2 takes at most ${MAX_RULES} a bucket. Delete one you no longer ` +
        "need (b2 bucket notification-rule delete b2://<bucket>/<prefix> <name>), or set " +
        "B2_EVENT_NOTIFICATIONS=off.",
      "too_many_rules",
    );
  }
}

/** Whether B2's copy of our rule is the one we would set (its secret is in its URL's key). */
function sameRule(present: NotificationRule, wanted: NotificationRule): boolean {
  const target = present.targetConfiguration;
  return present.isEnabled === wanted.isEnabled &&
    present.objectNamePrefix === wanted.objectNamePrefix &&
    [...present.eventTypes].sort().join() === [...wanted.eventTypes].sort().join() &&
    (present.maxEventsPerBatch ?? 1) === wanted.maxEventsPerBatch &&
    target?.targetType === "webhook" && target.url === wanted.targetConfiguration.url &&
    (target.customHeaders ?? []).length === 0;
}

/**
 * Refresh's step for `B2_EVENT_NOTIFICATIONS`: on, the bucket gets our rule (created, updated, or
 * left as it is); off, our rule is removed: when a previous deploy had it on, and whenever the key
 * may read the rules (`known`, from this run's authorize), since the worker is uploaded without the
 * secret before the removal, and a removal that failed once must be tried again. Other rules are
 * written back untouched. Runs after the upload: a failure is one of `result.failed`, so the run
 * exits 1 with the worker deployed, naming what to ask Backblaze for or what to add to the key.
 */
async function syncEventRule(
  config: Config,
  ctx: Context,
  options: {
    result: RefreshResult;
    previous: WorkerSettings | undefined;
    known?: Pick<PreparedWorker, "auth" | "bucket">;
  },
): Promise<void> {
  const { result, previous, known } = options;
  const on = config.worker.eventNotifications === true;
  const hadRule = previous?.bindings.some((b) => b.name === EVENT_SECRET_BINDING) ?? false;
  const mayRead = known?.auth.capabilities.includes("readBucketNotifications") ?? false;
  if (!on && !hadRule && !mayRead) return;
  try {
    const counted = countingRoundTrips(ctx, result);
    const change = await applyEventRule(config, counted, { result, hadRule, known });
    if (change === undefined) return;
    result.eventNotifications = change;
    ctx.log(`B2: Event Notification rule ${eventRuleName(config.workerName)} ${change}`);
  } catch (error) {
    if (!isOperationError(error) && !(error instanceof ConfigError)) throw error;
    (result.failed ??= []).push(`B2 Event Notifications: ${error.message}`);
  }
}

/**
 * Authorizes, checks the key, reads the rules and writes them back when ours
 * must change; `undefined` when off and there is no rule of ours to remove.
 */
async function applyEventRule(
  config: Config,
  ctx: Context,
  options: {
    result: RefreshResult;
    hadRule: boolean;
    known?: Pick<PreparedWorker, "auth" | "bucket">;
  },
): Promise<RuleChange | undefined> {
  const { result, hadRule } = options;
  const b2 = config.b2!;
  const on = config.worker.eventNotifications === true;
  const name = eventRuleName(config.workerName);
  // The refresh's own authorization when it made one (a kept upload did not).
  const client = new B2Client(b2, ctx, { auth: options.known?.auth });
  const auth = options.known?.auth ?? await client.authorize();
  const lacking = (wanted: string[]) => wanted.filter((c) => !auth.capabilities.includes(c));
  // Off, writing is needed only when there is a rule of ours to remove.
  const missing = lacking(on ? EVENT_CAPABILITIES : ["readBucketNotifications"]);
  if (missing.length > 0) throw missingCapabilities(b2, auth, { missing, on, name });
  const bucket = options.known?.bucket ?? await resolveBucket(client, b2);
  const present = await featureCall(auth, () => client.getNotificationRules(bucket))
    .catch((error) => {
      // Off with no deploy that had it on: an account without the feature has no rule of ours.
      const refused = error instanceof ApiError && (error.status === 400 || error.status === 403);
      if (!on && !hadRule && refused) return undefined;
      throw error;
    });
  const had = present?.some((rule) => rule.name === name) ?? false;
  if (!on && !had) return undefined;
  if (!on && lacking(EVENT_CAPABILITIES).length > 0) {
    throw missingCapabilities(b2, auth, { missing: lacking(EVENT_CAPABILITIES), on, name });
  }
  const ours = on ? await eventRule(config, { ctx, workersDev: result.workersDev }) : undefined;
  const rules = mergeEventRules(present!, ours, name);
  if (!rules) return on ? "unchanged" : "removed";
  await featureCall(auth, () => client.setNotificationRules(bucket, rules));
  return !on ? "removed" : had ? "updated" : "created";
}

function missingCapabilities(
  b2: B2Config,
  auth: B2Authorization,
  facts: { missing: string[]; on: boolean; name: string },
): RefusalError {
  const why = facts.on
    ? "which B2_EVENT_NOTIFICATIONS=on needs to keep the bucket's notification rule"
    : `which removing rule "${facts.name}" (B2_EVENT_NOTIFICATIONS is off) needs`;
  return new RefusalError(
    `The B2 key lacks ${facts.missing.join(" and ")}, ${why} (it has: ` +
      `${auth.capabilities.join(", ") || "none"}). Add them: ` +
      keyCreate(b2, `${SERVING_CAPABILITIES},${EVENT_CAPABILITIES.join(",")}`) +
      (facts.on ? "; or set B2_EVENT_NOTIFICATIONS=off." : "."),
    "missing_capability",
  );
}

/**
 * B2's refusals of the rules themselves, by the limits its set call documents
 * (backblaze.com/apidocs/b2-set-bucket-notification-rules). Assumption: B2's
 * message names the limit; the texts are not documented.
 */
const RULE_REFUSAL =
  /overlap|25 |unique|reserved|https|signing ?secret|hmacSha256SigningSecret|maxEventsPerBatch|event ?types?\b/i;

/**
 * A rule call, with B2's refusal of an account that lacks the feature turned into what to ask for.
 * Assumption: such an account gets a 400 or 403 whose code is not documented (a 400 has been
 * reported), so any 400 or 403 to a key that has the capabilities names the feature too, unless
 * B2's message is one of its refusals of the rules themselves ({@linkcode RULE_REFUSAL}).
 */
async function featureCall<T>(auth: B2Authorization, call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (error) {
    if (!(error instanceof ApiError) || (error.status !== 400 && error.status !== 403)) throw error;
    // B2Client's hint for a 400 is about the bucket settings, which B2 did take here.
    const refused = error.hint === B2_HINTS.bad_request ? error.problem : error.message;
    const problem = RULE_REFUSAL.test(error.serverMessage ?? "")
      ? `${sentence(refused)} B2 refused the bucket's rules as they would be: change the rule it ` +
        "names (b2 bucket notification-rule update|delete), or set B2_EVENT_NOTIFICATIONS=off."
      : `${sentence(error.message)} If the account does not have Event Notifications yet: B2 ` +
        `enables them per account on request, so ask Backblaze Support to enable Event ` +
        `Notifications for account ${auth.accountId} (${EVENTS_GUIDE}), then run refresh ` +
        "again; or set B2_EVENT_NOTIFICATIONS=off.";
    throw new ApiError(
      problem,
      { service: "B2", status: error.status, code: error.code, serverMessage: error.serverMessage },
    );
  }
}

/** What `status` found of the rule. */
export interface EventRuleReport {
  /** `b2cdn-<worker>`. */
  name: string;
  /** Whether the bucket has it. */
  present: boolean;
  /** As B2 reports it. */
  enabled?: boolean;
  /** As B2 reports it; B2 delivers nothing while it is. */
  suspended?: boolean;
  /** B2's `suspensionReason`. */
  suspensionReason?: string;
  /** Where B2 delivers. */
  url?: string;
}

/** The rule as B2 has it, for `status`; B2 may not be asked without the capability. */
async function readEventRule(config: Config, ctx: Context): Promise<EventRuleReport> {
  const b2 = config.b2!;
  const name = eventRuleName(config.workerName);
  const client = new B2Client(b2, ctx);
  const auth = await client.authorize();
  if (!auth.capabilities.includes("readBucketNotifications")) {
    throw missingCapabilities(b2, auth, { missing: ["readBucketNotifications"], on: true, name });
  }
  const bucket = await resolveBucket(client, b2);
  const rules = await featureCall(auth, () => client.getNotificationRules(bucket));
  const rule = rules.find((r) => r.name === name);
  if (!rule) return { name, present: false };
  return {
    name,
    present: true,
    enabled: rule.isEnabled,
    suspended: rule.isSuspended === true,
    ...(rule.suspensionReason && { suspensionReason: rule.suspensionReason }),
    url: rule.targetConfiguration.url,
  };
}

/**
 * `status` with `B2_EVENT_NOTIFICATIONS=on`: the rule joins the report; a suspended one is CRITICAL
 * with the fix, a missing or disabled one WARNING (the site works, uploads are only not purged). A
 * rule B2 cannot be asked about (B2 busy, a key without `readBucketNotifications`) makes an OK
 * report UNKNOWN: status cannot tell whether uploads are purged
 * (https://nagios-plugins.org/doc/guidelines.html, "Plugin Return Codes"). A WARNING or CRITICAL
 * stays: what it reports is known.
 */
async function eventRuleFindings(
  config: Config,
  ctx: Context,
  report: StatusReport,
): Promise<Finding[]> {
  const warnings = report.warnings ??= [];
  try {
    report.eventNotifications = await readEventRule(config, ctx);
  } catch (error) {
    if (!isOperationError(error) && !(error instanceof ConfigError)) throw error;
    const text = "cannot tell whether B2 delivers event notifications: cannot read the " +
      `Event Notification rule: ${error.message}`;
    return [{ state: "UNKNOWN", text }];
  }
  if (config.worker.cacheMode !== "workers-cache") {
    warnings.push(`event notifications: ${eventReach(config.worker.cacheMode)}`);
  }
  const text = eventRuleProblem(report.eventNotifications);
  if (!text) return [];
  return [{ state: report.eventNotifications.suspended ? "CRITICAL" : "WARNING", text }];
}

/** One line for a person: the rule and its state. */
function describeRuleState(rule: EventRuleReport): string {
  if (!rule.present) return `Event notifications: no rule "${rule.name}" on the bucket`;
  const state = rule.suspended ? "SUSPENDED" : rule.enabled ? "enabled" : "disabled";
  return `Event notifications: rule "${rule.name}" ${state}, delivering to ${rule.url}`;
}

/** The rule's problem for `status`: missing, disabled or suspended, with the fix; else none. */
function eventRuleProblem(report: EventRuleReport): string | undefined {
  if (!report.present) {
    return `the bucket has no Event Notification rule "${report.name}", so uploads purge ` +
      "nothing; run refresh";
  }
  if (report.suspended) {
    return `B2 suspended Event Notification rule "${report.name}"` +
      (report.suspensionReason ? ` (${report.suspensionReason})` : "") +
      ": uploads purge nothing until it is lifted. Check that the worker answers at " +
      `${report.url ?? "its webhook"}, then run refresh, which sets the rule again (or enable ` +
      "it in the B2 web console, Buckets > Event Notifications)";
  }
  if (!report.enabled) {
    return `Event Notification rule "${report.name}" is disabled, so uploads purge nothing; ` +
      "run refresh to enable it";
  }
  return undefined;
}

/**
 * How large objects are served, for status, render and `--dry-run`: which cache keeps their
 * segments and where that works (worker_template.ts, "Large objects").
 */
function describeSegments(mode: CacheMode | string, segmentSize: number): string {
  if (mode === "off") return "large objects are not cached either (the edge cache is off)";
  const limit = mode === "workers-cache"
    ? "over 512 MB, more than Workers Cache keeps whole"
    : "over 100 MiB, more than the Cache API keeps whole";
  if (segmentSize === 0) {
    return `large objects (${limit}) are served range by range from B2 ` +
      "(WORKER_SEGMENT_SIZE=0 turns segments off)";
  }
  const size = segmentSize % (1024 * 1024) === 0
    ? `${segmentSize / 1024 / 1024} MiB`
    : `${segmentSize / 1024} KiB`;
  if (mode === "workers-cache") {
    return `large objects (${limit}) are kept in ${size} segments in Workers Cache, on every ` +
      "address, and purged with their object";
  }
  return `large objects (${limit}) are kept in ${size} segments in the Cache API, in each ` +
    "data centre, on a route or custom domain only: on workers.dev every segment comes from B2";
}

/** The edge cache of a deployed version, in words, from its mode and `cache_options`. */
function describeCache(mode: string, options: CacheOptions | "unknown" | undefined): string {
  if (mode === "off") return "there is no edge cache (WORKER_CACHE_MODE=off)";
  if (mode === "cache-api") return "the edge cache is the Cache API, per data centre";
  if (options === undefined || options === "unknown") {
    return "the edge cache is Workers Cache (Cloudflare did not say whether this version has " +
      "it on)";
  }
  if (!options.enabled) return "the edge cache should be Workers Cache, but it is off";
  return options.cross_version_cache
    ? "the edge cache is Workers Cache, kept across refreshes"
    : "the edge cache is Workers Cache, started afresh at each refresh";
}

function capitalize(text: string): string {
  return text.charAt(0).toUpperCase() + text.slice(1);
}

/** What the webhook can reach in each cache mode, for status, render and --dry-run. */
function eventReach(mode: CacheMode): string {
  if (mode === "workers-cache") {
    return "a change purges the object's tag from Workers Cache everywhere";
  }
  if (mode === "cache-api") {
    return "the Cache API is per data centre: a change deletes the object's copy only in the " +
      "data centre that receives B2's POST; elsewhere copies stay until WORKER_CACHE_TTL runs out";
  }
  return "nothing is cached at the edge (WORKER_CACHE_MODE=off), so there is nothing to purge";
}

/** The rule refresh would set, for render and `--dry-run`; the secret is never shown. */
function describeEventRule(config: Config): string {
  if (!config.worker.eventNotifications) return "event notifications: off";
  const base = config.site ?? `https://${config.workerName}.<subdomain>.workers.dev`;
  const url = `${base}${EVENTS_PATH}?key=(derived)`;
  const batch = eventsPerBatch(config.worker.cacheMode);
  return `event notifications: rule ${eventRuleName(config.workerName)}, ` +
    `${EVENT_TYPES.join(" ")} under "${config.filePrefix ?? ""}", up to ${batch} ` +
    `events a POST to ${url}, signed with the derived secret (${EVENT_SECRET_BINDING}); ` +
    eventReach(config.worker.cacheMode);
}

// ---------------------------------------------------------------------------
// The refresh itself
// ---------------------------------------------------------------------------

/**
 * A worker ready to upload, and what it was made from.
 * @internal
 */
export interface PreparedWorker {
  /** The bucket the token reads. */
  bucket: Bucket;
  /** The name prefix the token covers. */
  prefix: string;
  /** When the token expires, milliseconds since the epoch. */
  expiresAt: number;
  /** What would be uploaded. */
  upload: WorkerUpload;
  /** What `upload` was made from, to make it again with other facts. */
  facts: WorkerFacts;
  /** Sequential API round trips so far. */
  roundTrips: number;
  /** The key's authorization: what it may do, and what later B2 calls of the run use. */
  auth: B2Authorization;
}

/**
 * Steps 1-4 of a refresh, which touch only B2: authorize, check the key,
 * resolve the bucket, get a download token, and build the upload.
 * @internal
 */
export async function prepareWorker(
  config: B2Config,
  worker: { module: string; options: WorkerOptions; purgeSecret?: string; pinged?: string },
  ctx: Context,
): Promise<PreparedWorker> {
  ctx.log(`B2: authorizing key ${firstFour(config.keyId)} at ${config.apiUrl}`);
  const b2 = new B2Client(config, ctx);
  const auth = await b2.authorize();
  checkKey(auth, config);
  const listed = !(config.bucketName && config.bucketId) &&
    !auth.buckets?.some((b) =>
      b.name && (b.name === config.bucketName || b.id === config.bucketId)
    );
  const bucket = await resolveBucket(b2, config);
  ctx.log(`B2: bucket "${bucket.name}" is ${bucket.id}${listed ? " (b2_list_buckets)" : ""}`);
  const issuedAt = ctx.now();
  const downloadToken = await downloadTokenFor(b2, { bucket, listing: worker.options.listing });
  // Counted from before the request, so the recorded expiry is never late.
  const expiresAt = issuedAt + config.tokenTtl * 1000;
  ctx.log(
    `B2: download token for "${config.prefix}" valid ${formatDuration(config.tokenTtl)}, ` +
      `until ${isoSeconds(expiresAt)}`,
  );
  const facts = await preparedFacts(worker, {
    downloadToken,
    downloadUrl: auth.downloadUrl,
    bucketName: bucket.name,
    prefix: config.prefix,
    issuedAt,
    expiresAt,
    secrets: ctx.secrets,
  });
  return {
    bucket,
    prefix: config.prefix,
    expiresAt,
    roundTrips: listed ? 3 : 2,
    auth,
    facts,
    upload: workerUpload(worker.module, facts),
  };
}

/**
 * The download token for the bucket and prefix. Alongside it (no extra round trip): the listing
 * key is authorized where the worker will (B2_API_URL), and, when both the bucket's name and id
 * are given and the key does not vouch for the pair, the name is checked against the id, so a
 * mismatch never reaches the worker, where every download would fail.
 */
async function downloadTokenFor(
  b2: B2Client,
  wanted: { bucket: Bucket; listing: ListingOptions | undefined },
): Promise<string> {
  const { config, auth, ctx } = b2;
  const { bucketName, bucketId, prefix } = config;
  const { bucket, listing } = wanted;
  const unchecked = bucketName !== undefined && bucketId !== undefined &&
    !auth.buckets?.some((b) => b.id === bucketId && b.name === bucketName) &&
    auth.capabilities.includes("listBuckets");
  const [downloadToken, byId] = await Promise.all([
    b2.getDownloadAuthorization({ bucket, prefix, validSeconds: config.tokenTtl }),
    unchecked ? resolveBucket(b2, { bucketId }) : undefined,
    listing && checkListingKey(b2, { listing, bucket, prefix }),
  ]);
  if (listing) {
    ctx.log(`B2: listing key ${firstFour(listing.keyId)} can only list "${bucket.name}/${prefix}"`);
  }
  if (byId && byId.name !== bucketName) {
    throw new ConfigError([
      `B2_BUCKET_ID "${bucketId}" is bucket "${byId.name}", not B2_BUCKET_NAME "${bucketName}": ` +
      "set the two of one bucket, or only one of them.",
    ]);
  }
  return downloadToken;
}

/** What the upload is made from: B2's answers, the options, and the keys derived for the worker. */
async function preparedFacts(
  worker: { module: string; options: WorkerOptions; purgeSecret?: string; pinged?: string },
  fromB2: Omit<WorkerFacts, "options"> & { secrets: Set<string> },
): Promise<WorkerFacts> {
  const { secrets, ...got } = fromB2;
  const facts: WorkerFacts = {
    ...got,
    options: worker.options,
    ...(worker.pinged && { pinged: worker.pinged }),
    fingerprint: await servingFingerprint(worker.module, {
      bucketName: got.bucketName,
      prefix: got.prefix,
      options: worker.options,
    }),
  };
  if (worker.purgeSecret) {
    facts.purgeKey = await derivePurgeKey(worker.purgeSecret);
    secrets.add(facts.purgeKey);
    if (worker.options.eventNotifications) {
      facts.eventSecret = (await deriveEventSecret(worker.purgeSecret)).secret;
      secrets.add(facts.eventSecret);
    }
  }
  return facts;
}

/** What a refresh did, as printed by `--json`. */
export interface RefreshResult {
  /** The worker script's name. */
  worker: string;
  /** The bucket served. */
  bucket: string;
  /** The name prefix served. */
  prefix: string;
  /** When the new token expires, ISO 8601. */
  expiresAt: string;
  /** Whether the worker was uploaded (false for `--dry-run`). */
  deployed: boolean;
  /** What happened to the route, when one is configured. */
  route?: Change;
  /** What happened to the custom domain, when one is configured. */
  domain?: Change;
  /** The workers.dev URL when the worker answers there, else `false`. */
  workersDev?: string | false;
  /** What `--take-over` and `--remove-leftovers` changed, in words. */
  changed?: string[];
  /** Routes and custom domains that run the worker but are no longer configured. */
  leftovers?: string[];
  /** Worth a look, but the run did its job. */
  warnings?: string[];
  /** Steps after the upload that failed; the run exits 1. */
  failed?: string[];
  /** When a scheduled retry found this upload fresh and only redid the steps after it. */
  reusedUpload?: string;
  /** The URL that answered 2xx after deploying. */
  verified?: string;
  /** API requests made. */
  roundTrips: number;
  /** The edge cache in force. */
  cacheMode: CacheMode;
  /** Bytes of one segment of a large object, 0 for off (`WORKER_SEGMENT_SIZE`). */
  segmentSize?: number;
  /** Why everything cached was purged, when it was. */
  purged?: string;
  /** What the user should know but the run could not do. */
  notice?: string;
  /** What happened to the bucket's Event Notification rule (`B2_EVENT_NOTIFICATIONS`). */
  eventNotifications?: RuleChange;
  /** `--dry-run`: what a real run would do on Cloudflare, as read now. */
  plan?: DeployPlan;
}

/** How long `--verify` keeps trying while the deploy propagates. */
const VERIFY_ATTEMPTS = 6;
const VERIFY_PAUSE_MS = 5_000;
/**
 * A new custom domain's certificate takes minutes
 * (developers.cloudflare.com/workers/configuration/routing/custom-domains/).
 */
const CERTIFICATE_WAIT_MS = 10 * 60_000;
const CERTIFICATE_PAUSE_MS = 15_000;
/**
 * A scheduled run that finds the deployed token issued this recently does
 * not upload again: it is a retry of a run whose upload worked (the cron
 * backoff retries within 21 minutes), so only the steps after it are redone.
 */
const RECENT_UPLOAD_MS = 60 * 60_000;

/**
 * The upload worked but a step after it (route, custom domain, workers.dev,
 * leftovers) did not: the site keeps working on the new token where it was
 * already reached. Exit code 1; `result` says what was deployed.
 */
class IncompleteDeployError extends Error {
  constructor(readonly result: RefreshResult) {
    const failed = result.failed ?? [];
    super(
      (result.reusedUpload
        ? `Worker "${result.worker}" was uploaded at ${result.reusedUpload} with a token valid `
        : `Worker "${result.worker}" is deployed with a new download token, valid `) +
        `until ${result.expiresAt}: the site keeps working wherever it already reaches this ` +
        `worker. But ${failed.length === 1 ? "a step" : `${failed.length} steps`} after the ` +
        `upload failed:\n  - ${failed.join("\n  - ")}\nFix that, then run refresh again; ` +
        "scheduled runs (cron, Deno Deploy) retry only these steps while the upload is fresh.",
    );
    this.name = "IncompleteDeployError";
  }
}

/** What a refresh may do besides the upload. */
export interface RefreshOptions {
  /** The worker's JavaScript, as {@linkcode loadWorkerModule} gives it. */
  module: string;
  /** Do the B2 steps, ask Cloudflare read-only and return the upload and the plan (`--dry-run`). */
  dryRun?: boolean;
  /** Move a route, custom domain or DNS record held by something else (person-run only). */
  takeOver?: boolean;
  /** Delete routes and custom domains that run the worker but are not configured. */
  removeLeftovers?: boolean;
  /**
   * A scheduled run: never takes over nor removes anything, and does not
   * upload again when the deployed token is less than an hour old.
   */
  unattended?: boolean;
  /** Progress a person should see without `--verbose` (the certificate wait). @default ctx.log */
  progress?: (line: string) => void;
  /** The run's dead man's switch, as the `REFRESH_PINGED` binding records it for `status`. */
  pinged?: string;
}

/**
 * The whole job: prepare the worker from B2, then upload it, then the route,
 * domain and workers.dev steps, then verify. Nothing is uploaded unless every
 * B2 step worked, so a failed run leaves the deployed worker, still valid for
 * days, as it was. A step after the upload that fails throws
 * {@linkcode IncompleteDeployError}, which carries the result.
 *
 * @example Renew the token and deploy
 * ```ts ignore
 * const config = parseConfig(Deno.env.toObject(), { b2: true, cloudflare: true });
 * const result = await refresh(config, defaultContext(), { module: await loadWorkerModule() });
 * console.log(`token valid until ${result.expiresAt}`);
 * ```
 */
export async function refresh(
  config: Config,
  ctx: Context,
  options: RefreshOptions,
): Promise<RefreshResult & { upload?: WorkerUpload }> {
  const b2 = config.b2;
  if (!b2 || !config.cloudflare) throw new Error("refresh needs B2 and Cloudflare settings");
  // Before B2 is asked: an id that cannot be found fails before anything is written.
  const cloudflare = await findCloudflareIds(config.cloudflare, ctx);
  if (cloudflare !== config.cloudflare) config = { ...config, cloudflare };
  const takeOver = !options.unattended && (options.takeOver ?? false);
  const removeLeftovers = !options.unattended && (options.removeLeftovers ?? false);
  const signedReadings = config.worker.signing?.readings ?? [];
  if (signedReadings.length > 0) ctx.log(`Signed links: ${signedReadings.join("; ")}`);
  // What the deployed version serves, whether it owes a purge and when it was uploaded. A
  // person's run asks alongside B2's authorize, which adds a request but no round trip; a
  // scheduled run asks first, since an upload moments old means B2 is not asked at all.
  const cf = new CloudflareClient(cloudflare, ctx);
  const deployed = options.dryRun ? undefined : cf.workerSettings();
  // Its failure is thrown where it is awaited, not left unhandled meanwhile.
  deployed?.catch(() => {});
  const kept = options.unattended && deployed ? keptUpload(config, ctx, await deployed) : undefined;
  let result: RefreshResult & { upload?: WorkerUpload };
  let upload: Uploaded | undefined;
  let prepared: PreparedWorker | undefined;
  if (kept) result = kept;
  else {
    // Prepare the worker from B2: nothing is uploaded unless every B2 step worked.
    prepared = await prepareWorker(b2, {
      module: options.module,
      options: config.worker,
      ...(config.purgeSecret && { purgeSecret: config.purgeSecret.value }),
      ...(options.pinged && { pinged: options.pinged }),
    }, ctx);
    result = preparedResult(config, { prepared, unattended: options.unattended ?? false });
    if (options.dryRun) {
      result.plan = await planDeploy(config, ctx, prepared);
      return result;
    }
    upload = await uploadPrepared(config, ctx, {
      cf,
      module: options.module,
      prepared,
      previous: await deployed!,
      result,
    });
  }
  const newDomain = await deployTriggers(cf, result, { takeOver, removeLeftovers });
  await syncEventRule(config, ctx, { result, previous: await deployed!, known: prepared });
  if (result.failed) throw new IncompleteDeployError(result);
  if (config.verifyUrl) {
    await verifyDeploy(config, ctx, { result, newDomain, progress: options.progress ?? ctx.log });
  }
  if (upload?.notice) result.notice = upload.notice;
  // Once the route and domain lead to the new version: the purge is asked of the worker there.
  await upload?.paid?.();
  return result;
}

/** A refresh's result once B2 has given the token, before anything is uploaded. */
function preparedResult(
  config: Config,
  options: { prepared: PreparedWorker; unattended: boolean },
): RefreshResult & { upload?: WorkerUpload } {
  const { prepared } = options;
  return {
    worker: config.cloudflare!.workerName,
    bucket: prepared.bucket.name,
    prefix: prepared.prefix,
    expiresAt: isoSeconds(prepared.expiresAt),
    deployed: false,
    roundTrips: prepared.roundTrips + (options.unattended ? 1 : 0),
    cacheMode: config.worker.cacheMode,
    segmentSize: config.worker.segmentSize ?? DEFAULT_SEGMENT_SIZE,
    upload: prepared.upload,
  };
}

/** What `--dry-run` found on Cloudflare, asked read-only: each step, and what would fail. */
export interface DeployPlan {
  /** What a real run would create, change or leave, one line a step. */
  steps: string[];
  /** What a real run would meet and fail on, each with its fix; the dry run then exits 1. */
  problems: string[];
}

/**
 * Asks Cloudflare, read-only, what a real run would need: the token, the worker's current
 * settings, the route or custom domain and workers.dev. Writes nothing; each read that fails
 * (a permission the token lacks) is a problem, and the other reads still run.
 */
async function planDeploy(
  config: Config,
  ctx: Context,
  prepared: Pick<PreparedWorker, "facts" | "expiresAt">,
): Promise<DeployPlan> {
  const cf = config.cloudflare!;
  const client = new CloudflareClient(cf, ctx);
  const plan: DeployPlan = { steps: [], problems: [] };
  const read = stepRunner(plan.problems);
  const { scripts, routes: routesGroup } = permissionGroups(cf);
  if ("token" in cf.auth) {
    const token = await read(() => verifyToken(client));
    if (token) {
      plan.steps.push(`API token: valid, ${token === "user" ? "a user's" : "the account's"}`);
    }
  }
  const settings = await read(async () => ({ deployed: await client.workerSettings() }), scripts);
  if (settings) {
    const purge = settings.deployed && purgeNeeded(settings.deployed, prepared.facts);
    plan.steps.push(
      `worker "${cf.workerName}" in account ${cf.accountId}: ` +
        (settings.deployed ? "would be uploaded again" : "would be created") +
        ` with a token valid until ${isoSeconds(prepared.expiresAt)}` +
        (purge && config.worker.cacheMode === "workers-cache"
          ? `, and Workers Cache purged: ${purge}`
          : ""),
    );
  }
  const routes = cf.zoneId ? await read(() => client.listRoutes(), routesGroup) : undefined;
  const domains = cf.zoneId || cf.domain
    ? await read(() => client.listDomains(), scripts)
    : undefined;
  if (cf.route && routes) planRoute(cf, routes, plan);
  if (cf.domain && domains) await planDomain(client, { domains, plan });
  for (const leftover of findLeftovers(cf, { routes, domains })) {
    plan.steps.push(
      `${leftover.kind} ${leftover.name}: left running this worker, though no setting names it ` +
        "(refresh --remove-leftovers deletes it)",
    );
  }
  if (!cf.workersDev) plan.steps.push("workers.dev: would be off");
  else {
    const found = await read(async () => ({ subdomain: await client.accountSubdomain() }));
    if (found?.subdomain) {
      plan.steps.push(`workers.dev: would answer at ${workersDevUrl(cf, found.subdomain)}`);
    } else if (found) plan.problems.push(`WORKER_WORKERS_DEV: ${noSubdomain(cf)}`);
  }
  return plan;
}

/**
 * Runs a step that may fail: its answer, or `undefined` with the failure among `failures` (the
 * dry run's problems, a refresh's failed steps). A read Cloudflare refuses names the permission
 * group `group` whose lack it shows, as init does.
 */
function stepRunner(failures: string[]) {
  return async <T>(work: () => Promise<T>, group?: PermissionGroup): Promise<T | undefined> => {
    try {
      return await work();
    } catch (error) {
      if (!isOperationError(error)) throw error;
      failures.push((group && refusedPermission(error, group)) ?? error.message);
      return undefined;
    }
  };
}

/** A permission group a read needs, and where: named when Cloudflare refuses the read. */
interface PermissionGroup {
  name: string;
  on: string;
}

/**
 * The permission groups a refresh needs, each where it applies: what the dry run and init name
 * when a read is refused (developers.cloudflare.com/fundamentals/api/reference/permissions/).
 */
function permissionGroups(cf: CloudflareConfig): Record<"scripts" | "routes", PermissionGroup> {
  return {
    scripts: { name: "Account > Workers Scripts > Edit", on: `account ${cf.accountId}` },
    routes: { name: "Zone > Workers Routes > Edit", on: `zone ${cf.zoneId}` },
  };
}

/** What `group`'s lack is when `error` is Cloudflare refusing a read (401, 403), else nothing. */
function refusedPermission(error: unknown, group: PermissionGroup): string | undefined {
  if (!(error instanceof ApiError) || ![401, 403].includes(error.status)) return undefined;
  return `The Cloudflare token lacks "${group.name}" on ${group.on} (Cloudflare answered ` +
    `${error.status} to a read): add it under My Profile > API Tokens > Edit (or the account's ` +
    "API Tokens page for an account's token).";
}

/** The route step, as a real run would take it. */
function planRoute(cf: CloudflareConfig, routes: ZoneRoute[], plan: DeployPlan): void {
  const existing = routes.find((r) => r.pattern === cf.route);
  if (!existing) plan.steps.push(`route ${cf.route}: would be created`);
  else if (existing.script === cf.workerName) {
    plan.steps.push(`route ${cf.route}: runs this worker already`);
  } else {
    plan.problems.push(
      `route ${cf.route} runs ${existing.script ? `worker "${existing.script}"` : "no worker"}: ` +
        `a real run leaves it so and fails this step; ${TAKE_OVER_COMMAND} moves it to this worker`,
    );
  }
}

/** The custom domain step, as a real run would take it, DNS records read when the token may. */
async function planDomain(
  client: CloudflareClient,
  options: { domains: CustomDomain[]; plan: DeployPlan },
): Promise<void> {
  const cf = client.config;
  const { plan } = options;
  const existing = options.domains.find((d) => d.hostname === cf.domain);
  if (existing?.service === cf.workerName) {
    plan.steps.push(`custom domain ${cf.domain}: this worker's already`);
    return;
  }
  if (existing) {
    plan.problems.push(
      `custom domain ${cf.domain} is worker "${existing.service}"'s: a real run leaves it so and ` +
        `fails this step; ${TAKE_OVER_COMMAND} moves it to this worker`,
    );
    return;
  }
  const records = await conflictingRecords(client, cf.domain!);
  if (records && records.length > 0) {
    plan.problems.push(
      `custom domain ${cf.domain} has the DNS record${records.length === 1 ? "" : "s"} ` +
        `${records.map(describeRecord).join(", ")} (Cloudflare refuses the domain then, 100117): ` +
        `set WORKER_ROUTE=${cf.domain}/* instead, or ${TAKE_OVER_COMMAND} deletes the record`,
    );
    return;
  }
  const unknown = ' (whether a DNS record is in the way is unknown: the token lacks "DNS: Read")';
  plan.steps.push(
    `custom domain ${cf.domain}: would be attached; Cloudflare makes its DNS record and ` +
      `certificate, which takes a few minutes${records ? "" : unknown}`,
  );
}

/** A scheduled retry's result, B2 not asked, when the upload is recent and owes no purge. */
function keptUpload(
  config: Config,
  ctx: Context,
  deployed: WorkerSettings | undefined,
): RefreshResult | undefined {
  const read = (name: BindingName) => plainBinding(deployed, name);
  const issued = Date.parse(read("B2_TOKEN_ISSUED_AT") ?? "");
  const expires = Date.parse(read("B2_TOKEN_EXPIRES_AT") ?? "");
  const age = ctx.now() - issued;
  if (Number.isNaN(issued) || Number.isNaN(expires) || age < 0 || age > RECENT_UPLOAD_MS) {
    return undefined;
  }
  if (read("WORKER_PURGE_PENDING")) return undefined;
  const workerName = config.cloudflare!.workerName;
  ctx.log(
    `Cloudflare: worker "${workerName}" was uploaded at ${isoSeconds(issued)}; ` +
      "not uploading again, only redoing the steps after the upload",
  );
  return {
    worker: workerName,
    bucket: read("B2_BUCKET_NAME") ?? "",
    prefix: read("B2_FILE_PREFIX") ?? "",
    expiresAt: isoSeconds(expires),
    deployed: false,
    reusedUpload: isoSeconds(issued),
    roundTrips: 1,
    cacheMode: config.worker.cacheMode,
  };
}

/** What {@linkcode uploadPrepared} leaves for the end of the refresh. */
interface Uploaded {
  /** What the change leaves cached that this tool cannot purge (the Cache API's copies). */
  notice?: string;
  /** Purges through the new version and uploads again without the debt; run last. */
  paid?: () => Promise<void>;
}

/**
 * Uploads the prepared worker. When the change owes a purge of Workers Cache,
 * the debt is uploaded with it, so that a run that dies half way still owes it.
 */
async function uploadPrepared(
  config: Config,
  ctx: Context,
  options: {
    cf: CloudflareClient;
    module: string;
    prepared: PreparedWorker;
    previous: WorkerSettings | undefined;
    result: RefreshResult;
  },
): Promise<Uploaded> {
  const { cf, prepared, result } = options;
  const cloudflare = config.cloudflare!;
  const purge = purgeNeeded(options.previous, prepared.facts);
  const mustPurge = purge !== undefined && config.worker.cacheMode === "workers-cache";
  // Remembered before the purge is tried, so that a run that dies half way still owes it.
  const upload = mustPurge
    ? workerUpload(options.module, { ...prepared.facts, purgePending: "all" })
    : prepared.upload;
  ctx.log(
    `Cloudflare: uploading worker "${cloudflare.workerName}" to account ` +
      `${cloudflare.accountId} (cache: ${config.worker.cacheMode})`,
  );
  await cf.uploadWorker(upload);
  result.deployed = true;
  result.roundTrips++;
  if (purge !== undefined && config.worker.cacheMode === "cache-api") {
    return {
      notice: `${purge}: copies kept with the Cache API stay until WORKER_CACHE_TTL runs out ` +
        "(this tool cannot purge them; see docs/edge-cache.md, Purge)",
    };
  }
  if (!mustPurge) return {};
  return {
    paid: async () => {
      await purgeOnceNewVersionAnswers(config, ctx, { facts: prepared.facts, why: purge });
      // The debt is paid: the same upload without it.
      await cf.uploadWorker(prepared.upload);
      result.roundTrips++;
      result.purged = purge;
    },
  };
}

/** `--verify`: the URL answers 2xx, or, behind a brand-new custom domain, a warning. */
async function verifyDeploy(
  config: Config,
  ctx: Context,
  options: { result: RefreshResult; newDomain: boolean; progress: (line: string) => void },
): Promise<void> {
  const url = config.verifyUrl!;
  const domain = config.cloudflare!.domain;
  const waitForCertificate = options.newDomain && URL.canParse(url) &&
    new URL(url).hostname === domain;
  const outcome = await verify(url, ctx, { waitForCertificate, progress: options.progress });
  if (outcome === "verified") options.result.verified = url;
  else {
    (options.result.warnings ??= []).push(
      `${url} does not answer yet: the certificate of the new custom domain ` +
        `"${domain}" is still being issued (this can take a while longer). The ` +
        `worker is deployed; try the URL again in a few minutes.`,
    );
  }
}

/** The bindings and cache setting of a deployed worker, as Cloudflare reports them. */
interface WorkerSettings {
  /** As `GET .../workers/scripts/{name}/settings` lists them; secrets come without `text`. */
  bindings: { name: string; type: string; text?: string }[];
  /** Absent when Cloudflare does not report it (its docs do not say it always is: unknown, not a failure). */
  cacheOptions?: CacheOptions;
}

/** The text of the deployed worker's plain-text binding `name`, the facts refresh left there. */
function plainBinding(settings: WorkerSettings | undefined, name: BindingName): string | undefined {
  return settings?.bindings.find((b) => b.name === name && b.type === "plain_text")?.text;
}

/**
 * Why everything cached must go, or `undefined`: the deployed version serves with another
 * fingerprint, or owes a purge. A first deploy, or one made before fingerprints existed (when only
 * the Cache API was used), has nothing in Workers Cache.
 */
function purgeNeeded(
  previous: WorkerSettings | undefined,
  next: Pick<WorkerFacts, "fingerprint">,
): string | undefined {
  const read = (name: BindingName) => plainBinding(previous, name);
  if (read("WORKER_PURGE_PENDING")) return "a purge of an earlier refresh is still owed";
  const fingerprint = read("WORKER_FINGERPRINT");
  if (!fingerprint || fingerprint === next.fingerprint) return undefined;
  return "what the site serves changed (bucket, prefix, URL style, index file, " +
    "browser cache policy, CORS origins, cache mode or answer format)";
}

/**
 * Purges everything once the new version is the one answering: the signed
 * request names the new fingerprint, and an older version refuses it
 * without purging. Tried while the deploy spreads, like `--verify`.
 */
async function purgeOnceNewVersionAnswers(
  config: Config,
  ctx: Context,
  options: { facts: WorkerFacts; why: string },
): Promise<void> {
  const { fingerprint, purgeKey } = options.facts;
  const remembered = "The worker is deployed and remembers the purge: the next refresh " +
    "tries again (or run `deno run --allow-net --allow-env --allow-read main.ts purge --all`).";
  if (!purgeKey) {
    throw new ConfigError([
      `Cannot purge: ${options.why}, but there is no purge key. Set WORKER_PURGE_KEY or ` +
      `B2_APPLICATION_KEY. ${remembered}`,
    ]);
  }
  const url = await purgeUrl(config, ctx);
  let last = { message: "", status: 0 };
  for (let attempt = 1; attempt <= VERIFY_ATTEMPTS; attempt++) {
    const answer = await askWorkerToPurge(url, {
      order: { everything: true, expect: fingerprint },
      key: purgeKey,
    }, ctx);
    if (answer.kind === "done") {
      ctx.log(`Worker: purged everything at ${url} (${options.why})`);
      return;
    }
    if (answer.kind !== "other-version" && answer.kind !== "refused") {
      throw new ApiError(`${sentence(answer.message)} ${remembered}`, {
        service: "Worker",
        status: answer.status,
        code: answer.kind,
      });
    }
    last = answer;
    ctx.log(`Worker: ${last.message} (attempt ${attempt} of ${VERIFY_ATTEMPTS})`);
    if (attempt < VERIFY_ATTEMPTS) await ctx.sleep(VERIFY_PAUSE_MS);
  }
  throw new ApiError(
    `Cannot purge after the deploy: ${last.message} ${remembered}`,
    { service: "Worker", status: last.status, code: "not_answering" },
  );
}

/**
 * The steps after the upload: route, custom domain, leftovers, workers.dev.
 * Each failure is recorded in `result.failed` and the others still run.
 * Returns whether a custom domain was attached now (its certificate is new).
 */
async function deployTriggers(
  cf: CloudflareClient,
  result: RefreshResult,
  options: { takeOver: boolean; removeLeftovers: boolean },
): Promise<boolean> {
  const { config } = cf;
  const steps = triggerSteps(result, cf);
  // Both lists are read whenever a zone is set, so leftovers are seen by every refresh.
  const routes = config.zoneId ? await steps.attempt(() => steps.cf.listRoutes()) : undefined;
  const domains = config.zoneId || config.domain
    ? await steps.attempt(() => steps.cf.listDomains())
    : undefined;
  if (config.route && routes) await triggerRoute(steps, { routes, takeOver: options.takeOver });
  const newDomain = config.domain && domains
    ? await triggerDomain(steps, { domains, takeOver: options.takeOver })
    : false;
  // A route or domain that did not take must not cost the site the ways it answers today:
  // nothing is removed and workers.dev is not turned off until those steps work.
  const stepFailed = steps.failed.length > 0;
  await triggerLeftovers(steps, { routes, domains, remove: options.removeLeftovers, stepFailed });
  await triggerWorkersDev(steps, stepFailed);
  if (steps.changed.length > 0) result.changed = steps.changed;
  if (steps.failed.length > 0) result.failed = steps.failed;
  return newDomain;
}

/** What the steps after the upload share: the result, a counting client, what they did. */
interface TriggerSteps {
  result: RefreshResult;
  /** Every request is a round trip here; counting them keeps `roundTrips` honest. */
  cf: CloudflareClient;
  /** Each failed step's message; the others still run. */
  failed: string[];
  /** What `--take-over` and `--remove-leftovers` changed, in words. */
  changed: string[];
  /** Runs one step: its answer, or `undefined` with its failure in `failed`. */
  attempt: ReturnType<typeof stepRunner>;
}

/** `ctx` whose every request counts as one of the result's round trips. */
function countingRoundTrips(ctx: Context, result: Pick<RefreshResult, "roundTrips">): Context {
  return { ...ctx, fetch: (input, init) => (result.roundTrips++, ctx.fetch(input, init)) };
}

function triggerSteps(result: RefreshResult, cf: CloudflareClient): TriggerSteps {
  const failed: string[] = [];
  return {
    result,
    cf: new CloudflareClient(cf.config, countingRoundTrips(cf.ctx, result)),
    failed,
    changed: [],
    attempt: stepRunner(failed),
  };
}

/** The route step: `WORKER_ROUTE` runs this worker. */
async function triggerRoute(
  steps: TriggerSteps,
  options: { routes: ZoneRoute[]; takeOver: boolean },
): Promise<void> {
  const { config } = steps.cf;
  const done = await steps.attempt(() => ensureRoute(steps.cf, options));
  if (!done) return;
  steps.result.route = done.change;
  steps.cf.ctx.log(`Cloudflare: route ${config.route} ${done.change}`);
  if (done.from) {
    steps.changed.push(`route ${config.route} now runs this worker instead of ${done.from}`);
  }
}

/** The custom domain step; returns whether the domain was attached now (its certificate is new). */
async function triggerDomain(
  steps: TriggerSteps,
  options: { domains: CustomDomain[]; takeOver: boolean },
): Promise<boolean> {
  const { config } = steps.cf;
  const done = await steps.attempt(() => ensureDomain(steps.cf, options));
  if (!done) return false;
  const { result, changed } = steps;
  result.domain = done.change;
  const newDomain = done.change !== "unchanged";
  steps.cf.ctx.log(`Cloudflare: custom domain ${config.domain} ${done.change}`);
  for (const record of done.deleted ?? []) changed.push(`deleted DNS record ${record}`);
  if (done.from) {
    changed.push(`custom domain ${config.domain} now runs this worker instead of ${done.from}`);
  }
  if (newDomain) {
    (result.warnings ??= []).push(
      `custom domain ${config.domain} is new: Cloudflare issues its certificate now, which ` +
        `takes a few minutes; until then https://${config.domain}/ does not answer`,
    );
  }
  return newDomain;
}

/** The leftovers step: routes and domains that run the worker but no setting names. */
async function triggerLeftovers(
  steps: TriggerSteps,
  options: { routes?: ZoneRoute[]; domains?: CustomDomain[]; remove: boolean; stepFailed: boolean },
): Promise<void> {
  const { result } = steps;
  for (const leftover of findLeftovers(steps.cf.config, options)) {
    const name = `${leftover.kind} ${leftover.name}`;
    if (options.remove && !options.stepFailed) {
      const removed = await steps.attempt(() =>
        removeLeftover(steps.cf, leftover).then(() => true)
      );
      if (removed) steps.changed.push(`removed ${name}, which still ran this worker`);
    } else {
      (result.leftovers ??= []).push(name);
    }
  }
  if (result.leftovers) {
    (result.warnings ??= []).push(
      `${result.leftovers.join(", ")} still run${result.leftovers.length === 1 ? "s" : ""} ` +
        "this worker but no setting names it any more; refresh --remove-leftovers deletes " +
        "what is listed, or set it again to keep it",
    );
  }
  if (options.stepFailed && options.remove && result.leftovers) {
    steps.failed.push(
      `${result.leftovers.join(", ")} ${result.leftovers.length === 1 ? "was" : "were"} not ` +
        "removed: the site may still answer there while the step above fails",
    );
  }
}

/** The workers.dev step, left as it was while a route or domain step fails. */
async function triggerWorkersDev(steps: TriggerSteps, stepFailed: boolean): Promise<void> {
  const { result } = steps;
  if (stepFailed && !steps.cf.config.workersDev) {
    (result.warnings ??= []).push(
      "workers.dev was left as it was, not turned off, while the step above fails",
    );
    return;
  }
  const workersDev = await steps.attempt(() => applyWorkersDev(steps.cf));
  if (!workersDev) return;
  result.workersDev = workersDev.url ?? false;
  steps.cf.ctx.log(`Cloudflare: workers.dev ${workersDev.url ?? "off"}`);
  if (workersDev.problem) {
    (result.warnings ??= []).push(`WORKER_WORKERS_DEV: ${workersDev.problem}`);
  }
}

/**
 * Fetches `url` until it answers 2xx, for a while, since a deploy takes
 * seconds to spread. With `waitForCertificate` (a custom domain attached just
 * now) it keeps trying for minutes, reporting on `progress`, and answers
 * `"certificate pending"` when the host still cannot be reached over TLS.
 */
async function verify(
  url: string,
  ctx: Context,
  options: { waitForCertificate: boolean; progress: (line: string) => void },
): Promise<"verified" | "certificate pending"> {
  const pauseMs = options.waitForCertificate ? CERTIFICATE_PAUSE_MS : VERIFY_PAUSE_MS;
  const attempts = options.waitForCertificate
    ? Math.ceil(CERTIFICATE_WAIT_MS / CERTIFICATE_PAUSE_MS) + 1
    : VERIFY_ATTEMPTS;
  let last = "";
  let lastStatus = 0;
  // A failed connection or 525/526 (Cloudflare's TLS errors) is what a missing certificate looks like.
  let noTls = false;
  for (let attempt = 1; attempt <= attempts; attempt++) {
    try {
      // One attempt each: this loop is the retry, paced for a deploy that spreads.
      const response = await send(ctx, {
        service: "Verify",
        step: `fetch ${url}`,
        url,
        init: { method: "GET", headers: { "cache-control": "no-cache" } },
        retry: false,
      });
      await response.body?.cancel();
      if (response.ok) {
        ctx.log(`Verify: ${url} answered ${response.status}`);
        return "verified";
      }
      last = `answered ${response.status}`;
      lastStatus = response.status;
      noTls = response.status === 525 || response.status === 526;
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      // Even a name that does not resolve is tried again: a new host's record takes a while.
      last = `could not be reached: ${error.cause ?? error.message}`;
      lastStatus = 0;
      noTls = true;
    }
    if (options.waitForCertificate) {
      options.progress(
        `Verify: ${url} ${last}; waiting for the new custom domain's certificate ` +
          `(${formatDuration((attempt - 1) * pauseMs / 1000)} of up to ` +
          `${formatDuration(CERTIFICATE_WAIT_MS / 1000)})`,
      );
    } else {
      ctx.log(`Verify: ${url} ${last} (attempt ${attempt} of ${attempts})`);
    }
    if (attempt < attempts) await ctx.sleep(pauseMs);
  }
  if (options.waitForCertificate && noTls) return "certificate pending";
  throw new ApiError(
    `The worker is deployed, but ${url} ${last} after ${attempts} attempts. ` +
      "Check that the route or domain points at the worker and that the file exists " +
      "(try the same path with `deno task dev`).",
    { service: "Verify", status: lastStatus, code: "verify_failed" },
  );
}

// ---------------------------------------------------------------------------
// Purge
// ---------------------------------------------------------------------------

/** What a signed purge request asks of the worker. */
interface PurgeOrder {
  /** URL paths; each purges exactly its object (by its `Cache-Tag`). */
  paths?: string[];
  /** URL path prefixes. */
  prefixes?: string[];
  /** Everything the cache holds for this worker (`purge --all`); `paths` and `prefixes` unused. */
  everything?: boolean;
  /** Purge nothing unless the answering version has this fingerprint. */
  expect?: string;
}

/** How the worker answered a purge request. */
type PurgeAnswer =
  | {
    kind: "done";
    /** Whether the worker purged its Segments entrypoint too (large objects' segments). */
    segments: boolean;
  }
  | {
    kind: "other-version" | "refused" | "rate-limited" | "failed" | "not-worker" | "unreachable";
    status: number;
    message: string;
  };

/**
 * Workers Cache takes at most 100 operations a purge
 * (developers.cloudflare.com/workers/cache/purge/).
 */
const MAX_PURGE_OPERATIONS = 100;
/** And five purges a minute: a refused one is tried again after this many seconds. */
const PURGE_RETRY_SECONDS = 60;

/**
 * The headers that sign `body` with the purge key (HMAC-SHA256), stamped `nowMs`.
 * @internal
 */
export async function signPurge(
  body: string,
  options: { key: string; nowMs: number },
): Promise<Record<string, string>> {
  const timestamp = String(Math.floor(options.nowMs / 1000));
  const signature = await hmacSha256(fromHex(options.key), purgeMessage(timestamp, body));
  return {
    "content-type": "application/json",
    [PURGE_TIMESTAMP_HEADER]: timestamp,
    [PURGE_SIGNATURE_HEADER]: toHex(signature),
  };
}

/**
 * Where the worker answers, from the settings alone: `WORKER_DOMAIN`'s origin, else the URL
 * under which a one-host route runs it (`example.com/cdn/*` gives `https://example.com/cdn`),
 * else `workersDevUrl`, its workers.dev address when known. With `origin`, the scheme and host
 * only, a one-host route's whatever its pattern. The one place that says where it answers.
 */
function workerAddress(
  where: { domain?: string | undefined; route?: string | undefined; workersDevUrl?: string },
  options: { origin?: boolean } = {},
): string | undefined {
  const domain = where.domain?.trim();
  if (domain) return `https://${domain}`;
  // The route's scheme is optional; a host with a wildcard is no one host.
  const bare = where.route?.trim().replace(/^https?:\/\//, "") ?? "";
  const slash = bare.includes("/") ? bare.indexOf("/") : bare.length;
  const host = bare.slice(0, slash);
  const pattern = bare.slice(slash);
  if (host && !host.includes("*")) {
    if (options.origin) return `https://${host}`;
    if (pattern.endsWith("*")) return `https://${host}${pattern.slice(0, -1).replace(/\/+$/, "")}`;
  }
  return where.workersDevUrl?.replace(/\/+$/, "");
}

/**
 * Where the worker answers purge requests: `--url`, else `WORKER_DOMAIN`, else under the route
 * when it names one host (the worker takes the purge path under any path), else the workers.dev
 * address.
 */
async function purgeUrl(config: Config, ctx: Context, url?: string): Promise<string> {
  const cloudflare = config.cloudflare;
  let base = url || config.site ||
    workerAddress({ domain: cloudflare?.domain, route: cloudflare?.route });
  if (!base && cloudflare) base = await new CloudflareClient(cloudflare, ctx).workersDevAddress();
  if (!base) {
    throw new ConfigError([
      "Cannot tell where the worker answers: set WORKER_DOMAIN or pass --url https://<host>.",
    ]);
  }
  return base.replace(/\/+$/, "") + PURGE_PATH;
}

/** Sends one signed purge request and says what came back, the worker's or not. */
async function askWorkerToPurge(
  url: string,
  request: { order: PurgeOrder; key: string },
  ctx: Context,
): Promise<PurgeAnswer> {
  // The nonce makes each request's signature new, so a retry within the same second is not
  // mistaken for a replay.
  const body = JSON.stringify({ ...request.order, nonce: crypto.randomUUID() });
  let response: Response;
  try {
    // Sent once: the worker refuses a signed request it has seen (the nonce), so a retry
    // would be signed anew, which is the caller's loop (refresh's purge step repeats).
    response = await send(ctx, {
      service: "Worker",
      step: "purge",
      url,
      init: {
        method: "POST",
        headers: await signPurge(body, { key: request.key, nowMs: ctx.now() }),
        body,
      },
      retry: false,
    });
  } catch (error) {
    if (!(error instanceof ApiError)) throw error;
    return {
      kind: "unreachable",
      status: 0,
      message: `Cannot reach the worker at ${url}: ${error.cause ?? error.message}.`,
    };
  }
  const text = await response.text();
  let json: PurgeAnswerBody = {};
  try {
    json = JSON.parse(text);
  } catch { /* not the worker's purge answer */ }
  if (json?.service !== "b2-private-cdn") return notThePurgeAnswer(url, { response, text });
  return theWorkersPurgeAnswer(url, { status: response.status, json });
}

/** What the worker's purge answer holds (worker_template.ts, `signedPurge()`). */
interface PurgeAnswerBody {
  service?: string;
  fingerprint?: string;
  error?: string;
  result?: unknown;
  segments?: { success?: boolean };
}

/** The worker's own answer to a purge: done, another version, rate limited or refused. */
function theWorkersPurgeAnswer(
  url: string,
  answer: { status: number; json: PurgeAnswerBody },
): PurgeAnswer {
  const { status, json } = answer;
  if (status === 200) return { kind: "done", segments: json.segments?.success === true };
  if (status === 409) {
    return {
      kind: "other-version",
      status,
      message: `an older version still answers at ${url} (fingerprint "${json.fingerprint ?? ""}")`,
    };
  }
  if (status === 429) {
    const said = JSON.stringify(json.segments?.success === false ? json.segments : json.result);
    return {
      kind: "rate-limited",
      status,
      message: `Cloudflare refused the purge (${said}): at most 5 purges a minute; try again ` +
        `in ${PURGE_RETRY_SECONDS} s.`,
    };
  }
  return { kind: "failed", status, message: `The worker refused the purge: ${json.error}.` };
}

/** An answer to a signed purge that is not the worker's purge answer: whose it is, and why. */
function notThePurgeAnswer(url: string, answer: { response: Response; text: string }): PurgeAnswer {
  const { response, text } = answer;
  const { status } = response;
  // What the worker answers to any unsigned POST: it did not accept the signature.
  if (status === 405 && text === "Method not allowed\n") {
    return {
      kind: "refused",
      status,
      message: `the worker at ${url} refused the signed request as it refuses any POST: ` +
        "the deployed version has no purge key or another one (run refresh with the same " +
        "WORKER_PURGE_KEY or B2_APPLICATION_KEY), or this machine's clock is more than 5 " +
        "minutes off",
    };
  }
  const mitigated = response.headers.get("cf-mitigated");
  const answered = `${status}${mitigated ? `, cf-mitigated: ${mitigated}` : ""}`;
  return {
    kind: "not-worker",
    status,
    message: `The answer from ${url} (${answered}) is not the worker's: a WAF rule, bot ` +
      "challenge or Access policy in front of it? Let POST requests to this path through, or " +
      "pass the workers.dev address with --url.",
  };
}

/** What `purge` asks for. */
export interface PurgeRequest {
  /** URL paths, each exactly one object (`purge`'s arguments); a full URL gives its path. */
  paths: string[];
  /** URL path prefixes (`--prefix`, repeatable). */
  prefixes: string[];
  /** Everything the cache holds (`--all`); `paths` and `prefixes` are then not read. */
  all: boolean;
  /** Where the worker answers (`--url`); found from the configuration when absent. */
  url?: string;
}

/** What `purge` did. */
export interface PurgeReport {
  /** The configured edge cache (`WORKER_CACHE_MODE`); with `off` nothing was asked. */
  mode: CacheMode;
  /** The purge endpoint the requests went to: `url`, else found from the configuration. */
  url?: string;
  /** Signed requests the worker accepted. */
  requests: number;
  /** How many paths and prefixes the worker purged, or whether it purged everything. */
  purged: { paths: number; prefixes: number; everything: boolean };
  /** Whether each request also purged large objects' segments (the Segments entrypoint's). */
  segments: boolean;
}

/**
 * Purges paths (each exactly its object), prefixes or everything from the
 * edge cache in force, in as few requests as the limits allow (100
 * operations each). A refused or rate-limited request stops the run with
 * {@linkcode ApiError}, naming what is left and when to try again.
 *
 * @example Forget one object and a folder at the edge
 * ```ts ignore
 * await purge(config, defaultContext(), { paths: ["/index.html"], prefixes: ["/css/"], all: false });
 * ```
 */
export async function purge(
  config: Config,
  ctx: Context,
  request: PurgeRequest,
): Promise<PurgeReport> {
  const mode = config.worker.cacheMode;
  const report: PurgeReport = {
    mode,
    requests: 0,
    purged: { paths: 0, prefixes: 0, everything: false },
    segments: false,
  };
  if (mode === "off") return report;
  if (mode === "cache-api") {
    // Cloudflare: purge by URL does not reach entries stored with the Cache API; Purge
    // Everything does (developers.cloudflare.com/workers/reference/how-the-cache-works,
    // "Purge assets stored with the Cache API"; community.cloudflare.com thread 129721).
    // The setting, not an answer, rules it out: a configuration problem (exit 2).
    throw new ConfigError([
      "Cannot purge in the Cache API mode: Cloudflare's purge by URL does not reach copies " +
      "kept with the Cache API. Purge Everything on the zone does, for the whole zone: " +
      "dashboard > Caching > Configuration > Purge Everything (the API token needs " +
      '"Zone > Cache Purge"). Or set WORKER_CACHE_MODE=workers-cache and run refresh.',
    ]);
  }
  if (!config.purgeSecret) throw new ConfigError([NO_PURGE_SECRET]);
  const key = await derivePurgeKey(config.purgeSecret.value);
  ctx.secrets.add(key);
  const url = await purgeUrl(config, ctx, request.url);
  report.url = url;
  const orders = purgeOrders(request);
  for (const [index, order] of orders.entries()) {
    const answer = await askWorkerToPurge(url, { order, key }, ctx);
    if (answer.kind !== "done") throw unfinishedPurge(answer, { orders, index });
    report.segments = (report.requests === 0 || report.segments) && answer.segments;
    report.requests++;
    report.purged.paths += order.paths?.length ?? 0;
    report.purged.prefixes += order.prefixes?.length ?? 0;
    report.purged.everything ||= order.everything === true;
    ctx.log(`Worker: purge request ${index + 1} of ${orders.length} done`);
  }
  return report;
}

/**
 * The requests a purge sends: everything, or its paths and prefixes in batches of as many
 * operations as the worker takes, each in the one spelling the worker serves (every other is a
 * 301, never an entry), so that a prefix written "/caf%c3%a9/" reaches what "/café/" stored; one
 * the worker would refuse goes as it is, for the worker to name.
 */
function purgeOrders(request: PurgeRequest): PurgeOrder[] {
  if (request.all) return [{ everything: true }];
  const asPath = (text: string) => {
    const path = new URL(
      text.startsWith("/") || /^https?:/.test(text) ? text : `/${text}`,
      "https://any.invalid",
    ).pathname;
    const canonical = canonicalPath(path);
    return canonical === undefined ? path : urlPath(canonical);
  };
  const operations = [
    ...[...new Set(request.paths.map(asPath))].map((path) => ({ path })),
    ...[...new Set(request.prefixes.map(asPath))].map((prefix) => ({ prefix })),
  ];
  const orders: PurgeOrder[] = [];
  for (let i = 0; i < operations.length; i += MAX_PURGE_OPERATIONS) {
    const batch = operations.slice(i, i + MAX_PURGE_OPERATIONS);
    const paths = batch.flatMap((op) => "path" in op ? [op.path] : []);
    const prefixes = batch.flatMap((op) => "prefix" in op ? [op.prefix] : []);
    orders.push({ ...(paths.length && { paths }), ...(prefixes.length && { prefixes }) });
  }
  return orders;
}

/** A purge the worker did not finish: its answer, and what was done and what is left. */
function unfinishedPurge(
  answer: { kind: string; status: number; message: string },
  at: { orders: PurgeOrder[]; index: number },
): ApiError {
  const { orders, index } = at;
  const everything = orders[0]?.everything === true;
  const left = orders.slice(index).reduce(
    (sum, o) => sum + (o.paths?.length ?? 0) + (o.prefixes?.length ?? 0),
    0,
  );
  const done = index === 0 ? "" : ` ${index} of ${orders.length} requests were purged.`;
  return new ApiError(
    sentence(capitalize(answer.message)) + done +
      (everything ? "" : ` ${count(left, "path or prefix is", "paths and prefixes are")} left.`),
    { service: "Worker", status: answer.status, code: answer.kind },
  );
}

// ---------------------------------------------------------------------------
// Status and cron
// ---------------------------------------------------------------------------

/** What `status` found. */
export interface StatusReport {
  /** The worker script's name. */
  worker: string;
  /** Whether the token has at least the required time left and nothing needs a refresh. */
  healthy: boolean;
  /**
   * As a Nagios plugin says it: `OK`; `WARNING` when it still serves but needs a refresh
   * soon (less than `minRemaining` left, another cache mode, a purge owed); `CRITICAL` when
   * it fails or will within half of `minRemaining` (no worker or token, expired, answers
   * nowhere). `UNKNOWN`, when Cloudflare cannot be asked, is what `status` prints instead of
   * a report; a report is `UNKNOWN` when B2 cannot be asked about the event rule.
   */
  state: StatusState;
  /** Why it is not healthy. */
  problem?: string;
  /** When the token was issued, ISO 8601. */
  issuedAt?: string;
  /** When the token expires, ISO 8601. */
  expiresAt?: string;
  /** Seconds. */
  age?: number;
  /** Seconds left before the token expires. */
  remaining?: number;
  /** The edge cache the deployed version uses, by its bindings. */
  cacheMode?: string;
  /** Its `WORKER_SEGMENT_SIZE`, 0 for off or a deploy from before segments. */
  segmentSize?: number;
  /** Its `cache_options` as Cloudflare reports them, or `unknown` when it does not. */
  cacheOptions?: CacheOptions | "unknown";
  /** Where the worker answers: its route, custom domain and workers.dev URL. */
  urls?: string[];
  /** Routes and custom domains that run the worker but are no longer configured. */
  leftovers?: string[];
  /** Worth a look, without making the token unhealthy. */
  warnings?: string[];
  /** The bucket's Event Notification rule, with `B2_EVENT_NOTIFICATIONS=on`. */
  eventNotifications?: EventRuleReport;
  /** When the run that deployed the worker pinged its dead man's switch (`REFRESH_PING_URL`). */
  pinged?: string;
}

/** How `status` judges the deployed worker, by the Nagios plugin states it prints. */
export type StatusState = "OK" | "WARNING" | "CRITICAL" | "UNKNOWN";

/** One thing `status` found wrong: how bad, and what to do. */
export interface Finding {
  /** `UNKNOWN` when it could not be told (it only replaces `OK`). */
  state: Exclude<StatusState, "OK">;
  /** What is wrong and the fix, as `problem` joins them. */
  text: string;
}

/**
 * Reads the deployed worker's bindings and judges its token against
 * `minRemaining` seconds: `WARNING` below it, `CRITICAL` below half of it.
 *
 * @example Is the deployed token good for two more days?
 * ```ts ignore
 * const report = await status(config.cloudflare!, defaultContext(), { minRemaining: 2 * 86_400 });
 * if (!report.healthy) console.error(report.state, report.problem);
 * ```
 */
export async function status(
  config: CloudflareConfig,
  ctx: Context,
  options: {
    minRemaining: number;
    /** The configured edge cache; the deployed `cache_options` must agree with it. */
    cacheMode?: CacheMode;
    /** Also list where the worker answers, its leftovers and warnings (more API calls). */
    survey?: boolean;
    /** Further findings, judged with the deployment's own (the event rule's). */
    more?: (report: StatusReport) => Promise<Finding[]>;
  },
): Promise<StatusReport> {
  const report: StatusReport = { worker: config.workerName, healthy: false, state: "CRITICAL" };
  const findings = await deploymentFindings(new CloudflareClient(config, ctx), report, options);
  findings.push(...await options.more?.(report) ?? []);
  return judge(report, findings);
}

/** What is wrong with the deployed worker; `report` gets its facts on the way. */
async function deploymentFindings(
  cf: CloudflareClient,
  report: StatusReport,
  options: { minRemaining: number; cacheMode?: CacheMode; survey?: boolean },
): Promise<Finding[]> {
  const settings = await cf.workerSettings();
  if (!settings) {
    return [{ state: "CRITICAL", text: `worker "${report.worker}" does not exist; run refresh` }];
  }
  const { readAll } = options.survey ? await survey(cf, report) : { readAll: true };
  const missing = missingTokenBinding(settings);
  if (missing) return [{ state: "CRITICAL", text: missing }];
  Object.assign(report, deployedToken(settings, cf.ctx.now()));
  return [
    ...tokenProblems(report, options.minRemaining),
    ...cacheProblems(report, settings, options.cacheMode),
    ...servingProblems(report, settings, { readAll }),
  ];
}

/**
 * The report's state from all its findings, once: the worst of them (UNKNOWN only replaces
 * OK, since what a WARNING or CRITICAL reports is known), and every text, in order.
 */
function judge(report: StatusReport, findings: Finding[]): StatusReport {
  const rank: Record<StatusState, number> = { OK: 0, UNKNOWN: 1, WARNING: 2, CRITICAL: 3 };
  report.healthy = findings.length === 0;
  report.state = findings.reduce<StatusState>(
    (worst, finding) => rank[finding.state] > rank[worst] ? finding.state : worst,
    "OK",
  );
  if (findings.length > 0) report.problem = findings.map((f) => f.text).join("; ");
  return report;
}

/** Why the deployed worker cannot hold a working token at all, or `undefined`. */
function missingTokenBinding(settings: WorkerSettings): string | undefined {
  if (!settings.bindings.some((b) => b.name === "B2_DOWNLOAD_TOKEN" && b.type === "secret_text")) {
    return "the worker has no B2_DOWNLOAD_TOKEN secret; run refresh";
  }
  if (Number.isNaN(Date.parse(plainBinding(settings, "B2_TOKEN_EXPIRES_AT") ?? ""))) {
    return "the worker has no B2_TOKEN_EXPIRES_AT binding; run refresh";
  }
  return undefined;
}

/** The token's times and the cache the deployed version uses, from its bindings. */
function deployedToken(settings: WorkerSettings, now: number): Partial<StatusReport> {
  const read = (name: BindingName) => plainBinding(settings, name);
  const expires = Date.parse(read("B2_TOKEN_EXPIRES_AT") ?? "");
  const issued = Date.parse(read("B2_TOKEN_ISSUED_AT") ?? "");
  return {
    expiresAt: isoSeconds(expires),
    remaining: Math.floor((expires - now) / 1000),
    ...(!Number.isNaN(issued) &&
      { issuedAt: isoSeconds(issued), age: Math.floor((now - issued) / 1000) }),
    // Deploys before cache modes existed used the Cache API.
    cacheMode: read("WORKER_CACHE_MODE") ?? "cache-api",
    // Deploys before segments existed did not segment.
    segmentSize: Number(read("WORKER_SEGMENT_SIZE") ?? 0),
    cacheOptions: settings.cacheOptions ?? "unknown",
    ...(read("REFRESH_PINGED") && { pinged: describePinged(read("REFRESH_PINGED")!) }),
  };
}

/** The token has expired or has less than `minRemaining` seconds left (half: critical). */
function tokenProblems(report: StatusReport, minRemaining: number): Finding[] {
  const remaining = report.remaining!;
  if (remaining >= minRemaining) return [];
  if (remaining <= 0) {
    return [{ state: "CRITICAL", text: "the download token has expired; run refresh" }];
  }
  return [{
    state: remaining < minRemaining / 2 ? "CRITICAL" : "WARNING",
    text: `less than ${formatDuration(minRemaining)} left; run refresh`,
  }];
}

/** The deployed version caches otherwise than `WORKER_CACHE_MODE` asks. */
function cacheProblems(
  report: StatusReport,
  settings: WorkerSettings,
  wanted: CacheMode | undefined,
): Finding[] {
  if (!wanted) return [];
  // It still serves, from B2 with the token: another cache is a warning.
  const problems: Finding[] = [];
  if (report.cacheMode !== wanted) {
    problems.push({
      state: "WARNING",
      text: `the deployed worker caches with ${report.cacheMode}, WORKER_CACHE_MODE says ` +
        `${wanted}; run refresh`,
    });
  }
  const deployed = settings.cacheOptions;
  const expected = cacheOptionsFor(wanted);
  if (
    deployed && (deployed.enabled !== expected.enabled ||
      (expected.cross_version_cache && deployed.cross_version_cache !== true))
  ) {
    const has = deployed.enabled ? "on but not kept across refreshes" : "off";
    const wants = expected.enabled ? "on and kept" : "off";
    problems.push({
      state: "WARNING",
      text: `Cloudflare says the deployed version has Workers Cache ${has}, where ` +
        `WORKER_CACHE_MODE=${wanted} wants it ${wants}; run refresh (a full upload sets it)`,
    });
  }
  return problems;
}

/** A purge is still owed, or (surveyed in full) nothing leads to the worker. */
function servingProblems(
  report: StatusReport,
  settings: WorkerSettings,
  survey: { readAll: boolean },
): Finding[] {
  const problems: Finding[] = [];
  if (plainBinding(settings, "WORKER_PURGE_PENDING")) {
    problems.push({
      state: "WARNING",
      text: "a purge after a change is still owed; run refresh (which purges and then records it)",
    });
  }
  // Read in full (no read failed) and nothing leads to the worker: a good token serves nobody.
  if (report.urls?.length === 0 && !report.leftovers && survey.readAll) {
    problems.push({
      state: "CRITICAL",
      text: "the worker answers nowhere: no route, custom domain or workers.dev address runs " +
        "it; set WORKER_ROUTE, WORKER_DOMAIN or WORKER_WORKERS_DEV=on and run refresh",
    });
  }
  return problems;
}

/**
 * Where the worker answers and what else runs it: the configured route and
 * custom domain, workers.dev, and leftovers. A call the token may not make
 * becomes a warning; the token's health does not depend on this.
 */
async function survey(cf: CloudflareClient, report: StatusReport): Promise<{ readAll: boolean }> {
  const { config } = cf;
  const urls: string[] = [];
  const warnings: string[] = [];
  let readAll = true;
  const tryRead = async <T>(what: string, read: () => Promise<T>) => {
    try {
      return await read();
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      warnings.push(`cannot read ${what}: ${error.message}`);
      readAll = false;
      return undefined;
    }
  };
  const routes = config.zoneId
    ? await tryRead("the zone's routes", () => cf.listRoutes())
    : undefined;
  const domains = await tryRead("the custom domains", () => cf.listDomains());
  surveyTriggers(config, { routes, domains, urls, warnings });
  const workersDev = await tryRead("the workers.dev setting", () => readWorkersDev(cf));
  if (workersDev?.url) urls.push(workersDev.url);
  if (workersDev && workersDev.enabled !== config.workersDev) {
    warnings.push(
      `workers.dev is ${workersDev.enabled ? "on" : "off"}, but WORKER_WORKERS_DEV asks for ` +
        `${config.workersDev ? "on" : "off"}; run refresh`,
    );
  }
  if (workersDev?.problem) warnings.push(workersDev.problem);
  const leftovers = findLeftovers(config, { routes, domains }).map((l) => `${l.kind} ${l.name}`);
  if (leftovers.length > 0) {
    report.leftovers = leftovers;
    warnings.push(
      `${leftovers.join(", ")} still run${leftovers.length === 1 ? "s" : ""} this worker but ` +
        "no setting names it; refresh --remove-leftovers deletes it",
    );
  }
  report.urls = urls;
  if (warnings.length > 0) report.warnings = warnings;
  return { readAll };
}

/** Whether the configured route and custom domain run this worker: an address, or a warning. */
function surveyTriggers(
  config: CloudflareConfig,
  found: { routes?: ZoneRoute[]; domains?: CustomDomain[]; urls: string[]; warnings: string[] },
): void {
  const { routes, domains, urls, warnings } = found;
  const held = (what: string, by: string | undefined) =>
    by
      ? `${what} runs ${by}, not this worker; ${TAKE_OVER_COMMAND} moves it`
      : `${what} is not set up; run refresh`;
  if (config.route && routes) {
    const route = routes.find((r) => r.pattern === config.route);
    const by = route && (route.script ? `worker "${route.script}"` : "no worker");
    if (route?.script === config.workerName) urls.push(`route ${config.route}`);
    else warnings.push(held(`route ${config.route}`, by));
  }
  if (config.domain && domains) {
    const domain = domains.find((d) => d.hostname === config.domain);
    const by = domain && `worker "${domain.service}"`;
    if (domain?.service === config.workerName) urls.push(`https://${config.domain}/`);
    else warnings.push(held(`custom domain ${config.domain}`, by));
  }
}

/** Failed scheduled runs are tried again after 1, 5 and 15 minutes. */
const CRON_BACKOFF_MS = [60_000, 300_000, 900_000];
const CRON_NAME = "b2-private-cdn refresh";

/** The shape of `Deno.cron` with options, so tests can see what is registered. */
export type CronRegistrar = (
  name: string,
  schedule: string,
  options: { backoffSchedule: number[] },
  handler: () => Promise<void>,
) => unknown;

/** What the start-up check decided. */
export interface StartupDecision {
  /** Whether a refresh ran. */
  refreshed: boolean;
  /** Why, in words for the log. */
  reason: string;
}

/**
 * Refreshes when the deployed token is missing or has less than `config.refreshMargin` left;
 * otherwise only reads the worker's bindings. The module is loaded only when it is due.
 *
 * @example Refresh only when the deployed token runs low
 * ```ts ignore
 * const decision = await refreshIfDue(config, defaultContext(), { loadModule: loadWorkerModule });
 * console.log(decision.reason);
 * ```
 */
export async function refreshIfDue(
  config: Config,
  ctx: Context,
  options: { loadModule: () => Promise<string>; pinged?: string },
): Promise<StartupDecision> {
  const report = await status(config.cloudflare!, ctx, {
    minRemaining: config.refreshMargin,
    cacheMode: config.worker.cacheMode,
  });
  if (report.healthy) {
    return {
      refreshed: false,
      reason: `token has ${formatDuration(report.remaining!)} left, more than the margin of ` +
        formatDuration(config.refreshMargin),
    };
  }
  const result = await refresh(config, ctx, {
    module: await options.loadModule(),
    unattended: true,
    ...(options.pinged && { pinged: options.pinged }),
  });
  return {
    refreshed: true,
    // A retry that found a fresh upload uploaded nothing: it says what it kept.
    reason: result.reusedUpload
      ? `${report.problem}; Kept: the worker uploaded at ${result.reusedUpload}, its token ` +
        `valid until ${result.expiresAt} (nothing uploaded)`
      : `${report.problem}; refreshed until ${result.expiresAt}`,
  };
}

/**
 * Registers the scheduled refresh. Each run refreshes; a failure is retried by the backoff.
 *
 * @example Refresh on REFRESH_SCHEDULE with Deno.cron
 * ```ts ignore
 * scheduleRefresh(config, defaultContext(), {
 *   module: loadWorkerModule(),
 *   register: Deno.cron,
 *   report: console.log,
 * });
 * ```
 */
export function scheduleRefresh(
  config: Config,
  ctx: Context,
  options: {
    module: string | Promise<string>;
    register: CronRegistrar;
    report: (line: string) => void;
  },
): void {
  options.register(
    CRON_NAME,
    config.refreshSchedule,
    { backoffSchedule: CRON_BACKOFF_MS },
    () =>
      withDeadMansSwitch(config.pingUrl, ctx, {
        report: options.report,
        job: async ({ report, pinged }) => {
          const result = await refresh(config, ctx, {
            module: await options.module,
            unattended: true,
            ...(pinged && { pinged }),
          });
          report(summary(result));
          for (const warning of result.warnings ?? []) report(`warning: ${warning}`);
        },
      }),
  );
}

// ---------------------------------------------------------------------------
// Dead man's switch
// ---------------------------------------------------------------------------

/**
 * What a run tells the monitor at `REFRESH_PING_URL`: it began, it succeeded, or it failed.
 * A monitor that hears nothing within its period and grace alerts, which also catches the run
 * that never happened.
 * @internal
 */
export type PingEvent = "start" | "success" | "fail";

/**
 * How long a run's pings may hold it up after its work is done, all of them together: the
 * monitor is a witness, and one that hangs must not make the run late or fail it.
 */
const PING_TIMEOUT_MS = 5_000;
/**
 * The run's last lines a ping carries: healthchecks.io keeps the first 100,000 bytes of a body,
 * older self-hosted versions 10 KB (API_FACTS, "Alerts for cron jobs"), so 10 KB fits both.
 */
const PING_BODY_BYTES = 10_000;
const PING_BODY_LINES = 30;
/** Assumption: Uptime Kuma shows `msg` as one heartbeat's line, so one line of ours, cut short. */
const PING_MESSAGE_CHARS = 200;

/**
 * Whether `url` is an Uptime Kuma push URL (`/api/push/<token>`), which reads only its query and
 * answers 404 to any other path, or else takes healthchecks.io's paths (`/start`, `/fail`), as
 * healthchecks.io, its self-hosted versions and Cronitor's compatible endpoint do.
 */
function isUptimeKuma(url: URL): boolean {
  return /\/api\/push\/[^/]+\/?$/.test(url.pathname);
}

/**
 * The request that tells the monitor at `url` of `event`, or `undefined` when its kind has no
 * such ping (Uptime Kuma has no start). healthchecks.io: `POST <url>/start`, `<url>` and
 * `<url>/fail`, the run's last lines as the body; Uptime Kuma: `GET <url>?status=up|down&msg=`,
 * any `status`, `msg` and `ping` the copied URL carried replaced (API_FACTS, "Alerts for cron
 * jobs").
 * @internal
 */
export function pingRequest(
  url: string,
  options: { event: PingEvent; lines: readonly string[] },
): { url: string; init: RequestInit } | undefined {
  const target = new URL(url);
  const { event, lines } = options;
  if (isUptimeKuma(target)) {
    if (event === "start") return undefined;
    for (const name of ["status", "msg", "ping"]) target.searchParams.delete(name);
    const last = lines.findLast((line) => line.trim() !== "")?.trim() ||
      (event === "success" ? "OK" : "failed");
    target.searchParams.set("status", event === "success" ? "up" : "down");
    target.searchParams.set("msg", last.slice(0, PING_MESSAGE_CHARS));
    return { url: target.href, init: { method: "GET" } };
  }
  target.pathname = target.pathname.replace(/\/+$/, "") + (event === "success" ? "" : `/${event}`);
  return {
    url: target.href,
    init: {
      method: "POST",
      headers: { "content-type": "text/plain; charset=utf-8" },
      body: event === "start" ? "" : lastBytes(lines, PING_BODY_BYTES),
    },
  };
}

/** The last of `lines` (at most {@linkcode PING_BODY_LINES}) that fit in `limit` UTF-8 bytes. */
function lastBytes(lines: readonly string[], limit: number): string {
  const encoder = new TextEncoder();
  const kept: string[] = [];
  let size = 0;
  for (const line of lines.slice(-PING_BODY_LINES).toReversed()) {
    const bytes = encoder.encode(line).length + 1;
    if (size + bytes > limit) {
      // A line too long for what is left keeps its end, where an error says what failed.
      if (kept.length === 0) kept.push(line.slice(-(limit - 1)));
      break;
    }
    kept.unshift(line);
    size += bytes;
  }
  return kept.join("\n");
}

/**
 * `REFRESH_PING_URL` as output may show it: each part of its path but the API's own words
 * (`ping`, `api`, `push`) cut to its first four characters, since whoever holds the whole URL
 * can report runs that never happened.
 */
function shownPingUrl(url: string): string {
  const target = new URL(url);
  const path = target.pathname.split("/").filter(Boolean)
    .map((part) => ["ping", "api", "push"].includes(part) ? part : firstFour(part));
  return `${target.origin}/${path.join("/")}`;
}

/** What one run hands its job: where its lines go, and the switch's record for the upload. */
interface PingedRun {
  /** Prints a line of the run's output, and keeps it for the closing ping's body. */
  report: (line: string) => void;
  /** Keeps a line printed elsewhere for the closing ping's body. */
  keep: (line: string) => void;
  /** For {@linkcode RefreshOptions.pinged}: the switch and when the run pinged it. */
  pinged?: string;
}

/**
 * Runs `job` between the pings of the switch at `url` (none when it is `undefined`): the start
 * ping goes out as the job begins and runs alongside it; once it ends, and the start ping has
 * settled so that the monitor hears them in order, the success ping, or the fail ping when it
 * throws or `succeeded` says so, with the job's last lines (its error too) as the body. What
 * the job returns or throws is passed on unchanged. A ping never fails the run: one the monitor
 * refuses, or that gets no answer, is reported as a warning, and all of them are done within
 * {@linkcode PING_TIMEOUT_MS} of the job's end.
 */
async function withDeadMansSwitch<T>(
  url: string | undefined,
  ctx: Context,
  options: {
    report: (line: string) => void;
    job: (run: PingedRun) => Promise<T>;
    succeeded?: (value: T) => boolean;
  },
): Promise<T> {
  if (url === undefined) return await options.job({ report: options.report, keep: () => {} });
  // Whoever holds the whole URL can report runs: it is never printed.
  ctx.secrets.add(url);
  const lines: string[] = [];
  const keep = (text: string) => {
    lines.push(...redact(text, ctx.secrets).split("\n"));
    lines.splice(0, Math.max(0, lines.length - PING_BODY_LINES));
  };
  const report = (line: string) => {
    keep(line);
    options.report(line);
  };
  const ping = async (event: PingEvent, withinMs: number) => {
    const request = pingRequest(url, { event, lines });
    const refused = request && await sendPing(request, { event, withinMs, ctx });
    if (refused) {
      options.report(
        `warning: the dead man's switch at ${shownPingUrl(url)} did not take the ${event} ` +
          `ping: ${refused}. The run goes on; check REFRESH_PING_URL.`,
      );
    }
  };
  const pinged = pingedBinding(url, ctx.now());
  const started = ping("start", PING_TIMEOUT_MS);
  const finish = async (ok: boolean) => {
    const deadline = ctx.now() + PING_TIMEOUT_MS;
    await started;
    await ping(ok ? "success" : "fail", deadline - ctx.now());
  };
  let value: T;
  try {
    value = await options.job({ report, keep, pinged });
  } catch (error) {
    keep(`error: ${(error as Error)?.message ?? error}`);
    await finish(false);
    throw error;
  }
  await finish(options.succeeded?.(value) ?? true);
  return value;
}

/** `REFRESH_PINGED`: the switch as output may show it, and when the run began pinging it. */
function pingedBinding(url: string, at: number): string {
  return `${shownPingUrl(url)} ${isoSeconds(at)}`;
}

/** `status`'s sentence for a `REFRESH_PINGED` binding. */
function describePinged(binding: string): string {
  const [url = "", at = ""] = binding.split(" ");
  return /\/api\/push\//.test(url)
    ? `The run that deployed this worker, at ${at}, pushed its outcome to the Uptime Kuma ` +
      `monitor at ${url} when it ended.`
    : `The run that deployed this worker pinged ${url}/start at ${at}, then ${url} or ` +
      `${url}/fail when it ended.`;
}

/**
 * One ping through {@linkcode send}, within `withinMs` in all: why the monitor did not take it
 * (a 2xx), or `undefined` when it did; never a throw.
 */
async function sendPing(
  request: { url: string; init: RequestInit },
  options: { event: PingEvent; withinMs: number; ctx: Context },
): Promise<string | undefined> {
  const { event, withinMs, ctx } = options;
  if (withinMs < 1) return "no time was left after the start ping hung";
  try {
    const response = await send({ ...ctx, timeoutMs: withinMs, budgetMs: withinMs, retries: 2 }, {
      service: "Ping",
      step: `ping the dead man's switch (${event})`,
      url: request.url,
      init: request.init,
    });
    const text = (await response.text()).trim().slice(0, QUOTED_BODY_CHARS);
    if (response.ok) return undefined;
    return `answered ${response.status}${text ? ` ${JSON.stringify(text)}` : ""}`;
  } catch (error) {
    // A refused permission too: the run's own requests say which flag it needs. The warning
    // that quotes it goes on after it, so its last full stop goes.
    return (error as Error).message.replace(/\.$/, "");
  }
}

// ---------------------------------------------------------------------------
// Signed links
// ---------------------------------------------------------------------------

/** What a link grants; see {@linkcode signLink}. */
export interface SignLinkOptions {
  /** `WORKER_SIGNING_KEY`, base64url. */
  key: string;
  /** When the link stops working: a `Date` or Unix seconds. */
  expires: Date | number;
  /** When it starts working. @default undefined (at once) */
  notBefore?: Date | number;
  /** Served as `Content-Disposition: attachment` with this file name. */
  downloadName?: string;
  /** Grant every path under `path` (which then ends in `/`), not just `path`. @default false */
  prefix?: boolean;
}

/** A signed link and what it grants, as `sign --json` prints it. */
export interface SignedLink {
  /** The full URL to hand out. */
  url: string;
  /** The query alone: with `prefix`, append it to any path under the prefix. */
  query: string;
  /** The canonical (decoded) path or prefix the signature covers. */
  path: string;
  /** Whether `path` is a prefix that grants every path under it. */
  prefix: boolean;
  /** When the link stops working, ISO 8601. */
  expires: string;
  /** When the link starts working, ISO 8601; absent when it works at once. */
  notBefore?: string;
  /** The file name of `Content-Disposition: attachment`, when the link sets one. */
  downloadName?: string;
}

/**
 * Signs a link to `path` on the worker at `baseUrl`, as the worker checks
 * it: an HMAC-SHA256 with the key over the canonical path (each segment
 * percent-decoded once), the times and the download name, never the host.
 * `path` is written as in a URL (`/members/caf%C3%A9.mp4`; a literal `%`
 * as `%25`). This checks the link's shape only: `main.ts sign` also checks
 * it against WORKER_SIGNED_PREFIXES and WORKER_SIGNED_MAX_TTL, which the
 * worker enforces.
 *
 * ```ts
 * import { signLink } from "./main.ts";
 * const { url } = await signLink("https://cdn.example.com", "/members/intro.mp4", {
 *   key: Deno.env.get("WORKER_SIGNING_KEY")!,
 *   expires: new Date(Date.now() + 3600_000),
 * });
 * ```
 *
 * @throws {ConfigError} for a malformed path, key, time or download name.
 *
 * @example A link to a protected file, good for an hour
 * ```ts ignore
 * const link = await signLink("https://cdn.example.com", "/members/video.mp4", {
 *   key: Deno.env.get("WORKER_SIGNING_KEY")!,
 *   expires: Math.floor(Date.now() / 1000) + 3600,
 * });
 * console.log(link.url);
 * ```
 */
export async function signLink(
  baseUrl: string,
  path: string,
  options: SignLinkOptions,
): Promise<SignedLink> {
  const problems: string[] = [];
  const canonical = canonicalPath(path);
  if (canonical === undefined || /[?#]/.test(path)) {
    problems.push(
      `The path must be a URL path like /members/video.mp4 (starting with "/", no empty, "." ` +
        `or ".." segment, no "?" or "#", "%" written as %25), not "${path}".`,
    );
  } else if (options.prefix && !canonical.endsWith("/")) {
    problems.push(`A prefix ends in "/": write "${path}/" to sign every path under it.`);
  }
  const seconds = (time: Date | number) =>
    typeof time === "number" ? time : Math.floor(time.getTime() / 1000);
  const expires = seconds(options.expires);
  const notBefore = options.notBefore === undefined ? undefined : seconds(options.notBefore);
  for (const [name, value] of [["expiry", expires], ["not-before time", notBefore]] as const) {
    if (value !== undefined && !(Number.isInteger(value) && value >= 0 && value < 1e11)) {
      problems.push(`The ${name} must be a time after 1970 in Unix seconds, not ${value}.`);
    }
  }
  if (notBefore !== undefined && notBefore >= expires) {
    problems.push("The not-before time must come before the expiry.");
  }
  const { downloadName } = options;
  if (downloadName !== undefined && !validDownloadName(downloadName)) {
    problems.push(
      `The download name must be a file name of at most 255 bytes without "/", "\\", '"', ` +
        `control characters or surrounding spaces, not "${downloadName}".`,
    );
  }
  problems.push(...signingKeyProblems("The signing key", options.key));
  problems.push(...baseUrlProblems(baseUrl));
  if (problems.length > 0 || canonical === undefined) throw new ConfigError(problems);

  const prefix = options.prefix ?? false;
  const grant = {
    path: canonical,
    prefix,
    expires,
    ...(notBefore !== undefined && { notBefore }),
    ...(downloadName !== undefined && { downloadName }),
  };
  const signature = await hmacSha256(fromBase64Url(options.key), signedLinkMessage(grant));
  // The worker's own rule: any other spelling of this link would only be a 301 to this one.
  const query = signedLinkQuery(grant, signature);
  return {
    url: `${new URL(baseUrl).origin}${urlPath(canonical)}?${query}`,
    query,
    path: canonical,
    prefix,
    expires: isoSeconds(expires * 1000),
    ...(notBefore !== undefined && { notBefore: isoSeconds(notBefore * 1000) }),
    ...(downloadName !== undefined && { downloadName }),
  };
}

/** What is wrong with a signed link's base URL: it is an http(s) origin, nothing more. */
function baseUrlProblems(baseUrl: string): string[] {
  if (!URL.canParse(baseUrl) || !/^https?:$/.test(new URL(baseUrl).protocol)) {
    return [`The base URL must be an http(s) URL like https://cdn.example.com.`];
  }
  if (new URL(baseUrl).pathname !== "/" || /[?#]/.test(baseUrl)) {
    return [
      `The base URL is an origin like https://cdn.example.com; put the path in the path, ` +
      `not "${baseUrl}".`,
    ];
  }
  return [];
}

/** HMAC-SHA256 of `message` with the raw `key`. */
async function hmacSha256(key: Uint8Array<ArrayBuffer>, message: string): Promise<Uint8Array> {
  const hmac = { name: "HMAC", hash: "SHA-256" };
  const imported = await crypto.subtle.importKey("raw", key, hmac, false, ["sign"]);
  return new Uint8Array(
    await crypto.subtle.sign(hmac, imported, new TextEncoder().encode(message)),
  );
}

/**
 * A fresh signing key: 32 random bytes, base64url, as `WORKER_SIGNING_KEY` takes it.
 *
 * @example A key for WORKER_SIGNING_KEY
 * ```ts ignore
 * console.log(`WORKER_SIGNING_KEY=${generateSigningKey()}`);
 * ```
 */
export function generateSigningKey(): string {
  return toBase64Url(crypto.getRandomValues(new Uint8Array(MIN_SIGNING_KEY_BYTES)));
}

// ---------------------------------------------------------------------------
// The edge check
// ---------------------------------------------------------------------------

/** How many bytes of a large object the check asks for. */
const CHECK_RANGE_BYTES = 1024;
/** A range slower than this to start suggests the edge read the whole object first. */
const SLOW_FIRST_BYTE_MS = 2_000;
/** How much of an answer to a range is read before the check stops reading. */
const LARGE_READ_LIMIT = 1024 * 1024;
/** An entry just filled can take a moment to answer; a purge takes seconds to reach every
 * location. How often, and how patiently, the check asks again. */
const EDGE_ATTEMPTS = 6;
const EDGE_PAUSE_MS = 2_000;

/** One line of the check: what was tried and what the real edge answered. */
export interface CacheFinding {
  /** What was tried, such as `second GET` or `range after GET`. */
  check: string;
  /** Only `problem` makes the report unhealthy; `not checked` says why in `detail`. */
  outcome: "ok" | "problem" | "not checked" | "note";
  /** What the edge answered (its `cf-cache-status`, status, headers) or what to change. */
  detail: string;
}

/** What {@linkcode checkCache} found. */
export interface CacheCheckReport {
  /** The URL of the small object checked. */
  url: string;
  /** One per check, in the order they ran. */
  findings: CacheFinding[];
  /** No finding is a problem. */
  healthy: boolean;
}

/** What one request to the edge showed. */
interface Probe {
  status: number;
  /** `cf-cache-status`, or `undefined` when absent. */
  label: string | undefined;
  headers: Headers;
  bytes: Uint8Array;
  /** Whether the answer had more than was read. */
  cut: boolean;
  firstByteMs: number;
}

async function probe(
  ctx: Context,
  url: string,
  init: { method?: string; headers?: Record<string, string>; readLimit?: number } = {},
): Promise<Probe> {
  const started = ctx.now();
  // One attempt: a retry would change what the edge saw (the check asks again itself where
  // an entry may still be on its way), and a failure says why (`cause`), not just that.
  const response = await send(ctx, {
    service: "Verify",
    step: `check the cache at ${url}`,
    url,
    init: {
      method: init.method ?? "GET",
      // Identity, so sizes and bytes are the object's own.
      headers: { "Accept-Encoding": "identity", ...init.headers },
    },
    retry: false,
    check: "the URL (--url)",
  });
  const chunks: Uint8Array<ArrayBuffer>[] = [];
  let total = 0;
  let firstByteMs = ctx.now() - started;
  let cut = false;
  if (response.body) {
    const reader = response.body.getReader();
    for (let chunk = await reader.read(); !chunk.done; chunk = await reader.read()) {
      if (total === 0) firstByteMs = ctx.now() - started;
      chunks.push(chunk.value);
      total += chunk.value.byteLength;
      if (total >= (init.readLimit ?? Infinity)) {
        cut = true;
        await reader.cancel();
        break;
      }
    }
  }
  const bytes = new Uint8Array(await new Blob(chunks).arrayBuffer());
  const label = response.headers.get("cf-cache-status") ?? undefined;
  return { status: response.status, label, headers: response.headers, bytes, cut, firstByteMs };
}

/** The headers that decide whether an answer is stored, for a problem's detail. */
function cachingHeaders(headers: Headers): string {
  const names = ["cache-control", "cdn-cache-control", "vary", "content-length"];
  const shown = names.filter((name) => headers.has(name))
    .map((name) => `${name}: ${headers.get(name)}`);
  if (headers.has("set-cookie")) shown.push("set-cookie: (present)");
  return shown.join("; ") || "no caching headers";
}

/**
 * Checks Workers Cache on the deployed worker from real answers: a new URL
 * answered MISS then HIT, a HEAD and a range after the GET answered from the
 * cache, a purge taking effect (when `purge` is given), then, each after a
 * purge, a range, a conditional GET and a HEAD as the first request (and
 * that a plain GET after the last two still gets the whole object), and, for
 * `largeUrl`, whether a small range of a large object comes back 206 quickly
 * or the whole object is sent. `url` names a small object on the worker.
 *
 * @example Does Workers Cache keep what the worker answers?
 * ```ts ignore
 * const report = await checkCache("https://cdn.example.com/hello.txt", defaultContext(), {
 *   mode: "workers-cache",
 * });
 * console.log(report.healthy ? "as intended" : report.findings);
 * ```
 */
export async function checkCache(
  url: string,
  ctx: Context,
  options: {
    largeUrl?: string;
    /** Purges the object behind this URL (all its queries). Absent: reported as not checked. */
    purge?: (url: URL) => Promise<void>;
    /** The mode deployed, for the note on where large objects are kept. Absent: no note. */
    mode?: CacheMode;
  } = {},
): Promise<CacheCheckReport> {
  // The URL as given: a query of the check's own would be a new cache entry, but the worker
  // sends every query on a public path to its canonical URL, so that no visitor can make it
  // download an object from B2 again at will. With a purge at hand, the entry starts cold.
  const fresh = new URL(url);
  const findings: CacheFinding[] = [];
  const say = (check: string, outcome: CacheFinding["outcome"], detail: string) =>
    findings.push({ check, outcome, detail });
  let { purge } = options;
  try {
    await purge?.(fresh);
  } catch (error) {
    // A purge that cannot be made is a finding of its own; the rest is checked without it.
    if (!(isOperationError(error) || error instanceof ConfigError)) throw error;
    say("purge", "problem", error.message);
    purge = undefined;
  }
  await checkSmallObject({
    fresh,
    ctx,
    say,
    ...(purge ? { purge } : { purgeFailed: options.purge !== undefined }),
  });
  // Independent of the rest: a large object's ranges matter even where the cache is off.
  if (options.largeUrl) findings.push(await checkLargeObject(options.largeUrl, ctx));
  if (options.mode) {
    say("large objects", "note", largeObjectsWhere(options.mode, new URL(options.largeUrl ?? url)));
  }
  return {
    url: fresh.href,
    findings,
    healthy: findings.every((finding) => finding.outcome !== "problem"),
  };
}

/** Purges the object behind a URL, all its queries. */
type ObjectPurge = (url: URL) => Promise<void>;

/** How the checks of the small object report, and the purge they may use. */
interface SmallCheck {
  fresh: URL;
  ctx: Context;
  say: (check: string, outcome: CacheFinding["outcome"], detail: string) => void;
  purge?: ObjectPurge;
  /** The purge before the check failed, and was reported. */
  purgeFailed?: boolean;
}

/** The steps on the small object; each stops the rest when what they need is missing. */
async function checkSmallObject(check: SmallCheck): Promise<void> {
  const first = await checkFirstGet(check);
  if (!first) return;
  if (!await checkSecondGet(check)) return;
  await checkHeadAfterGet(check, first);
  await checkRangeAfterGet(check, first);
  await checkBrowserRevalidation(check, first);
  if (check.purge) {
    if (await checkPurge(check, check.purge)) {
      await checkRangedMiss(check, check.purge, first);
      await checkShapedMisses(check, check.purge, first);
    }
  } else if (!check.purgeFailed) {
    check.say(
      "purge",
      "not checked",
      "no purge key here (B2_APPLICATION_KEY or WORKER_PURGE_KEY), or the mode is not " +
        "workers-cache",
    );
    check.say("ranged miss", "not checked", "it needs a purge, to start from an empty entry");
    check.say("shaped misses", "not checked", "they need a purge, to start from an empty entry");
  }
}

/** Asks until the edge answers `wanted`, as a fill or a purge may take a moment. */
async function probeUntil(
  check: SmallCheck,
  wanted: (label?: string) => boolean,
  init: Parameters<typeof probe>[2] = {},
): Promise<Probe> {
  let answer = await probe(check.ctx, check.fresh.href, init);
  for (let attempt = 1; attempt < EDGE_ATTEMPTS && !wanted(answer.label); attempt++) {
    await check.ctx.sleep(EDGE_PAUSE_MS);
    answer = await probe(check.ctx, check.fresh.href, init);
  }
  return answer;
}

/** The first GET: the worker answered (not a challenge), 200, with Workers Cache on, MISS. */
async function checkFirstGet(check: SmallCheck): Promise<Probe | undefined> {
  const { say } = check;
  const first = await probe(check.ctx, check.fresh.href);
  const refused = first.headers.has("cf-mitigated")
    ? `a Cloudflare challenge answered (cf-mitigated: ${first.headers.get("cf-mitigated")}), ` +
      "not the worker: let this client through the zone's WAF or bot rules, or run the " +
      "check from another network"
    : first.status !== 200
    ? `answered ${first.status}; give --url the address of a small object that exists`
    : first.label === undefined
    ? "no cf-cache-status at all: Workers Cache is off in the deployed version. Its upload " +
      'must carry cache_options {"enabled": true, "cross_version_cache": true}: run refresh ' +
      "in the Workers Cache mode, then check again"
    : undefined;
  if (refused) {
    say("first GET", "problem", refused);
    return undefined;
  }
  if (first.label === "MISS") {
    say("first GET", "ok", `MISS (${first.bytes.byteLength} bytes)`);
    return first;
  }
  const uncacheable = first.label === "BYPASS" || first.label === "DYNAMIC";
  say(
    "first GET",
    uncacheable ? "problem" : "note",
    `cf-cache-status ${first.label} (expected MISS: ` +
      (check.purge ? "the purge before it had not arrived" : "it was cached already") + ")" +
      (uncacheable ? `: the answer is not cacheable (${cachingHeaders(first.headers)})` : ""),
  );
  return uncacheable ? undefined : first;
}

/** The second GET is a HIT: the answer was stored. */
async function checkSecondGet(check: SmallCheck): Promise<boolean> {
  const second = await probeUntil(check, (label) => label === "HIT");
  if (second.label !== "HIT") {
    check.say(
      "second GET",
      "problem",
      `cf-cache-status ${second.label}, not HIT, after ${EDGE_ATTEMPTS} tries: the answer was ` +
        `not stored (${cachingHeaders(second.headers)}); larger than 512 MB is never stored`,
    );
    return false;
  }
  check.say("second GET", "ok", "HIT: answered by the cache, the worker did not run");
  return true;
}

/** A HEAD after the GET: a HIT with the object's length and no body. */
async function checkHeadAfterGet(check: SmallCheck, first: Probe): Promise<void> {
  const head = await probe(check.ctx, check.fresh.href, { method: "HEAD" });
  const sameLength = head.headers.get("content-length") === String(first.bytes.byteLength);
  check.say(
    "HEAD after GET",
    head.label === "HIT" && head.status === 200 && head.bytes.byteLength === 0 && sameLength
      ? "ok"
      : "problem",
    `${head.status}, cf-cache-status ${head.label}, content-length ` +
      `${head.headers.get("content-length")}, ${head.bytes.byteLength} body bytes`,
  );
}

/** The first bytes of a non-empty object asked for: `Range: bytes=0-<99 or less>`. */
function firstBytesRange(first: Probe): { header: string; last: number } | undefined {
  const size = first.bytes.byteLength;
  if (size === 0) return undefined;
  const last = Math.min(99, size - 1);
  return { header: `bytes=0-${last}`, last };
}

/** Whether `answer` is the exact 206 of bytes `0..last` of the object `first` read whole. */
function exactSlice(answer: Probe, first: Probe, last: number): boolean {
  return answer.status === 206 &&
    answer.headers.get("content-range") === `bytes 0-${last}/${first.bytes.byteLength}` &&
    answer.bytes.byteLength === last + 1 &&
    answer.bytes.every((byte, i) => byte === first.bytes[i]);
}

function describeRange(answer: Probe): string {
  return `${answer.status} ${answer.headers.get("content-range") ?? "(no content-range)"}, ` +
    `cf-cache-status ${answer.label}, ${answer.bytes.byteLength} bytes`;
}

/** A range after the GET: an exact 206 sliced by the cache (HIT). */
async function checkRangeAfterGet(check: SmallCheck, first: Probe): Promise<void> {
  const range = firstBytesRange(first);
  if (!range) {
    check.say("range after GET", "not checked", "the object is empty; give --url a non-empty one");
    return;
  }
  const answer = await probe(check.ctx, check.fresh.href, { headers: { Range: range.header } });
  check.say(
    "range after GET",
    exactSlice(answer, first, range.last) && answer.label === "HIT" ? "ok" : "problem",
    describeRange(answer) +
      (answer.status === 200 ? ": the whole object came back for a range" : ""),
  );
}

/** Whether the cache answers a browser's `If-None-Match` itself: undocumented, so a note. */
async function checkBrowserRevalidation(check: SmallCheck, first: Probe): Promise<void> {
  const etag = first.headers.get("etag");
  if (!etag) return;
  const answer = await probe(check.ctx, check.fresh.href, { headers: { "If-None-Match": etag } });
  check.say(
    "browser revalidation",
    "note",
    `${answer.status}, cf-cache-status ${answer.label}: ` +
      (answer.status === 304 && answer.label === "HIT"
        ? "the cache answers browsers' conditional requests itself"
        : "browsers' conditional requests reach the worker (each one runs it)"),
  );
}

/** A purge takes effect: the next GET is not a HIT. */
async function checkPurge(check: SmallCheck, purge: ObjectPurge): Promise<boolean> {
  await purge(check.fresh);
  const after = await probeUntil(check, (label) => label !== "HIT");
  const reached = after.label !== "HIT";
  const waited = (EDGE_ATTEMPTS - 1) * EDGE_PAUSE_MS / 1000;
  check.say(
    "purge",
    reached ? "ok" : "problem",
    reached
      ? `cf-cache-status ${after.label} after the purge`
      : `still HIT after ${EDGE_ATTEMPTS} tries in ${waited} s: the purge did not reach this entry`,
  );
  return reached;
}

/**
 * A range as the first request after a purge, as a player's first request for a video:
 * what the visitor receives is not documented (Cloudflare says only that the Range reaches
 * the worker and a 206 is never stored), so it is a note; the same range again must be a
 * HIT, or every player's ranges reach the worker and B2 however often they are watched.
 */
async function checkRangedMiss(check: SmallCheck, purge: ObjectPurge, first: Probe): Promise<void> {
  const range = firstBytesRange(first);
  if (!range) return;
  await purge(check.fresh);
  const init = { headers: { Range: range.header } };
  const miss = await probeUntil(check, (label) => label !== "HIT", init);
  check.say(
    "ranged miss",
    miss.label === "HIT" ? "problem" : "note",
    `${describeRange(miss)}` +
      (miss.label === "HIT"
        ? ": still HIT after the purge, so this is not a miss"
        : exactSlice(miss, first, range.last)
        ? ": the first visitor of a range gets the range"
        : miss.status === 200
        ? ": the first visitor of a range gets the whole object"
        : ": not the exact range asked for"),
  );
  if (miss.label === "HIT") return;
  const repeat = await probeUntil(check, (label) => label === "HIT", init);
  const filled = repeat.label === "HIT" && exactSlice(repeat, first, range.last);
  check.say(
    "range after ranged miss",
    filled ? "ok" : "problem",
    describeRange(repeat) +
      (filled
        ? ": the ranged miss filled the cache"
        : `: after ${EDGE_ATTEMPTS} tries a ranged miss has not filled the cache, so players' ` +
          "ranges and seeks reach the worker and B2 every time (docs/large-objects.md)"),
  );
}

/**
 * A conditional GET (the object's own validator, as a browser sends it), then a HEAD, as
 * the first request after a purge, each followed by a plain GET. Whether Workers Cache could
 * keep the 304 or the bodyless answer as the URL's entry is not documented: if it did, every
 * visitor after would get nothing. The plain GET must get the whole object.
 */
async function checkShapedMisses(
  check: SmallCheck,
  purge: ObjectPurge,
  first: Probe,
): Promise<void> {
  const etag = first.headers.get("etag");
  const lastModified = first.headers.get("last-modified");
  const conditional: Record<string, string> | undefined = etag
    ? { "If-None-Match": etag }
    : lastModified
    ? { "If-Modified-Since": lastModified }
    : undefined;
  const shapes: { shape: string; init: Parameters<typeof probe>[2] }[] = [
    { shape: "HEAD", init: { method: "HEAD" } },
  ];
  if (conditional) shapes.unshift({ shape: "conditional", init: { headers: conditional } });
  for (const { shape, init } of shapes) {
    await purge(check.fresh);
    const shaped = await probeUntil(check, (label) => label !== "HIT", init);
    const plain = await probe(check.ctx, check.fresh.href);
    const whole = plain.status === 200 && plain.bytes.byteLength === first.bytes.byteLength &&
      plain.bytes.every((byte, i) => byte === first.bytes[i]);
    check.say(
      `GET after a ${shape} miss`,
      whole ? "ok" : "problem",
      `${shape}: ${shaped.status}, cf-cache-status ${shaped.label}; then GET: ${plain.status}, ` +
        `cf-cache-status ${plain.label}, ${plain.bytes.byteLength} of ` +
        `${first.bytes.byteLength} bytes` +
        (whole
          ? ""
          : `: the cache kept what a visitor's ${shape} shaped as the answer for everyone ` +
            "(see docs/edge-cache.md, What the worker answers)"),
    );
  }
}

/**
 * Where large objects are kept at the edge, for a mode and the kind of address a visitor
 * uses: workers.dev, or a route or custom domain (which behave alike). Workers Cache answers
 * on workers.dev too, segments included; the Cache API, which keeps segments in cache-api mode
 * and what the worker remembers of a large object in both, does nothing there
 * (developers.cloudflare.com/workers/runtime-apis/cache/).
 * @internal
 */
export function largeObjectsWhere(mode: CacheMode, url: URL): string {
  const workersDev = url.hostname.endsWith(".workers.dev");
  const segments = "as WORKER_SEGMENT_SIZE segments in the Cache API of each data centre " +
    "(unless WORKER_SEGMENT_SIZE=0)";
  if (mode === "off") return "mode off: nothing is kept at the edge; every range is a B2 request";
  if (mode === "workers-cache") {
    return "workers-cache: objects up to 512 MB are kept whole by Workers Cache, ranges " +
      "answered from them; larger ones as WORKER_SEGMENT_SIZE segments in Workers Cache too " +
      "(unless WORKER_SEGMENT_SIZE=0)" +
      (workersDev
        ? "; on workers.dev their ranges may also ask B2 for the object's headers (what the " +
          "worker remembers of one is kept in the Cache API, which does nothing there, and " +
          "for a minute in each isolate's memory)"
        : "");
  }
  return workersDev
    ? "cache-api on workers.dev: nothing is kept (the Cache API does nothing there); use a " +
      "route or custom domain"
    : `cache-api: objects up to 100 MiB are kept whole, larger ones ${segments}`;
}

/** What makes a large object's ranges ranges at the edge, for check-cache's findings. */
const LARGE_OBJECT_ADVICE = "past the whole-object limit the worker answers ranges from " +
  "segments unless WORKER_SEGMENT_SIZE is 0 (in cache-api mode on a route or custom domain " +
  "only); for an object under the limit, see docs/large-objects.md";

/**
 * Asks for the last bytes of a large object: a 206 that starts quickly is
 * served as a range; a 200 means every range sends the whole object; a slow
 * 206 suggests the edge read the whole object before answering.
 */
async function checkLargeObject(url: string, ctx: Context): Promise<CacheFinding> {
  const check = "range of the large object";
  const readLimit = LARGE_READ_LIMIT;
  const start = await probe(ctx, url, { headers: { Range: "bytes=0-0" }, readLimit });
  const size = Number(/\/(\d+)$/.exec(start.headers.get("content-range") ?? "")?.[1] ?? NaN);
  if (start.status !== 206 || !Number.isInteger(size)) {
    const detail = start.status === 200
      ? `200 for bytes=0-0: the whole object is sent for a range (${start.bytes.byteLength} ` +
        `bytes read${start.cut ? " before stopping" : ""}, first byte in ${start.firstByteMs} ` +
        `ms). Players would download all of it: ${LARGE_OBJECT_ADVICE}`
      : `answered ${start.status}; give --large-url the address of an object that exists`;
    return { check, outcome: "problem", detail };
  }
  const from = Math.max(0, size - CHECK_RANGE_BYTES);
  const tail = await probe(ctx, url, {
    headers: { Range: `bytes=${from}-${size - 1}` },
    readLimit,
  });
  const facts = `${tail.status}, first byte in ${tail.firstByteMs} ms, ` +
    `${tail.bytes.byteLength} bytes read${tail.cut ? " before stopping" : ""}, ` +
    `cf-cache-status ${tail.label ?? "(none)"}, object ${size} bytes`;
  const problem = tail.status !== 206
    ? "the whole object is sent for a range"
    : tail.firstByteMs > SLOW_FIRST_BYTE_MS
    ? "slow, the edge probably read the whole object before answering"
    : undefined;
  return problem
    ? { check, outcome: "problem", detail: `${facts}: ${problem}; ${LARGE_OBJECT_ADVICE}` }
    : { check, outcome: "ok", detail: `${facts}: ranges of it are served as ranges` };
}

// ---------------------------------------------------------------------------
// Setup: init
// ---------------------------------------------------------------------------

/**
 * A conversation with the person at the terminal: `main()` makes one when stdin and stdout are
 * both terminals; without one, `init` takes everything from flags and the environment.
 */
interface Prompter {
  /**
   * Asks `question` (printed as is, without a line break) and reads one line; `hidden` for a
   * secret, which the terminal then does not echo. `undefined` when input has ended.
   */
  ask(question: string, options?: { hidden?: boolean }): Promise<string | undefined>;
  say(text: string): void;
}

/**
 * What `init` is handed beyond a command's job: the terminal (absent in a pipe), and the
 * working directory, `deno` and this file (a path, or the URL it runs from) for the crontab line.
 * @internal
 */
export interface InitPlace {
  terminal?: Prompter;
  cwd: string;
  denoPath: string;
  script: string;
}

/** The capabilities a key needs: download tokens (`shareFiles`), reading what they serve. */
const NEEDED_CAPABILITIES = ["readFiles", "shareFiles"];

/** The name a key gets in the `b2 key create` line init suggests. */
const KEY_NAME = "b2-private-cdn";

/** Asks until `read` accepts the answer; the end of input stops init. */
async function askUntil<T>(
  terminal: Prompter,
  question: string,
  options: { hidden?: boolean; read: (answer: string) => { value: T } | { problem: string } },
): Promise<T> {
  for (;;) {
    const answer = await terminal.ask(question, { hidden: options.hidden ?? false });
    if (answer === undefined) {
      throw new ConfigError(["init stopped: input ended; nothing written."]);
    }
    const read = options.read(answer.trim());
    if ("value" in read) return read.value;
    terminal.say(`  ${read.problem}`);
  }
}

/** Offers `items` as a numbered list; Enter takes the first. */
async function choose<T>(
  terminal: Prompter,
  question: string,
  items: { label: string; value: T }[],
): Promise<T> {
  const list = items.map((item, i) => `  ${i + 1}) ${item.label}`).join("\n");
  return await askUntil<T>(terminal, `${question}\n${list}\nChoose 1-${items.length} [1]: `, {
    read: (answer) => {
      const index = answer === "" ? 0 : Number(answer) - 1;
      const item = Number.isInteger(index) ? items[index] : undefined;
      return item ? { value: item.value } : { problem: `Type a number from 1 to ${items.length}.` };
    },
  });
}

/** A yes or no; Enter takes `fallback`. */
async function confirm(terminal: Prompter, question: string, fallback: boolean): Promise<boolean> {
  return await askUntil<boolean>(terminal, `${question} [${fallback ? "Y/n" : "y/N"}] `, {
    read: (answer) =>
      answer === ""
        ? { value: fallback }
        : /^y(es)?$/i.test(answer)
        ? { value: true }
        : /^no?$/i.test(answer)
        ? { value: false }
        : { problem: "Type y or n." },
  });
}

/** Checks one setting's value by its own rules (the same as every command's). */
function settingProblem(name: Variable, value: string): string | undefined {
  try {
    parseConfig({ [name]: value });
    return undefined;
  } catch (error) {
    if (error instanceof ConfigError) return error.problems.join(" ");
    throw error;
  }
}

/** One setting: as given, else asked (checked like every setting), else missing in a pipe. */
async function gather(
  name: Variable,
  setup: { settings: Settings; terminal?: Prompter; missing: string[] },
  question: { text: string; hidden?: boolean; fallback?: string },
): Promise<string | undefined> {
  const given = setup.settings[name];
  if (given) return given;
  if (!setup.terminal) {
    if (question.fallback === undefined) setup.missing.push(name);
    return question.fallback;
  }
  const shown = question.fallback ? ` [${question.fallback}]` : "";
  return await askUntil(setup.terminal, `${question.text}${shown}: `, {
    hidden: question.hidden ?? false,
    read: (answer) => {
      const value = answer || question.fallback;
      if (value === undefined) return { problem: `${name} is needed.` };
      if (value === "") return { value };
      const problem = settingProblem(name, value);
      return problem ? { problem } : { value };
    },
  });
}

/** Fails with every missing setting named: a pipe never waits for input. */
function requireGiven(missing: string[]): void {
  if (missing.length === 0) return;
  throw new ConfigError([
    `init has no terminal to ask, so set ${missing.join(", ")} (in the environment; settings ` +
    "that are not credentials also as flags, --b2-bucket-name photos), then run it again.",
  ]);
}

/**
 * In a pipe, every credential that is missing is named at once, before any is tried: the
 * Cloudflare token is asked for after the B2 key otherwise, one run later.
 */
function requireCredentials(settings: Settings): void {
  const legacy = settings.CLOUDFLARE_EMAIL && settings.CLOUDFLARE_API_KEY;
  const needed: Variable[] = ["B2_APPLICATION_KEY_ID", "B2_APPLICATION_KEY"];
  if (!legacy) needed.push("CLOUDFLARE_API_TOKEN");
  requireGiven(needed.filter((name) => !settings[name]));
}

/** How many times a credential typed at the terminal is tried before its refusal ends init. */
const CREDENTIAL_TRIES = 3;

/**
 * `attempt`'s answer. At a terminal, when `retyped` says the refusal is of a credential the
 * person typed and a typo's (not a missing capability or permission, nor the network), it is
 * said in the error's own words and `attempt` asks again: {@linkcode CREDENTIAL_TRIES} tries in
 * all, then the refusal ends init as the first one does in a pipe.
 */
async function untilAccepted<T>(
  terminal: Prompter | undefined,
  attempt: () => Promise<T>,
  retyped: (error: unknown) => boolean,
): Promise<T> {
  for (let tries = 1;; tries++) {
    try {
      return await attempt();
    } catch (error) {
      if (!terminal || tries >= CREDENTIAL_TRIES || !retyped(error)) throw error;
      terminal.say(`  ${(error as Error).message}`);
    }
  }
}

/** The key pair, given or typed, and what B2 says it may do; a 401 is the pair, retyped. */
async function authorizeKey(
  setup: { settings: Settings; terminal?: Prompter; ctx: Context },
): Promise<{ keyId: string; applicationKey: string; client: B2Client; auth: B2Authorization }> {
  const { settings, ctx } = setup;
  const apiUrl = settings.B2_API_URL ?? VARIABLES.B2_API_URL.default!;
  const typed = !settings.B2_APPLICATION_KEY_ID || !settings.B2_APPLICATION_KEY;
  let keyId: string | undefined;
  return await untilAccepted(setup.terminal, async () => {
    const missing: string[] = [];
    const ask = { ...setup, missing };
    // B2 does not say which half it refused: the id typed before is offered again.
    keyId = await gather("B2_APPLICATION_KEY_ID", ask, {
      text: "B2 application key id (keyID)",
      ...(keyId && { fallback: keyId }),
    });
    const applicationKey = await gather("B2_APPLICATION_KEY", ask, {
      text: "B2 application key (not shown as you type)",
      hidden: true,
    });
    requireGiven(missing);
    ctx.secrets.add(applicationKey!);
    const client = new B2Client(
      { keyId: keyId!, applicationKey: applicationKey!, apiUrl, prefix: "", tokenTtl: 1 },
      ctx,
    );
    const auth = await client.authorize();
    return { keyId: keyId!, applicationKey: applicationKey!, client, auth };
  }, (error) => typed && error instanceof ApiError && error.status === 401);
}

/** The B2 half: the key, what it may do, the bucket and the prefix. */
async function setupB2(
  setup: { settings: Settings; terminal?: Prompter; ctx: Context; io: Io },
): Promise<Settings> {
  const { io } = setup;
  const missing: string[] = [];
  const { keyId, applicationKey, client, auth } = await authorizeKey(setup);
  const buckets = auth.buckets ??
    (auth.capabilities.includes("listBuckets") ? await client.listBuckets() : undefined);
  io.stdout(describeKey(auth));
  const lacking = NEEDED_CAPABILITIES.filter((c) => !auth.capabilities.includes(c));
  if (lacking.length > 0) throw new ConfigError([keyRefusal(auth, lacking, buckets)]);
  const bucket = await pickBucket(buckets, { ...setup, missing });
  const prefix = await gather("B2_FILE_PREFIX", { ...setup, missing }, {
    text: auth.namePrefix
      ? "Serve only names under this prefix"
      : "Serve only names under this prefix (Enter: the whole bucket)",
    fallback: auth.namePrefix ?? "",
  });
  requireGiven(missing);
  if (auth.namePrefix && !prefix!.startsWith(auth.namePrefix)) {
    throw new ConfigError([
      `B2_FILE_PREFIX "${prefix}" is outside the key's names, which start with ` +
      `"${auth.namePrefix}": serve a prefix under it.`,
    ]);
  }
  // At a terminal too: a key that sees one bucket is given it without a question.
  io.stdout(`Bucket: ${bucket}${prefix ? `, names under "${prefix}"` : ""}`);
  return {
    B2_APPLICATION_KEY_ID: keyId,
    B2_APPLICATION_KEY: applicationKey,
    B2_BUCKET_NAME: bucket!,
    ...(prefix && { B2_FILE_PREFIX: prefix }),
    ...(setup.settings.B2_API_URL && { B2_API_URL: setup.settings.B2_API_URL }),
  };
}

/** What the key may do, in one line. */
function describeKey(auth: B2Authorization): string {
  const where = auth.buckets
    ? `restricted to bucket ${auth.buckets.map((b) => `"${b.name}"`).join(", ")}`
    : "all buckets of the account";
  return `B2 key: ${where}` +
    (auth.namePrefix ? `, names starting with "${auth.namePrefix}"` : "") +
    `; may ${auth.capabilities.join(", ") || "nothing"}`;
}

/** Why the key cannot serve, and the two ways to make one that can. */
function keyRefusal(
  auth: B2Authorization,
  lacking: string[],
  buckets: Bucket[] | undefined,
): string {
  const bucket = auth.buckets?.[0]?.name ?? buckets?.[0]?.name ?? "<bucket>";
  return `The B2 key lacks ${lacking.join(" and ")}, which serving needs (shareFiles makes the ` +
    "download token, readFiles lets it read). Make a key that has them: in the Backblaze web " +
    "console, B2 Cloud Storage > Application Keys > Add a New Application Key, access to your " +
    'bucket only, type of access "Read Only"; or with the b2 CLI: ' +
    keyCreate(
      { bucketName: bucket, prefix: auth.namePrefix ?? "" },
      SERVING_CAPABILITIES,
      KEY_NAME,
    );
}

/** The bucket: given, the key's only one, or chosen from those it sees. */
async function pickBucket(
  buckets: Bucket[] | undefined,
  setup: { settings: Settings; terminal?: Prompter; missing: string[] },
): Promise<string | undefined> {
  const given = setup.settings.B2_BUCKET_NAME;
  const names = buckets?.map((b) => b.name).filter(Boolean) ?? [];
  if (given) {
    if (buckets && !names.includes(given)) {
      const seen = names.join(", ") || "none";
      throw new ConfigError([
        `B2_BUCKET_NAME "${given}" is not a bucket this key can see (${seen}).`,
      ]);
    }
    return given;
  }
  if (names.length === 1) return names[0];
  if (!setup.terminal || names.length === 0) {
    return await gather("B2_BUCKET_NAME", setup, { text: "Bucket name" });
  }
  return await choose(
    setup.terminal,
    "Which bucket does the site serve?",
    names.map((name) => ({ label: name, value: name })),
  );
}

/**
 * The token, given or typed, once Cloudflare verified it (a legacy key is not verified). Its
 * refusal (4xx, or a token disabled or expired) is one a token retyped can cure; a rate limit
 * is not.
 */
async function verifiedToken(
  setup: { settings: Settings; terminal?: Prompter; ctx: Context; io: Io },
): Promise<{ token: string | undefined; config: CloudflareConfig }> {
  const { settings, ctx, io } = setup;
  const legacy = !settings.CLOUDFLARE_API_TOKEN && settings.CLOUDFLARE_EMAIL &&
    settings.CLOUDFLARE_API_KEY;
  return await untilAccepted(setup.terminal, async () => {
    const missing: string[] = [];
    const token = legacy ? undefined : await gather("CLOUDFLARE_API_TOKEN", { ...setup, missing }, {
      text: "Cloudflare API token (not shown as you type)",
      hidden: true,
    });
    requireGiven(missing);
    if (token) ctx.secrets.add(token);
    const config = parseConfig(
      { ...settings, ...(token && { CLOUDFLARE_API_TOKEN: token }) },
      { cloudflare: true },
    ).cloudflare!;
    if ("token" in config.auth) {
      const owner = await verifyToken(new CloudflareClient(config, ctx));
      io.stdout(`Cloudflare token: valid, ${owner === "user" ? "a user's" : "an account's"}`);
    }
    return { token, config };
  }, (error) =>
    !settings.CLOUDFLARE_API_TOKEN && !legacy && error instanceof ApiError &&
    (error.code === "token_not_active" ||
      (error.status >= 400 && error.status < 500 && error.status !== 429)));
}

/** The Cloudflare half: the token, the account, where visitors reach the site, its zone. */
async function setupCloudflare(
  setup: { settings: Settings; terminal?: Prompter; ctx: Context; io: Io },
): Promise<{ gathered: Settings; config: CloudflareConfig }> {
  const { settings, ctx, io } = setup;
  const { token, config } = await verifiedToken(setup);
  config.accountId ||= await pickAccount(config, setup);
  Object.assign(config, await pickWhere(config, setup));
  config.workersDev = !config.route && !config.domain;
  const zone = await pickZone(config, setup);
  if (zone) config.zoneId = zone;
  const problems = await permissionProblems(config, ctx);
  if (problems.length > 0) throw new ConfigError(problems);
  io.stdout("Cloudflare token: may do everything this setup needs");
  return {
    config,
    gathered: {
      CLOUDFLARE_ACCOUNT_ID: config.accountId,
      ...(token && { CLOUDFLARE_API_TOKEN: token }),
      ...(settings.CLOUDFLARE_API_BASE_URL && { CLOUDFLARE_API_BASE_URL: config.apiBaseUrl }),
      ...(config.zoneId && { CLOUDFLARE_ZONE_ID: config.zoneId }),
      ...(config.route && { WORKER_ROUTE: config.route }),
      ...(config.domain && { WORKER_DOMAIN: config.domain }),
    },
  };
}

/** The account: the only one the token sees, or one chosen from them. */
async function pickAccount(
  config: CloudflareConfig,
  setup: { terminal?: Prompter; ctx: Context; io: Io },
): Promise<string> {
  const accounts = await new CloudflareClient(config, setup.ctx).listAccounts();
  const [only] = accounts;
  if (accounts.length === 1 && only) {
    setup.io.stdout(`Cloudflare account: ${only.name} (${only.id}), the one the token sees`);
    return only.id;
  }
  // The same refusal refresh gives: no guess between accounts.
  if (accounts.length === 0 || !setup.terminal) throw noAccountTaken(accounts);
  return await choose(
    setup.terminal,
    "The token sees several accounts. Which one holds the worker?",
    accounts.map((a) => ({ label: `${a.name} (${a.id})`, value: a.id })),
  );
}

/** Where visitors reach the site, when neither is given: asked, or workers.dev in a pipe. */
async function pickWhere(
  config: CloudflareConfig,
  setup: { settings: Settings; terminal?: Prompter },
): Promise<{ route?: string; domain?: string }> {
  if (config.route || config.domain || !setup.terminal) return {};
  const how = await choose(setup.terminal, "Where do visitors reach the site?", [
    {
      label: `workers.dev: https://${config.workerName}.<your subdomain>.workers.dev/`,
      value: "dev",
    },
    {
      label: "a custom domain, such as cdn.example.com (Cloudflare makes its DNS record)",
      value: "domain",
    },
    {
      label: "a route, such as cdn.example.com/* (a proxied DNS record must exist)",
      value: "route",
    },
  ]);
  if (how === "dev") return {};
  const name = how === "route" ? "WORKER_ROUTE" : "WORKER_DOMAIN";
  const value = await gather(name, { settings: {}, terminal: setup.terminal, missing: [] }, {
    text: how === "route" ? "Route pattern" : "Host name",
  });
  return how === "route" ? { route: value! } : { domain: value! };
}

/** The zone of the route or domain: found by its host; else typed, or a refusal in a pipe. */
async function pickZone(
  config: CloudflareConfig,
  setup: { terminal?: Prompter; ctx: Context; io: Io },
): Promise<string | undefined> {
  const target = config.route ?? config.domain;
  if (config.zoneId || !target) return config.zoneId;
  const zone = await findZone(new CloudflareClient(config, setup.ctx), target);
  if (zone) {
    setup.io.stdout(`Cloudflare zone: ${zone.name} (${zone.id})`);
    return zone.id;
  }
  if (!setup.terminal) throw new ConfigError([noZone(config, target)]);
  setup.terminal.say(noZone(config, target));
  return await askUntil(setup.terminal, "Zone id (32 hex), as the Overview page shows it: ", {
    read: (answer) => {
      const { id, problem } = readCloudflareId("CLOUDFLARE_ZONE_ID", answer);
      return id ? { value: id } : { problem: problem! };
    },
  });
}

/**
 * Each permission the setup needs, probed with a read-only call; a refusal names the
 * permission group to add. A read cannot tell Edit from Read: the groups named are the ones a
 * refresh uses (developers.cloudflare.com/fundamentals/api/reference/permissions/).
 */
async function permissionProblems(config: CloudflareConfig, ctx: Context): Promise<string[]> {
  const cf = new CloudflareClient(config, ctx);
  const groups = permissionGroups(config);
  const probes: { read: () => Promise<unknown>; group: PermissionGroup }[] = [
    { read: () => cf.listScripts(), group: groups.scripts },
  ];
  if (config.route) probes.push({ read: () => cf.listRoutes(), group: groups.routes });
  const problems: string[] = [];
  for (const probe of probes) {
    try {
      await probe.read();
    } catch (error) {
      const refusal = refusedPermission(error, probe.group);
      if (!refusal) throw error;
      problems.push(`${refusal} Then run init again.`);
    }
  }
  if (config.workersDev && problems.length === 0 && !(await cf.accountSubdomain())) {
    problems.push(`workers.dev: ${noSubdomain(config)}.`);
  }
  return problems;
}

/**
 * A value as `.env` holds it and `parseEnv` reads it back unchanged: bare when it can be, else
 * in the first of ', ` and " quotes it does not hold (only " expands \n, so a value with a line
 * break is refused: no setting takes one).
 */
function envValue(name: Variable, value: string): string {
  if (/^[A-Za-z0-9_.,:/@*+=%-]*$/.test(value)) return value;
  const quote = ["'", "`", '"'].find((q) => !value.includes(q));
  if (!quote || value.includes("\n")) {
    throw new ConfigError([
      `${name} cannot be written to .env as it is: it holds a line break or every kind of quote.`,
    ]);
  }
  return `${quote}${value}${quote}`;
}

/**
 * The text of a `.env` holding `settings`, in the order of {@linkcode VARIABLES} (that of
 * `.env.example`), one `NAME=value` a line, read back the same by `parseEnv`.
 * @internal
 */
export function envFileText(settings: Settings): string {
  const lines = (Object.keys(VARIABLES) as Variable[])
    .filter((name) => settings[name] !== undefined)
    .map((name) => `${name}=${envValue(name, settings[name]!)}`);
  return "# Written by b2-private-cdn init; every setting: docs/configuration.md or .env.example.\n" +
    "# It holds secrets: keep it to yourself (mode 0600).\n" +
    `${lines.join("\n")}\n`;
}

/**
 * Writes `text` to `path` readable by its owner alone (mode 0600). An existing file is first
 * renamed to `<path>.bak-<time>`, which is returned; the new file is written beside it and
 * renamed into place, so `path` is never half written.
 */
async function writeEnvFile(path: string, text: string, now: number) {
  let backup: string | undefined;
  try {
    await Deno.lstat(path);
    backup = `${path}.bak-${new Date(now).toISOString().replace(/[-:]|\.\d+/g, "")}`;
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  }
  const temporary = `${path}.new-${crypto.randomUUID().slice(0, 8)}`;
  await Deno.writeTextFile(temporary, text, { mode: 0o600, createNew: true });
  // The mode given is masked by the umask, which may not be 077.
  await Deno.chmod(temporary, 0o600);
  if (backup) await Deno.rename(path, backup);
  await Deno.rename(temporary, path);
  return backup;
}

/** A word as a POSIX shell reads it back: bare when safe, else single-quoted. */
function shellWord(text: string): string {
  return /^[A-Za-z0-9_./:@+=-]+$/.test(text) ? text : `'${text.replaceAll("'", `'\\''`)}'`;
}

/** The refresh command for this machine: absolute `deno` and script, and the settings file. */
function refreshCommand(place: Pick<InitPlace, "denoPath" | "script">, envFile?: string): string {
  return `${shellWord(place.denoPath)} run ${NET_ENV_READ} ${shellWord(place.script)} refresh` +
    (envFile ? ` --env-file ${shellWord(envFile)}` : "");
}

/**
 * The crontab line for this machine: the absolute `deno`, directory and settings file.
 * @internal
 */
export function crontabLine(
  place: Pick<InitPlace, "cwd" | "denoPath" | "script">,
  envFile?: string,
): string {
  return `${DEFAULT_SCHEDULE} cd ${shellWord(place.cwd)} && ${refreshCommand(place, envFile)} ` +
    `>> ${shellWord(`${place.cwd}/b2-private-cdn.log`)} 2>&1`;
}

/**
 * `init`: checks a B2 key and a Cloudflare token, finds what they may reach, asks what only a
 * person can say (or takes it from flags and the environment in a pipe), writes `.env` and
 * prints the crontab line; at a terminal it offers the first refresh.
 */
async function runInit(job: Job): Promise<number> {
  const { settings, ctx, io, flags } = job;
  const place = job.place;
  if (!place) throw new Error("init needs InitPlace");
  const terminal = place.terminal;
  const path = job.envFile ?? ".env";
  const setup = { settings, ctx, io, ...(terminal && { terminal }) };
  await checkEnvFileFree(path, { terminal, force: flags.force });
  if (!terminal) requireCredentials(settings);
  const b2 = await setupB2(setup);
  const cloudflare = await setupCloudflare(setup);
  const written: Settings = { ...settings, ...b2, ...cloudflare.gathered };
  // Checked as refresh will read it, before anything is written.
  const config = parseConfig(written, { b2: true, cloudflare: true });
  const backup = await writeEnvFile(path, envFileText(written), ctx.now());
  io.stdout(`Wrote ${path} (mode 0600)${backup ? `; the old one is ${backup}` : ""}.`);
  const cron = crontabLine(place, job.envFile);
  io.stdout(`Refresh it daily from crontab (crontab -e), at an odd minute:\n  ${cron}`);
  if (!terminal || !(await confirm(terminal, "Run the first refresh now?", true))) {
    const base = await siteBase(config, ctx) ?? "https://<where it answers>";
    io.stdout(
      `Then deploy: ${refreshCommand(place, job.envFile)} --verify ${base}/<a file in the bucket>`,
    );
    return 0;
  }
  const file = await askUntil(terminal, "A file to fetch once deployed, to check (Enter: none): ", {
    read: (answer) => ({ value: answer.replace(/^\/+/, "") }),
  });
  return await firstRefresh(config, { ctx, io, file });
}

/** Where the site answers: the domain or route's base, else its workers.dev address. */
async function siteBase(config: Config, ctx: Context): Promise<string | undefined> {
  const cloudflare = config.cloudflare!;
  if (config.site || !cloudflare.workersDev) return config.site;
  return (await new CloudflareClient(cloudflare, ctx).workersDevAddress())?.replace(/\/$/, "");
}

/** A `.env` already there is replaced only when the person says so (or `--force`). */
async function checkEnvFileFree(
  path: string,
  options: { terminal: Prompter | undefined; force: boolean },
): Promise<void> {
  try {
    await Deno.lstat(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return;
    throw error;
  }
  if (options.force) return;
  const question = `${path} exists. Replace it (the old one is kept beside it)?`;
  const replace = options.terminal && await confirm(options.terminal, question, false);
  if (!replace) {
    throw new ConfigError([
      `${path} exists and was left as it is: pass --force to replace it (a backup is kept), or ` +
      "--env-file <path> to write another file.",
    ]);
  }
}

/** The first refresh, with `--verify` on the file named, as `refresh` prints it. */
async function firstRefresh(
  config: Config,
  options: { ctx: Context; io: Io; file: string },
): Promise<number> {
  const { ctx, io, file } = options;
  const base = file ? await siteBase(config, ctx) : undefined;
  const verifyUrl = base ? `${base}/${file}` : undefined;
  const result = await refresh({ ...config, ...(verifyUrl && { verifyUrl }) }, ctx, {
    module: await loadWorkerModule(),
    progress: (line) => io.stderr(line),
  });
  io.stdout(summary(result));
  for (const warning of result.warnings ?? []) io.stderr(`warning: ${warning}`);
  return 0;
}

// ---------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------

/** What every command needs: its settings and `.env` (and `worker_template.ts`). */
const ENV_READ = "--allow-env --allow-read";
/** What the commands that call an API need on top. */
const NET_ENV_READ = `--allow-net ${ENV_READ}`;

/** One flag of a command: how the parser reads it and the line its help page prints. */
interface FlagSpec {
  /** Repeatable: every value is kept, in order (`[]` when not given). */
  multiple?: true;
  /** What it takes, as its help line shows it, such as `<url>`; without one it is a switch. */
  value?: string;
  /** What it does; each `\n` starts a line under the first. */
  help: string;
  /** The setting its value is (`--verify` is `VERIFY_URL`). */
  setting?: Variable;
  /** Only a person running the command by hand gives it; scheduled runs never do. */
  byHand?: true;
  /** Its value once read, or `undefined` when it is not one (given as text, or absent). */
  parse?: (text: string | undefined) => unknown;
  /** What `parse` takes, for the problem when it is not that: `a port number`. */
  must?: string;
}

/**
 * One command: everything its help, the parser, the settings check and dispatch use. `F` is
 * the flags' type, which is read from the table itself (so the table is checked with `never`).
 */
interface CommandSpec<F = Flags> {
  /** Its line in the list of commands. */
  summary: string;
  /** What follows `main.ts <command>` on its usage line. */
  usage: string;
  /** What it does, in a sentence or two. */
  about: string;
  /** Its own flags; any other command's flag given to it is a problem. */
  flags: Record<string, FlagSpec>;
  /** One command line that works, with a comment. */
  example: string;
  /** Its exit codes. @default "0 done, 1 the operation failed, 2 bad usage or configuration" */
  exit?: string;
  /**
   * What it needs of the configuration given its flags (every setting given is checked).
   * @default nothing
   */
  needs?: (flags: F) => Needs;
  /** The Deno permission flags it runs with. */
  permissions: string;
  /** The problems with its positional arguments. @default none may be given */
  positionals?: (args: string[], flags: F) => string[];
  /** Reads no settings and no `.env`: keygen's key must come out while they hold a bad one. */
  settingsFree?: true;
  /** Reads the environment and flags but not the dotenv file, which it writes (`init`). */
  writesEnvFile?: true;
  /** Runs it; absent for what the local platform runs (`dev`, `demo`). */
  handler?: CommandHandler;
}

/** `--port` of the local platform's commands. */
const PORT_FLAG = {
  value: "<n>",
  help: "local port (default 8787)",
  parse: (text = "8787"): number | undefined => {
    const port = Number(text);
    return Number.isInteger(port) && port >= 0 && port <= 65535 ? port : undefined;
  },
  must: "a port number",
} as const satisfies FlagSpec;

/**
 * The commands, in the order `--help` lists them. Usage, help pages, the flag parser's
 * options, the check of who takes which flag, and dispatch are all read from here.
 * @internal
 */
export const COMMANDS = {
  init: {
    summary: "guided setup: checks a B2 key and a Cloudflare token, finds the ids, writes .env",
    usage:
      "[--b2-bucket-name <name>] [--worker-route <pattern> | --worker-domain <host>] [--force]",
    about: "Checks a B2 key and a Cloudflare API token, offers the buckets, accounts and zones " +
      "they reach, checks each permission the setup needs with read-only calls, writes .env " +
      "(mode 0600) and prints the crontab line. At a terminal it asks (secrets unseen), asks " +
      "again for a key or token it was refused (3 tries), and offers the first refresh; in a pipe it takes everything from flags and the environment " +
      "and names what is missing. It reads no .env: --env-file names the file it writes.",
    flags: {
      force: {
        help: "replace an existing .env (or --env-file) without asking; the old\n" +
          "one is kept beside it",
      },
    },
    example: "deno task init   # or, in a pipe: B2_APPLICATION_KEY_ID=... B2_APPLICATION_KEY=... " +
      "CLOUDFLARE_API_TOKEN=... deno task init --b2-bucket-name photos",
    exit: "0 .env written, 1 B2 or Cloudflare failed, 2 something is missing or refused",
    permissions: `${NET_ENV_READ} --allow-write`,
    writesEnvFile: true,
    handler: runInit,
  },
  refresh: {
    summary: "get a fresh B2 download token and deploy the worker with it (default)",
    usage: "[--dry-run] [--verify <url>] [--take-over] [--remove-leftovers] [--json]",
    about: "Gets a fresh B2 download token and deploys the worker with it, then its route, " +
      "custom domain and workers.dev. A failed B2 step uploads nothing.",
    flags: {
      "dry-run": {
        help: "do the B2 steps, ask Cloudflare read-only what a real run would\n" +
          "change or meet, and show the plan and the upload (secrets masked);\n" +
          "write nothing",
      },
      verify: {
        value: "<url>",
        help: "fetch this URL afterwards; fail unless it answers 2xx",
        setting: "VERIFY_URL",
      },
      "take-over": {
        help: "once, by hand: move WORKER_ROUTE / WORKER_DOMAIN from another\n" +
          "Worker, deleting the DNS record that blocks a custom domain",
        byHand: true,
      },
      "remove-leftovers": {
        help: "delete routes and custom domains that run this worker but no\n" +
          "setting names any more",
        byHand: true,
      },
      json: { help: "one JSON object on stdout" },
    },
    example:
      "deno run --allow-net --allow-env --allow-read main.ts refresh --verify https://cdn.example.com/index.html",
    needs: (): Needs => ({ b2: true, cloudflare: true }),
    permissions: NET_ENV_READ,
    handler: runRefresh,
  },
  status: {
    summary: "check the deployed worker's token, as a Nagios plugin (exit 0/1/2/3)",
    usage: "[--min-remaining <duration>] [--json]",
    about: "Reads the deployed worker's bindings: its token's expiry, age and time left, its " +
      "edge cache, where it answers and its leftovers. One line, as a Nagios plugin prints.",
    flags: {
      "min-remaining": {
        value: "<d>",
        help: "WARNING below this much time left, CRITICAL below half of it;\n" +
          "under 7d (default 48h: WARNING under 48h, CRITICAL under 24h)",
        parse: (text: string | undefined): number | undefined => {
          const seconds = text === undefined ? STATUS_MIN_REMAINING : parseDuration(text);
          return seconds !== undefined && seconds < MAX_TOKEN_TTL ? seconds : undefined;
        },
        must: `a duration under 7d, written ${DURATION_SYNTAX} (a B2 download token lives 7d ` +
          "at most, so status could never say OK to more)",
      },
      json: { help: "the report as one JSON object on stdout" },
    },
    example:
      "deno run --allow-net --allow-env --allow-read main.ts status --min-remaining 3d   # a Nagios check",
    exit: "0 OK, 1 WARNING (refresh soon), 2 CRITICAL (the site fails or soon will), " +
      "3 UNKNOWN (Cloudflare could not be asked, or bad usage or configuration)",
    needs: statusNeeds,
    permissions: NET_ENV_READ,
    handler: runStatus,
  },
  render: {
    summary: "say what refresh would upload: size, bindings (secrets masked); no network",
    usage: "[--module | --out <file>] [--json]",
    about: "Says what refresh would upload: the module's size, its bindings (secrets masked, " +
      "B2's answers as placeholders) and the settings that differ from the defaults; the " +
      "module itself with --module or --out. Needs no credentials and no network.",
    flags: {
      module: { help: "print the module alone (to pipe or diff)" },
      out: { value: "<file>", help: "write the module to this file" },
      json: { help: "{ cacheMode, segments, metadata, module } on stdout" },
    },
    example: "deno run --allow-env --allow-read main.ts render --worker-cache-mode cache-api",
    permissions: ENV_READ,
    handler: runRender,
  },
  purge: {
    summary: "remove paths, --prefix <path> or --all from the edge cache",
    usage: "<path>... | --prefix <path>... | --all [--url <url>] [--json]",
    about: "Removes paths (exactly), every path under a prefix, or everything from Workers " +
      "Cache, by a signed request the worker answers (signed with WORKER_PURGE_KEY, else a " +
      "key derived from B2_APPLICATION_KEY).",
    flags: {
      prefix: {
        multiple: true,
        value: "<path>",
        help: "every path that starts with this (repeatable)",
      },
      all: { help: "everything the worker's cache holds" },
      url: {
        value: "<url>",
        help: "where the worker answers (default: WORKER_DOMAIN, the route's\n" +
          "host, else its workers.dev address)",
      },
      json: { help: "the report as one JSON object on stdout" },
    },
    example:
      "deno run --allow-net --allow-env --allow-read main.ts purge /index.html --prefix /css/ --url https://cdn.example.com",
    exit: "0 done, 1 refused or rate limited, 2 bad usage or configuration",
    needs: purgeNeeds,
    permissions: NET_ENV_READ,
    positionals: purgePositionalProblems,
    handler: runPurge,
  },
  cron: {
    summary: "stay running and refresh on REFRESH_SCHEDULE (Deno.cron)",
    usage: "[--verify <url>]",
    about: "Stays running: refreshes at start when the token is due, then on REFRESH_SCHEDULE " +
      "(Deno.cron, UTC), retrying a failed run. Ctrl-C or SIGTERM stops it.",
    flags: {
      verify: { value: "<url>", help: "fetch this URL after each refresh", setting: "VERIFY_URL" },
    },
    example: "deno run --allow-net --allow-env --allow-read --unstable-cron main.ts cron",
    exit: "0 once stopped (it runs until Ctrl-C or SIGTERM), 2 bad configuration",
    needs: (): Needs => ({ b2: true, cloudflare: true, schedule: true }),
    permissions: `${NET_ENV_READ} --unstable-cron`,
    handler: runCron,
  },
  dev: {
    summary: "run the worker locally in workerd with a real token (deno task dev)",
    usage: "[--port <n>]",
    about: "Runs the worker refresh would deploy in workerd on this machine, with a fresh real " +
      "token, behind the Workers Cache stand-in. Needs only the B2 settings; from a clone.",
    flags: { port: PORT_FLAG },
    example: "deno task dev --port 9000",
    exit: "0 on Ctrl-C or SIGTERM, 1 failed, 2 bad configuration or the port is taken",
    needs: (): Needs => ({ b2: true }),
    permissions: "-A",
  },
  demo: {
    summary: "the whole chain on this machine, against local stand-ins (deno task demo)",
    usage: "[--port <n>]",
    about: "The whole chain on this machine: stand-ins for B2 and Cloudflare, a real refresh, " +
      "the worker in workerd behind the Workers Cache stand-in. No account; from a clone.",
    flags: { port: PORT_FLAG },
    example: "deno task demo",
    exit: "0 on Ctrl-C or SIGTERM, 1 failed, 2 the port is taken",
    permissions: "-A",
  },
  sign: {
    summary: "print a signed link to a path under WORKER_SIGNED_PREFIXES; no network",
    usage: "<path> | --prefix <path> --expires <when> [flags]",
    about: "Prints a signed link to a path (or every path under a prefix) under " +
      "WORKER_SIGNED_PREFIXES, with WORKER_SIGNING_KEY. No network.",
    flags: {
      expires: {
        value: "<when>",
        help: "a duration from now (1h, 7d) or an ISO 8601 time (required)",
      },
      "not-before": { value: "<when>", help: "the link works only from then on" },
      "download-name": { value: "<name>", help: "served as an attachment with this file name" },
      prefix: {
        multiple: true,
        value: "<path>",
        help: "a link for every path under it, instead of one <path>",
      },
      url: {
        value: "<url>",
        help: "the site's origin (default: WORKER_DOMAIN or the route's host)",
      },
      json: { help: "the link and its parts as one JSON object" },
    },
    example: "deno run --allow-env --allow-read main.ts sign /members/video.mp4 --expires 1h",
    exit: "0 printed, 2 a link the worker would refuse, or bad usage or configuration",
    permissions: ENV_READ,
    positionals: signPositionalProblems,
    handler: runSign,
  },
  keygen: {
    summary: "print a fresh WORKER_SIGNING_KEY",
    usage: "[--json]",
    about: "Prints a fresh WORKER_SIGNING_KEY (on stdout only, shown once). Reads no settings.",
    flags: { json: { help: "{ key } on stdout" } },
    example: 'echo "WORKER_SIGNING_KEY=$(deno run main.ts keygen)" >> .env',
    exit: "0",
    // Reads no setting: main() does not even read the environment for it.
    permissions: "",
    settingsFree: true,
    handler: runKeygen,
  },
  "check-cache": {
    summary: "check Workers Cache on the deployed worker from real answers",
    usage: "[--url <url>] [--large-url <url>] [--json]",
    about: "Asks the deployed worker and reports, from real answers, whether Workers Cache " +
      "stores, serves and purges as intended. Run once after the first deploy.",
    flags: {
      url: {
        value: "<url>",
        help: "a small object on the worker (default: WORKER_DOMAIN's or the\n" +
          "route's host, else the worker's workers.dev address, /)",
      },
      "large-url": { value: "<url>", help: "a large object, to see how its ranges are served" },
      json: { help: "the report as one JSON object on stdout" },
    },
    example:
      "deno run --allow-net --allow-env --allow-read main.ts check-cache --url https://cdn.example.com/hello.txt",
    exit: "0 as intended, 1 a problem, 2 no URL or bad usage",
    needs: checkCacheNeeds,
    permissions: NET_ENV_READ,
    handler: runCheckCache,
  },
} as const;

// Checked here rather than with `satisfies`, which would read the flags' type while it is
// being read from the table.
COMMANDS satisfies Record<string, CommandSpec<never>>;

type Command = keyof typeof COMMANDS;

/** `status` reads the rule's B2 side only when events are on; `--min-remaining` is checked. */
function statusNeeds(flags: Flags): Needs {
  return { cloudflare: true, minRemaining: flags["min-remaining"], b2ForEvents: true };
}

/**
 * With `--url`, `WORKER_DOMAIN` or a one-host route nothing of Cloudflare is asked: only the key
 * purge requests are signed with.
 */
function purgeNeeds(flags: Flags): Needs {
  return { cloudflareUnlessSite: flags.url === undefined, purgeKey: true };
}

/** With `--url`, `WORKER_DOMAIN` or a one-host route nothing of Cloudflare is asked. */
function checkCacheNeeds(flags: Flags): Needs {
  return { cloudflareIfAccount: flags.url === undefined };
}

/** Whether `name` is a command (`constructor` is not, though `in` would say so). */
function isCommand(name: string | undefined): name is Command & string {
  return name !== undefined && Object.hasOwn(COMMANDS, name);
}

/** Each command's flags' values, by name. */
type FlagValues = {
  [C in Command]: {
    [Name in keyof (typeof COMMANDS)[C]["flags"]]: FlagValue<(typeof COMMANDS)[C]["flags"][Name]>;
  };
}[Command];
/** The type that has every member of the union `U`. */
type UnionToIntersection<U> = (U extends unknown ? (u: U) => void : never) extends
  (i: infer I) => void ? I : never;

/** What a flag's value is once read: its parsed value, a list, text if given, or a switch. */
type FlagValue<S> = S extends { parse: (text: string | undefined) => infer V }
  ? Exclude<V, undefined>
  : S extends { multiple: true } ? string[]
  : S extends { value: string } ? string | undefined
  : boolean;

/** The command line's flags, by name, as read from {@linkcode COMMANDS}, and `--verbose`. */
type Flags = UnionToIntersection<FlagValues> & { verbose: boolean };

/** Every command's flags, by name, each with the commands that take it. */
function commandFlags(): Map<string, { spec: FlagSpec; commands: Command[] }> {
  const flags = new Map<string, { spec: FlagSpec; commands: Command[] }>();
  for (const [command, spec] of Object.entries(COMMANDS) as [Command, CommandSpec][]) {
    for (const [name, flag] of Object.entries(spec.flags)) {
      const entry = flags.get(name) ?? { spec: flag, commands: [] };
      entry.commands.push(command);
      flags.set(name, entry);
    }
  }
  return flags;
}

/** The flags every command takes, beside its own and the settings'. */
const COMMON_FLAGS = {
  help: { type: "boolean", short: "h" },
  version: { type: "boolean", short: "V" },
  verbose: { type: "boolean", short: "v" },
  "env-file": { type: "string" },
} as const;

/** What `--help` prints: the commands, and where each one's page and the settings are. */
function usage(): string {
  return `b2-private-cdn ${VERSION}: serve a private Backblaze B2 bucket through a Cloudflare Worker

Usage: deno run --allow-net --allow-env --allow-read main.ts [command] [flags]

Commands:
${Object.entries(COMMANDS).map(([name, spec]) => `  ${name.padEnd(13)}${spec.summary}`).join("\n")}

deno run main.ts help <command> (or <command> --help): its flags and an example.
deno run main.ts help settings: every setting (flags, else environment, else .env).
Every command also takes --env-file <path>, --verbose (-v), --help (-h), --version (-V).

Exit codes: 0 done, 1 the operation failed, 2 bad usage or configuration (status: see its help).`;
}

/** `main.ts help <topic>`: a command's page, `settings`, or without a topic {@linkcode usage}. */
function helpText(topic?: Command | "settings"): string {
  if (topic === undefined) return usage();
  if (topic === "settings") {
    return "Settings (flags, else environment, else .env; * marks credentials, never flags):\n" +
      SETTINGS.map(([name, v]) =>
        `  ${(isCredential(v) ? "*" : " ") + name.padEnd(24)} ${settingLine(v)}`
      ).join("\n") +
      "\nEvery setting but the credentials is also a flag: --b2-bucket-name photos. " +
      "Details and defaults: docs/configuration.md.";
  }
  const page: CommandSpec = COMMANDS[topic];
  const run = page.handler ? `${denoRun(page.permissions)} main.ts ${topic}` : `deno task ${topic}`;
  const exit = page.exit ?? "0 done, 1 the operation failed, 2 bad usage or configuration";
  return `Usage: ${run} ${page.usage}\n\n${wrap(page.about)}\n\nFlags:\n` +
    Object.entries(page.flags).map(([name, flag]) => flagLine(name, flag)).join("\n") +
    (page.writesEnvFile
      ? "\n  --env-file <path>      write the settings to this file instead of ./.env"
      : "\n  --env-file <path>      read settings from this file instead of ./.env") +
    "\n  --verbose, -v          print each step on stderr" +
    "\n  --<setting>            any setting but a credential (deno run main.ts help settings)" +
    `\n\nExample:\n  ${page.example}\n\n${wrap(`Exit codes: ${exit}`)}`;
}

/** A flag's lines on its command's page: the flag and what it takes, then what it does. */
function flagLine(name: string, flag: FlagSpec): string {
  const label = `--${name}${flag.value ? ` ${flag.value}` : ""}`.padEnd(22);
  return `  ${label} ${flag.help.replaceAll("\n", `\n${" ".repeat(25)}`)}`;
}

/** `deno run` with a command's permission flags, if it has any. */
function denoRun(permissions: string): string {
  return permissions ? `deno run ${permissions}` : "deno run";
}

/**
 * A setting's line in `help settings`: what it does, then its default as the table has it
 * (quoted when it has spaces); an empty default is described by `about` itself.
 */
function settingLine(setting: Setting): string {
  const value = setting.default;
  if (!value) return setting.about;
  return `${setting.about} (default ${/\s/.test(value) ? JSON.stringify(value) : value})`;
}

/** Breaks `text` into lines of at most `width` characters, at spaces. */
function wrap(text: string, width = 78): string {
  const lines: string[] = [];
  let line = "";
  for (const word of text.split(" ")) {
    if (line && line.length + 1 + word.length > width) {
      lines.push(line);
      line = word;
    } else line = line ? `${line} ${word}` : word;
  }
  return [...lines, line].join("\n");
}

/** Where a command writes; everything passes through the secret filter. */
export interface Io {
  /** Writes one line of output. */
  stdout: (text: string) => void;
  /** Writes one line of diagnostics. */
  stderr: (text: string) => void;
}

/** A credential as `--verbose` may show it: its first four characters, enough to tell keys apart. */
function firstFour(credential: string): string {
  return credential.length > 4 ? `${credential.slice(0, 4)}...` : "...";
}

/** `text` with each credential in `credentials` cut to its {@linkcode firstFour}. */
function maskCredentials(text: string, credentials: Iterable<string>): string {
  let out = text;
  for (const credential of credentials) {
    if (credential.length > 4) out = out.replaceAll(credential, firstFour(credential));
  }
  return out;
}

/** `place` whose terminal never shows a known secret in what it prints. */
function redactingPlace(place: InitPlace, secrets: Set<string>): InitPlace {
  const terminal = place.terminal;
  if (!terminal) return place;
  return {
    ...place,
    terminal: {
      ask: (question, options) => terminal.ask(redact(question, secrets), options),
      say: (text) => terminal.say(redact(text, secrets)),
    },
  };
}

/** Replaces every known secret in `text`. */
function redact(text: string, secrets: Iterable<string>): string {
  let out = text;
  for (const secret of secrets) {
    if (secret.length >= 4) out = out.replaceAll(secret, "[redacted]");
  }
  return out;
}

/**
 * The one line (and notes) a refresh prints for a person.
 * @internal
 */
export function summary(result: RefreshResult): string {
  const where = result.prefix ? `prefix "${result.prefix}"` : "the whole bucket";
  const done = result.reusedUpload
    ? `Kept worker "${result.worker}" uploaded at ${result.reusedUpload}`
    : `${result.deployed ? "Deployed" : "Would deploy"} worker "${result.worker}"`;
  return `${done} for bucket "${result.bucket}" (${where}); token expires ${result.expiresAt}` +
    (result.route ? `; route ${result.route}` : "") +
    (result.domain ? `; domain ${result.domain}` : "") +
    (result.workersDev ? `; workers.dev ${result.workersDev}` : "") +
    (result.verified ? `; verified ${result.verified}` : "") +
    `; edge cache ${result.cacheMode}` +
    (result.purged ? `; purged everything: ${result.purged}` : "") +
    (result.eventNotifications ? `; event rule ${result.eventNotifications}` : "") +
    (result.changed ?? []).map((line) => `\nChanged: ${line}`).join("") +
    // A dry run says how large objects would be served; the deployed value is in status.
    (!result.deployed && !result.reusedUpload && result.segmentSize !== undefined
      ? `\n${capitalize(describeSegments(result.cacheMode, result.segmentSize))}`
      : "") +
    (result.notice ? `\nNote: ${result.notice}` : "");
}

async function runRefresh({ config, ctx, io, flags, pinged }: Job): Promise<number> {
  let result: RefreshResult & { upload?: WorkerUpload };
  let incomplete: IncompleteDeployError | undefined;
  try {
    result = await refresh(config, ctx, {
      module: await loadWorkerModule(),
      dryRun: flags["dry-run"],
      takeOver: flags["take-over"],
      removeLeftovers: flags["remove-leftovers"],
      progress: (line) => io.stderr(line),
      ...(pinged && { pinged }),
    });
  } catch (error) {
    if (!(error instanceof IncompleteDeployError)) throw error;
    incomplete = error;
    result = error.result;
  }
  const { upload, ...facts } = result;
  const eventRule = flags["dry-run"] && config.worker.eventNotifications
    ? describeEventRule(config)
    : undefined;
  if (flags.json) {
    io.stdout(JSON.stringify(
      flags["dry-run"] && upload
        ? { ...facts, metadata: maskSecrets(upload.metadata), ...(eventRule && { eventRule }) }
        : facts,
    ));
  } else {
    io.stdout(summary(result));
    if (flags["dry-run"] && upload) io.stdout(describeUpload(upload));
    if (result.plan) io.stdout(describePlan(result.plan));
    if (eventRule) io.stdout(eventRule);
  }
  for (const warning of result.warnings ?? []) io.stderr(`warning: ${warning}`);
  if (incomplete) {
    io.stderr(`error: ${incomplete.message}`);
    return 1;
  }
  const problems = result.plan?.problems ?? [];
  if (problems.length > 0) {
    // One sentence: the problems' own full stops would stand before each "; ".
    const joined = problems.map((problem) => problem.replace(/\.$/, "")).join("; ");
    io.stderr(`error: a real run would fail: ${joined}.`);
    return 1;
  }
  return 0;
}

/** A dry run's plan, for a person: what would happen, then what would fail. */
function describePlan(plan: DeployPlan): string {
  const lines = ["Cloudflare, asked read-only (nothing was written):"];
  for (const step of plan.steps) lines.push(`  ${step}`);
  for (const problem of plan.problems) lines.push(`  PROBLEM: ${problem}`);
  return lines.join("\n");
}

function describeUpload(upload: WorkerUpload): string {
  const bytes = new TextEncoder().encode(upload.module).length.toLocaleString("en-US");
  return `The upload would be ${upload.metadata.main_module}, ${bytes} bytes, with ` +
    `${upload.metadata.bindings.length} bindings (secrets masked):\n` +
    bindingLines(upload.metadata).join("\n");
}

/** One line per binding, name then value, secrets masked (`placeholders` stand for values). */
function bindingLines(
  metadata: WorkerMetadata,
  placeholders: Readonly<Record<string, string>> = {},
): string[] {
  const width = Math.max(...metadata.bindings.map((b) => b.name.length));
  return metadata.bindings.map((b) => {
    const shown = placeholders[b.name] ??
      (b.type === "secret_text" ? "(secret, not shown)" : JSON.stringify(b.text));
    return `  ${b.name.padEnd(width)}  ${shown}`;
  });
}

/**
 * Prints what refresh would upload, with placeholders for what only B2 can
 * tell (the token, its times and the download URL): no credentials, no network.
 */
async function runRender({ settings, config, io, flags }: Job): Promise<number> {
  const module = await loadWorkerModule();
  const { worker } = config;
  const served = {
    bucketName: config.bucketName ?? "(B2_BUCKET_NAME)",
    prefix: config.filePrefix ?? "",
    options: worker,
  };
  const upload = workerUpload(module, {
    ...served,
    downloadToken: "",
    downloadUrl: "https://f000.backblazeb2.com (from b2_authorize_account)",
    issuedAt: 0,
    expiresAt: 0,
    ...(config.purgeSecret && { purgeKey: "(derived)" }),
    ...(worker.eventNotifications && { eventSecret: "(derived)" }),
    fingerprint: await servingFingerprint(module, served),
  });
  const metadata = maskSecrets(upload.metadata);
  const segments = describeSegments(worker.cacheMode, worker.segmentSize ?? DEFAULT_SEGMENT_SIZE);
  const eventRule = worker.eventNotifications ? describeEventRule(config) : undefined;
  if (flags.json) {
    // JSON leaves eventRule out when it is undefined.
    io.stdout(
      JSON.stringify({ cacheMode: worker.cacheMode, segments, eventRule, metadata, module }),
    );
    return 0;
  }
  if (flags.module) return io.stdout(module), 0;
  if (flags.out !== undefined) await Deno.writeTextFile(flags.out, module);
  io.stdout(renderSummary({ settings, config, metadata, module, segments, eventRule }));
  if (flags.out !== undefined) io.stdout(`Wrote the module to ${flags.out}.`);
  return 0;
}

/** What `render` prints for a person: the module's size, the bindings, the settings changed. */
function renderSummary(facts: {
  settings: Settings;
  config: Config;
  metadata: WorkerMetadata;
  module: string;
  segments: string;
  eventRule: string | undefined;
}): string {
  const { config, metadata, module } = facts;
  const bytes = new TextEncoder().encode(module).length;
  const cache = describeCache(config.worker.cacheMode, cacheOptionsFor(config.worker.cacheMode));
  // B2's answers are only known at refresh: shown as what they will be, not as 1970.
  const atRefresh: Record<string, string> = {
    B2_DOWNLOAD_TOKEN: "(secret: B2's download token, made at refresh)",
    B2_TOKEN_ISSUED_AT: "(when refresh runs)",
    B2_TOKEN_EXPIRES_AT: `(B2_TOKEN_TTL after refresh runs)`,
    B2_DOWNLOAD_URL: "(B2's download URL for the account, from b2_authorize_account at refresh)",
  };
  const bindings = bindingLines(metadata, atRefresh);
  const changed = changedSettings(facts.settings);
  return [
    `The worker refresh would deploy as "${config.workerName}" (nothing was sent anywhere):`,
    `  module ${metadata.main_module}, ${bytes.toLocaleString("en-US")} bytes ` +
    "(render --module prints it, render --out <file> writes it)",
    `  ${capitalize(cache)}`,
    `  ${capitalize(facts.segments)}`,
    ...(facts.eventRule ? [`  ${capitalize(facts.eventRule)}`] : []),
    `Bindings (${metadata.bindings.length}, secrets masked):`,
    ...bindings,
    changed.length > 0
      ? `Settings that differ from the defaults:\n${changed.map((line) => `  ${line}`).join("\n")}`
      : "Every setting is at its default.",
  ].join("\n");
}

/**
 * The settings given whose value differs from the default, as `NAME=value`: secrets as set,
 * never shown, and credentials by their first four characters.
 */
function changedSettings(settings: Settings): string[] {
  const reading = readSettings(settings);
  const defaults = readSettings({});
  return SETTINGS
    .filter(([name]) =>
      reading.given.has(name) &&
      JSON.stringify(reading.values[name]) !== JSON.stringify(defaults.values[name])
    )
    .map(([name, setting]) =>
      setting.kind === "secret"
        ? `${name} (set; a secret, not shown)`
        : `${name}=${setting.credential ? shownCredential(name, settings[name]!) : settings[name]}`
    );
}

/** A credential as output may show it: the ping URL's host and cut path, else four characters. */
function shownCredential(name: Variable, value: string): string {
  return name === "REFRESH_PING_URL" ? shownPingUrl(value) : firstFour(value);
}

async function runStatus({ config, ctx, io, flags }: Job): Promise<number> {
  const report = await status(config.cloudflare!, ctx, {
    minRemaining: flags["min-remaining"],
    cacheMode: config.worker.cacheMode,
    survey: true,
    ...(config.worker.eventNotifications &&
      { more: (report: StatusReport) => eventRuleFindings(config, ctx, report) }),
  });
  if (flags.json) {
    io.stdout(JSON.stringify(report));
  } else {
    const left = report.remaining ?? 0;
    const facts = report.expiresAt
      ? (left > 0
        ? `the download token expires ${report.expiresAt}, in ${formatDuration(left)}`
        : `the download token expired ${report.expiresAt}, ${formatDuration(-left)} ago`) +
        (report.age !== undefined ? ` (issued ${formatDuration(report.age)} ago)` : "")
      : "";
    const cache = report.cacheMode ? describeCache(report.cacheMode, report.cacheOptions) : "";
    io.stdout(
      `${report.state} - worker "${report.worker}": ` +
        [facts, cache, report.problem].filter(Boolean).join("; ") +
        (report.cacheMode
          ? `\n${capitalize(describeSegments(report.cacheMode, report.segmentSize ?? 0))}`
          : "") +
        (report.urls ? `\nAnswers at: ${report.urls.join(", ") || "nowhere"}` : "") +
        (report.eventNotifications ? `\n${describeRuleState(report.eventNotifications)}` : "") +
        (report.pinged ? `\n${report.pinged}` : "") +
        (report.warnings ?? []).map((w) => `\nWarning: ${w}`).join(""),
    );
  }
  return STATUS_EXIT[report.state];
}

/**
 * The exit codes of Nagios plugins, which `status` follows:
 * https://nagios-plugins.org/doc/guidelines.html ("Plugin Return Codes"). UNKNOWN is
 * also what a plugin returns for "invalid command line arguments", so bad usage or settings
 * of `status` exit 3, not 2: a monitor must not read them as CRITICAL.
 */
const STATUS_EXIT = { OK: 0, WARNING: 1, CRITICAL: 2, UNKNOWN: 3 } as const;

async function runPurge({ config, ctx, io, flags, args }: Job): Promise<number> {
  const report = await purge(config, ctx, purgeRequest(args, flags));
  if (flags.json) io.stdout(JSON.stringify(report));
  else if (report.mode === "off") {
    io.stdout(
      "The edge cache is off (WORKER_CACHE_MODE=off or WORKER_CACHE_TTL=0): nothing to purge.",
    );
  } else {
    const { paths, prefixes, everything } = report.purged;
    const what = everything
      ? "everything"
      : `${count(paths, "path", "paths")} and ${count(prefixes, "prefix", "prefixes")}`;
    io.stdout(
      `Purged ${what} from Workers Cache in ${count(report.requests, "request", "requests")} ` +
        `to ${report.url}` +
        // What the worker relays to its Segments entrypoint (worker_template.ts, "Segments in
        // Workers Cache"), and what it keeps per data centre.
        (report.segments
          ? "\nLarge objects' segments were purged too, everywhere. Where a data centre still " +
            "remembers a replaced one's old version, its next range finds the segment gone, B2 " +
            "names the new version, and that answer starts over from it."
          : "\nNote: this version keeps large objects' segments in the Cache API (no " +
            "ctx.exports, or WORKER_SEGMENT_SIZE=0): what the edge remembers of a replaced one " +
            "is forgotten only where the purge landed, and elsewhere lasts up to " +
            "WORKER_CACHE_TTL."),
    );
  }
  return 0;
}

/**
 * Listens for Ctrl-C (or SIGTERM) from now on, before anything tells the user
 * the command is ready; `pressed` resolves when the first arrives, and later ones are absorbed
 * until it is disposed. Disposing it stops listening, so a command that fails does not hang on
 * its listeners.
 * @internal
 */
export function listenForCtrlC(): Disposable & { pressed: Promise<void>; wasPressed(): boolean } {
  const { promise, resolve } = Promise.withResolvers<void>();
  let pressed = false;
  const stopListening = () => {
    Deno.removeSignalListener("SIGINT", stop);
    Deno.removeSignalListener("SIGTERM", stop);
  };
  // The listeners stay until disposed: a terminal's Ctrl-C reaches the whole process group and
  // `deno task` passes it on too, so a second SIGINT arrives while the first is being handled,
  // and without a listener it would end the process before its clean stop.
  const stop = () => {
    pressed = true;
    resolve();
  };
  Deno.addSignalListener("SIGINT", stop);
  Deno.addSignalListener("SIGTERM", stop);
  return { pressed: promise, wasPressed: () => pressed, [Symbol.dispose]: stopListening };
}

/** The check's lines, one finding each. */
function describeCacheCheck(report: CacheCheckReport): string {
  return `Workers Cache at ${report.url}: ${report.healthy ? "OK" : "PROBLEM"}\n` +
    report.findings.map((f) => `  ${f.outcome.padEnd(11)} ${f.check}: ${f.detail}`).join("\n");
}

/**
 * Runs once after the first deploy: a separate command, not a `refresh` mode,
 * since it needs no credentials, makes requests a daily refresh should not
 * (a large object's range, a purge), and its exit code means "the edge
 * caches as intended", not "the token was renewed".
 */
async function runCheckCache({ config, ctx, io, flags }: Job): Promise<number> {
  const { origin, cloudflare } = config;
  // As purge does: with neither a domain nor a concrete route, its workers.dev address
  // (checkCacheNeeds() reads Cloudflare's settings only then).
  const workersDev = cloudflare && await new CloudflareClient(cloudflare, ctx).workersDevAddress();
  const url = flags.url ?? (origin && `${origin}/`) ?? workersDev;
  const problems: string[] = [];
  for (const [flag, value] of [["--url", url], ["--large-url", flags["large-url"]]] as const) {
    if (value !== undefined && !URL.canParse(value)) {
      problems.push(`${flag} must be an http(s) URL, not "${value}".`);
    }
  }
  if (url === undefined) {
    problems.push(
      "check-cache needs the worker's address: give --url https://<worker host>/<a small " +
        "object>, set WORKER_DOMAIN, or set CLOUDFLARE_ACCOUNT_ID and CLOUDFLARE_API_TOKEN " +
        "to find its workers.dev address" +
        (cloudflare ? ` (${noSubdomain(cloudflare)}).` : "."),
    );
  }
  if (problems.length > 0) throw new ConfigError(problems);
  // The purge refresh and `purge` use: one object, by its path, sent beside the object (the
  // worker takes the purge path under any path, and whatever route serves the object serves
  // its folder too).
  const purgeObject = config.purgeSecret && config.worker.cacheMode === "workers-cache"
    ? async (object: URL) => {
      const url = new URL(".", object).href;
      await purge(config, ctx, { paths: [object.pathname], prefixes: [], all: false, url });
    }
    : undefined;
  const report = await checkCache(url!, ctx, {
    ...(flags["large-url"] !== undefined && { largeUrl: flags["large-url"] }),
    ...(purgeObject && { purge: purgeObject }),
    mode: config.worker.cacheMode,
  });
  io.stdout(flags.json ? JSON.stringify(report) : describeCacheCheck(report));
  return report.healthy ? 0 : 1;
}

async function runCron({ config, ctx, io }: Job): Promise<number> {
  if (typeof Deno.cron !== "function") {
    throw new ConfigError([
      "Deno.cron is not available: run with --unstable-cron (the deno.json tasks do).",
    ]);
  }
  using ctrlC = listenForCtrlC();
  const module = await loadWorkerModule();
  const report = (line: string) => io.stdout(`${new Date(ctx.now()).toISOString()} ${line}`);
  scheduleRefresh(config, ctx, { module, register: Deno.cron as CronRegistrar, report });
  report(`Scheduled "${CRON_NAME}" at "${config.refreshSchedule}" (UTC). Ctrl-C stops it.`);
  await withDeadMansSwitch(config.pingUrl, ctx, {
    report,
    job: async (run) => {
      const decision = await refreshIfDue(config, ctx, {
        loadModule: () => Promise.resolve(module),
        ...(run.pinged && { pinged: run.pinged }),
      });
      run.report(`Start-up check: ${decision.reason}`);
    },
  });
  await ctrlC.pressed;
  return 0;
}

function runKeygen({ io, flags }: Job): Promise<number> {
  const key = generateSigningKey();
  io.stdout(flags.json ? JSON.stringify({ key }) : key);
  io.stderr(
    "Keep it as WORKER_SIGNING_KEY in .env (or as a secret) on every machine that refreshes " +
      "the worker or signs links, then run refresh. It is shown only this once.",
  );
  return Promise.resolve(0);
}

/** Prints a signed link; every problem with the request is a {@linkcode ConfigError} (exit 2). */
async function runSign({ config, ctx, io, flags, args }: Job): Promise<number> {
  const signing = config.worker.signing;
  // Checked by signPositionalProblems(): one path, or one --prefix.
  const prefix = args.length === 0;
  const path = args[0] ?? flags.prefix[0] ?? "";
  const now = Math.floor(ctx.now() / 1000);
  const problems: string[] = [];
  const maxTtl = signing?.maxTtl ?? DEFAULT_SIGNED_MAX_TTL;
  if (!signing?.key) {
    problems.push(
      "Set WORKER_SIGNING_KEY to the key the worker checks (deno run main.ts keygen prints one).",
    );
  }
  if (!signing || signing.prefixes.length === 0) {
    problems.push(
      "Set WORKER_SIGNED_PREFIXES to the paths that need a signed link, e.g. /members/: " +
        "without it every path is public.",
    );
  }
  const { expiresAt, notBeforeAt } = signTimes(flags, { now, maxTtl, problems });
  const canonical = canonicalPath(path);
  if (canonical !== undefined && signing && signing.prefixes.length > 0) {
    const { indexFile } = config.worker;
    if (!isProtected(canonical, { prefixes: signing.prefixes, indexFile })) {
      problems.push(
        `"${path}" is not under WORKER_SIGNED_PREFIXES (${signing.prefixes.join(", ")}): ` +
          `it is public and needs no link${prefix ? ", and a prefix must lie within them" : ""}.`,
      );
    }
  }
  const baseUrl = flags.url ?? config.origin;
  if (baseUrl === undefined) {
    problems.push(
      "Give --url https://<your host>: neither WORKER_DOMAIN nor a WORKER_ROUTE with a " +
        "concrete host is set.",
    );
  }
  let link: SignedLink | undefined;
  try {
    link = await signLink(baseUrl ?? "https://placeholder.invalid", path, {
      key: signing?.key || generateSigningKey(),
      expires: expiresAt ?? now + 1,
      notBefore: notBeforeAt,
      downloadName: flags["download-name"],
      prefix,
    });
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    problems.push(...error.problems);
  }
  if (problems.length > 0 || link === undefined) throw new ConfigError(problems);
  io.stdout(flags.json ? JSON.stringify(link) : link.url);
  return 0;
}

/** `sign`'s `--expires` and `--not-before` in Unix seconds; each problem with them joins `problems`. */
function signTimes(flags: Flags, options: { now: number; maxTtl: number; problems: string[] }) {
  const { now, maxTtl, problems } = options;
  const when = (flag: string, text: string | undefined) => {
    if (text === undefined) return undefined;
    const seconds = parseDuration(text);
    if (seconds !== undefined) return now + seconds;
    if (ISO_TIME.test(text.trim())) return Math.floor(Date.parse(text.trim()) / 1000);
    problems.push(
      `--${flag} must be a duration from now (${DURATION_SYNTAX}) or an ISO 8601 time ` +
        `such as 2026-12-31T00:00:00Z, not "${text}".`,
    );
    return undefined;
  };
  const expiresAt = when("expires", flags.expires);
  const notBeforeAt = when("not-before", flags["not-before"]);
  if (flags.expires === undefined) problems.push("sign needs --expires, e.g. --expires 1h.");
  else if (expiresAt !== undefined && expiresAt <= now) {
    problems.push(`--expires must be in the future, not ${isoSeconds(expiresAt * 1000)}.`);
  } else if (expiresAt !== undefined && expiresAt - now > maxTtl) {
    problems.push(
      `--expires is ${formatDuration(expiresAt - now)} away, more than WORKER_SIGNED_MAX_TTL ` +
        `(${formatDuration(maxTtl)}), and the worker would refuse the link: sign for less, or ` +
        "raise WORKER_SIGNED_MAX_TTL and refresh.",
    );
  }
  return { expiresAt, notBeforeAt };
}

/** Parsed command line: the command, its arguments and flags, and the settings given as flags. */
interface CommandLine {
  /** @default "refresh" */
  command: Command;
  /** Its positional arguments: `purge`'s paths, `sign`'s path. */
  args: string[];
  flags: Flags;
  /** Settings given as flags, such as `--b2-bucket-name`. */
  settings: Settings;
  envFile?: string;
  /** What `--help`, `<command> --help` or `help [<topic>]` asked about; no topic for `--help`. */
  help?: { topic?: Command | "settings" };
  version: boolean;
}

/**
 * Parses `args`, throwing {@linkcode ConfigError} for anything it does not know.
 * @internal
 */
export function parseCommandLine(args: string[]): CommandLine {
  const known = commandFlags();
  const options = argOptions(known);
  let parsed;
  try {
    parsed = parseArgs({ args, allowPositionals: true, strict: true, options });
  } catch (error) {
    throw new ConfigError([flagProblem(error as Error & { code?: string }, options)]);
  }
  const values = parsed.values as Record<string, string | boolean | string[] | undefined>;
  const help = helpRequest(parsed.positionals, values.help === true);
  const [name = "refresh", ...extra] = help ? [] : parsed.positionals;
  const flags: Record<string, unknown> = { verbose: values.verbose ?? false };
  const problems: string[] = [];
  for (const [flag, { spec }] of known) {
    const value = values[flag];
    flags[flag] = spec.parse
      ? spec.parse(value as string | undefined)
      : value ?? (spec.multiple ? [] : spec.value ? undefined : false);
    if (spec.parse && flags[flag] === undefined) {
      problems.push(`--${flag} must be ${spec.must}, not "${value}".`);
    }
  }
  // A page of help is printed whatever else the line holds.
  if (help) problems.length = 0;
  else {
    const command: CommandSpec | undefined = isCommand(name) ? COMMANDS[name] : undefined;
    problems.unshift(
      ...(command ? [] : [unknownCommand(name)]),
      ...(command?.positionals ?? unexpected)(extra, flags as Flags),
      ...(command ? misplacedFlags(name as Command, { known, values }) : []),
    );
  }
  if (problems.length > 0) throw new ConfigError(problems);
  const settings: Settings = {};
  for (const variable of SETTING_FLAGS) {
    const value = values[flagName(variable)];
    if (typeof value === "string") settings[variable] = value;
  }
  for (const [flag, { spec }] of known) {
    if (spec.setting && typeof values[flag] === "string") settings[spec.setting] = values[flag];
  }
  return {
    command: name as Command,
    args: extra,
    flags: flags as Flags,
    settings,
    ...(typeof values["env-file"] === "string" && { envFile: values["env-file"] }),
    ...(help && { help }),
    version: values.version === true,
  };
}

/**
 * What `parseArgs` refused, in our words: an unknown flag names the nearest one it knows (or,
 * for a credential's name, why it has no flag).
 */
function flagProblem(
  error: Error & { code?: string },
  options: ParseArgsConfig["options"],
): string {
  const message = error.message.replace(/\. To specify.*$/s, ".");
  const flag = /^Unknown option '(--?[^'=]+)/.exec(message)?.[1];
  if (error.code !== "ERR_PARSE_ARGS_UNKNOWN_OPTION" || flag === undefined) {
    // parseArgs says "Option '--verify <value>' argument missing", with no full stop.
    return `${message.replace(/([^.?])$/, "$1.")} See --help for the flags.`;
  }
  const variable = flag.replace(/^--?/, "").toUpperCase().replaceAll("-", "_");
  // Every setting but the credentials is a flag parseArgs knows.
  if (Object.hasOwn(VARIABLES, variable)) {
    return `${variable} has no flag: it is a credential, and flags show in ps. Set it in .env ` +
      "or the environment.";
  }
  const near = closestName(flag.replace(/^--?/, ""), Object.keys(options ?? {}));
  return `Unknown flag ${flag}` +
    (near.close ? `: did you mean --${near.name}?` : `. See --help for the flags.`);
}

/** An unknown command, with the nearest one when it is near enough to be what was meant. */
function unknownCommand(name: string): string {
  const near = closestName(name, Object.keys(COMMANDS));
  return `Unknown command "${name}"` + (near.close ? `: did you mean ${near.name}?` : ".") +
    ` Commands: ${Object.keys(COMMANDS).join(", ")}.`;
}

/**
 * `help [<topic>]` or `<command> --help`: what help is asked about, before any
 * check of the command's own arguments (`purge --help` needs no path).
 */
function helpRequest(
  positionals: string[],
  flag: boolean,
): { topic?: Command | "settings" } | undefined {
  const [first, ...rest] = positionals;
  const asked = first === "help";
  if (!asked && !flag) return undefined;
  const topic = asked ? rest[0] : first;
  if (topic === undefined) return {};
  if (topic === "settings" || isCommand(topic)) return { topic };
  const near = closestName(topic, [...Object.keys(COMMANDS), "settings"]);
  throw new ConfigError([
    `No help for "${topic}"${near.close ? `: did you mean ${near.name}?` : "."} ` +
    `Commands: ${Object.keys(COMMANDS).join(", ")}; also help settings.`,
  ]);
}

/** The flags `parseArgs` knows: the common ones, the commands' own, then every setting's. */
function argOptions(known: ReturnType<typeof commandFlags>) {
  return {
    ...COMMON_FLAGS,
    ...Object.fromEntries(
      [...known].map(([name, { spec }]) => [name, {
        type: spec.value ? "string" : "boolean",
        ...(spec.multiple && { multiple: true }),
      }]),
    ),
    ...Object.fromEntries(SETTING_FLAGS.map((name) => [flagName(name), { type: "string" }])),
  } as ParseArgsConfig["options"];
}

/** A command that takes no positional arguments, given some. */
function unexpected(extra: string[]): string[] {
  return extra.length > 0 ? [`Unexpected arguments: ${extra.join(" ")}.`] : [];
}

/** `sign` takes one path, or one `--prefix`. */
function signPositionalProblems(extra: string[], flags: Flags): string[] {
  const signsPrefix = extra.length === 0 && flags.prefix.length === 1;
  return [
    ...unexpected(extra.slice(signsPrefix ? 0 : 1)),
    ...((extra.length === 0) === !signsPrefix
      ? [
        "sign needs one path, or one --prefix: deno run --allow-env --allow-read main.ts sign " +
        "/members/video.mp4 --expires 1h, or the same with --prefix /members/ instead of the path.",
      ]
      : []),
  ];
}

/** What `purge` is asked to remove, and where. */
function purgeRequest(paths: string[], flags: Flags): PurgeRequest {
  return {
    paths,
    prefixes: flags.prefix,
    all: flags.all,
    ...(flags.url !== undefined && { url: flags.url }),
  };
}

/** A purge names paths, prefixes or everything, and its `--url` is an http(s) URL. */
function purgePositionalProblems(paths: string[], flags: Flags): string[] {
  const request = purgeRequest(paths, flags);
  const problems: string[] = [];
  const what = request.paths.length + request.prefixes.length;
  if (what === 0 && !request.all) problems.push("purge needs paths, --prefix <path> or --all.");
  if (what > 0 && request.all) problems.push("purge takes paths or --all, not both.");
  if (request.url !== undefined && !/^https?:\/\/[^/]+/.test(request.url)) {
    problems.push(`--url must be an http(s) URL, not "${request.url}".`);
  }
  return problems;
}

/** Flags given to a command whose entry in {@linkcode COMMANDS} does not list them. */
function misplacedFlags(
  name: Command,
  options: { known: ReturnType<typeof commandFlags>; values: Record<string, unknown> },
): string[] {
  const problems: string[] = [];
  for (const [flag, { spec, commands }] of options.known) {
    if (options.values[flag] !== undefined && !commands.includes(name)) {
      const byHand = spec.byHand ? ", run by hand" : "";
      problems.push(`--${flag} only applies to ${commands.join(", ")}${byHand}, not to "${name}".`);
    }
  }
  return problems;
}

/** What a run is given from outside: arguments, settings, and where output goes. */
export interface RunOptions {
  /** The command line, without the program. */
  args: string[];
  /** The environment's settings. */
  env: Record<string, string | undefined>;
  /** Reads the dotenv file; `undefined` when there is none. */
  readEnvFile: (path: string) => Promise<string | undefined>;
  /** Where output goes. */
  io: Io;
  /** The network, clock and logging; the real ones by default. */
  ctx?: Partial<Context>;
  /**
   * The commands that run on the local platform, which only a clone has (`local/dev.ts` and
   * `local/demo.ts` pass them); without one, the command says where it runs.
   */
  local?: Partial<Record<"dev" | "demo", CommandHandler>>;
  /** Where `init` runs; read only by `init` (`main()`'s reads need `--allow-read`). */
  place?: () => InitPlace;
}

/**
 * What a command is handed once its line and settings are read.
 * @internal
 */
export interface Job {
  /**
   * The settings as given, before checking: only `init` (which writes them back) and render's
   * list of what differs from the defaults read them; everything else reads `config`.
   */
  settings: Settings;
  config: Config;
  ctx: Context;
  io: Io;
  flags: Flags;
  /** Its positional arguments: `purge`'s paths, `sign`'s path. */
  args: string[];
  /** A refresh's dead man's switch, for the `REFRESH_PINGED` binding. */
  pinged?: string;
  /** `--env-file`, as given. */
  envFile?: string;
  /** Given to `init` alone. */
  place?: InitPlace;
}

/**
 * Runs one command; resolves to its exit code.
 * @internal
 */
export type CommandHandler = (job: Job) => Promise<number>;

/** `dev` and `demo` run on stand-ins this file does not ship: where they run instead. */
function localOnly(command: Command): ConfigError {
  return new ConfigError([
    `${command} runs on the local platform, which ships with a clone, not with main.ts: ` +
    `in a clone, run deno task ${command} (deno run -A local/${command}.ts).`,
  ]);
}

/**
 * Runs one command line and returns its exit code. Everything it prints
 * passes through {@linkcode redact}, on top of never formatting a secret.
 *
 * @example One command line, its output collected
 * ```ts ignore
 * const code = await run({
 *   args: ["status", "--json"],
 *   env: Deno.env.toObject(),
 *   readEnvFile: () => Promise.resolve(undefined),
 *   io: { stdout: console.log, stderr: console.error },
 * });
 * ```
 */
export async function run(options: RunOptions): Promise<number> {
  const ctx = defaultContext(options.ctx);
  const io: Io = {
    stdout: (text) => options.io.stdout(redact(text, ctx.secrets)),
    stderr: (text) => options.io.stderr(redact(text, ctx.secrets)),
  };
  let command: Command | undefined;
  let json = false;
  try {
    const line = parseCommandLine(options.args);
    command = line.command;
    json = line.flags.json;
    if (line.help) return io.stdout(helpText(line.help.topic)), 0;
    if (line.version) return io.stdout(`b2-private-cdn ${VERSION}`), 0;
    const spec: CommandSpec = COMMANDS[line.command];
    const handler = spec.handler ?? options.local?.[line.command as "dev" | "demo"];
    if (!handler) throw localOnly(line.command);
    const settings = spec.settingsFree ? {} : await settingsOf(line, {
      ...options,
      // init writes the dotenv file: what it holds is not its input.
      ...(spec.writesEnvFile && { readEnvFile: () => Promise.resolve(undefined), envFile: false }),
      secrets: ctx.secrets,
      warn: (text) => io.stderr(`warning: ${text}`),
    });
    if (line.flags.verbose || line.command === "demo") {
      ctx.log = progressLog(io, { verbose: line.flags.verbose, settings, also: options.ctx?.log });
    }
    // A refresh that deploys tells REFRESH_PING_URL's monitor that it began and how it ended,
    // a bad setting included.
    const pingUrl = line.command === "refresh" && !line.flags["dry-run"]
      ? readSettings(settings).values.REFRESH_PING_URL as string | undefined
      : undefined;
    return await withDeadMansSwitch(pingUrl, ctx, {
      report: (text) => io.stderr(text),
      succeeded: (code) => code === 0,
      job: async ({ keep, pinged }) => {
        // What the run prints also goes with its ping (the fail ping carries its last lines).
        const kept: Io = { stdout: both(keep, io.stdout), stderr: both(keep, io.stderr) };
        const config = parseConfig(settings, spec.needs?.(line.flags));
        for (const warning of config.warnings ?? []) kept.stderr(`warning: ${warning}`);
        if (config.cloudflare) config.cloudflare = await findCloudflareIds(config.cloudflare, ctx);
        const { flags, args } = line;
        const place = spec.writesEnvFile ? options.place?.() : undefined;
        return await handler({
          settings,
          config,
          ctx,
          io: kept,
          flags,
          args,
          pinged,
          ...(line.envFile && { envFile: line.envFile }),
          ...(place && { place: redactingPlace(place, ctx.secrets) }),
        });
      },
    });
  } catch (error) {
    return reportFailure(error, io, { command, json, args: options.args });
  }
}

/**
 * Progress lines (`--verbose`, and the demo's own log): secrets never show (io redacts them);
 * the ids beside them show their first four characters only, enough to tell which key or
 * account was used.
 */
function progressLog(
  io: Io,
  options: { verbose: boolean; settings: Settings; also: ((line: string) => void) | undefined },
): (line: string) => void {
  const credentials = SETTINGS.filter(([, v]) => v.credential)
    .flatMap(([name]) => options.settings[name] ?? []);
  return (text) => {
    options.also?.(text);
    if (options.verbose) io.stderr(maskCredentials(text, credentials));
  };
}

/** A line written to `first`, then to `second`. */
function both(first: (line: string) => void, second: (line: string) => void) {
  return (line: string): void => (first(line), second(line));
}

/** Says why a run failed and returns its exit code. */
function reportFailure(
  error: unknown,
  io: Io,
  run: { command: Command | undefined; json: boolean; args: string[] },
): number {
  const [code, message] = failure(error, { command: run.command, args: run.args });
  // status cannot tell, which a monitor must read as UNKNOWN, on stdout, not as CRITICAL.
  if ((run.command ?? run.args.find(isCommand)) === "status") {
    io.stdout(statusUnknown(message, run.json));
    return STATUS_EXIT.UNKNOWN;
  }
  io.stderr(`error: ${message}`);
  return code;
}

/** status's answer when it cannot tell, in the form asked for (`--json` or a Nagios line). */
function statusUnknown(problem: string, json: boolean): string {
  return json ? JSON.stringify({ state: "UNKNOWN", problem }) : `UNKNOWN - ${problem}`;
}

/** The settings of a run: its flags over the environment over the dotenv file. */
async function settingsOf(
  line: CommandLine,
  options: Pick<RunOptions, "env" | "readEnvFile"> & {
    secrets: Set<string>;
    warn: (line: string) => void;
    envFile?: false;
  },
): Promise<Settings> {
  const file = line.envFile ?? ".env";
  const text = await options.readEnvFile(file);
  if (line.envFile && text === undefined && options.envFile !== false) {
    throw new ConfigError([`--env-file: cannot read "${line.envFile}".`]);
  }
  const dotenv = text ? parseEnv(text) : {};
  for (const warning of unknownSettings(Object.keys(dotenv), file)) options.warn(warning);
  for (const warning of unknownSettings(Object.keys(options.env), "the environment")) {
    options.warn(warning);
  }
  const settings: Settings = {
    ...pickSettings(dotenv),
    ...pickSettings(options.env),
    ...line.settings,
  };
  addSecrets(options.secrets, settings);
  return settings;
}

/** Adds the secret settings `source` holds to `secrets`, which no output shows. */
function addSecrets(secrets: Set<string>, source: Record<string, string | undefined>): void {
  for (const name of SECRET_VARIABLES) if (source[name]) secrets.add(source[name]);
}

/** A failed command's exit code and message: 2 for usage, settings and permissions, else 1. */
function failure(
  error: unknown,
  line: { command: Command | undefined; args: readonly string[] },
): [number, string] {
  if (error instanceof ConfigError) return [2, error.message];
  if (isOperationError(error)) return [1, error.message];
  if (error instanceof Deno.errors.NotCapable) {
    const hint = permissionsHint(line.command ?? "refresh", line.args, error.message);
    return [2, `${error.message}. ${hint}`];
  }
  return [1, `${(error as Error)?.stack ?? error}`];
}

// ---------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------

function pickSettings(source: Record<string, string | undefined>): Settings {
  const settings: Settings = {};
  for (const name of Object.keys(VARIABLES) as Variable[]) {
    const value = source[name];
    if (value !== undefined) settings[name] = value;
  }
  return settings;
}

async function readTextIfExists(path: string): Promise<string | undefined> {
  try {
    return await Deno.readTextFile(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return undefined;
    throw error;
  }
}

/** How to run `command` with the Deno permissions it needs (README: Permissions). */
function permissionsHint(command: Command, args: readonly string[], refused = ""): string {
  // The line as it was typed, the command named even when it was the default.
  const typed = args.includes(command) ? args : [command, ...args];
  const shown = typed.map((arg) => /^[\w@%+=:,./-]+$/.test(arg) ? arg : `'${arg}'`).join(" ");
  // What the command's own flags need beyond its usual permissions (render --out: a write).
  let permissions: string = COMMANDS[command].permissions;
  const [, kind, target] = /Requires (\w+) access to "([^"]+)"/.exec(refused) ?? [];
  if (kind && !permissions.includes(`--allow-${kind}`) && permissions !== "-A") {
    permissions = `${permissions} --allow-${kind}=${target}`.trim();
  }
  return `Run it as ${denoRun(permissions)} main.ts ${shown} (README: Permissions).`;
}

/**
 * Runs the command line of this process and exits with its code. The local platform's entry
 * points call it with their command first and the handlers only they have.
 *
 * @example The command line of this process
 * ```ts ignore
 * if (import.meta.main) await main();
 * ```
 */
export async function main(
  options: { args?: string[]; local?: RunOptions["local"] } = {},
): Promise<never> {
  const args = options.args ?? Deno.args;
  const encoder = new TextEncoder();
  const tooOld = runtimeProblem(Deno.version.deno);
  if (tooOld) {
    Deno.stderr.writeSync(encoder.encode(`error: ${tooOld}\n`));
    Deno.exit(1);
  }
  // Help, the version and keygen read no setting, so they run with no permission at all; a
  // line that does not parse is reported by run() alike.
  let line: CommandLine | undefined;
  try {
    line = parseCommandLine(args);
  } catch {
    line = undefined;
  }
  const spec: CommandSpec | undefined = line && COMMANDS[line.command];
  const free = !line || line.help || line.version || spec?.settingsFree === true;
  const io: Io = {
    stdout: (text) => writeLine(Deno.stdout, encoder.encode(text + "\n")),
    stderr: (text) => writeLine(Deno.stderr, encoder.encode(text + "\n")),
  };
  let env: Record<string, string> = {};
  try {
    if (!free) env = Deno.env.toObject();
  } catch (error) {
    if (!(error instanceof Deno.errors.NotCapable)) throw error;
    // Reported as run() reports any refused permission (status: UNKNOWN, exit 3).
    Deno.exit(reportFailure(error, io, { command: line!.command, json: line!.flags.json, args }));
  }
  const code = await run({
    args,
    env,
    place: initPlace,
    ...(options.local && { local: options.local }),
    readEnvFile: readTextIfExists,
    io,
  });
  Deno.exit(code);
}

/**
 * Writes all of `bytes` (a pipe may take them in parts). When the reader has gone (a closed
 * terminal, `| head`), there is nobody left to tell, so the line is dropped instead of
 * ending the run with a stack trace.
 */
function writeLine(file: { writeSync(bytes: Uint8Array): number }, bytes: Uint8Array): void {
  try {
    for (let written = 0; written < bytes.length;) {
      written += file.writeSync(bytes.subarray(written));
    }
  } catch (error) {
    if (!(error instanceof Deno.errors.BrokenPipe)) throw error;
  }
}

/** Where `init` runs, read only when it runs: cwd and execPath need `--allow-read`. */
function initPlace(): InitPlace {
  const script = new URL(import.meta.url);
  const terminal = Deno.stdin.isTerminal() && Deno.stdout.isTerminal();
  return {
    cwd: Deno.cwd(),
    denoPath: Deno.execPath(),
    script: script.protocol === "file:" ? decodeURIComponent(script.pathname) : script.href,
    ...(terminal && { terminal: terminalPrompter() }),
  };
}

/**
 * Questions on the terminal. Answers are read a line at a time from one buffer; a hidden one in
 * raw mode, so the terminal echoes nothing of it (Backspace still works, Ctrl-C stops init).
 */
function terminalPrompter(): Prompter {
  const encoder = new TextEncoder();
  const decoder = new TextDecoder();
  let pending = "";
  const write = (text: string) => writeLine(Deno.stdout, encoder.encode(text));
  const bytes = new Uint8Array(4096);
  /** The text up to the next of `stops` (taken too), or what is left when input ends. */
  const line = async (stops = /[\r\n]/): Promise<{ text: string; stop?: string } | undefined> => {
    for (;;) {
      const end = pending.search(stops);
      if (end >= 0) {
        const text = pending.slice(0, end);
        const stop = pending[end]!;
        pending = pending.slice(end + (pending.startsWith("\r\n", end) ? 2 : 1));
        return { text, stop };
      }
      const count = await Deno.stdin.read(bytes);
      if (count === null) {
        const rest = pending;
        pending = "";
        return rest ? { text: rest } : undefined;
      }
      pending += decoder.decode(bytes.subarray(0, count), { stream: true });
    }
  };
  return {
    say: (text) => write(`${text}\n`),
    async ask(question, options = {}) {
      if (!options.hidden) {
        write(question);
        return (await line())?.text;
      }
      // Raw before the question shows, so that nothing typed after it is echoed.
      Deno.stdin.setRaw(true);
      write(question);
      try {
        // Ctrl-C arrives as a character in raw mode: it ends the answer and stops init.
        // deno-lint-ignore no-control-regex
        const typed = await line(/[\r\n\x03]/);
        if (typed?.stop === "\x03") {
          throw new ConfigError(["init stopped (Ctrl-C); nothing written."]);
        }
        // Backspace and Delete, as a terminal in raw mode sends them, take back a character.
        return typed?.text.split("").reduce(
          (text, c) => c === "\x7f" || c === "\b" ? text.slice(0, -1) : text + c,
          "",
        );
      } finally {
        Deno.stdin.setRaw(false);
        write("\n");
      }
    },
  };
}

/** The oldest Deno with the built-ins this tool uses: `node:util` `parseEnv`, `node:module` `stripTypeScriptTypes`. */
const MIN_DENO_VERSION = "2.8.2";

/**
 * Why this runtime cannot run the tool, or `undefined` when it can: the version is older than
 * {@linkcode MIN_DENO_VERSION} or a built-in the tool needs is missing.
 * @internal
 */
export function runtimeProblem(
  denoVersion: string,
  builtins: Record<string, unknown> = {
    "node:util parseEnv": parseEnv,
    "node:module stripTypeScriptTypes": stripTypeScriptTypes,
  },
): string | undefined {
  const missing = Object.keys(builtins).filter((name) => typeof builtins[name] !== "function");
  const [major = 0, minor = 0, patch = 0] = denoVersion.split(/[.-]/).map(Number);
  const [needMajor = 0, needMinor = 0, needPatch = 0] = MIN_DENO_VERSION.split(".").map(Number);
  const older = major - needMajor || minor - needMinor || patch - needPatch;
  if (missing.length === 0 && !(older < 0)) return undefined;
  return `b2-private-cdn needs Deno ${MIN_DENO_VERSION} or newer` +
    (missing.length > 0 ? ` (this one lacks ${missing.join(" and ")})` : "") +
    `, and this is Deno ${denoVersion}: upgrade Deno (deno upgrade) and run it again.`;
}

// ---------------------------------------------------------------------------
// Deno Deploy
// ---------------------------------------------------------------------------

/**
 * Hourly, at an odd minute. Each run refreshes only when due, so a new app deploys its worker
 * within the hour and a failed refresh is tried again an hour later, long before the token runs
 * out. Constant, like the name and backoff: the platform finds crons by running the module's top
 * level, possibly without the app's settings (docs.deno.com/runtime/fundamentals/cron/: "registered
 * at the top level").
 */
const DEPLOY_SCHEDULE = HOURLY;
/** Health answers come from one read of the worker's bindings per instance in this long. */
const HEALTH_READ_EVERY_MS = 300_000;

/** What the platform gives {@linkcode startOnDeploy}: `Deno.cron`, `Deno.serve`, the environment. */
export interface DeployPlatform {
  /** The environment, read again by each run and health read (`Deno.env.toObject`). */
  env: () => Record<string, string | undefined>;
  /** `Deno.cron`; `undefined` when the runtime lacks it (no `"unstable": ["cron"]`). */
  cron: CronRegistrar | undefined;
  /** `Deno.serve`: the platform waits for it before a build goes live. */
  serve: (handler: (request: Request) => Promise<Response>) => unknown;
  /** Where the runs' lines go (`console.log`). */
  log: (line: string) => void;
  /** Where the runs' errors go (`console.error`). */
  error: (line: string) => void;
  /** `Deno.version.deno`. */
  denoVersion: string;
  /** The network and clock; the real ones by default. */
  ctx?: Partial<Context>;
}

/** The cron run and the HTTP handler that {@linkcode startOnDeploy} registered. */
export interface DeployApp {
  /** One cron run, as the platform calls it. */
  runCron: () => Promise<void>;
  /** The HTTP handler given to `Deno.serve`. */
  handle: (request: Request) => Promise<Response>;
}

/** What the health path answers, as JSON. No secret: dates, durations and the worker's name. */
interface Health {
  /** `healthy` (200), `short` or `missing` (503), `unknown` (200: it could not tell). */
  state: "healthy" | "short" | "missing" | "unknown";
  worker?: string;
  /** When the deployed token expires, ISO 8601. */
  expiresAt?: string;
  /** Seconds left. */
  remaining?: number;
  /** Why it is not healthy, or why it cannot tell. */
  problem?: string;
  /** When the bindings were read; later requests get the same answer until the next read. */
  checkedAt: string;
}

/**
 * Runs `main.ts` as a Deno Deploy app. It registers one constant cron before anything else and
 * then starts the HTTP server, in that order because the platform ignores crons registered after
 * `Deno.serve`. Nothing touches the network or reads the settings while the module loads: each
 * cron run reads and checks them, does nothing off the production timeline, and refreshes only
 * when the deployed token has less than `REFRESH_MARGIN` left. A configuration problem fails that
 * run (the Cron tab shows it) with a log line naming what to set.
 *
 * The server answers `/` with 200 whatever the health (the platform's warm-up request runs
 * without the production settings) and `/health` with the deployed token's expiry, read from the
 * worker's bindings at most every five minutes per instance, whatever the requests.
 *
 * @example The Deno Deploy entry point (what `main.ts` does when DENO_DEPLOY is set)
 * ```ts ignore
 * startOnDeploy({
 *   env: () => Deno.env.toObject(),
 *   cron: Deno.cron,
 *   serve: Deno.serve,
 *   log: console.log,
 *   error: console.error,
 *   denoVersion: Deno.version.deno,
 * });
 * ```
 */
export function startOnDeploy(platform: DeployPlatform): DeployApp {
  const { log, error } = platform;
  log(`b2-private-cdn ${VERSION} on Deno ${platform.denoVersion} (Deno Deploy)`);
  const tooOld = runtimeProblem(platform.denoVersion);
  if (tooOld) error(`error: ${tooOld}`);
  const runCron = () => deployRun(platform);
  if (platform.cron) {
    platform.cron(CRON_NAME, DEPLOY_SCHEDULE, { backoffSchedule: CRON_BACKOFF_MS }, runCron);
    log(`Registered "${CRON_NAME}" at "${DEPLOY_SCHEDULE}" (UTC)`);
  } else {
    error(
      'error: Deno.cron is not available, so nothing will refresh the worker: keep "unstable": ' +
        '["cron"] in deno.json beside main.ts.',
    );
  }
  let lastRead: { at: number; health: Promise<Health> } | undefined;
  const handle = async (request: Request): Promise<Response> => {
    const { pathname } = new URL(request.url);
    if (request.method !== "GET" && request.method !== "HEAD") {
      return new Response("Method not allowed\n", { status: 405, headers: { allow: "GET, HEAD" } });
    }
    if (pathname === "/") {
      return new Response(
        `b2-private-cdn ${VERSION}: "${CRON_NAME}" keeps the worker's token fresh. ` +
          "GET /health for its expiry.\n",
      );
    }
    if (pathname !== "/health") return new Response("Not found\n", { status: 404 });
    // One read per period, shared by every request in it (even one that failed), so that no
    // visitor can make the app call Cloudflare more often.
    const now = (platform.ctx?.now ?? Date.now)();
    if (!lastRead || now - lastRead.at >= HEALTH_READ_EVERY_MS) {
      lastRead = { at: now, health: readHealth(platform) };
    }
    const health = await lastRead.health;
    const failing = health.state === "short" || health.state === "missing";
    return Response.json(health, {
      status: failing ? 503 : 200,
      headers: { "cache-control": "no-store" },
    });
  };
  platform.serve(handle);
  return { runCron, handle };
}

/**
 * The settings and a context for one run on Deploy (`run`) or one health read; secrets are
 * registered before any output, and a run warns of names that are no setting.
 */
function deploySettings(
  platform: DeployPlatform,
  needs: Needs,
  options: { run?: boolean } = {},
): { config: Config; ctx: Context } {
  const env = platform.env();
  const ctx = defaultContext(platform.ctx);
  addSecrets(ctx.secrets, env);
  ctx.log = (line) => platform.log(redact(line, ctx.secrets));
  // Once a run, not at every health read.
  if (options.run) {
    for (const warning of unknownSettings(Object.keys(env), "the app's settings")) {
      ctx.log(`warning: ${warning}`);
    }
  }
  // The Deploy schedule is fixed (see DEPLOY_SCHEDULE); a value here must not fail the run,
  // and the token's life is checked against the schedule that runs.
  const settings = { ...pickSettings(env), REFRESH_SCHEDULE: DEPLOY_SCHEDULE };
  try {
    const config = parseConfig(settings, needs);
    for (const warning of config.warnings ?? []) ctx.log(`warning: ${warning}`);
    return { config, ctx };
  } catch (problem) {
    if (problem instanceof ConfigError) {
      throw new ConfigError(problem.problems.map((line) => redact(line, ctx.secrets)));
    }
    throw problem;
  }
}

/** The production timeline, or no timeline (not on Deploy's runtime); `undefined` elsewhere. */
function offProduction(env: Record<string, string | undefined>): string | undefined {
  const timeline = env.DENO_TIMELINE;
  return timeline === undefined || timeline === "production" ? undefined : timeline;
}

async function deployRun(platform: DeployPlatform): Promise<void> {
  const timeline = offProduction(platform.env());
  if (timeline !== undefined) {
    platform.log(
      `Skipped: this is timeline "${timeline}"; only the production timeline refreshes the worker.`,
    );
    return;
  }
  let secrets: Set<string> = new Set();
  // The switch is pinged even when the settings fail, so the monitor hears of that too.
  const env = platform.env();
  const pingCtx = defaultContext(platform.ctx);
  addSecrets(pingCtx.secrets, env);
  const pingUrl = readSettings(pickSettings(env)).values.REFRESH_PING_URL as string | undefined;
  try {
    await withDeadMansSwitch(pingUrl, pingCtx, {
      report: (line) => platform.log(redact(line, pingCtx.secrets)),
      job: async ({ report, pinged }) => {
        const tooOld = runtimeProblem(platform.denoVersion);
        if (tooOld) throw new Error(tooOld);
        const needs = { b2: true, cloudflare: true, schedule: true };
        const { config, ctx } = deploySettings(platform, needs, { run: true });
        secrets = ctx.secrets;
        if (env.REFRESH_SCHEDULE) {
          report(
            `REFRESH_SCHEDULE is ignored on Deno Deploy: "${CRON_NAME}" runs at ` +
              `"${DEPLOY_SCHEDULE}" (UTC) and refreshes when less than REFRESH_MARGIN is left. ` +
              "Remove it from the app's settings to silence this line.",
          );
        }
        config.cloudflare = await findCloudflareIds(config.cloudflare!, ctx);
        const decision = await refreshIfDue(config, ctx, {
          loadModule: loadWorkerModule,
          ...(pinged && { pinged }),
        });
        report(`${decision.refreshed ? "Refreshed" : "Not due"}: ${decision.reason}`);
      },
    });
  } catch (failure) {
    // Thrown again so the platform marks the run failed and retries it on the backoff.
    const message = redact((failure as Error)?.message ?? String(failure), secrets);
    platform.error(`error: ${message}`);
    throw new Error(message);
  }
}

async function readHealth(platform: DeployPlatform): Promise<Health> {
  const checkedAt = isoSeconds((platform.ctx?.now ?? Date.now)());
  const timeline = offProduction(platform.env());
  if (timeline !== undefined) {
    return { state: "unknown", problem: `timeline "${timeline}" is not production`, checkedAt };
  }
  let secrets: Set<string> = new Set();
  try {
    const { config, ctx } = deploySettings(platform, { cloudflare: true });
    secrets = ctx.secrets;
    const report = await status(config.cloudflare!, ctx, { minRemaining: STATUS_MIN_REMAINING });
    const { worker, expiresAt, remaining, problem } = report;
    const state = report.healthy ? "healthy" : expiresAt === undefined ? "missing" : "short";
    // What is undefined is left out of the JSON.
    return { state, worker, expiresAt, remaining, problem, checkedAt };
  } catch (failure) {
    const message = redact((failure as Error)?.message ?? String(failure), secrets);
    return { state: "unknown", problem: message, checkedAt };
  }
}

// On Deno Deploy (which sets DENO_DEPLOY in every context, and users cannot) this module is
// the app; anywhere else, run as a program, it is the command line. Imported, it does nothing.
if (import.meta.main) {
  // Asked only where it may be read: Deploy grants every permission, and a command line run
  // without --allow-env is then told which flags it needs instead of crashing here.
  const env = Deno.permissions.querySync({ name: "env", variable: "DENO_DEPLOY" });
  if (env.state === "granted" && Deno.env.get("DENO_DEPLOY") !== undefined) {
    startOnDeploy({
      env: () => Deno.env.toObject(),
      cron: Deno.cron as CronRegistrar | undefined,
      serve: (handler) => Deno.serve(handler),
      log: console.log,
      error: console.error,
      denoVersion: Deno.version.deno,
    });
  } else {
    await main();
  }
}
