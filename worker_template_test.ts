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
import { loadWorkerModule, startLocalWorker, type WorkerOptions, workerUpload } from "./main.ts";
import { type FakeB2, type FakeFile, patternByte, startFakeB2 } from "./testing/fake_b2.ts";
import {
  b2Url,
  corsHeaders,
  formatRange,
  ifRangeMatches,
  notModified,
  objectHeaders,
  objectName,
  parseRange,
  publicHeaders,
  type RangeSpec,
  readConfig,
  resolveRange,
  sliceBody,
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
    ["file id", { "x-bz-content-sha1": "none", "x-bz-file-id": "4_z1" }, '"4_z1"'],
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
};

function startB2(): FakeB2 {
  return startFakeB2({
    buckets: [{ id: "bucket-1", name: BUCKET, files: structuredClone(FILES) }],
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
  const secrets = [token, BUCKET, new URL(b2.url).host];
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
      assert.ok(!name.startsWith("x-bz") && !name.startsWith("x-b2cdn"), `${where} has ${name}`);
    }
    for (const secret of secrets) {
      assert.ok(!JSON.stringify(headers).includes(secret), `${where} shows ${secret}`);
      assert.ok(!body.includes(secret), `${where} body shows ${secret}`);
    }
    worker.checked++;
    return { status, headers, body };
  }

  return worker;
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

    await t.step("1 methods: HEAD is asked of B2 as HEAD and answered without a body", async () => {
      assert.deepEqual(await worker.visit("/pattern.bin", { method: "HEAD" }), {
        status: 200,
        headers: objectAnswerHeaders({
          "content-length": "1000",
          "content-type": "application/octet-stream",
          etag: '"4_z16_f1000"',
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
            etag: '"4_z16_f1000"',
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
            etag: '"4_z13_f1000"',
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
        headers: { Range: "bytes=0-9", "If-Range": '"4_z16_f1000"' },
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

    await t.step("6 streaming: 100 MiB arrive whole and uncached", async () => {
      const response = await worker.miniflare.dispatchFetch(`${SITE}/video.bin`);
      assert.equal(response.status, 200);
      assert.equal(response.headers.get("content-length"), String(VIDEO_SIZE));
      assert.deepEqual(await readPattern(response.body), { received: VIDEO_SIZE, mismatches: 0 });
      // Too big to keep: a later range still goes to B2.
      const seek = await worker.visit("/video.bin", { headers: { Range: "bytes=100-199" } });
      assert.deepEqual([seek.status, seek.body], [206, patternText(100, 199)]);
      assert.deepEqual(worker.downloads().map((r) => r.headers.get("range")), [
        null,
        "bytes=100-199",
      ]);
    });

    await t.step("6 streaming: a sliced stream outlives the B2 timeout", async () => {
      // A range from 0 that stops short of the end is cut by the worker's own TransformStream,
      // which an abort of the B2 fetch would break. The object is too big to be teed into the
      // cache, so B2 sends at the reader's pace, and the reader pauses past the 300 ms timeout.
      const response = await worker.miniflare.dispatchFetch(`${SITE}/video.bin`, {
        headers: { Range: `bytes=0-${VIDEO_SIZE - 2}` },
      });
      assert.deepEqual(
        [response.status, response.headers.get("content-range")],
        [206, `bytes 0-${VIDEO_SIZE - 2}/${VIDEO_SIZE}`],
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
        }),
        body: "hello world",
      });
      assert.deepEqual(worker.downloads().map((r) => r.path), [`/file/${BUCKET}/site/hello.txt`]);
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
