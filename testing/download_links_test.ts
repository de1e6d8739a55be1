/**
 * Download links (issue 24, item 3): `?download` and `?download=<name>` on a public path answer
 * the object as an attachment with a safe RFC 6266 file name; `?download` is its own entry of
 * Workers Cache, and a named link is answered from that entry, never kept under its own name; any
 * other query is still a `301` to the bare path. The worker runs in workerd behind the
 * Workers Cache stand-in, as deployed by default, and with the Cache API.
 *
 * @module
 */

import assert from "node:assert/strict";
import { loadWorkerModule, type WorkerOptions, workerUpload } from "../main.ts";
import { startFakeB2 } from "../local/fake_b2.ts";
import { startWorkersCache } from "../local/workers_cache.ts";
import { contentDisposition, downloadQuery } from "../worker_template.ts";

Deno.test("downloadQuery() takes one download parameter with a safe name, in one spelling", async (t) => {
  const table: [string, { name: string; canonical: string } | undefined][] = [
    ["?download", { name: "", canonical: "?download" }],
    ["?download=", { name: "", canonical: "?download" }],
    ["?download=report.pdf", { name: "report.pdf", canonical: "?download=report.pdf" }],
    ["?download=my+report.pdf", { name: "my report.pdf", canonical: "?download=my+report.pdf" }],
    ["?download=my%20report.pdf", { name: "my report.pdf", canonical: "?download=my+report.pdf" }],
    [
      '?download="quoted" caf\u00e9.txt',
      { name: '"quoted" café.txt', canonical: "?download=%22quoted%22+caf%C3%A9.txt" },
    ],
    [
      "?download=100%25%3B+a'b.txt",
      { name: "100%; a'b.txt", canonical: "?download=100%25%3B+a%27b.txt" },
    ],
    // Anything else is no download link: a 301 to the bare path.
    ["", undefined],
    ["?x=1", undefined],
    ["?Download", undefined],
    ["?download&x=1", undefined],
    ["?download=a&download=b", undefined],
    ["?download=a%0D%0ASet-Cookie:%20x=1", undefined],
    ["?download=a%00b", undefined],
    ["?download=..%2F..%2Fsecret.txt", undefined],
    ["?download=a%5Cb", undefined],
    // U+202E would show "photo\u202Egnp.exe" as "photoexe.png".
    ["?download=photo%E2%80%AEgnp.exe", undefined],
    ["?download=+++", undefined],
    [`?download=${"a".repeat(256)}`, undefined],
  ];
  for (const [query, expected] of table) {
    await t.step(query || "(none)", () => {
      assert.deepEqual(downloadQuery(new URL(`https://cdn.example.com/a.txt${query}`)), expected);
    });
  }
});

Deno.test("contentDisposition() writes one header line with an ASCII fallback and the exact name", async (t) => {
  const table: [string, string][] = [
    ["report.pdf", `attachment; filename="report.pdf"; filename*=UTF-8''report.pdf`],
    ["my report.pdf", `attachment; filename="my report.pdf"; filename*=UTF-8''my%20report.pdf`],
    [
      '"quoted" café.txt',
      `attachment; filename="_quoted_ caf_.txt"; filename*=UTF-8''%22quoted%22%20caf%C3%A9.txt`,
    ],
    [
      "100% a\\b (1)*.txt",
      `attachment; filename="100_ a_b (1)*.txt"; filename*=UTF-8''100%25%20a%5Cb%20%281%29%2A.txt`,
    ],
    [
      "日本語.txt",
      `attachment; filename="___.txt"; filename*=UTF-8''%E6%97%A5%E6%9C%AC%E8%AA%9E.txt`,
    ],
    // Never reached through downloadQuery(), and still one line.
    [
      "a\r\nSet-Cookie: x=1",
      `attachment; filename="a__Set-Cookie: x=1"; filename*=UTF-8''a%0D%0ASet-Cookie%3A%20x%3D1`,
    ],
  ];
  for (const [name, header] of table) {
    await t.step(JSON.stringify(name), () => {
      assert.equal(contentDisposition(name), header);
      assert.doesNotThrow(() => new Headers({ "Content-Disposition": contentDisposition(name) }));
    });
  }
});

