import assert from "node:assert/strict";
import { dirname } from "node:path";
import { parseEnv } from "node:util";
import {
  ApiError,
  COMMANDS,
  type Config,
  type ConfigError,
  type Context,
  type CronRegistrar,
  crontabLine,
  defaultContext,
  type DeployPlatform,
  deriveEventSecret,
  derivePurgeKey,
  envFileText,
  formatDuration,
  generateSigningKey,
  largeObjectsWhere,
  loadWorkerModule,
  parseCommandLine,
  parseConfig,
  parseDuration,
  pingRequest,
  prepareWorker,
  purge,
  refreshIfDue,
  run,
  runtimeProblem,
  scheduleGap,
  scheduleRefresh,
  send,
  type Setting,
  type Settings,
  signLink,
  startOnDeploy,
  status,
  type Variable,
  VARIABLES,
  VERSION,
  type WorkerMetadata,
  zoneCandidates,
} from "./main.ts";
import { startLocalWorker } from "./local/workerd.ts";
import { type FakeB2, type FakeB2Options, type FakeKey, startFakeB2 } from "./local/fake_b2.ts";
import workerModule, {
  type Env,
  type ExecutionContext,
  objectTag,
  type PurgeOptions,
} from "./worker_template.ts";
import {
  FAKE_ACCOUNT_ID,
  FAKE_ZONE_ID,
  type FakeCloudflare,
  type FakeCloudflareOptions,
  startFakeCloudflare,
} from "./local/fake_cloudflare.ts";
import { type FakeMonitor, startFakeMonitor } from "./local/fake_monitor.ts";
import { childEnv } from "./testing/child_env.ts";
import { startUntil, whileServing } from "./testing/serving.ts";

const B2_KEY = "fake-application-key";
const CF_TOKEN = "fake-cf-token";
const CF_GLOBAL_KEY = "fake-global-key";

/** The listing key's secret half: no output may show it. */
const LISTING_KEY = "K005listingkeysecret0000000000";

/** Every secret any fake handed out or was configured with. */
const secretsSeen = new Set<string>([
  B2_KEY,
  CF_TOKEN,
  CF_GLOBAL_KEY,
  // The authorize call's Basic credentials: the key, encoded.
  btoa(`fake-key-id:${B2_KEY}`),
  // The Event Notification signing secret refresh derives from the key.
  (await deriveEventSecret(B2_KEY)).secret,
  LISTING_KEY,
  btoa(`listing-key-id:${LISTING_KEY}`),
]);
/** What a stand-in's tokens look like, for those made in a subprocess (the demo's). */
const FAKE_TOKEN = /fake-(download|account)-[0-9a-f]{8}-/;

/** Fails when any of `texts` (what a run printed) holds a secret or a stand-in's token. */
function assertNoSecret(...texts: string[]): void {
  for (const text of texts) {
    assert.doesNotMatch(text, FAKE_TOKEN);
    for (const secret of secretsSeen) {
      assert.ok(!text.includes(secret), `a secret appeared in output: ${text.slice(0, 200)}`);
    }
  }
}

interface World {
  b2: FakeB2;
  cloudflare: FakeCloudflare;
  env: Record<string, string>;
  sleeps: number[];
  /** Runs main.ts's `run()` in-process against the fakes. */
  run(args: string[], overrides?: {
    env?: Record<string, string>;
    dotenv?: string;
    ctx?: Partial<Context>;
  }): Promise<{ code: number; stdout: string; stderr: string }>;
  close(): Promise<void>;
}

const PHOTO = {
  name: "site/cat.jpg",
  body: "pretend this is a cat",
  contentType: "image/jpeg",
};

function world(
  options: { b2?: FakeB2Options; cloudflare?: FakeCloudflareOptions } = {},
): World {
  const b2 = startFakeB2({
    buckets: [
      { id: "bucket-photos", name: "photos", files: [PHOTO] },
      { id: "bucket-other", name: "other", files: [] },
    ],
    ...options.b2,
  });
  const cloudflare = startFakeCloudflare(options.cloudflare);
  const env = {
    B2_APPLICATION_KEY_ID: "fake-key-id",
    B2_APPLICATION_KEY: B2_KEY,
    B2_BUCKET_NAME: "photos",
    B2_FILE_PREFIX: "site/",
    B2_API_URL: b2.url,
    CLOUDFLARE_ACCOUNT_ID: "acc00000000000000000000000000001",
    CLOUDFLARE_API_TOKEN: CF_TOKEN,
    CLOUDFLARE_API_BASE_URL: cloudflare.url,
  };
  const sleeps: number[] = [];
  return {
    b2,
    cloudflare,
    env,
    sleeps,
    async run(args, overrides = {}) {
      const stdout: string[] = [];
      const stderr: string[] = [];
      const code = await run({
        args,
        env: { ...env, ...overrides.env },
        readEnvFile: () => Promise.resolve(overrides.dotenv),
        io: { stdout: (t) => stdout.push(t), stderr: (t) => stderr.push(t) },
        ctx: {
          sleep: (ms) => (sleeps.push(ms), Promise.resolve()),
          random: () => 0.5,
          timeoutMs: 2_000,
          ...overrides.ctx,
        },
      });
      for (const token of b2.downloadTokens.keys()) secretsSeen.add(token);
      for (const token of b2.accountTokens) secretsSeen.add(token);
      assertNoSecret(...stdout, ...stderr);
      return { code, stdout: stdout.join("\n"), stderr: stderr.join("\n") };
    },
    async close() {
      await Promise.all([b2.close(), cloudflare.close()]);
    },
  };
}

/** Metadata as main.ts builds it or as the fake Cloudflare stored it. */
type LooseMetadata = { bindings: { name: string; text?: string }[] };

function secretOf(metadata: LooseMetadata, name: string): string | undefined {
  return metadata.bindings.find((b) => b.name === name)?.text;
}

function bindingTexts(
  metadata: LooseMetadata,
): Record<string, string | undefined> {
  return Object.fromEntries(metadata.bindings.map((b) => [b.name, b.text]));
}

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

Deno.test("parseConfig() reports every problem at once, naming what to set", async (t) => {
  const cases: {
    name: string;
    settings: Record<string, string>;
    expect: RegExp[];
  }[] = [
    {
      name: "nothing set",
      settings: {},
      expect: [
        /Set B2_APPLICATION_KEY_ID/,
        /Set B2_APPLICATION_KEY to/,
        /Set B2_BUCKET_NAME \(or B2_BUCKET_ID\)/,
        /Set CLOUDFLARE_API_TOKEN/,
      ],
    },
    {
      name: "bad values",
      settings: {
        B2_TOKEN_TTL: "604801",
        WORKER_URL_STYLE: "s3",
        WORKER_CACHE_TTL: "-1",
        WORKER_NAME: "My Worker",
        WORKER_CORS_ORIGINS: "https://a.example/path",
        B2_API_URL: "ftp://x",
        REFRESH_MARGIN: "soon",
      },
      expect: [
        /B2_TOKEN_TTL must be a duration from 1s to 7d, written 90s, 15m, 12h, 7d or plain seconds, not "604801"/,
        /WORKER_URL_STYLE must be "plain" or "b2", not "s3"/,
        /WORKER_CACHE_TTL must be a duration from 0s to 365d, written 90s, 15m, 12h, 7d or plain seconds, not "-1"/,
        /WORKER_NAME must be 1-63 lowercase/,
        /WORKER_CORS_ORIGINS must be "\*" or origins/,
        /B2_API_URL must be an http\(s\) URL/,
        /REFRESH_MARGIN must be a duration/,
      ],
    },
    {
      name: "half a legacy key",
      settings: { CLOUDFLARE_EMAIL: "me@example.com" },
      expect: [/Set CLOUDFLARE_API_KEY too/],
    },
    {
      name: "ids that are no ids, a bucket name B2 refuses",
      settings: {
        CLOUDFLARE_ACCOUNT_ID: "my-account",
        CLOUDFLARE_ZONE_ID: "abc",
        B2_BUCKET_NAME: "My_Bucket!",
        WORKER_DOMAIN: "cdn example",
      },
      expect: [
        /CLOUDFLARE_ACCOUNT_ID must be the account id, 32 hexadecimal characters .*not "my-account"; or leave it out/,
        /CLOUDFLARE_ZONE_ID must be the zone id, 32 hexadecimal characters .*not "abc"/,
        /B2_BUCKET_NAME "My_Bucket!" is no name B2 allows \("_", "!" are not allowed\): a bucket name has 6 to 63 letters, digits and "-"/,
        /WORKER_DOMAIN must be a host/,
      ],
    },
  ];
  for (const { name, settings, expect } of cases) {
    await t.step(name, () => {
      assert.throws(
        () => parseConfig(settings, { b2: true, cloudflare: true }),
        (error: Error) => {
          for (const pattern of expect) assert.match(error.message, pattern);
          return error.name === "ConfigError";
        },
      );
    });
  }
});

Deno.test("parseConfig() takes every time setting as 90s, 15m, 12h, 7d or plain seconds", async (t) => {
  const base = {
    B2_APPLICATION_KEY_ID: "id",
    B2_APPLICATION_KEY: "key",
    B2_BUCKET_ID: "b1",
    WORKER_LISTING: "on",
    B2_LISTING_KEY_ID: "lid",
    B2_LISTING_KEY: "lkey",
  };
  const times = (Object.entries(VARIABLES) as [Variable, Setting][])
    .filter(([, setting]) => setting.kind === "duration").map(([name]) => name);
  assert.deepEqual(times.sort(), [
    "B2_TOKEN_TTL",
    "REFRESH_MARGIN",
    "WORKER_CACHE_TTL",
    "WORKER_LISTING_TTL",
    "WORKER_SIGNED_MAX_TTL",
    "WORKER_STALE_IF_ERROR",
    "WORKER_STALE_WHILE_REVALIDATE",
  ]);
  const read = (config: Config): Record<string, number | undefined> => ({
    B2_TOKEN_TTL: config.b2?.tokenTtl,
    REFRESH_MARGIN: config.refreshMargin,
    WORKER_CACHE_TTL: config.worker.cacheTtl,
    WORKER_LISTING_TTL: config.worker.listing?.ttl,
    WORKER_SIGNED_MAX_TTL: config.worker.signing?.maxTtl,
    WORKER_STALE_IF_ERROR: config.worker.staleIfError,
    WORKER_STALE_WHILE_REVALIDATE: config.worker.staleWhileRevalidate,
  });
  for (const name of times) {
    const forms = [["90s", 90], ["15m", 900], ["12h", 43_200], ["7d", 604_800]] as const;
    for (const [text, seconds] of forms) {
      if (seconds > ((VARIABLES[name] as Setting).max ?? Infinity)) continue;
      await t.step(`${name}=${text}`, () => {
        const config = parseConfig({ ...base, [name]: text }, { b2: true });
        assert.equal(read(config)[name], seconds);
      });
    }
    await t.step(`${name}=3600 (plain seconds)`, () => {
      assert.equal(read(parseConfig({ ...base, [name]: "3600" }, { b2: true }))[name], 3600);
    });
    await t.step(`${name}=1w is refused with the syntax`, () => {
      assert.throws(
        () => parseConfig({ ...base, [name]: "1w" }, { b2: true }),
        new RegExp(`${name} must be a duration .*, written 90s, 15m, 12h, 7d or plain seconds`),
      );
    });
  }
  await t.step("B2_TOKEN_TTL=8d is refused with its bounds", () => {
    assert.throws(
      () => parseConfig({ ...base, B2_TOKEN_TTL: "8d" }, { b2: true }),
      /B2_TOKEN_TTL must be a duration from 1s to 7d, written 90s, 15m, 12h, 7d or plain seconds, not "8d"/,
    );
  });
});

Deno.test("parseConfig() refuses a WORKER_SEGMENT_SIZE that is not 0 or 1 to 64 MiB in 64 KiB steps", async (t) => {
  const base = { B2_APPLICATION_KEY_ID: "id", B2_APPLICATION_KEY: "key", B2_BUCKET_ID: "b1" };
  for (const good of ["0", "1048576", "8388608", "67108864", "1114112"]) {
    await t.step(`${good} is taken`, () => {
      const config = parseConfig({ ...base, WORKER_SEGMENT_SIZE: good });
      assert.equal(config.worker.segmentSize, Number(good));
    });
  }
  for (const bad of ["1048575", "65536", "67174400", "8388609", "-1", "8M", "1e7"]) {
    await t.step(`${bad} is refused, naming the setting`, () => {
      assert.throws(
        () => parseConfig({ ...base, WORKER_SEGMENT_SIZE: bad }),
        (error: ConfigError) => /WORKER_SEGMENT_SIZE must be /.test(error.message),
      );
    });
  }
});

Deno.test("parseConfig() applies the documented defaults", () => {
  const config = parseConfig({
    B2_APPLICATION_KEY_ID: "id",
    B2_APPLICATION_KEY: "key",
    B2_BUCKET_ID: "b1",
    CLOUDFLARE_ACCOUNT_ID: "ACC00000000000000000000000000001",
    CLOUDFLARE_EMAIL: "me@example.com",
    CLOUDFLARE_API_KEY: "global",
  }, { b2: true, cloudflare: true });
  assert.deepEqual(config, {
    b2: {
      keyId: "id",
      applicationKey: "key",
      apiUrl: "https://api.backblazeb2.com",
      bucketId: "b1",
      prefix: "",
      tokenTtl: 604800,
    },
    cloudflare: {
      // Ids are read in lower case, as Cloudflare writes them.
      accountId: "acc00000000000000000000000000001",
      auth: { email: "me@example.com", key: "global" },
      apiBaseUrl: "https://api.cloudflare.com/client/v4",
      workerName: "b2-private-cdn",
      workersDev: true,
    },
    worker: {
      urlStyle: "plain",
      indexFile: "index.html",
      cacheTtl: 86400,
      cacheControl: "",
      corsOrigins: "",
      activeContent: "serve",
      cacheMode: "workers-cache",
      staleWhileRevalidate: 86400,
      staleIfError: 604800,
      segmentSize: 8388608,
    },
    workerName: "b2-private-cdn",
    refreshSchedule: "17 4 * * *",
    refreshMargin: 518400,
    purgeSecret: { from: "B2_APPLICATION_KEY", value: "key" },
  });
});

Deno.test("parseDuration() and formatDuration() read and write spans", () => {
  assert.deepEqual(
    ["90", "90s", "30m", "48h", "6d", "2 h", "1w", "-1h", ""].map(
      parseDuration,
    ),
    [90, 90, 1800, 172800, 518400, 7200, undefined, undefined, undefined],
  );
  assert.deepEqual(
    [0, 59, 3600, 93784, 518400 + 7200 + 59, -86401].map(formatDuration),
    ["0s", "59s", "1h 0m", "1d 2h", "6d 2h", "-1d 0h"],
  );
});

Deno.test("run() takes flags over the environment over .env", async () => {
  const w = world();
  try {
    const dotenv = "WORKER_NAME=from-dotenv\nB2_TOKEN_TTL=100\nWORKER_CACHE_TTL=5\n";
    const { code } = await w.run(["refresh", "--worker-name", "from-flag"], {
      env: { WORKER_NAME: "from-env", B2_TOKEN_TTL: "200" },
      dotenv,
    });
    assert.equal(code, 0);
    const script = w.cloudflare.scripts.get("from-flag");
    assert.ok(script, "the flag's worker name wins");
    const bindings = bindingTexts(script.metadata);
    assert.equal(
      bindings.WORKER_CACHE_TTL,
      "5",
      ".env fills what nothing else sets",
    );
    const issued = Date.parse(bindings.B2_TOKEN_ISSUED_AT!);
    assert.equal(
      Date.parse(bindings.B2_TOKEN_EXPIRES_AT!) - issued,
      200_000,
      "env beats .env",
    );
  } finally {
    await w.close();
  }
});

Deno.test("run() answers dev and demo with where they run, asking nothing of B2", async (t) => {
  const w = world();
  try {
    for (const command of ["dev", "demo"]) {
      await t.step(command, async () => {
        const { code, stderr } = await w.run([command]);
        assert.equal(code, 2);
        assert.match(
          stderr,
          new RegExp(`deno task ${command} \\(deno run -A local/${command}\\.ts\\)`),
        );
      });
    }
    assert.equal(w.b2.requests.length, 0);
  } finally {
    await w.close();
  }
});

/** Runs `run()` with no settings at all, as help must work before any is set. */
async function runBare(args: string[]) {
  const stdout: string[] = [];
  const stderr: string[] = [];
  const code = await run({
    args,
    env: {},
    readEnvFile: () => Promise.resolve(undefined),
    io: { stdout: (t) => stdout.push(t), stderr: (t) => stderr.push(t) },
  });
  return { code, stdout: stdout.join("\n"), stderr: stderr.join("\n") };
}

Deno.test("run() prints a command's own page for <command> --help and help <command>", async (t) => {
  // Each command's own flags, as parseCommandLine() accepts them.
  const own: Record<string, string[]> = {
    refresh: ["--dry-run", "--verify", "--take-over", "--remove-leftovers", "--json"],
    status: ["--min-remaining", "--json"],
    render: ["--module", "--out", "--json"],
    purge: ["--prefix", "--all", "--url", "--json"],
    cron: ["--verify"],
    dev: ["--port"],
    demo: ["--port"],
    sign: ["--expires", "--not-before", "--download-name", "--prefix", "--url", "--json"],
    keygen: ["--json"],
    "check-cache": ["--url", "--large-url", "--json"],
  };
  for (const [command, flags] of Object.entries(own)) {
    await t.step(command, async () => {
      const flag = await runBare([command, "--help"]);
      const topic = await runBare(["help", command]);
      assert.deepEqual([flag.code, flag.stderr], [0, ""]);
      assert.deepEqual(topic, flag);
      const page = flag.stdout;
      assert.match(page, new RegExp(`^Usage: deno (run (.* )?main\\.ts|task) ${command} `));
      for (const name of flags) assert.match(page, new RegExp(`^  ${name}\\b`, "m"), name);
      assert.match(page, /\nExample:\n {2}\S.*\n\nExit codes: \d/);
      // Only its own flags: none of the commands it does not take.
      const others = Object.values(own).flat().filter((name) => !flags.includes(name));
      for (const name of others) assert.doesNotMatch(page, new RegExp(`^  ${name}\\b`, "m"));
    });
  }
  await t.step("each page says what the command does now", async () => {
    const refresh = (await runBare(["help", "refresh"])).stdout;
    assert.match(refresh, /--dry-run +do the B2 steps, ask Cloudflare read-only/);
    const init = (await runBare(["help", "init"])).stdout;
    assert.match(init, /^ {2}--env-file <path> +write the settings to this file instead of/m);
    assert.doesNotMatch(init, /read settings from/);
    const usage = (await runBare(["--help"])).stdout;
    assert.match(usage, /^ {2}render +say what refresh would upload/m);
  });
  await t.step("a flag it does not take still gets the page, not the flag's error", async () => {
    const { code, stdout } = await runBare(["purge", "--help", "--port", "1"]);
    assert.equal(code, 0);
    assert.match(stdout, /^Usage: .* main\.ts purge /);
  });
});

Deno.test("run() keeps --help short and points at each command's page and the settings", async (t) => {
  for (const args of [["--help"], ["-h"], ["help"]]) {
    await t.step(args.join(" "), async () => {
      const { code, stdout } = await runBare(args);
      assert.equal(code, 0);
      assert.ok(stdout.split("\n").length <= 30, `${stdout.split("\n").length} lines`);
      assert.match(stdout, /main\.ts help <command> \(or <command> --help\)/);
      assert.match(stdout, /main\.ts help settings/);
      assert.doesNotMatch(stdout, /B2_APPLICATION_KEY_ID/);
    });
  }
  await t.step("help settings lists every setting", async () => {
    const { code, stdout } = await runBare(["help", "settings"]);
    assert.equal(code, 0);
    for (const name of ["B2_APPLICATION_KEY_ID", "CLOUDFLARE_ZONE_ID", "REFRESH_MARGIN"]) {
      assert.match(stdout, new RegExp(`^ {2}[ *]${name} `, "m"));
    }
  });
  await t.step("help of something unknown is a usage error", async () => {
    const { code, stderr } = await runBare(["help", "deploy"]);
    assert.equal(code, 2);
    assert.match(stderr, /^error: No help for "deploy"\. Commands: init, refresh, status/);
    const near = await runBare(["help", "setings"]);
    assert.equal(near.code, 2);
    assert.match(near.stderr, /^error: No help for "setings": did you mean settings\? Commands: /);
  });
});

Deno.test("run() takes only the names the command table owns, not an object's own", async (t) => {
  for (const name of ["constructor", "toString", "__proto__", "hasOwnProperty"]) {
    await t.step(name, async () => {
      const command = await runBare([name]);
      assert.deepEqual([command.code, command.stdout], [2, ""]);
      assert.equal(
        command.stderr,
        `error: Unknown command "${name}". Commands: init, refresh, status, render, purge, cron, ` +
          "dev, demo, sign, keygen, check-cache.",
      );
      const help = await runBare(["help", name]);
      assert.equal(help.code, 2);
      assert.match(
        help.stderr,
        new RegExp(`^error: No help for "${name}"\\. Commands: init, refresh`),
      );
    });
  }
});

Deno.test("run() exits 2 on bad usage, naming the fix", async (t) => {
  const w = world();
  try {
    for (
      const [args, pattern] of [
        [["deploy"], /Unknown command "deploy"/],
        [["refrsh"], /^error: Unknown command "refrsh": did you mean refresh\? Commands: init, /],
        [
          ["refresh", "--verify"],
          /^error: Option '--verify <value>' argument missing\. See --help/,
        ],
        [["stauts"], /Unknown command "stauts": did you mean status\?/],
        [["refresh", "--bogus"], /Unknown flag --bogus\. See --help/],
        [
          ["refresh", "--b2-application-key", "x"],
          /B2_APPLICATION_KEY has no flag: it is a credential/,
        ],
        [
          ["refresh", "--b2-token-ttl", "0"],
          /B2_TOKEN_TTL must be a duration from 1s to 7d/,
        ],
      ] as const
    ) {
      await t.step(args.join(" "), async () => {
        const { code, stderr } = await w.run([...args]);
        assert.equal(code, 2);
        assert.match(stderr, pattern);
      });
    }
    assert.equal(w.b2.requests.length, 0, "nothing was asked of B2");
  } finally {
    await w.close();
  }
});

// ---------------------------------------------------------------------------
// refresh
// ---------------------------------------------------------------------------

Deno.test("refresh uploads the worker with the token only as a secret binding", async () => {
  const w = world();
  try {
    const { code, stdout, stderr } = await w.run(["refresh"]);
    assert.equal(stderr, "");
    assert.equal(code, 0);
    assert.match(
      stdout,
      /^Deployed worker "b2-private-cdn" for bucket "photos" \(prefix "site\/"\); token expires \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ; workers.dev https:\/\/b2-private-cdn.fake-subdomain.workers.dev\/; edge cache workers-cache$/,
    );

    const [authorize, list, downloadAuth, ...more] = w.b2.requests;
    assert.equal(more.length, 0);
    assert.equal(authorize?.path, "/b2api/v4/b2_authorize_account");
    assert.equal(
      authorize?.headers.get("authorization"),
      "Basic " + btoa(`fake-key-id:${B2_KEY}`),
    );
    assert.equal(downloadAuth?.path, "/b2api/v4/b2_get_download_authorization");
    assert.deepEqual(JSON.parse(downloadAuth?.body ?? ""), {
      bucketId: "bucket-photos",
      fileNamePrefix: "site/",
      validDurationInSeconds: 604800,
    });
    assert.deepEqual(JSON.parse(list?.body ?? ""), {
      accountId: "fake-account",
      bucketName: "photos",
      bucketTypes: ["all"],
    });

    const script = w.cloudflare.scripts.get("b2-private-cdn");
    assert.ok(script);
    const [token] = w.b2.downloadTokens.keys();
    assert.ok(token);
    const { B2_TOKEN_ISSUED_AT, B2_TOKEN_EXPIRES_AT, WORKER_FINGERPRINT, ...bindings } =
      bindingTexts(script.metadata);
    assert.match(WORKER_FINGERPRINT!, /^\d+-[0-9a-f]{16}$/);
    assert.deepEqual(bindings, {
      B2_DOWNLOAD_TOKEN: token,
      B2_DOWNLOAD_URL: w.b2.url,
      B2_BUCKET_NAME: "photos",
      B2_FILE_PREFIX: "site/",
      WORKER_URL_STYLE: "plain",
      WORKER_INDEX_FILE: "index.html",
      WORKER_CACHE_TTL: "86400",
      WORKER_CACHE_CONTROL: "",
      WORKER_CORS_ORIGINS: "",
      WORKER_ACTIVE_CONTENT: "serve",
      WORKER_CACHE_MODE: "workers-cache",
      WORKER_STALE_WHILE_REVALIDATE: "86400",
      WORKER_STALE_IF_ERROR: "604800",
      WORKER_SEGMENT_SIZE: "8388608",
      WORKER_PURGE_KEY: await derivePurgeKey(B2_KEY),
    });
    assert.deepEqual(script.metadata.cache_options, { enabled: true, cross_version_cache: true });
    assert.equal(
      Date.parse(B2_TOKEN_EXPIRES_AT!) - Date.parse(B2_TOKEN_ISSUED_AT!),
      604_800_000,
    );
    const secret = ["B2_DOWNLOAD_TOKEN", "WORKER_PURGE_KEY"];
    for (const binding of script.metadata.bindings) {
      assert.equal(
        binding.type,
        secret.includes(binding.name) ? "secret_text" : "plain_text",
        binding.name,
      );
    }
    assert.equal(script.moduleContentType, "application/javascript+module");
    assert.ok(!script.module.includes(token), "the token is not in the source");
    assert.match(script.module, /export default/);
    assert.doesNotMatch(
      script.module,
      /\binterface Env\b/,
      "types are stripped",
    );
    const upload = w.cloudflare.requests.find((r) => r.method === "PUT");
    assert.equal(upload?.headers.get("authorization"), `Bearer ${CF_TOKEN}`);
  } finally {
    await w.close();
  }
});

Deno.test("refresh uses the legacy global key when no API token is set", async () => {
  const w = world();
  try {
    const { code } = await w.run(["refresh"], {
      env: {
        CLOUDFLARE_API_TOKEN: "",
        CLOUDFLARE_EMAIL: "admin@example.com",
        CLOUDFLARE_API_KEY: CF_GLOBAL_KEY,
      },
    });
    assert.equal(code, 0);
    const upload = w.cloudflare.requests.find((r) => r.method === "PUT");
    assert.equal(upload?.headers.get("x-auth-email"), "admin@example.com");
    assert.equal(upload?.headers.get("x-auth-key"), CF_GLOBAL_KEY);
    assert.equal(upload?.headers.get("authorization"), null);
  } finally {
    await w.close();
  }
});

Deno.test("refresh resolves the bucket in as few round trips as the key allows", async (t) => {
  const cases: {
    name: string;
    env: Record<string, string>;
    b2: FakeB2Options;
    /** B2's calls, the upload, then workers.dev: the account's subdomain and the switch. */
    trips: number;
    listed: boolean;
  }[] = [
    {
      name: "name only, unrestricted key",
      env: {},
      b2: {},
      trips: 6,
      listed: true,
    },
    {
      name: "id only, unrestricted key",
      env: { B2_BUCKET_NAME: "", B2_BUCKET_ID: "bucket-photos" },
      b2: {},
      trips: 6,
      listed: true,
    },
    {
      // The pair is checked alongside the token request: a request more, no round trip more.
      name: "both given, unrestricted key",
      env: { B2_BUCKET_ID: "bucket-photos" },
      b2: {},
      trips: 5,
      listed: true,
    },
    {
      name: "both given, key restricted to the bucket",
      env: { B2_BUCKET_ID: "bucket-photos" },
      b2: { restrictToBucket: "photos" },
      trips: 5,
      listed: false,
    },
    {
      name: "id only, key restricted to the bucket",
      env: { B2_BUCKET_NAME: "", B2_BUCKET_ID: "bucket-photos" },
      b2: { restrictToBucket: "photos" },
      trips: 5,
      listed: false,
    },
  ];
  for (const c of cases) {
    await t.step(c.name, async () => {
      const w = world({ b2: c.b2 });
      try {
        const { code, stdout } = await w.run(["refresh", "--json"], {
          env: c.env,
        });
        assert.equal(code, 0);
        const result = JSON.parse(stdout);
        assert.equal(result.roundTrips, c.trips);
        assert.equal(result.bucket, "photos");
        const listed = w.b2.requests.some((r) => r.path.endsWith("b2_list_buckets"));
        assert.equal(listed, c.listed);
        if (listed) {
          const list = w.b2.requests.find((r) => r.path.endsWith("b2_list_buckets"))!;
          assert.equal(JSON.parse(list.body).accountId, "fake-account");
        }
      } finally {
        await w.close();
      }
    });
  }
});

