/**
 * b2-private-cdn keeps a Cloudflare Worker authorized to serve a private
 * Backblaze B2 bucket: it gets a B2 download token for the bucket and prefix
 * and deploys the worker with the token as a secret binding, replacing the
 * Python script Backblaze once suggested running from cron.
 *
 * ```sh
 * deno run --allow-net --allow-env --allow-read main.ts refresh
 * deno run --allow-net --allow-env --allow-read main.ts status --min-remaining 48h
 * deno run -A main.ts demo   # the whole chain on this machine, no account needed
 * ```
 *
 * Configuration comes from flags, then the environment, then `.env` in the
 * working directory; `main.ts --help` lists it. On Deno Deploy this module is
 * the entry point: it registers its `Deno.cron` job and serves `/health`
 * ({@linkcode startOnDeploy}, in the last section).
 *
 * @module
 */

// `parseEnv` and `stripTypeScriptTypes` arrived in Deno 2.8.2. A named import of a missing
// export fails before any code runs, so these two are read from namespaces and checked by
// `runtimeProblem()` before use, which lets an older Deno say what to upgrade.
import { parseArgs } from "node:util";
import * as nodeUtil from "node:util";
import * as nodeModule from "node:module";
import process from "node:process";
import type { Readable } from "node:stream";
// Type-only: `deno run` does not follow it, so no command downloads miniflare until `dev`,
// `demo`, the tests or the bench import it. Inline, not a deno.json import: see `MINIFLARE`.
// deno-lint-ignore no-import-prefix
import type { Miniflare } from "npm:miniflare@4";

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
}

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
export type CloudflareAuth =
  | { token: string }
  | { email: string; key: string };

/** Where the worker goes and how it is reached. */
export interface CloudflareConfig {
  /** The account that owns the worker (`CLOUDFLARE_ACCOUNT_ID`). */
  accountId: string;
  /** The API token, or the legacy global key. */
  auth: CloudflareAuth;
  /** The Cloudflare API (`CLOUDFLARE_API_BASE_URL`). @default "https://api.cloudflare.com/client/v4" */
  apiBaseUrl: string;
  /** The worker script's name (`WORKER_NAME`). @default "b2-private-cdn" */
  workerName: string;
  /** The zone of the route or custom domain (`CLOUDFLARE_ZONE_ID`). */
  zoneId?: string;
  /** A route such as `cdn.example.com/*` on `zoneId`. */
  route?: string;
  /** A custom domain such as `cdn.example.com` on `zoneId`. */
  domain?: string;
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
  /** Five-field cron expression, UTC. @default "17 4 * * *" */
  refreshSchedule: string;
  /** `cron` refreshes at start when less than this many seconds are left. @default 6 days */
  refreshMargin: number;
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

/**
 * The variables the tool reads. Credentials have no flag, since flags show in
 * `ps`; secrets are also never printed.
 */
export const VARIABLES = {
  B2_APPLICATION_KEY_ID: { credential: true, about: "B2 application key id" },
  B2_APPLICATION_KEY: { secret: true, about: "B2 application key" },
  B2_BUCKET_NAME: { about: "bucket name (or B2_BUCKET_ID)" },
  B2_BUCKET_ID: { about: "bucket id (or B2_BUCKET_NAME)" },
  B2_FILE_PREFIX: {
    about: "serve only names under this prefix (default: whole bucket)",
  },
  B2_TOKEN_TTL: {
    about: "download token lifetime in seconds, 1..604800 (default 604800)",
  },
  B2_API_URL: { about: "default https://api.backblazeb2.com" },
  CLOUDFLARE_ACCOUNT_ID: { about: "account that owns the worker" },
  CLOUDFLARE_API_TOKEN: {
    secret: true,
    about: 'API token with "Workers Scripts: Edit"',
  },
  CLOUDFLARE_EMAIL: { credential: true, about: "legacy global key: account email" },
  CLOUDFLARE_API_KEY: { secret: true, about: "legacy global key" },
  CLOUDFLARE_API_BASE_URL: {
    about: "default https://api.cloudflare.com/client/v4",
  },
  CLOUDFLARE_ZONE_ID: { about: "zone for WORKER_ROUTE / WORKER_DOMAIN" },
  WORKER_NAME: { about: "default b2-private-cdn" },
  WORKER_ROUTE: {
    about: "route to point at the worker, e.g. cdn.example.com/*",
  },
  WORKER_DOMAIN: {
    about: "custom domain for the worker, e.g. cdn.example.com",
  },
  WORKER_URL_STYLE: { about: "plain (default) or b2 (/file/<bucket>/<name>)" },
  WORKER_INDEX_FILE: {
    about: "served for / and dir/ (default index.html; empty: off)",
  },
  WORKER_CACHE_TTL: {
    about: "seconds the edge keeps an object (default 86400)",
  },
  WORKER_CACHE_CONTROL: {
    about: "Cache-Control for browsers (default: the object's own)",
  },
  WORKER_CORS_ORIGINS: {
    about: "empty (no CORS), * or a comma list of origins",
  },
  VERIFY_URL: { about: "fetched after deploying; must answer 2xx" },
  REFRESH_SCHEDULE: { about: 'cron schedule, UTC (default "17 4 * * *")' },
  REFRESH_MARGIN: {
    about: "cron refreshes at start below this time left (default 6d)",
  },
} as const satisfies Record<string, { secret?: true; credential?: true; about: string }>;

/** A variable the tool reads. */
export type Variable = keyof typeof VARIABLES;
/** Raw values by variable name: flags over the environment over `.env`. */
export type Settings = Partial<Record<Variable, string>>;

/** `--b2-bucket-name` for `B2_BUCKET_NAME`: every variable but the secrets has a flag. */
function flagName(variable: string): string {
  return variable.toLowerCase().replaceAll("_", "-");
}

const SETTING_FLAGS = Object.entries(VARIABLES)
  .filter(([, v]) => !("secret" in v || "credential" in v))
  .map(([name]) => name as Variable);

/** The names of the secret variables, whose values never reach any output. */
export const SECRET_VARIABLES: readonly string[] = Object.entries(VARIABLES)
  .filter(([, v]) => "secret" in v).map(([name]) => name);

/** What a command needs from the configuration. */
export interface Needs {
  /** The B2 settings must be complete. */
  b2?: boolean;
  /** The Cloudflare settings must be complete. */
  cloudflare?: boolean;
}

/**
 * Turns raw settings into a {@linkcode Config}, reporting every problem at
 * once as a {@linkcode ConfigError}.
 */
export function parseConfig(settings: Settings, needs: Needs = {}): Config {
  const problems: string[] = [];
  const text = (name: Variable) => settings[name]?.trim() || undefined;
  const integer = (
    name: Variable,
    fallback: number,
    min: number,
    max: number,
  ) => {
    const raw = text(name);
    if (raw === undefined) return fallback;
    const value = Number(raw);
    if (!/^\d+$/.test(raw) || value < min || value > max) {
      problems.push(
        `${name} must be a whole number from ${min} to ${max}, not "${raw}".`,
      );
      return fallback;
    }
    return value;
  };
  const url = (name: Variable, fallback: string) => {
    const raw = text(name) ?? fallback;
    if (!URL.canParse(raw) || !/^https?:$/.test(new URL(raw).protocol)) {
      problems.push(`${name} must be an http(s) URL, not "${raw}".`);
    }
    return raw.replace(/\/+$/, "");
  };
  const duration = (name: Variable, fallback: number) => {
    const raw = text(name);
    if (raw === undefined) return fallback;
    const seconds = parseDuration(raw);
    if (seconds === undefined) {
      problems.push(
        `${name} must be a duration such as 90s, 30m, 48h or 6d, not "${raw}".`,
      );
      return fallback;
    }
    return seconds;
  };

  const workerName = text("WORKER_NAME") ?? "b2-private-cdn";
  if (!WORKER_NAME_PATTERN.test(workerName)) {
    problems.push(
      `WORKER_NAME must be 1-63 lowercase letters, digits, "-" or "_", starting with a letter, not "${workerName}".`,
    );
  }

  const urlStyle = text("WORKER_URL_STYLE") ?? "plain";
  if (urlStyle !== "plain" && urlStyle !== "b2") {
    problems.push(
      `WORKER_URL_STYLE must be "plain" or "b2", not "${urlStyle}".`,
    );
  }
  const indexFile = settings.WORKER_INDEX_FILE?.trim() ?? "index.html";
  if (/[/\\]/.test(indexFile) || indexFile === "." || indexFile === "..") {
    problems.push(
      `WORKER_INDEX_FILE must be a file name without "/", not "${indexFile}".`,
    );
  }
  const corsOrigins = text("WORKER_CORS_ORIGINS") ?? "";
  for (
    const origin of corsOrigins === "*" ? [] : corsOrigins.split(",").filter(Boolean)
  ) {
    const trimmed = origin.trim();
    if (!URL.canParse(trimmed) || new URL(trimmed).origin !== trimmed) {
      problems.push(
        `WORKER_CORS_ORIGINS must be "*" or origins like https://example.com, not "${trimmed}".`,
      );
    }
  }
  const worker: WorkerOptions = {
    urlStyle: urlStyle === "b2" ? "b2" : "plain",
    indexFile,
    cacheTtl: integer("WORKER_CACHE_TTL", DAY, 0, 365 * DAY),
    cacheControl: text("WORKER_CACHE_CONTROL") ?? "",
    corsOrigins: corsOrigins.split(",").map((o) => o.trim()).filter(Boolean)
      .join(","),
  };

  const config: Config = {
    worker,
    workerName,
    refreshSchedule: text("REFRESH_SCHEDULE") ?? DEFAULT_SCHEDULE,
    refreshMargin: duration("REFRESH_MARGIN", 6 * DAY),
  };
  if (config.refreshSchedule.split(/\s+/).length !== 5) {
    problems.push(
      `REFRESH_SCHEDULE must be a five-field cron expression such as "17 4 * * *", ` +
        `not "${config.refreshSchedule}".`,
    );
  }
  const verifyUrl = text("VERIFY_URL");
  if (verifyUrl !== undefined) config.verifyUrl = url("VERIFY_URL", verifyUrl);

  const b2ApiUrl = url("B2_API_URL", "https://api.backblazeb2.com");
  const tokenTtl = integer("B2_TOKEN_TTL", MAX_TOKEN_TTL, 1, MAX_TOKEN_TTL);
  if (needs.b2) {
    const keyId = text("B2_APPLICATION_KEY_ID");
    const applicationKey = text("B2_APPLICATION_KEY");
    if (!keyId) {
      problems.push(
        "Set B2_APPLICATION_KEY_ID to the id of a B2 application key.",
      );
    }
    if (!applicationKey) {
      problems.push("Set B2_APPLICATION_KEY to the B2 application key.");
    }
    const bucketName = text("B2_BUCKET_NAME");
    const bucketId = text("B2_BUCKET_ID");
    if (!bucketName && !bucketId) {
      problems.push(
        "Set B2_BUCKET_NAME (or B2_BUCKET_ID) to the bucket to serve.",
      );
    }
    config.b2 = {
      keyId: keyId ?? "",
      applicationKey: applicationKey ?? "",
      apiUrl: b2ApiUrl,
      ...(bucketName && { bucketName }),
      ...(bucketId && { bucketId }),
      prefix: settings.B2_FILE_PREFIX ?? "",
      tokenTtl,
    };
  }

  if (needs.cloudflare) {
    const accountId = text("CLOUDFLARE_ACCOUNT_ID");
    if (!accountId) {
      problems.push(
        "Set CLOUDFLARE_ACCOUNT_ID to the id of the account that owns the worker.",
      );
    }
    const token = text("CLOUDFLARE_API_TOKEN");
    const email = text("CLOUDFLARE_EMAIL");
    const key = text("CLOUDFLARE_API_KEY");
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
    const zoneId = text("CLOUDFLARE_ZONE_ID");
    const route = text("WORKER_ROUTE");
    const domain = text("WORKER_DOMAIN");
    if ((route || domain) && !zoneId) {
      problems.push(
        `Set CLOUDFLARE_ZONE_ID to the zone of ${route ? "WORKER_ROUTE" : "WORKER_DOMAIN"}.`,
      );
    }
    if (route && !/^[^\s/]+\/\S*$/.test(route)) {
      problems.push(
        `WORKER_ROUTE must look like cdn.example.com/*, not "${route}".`,
      );
    }
    if (domain && !/^[a-z0-9.-]+$/i.test(domain)) {
      problems.push(
        `WORKER_DOMAIN must be a host name like cdn.example.com, not "${domain}".`,
      );
    }
    config.cloudflare = {
      accountId: accountId ?? "",
      auth,
      apiBaseUrl: url(
        "CLOUDFLARE_API_BASE_URL",
        "https://api.cloudflare.com/client/v4",
      ),
      workerName,
      ...(zoneId && { zoneId }),
      ...(route && { route }),
      ...(domain && { domain }),
    };
  }

  if (problems.length > 0) throw new ConfigError(problems);
  return config;
}

/** Seconds in `90`, `90s`, `30m`, `48h` or `6d`; `undefined` if it is none of those. */
export function parseDuration(text: string): number | undefined {
  const match = /^(\d+)\s*([smhd]?)$/.exec(text.trim());
  if (!match) return undefined;
  const unit = {
    "": 1,
    s: 1,
    m: 60,
    h: 3600,
    d: DAY,
  }[match[2] as "" | "s" | "m" | "h" | "d"];
  return Number(match[1]) * unit;
}

/** `5d 3h`, `2h 5m`, `40s`: the two largest units of a span of seconds. */
export function formatDuration(seconds: number): string {
  const sign = seconds < 0 ? "-" : "";
  const left = Math.floor(Math.abs(seconds));
  const units = [["d", DAY], ["h", 3600], ["m", 60], ["s", 1]] as const;
  const first = units.findIndex(([, size]) => left >= size);
  if (first === -1 || first === units.length - 1) return `${sign}${left}s`;
  const [unit, size] = units[first]!;
  const [nextUnit, nextSize] = units[first + 1]!;
  return `${sign}${Math.floor(left / size)}${unit} ${
    Math.floor((left % size) / nextSize)
  }${nextUnit}`;
}

/** ISO 8601 UTC to the second. */
function isoSeconds(ms: number): string {
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
  /** Per attempt. @default 30000 */
  timeoutMs: number;
  /** Further attempts after a retryable failure. @default 4 */
  retries: number;
}

/** A {@linkcode Context} with the real network and clock. */
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
    ...overrides,
  };
}