const BUCKET = "vault-dl3b";
const FILES = [
  { name: "site/hello.txt", body: "hello world", contentType: "text/plain" },
  { name: "site/with space.txt", body: "space", contentType: "text/plain" },
  { name: "site/café/menü.txt", body: "unicode", contentType: "text/plain" },
];
const HELLO = `attachment; filename="hello.txt"; filename*=UTF-8''hello.txt`;

/** The worker as refresh deploys it, behind the Workers Cache stand-in, in front of a fake B2. */
async function startSite(options: Partial<WorkerOptions> = {}) {
  const b2 = startFakeB2({ buckets: [{ id: "bucket-dl", name: BUCKET, files: FILES }] });
  const cache = await startWorkersCache();
  const upload = workerUpload(await loadWorkerModule(), {
    downloadToken: b2.issueDownloadToken(BUCKET, "site/", 3600),
    downloadUrl: b2.url,
    bucketName: BUCKET,
    prefix: "site/",
    issuedAt: Date.now(),
    expiresAt: Date.now() + 3600_000,
    options: {
      urlStyle: "plain",
      indexFile: "index.html",
      cacheTtl: 86_400,
      cacheControl: "",
      corsOrigins: "",
      cacheMode: "workers-cache",
      ...options,
    },
  });
  await cache.deploy(upload);
  let seen = 0;
  return {
    async visit(path: string, init: RequestInit = {}) {
      const response = await fetch(`${cache.url}${path}`, { ...init, redirect: "manual" });
      const body = await response.text();
      const { headers, status } = response;
      return {
        status,
        disposition: headers.get("content-disposition"),
        location: headers.get("location"),
        cache: headers.get("cf-cache-status"),
        body,
        headers,
      };
    },
    /** The Workers Cache stand-in's counters. */
    stats: () => cache.stats,
    /** Downloads B2 was asked for since the last call. */
    downloads() {
      const fresh = b2.requests.slice(seen).filter((r) => r.path.startsWith("/file/"));
      seen = b2.requests.length;
      return fresh.map((r) => `${r.method} ${r.path}`);
    },
    async close() {
      await cache.close();
      await b2.close();
    },
  };
}

