/**
 * Tests of the worker: its pure helpers in Deno, then the uploaded module
 * itself in workerd (miniflare) in front of the fake B2, one step per
 * behaviour of issue 3.
 */

import assert from "node:assert/strict";
import http from "node:http";
// Inline, not a deno.json import, which `deno task` would install for every task (main.ts: MINIFLARE).
// deno-lint-ignore no-import-prefix
import type { Miniflare } from "npm:miniflare@4";
import {
  generateSigningKey,
  loadWorkerModule,
  signLink,
  type SignLinkOptions,
  signPurge,
  type WorkerOptions,
  workerUpload,
} from "./main.ts";
import { startLocalWorker } from "./local/workerd.ts";
import {
  type FakeB2,
  type FakeFile,
  type Fault,
  patternByte,
  signEventBody,
  startFakeB2,
} from "./local/fake_b2.ts";
import worker, {
  activeContentHeaders,
  applyGrant,
  b2Url,
  canonicalPath,
  checkSignedLink,
  corsHeaders,
  coversPath,
  type Env,
  escapeHtml,
  type ExecutionContext,
  foldersAbove,
  formatRange,
  formatSize,
  ifRangeMatches,
  isProtected,
  listedFolder,
  listingQuery,
  listingTag,
  notModified,
  objectHeaders,
  objectName,
  objectTag,
  parseRange,
  publicHeaders,
  type PurgeOptions,
  type RangeSpec,
  readConfig,
  resolveRange,
  revalidatesStoredCopy,
  type SignedGrant,
  signedLifetime,
  signedLinkMessage,
  signedLinkQuery,
  type SigningConfig,
  sliceBody,
  toBase64Url,
  urlPath,
  withoutBucketId,
} from "./worker_template.ts";

// ---------------------------------------------------------------------------
// Pure helpers
// ---------------------------------------------------------------------------

const PLAIN = {
  urlStyle: "plain",
  bucketName: "vault",
  prefix: "site/",
  indexFile: "index.html",
} as const;
const B2_STYLE = { ...PLAIN, urlStyle: "b2" } as const;

/** Paths an attacker may send, each refused before B2 is asked. */
const HOSTILE_PATHS = [
  "/..",
  "/../secret.txt",
  "/a/../../secret.txt",
  "/./secret.txt",
  "/%2e%2e/secret.txt",
  "/%2E%2E/secret.txt",
  "/.%2e/secret.txt",
  "/%2E./secret.txt",
  "/%2e/secret.txt",
  "/a%2F..%2F..%2Fsecret.txt",
  "/..%2fsecret.txt",
  "/%2e%2e%2fsecret.txt",
  "/a%5C..%5C..%5Csecret.txt",
  "/a\\..\\secret.txt",
  "//secret.txt",
  "/a//secret.txt",
  "/%00secret.txt",
  "/a%0D%0ASet-Cookie:%20x=1",
  "/a%1Bb",
  "/a%7F",
  "/%",
  "/%zz",
  "/%C0%AE%C0%AE/secret.txt",
  "/%C3",
  `/${"a".repeat(1020)}`,
];

Deno.test("readConfig() applies the defaults of absent options", () => {
  assert.deepEqual(
    readConfig({
      B2_DOWNLOAD_TOKEN: "token",
      B2_DOWNLOAD_URL: "https://f004.backblazeb2.com/",
      B2_BUCKET_NAME: "vault",
    }),
    {
      token: "token",
      downloadUrl: "https://f004.backblazeb2.com",
      bucketName: "vault",
      prefix: "",
      urlStyle: "plain",
      indexFile: "index.html",
      cacheTtl: 86400,
      cacheControl: "",
      corsOrigins: [],
      timeoutMs: 30000,
      activeContent: "serve",
      signing: {
        prefixes: [],
        indexFile: "index.html",
        key: "",
        previousKey: "",
        previousUntil: 0,
        maxTtl: 604800,
      },
      // No binding means a deploy by an older refresh, which only knew the Cache API.
      cacheMode: "cache-api",
      staleWhileRevalidate: 86400,
      staleIfError: 604800,
      purgeKey: "",
      fingerprint: "",
      segmentSize: 8 * 1024 * 1024,
      // The Cache API's own limit on what this worker keeps whole.
      segmentThreshold: 100 * 1024 * 1024,
    },
  );
});

Deno.test("readConfig() reads every option", () => {
  assert.deepEqual(
    readConfig({
      B2_DOWNLOAD_TOKEN: "token",
      B2_DOWNLOAD_URL: "https://f004.backblazeb2.com",
      B2_BUCKET_NAME: "vault",
      B2_FILE_PREFIX: "site/",
      WORKER_URL_STYLE: "b2",
      WORKER_INDEX_FILE: "",
      WORKER_CACHE_TTL: "0",
      WORKER_CACHE_CONTROL: " public, max-age=60 ",
      WORKER_CORS_ORIGINS: "https://a.example, https://b.example/",
      WORKER_B2_TIMEOUT_MS: "500",
      WORKER_ACTIVE_CONTENT: "sandbox",
      WORKER_SIGNED_PREFIXES: "/members/, /caf%C3%A9,/%zz/",
      WORKER_SIGNING_KEY: "current",
      WORKER_SIGNING_KEY_PREVIOUS: "previous",
      WORKER_SIGNING_KEY_PREVIOUS_UNTIL: "2026-12-31T00:00:00Z",
      WORKER_SIGNED_MAX_TTL: "3600",
      WORKER_CACHE_MODE: "workers-cache",
      WORKER_STALE_WHILE_REVALIDATE: "30",
      WORKER_STALE_IF_ERROR: "0",
      WORKER_PURGE_KEY: "ab".repeat(32),
      WORKER_FINGERPRINT: "2-0123456789abcdef",
      WORKER_SEGMENT_SIZE: "1048576",
      // Never above the cache's own limit.
      WORKER_SEGMENT_THRESHOLD: "600000000",
    }),
    {
      token: "token",
      downloadUrl: "https://f004.backblazeb2.com",
      bucketName: "vault",
      prefix: "site/",
      urlStyle: "b2",
      indexFile: "",
      cacheTtl: 0,
      cacheControl: "public, max-age=60",
      corsOrigins: ["https://a.example", "https://b.example"],
      timeoutMs: 500,
      activeContent: "sandbox",
      signing: {
        // A prefix the worker cannot read protects everything rather than nothing.
        prefixes: ["/members/", "/café/", "/"],
        indexFile: "",
        key: "current",
        previousKey: "previous",
        previousUntil: 1798675200,
        maxTtl: 3600,
      },
      cacheMode: "workers-cache",
      staleWhileRevalidate: 30,
      staleIfError: 0,
      purgeKey: "ab".repeat(32),
      fingerprint: "2-0123456789abcdef",
      segmentSize: 1048576,
      segmentThreshold: 512_000_000,
    },
  );
});

Deno.test("objectName() maps plain paths under the prefix, decoding each segment once", async (t) => {
  const table: [string, string][] = [
    ["/a.txt", "site/a.txt"],
    ["/", "site/index.html"],
    ["/docs/", "site/docs/index.html"],
    ["/with%20space.txt", "site/with space.txt"],
    ["/caf%C3%A9/men%C3%BC.txt", "site/café/menü.txt"],
    ["/a+b.txt", "site/a+b.txt"],
    ["/100%25.txt", "site/100%.txt"],
    ["/%252e%252e/a.txt", "site/%2e%2e/a.txt"],
    ["/file/vault/a.txt", "site/file/vault/a.txt"],
  ];
  for (const [path, name] of table) {
    await t.step(path, () => assert.deepEqual(objectName(path, PLAIN), { name }));
  }
});

Deno.test("objectName() refuses dot segments, encoded slashes, empty segments and control characters", async (t) => {
  for (const path of HOSTILE_PATHS) {
    await t.step(
      path.slice(0, 40),
      () => assert.deepEqual(objectName(path, PLAIN), { status: 400 }),
    );
  }
});

Deno.test("objectName() answers 404 for a folder when the index file is off", () => {
  assert.deepEqual(objectName("/docs/", { ...PLAIN, indexFile: "" }), { status: 404 });
});

Deno.test("objectName() applies no prefix when there is none", () => {
  assert.deepEqual(objectName("/a/b.txt", { ...PLAIN, prefix: "" }), { name: "a/b.txt" });
});

Deno.test("objectName() takes full names in the b2 style, only this bucket, only under the prefix", async (t) => {
  const table: [string, ReturnType<typeof objectName>][] = [
    ["/file/vault/site/a.txt", { name: "site/a.txt" }],
    ["/file/vault/site/", { name: "site/index.html" }],
    ["/file/vault/site/caf%C3%A9.txt", { name: "site/café.txt" }],
    ["/file/other/site/a.txt", { status: 404 }],
    ["/file/vault/private/a.txt", { status: 404 }],
    ["/file/vault", { status: 404 }],
    ["/site/a.txt", { status: 404 }],
    ["/", { status: 404 }],
    ["/file/vault/site/%2e%2e/a.txt", { status: 400 }],
    ["/file/vault/site%2F..%2Fprivate/a.txt", { status: 400 }],
  ];
  for (const [path, expected] of table) {
    await t.step(path, () => assert.deepEqual(objectName(path, B2_STYLE), expected));
  }
});

Deno.test("b2Url() percent-encodes each segment of the name and keeps the slashes", () => {
  assert.equal(
    b2Url(
      { downloadUrl: "https://f004.backblazeb2.com", bucketName: "vault" },
      "site/a b+c%/café.txt",
    ),
    "https://f004.backblazeb2.com/file/vault/site/a%20b%2Bc%25/caf%C3%A9.txt",
  );
});

Deno.test("parseRange() reads one bytes range and ignores anything else", async (t) => {
  const table: [string | null, RangeSpec | undefined][] = [
    ["bytes=0-", { start: 0 }],
    ["bytes=2-4", { start: 2, end: 4 }],
    ["bytes=-5", { suffix: 5 }],
    [" bytes=7-7 ", { start: 7, end: 7 }],
    ["bytes=5-2", undefined],
    ["bytes=0-1,3-4", undefined],
    ["bytes=-", undefined],
    ["bytes=a-b", undefined],
    ["items=0-1", undefined],
    [null, undefined],
  ];
  for (const [header, expected] of table) {
    await t.step(String(header), () => assert.deepEqual(parseRange(header), expected));
  }
});

Deno.test("resolveRange() clamps to the object and reports unsatisfiable ranges", async (t) => {
  const table: [RangeSpec, number, ReturnType<typeof resolveRange>][] = [
    [{ start: 0 }, 10, { start: 0, end: 9 }],
    [{ start: 2, end: 4 }, 10, { start: 2, end: 4 }],
    [{ start: 2, end: 100 }, 10, { start: 2, end: 9 }],
    [{ suffix: 3 }, 10, { start: 7, end: 9 }],
    [{ suffix: 30 }, 10, { start: 0, end: 9 }],
    [{ start: 10 }, 10, undefined],
    [{ suffix: 0 }, 10, undefined],
    [{ start: 0 }, 0, undefined],
  ];
  for (const [range, size, expected] of table) {
    await t.step(`${formatRange(range)} of ${size}`, () => {
      assert.deepEqual(resolveRange(range, size), expected);
    });
  }
});

Deno.test("formatRange() writes what parseRange() reads", () => {
  for (const range of [{ start: 0 }, { start: 2, end: 4 }, { suffix: 5 }]) {
    assert.deepEqual(parseRange(formatRange(range)), range);
  }
});

Deno.test("notModified() follows RFC 9110: If-None-Match first, then If-Modified-Since", async (t) => {
  const object = new Headers({ ETag: '"abc"', "Last-Modified": "Tue, 14 Nov 2023 22:13:20 GMT" });
  const table: [string, Record<string, string>, boolean][] = [
    ["same ETag", { "If-None-Match": '"abc"' }, true],
    ["weak form of the ETag", { "If-None-Match": 'W/"abc"' }, true],
    ["ETag in a list", { "If-None-Match": '"x", "abc"' }, true],
    ["any ETag", { "If-None-Match": "*" }, true],
    ["other ETag", { "If-None-Match": '"x"' }, false],
    ["same date", { "If-Modified-Since": "Tue, 14 Nov 2023 22:13:20 GMT" }, true],
    ["later date", { "If-Modified-Since": "Wed, 15 Nov 2023 00:00:00 GMT" }, true],
    ["earlier date", { "If-Modified-Since": "Mon, 13 Nov 2023 00:00:00 GMT" }, false],
    ["unreadable date", { "If-Modified-Since": "yesterday" }, false],
    ["other ETag, later date", {
      "If-None-Match": '"x"',
      "If-Modified-Since": "Wed, 15 Nov 2023 00:00:00 GMT",
    }, false],
    ["no condition", {}, false],
  ];
  for (const [label, request, expected] of table) {
    await t.step(label, () => assert.equal(notModified(new Headers(request), object), expected));
  }
});

Deno.test("ifRangeMatches() lets a range apply only to the object the client has", async (t) => {
  const object = new Headers({ ETag: '"abc"', "Last-Modified": "Tue, 14 Nov 2023 22:13:20 GMT" });
  const table: [string, Record<string, string>, boolean][] = [
    ["no If-Range", {}, true],
    ["same ETag", { "If-Range": '"abc"' }, true],
    ["same date", { "If-Range": "Tue, 14 Nov 2023 22:13:20 GMT" }, true],
    ["weak ETag", { "If-Range": 'W/"abc"' }, false],
    ["other ETag", { "If-Range": '"x"' }, false],
  ];
  for (const [label, request, expected] of table) {
    await t.step(label, () => assert.equal(ifRangeMatches(new Headers(request), object), expected));
  }
});

Deno.test("publicHeaders() keeps only the allowlist", () => {
  const b2 = new Headers({
    "Content-Type": "image/png",
    "Content-Length": "10",
    "Accept-Ranges": "bytes",
    "Content-Disposition": "inline",
    "x-bz-file-name": "site/a.png",
    "x-bz-file-id": "4_zabc",
    "x-bz-content-sha1": "abc",
    "x-bz-info-src_last_modified_millis": "1",
    "Set-Cookie": "a=1",
    Server: "nginx",
    "x-b2cdn-browser-cache-control": "max-age=1",
  });
  assert.deepEqual(Object.fromEntries(publicHeaders(b2)), {
    "accept-ranges": "bytes",
    "content-disposition": "inline",
    "content-length": "10",
    "content-type": "image/png",
  });
});

Deno.test("objectHeaders() takes the ETag from B2's SHA-1, then the large file SHA-1, then the file id", async (t) => {
  const table: [string, Record<string, string>, string][] = [
    ["content SHA-1", { "x-bz-content-sha1": "aaa", "x-bz-file-id": "4_z1" }, '"aaa"'],
    ["unverified content SHA-1", { "x-bz-content-sha1": "unverified:bbb" }, '"bbb"'],
    ["large file SHA-1", {
      "x-bz-content-sha1": "none",
      "x-bz-info-large_file_sha1": "ccc",
      "x-bz-file-id": "4_z1",
    }, '"ccc"'],
    // B2's own example id: the bucket's id after "_z" stays inside.
    ["file id, without the bucket's id", {
      "x-bz-content-sha1": "none",
      "x-bz-file-id":
        "4_z27c88f1d182b150646ff0b16_f1004c5a4c2f7b1f1_d20260101_m120000_c002_v0001000_t0012",
    }, '"4_f1004c5a4c2f7b1f1_d20260101_m120000_c002_v0001000_t0012"'],
  ];
  for (const [label, b2, etag] of table) {
    await t.step(label, () => {
      const headers = objectHeaders(new Headers(b2), { cacheTtl: 60, cacheControl: "" });
      assert.equal(headers.get("ETag"), etag);
    });
  }
});

Deno.test("objectHeaders() sets validators and both lifetimes", async (t) => {
  const b2 = {
    "Content-Type": "image/png",
    "Content-Length": "10",
    "x-bz-content-sha1": "aaa",
    "x-bz-upload-timestamp": "1700000000000",
  };
  const expected = {
    "accept-ranges": "bytes",
    "cache-control": "public, max-age=120",
    "content-length": "10",
    "content-type": "image/png",
    etag: '"aaa"',
    "last-modified": "Tue, 14 Nov 2023 22:13:20 GMT",
  };
  const table: [string, Record<string, string>, string, string][] = [
    ["default browser lifetime", {}, "", "public, max-age=3600"],
    ["the object's own", { "Cache-Control": "max-age=5" }, "", "max-age=5"],
    ["configured, over the object's", { "Cache-Control": "max-age=5" }, "no-cache", "no-cache"],
  ];
  for (const [label, extra, cacheControl, browser] of table) {
    await t.step(label, () => {
      const headers = objectHeaders(new Headers({ ...b2, ...extra }), {
        cacheTtl: 120,
        cacheControl,
      });
      assert.deepEqual(Object.fromEntries(headers), {
        ...expected,
        "x-b2cdn-browser-cache-control": browser,
      });
    });
  }
  await t.step("no upload time, no Last-Modified", () => {
    const headers = objectHeaders(new Headers({ "x-bz-file-id": "4_z1" }), {
      cacheTtl: 120,
      cacheControl: "",
    });
    assert.equal(headers.get("Last-Modified"), null);
  });
});

Deno.test("corsHeaders() allows the configured origins only", async (t) => {
  const exposed = "Accept-Ranges, Content-Length, Content-Range, ETag, Last-Modified";
  const list = ["https://a.example", "https://b.example"];
  const table: [string, string | null, string[], Record<string, string>][] = [
    ["CORS off", "https://a.example", [], {}],
    ["any origin", "https://x.example", ["*"], {
      "Access-Control-Allow-Origin": "*",
      "Access-Control-Expose-Headers": exposed,
      Vary: "Origin",
    }],
    ["listed origin", "https://b.example", list, {
      "Access-Control-Allow-Origin": "https://b.example",
      "Access-Control-Expose-Headers": exposed,
      Vary: "Origin",
    }],
    ["other origin", "https://x.example", list, { Vary: "Origin" }],
    ["no origin", null, list, { Vary: "Origin" }],
  ];
  for (const [label, origin, allowed, expected] of table) {
    await t.step(label, () => assert.deepEqual(corsHeaders(origin, allowed), expected));
  }
});

Deno.test("sliceBody() streams the range across chunks and stops reading after it", async () => {
  let pulls = 0;
  let cancelled = false;
  const source = new ReadableStream<Uint8Array>({
    pull(controller) {
      const first = pulls++ * 4;
      controller.enqueue(Uint8Array.from([0, 1, 2, 3], (i) => first + i));
    },
    cancel() {
      cancelled = true;
    },
  }, { highWaterMark: 0 });
  const bytes = await new Response(sliceBody(source, { start: 3, end: 9 })).bytes();
  assert.deepEqual([...bytes], [3, 4, 5, 6, 7, 8, 9]);
  assert.deepEqual({ pulls, cancelled }, { pulls: 3, cancelled: true });
});

// ---------------------------------------------------------------------------
// The uploaded module in workerd
// ---------------------------------------------------------------------------

// Distinctive, so that any appearance in an answer is a leak and not a coincidence.
const BUCKET = "vault-7f3a9c";
/** The bucket's id, which B2's file ids carry: no answer may show it either. */
const BUCKET_ID = "bucket-1";
const PREFIX = "site/";
// The public origin the worker sees; fixed so cache keys survive a restart.
const SITE = "https://cdn.example.com";
const VIDEO_SIZE = 100 * 1024 * 1024 + 1;
const HELLO_SHA1 = '"2aae6c35c94fcfb415dbe95f408b9ce91ee846ed"';
const LAST_MODIFIED = "Tue, 14 Nov 2023 22:13:20 GMT";

const FILES: FakeFile[] = [
  { name: "site/hello.txt", body: "hello world", contentType: "text/plain" },
  { name: "site/index.html", body: "<h1>home</h1>", contentType: "text/html" },
  { name: "site/docs/index.html", body: "<h1>docs</h1>", contentType: "text/html" },
  { name: "site/with space.txt", body: "space", contentType: "text/plain" },
  { name: "site/café/menü.txt", body: "unicode", contentType: "text/plain" },
  { name: "site/a+b.txt", body: "plus", contentType: "text/plain" },
  { name: "site/100%.txt", body: "percent", contentType: "text/plain" },
  { name: "site/own-cache.txt", body: "own", info: { "b2-cache-control": "max-age=60" } },
  { name: "site/pattern.bin", body: { size: 1000 } },
  // What rclone uploads: its modification time in the file info (backend/b2/b2.go, timeKey).
  {
    name: "site/backup.tar",
    body: "backup bytes",
    uploadTimestamp: 1_650_000_000_000,
    info: { src_last_modified_millis: "1600000000123", author: "caf%C3%A9" },
  },
  // A large file uploaded in parts: no SHA-1 of its own ("none"), the whole file's in its info.
  {
    name: "site/parts.bin",
    body: { size: 2000 },
    info: { large_file_sha1: "0123456789abcdef0123456789abcdef01234567" },
  },
  // Just past the largest object the worker keeps at the edge.
  { name: "site/video.bin", body: { size: VIDEO_SIZE }, contentType: "video/mp4" },
  // Outside the prefix: the worker must never serve these, even with a bucket-wide token.
  { name: "secret.txt", body: `${BUCKET} secret` },
  { name: "private/a.txt", body: "private" },
];