/** The first pause between attempts; doubled each time, with full jitter. */
const RETRY_BASE_MS = 500;
/** A longer `Retry-After` than this is not waited out: the run fails and says when to retry. */
const RETRY_AFTER_LIMIT_MS = 120_000;

/** An API answered with an error, or could not be reached. Exit code 1. */
export class ApiError extends Error {
  /** Which API failed. */
  readonly service: "B2" | "Cloudflare" | "Verify";
  /** The HTTP status, or 0 when no answer came. */
  readonly status: number;
  /** The service's own error code, e.g. `unauthorized` or `10000`. */
  readonly code: string;
  /** Makes the error; the message says what failed and what to change. */
  constructor(
    message: string,
    details: { service: ApiError["service"]; status: number; code: string },
  ) {
    super(message);
    this.name = "ApiError";
    this.service = details.service;
    this.status = details.status;
    this.code = details.code;
  }
}

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

/** Which setting points at each API, for errors that name what to check. */
const API_URL_SETTING = { B2: "B2_API_URL", Cloudflare: "CLOUDFLARE_API_BASE_URL" } as const;

/**
 * Sends one request, retrying network errors, timeouts, 408, 429 and 5xx
 * with exponential backoff and jitter, honouring `Retry-After`. The answer
 * is returned whatever its status once retries are spent or it is final.
 * `step` names the request in errors and logs, as in "Cannot <step>".
 */
async function send(
  ctx: Context,
  request: { service: "B2" | "Cloudflare"; step: string; url: string; init: RequestInit },
): Promise<Response> {
  const { service, step } = request;
  for (let attempt = 0;; attempt++) {
    let failure: string;
    let waitMs = RETRY_BASE_MS * 2 ** attempt * (0.5 + ctx.random() / 2);
    try {
      const response = await ctx.fetch(request.url, {
        ...request.init,
        signal: AbortSignal.timeout(ctx.timeoutMs),
      });
      if (!isRetryable(response.status) || attempt >= ctx.retries) return response;
      const retryAfter = retryAfterMs(response.headers.get("retry-after"), ctx.now());
      if (retryAfter !== undefined && retryAfter > RETRY_AFTER_LIMIT_MS) return response;
      await response.body?.cancel();
      waitMs = Math.max(waitMs, retryAfter ?? 0);
      failure = `answered ${response.status}`;
    } catch (error) {
      const timedOut = error instanceof DOMException && error.name === "TimeoutError";
      failure = timedOut
        ? `timed out after ${ctx.timeoutMs / 1000} s`
        : `could not be reached: ${(error as Error).message}`;
      if (attempt >= ctx.retries) {
        throw new ApiError(
          `Cannot ${step}: ${service} ${failure} (${attempt + 1} attempts). ` +
            `Check the network and ${API_URL_SETTING[service]}, then run again.`,
          { service, status: 0, code: timedOut ? "timeout" : "network" },
        );
      }
    }
    ctx.log(`  ${service} ${failure}; retrying in ${(waitMs / 1000).toFixed(1)} s`);
    await ctx.sleep(waitMs);
  }
}