Deno.test("worker in workerd: download links name the attachment; ?download is kept by Workers Cache, named links come from it", async (t) => {
  const site = await startSite();
  try {
    await t.step("?download names the object, and is an entry of its own", async () => {
      const bare = await site.visit("/hello.txt");
      const first = await site.visit("/hello.txt?download");
      const again = await site.visit("/hello.txt?download");
      const bareAgain = await site.visit("/hello.txt");
      assert.deepEqual(
        [bare, first, again, bareAgain].map((a) => [a.status, a.cache, a.disposition, a.body]),
        [
          [200, "MISS", null, "hello world"],
          [200, "MISS", HELLO, "hello world"],
          [200, "HIT", HELLO, "hello world"],
          [200, "HIT", null, "hello world"],
        ],
      );
      assert.deepEqual(site.downloads(), [
        `GET /file/${BUCKET}/site/hello.txt`,
        `GET /file/${BUCKET}/site/hello.txt`,
      ]);
    });

    await t.step("a name with spaces, quotes and non-ASCII characters", async () => {
      const canonical = "/with%20space.txt?download=my+%22quoted%22+caf%C3%A9.txt";
      const answer = await site.visit(canonical);
      assert.deepEqual([answer.status, answer.body, answer.disposition], [
        200,
        "space",
        `attachment; filename="my _quoted_ caf_.txt"; ` +
        `filename*=UTF-8''my%20%22quoted%22%20caf%C3%A9.txt`,
      ]);
      // Another spelling of the same link goes to this one, without asking B2.
      site.downloads();
      const spelled = await site.visit(
        "/with%20space.txt?download=my%20%22quoted%22%20caf%C3%A9.txt",
      );
      assert.deepEqual([spelled.status, spelled.location], [301, canonical]);
      assert.deepEqual(site.downloads(), []);
    });

    await t.step(
      "named links share the object's ?download entry: an invented name costs B2 nothing",
      async () => {
        site.downloads();
        await site.visit("/hello.txt?download");
        const hitsBefore = site.stats().loopback.hits;
        const names = ["a.txt", "b.txt", "c.txt"];
        const answers = [];
        for (const name of names) answers.push(await site.visit(`/hello.txt?download=${name}`));
        const again = await site.visit("/hello.txt?download=a.txt");
        assert.deepEqual(
          [...answers, again].map((a) => [a.status, a.body, a.cache, a.disposition]),
          [...names, "a.txt"].map((name) => [
            200,
            "hello world",
            "BYPASS",
            `attachment; filename="${name}"; filename*=UTF-8''${name}`,
          ]),
          "each named answer is made anew (never kept), from the shared entry",
        );
        assert.deepEqual(site.downloads(), [], "B2 is asked for no named link");
        assert.equal(site.stats().loopback.hits - hitsBefore, 4, "each from the ?download entry");
        const range = await site.visit("/hello.txt?download=a.txt", {
          headers: { Range: "bytes=6-10" },
        });
        assert.deepEqual([range.status, range.body, range.disposition], [
          206,
          "world",
          `attachment; filename="a.txt"; filename*=UTF-8''a.txt`,
        ]);
        assert.deepEqual(site.downloads(), []);
      },
    );

    await t.step("a bare ?download takes the last part of the name", async () => {
      const answer = await site.visit("/caf%C3%A9/men%C3%BC.txt?download");
      assert.equal(
        answer.disposition,
        `attachment; filename="men_.txt"; filename*=UTF-8''men%C3%BC.txt`,
      );
    });

    await t.step("HEAD and ranges carry the name too", async () => {
      const head = await site.visit("/hello.txt?download", { method: "HEAD" });
      const range = await site.visit("/hello.txt?download", { headers: { Range: "bytes=0-4" } });
      assert.deepEqual(
        [head.status, head.disposition, range.status, range.body, range.disposition],
        [200, HELLO, 206, "hello", HELLO],
      );
    });

    await t.step("a hostile name, or any other query, is a 301 to the bare path", async () => {
      site.downloads();
      for (
        const query of [
          "?download=a%0D%0ASet-Cookie:%20x=1",
          "?download=..%2F..%2Fsecret.txt",
          "?download=photo%E2%80%AEgnp.exe",
          "?download=a&download=b",
          "?download&x=1",
          "?x=1",
        ]
      ) {
        const answer = await site.visit(`/hello.txt${query}`);
        assert.deepEqual(
          [answer.status, answer.location, answer.disposition, answer.headers.get("set-cookie")],
          [301, "/hello.txt", null, null],
          query,
        );
      }
      assert.deepEqual(site.downloads(), []);
    });

    await t.step("a missing object is a 404, with no name", async () => {
      const answer = await site.visit("/nothing.txt?download");
      assert.deepEqual([answer.status, answer.disposition], [404, null]);
    });
  } finally {
    await site.close();
  }
});

Deno.test("worker in workerd: with the Cache API a download link is answered from the object's one copy", async () => {
  const site = await startSite({ cacheMode: "cache-api" });
  try {
    const bare = await site.visit("/hello.txt");
    // The copy is kept after the answer: wait until a repeat asks B2 nothing.
    for (let i = 0; i < 50 && site.downloads().length > 0; i++) await site.visit("/hello.txt");
    // The Cache API keeps the object under its path alone; the name is added to each answer.
    const named = await site.visit("/hello.txt?download");
    assert.deepEqual([bare.disposition, named.status, named.disposition, named.body], [
      null,
      200,
      HELLO,
      "hello world",
    ]);
    assert.deepEqual(site.downloads(), []);
  } finally {
    await site.close();
  }
});