/** What a visitor got, without the framing miniflare adds. */
interface Answer {
  status: number;
  headers: Record<string, string>;
  body: string;
}

interface TestWorker {
  miniflare: Miniflare;
  token: string;
  /** What the worker wrote to stdout and stderr (`console.*`). */
  logs: string[];
  /** Answers checked for leaks so far. */
  checked: number;
  /** A request to `SITE + path` as a visitor sends it. */
  visit(path: string, init?: RequestInit): Promise<Answer>;
  /** A request whose path reaches workerd byte for byte (fetch would normalize it first). */
  raw(path: string): Promise<Answer>;
  /** The downloads B2 got since the last call. */
  downloads(): { method: string; path: string; headers: Headers }[];
  dispose(): Promise<void>;
}

interface WorkerSetup {
  token?: string;
  prefix?: string;
  downloadUrl?: string;
  options?: Partial<WorkerOptions>;
  /** Bindings `refresh` does not set. */
  extraBindings?: Record<string, string>;
  cachePersist?: string;
}

const DEFAULT_OPTIONS: WorkerOptions = {
  urlStyle: "plain",
  indexFile: "index.html",
  cacheTtl: 86400,
  cacheControl: "",
  corsOrigins: "",
  // These tests pin the Cache API mode (caches.default); Workers Cache has its own below.
  cacheMode: "cache-api",
};

function startB2(): FakeB2 {
  return startFakeB2({
    buckets: [{ id: BUCKET_ID, name: BUCKET, files: structuredClone(FILES) }],
  });
}

/** Runs exactly what `refresh` uploads, module and bindings, in workerd. */
async function startWorker(b2: FakeB2, setup: WorkerSetup = {}): Promise<TestWorker> {
  // A token for the whole bucket, so that only the worker keeps visitors inside the prefix.
  const token = setup.token ?? b2.issueDownloadToken(BUCKET, "", 3600);
  const upload = workerUpload(await loadWorkerModule(), {
    downloadToken: token,
    downloadUrl: setup.downloadUrl ?? b2.url,
    bucketName: BUCKET,
    prefix: setup.prefix ?? PREFIX,
    issuedAt: Date.now(),
    expiresAt: Date.now() + 3600_000,
    options: { ...DEFAULT_OPTIONS, ...setup.options },
  });
  for (const [name, text] of Object.entries(setup.extraBindings ?? {})) {
    upload.metadata.bindings.push({ type: "plain_text", name, text });
  }
  const logs: string[] = [];
  const { miniflare, url } = await startLocalWorker(upload, {
    onLog: (text) => logs.push(text),
    ...(setup.cachePersist && { cachePersist: setup.cachePersist }),
  });
  const address = new URL(url);
  const signing = setup.options?.signing;
  // The b2 URL style names the bucket in every path and shows B2's description of each object,
  // whose file id carries the bucket's id: accepted there, and nowhere else.
  const b2Style = setup.options?.urlStyle === "b2";
  const secrets = [
    token,
    // The b2 style names the bucket in every URL, so a listing's links show it.
    setup.options?.urlStyle === "b2" ? undefined : BUCKET,
    BUCKET_ID,
    new URL(b2.url).host,
    signing?.key,
    signing?.previousKey,
    setup.options?.listing?.keyId,
    setup.options?.listing?.key,
  ]
    .filter((secret) => secret !== undefined);
  let seen = b2.requests.length;

  const worker: TestWorker = {
    miniflare,
    token,
    logs,
    checked: 0,
    async visit(path, init = {}) {
      const headers = new Headers(init.headers);
      // Otherwise miniflare compresses text the way Cloudflare does and drops Content-Length.
      if (!headers.has("Accept-Encoding")) headers.set("Accept-Encoding", "identity");
      const response = await miniflare.dispatchFetch(`${SITE}${path}`, {
        ...init,
        headers,
      } as never);
      return check(response.status, response.headers, await response.bytes());
    },
    raw(path) {
      return new Promise((resolve, reject) => {
        const request = http.request({
          host: address.hostname,
          port: Number(address.port),
          path,
          headers: { Host: new URL(SITE).host, "Accept-Encoding": "identity" },
        }, (response) => {
          const chunks: Uint8Array<ArrayBuffer>[] = [];
          response.on("data", (chunk: Uint8Array<ArrayBuffer>) => chunks.push(chunk));
          response.on("end", () => {
            const headers = new Headers();
            for (const [name, value] of Object.entries(response.headers)) {
              headers.set(name, String(value));
            }
            new Blob(chunks).bytes()
              .then((body) => resolve(check(response.statusCode ?? 0, headers, body)))
              .catch(reject);
          });
        });
        request.on("error", reject);
        request.end();
      });
    },
    downloads() {
      const fresh = b2.requests.slice(seen).filter((r) => r.path.startsWith("/file/"));
      seen = b2.requests.length;
      return fresh;
    },
    dispose: () => miniflare.dispose(),
  };

  /** Every answer, error pages included: no B2 header, token, bucket or B2 host; nosniff. */
  function check(status: number, raw: Headers, bytes: Uint8Array): Answer {
    const headers: Record<string, string> = {};
    for (const [name, value] of raw) {
      if (name !== "mf-content-encoding" && name !== "transfer-encoding") headers[name] = value;
    }
    const body = new TextDecoder().decode(bytes);
    const where = `answer ${status} ${JSON.stringify(headers)}`;
    assert.equal(headers["x-content-type-options"], "nosniff", where);
    for (const name of Object.keys(headers)) {
      const described = b2Style && B2_DESCRIPTION.test(name);
      assert.ok(described || !/^x-bz|^x-b2cdn/.test(name), `${where} has ${name}`);
    }
    const { "x-bz-file-id": fileId, ...rest } = headers;
    // The account tokens the worker got with the listing key, so far.
    for (const secret of [...secrets, ...b2.accountTokens]) {
      assert.ok(!JSON.stringify(rest).includes(secret), `${where} shows ${secret}`);
      assert.ok(!body.includes(secret), `${where} body shows ${secret}`);
      assert.ok(
        !fileId?.includes(secret) || (b2Style && secret === BUCKET_ID),
        `${where} shows ${secret} in its file id`,
      );
    }
    worker.checked++;
    return { status, headers, body };
  }

  return worker;
}

/** What B2's answers describe an object with, shown in the b2 URL style only. */
const B2_DESCRIPTION = /^x-bz-(file-id|file-name|content-sha1|upload-timestamp|info-.+)$/;

/** An answer's `x-bz-*` headers. */
function b2Description(answer: Answer): Record<string, string> {
  return Object.fromEntries(Object.entries(answer.headers).filter(([n]) => n.startsWith("x-bz-")));
}

/** The headers every object answer has, for whole-object assertions. */
function objectAnswerHeaders(extra: Record<string, string>): Record<string, string> {
  return {
    "accept-ranges": "bytes",
    "cache-control": "public, max-age=3600",
    "last-modified": LAST_MODIFIED,
    "x-content-type-options": "nosniff",
    ...extra,
  };
}

function errorAnswer(status: number, text: string, extra: Record<string, string> = {}): Answer {
  return {
    status,
    headers: {
      "cache-control": "no-store",
      "content-length": String(text.length + 1),
      "content-type": "text/plain; charset=utf-8",
      "x-content-type-options": "nosniff",
      ...extra,
    },
    body: `${text}\n`,
  };
}

function patternText(start: number, end: number): string {
  const bytes = Uint8Array.from({ length: end - start + 1 }, (_, i) => patternByte(start + i));
  return new TextDecoder().decode(bytes);
}

Deno.test("worker in workerd, plain URLs and default options", async (t) => {
  const b2 = startB2();
  const worker = await startWorker(b2, { extraBindings: { WORKER_B2_TIMEOUT_MS: "300" } });
  try {
    await t.step("1 methods: other methods get 405 with Allow, before B2", async () => {
      for (const method of ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"]) {
        assert.deepEqual(
          await worker.visit("/hello.txt", { method }),
          errorAnswer(405, "Method not allowed", { allow: "GET, HEAD" }),
        );
      }
      assert.deepEqual(worker.downloads(), []);
    });

    await t.step(
      "2 names: nothing of B2's description of an object, even with file info",
      async () => {
        // startWorker's check() refuses any x-bz-* header and the bucket's id in every answer.
        const first = await worker.visit("/backup.tar");
        await cachedCopy(worker, "/backup.tar");
        const answers = [
          first,
          await worker.visit("/backup.tar"),
          await worker.visit("/backup.tar", { method: "HEAD" }),
          await worker.visit("/backup.tar", { headers: { "If-None-Match": first.headers.etag! } }),
        ];
        assert.deepEqual(answers.map((a) => [a.status, b2Description(a)]), [
          [200, {}],
          [200, {}],
          [200, {}],
          [304, {}],
        ]);
        worker.downloads();
      },
    );

    await t.step("1 methods: HEAD is asked of B2 as HEAD and answered without a body", async () => {
      assert.deepEqual(await worker.visit("/pattern.bin", { method: "HEAD" }), {
        status: 200,
        headers: objectAnswerHeaders({
          "content-length": "1000",
          "content-type": "application/octet-stream",
          etag: '"4_f16x1000"',
        }),
        body: "",
      });
      assert.deepEqual(worker.downloads().map((r) => r.method), ["HEAD"]);
    });

    await t.step("2 names: percent-encoding round-trips and the prefix is applied", async () => {
      const table: [string, string][] = [
        ["/hello.txt", "hello world"],
        ["/", "<h1>home</h1>"],
        ["/docs/", "<h1>docs</h1>"],
        ["/with%20space.txt", "space"],
        ["/caf%C3%A9/men%C3%BC.txt", "unicode"],
        ["/a+b.txt", "plus"],
        ["/100%25.txt", "percent"],
      ];
      for (const [path, body] of table) {
        const answer = await worker.visit(path);
        assert.deepEqual({ status: answer.status, body: answer.body }, { status: 200, body }, path);
      }
      assert.deepEqual(worker.downloads().map((r) => r.path), [
        `/file/${BUCKET}/site/hello.txt`,
        `/file/${BUCKET}/site/index.html`,
        `/file/${BUCKET}/site/docs/index.html`,
        `/file/${BUCKET}/site/with%20space.txt`,
        `/file/${BUCKET}/site/caf%C3%A9/men%C3%BC.txt`,
        `/file/${BUCKET}/site/a%2Bb.txt`,
        `/file/${BUCKET}/site/100%25.txt`,
      ]);
    });

    await t.step("2 names: hostile paths never reach a name outside the prefix", async (t) => {
      // workerd, like Cloudflare's edge, resolves raw and %2e dot segments and turns "\" into
      // "/" before the worker runs: those arrive as a harmless name inside the prefix.
      const resolvedByRuntime = new Map([
        ["/..", "/"],
        ["/../secret.txt", "/secret.txt"],
        ["/a/../../secret.txt", "/secret.txt"],
        ["/./secret.txt", "/secret.txt"],
        ["/%2e%2e/secret.txt", "/secret.txt"],
        ["/%2E%2E/secret.txt", "/secret.txt"],
        ["/.%2e/secret.txt", "/secret.txt"],
        ["/%2E./secret.txt", "/secret.txt"],
        ["/%2e/secret.txt", "/secret.txt"],
        ["/a\\..\\secret.txt", "/secret.txt"],
      ]);
      for (const path of HOSTILE_PATHS) {
        await t.step(path.slice(0, 40), async () => {
          const answer = await worker.raw(path);
          const resolved = resolvedByRuntime.get(path);
          if (resolved === undefined) {
            assert.deepEqual(answer, errorAnswer(400, "Bad request"));
            assert.deepEqual(worker.downloads(), []);
          } else {
            assert.notEqual(answer.body, `${BUCKET} secret`);
            for (const download of worker.downloads()) {
              assert.ok(download.path.startsWith(`/file/${BUCKET}/site/`), download.path);
            }
          }
        });
      }
    });

    await t.step("3 upstream: only the token and the range travel to B2", async () => {
      const answer = await worker.visit("/pattern.bin", {
        headers: {
          Authorization: "Bearer visitor-token",
          Cookie: "session=visitor",
          Referer: "https://elsewhere.example/",
          "X-Forwarded-For": "203.0.113.9",
          "User-Agent": "visitor-agent",
          Range: "bytes=100-199",
          "If-None-Match": '"stale"',
        },
      });
      assert.equal(answer.status, 206);
      const [download, ...more] = worker.downloads();
      assert.deepEqual(more, []);
      assert.ok(download);
      // workerd itself adds Host and CF-Worker, as Cloudflare does on every subrequest.
      const headers = Object.fromEntries(
        [...download.headers].filter(([name]) => name !== "host" && name !== "cf-worker"),
      );
      assert.deepEqual(headers, { authorization: worker.token, range: "bytes=100-199" });
    });

    await t.step("4 range: 206 with Content-Range, including bytes=0- and suffixes", async () => {
      const table: [string, string, number, number][] = [
        ["bytes=0-", "bytes 0-999/1000", 0, 999],
        ["bytes=0-9", "bytes 0-9/1000", 0, 9],
        ["bytes=500-509", "bytes 500-509/1000", 500, 509],
        ["bytes=-10", "bytes 990-999/1000", 990, 999],
        ["bytes=995-2000", "bytes 995-999/1000", 995, 999],
      ];
      for (const [range, contentRange, start, end] of table) {
        assert.deepEqual(await worker.visit("/pattern.bin", { headers: { Range: range } }), {
          status: 206,
          headers: objectAnswerHeaders({
            "content-length": String(end - start + 1),
            "content-range": contentRange,
            "content-type": "application/octet-stream",
            etag: '"4_f16x1000"',
          }),
          body: patternText(start, end),
        }, range);
      }
      worker.downloads();
    });

    await t.step("4 range: an unsatisfiable range gets 416, cached or not", async () => {
      const expected = errorAnswer(416, "Range not satisfiable", {
        "content-range": "bytes */1000",
      });
      assert.deepEqual(
        await worker.visit("/pattern.bin", { headers: { Range: "bytes=1000-" } }),
        expected,
      );
      b2.putFile(BUCKET, { name: "site/fresh.bin", body: { size: 1000 } });
      assert.deepEqual(
        await worker.visit("/fresh.bin", { headers: { Range: "bytes=5000-" } }),
        expected,
      );
      worker.downloads();
    });

    await t.step("4 range: HEAD with a range answers the range's headers", async () => {
      b2.putFile(BUCKET, { name: "site/head.bin", body: { size: 1000 } });
      assert.deepEqual(
        await worker.visit("/head.bin", { method: "HEAD", headers: { Range: "bytes=10-19" } }),
        {
          status: 206,
          headers: objectAnswerHeaders({
            "content-length": "10",
            "content-range": "bytes 10-19/1000",
            "content-type": "application/octet-stream",
            etag: '"4_f13x1000"',
          }),
          body: "",
        },
      );
      assert.deepEqual(worker.downloads().map((r) => r.method), ["HEAD"]);
    });

    await t.step("4 range: If-Range with another version gets the whole object", async () => {
      const answer = await worker.visit("/pattern.bin", {
        headers: { Range: "bytes=0-9", "If-Range": '"older"' },
      });
      assert.deepEqual([answer.status, answer.body.length], [200, patternText(0, 999).length]);
      const matching = await worker.visit("/pattern.bin", {
        headers: { Range: "bytes=0-9", "If-Range": '"4_f16x1000"' },
      });
      assert.deepEqual([matching.status, matching.body], [206, patternText(0, 9)]);
    });

    await t.step("5 conditional: validators on every 200 and 304 for a current copy", async () => {
      const full = await worker.visit("/hello.txt");
      assert.deepEqual(full, {
        status: 200,
        headers: objectAnswerHeaders({
          "content-length": "11",
          "content-type": "text/plain",
          etag: HELLO_SHA1,
        }),
        body: "hello world",
      });
      const notModified = {
        status: 304,
        headers: {
          "cache-control": "public, max-age=3600",
          etag: HELLO_SHA1,
          "last-modified": LAST_MODIFIED,
          "x-content-type-options": "nosniff",
        },
        body: "",
      };
      const conditions: Record<string, string>[] = [
        { "If-None-Match": HELLO_SHA1 },
        { "If-None-Match": `W/${HELLO_SHA1}` },
        { "If-Modified-Since": LAST_MODIFIED },
        { "If-None-Match": HELLO_SHA1, Range: "bytes=0-1" },
      ];
      for (const headers of conditions) {
        assert.deepEqual(await worker.visit("/hello.txt", { headers }), notModified);
        assert.deepEqual(
          await worker.visit("/hello.txt", { method: "HEAD", headers }),
          notModified,
        );
      }
      const stale = await worker.visit("/hello.txt", {
        headers: { "If-Modified-Since": "Mon, 13 Nov 2023 00:00:00 GMT" },
      });
      assert.equal(stale.status, 200);
      const changed = await worker.visit("/hello.txt", { headers: { "If-None-Match": '"x"' } });
      assert.equal(changed.status, 200);
      worker.downloads();
    });

    await t.step("5 conditional: a 304 on a miss still fills the cache", async () => {
      b2.putFile(BUCKET, { name: "site/etag.txt", body: "hello world" });
      const headers = { "If-None-Match": HELLO_SHA1 };
      assert.equal((await worker.visit("/etag.txt", { headers })).status, 304);
      await cachedCopy(worker, "/etag.txt");
      assert.deepEqual((await worker.visit("/etag.txt")).body, "hello world");
      assert.equal(worker.downloads().length, 1);
    });

    await t.step("6 streaming: 100 MiB arrive whole, kept as segments", async () => {
      const response = await worker.miniflare.dispatchFetch(`${SITE}/video.bin`);
      assert.equal(response.status, 200);
      assert.equal(response.headers.get("content-length"), String(VIDEO_SIZE));
      assert.deepEqual(await readPattern(response.body), { received: VIDEO_SIZE, mismatches: 0 });
      // Too big to keep whole: B2's first answer says so and is left unread, then 12 aligned
      // segments of 8 MiB are kept and the rest comes in one request.
      const segment = 8 * 1024 * 1024;
      assert.deepEqual(worker.downloads().map((r) => r.headers.get("range")), [
        null,
        ...Array.from({ length: 12 }, (_, k) => `bytes=${k * segment}-${(k + 1) * segment - 1}`),
        `bytes=${12 * segment}-${VIDEO_SIZE - 1}`,
      ]);
      await waitFor(
        async () =>
          (await worker.visit("/video.bin", { headers: { Range: "bytes=100-199" } }))
              .status === 206 && worker.downloads().length === 0,
        "a seek answered from a kept segment",
      );
      const seek = await worker.visit("/video.bin", { headers: { Range: "bytes=100-199" } });
      assert.deepEqual([seek.status, seek.body], [206, patternText(100, 199)]);
      assert.deepEqual(worker.downloads(), []);
    });

    await t.step("6 streaming: a sliced stream outlives the B2 timeout", async () => {
      // A range from 0 that stops short of the end is cut by the worker's own TransformStream,
      // which an abort of the B2 fetch would break. The object is too big to be teed into the
      // cache, so B2 sends at the reader's pace, and the reader pauses past the 300 ms timeout.
      const response = await worker.miniflare.dispatchFetch(`${SITE}/video.bin`, {
        headers: { Range: `bytes=0-${VIDEO_SIZE - 2}` },
      });
      // At most 12 segments an answer: a shorter 206 that says so.
      assert.deepEqual(
        [response.status, response.headers.get("content-range")],
        [206, `bytes 0-${12 * 8 * 1024 * 1024 - 1}/${VIDEO_SIZE}`],
      );
      const read = await readPattern(response.body, { pauseMs: 500, stopAfter: 16 * 1024 * 1024 });
      assert.deepEqual(read, { received: 16 * 1024 * 1024, mismatches: 0 });
      worker.downloads();
    });

    await t.step("7 cache: a repeated request does not reach B2", async () => {
      b2.putFile(BUCKET, { name: "site/repeat.txt", body: "again" });
      const first = await worker.visit("/repeat.txt");
      await cachedCopy(worker, "/repeat.txt");
      const second = await worker.visit("/repeat.txt?utm_source=mail");
      const head = await worker.visit("/repeat.txt", { method: "HEAD" });
      assert.deepEqual(second, first);
      assert.deepEqual(head, { ...first, body: "" });
      assert.equal(worker.downloads().length, 1);
    });

    await t.step("7 cache: ranges are served from the cached object", async () => {
      b2.putFile(BUCKET, { name: "site/seek.bin", body: { size: 1000 } });
      assert.equal((await worker.visit("/seek.bin")).status, 200);
      await cachedCopy(worker, "/seek.bin");
      const answer = await worker.visit("/seek.bin", { headers: { Range: "bytes=700-709" } });
      assert.deepEqual(
        [answer.status, answer.headers["content-range"], answer.body],
        [206, "bytes 700-709/1000", patternText(700, 709)],
      );
      assert.equal(worker.downloads().length, 1);
    });

    await t.step(
      "7 cache: a range from byte 0 fills the cache, a later one goes to B2 uncached",
      async () => {
        b2.putFile(BUCKET, { name: "site/player.bin", body: { size: 1000 } });
        const start = await worker.visit("/player.bin", { headers: { Range: "bytes=0-1" } });
        assert.deepEqual([start.status, start.body], [206, patternText(0, 1)]);
        await cachedCopy(worker, "/player.bin");
        const seek = await worker.visit("/player.bin", { headers: { Range: "bytes=900-" } });
        assert.deepEqual([seek.status, seek.body], [206, patternText(900, 999)]);
        assert.deepEqual(worker.downloads().map((r) => r.headers.get("range")), [null]);

        b2.putFile(BUCKET, { name: "site/middle.bin", body: { size: 1000 } });
        for (let i = 0; i < 2; i++) {
          const middle = await worker.visit("/middle.bin", { headers: { Range: "bytes=500-509" } });
          assert.deepEqual([middle.status, middle.body], [206, patternText(500, 509)]);
        }
        assert.deepEqual(worker.downloads().map((r) => r.headers.get("range")), [
          "bytes=500-509",
          "bytes=500-509",
        ]);
      },
    );

    await t.step(
      "7 cache: the edge keeps the object a day, browsers get its own lifetime",
      async () => {
        const answer = await worker.visit("/own-cache.txt");
        assert.equal(answer.headers["cache-control"], "max-age=60");
        // Looking inside the cache is the only way to see the lifetime the edge was given.
        const cached = await cachedCopy(worker, "/own-cache.txt");
        assert.equal(cached.get("cache-control"), "public, max-age=86400");
        worker.downloads();
      },
    );

    await t.step("7 cache: a 404 is remembered for a minute only", async () => {
      assert.deepEqual(await worker.visit("/later.txt"), errorAnswer(404, "Not found"));
      const cached = await cachedCopy(worker, "/later.txt");
      assert.equal(cached.get("cache-control"), "public, max-age=60");
      assert.deepEqual(await worker.visit("/later.txt"), errorAnswer(404, "Not found"));
      // The runtime answers a ranged match on a cached 404 with 416: it must stay a 404.
      for (const range of ["bytes=0-9", "bytes=5-", "bytes=-5"]) {
        const ranged = await worker.visit("/later.txt", { headers: { Range: range } });
        assert.deepEqual(ranged, errorAnswer(404, "Not found"), range);
      }
      assert.equal(worker.downloads().length, 1);
    });

    await t.step("7 cache: a range of a cached empty object is 416, not a 404", async () => {
      b2.putFile(BUCKET, { name: "site/empty.txt", body: "" });
      assert.equal((await worker.visit("/empty.txt")).status, 200);
      await cachedCopy(worker, "/empty.txt");
      for (const range of ["bytes=0-9", "bytes=-5"]) {
        const ranged = await worker.visit("/empty.txt", { headers: { Range: range } });
        assert.deepEqual([ranged.status, ranged.headers["content-range"]], [416, "bytes */0"]);
      }
      assert.equal(worker.downloads().length, 1);
    });

    await t.step(
      "8 privacy: every answer was checked for B2 headers, token, bucket and host",
      () => {
        // check() in startWorker ran on every answer of this group, error pages included.
        assert.ok(worker.checked > 50, `only ${worker.checked} answers checked`);
      },
    );

    await t.step(
      "9 failures: B2 refusing the token is a generic 502, logged with B2's code",
      async () => {
        const faults: [number, string][] = [
          [401, "expired_auth_token"],
          [401, "bad_auth_token"],
          [403, "access_denied"],
        ];
        for (const [status, code] of faults) {
          b2.fail("/file/", { status, code });
          worker.logs.length = 0;
          assert.deepEqual(await worker.visit("/fault.txt"), errorAnswer(502, "Bad gateway"));
          await waitFor(() => worker.logs.join("").includes(code), "the log");
          const log = worker.logs.join("");
          assert.ok(log.includes(`B2 answered ${status} ${code} for "site/fault.txt"`), log);
          assert.ok(!log.includes(worker.token), log);
        }
      },
    );

    await t.step("9 failures: B2 5xx is 502, and no failure is cached", async () => {
      for (const status of [500, 503]) {
        b2.fail("/file/", { status, code: "service_unavailable" });
        assert.deepEqual(await worker.visit("/fault.txt"), errorAnswer(502, "Bad gateway"));
      }
      b2.putFile(BUCKET, { name: "site/fault.txt", body: "recovered" });
      worker.downloads();
      assert.equal((await worker.visit("/fault.txt")).body, "recovered");
      assert.equal(worker.downloads().length, 1);
    });

    await t.step("9 failures: B2 not answering in time is 504", async () => {
      b2.fail("/file/", { status: 503, hang: true });
      assert.deepEqual(await worker.visit("/slow.txt"), errorAnswer(504, "Gateway timeout"));
      worker.downloads();
    });
  } finally {
    await worker.dispose();
    await b2.close();
  }
});