/** Parses a JSON answer, or `undefined` when the body is not JSON. */
async function readJson(response: Response): Promise<unknown> {
  const text = await response.text();
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

// ---------------------------------------------------------------------------
// B2
// ---------------------------------------------------------------------------

/** What `b2_authorize_account` (v4) told us. */
export interface B2Authorization {
  /** The account the key belongs to. */
  accountId: string;
  /** Authorizes the API calls that follow; a secret. */
  authorizationToken: string;
  /** The API host for this account. */
  apiUrl: string;
  /** The host files are downloaded from. */
  downloadUrl: string;
  /** Buckets the key is restricted to, or `null` for all of the account's. */
  buckets: { id: string; name: string }[] | null;
  /** What the key may do, e.g. `shareFiles`. */
  capabilities: string[];
  /** The key's name prefix restriction, or `null`. */
  namePrefix: string | null;
}

/** The bucket being served. */
export interface Bucket {
  /** The bucket's id. */
  id: string;
  /** The bucket's name. */
  name: string;
}

/** Why B2 refuses, with the fix; by B2 error code. */
const B2_HINTS: Record<string, string> = {
  unauthorized: "the key lacks a capability or is restricted elsewhere; see the README's keys",
  bad_auth_token: "check B2_APPLICATION_KEY_ID and B2_APPLICATION_KEY",
  expired_auth_token: "run again; the account token expired",
  access_denied: "the key is not allowed to do this; see the README's keys",
  transaction_cap_exceeded: "raise the Class C transaction cap in the B2 web console",
  too_many_requests: "B2 is rate limiting; run again later",
  service_unavailable: "B2 is busy; run again later",
  bad_request: "check B2_BUCKET_ID, B2_BUCKET_NAME and B2_FILE_PREFIX",
};

async function b2Call<T>(
  ctx: Context,
  step: string,
  request: { url: string; init: RequestInit },
): Promise<T> {
  const response = await send(ctx, { ...request, service: "B2", step });
  const body = await readJson(response) as
    | { code?: string; message?: string }
    | undefined;
  if (response.ok && body !== undefined) return body as T;
  const code = body?.code ?? "unknown";
  const detail = body?.message ? `: ${body.message}` : "";
  const hint = B2_HINTS[code] ??
    (response.status === 401 ? "check B2_APPLICATION_KEY_ID and B2_APPLICATION_KEY" : "");
  throw new ApiError(
    `Cannot ${step}: B2 answered ${response.status} ${code}${detail}${
      hint ? `. Fix: ${hint}.` : ""
    }`,
    { service: "B2", status: response.status, code },
  );
}

/** Authorizes with the application key (`b2_authorize_account`, API v4). */
export async function authorizeAccount(
  config: B2Config,
  ctx: Context,
): Promise<B2Authorization> {
  ctx.secrets.add(config.applicationKey);
  const answer = await b2Call<{
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
  }>(ctx, "authorize the B2 application key", {
    url: `${config.apiUrl}/b2api/v4/b2_authorize_account`,
    init: {
      headers: {
        authorization: "Basic " +
          btoa(`${config.keyId}:${config.applicationKey}`),
      },
    },
  });
  ctx.secrets.add(answer.authorizationToken);
  const storage = answer.apiInfo?.storageApi;
  if (!storage?.apiUrl || !storage.downloadUrl) {
    throw new ApiError(
      "Cannot authorize the B2 application key: the answer has no apiInfo.storageApi. " +
        "Check that B2_API_URL points at the B2 native API.",
      { service: "B2", status: 200, code: "unexpected_answer" },
    );
  }
  const allowed = storage.allowed ?? {};
  return {
    accountId: answer.accountId,
    authorizationToken: answer.authorizationToken,
    apiUrl: storage.apiUrl.replace(/\/+$/, ""),
    downloadUrl: storage.downloadUrl.replace(/\/+$/, ""),
    buckets: allowed.buckets?.map((b) => ({ id: b.id, name: b.name ?? "" })) ??
      null,
    capabilities: allowed.capabilities ?? [],
    namePrefix: allowed.namePrefix ?? null,
  };
}

/**
 * Checks what the key allows before anything else is asked of B2, so a
 * mismatch names the key to make instead of failing half way.
 */
export function checkKey(auth: B2Authorization, config: B2Config): void {
  const problems: string[] = [];
  const wanted = config.bucketName ?? config.bucketId ?? "";
  const makeKey = `Make a key with: b2 key create --bucket ${config.bucketName ?? "<bucket>"}` +
    (config.prefix ? ` --name-prefix ${config.prefix}` : "") +
    " <name> listBuckets,readFiles,shareFiles";
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

/**
 * Finds whichever of the bucket's name and id is missing: from the authorize
 * answer when it names the bucket, else with `b2_list_buckets`.
 */
export async function resolveBucket(
  auth: B2Authorization,
  config: B2Config,
  ctx: Context,
): Promise<Bucket> {
  const { bucketName, bucketId } = config;
  if (bucketName !== undefined && bucketId !== undefined) {
    return { id: bucketId, name: bucketName };
  }
  const known = auth.buckets?.find((b) =>
    b.name !== "" && (b.name === bucketName || b.id === bucketId)
  );
  if (known) return known;
  if (!auth.capabilities.includes("listBuckets")) {
    throw new ConfigError([
      `The B2 key lacks listBuckets, so the bucket's ${bucketName ? "id" : "name"} cannot be ` +
      `looked up. Set ${bucketName ? "B2_BUCKET_ID" : "B2_BUCKET_NAME"} as well, ` +
      "or give the key the listBuckets capability.",
    ]);
  }
  const answer = await b2Call<
    { buckets: { bucketId: string; bucketName: string }[] }
  >(
    ctx,
    `find bucket "${bucketName ?? bucketId}"`,
    {
      url: `${auth.apiUrl}/b2api/v4/b2_list_buckets`,
      init: {
        method: "POST",
        headers: {
          authorization: auth.authorizationToken,
          "content-type": "application/json",
        },
        body: JSON.stringify({
          accountId: auth.accountId,
          ...(bucketName ? { bucketName } : { bucketId }),
        }),
      },
    },
  );
  const bucket = answer.buckets[0];
  if (!bucket) {
    throw new ConfigError([
      `No bucket ${bucketName ? `named "${bucketName}"` : `with id "${bucketId}"`} in this ` +
      `B2 account. Check ${bucketName ? "B2_BUCKET_NAME" : "B2_BUCKET_ID"}.`,
    ]);
  }
  return { id: bucket.bucketId, name: bucket.bucketName };
}

/** Gets a download token for the bucket and prefix (`b2_get_download_authorization`). */
export async function getDownloadAuthorization(
  auth: B2Authorization,
  request: { bucket: Bucket; prefix: string; validSeconds: number },
  ctx: Context,
): Promise<string> {
  const answer = await b2Call<{ authorizationToken: string }>(
    ctx,
    `get a download authorization for bucket "${request.bucket.name}"`,
    {
      url: `${auth.apiUrl}/b2api/v4/b2_get_download_authorization`,
      init: {
        method: "POST",
        headers: {
          authorization: auth.authorizationToken,
          "content-type": "application/json",
        },
        body: JSON.stringify({
          bucketId: request.bucket.id,
          fileNamePrefix: request.prefix,
          validDurationInSeconds: request.validSeconds,
        }),
      },
    },
  );
  ctx.secrets.add(answer.authorizationToken);
  return answer.authorizationToken;
}

// ---------------------------------------------------------------------------
// The worker module
// ---------------------------------------------------------------------------

/** The name of the uploaded module. */
const MAIN_MODULE = "worker.js";
/** The runtime behaviour the worker was written and tested against (workerd in miniflare 4). */
const COMPATIBILITY_DATE = "2026-07-01";

/** A Cloudflare Worker binding as the upload metadata carries it. */
export interface Binding {
  /** `secret_text` for the token, `plain_text` for the rest. */
  type: "plain_text" | "secret_text";
  /** The binding's name as the worker sees it in `env`. */
  name: string;
  /** The binding's value. */
  text: string;
}

/** The upload's `metadata` part. */
export interface WorkerMetadata {
  /** The module that exports the worker (`worker.js`). */
  main_module: string;
  /** The Workers runtime behaviour the module was tested against. */
  compatibility_date: string;
  /** Every binding the worker gets. */
  bindings: Binding[];
}

/** What is uploaded: metadata and the one module. */
export interface WorkerUpload {
  /** The upload's `metadata` part. */
  metadata: WorkerMetadata;
  /** The worker's JavaScript. */
  module: string;
}

/** The facts the worker's bindings carry. */
export interface WorkerFacts {
  /** The B2 download token; only ever a secret binding. */
  downloadToken: string;
  /** Where the worker fetches files from. */
  downloadUrl: string;
  /** The bucket served. */
  bucketName: string;
  /** The name prefix served. */
  prefix: string;
  /** When the token was issued, milliseconds since the epoch. */
  issuedAt: number;
  /** When the token expires, milliseconds since the epoch. */
  expiresAt: number;
  /** What the worker does with a request. */
  options: WorkerOptions;
}

/**
 * The JavaScript uploaded as the worker: `worker_template.ts` with its types
 * stripped by the runtime, so what runs is exactly what was type checked.
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

/** The upload for these facts: the token only ever as a `secret_text` binding. */
export function workerUpload(module: string, facts: WorkerFacts): WorkerUpload {
  const plain = (name: string, text: string): Binding => ({
    type: "plain_text",
    name,
    text,
  });
  return {
    metadata: {
      main_module: MAIN_MODULE,
      compatibility_date: COMPATIBILITY_DATE,
      bindings: [
        {
          type: "secret_text",
          name: "B2_DOWNLOAD_TOKEN",
          text: facts.downloadToken,
        },
        plain("B2_DOWNLOAD_URL", facts.downloadUrl),
        plain("B2_BUCKET_NAME", facts.bucketName),
        plain("B2_FILE_PREFIX", facts.prefix),
        plain("B2_TOKEN_ISSUED_AT", isoSeconds(facts.issuedAt)),
        plain("B2_TOKEN_EXPIRES_AT", isoSeconds(facts.expiresAt)),
        plain("WORKER_URL_STYLE", facts.options.urlStyle),
        plain("WORKER_INDEX_FILE", facts.options.indexFile),
        plain("WORKER_CACHE_TTL", String(facts.options.cacheTtl)),
        plain("WORKER_CACHE_CONTROL", facts.options.cacheControl),
        plain("WORKER_CORS_ORIGINS", facts.options.corsOrigins),
      ],
    },
    module,
  };
}

/** The metadata with secret values replaced, for printing. */
export function maskSecrets(metadata: WorkerMetadata): WorkerMetadata {
  return {
    ...metadata,
    bindings: metadata.bindings.map((b) =>
      b.type === "secret_text" ? { ...b, text: "(secret, not shown)" } : b
    ),
  };
}

/** A worker module running in workerd on this machine. */
export interface LocalWorker {
  /** `http://127.0.0.1:<port>`. */
  url: string;
  /**
   * The miniflare instance running workerd, for the tests and the bench. Its type is
   * miniflare's own, left out of this module's documentation.
   *
   * @ignore
   */
  miniflare: Miniflare;
  /** Stops workerd. */
  dispose(): Promise<void>;
}

/**
 * Imported only by `startLocalWorker`, through a variable so that no module graph (a run, a
 * run from a URL, `deno compile`) follows it up front. Spelled as a full `npm:` specifier, not
 * a deno.json import: `deno task` installs every npm package of deno.json's imports and of the
 * lock file before it runs any task (denoland/deno#28999), which made `deno task refresh`
 * download miniflare, workerd and sharp (about 192 MB) to an empty cache. For the same reason
 * deno.json turns the lock file off and the tasks that use npm name it (`--lock=deno.lock`).
 */
const MINIFLARE = "npm:miniflare@4";

/**
 * Runs an upload in workerd (Cloudflare's runtime) through miniflare, with
 * the same module and bindings Cloudflare would get. `port: 0` picks one.
 */
export async function startLocalWorker(
  upload: WorkerUpload,
  options: {
    port?: number;
    /** Where the edge cache lives, so a second worker can share it (a redeploy). */
    cachePersist?: string;
    /** Gets what the worker prints (its `console.error`, as `wrangler tail` would). */
    onLog?: (text: string) => void;
  } = {},
): Promise<LocalWorker> {
  const { Miniflare } = await import(MINIFLARE) as typeof import("npm:miniflare@4");
  const { onLog } = options;
  const signals = ["SIGINT", "SIGTERM"] as const;
  const before = signals.map((signal) => process.listeners(signal));
  const miniflare = new Miniflare({
    modules: [{ type: "ESModule", path: upload.metadata.main_module, contents: upload.module }],
    compatibilityDate: upload.metadata.compatibility_date,
    bindings: Object.fromEntries(upload.metadata.bindings.map((b) => [b.name, b.text])),
    host: "127.0.0.1",
    port: options.port ?? 0,
    ...(options.cachePersist && { cachePersist: options.cachePersist }),
    ...(onLog && {
      handleRuntimeStdio(stdout: Readable, stderr: Readable) {
        stdout.on("data", (chunk: Uint8Array) => onLog(String(chunk)));
        stderr.on("data", (chunk: Uint8Array) => onLog(String(chunk)));
      },
    }),
  });
  // Its constructor adds signal handlers that exit with 130 at once, before the caller can
  // dispose workerd and close what it opened: Ctrl-C is the caller's to handle. (Its `exit`
  // hook stays, so workerd still stops if the process ends some other way.)
  signals.forEach((signal, i) => {
    for (const listener of process.listeners(signal)) {
      if (!before[i]!.includes(listener)) process.removeListener(signal, listener);
    }
  });
  try {
    const url = (await miniflare.ready).origin;
    return { url, miniflare, dispose: () => miniflare.dispose() };
  } catch (error) {
    await miniflare.dispose().catch(() => {});
    throw error;
  }
}

// ---------------------------------------------------------------------------
// Cloudflare
// ---------------------------------------------------------------------------

/** What Cloudflare's envelope says went wrong, with the fix; by error code. */
function cloudflareHint(
  status: number,
  code: number,
  config: CloudflareConfig,
): string {
  if (code === 10000 || code === 9109 || status === 401 || status === 403) {
    return "auth" in config && "email" in config.auth
      ? "check CLOUDFLARE_EMAIL and CLOUDFLARE_API_KEY"
      : 'check CLOUDFLARE_API_TOKEN: it needs "Workers Scripts: Edit" on the account ' +
        '(and "Workers Routes: Edit" on the zone for WORKER_ROUTE), and CLOUDFLARE_ACCOUNT_ID';
  }
  if (code === 7003 || code === 7000) {
    return "check CLOUDFLARE_ACCOUNT_ID and CLOUDFLARE_ZONE_ID";
  }
  if (code === 10021) {
    return "the worker was refused as uploaded; report this as a bug";
  }
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

/** One Cloudflare API call: auth, envelope check, typed result or {@linkcode ApiError}. */
async function cloudflareCall<T>(
  config: CloudflareConfig,
  ctx: Context,
  step: string,
  request: { method: string; path: string; body?: BodyInit; json?: unknown },
): Promise<T> {
  const headers = new Headers(
    "token" in config.auth
      ? { authorization: `Bearer ${config.auth.token}` }
      : { "x-auth-email": config.auth.email, "x-auth-key": config.auth.key },
  );
  let body = request.body;
  if (request.json !== undefined) {
    headers.set("content-type", "application/json");
    body = JSON.stringify(request.json);
  }
  const response = await send(ctx, {
    url: config.apiBaseUrl + request.path,
    init: { method: request.method, headers, body },
    service: "Cloudflare",
    step,
  });
  const envelope = await readJson(response) as Envelope<T> | undefined;
  if (response.ok && envelope?.success) return envelope.result;
  const error = envelope?.errors?.[0];
  const code = error?.code ?? 0;
  const hint = cloudflareHint(response.status, code, config);
  throw new ApiError(
    `Cannot ${step}: Cloudflare answered ${response.status}` +
      (error ? ` error ${error.code}: ${error.message}` : "") +
      (hint ? `. Fix: ${hint}.` : ""),
    { service: "Cloudflare", status: response.status, code: String(code) },
  );
}

/** Uploads and deploys the worker, code, configuration and secret together, in one call. */
export async function uploadWorker(
  config: CloudflareConfig,
  upload: WorkerUpload,
  ctx: Context,
): Promise<void> {
  const form = new FormData();
  form.append(
    "metadata",
    new Blob([JSON.stringify(upload.metadata)], { type: "application/json" }),
  );
  form.append(
    upload.metadata.main_module,
    new Blob([upload.module], { type: "application/javascript+module" }),
    upload.metadata.main_module,
  );
  await cloudflareCall(config, ctx, `upload worker "${config.workerName}"`, {
    method: "PUT",
    path: `/accounts/${config.accountId}/workers/scripts/${config.workerName}`,
    body: form,
  });
}

/** The deployed worker's bindings, or `undefined` when there is no such worker. */
export async function readWorkerBindings(
  config: CloudflareConfig,
  ctx: Context,
): Promise<{ name: string; type: string; text?: string }[] | undefined> {
  try {
    const settings = await cloudflareCall<
      { bindings?: { name: string; type: string; text?: string }[] }
    >(
      config,
      ctx,
      `read the settings of worker "${config.workerName}"`,
      {
        method: "GET",
        path: `/accounts/${config.accountId}/workers/scripts/${config.workerName}/settings`,
      },
    );
    return settings.bindings ?? [];
  } catch (error) {
    if (error instanceof ApiError && error.code === "10007") return undefined;
    throw error;
  }
}

/** What a route or domain step did. */
export type Change = "created" | "updated" | "unchanged";

/** Makes sure `config.route` on `config.zoneId` runs the worker. */
export async function ensureRoute(
  config: CloudflareConfig,
  ctx: Context,
): Promise<Change> {
  const { zoneId, route, workerName } = config;
  if (!zoneId || !route) throw new Error("ensureRoute needs zoneId and route");
  const step = (verb: string) => `${verb} route "${route}"`;
  const routes = await cloudflareCall<
    { id: string; pattern: string; script?: string }[]
  >(
    config,
    ctx,
    step("list routes to check"),
    { method: "GET", path: `/zones/${zoneId}/workers/routes` },
  );
  const existing = routes.find((r) => r.pattern === route);
  if (existing?.script === workerName) return "unchanged";
  const json = { pattern: route, script: workerName };
  if (existing) {
    await cloudflareCall(config, ctx, step("point"), {
      method: "PUT",
      path: `/zones/${zoneId}/workers/routes/${existing.id}`,
      json,
    });
    return "updated";
  }
  await cloudflareCall(config, ctx, step("create"), {
    method: "POST",
    path: `/zones/${zoneId}/workers/routes`,
    json,
  });
  return "created";
}

/** Makes sure `config.domain` is a custom domain of the worker (Cloudflare adds DNS and TLS). */
export async function ensureDomain(
  config: CloudflareConfig,
  ctx: Context,
): Promise<Change> {
  const { zoneId, domain, workerName, accountId } = config;
  if (!zoneId || !domain) {
    throw new Error("ensureDomain needs zoneId and domain");
  }
  const domains = await cloudflareCall<{ hostname: string; service: string }[]>(
    config,
    ctx,
    `check custom domain "${domain}"`,
    {
      method: "GET",
      path: `/accounts/${accountId}/workers/domains?hostname=${encodeURIComponent(domain)}`,
    },
  );
  const existing = domains.find((d) => d.hostname === domain);
  if (existing?.service === workerName) return "unchanged";
  await cloudflareCall(config, ctx, `attach custom domain "${domain}"`, {
    method: "PUT",
    path: `/accounts/${accountId}/workers/domains`,
    json: {
      hostname: domain,
      service: workerName,
      zone_id: zoneId,
      environment: "production",
    },
  });
  return existing ? "updated" : "created";
}

// ---------------------------------------------------------------------------
// The refresh itself
// ---------------------------------------------------------------------------

/** A worker ready to upload, and what it was made from. */
export interface PreparedWorker {
  /** The bucket the token reads. */
  bucket: Bucket;
  /** The name prefix the token covers. */
  prefix: string;
  /** When the token was issued, milliseconds since the epoch. */
  issuedAt: number;
  /** When the token expires, milliseconds since the epoch. */
  expiresAt: number;
  /** What would be uploaded. */
  upload: WorkerUpload;
  /** Sequential API round trips so far. */
  roundTrips: number;
}

/**
 * Steps 1-4 of a refresh, which touch only B2: authorize, check the key,
 * resolve the bucket, get a download token, and build the upload.
 */
export async function prepareWorker(
  config: B2Config,
  worker: { module: string; options: WorkerOptions },
  ctx: Context,
): Promise<PreparedWorker> {
  ctx.log(`B2: authorizing key ${config.keyId} at ${config.apiUrl}`);
  const auth = await authorizeAccount(config, ctx);
  checkKey(auth, config);
  const listed = !(config.bucketName && config.bucketId) &&
    !auth.buckets?.some((b) =>
      b.name && (b.name === config.bucketName || b.id === config.bucketId)
    );
  const bucket = await resolveBucket(auth, config, ctx);
  ctx.log(
    `B2: bucket "${bucket.name}" is ${bucket.id}${listed ? " (b2_list_buckets)" : ""}`,
  );
  const issuedAt = ctx.now();
  const downloadToken = await getDownloadAuthorization(auth, {
    bucket,
    prefix: config.prefix,
    validSeconds: config.tokenTtl,
  }, ctx);
  // Counted from before the request, so the recorded expiry is never late.
  const expiresAt = issuedAt + config.tokenTtl * 1000;
  ctx.log(
    `B2: download token for "${config.prefix}" valid ${formatDuration(config.tokenTtl)}, ` +
      `until ${isoSeconds(expiresAt)}`,
  );
  return {
    bucket,
    prefix: config.prefix,
    issuedAt,
    expiresAt,
    roundTrips: listed ? 3 : 2,
    upload: workerUpload(worker.module, {
      downloadToken,
      downloadUrl: auth.downloadUrl,
      bucketName: bucket.name,
      prefix: config.prefix,
      issuedAt,
      expiresAt,
      options: worker.options,
    }),
  };
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
  /** The URL that answered 2xx after deploying. */
  verified?: string;
  /** API requests made. */
  roundTrips: number;
}

/** How long `--verify` keeps trying while the deploy propagates. */
const VERIFY_ATTEMPTS = 6;
const VERIFY_PAUSE_MS = 5_000;

/**
 * The whole job: prepare the worker from B2, then upload it, then the route
 * and domain, then verify. Nothing is uploaded unless every B2 step worked,
 * so a failed run leaves the deployed worker, still valid for days, as it was.
 */
export async function refresh(
  config: Config,
  ctx: Context,
  options: { module: string; dryRun?: boolean },
): Promise<RefreshResult & { upload: WorkerUpload }> {
  const b2 = config.b2;
  const cloudflare = config.cloudflare;
  if (!b2 || !cloudflare) {
    throw new Error("refresh needs the B2 and Cloudflare configuration");
  }
  const prepared = await prepareWorker(b2, {
    module: options.module,
    options: config.worker,
  }, ctx);
  const result: RefreshResult & { upload: WorkerUpload } = {
    worker: cloudflare.workerName,
    bucket: prepared.bucket.name,
    prefix: prepared.prefix,
    expiresAt: isoSeconds(prepared.expiresAt),
    deployed: false,
    roundTrips: prepared.roundTrips,
    upload: prepared.upload,
  };
  if (options.dryRun) return result;

  ctx.log(
    `Cloudflare: uploading worker "${cloudflare.workerName}" to account ${cloudflare.accountId}`,
  );
  await uploadWorker(cloudflare, prepared.upload, ctx);
  result.deployed = true;
  result.roundTrips++;
  if (cloudflare.route) {
    result.route = await ensureRoute(cloudflare, ctx);
    ctx.log(`Cloudflare: route ${cloudflare.route} ${result.route}`);
  }
  if (cloudflare.domain) {
    result.domain = await ensureDomain(cloudflare, ctx);
    ctx.log(`Cloudflare: custom domain ${cloudflare.domain} ${result.domain}`);
  }
  if (config.verifyUrl) {
    await verify(config.verifyUrl, ctx);
    result.verified = config.verifyUrl;
  }
  return result;
}

/** Fetches `url` until it answers 2xx, for a while, since a deploy takes seconds to spread. */
export async function verify(url: string, ctx: Context): Promise<void> {
  let last = "";
  for (let attempt = 1; attempt <= VERIFY_ATTEMPTS; attempt++) {
    try {
      const response = await ctx.fetch(url, {
        method: "GET",
        headers: { "cache-control": "no-cache" },
        signal: AbortSignal.timeout(ctx.timeoutMs),
      });
      await response.body?.cancel();
      if (response.ok) {
        ctx.log(`Verify: ${url} answered ${response.status}`);
        return;
      }
      last = `answered ${response.status}`;
    } catch (error) {
      last = `failed: ${(error as Error).message}`;
    }
    ctx.log(
      `Verify: ${url} ${last} (attempt ${attempt} of ${VERIFY_ATTEMPTS})`,
    );
    if (attempt < VERIFY_ATTEMPTS) await ctx.sleep(VERIFY_PAUSE_MS);
  }
  throw new ApiError(
    `The worker is deployed, but ${url} ${last} after ${VERIFY_ATTEMPTS} attempts. ` +
      "Check that the route or domain points at the worker and that the file exists " +
      "(try the same path with `main.ts dev`).",
    { service: "Verify", status: 0, code: "verify_failed" },
  );
}

// ---------------------------------------------------------------------------
// Status and cron
// ---------------------------------------------------------------------------

/** What `status` found. */
export interface StatusReport {
  /** The worker script's name. */
  worker: string;
  /** Whether the token has at least the required time left. */
  healthy: boolean;
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
}

/** Reads the deployed worker's bindings and judges its token against `minRemaining` seconds. */
export async function status(
  config: CloudflareConfig,
  ctx: Context,
  options: { minRemaining: number },
): Promise<StatusReport> {
  const report: StatusReport = { worker: config.workerName, healthy: false };
  const bindings = await readWorkerBindings(config, ctx);
  if (!bindings) {
    return {
      ...report,
      problem: `worker "${config.workerName}" does not exist; run refresh`,
    };
  }
  const plain = (name: string) =>
    bindings.find((b) => b.name === name && b.type === "plain_text")?.text;
  if (
    !bindings.some((b) => b.name === "B2_DOWNLOAD_TOKEN" && b.type === "secret_text")
  ) {
    return {
      ...report,
      problem: "the worker has no B2_DOWNLOAD_TOKEN secret; run refresh",
    };
  }
  const expires = Date.parse(plain("B2_TOKEN_EXPIRES_AT") ?? "");
  if (Number.isNaN(expires)) {
    return {
      ...report,
      problem: "the worker has no B2_TOKEN_EXPIRES_AT binding; run refresh",
    };
  }
  const issued = Date.parse(plain("B2_TOKEN_ISSUED_AT") ?? "");
  const now = ctx.now();
  const remaining = Math.floor((expires - now) / 1000);
  Object.assign(report, {
    expiresAt: isoSeconds(expires),
    remaining,
    ...(!Number.isNaN(issued) &&
      { issuedAt: isoSeconds(issued), age: Math.floor((now - issued) / 1000) }),
  });
  if (remaining < options.minRemaining) {
    report.problem = remaining <= 0
      ? "the download token has expired; run refresh"
      : `less than ${formatDuration(options.minRemaining)} left; run refresh`;
    return report;
  }
  return { ...report, healthy: true };
}

/** Once a day at 04:17 UTC: an odd minute, away from the top-of-the-hour rush. */
const DEFAULT_SCHEDULE = "17 4 * * *";
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
 */
export async function refreshIfDue(
  config: Config,
  ctx: Context,
  options: { loadModule: () => Promise<string> },
): Promise<StartupDecision> {
  const cloudflare = config.cloudflare!;
  const report = await status(cloudflare, ctx, {
    minRemaining: config.refreshMargin,
  });
  if (report.healthy) {
    return {
      refreshed: false,
      reason: `token has ${formatDuration(report.remaining!)} left, more than the margin of ` +
        formatDuration(config.refreshMargin),
    };
  }
  const result = await refresh(config, ctx, { module: await options.loadModule() });
  return {
    refreshed: true,
    reason: `${report.problem}; refreshed until ${result.expiresAt}`,
  };
}

/** Registers the scheduled refresh. Each run refreshes; a failure is retried by the backoff. */
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
    async () => {
      const result = await refresh(config, ctx, {
        module: await options.module,
      });
      options.report(summary(result));
    },
  );
}

// ---------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------

const USAGE =
  `b2-private-cdn ${VERSION}: serve a private Backblaze B2 bucket through a Cloudflare Worker

Usage: deno run --allow-net --allow-env --allow-read main.ts [command] [flags]

Commands:
  refresh   get a fresh B2 download token and deploy the worker with it (default)
  status    check the deployed worker's token; exit 1 when it needs attention
  render    print the worker module and its bindings (secrets masked); no network
  cron      stay running and refresh on REFRESH_SCHEDULE (Deno.cron)
  dev       run the worker locally in workerd with a real token (B2 key only)
  demo      the whole chain on this machine, against local stand-ins

Flags:
  --json                 one JSON object on stdout instead of a line
  --dry-run              refresh: do the B2 steps, show the upload, upload nothing
  --verify <url>         refresh: fetch this URL afterwards; fail unless it answers 2xx
  --min-remaining <d>    status: least acceptable time left (default 48h)
  --port <n>             dev, demo: local port (default 8787)
  --env-file <path>      read settings from this file instead of ./.env
  --verbose, -v          print each step on stderr
  --help, -h             this text
  --version, -V          the version
  --<variable>           any setting below by its flag name, e.g. --b2-bucket-name photos

Settings (flags, else environment, else .env; * marks credentials, never flags):
${
    Object.entries(VARIABLES).map(([name, v]) =>
      `  ${("secret" in v || "credential" in v ? "*" : " ") + name.padEnd(24)} ${v.about}`
    ).join("\n")
  }

Exit codes: 0 done, 1 the operation failed, 2 bad usage or configuration.`;

/** Where a command writes; everything passes through the secret filter. */
export interface Io {
  /** Writes one line of output. */
  stdout: (text: string) => void;
  /** Writes one line of diagnostics. */
  stderr: (text: string) => void;
}

/** Replaces every known secret in `text`. */
export function redact(text: string, secrets: Iterable<string>): string {
  let out = text;
  for (const secret of secrets) {
    if (secret.length >= 4) out = out.replaceAll(secret, "[redacted]");
  }
  return out;
}

function summary(result: RefreshResult): string {
  const where = result.prefix ? `prefix "${result.prefix}"` : "the whole bucket";
  return `${result.deployed ? "Deployed" : "Would deploy"} worker "${result.worker}" for bucket ` +
    `"${result.bucket}" (${where}); token expires ${result.expiresAt}` +
    (result.route ? `; route ${result.route}` : "") +
    (result.domain ? `; domain ${result.domain}` : "") +
    (result.verified ? `; verified ${result.verified}` : "");
}

/** The flags every command shares. */
export interface Flags {
  /** `--json`: one JSON object on stdout. */
  json: boolean;
  /** `--dry-run`: the B2 steps only; nothing is uploaded. */
  dryRun: boolean;
  /** `--verbose`: each step on stderr. */
  verbose: boolean;
  /** `--port`, for `dev` and `demo`. */
  port: number;
  /** `--min-remaining`, for `status`, in seconds. */
  minRemaining: number;
}

async function runRefresh(
  config: Config,
  ctx: Context,
  io: Io,
  flags: Flags,
): Promise<number> {
  const result = await refresh(config, ctx, {
    module: await loadWorkerModule(),
    dryRun: flags.dryRun,
  });
  const { upload, ...facts } = result;
  if (flags.json) {
    io.stdout(JSON.stringify(
      flags.dryRun ? { ...facts, metadata: maskSecrets(upload.metadata) } : facts,
    ));
  } else {
    io.stdout(summary(result));
    if (flags.dryRun) io.stdout(describeUpload(upload));
  }
  return 0;
}

function describeUpload(upload: WorkerUpload): string {
  return `metadata ${JSON.stringify(maskSecrets(upload.metadata), null, 2)}\n` +
    `module ${upload.metadata.main_module}: ${
      new TextEncoder().encode(upload.module).length
    } bytes`;
}

/**
 * Prints what refresh would upload, with placeholders for what only B2 can
 * tell (the token, its times and the download URL): no credentials, no network.
 */
async function runRender(
  settings: Settings,
  config: Config,
  io: Io,
  flags: Flags,
): Promise<number> {
  const module = await loadWorkerModule();
  const upload = workerUpload(module, {
    downloadToken: "",
    downloadUrl: "https://f000.backblazeb2.com (from b2_authorize_account)",
    bucketName: settings.B2_BUCKET_NAME ?? "(B2_BUCKET_NAME)",
    prefix: settings.B2_FILE_PREFIX ?? "",
    issuedAt: 0,
    expiresAt: 0,
    options: config.worker,
  });
  const metadata = maskSecrets(upload.metadata);
  if (flags.json) io.stdout(JSON.stringify({ metadata, module }));
  else io.stdout(`// metadata: ${JSON.stringify(metadata)}\n${module}`);
  return 0;
}

async function runStatus(
  config: Config,
  ctx: Context,
  io: Io,
  flags: Flags,
): Promise<number> {
  const report = await status(config.cloudflare!, ctx, {
    minRemaining: flags.minRemaining,
  });
  if (flags.json) {
    io.stdout(JSON.stringify(report));
  } else {
    const facts = report.expiresAt
      ? `token expires ${report.expiresAt} (${formatDuration(report.remaining!)} left` +
        (report.age !== undefined ? `, issued ${formatDuration(report.age)} ago)` : ")")
      : "";
    io.stdout(
      `${report.healthy ? "OK" : "CRITICAL"} - worker "${report.worker}": ` +
        [facts, report.problem].filter(Boolean).join("; "),
    );
  }
  return report.healthy ? 0 : 1;
}

/**
 * Listens for Ctrl-C (or SIGTERM) from now on, before anything tells the user
 * the command is ready; `pressed` resolves when one arrives. Disposing it
 * stops listening, so a command that fails does not hang on its listeners.
 */
function listenForCtrlC(): Disposable & { pressed: Promise<void>; wasPressed(): boolean } {
  const { promise, resolve } = Promise.withResolvers<void>();
  let pressed = false;
  const stopListening = () => {
    Deno.removeSignalListener("SIGINT", stop);
    Deno.removeSignalListener("SIGTERM", stop);
  };
  const stop = () => {
    stopListening();
    pressed = true;
    resolve();
  };
  Deno.addSignalListener("SIGINT", stop);
  Deno.addSignalListener("SIGTERM", stop);
  return { pressed: promise, wasPressed: () => pressed, [Symbol.dispose]: stopListening };
}

async function runDev(
  config: Config,
  ctx: Context,
  io: Io,
  flags: Flags,
): Promise<number> {
  using ctrlC = listenForCtrlC();
  const prepared = await prepareWorker(
    config.b2!,
    { module: await loadWorkerModule(), options: config.worker },
    ctx,
  );
  const worker = await startLocalWorker(prepared.upload, { port: flags.port });
  // Ctrl-C while it started up stops it now, not after saying it is ready.
  if (!ctrlC.wasPressed()) {
    io.stdout(
      `The worker that refresh would deploy runs in workerd at ${worker.url}\n` +
        `It reads bucket "${prepared.bucket.name}" with a fresh token until ` +
        `${isoSeconds(prepared.expiresAt)}. Ctrl-C stops it.`,
    );
    await ctrlC.pressed;
  }
  await worker.dispose();
  io.stderr("Stopped.");
  return 0;
}

async function runCron(config: Config, ctx: Context, io: Io): Promise<number> {
  if (typeof Deno.cron !== "function") {
    throw new ConfigError([
      "Deno.cron is not available: run with --unstable-cron (the deno.json tasks do).",
    ]);
  }
  using ctrlC = listenForCtrlC();
  const module = await loadWorkerModule();
  const report = (line: string) => io.stdout(`${new Date(ctx.now()).toISOString()} ${line}`);
  scheduleRefresh(config, ctx, {
    module,
    register: Deno.cron as CronRegistrar,
    report,
  });
  report(
    `Scheduled "${CRON_NAME}" at "${config.refreshSchedule}" (UTC). Ctrl-C stops it.`,
  );
  const decision = await refreshIfDue(config, ctx, { loadModule: () => Promise.resolve(module) });
  report(`Start-up check: ${decision.reason}`);
  await ctrlC.pressed;
  return 0;
}

/** The sample files the demo's stand-in bucket holds. */
const DEMO_FILES = [
  "index.html",
  "hello.txt",
  "video/sample.mp4",
  "images/logo.svg",
];

async function runDemo(ctx: Context, io: Io, flags: Flags): Promise<number> {
  using ctrlC = listenForCtrlC();
  // Through computed URLs, so that no other command's module graph (nor `deno compile`)
  // fetches the stand-ins up front.
  const { startFakeB2 } = await import(
    new URL("./testing/fake_b2.ts", import.meta.url).href
  ) as typeof import("./testing/fake_b2.ts");
  const { startFakeCloudflare } = await import(
    new URL("./testing/fake_cloudflare.ts", import.meta.url).href
  ) as typeof import("./testing/fake_cloudflare.ts");
  const files = await Promise.all(DEMO_FILES.map(async (name) => ({
    name: `site/${name}`,
    body: await readBeside(`./testing/fixtures/${name}`),
    contentType: contentTypeOf(name),
  })));
  const b2 = startFakeB2({
    buckets: [{ id: "bucket-demo", name: "demo-bucket", files }],
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
      CLOUDFLARE_ACCOUNT_ID: "fake-account-id",
      CLOUDFLARE_API_TOKEN: "fake-cf-token",
      CLOUDFLARE_API_BASE_URL: cloudflare.url,
    }, { b2: true, cloudflare: true });
    const result = await refresh(config, {
      ...ctx,
      log: (line) => say(`  ${line}`),
    }, {
      module: await loadWorkerModule(),
    });
    say(`\n${summary(result)}`);
    const deployed = cloudflare.scripts.get(config.workerName);
    if (!deployed) {
      throw new Error(
        "the stand-in Cloudflare API holds no worker after the refresh",
      );
    }
    const worker = await startLocalWorker(
      {
        metadata: deployed.metadata as WorkerMetadata,
        module: deployed.module,
      },
      { port: flags.port },
    );
    // Ctrl-C while it started up stops it now, not after saying it is ready.
    if (!ctrlC.wasPressed()) {
      say(
        `\nThe deployed worker now runs in workerd (Cloudflare's runtime) at ${worker.url}\n` +
          "Try it:\n" +
          `  curl -i ${worker.url}/\n` +
          `  curl -i ${worker.url}/hello.txt\n` +
          `  curl -i -H "Range: bytes=0-99" ${worker.url}/video/sample.mp4\n` +
          `  curl -I ${worker.url}/images/logo.svg\n` +
          `  curl -i ${worker.url}/../secret   # refused\n` +
          "Ctrl-C stops it.",
      );
      await ctrlC.pressed;
    }
    await worker.dispose();
    say("Stopped.");
    return 0;
  } finally {
    await Promise.all([b2.close(), cloudflare.close()]);
  }
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

/** How a command is run, what it needs, and whether it wants the network. */
export const COMMANDS = {
  refresh: { needs: { b2: true, cloudflare: true } },
  status: { needs: { cloudflare: true } },
  render: { needs: {} },
  cron: { needs: { b2: true, cloudflare: true } },
  dev: { needs: { b2: true } },
  demo: { needs: {} },
} as const;
/** A command's name. */
export type Command = keyof typeof COMMANDS;

/** Parsed command line: the command, its flags and the settings given as flags. */
export interface CommandLine {
  /** The command to run. @default "refresh" */
  command: Command;
  /** The flags every command shares. */
  flags: Flags;
  /** Settings given as flags, such as `--b2-bucket-name`. */
  settings: Settings;
  /** `--env-file`: the dotenv file to read instead of `.env`. */
  envFile?: string;
  /** `--help`. */
  help: boolean;
  /** `--version`. */
  version: boolean;
}

/** Parses `args`, throwing {@linkcode ConfigError} for anything it does not know. */
export function parseCommandLine(args: string[]): CommandLine {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      allowPositionals: true,
      strict: true,
      options: {
        help: { type: "boolean", short: "h" },
        version: { type: "boolean", short: "V" },
        verbose: { type: "boolean", short: "v" },
        json: { type: "boolean" },
        "dry-run": { type: "boolean" },
        verify: { type: "string" },
        "min-remaining": { type: "string" },
        port: { type: "string" },
        "env-file": { type: "string" },
        ...Object.fromEntries(
          SETTING_FLAGS.map((
            name,
          ) => [flagName(name), { type: "string" as const }]),
        ),
      },
    });
  } catch (error) {
    const message = (error as Error).message.replace(/\. To specify.*$/s, ".");
    throw new ConfigError([`${message} See --help for the flags.`]);
  }
  const { values, positionals } = parsed;
  const problems: string[] = [];
  const [name = "refresh", ...extra] = positionals;
  if (!(name in COMMANDS)) {
    problems.push(
      `Unknown command "${name}". Commands: ${Object.keys(COMMANDS).join(", ")}.`,
    );
  }
  if (extra.length > 0) {
    problems.push(`Unexpected arguments: ${extra.join(" ")}.`);
  }
  const port = Number(values.port ?? 8787);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    problems.push(`--port must be a port number, not "${values.port}".`);
  }
  const minRemaining = parseDuration(values["min-remaining"] ?? "48h");
  if (minRemaining === undefined) {
    problems.push(
      `--min-remaining must be a duration such as 48h or 2d, not "${values["min-remaining"]}".`,
    );
  }
  if (problems.length > 0) throw new ConfigError(problems);
  const settings: Settings = {};
  for (const variable of SETTING_FLAGS) {
    const value = (values as Record<string, unknown>)[flagName(variable)];
    if (typeof value === "string") settings[variable] = value;
  }
  if (values.verify !== undefined) settings.VERIFY_URL = values.verify;
  return {
    command: name as Command,
    flags: {
      json: values.json ?? false,
      dryRun: values["dry-run"] ?? false,
      verbose: values.verbose ?? false,
      port,
      minRemaining: minRemaining ?? 0,
    },
    settings,
    ...(values["env-file"] !== undefined && { envFile: values["env-file"] }),
    help: values.help ?? false,
    version: values.version ?? false,
  };
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
}