Deno.test("refresh refuses a bucket name and id of two buckets, and uploads nothing", async () => {
  const w = world();
  try {
    const { code, stderr } = await w.run(["refresh"], { env: { B2_BUCKET_ID: "bucket-other" } });
    assert.equal(code, 2);
    assert.match(
      stderr,
      /^error: B2_BUCKET_ID "bucket-other" is bucket "other", not B2_BUCKET_NAME "photos": set the two of one bucket, or only one of them\.$/,
    );
    assert.equal(w.cloudflare.scripts.size, 0);
  } finally {
    await w.close();
  }
});

Deno.test("refresh --json prints one object with the facts", async () => {
  const w = world();
  try {
    const { code, stdout } = await w.run(["refresh", "--json"]);
    assert.equal(code, 0);
    const { expiresAt, ...rest } = JSON.parse(stdout);
    assert.match(expiresAt, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
    assert.deepEqual(rest, {
      worker: "b2-private-cdn",
      bucket: "photos",
      prefix: "site/",
      deployed: true,
      workersDev: "https://b2-private-cdn.fake-subdomain.workers.dev/",
      roundTrips: 6,
      cacheMode: "workers-cache",
      segmentSize: 8388608,
    });
  } finally {
    await w.close();
  }
});

Deno.test("refresh --dry-run asks B2 but uploads nothing", async () => {
  const w = world();
  try {
    const { code, stdout } = await w.run(["refresh", "--dry-run"]);
    assert.equal(code, 0);
    assert.match(stdout, /^Would deploy worker "b2-private-cdn"/);
    assert.match(stdout, /^ {2}B2_DOWNLOAD_TOKEN +\(secret, not shown\)$/m);
    assert.match(stdout, /^The upload would be worker\.js, [\d,]+ bytes, with \d+ bindings/m);
    assert.doesNotMatch(stdout, /^\s*[{}"]/m, "sentences, not JSON");
    assert.deepEqual(w.cloudflare.requests.filter((r) => r.method !== "GET"), []);
    assert.equal(w.b2.downloadTokens.size, 1);
  } finally {
    await w.close();
  }
});

Deno.test("refresh checks what the key allows before asking for a token", async (t) => {
  const cases: {
    name: string;
    b2: FakeB2Options;
    env?: Record<string, string>;
    expect: RegExp;
  }[] = [
    {
      name: "no shareFiles",
      b2: { capabilities: ["listBuckets", "readFiles"] },
      expect:
        /lacks the shareFiles capability.*it has: listBuckets, readFiles.*b2 key create --bucket photos --name-prefix site\//,
    },
    {
      name: "restricted to another bucket",
      b2: { restrictToBucket: "other" },
      expect: /restricted to bucket "other", not "photos"/,
    },
    {
      name: "name prefix outside the key's",
      b2: { namePrefix: "private/" },
      expect: /only reaches names starting with "private\/", but B2_FILE_PREFIX is "site\/"/,
    },
    {
      name: "no listBuckets and only a name",
      b2: { capabilities: ["readFiles", "shareFiles"] },
      expect: /lacks listBuckets.*Set B2_BUCKET_ID as well/,
    },
    {
      name: "no such bucket",
      b2: {},
      env: { B2_BUCKET_NAME: "nope-not-here" },
      expect: /No bucket named "nope-not-here" in this B2 account\. Check B2_BUCKET_NAME/,
    },
  ];
  for (const c of cases) {
    await t.step(c.name, async () => {
      const w = world({ b2: c.b2 });
      try {
        const { code, stderr } = await w.run(["refresh"], { env: c.env });
        assert.equal(code, 2);
        assert.match(stderr, c.expect);
        assert.equal(w.b2.downloadTokens.size, 0, "no token was asked for");
        // The deployed settings are read alongside B2's authorize; nothing is written.
        assert.deepEqual(
          w.cloudflare.requests.map((r) => r.method).filter((m) => m !== "GET"),
          [],
          "nothing was written to Cloudflare",
        );
      } finally {
        await w.close();
      }
    });
  }
});

Deno.test("refresh retries what is worth retrying and fails clearly on the rest", async (t) => {
  const authorize = "/b2api/v4/b2_authorize_account";
  const downloadAuth = "/b2api/v4/b2_get_download_authorization";
  const script = "/accounts/acc00000000000000000000000000001/workers/scripts/";
  const cases: {
    name: string;
    b2?: [string, Parameters<FakeB2["fail"]>[1]];
    cloudflare?: [string, Parameters<FakeCloudflare["fail"]>[1]];
    code: number;
    stderr: RegExp;
    sleeps?: (sleeps: number[]) => void;
  }[] = [
    {
      name: "B2 503 twice, then fine",
      b2: [authorize, { status: 503, times: 2 }],
      code: 0,
      stderr: /^$/,
      sleeps: (s) => assert.deepEqual(s, [375, 750]),
    },
    {
      name: "B2 429 with Retry-After",
      b2: [downloadAuth, {
        status: 429,
        code: "too_many_requests",
        retryAfter: 7,
      }],
      code: 0,
      stderr: /^$/,
      sleeps: (s) => assert.deepEqual(s, [7000]),
    },
    {
      name: "B2 503 every time",
      b2: [authorize, { status: 503, times: 99 }],
      code: 1,
      stderr:
        /Cannot authorize the B2 application key: B2 answered 503 service_unavailable.*run again later/,
      sleeps: (s) => assert.equal(s.length, 4),
    },
    {
      name: "B2 refuses the key",
      b2: [authorize, {
        status: 401,
        code: "unauthorized",
        message: "invalid key",
      }],
      code: 1,
      stderr:
        /B2 answered 401 unauthorized: invalid key\. Fix: check B2_APPLICATION_KEY_ID and B2_APPLICATION_KEY\./,
      sleeps: (s) => assert.deepEqual(s, []),
    },
    {
      name: "B2 hangs",
      b2: [downloadAuth, { status: 200, hang: true, times: 99 }],
      code: 1,
      stderr:
        /Cannot get a download authorization for bucket "photos": B2 timed out after 0.2 s \(5 attempts\)\. Check the network and B2_API_URL/,
    },
    {
      name: "Cloudflare refuses the token",
      cloudflare: [script, {
        status: 403,
        code: 10000,
        message: "Authentication error",
      }],
      code: 1,
      stderr:
        /Cannot read the settings of worker "b2-private-cdn": Cloudflare answered 403 error 10000: Authentication error\. Fix: check CLOUDFLARE_API_TOKEN: it needs "Workers Scripts: Edit"/,
    },
    {
      name: "Cloudflare rate limits for five minutes",
      cloudflare: [script, {
        status: 429,
        code: 971,
        message: "Please wait",
        retryAfter: 300,
      }],
      code: 1,
      stderr: /Cloudflare answered 429 error 971: Please wait\. Fix: Cloudflare is rate limiting/,
      sleeps: (s) => assert.deepEqual(s, []),
    },
    {
      name: "Cloudflare 502 once",
      cloudflare: [script, { status: 502, code: 1, message: "bad gateway" }],
      code: 0,
      stderr: /^$/,
    },
  ];
  for (const c of cases) {
    await t.step(c.name, async () => {
      const w = world();
      try {
        if (c.b2) w.b2.fail(...c.b2);
        if (c.cloudflare) w.cloudflare.fail(...c.cloudflare);
        const { code, stderr } = await w.run(["refresh"], {
          ctx: { timeoutMs: 200 },
        });
        assert.match(stderr, c.stderr);
        assert.equal(code, c.code);
        assert.equal(w.cloudflare.scripts.has("b2-private-cdn"), c.code === 0);
        c.sleeps?.(w.sleeps);
      } finally {
        await w.close();
      }
    });
  }
});

Deno.test("refresh never replaces a working worker when B2 fails", async () => {
  const w = world();
  try {
    assert.equal((await w.run(["refresh"])).code, 0);
    const before = w.cloudflare.scripts.get("b2-private-cdn");
    w.b2.fail("/b2api/v4/b2_get_download_authorization", {
      status: 401,
      code: "unauthorized",
    });
    const { code, stderr } = await w.run(["refresh"]);
    assert.equal(code, 1);
    assert.match(
      stderr,
      /Cannot get a download authorization for bucket "photos": B2 answered 401/,
    );
    assert.equal(w.cloudflare.scripts.get("b2-private-cdn"), before);
    assert.equal(w.cloudflare.scripts.get("b2-private-cdn")?.uploads, 1);
  } finally {
    await w.close();
  }
});

Deno.test("refresh --verbose names each step and no secret", async () => {
  const w = world();
  try {
    const { code, stderr } = await w.run(["refresh", "--verbose"]);
    assert.equal(code, 0);
    assert.match(stderr, /B2: authorizing key fake\.\.\. at /);
    assert.match(
      stderr,
      /B2: bucket "photos" is bucket-photos \(b2_list_buckets\)/,
    );
    assert.match(stderr, /B2: download token for "site\/" valid 7d/);
    assert.match(
      stderr,
      /Cloudflare: uploading worker "b2-private-cdn" to account acc00000000000000000000000000001/,
    );
  } finally {
    await w.close();
  }
});

// ---------------------------------------------------------------------------
// Configuration: the table, what each command needs, settings that contradict
// ---------------------------------------------------------------------------

/** Runs `run()` with only `env` (no fake's settings) and no network unless `ctx` gives one. */
async function runOnly(
  args: string[],
  env: Record<string, string>,
  ctx: Partial<Context> = {},
) {
  const stdout: string[] = [];
  const stderr: string[] = [];
  const code = await run({
    args,
    env,
    readEnvFile: () => Promise.resolve(undefined),
    io: { stdout: (t) => stdout.push(t), stderr: (t) => stderr.push(t) },
    ctx: { fetch: () => Promise.reject(new Error("no network in this test")), ...ctx },
  });
  assertNoSecret(...stdout, ...stderr);
  return { code, stdout: stdout.join("\n"), stderr: stderr.join("\n") };
}

const DAY = 86_400;

Deno.test(".env.example names every setting of VARIABLES, only those, with their defaults", async () => {
  const text = await Deno.readTextFile(new URL("./.env.example", import.meta.url));
  const named = new Map<string, string>();
  for (const line of text.split("\n")) {
    const match = /^#?\s*(?:\*\s*)?([A-Z][A-Z0-9_]+)=(.*)$/.exec(line);
    if (match) named.set(match[1]!, match[2]!.trim());
  }
  assert.deepEqual([...named.keys()].sort(), Object.keys(VARIABLES).sort());
  for (const [name, setting] of Object.entries(VARIABLES) as [string, Setting][]) {
    const value = named.get(name)!;
    if (setting.default !== undefined && value !== "") {
      assert.equal(value, setting.default, `${name} in .env.example is not its default`);
    }
  }
});

Deno.test("help settings lists the table: each setting in order, * for credentials, its line and default", async () => {
  const { stdout } = await runBare(["help", "settings"]);
  const listed = [...stdout.matchAll(/^ {2}([ *])([A-Z][A-Z0-9_]+) +(.+)$/gm)]
    .map(([, star, name, about]) => ({ name, credential: star === "*", about }));
  assert.deepEqual(
    listed,
    (Object.entries(VARIABLES) as [string, Setting][]).map(([name, setting]) => ({
      name,
      credential: setting.kind === "secret" || setting.credential === true,
      about: setting.default
        ? `${setting.about} (default ${
          /\s/.test(setting.default) ? JSON.stringify(setting.default) : setting.default
        })`
        : setting.about,
    })),
  );
  assert.deepEqual(
    Object.keys(VARIABLES).filter((name) => VARIABLES[name as Variable].kind === "secret").sort(),
    ["B2_APPLICATION_KEY", "CLOUDFLARE_API_KEY", "CLOUDFLARE_API_TOKEN", "WORKER_PURGE_KEY"]
      .concat(["WORKER_SIGNING_KEY", "WORKER_SIGNING_KEY_PREVIOUS", "B2_LISTING_KEY"]).sort(),
  );
});

Deno.test("every command checks every setting given, even one it does not use", async (t) => {
  for (
    const [command, env, pattern] of [
      [["render"], { CLOUDFLARE_API_BASE_URL: "ftp://x" }, /CLOUDFLARE_API_BASE_URL must be/],
      [["render"], { WORKER_ROUTE: "cdn.example.com/a*b" }, /WORKER_ROUTE may have a \*/],
      [["sign", "/a", "--expires", "1h"], { WORKER_WORKERS_DEV: "yes" }, /WORKER_WORKERS_DEV/],
      [["check-cache", "--url", "https://x.example/"], { B2_API_URL: "nope" }, /B2_API_URL/],
      [["purge", "/a", "--url", "https://x.example"], { WORKER_DOMAIN: "a b" }, /WORKER_DOMAIN/],
    ] as const
  ) {
    await t.step(`${command[0]}: ${Object.keys(env)[0]}`, async () => {
      const { code, stderr } = await runOnly([...command], env);
      assert.equal(code, 2, stderr);
      assert.match(stderr, pattern);
    });
  }
});

Deno.test("purge --url with WORKER_PURGE_KEY needs no Cloudflare setting and no B2 key", async (t) => {
  const p = purgeWorld();
  const purgeKey = "p".repeat(40);
  secretsSeen.add(purgeKey);
  try {
    assert.equal((await p.run(["refresh"], { WORKER_PURGE_KEY: purgeKey })).code, 0);
    const apiCalls = [p.w.cloudflare.requests.length, p.w.b2.requests.length];
    await t.step("only the purge key is set", async () => {
      const { code, stdout, stderr } = await runOnly(
        ["purge", "/hello.txt", "--url", `https://${SITE_HOST}`],
        { WORKER_PURGE_KEY: purgeKey },
        { fetch: p.endpoint.fetch as typeof fetch },
      );
      assert.equal(code, 0, stderr);
      assert.match(stdout, /^Purged 1 path and 0 prefixes from Workers Cache in 1 request/);
      assert.equal(p.endpoint.purges.length, 1);
      assert.deepEqual(
        [p.w.cloudflare.requests.length, p.w.b2.requests.length],
        apiCalls,
        "nothing asked of Cloudflare or B2",
      );
    });
    const sites: Record<string, string>[] = [
      { WORKER_DOMAIN: SITE_HOST },
      { WORKER_ROUTE: `${SITE_HOST}/*` },
    ];
    for (const site of sites) {
      await t.step(`${Object.keys(site)[0]} instead of --url`, async () => {
        const before = p.endpoint.purges.length;
        const { code, stderr } = await runOnly(
          ["purge", "/hello.txt"],
          { WORKER_PURGE_KEY: purgeKey, ...site },
          { fetch: p.endpoint.fetch as typeof fetch },
        );
        assert.equal(code, 0, stderr);
        assert.equal(p.endpoint.purges.length, before + 1);
        assert.deepEqual(
          [p.w.cloudflare.requests.length, p.w.b2.requests.length],
          apiCalls,
          "nothing asked of Cloudflare or B2",
        );
      });
    }
    await t.step("nothing set: every missing setting in one round", async () => {
      const noUrl = await runOnly(["purge", "/hello.txt"], {});
      assert.equal(noUrl.code, 2);
      for (const name of ["CLOUDFLARE_API_TOKEN", "B2_APPLICATION_KEY"]) {
        assert.match(noUrl.stderr, new RegExp(`Set ${name}`));
      }
      assert.match(noUrl.stderr, /pass --url https:\/\/<host>, or set WORKER_DOMAIN/);
      const withUrl = await runOnly(["purge", "/a", "--url", `https://${SITE_HOST}`], {});
      assert.equal(withUrl.code, 2);
      assert.match(withUrl.stderr, /^error: Set B2_APPLICATION_KEY \(or WORKER_PURGE_KEY\)/);
      assert.doesNotMatch(withUrl.stderr, /CLOUDFLARE/);
    });
    await t.step("the cache off: nothing to purge, so no key is asked for", async () => {
      const off = await runOnly(["purge", "/a", "--url", "https://x.example"], {
        WORKER_CACHE_MODE: "off",
      });
      assert.equal(off.code, 0, off.stderr);
    });
  } finally {
    await p.close();
  }
});

Deno.test("WORKER_ROUTE refuses a scheme, a list, a query and an inner *, saying what to write", async (t) => {
  for (
    const [route, pattern] of [
      [
        "https://cdn.example.com/*",
        /must not start with https:\/\/: write "cdn\.example\.com\/\*"\. This is our rule, not Cloudflare's/,
      ],
      ["cdn.example.com/*,img.example.com/*", /one route pattern, not a list/],
      ["cdn.example.com/*, img.example.com/*", /one route pattern, not a list/],
      ["cdn.example.com/?v=*", /cannot hold a query.*End the path with \*/],
      ["cdn.example.com/*.jpg", /a \* only at the start of its host and the end of its path/],
      ["cdn.*.example.com/*", /a \* only at the start of its host/],
      ["cdn.example.com", /must look like cdn\.example\.com\/\*/],
    ] as const
  ) {
    await t.step(route, () => {
      assert.throws(() => parseConfig({ WORKER_ROUTE: route }), (error: ConfigError) => {
        assert.equal(error.problems.length, 1, error.message);
        assert.match(error.message, /^WORKER_ROUTE /);
        assert.match(error.message, pattern);
        return true;
      });
    });
  }
  await t.step("Cloudflare's own shapes are taken", () => {
    for (const route of ["cdn.example.com/*", "*.example.com/*", "*example.com/files/*", "a.b/x"]) {
      assert.equal(parseConfig({ WORKER_ROUTE: route }).worker.urlStyle, "plain", route);
    }
  });
});

Deno.test("scheduleGap() finds the longest time between two runs of a cron expression", () => {
  assert.deepEqual(
    [
      "17 4 * * *",
      "17 * * * *",
      "*/15 * * * *",
      "0 6,18 * * *",
      "0 9 * * 1-5",
      "0 0 1 * *",
      "0 0 * * 0",
      "0 0 29 2 *",
      "17 4 * * MON",
      "61 4 * * *",
      "not a schedule",
    ].map(scheduleGap),
    [DAY, 3600, 900, 12 * 3600, 3 * DAY, 31 * DAY, 7 * DAY, (4 * 365 + 1) * DAY, undefined]
      .concat([undefined, undefined]),
  );
});

Deno.test("B2_TOKEN_TTL shorter than the schedule leaves is refused for cron, warned about elsewhere", async (t) => {
  const w = world();
  try {
    await t.step("cron: refused, with what to set", () => {
      assert.throws(
        () => parseConfig({ ...w.env, B2_TOKEN_TTL: "3600" }, COMMANDS.cron.needs()),
        (error: ConfigError) => {
          assert.deepEqual(error.problems, [
            'B2_TOKEN_TTL is 3600 (1h 0m), but REFRESH_SCHEDULE "17 4 * * *" refreshes every ' +
            "1d 0h at most: each token would expire before the next run and the site fail until " +
            "it; set B2_TOKEN_TTL to at least 259200 (3d 0h; the default 604800 is a week), or " +
            'refresh more often (e.g. REFRESH_SCHEDULE="17 * * * *", hourly with ' +
            "B2_TOKEN_TTL=604800).",
          ]);
          return true;
        },
      );
      const hourly = { ...w.env, B2_TOKEN_TTL: "7200", REFRESH_SCHEDULE: "17 * * * *" };
      assert.equal(parseConfig(hourly, COMMANDS.cron.needs()).b2?.tokenTtl, 7200);
    });
    await t.step("refresh: done, with the same fix as a warning", async () => {
      const { code, stderr } = await w.run(["refresh"], { env: { B2_TOKEN_TTL: "3600" } });
      assert.equal(code, 0, stderr);
      assert.match(
        stderr,
        /^warning: B2_TOKEN_TTL is 3600 .*at least 259200.*set REFRESH_SCHEDULE to that schedule/m,
      );
    });
    await t.step("status: a token short at once is said to be beyond refresh", async () => {
      const { stderr } = await w.run(["status", "--min-remaining", "2h"], {
        env: { B2_TOKEN_TTL: "90000" },
      });
      assert.match(
        stderr,
        /^warning: B2_TOKEN_TTL is 90000 \(1d 1h\).* less than the 2h 0m --min-remaining asks for, and status reports it although refresh cannot fix that; set B2_TOKEN_TTL to at least 93600/m,
      );
    });
    await t.step("the default week on the default schedule says nothing", async () => {
      const { stderr } = await w.run(["status"]);
      assert.doesNotMatch(stderr, /warning/);
    });
    await t.step("Deno Deploy checks against its own hourly schedule", async () => {
      const { platform, registered, lines } = deployPlatform({
        env: { ...w.env, B2_TOKEN_TTL: "3600" },
      });
      startOnDeploy(platform);
      await assert.rejects(
        registered[0]![3](),
        /B2_TOKEN_TTL is 3600 \(1h 0m\), but REFRESH_SCHEDULE "17 \* \* \* \*"/,
      );
      assertNoSecret(...lines);
    });
  } finally {
    await w.close();
  }
});

Deno.test("refreshIfDue() says what it kept when a retry uploaded nothing", async () => {
  const w = world();
  try {
    // An hour-long token is short of the 6-day margin as soon as it is made: the start-up
    // check refreshes, finds the upload minutes old, and keeps it.
    const config = parseConfig({ ...w.env, B2_TOKEN_TTL: "3600" }, { b2: true, cloudflare: true });
    const loadModule = () => Promise.resolve("export default {}");
    await refreshIfDue(config, ctxFor(), { loadModule });
    const again = await refreshIfDue(config, ctxFor(), { loadModule });
    assert.equal(w.cloudflare.scripts.get("b2-private-cdn")?.uploads, 1);
    assert.match(
      again.reason,
      /^less than 6d 0h left; run refresh; Kept: the worker uploaded at \S+Z, its token valid until \S+Z \(nothing uploaded\)$/,
    );
  } finally {
    await w.close();
  }
});

Deno.test("refresh --dry-run asks Cloudflare read-only and prints the plan; nothing is written", async (t) => {
  const writes = (w: World) => w.cloudflare.requests.filter((r) => r.method !== "GET");
  await t.step("a first deploy: what would be created, on a valid token", async () => {
    const w = world();
    try {
      const { code, stdout } = await w.run(["refresh", "--dry-run"]);
      assert.equal(code, 0);
      assert.match(stdout, /Cloudflare, asked read-only \(nothing was written\):/);
      assert.match(stdout, /API token: valid, a user's/);
      assert.match(stdout, /worker "b2-private-cdn" in account acc0+1: would be created/);
      assert.match(
        stdout,
        /workers\.dev: would answer at https:\/\/b2-private-cdn\.fake-subdomain/,
      );
      assert.deepEqual(writes(w), []);
      const json = JSON.parse((await w.run(["refresh", "--dry-run", "--json"])).stdout);
      assert.deepEqual(json.plan.problems, []);
      assert.equal(json.plan.steps.length, 3);
    } finally {
      await w.close();
    }
  });
  await t.step(
    "a route another Worker holds and a token without Routes: exit 1, each named",
    async () => {
      const w = world({ cloudflare: { tokenPermissions: ["workers_scripts:edit", "zone:read"] } });
      try {
        const { code, stdout, stderr } = await w.run(["refresh", "--dry-run"], {
          env: { WORKER_ROUTE: "files.example.com/*" },
        });
        assert.equal(code, 1);
        assert.match(
          stdout,
          /PROBLEM: The Cloudflare token lacks "Zone > Workers Routes > Edit" on zone 20e0+1 \(Cloudflare answered 403 to a read\)/,
        );
        assert.match(stderr, /^error: a real run would fail: /m);
        assert.deepEqual(writes(w), []);
      } finally {
        await w.close();
      }
      const held = world();
      try {
        otherWorker(held.cloudflare, "b2-guide");
        held.cloudflare.routes.set(ZONE, [{
          id: "r1",
          pattern: "files.example.com/*",
          script: "b2-guide",
        }]);
        const { code, stdout } = await held.run(["refresh", "--dry-run"], {
          env: { WORKER_ROUTE: "files.example.com/*", CLOUDFLARE_ZONE_ID: ZONE },
        });
        assert.equal(code, 1);
        assert.match(
          stdout,
          /PROBLEM: route files\.example\.com\/\* runs worker "b2-guide": a real run leaves it so/,
        );
        assert.deepEqual(writes(held), []);
      } finally {
        await held.close();
      }
    },
  );
  await t.step("a token Cloudflare does not know: the verify says so", async () => {
    const w = world();
    try {
      const { code, stdout, stderr } = await w.run(["refresh", "--dry-run"], {
        env: { CLOUDFLARE_API_TOKEN: "not-the-token" },
      });
      assert.equal(code, 1);
      assert.match(stdout, /PROBLEM: CLOUDFLARE_API_TOKEN is not a valid API token/);
      // Every refused read is a problem, joined into one sentence.
      assert.match(stderr, /^error: a real run would fail: CLOUDFLARE_API_TOKEN is not .*; /m);
      assert.doesNotMatch(stderr, /\.;|\.\.$/m);
    } finally {
      await w.close();
    }
  });
});

// ---------------------------------------------------------------------------
// HTTP: send(), the one request helper
// ---------------------------------------------------------------------------

/** A Context that records its pauses instead of waiting them out. */
function quickContext(overrides: Partial<Context> = {}): Context & { sleeps: number[] } {
  const sleeps: number[] = [];
  return Object.assign(
    defaultContext({
      sleep: (ms) => (sleeps.push(ms), Promise.resolve()),
      random: () => 0.5,
      ...overrides,
    }),
    { sleeps },
  );
}

/** A local port nothing listens on: taken, then let go. */
function closedPort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr;
  listener.close();
  return port;
}

/** Fails the test unless `work` rejects with an ApiError, which is returned. */
async function apiError(work: () => Promise<unknown>): Promise<ApiError> {
  try {
    await work();
  } catch (error) {
    assert.ok(error instanceof ApiError, `an ApiError, not ${error}`);
    return error;
  }
  assert.fail("it did not fail");
}

Deno.test("ApiError carries what the service said and the fix as fields, and the message joins them", async (t) => {
  const w = world();
  try {
    const config = parseConfig({ ...w.env, B2_APPLICATION_KEY: "not-the-key" }, { b2: true });
    const worker = { module: await loadWorkerModule(), options: config.worker };
    await t.step("B2 refuses the key", async () => {
      const error = await apiError(() => prepareWorker(config.b2!, worker, quickContext()));
      assert.deepEqual(
        {
          service: error.service,
          status: error.status,
          code: error.code,
          serverMessage: error.serverMessage,
          hint: error.hint,
          problem: error.problem,
        },
        {
          service: "B2",
          status: 401,
          code: "unauthorized",
          serverMessage: "invalid authorization",
          hint: "check B2_APPLICATION_KEY_ID and B2_APPLICATION_KEY",
          problem: "Cannot authorize the B2 application key: B2 answered 401 unauthorized: " +
            "invalid authorization",
        },
      );
      assert.equal(error.message, `${error.problem}. Fix: ${error.hint}.`);
    });
    await t.step("Cloudflare refuses the token", async () => {
      const cloudflare = parseConfig({ ...w.env, CLOUDFLARE_API_TOKEN: "not-the-token" }, {
        cloudflare: true,
      }).cloudflare!;
      const error = await apiError(() =>
        status(cloudflare, quickContext(), { minRemaining: 3600 })
      );
      assert.deepEqual(
        [error.service, error.status, error.code, error.serverMessage],
        ["Cloudflare", 403, "10000", "Authentication error"],
      );
      assert.match(error.hint!, /^check CLOUDFLARE_API_TOKEN: it needs "Workers Scripts: Edit"/);
      assert.equal(error.message, `${error.problem}. Fix: ${error.hint}.`);
    });
  } finally {
    await w.close();
  }
});

Deno.test("send() keeps the runtime's cause and retries only what a retry can fix", async (t) => {
  const b2 = { service: "B2" as const, step: "authorize the B2 application key" };
  await t.step("a name that does not resolve: said so, once", async () => {
    const ctx = quickContext();
    // RFC 6761: .invalid never resolves, so this needs no network.
    const error = await apiError(() => send(ctx, { ...b2, url: "http://b2.invalid/" }));
    assert.equal(error.code, "dns");
    assert.match(
      error.message,
      /^Cannot authorize the B2 application key: B2 could not be reached: dns error: failed to lookup address information: .+ \(1 attempt, no retry\)\. The host name does not resolve: check B2_API_URL and this machine's DNS\.$/,
    );
    assert.match(String(error.cause), /^dns error: failed to lookup address information/);
    assert.deepEqual(ctx.sleeps, []);
  });
  await t.step("a refused connection: said so, after the retries", async () => {
    const ctx = quickContext();
    const error = await apiError(() =>
      send(ctx, { ...b2, url: `http://127.0.0.1:${closedPort()}/` })
    );
    assert.equal(error.code, "network");
    assert.match(
      error.message,
      /B2 could not be reached: tcp connect error: Connection refused \(os error 111\) \(5 attempts\)\. Check the network and B2_API_URL, then run again\.$/,
    );
    assert.deepEqual(ctx.sleeps, [375, 750, 1500, 3000]);
  });
  await t.step("a port Deno blocks: said so, once", async () => {
    const ctx = quickContext();
    // Port 1 is one of the fetch standard's bad ports (fetch.spec.whatwg.org/#bad-port).
    const error = await apiError(() => send(ctx, { ...b2, url: "http://127.0.0.1:1/" }));
    assert.equal(error.code, "blocked-port");
    assert.match(
      error.message,
      /B2 could not be reached: Requests to port 1 are blocked \(1 attempt, no retry\)\. Deno refuses that port as browsers do: use another port in B2_API_URL\.$/,
    );
    assert.deepEqual(ctx.sleeps, []);
  });
  await t.step("a certificate the system does not trust: said so, once", async () => {
    const dir = await Deno.makeTempDir();
    const made = await new Deno.Command("openssl", {
      args: [
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=localhost",
      ]
        .concat(["-keyout", `${dir}/key.pem`, "-out", `${dir}/cert.pem`]),
      stdout: "null",
      stderr: "null",
    }).output();
    assert.ok(made.success, "openssl made a self-signed certificate");
    const server = Deno.serve({
      hostname: "127.0.0.1",
      port: 0,
      cert: await Deno.readTextFile(`${dir}/cert.pem`),
      key: await Deno.readTextFile(`${dir}/key.pem`),
      onListen() {},
    }, () => new Response("{}"));
    try {
      const ctx = quickContext();
      const url = `https://localhost:${server.addr.port}/`;
      const error = await apiError(() => send(ctx, { ...b2, url }));
      assert.equal(error.code, "certificate");
      assert.match(
        error.message,
        /B2 could not be reached: invalid peer certificate: .+ \(1 attempt, no retry\)\. Its TLS certificate was refused: check B2_API_URL/,
      );
      assert.deepEqual(ctx.sleeps, []);
    } finally {
      await server.shutdown();
      await Deno.remove(dir, { recursive: true });
    }
  });
  await t.step("the worker and a checked URL are named by their host", async () => {
    const ctx = quickContext();
    const url = `http://127.0.0.1:${closedPort()}/a.txt`;
    const error = await apiError(() =>
      send(ctx, { service: "Verify", step: `fetch ${url}`, url, retry: false })
    );
    assert.match(
      error.message,
      /^Cannot fetch http:\/\/127\.0\.0\.1:\d+\/a\.txt: 127\.0\.0\.1:\d+ could not be reached: tcp connect error: Connection refused .*\(1 attempt\)\. Check the network and the URL, then run again\.$/,
    );
    assert.deepEqual(ctx.sleeps, []);
  });
});

Deno.test("send() gives up on a hanging API within its budget, across attempts", async () => {
  // Accepts connections and never answers.
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const connections: Deno.Conn[] = [];
  const accepting = (async () => {
    for await (const connection of listener) connections.push(connection);
  })();
  try {
    // The real clock and pauses: 300 ms, a 375 ms pause, then what is left of the 700 ms.
    const ctx = defaultContext({ random: () => 0.5, timeoutMs: 300, budgetMs: 700 });
    const started = Date.now();
    const error = await apiError(() =>
      send(ctx, {
        service: "Cloudflare",
        step: "read the settings",
        url: `http://127.0.0.1:${listener.addr.port}/`,
      })
    );
    const took = Date.now() - started;
    assert.ok(took >= 650 && took < 1_500, `gave up after ${took} ms, within the 700 ms budget`);
    assert.equal(error.code, "timeout");
    assert.match(
      error.message,
      /^Cannot read the settings: Cloudflare gave no answer within 0\.7 s in all \(2 attempts\)\. Check the network and CLOUDFLARE_API_BASE_URL, then run again\.$/,
    );
  } finally {
    listener.close();
    for (const connection of connections) connection.close();
    await accepting.catch(() => {});
  }
});

Deno.test("main.ts speaks HTTP only through send()", async () => {
  const source = await Deno.readTextFile(new URL("./main.ts", import.meta.url));
  const calls = source.split("\n").filter((line) =>
    /\bfetch\(/.test(line) && !/^\s*(\/\/|\*)/.test(line)
  )
    .map((line) => line.trim());
  assert.deepEqual(
    calls.sort(),
    [
      // readBeside(): fetching worker_template.ts beside a URL run, as its import just did.
      "const response = await fetch(url);",
      // send() itself.
      "const response = await ctx.fetch(call.url, {",
      // The one wrapper that counts round trips and hands each request on to send()'s fetch.
      "return { ...ctx, fetch: (input, init) => (result.roundTrips++, ctx.fetch(input, init)) };",
    ].sort(),
  );
});

Deno.test("send() with the default timeouts gives up on a hanging API after about 60 s", async () => {
  // A clock that only the fakes move: each attempt hangs until its own timeout fires.
  let clock = 0;
  const attempts: number[] = [];
  const ctx = defaultContext({
    now: () => clock,
    sleep: (ms) => (clock += ms, Promise.resolve()),
    random: () => 0.5,
    fetch: () => {
      attempts.push(clock);
      clock += 30_000;
      return Promise.reject(new DOMException("Signal timed out.", "TimeoutError"));
    },
  });
  const error = await apiError(() =>
    send(ctx, { service: "B2", step: "authorize", url: "https://api.backblazeb2.com/" })
  );
  assert.deepEqual(attempts, [0, 30_375], "a second attempt, then no pause past the minute");
  assert.ok(clock <= 61_000, `gave up after ${clock} ms`);
  assert.match(error.message, /B2 gave no answer within 60 s in all \(2 attempts\)/);
});

Deno.test("refresh says what came back when an API answers 200 with something other than JSON", async (t) => {
  const page = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    () =>
      new Response("<!DOCTYPE html><title>Captive portal</title>", {
        headers: { "content-type": "text/html; charset=utf-8" },
      }),
  );
  const w = world();
  try {
    const url = `http://127.0.0.1:${page.addr.port}`;
    await t.step("B2", async () => {
      const { code, stderr } = await w.run(["refresh"], { env: { B2_API_URL: url } });
      assert.equal(code, 1);
      assert.match(
        stderr,
        /Cannot authorize the B2 application key: B2 answered 200 with text\/html, not JSON: "<!DOCTYPE html><title>Captive portal<\/title>"\. B2 answers JSON: check that B2_API_URL is the B2 API/,
      );
    });
    await t.step("Cloudflare", async () => {
      const { code, stderr } = await w.run(["refresh"], { env: { CLOUDFLARE_API_BASE_URL: url } });
      assert.equal(code, 1);
      assert.match(
        stderr,
        /Cloudflare answered 200 with text\/html, not JSON: "<!DOCTYPE html>.*check that CLOUDFLARE_API_BASE_URL is/,
      );
    });
  } finally {
    await w.close();
    await page.shutdown();
  }
});

Deno.test("refresh names a DNS failure without --verbose, and asks once", async () => {
  const w = world();
  try {
    const { code, stderr } = await w.run(["refresh"], { env: { B2_API_URL: "http://b2.invalid" } });
    assert.equal(code, 1);
    assert.match(
      stderr,
      /B2 could not be reached: dns error: failed to lookup address information/,
    );
    assert.deepEqual(w.sleeps, []);
  } finally {
    await w.close();
  }
});

// ---------------------------------------------------------------------------
// Routes, domains, verify
// ---------------------------------------------------------------------------

const ZONE = FAKE_ZONE_ID;
/** What Backblaze's guide left: a proxied CNAME to B2 and a route to the guide's worker. */
const GUIDE_HOST = "files.example.com";
const GUIDE_RECORD = {
  id: "record-guide",
  zone_id: ZONE,
  zone_name: "example.com",
  name: GUIDE_HOST,
  type: "CNAME",
  content: "f004.backblazeb2.com",
  proxied: true,
  ttl: 1,
};

/** A Worker this tool did not make, as the fake holds it. */
function otherWorker(cf: FakeCloudflare, name: string): void {
  const now = new Date().toISOString();
  cf.scripts.set(name, {
    account: FAKE_ACCOUNT_ID,
    metadata: { main_module: "worker.js", compatibility_date: "2024-01-01", bindings: [] },
    module: "export default {}",
    moduleContentType: "application/javascript+module",
    uploads: 1,
    modifiedOn: now,
    createdOn: now,
    subdomain: { enabled: false, previews_enabled: false },
  });
}

function guideSetup(cf: FakeCloudflare): void {
  otherWorker(cf, "b2-guide");
  cf.dnsRecords.push({ ...GUIDE_RECORD });
  cf.routes.set(ZONE, [{ id: "route-guide", pattern: `${GUIDE_HOST}/*`, script: "b2-guide" }]);
}

/** The requests that changed routes, custom domains or DNS records. */
function triggerWrites(cf: FakeCloudflare): string[] {
  return cf.requests
    .filter((r) => r.method !== "GET" && /\/workers\/(routes|domains)|\/dns_records/.test(r.path))
    .map((r) => `${r.method} ${r.path}`);
}

Deno.test("refresh points the route and domain at the worker; a second refresh changes nothing", async () => {
  const w = world();
  try {
    const env = {
      CLOUDFLARE_ZONE_ID: ZONE,
      WORKER_ROUTE: "cdn.example.com/*",
      WORKER_DOMAIN: "media.example.com",
    };
    const first = await w.run(["refresh", "--json"], { env });
    assert.equal(first.code, 0, first.stderr);
    const facts = JSON.parse(first.stdout);
    assert.deepEqual([facts.route, facts.domain, facts.workersDev], ["created", "created", false]);
    assert.match(first.stderr, /custom domain media\.example\.com is new: .*certificate/);
    const writes = triggerWrites(w.cloudflare).length;
    const second = await w.run(["refresh"], { env });
    assert.equal(second.code, 0, second.stderr);
    assert.match(second.stdout, /; route unchanged; domain unchanged; edge cache workers-cache$/);
    assert.equal(second.stderr, "");
    assert.equal(triggerWrites(w.cloudflare).length, writes);
    assert.deepEqual(
      w.cloudflare.routes.get(ZONE)?.map(({ pattern, script }) => ({ pattern, script })),
      [{ pattern: "cdn.example.com/*", script: "b2-private-cdn" }],
    );
    assert.deepEqual(
      w.cloudflare.domains.map(({ hostname, service, zone_id }) => ({
        hostname,
        service,
        zone_id,
      })),
      [{ hostname: "media.example.com", service: "b2-private-cdn", zone_id: ZONE }],
    );
  } finally {
    await w.close();
  }
});

Deno.test("the guide's route is refused without --take-over, then moved to this worker", async () => {
  const w = world();
  try {
    guideSetup(w.cloudflare);
    const env = { CLOUDFLARE_ZONE_ID: ZONE, WORKER_ROUTE: `${GUIDE_HOST}/*` };
    const refused = await w.run(["refresh", "--json"], { env });
    assert.equal(refused.code, 1);
    const facts = JSON.parse(refused.stdout);
    assert.equal(facts.deployed, true);
    assert.equal(facts.route, undefined);
    assert.match(
      refused.stderr,
      /is deployed with a new download token.*site keeps working[^]*route "files\.example\.com\/\*".*runs worker "b2-guide"[^]*main\.ts refresh --take-over/,
    );
    assert.equal(w.cloudflare.routes.get(ZONE)?.[0]?.script, "b2-guide");

    const moved = await w.run(["refresh", "--take-over"], { env });
    assert.equal(moved.code, 0, moved.stderr);
    assert.match(moved.stdout, /; route taken over; edge cache workers-cache\n/);
    assert.match(
      moved.stdout,
      /Changed: route files\.example\.com\/\* now runs this worker instead of worker "b2-guide"/,
    );
    assert.deepEqual(w.cloudflare.routes.get(ZONE), [
      { id: "route-guide", pattern: `${GUIDE_HOST}/*`, script: "b2-private-cdn" },
    ]);
    // The route moves the site with no DNS change: the guide's record stays.
    assert.deepEqual(w.cloudflare.dnsRecords, [GUIDE_RECORD]);

    const again = await w.run(["refresh"], { env });
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stdout, /; route unchanged; edge cache workers-cache$/);
  } finally {
    await w.close();
  }
});

Deno.test("the guide's CNAME blocks WORKER_DOMAIN: refused with the fix, moved with --take-over", async (t) => {
  const env = { CLOUDFLARE_ZONE_ID: ZONE, WORKER_DOMAIN: GUIDE_HOST };
  const withPermissions = async (
    permissions: string[],
    test: (w: World) => Promise<void>,
  ) => {
    const w = world({
      cloudflare: {
        tokenPermissions: ["workers_scripts:edit", "workers_routes:edit", ...permissions],
      },
    });
    try {
      guideSetup(w.cloudflare);
      await test(w);
    } finally {
      await w.close();
    }
  };
  await t.step("a Workers-only token says a record exists and what would show it", async () => {
    await withPermissions([], async (w) => {
      const { code, stderr } = await w.run(["refresh"], { env });
      assert.equal(code, 1);
      assert.match(
        stderr,
        /custom domain "files\.example\.com".*has a DNS record .*lacks "DNS: Read".*100117/,
      );
      assert.match(stderr, /WORKER_ROUTE=files\.example\.com\/\*/);
      assert.match(stderr, /main\.ts refresh --take-over.*"DNS: Edit".*certificate/);
      assert.deepEqual(w.cloudflare.domains, []);
    });
  });
  await t.step('with "DNS: Read" it names the record; --take-over needs "DNS: Edit"', async () => {
    await withPermissions(["dns_records:read"], async (w) => {
      const refused = await w.run(["refresh"], { env });
      assert.equal(refused.code, 1);
      assert.match(
        refused.stderr,
        /the DNS record CNAME files\.example\.com -> f004\.backblazeb2\.com \(proxied\)/,
      );
      const noEdit = await w.run(["refresh", "--take-over"], { env });
      assert.equal(noEdit.code, 1);
      assert.match(noEdit.stderr, /Cannot take over "files\.example\.com".*needs "DNS: Edit"/);
      assert.equal(w.cloudflare.dnsRecords.length, 1);
      assert.deepEqual(w.cloudflare.domains, []);
    });
  });
  await t.step('with "DNS: Edit", --take-over deletes the record and attaches', async () => {
    await withPermissions(["dns_records:edit"], async (w) => {
      const { code, stdout, stderr } = await w.run(["refresh", "--take-over"], { env });
      assert.equal(code, 0, stderr);
      assert.match(
        stdout,
        /Changed: deleted DNS record CNAME files\.example\.com -> f004\.backblazeb2\.com/,
      );
      assert.match(stderr, /warning: custom domain files\.example\.com is new.*few minutes/);
      assert.deepEqual(w.cloudflare.dnsRecords, []);
      assert.deepEqual(
        w.cloudflare.domains.map((d) => [d.hostname, d.service]),
        [[GUIDE_HOST, "b2-private-cdn"]],
      );
      const again = await w.run(["refresh"], { env });
      assert.match(again.stdout, /; domain unchanged; edge cache workers-cache$/);
    });
  });
});

Deno.test("another Worker's route and custom domain are refused, then taken over with --take-over", async () => {
  const w = world();
  try {
    otherWorker(w.cloudflare, "other-worker");
    w.cloudflare.routes.set(ZONE, [
      { id: "route-other", pattern: "cdn.example.com/*", script: "other-worker" },
    ]);
    w.cloudflare.domains.push({
      id: "domain-other",
      zone_id: ZONE,
      zone_name: "example.com",
      hostname: "media.example.com",
      service: "other-worker",
      environment: "production",
    });
    const env = {
      CLOUDFLARE_ZONE_ID: ZONE,
      WORKER_ROUTE: "cdn.example.com/*",
      WORKER_DOMAIN: "media.example.com",
    };
    const refused = await w.run(["refresh"], { env });
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /2 steps after the upload failed/);
    assert.match(refused.stderr, /route "cdn\.example\.com\/\*".*runs worker "other-worker"/);
    assert.match(
      refused.stderr,
      /custom domain "media\.example\.com".*of worker "other-worker" \(Cloudflare error 100116\).*--take-over/,
    );
    assert.deepEqual(triggerWrites(w.cloudflare), []);

    const taken = await w.run(["refresh", "--take-over", "--json"], { env });
    assert.equal(taken.code, 0, taken.stderr);
    const facts = JSON.parse(taken.stdout);
    assert.deepEqual([facts.route, facts.domain], ["taken over", "taken over"]);
    assert.equal(facts.changed.length, 2);
    const put = w.cloudflare.requests.find((r) =>
      r.method === "PUT" && r.path.endsWith("/workers/domains")
    );
    assert.equal(JSON.parse(put!.body).override_existing_origin, true);
    assert.equal(w.cloudflare.routes.get(ZONE)?.[0]?.script, "b2-private-cdn");
    assert.equal(w.cloudflare.domains[0]?.service, "b2-private-cdn");
  } finally {
    await w.close();
  }
});

Deno.test("parseCommandLine() refuses every flag given to a command it does not belong to", () => {
  assert.throws(
    () => parseCommandLine(["status", "--dry-run", "--verify", "https://x.example", "--port", "9"]),
    (error: ConfigError) => {
      assert.deepEqual(error.problems, [
        '--dry-run only applies to refresh, not to "status".',
        '--verify only applies to refresh, cron, not to "status".',
        '--port only applies to dev, demo, not to "status".',
      ]);
      return true;
    },
  );
  for (
    const args of [
      ["render", "--expires", "1h"],
      ["keygen", "--verify", "https://x.example"],
      ["purge", "/a", "--min-remaining", "2h"],
      ["refresh", "--large-url", "https://x.example/big"],
    ]
  ) {
    assert.throws(() => parseCommandLine(args), /only applies to/, args.join(" "));
  }
  // What applies everywhere stays accepted.
  assert.equal(
    parseCommandLine(["status", "--verbose", "--b2-bucket-name", "x"]).command,
    "status",
  );
});

Deno.test("--take-over and --remove-leftovers are for a refresh run by hand only", async () => {
  const w = world();
  try {
    const cron = await w.run(["cron", "--take-over"]);
    assert.equal(cron.code, 2);
    assert.match(cron.stderr, /only applies to refresh/);
    // status's usage errors are UNKNOWN, on stdout, as for a Nagios plugin.
    const status = await w.run(["status", "--remove-leftovers"]);
    assert.equal(status.code, 3);
    assert.match(status.stdout, /^UNKNOWN - --remove-leftovers only applies to refresh/);
  } finally {
    await w.close();
  }
});

Deno.test("workers.dev is set on every deploy: on alone, off with a domain, as configured", async (t) => {
  const w = world();
  const scriptSubdomain = () => w.cloudflare.scripts.get("b2-private-cdn")?.subdomain;
  const switches = () =>
    w.cloudflare.requests.filter((r) => r.method === "POST" && r.path.endsWith("/subdomain"));
  try {
    await t.step("auto, with neither route nor domain: on, and the URL printed", async () => {
      const { code, stdout } = await w.run(["refresh"]);
      assert.equal(code, 0);
      assert.match(
        stdout,
        /; workers\.dev https:\/\/b2-private-cdn\.fake-subdomain\.workers\.dev\/; edge cache workers-cache$/,
      );
      assert.deepEqual(scriptSubdomain(), { enabled: true, previews_enabled: false });
      const [post] = switches();
      assert.equal(post?.headers.get("cloudflare-workers-script-api-date"), "2025-08-01");
      assert.deepEqual(JSON.parse(post!.body), { enabled: true, previews_enabled: false });
    });
    await t.step("auto, with a custom domain: off", async () => {
      const env = { CLOUDFLARE_ZONE_ID: ZONE, WORKER_DOMAIN: "media.example.com" };
      const { code, stdout } = await w.run(["refresh"], { env });
      assert.equal(code, 0);
      assert.doesNotMatch(stdout, /workers\.dev/);
      assert.deepEqual(scriptSubdomain(), { enabled: false, previews_enabled: false });
      // And set again on the next deploy, whatever it was in between.
      w.cloudflare.scripts.get("b2-private-cdn")!.subdomain.enabled = true;
      assert.equal((await w.run(["refresh"], { env })).code, 0);
      assert.deepEqual(scriptSubdomain(), { enabled: false, previews_enabled: false });
      assert.equal(switches().length, 3);
      const { stdout: report } = await w.run(["status"], { env });
      assert.match(report, /\nAnswers at: https:\/\/media\.example\.com\/$/);
    });
    await t.step("WORKER_WORKERS_DEV=on with a domain: on", async () => {
      const env = {
        CLOUDFLARE_ZONE_ID: ZONE,
        WORKER_DOMAIN: "media.example.com",
        WORKER_WORKERS_DEV: "on",
      };
      assert.equal((await w.run(["refresh"], { env })).code, 0);
      assert.equal(scriptSubdomain()?.enabled, true);
    });
    await t.step("a bad value is a configuration error", async () => {
      const { code, stderr } = await w.run(["refresh"], { env: { WORKER_WORKERS_DEV: "yes" } });
      assert.equal(code, 2);
      assert.match(stderr, /WORKER_WORKERS_DEV must be on, off or auto/);
    });
  } finally {
    await w.close();
  }
});

Deno.test("an account without a workers.dev subdomain gets a clear message", async (t) => {
  const w = world({ cloudflare: { workersDevSubdomain: null } });
  try {
    await t.step("the first upload: Cloudflare refuses it; the fix is named", async () => {
      const { code, stderr } = await w.run(["refresh"]);
      assert.equal(code, 1);
      assert.match(
        stderr,
        /no workers\.dev subdomain yet.*https:\/\/dash\.cloudflare\.com\/acc00000000000000000000000000001\/workers\/onboarding/,
      );
    });
    await t.step("an existing worker: deployed, with a warning instead of a failure", async () => {
      otherWorker(w.cloudflare, "b2-private-cdn");
      const { code, stdout, stderr } = await w.run(["refresh", "--json"]);
      assert.equal(code, 0, stderr);
      assert.equal(JSON.parse(stdout).workersDev, false);
      assert.match(
        stderr,
        /warning: WORKER_WORKERS_DEV: this Cloudflare account has no workers\.dev/,
      );
      assert.equal(w.cloudflare.scripts.get("b2-private-cdn")?.uploads, 2);
    });
  } finally {
    await w.close();
  }
});

Deno.test("a restricted bucket is found by name", async () => {
  const w = world({
    b2: { buckets: [{ id: "bucket-photos", name: "photos", type: "restricted", files: [PHOTO] }] },
  });
  try {
    const { code, stdout, stderr } = await w.run(["refresh", "--json"]);
    assert.equal(code, 0, stderr);
    assert.equal(JSON.parse(stdout).bucket, "photos");
  } finally {
    await w.close();
  }
});

Deno.test("a failed domain step after a good upload is reported, and retried without re-uploading", async () => {
  const w = world();
  try {
    otherWorker(w.cloudflare, "other-worker");
    w.cloudflare.domains.push({
      id: "domain-other",
      zone_id: ZONE,
      zone_name: "example.com",
      hostname: "media.example.com",
      service: "other-worker",
      environment: "production",
    });
    const env = { CLOUDFLARE_ZONE_ID: ZONE, WORKER_DOMAIN: "media.example.com" };
    const first = await w.run(["refresh", "--json"], { env });
    assert.equal(first.code, 1);
    const facts = JSON.parse(first.stdout);
    assert.equal(facts.deployed, true);
    assert.equal(facts.failed.length, 1);
    assert.match(
      first.stderr,
      /^error: Worker "b2-private-cdn" is deployed with a new download token/m,
    );
    assert.equal(w.cloudflare.scripts.get("b2-private-cdn")?.uploads, 1);

    const config = parseConfig({ ...w.env, ...env }, { b2: true, cloudflare: true });
    const registered: Parameters<CronRegistrar>[] = [];
    const reports: string[] = [];
    scheduleRefresh(config, ctxFor(), {
      module: "export default {}",
      register: (...args) => registered.push(args),
      report: (line) => reports.push(line),
    });
    const handler = registered[0]![3];
    const authorizations = w.b2.requests.length;
    // The scheduled retry still fails (it never takes over), without uploading again.
    await assert.rejects(handler(), /was uploaded at .*100116/s);
    assert.equal(w.cloudflare.scripts.get("b2-private-cdn")?.uploads, 1);
    // Once the other Worker lets go of the hostname, the retry finishes the job.
    w.cloudflare.domains.splice(0, 1);
    await handler();
    assert.match(reports[0]!, /^Kept worker "b2-private-cdn" uploaded at .*; domain created/);
    assert.equal(w.cloudflare.scripts.get("b2-private-cdn")?.uploads, 1);
    assert.equal(w.b2.requests.length, authorizations);
    assert.equal(w.cloudflare.domains[0]?.service, "b2-private-cdn");
  } finally {
    await w.close();
  }
});

Deno.test("a changed route leaves a leftover: warned, listed by status, removed on request", async () => {
  const w = world();
  try {
    const old = { CLOUDFLARE_ZONE_ID: ZONE, WORKER_ROUTE: "old.example.com/*" };
    assert.equal((await w.run(["refresh"], { env: old })).code, 0);
    const env = { CLOUDFLARE_ZONE_ID: ZONE, WORKER_ROUTE: "cdn.example.com/*" };
    const moved = await w.run(["refresh", "--json"], { env });
    assert.equal(moved.code, 0, moved.stderr);
    assert.deepEqual(JSON.parse(moved.stdout).leftovers, ["route old.example.com/*"]);
    assert.match(moved.stderr, /warning: route old\.example\.com\/\* still runs this worker/);
    const report = await w.run(["status", "--json"], { env });
    assert.equal(report.code, 0);
    const facts = JSON.parse(report.stdout);
    assert.deepEqual(facts.leftovers, ["route old.example.com/*"]);
    assert.deepEqual(facts.urls, ["route cdn.example.com/*"]);
    assert.equal(w.cloudflare.routes.get(ZONE)?.length, 2);

    const removed = await w.run(["refresh", "--remove-leftovers"], { env });
    assert.equal(removed.code, 0, removed.stderr);
    assert.match(removed.stdout, /Changed: removed route old\.example\.com\/\*/);
    assert.deepEqual(w.cloudflare.routes.get(ZONE)?.map((r) => r.pattern), ["cdn.example.com/*"]);
    assert.equal((await w.run(["status", "--json"], { env })).stdout.includes("leftovers"), false);
  } finally {
    await w.close();
  }
});

Deno.test("a step that fails never costs the site the ways it answers today", async (t) => {
  const w = world();
  try {
    const route = { CLOUDFLARE_ZONE_ID: ZONE, WORKER_ROUTE: "files.example.com/*" };
    assert.equal((await w.run(["refresh"], { env: route })).code, 0);
    await t.step(
      "--remove-leftovers keeps the working route while the new domain fails",
      async () => {
        // The guide's CNAME blocks the domain (100117): the route must stay.
        w.cloudflare.dnsRecords.push({ ...GUIDE_RECORD });
        const env = { CLOUDFLARE_ZONE_ID: ZONE, WORKER_DOMAIN: GUIDE_HOST };
        const { code, stderr } = await w.run(["refresh", "--remove-leftovers"], { env });
        assert.equal(code, 1);
        assert.match(stderr, /route files\.example\.com\/\* was not removed/);
        assert.deepEqual(w.cloudflare.routes.get(ZONE)?.map((r) => r.pattern), [
          "files.example.com/*",
        ]);
      },
    );
    await t.step("a route that fails leaves workers.dev as it was", async () => {
      const env = { CLOUDFLARE_ZONE_ID: ZONE, WORKER_ROUTE: "cdn.example.com/*" };
      otherWorker(w.cloudflare, "someone-else");
      w.cloudflare.routes.get(ZONE)!.push({
        id: "route-other",
        pattern: "cdn.example.com/*",
        script: "someone-else",
      });
      w.cloudflare.scripts.get("b2-private-cdn")!.subdomain.enabled = true;
      const { code, stderr } = await w.run(["refresh"], { env });
      assert.equal(code, 1);
      assert.match(stderr, /workers\.dev was left as it was/);
      assert.equal(w.cloudflare.scripts.get("b2-private-cdn")!.subdomain.enabled, true);
    });
    await t.step("status says so when nothing leads to the worker", async () => {
      w.cloudflare.routes.set(ZONE, []);
      w.cloudflare.scripts.get("b2-private-cdn")!.subdomain.enabled = false;
      const { code, stdout } = await w.run(["status"], { env: route });
      assert.equal(code, 2);
      assert.match(stdout, /^CRITICAL .*the worker answers nowhere: .*WORKER_WORKERS_DEV=on/m);
      assert.match(stdout, /\nAnswers at: nowhere/);
    });
  } finally {
    await w.close();
  }
});

Deno.test("--verify waits minutes for a new custom domain's certificate, with progress", async (t) => {
  const env = {
    CLOUDFLARE_ZONE_ID: ZONE,
    WORKER_DOMAIN: "media.example.com",
    VERIFY_URL: "https://media.example.com/cat.jpg",
  };
  /** The real fetch for the fakes; the new hostname fails TLS `failures` times. */
  const tlsFailing = (failures: number): typeof fetch => (input, init) => {
    const url = new URL(input instanceof Request ? input.url : input);
    if (url.hostname !== "media.example.com") return fetch(input, init);
    if (failures-- > 0) {
      return Promise.reject(new TypeError("invalid peer certificate: UnknownIssuer"));
    }
    return Promise.resolve(new Response("cat"));
  };
  await t.step("the certificate arrives after a few minutes", async () => {
    const w = world();
    try {
      const { code, stdout, stderr } = await w.run(["refresh"], {
        env,
        ctx: { fetch: tlsFailing(12) },
      });
      assert.equal(code, 0, stderr);
      assert.match(
        stdout,
        /; verified https:\/\/media\.example\.com\/cat\.jpg; edge cache workers-cache$/,
      );
      assert.match(
        stderr,
        /waiting for the new custom domain's certificate \(2m 45s of up to 10m 0s\)/,
      );
      assert.equal(w.sleeps.filter((ms) => ms === 15_000).length, 12);
    } finally {
      await w.close();
    }
  });
  await t.step(
    "still no certificate after ten minutes: said plainly, not a failed deploy",
    async () => {
      const w = world();
      try {
        const { code, stdout, stderr } = await w.run(["refresh", "--json"], {
          env,
          ctx: { fetch: tlsFailing(Infinity) },
        });
        assert.equal(code, 0, stderr);
        assert.equal(JSON.parse(stdout).verified, undefined);
        assert.match(
          stderr,
          /warning: .*certificate of the new custom domain .* is still being issued/,
        );
        assert.equal(w.sleeps.reduce((a, b) => a + b, 0), 10 * 60_000);
      } finally {
        await w.close();
      }
    },
  );
});

Deno.test("refresh --verify fails with exit 1 unless the URL answers 2xx", async (t) => {
  let answers: number[] = [];
  const site = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    () => {
      return new Response("x", { status: answers.shift() ?? 404 });
    },
  );
  const url = `http://127.0.0.1:${site.addr.port}/cat.jpg`;
  const w = world();
  try {
    await t.step("succeeds once the deploy has spread", async () => {
      answers = [404, 522, 200];
      const { code, stdout } = await w.run(["refresh", "--verify", url]);
      assert.equal(code, 0);
      assert.match(stdout, /; verified http:/);
      assert.deepEqual(w.sleeps.splice(0), [5000, 5000]);
    });
    await t.step("fails when it never answers 2xx", async () => {
      answers = [];
      const { code, stderr } = await w.run(["refresh"], {
        env: { VERIFY_URL: url },
      });
      assert.equal(code, 1);
      assert.match(
        stderr,
        /The worker is deployed, but http:\S+ answered 404 after 6 attempts/,
      );
    });
  } finally {
    await w.close();
    await site.shutdown();
  }
});