Deno.test("worker in workerd, b2 URLs, CORS, no index, configured Cache-Control", async (t) => {
  const b2 = startB2();
  const worker = await startWorker(b2, {
    options: {
      urlStyle: "b2",
      indexFile: "",
      cacheTtl: 120,
      cacheControl: "public, max-age=600",
      corsOrigins: "https://app.example, https://admin.example",
    },
  });
  const simple = {
    "access-control-allow-origin": "https://app.example",
    "access-control-expose-headers":
      "Accept-Ranges, Content-Length, Content-Range, ETag, Last-Modified",
    vary: "Origin",
  };
  try {
    await t.step("2 names: B2's own URL shape serves the full name", async () => {
      const answer = await worker.visit(`/file/${BUCKET}/site/hello.txt`);
      assert.deepEqual(answer, {
        status: 200,
        headers: objectAnswerHeaders({
          "cache-control": "public, max-age=600",
          "content-length": "11",
          "content-type": "text/plain",
          etag: HELLO_SHA1,
          vary: "Origin",
          "x-bz-content-sha1": HELLO_SHA1.slice(1, -1),
          "x-bz-file-id": `4_z${BUCKET_ID}_f14x11`,
          "x-bz-file-name": "site/hello.txt",
          "x-bz-upload-timestamp": "1700000000000",
        }),
        body: "hello world",
      });
      assert.deepEqual(worker.downloads().map((r) => r.path), [`/file/${BUCKET}/site/hello.txt`]);
    });

    await t.step(
      "2 names: B2's description of the object on a GET, a HEAD, a 304, a range and a cached copy",
      async () => {
        const path = `/file/${BUCKET}/site/backup.tar`;
        // What rclone sends to its --b2-download-url: its B2 account token.
        const rclone = { Authorization: "account-token-from-rclone-5d1c" };
        const described = {
          "x-bz-content-sha1": "aa4c1d13809b09aa0c9838aec55931ced2432734",
          "x-bz-file-id": `4_z${BUCKET_ID}_f15x12`,
          "x-bz-file-name": "site/backup.tar",
          "x-bz-info-author": "caf%C3%A9",
          "x-bz-info-src_last_modified_millis": "1600000000123",
          "x-bz-upload-timestamp": "1650000000000",
        };
        const fromB2 = await worker.visit(path, { headers: rclone });
        await cachedCopy(worker, path);
        const answers = [
          fromB2,
          await worker.visit(path, { headers: rclone }),
          await worker.visit(path, { method: "HEAD", headers: rclone }),
          await worker.visit(path, {
            headers: { ...rclone, "If-None-Match": fromB2.headers.etag! },
          }),
          await worker.visit(path, { headers: { ...rclone, Range: "bytes=2-5" } }),
        ];
        assert.deepEqual(answers.map((a) => [a.status, b2Description(a)]), [
          [200, described],
          [200, described],
          [200, described],
          [304, described],
          [206, described],
        ]);
        assert.equal(fromB2.headers.etag, `"${described["x-bz-content-sha1"]}"`);
        // B2 got the worker's download token, never what the visitor sent, which no answer shows.
        const asked = worker.downloads();
        assert.deepEqual(asked.map((r) => [r.path, r.headers.get("authorization")]), [
          [path, worker.token],
        ]);
        assert.ok(!JSON.stringify(answers).includes(rclone.Authorization));
      },
    );

    await t.step("2 names: a large file's SHA-1 is in its info, as B2 says it", async () => {
      const answer = await worker.visit(`/file/${BUCKET}/site/parts.bin`, { method: "HEAD" });
      assert.deepEqual(b2Description(answer), {
        "x-bz-content-sha1": "none",
        "x-bz-file-id": `4_z${BUCKET_ID}_f14x2000`,
        "x-bz-file-name": "site/parts.bin",
        "x-bz-info-large_file_sha1": "0123456789abcdef0123456789abcdef01234567",
        "x-bz-upload-timestamp": "1700000000000",
      });
      worker.downloads();
    });

    await t.step(
      "2 names: another bucket, a name outside the prefix or a folder is 404",
      async () => {
        for (
          const path of [
            "/file/other-bucket/site/hello.txt",
            `/file/${BUCKET}/secret.txt`,
            `/file/${BUCKET}/site/../secret.txt`,
            `/file/${BUCKET}/private/a.txt`,
            `/file/${BUCKET}/site/`,
            "/hello.txt",
          ]
        ) {
          assert.deepEqual(
            await worker.raw(path),
            errorAnswer(404, "Not found", { vary: "Origin" }),
            path,
          );
        }
        assert.deepEqual(worker.downloads(), []);
      },
    );

    await t.step(
      "10 CORS: a preflight from an allowed origin names origin, methods and Range",
      async () => {
        const answer = await worker.visit(`/file/${BUCKET}/site/hello.txt`, {
          method: "OPTIONS",
          headers: {
            Origin: "https://app.example",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "range",
          },
        });
        assert.deepEqual(answer, {
          status: 204,
          headers: {
            ...simple,
            allow: "GET, HEAD, OPTIONS",
            "access-control-allow-headers": "Range, If-None-Match, If-Modified-Since, If-Range",
            "access-control-allow-methods": "GET, HEAD, OPTIONS",
            "access-control-max-age": "86400",
            "x-content-type-options": "nosniff",
          },
          body: "",
        });
      },
    );

    await t.step("10 CORS: a preflight from another origin is not allowed anything", async () => {
      const answer = await worker.visit(`/file/${BUCKET}/site/hello.txt`, {
        method: "OPTIONS",
        headers: { Origin: "https://evil.example", "Access-Control-Request-Method": "GET" },
      });
      assert.deepEqual(answer, {
        status: 204,
        headers: {
          allow: "GET, HEAD, OPTIONS",
          vary: "Origin",
          "x-content-type-options": "nosniff",
        },
        body: "",
      });
    });

    await t.step("10 CORS: simple requests get their own origin, even from the cache", async () => {
      const path = `/file/${BUCKET}/site/hello.txt`;
      const app = await worker.visit(path, { headers: { Origin: "https://app.example" } });
      const admin = await worker.visit(path, { headers: { Origin: "https://admin.example" } });
      const evil = await worker.visit(path, { headers: { Origin: "https://evil.example" } });
      const pick = (
        answer: Answer,
      ) => [answer.headers["access-control-allow-origin"], answer.headers["vary"]];
      assert.deepEqual([pick(app), pick(admin), pick(evil)], [
        ["https://app.example", "Origin"],
        ["https://admin.example", "Origin"],
        [undefined, "Origin"],
      ]);
      assert.deepEqual(
        app.headers,
        objectAnswerHeaders({
          ...simple,
          "cache-control": "public, max-age=600",
          "content-length": "11",
          "content-type": "text/plain",
          etag: HELLO_SHA1,
          "x-bz-content-sha1": HELLO_SHA1.slice(1, -1),
          "x-bz-file-id": `4_z${BUCKET_ID}_f14x11`,
          "x-bz-file-name": "site/hello.txt",
          "x-bz-upload-timestamp": "1700000000000",
        }),
      );
    });

    await t.step("7 cache: the edge keeps the object for WORKER_CACHE_TTL", async () => {
      const cached = await cachedCopy(worker, `/file/${BUCKET}/site/hello.txt`);
      assert.equal(cached.get("cache-control"), "public, max-age=120");
      assert.deepEqual(worker.downloads(), []);
    });

    await t.step("1 methods: with CORS on, Allow names OPTIONS", async () => {
      assert.deepEqual(
        await worker.visit(`/file/${BUCKET}/site/hello.txt`, { method: "POST" }),
        errorAnswer(405, "Method not allowed", { allow: "GET, HEAD, OPTIONS", vary: "Origin" }),
      );
    });
  } finally {
    await worker.dispose();
    await b2.close();
  }
});

Deno.test("worker in workerd keeps cached objects across a redeploy, until the cache is off", async () => {
  const b2 = startB2();
  const cachePersist = await Deno.makeTempDir();
  try {
    const before = await startWorker(b2, { cachePersist });
    let first: Answer;
    try {
      first = await before.visit("/hello.txt");
      assert.equal(first.body, "hello world");
      await cachedCopy(before, "/hello.txt");
      assert.equal(before.downloads().length, 1);
    } finally {
      await before.dispose();
    }
    // The old token is gone, as after its week; refresh deploys the same module with a new one.
    b2.downloadTokens.delete(before.token);
    const after = await startWorker(b2, { cachePersist });
    try {
      assert.notEqual(after.token, before.token);
      assert.deepEqual(await after.visit("/hello.txt"), first);
      assert.deepEqual(after.downloads(), []);
      assert.equal((await after.visit("/docs/")).body, "<h1>docs</h1>");
      assert.deepEqual(after.downloads().map((r) => r.headers.get("authorization")), [
        after.token,
      ]);
    } finally {
      await after.dispose();
    }
    // WORKER_CACHE_TTL 0 turns the edge cache off: the cached copy is not served.
    const off = await startWorker(b2, { cachePersist, options: { cacheTtl: 0 } });
    try {
      for (let i = 0; i < 2; i++) assert.equal((await off.visit("/hello.txt")).status, 200);
      assert.equal(off.downloads().length, 2);
    } finally {
      await off.dispose();
    }
  } finally {
    await b2.close();
    await Deno.remove(cachePersist, { recursive: true });
  }
});

Deno.test("worker in workerd shows nothing of B2 in the plain style, even from a copy kept in the b2 style", async () => {
  const b2 = startB2();
  const cachePersist = await Deno.makeTempDir();
  const path = `/file/${BUCKET}/site/backup.tar`;
  try {
    const before = await startWorker(b2, { cachePersist, options: { urlStyle: "b2" } });
    try {
      assert.equal(b2Description(await before.visit(path))["x-bz-file-name"], "site/backup.tar");
      await cachedCopy(before, path);
    } finally {
      await before.dispose();
    }
    // The Cache API keys by path alone and outlives the refresh: the copy answers this path.
    const after = await startWorker(b2, { cachePersist, prefix: "" });
    try {
      const answer = await after.visit(path);
      assert.deepEqual([answer.status, answer.body, b2Description(answer)], [
        200,
        "backup bytes",
        {},
      ]);
      assert.deepEqual(after.downloads(), []);
    } finally {
      await after.dispose();
    }
  } finally {
    await b2.close();
    await Deno.remove(cachePersist, { recursive: true });
  }
});

Deno.test("worker in workerd answers 502 when B2 cannot be reached", async () => {
  const b2 = startB2();
  // Nothing listens on port 1 of this machine: the connection is refused.
  const worker = await startWorker(b2, { downloadUrl: "http://127.0.0.1:1" });
  try {
    assert.deepEqual(await worker.visit("/hello.txt"), errorAnswer(502, "Bad gateway"));
    await waitFor(() => worker.logs.join("").includes("B2 did not answer"), "the log");
  } finally {
    await worker.dispose();
    await b2.close();
  }
});

/**
 * Reads a body of `patternByte()`s as it streams: pauses after the first
 * chunk if asked, stops (and cancels) after `stopAfter` bytes, and fails
 * instead of hanging when the body stalls for 10 s.
 */
async function readPattern(
  body: ReadableStream<Uint8Array> | null,
  options: { pauseMs?: number; stopAfter?: number } = {},
): Promise<{ received: number; mismatches: number }> {
  assert.ok(body);
  const { pauseMs = 0, stopAfter = Infinity } = options;
  const reader = body.getReader();
  let received = 0;
  let mismatches = 0;
  while (received < stopAfter) {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const stalled = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`body stalled after ${received} bytes`)), 10_000);
    });
    const { done, value } = await Promise.race([reader.read(), stalled]).finally(() =>
      clearTimeout(timer)
    );
    if (done) return { received, mismatches };
    const wanted = value.subarray(0, stopAfter - received);
    for (let i = 0; i < wanted.length; i++) {
      if (wanted[i] !== patternByte(received + i)) mismatches++;
    }
    if (received === 0 && pauseMs > 0) {
      await new Promise((resolve) => setTimeout(resolve, pauseMs));
    }
    received += wanted.length;
  }
  await reader.cancel();
  return { received, mismatches };
}