/**
 * Runs one command line and returns its exit code. Everything it prints
 * passes through {@linkcode redact}, on top of never formatting a secret.
 */
export async function run(options: RunOptions): Promise<number> {
  const ctx = defaultContext(options.ctx);
  const io: Io = {
    stdout: (text) => options.io.stdout(redact(text, ctx.secrets)),
    stderr: (text) => options.io.stderr(redact(text, ctx.secrets)),
  };
  try {
    const line = parseCommandLine(options.args);
    if (line.help) return io.stdout(USAGE), 0;
    if (line.version) return io.stdout(`b2-private-cdn ${VERSION}`), 0;
    const dotenv = await options.readEnvFile(line.envFile ?? ".env");
    if (line.envFile && dotenv === undefined) {
      throw new ConfigError([`--env-file: cannot read "${line.envFile}".`]);
    }
    const settings: Settings = {
      ...pickSettings(dotenv ? parseEnv(dotenv) : {}),
      ...pickSettings(options.env),
      ...line.settings,
    };
    for (const name of SECRET_VARIABLES) {
      const value = settings[name as Variable];
      if (value) ctx.secrets.add(value);
    }
    if (line.flags.verbose || line.command === "demo") {
      const log = options.ctx?.log;
      ctx.log = (text) => {
        log?.(text);
        if (line.flags.verbose) io.stderr(text);
      };
    }
    const config = parseConfig(settings, COMMANDS[line.command].needs);
    switch (line.command) {
      case "refresh":
        return await runRefresh(config, ctx, io, line.flags);
      case "render":
        return await runRender(settings, config, io, line.flags);
      case "status":
        return await runStatus(config, ctx, io, line.flags);
      case "cron":
        return await runCron(config, ctx, io);
      case "dev":
        return await runDev(config, ctx, io, line.flags);
      case "demo":
        return await runDemo(ctx, io, line.flags);
    }
  } catch (error) {
    if (error instanceof ConfigError) {
      io.stderr(`error: ${error.message}`);
      return 2;
    }
    if (error instanceof ApiError) {
      io.stderr(`error: ${error.message}`);
      return 1;
    }
    io.stderr(`error: ${(error as Error)?.stack ?? error}`);
    return 1;
  }
}

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