// ---------------------------------------------------------------------------
// render, status, cron
// ---------------------------------------------------------------------------

Deno.test("render prints the module and masked bindings without the network", async () => {
  const noNetwork = () => Promise.reject(new Error("render must not use the network"));
  const stdout: string[] = [];
  const code = await run({
    args: ["render", "--json"],
    env: { B2_BUCKET_NAME: "photos", WORKER_CORS_ORIGINS: "*" },
    readEnvFile: () => Promise.resolve(undefined),
    io: { stdout: (t) => stdout.push(t), stderr: (t) => stdout.push(t) },
    ctx: { fetch: noNetwork },
  });
  assert.equal(code, 0);
  const { metadata, module } = JSON.parse(stdout.join(""));
  assert.equal(metadata.main_module, "worker.js");
  assert.equal(secretOf(metadata, "B2_DOWNLOAD_TOKEN"), "(secret, not shown)");
  assert.equal(secretOf(metadata, "B2_BUCKET_NAME"), "photos");
  assert.equal(secretOf(metadata, "WORKER_CORS_ORIGINS"), "*");
  assert.match(module, /export default/);
});

Deno.test("render prints a summary for a person, and the module only with --module or --out", async (t) => {
  const render = async (args: string[], env: Record<string, string> = {}) => {
    const stdout: string[] = [];
    const stderr: string[] = [];
    const code = await run({
      args: ["render", ...args],
      env: {
        B2_BUCKET_NAME: "photos",
        B2_APPLICATION_KEY_ID: "0012345678abcdef",
        B2_APPLICATION_KEY: B2_KEY,
        ...env,
      },
      readEnvFile: () => Promise.resolve(undefined),
      io: { stdout: (t) => stdout.push(t), stderr: (t) => stderr.push(t) },
      ctx: { fetch: () => Promise.reject(new Error("render must not use the network")) },
    });
    assertNoSecret(...stdout, ...stderr);
    return { code, stdout: stdout.join("\n"), stderr: stderr.join("\n") };
  };
  const module = await loadWorkerModule();
  await t.step("the summary: size, bindings masked, what differs from the defaults", async () => {
    const { code, stdout } = await render([], {
      WORKER_CACHE_TTL: "2h",
      WORKER_CACHE_MODE: "workers-cache",
    });
    assert.equal(code, 0);
    const bytes = new TextEncoder().encode(module).length.toLocaleString("en-US");
    assert.match(stdout, new RegExp(`^  module worker\\.js, ${bytes} bytes `, "m"));
    assert.match(
      stdout,
      /^ {2}B2_DOWNLOAD_TOKEN +\(secret: B2's download token, made at refresh\)$/m,
    );
    assert.match(stdout, /^ {2}WORKER_PURGE_KEY +\(secret, not shown\)$/m);
    // Not a made-up value in quotes, which reads as the one that would be uploaded.
    assert.match(stdout, /^ {2}B2_DOWNLOAD_URL +\(B2's download URL for the account, from b2_/m);
    assert.match(stdout, /^ {2}WORKER_CACHE_TTL +"7200"$/m);
    // WORKER_CACHE_MODE is given, but as its default: not a difference.
    assert.match(
      stdout,
      /\nSettings that differ from the defaults:\n {2}B2_APPLICATION_KEY_ID=0012\.\.\.\n {2}B2_APPLICATION_KEY \(set; a secret, not shown\)\n {2}B2_BUCKET_NAME=photos\n {2}WORKER_CACHE_TTL=2h$/,
    );
    assert.ok(!stdout.includes("export default"), "no module without --module");
    const pinged = await render([], { REFRESH_PING_URL: "https://hc-ping.com/5e2b7c1a-0d5f-4c43" });
    assert.match(pinged.stdout, /^ {2}REFRESH_PING_URL=https:\/\/hc-ping\.com\/5e2b\.\.\.$/m);
    assert.ok(stdout.split("\n").length < 40, "a page, not the module's thousands of lines");
  });
  await t.step("--module: the module alone", async () => {
    const { code, stdout } = await render(["--module"]);
    assert.deepEqual([code, stdout], [0, module]);
  });
  await t.step("--out <file>: the module written, the summary printed", async () => {
    const file = `${await Deno.makeTempDir()}/worker.js`;
    const { code, stdout } = await render(["--out", file]);
    assert.equal(code, 0);
    assert.equal(await Deno.readTextFile(file), module);
    assert.match(stdout, new RegExp(`\nWrote the module to ${file.replaceAll(".", "\\.")}\\.$`));
  });
  await t.step("nothing given: said so", async () => {
    const stdout: string[] = [];
    await run({
      args: ["render"],
      env: {},
      readEnvFile: () => Promise.resolve(undefined),
      io: { stdout: (t) => stdout.push(t), stderr: () => {} },
    });
    assert.match(stdout.join("\n"), /\nEvery setting is at its default\.$/);
  });
  await t.step("--out without the write permission names the flag it needs", async () => {
    const file = `${await Deno.makeTempDir()}/worker.js`;
    const { code, stderr } = await spawn([
      "run",
      "--allow-env",
      "--allow-read",
      `${ROOT}main.ts`,
      "render",
      "--out",
      file,
    ]);
    assert.equal(code, 2);
    assert.match(
      stderr,
      new RegExp(
        `Run it as deno run --allow-env --allow-read --allow-write=${file} main\\.ts render --out ${file} `,
      ),
    );
  });
});

Deno.test("status exits 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN, as Nagios plugins do", async (t) => {
  const w = world();
  const day = 86_400_000;
  try {
    await t.step("missing worker: CRITICAL", async () => {
      const { code, stdout } = await w.run(["status"]);
      assert.equal(code, 2);
      assert.equal(
        stdout,
        'CRITICAL - worker "b2-private-cdn": worker "b2-private-cdn" does not exist; run refresh',
      );
    });
    assert.equal((await w.run(["refresh"])).code, 0);
    await t.step("fresh token: OK", async () => {
      const { code, stdout } = await w.run(["status"]);
      assert.equal(code, 0);
      assert.match(
        stdout,
        /^OK - worker "b2-private-cdn": the download token expires \S+, in 6d 23h \(issued 0s ago\); the edge cache is Workers Cache, kept across refreshes\nLarge objects \(over 512 MB, more than Workers Cache keeps whole\) are kept in 8 MiB segments in Workers Cache, on every address, and purged with their object\nAnswers at: https:\/\/b2-private-cdn.fake-subdomain.workers.dev\/$/,
      );
    });
    await t.step("less than --min-remaining left: WARNING", async () => {
      const later = Date.now() + 5 * day + 60_000;
      const { code, stdout } = await w.run(["status", "--min-remaining", "2d", "--json"], {
        ctx: { now: () => later },
      });
      assert.equal(code, 1);
      const report = JSON.parse(stdout);
      assert.equal(report.healthy, false);
      assert.equal(report.state, "WARNING");
      assert.equal(report.problem, "less than 2d 0h left; run refresh");
      assert.ok(report.remaining < 2 * 86_400 && report.remaining > 86_400);
      assert.ok(report.age >= 5 * 86_400);
    });
    await t.step("less than half of --min-remaining left: CRITICAL", async () => {
      const later = Date.now() + 6 * day + 60_000;
      const { code, stdout } = await w.run(["status", "--min-remaining", "2d"], {
        ctx: { now: () => later },
      });
      assert.equal(code, 2);
      assert.match(stdout, /^CRITICAL .*less than 2d 0h left; run refresh$/m);
    });
    await t.step("past expiry: CRITICAL", async () => {
      const later = Date.now() + 8 * day;
      const { code, stdout } = await w.run(["status"], { ctx: { now: () => later } });
      assert.equal(code, 2);
      assert.match(
        stdout,
        /^CRITICAL .*the download token expired \S+, 1d 0h ago .*; the download token has expired; run refresh$/m,
      );
    });
    await t.step("Cloudflare refuses to say: UNKNOWN, on stdout", async () => {
      const { code, stdout, stderr } = await w.run(["status"], {
        env: { CLOUDFLARE_ACCOUNT_ID: "acc0000000000000000000000000dead" },
      });
      assert.deepEqual([code, stderr], [3, ""]);
      assert.match(stdout, /^UNKNOWN - .*Fix: .*CLOUDFLARE_ACCOUNT_ID/);
    });
    await t.step("Cloudflare cannot be reached: UNKNOWN, also with --json", async () => {
      const { code, stdout } = await w.run(["status", "--json"], {
        env: { CLOUDFLARE_API_BASE_URL: "http://127.0.0.1:9/client/v4" },
      });
      assert.equal(code, 3);
      const report = JSON.parse(stdout);
      assert.equal(report.state, "UNKNOWN");
      assert.match(report.problem, /Cloudflare/);
    });
    await t.step("bad settings or usage: UNKNOWN, not CRITICAL", async () => {
      const unset = await w.run(["status"], { env: { CLOUDFLARE_API_TOKEN: "" } });
      assert.equal(unset.code, 3);
      assert.match(unset.stdout, /^UNKNOWN - .*Set CLOUDFLARE_API_TOKEN/);
      const usage = await w.run(["status", "--min-remaining", "soon"]);
      assert.equal(usage.code, 3);
      assert.match(usage.stdout, /^UNKNOWN - --min-remaining must be a duration/);
      const flag = await w.run(["--bogus", "status"]);
      assert.equal(flag.code, 3);
    });
  } finally {
    await w.close();
  }
});

Deno.test("scheduleRefresh() registers the schedule with an explicit backoff", async () => {
  const w = world();
  try {
    const registered: Parameters<CronRegistrar>[] = [];
    const config = parseConfig({ ...w.env, REFRESH_SCHEDULE: "5 3 * * *" }, {
      b2: true,
      cloudflare: true,
    });
    const reports: string[] = [];
    scheduleRefresh(config, ctxFor(), {
      module: "export default {}",
      register: (...args) => registered.push(args),
      report: (line) => reports.push(line),
    });
    assert.equal(registered.length, 1);
    const [name, schedule, options, handler] = registered[0]!;
    assert.deepEqual([name, schedule, options], [
      "b2-private-cdn refresh",
      "5 3 * * *",
      { backoffSchedule: [60_000, 300_000, 900_000] },
    ]);
    await handler();
    assert.match(reports[0]!, /^Deployed worker "b2-private-cdn"/);
    assert.equal(
      w.cloudflare.scripts.get("b2-private-cdn")?.module,
      "export default {}",
    );
  } finally {
    await w.close();
  }
});

function ctxFor(overrides: Partial<Context> = {}): Context {
  return {
    fetch,
    now: Date.now,
    sleep: () => Promise.resolve(),
    random: () => 0.5,
    log: () => {},
    secrets: new Set(),
    timeoutMs: 2000,
    retries: 1,
    budgetMs: 60_000,
    ...overrides,
  };
}

Deno.test("refreshIfDue() refreshes at start only when the token is missing or short", async () => {
  const w = world();
  try {
    const config = parseConfig(w.env, { b2: true, cloudflare: true });
    const loads: string[] = [];
    const loadModule = () => (loads.push("load"), Promise.resolve("export default {}"));
    const first = await refreshIfDue(config, ctxFor(), { loadModule });
    assert.equal(first.refreshed, true);
    assert.match(first.reason, /does not exist; run refresh; refreshed until/);
    const second = await refreshIfDue(config, ctxFor(), { loadModule });
    assert.deepEqual(second, {
      refreshed: false,
      reason: "token has 6d 23h left, more than the margin of 6d 0h",
    });
    const tomorrow = Date.now() + 86_400_000 + 1000;
    const third = await refreshIfDue(
      config,
      ctxFor({ now: () => tomorrow }),
      { loadModule },
    );
    assert.equal(third.refreshed, true);
    assert.equal(loads.length, 2, "the module is loaded only when a refresh is due");
    assert.equal(w.cloudflare.scripts.get("b2-private-cdn")?.uploads, 2);
  } finally {
    await w.close();
  }
});

// ---------------------------------------------------------------------------
// Workers Cache: cache_options, purge, and the purges refresh owes (issue 8)
// ---------------------------------------------------------------------------

/** Where the tests' worker answers; ctx.fetch sends it to the fake endpoint below. */
const SITE_HOST = "cdn.example.com";

/**
 * The deployed worker as visitors reach it: the real worker module's fetch
 * (imported, run in Deno), with the bindings the fake Cloudflare holds and a
 * ctx.cache that records purges. After an upload, the version before it keeps
 * answering for `lag` requests, as while a deploy spreads.
 */
function startWorkerEndpoint(cloudflare: FakeCloudflare) {
  const purges: PurgeOptions[] = [];
  const currentEnv = () => {
    const script = cloudflare.scripts.get("b2-private-cdn");
    if (!script) return undefined;
    return Object.fromEntries(
      script.metadata.bindings.map((b) => [b.name, b.text]),
    ) as unknown as Env;
  };
  const endpoint = {
    purges,
    /** Requests still answered by `previous`. */
    lag: 0,
    previous: undefined as Env | undefined,
    /** The version deployed now keeps answering `requests` more requests after the next upload. */
    lagBehind(requests: number) {
      endpoint.previous = currentEnv();
      endpoint.lag = requests;
    },
    /** Purges still refused as rate limited. */
    refuse: 0,
    /** Purges that go through before the refusals start. */
    passBeforeRefusing: 0,
    /** Answer the next request as a bot challenge in front of the worker would. */
    challenge: false,
    requests: 0,
    server: Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (
      request,
    ): Promise<Response> | Response => {
      endpoint.requests++;
      if (endpoint.challenge) {
        endpoint.challenge = false;
        return new Response("<html>Just a moment...</html>", {
          status: 403,
          headers: { "cf-mitigated": "challenge", "content-type": "text/html" },
        });
      }
      const current = currentEnv();
      if (!current) return new Response("no such worker", { status: 404 });
      const answering = endpoint.lag > 0 && endpoint.previous ? endpoint.previous : current;
      if (endpoint.lag > 0) endpoint.lag--;
      const ctx: ExecutionContext = {
        waitUntil() {},
        cache: {
          purge(options) {
            if (endpoint.passBeforeRefusing > 0) endpoint.passBeforeRefusing--;
            else if (endpoint.refuse > 0) {
              endpoint.refuse--;
              return Promise.resolve({
                success: false,
                errors: [{ code: 429, message: "rate limited" }],
              });
            }
            purges.push(options);
            return Promise.resolve({ success: true, errors: [] });
          },
        },
      };
      const url = new URL(request.url);
      return workerModule.fetch(
        new Request(`https://${SITE_HOST}${url.pathname}${url.search}`, request),
        answering,
        ctx,
      );
    }),
    /** A ctx.fetch that sends requests for the site to this endpoint. */
    fetch(input: string | URL | Request, init?: RequestInit): Promise<Response> {
      const url = new URL(input instanceof Request ? input.url : input);
      if (url.host !== SITE_HOST) return fetch(input, init);
      const local = `http://127.0.0.1:${endpoint.server.addr.port}${url.pathname}${url.search}`;
      return fetch(local, init);
    },
  };
  return endpoint;
}

/** A world whose worker has the custom domain cdn.example.com, reached through the endpoint. */
function purgeWorld() {
  const w = world();
  const endpoint = startWorkerEndpoint(w.cloudflare);
  const env = { CLOUDFLARE_ZONE_ID: "20e00000000000000000000000000001", WORKER_DOMAIN: SITE_HOST };
  const ctx = { fetch: endpoint.fetch as typeof fetch };
  return {
    w,
    endpoint,
    run: (args: string[], extra: Record<string, string> = {}) =>
      w.run(args, { env: { ...env, ...extra }, ctx }),
    bindings: () => bindingTexts(w.cloudflare.scripts.get("b2-private-cdn")!.metadata),
    async close() {
      await endpoint.server.shutdown();
      await w.close();
    },
  };
}

Deno.test("every upload says which cache it uses, and status reads it back", async (t) => {
  const p = purgeWorld();
  try {
    for (
      const [mode, settings, expected] of [
        ["cache-api", { WORKER_CACHE_MODE: "cache-api" }, { enabled: false }],
        ["off", { WORKER_CACHE_MODE: "off" }, { enabled: false }],
        ["off, by WORKER_CACHE_TTL=0", { WORKER_CACHE_TTL: "0" }, { enabled: false }],
        ["workers-cache", {}, { enabled: true, cross_version_cache: true }],
      ] as const
    ) {
      await t.step(mode, async () => {
        const { code, stdout } = await p.run(["refresh"], settings);
        assert.equal(code, 0);
        assert.match(stdout, new RegExp(`; edge cache ${mode.split(",")[0]}`));
        const script = p.w.cloudflare.scripts.get("b2-private-cdn")!;
        assert.deepEqual(script.metadata.cache_options, expected);
        assert.equal((await p.run(["status"], settings)).code, 0);
      });
    }
    await t.step("a contradiction is unhealthy, with the fix", async () => {
      const script = p.w.cloudflare.scripts.get("b2-private-cdn")!;
      script.metadata.cache_options = { enabled: true };
      const { code, stdout } = await p.run(["status"]);
      assert.equal(code, 1);
      assert.match(
        stdout,
        /^WARNING .*Cloudflare says the deployed version has Workers Cache on but not kept across refreshes, where WORKER_CACHE_MODE=workers-cache wants it on and kept; run refresh \(a full upload sets it\)$/m,
      );
      const other = await p.run(["status"], { WORKER_CACHE_MODE: "cache-api" });
      assert.match(other.stdout, /caches with workers-cache, WORKER_CACHE_MODE says cache-api/);
    });
    await t.step("an absent setting is unknown, not a failure", async () => {
      delete p.w.cloudflare.scripts.get("b2-private-cdn")!.metadata.cache_options;
      const { code, stdout } = await p.run(["status"]);
      assert.equal(code, 0);
      assert.match(
        stdout,
        /the edge cache is Workers Cache \(Cloudflare did not say whether this version has it on\)$/m,
      );
    });
    await t.step("render and --dry-run show the mode in force", async () => {
      const render = await p.run(["render"], { WORKER_CACHE_TTL: "0" });
      assert.match(render.stdout, /^ {2}There is no edge cache \(WORKER_CACHE_MODE=off\)$/m);
      assert.match(render.stdout, /^ {2}WORKER_CACHE_MODE +"off"$/m);
      assert.match(
        render.stdout,
        /^ {2}Large objects are not cached either \(the edge cache is off\)$/m,
      );
      const dry = await p.run(["refresh", "--dry-run"], { WORKER_CACHE_MODE: "cache-api" });
      assert.match(dry.stdout, /^Would deploy .*; edge cache cache-api$/m);
      assert.match(
        dry.stdout,
        /^Large objects \(over 100 MiB, more than the Cache API keeps whole\) are kept in 8 MiB /m,
      );
      const off = await p.run(["render"], { WORKER_SEGMENT_SIZE: "0" });
      assert.match(off.stdout, /^ {2}Large objects .* are served range by range from B2 /m);
      assert.match(off.stdout, /^ {2}WORKER_SEGMENT_SIZE +"0"$/m);
    });
  } finally {
    await p.close();
  }
});

Deno.test("refresh purges everything when what URLs serve changes, once the new version answers", async (t) => {
  const p = purgeWorld();
  try {
    await t.step("a first deploy has nothing to purge", async () => {
      assert.equal((await p.run(["refresh"])).code, 0);
      assert.deepEqual(p.endpoint.purges, []);
      assert.equal(p.endpoint.requests, 0);
    });
    await t.step("a token-only refresh purges nothing and keeps its round trips", async () => {
      const { code, stdout } = await p.run(["refresh", "--json"]);
      assert.equal(code, 0);
      // 3 to B2 (the settings read goes alongside its authorize), the upload, then the
      // domain's zone lists (routes, domains) and the workers.dev switch (subdomain, setting).
      assert.equal(JSON.parse(stdout).roundTrips, 7);
      assert.equal(JSON.parse(stdout).purged, undefined);
      assert.equal(p.endpoint.requests, 0);
      assert.equal(p.w.cloudflare.scripts.get("b2-private-cdn")?.uploads, 2);
    });
    await t.step("a new prefix purges once the new version answers, not before", async () => {
      p.endpoint.lagBehind(2);
      const sleeps = p.w.sleeps.length;
      const { code, stdout } = await p.run(["refresh"], { B2_FILE_PREFIX: "" });
      assert.equal(code, 0, stdout);
      assert.match(stdout, /; purged everything: what the site serves changed/);
      assert.deepEqual(p.endpoint.purges, [{ purgeEverything: true }]);
      // Two answers from the old version (refused, nothing purged), then the new one.
      assert.equal(p.endpoint.requests, 3);
      assert.deepEqual(p.w.sleeps.slice(sleeps), [5000, 5000]);
      assert.equal(p.bindings().WORKER_PURGE_PENDING, undefined);
    });
    await t.step("a purge that fails is remembered and done by the next run", async () => {
      p.endpoint.purges.length = 0;
      p.endpoint.refuse = 1;
      const failed = await p.run(["refresh"], { WORKER_CORS_ORIGINS: "*" });
      assert.equal(failed.code, 1);
      assert.match(
        failed.stderr,
        /at most 5 purges a minute; try again in 60 s\. The worker is deployed and remembers the purge/,
      );
      assert.equal(p.bindings().WORKER_PURGE_PENDING, "all");
      assert.deepEqual(p.endpoint.purges, []);
      assert.match(
        (await p.run(["status"], { WORKER_CORS_ORIGINS: "*" })).stdout,
        /a purge after a change is still owed/,
      );
      const retried = await p.run(["refresh"], { WORKER_CORS_ORIGINS: "*" });
      assert.equal(retried.code, 0, retried.stderr);
      assert.match(
        retried.stdout,
        /purged everything: a purge of an earlier refresh is still owed/,
      );
      assert.deepEqual(p.endpoint.purges, [{ purgeEverything: true }]);
      assert.equal(p.bindings().WORKER_PURGE_PENDING, undefined);
    });
    await t.step(
      "a path made private, or a key revoked, purges what was cached while it was allowed",
      async () => {
        const cors = { WORKER_CORS_ORIGINS: "*" };
        const members = {
          ...cors,
          WORKER_SIGNED_PREFIXES: "/members/",
          WORKER_SIGNING_KEY: SIGNING_KEY,
        };
        const rotated = {
          ...members,
          WORKER_SIGNING_KEY_PREVIOUS: PREVIOUS_SIGNING_KEY,
          WORKER_SIGNING_KEY_PREVIOUS_UNTIL: "2099-01-01T00:00:00Z",
        };
        for (
          const [what, settings, purges] of [
            ["/members/ made private", members, 1],
            ["the same settings again", members, 0],
            ["a previous key added", rotated, 1],
            [
              "the previous key's end moved earlier",
              { ...rotated, WORKER_SIGNING_KEY_PREVIOUS_UNTIL: "2098-01-01T00:00:00Z" },
              1,
            ],
            ["the previous key dropped early", members, 1],
            ["/members/ public again", cors, 1],
            // Segments are kept under keys holding their size; the default leaves the
            // fingerprint of deploys made before segments existed as it was.
            ["another segment size", { ...cors, WORKER_SEGMENT_SIZE: "1048576" }, 1],
            ["the default segment size", { ...cors, WORKER_SEGMENT_SIZE: "8388608" }, 1],
            ["the default again, by omission", cors, 0],
          ] as const
        ) {
          p.endpoint.purges.length = 0;
          const { code, stderr } = await p.run(["refresh"], settings);
          assert.equal(code, 0, `${what}: ${stderr}`);
          assert.equal(p.endpoint.purges.length, purges, what);
          for (const key of [SIGNING_KEY, PREVIOUS_SIGNING_KEY]) {
            assert.ok(!p.bindings().WORKER_FINGERPRINT?.includes(key), what);
          }
        }
      },
    );
  } finally {
    await p.close();
  }
});

Deno.test("purge sends paths, prefixes or everything in as few signed requests as the limits allow", async (t) => {
  const p = purgeWorld();
  try {
    assert.equal((await p.run(["refresh"])).code, 0);
    await t.step("paths exactly, by their objects' tags, 100 operations a request", async () => {
      const paths = Array.from({ length: 230 }, (_, i) => `/photos/${i}.jpg`);
      const { code, stdout } = await p.run(["purge", ...paths, "--prefix", "/old/"]);
      assert.equal(code, 0);
      assert.match(
        stdout,
        /^Purged 230 paths and 1 prefix from Workers Cache in 3 requests to https:\/\/cdn\.example\.com\//,
      );
      assert.deepEqual(p.endpoint.purges.map((o) => o.tags?.length ?? 0), [100, 100, 30]);
      assert.deepEqual(p.endpoint.purges[2]?.pathPrefixes, ["/old/"]);
      assert.equal(p.endpoint.purges[0]?.tags?.[0], await objectTag("site/photos/0.jpg"));
    });
    await t.step(
      "prefixes in the one spelling the worker serves, which is what was kept",
      async () => {
        p.endpoint.purges.length = 0;
        const { code } = await p.run([
          "purge",
          "--prefix",
          "/caf%c3%a9/",
          "--prefix",
          "/%69mg/a%2Bb",
        ]);
        assert.equal(code, 0);
        assert.deepEqual(p.endpoint.purges.map((o) => o.pathPrefixes), [[
          "/caf%C3%A9/",
          "/img/a+b",
        ]]);
      },
    );
    await t.step("--all", async () => {
      p.endpoint.purges.length = 0;
      assert.equal((await p.run(["purge", "--all"])).code, 0);
      assert.deepEqual(p.endpoint.purges, [{ purgeEverything: true }]);
    });
    await t.step("rate limited: exit 1, what is left and when to try again", async () => {
      p.endpoint.purges.length = 0;
      p.endpoint.refuse = 1;
      const paths = Array.from({ length: 150 }, (_, i) => `/p/${i}`);
      // The first request goes through; the refusal meets the second.
      p.endpoint.passBeforeRefusing = 1;
      const { code, stderr } = await p.run(["purge", ...paths]);
      assert.equal(code, 1);
      assert.match(
        stderr,
        /at most 5 purges a minute; try again in 60 s\. 1 of 2 requests were purged\. 50 paths and prefixes are left\./,
      );
      assert.equal(p.endpoint.purges.length, 1);
    });
    await t.step("another key is refused as any POST, and said so", async () => {
      const { code, stderr } = await p.run(["purge", "/a"], { WORKER_PURGE_KEY: "x".repeat(40) });
      assert.equal(code, 1);
      assert.match(stderr, /refused the signed request as it refuses any POST/);
    });
    await t.step("an answer that is not the worker's is reported as such", async () => {
      p.endpoint.challenge = true;
      const { code, stderr } = await p.run(["purge", "/a"]);
      assert.equal(code, 1);
      assert.match(stderr, /\(403, cf-mitigated: challenge\) is not the worker's/);
    });
    await t.step("the Cache API mode refuses, naming the manual step", async () => {
      const { code, stderr } = await p.run(["purge", "--all"], { WORKER_CACHE_MODE: "cache-api" });
      assert.equal(code, 2, "a setting rules it out: a configuration problem");
      assert.match(stderr, /Purge Everything/);
    });
    await t.step("bad usage exits 2", async () => {
      assert.equal((await p.run(["purge"])).code, 2);
      assert.equal((await p.run(["purge", "/a", "--all"])).code, 2);
      // status follows the Nagios plugins: bad usage is UNKNOWN.
      assert.equal((await p.run(["status", "--all"])).code, 3);
    });
  } finally {
    await p.close();
  }
});

Deno.test("check-cache finds a workers.dev-only worker by itself, as purge does", async (t) => {
  const checkCache = async (
    cloudflare: FakeCloudflare,
    env: Record<string, string>,
    args: string[] = [],
  ) => {
    const asked: string[] = [];
    const stdout: string[] = [];
    const stderr: string[] = [];
    const settings: Record<string, string> = {
      CLOUDFLARE_ACCOUNT_ID: "acc00000000000000000000000000001",
      CLOUDFLARE_API_TOKEN: CF_TOKEN,
      CLOUDFLARE_API_BASE_URL: cloudflare.url,
      ...env,
    };
    const code = await run({
      args: ["check-cache", ...args],
      // An empty value leaves the setting out.
      env: Object.fromEntries(Object.entries(settings).filter(([, value]) => value !== "")),
      readEnvFile: () => Promise.resolve(undefined),
      io: { stdout: (line) => stdout.push(line), stderr: (line) => stderr.push(line) },
      ctx: {
        sleep: () => Promise.resolve(),
        // The Cloudflare API is the stand-in; the worker's address answers 404 here.
        fetch: (input, init) => {
          const url = String(input instanceof Request ? input.url : input);
          if (url.startsWith(cloudflare.url)) return fetch(input, init);
          asked.push(url);
          return Promise.resolve(new Response("Not found\n", { status: 404 }));
        },
      },
    });
    assertNoSecret(...stdout, ...stderr);
    return { code, asked, stderr: stderr.join("\n") };
  };
  await t.step("the account's workers.dev address of the worker", async () => {
    const cloudflare = startFakeCloudflare();
    try {
      const { code, asked } = await checkCache(cloudflare, {});
      assert.equal(code, 1, "the 404 is a problem, found at the right address");
      assert.equal(asked[0], "https://b2-private-cdn.fake-subdomain.workers.dev/");
    } finally {
      await cloudflare.close();
    }
  });
  await t.step("an account without a subdomain: what to set, exit 2", async () => {
    const cloudflare = startFakeCloudflare({ workersDevSubdomain: null });
    try {
      const { code, asked, stderr } = await checkCache(cloudflare, {});
      assert.equal(code, 2);
      assert.deepEqual(asked, []);
      assert.match(stderr, /give --url .*set WORKER_DOMAIN.*no workers\.dev subdomain/);
    } finally {
      await cloudflare.close();
    }
  });
  await t.step("--url asks nothing of Cloudflare: an account without a token is fine", async () => {
    const cloudflare = startFakeCloudflare();
    try {
      const { code, asked, stderr } = await checkCache(cloudflare, { CLOUDFLARE_API_TOKEN: "" }, [
        "--url",
        "https://cdn.example.com/a.txt",
      ]);
      assert.equal(code, 1, `the 404 is the problem, not the settings: ${stderr}`);
      assert.equal(asked[0], "https://cdn.example.com/a.txt");
      assert.equal(cloudflare.requests.length, 0);
    } finally {
      await cloudflare.close();
    }
  });
  await t.step(
    "an account without a token and no --url: check-cache says what it needs",
    async () => {
      const cloudflare = startFakeCloudflare();
      try {
        const { code, asked, stderr } = await checkCache(cloudflare, { CLOUDFLARE_API_TOKEN: "" });
        assert.equal(code, 2);
        assert.deepEqual(asked, []);
        assert.match(stderr, /check-cache must know where the worker answers: pass --url/);
        assert.match(stderr, /Set CLOUDFLARE_API_TOKEN/);
        assert.doesNotMatch(stderr, /Purge/);
      } finally {
        await cloudflare.close();
      }
    },
  );
});

Deno.test("largeObjectsWhere() says where large objects are kept, per mode and address", () => {
  const where = (mode: "workers-cache" | "cache-api" | "off", url: string) =>
    largeObjectsWhere(mode, new URL(url));
  const custom = where("workers-cache", "https://cdn.example.com/v.mp4");
  assert.match(custom, /512 MB.*whole.*segments in Workers Cache/);
  assert.doesNotMatch(custom, /workers\.dev/);
  assert.match(
    where("workers-cache", "https://b2cdn.me.workers.dev/v.mp4"),
    /segments in Workers Cache.*on workers\.dev their ranges may also ask B2 for the object's headers/,
  );
  assert.match(where("cache-api", "https://b2cdn.me.workers.dev/"), /nothing is kept/);
  assert.match(where("cache-api", "https://cdn.example.com/"), /100 MiB.*segments/);
  assert.match(where("off", "https://cdn.example.com/"), /nothing is kept at the edge/);
});

Deno.test("purge() asks the worker at --url, WORKER_DOMAIN, a concrete route, then workers.dev", async () => {
  const base = parseConfig(
    {
      CLOUDFLARE_ACCOUNT_ID: FAKE_ACCOUNT_ID,
      CLOUDFLARE_API_TOKEN: "t",
      B2_APPLICATION_KEY: B2_KEY,
    },
    { cloudflare: true },
  );
  // Cloudflare is asked only for the account's workers.dev subdomain; nothing to purge sends nothing.
  const subdomain = { success: true, result: { subdomain: "acme" } };
  const ctx = quickContext({ fetch: () => Promise.resolve(Response.json(subdomain)) });
  const at = async (config: typeof base, url?: string) =>
    (await purge(config, ctx, { paths: [], prefixes: [], all: false, url })).url;
  const path = "/.well-known/b2-private-cdn/purge";
  const cf = base.cloudflare!;
  assert.equal(await at(base, "https://x.example"), `https://x.example${path}`);
  assert.equal(
    await at({ ...base, cloudflare: { ...cf, domain: "d.example", route: "r.example/*" } }),
    `https://d.example${path}`,
  );
  assert.equal(
    await at({ ...base, cloudflare: { ...cf, route: "r.example/*" } }),
    `https://r.example${path}`,
  );
  assert.equal(
    await at({ ...base, cloudflare: { ...cf, route: "*.r.example/*" } }),
    `https://b2-private-cdn.acme.workers.dev${path}`,
  );
  // A route on part of a host reaches the worker under that part only.
  assert.equal(
    await at({
      ...base,
      verifyUrl: "https://v.example/a.txt",
      cloudflare: { ...cf, route: "r.example/static/*" },
    }),
    `https://r.example/static${path}`,
  );
});

// ---------------------------------------------------------------------------
// The whole chain, in workerd
// ---------------------------------------------------------------------------

Deno.test("the uploaded worker serves a private file from B2 in workerd", async () => {
  const w = world();
  try {
    assert.equal((await w.run(["refresh"])).code, 0);
    const script = w.cloudflare.scripts.get("b2-private-cdn")!;
    const worker = await startLocalWorker({
      metadata: script.metadata as WorkerMetadata,
      module: script.module,
    });
    try {
      const response = await fetch(`${worker.url}/cat.jpg`);
      assert.equal(response.status, 200);
      assert.equal(await response.text(), PHOTO.body);
      assert.equal(response.headers.get("content-type"), "image/jpeg");
      const download = w.b2.requests.find((r) => r.path.startsWith("/file/"));
      assert.equal(download?.path, "/file/photos/site/cat.jpg");
      assert.equal(
        download?.headers.get("authorization"),
        secretOf(script.metadata, "B2_DOWNLOAD_TOKEN"),
      );
    } finally {
      await worker.dispose();
    }
  } finally {
    await w.close();
  }
});

// ---------------------------------------------------------------------------
// As a user runs it: subprocesses
// ---------------------------------------------------------------------------

const ROOT = new URL(".", import.meta.url).pathname;

async function spawn(
  args: string[],
  options: { env?: Record<string, string>; cwd?: string } = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const output = await new Deno.Command(Deno.execPath(), {
    args,
    cwd: options.cwd ?? ROOT,
    env: childEnv({ NO_COLOR: "1", ...options.env }),
    clearEnv: true,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const decode = (bytes: Uint8Array) => new TextDecoder().decode(bytes);
  const result = {
    code: output.code,
    stdout: decode(output.stdout),
    stderr: decode(output.stderr),
  };
  assertNoSecret(result.stdout, result.stderr);
  return result;
}

const RUN = [
  "run",
  "--allow-net",
  "--allow-env",
  "--allow-read",
  `${ROOT}main.ts`,
];

Deno.test("main.ts runs as ./main.ts: a deno run shebang with the production flags, and its run bit", async () => {
  const first = (await Deno.readTextFile(`${ROOT}main.ts`)).split("\n", 1)[0];
  assert.equal(
    first,
    "#!/usr/bin/env -S deno run --allow-net --allow-env --allow-read --unstable-cron",
  );
  assert.ok(((await Deno.stat(`${ROOT}main.ts`)).mode ?? 0) & 0o100, "main.ts is executable");
  // git keeps the run bit, so a fresh clone has it too.
  const index = await new Deno.Command("git", { args: ["ls-files", "-s", "main.ts"], cwd: ROOT })
    .output();
  assert.match(new TextDecoder().decode(index.stdout), /^100755 /);
  const output = await new Deno.Command(`${ROOT}main.ts`, {
    args: ["--version"],
    cwd: await Deno.makeTempDir(),
    env: childEnv({ NO_COLOR: "1", PATH: `${dirname(Deno.execPath())}:${Deno.env.get("PATH")}` }),
    clearEnv: true,
  }).output();
  const decode = (bytes: Uint8Array) => new TextDecoder().decode(bytes);
  assert.deepEqual([output.code, decode(output.stdout), decode(output.stderr)], [
    0,
    `b2-private-cdn ${VERSION}\n`,
    "",
  ]);
});

Deno.test("main() ends quietly when the reader of its output has gone (| head, a closed terminal)", async () => {
  const child = new Deno.Command(Deno.execPath(), {
    args: [...RUN, "help", "settings"],
    cwd: ROOT,
    env: childEnv({ NO_COLOR: "1" }),
    clearEnv: true,
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  // Closed before the child has started, so every line it writes meets a closed pipe.
  await child.stdout.cancel();
  const { code, stderr } = await child.output();
  assert.equal(new TextDecoder().decode(stderr), "");
  assert.equal(code, 0);
});

Deno.test("a permission Deno refuses is exit 2 naming the flags to run with, not a retry", async () => {
  const env = {
    CLOUDFLARE_ACCOUNT_ID: FAKE_ACCOUNT_ID,
    CLOUDFLARE_API_TOKEN: CF_TOKEN,
    CLOUDFLARE_API_BASE_URL: "http://127.0.0.1:39998/client/v4",
  };
  const status = await spawn(["run", "--allow-env", "--allow-read", `${ROOT}main.ts`, "status"], {
    env,
  });
  // status says UNKNOWN (exit 3) on stdout, as a Nagios plugin that cannot check.
  assert.deepEqual([status.code, status.stderr], [3, ""]);
  assert.match(
    status.stdout,
    /^UNKNOWN - Requires net access to "127\.0\.0\.1:39998".*Run it as deno run --allow-net --allow-env --allow-read main\.ts status \(README: Permissions\)\.\n$/,
  );
  assert.doesNotMatch(status.stdout, /retrying|attempts/);
  assert.ok(!status.stdout.includes(CF_TOKEN));
  // Asked for JSON, it answers JSON even when it may not read its settings.
  const json = await spawn(["run", `${ROOT}main.ts`, "status", "--json"]);
  assert.deepEqual([json.code, json.stderr], [3, ""]);
  assert.deepEqual(JSON.parse(json.stdout), {
    state: "UNKNOWN",
    problem: "Requires env access, run again with the --allow-env flag. Run it as deno run " +
      "--allow-net --allow-env --allow-read main.ts status --json (README: Permissions).",
  });
  // The hint is the line that was run, with its own flags, and the permissions it lacked.
  const render = await spawn(["run", `${ROOT}main.ts`, "render", "--worker-cache-ttl", "2h"]);
  assert.equal(render.code, 2);
  assert.equal(
    render.stderr,
    "error: Requires env access, run again with the --allow-env flag. Run it as deno run " +
      "--allow-env --allow-read main.ts render --worker-cache-ttl 2h (README: Permissions).\n",
  );
  const missing = await spawn(["run", "--allow-env", `${ROOT}main.ts`, "--worker-name", "a b"]);
  assert.equal(missing.code, 2);
  assert.match(
    missing.stderr,
    /Run it as deno run --allow-net --allow-env --allow-read main\.ts refresh --worker-name 'a b' /,
  );
});

Deno.test("help is free: every help page and the version need no permission and no setting", async (t) => {
  const lines = [
    ["--help"],
    ["-h"],
    ["help"],
    ["help", "settings"],
    ["--version"],
    ...Object.keys(COMMANDS).flatMap((command) => [["help", command], [command, "--help"]]),
  ];
  for (const args of lines) {
    await t.step(`deno run main.ts ${args.join(" ")}`, async () => {
      // No permission flag, no settings, and a directory with no .env.
      const { code, stdout, stderr } = await spawn(["run", `${ROOT}main.ts`, ...args], {
        cwd: await Deno.makeTempDir(),
      });
      assert.deepEqual([code, stderr], [0, ""]);
      assert.notEqual(stdout, "");
    });
  }
  await t.step("keygen, which reads no setting either", async () => {
    const { code, stdout } = await spawn(["run", `${ROOT}main.ts`, "keygen"]);
    assert.equal(code, 0);
    assert.match(stdout, /^[A-Za-z0-9_-]{43}\n$/);
  });
  await t.step("deno task help", async () => {
    const { code, stdout } = await spawn(["task", "-q", "help"]);
    assert.equal(code, 0);
    assert.match(stdout, /^b2-private-cdn \d+\.\d+\.\d+: serve a private Backblaze B2 bucket/);
  });
});

Deno.test("main.ts as a subprocess: exit codes, stdout and stderr", async (t) => {
  const w = world();
  try {
    await t.step(
      "refresh from a .env file in the working directory",
      async () => {
        const cwd = await Deno.makeTempDir();
        const dotenv = Object.entries(w.env).map(([k, v]) => `${k}=${v}`).join(
          "\n",
        );
        await Deno.writeTextFile(
          `${cwd}/.env`,
          dotenv + "\nWORKER_NAME=from-dotenv\n",
        );
        const { code, stdout, stderr } = await spawn(RUN, {
          cwd,
          env: { WORKER_NAME: "from-env" },
        });
        assert.equal(stderr, "");
        assert.equal(code, 0);
        assert.match(stdout, /^Deployed worker "from-env" for bucket "photos"/);
        await Deno.remove(cwd, { recursive: true });
      },
    );
    await t.step("bad configuration exits 2", async () => {
      const { code, stdout, stderr } = await spawn([...RUN, "refresh"], {
        cwd: "/",
      });
      assert.equal(code, 2);
      assert.equal(stdout, "");
      assert.match(stderr, /^error: The configuration has 4 problems:/);
    });
    await t.step("a B2 failure exits 1", async () => {
      w.b2.fail("/b2api/v4/b2_authorize_account", {
        status: 401,
        code: "bad_auth_token",
      });
      const { code, stderr } = await spawn([...RUN, "refresh"], {
        cwd: "/",
        env: w.env,
      });
      assert.equal(code, 1);
      assert.match(
        stderr,
        /^error: Cannot authorize the B2 application key: B2 answered 401 bad_auth_token/,
      );
    });
    await t.step("--help and --version exit 0", async () => {
      const help = await spawn([...RUN, "--help"]);
      assert.equal(help.code, 0);
      assert.match(
        help.stdout,
        /Exit codes: 0 done, 1 the operation failed, 2 bad usage/,
      );
      const version = await spawn([...RUN, "--version"]);
      assert.match(version.stdout, /^b2-private-cdn \d+\.\d+\.\d+\n$/);
    });
  } finally {
    await w.close();
  }
});

Deno.test("the deno.json tasks carry the permissions their commands need", async (t) => {
  const w = world();
  try {
    await t.step("render", async () => {
      const { code, stdout } = await spawn(["task", "-q", "render", "--json"]);
      assert.equal(code, 0);
      assert.equal(JSON.parse(stdout).metadata.main_module, "worker.js");
    });
    await t.step("refresh, then status", async () => {
      const refresh = await spawn(["task", "-q", "refresh"], { env: w.env });
      assert.equal(refresh.code, 0, refresh.stderr);
      const status = await spawn(["task", "-q", "status"], { env: w.env });
      assert.equal(status.code, 0, status.stderr);
      assert.match(status.stdout, /^OK - worker "b2-private-cdn"/);
    });
    await t.step(
      "compile: the binary gets refresh's permissions and the worker's source",
      async () => {
        // deno compile cannot run here (it downloads denort), so this checks what it is given.
        const { tasks } = JSON.parse(await Deno.readTextFile(`${ROOT}deno.json`));
        const flags = (task: string) =>
          task.split(/\s+/).filter((arg) => arg.startsWith("--allow"));
        assert.deepEqual(flags(tasks.compile), flags(tasks.refresh));
        assert.match(tasks.compile, /--include worker_template\.ts .*main\.ts$/);
      },
    );
    await t.step("every command of main.ts has a task with exactly its permissions", async () => {
      const { tasks } = JSON.parse(await Deno.readTextFile(`${ROOT}deno.json`));
      for (const [command, { permissions }] of Object.entries(COMMANDS)) {
        if (command === "dev" || command === "demo") continue; // local/, below
        // deno.json turns on the unstable cron itself.
        const flags = permissions.replace(" --unstable-cron", "");
        assert.equal(tasks[command], `deno run ${flags}${flags && " "}main.ts ${command}`, command);
      }
      assert.match(tasks.dev, /^deno run -A --lock=deno\.lock local\/dev\.ts$/);
      assert.match(tasks.demo, /^deno run -A --lock=deno\.lock local\/demo\.ts$/);
    });
    await t.step("keygen, with no permission at all", async () => {
      const { code, stdout } = await spawn(["task", "-q", "keygen"]);
      assert.equal(code, 0);
      assert.match(stdout, /^[A-Za-z0-9_-]{43}\n$/);
    });
    await t.step("sign, with no network", async () => {
      const { code, stdout, stderr } = await spawn(
        ["task", "-q", "sign", "/members/a.txt", "--expires", "1h", "--url", "https://cdn.test"],
        { env: { WORKER_SIGNING_KEY: generateSigningKey(), WORKER_SIGNED_PREFIXES: "/members/" } },
      );
      assert.equal(code, 0, stderr);
      assert.match(stdout, /^https:\/\/cdn\.test\/members\/a\.txt\?/);
    });
    await t.step("purge and check-cache reach the network (a closed port: 1, not 2)", async () => {
      const closed = "http://127.0.0.1:9";
      const purge = await spawn(["task", "-q", "purge", "/a.txt", "--url", closed], {
        env: { WORKER_PURGE_KEY: "0123456789abcdef0123456789abcdef" },
      });
      assert.equal(purge.code, 1, purge.stderr);
      const check = await spawn(["task", "-q", "check-cache", "--url", `${closed}/a.txt`]);
      assert.equal(check.code, 1, check.stderr);
      assert.doesNotMatch(purge.stderr + check.stderr, /Requires net access/);
    });
  } finally {
    await w.close();
  }
});

Deno.test("deno.json's JSR version is the one --version prints", async () => {
  const config = JSON.parse(await Deno.readTextFile(`${ROOT}deno.json`));
  assert.equal(config.version, VERSION);
  assert.equal(config.exports, "./main.ts");
  for (const path of config.publish.include) {
    assert.ok(await Deno.stat(`${ROOT}${path}`), `${path} is published, so it must exist`);
  }
});

Deno.test("the README's crontab line works as written", async () => {
  const readme = await Deno.readTextFile(`${ROOT}README.md`);
  const line = readme.split("\n").find((l) => /^\d+ \d+ \* \* \* cd /.test(l));
  assert.ok(line, "the README has a crontab line");
  const command = line.split(/\s+/).slice(5).join(" ")
    .replace("/opt/b2-private-cdn", ROOT.replace(/\/$/, ""))
    .replace(/>>\s*\S+/, ">> $LOG");
  const w = world();
  const log = await Deno.makeTempFile();
  try {
    const env = {
      ...w.env,
      LOG: log,
      PATH: `${Deno.execPath().replace(/\/[^/]+$/, "")}:/usr/bin:/bin`,
    };
    const output = await new Deno.Command("/bin/sh", {
      args: ["-c", command],
      env: childEnv(env),
      clearEnv: true,
    }).output();
    assert.equal(output.code, 0, new TextDecoder().decode(output.stderr));
    assert.match(
      await Deno.readTextFile(log),
      /^Deployed worker "b2-private-cdn"/,
    );
  } finally {
    await Deno.remove(log);
    await w.close();
  }
});

/** Serves `root` over HTTP the way raw GitHub serves a repository's files, recording each path. */
function serveFiles(root: string) {
  const paths: string[] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (request) => {
    const path = new URL(request.url).pathname;
    paths.push(path);
    try {
      return new Response(await Deno.readFile(`${root}${path}`), {
        headers: { "content-type": "text/plain; charset=utf-8" },
      });
    } catch {
      return new Response("404: Not Found", { status: 404 });
    }
  });
  return {
    url: `http://127.0.0.1:${server.addr.port}`,
    paths,
    close: () => server.shutdown(),
  };
}

/** Runs a command until its stdout matches `pattern`, then presses Ctrl-C. */
async function untilPrinted(
  command: string,
  args: string[],
  options: { cwd: string; env: Record<string, string>; pattern: RegExp },
): Promise<{ code: number; stdout: string }> {
  const started = await startUntil(command, args, {
    pattern: options.pattern,
    cwd: options.cwd,
    env: { NO_COLOR: "1", ...options.env },
    signal: AbortSignal.timeout(60_000),
  });
  started.child.kill("SIGINT");
  const { code, stdout, stderr } = await started.finish();
  assertNoSecret(stdout, stderr);
  assert.match(stdout, options.pattern, stderr);
  return { code, stdout };
}

Deno.test("main.ts runs from a URL, outside the repository, fetching only what it needs", async (t) => {
  const w = world();
  const repo = serveFiles(ROOT.replace(/\/$/, ""));
  const cwd = await Deno.makeTempDir();
  const url = `${repo.url}/main.ts`;
  // --reload: Deno's cache keys remote modules by URL, and an earlier run on the same port would
  // otherwise be served from it (an older main.ts, and no fetch for repo.paths to see).
  const RUN_URL = ["run", "--reload", "--allow-net", "--allow-env", "--allow-read"];
  try {
    await t.step("render", async () => {
      const { code, stdout, stderr } = await spawn([...RUN_URL, url, "render", "--json"], { cwd });
      assert.equal(code, 0, stderr);
      assert.equal(JSON.parse(stdout).module, await loadWorkerModule());
    });
    await t.step("refresh, then status", async () => {
      const refresh = await spawn([...RUN_URL, url, "refresh"], { cwd, env: w.env });
      assert.equal(refresh.code, 0, refresh.stderr);
      assert.match(refresh.stdout, /^Deployed worker "b2-private-cdn"/);
      const status = await spawn([...RUN_URL, url, "status"], { cwd, env: w.env });
      assert.equal(status.code, 0, status.stderr);
      assert.match(status.stdout, /^OK - worker "b2-private-cdn"/);
    });
    await t.step("cron, with --unstable-cron", async () => {
      const { code } = await untilPrinted(Deno.execPath(), [
        ...RUN_URL,
        "--unstable-cron",
        url,
        "cron",
      ], { cwd, env: w.env, pattern: /Start-up check: token has/ });
      assert.equal(code, 0);
    });
    // Not the stand-ins, fixtures or bench: only what these commands use.
    assert.deepEqual([...new Set(repo.paths)].sort(), ["/main.ts", "/worker_template.ts"]);
  } finally {
    await repo.close();
    await Deno.remove(cwd, { recursive: true });
    await w.close();
  }
});

Deno.test("deno install -g gives a working b2-private-cdn command", async () => {
  const w = world();
  const repo = serveFiles(ROOT.replace(/\/$/, ""));
  const root = await Deno.makeTempDir();
  const cwd = await Deno.makeTempDir();
  try {
    const readme = await Deno.readTextFile(`${ROOT}README.md`);
    const line = readme.split("\n").find((l) => l.startsWith("deno install -g -n b2-private-cdn "));
    assert.ok(line, "the README shows deno install");
    // The README installs from a clone's path; a URL that serves the same files works alike.
    const args = line.split(/\s+/).slice(1).map((arg) =>
      arg.replace(/^\/srv\/b2-private-cdn\/main\.ts$/, `${repo.url}/main.ts`)
    );
    assert.ok(args.includes(`${repo.url}/main.ts`), "the README installs main.ts by path");
    const install = await spawn([...args, "--root", root], { cwd });
    assert.equal(install.code, 0, install.stderr);
    const command = `${root}/bin/b2-private-cdn`;
    const refresh = await new Deno.Command(command, {
      args: ["refresh"],
      cwd,
      env: childEnv({
        ...w.env,
        PATH: `${Deno.execPath().replace(/\/[^/]+$/, "")}:/usr/bin:/bin`,
      }),
      clearEnv: true,
    }).output();
    const decode = (bytes: Uint8Array) => new TextDecoder().decode(bytes);
    assertNoSecret(decode(refresh.stdout), decode(refresh.stderr));
    assert.equal(refresh.code, 0, decode(refresh.stderr));
    assert.match(decode(refresh.stdout), /^Deployed worker "b2-private-cdn"/);
  } finally {
    await repo.close();
    await Deno.remove(root, { recursive: true });
    await Deno.remove(cwd, { recursive: true });
    await w.close();
  }
});

Deno.test("the production tasks download no npm package into an empty Deno cache", async () => {
  // A registry that records what is asked of it and has nothing.
  const asked: string[] = [];
  const registry = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (request) => {
    asked.push(new URL(request.url).pathname);
    return new Response("{}", { status: 404 });
  });
  const denoDir = await Deno.makeTempDir();
  try {
    for (const task of ["refresh", "status", "render", "cron"]) {
      const { code, stderr } = await spawn(["task", "-q", task, "--help"], {
        env: {
          DENO_DIR: denoDir,
          NPM_CONFIG_REGISTRY: `http://127.0.0.1:${registry.addr.port}/`,
        },
      });
      assert.equal(code, 0, `${task}: ${stderr}`);
    }
    const render = await spawn(["task", "-q", "render", "--json"], {
      env: { DENO_DIR: denoDir, NPM_CONFIG_REGISTRY: `http://127.0.0.1:${registry.addr.port}/` },
    });
    assert.equal(render.code, 0, render.stderr);
    assert.deepEqual(asked, []);
    const files = [];
    for await (const entry of Deno.readDir(denoDir)) files.push(entry.name);
    if (files.includes("npm")) {
      for await (const entry of Deno.readDir(`${denoDir}/npm`)) files.push(`npm/${entry.name}`);
    }
    assert.deepEqual(files.filter((name) => name.startsWith("npm/")), []);
  } finally {
    await registry.shutdown();
    await Deno.remove(denoDir, { recursive: true });
  }
});

Deno.test("cron schedules the refresh and makes the start-up check, until Ctrl-C", async () => {
  const w = world();
  try {
    const { code, stdout, stderr } = await whileServing(["cron"], {
      env: w.env,
      urlPattern: /Start-up check: (.+)\n/,
    }, (decision) => {
      assert.match(decision, /does not exist; run refresh; refreshed until \S+Z$/);
      return Promise.resolve();
    });
    assertNoSecret(stdout, stderr);
    assert.equal(code, 0);
    assert.match(stdout, /Scheduled "b2-private-cdn refresh" at "17 4 \* \* \*" \(UTC\)/);
    assert.equal(w.cloudflare.scripts.get("b2-private-cdn")?.uploads, 1);
  } finally {
    await w.close();
  }
});

// ---------------------------------------------------------------------------
// Deno Deploy: the module driven the way the platform drives it
// ---------------------------------------------------------------------------

/** A stand-in for what Deno Deploy hands `startOnDeploy()`, recording each call in order. */
function deployPlatform(options: {
  env: Record<string, string | undefined>;
  now?: () => number;
  fetch?: typeof fetch;
}) {
  const calls: string[] = [];
  const registered: Parameters<CronRegistrar>[] = [];
  const lines: string[] = [];
  const env = { DENO_DEPLOY: "1", ...options.env };
  const platform: DeployPlatform = {
    env: () => (calls.push("env"), env),
    cron: (...args) => (calls.push("cron"), registered.push(args)),
    serve: () => calls.push("serve"),
    log: (line) => lines.push(line),
    error: (line) => lines.push(line),
    denoVersion: "2.9.6",
    ctx: ctxFor({ ...(options.now && { now: options.now }), fetch: options.fetch ?? fetch }),
  };
  assertNoSecret(...lines);
  return { platform, calls, registered, lines };
}

Deno.test("startOnDeploy() registers one constant cron, then serves, settings or none", async (t) => {
  const w = world();
  try {
    const seen: unknown[] = [];
    for (
      const [name, env] of [
        ["no settings (the warm-up's context)", {}],
        ["the production settings", { ...w.env, REFRESH_SCHEDULE: "61 4 * * *" }],
      ] as const
    ) {
      await t.step(name, () => {
        const fetches: string[] = [];
        const { platform, calls, registered, lines } = deployPlatform({
          env,
          fetch: (input) => (fetches.push(String(input)), Promise.reject(new Error("no network"))),
        });
        startOnDeploy(platform);
        assert.deepEqual(calls, ["cron", "serve"], "the cron first, then the server; no settings");
        assert.deepEqual(fetches, [], "nothing touches the network at load");
        const [cronName, schedule, options] = registered[0]!;
        seen.push([cronName, schedule, options]);
        assert.match(lines[0]!, /^b2-private-cdn \d+\.\d+\.\d+ on Deno 2\.9\.6 \(Deno Deploy\)$/);
      });
    }
    assert.deepEqual(seen, [
      ["b2-private-cdn refresh", "17 * * * *", { backoffSchedule: [60_000, 300_000, 900_000] }],
      ["b2-private-cdn refresh", "17 * * * *", { backoffSchedule: [60_000, 300_000, 900_000] }],
    ]);
    assert.equal(w.b2.requests.length + w.cloudflare.requests.length, 0);
  } finally {
    await w.close();
  }
});

Deno.test("a Deploy cron run refreshes only when the token is due", async () => {
  const w = world();
  try {
    let now = Date.now();
    const { platform, registered, lines } = deployPlatform({ env: w.env, now: () => now });
    startOnDeploy(platform);
    const run = registered[0]![3];
    await run();
    assert.match(lines.at(-1)!, /^Refreshed: worker "b2-private-cdn" does not exist; run refresh;/);
    await run();
    assert.match(lines.at(-1)!, /^Not due: token has 6d 23h left, more than the margin of 6d 0h$/);
    assert.equal(w.cloudflare.scripts.get("b2-private-cdn")?.uploads, 1);
    now += 86_400_000 + 1000;
    await run();
    assert.match(lines.at(-1)!, /^Refreshed: less than 6d 0h left; run refresh; refreshed until/);
    assert.equal(w.cloudflare.scripts.get("b2-private-cdn")?.uploads, 2);
    assertNoSecret(...lines);
  } finally {
    await w.close();
  }
});

Deno.test("a Deploy cron run with missing settings fails, naming what to set", async () => {
  const fetches: string[] = [];
  const { platform, registered, lines } = deployPlatform({
    env: { B2_APPLICATION_KEY: B2_KEY, REFRESH_SCHEDULE: "not a schedule" },
    fetch: (input) => (fetches.push(String(input)), Promise.reject(new Error("no network"))),
  });
  startOnDeploy(platform);
  await assert.rejects(registered[0]![3](), /Set B2_APPLICATION_KEY_ID/);
  const error = lines.find((line) => line.startsWith("error: "));
  assert.match(error!, /Set B2_APPLICATION_KEY_ID/);
  assert.match(error!, /CLOUDFLARE_API_TOKEN/);
  assert.doesNotMatch(error!, /REFRESH_SCHEDULE/, "ignored on Deploy, so never a problem there");
  assert.deepEqual(fetches, []);
  assertNoSecret(...lines);
});

Deno.test("a Deploy cron run says REFRESH_SCHEDULE is ignored there", async () => {
  const w = world();
  try {
    const { platform, registered, lines } = deployPlatform({
      env: { ...w.env, REFRESH_SCHEDULE: "5 3 * * *" },
    });
    startOnDeploy(platform);
    await registered[0]![3]();
    assert.ok(
      lines.some((line) =>
        /^REFRESH_SCHEDULE is ignored on Deno Deploy: .*"17 \* \* \* \*"/.test(line)
      ),
      lines.join("\n"),
    );
    assert.equal(w.cloudflare.scripts.get("b2-private-cdn")?.uploads, 1);
    assertNoSecret(...lines);
  } finally {
    await w.close();
  }
});

Deno.test("off the production timeline a Deploy cron run does nothing", async () => {
  const w = world();
  try {
    const { platform, registered, lines } = deployPlatform({
      env: { ...w.env, DENO_TIMELINE: "git-branch/try-things" },
    });
    startOnDeploy(platform);
    await registered[0]![3]();
    assert.equal(
      lines.at(-1),
      'Skipped: this is timeline "git-branch/try-things"; only the production timeline ' +
        "refreshes the worker.",
    );
    assert.equal(w.b2.requests.length + w.cloudflare.requests.length, 0);
  } finally {
    await w.close();
  }
});

Deno.test("on Deploy, / answers 200 and /health the token's state, read once per 5 minutes", async (t) => {
  const w = world();
  try {
    let now = Date.now();
    const { platform, registered } = deployPlatform({ env: w.env, now: () => now });
    const app = startOnDeploy(platform);
    const get = async (path: string) => {
      const response = await app.handle(new Request(`https://app.deno.net${path}`));
      const text = await response.text();
      assertNoSecret(text);
      return { status: response.status, text };
    };
    const reads = () =>
      w.cloudflare.requests.filter((r) => r.method === "GET" && r.path.includes("/workers/"))
        .length;
    await t.step("nothing deployed yet: / is 200, /health 503 missing", async () => {
      assert.equal((await get("/")).status, 200);
      const health = await get("/health");
      assert.equal(health.status, 503);
      assert.equal(JSON.parse(health.text).state, "missing");
      assert.equal(reads(), 1);
    });
    await t.step("later requests within 5 minutes get the same answer, no new read", async () => {
      await registered[0]![3]();
      const before = reads();
      for (let i = 0; i < 5; i++) assert.equal((await get("/health")).status, 503);
      assert.equal(reads(), before);
    });
    await t.step("after 5 minutes: healthy, with the expiry and time left", async () => {
      now += 300_000;
      const health = await get("/health");
      assert.equal(health.status, 200);
      const body = JSON.parse(health.text);
      assert.equal(body.state, "healthy");
      assert.equal(body.worker, "b2-private-cdn");
      assert.match(body.expiresAt, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
      assert.ok(body.remaining > 6 * 86_400);
    });
    await t.step("less than 48h left: 503 short", async () => {
      now += 6 * 86_400_000;
      const health = await get("/health");
      assert.equal(health.status, 503);
      assert.equal(JSON.parse(health.text).state, "short");
    });
    await t.step("Cloudflare refuses: 200 unknown, not 503", async () => {
      now += 300_000;
      w.cloudflare.fail("/accounts/", {
        status: 403,
        code: 10000,
        message: "Authentication error",
      });
      const health = await get("/health");
      assert.equal(health.status, 200);
      const body = JSON.parse(health.text);
      assert.equal(body.state, "unknown");
      assert.match(body.problem, /403/);
    });
    await t.step("no settings (the warm-up): / 200, /health 200 unknown, no request", async () => {
      const bare = deployPlatform({ env: {} });
      const app = startOnDeploy(bare.platform);
      assert.equal((await app.handle(new Request("https://x.deno.net/"))).status, 200);
      const health = await app.handle(new Request("https://x.deno.net/health"));
      assert.equal(health.status, 200);
      const body = await health.json();
      assert.equal(body.state, "unknown");
      assert.match(body.problem, /CLOUDFLARE_API_TOKEN/);
    });
    await t.step("other paths are 404, other methods 405", async () => {
      assert.equal((await get("/refresh")).status, 404);
      const post = await app.handle(new Request("https://app.deno.net/health", { method: "POST" }));
      assert.equal(post.status, 405);
    });
  } finally {
    await w.close();
  }
});

Deno.test("runtimeProblem() names the Deno this tool needs, and what is missing", () => {
  assert.equal(runtimeProblem("2.9.6"), undefined);
  assert.equal(runtimeProblem("2.8.2"), undefined);
  assert.equal(runtimeProblem("3.0.0"), undefined);
  assert.equal(
    runtimeProblem("2.5.0", { "node:util parseEnv": undefined }),
    "b2-private-cdn needs Deno 2.8.2 or newer (this one lacks node:util parseEnv), and this is " +
      "Deno 2.5.0: upgrade Deno (deno upgrade) and run it again.",
  );
  assert.match(
    runtimeProblem("2.8.1", {})!,
    /needs Deno 2\.8\.2 or newer, and this is Deno 2\.8\.1/,
  );
});

Deno.test("on Deno Deploy, main.ts registers its cron and serves, with no request at load", async () => {
  const w = world();
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${ROOT}main.ts`],
    cwd: ROOT,
    // DENO_SERVE_ADDRESS is how the runtime is told where Deno.serve listens.
    env: childEnv({
      ...w.env,
      NO_COLOR: "1",
      DENO_DEPLOY: "1",
      DENO_TIMELINE: "production",
      DENO_SERVE_ADDRESS: "tcp:127.0.0.1:0",
    }),
    clearEnv: true,
    // A module that never serves would wait for its cron forever: fail instead.
    signal: AbortSignal.timeout(30_000),
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const stdout = new Response(child.stdout).text();
  const reader = child.stderr.pipeThrough(new TextDecoderStream()).getReader();
  let stderr = "";
  try {
    let url: string | undefined;
    while (!url) {
      const { value, done } = await reader.read();
      if (done) break;
      stderr += value;
      url = /Listening on (http:\/\/\S+?)\/?\n/.exec(stderr)?.[1];
    }
    assert.ok(url, stderr);
    const root = await fetch(`${url}/`);
    assert.equal(root.status, 200);
    await root.body?.cancel();
    assert.equal(w.b2.requests.length + w.cloudflare.requests.length, 0, "no request at load");
    const health = await fetch(`${url}/health`);
    assert.equal(health.status, 503);
    assert.equal((await health.json()).state, "missing");
  } finally {
    child.kill("SIGTERM");
    await child.status;
    await reader.cancel();
    await w.close();
  }
  const out = await stdout;
  assertNoSecret(out, stderr);
  assert.match(out, /^b2-private-cdn \S+ on Deno \S+ \(Deno Deploy\)\n/);
  assert.match(out, /^Registered "b2-private-cdn refresh" at "17 \* \* \* \*" \(UTC\)$/m);
});

// ---------------------------------------------------------------------------
// Signed links: configuration, upload, sign, keygen
// ---------------------------------------------------------------------------

const SIGNING_KEY = generateSigningKey();
const PREVIOUS_SIGNING_KEY = generateSigningKey();
secretsSeen.add(SIGNING_KEY).add(PREVIOUS_SIGNING_KEY);
/** 2026-12-01T00:00:00Z: sign's clock in these tests. */
const SIGN_NOW = Date.parse("2026-12-01T00:00:00Z");

Deno.test("parseConfig() refuses protected prefixes without a key, weak keys and half rotations", async (t) => {
  const cases: { name: string; settings: Record<string, string>; expect: RegExp[] }[] = [
    {
      name: "prefixes without a key",
      settings: { WORKER_SIGNED_PREFIXES: "/members/" },
      expect: [/Set WORKER_SIGNING_KEY: WORKER_SIGNED_PREFIXES protects paths.*keygen/],
    },
    {
      name: "malformed prefixes",
      settings: {
        WORKER_SIGNED_PREFIXES: "members/,/a//b/,/a/../b/,/100%/",
        WORKER_SIGNING_KEY: SIGNING_KEY,
      },
      expect: [
        /WORKER_SIGNED_PREFIXES must list paths like \/members\/.*not "members\/"/,
        /not "\/a\/\/b\/"/,
        /not "\/a\/\.\.\/b\/"/,
        /not "\/100%\/"/,
      ],
    },
    {
      name: "a short key",
      settings: { WORKER_SIGNING_KEY: SIGNING_KEY.slice(0, 40) },
      expect: [/WORKER_SIGNING_KEY holds 30 bytes, fewer than the 32.*keygen/],
    },
    {
      name: "a key that is not base64url",
      settings: { WORKER_SIGNING_KEY: `${SIGNING_KEY.slice(0, 42)}+/` },
      expect: [/WORKER_SIGNING_KEY must be base64url/],
    },
    {
      name: "a key long enough but not random",
      settings: { WORKER_SIGNING_KEY: "correct-horse-battery-staple".repeat(3) },
      expect: [/WORKER_SIGNING_KEY does not look random/],
    },
    {
      name: "a previous key without its end",
      settings: { WORKER_SIGNING_KEY: SIGNING_KEY, WORKER_SIGNING_KEY_PREVIOUS: "A".repeat(43) },
      expect: [
        /WORKER_SIGNING_KEY_PREVIOUS does not look random/,
        /Set WORKER_SIGNING_KEY_PREVIOUS_UNTIL/,
      ],
    },
    {
      name: "an end without a previous key, a bad cap",
      settings: {
        WORKER_SIGNING_KEY: SIGNING_KEY,
        WORKER_SIGNING_KEY_PREVIOUS_UNTIL: "2026-12-31",
        WORKER_SIGNED_MAX_TTL: "30s",
      },
      expect: [
        /WORKER_SIGNING_KEY_PREVIOUS_UNTIL is set without WORKER_SIGNING_KEY_PREVIOUS/,
        /WORKER_SIGNED_MAX_TTL must be a duration from 1m to 365d, written 90s/,
      ],
    },
    {
      name: "an end that is no time",
      settings: {
        WORKER_SIGNING_KEY: SIGNING_KEY,
        WORKER_SIGNING_KEY_PREVIOUS: PREVIOUS_SIGNING_KEY,
        WORKER_SIGNING_KEY_PREVIOUS_UNTIL: "next tuesday",
      },
      expect: [/WORKER_SIGNING_KEY_PREVIOUS_UNTIL must be an ISO 8601 time/],
    },
    {
      name: "a folder named like the index file, which could mean either",
      settings: {
        WORKER_SIGNED_PREFIXES: "/solo/index.html/,/members/",
        WORKER_SIGNING_KEY: SIGNING_KEY,
      },
      expect: [
        /WORKER_SIGNED_PREFIXES: "\/solo\/index.html\/" is a folder named like WORKER_INDEX_FILE \(index.html\): write "\/solo\/index.html" to protect that file \(and \/solo\/, which serves it\), or "\/solo\/" to protect the whole folder\./,
      ],
    },
    {
      name: "a prefix outside /file/<bucket>/ in B2's URL shape",
      settings: {
        WORKER_URL_STYLE: "b2",
        B2_BUCKET_NAME: "photos",
        WORKER_SIGNED_PREFIXES: "/members/,/file/photos/paid/",
        WORKER_SIGNING_KEY: SIGNING_KEY,
      },
      expect: [
        /with WORKER_URL_STYLE=b2 every path is \/file\/photos\/<name>, so "\/members\/" would protect nothing; write it as \/file\/photos\/members\/\.$/,
      ],
    },
  ];
  for (const { name, settings, expect } of cases) {
    await t.step(name, () => {
      assert.throws(() => parseConfig(settings), (error: Error) => {
        for (const pattern of expect) assert.match(error.message, pattern);
        for (const secret of [SIGNING_KEY, PREVIOUS_SIGNING_KEY]) {
          assert.ok(!error.message.includes(secret), "the message shows a key");
        }
        return error.name === "ConfigError";
      });
    });
  }
});

Deno.test("parseConfig() reads the signing settings into canonical prefixes", () => {
  const config = parseConfig({
    WORKER_SIGNED_PREFIXES: " /members/, /%6Dedia , /caf%C3%A9/,/",
    WORKER_SIGNING_KEY: SIGNING_KEY,
    WORKER_SIGNING_KEY_PREVIOUS: PREVIOUS_SIGNING_KEY,
    WORKER_SIGNING_KEY_PREVIOUS_UNTIL: "2026-12-31T12:00:00+01:00",
    WORKER_SIGNED_MAX_TTL: "30d",
  });
  assert.deepEqual(config.worker.signing, {
    prefixes: ["/members/", "/media/", "/café/", "/"],
    key: SIGNING_KEY,
    previousKey: PREVIOUS_SIGNING_KEY,
    previousUntil: Date.parse("2026-12-31T11:00:00Z"),
    maxTtl: 30 * 86400,
    readings: [
      "/members/ (a folder: it and every path under it)",
      "/media (a file; and every path under /media/, were it a folder)",
      "/caf%C3%A9/ (a folder: it and every path under it)",
      "/ (a folder: it and every path under it)",
    ],
  });
  assert.equal(parseConfig({}).worker.signing, undefined, "no setting, no signing");
});

Deno.test("parseConfig() reads a prefix naming the index file as that file and its folder", () => {
  const settings = { WORKER_SIGNED_PREFIXES: "/solo/index.html", WORKER_SIGNING_KEY: SIGNING_KEY };
  assert.deepEqual(parseConfig(settings).worker.signing?.readings, [
    "/solo/index.html (a file, and /solo/, which serves it; and every path under " +
    "/solo/index.html/, were it a folder)",
  ]);
  // Another index file: the same prefix is a file like any other.
  const other = parseConfig({ ...settings, WORKER_INDEX_FILE: "default.htm" });
  assert.deepEqual(other.worker.signing?.readings, [
    "/solo/index.html (a file; and every path under /solo/index.html/, were it a folder)",
  ]);
});

Deno.test("refresh uploads the signing keys only as secret bindings, and never prints them", async () => {
  const w = world();
  try {
    const env = {
      WORKER_SIGNED_PREFIXES: "/members/,/caf%C3%A9/",
      WORKER_SIGNING_KEY: SIGNING_KEY,
      WORKER_SIGNING_KEY_PREVIOUS: PREVIOUS_SIGNING_KEY,
      WORKER_SIGNING_KEY_PREVIOUS_UNTIL: "2026-12-31T00:00:00Z",
    };
    const dryRun = await w.run(["refresh", "--dry-run", "--json"], { env });
    assert.equal(dryRun.code, 0);
    const masked = bindingTexts(JSON.parse(dryRun.stdout).metadata);
    assert.equal(masked.WORKER_SIGNING_KEY, "(secret, not shown)");
    assert.equal(masked.WORKER_SIGNING_KEY_PREVIOUS, "(secret, not shown)");
    const { code, stdout, stderr } = await w.run(["refresh", "--verbose"], { env });
    assert.equal(code, 0, stderr);
    assert.match(
      stderr,
      /Signed links: \/members\/ \(a folder: it and every path under it\); \/caf%C3%A9\/ \(a folder/,
    );
    for (const text of [dryRun.stdout, dryRun.stderr, stdout, stderr]) {
      assert.ok(!text.includes(SIGNING_KEY) && !text.includes(PREVIOUS_SIGNING_KEY), text);
    }
    const script = w.cloudflare.scripts.get("b2-private-cdn");
    assert.ok(script);
    const signing = script.metadata.bindings.filter((b) => /SIGN/.test(b.name));
    assert.deepEqual(signing, [
      // Percent-encoded, since the worker decodes what it reads once.
      { type: "plain_text", name: "WORKER_SIGNED_PREFIXES", text: "/members/,/caf%C3%A9/" },
      { type: "plain_text", name: "WORKER_SIGNED_MAX_TTL", text: "604800" },
      { type: "secret_text", name: "WORKER_SIGNING_KEY", text: SIGNING_KEY },
      { type: "secret_text", name: "WORKER_SIGNING_KEY_PREVIOUS", text: PREVIOUS_SIGNING_KEY },
      {
        type: "plain_text",
        name: "WORKER_SIGNING_KEY_PREVIOUS_UNTIL",
        text: "2026-12-31T00:00:00Z",
      },
    ]);
    assert.ok(!script.module.includes(SIGNING_KEY));
  } finally {
    await w.close();
  }
});

/** Runs `main.ts sign ...` in-process with sign's clock at SIGN_NOW. */
async function sign(
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const stdout: string[] = [];
  const stderr: string[] = [];
  const code = await run({
    args: ["sign", ...args],
    env: {
      WORKER_SIGNED_PREFIXES: "/members/,/course1/",
      WORKER_SIGNING_KEY: SIGNING_KEY,
      WORKER_DOMAIN: "cdn.example.com",
      ...env,
    },
    readEnvFile: () => Promise.resolve(undefined),
    io: { stdout: (t) => stdout.push(t), stderr: (t) => stderr.push(t) },
    ctx: {
      now: () => SIGN_NOW,
      fetch: () => Promise.reject(new Error("sign must not use the network")),
    },
  });
  assertNoSecret(...stdout, ...stderr);
  return { code, stdout: stdout.join("\n"), stderr: stderr.join("\n") };
}

Deno.test("sign prints the link the exported signLink() makes", async (t) => {
  const expires = SIGN_NOW / 1000 + 3600;
  await t.step("host from WORKER_DOMAIN", async () => {
    const { code, stdout, stderr } = await sign(["/members/caf%C3%A9 1.mp4", "--expires", "1h"]);
    assert.deepEqual([code, stderr], [0, ""]);
    const { url } = await signLink("https://cdn.example.com", "/members/café 1.mp4", {
      key: SIGNING_KEY,
      expires,
    });
    assert.equal(stdout, url);
    assert.match(stdout, /^https:\/\/cdn\.example\.com\/members\/caf%C3%A9%201\.mp4\?exp=\d+&sig=/);
  });
  await t.step("host from a concrete WORKER_ROUTE, or --url", async () => {
    const route = await sign(["/members/a", "--expires", "1h"], {
      WORKER_DOMAIN: "",
      WORKER_ROUTE: "media.example.com/members/*",
    });
    assert.match(route.stdout, /^https:\/\/media\.example\.com\/members\/a\?/);
    // Cloudflare takes a scheme in a route pattern (developers.cloudflare.com/workers/
    // configuration/routing/routes/), but then runs the worker for that scheme only: our
    // rule refuses it, in sign as in every command, saying what to write instead.
    const schemed = await sign(["/members/a", "--expires", "1h"], {
      WORKER_DOMAIN: "",
      WORKER_ROUTE: "https://media.example.com/members/*",
    });
    assert.equal(schemed.code, 2);
    assert.match(
      schemed.stderr,
      /WORKER_ROUTE must not start with https:\/\/: write "media\.example\.com\/members\/\*"/,
    );
    const flag = await sign([
      "/members/a",
      "--expires",
      "1h",
      "--url",
      "http://127.0.0.1:8787",
    ]);
    assert.match(flag.stdout, /^http:\/\/127\.0\.0\.1:8787\/members\/a\?/);
  });
  await t.step("--json with a prefix, a start and a download name", async () => {
    const { code, stdout } = await sign([
      "--prefix",
      "/course1/",
      "--expires",
      "2026-12-02T00:00:00Z",
      "--not-before",
      "10m",
      "--download-name",
      "Lesson.mp4",
      "--json",
    ]);
    assert.equal(code, 0);
    const link = JSON.parse(stdout);
    const { sig, ...query } = Object.fromEntries(new URLSearchParams(link.query));
    assert.deepEqual({ ...link, url: undefined, query: undefined }, {
      path: "/course1/",
      prefix: true,
      expires: "2026-12-02T00:00:00Z",
      notBefore: "2026-12-01T00:10:00Z",
      downloadName: "Lesson.mp4",
      url: undefined,
      query: undefined,
    });
    assert.deepEqual(query, {
      exp: String(SIGN_NOW / 1000 + 86400),
      nbf: String(SIGN_NOW / 1000 + 600),
      dl: "Lesson.mp4",
      scope: "/course1/",
    });
    assert.match(sig!, /^[A-Za-z0-9_-]{43}$/);
    assert.equal(link.url, `https://cdn.example.com/course1/?${link.query}`);
  });
  await t.step("the folder of a protected index file, in the worker's one spelling", async () => {
    const env = { WORKER_SIGNED_PREFIXES: "/solo/index.html" };
    const folder = await sign(["/s%6Flo/", "--expires", "1h"], env);
    assert.equal(folder.code, 0, folder.stderr);
    assert.match(folder.stdout, /^https:\/\/cdn\.example\.com\/solo\/\?exp=\d+&sig=/);
    const uploads = await sign(["/members/a@2x,b.png", "--expires", "1h"]);
    assert.match(uploads.stdout, /^https:\/\/cdn\.example\.com\/members\/a@2x,b\.png\?exp=/);
    const neighbour = await sign(["/solo/other.txt", "--expires", "1h"], env);
    assert.equal(neighbour.code, 2);
  });
});

Deno.test("sign exits 2 on a link the worker would refuse, naming the fix", async (t) => {
  const cases: [string, string[], Record<string, string>, RegExp][] = [
    ["no --expires", ["/members/a"], {}, /sign needs --expires/],
    [
      "an expiry in the past",
      ["/members/a", "--expires", "2026-11-30T00:00:00Z"],
      {},
      /--expires must be in the future/,
    ],
    [
      "an expiry beyond the cap",
      ["/members/a", "--expires", "8d"],
      {},
      /more than WORKER_SIGNED_MAX_TTL \(7d 0h\)/,
    ],
    [
      "a cap that was lowered",
      ["/members/a", "--expires", "2h"],
      { WORKER_SIGNED_MAX_TTL: "1h" },
      /more than WORKER_SIGNED_MAX_TTL/,
    ],
    [
      "an expiry that is no time",
      ["/members/a", "--expires", "soon"],
      {},
      /--expires must be a duration/,
    ],
    [
      "a malformed path",
      ["/members/../secret", "--expires", "1h"],
      {},
      /The path must be a URL path/,
    ],
    ["a bare percent", ["/members/100%", "--expires", "1h"], {}, /"%" written as %25/],
    [
      "a public path",
      ["/course10/a", "--expires", "1h"],
      {},
      /"\/course10\/a" is not under WORKER_SIGNED_PREFIXES/,
    ],
    [
      "a prefix wider than protected",
      ["--prefix", "/", "--expires", "1h"],
      {},
      /a prefix must lie within them/,
    ],
    [
      "a prefix without its slash",
      ["--prefix", "/course1", "--expires", "1h"],
      {},
      /A prefix ends in "\/"/,
    ],
    [
      "a start after the end",
      ["/members/a", "--expires", "1h", "--not-before", "2h"],
      {},
      /not-before time must come before the expiry/,
    ],
    [
      "a download name with a slash",
      ["/members/a", "--expires", "1h", "--download-name", "a/b"],
      {},
      /download name must be a file name/,
    ],
    ["no host", ["/members/a", "--expires", "1h"], {
      WORKER_DOMAIN: "",
      WORKER_ROUTE: "*.example.com/*",
    }, /Give --url/],
    ["no key", ["/members/a", "--expires", "1h"], {
      WORKER_SIGNED_PREFIXES: "",
      WORKER_SIGNING_KEY: "",
    }, /Set WORKER_SIGNING_KEY to the key/],
    [
      "nothing protected",
      ["/members/a", "--expires", "1h"],
      { WORKER_SIGNED_PREFIXES: "" },
      /Set WORKER_SIGNED_PREFIXES/,
    ],
    ["no path", [], {}, /sign needs one path, or one --prefix/],
    [
      "two paths",
      ["/members/a", "/members/b", "--expires", "1h"],
      {},
      /Unexpected arguments: \/members\/b/,
    ],
  ];
  for (const [name, args, env, pattern] of cases) {
    await t.step(name, async () => {
      const { code, stdout, stderr } = await sign(args, env);
      assert.deepEqual([code, stdout], [2, ""]);
      assert.match(stderr, pattern);
      assert.ok(!stderr.includes(SIGNING_KEY));
    });
  }
});

Deno.test("keygen prints a fresh key that the configuration accepts", async () => {
  const keys: string[] = [];
  for (let i = 0; i < 2; i++) {
    const stdout: string[] = [];
    const stderr: string[] = [];
    const code = await run({
      args: ["keygen"],
      // A bad key in the configuration does not stop keygen: it is how to replace one.
      env: { WORKER_SIGNING_KEY: "weak" },
      readEnvFile: () => Promise.resolve(undefined),
      io: { stdout: (t) => stdout.push(t), stderr: (t) => stderr.push(t) },
    });
    assert.equal(code, 0);
    assert.match(stderr.join(""), /WORKER_SIGNING_KEY.*shown only this once/);
    keys.push(stdout.join(""));
  }
  assert.notEqual(keys[0], keys[1]);
  for (const key of keys) {
    assert.match(key, /^[A-Za-z0-9_-]{43}$/);
    assert.equal(parseConfig({ WORKER_SIGNING_KEY: key }).worker.signing?.key, key);
  }
});

Deno.test("sign and keygen as a subprocess: exit codes, and the key only on keygen's stdout", async () => {
  const RUN_SIGN = ["run", "--allow-env", "--allow-read", `${ROOT}main.ts`];
  const keygen = await spawn([...RUN_SIGN, "keygen", "--json"], { cwd: "/" });
  assert.equal(keygen.code, 0);
  const { key } = JSON.parse(keygen.stdout);
  secretsSeen.add(key);
  const env = { WORKER_SIGNED_PREFIXES: "/members/", WORKER_SIGNING_KEY: key };
  const good = await spawn(
    [
      ...RUN_SIGN,
      "sign",
      "/members/a.mp4",
      "--expires",
      "1h",
      "--url",
      "https://cdn.example.com",
    ],
    { cwd: "/", env },
  );
  assert.deepEqual([good.code, good.stderr], [0, ""]);
  assert.match(
    good.stdout,
    /^https:\/\/cdn\.example\.com\/members\/a\.mp4\?exp=\d+&sig=[\w-]{43}\n$/,
  );
  const bad = await spawn([...RUN_SIGN, "sign", "/public/a.mp4", "--expires", "1h"], {
    cwd: "/",
    env,
  });
  assert.deepEqual([bad.code, bad.stdout], [2, ""]);
  assert.match(bad.stderr, /not under WORKER_SIGNED_PREFIXES/);
  for (const text of [good.stdout, good.stderr, bad.stderr]) assert.ok(!text.includes(key));
});

Deno.test("no secret reaches any output", async (t) => {
  // Every run's output is checked where it is made (world().run, spawn); this test makes its own
  // runs of the paths where a secret is nearest: verbose steps, JSON reports, refusals, an API
  // that echoes the request's credentials back, and a subprocess.
  const w = world();
  const echo = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    // B2's error shape and Cloudflare's envelope at once, each message the credentials sent.
    (request) => {
      const message = request.headers.get("authorization") ?? request.headers.get("x-auth-key");
      return Response.json(
        { code: "unauthorized", message, success: false, errors: [{ code: 10000, message }] },
        { status: 401 },
      );
    },
  );
  const echoPage = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    (request) =>
      new Response(
        `${request.headers.get("authorization") ?? request.headers.get("x-auth-key")}<pre>`,
      ),
  );
  const outputs: string[] = [];
  const runs: [string, string[], Record<string, string>?][] = [
    ["refresh --verbose", ["refresh", "--verbose"]],
    ["refresh --json", ["refresh", "--json"]],
    ["refresh --dry-run --verbose", ["refresh", "--dry-run", "--verbose"]],
    ["status --verbose", ["status", "--verbose"]],
    ["status --json", ["status", "--json"]],
    ["render --json", ["render", "--json"]],
    ["purge, worker unreachable", ["purge", "--all", "--verbose", "--url", "http://127.0.0.1:9"]],
    ["the global key", ["refresh", "--verbose"], {
      CLOUDFLARE_API_TOKEN: "",
      CLOUDFLARE_EMAIL: "admin@example.com",
      CLOUDFLARE_API_KEY: CF_GLOBAL_KEY,
    }],
    ["B2 echoes the credentials", ["refresh", "--verbose"], {
      B2_API_URL: `http://127.0.0.1:${echo.addr.port}`,
    }],
    ["B2 echoes them in a page", ["refresh", "--verbose"], {
      B2_API_URL: `http://127.0.0.1:${echoPage.addr.port}`,
    }],
    ["Cloudflare echoes the token", ["refresh", "--verbose"], {
      CLOUDFLARE_API_BASE_URL: `http://127.0.0.1:${echo.addr.port}`,
    }],
    ["Cloudflare echoes it in a page", ["refresh", "--verbose"], {
      CLOUDFLARE_API_BASE_URL: `http://127.0.0.1:${echoPage.addr.port}`,
    }],
    ["Cloudflare echoes the global key", ["refresh", "--verbose"], {
      CLOUDFLARE_API_TOKEN: "",
      CLOUDFLARE_EMAIL: "admin@example.com",
      CLOUDFLARE_API_KEY: CF_GLOBAL_KEY,
      CLOUDFLARE_API_BASE_URL: `http://127.0.0.1:${echo.addr.port}`,
    }],
    ["B2 cannot be found", ["refresh", "--verbose"], { B2_API_URL: "http://b2.invalid" }],
  ];
  try {
    for (const [name, args, env] of runs) {
      await t.step(name, async () => {
        const { stdout, stderr } = await w.run(args, { ...(env && { env }) });
        outputs.push(stdout, stderr);
        assert.notEqual(stdout + stderr, "", "it printed something to check");
      });
    }
    await t.step("refresh --verbose as a subprocess", async () => {
      const { stdout, stderr } = await spawn([
        "run",
        "-A",
        `${ROOT}main.ts`,
        "refresh",
        "--verbose",
      ], {
        env: w.env,
      });
      outputs.push(stdout, stderr);
      assert.match(stderr, /B2: authorizing key fake\.\.\. at /);
    });
    // The tokens these runs were given, now that all of them ran.
    for (const token of w.b2.downloadTokens.keys()) secretsSeen.add(token);
    for (const token of w.b2.accountTokens) secretsSeen.add(token);
    assert.ok(w.b2.downloadTokens.size > 0, "download tokens were handed out");
    assertNoSecret(...outputs);
    // The ids beside the secrets show their first four characters at most.
    for (const credential of ["fake-key-id", "admin@example.com"]) {
      assert.deepEqual(outputs.filter((text) => text.includes(credential)), [], credential);
    }
  } finally {
    await w.close();
    await echo.shutdown();
    await echoPage.shutdown();
  }
});

// ---------------------------------------------------------------------------
// Event notifications (issue 15)
// ---------------------------------------------------------------------------

const EVENT_KEY = [
  "listBuckets",
  "listFiles",
  "readFiles",
  "shareFiles",
  "readBucketNotifications",
  "writeBucketNotifications",
];
const EVENTS_ON = { B2_EVENT_NOTIFICATIONS: "on" };
const USERS_RULE = {
  name: "my-own-rule",
  eventTypes: ["b2:ObjectCreated:*"],
  objectNamePrefix: "logs/",
  isEnabled: true,
  maxEventsPerBatch: 1,
  targetConfiguration: {
    targetType: "webhook",
    url: "https://hooks.example.com/b2",
    hmacSha256SigningSecret: "abcdefghijklmnopqrstuvwxyz012345",
    customHeaders: [{ name: "X-Mine", value: "yes" }],
  },
  isSuspended: false,
  suspensionReason: "",
};

Deno.test("refresh with B2_EVENT_NOTIFICATIONS=on keeps one rule of ours beside the user's, idempotent; off removes only ours", async () => {
  const w = world({ b2: { capabilities: EVENT_KEY } });
  try {
    w.b2.notificationRules.set("bucket-photos", [structuredClone(USERS_RULE)]);
    const first = await w.run(["refresh", "--json"], { env: EVENTS_ON });
    assert.equal(first.code, 0, first.stderr);
    assert.equal(JSON.parse(first.stdout).eventNotifications, "created");
    const authorizes = w.b2.requests.filter((r) => r.path.endsWith("/b2_authorize_account"));
    assert.equal(authorizes.length, 1, "the rule step uses the refresh's own authorization");
    const rules = w.b2.notificationRules.get("bucket-photos")!;
    assert.deepEqual(rules.map((r) => r.name), ["b2cdn-b2-private-cdn", "my-own-rule"]);
    assert.deepEqual(rules[1], USERS_RULE, "the user's rule is written back as it was");
    const ours = rules[0]!;
    const derived = await deriveEventSecret(B2_KEY);
    assert.deepEqual(ours, {
      name: "b2cdn-b2-private-cdn",
      eventTypes: ["b2:HideMarkerCreated:*", "b2:ObjectCreated:*", "b2:ObjectDeleted:*"],
      objectNamePrefix: "site/",
      isEnabled: true,
      maxEventsPerBatch: 50,
      targetConfiguration: {
        targetType: "webhook",
        url: "https://b2-private-cdn.fake-subdomain.workers.dev/.well-known/b2-private-cdn/" +
          `events?key=${derived.urlKey}`,
        hmacSha256SigningSecret: derived.secret,
        customHeaders: [],
      },
      isSuspended: false,
      suspensionReason: "",
    });
    const metadata = w.cloudflare.scripts.get("b2-private-cdn")!.metadata as LooseMetadata;
    assert.equal(secretOf(metadata, "B2_EVENT_NOTIFICATION_SECRET"), derived.secret);
    assert.ok(!first.stdout.includes(derived.secret) && !first.stderr.includes(derived.secret));

    const sets = () =>
      w.b2.requests.filter((r) => r.path.includes("b2_set_bucket_notification_rules")).length;
    const before = sets();
    const second = await w.run(["refresh"], { env: EVENTS_ON });
    assert.equal(second.code, 0, second.stderr);
    assert.match(second.stdout, /event rule unchanged/);
    assert.equal(sets(), before, "a second run with the same settings writes nothing");

    // Ours changed by hand (disabled, pointed elsewhere): put back, the user's left alone.
    const expected = structuredClone(rules);
    const changed = w.b2.notificationRules.get("bucket-photos")![0]!;
    changed.isEnabled = false;
    changed.targetConfiguration.url = "https://elsewhere.example.com/";
    const moved = await w.run(["refresh", "--json"], { env: EVENTS_ON });
    assert.equal(JSON.parse(moved.stdout).eventNotifications, "updated");
    assert.deepEqual(w.b2.notificationRules.get("bucket-photos"), expected);

    const off = await w.run(["refresh", "--json"]);
    assert.equal(off.code, 0, off.stderr);
    assert.equal(JSON.parse(off.stdout).eventNotifications, "removed");
    assert.deepEqual(w.b2.notificationRules.get("bucket-photos"), [USERS_RULE]);
    const offMetadata = w.cloudflare.scripts.get("b2-private-cdn")!.metadata as LooseMetadata;
    assert.equal(secretOf(offMetadata, "B2_EVENT_NOTIFICATION_SECRET"), undefined);

    // Off, and our rule is gone: one read (the key may read the rules), nothing written.
    const asked = w.b2.requests.length;
    const quiet = await w.run(["refresh", "--json"]);
    assert.equal(quiet.code, 0, quiet.stderr);
    assert.equal(JSON.parse(quiet.stdout).eventNotifications, undefined);
    assert.deepEqual(
      w.b2.requests.slice(asked).filter((r) => r.path.includes("notification")).map((r) => r.path),
      ["/b2api/v3/b2_get_bucket_notification_rules?bucketId=bucket-photos"],
    );
  } finally {
    await w.close();
  }
});

Deno.test("off after a failed removal retries on the next refresh", async (t) => {
  await t.step("the rule a failed removal left is removed by the next run", async () => {
    const w = world({ b2: { capabilities: EVENT_KEY } });
    try {
      w.b2.notificationRules.set("bucket-photos", [structuredClone(USERS_RULE)]);
      assert.equal((await w.run(["refresh"], { env: EVENTS_ON })).code, 0);
      // B2 busy for the one set call, with no retry.
      w.b2.fail("/b2api/v4/b2_set_bucket_notification_rules", {
        status: 503,
        code: "service_unavailable",
      });
      const failed = await w.run(["refresh"], { ctx: { retries: 0 } });
      assert.equal(failed.code, 1, failed.stdout);
      assert.match(failed.stderr, /B2 Event Notifications: .*503/);
      const metadata = w.cloudflare.scripts.get("b2-private-cdn")!.metadata as LooseMetadata;
      assert.equal(secretOf(metadata, "B2_EVENT_NOTIFICATION_SECRET"), undefined);
      assert.equal(w.b2.notificationRules.get("bucket-photos")?.length, 2, "the rule stayed");

      const again = await w.run(["refresh", "--json"]);
      assert.equal(again.code, 0, again.stderr);
      assert.equal(JSON.parse(again.stdout).eventNotifications, "removed");
      assert.deepEqual(w.b2.notificationRules.get("bucket-photos"), [USERS_RULE]);
    } finally {
      await w.close();
    }
  });
  await t.step(
    "off with a key that may not read the rules: B2 is asked nothing about them",
    async () => {
      const w = world();
      try {
        assert.equal((await w.run(["refresh"])).code, 0);
        assert.ok(!w.b2.requests.some((r) => r.path.includes("notification")));
      } finally {
        await w.close();
      }
    },
  );
  await t.step("off on an account without the feature: nothing to remove, no failure", async () => {
    const w = world({ b2: { capabilities: EVENT_KEY, eventNotifications: false } });
    try {
      const result = await w.run(["refresh", "--json"]);
      assert.equal(result.code, 0, result.stderr);
      assert.equal(JSON.parse(result.stdout).eventNotifications, undefined);
    } finally {
      await w.close();
    }
  });
});

Deno.test("deriveEventSecret() gives every machine the same B2-shaped secret, apart from the purge key", async () => {
  const one = await deriveEventSecret(B2_KEY);
  assert.deepEqual(await deriveEventSecret(B2_KEY), one);
  assert.match(one.secret, /^[A-Za-z0-9]{32}$/);
  assert.match(one.urlKey, /^[0-9a-f]{16}$/);
  assert.notEqual((await deriveEventSecret("another key")).secret, one.secret);
  assert.ok(!(await derivePurgeKey(B2_KEY)).includes(one.urlKey));
  const render = ["render", "--worker-name", "my_site", "--b2-event-notifications", "on"];
  assert.match((await runBare(render)).stdout, /rule b2cdn-my-site,/);
});

Deno.test("events on without the capabilities or the feature: the worker is deployed, exit 1 naming the fix", async (t) => {
  await t.step("a key without the notification capabilities", async () => {
    const w = world();
    try {
      const result = await w.run(["refresh", "--json"], { env: EVENTS_ON });
      assert.equal(result.code, 1);
      assert.equal(JSON.parse(result.stdout).deployed, true);
      assert.equal(w.cloudflare.scripts.get("b2-private-cdn")?.uploads, 1);
      assert.match(
        result.stderr,
        /IncompleteDeployError|is deployed with a new download token[\s\S]*lacks readBucketNotifications and writeBucketNotifications[\s\S]*b2 key create --bucket photos --name-prefix site\/ <name> listBuckets,readFiles,shareFiles,readBucketNotifications,writeBucketNotifications/,
      );
      assert.ok(!w.b2.requests.some((r) => r.path.includes("notification")));
    } finally {
      await w.close();
    }
  });
  await t.step("an account without Event Notifications", async () => {
    const w = world({ b2: { capabilities: EVENT_KEY, eventNotifications: false } });
    try {
      const result = await w.run(["refresh"], { env: EVENTS_ON });
      assert.equal(result.code, 1);
      assert.equal(w.cloudflare.scripts.get("b2-private-cdn")?.uploads, 1);
      assert.match(result.stdout, /^Deployed worker "b2-private-cdn"/);
      assert.match(
        result.stderr,
        /B2 answered 400 bad_request: Event Notifications are not enabled[\s\S]*ask Backblaze Support to enable Event Notifications for account fake-account/,
      );
    } finally {
      await w.close();
    }
  });
});

Deno.test("status shows the rule; a suspended one is CRITICAL with the fix, and refresh sets it again", async () => {
  const w = world({ b2: { capabilities: EVENT_KEY } });
  try {
    assert.equal((await w.run(["refresh"], { env: EVENTS_ON })).code, 0);
    const healthy = await w.run(["status"], { env: EVENTS_ON });
    assert.equal(healthy.code, 0, healthy.stdout);
    assert.match(healthy.stdout, /Event notifications: rule "b2cdn-b2-private-cdn" enabled/);

    w.b2.suspendRule("photos", "b2cdn-b2-private-cdn", "webhook answered 500 too often");
    const suspended = await w.run(["status", "--json"], { env: EVENTS_ON });
    assert.equal(suspended.code, 2, "CRITICAL");
    const report = JSON.parse(suspended.stdout);
    assert.deepEqual([report.healthy, report.state], [false, "CRITICAL"]);
    assert.deepEqual(
      [report.eventNotifications.suspended, report.eventNotifications.suspensionReason],
      [true, "webhook answered 500 too often"],
    );
    assert.match(report.problem, /B2 suspended Event Notification rule .*run refresh/);

    const again = await w.run(["refresh", "--json"], { env: EVENTS_ON });
    assert.equal(JSON.parse(again.stdout).eventNotifications, "updated");
    assert.equal((await w.run(["status"], { env: EVENTS_ON })).code, 0);

    const cacheApi = await w.run(["status"], {
      env: { ...EVENTS_ON, WORKER_CACHE_MODE: "cache-api" },
    });
    assert.match(cacheApi.stdout, /Warning: event notifications: the Cache API is per data centre/);

    // Deleted by hand: the site works, uploads are only not purged, so WARNING.
    w.b2.notificationRules.set("bucket-photos", []);
    const gone = await w.run(["status"], { env: EVENTS_ON });
    assert.equal(gone.code, 1, gone.stdout);
    assert.match(
      gone.stdout,
      /^WARNING .*no Event Notification rule "b2cdn-b2-private-cdn".*run refresh/,
    );
  } finally {
    await w.close();
  }
});

Deno.test("status is UNKNOWN (exit 3) when the rule cannot be read: it cannot tell whether uploads purge", async (t) => {
  await t.step("B2 busy", async () => {
    const w = world({ b2: { capabilities: EVENT_KEY } });
    try {
      assert.equal((await w.run(["refresh"], { env: EVENTS_ON })).code, 0);
      w.b2.fail("/b2api/v3/b2_get_bucket_notification_rules", {
        status: 503,
        code: "service_unavailable",
        times: 10,
      });
      const busy = await w.run(["status", "--json"], { env: EVENTS_ON });
      assert.equal(busy.code, 3, busy.stdout);
      const report = JSON.parse(busy.stdout);
      assert.deepEqual([report.healthy, report.state], [false, "UNKNOWN"]);
      assert.match(report.problem, /^cannot tell whether B2 delivers event notifications: .*503/);
    } finally {
      await w.close();
    }
  });
  await t.step("a key without readBucketNotifications", async () => {
    const w = world();
    try {
      assert.equal((await w.run(["refresh"])).code, 0);
      const result = await w.run(["status"], { env: EVENTS_ON });
      assert.equal(result.code, 3, result.stdout);
      assert.match(
        result.stdout,
        /^UNKNOWN - worker "b2-private-cdn": .*cannot tell whether B2 delivers event notifications: .*lacks readBucketNotifications/,
      );
      assert.ok(!w.b2.requests.some((r) => r.path.includes("notification")));
    } finally {
      await w.close();
    }
  });
});

Deno.test("render and refresh --dry-run show the rule that would be set, never its secret", async () => {
  const stdout: string[] = [];
  const code = await run({
    args: ["render"],
    env: {
      B2_BUCKET_NAME: "photos",
      B2_FILE_PREFIX: "site/",
      WORKER_DOMAIN: "cdn.example.com",
      ...EVENTS_ON,
    },
    readEnvFile: () => Promise.resolve(undefined),
    io: { stdout: (t) => stdout.push(t), stderr: (t) => stdout.push(t) },
    ctx: { fetch: () => Promise.reject(new Error("no network")) },
  });
  assert.equal(code, 0);
  assert.match(
    stdout.join(""),
    /^ {2}Event notifications: rule b2cdn-b2-private-cdn, .* under "site\/", up to 50 events a POST to https:\/\/cdn\.example\.com\/\.well-known\/b2-private-cdn\/events\?key=\(derived\)/m,
  );
  assert.match(stdout.join(""), /^ {2}B2_EVENT_NOTIFICATION_SECRET +\(secret, not shown\)$/m);

  const w = world({ b2: { capabilities: EVENT_KEY } });
  try {
    const dry = await w.run(["refresh", "--dry-run"], { env: EVENTS_ON });
    assert.equal(dry.code, 0, dry.stderr);
    assert.match(dry.stdout, /event notifications: rule b2cdn-b2-private-cdn/);
    assert.ok(!dry.stdout.includes((await deriveEventSecret(B2_KEY)).secret));
    assert.equal(w.b2.notificationRules.size, 0, "a dry run sets nothing");
  } finally {
    await w.close();
  }
});

Deno.test("refresh refuses, naming what to change, the rules B2 would refuse beside ours", async (t) => {
  const refusedBefore = async (rules: typeof USERS_RULE[], message: RegExp) => {
    const w = world({ b2: { capabilities: EVENT_KEY } });
    try {
      w.b2.notificationRules.set("bucket-photos", structuredClone(rules));
      const result = await w.run(["refresh"], { env: EVENTS_ON });
      assert.equal(result.code, 1);
      assert.equal(w.cloudflare.scripts.get("b2-private-cdn")?.uploads, 1, "deployed");
      assert.match(result.stderr, message);
      assert.doesNotMatch(result.stderr, /ask Backblaze Support|check B2_BUCKET_ID/);
      assert.ok(!w.b2.requests.some((r) => r.path.includes("b2_set_bucket_notification_rules")));
      assert.deepEqual(w.b2.notificationRules.get("bucket-photos"), rules, "left as they were");
    } finally {
      await w.close();
    }
  };
  await t.step("a user's rule whose prefix overlaps ours for one of our event types", async () => {
    for (const objectNamePrefix of ["site/img/", "", "si"]) {
      const users = {
        ...structuredClone(USERS_RULE),
        eventTypes: ["b2:ObjectCreated:Upload"],
        objectNamePrefix,
      };
      await refusedBefore(
        [users],
        /B2 Event Notifications: Cannot add Event Notification rule "b2cdn-b2-private-cdn" .*under "site\/"\): rule "my-own-rule" \(b2:ObjectCreated:Upload under "[a-z/]*"\) overlaps it.*Narrow rule "my-own-rule".*or delete it/,
      );
    }
  });
  await t.step("25 rules already", async () => {
    const rules = Array.from({ length: 25 }, (_, i) => ({
      ...structuredClone(USERS_RULE),
      name: `user-rule-${String(i).padStart(2, "0")}`,
      objectNamePrefix: `logs-${i}/`,
    }));
    await refusedBefore(rules, /the bucket has 25 other rules, and B2 takes at most 25 a bucket/);
  });
  await t.step(
    "a user's rule under another prefix, or of other event types, is no clash",
    async () => {
      const w = world({ b2: { capabilities: EVENT_KEY } });
      try {
        const upload = {
          ...structuredClone(USERS_RULE),
          name: "elsewhere",
          objectNamePrefix: "logs/",
        };
        const other = {
          ...structuredClone(USERS_RULE),
          eventTypes: ["b2:MultipartUploadCreated:LiveRead"],
          objectNamePrefix: "site/",
        };
        w.b2.notificationRules.set("bucket-photos", [upload, other]);
        const result = await w.run(["refresh"], { env: EVENTS_ON });
        assert.equal(result.code, 0, result.stderr);
        assert.equal(w.b2.notificationRules.get("bucket-photos")?.length, 3);
      } finally {
        await w.close();
      }
    },
  );
  await t.step(
    "a refusal of B2's own about the rules names no feature and no bucket setting",
    async () => {
      const w = world({ b2: { capabilities: EVENT_KEY } });
      try {
        // Two rules of the user's that B2 would not take together (set around it, by hand).
        const clash = { ...structuredClone(USERS_RULE), name: "my-other-rule" };
        w.b2.notificationRules.set("bucket-photos", [structuredClone(USERS_RULE), clash]);
        const result = await w.run(["refresh"], { env: EVENTS_ON });
        assert.equal(result.code, 1);
        assert.match(
          result.stderr,
          /B2 answered 400 bad_request: Rules "my-other-rule" and "my-own-rule" overlap.*B2 refused the bucket's rules as they would be: change the rule it names/,
        );
        assert.doesNotMatch(result.stderr, /ask Backblaze Support|check B2_BUCKET_ID/);
      } finally {
        await w.close();
      }
    },
  );
});

Deno.test("refresh never alters a user's rule: one B2 answered with a masked secret is left as it was", async () => {
  const w = world({ b2: { capabilities: EVENT_KEY } });
  try {
    const masked = structuredClone(USERS_RULE);
    masked.targetConfiguration.hmacSha256SigningSecret = "abcd****************************";
    w.b2.notificationRules.set("bucket-photos", [masked]);
    const result = await w.run(["refresh"], { env: EVENTS_ON });
    assert.equal(result.code, 1);
    assert.match(result.stderr, /rule "my-own-rule" with its signing secret masked/);
    assert.deepEqual(w.b2.notificationRules.get("bucket-photos"), [masked]);
    assert.ok(!w.b2.requests.some((r) => r.path.includes("b2_set_bucket_notification_rules")));
  } finally {
    await w.close();
  }
});

// ---------------------------------------------------------------------------
// Ids need not be hunted
// ---------------------------------------------------------------------------

Deno.test("parseConfig() takes a Cloudflare id as 32 hex or from a dashboard address, and says what it took", async (t) => {
  const id = "0123456789abcdef0123456789abcdef";
  const withAccount = (value: string) =>
    parseConfig({ CLOUDFLARE_API_TOKEN: "token", CLOUDFLARE_ACCOUNT_ID: value }, {
      cloudflare: true,
    });
  const problemOf = (settings: Settings) => {
    try {
      parseConfig(settings);
    } catch (error) {
      return (error as ConfigError).problems[0]!;
    }
    assert.fail(`no problem with ${JSON.stringify(settings)}`);
  };
  await t.step("an id, in either case", () => {
    const config = withAccount(` ${id.toUpperCase()} `);
    assert.equal(config.cloudflare?.accountId, id);
    assert.equal(config.warnings, undefined);
  });
  await t.step("the README's dashboard address pasted whole: the account id, said", () => {
    for (
      const pasted of [
        `https://dash.cloudflare.com/${id}/workers-and-pages`,
        `dash.cloudflare.com/${id}`,
      ]
    ) {
      const config = withAccount(pasted);
      assert.equal(config.cloudflare?.accountId, id);
      assert.match(config.warnings![0]!, new RegExp(`took the account id ${id} from it`));
    }
  });
  await t.step("a zone's dashboard address holds no zone id: a problem naming the way out", () => {
    const problem = problemOf({
      CLOUDFLARE_ZONE_ID: `https://dash.cloudflare.com/${id}/example.com`,
    });
    assert.match(problem, /holds the account id .* and the domain example\.com but no zone id/);
    assert.match(problem, /or leave it out: it is found from WORKER_ROUTE or WORKER_DOMAIN/);
  });
  await t.step("anything else is a problem that quotes it", () => {
    for (
      const [name, raw] of [["CLOUDFLARE_ACCOUNT_ID", "my-account"], [
        "CLOUDFLARE_ZONE_ID",
        "abc",
      ]] as const
    ) {
      assert.match(problemOf({ [name]: raw }), new RegExp(`^${name} must be .*not "${raw}"`));
    }
    assert.ok(problemOf({ CLOUDFLARE_ACCOUNT_ID: `https://example.com/${id}` }));
  });
});

Deno.test("parseConfig() refuses a B2_BUCKET_NAME that B2 refuses, with B2's rule", () => {
  for (const good of ["photos", "My-Bucket-2", "a".repeat(63)]) {
    assert.equal(parseConfig({ B2_BUCKET_NAME: good }).bucketName, good);
  }
  const cases: [string, RegExp][] = [
    ["My_Bucket!", /\("_", "!" are not allowed\)/],
    ["short", /\(it has 5 characters\)/],
    ["a".repeat(64), /\(it has 64 characters\)/],
    ["b2-photos", /names starting with "b2-" are reserved/],
    ["my.bucket", /"\." is not allowed/],
  ];
  for (const [name, why] of cases) {
    assert.throws(() => parseConfig({ B2_BUCKET_NAME: name }), (error: ConfigError) => {
      assert.equal(error.problems.length, 1);
      assert.match(error.message, why);
      assert.match(error.message, /6 to 63 letters, digits and "-", and does not start with "b2-"/);
      return true;
    });
  }
});

Deno.test("zoneCandidates() walks up a host's labels as wrangler does, never to a bare TLD", () => {
  assert.deepEqual(zoneCandidates("cdn.example.com/*"), ["cdn.example.com", "example.com"]);
  assert.deepEqual(zoneCandidates("*.cdn.example.co.uk/files/*"), [
    "cdn.example.co.uk",
    "example.co.uk",
    "co.uk",
  ]);
  assert.deepEqual(zoneCandidates("https://Example.COM:8443/x"), ["example.com"]);
  assert.deepEqual(zoneCandidates("*example.com/*"), ["example.com"]);
  assert.deepEqual(zoneCandidates("localhost"), []);
});

Deno.test("refresh finds the account and the zone the settings leave out", async (t) => {
  const without = { CLOUDFLARE_ACCOUNT_ID: "" };
  const second = { id: "acc00000000000000000000000000002", name: "Side project" };
  await t.step("one account: taken, and the worker deploys there", async () => {
    for (const tokenOwner of ["user", "account"] as const) {
      const w = world({ cloudflare: { tokenOwner, otherAccounts: [second] } });
      try {
        const { code, stderr } = await w.run(["refresh", "--verbose"], {
          env: { ...without, ...(tokenOwner === "user" && { CLOUDFLARE_API_TOKEN: CF_TOKEN }) },
        });
        if (tokenOwner === "user") {
          // A user in two accounts: no guess.
          assert.equal(code, 2);
          assert.match(
            stderr,
            /CLOUDFLARE_ACCOUNT_ID is not set, and the token sees 2 accounts: set it to one of them \(Fake account: acc0+1; Side project: acc0+2\)/,
          );
          assert.equal(w.b2.requests.length, 0, "B2 is not asked before the ids are known");
        } else {
          assert.equal(code, 0, stderr);
          assert.match(
            stderr,
            /Cloudflare: account acc0+1 \(Fake account\), the one the token sees/,
          );
          assert.equal(w.cloudflare.scripts.get("b2-private-cdn")?.account, FAKE_ACCOUNT_ID);
        }
      } finally {
        await w.close();
      }
    }
  });
  await t.step("the zone of a route and of a custom domain, by walking up the host", async () => {
    for (
      const env of [{ WORKER_ROUTE: "cdn.example.com/*" }, {
        WORKER_DOMAIN: "cdn.example.com",
      }] as Record<string, string>[]
    ) {
      const w = world();
      try {
        const { code, stderr } = await w.run(["refresh", "--verbose"], {
          env: { ...without, ...env },
        });
        assert.equal(code, 0, stderr);
        assert.match(stderr, /Cloudflare: zone example\.com is 20e0+1/);
        const looked = w.cloudflare.requests.filter((r) => r.path.startsWith("/zones?"));
        assert.deepEqual(looked.map((r) => new URL(r.path, "http://x").searchParams.get("name")), [
          "cdn.example.com",
          "example.com",
        ]);
      } finally {
        await w.close();
      }
    }
  });
  await t.step("a token without Zone Read: exit 2 naming it, nothing asked of B2", async () => {
    const w = world({
      cloudflare: { tokenPermissions: ["workers_scripts:edit", "workers_routes:edit"] },
    });
    try {
      const { code, stderr } = await w.run(["refresh"], {
        env: { WORKER_ROUTE: "cdn.example.com/*" },
      });
      assert.equal(code, 2);
      assert.match(
        stderr,
        /Cannot find the zone of "cdn\.example\.com\/\*" \(tried cdn\.example\.com, example\.com in account acc0+1\).*"Zone: Read".*or set CLOUDFLARE_ZONE_ID/,
      );
      assert.equal(w.b2.requests.length, 0);
      assert.deepEqual(w.cloudflare.requests.filter((r) => r.method !== "GET"), []);
    } finally {
      await w.close();
    }
  });
  await t.step(
    "the dashboard address pasted as the account id: deploys, saying which id it took",
    async () => {
      const w = world();
      try {
        const { code, stderr } = await w.run(["refresh"], {
          env: {
            CLOUDFLARE_ACCOUNT_ID:
              `https://dash.cloudflare.com/${FAKE_ACCOUNT_ID}/workers-and-pages`,
          },
        });
        assert.equal(code, 0, stderr);
        assert.match(
          stderr,
          new RegExp(
            `^warning: CLOUDFLARE_ACCOUNT_ID is a dashboard address: took the account id ${FAKE_ACCOUNT_ID}`,
            "m",
          ),
        );
        assert.ok(w.cloudflare.scripts.has("b2-private-cdn"));
      } finally {
        await w.close();
      }
    },
  );
});

// ---------------------------------------------------------------------------
// The dead man's switch (issue 23)
// ---------------------------------------------------------------------------

const CHECK = "5e2b7c1a-0d5f-4c43-9a0e-0123456789ab";
const PUSH_TOKEN = "kUm4PushT0ken";

/** A world with a monitor stand-in that knows one healthchecks.io check and one push token. */
function monitored(): { w: World; monitor: FakeMonitor; hc: string; kuma: string } {
  const w = world();
  const monitor = startFakeMonitor({ checks: [CHECK], pushTokens: [PUSH_TOKEN] });
  // The whole URL is a credential of sorts: no output may show it.
  secretsSeen.add(CHECK).add(PUSH_TOKEN);
  return {
    w,
    monitor,
    hc: `${monitor.url}/ping/${CHECK}`,
    kuma: `${monitor.url}/api/push/${PUSH_TOKEN}?status=up&msg=OK&ping=`,
  };
}

Deno.test("refresh pings REFRESH_PING_URL's /start, then its success with the run's last lines", async () => {
  const { w, monitor, hc } = monitored();
  try {
    const { code, stdout, stderr } = await w.run(["refresh"], { env: { REFRESH_PING_URL: hc } });
    assert.deepEqual([code, stderr], [0, ""]);
    assert.deepEqual(monitor.pings.map(({ event, method }) => [event, method]), [
      ["start", "POST"],
      ["success", "POST"],
    ]);
    assert.equal(monitor.pings[0]!.body, "");
    assert.equal(monitor.pings[1]!.body, stdout, "the body is the run's output");
    assert.match(monitor.pings[1]!.body, /^Deployed worker "b2-private-cdn"/);
    assertNoSecret(...monitor.pings.map((ping) => ping.body));
  } finally {
    await Promise.all([w.close(), monitor.close()]);
  }
});

Deno.test("a failed refresh pings /fail with its error, secrets redacted", async (t) => {
  const { w, monitor, hc } = monitored();
  try {
    await t.step("B2 refuses the key", async () => {
      const { code, stderr } = await w.run(["refresh"], {
        env: { REFRESH_PING_URL: hc, B2_APPLICATION_KEY: "a-wrong-application-key" },
      });
      assert.equal(code, 1);
      const fail = monitor.pings.at(-1)!;
      assert.deepEqual([monitor.pings.at(-2)?.event, fail.event], ["start", "fail"]);
      assert.equal(fail.body, stderr, "the body is the run's error");
      assert.match(fail.body, /^error: Cannot authorize the B2 application key/);
      assert.ok(!fail.body.includes("a-wrong-application-key"));
    });
    await t.step("a bad setting", async () => {
      const { code } = await w.run(["refresh"], {
        env: { REFRESH_PING_URL: hc, WORKER_CACHE_TTL: "soon" },
      });
      assert.equal(code, 2);
      assert.deepEqual(monitor.pings.slice(-2).map((ping) => ping.event), ["start", "fail"]);
      assert.match(monitor.pings.at(-1)!.body, /WORKER_CACHE_TTL must be a duration/);
    });
    await t.step("a dry run pings nothing: it is not the run that keeps the site up", async () => {
      const before = monitor.pings.length;
      const { code } = await w.run(["refresh", "--dry-run"], { env: { REFRESH_PING_URL: hc } });
      assert.deepEqual([code, monitor.pings.length], [0, before]);
    });
  } finally {
    await Promise.all([w.close(), monitor.close()]);
  }
});

Deno.test("an Uptime Kuma push URL gets ?status=up|down&msg=, and no /start", async () => {
  const { w, monitor, kuma } = monitored();
  try {
    const good = await w.run(["refresh"], { env: { REFRESH_PING_URL: kuma } });
    const bad = await w.run(["refresh"], {
      env: { REFRESH_PING_URL: kuma, B2_APPLICATION_KEY: "a-wrong-application-key" },
    });
    assert.deepEqual([good.code, good.stderr, bad.code], [0, "", 1]);
    assert.deepEqual(monitor.pings.map(({ service, event }) => [service, event]), [
      ["uptime-kuma", "success"],
      ["uptime-kuma", "fail"],
    ]);
    assert.equal(monitor.pings[0]!.body, good.stdout.split("\n").at(-1)!.slice(0, 200));
    assert.match(monitor.pings[1]!.body, /^error: Cannot authorize the B2 application key/);
  } finally {
    await Promise.all([w.close(), monitor.close()]);
  }
});

Deno.test("a ping the monitor refuses is a warning; the run's exit code stands", async () => {
  const { w, monitor } = monitored();
  try {
    const unknown = `${monitor.url}/ping/${CHECK.replace("5e2b", "0000")}`;
    const { code, stderr } = await w.run(["refresh"], { env: { REFRESH_PING_URL: unknown } });
    assert.equal(code, 0);
    assert.match(
      stderr,
      /^warning: the dead man's switch at http:\/\/127\.0\.0\.1:\d+\/ping\/0000\.\.\. did not take the start ping: answered 404 "not found"\. The run goes on; check REFRESH_PING_URL\.$/m,
    );
    assert.match(stderr, /did not take the success ping: answered 404/);
  } finally {
    await Promise.all([w.close(), monitor.close()]);
  }
});

Deno.test("a malformed REFRESH_PING_URL is refused without quoting its token", async () => {
  const w = world();
  try {
    for (const url of [`hc-ping.com/${CHECK}`, `ftp://hc-ping.com/${CHECK}`]) {
      const { code, stderr } = await w.run(["refresh"], { env: { REFRESH_PING_URL: url } });
      assert.equal(code, 2);
      assert.match(stderr, /^error: REFRESH_PING_URL must be an http\(s\) URL\.$/m);
      assert.ok(!stderr.includes(CHECK.slice(4)), stderr);
    }
  } finally {
    await w.close();
  }
});

Deno.test("a hanging ping URL delays a refresh by at most the ping timeout (5 s)", async () => {
  const { w, monitor, hc } = monitored();
  try {
    const started = performance.now();
    assert.equal((await w.run(["refresh"])).code, 0);
    const alone = performance.now() - started;
    monitor.hang();
    const hanging = performance.now();
    const { code, stderr } = await w.run(["refresh"], {
      env: { REFRESH_PING_URL: hc },
      ctx: { timeoutMs: 30_000 },
    });
    const delay = performance.now() - hanging - alone;
    assert.equal(code, 0);
    assert.ok(delay <= 5_000 + 1_000, `delayed ${Math.round(delay)} ms`);
    assert.match(
      stderr,
      /did not take the start ping: REFRESH_PING_URL|did not take the start ping/,
    );
    assert.match(stderr, /did not take the success ping/);
    // The warning reads as one sentence that lets the run go on: no "run again", no "..".
    assert.doesNotMatch(stderr, /run again|[^.]\.\. /);
    assert.match(
      stderr,
      /gave no answer within [\d.]+ s in all \(\d attempts?\)\. Check the network\. The run goes on/,
    );
    assert.ok(monitor.requests() >= 2, "both pings were tried");
  } finally {
    await Promise.all([w.close(), monitor.close()]);
  }
});

Deno.test("status shows when the deploying run pinged its switch", async () => {
  const { w, monitor, hc, kuma } = monitored();
  try {
    assert.equal((await w.run(["refresh"], { env: { REFRESH_PING_URL: hc } })).code, 0);
    const { stdout } = await w.run(["status"]);
    assert.match(
      stdout,
      /\nThe run that deployed this worker pinged http:\/\/127\.0\.0\.1:\d+\/ping\/5e2b\.\.\.\/start at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ, then http:\/\/127\.0\.0\.1:\d+\/ping\/5e2b\.\.\. or http:\/\/127\.0\.0\.1:\d+\/ping\/5e2b\.\.\.\/fail when it ended\./,
    );
    assert.equal((await w.run(["refresh"], { env: { REFRESH_PING_URL: kuma } })).code, 0);
    assert.match(
      (await w.run(["status"])).stdout,
      /pushed its outcome to the Uptime Kuma monitor at http:\/\/127\.0\.0\.1:\d+\/api\/push\/kUm4\.\.\. when it ended\./,
    );
  } finally {
    await Promise.all([w.close(), monitor.close()]);
  }
});

Deno.test("cron's scheduled runs and the Deploy cron ping the switch too", async (t) => {
  const { w, monitor, hc } = monitored();
  try {
    await t.step("scheduleRefresh()", async () => {
      const registered: Parameters<CronRegistrar>[] = [];
      const config = parseConfig({ ...w.env, REFRESH_PING_URL: hc }, {
        b2: true,
        cloudflare: true,
      });
      const reports: string[] = [];
      scheduleRefresh(config, ctxFor(), {
        module: "export default {}",
        register: (...args) => registered.push(args),
        report: (line) => reports.push(line),
      });
      await registered[0]![3]();
      assert.deepEqual(monitor.pings.map((ping) => ping.event), ["start", "success"]);
      assert.equal(monitor.pings[1]!.body, reports.join("\n"));
    });
    await t.step("the Deploy cron, not due: still a success", async () => {
      const { platform, registered, lines } = deployPlatform({
        env: { ...w.env, REFRESH_PING_URL: hc },
      });
      startOnDeploy(platform);
      await registered[0]![3]();
      assert.match(lines.at(-1)!, /^Not due: /);
      assert.deepEqual(monitor.pings.slice(-2).map((ping) => ping.event), ["start", "success"]);
      assert.equal(monitor.pings.at(-1)!.body, lines.at(-1));
    });
    await t.step("the Deploy cron with a bad setting: a fail ping naming it", async () => {
      const { platform, registered } = deployPlatform({
        env: { ...w.env, REFRESH_PING_URL: hc, WORKER_CACHE_TTL: "soon" },
      });
      startOnDeploy(platform);
      await assert.rejects(registered[0]![3](), /WORKER_CACHE_TTL/);
      assert.equal(monitor.pings.at(-1)!.event, "fail");
      assert.match(monitor.pings.at(-1)!.body, /^error: WORKER_CACHE_TTL must be a duration/);
    });
    assertNoSecret(...monitor.pings.map((ping) => ping.body));
  } finally {
    await Promise.all([w.close(), monitor.close()]);
  }
});

Deno.test("pingRequest() shapes each kind of monitor's ping", async (t) => {
  const lines = ["one", "two", "error: three"];
  await t.step("healthchecks.io: paths, a POST body of the last lines", () => {
    const url = "https://hc-ping.com/5e2b7c1a-0d5f-4c43-9a0e-0123456789ab/";
    assert.deepEqual(
      (["start", "success", "fail"] as const).map((event) => {
        const request = pingRequest(url, { event, lines })!;
        return [request.url, request.init.method, request.init.body];
      }),
      [
        [`${url}start`, "POST", ""],
        [url.slice(0, -1), "POST", "one\ntwo\nerror: three"],
        [`${url}fail`, "POST", "one\ntwo\nerror: three"],
      ],
    );
  });
  await t.step("healthchecks.io: the body keeps the last 10,000 bytes, ending intact", () => {
    const body = pingRequest("https://hc-ping.com/x", {
      event: "fail",
      lines: [...Array(40)].map((_, i) => `${i} ${"é".repeat(400)}`),
    })!.init.body as string;
    assert.ok(new TextEncoder().encode(body).length <= 10_000);
    assert.match(body, /^28 é+\n29 /);
    assert.match(body, /\n39 é{400}$/);
  });
  await t.step("Uptime Kuma: the copied query replaced, no start", () => {
    const url = "https://kuma.example.com/api/push/AbCd1234?status=up&msg=OK&ping=";
    assert.equal(pingRequest(url, { event: "start", lines }), undefined);
    assert.equal(
      pingRequest(url, { event: "fail", lines })!.url,
      "https://kuma.example.com/api/push/AbCd1234?status=down&msg=error%3A+three",
    );
    assert.equal(
      pingRequest(url, { event: "success", lines: [] })!.url,
      "https://kuma.example.com/api/push/AbCd1234?status=up&msg=OK",
    );
  });
});

Deno.test("envFileText() writes what parseEnv reads back the same, in .env.example's order", () => {
  const settings = {
    WORKER_ROUTE: "cdn.example.com/*",
    B2_APPLICATION_KEY: "K001+/abc=",
    B2_FILE_PREFIX: "my site/ #1",
    WORKER_CACHE_CONTROL: `public, max-age=60, it's "quoted"`,
    B2_BUCKET_NAME: "photos",
  };
  const text = envFileText(settings);
  assert.deepEqual({ ...parseEnv(text) }, settings);
  assert.deepEqual(
    text.split("\n").filter((line) => !line.startsWith("#") && line).map((l) => l.split("=")[0]),
    [
      "B2_APPLICATION_KEY",
      "B2_BUCKET_NAME",
      "B2_FILE_PREFIX",
      "WORKER_ROUTE",
      "WORKER_CACHE_CONTROL",
    ],
  );
});

Deno.test("crontabLine() names this machine's deno, directory and settings file, quoted for sh", () => {
  const place = {
    cwd: "/srv/my site",
    denoPath: "/usr/local/bin/deno",
    script: "/srv/my site/main.ts",
  };
  assert.equal(
    crontabLine(place),
    "17 4 * * * cd '/srv/my site' && /usr/local/bin/deno run --allow-net --allow-env --allow-read " +
      "'/srv/my site/main.ts' refresh >> '/srv/my site/b2-private-cdn.log' 2>&1",
  );
  assert.match(crontabLine(place, "/etc/cdn.env"), / refresh --env-file \/etc\/cdn\.env >> /);
});

// ---------------------------------------------------------------------------
// No setting silently ignored (issue 23)
// ---------------------------------------------------------------------------

Deno.test("a misspelt setting in .env or the environment is a warning naming the setting meant", async () => {
  const w = world();
  try {
    const { code, stderr } = await w.run(["render"], {
      dotenv: "WORKER_CAHCE_TTL=3600\nWORKER_CACHE_MODE=off\n",
      env: { CLOUDFLARE_ACOUNT_ID: "x", REFRESH_SHEDULE: "5 4 * * *", WORKER_FOO: "1" },
    });
    assert.equal(code, 0);
    assert.deepEqual(stderr.split("\n"), [
      "warning: WORKER_CAHCE_TTL (in .env) is not a setting of this tool and is ignored; did " +
      "you mean WORKER_CACHE_TTL?",
      "warning: CLOUDFLARE_ACOUNT_ID (in the environment) is not a setting of this tool and is " +
      "ignored; did you mean CLOUDFLARE_ACCOUNT_ID?",
      "warning: REFRESH_SHEDULE (in the environment) is not a setting of this tool and is " +
      "ignored; did you mean REFRESH_SCHEDULE?",
      "warning: WORKER_FOO (in the environment) is not a setting of this tool and is ignored; " +
      "the nearest is WORKER_NAME (deno run main.ts help settings lists them all).",
    ]);
  } finally {
    await w.close();
  }
});

Deno.test("the b2 CLI's and wrangler's own names, and other prefixes, pass without a word", async () => {
  const w = world();
  try {
    const { code, stderr } = await w.run(["render"], {
      env: {
        B2_ACCOUNT_INFO: "~/.b2_account_info",
        CLOUDFLARE_ENV: "production",
        CLOUDFLARE_INCLUDE_PROCESS_ENV: "true",
        WRANGLER_LOG: "debug",
        WORKERS_CI_BRANCH: "main",
        HOME: "/root",
      },
    });
    assert.deepEqual([code, stderr], [0, ""]);
  } finally {
    await w.close();
  }
});

Deno.test("a Deploy cron run warns of a misspelt setting in the app's settings", async () => {
  const w = world();
  try {
    const { platform, registered, lines } = deployPlatform({
      env: { ...w.env, WORKER_CAHCE_TTL: "3600" },
    });
    startOnDeploy(platform);
    await registered[0]![3]();
    assert.ok(
      lines.includes(
        "warning: WORKER_CAHCE_TTL (in the app's settings) is not a setting of this tool and is " +
          "ignored; did you mean WORKER_CACHE_TTL?",
      ),
    );
  } finally {
    await w.close();
  }
});

Deno.test("an unknown flag gets the nearest flag; a credential's name says why it has none", async (t) => {
  for (
    const [args, problem] of [
      [
        ["render", "--worker-cahce-ttl", "3600"],
        "Unknown flag --worker-cahce-ttl: did you mean --worker-cache-ttl?",
      ],
      [["refresh", "--dryrun"], "Unknown flag --dryrun: did you mean --dry-run?"],
      [
        ["status", "--min-remainig", "3d"],
        "Unknown flag --min-remainig: did you mean --min-remaining?",
      ],
      [["render", "--zzz"], "Unknown flag --zzz. See --help for the flags."],
      [
        ["refresh", "--b2-application-key", "k"],
        "B2_APPLICATION_KEY has no flag: it is a credential, and flags show in ps. Set it in .env " +
        "or the environment.",
      ],
    ] as const
  ) {
    await t.step(args.join(" "), () => {
      assert.throws(
        () => parseCommandLine([...args]),
        (error: ConfigError) => (assert.deepEqual(error.problems, [problem]), true),
      );
    });
  }
});

Deno.test("status --min-remaining refuses 7d or more: no token lives longer", async (t) => {
  const w = world();
  try {
    for (const value of ["7d", "168h", "8d", "604800"]) {
      await t.step(value, async () => {
        const { code, stdout, stderr } = await w.run(["status", "--min-remaining", value]);
        assert.deepEqual([code, stderr], [3, ""]);
        assert.equal(
          stdout,
          `UNKNOWN - --min-remaining must be a duration under 7d, written 90s, 15m, 12h, 7d or ` +
            `plain seconds (a B2 download token lives 7d at most, so status could never say OK ` +
            `to more), not "${value}".`,
        );
      });
    }
    await t.step("6d 23h is taken", () => {
      assert.equal(
        parseCommandLine(["status", "--min-remaining", "167h"]).flags["min-remaining"],
        167 * 3600,
      );
    });
  } finally {
    await w.close();
  }
});

Deno.test("status's advice on a token too short for --min-remaining is advice that works", async (t) => {
  const w = world();
  try {
    await t.step(
      "more than a week's worth on the daily schedule: no longer token can help",
      async () => {
        const { stderr } = await w.run(["status", "--min-remaining", "156h"]);
        assert.equal(
          stderr,
          'warning: B2_TOKEN_TTL is 604800 (7d 0h), and REFRESH_SCHEDULE "17 4 * * *" refreshes ' +
            "every 1d 0h at most, so before each run the token has less than the 6d 12h " +
            "--min-remaining asks for, and status reports it although refresh cannot fix that; " +
            'refresh more often (e.g. REFRESH_SCHEDULE="17 * * * *", hourly), or ask status for ' +
            "no more than 6d 0h (--min-remaining).",
        );
      },
    );
    await t.step("already hourly: no hourly advice", async () => {
      const { stderr } = await w.run(["status", "--min-remaining", "2d"], {
        env: { REFRESH_SCHEDULE: "17 * * * *", B2_TOKEN_TTL: "1d" },
      });
      assert.match(
        stderr,
        /; set B2_TOKEN_TTL to at least 176400 .*, or ask status for no more than 23h 0m \(--min-remaining\)\.$/,
      );
      assert.doesNotMatch(stderr, /refresh more often/);
    });
  } finally {
    await w.close();
  }
});

// ---------------------------------------------------------------------------
// Issue 24: folder listings
// ---------------------------------------------------------------------------

const LISTING_ENV = {
  WORKER_LISTING: "on",
  B2_LISTING_KEY_ID: "listing-key-id",
  B2_LISTING_KEY: LISTING_KEY,
};

/** The fake's listing key, restricted as refresh wants it unless `changes` say otherwise. */
function listingKey(changes: Partial<FakeKey> = {}): FakeKey {
  return {
    keyId: "listing-key-id",
    applicationKey: LISTING_KEY,
    capabilities: ["listFiles"],
    restrictToBucket: "photos",
    namePrefix: "site/",
    ...changes,
  };
}

Deno.test("refresh gives the worker the listing key as secret bindings, authorized where B2_API_URL says", async () => {
  const w = world({ b2: { keys: [listingKey({ capabilities: ["listBuckets", "listFiles"] })] } });
  try {
    const { code, stderr } = await w.run(["refresh"], { env: LISTING_ENV });
    assert.equal(code, 0, stderr);
    const script = w.cloudflare.scripts.get("b2-private-cdn")!;
    const listing = script.metadata.bindings.filter((b) => /LISTING|B2_API_URL/.test(b.name));
    assert.deepEqual(listing, [
      { type: "plain_text", name: "WORKER_LISTING", text: "on" },
      { type: "plain_text", name: "WORKER_LISTING_TTL", text: "60" },
      { type: "plain_text", name: "B2_API_URL", text: w.b2.url },
      { type: "secret_text", name: "B2_LISTING_KEY_ID", text: "listing-key-id" },
      { type: "secret_text", name: "B2_LISTING_KEY", text: LISTING_KEY },
    ]);
    const authorizations = w.b2.requests.filter((r) => r.path.endsWith("b2_authorize_account"));
    assert.deepEqual(
      authorizations.map((r) => r.headers.get("authorization")),
      [`Basic ${btoa(`fake-key-id:${B2_KEY}`)}`, `Basic ${btoa(`listing-key-id:${LISTING_KEY}`)}`],
    );
  } finally {
    await w.close();
  }
});

Deno.test("refresh refuses a listing key that can do more than list the bucket under the prefix", async (t) => {
  const cases: {
    name: string;
    key: FakeKey | undefined;
    env?: Record<string, string>;
    expect: RegExp;
  }[] = [
    ...["readFiles", "shareFiles", "writeFiles", "deleteFiles", "writeKeys", "listAllBucketNames"]
      .map((capability) => ({
        name: `a key with ${capability}`,
        key: listingKey({ capabilities: ["listFiles", capability] }),
        expect: new RegExp(
          `B2_LISTING_KEY can do more than list: it has ${capability}\. .*b2 key create ` +
            "--bucket photos --name-prefix site/ <name> listFiles",
        ),
      })),
    {
      name: "a key without listFiles",
      key: listingKey({ capabilities: ["listBuckets"] }),
      expect: /B2_LISTING_KEY lacks the listFiles capability/,
    },
    {
      name: "a key for every bucket",
      key: listingKey({ restrictToBucket: "" }),
      expect: /B2_LISTING_KEY reaches every bucket of the account, not only "photos"/,
    },
    {
      name: "a key for another bucket",
      key: listingKey({ restrictToBucket: "other" }),
      expect: /B2_LISTING_KEY reaches bucket "other", not only "photos"/,
    },
    {
      name: "a key for every name",
      key: listingKey({ namePrefix: null }),
      expect: /B2_LISTING_KEY reaches every name, but B2_FILE_PREFIX is "site\/"/,
    },
    {
      name: "a key for a wider prefix",
      key: listingKey({ namePrefix: "si" }),
      expect: /reaches names starting with "si", but B2_FILE_PREFIX is "site\/"/,
    },
    {
      name: "a key for a narrower prefix",
      key: listingKey({ namePrefix: "site/a/" }),
      expect: /reaches names starting with "site\/a\/", but B2_FILE_PREFIX is "site\/"/,
    },
    {
      name: "a key B2 refuses",
      key: undefined,
      expect:
        /Cannot authorize the B2 listing key: B2 answered 401 .*check B2_LISTING_KEY_ID and B2_LISTING_KEY/,
    },
    {
      name: "no key",
      key: listingKey(),
      env: { B2_LISTING_KEY_ID: "", B2_LISTING_KEY: "" },
      expect: /Set B2_LISTING_KEY_ID and B2_LISTING_KEY: WORKER_LISTING=on needs a second B2 key/,
    },
  ];
  for (const c of cases) {
    await t.step(c.name, async () => {
      const w = world({ b2: { keys: c.key ? [c.key] : [] } });
      try {
        const { code, stderr } = await w.run(["refresh"], { env: { ...LISTING_ENV, ...c.env } });
        assert.equal(code, c.name === "a key B2 refuses" ? 1 : 2, stderr);
        assert.match(stderr, c.expect);
        for (const secret of [LISTING_KEY, "listing-key-id", ...w.b2.accountTokens]) {
          assert.ok(!stderr.includes(secret), `${c.name}: stderr shows ${secret}`);
        }
        assert.equal(w.cloudflare.scripts.size, 0, "nothing was uploaded");
      } finally {
        await w.close();
      }
    });
  }
});

Deno.test("main.ts's opening map names its sections, each in the order the file has them", async () => {
  const source = await Deno.readTextFile(new URL("./main.ts", import.meta.url));
  const rule = "// " + "-".repeat(75);
  const banners = [...source.matchAll(new RegExp(`^${rule}\\n// (.+)\\n${rule}$`, "gm"))]
    .map((m) => m[1]!.split(":")[0]);
  const map = source.slice(0, source.indexOf("@module"));
  const listed = [...map.matchAll(/^ \* - ([^:]+):/gm)].map((m) => m[1]);
  assert.ok(banners.length > 10, `${banners.length} banners`);
  assert.deepEqual(listed, banners);
});