/** Worker logs and cache writes (`ctx.waitUntil`) land a moment after the answer. */
async function waitFor(condition: () => boolean | Promise<boolean>, what: string): Promise<void> {
  for (let i = 0; i < 100; i++) {
    if (await condition()) return;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  assert.fail(`timed out waiting for ${what}`);
}

/** The copy the edge keeps for `path`, once `cache.put` has finished. */
async function cachedCopy(worker: TestWorker, path: string): Promise<Headers> {
  // miniflare's own types for getCaches() do not resolve under Deno.
  const caches = await worker.miniflare.getCaches() as unknown as { default: Cache };
  const cache = caches.default;
  let headers: Headers | undefined;
  await waitFor(async () => {
    const cached = await cache.match(`${SITE}${path}`);
    await cached?.body?.cancel();
    headers = cached?.headers as Headers | undefined;
    return cached !== undefined;
  }, `${path} in the edge cache`);
  return headers as Headers;
}

// ---------------------------------------------------------------------------
// Signed links
// ---------------------------------------------------------------------------

const KEY = generateSigningKey();
const PREVIOUS_KEY = generateSigningKey();
const OTHER_KEY = generateSigningKey();
const FORBIDDEN = errorAnswer(403, "Forbidden");

function nowSeconds(): number {
  return Math.floor(Date.now() / 1000);
}

/** The path and query of a link signed for `path` on SITE, good for 10 minutes unless told. */
async function signed(path: string, options: Partial<SignLinkOptions> = {}): Promise<string> {
  const { url } = await signLink(SITE, path, { key: KEY, expires: nowSeconds() + 600, ...options });
  const parsed = new URL(url);
  return parsed.pathname + parsed.search;
}

/** A link with one query parameter changed (or removed, with `undefined`). */
function tamper(link: string, name: string, value: string | undefined): string {
  const url = new URL(link, SITE);
  if (value === undefined) url.searchParams.delete(name);
  else url.searchParams.set(name, value);
  return url.pathname + url.search;
}

Deno.test("canonicalPath() decodes each segment once, as objectName() does", async (t) => {
  const table: [string, string | undefined][] = [
    ["/", "/"],
    ["/members/a.mp4", "/members/a.mp4"],
    ["/%6Dembers/a.mp4", "/members/a.mp4"],
    ["/members/", "/members/"],
    ["/caf%C3%A9/", "/café/"],
    ["/100%25/", "/100%/"],
    ["/%252e/", "/%2e/"],
    ["/members//a", undefined],
    ["/members/%2e%2e/a", undefined],
    ["/a%2Fb", undefined],
    ["/%zz", undefined],
    ["members/a", undefined],
    // No path at all: main.ts's own copy refused it while the worker's took it for "/".
    ["", undefined],
  ];
  for (const [path, expected] of table) {
    await t.step(JSON.stringify(path), () => assert.equal(canonicalPath(path), expected));
  }
});

Deno.test("coversPath() matches whole segments only", async (t) => {
  const table: [string, string, boolean][] = [
    ["/course1/", "/course1/a.mp4", true],
    ["/course1/", "/course1/", true],
    ["/course1/", "/course1", true],
    ["/course1/", "/course10/a.mp4", false],
    ["/course1/", "/course1.mp4", false],
    ["/course1/", "/", false],
    ["/", "/anything/at/all", true],
  ];
  for (const [prefix, path, expected] of table) {
    await t.step(`${prefix} ${path}`, () => assert.equal(coversPath(prefix, path), expected));
  }
});

Deno.test("signedLinkQuery() writes what URLSearchParams writes of the grant", async (t) => {
  // The one spelling links were signed and redirected to before it was written by hand.
  const signature = new Uint8Array(32).map((_, i) => (i * 37 + 250) % 256);
  const grants: SignedGrant[] = [
    { path: "/members/a.mp4", prefix: false, expires: 1_800_000_000 },
    { path: "/members/a.mp4", prefix: false, expires: 1_800_000_000, notBefore: 1_700_000_000 },
    {
      path: "/course 1/+é&=?#%/",
      prefix: true,
      expires: 99_999_999_999,
      notBefore: 0,
      downloadName: "Lesson 1 + é & ü = 100%?.mp4*~'!()",
    },
    { path: "/", prefix: true, expires: 1, downloadName: "日本語.txt" },
  ];
  for (const grant of grants) {
    await t.step(JSON.stringify(grant), () => {
      const query = new URLSearchParams({ exp: String(grant.expires) });
      if (grant.notBefore !== undefined) query.set("nbf", String(grant.notBefore));
      if (grant.downloadName !== undefined) query.set("dl", grant.downloadName);
      if (grant.prefix) query.set("scope", grant.path);
      query.set("sig", toBase64Url(signature));
      assert.equal(signedLinkQuery(grant, signature), String(query));
    });
  }
});

Deno.test("checkSignedLink() grants a signature's other spellings the one written", async () => {
  // The 43rd character's 2 unused bits: 4 characters read as the same signature, and each
  // of them must be answered with the spelling sign writes, so that no link has two URLs.
  const now = 1_800_000_000;
  const signing: SigningConfig = {
    prefixes: ["/members/"],
    indexFile: "index.html",
    key: KEY,
    previousKey: "",
    previousUntil: 0,
    maxTtl: 3600,
  };
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  // Links of 48 expiries: their signatures end in most of the 16 groups of 4.
  for (let expires = now + 1; expires <= now + 48; expires++) {
    const link = await signLink(SITE, "/members/a.txt", { key: KEY, expires });
    const sig = new URL(link.url).searchParams.get("sig")!;
    const granted: string[] = [];
    for (const last of alphabet) {
      const url = new URL(link.url);
      url.searchParams.set("sig", sig.slice(0, -1) + last);
      const check = await checkSignedLink(url, { signing, now });
      if (check.access === "refused") continue;
      granted.push(last);
      assert.equal(check.access === "signed" && `?${check.query}`, new URL(link.url).search);
    }
    const base = alphabet.indexOf(sig.at(-1)!) & ~3;
    assert.deepEqual(granted, [...alphabet.slice(base, base + 4)], sig);
  }
});

Deno.test("checkSignedLink() fails closed", async (t) => {
  const now = 1_800_000_000;
  const signing: SigningConfig = {
    prefixes: ["/members/"],
    indexFile: "index.html",
    key: KEY,
    previousKey: "",
    previousUntil: 0,
    maxTtl: 3600,
  };
  const { url, query } = await signLink(SITE, "/members/a.txt", { key: KEY, expires: now + 60 });
  await t.step("a valid link is signed until its expiry", async () => {
    assert.deepEqual(await checkSignedLink(new URL(url), { signing, now }), {
      access: "signed",
      expiresAt: now + 60,
      query,
    });
  });
  await t.step("without a key (a binding set by hand) nothing protected is served", async () => {
    for (const key of ["", "c2hvcnQ"]) {
      const check = await checkSignedLink(new URL(url), { signing: { ...signing, key }, now });
      assert.deepEqual(check, { access: "refused" }, key);
    }
  });
  await t.step("the expiry is exclusive and the cap counts from now", async () => {
    const at = (when: number) => checkSignedLink(new URL(url), { signing, now: when });
    assert.deepEqual(await at(now + 60), { access: "refused" });
    const far = await signLink(SITE, "/members/a.txt", { key: KEY, expires: now + 3600 + 301 });
    const capped = await checkSignedLink(new URL(far.url), { signing, now });
    assert.deepEqual(capped, { access: "refused" }, "beyond the cap and its skew");
  });
  await t.step("a scope that is not canonical is refused, even when signed", async () => {
    for (const scope of ["/members", "members/", "/members/../", "/members//"]) {
      const link = new URL(url);
      link.searchParams.set("scope", scope);
      assert.deepEqual(await checkSignedLink(link, { signing, now }), { access: "refused" });
    }
  });
});

Deno.test("applyGrant() makes signed answers private for at most their remaining life", async (t) => {
  const signed = {
    access: "signed",
    expiresAt: 1000,
    downloadName: 'Café "1".mp4',
    query: "exp=1000&sig=x",
  } as const;
  const answer = (cacheControl: string, status = 200) =>
    new Response(null, { status, headers: { "Cache-Control": cacheControl } });
  await t.step("the shorter of the object's lifetime and the link's", () => {
    assert.equal(
      applyGrant(answer("public, max-age=3600"), signed, 900).headers.get("cache-control"),
      "private, max-age=100",
    );
    assert.equal(
      applyGrant(answer("public, max-age=60"), signed, 900).headers.get("cache-control"),
      "private, max-age=60",
    );
    assert.equal(
      applyGrant(answer("no-cache"), signed, 900).headers.get("cache-control"),
      "private, max-age=100",
    );
  });
  await t.step("no-store stays, public answers pass unchanged", () => {
    assert.equal(
      applyGrant(answer("no-store", 404), signed, 900).headers.get("cache-control"),
      "no-store",
    );
    assert.equal(
      applyGrant(answer("public, max-age=60"), { access: "public" }, 900).headers
        .get("cache-control"),
      "public, max-age=60",
    );
  });
  await t.step("the download name, in ASCII and exactly", () => {
    // A quote cannot be signed (validDownloadName refuses it), so the ASCII form needs none.
    const named = { ...signed, downloadName: "Café 1 (draft).mp4" };
    assert.equal(
      applyGrant(answer("public"), named, 900).headers.get("content-disposition"),
      `attachment; filename="Caf_ 1 (draft).mp4"; filename*=UTF-8''Caf%C3%A9%201%20%28draft%29.mp4`,
    );
    assert.equal(
      applyGrant(answer("public", 304), named, 900).headers.get("content-disposition"),
      null,
    );
  });
  await t.step("signedLifetime() never goes below 0", () => {
    assert.deepEqual(
      [
        signedLifetime(signed, 990),
        signedLifetime(signed, 2000),
        signedLifetime({ access: "public" }, 0),
      ],
      [10, 0, undefined],
    );
  });
});

Deno.test("signLink() in main.ts refuses an empty path, as canonicalPath() does", async () => {
  await assert.rejects(
    () => signLink(SITE, "", { key: KEY, expires: 2_000_000_000 }),
    { name: "ConfigError", message: /The path must be a URL path .*not ""/ },
  );
});

Deno.test("signLink() in main.ts signs the message the worker checks", async () => {
  const { url, path } = await signLink(SITE, "/members/caf%C3%A9 1.mp4", {
    key: KEY,
    expires: 2_000_000_000,
    notBefore: 1_900_000_000,
    downloadName: "a.mp4",
  });
  assert.equal(path, "/members/café 1.mp4");
  const signature = new URL(url).searchParams.get("sig")!;
  const key = await crypto.subtle.importKey(
    "raw",
    Uint8Array.from(atob(KEY.replaceAll("-", "+").replaceAll("_", "/")), (c) => c.charCodeAt(0)),
    { name: "HMAC", hash: "SHA-256" },
    false,
    ["sign"],
  );
  const message = signedLinkMessage({
    path: "/members/café 1.mp4",
    prefix: false,
    expires: 2_000_000_000,
    notBefore: 1_900_000_000,
    downloadName: "a.mp4",
  });
  const expected = new Uint8Array(
    await crypto.subtle.sign("HMAC", key, new TextEncoder().encode(message)),
  );
  assert.equal(
    signature,
    btoa(String.fromCharCode(...expected)).replaceAll("+", "-").replaceAll("/", "_")
      .replace(/=+$/, ""),
  );
});

/** The protected part of the test bucket. */
const MEMBER_FILES: FakeFile[] = [
  { name: "site/members/a.txt", body: "members only", contentType: "text/plain" },
  { name: "site/members/b.txt", body: "also members", contentType: "text/plain" },
  { name: "site/members/index.html", body: "<h1>members</h1>", contentType: "text/html" },
  { name: "site/members/video.bin", body: { size: 1000 }, contentType: "video/mp4" },
  { name: "site/course1/x.txt", body: "course 1", contentType: "text/plain" },
  { name: "site/course1/deep/y.txt", body: "course 1 deep", contentType: "text/plain" },
  { name: "site/course10/x.txt", body: "course 10", contentType: "text/plain" },
  { name: "site/members-public/x.txt", body: "public neighbour", contentType: "text/plain" },
];

function startMemberB2(): FakeB2 {
  const b2 = startB2();
  for (const file of MEMBER_FILES) b2.putFile(BUCKET, structuredClone(file));
  return b2;
}

const SIGNING = {
  prefixes: ["/members/", "/course1/", "/course10/"],
  key: KEY,
  maxTtl: 7 * 86400,
};

Deno.test("worker in workerd, signed links with the Cache API", async (t) => {
  const b2 = startMemberB2();
  const previousUntil = Date.now() + 300_000;
  const worker = await startWorker(b2, {
    options: { signing: { ...SIGNING, previousKey: PREVIOUS_KEY, previousUntil } },
  });
  try {
    await t.step("public paths are unaffected", async () => {
      const table: [string, string][] = [
        ["/hello.txt", "hello world"],
        ["/members-public/x.txt", "public neighbour"],
      ];
      for (const [path, body] of table) {
        const answer = await worker.visit(path);
        assert.deepEqual(
          [answer.status, answer.body, answer.headers["cache-control"]],
          [200, body, "public, max-age=3600"],
          path,
        );
      }
      worker.downloads();
    });

    await t.step("a refused link gets one generic 403, and B2 is not asked", async (t) => {
      const now = nowSeconds();
      const good = await signed("/members/a.txt", { downloadName: "a.txt" });
      const refusals: [string, string | Promise<string>][] = [
        ["unsigned", "/members/a.txt"],
        ["unsigned index", "/members/"],
        ["unsigned, no slash", "/members"],
        ["unsigned, percent-encoded", "/%6Dembers/a.txt"],
        ["expired", signed("/members/a.txt", { expires: now - 1 })],
        ["not yet valid", signed("/members/a.txt", { notBefore: now + 300 })],
        ["beyond WORKER_SIGNED_MAX_TTL", signed("/members/a.txt", { expires: now + 8 * 86400 })],
        ["tampered path", good.replace("/members/a.txt", "/members/b.txt")],
        ["tampered expiry", tamper(good, "exp", String(now + 601))],
        ["tampered download name", tamper(good, "dl", "b.txt")],
        ["download name removed", tamper(good, "dl", undefined)],
        ["forged with another key", signed("/members/a.txt", { key: OTHER_KEY })],
        ["malformed signature", tamper(good, "sig", "abc")],
        ["no signature", tamper(good, "sig", undefined)],
        ["no expiry", tamper(good, "exp", undefined)],
        ["an unknown parameter", `${good}&utm_source=mail`],
        ["a repeated parameter", `${good}&exp=${now + 60}`],
        ["a path link used as a prefix", tamper(good, "scope", "/members/")],
        [
          "a neighbouring prefix",
          signed("/course1/", { prefix: true }).then((link) =>
            link.replace("/course1/?", "/course10/x.txt?")
          ),
        ],
        [
          "another protected prefix",
          signed("/members/", { prefix: true }).then((link) =>
            link.replace("/members/?", "/course1/x.txt?")
          ),
        ],
        [
          "a prefix widened",
          signed("/course1/", { prefix: true }).then((link) =>
            tamper(link.replace("/course1/?", "/course10/x.txt?"), "scope", "/")
          ),
        ],
      ];
      for (const [label, link] of refusals) {
        await t.step(label, async () => {
          assert.deepEqual(await worker.raw(await link), FORBIDDEN);
          assert.deepEqual(worker.downloads(), []);
        });
      }
    });

    await t.step("a signed link serves the object, private for its remaining life", async () => {
      const link = await signed("/members/a.txt", { expires: nowSeconds() + 600 });
      const answer = await worker.visit(link);
      assert.deepEqual([answer.status, answer.body], [200, "members only"]);
      const maxAge = Number(/^private, max-age=(\d+)$/.exec(answer.headers["cache-control"]!)?.[1]);
      assert.ok(maxAge > 590 && maxAge <= 600, answer.headers["cache-control"]);
      assert.equal(answer.headers["content-disposition"], undefined);
      // The query stays at the edge: B2 gets the plain name.
      assert.deepEqual(worker.downloads().map((r) => r.path), [
        `/file/${BUCKET}/site/members/a.txt`,
      ]);
    });

    await t.step("the link for a path percent-encoded goes to its one spelling", async () => {
      const link = await signed("/members/b.txt");
      const answer = await worker.raw(link.replace("/members/", "/%6Dembers/"));
      assert.deepEqual([answer.status, answer.headers["location"]], [301, link]);
      assert.match(answer.headers["cache-control"]!, /^private, max-age=\d+$/);
      assert.deepEqual(worker.downloads(), []);
    });

    await t.step("a prefix link works for every path under it, on whole segments", async () => {
      const query = (await signed("/course1/", { prefix: true })).split("?")[1];
      const table: [string, string][] = [
        ["/course1/x.txt", "course 1"],
        ["/course1/deep/y.txt", "course 1 deep"],
      ];
      for (const [path, body] of table) {
        const answer = await worker.visit(`${path}?${query}`);
        assert.deepEqual([answer.status, answer.body], [200, body], path);
      }
      assert.deepEqual(await worker.visit(`/course10/x.txt?${query}`), FORBIDDEN);
      assert.equal(worker.downloads().length, 2);
    });

    await t.step("the previous key works until its end, which caps the lifetime", async () => {
      const link = await signed("/course10/x.txt", {
        key: PREVIOUS_KEY,
        expires: nowSeconds() + 3000,
      });
      const answer = await worker.visit(link);
      assert.deepEqual([answer.status, answer.body], [200, "course 10"]);
      const maxAge = Number(/max-age=(\d+)/.exec(answer.headers["cache-control"]!)?.[1]);
      assert.ok(maxAge <= 300 && maxAge > 280, answer.headers["cache-control"]);
      worker.downloads();
    });

    await t.step("ranges, HEAD and conditional requests work on a signed link", async () => {
      const link = await signed("/members/video.bin", { downloadName: "Vidéo 1.mp4" });
      const disposition = `attachment; filename="Vid_o 1.mp4"; filename*=UTF-8''Vid%C3%A9o%201.mp4`;
      const range = await worker.visit(link, { headers: { Range: "bytes=100-109" } });
      assert.deepEqual(
        [
          range.status,
          range.headers["content-range"],
          range.body,
          range.headers["content-disposition"],
        ],
        [206, "bytes 100-109/1000", patternText(100, 109), disposition],
      );
      const head = await worker.visit(link, { method: "HEAD" });
      assert.deepEqual(
        [
          head.status,
          head.body,
          head.headers["content-length"],
          head.headers["content-disposition"],
        ],
        [200, "", "1000", disposition],
      );
      assert.match(head.headers["cache-control"]!, /^private, max-age=\d+$/);
      const etag = head.headers.etag!;
      const revalidated = await worker.visit(link, { headers: { "If-None-Match": etag } });
      assert.equal(revalidated.status, 304);
      assert.match(revalidated.headers["cache-control"]!, /^private, max-age=\d+$/);
      for (const download of worker.downloads()) assert.ok(!download.path.includes("?"));
    });

    await t.step("a cached copy is shared by links, and never served unsigned", async () => {
      const first = await worker.visit(await signed("/members/"));
      assert.deepEqual([first.status, first.body], [200, "<h1>members</h1>"]);
      await cachedCopy(worker, "/members/");
      assert.equal(worker.downloads().length, 1);
      assert.deepEqual(await worker.visit("/members/"), FORBIDDEN);
      const second = await worker.visit(await signed("/members/", { expires: nowSeconds() + 100 }));
      assert.deepEqual([second.status, second.body], [200, "<h1>members</h1>"]);
      assert.match(second.headers["cache-control"]!, /^private, max-age=(100|9\d)$/);
      assert.deepEqual(worker.downloads(), []);
    });
  } finally {
    await worker.dispose();
    await b2.close();
  }
});

/**
 * Runs `work`, counting what the worker's own code does meanwhile (calls made from
 * worker_template.ts, not from the B2 stand-in serving it in this process): HMAC verifications
 * (`crypto.subtle.verify`) and URL parses (`new URL`).
 */
async function countingWorkerCalls(
  work: () => Promise<void>,
): Promise<{ verifications: number; urlParses: number }> {
  const fromWorker = () => /worker_template\.ts/.test(new Error().stack?.split("\n")[3] ?? "");
  const counts = { verifications: 0, urlParses: 0 };
  const { verify } = crypto.subtle;
  const OriginalUrl = globalThis.URL;
  crypto.subtle.verify = function (...args: Parameters<SubtleCrypto["verify"]>) {
    if (fromWorker()) counts.verifications++;
    return verify.apply(this, args);
  };
  globalThis.URL = class extends OriginalUrl {
    constructor(...args: ConstructorParameters<typeof URL>) {
      super(...args);
      if (fromWorker()) counts.urlParses++;
    }
  };
  try {
    await work();
  } finally {
    crypto.subtle.verify = verify;
    globalThis.URL = OriginalUrl;
  }
  return counts;
}

Deno.test("worker.fetch() verifies a signed link's HMAC once and parses its URL once", async (t) => {
  const b2 = startMemberB2();
  const env: Env = {
    B2_DOWNLOAD_TOKEN: b2.issueDownloadToken(BUCKET, "", 3600),
    B2_DOWNLOAD_URL: b2.url,
    B2_BUCKET_NAME: BUCKET,
    B2_FILE_PREFIX: PREFIX,
    // No edge cache: Deno has no caches.default, and every request goes to B2.
    WORKER_CACHE_MODE: "off",
    WORKER_SIGNED_PREFIXES: SIGNING.prefixes.join(","),
    WORKER_SIGNING_KEY: KEY,
  };
  const ctx: ExecutionContext = { waitUntil() {} };
  const cases: [string, string | Promise<string>, { status: number; verifications: number }][] = [
    ["a signed link", signed("/members/a.txt"), { status: 200, verifications: 1 }],
    ["a public path", "/hello.txt", { status: 200, verifications: 0 }],
    ["a forged link", tamper(await signed("/members/a.txt"), "sig", "A".repeat(43)), {
      status: 403,
      verifications: 1,
    }],
  ];
  try {
    for (const [what, path, expected] of cases) {
      await t.step(what, async () => {
        const request = new Request(`${SITE}${await path}`);
        let status = 0;
        const counts = await countingWorkerCalls(async () => {
          const response = await worker.fetch(request, env, ctx);
          status = response.status;
          await response.body?.cancel();
        });
        assert.deepEqual({ status, ...counts }, { ...expected, urlParses: 1 });
      });
    }
  } finally {
    await b2.close();
  }
});

Deno.test("worker in workerd refuses what was cached before its prefix became private", async () => {
  const b2 = startMemberB2();
  const cachePersist = await Deno.makeTempDir();
  try {
    const before = await startWorker(b2, { cachePersist });
    try {
      assert.equal((await before.visit("/members/a.txt")).body, "members only");
      await cachedCopy(before, "/members/a.txt");
    } finally {
      await before.dispose();
    }
    // The previous key's time is over: its links are refused like forged ones.
    const after = await startWorker(b2, {
      cachePersist,
      options: {
        signing: { ...SIGNING, previousKey: PREVIOUS_KEY, previousUntil: Date.now() - 1000 },
      },
    });
    try {
      after.downloads();
      assert.deepEqual(await after.visit("/members/a.txt"), FORBIDDEN);
      assert.deepEqual(
        await after.visit(await signed("/members/a.txt", { key: PREVIOUS_KEY })),
        FORBIDDEN,
      );
      const answer = await after.visit(await signed("/members/a.txt"));
      assert.deepEqual([answer.status, answer.body], [200, "members only"]);
      assert.match(answer.headers["cache-control"]!, /^private, max-age=\d+$/);
      assert.deepEqual(after.downloads(), [], "served from the copy cached while public");
    } finally {
      await after.dispose();
    }
  } finally {
    await b2.close();
    await Deno.remove(cachePersist, { recursive: true });
  }
});

/** The signed-links doc's test vector and Python snippet, so that the documentation cannot drift. */
async function docsVector(): Promise<{ fields: Record<string, string>; python: string }> {
  const doc = await Deno.readTextFile(new URL("./docs/signed-links.md", import.meta.url));
  const section = doc.split("\n## The link\n")[1]?.split("\n## ")[0] ?? "";
  const vector = /```text\n(key:[\s\S]*?)```/.exec(section)?.[1];
  const python = /```python\n([\s\S]*?)```/.exec(section)?.[1];
  assert.ok(vector && python, "docs/signed-links.md's section The link has a vector and Python");
  const fields = Object.fromEntries(
    vector.trim().split("\n").map((line) => {
      const [, name = "", value = ""] = /^([a-z ]+):\s+(.*)$/.exec(line) ?? [];
      return [name, value];
    }),
  );
  return { fields, python };
}

Deno.test("docs/signed-links.md's test vector is what signLink() makes and the worker accepts", async () => {
  const { fields } = await docsVector();
  const url = new URL(fields.url!);
  const expires = Number(fields.expires);
  const notBefore = Number(fields["not before"]);
  const link = await signLink(url.origin, fields.path!, {
    key: fields.key!,
    expires,
    notBefore,
    downloadName: fields.download!,
  });
  assert.equal(link.url, fields.url);
  const signing: SigningConfig = {
    prefixes: ["/members/"],
    indexFile: "index.html",
    key: fields.key!,
    previousKey: "",
    previousUntil: 0,
    maxTtl: expires - notBefore,
  };
  assert.deepEqual(await checkSignedLink(url, { signing, now: notBefore }), {
    access: "signed",
    expiresAt: expires,
    downloadName: fields.download,
    query: url.search.slice(1),
  });
  assert.deepEqual(await checkSignedLink(url, { signing, now: expires }), { access: "refused" });
});

Deno.test({
  name: "docs/signed-links.md's Python prints its test vector",
  // The one test that needs a program Deno does not bring; CI images have python3.
  ignore: !(await Deno.stat("/usr/bin/python3").then(() => true, () => false)),
  async fn() {
    const { fields, python } = await docsVector();
    const output = await new Deno.Command("/usr/bin/python3", {
      args: ["-c", python],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(new TextDecoder().decode(output.stderr), "");
    assert.equal(new TextDecoder().decode(output.stdout).trim(), fields.url);
  },
});

// ---------------------------------------------------------------------------
// Workers Cache mode (issue 8): the headers the cache in front of the worker obeys
// ---------------------------------------------------------------------------

const EDGE = "public, max-age=86400, stale-while-revalidate=86400, stale-if-error=604800";

Deno.test("worker in workerd, Workers Cache mode", async (t) => {
  const b2 = startB2();
  const worker = await startWorker(b2, {
    options: { cacheMode: "workers-cache", corsOrigins: "*" },
    extraBindings: { WORKER_B2_TIMEOUT_MS: "300" },
  });
  const helloTag = await objectTag("site/hello.txt");
  try {
    await t.step(
      "an object carries the edge lifetime, its tag and the browsers' policy",
      async () => {
        assert.deepEqual(await worker.visit("/hello.txt"), {
          status: 200,
          headers: objectAnswerHeaders({
            "access-control-allow-origin": "*",
            "access-control-expose-headers":
              "Accept-Ranges, Content-Length, Content-Range, ETag, Last-Modified",
            "cache-tag": helloTag,
            "cloudflare-cdn-cache-control": EDGE,
            "content-length": "11",
            "content-type": "text/plain",
            etag: HELLO_SHA1,
          }),
          body: "hello world",
        });
        assert.equal(worker.downloads().length, 1);
      },
    );

    await t.step(
      "no caches.default: a repeat asks B2 again (the cache in front answers hits)",
      async () => {
        await worker.visit("/hello.txt");
        assert.equal(worker.downloads().length, 1);
        const caches = await worker.miniflare.getCaches() as unknown as { default: Cache };
        assert.equal(await caches.default.match(`${SITE}/hello.txt`), undefined);
      },
    );

    await t.step(
      "a revalidation is a HEAD to B2 and a 304 carrying the edge lifetime",
      async () => {
        // The cache's revalidation, as the stand-in sends it, then a date alone: the object has
        // an ETag, which the cache revalidates with, so that is a visitor's, never kept.
        const conditionSets: [Record<string, string>, string][] = [
          [{ "If-None-Match": HELLO_SHA1 }, EDGE],
          [{ "If-None-Match": HELLO_SHA1, "If-Modified-Since": LAST_MODIFIED }, EDGE],
          [{ "If-Modified-Since": LAST_MODIFIED }, "no-store"],
        ];
        for (const [conditions, edge] of conditionSets) {
          const answer = await worker.visit("/hello.txt", { headers: conditions });
          assert.deepEqual([answer.status, answer.body], [304, ""]);
          assert.equal(answer.headers["cloudflare-cdn-cache-control"], edge);
          assert.equal(answer.headers["cache-tag"], helloTag);
          assert.equal(answer.headers["etag"], HELLO_SHA1);
          assert.deepEqual(worker.downloads().map((r) => r.method), ["HEAD"]);
        }
        const changed = await worker.visit("/hello.txt", { headers: { "If-None-Match": '"old"' } });
        assert.deepEqual([changed.status, changed.body], [200, "hello world"]);
        assert.deepEqual(worker.downloads().map((r) => r.method), ["HEAD", "GET"]);
      },
    );

    await t.step("tags tell /a from /a-2 and ignore nothing of the name", async () => {
      const tags = await Promise.all(["site/a", "site/a-2", "site/A"].map(objectTag));
      assert.equal(new Set(tags).size, 3);
      for (const tag of tags) assert.match(tag, /^b2cdn-[0-9a-f]{40}$/);
    });

    await t.step(
      "a range that reaches the worker gets the whole object, for the cache to keep",
      async () => {
        const answer = await worker.visit("/pattern.bin", { headers: { Range: "bytes=10-19" } });
        assert.deepEqual([answer.status, answer.body], [200, patternText(0, 999)]);
        assert.equal(answer.headers["cloudflare-cdn-cache-control"], EDGE);
        assert.deepEqual(worker.downloads().map((r) => r.headers.get("range")), [null]);
      },
    );

    await t.step(
      "a 404 is kept a minute, with its tag, so purging the path clears it",
      async () => {
        const answer = await worker.visit("/later.txt");
        assert.equal(answer.status, 404);
        assert.equal(answer.headers["cloudflare-cdn-cache-control"], "public, max-age=60");
        assert.equal(answer.headers["cache-control"], "public, max-age=60");
        assert.equal(answer.headers["cache-tag"], await objectTag("site/later.txt"));
        worker.downloads();
      },
    );

    await t.step(
      "B2 refusing the token, B2 failing and B2 timing out are never stored",
      async () => {
        for (
          const [status, code] of [[401, "expired_auth_token"], [403, "access_denied"], [
            503,
            "service_unavailable",
          ]] as const
        ) {
          b2.fail("/file/", { status, code });
          const answer = await worker.visit("/fault.txt");
          assert.equal(answer.status, 502);
          assert.equal(answer.headers["cloudflare-cdn-cache-control"], "no-store");
          assert.equal(answer.headers["cache-control"], "no-store");
          assert.equal(answer.headers["cache-tag"], undefined);
        }
        b2.fail("/file/", { status: 503, hang: true });
        const slow = await worker.visit("/slow.txt");
        assert.deepEqual([slow.status, slow.headers["cloudflare-cdn-cache-control"]], [
          504,
          "no-store",
        ]);
        worker.downloads();
      },
    );

    await t.step("a query goes to the canonical URL, without asking B2", async () => {
      const answer = await worker.visit("/hello.txt?utm_source=mail", { redirect: "manual" });
      assert.equal(answer.status, 301);
      assert.equal(answer.headers["location"], "/hello.txt");
      assert.equal(answer.headers["cloudflare-cdn-cache-control"], EDGE);
      assert.deepEqual(worker.downloads(), []);
    });

    await t.step("no Set-Cookie, no Vary with CORS *", async () => {
      const answer = await worker.visit("/hello.txt", { headers: { Origin: "https://x.example" } });
      assert.equal(answer.headers["set-cookie"], undefined);
      assert.equal(answer.headers["vary"], undefined);
      assert.equal(answer.headers["access-control-allow-origin"], "*");
      worker.downloads();
    });
  } finally {
    await worker.dispose();
    await b2.close();
  }
});

Deno.test("worker in workerd, Workers Cache mode with a list of origins varies by Origin", async () => {
  const b2 = startB2();
  const worker = await startWorker(b2, {
    options: { cacheMode: "workers-cache", corsOrigins: "https://app.example" },
  });
  try {
    const app = await worker.visit("/hello.txt", { headers: { Origin: "https://app.example" } });
    const none = await worker.visit("/hello.txt");
    assert.deepEqual(
      [app.headers["access-control-allow-origin"], app.headers["vary"]],
      ["https://app.example", "Origin"],
    );
    assert.deepEqual([none.headers["access-control-allow-origin"], none.headers["vary"]], [
      undefined,
      "Origin",
    ]);
  } finally {
    await worker.dispose();
    await b2.close();
  }
});

// ---------------------------------------------------------------------------
// The signed purge endpoint, called directly with a recording ctx.cache
// ---------------------------------------------------------------------------

const PURGE_KEY = "5e".repeat(32);
const PURGE_URL = `${SITE}/.well-known/b2-private-cdn/purge`;

/** A ctx whose `cache.purge` records what it was asked and answers `success`. */
function recordingContext(success = true) {
  const purges: PurgeOptions[] = [];
  const ctx: ExecutionContext = {
    waitUntil() {},
    cache: {
      purge(options) {
        purges.push(options);
        return Promise.resolve({
          success,
          errors: success ? [] : [{ code: 429, message: "rate limited" }],
        });
      },
    },
  };
  return { ctx, purges };
}

const PURGE_ENV: Env = {
  B2_DOWNLOAD_TOKEN: "unused",
  B2_DOWNLOAD_URL: "http://127.0.0.1:1",
  B2_BUCKET_NAME: BUCKET,
  B2_FILE_PREFIX: PREFIX,
  WORKER_CACHE_MODE: "workers-cache",
  WORKER_PURGE_KEY: PURGE_KEY,
  WORKER_FINGERPRINT: "2-new",
};

// The worker refuses a signature it has seen: each request here is stamped a second earlier.
let signedCount = 0;

async function signedRequest(
  order: unknown,
  options: { key?: string; nowMs?: number; path?: string; tamper?: (body: string) => string } = {},
): Promise<Request> {
  // A nonce, as askWorkerToPurge() adds: each request is stamped a second earlier than the last,
  // but one made just after a second boundary lands on the last one's second, and two orders
  // alike would then carry one signature, which the worker refuses as a replay.
  const body = JSON.stringify(
    typeof order === "object" && order !== null ? { ...order, nonce: crypto.randomUUID() } : order,
  );
  const headers = await signPurge(body, {
    key: options.key ?? PURGE_KEY,
    nowMs: options.nowMs ?? Date.now() - 1000 * signedCount++,
  });
  return new Request(options.path ? `${SITE}${options.path}` : PURGE_URL, {
    method: "POST",
    headers,
    body: options.tamper ? options.tamper(body) : body,
  });
}

async function summary(response: Response) {
  return {
    status: response.status,
    headers: Object.fromEntries(response.headers),
    body: await response.text(),
  };
}

Deno.test("the purge endpoint purges exactly what a signed, fresh request names", async (t) => {
  await t.step("paths by their object's tag, prefixes as prefixes, everything", async () => {
    const { ctx, purges } = recordingContext();
    const order = { paths: ["/a", "/a-2", "/docs/"], prefixes: ["/img/"] };
    const response = await worker.fetch(await signedRequest(order), PURGE_ENV, ctx);
    assert.equal(response.status, 200);
    const answer = await response.json();
    assert.equal(answer.fingerprint, "2-new");
    assert.deepEqual(purges, [{
      tags: await Promise.all(["site/a", "site/a-2", "site/docs/index.html"].map(objectTag)),
      pathPrefixes: ["/img/"],
    }]);
    const all = await worker.fetch(await signedRequest({ everything: true }), PURGE_ENV, ctx);
    assert.equal(all.status, 200);
    assert.deepEqual(purges[1], { purgeEverything: true });
  });

  await t.step("under a route on part of the host, the purge path is found there", async () => {
    const { ctx, purges } = recordingContext();
    const request = await signedRequest({ everything: true }, {
      path: "/cdn/.well-known/b2-private-cdn/purge",
    });
    assert.equal((await worker.fetch(request, PURGE_ENV, ctx)).status, 200);
    assert.deepEqual(purges, [{ purgeEverything: true }]);
  });

  await t.step("an older version (another fingerprint) purges nothing and says so", async () => {
    const { ctx, purges } = recordingContext();
    const response = await worker.fetch(
      await signedRequest({ everything: true, expect: "2-other" }),
      PURGE_ENV,
      ctx,
    );
    assert.equal(response.status, 409);
    assert.equal((await response.json()).fingerprint, "2-new");
    assert.deepEqual(purges, []);
  });

  await t.step("a purge Cloudflare refuses is a 429 with Retry-After", async () => {
    const { ctx } = recordingContext(false);
    const response = await worker.fetch(await signedRequest({ everything: true }), PURGE_ENV, ctx);
    assert.deepEqual([response.status, response.headers.get("retry-after")], [429, "60"]);
    await response.body?.cancel();
  });

  await t.step("without ctx.cache it says so instead of throwing", async () => {
    const response = await worker.fetch(await signedRequest({ everything: true }), PURGE_ENV, {
      waitUntil() {},
    });
    assert.equal(response.status, 501);
    await response.body?.cancel();
  });
});

Deno.test("the purge endpoint refuses unsigned, stale, forged and replayed requests as any POST", async (t) => {
  const { ctx, purges } = recordingContext();
  const anyPost = await summary(
    await worker.fetch(
      new Request(`${SITE}/some/other/path`, { method: "POST", body: "{}" }),
      PURGE_ENV,
      ctx,
    ),
  );
  assert.equal(anyPost.status, 405);
  const replayed = await signedRequest({ everything: true });
  const replay = replayed.clone();
  assert.equal((await worker.fetch(replayed, PURGE_ENV, ctx)).status, 200);
  purges.length = 0;
  const cases: [string, () => Promise<Request>][] = [
    [
      "unsigned",
      () =>
        Promise.resolve(new Request(PURGE_URL, { method: "POST", body: '{"everything":true}' })),
    ],
    ["stale", () => signedRequest({ everything: true }, { nowMs: Date.now() - 301_000 })],
    ["from the future", () => signedRequest({ everything: true }, { nowMs: Date.now() + 301_000 })],
    [
      "forged with another key",
      () => signedRequest({ everything: true }, { key: "00".repeat(32) }),
    ],
    [
      "body changed after signing",
      () => signedRequest({ paths: ["/a"] }, { tamper: () => '{"everything":true}' }),
    ],
    ["replayed", () => Promise.resolve(replay)],
    [
      "a body over 64 KiB, streamed without Content-Length",
      async () => {
        // Signed as it is, so only its size can refuse it.
        const text = `{"everything":true${" ".repeat(80 * 1024)}}`;
        const headers = await signPurge(text, { key: PURGE_KEY, nowMs: Date.now() - 7000 });
        const bytes = new TextEncoder().encode(text);
        const body = new ReadableStream<Uint8Array>({
          start(controller) {
            for (let at = 0; at < bytes.length; at += 16 * 1024) {
              controller.enqueue(bytes.subarray(at, at + 16 * 1024));
            }
            controller.close();
          },
        });
        return new Request(PURGE_URL, { method: "POST", headers, body });
      },
    ],
  ];
  for (const [label, make] of cases) {
    await t.step(label, async () => {
      assert.deepEqual(await summary(await worker.fetch(await make(), PURGE_ENV, ctx)), anyPost);
      assert.deepEqual(purges, []);
    });
  }
  await t.step("a worker without a purge key takes no signed request either", async () => {
    const { WORKER_PURGE_KEY: _, ...env } = PURGE_ENV;
    const answer = await summary(
      await worker.fetch(await signedRequest({ everything: true }), env, ctx),
    );
    assert.deepEqual(answer, anyPost);
    assert.deepEqual(purges, []);
  });
});

Deno.test("worker in workerd, signed links in Workers Cache mode", async (t) => {
  const b2 = startMemberB2();
  const worker = await startWorker(b2, {
    options: { cacheMode: "workers-cache", signing: SIGNING },
  });
  try {
    await t.step("a refusal is one 403 the cache never stores, and B2 is not asked", async () => {
      for (const path of ["/members/a.txt", "/%6Dembers/a.txt", "/members/a.txt?exp=1&sig=x"]) {
        const answer = await worker.visit(path);
        assert.deepEqual([answer.status, answer.body], [403, "Forbidden\n"], path);
        assert.equal(answer.headers["cloudflare-cdn-cache-control"], "no-store", path);
        assert.equal(answer.headers["cache-control"], "no-store", path);
      }
      assert.deepEqual(worker.downloads(), []);
    });

    await t.step(
      "a signed answer keeps its query, lives at the edge no longer than the link, never stale",
      async () => {
        const link = await signed("/members/a.txt", { expires: nowSeconds() + 120 });
        const answer = await worker.visit(link);
        assert.deepEqual([answer.status, answer.body], [200, "members only"]);
        assert.equal(answer.headers["location"], undefined);
        const edge = /^public, max-age=(\d+), stale-while-revalidate=0, stale-if-error=0$/
          .exec(answer.headers["cloudflare-cdn-cache-control"] ?? "");
        assert.ok(edge, answer.headers["cloudflare-cdn-cache-control"]);
        assert.ok(Number(edge[1]) <= 120 && Number(edge[1]) >= 110, edge[1]);
        assert.match(answer.headers["cache-control"]!, /^private, max-age=(1[01]\d|120)$/);
        assert.equal(worker.downloads().length, 1);
      },
    );

    await t.step("a public path with a query still goes to its canonical URL", async () => {
      const answer = await worker.visit("/hello.txt?v=2", { redirect: "manual" });
      assert.deepEqual([answer.status, answer.headers["location"]], [301, "/hello.txt"]);
      assert.deepEqual(worker.downloads(), []);
    });
  } finally {
    await worker.dispose();
    await b2.close();
  }
});

// ---------------------------------------------------------------------------
// One spelling per object and per grant; signed index files; active content (issue 26)
// ---------------------------------------------------------------------------

Deno.test("urlPath() writes a canonical path in the one spelling a URL parser leaves alone", async (t) => {
  const table: [string, string][] = [
    ["/hello.txt", "/hello.txt"],
    ["/café/menü.txt", "/caf%C3%A9/men%C3%BC.txt"],
    ["/with space.txt", "/with%20space.txt"],
    ["/100%.txt", "/100%25.txt"],
    ["/a+b@2x,c;d=e:f!$&'()*~.png", "/a+b@2x,c;d=e:f!$&'()*~.png"],
    ['/q?"#<>^`{|}.txt', "/q%3F%22%23%3C%3E%5E%60%7B%7C%7D.txt"],
    ["/docs/", "/docs/"],
    ["/", "/"],
  ];
  for (const [path, expected] of table) {
    await t.step(path, () => {
      assert.equal(urlPath(path), expected);
      // What a browser makes of the Location: the same spelling, so a 301 never loops.
      assert.equal(new URL(expected, SITE).pathname, expected);
      assert.equal(canonicalPath(expected), path);
    });
  }
});

Deno.test("isProtected() checks the name finally served: a folder whose index file is protected", async (t) => {
  const table: [string[], string, string, boolean][] = [
    [["/solo/index.html/"], "/solo/index.html", "index.html", true],
    [["/solo/index.html/"], "/solo/", "index.html", true],
    [["/solo/index.html/"], "/solo/other.txt", "index.html", false],
    [["/solo/index.html/"], "/solo/", "", false],
    [["/index.html/"], "/", "index.html", true],
    [["/index.html/"], "/docs/", "index.html", false],
    [["/members/"], "/members/", "index.html", true],
    [["/members/"], "/members-public/", "index.html", false],
  ];
  for (const [prefixes, path, indexFile, expected] of table) {
    await t.step(`${prefixes} ${path} (index ${indexFile || "off"})`, () => {
      assert.equal(isProtected(path, { prefixes, indexFile }), expected);
    });
  }
});

Deno.test("activeContentHeaders() sandboxes or attaches HTML, SVG, XML and XHTML only", async (t) => {
  const types: [string | null, boolean][] = [
    ["text/html", true],
    ["text/html; charset=utf-8", true],
    ["TEXT/HTML", true],
    ["image/svg+xml", true],
    ["application/xhtml+xml", true],
    ["text/xml", true],
    ["application/xml", true],
    ["application/rss+xml; charset=utf-8", true],
    // Without a type a browser may sniff it into one of them.
    [null, true],
    // A browser takes the last type of a list it can parse: these are HTML.
    ["text/plain, text/html", true],
    ["text/plain,text/html;charset=utf-8", true],
    ['text/plain; a="x,text/html"', true],
    // Rendered as XML by Chromium and Firefox.
    ["text/xsl", true],
    // Firefox renders its parts as pages.
    ["multipart/x-mixed-replace; boundary=x", true],
    // Types a browser cannot parse, or sniffs.
    ["", true],
    ["html", true],
    ["text/", true],
    ["*/*", true],
    ["unknown/unknown", true],
    ["application/unknown", true],
    ["text/plain", false],
    ["text/plain; charset=utf-8", false],
    ["application/octet-stream", false],
    ["application/pdf", false],
    ["image/svg", false],
    ["image/png", false],
    ["video/mp4", false],
    ["application/json", false],
    ["text/htmlx", false],
  ];
  for (const [type, active] of types) {
    await t.step(String(type), () => {
      const headers = () => new Headers(type === null ? {} : { "Content-Type": type });
      const served = headers();
      activeContentHeaders(served, "serve");
      assert.deepEqual([...served], [...headers()]);
      const sandboxed = headers();
      activeContentHeaders(sandboxed, "sandbox");
      assert.equal(sandboxed.get("Content-Security-Policy"), active ? "sandbox" : null);
      const downloaded = headers();
      activeContentHeaders(downloaded, "download");
      assert.equal(downloaded.get("Content-Disposition"), active ? "attachment" : null);
    });
  }
  await t.step("a download keeps the file name the object or the link names", () => {
    for (
      const [given, expected] of [
        ['inline; filename="a.html"', 'attachment; filename="a.html"'],
        ['attachment; filename="b.svg"', 'attachment; filename="b.svg"'],
        ["inline", "attachment"],
      ]
    ) {
      const headers = new Headers({ "Content-Type": "text/html", "Content-Disposition": given! });
      activeContentHeaders(headers, "download");
      assert.equal(headers.get("Content-Disposition"), expected);
    }
  });
});

/** What a visitor is told to ask instead: status, Location, and whether B2 was asked. */
async function spelled(worker: TestWorker, path: string) {
  const answer = await worker.raw(path);
  return { status: answer.status, location: answer.headers["location"], answer };
}

for (const cacheMode of ["cache-api", "workers-cache", "off"] as const) {
  Deno.test(`worker in workerd (${cacheMode}): every other spelling of an object or a grant is a 301 to its one spelling, B2 not asked`, async (t) => {
    const b2 = startMemberB2();
    const worker = await startWorker(b2, { options: { cacheMode, signing: SIGNING } });
    try {
      await t.step("public paths: encoded letters, lower-case hex, an empty query", async () => {
        const table: [string, string][] = [
          ["/%68ello.txt", "/hello.txt"],
          ["/hell%6F.txt", "/hello.txt"],
          ["/hello.txt?", "/hello.txt"],
          ["/hello.txt?utm_source=mail", "/hello.txt"],
          ["/%68ello.txt?v=2", "/hello.txt"],
          ["/caf%c3%a9/men%c3%bc.txt", "/caf%C3%A9/men%C3%BC.txt"],
          ["/a%2Bb.txt", "/a+b.txt"],
          ["/with%20space.txt?", "/with%20space.txt"],
          ["/%64ocs/", "/docs/"],
          ["/?", "/"],
        ];
        for (const [path, canonical] of table) {
          const { status, location, answer } = await spelled(worker, path);
          assert.deepEqual([status, location], [301, canonical], path);
          assert.equal(answer.headers["cache-control"], "public, max-age=3600", path);
          if (cacheMode === "workers-cache") {
            assert.equal(answer.headers["cloudflare-cdn-cache-control"], EDGE, path);
          }
        }
        assert.deepEqual(worker.downloads(), []);
        for (const canonical of ["/hello.txt", "/a+b.txt", "/100%25.txt", "/with%20space.txt"]) {
          assert.equal((await worker.raw(canonical)).status, 200, canonical);
        }
        worker.downloads();
      });

      await t.step("a signed link: only the query sign writes is served", async () => {
        const expires = nowSeconds() + 600;
        const link = await signed("/members/a.txt", { expires, downloadName: "a b.txt" });
        const [path, query] = link.split("?") as [string, string];
        const parameters = [...new URLSearchParams(query)];
        const sig = new URLSearchParams(query).get("sig")!;
        // The last base64url character of 32 bytes carries 2 bits that decode to nothing.
        const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        const last = alphabet.indexOf(sig.at(-1)!);
        const sameSignature = sig.slice(0, -1) + alphabet[last ^ 1];
        const spellings: [string, string][] = [
          [
            "reordered",
            `${path}?${
              parameters.reverse().map(([n, v]) => `${n}=${encodeURIComponent(v)}`).join("&")
            }`,
          ],
          ["& appended", `${link}&`],
          ["&& appended", `${link}&&`],
          ["& prepended", `${path}?&${query}`],
          ["&& prepended", `${path}?&&${query}`],
          ["a leading zero on the expiry", link.replace(`exp=${expires}`, `exp=0${expires}`)],
          ["a percent-encoded name", link.replace("exp=", "%65xp=")],
          [
            "a percent-encoded digit",
            link.replace(
              `exp=${expires}`,
              `exp=%3${String(expires).slice(0, 1)}${String(expires).slice(1)}`,
            ),
          ],
          ["a space as %20", link.replace("a+b.txt", "a%20b.txt")],
          ["a percent-encoded letter in the path", link.replace("/members/", "/%6Dembers/")],
          ["lower-case hex in the path", link.replace("/members/a.txt", "/members/%61.txt")],
          ["another spelling of the same signature bytes", link.replace(sig, sameSignature)],
        ];
        for (const [label, spelling] of spellings) {
          assert.notEqual(spelling, link, label);
          const { status, location, answer } = await spelled(worker, spelling);
          assert.deepEqual([status, location], [301, link], label);
          assert.match(answer.headers["cache-control"]!, /^private, max-age=(59\d|600)$/, label);
          if (cacheMode === "workers-cache") {
            const edge = answer.headers["cloudflare-cdn-cache-control"] ?? "";
            assert.match(
              edge,
              /^public, max-age=(59\d|600), stale-while-revalidate=0, stale-if-error=0$/,
            );
          }
        }
        assert.deepEqual(worker.downloads(), []);
        const served = await worker.raw(link);
        assert.deepEqual([served.status, served.body], [200, "members only"]);
        assert.equal(worker.downloads().length, 1);
      });

      await t.step("a spelling of a refused link is refused, not redirected", async () => {
        const link = await signed("/members/a.txt", { key: OTHER_KEY });
        for (const spelling of [link, `${link}&`, link.replace("/members/", "/%6Dembers/")]) {
          assert.deepEqual(
            await worker.raw(spelling),
            cacheMode === "workers-cache"
              ? {
                ...FORBIDDEN,
                headers: { ...FORBIDDEN.headers, "cloudflare-cdn-cache-control": "no-store" },
              }
              : FORBIDDEN,
            spelling,
          );
        }
        assert.deepEqual(worker.downloads(), []);
      });
    } finally {
      await worker.dispose();
      await b2.close();
    }
  });
}

Deno.test("worker in workerd: a signed index file stays signed behind its folder's URL", async (t) => {
  const b2 = startMemberB2();
  b2.putFile(BUCKET, {
    name: "site/solo/index.html",
    body: "<h1>solo</h1>",
    contentType: "text/html",
  });
  b2.putFile(BUCKET, { name: "site/solo/other.txt", body: "other", contentType: "text/plain" });
  const cases = [
    {
      label: "a file under a folder",
      prefix: "/solo/index.html/",
      folder: "/solo/",
      body: "<h1>solo</h1>",
    },
    { label: "the root's index file", prefix: "/index.html/", folder: "/", body: "<h1>home</h1>" },
  ];
  for (const cacheMode of ["cache-api", "workers-cache"] as const) {
    for (const { label, prefix, folder, body } of cases) {
      await t.step(`${cacheMode}: ${label}`, async () => {
        const worker = await startWorker(b2, {
          options: { cacheMode, signing: { ...SIGNING, prefixes: [prefix] } },
        });
        try {
          const file = prefix.slice(0, -1);
          for (const path of [file, folder]) {
            const answer = await worker.raw(path);
            assert.deepEqual([answer.status, answer.body], [403, "Forbidden\n"], path);
          }
          assert.deepEqual(worker.downloads(), []);
          for (const path of [file, folder]) {
            const answer = await worker.raw(await signed(path));
            assert.deepEqual([answer.status, answer.body], [200, body], path);
          }
          // Its neighbours stay public.
          const neighbour = folder === "/" ? "/hello.txt" : "/solo/other.txt";
          assert.equal((await worker.raw(neighbour)).status, 200);
        } finally {
          await worker.dispose();
        }
      });
    }
  }
  await b2.close();
});

Deno.test("worker in workerd: a signed index file is refused under every spelling of its folder, listings on, in every mode and URL style", async (t) => {
  const b2 = listingB2();
  b2.putFile(BUCKET, {
    name: "site/solo/index.html",
    body: "<h1>solo</h1>",
    contentType: "text/html",
  });
  b2.putFile(BUCKET, { name: "site/solo/other.txt", body: "other", contentType: "text/plain" });
  const spellings = [
    "/solo/",
    "/solo/?",
    "/solo/?format=json",
    "/sol%6F/",
    "/sol%6f/?from=a",
    "/solo/./",
    "/solo/%2e/",
    "/solo/index.html",
    "/solo/%69ndex.html",
    "/solo/index.html?",
    "/solo/index.html/",
    "/solo//",
    "//solo/",
    "/solo%2F",
    "/solo%2Findex.html",
    "/solo/index.html%00",
    "/docs/../solo/",
    "/docs/%2e%2e/solo/",
  ];
  try {
    for (const urlStyle of ["plain", "b2"] as const) {
      const root = urlStyle === "b2" ? `/file/${BUCKET}/site` : "";
      for (const cacheMode of ["cache-api", "workers-cache", "off"] as const) {
        await t.step(`${urlStyle}, ${cacheMode}`, async () => {
          const options = listingOptions(b2, cacheMode);
          const worker = await startWorker(b2, {
            options: {
              ...options,
              urlStyle,
              signing: { ...options.signing, prefixes: [`${root}/solo/index.html/`] },
            },
          });
          try {
            for (const spelling of spellings) {
              const answer = await worker.raw(root + spelling);
              assert.ok([400, 403, 404].includes(answer.status), `${spelling}: ${answer.status}`);
              assert.ok(!answer.body.includes("solo"), spelling);
            }
            const asked = worker.downloads().map((r) => r.path);
            assert.ok(!asked.some((path) => path.endsWith("/solo/index.html")), String(asked));
            // A neighbour stays public.
            assert.equal((await worker.raw(`${root}/solo/other.txt`)).status, 200);
          } finally {
            await worker.dispose();
          }
        });
      }
    }
  } finally {
    await b2.close();
  }
});

Deno.test("worker in workerd: no 301 leaves the site, whatever the path or query spells", async (t) => {
  const b2 = listingB2();
  b2.putFile(BUCKET, { name: "site/evil.com", body: "a name", contentType: "text/plain" });
  const hostile = [
    "//evil.com",
    "//evil.com/",
    "///evil.com",
    "/\\evil.com",
    "/%2F%2Fevil.com",
    "/%2fevil.com",
    "/%5Cevil.com",
    "/%5C%5Cevil.com/",
    "/%09/evil.com",
    "/%0D%0ALocation:%20https://evil.com",
    "/evil.com?",
    "/evil%2Ecom?x=//evil.com",
    "/docs/?from=//evil.com&format=json&",
    "/docs/?from=%0D%0ALocation:%20https://evil.com",
    "/https:%2F%2Fevil.com",
    "/@evil.com?",
    "/%40evil.com",
  ];
  try {
    for (const cacheMode of ["cache-api", "workers-cache", "off"] as const) {
      await t.step(cacheMode, async () => {
        const worker = await startWorker(b2, { options: listingOptions(b2, cacheMode) });
        try {
          const redirected: string[] = [];
          for (const path of hostile) {
            const answer = await worker.raw(path);
            const location = answer.headers["location"];
            if (location === undefined) {
              assert.equal(answer.status, 400, path);
              continue;
            }
            redirected.push(location);
            assert.equal(answer.status, 301, path);
            // One path on this site: a single "/" and no scheme, host, backslash or control.
            assert.match(location, /^\/(?![/\\])[^\\\s]*$/, `${path} -> ${location}`);
            assert.equal(new URL(location, SITE).origin, SITE, `${path} -> ${location}`);
          }
          // The others are refused (400): a path with an empty, encoded-slash or control segment.
          assert.deepEqual(redirected, [
            "/evil.com",
            "/evil.com",
            "/docs/?from=%2F%2Fevil.com&format=json",
            "/docs/?from=%0D%0ALocation%3A%20https%3A%2F%2Fevil.com",
            "/@evil.com",
            "/@evil.com",
          ]);
        } finally {
          await worker.dispose();
        }
      });
    }
  } finally {
    await b2.close();
  }
});

Deno.test("worker in workerd: WORKER_ACTIVE_CONTENT sandboxes or attaches HTML and SVG, in every mode", async (t) => {
  const b2 = startB2();
  b2.putFile(BUCKET, { name: "site/logo.svg", body: "<svg/>", contentType: "image/svg+xml" });
  try {
    for (const cacheMode of ["cache-api", "workers-cache"] as const) {
      for (const choice of ["serve", "sandbox", "download"] as const) {
        await t.step(`${cacheMode}, ${choice}`, async () => {
          const worker = await startWorker(b2, {
            options: { cacheMode, activeContent: choice },
          });
          try {
            for (const path of ["/", "/logo.svg", "/hello.txt"]) {
              // Twice: the Cache API's copy is answered the same way.
              for (const _ of [1, 2]) {
                const answer = await worker.visit(path);
                const active = path !== "/hello.txt";
                assert.equal(answer.status, 200);
                assert.deepEqual([
                  answer.headers["content-security-policy"],
                  answer.headers["content-disposition"],
                ], [
                  active && choice === "sandbox" ? "sandbox" : undefined,
                  active && choice === "download" ? "attachment" : undefined,
                ], path);
              }
            }
          } finally {
            await worker.dispose();
          }
        });
      }
    }
  } finally {
    await b2.close();
  }
});

Deno.test("worker in workerd: WORKER_ACTIVE_CONTENT goes by the type B2 gives, as a browser reads it, not the name", async () => {
  const b2 = startB2();
  const objects: [string, string, boolean][] = [
    ["site/types/page.txt", "text/html", true],
    ["site/types/list.txt", "text/plain, text/html", true],
    ["site/types/style.txt", "text/xsl", true],
    ["site/types/plain.html", "text/plain", false],
    ["site/types/picture.svg", "image/png", false],
  ];
  for (const [name, contentType] of objects) {
    b2.putFile(BUCKET, { name, body: "<script>alert(1)</script>", contentType });
  }
  const worker = await startWorker(b2, { options: { activeContent: "sandbox" } });
  try {
    for (const [name, contentType, active] of objects) {
      const answer = await worker.visit(`/${name.slice(PREFIX.length)}`);
      assert.deepEqual(
        [answer.status, answer.headers["content-type"], answer.headers["content-security-policy"]],
        [200, contentType, active ? "sandbox" : undefined],
        name,
      );
    }
  } finally {
    await worker.dispose();
    await b2.close();
  }
});

Deno.test("worker in workerd: a 304 carries what WORKER_ACTIVE_CONTENT set, so a browser's copy kept from before gets it", async (t) => {
  const b2 = startMemberB2();
  b2.putFile(BUCKET, {
    name: "site/members/page.html",
    body: "<h1>p</h1>",
    contentType: "text/html",
  });
  try {
    for (const cacheMode of ["cache-api", "workers-cache"] as const) {
      for (const choice of ["serve", "sandbox", "download"] as const) {
        await t.step(`${cacheMode}, ${choice}`, async () => {
          const worker = await startWorker(b2, {
            options: { cacheMode, activeContent: choice, signing: SIGNING },
          });
          try {
            for (const path of ["/", "/hello.txt"]) {
              const { headers } = await worker.visit(path);
              const answer = await worker.visit(path, {
                headers: { "If-None-Match": headers["etag"]! },
              });
              const active = path === "/";
              assert.deepEqual([
                answer.status,
                answer.headers["content-security-policy"],
                answer.headers["content-disposition"],
              ], [
                304,
                active && choice === "sandbox" ? "sandbox" : undefined,
                active && choice === "download" ? "attachment" : undefined,
              ], path);
            }
            // A link's download name stays the name the browser's copy is updated with.
            const link = await signed("/members/page.html", { downloadName: "p.html" });
            const { headers } = await worker.visit(link);
            const answer = await worker.visit(link, {
              headers: { "If-None-Match": headers["etag"]! },
            });
            assert.equal(answer.status, 304);
            assert.equal(
              answer.headers["content-disposition"],
              choice === "download"
                ? `attachment; filename="p.html"; filename*=UTF-8''p.html`
                : undefined,
            );
          } finally {
            await worker.dispose();
          }
        });
      }
    }
  } finally {
    await b2.close();
  }
});

Deno.test("revalidatesStoredCopy() knows the cache's own revalidation: the ETag, or a date only without one", async (t) => {
  const tagged = new Headers({ ETag: HELLO_SHA1, "Last-Modified": LAST_MODIFIED });
  const dated = new Headers({ "Last-Modified": LAST_MODIFIED });
  const table: [string, Headers, Record<string, string>, boolean][] = [
    ["its ETag", tagged, { "If-None-Match": HELLO_SHA1 }, true],
    ["its ETag and date", tagged, {
      "If-None-Match": HELLO_SHA1,
      "If-Modified-Since": LAST_MODIFIED,
    }, true],
    ["its date alone, where it has an ETag", tagged, { "If-Modified-Since": LAST_MODIFIED }, false],
    ["*", tagged, { "If-None-Match": "*" }, false],
    ["a weak tag", tagged, { "If-None-Match": `W/${HELLO_SHA1}` }, false],
    ["its date, where it has no ETag", dated, { "If-Modified-Since": LAST_MODIFIED }, true],
    ["another date", dated, { "If-Modified-Since": "Fri, 01 Jan 2100 00:00:00 GMT" }, false],
    ["a tag, where it has none", dated, {
      "If-None-Match": HELLO_SHA1,
      "If-Modified-Since": LAST_MODIFIED,
    }, false],
  ];
  for (const [label, object, request, expected] of table) {
    await t.step(label, () => {
      assert.equal(revalidatesStoredCopy(new Headers(request), object), expected);
    });
  }
});

Deno.test("worker in workerd, Workers Cache mode: a 304 a visitor shaped is never kept at the edge", async () => {
  const b2 = startB2();
  const worker = await startWorker(b2, { options: { cacheMode: "workers-cache" } });
  try {
    const shaped: Record<string, string>[] = [
      { "If-None-Match": "*" },
      { "If-None-Match": `"other", ${HELLO_SHA1}` },
      { "If-None-Match": `W/${HELLO_SHA1}` },
      { "If-Modified-Since": "Fri, 01 Jan 2100 00:00:00 GMT" },
      // The object has an ETag, which is what the cache revalidates with: a date alone is a
      // visitor's, even the object's own.
      { "If-Modified-Since": LAST_MODIFIED },
    ];
    for (const headers of shaped) {
      const answer = await worker.visit("/hello.txt", { headers });
      assert.deepEqual([answer.status, answer.body], [304, ""], JSON.stringify(headers));
      assert.equal(answer.headers["cloudflare-cdn-cache-control"], "no-store");
    }
    // The cache's own revalidation, with the validators it stored, renews its copy.
    const own: Record<string, string>[] = [
      { "If-None-Match": HELLO_SHA1 },
      { "If-None-Match": HELLO_SHA1, "If-Modified-Since": LAST_MODIFIED },
    ];
    for (const headers of own) {
      const answer = await worker.visit("/hello.txt", { headers });
      assert.deepEqual([answer.status, answer.headers["cloudflare-cdn-cache-control"]], [
        304,
        EDGE,
      ]);
    }
    assert.deepEqual(worker.downloads().map((r) => r.method), Array(7).fill("HEAD"));
  } finally {
    await worker.dispose();
    await b2.close();
  }
});

// ---------------------------------------------------------------------------
// Large objects (issue 14): a small segment size and a lowered threshold keep them small
// ---------------------------------------------------------------------------

const SEGMENT = 1000;
const BIG_SIZE = 5500;
const SEGMENTING = { WORKER_SEGMENT_SIZE: String(SEGMENT), WORKER_SEGMENT_THRESHOLD: "2500" };

function bigB2(): FakeB2 {
  const b2 = startB2();
  b2.putFile(BUCKET, { name: "site/big.bin", body: { size: BIG_SIZE }, contentType: "video/mp4" });
  b2.putFile(BUCKET, { name: "site/small.bin", body: { size: 2000 } });
  return b2;
}

/** The fake B2's file id for a generated body (fake_b2.ts: serveFile). */
function fakeFileId(name: string, size: number): string {
  return `4_z${BUCKET_ID}_f${name.length}x${size}`;
}

/** Waits until segment `index` of a large object is kept in the Cache API. */
async function segmentKept(
  worker: TestWorker,
  index: number,
  object = { name: "site/big.bin", size: BIG_SIZE },
  origin = SITE,
): Promise<void> {
  const caches = await worker.miniflare.getCaches() as unknown as { default: Cache };
  const query = new URLSearchParams({
    object: await objectTag(object.name),
    version: fakeFileId(object.name, object.size),
    size: String(SEGMENT),
    index: String(index),
  });
  const key = `${origin}/.well-known/b2-private-cdn/segment?${query}`;
  await waitFor(async () => {
    const cached = await caches.default.match(key);
    await cached?.body?.cancel();
    return cached !== undefined;
  }, `segment ${index} in the Cache API`);
}

function ranges(worker: TestWorker): (string | null)[] {
  return worker.downloads().map((r) => r.headers.get("range"));
}

// workerd's own ctx.exports (no stand-in here, so nothing caches the loopback calls): the
// Segments entrypoint, as uploaded, is what workers-cache mode reads segments through.
Deno.test("worker in workerd: workers-cache mode reads segments through its Segments entrypoint", async () => {
  const b2 = bigB2();
  const worker = await startWorker(b2, {
    options: { cacheMode: "workers-cache" },
    extraBindings: SEGMENTING,
  });
  try {
    const answer = await worker.visit("/big.bin", { headers: { Range: "bytes=1900-3100" } });
    // Not known yet: B2 is asked for the visitor's own bytes up to the end of their segment,
    // whose Content-Range tells the size; that segment is read meanwhile through the Segments
    // entrypoint (kept where Workers Cache is), and the next ones are read through it too.
    assert.deepEqual(
      [answer.status, answer.headers["content-range"], answer.body],
      [206, `bytes 1900-3100/${BIG_SIZE}`, patternText(1900, 3100)],
    );
    await new Promise((resolve) => setTimeout(resolve, 200));
    assert.deepEqual(ranges(worker).sort(), [
      "bytes=1000-1999",
      "bytes=1900-1999",
      "bytes=2000-2999",
      "bytes=3000-3999",
    ]);
    // Not kept in the Cache API: a repeat reads the segments again (only Workers Cache, which
    // plain workerd lacks, would answer it), while the facts were kept there.
    const again = await worker.visit("/big.bin", { headers: { Range: "bytes=2000-2099" } });
    assert.equal(again.body, patternText(2000, 2099));
    assert.deepEqual(ranges(worker), ["bytes=2000-2999"]);
    assert.deepEqual(worker.logs, []);
  } finally {
    await worker.dispose();
    await b2.close();
  }
});

Deno.test("worker in workerd: a large object's answers are sandboxed or attached as a small one's", async (t) => {
  const b2 = startB2();
  b2.putFile(BUCKET, {
    name: "site/big.svg",
    body: { size: BIG_SIZE },
    contentType: "image/svg+xml",
  });
  try {
    for (const cacheMode of ["cache-api", "workers-cache"] as const) {
      for (const choice of ["sandbox", "download"] as const) {
        await t.step(`${cacheMode}, ${choice}`, async () => {
          const worker = await startWorker(b2, {
            options: { cacheMode, activeContent: choice },
            extraBindings: SEGMENTING,
          });
          const expected = [
            choice === "sandbox" ? "sandbox" : undefined,
            choice === "download" ? "attachment" : undefined,
          ];
          try {
            // B2's first answer tells the size, then the facts answer the rest.
            const requests: [string, RequestInit][] = [
              ["a first GET", {}],
              ["a GET from the facts", {}],
              ["a range", { headers: { Range: "bytes=1200-1299" } }],
              ["a HEAD", { method: "HEAD" }],
            ];
            let etag = "";
            for (const [label, init] of requests) {
              const answer = await worker.visit("/big.svg", init);
              etag = answer.headers["etag"] ?? etag;
              assert.deepEqual(
                [
                  answer.headers["content-security-policy"],
                  answer.headers["content-disposition"],
                ],
                expected,
                label,
              );
            }
            const revalidated = await worker.visit("/big.svg", {
              headers: { "If-None-Match": etag },
            });
            assert.deepEqual([
              revalidated.status,
              revalidated.headers["content-security-policy"],
              revalidated.headers["content-disposition"],
            ], [304, ...expected]);
          } finally {
            await worker.dispose();
          }
        });
      }
    }
  } finally {
    await b2.close();
  }
});

Deno.test("worker in workerd, large objects as segments in the Cache API", async (t) => {
  const b2 = bigB2();
  const cachePersist = await Deno.makeTempDir();
  const worker = await startWorker(b2, {
    options: { cacheMode: "cache-api" },
    extraBindings: SEGMENTING,
    cachePersist,
  });
  const etag = `"${withoutBucketId(fakeFileId("site/big.bin", BIG_SIZE))}"`;
  try {
    await t.step(
      "a first range: B2's answer tells the size, then one aligned segment",
      async () => {
        const answer = await worker.visit("/big.bin", { headers: { Range: "bytes=1200-1299" } });
        assert.deepEqual(answer, {
          status: 206,
          headers: objectAnswerHeaders({
            "content-length": "100",
            "content-range": `bytes 1200-1299/${BIG_SIZE}`,
            "content-type": "video/mp4",
            etag,
          }),
          body: patternText(1200, 1299),
        });
        // The first request is the one any object gets (the visitor's range), left unread.
        assert.deepEqual(ranges(worker), ["bytes=1200-1299", "bytes=1000-1999"]);
        await segmentKept(worker, 1);
      },
    );

    await t.step(
      "a range across segment boundaries: exact bytes, only missing aligned segments",
      async () => {
        const answer = await worker.visit("/big.bin", { headers: { Range: "bytes=1900-3100" } });
        assert.deepEqual([answer.status, answer.headers["content-range"]], [
          206,
          `bytes 1900-3100/${BIG_SIZE}`,
        ]);
        assert.equal(answer.body, patternText(1900, 3100));
        assert.deepEqual(ranges(worker), ["bytes=2000-2999", "bytes=3000-3999"]);
        await segmentKept(worker, 2);
        await segmentKept(worker, 3);
      },
    );

    await t.step("repeats are answered without B2", async () => {
      const answer = await worker.visit("/big.bin", { headers: { Range: "bytes=1500-3499" } });
      assert.equal(answer.body, patternText(1500, 3499));
      assert.deepEqual(ranges(worker), []);
    });

    await t.step("HEAD and conditional requests: no B2 request, no body", async () => {
      const head = await worker.visit("/big.bin", { method: "HEAD" });
      assert.deepEqual([head.status, head.headers["content-length"], head.body], [
        200,
        String(BIG_SIZE),
        "",
      ]);
      const notModified = await worker.visit("/big.bin", { headers: { "If-None-Match": etag } });
      assert.deepEqual([notModified.status, notModified.headers.etag], [304, etag]);
      const stale = await worker.visit("/big.bin", {
        headers: { Range: "bytes=1200-1209", "If-Range": '"another"' },
        method: "HEAD",
      });
      assert.deepEqual([stale.status, stale.headers["content-range"]], [200, undefined]);
      const current = await worker.visit("/big.bin", {
        headers: { Range: "bytes=1200-1209", "If-Range": etag },
      });
      assert.deepEqual([current.status, current.body], [206, patternText(1200, 1209)]);
      const beyond = await worker.visit("/big.bin", { headers: { Range: "bytes=9000-" } });
      assert.deepEqual([beyond.status, beyond.headers["content-range"]], [
        416,
        `bytes */${BIG_SIZE}`,
      ]);
      assert.deepEqual(ranges(worker), []);
    });

    await t.step("an open-ended range and a GET without Range are byte-exact", async () => {
      const open = await worker.visit("/big.bin", { headers: { Range: "bytes=2500-" } });
      assert.deepEqual([open.status, open.headers["content-range"]], [
        206,
        `bytes 2500-${BIG_SIZE - 1}/${BIG_SIZE}`,
      ]);
      assert.equal(open.body, patternText(2500, BIG_SIZE - 1));
      const whole = await worker.visit("/big.bin");
      assert.deepEqual([whole.status, whole.headers["content-length"]], [200, String(BIG_SIZE)]);
      assert.equal(whole.body, patternText(0, BIG_SIZE - 1));
      // Aligned segments only; the last one shorter.
      assert.deepEqual(ranges(worker), ["bytes=4000-4999", "bytes=5000-5499", "bytes=0-999"]);
    });

    await t.step("a token rotation is answered from the same segments and facts", async () => {
      // A redeploy with a new token, sharing the cache as Cloudflare's data centre would.
      const rotated = await startWorker(b2, {
        options: { cacheMode: "cache-api" },
        extraBindings: SEGMENTING,
        cachePersist,
        token: b2.issueDownloadToken(BUCKET, "", 3600),
      });
      try {
        assert.notEqual(rotated.token, worker.token);
        rotated.downloads();
        const answer = await rotated.visit("/big.bin", { headers: { Range: "bytes=900-4100" } });
        assert.equal(answer.body, patternText(900, 4100));
        const head = await rotated.visit("/big.bin", { method: "HEAD" });
        assert.equal(head.headers.etag, etag);
        assert.deepEqual(ranges(rotated), []);
      } finally {
        await rotated.dispose();
      }
    });

    await t.step(
      "a replaced object is never mixed: the answer ends, the next is the new one",
      async () => {
        b2.putFile(BUCKET, { name: "site/mix.bin", body: { size: BIG_SIZE } });
        // Over HTTP, since miniflare's dispatchFetch never ends a body the worker aborts.
        const origin = new URL(await worker.miniflare.ready).origin;
        const get = (range: string) =>
          fetch(`${origin}/mix.bin`, { headers: { Range: range, "Accept-Encoding": "identity" } });
        const first = await get("bytes=0-999");
        assert.equal(new TextDecoder().decode(await first.bytes()), patternText(0, 999));
        await segmentKept(worker, 0, { name: "site/mix.bin", size: BIG_SIZE }, origin);
        worker.downloads();
        // Replaced: another file id (the fake's ids follow the size).
        b2.putFile(BUCKET, { name: "site/mix.bin", body: { size: BIG_SIZE + 100 } });
        const mixed = await get("bytes=500-2499");
        assert.equal(mixed.headers.get("content-range"), `bytes 500-2499/${BIG_SIZE}`);
        // Segment 0 of the old version only, then the answer ends short of its length.
        await assert.rejects(mixed.bytes(), /error reading a body/);
        assert.deepEqual(ranges(worker), ["bytes=1000-1999"]);
        await waitFor(
          () => worker.logs.some((log) => log.includes("changed while served")),
          "the log",
        );
        const next = await get("bytes=500-2499");
        assert.deepEqual(
          [next.status, next.headers.get("content-range"), next.headers.get("etag")],
          [
            206,
            `bytes 500-2499/${BIG_SIZE + 100}`,
            `"${withoutBucketId(fakeFileId("site/mix.bin", BIG_SIZE + 100))}"`,
          ],
        );
        assert.equal(new TextDecoder().decode(await next.bytes()), patternText(500, 2499));
        // B2's first answer tells the new version; its own segments follow.
        assert.deepEqual(ranges(worker), [
          "bytes=500-2499",
          "bytes=0-999",
          "bytes=1000-1999",
          "bytes=2000-2999",
        ]);
      },
    );

    await t.step(
      "a player's next range, asked as the last one ends, finds the segment kept",
      async () => {
        b2.putFile(BUCKET, { name: "site/seq.bin", body: { size: BIG_SIZE } });
        const played: string[] = [];
        for (const range of ["bytes=0-99", "bytes=100-199", "bytes=200-299"]) {
          played.push((await worker.visit("/seq.bin", { headers: { Range: range } })).body);
        }
        assert.deepEqual(played, [
          patternText(0, 99),
          patternText(100, 199),
          patternText(200, 299),
        ]);
        // The first answer ends only once segment 0 is kept; B2's first answer told the size.
        assert.deepEqual(ranges(worker), [null, "bytes=0-999"]);
      },
    );

    await t.step("small objects are unchanged: one B2 request, kept whole", async () => {
      const small = await worker.visit("/small.bin", { headers: { Range: "bytes=10-19" } });
      assert.deepEqual([small.status, small.body], [206, patternText(10, 19)]);
      assert.deepEqual(ranges(worker), ["bytes=10-19"]);
    });
  } finally {
    await worker.dispose();
    await b2.close();
    await Deno.remove(cachePersist, { recursive: true });
  }
});

/**
 * A pass-through in front of `b2` that sends the first `fast` bytes of each download at once
 * and the rest `delayMs` later, as a long segment arrives from a distant B2.
 */
function slowTail(
  b2: FakeB2,
  fast: number,
  delayMs: number,
): { url: string; close(): Promise<void> } {
  return b2.front(async (answer) => {
    if (!answer.body) return answer;
    const bytes = await answer.bytes();
    const body = new ReadableStream<Uint8Array>({
      async start(controller) {
        controller.enqueue(bytes.subarray(0, fast));
        await new Promise((resolve) => setTimeout(resolve, delayMs));
        if (bytes.byteLength > fast) controller.enqueue(bytes.subarray(fast));
        controller.close();
      },
    });
    return new Response(body, { status: answer.status, headers: answer.headers });
  });
}

Deno.test("worker in workerd: a range that ends before its segment is sent only once the segment is kept", async () => {
  const b2 = bigB2();
  // The visitor's 100 bytes come at once; the segment's other 900 a while later.
  const front = slowTail(b2, 300, 400);
  const worker = await startWorker(b2, {
    options: { cacheMode: "cache-api" },
    extraBindings: SEGMENTING,
    downloadUrl: front.url,
  });
  try {
    const played: string[] = [];
    for (const range of ["bytes=1000-1099", "bytes=1100-1199", "bytes=1200-1299"]) {
      played.push((await worker.visit("/big.bin", { headers: { Range: range } })).body);
    }
    assert.deepEqual(played, [
      patternText(1000, 1099),
      patternText(1100, 1199),
      patternText(1200, 1299),
    ]);
    // Without waiting for the put, the second range misses and B2 sends segment 1 again.
    assert.deepEqual(ranges(worker), ["bytes=1000-1099", "bytes=1000-1999"]);
  } finally {
    await worker.dispose();
    await front.close();
    await b2.close();
  }
});

Deno.test("worker in workerd: a notification for a large object forgets its facts where it lands", async () => {
  const b2 = bigB2();
  const secret = "abcdefghijklmnopqrstuvwxyz012345";
  const worker = await startWorker(b2, {
    options: { cacheMode: "cache-api" },
    extraBindings: { ...SEGMENTING, B2_EVENT_NOTIFICATION_SECRET: secret },
  });
  try {
    const range = { headers: { Range: "bytes=1200-1299" } };
    assert.equal((await worker.visit("/big.bin", range)).body, patternText(1200, 1299));
    await segmentKept(worker, 1);
    ranges(worker);
    assert.equal((await worker.visit("/big.bin", range)).status, 206);
    assert.deepEqual(ranges(worker), [], "kept: B2 is not asked");

    // A new version of another size: a new file id, and other bytes past the old end.
    b2.putFile(BUCKET, { name: "site/big.bin", body: { size: 6000 }, contentType: "video/mp4" });
    const body = JSON.stringify({
      events: [{
        bucketName: BUCKET,
        eventId: "e-1",
        eventTimestamp: Date.now(),
        eventType: "b2:ObjectCreated:Upload",
        objectName: "site/big.bin",
      }],
    });
    const answer = await worker.visit("/.well-known/b2-private-cdn/events", {
      method: "POST",
      headers: { "X-Bz-Event-Notification-Signature": await signEventBody(secret, body) },
      body,
    });
    assert.equal(answer.status, 200);
    const fresh = await worker.visit("/big.bin", range);
    assert.deepEqual([fresh.status, fresh.headers["content-range"]], [206, "bytes 1200-1299/6000"]);
    assert.ok(ranges(worker).length > 0, "the new version is learned from B2");
  } finally {
    await worker.dispose();
    await b2.close();
  }
});

Deno.test("worker in workerd: facts kept under one fingerprint are not used after a redeploy with another", async () => {
  const b2 = bigB2();
  // One data centre's Cache API, shared by both versions, which refresh cannot empty.
  const cachePersist = await Deno.makeTempDir();
  const deploy = (fingerprint: string, cacheControl: string) =>
    startWorker(b2, {
      options: { cacheMode: "cache-api", cacheControl },
      extraBindings: { ...SEGMENTING, WORKER_FINGERPRINT: fingerprint },
      cachePersist,
    });
  const range = { headers: { Range: "bytes=1200-1299" } };
  const before = await deploy("1-aaaaaaaaaaaaaaaa", "public, max-age=60");
  try {
    assert.equal((await before.visit("/big.bin", range)).body, patternText(1200, 1299));
    await segmentKept(before, 1);
    const known = await before.visit("/big.bin", { method: "HEAD" });
    assert.equal(known.headers["cache-control"], "public, max-age=60");
    assert.deepEqual(ranges(before), ["bytes=1200-1299", "bytes=1000-1999"]);
  } finally {
    await before.dispose();
  }
  // Another Cache-Control, so another fingerprint: the old facts carry the old header.
  const after = await deploy("1-bbbbbbbbbbbbbbbb", "public, max-age=5");
  try {
    const answer = await after.visit("/big.bin", range);
    assert.deepEqual(
      [answer.status, answer.headers["cache-control"], answer.body],
      [206, "public, max-age=5", patternText(1200, 1299)],
    );
    // Learned again from B2's answer to the visitor's range; segment 1 (same file id) reused.
    assert.deepEqual(ranges(after), ["bytes=1200-1299"]);
    const head = await after.visit("/big.bin", { method: "HEAD" });
    assert.deepEqual([head.headers["cache-control"], ranges(after)], ["public, max-age=5", []]);
  } finally {
    await after.dispose();
    await b2.close();
    await Deno.remove(cachePersist, { recursive: true });
  }
});

// ---------------------------------------------------------------------------
// Folder listings (issue 24)
// ---------------------------------------------------------------------------

const LISTING_KEY = {
  keyId: "listing-key-id-5d1c",
  applicationKey: "listing-application-key-9e4b",
  capabilities: ["listFiles"],
  restrictToBucket: BUCKET,
  namePrefix: PREFIX,
};

/** Names an attacker may upload: each must show as text and link to itself. */
const HOSTILE_NAMES = [
  "<script>alert(1)<",
  "\"quoted\" & 'apos'",
  "<img src=x onerror=alert(1)>",
  "with space+plus#hash?query%25",
];

const LISTING_FILES: FakeFile[] = [
  { name: "site/docs/a.txt", body: { size: 1536 }, uploadTimestamp: Date.UTC(2026, 11, 1, 9, 30) },
  { name: "site/docs/b.txt", body: "b" },
  ...HOSTILE_NAMES.map((name) => ({ name: `site/docs/${name}.txt`, body: name })),
  { name: "site/docs/café.txt", body: "café" },
  { name: "site/docs/sub/c.txt", body: "c" },
  { name: "site/docs/empty/.bzEmpty", body: "" },
  { name: "site/docs/.hidden.txt", body: "hidden" },
  { name: "site/docs/.git/config", body: "hidden" },
  { name: "site/docs/members/x.txt", body: "signed only" },
  { name: "site/docs/back\\slash.txt", body: "no path reaches it" },
  { name: "site/indexed/index.html", body: "<h1>indexed</h1>", contentType: "text/html" },
  { name: "site/indexed/x.txt", body: "x" },
  ...Array.from({ length: 7 }, (_, i) => ({ name: `site/many/${i}.txt`, body: String(i) })),
  { name: "secret.txt", body: "outside the prefix" },
];

function listingB2(): FakeB2 {
  return startFakeB2({
    buckets: [{ id: BUCKET_ID, name: BUCKET, files: structuredClone(LISTING_FILES) }],
    keys: [LISTING_KEY],
  });
}

function listingOptions(b2: FakeB2, cacheMode: WorkerOptions["cacheMode"]) {
  return {
    cacheMode,
    listing: {
      keyId: LISTING_KEY.keyId,
      key: LISTING_KEY.applicationKey,
      apiUrl: b2.url,
      ttl: 60,
    },
    signing: {
      prefixes: ["/docs/members/"],
      key: generateSigningKey(),
      maxTtl: 3600,
    },
  } satisfies Partial<WorkerOptions>;
}

/** The B2 API calls (not downloads) since `from`, by name. */
function apiCalls(b2: FakeB2, from: number): string[] {
  return b2.requests.slice(from).filter((r) => r.path.startsWith("/b2api/"))
    .map((r) => r.path.replace(/^\/b2api\/v4\//, "").replace(/\?.*/, ""));
}

/** The `href`s of a listing page's table, decoded from HTML once. */
function tableLinks(html: string): string[] {
  const table = html.slice(html.indexOf("<tbody>"), html.indexOf("</tbody>"));
  return [...table.matchAll(/href="([^"]*)"/g)].map((m) =>
    m[1]!.replace(/&#(\d+);/g, (_, code) => String.fromCharCode(Number(code)))
  );
}

Deno.test("worker in workerd lists a folder without an index file, escaping every name", async (t) => {
  const b2 = listingB2();
  const worker = await startWorker(b2, { options: listingOptions(b2, "cache-api") });
  try {
    let page = "";
    await t.step(
      "an HTML page: folders first, then files, no script, a strict policy",
      async () => {
        const answer = await worker.visit("/docs/");
        assert.equal(answer.status, 200);
        assert.equal(answer.headers["content-type"], "text/html; charset=utf-8");
        assert.match(
          answer.headers["content-security-policy"]!,
          /^default-src 'none'; style-src 'sha256-/,
        );
        page = answer.body;
        assert.doesNotMatch(page, /<script/i);
        for (const name of HOSTILE_NAMES.filter((name) => /[<>"'&]/.test(name))) {
          assert.ok(!page.includes(name), `"${name}" is escaped`);
          assert.ok(page.includes(`>${escapeHtml(name)}.txt</a>`), `"${name}" shows as text`);
        }
        // Each file has its download link beside it.
        const files = [
          "/docs/%22quoted%22%20&%20'apos'.txt",
          "/docs/%3Cimg%20src=x%20onerror=alert(1)%3E.txt",
          "/docs/%3Cscript%3Ealert(1)%3C.txt",
          "/docs/a.txt",
          "/docs/b.txt",
          "/docs/caf%C3%A9.txt",
          "/docs/with%20space+plus%23hash%3Fquery%2525.txt",
        ];
        assert.deepEqual(tableLinks(page), [
          "/docs/empty/",
          "/docs/sub/",
          ...files.flatMap((path) => [path, `${path}?download`]),
        ]);
        assert.match(
          page,
          /<a href="\/docs\/a\.txt\?download" class="download" aria-label="Download a\.txt">download<\/a>/,
        );
        assert.match(
          page,
          /<data value="1536" title="1,536 bytes">1\.5 KiB<\/data><\/td><td><time datetime="2026-12-01T09:30:00\.000Z">2026-12-01 09:30 UTC<\/time>/,
        );
        assert.match(
          page,
          /<nav aria-label="Breadcrumb"><ol><li><a href="\/">Top<\/a><\/li><li><a href="\/docs\/" aria-current="page">docs<\/a>/,
        );
      },
    );

    await t.step("each link is the worker's own path of the name it shows", async () => {
      // In the one spelling the worker serves: never a redirect.
      for (const link of tableLinks(page).filter((l) => !l.endsWith("/"))) {
        const answer = await worker.visit(link, { redirect: "manual" });
        assert.equal(answer.status, 200, link);
      }
      const hostile = await worker.visit("/docs/%3Cscript%3Ealert(1)%3C.txt");
      assert.equal(hostile.body, "<script>alert(1)<");
    });

    await t.step("hidden names, unreachable names and signed prefixes are never listed", () => {
      for (const name of [".hidden", ".git", ".bzEmpty", "members", "back", "slash", "secret"]) {
        assert.ok(!page.includes(name), `${name} is not listed`);
      }
    });

    await t.step("the same listing as JSON, at ?format=json", async () => {
      const answer = await worker.visit("/docs/?format=json");
      assert.equal(answer.headers["content-type"], "application/json; charset=utf-8");
      const listing = JSON.parse(answer.body);
      assert.deepEqual(listing.folders, [
        { name: "empty/", path: "/docs/empty/" },
        { name: "sub/", path: "/docs/sub/" },
      ]);
      assert.deepEqual(listing.files[3], {
        name: "a.txt",
        path: "/docs/a.txt",
        download: "/docs/a.txt?download",
        size: 1536,
        uploaded: "2026-12-01T09:30:00.000Z",
      });
      assert.deepEqual(listing.files.map((f: { name: string }) => f.name), [
        ...HOSTILE_NAMES.toSorted().map((name) => `${name}.txt`).slice(0, 3),
        "a.txt",
        "b.txt",
        "café.txt",
        "with space+plus#hash?query%25.txt",
      ]);
      assert.deepEqual([listing.folder, listing.next], ["/docs/", null]);
    });

    await t.step("a folder of only .bzEmpty lists as empty", async () => {
      const answer = await worker.visit("/docs/empty/");
      assert.equal(answer.status, 200);
      assert.match(answer.body, /Nothing to list here/);
    });

    await t.step("a folder with its index file serves it", async () => {
      const answer = await worker.visit("/indexed/");
      assert.deepEqual([answer.status, answer.body], [200, "<h1>indexed</h1>"]);
    });

    await t.step("a signed prefix and a hidden folder are not listed", async () => {
      assert.equal((await worker.visit("/docs/members/")).status, 403);
      assert.equal((await worker.visit("/docs/.git/")).status, 404);
    });
  } finally {
    await worker.dispose();
    await b2.close();
  }
});

Deno.test("worker in workerd pages through a folder one b2_list_file_names call a page", async () => {
  const b2 = listingB2();
  const worker = await startWorker(b2, {
    options: listingOptions(b2, "off"),
    extraBindings: { WORKER_LISTING_PAGE_SIZE: "3" },
  });
  try {
    const from = b2.requests.length;
    const names: string[] = [];
    let next: string | null = "/many/?format=json";
    while (next !== null) {
      const answer = await worker.visit(next);
      assert.equal(answer.status, 200, next);
      const listing = JSON.parse(answer.body);
      names.push(...listing.files.map((f: { name: string }) => f.name));
      next = listing.next;
    }
    assert.deepEqual(names, Array.from({ length: 7 }, (_, i) => `${i}.txt`));
    assert.deepEqual(apiCalls(b2, from), [
      "b2_authorize_account",
      "b2_list_file_names",
      "b2_list_file_names",
      "b2_list_file_names",
    ]);
    const html = await worker.visit("/many/");
    assert.match(html.body, /<a href="\/many\/\?from=3\.txt" rel="next">Next page<\/a>/);
    assert.match(html.body, /3 files on this page/);
    const second = await worker.visit("/many/?from=3.txt");
    assert.deepEqual(
      tableLinks(second.body).filter((link) => !link.endsWith("?download")),
      ["/many/3.txt", "/many/4.txt", "/many/5.txt"],
    );
  } finally {
    await worker.dispose();
    await b2.close();
  }
});

Deno.test("worker in workerd never names a hidden, signed or unreachable name in a listing's next page", async () => {
  const b2 = listingB2();
  const worker = await startWorker(b2, {
    options: listingOptions(b2, "off"),
    extraBindings: { WORKER_LISTING_PAGE_SIZE: "1" },
  });
  try {
    const names: string[] = [];
    const cursors: string[] = [];
    let next: string | null = "/docs/?format=json";
    for (let pages = 0; next !== null; pages++) {
      assert.ok(pages < 40, "the pages end");
      const answer = await worker.visit(next);
      assert.equal(answer.status, 200, next);
      const html = await worker.visit(next.replace(/&?format=json/, "").replace(/\?$/, ""));
      const listing = JSON.parse(answer.body);
      names.push(...listing.folders.concat(listing.files).map((f: { name: string }) => f.name));
      next = listing.next;
      cursors.push(next ?? "", html.body.match(/href="([^"]*)" rel="next"/)?.[1] ?? "");
    }
    for (const secret of [".hidden", ".git", "config", "members", "signed", "slash", ".bzEmpty"]) {
      assert.ok(!cursors.some((cursor) => cursor.includes(secret)), `${secret} in ${cursors}`);
    }
    // Every name the one-page listing shows, once.
    assert.deepEqual(
      names.toSorted(),
      [
        "empty/",
        "sub/",
        ...HOSTILE_NAMES.map((name) => `${name}.txt`),
        "a.txt",
        "b.txt",
        "café.txt",
      ]
        .toSorted(),
    );
  } finally {
    await worker.dispose();
    await b2.close();
  }
});

Deno.test("worker in workerd keeps one account token per isolate and renews it when B2 says it expired", async () => {
  const b2 = listingB2();
  const worker = await startWorker(b2, { options: listingOptions(b2, "off") });
  try {
    const from = b2.requests.length;
    for (let i = 0; i < 3; i++) assert.equal((await worker.visit("/docs/")).status, 200);
    b2.expireAccountTokens();
    assert.equal((await worker.visit("/docs/")).status, 200);
    assert.deepEqual(
      apiCalls(b2, from).filter((call) => call === "b2_authorize_account").length,
      2,
      "authorized once, then once more after the expiry",
    );
    const authorizations = b2.requests.slice(from).filter((r) =>
      r.path.endsWith("authorize_account")
    );
    assert.ok(authorizations.every((r) => r.path === "/b2api/v4/b2_authorize_account"));
  } finally {
    await worker.dispose();
    await b2.close();
  }
});

Deno.test("worker in workerd answers 502 when B2 refuses the listing key, and says why in its log only", async () => {
  const b2 = listingB2();
  const options = listingOptions(b2, "off");
  const worker = await startWorker(b2, {
    options: { ...options, listing: { ...options.listing, key: "not-the-key" } },
  });
  try {
    assert.equal((await worker.visit("/docs/")).status, 502);
    assert.ok(worker.logs.some((line) => /B2 refused the listing key: 401/.test(line)));
  } finally {
    await worker.dispose();
    await b2.close();
  }
});

Deno.test("worker in workerd answers a listing B2 fails with 502, and its log names no key, token or bucket", async () => {
  const b2 = listingB2();
  const worker = await startWorker(b2, { options: listingOptions(b2, "off") });
  const list = "/b2api/v4/b2_list_file_names";
  // Where B2 fails, how, and what the log says of it. The first comes before any token is held.
  const faults: [string, Fault, string][] = [
    [
      "/b2api/v4/b2_authorize_account",
      { status: 503, code: "service_unavailable" },
      "B2 could not authorize the listing key now: 503 service_unavailable",
    ],
    [list, { status: 503, code: "service_unavailable" }, "503 service_unavailable"],
    [list, { status: 500, code: "internal_error" }, "500 internal_error"],
    [
      list,
      { status: 401, code: "unauthorized", message: `key ${LISTING_KEY.keyId} cannot list` },
      "cannot list it",
    ],
    [list, { status: 401, code: "bad_auth_token", times: 2 }, "refused a fresh account token"],
    [list, { status: 400, code: "bad_request", message: LISTING_KEY.applicationKey }, "400"],
  ];
  try {
    for (const [path, fault, logged] of faults) {
      for (const page of ["/docs/", "/docs/?format=json"]) {
        b2.fail(path, { ...fault });
        worker.logs.length = 0;
        // visit() checks the answer's headers and body for the key, tokens and bucket.
        assert.equal((await worker.visit(page)).status, 502, `${fault.code} ${page}`);
        await waitFor(() => worker.logs.join("").includes(logged), `the log of ${fault.code}`);
        const log = worker.logs.join("\n");
        // A B2 that is down did not refuse the key: the log does not send the reader to it.
        if (fault.status >= 500) assert.doesNotMatch(log, /refused|check B2_LISTING_KEY/, log);
        const secrets = [LISTING_KEY.keyId, LISTING_KEY.applicationKey, worker.token, BUCKET_ID];
        for (const secret of [...secrets, BUCKET, ...b2.accountTokens]) {
          assert.ok(!log.includes(secret), `the log shows ${secret}: ${log}`);
        }
      }
    }
  } finally {
    await worker.dispose();
    await b2.close();
  }
});

Deno.test("worker in workerd shows a name's bidirectional formatting characters in a listing, so it reads as it is", async () => {
  const b2 = listingB2();
  const worker = await startWorker(b2, { options: listingOptions(b2, "off") });
  try {
    // U+202E shows "invoice\u202Etxt.exe" as "invoiceexe.txt".
    b2.putFile(BUCKET, { name: "site/docs/invoice\u202Etxt.exe", body: "MZ" });
    b2.putFile(BUCKET, { name: "site/docs/\u2067isolate\u2069/x.txt", body: "x" });
    const html = await worker.visit("/docs/");
    assert.doesNotMatch(html.body, /[\u202E\u2067\u2069]/u);
    assert.ok(html.body.includes(">invoice[U+202E]txt.exe</a>"), html.body);
    assert.ok(html.body.includes('aria-label="Download invoice[U+202E]txt.exe"'), html.body);
    assert.ok(html.body.includes(">[U+2067]isolate[U+2069]/</a>"), html.body);
    const inside = await worker.visit("/docs/%E2%81%A7isolate%E2%81%A9/");
    assert.equal(inside.status, 200);
    assert.doesNotMatch(inside.body, /[\u2067\u2069]/u);
    // Scripts get the exact names.
    const json = JSON.parse((await worker.visit("/docs/?format=json")).body);
    assert.ok(json.files.some((f: { name: string }) => f.name === "invoice\u202Etxt.exe"));
  } finally {
    await worker.dispose();
    await b2.close();
  }
});

Deno.test("worker in workerd lists nothing when listings are off", async () => {
  const b2 = listingB2();
  const worker = await startWorker(b2, { options: { cacheMode: "off" } });
  try {
    assert.equal((await worker.visit("/docs/")).status, 404);
    assert.deepEqual(apiCalls(b2, 0), []);
  } finally {
    await worker.dispose();
    await b2.close();
  }
});

Deno.test("worker in workerd keeps listings in the Cache API and deletes one when a notification names its folder", async () => {
  const b2 = listingB2();
  const secret = "abcdefghijklmnopqrstuvwxyz012345";
  const worker = await startWorker(b2, {
    options: listingOptions(b2, "cache-api"),
    extraBindings: { B2_EVENT_NOTIFICATION_SECRET: secret },
  });
  try {
    const from = b2.requests.length;
    const first = await worker.visit("/docs/");
    assert.equal(first.headers["cache-control"], "public, max-age=60");
    const again = await worker.visit("/docs/");
    assert.equal(again.body, first.body);
    assert.deepEqual(apiCalls(b2, from).filter((c) => c === "b2_list_file_names").length, 1);

    b2.putFile(BUCKET, { name: "site/docs/new.txt", body: "new" });
    const body = JSON.stringify({
      events: [{
        bucketName: BUCKET,
        eventId: "e-1",
        eventTimestamp: Date.now(),
        eventType: "b2:ObjectCreated:Upload",
        objectName: "site/docs/new.txt",
      }],
    });
    const answer = await worker.visit("/.well-known/b2-private-cdn/events", {
      method: "POST",
      headers: { "X-Bz-Event-Notification-Signature": await signEventBody(secret, body) },
      body,
    });
    assert.equal(answer.status, 200);
    assert.ok(tableLinks((await worker.visit("/docs/")).body).includes("/docs/new.txt"));
  } finally {
    await worker.dispose();
    await b2.close();
  }
});

Deno.test("worker in workerd, Workers Cache mode: listings carry their lifetime and tags, on one URL a page", async (t) => {
  const b2 = listingB2();
  const worker = await startWorker(b2, { options: listingOptions(b2, "workers-cache") });
  const tags = [await listingTag("site/docs/"), await objectTag("site/docs/index.html")].join(",");
  try {
    await t.step("a listing is kept for WORKER_LISTING_TTL, tagged by its folder", async () => {
      for (const path of ["/docs/", "/docs/?format=json"]) {
        const answer = await worker.visit(path);
        assert.equal(answer.status, 200, path);
        assert.equal(answer.headers["cloudflare-cdn-cache-control"], "public, max-age=60");
        assert.equal(answer.headers["cache-tag"], tags);
      }
    });
    await t.step(
      "a listing's query in another shape is sent to the one the page links",
      async () => {
        const cases: [string, string][] = [
          ["/docs/?format=json&from=b.txt", "/docs/?from=b.txt&format=json"],
          ["/docs/?from=&format=json", "/docs/?format=json"],
          ["/docs/?from=a+b", "/docs/?from=a%20b"],
          ["/docs/?utm_source=x", "/docs/"],
          ["/docs/?format=xml", "/docs/"],
          ["/indexed/?format=json", "/indexed/"],
        ];
        for (const [path, location] of cases) {
          const answer = await worker.visit(path, { redirect: "manual" });
          assert.deepEqual([answer.status, answer.headers["location"]], [301, location], path);
        }
      },
    );
    await t.step("a later page is its own URL", async () => {
      const answer = await worker.visit("/docs/?from=b.txt&format=json");
      const listing = JSON.parse(answer.body);
      assert.equal(listing.files[0].name, "b.txt");
    });
  } finally {
    await worker.dispose();
    await b2.close();
  }
});

Deno.test("worker in workerd: a kept listing is never answered under another spelling, in every mode", async (t) => {
  const b2 = listingB2();
  try {
    for (const cacheMode of ["cache-api", "workers-cache", "off"] as const) {
      await t.step(cacheMode, async () => {
        const worker = await startWorker(b2, { options: listingOptions(b2, cacheMode) });
        try {
          // Listed (and kept, where the mode keeps listings) under their one spelling first.
          for (const page of ["/docs/", "/docs/?format=json", "/docs/?from=b.txt&format=json"]) {
            assert.equal((await worker.raw(page)).status, 200, page);
          }
          worker.downloads();
          const calls = b2.requests.length;
          const spellings: [string, string][] = [
            ["/%64ocs/", "/docs/"],
            ["/docs/?", "/docs/"],
            ["/docs/?utm_source=x", "/docs/"],
            ["/%64ocs/?format=json", "/docs/?format=json"],
            ["/docs/?format=json&", "/docs/?format=json"],
            ["/docs/?&format=json", "/docs/?format=json"],
            ["/docs/?format=json&from=b.txt", "/docs/?from=b.txt&format=json"],
            ["/docs/?from=b%2Etxt&format=json", "/docs/?from=b.txt&format=json"],
          ];
          for (const [spelling, canonical] of spellings) {
            const answer = await worker.raw(spelling);
            assert.deepEqual(
              [answer.status, answer.headers["location"]],
              [301, canonical],
              spelling,
            );
          }
          assert.deepEqual(b2.requests.slice(calls).map((r) => r.path), []);
        } finally {
          await worker.dispose();
        }
      });
    }
  } finally {
    await b2.close();
  }
});

Deno.test("worker in workerd: a listing's query on a folder with its index file is a 301 to the bare folder, in every mode", async (t) => {
  const b2 = listingB2();
  try {
    for (const cacheMode of ["cache-api", "workers-cache", "off"] as const) {
      await t.step(cacheMode, async () => {
        const worker = await startWorker(b2, { options: listingOptions(b2, cacheMode) });
        try {
          // Twice: the Cache API's copy of the index is no other answer.
          for (const _ of [1, 2]) {
            for (const spelling of ["/indexed/?format=json", "/indexed/?from=x.txt"]) {
              const answer = await worker.raw(spelling);
              assert.deepEqual(
                [answer.status, answer.headers["location"], answer.body],
                [301, "/indexed/", ""],
                spelling,
              );
            }
          }
          const index = await worker.raw("/indexed/");
          assert.deepEqual([index.status, index.body], [200, "<h1>indexed</h1>"]);
        } finally {
          await worker.dispose();
        }
      });
    }
  } finally {
    await b2.close();
  }
});

Deno.test("worker in workerd: WORKER_ACTIVE_CONTENT leaves a listing the worker's own page, in every mode", async (t) => {
  const b2 = listingB2();
  try {
    for (const cacheMode of ["cache-api", "workers-cache"] as const) {
      for (const choice of ["sandbox", "download"] as const) {
        await t.step(`${cacheMode}, ${choice}`, async () => {
          const worker = await startWorker(b2, {
            options: { ...listingOptions(b2, cacheMode), activeContent: choice },
          });
          try {
            // Twice: the Cache API's copy is answered the same way.
            for (const _ of [1, 2]) {
              const listing = await worker.visit("/docs/");
              assert.equal(listing.status, 200);
              // Its own strict policy, not replaced by the sandbox, and a page, not a download.
              assert.match(
                listing.headers["content-security-policy"]!,
                /^default-src 'none'; style-src 'sha256-.*; frame-ancestors 'none'$/,
              );
              assert.equal(listing.headers["content-disposition"], undefined);
              // An HTML object beside it is still sandboxed or attached.
              const page = await worker.visit("/indexed/");
              assert.deepEqual([
                page.status,
                page.headers["content-security-policy"],
                page.headers["content-disposition"],
              ], [
                200,
                choice === "sandbox" ? "sandbox" : undefined,
                choice === "download" ? "attachment" : undefined,
              ]);
            }
          } finally {
            await worker.dispose();
          }
        });
      }
    }
  } finally {
    await b2.close();
  }
});

Deno.test("listedFolder() lists only public folder paths under the prefix, none hidden", async (t) => {
  const listing = { keyId: "k", key: "k", apiUrl: "https://api", ttl: 60, pageSize: 1000 };
  const plain = { ...PLAIN, listing };
  const at = (path: string, link: { access: "public" | "refused" } = { access: "public" }) =>
    listedFolder({ method: "GET", url: new URL(`https://cdn.example.com${path}`), link }, plain);
  const cases: [string, string | undefined][] = [
    ["/", "site/"],
    ["/docs/", "site/docs/"],
    ["/caf%C3%A9/", "site/café/"],
    ["/docs", undefined],
    ["/.git/", undefined],
    ["/a/.hidden/", undefined],
    ["/a//", undefined],
    ["/a%2Fb/", undefined],
    ["//", undefined],
  ];
  for (const [path, folder] of cases) {
    await t.step(path, () => assert.equal(at(path), folder));
  }
  await t.step("a refused (signed) path", () => {
    assert.equal(at("/docs/", { access: "refused" }), undefined);
  });
  await t.step("off", () => {
    const url = new URL("https://cdn.example.com/docs/");
    assert.equal(
      listedFolder({ method: "GET", url, link: { access: "public" } }, PLAIN),
      undefined,
    );
  });
  await t.step("b2 style: the full name, under the prefix, in this bucket", () => {
    const b2 = { ...B2_STYLE, listing };
    const url = (path: string) => new URL(`https://cdn.example.com${path}`);
    const link = { access: "public" } as const;
    assert.equal(
      listedFolder({ method: "GET", url: url("/file/vault/site/a/"), link }, b2),
      "site/a/",
    );
    assert.equal(
      listedFolder({ method: "GET", url: url("/file/vault/other/"), link }, b2),
      undefined,
    );
    assert.equal(
      listedFolder({ method: "GET", url: url("/file/else/site/"), link }, b2),
      undefined,
    );
  });
});

Deno.test("listingQuery() takes from and format=json only, and writes the one query of a page", async (t) => {
  const query = (search: string) => listingQuery(new URL(`https://cdn.example.com/d/${search}`));
  await t.step("the shapes a page links", () => {
    assert.deepEqual(query(""), { from: "", json: false, canonical: "" });
    assert.deepEqual(query("?format=json"), { from: "", json: true, canonical: "?format=json" });
    assert.deepEqual(query("?from=a%20b(1)"), {
      from: "a b(1)",
      json: false,
      canonical: "?from=a%20b%281%29",
    });
  });
  await t.step("anything else", () => {
    for (const search of ["?x=1", "?format=xml", "?from=a&from=b", "?format=json&x"]) {
      assert.equal(query(search), undefined, search);
    }
  });
});

Deno.test("foldersAbove() names the folder of a name and each above it, up to the prefix", () => {
  assert.deepEqual(foldersAbove("site/a/b/c.txt", "site/"), ["site/a/b/", "site/a/", "site/"]);
  assert.deepEqual(foldersAbove("site/c.txt", "site/"), ["site/"]);
  assert.deepEqual(foldersAbove("c.txt", ""), [""]);
});

Deno.test("formatSize() writes bytes for people", () => {
  assert.deepEqual(
    [0, 1023, 1024, 1536, 10 * 1024 ** 2, 5 * 1024 ** 4].map(formatSize),
    ["0 B", "1023 B", "1.0 KiB", "1.5 KiB", "10.0 MiB", "5.0 TiB"],
  );
});

Deno.test("worker in workerd lists in the b2 URL style under /file/<bucket>/, only under the prefix", async () => {
  const b2 = listingB2();
  const worker = await startWorker(b2, {
    options: { ...listingOptions(b2, "off"), urlStyle: "b2", signing: undefined },
  });
  try {
    const answer = await worker.raw(`/file/${BUCKET}/site/docs/?format=json`);
    assert.equal(answer.status, 200);
    const listing = JSON.parse(answer.body);
    assert.equal(listing.folder, `/file/${BUCKET}/site/docs/`);
    assert.deepEqual(
      listing.folders.map((f: { path: string }) => f.path),
      ["empty/", "members/", "sub/"].map((name) => `/file/${BUCKET}/site/docs/${name}`),
    );
    assert.equal((await worker.raw(`/file/${BUCKET}/`)).status, 404, "above the prefix");
  } finally {
    await worker.dispose();
    await b2.close();
  }
});