/** The command line entry point: the only place that touches `Deno.args`, `Deno.env` and `Deno.exit`. */
async function main(): Promise<never> {
  const encoder = new TextEncoder();
  const tooOld = runtimeProblem(Deno.version.deno);
  if (tooOld) {
    Deno.stderr.writeSync(encoder.encode(`error: ${tooOld}\n`));
    Deno.exit(1);
  }
  const code = await run({
    args: Deno.args,
    env: Deno.env.toObject(),
    readEnvFile: readTextIfExists,
    io: {
      stdout: (text) => Deno.stdout.writeSync(encoder.encode(text + "\n")),
      stderr: (text) => Deno.stderr.writeSync(encoder.encode(text + "\n")),
    },
  });
  Deno.exit(code);
}

/** The oldest Deno with the built-ins this tool uses: `node:util` `parseEnv`, `node:module` `stripTypeScriptTypes`. */
export const MIN_DENO_VERSION = "2.8.2";

/**
 * Why this runtime cannot run the tool, or `undefined` when it can: the version is older than
 * {@linkcode MIN_DENO_VERSION} or a built-in the tool needs is missing.
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
 * level, possibly without the app's settings (DENO_DEPLOY.md: How crons are found).
 */
export const DEPLOY_SCHEDULE = "17 * * * *";
/** Health answers come from one read of the worker's bindings per instance in this long. */
const HEALTH_READ_EVERY_MS = 300_000;
/** Health is "short" (503) below this, as `status` is by default. */
const HEALTH_MIN_REMAINING = 2 * DAY;

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
export interface Health {
  /** `healthy` (200), `short` or `missing` (503), `unknown` (200: it could not tell). */
  state: "healthy" | "short" | "missing" | "unknown";
  /** The worker script's name. */
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

/** The settings and a context for one run on Deploy; secrets are registered before any output. */
function deploySettings(
  platform: DeployPlatform,
  needs: Needs,
): { config: Config; ctx: Context; env: Record<string, string | undefined> } {
  const env = platform.env();
  const ctx = defaultContext(platform.ctx);
  for (const name of SECRET_VARIABLES) {
    const value = env[name];
    if (value) ctx.secrets.add(value);
  }
  ctx.log = (line) => platform.log(redact(line, ctx.secrets));
  // The Deploy schedule is fixed (see DEPLOY_SCHEDULE); a value here must not fail the run.
  const { REFRESH_SCHEDULE: _ignored, ...settings } = pickSettings(env);
  try {
    return { config: parseConfig(settings, needs), ctx, env };
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
  try {
    const tooOld = runtimeProblem(platform.denoVersion);
    if (tooOld) throw new Error(tooOld);
    const { config, ctx, env } = deploySettings(platform, { b2: true, cloudflare: true });
    secrets = ctx.secrets;
    if (env.REFRESH_SCHEDULE) {
      platform.log(
        `REFRESH_SCHEDULE is ignored on Deno Deploy: "${CRON_NAME}" runs at "${DEPLOY_SCHEDULE}" ` +
          "(UTC) and refreshes when less than REFRESH_MARGIN is left. Remove it from the app's " +
          "settings to silence this line.",
      );
    }
    const decision = await refreshIfDue(config, ctx, { loadModule: loadWorkerModule });
    platform.log(
      decision.refreshed ? `Refreshed: ${decision.reason}` : `Not due: ${decision.reason}`,
    );
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
    const report = await status(config.cloudflare!, ctx, { minRemaining: HEALTH_MIN_REMAINING });
    const facts = {
      worker: report.worker,
      ...(report.expiresAt !== undefined && { expiresAt: report.expiresAt }),
      ...(report.remaining !== undefined && { remaining: report.remaining }),
      ...(report.problem !== undefined && { problem: report.problem }),
      checkedAt,
    };
    if (report.healthy) return { state: "healthy", ...facts };
    return { state: report.expiresAt === undefined ? "missing" : "short", ...facts };
  } catch (failure) {
    const message = redact((failure as Error)?.message ?? String(failure), secrets);
    return { state: "unknown", problem: message, checkedAt };
  }
}

// On Deno Deploy (which sets DENO_DEPLOY in every context, and users cannot) this module is
// the app; anywhere else, run as a program, it is the command line. Imported, it does nothing.
if (import.meta.main) {
  if (Deno.env.get("DENO_DEPLOY") !== undefined) {
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
