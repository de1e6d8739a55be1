import assert from "node:assert/strict";
import {
  CLOUDFLARE_ERROR_CODES as CODES,
  FAKE_ACCOUNT_ID,
  FAKE_ZONE_ID,
  type FakeCloudflare,
  type FakeCloudflareOptions,
  startFakeCloudflare,
  type WorkerBinding,
} from "./fake_cloudflare.ts";

const ACCOUNT = `/accounts/${FAKE_ACCOUNT_ID}`;
const SCRIPT = `${ACCOUNT}/workers/scripts/cdn`;
const ROUTES = `/zones/${FAKE_ZONE_ID}/workers/routes`;
const DOMAINS = `${ACCOUNT}/workers/domains`;
const TOKEN = { authorization: "Bearer fake-cf-token" };
const MODULE_SOURCE = "export default { fetch() { return new Response('hi'); } };";
const BINDINGS: WorkerBinding[] = [
  { type: "plain_text", name: "BUCKET", text: "photos" },
  { type: "secret_text", name: "B2_TOKEN", text: "s3cret" },
];

interface Answer {
  status: number;
  headers: Headers;
  // deno-lint-ignore no-explicit-any
  json: any;
}

async function withFake(
  options: FakeCloudflareOptions,
  test: (cf: FakeCloudflare) => Promise<void>,
): Promise<void> {
  const cf = startFakeCloudflare(options);
  try {
    await test(cf);
  } finally {
    await cf.close();
  }
}

async function call(
  cf: FakeCloudflare,
  method: string,
  path: string,
  options: {
    body?: BodyInit;
    json?: unknown;
    headers?: Record<string, string>;
  } = {},
): Promise<Answer> {
  const headers = new Headers(options.headers ?? TOKEN);
  let body = options.body;
  if (options.json !== undefined) {
    headers.set("content-type", "application/json");
    body = JSON.stringify(options.json);
  }
  const response = await fetch(cf.url + path, { method, headers, body });
  return {
    status: response.status,
    headers: response.headers,
    json: await response.json(),
  };
}

/** A module-worker upload; `metadata` overrides fields of a valid default, `parts` replaces the module. */
function workerForm(
  options: {
    metadata?: Record<string, unknown> | string;
    parts?: [string, Blob][];
  } = {},
): FormData {
  const form = new FormData();
  const metadata = typeof options.metadata === "string" ? options.metadata : JSON.stringify({
    main_module: "worker.js",
    compatibility_date: "2025-01-01",
    bindings: BINDINGS,
    ...options.metadata,
  });
  form.append("metadata", new Blob([metadata], { type: "application/json" }));
  const parts = options.parts ??
    [[
      "worker.js",
      new Blob([MODULE_SOURCE], { type: "application/javascript+module" }),
    ]];
  for (const [name, blob] of parts) form.append(name, blob, name);
  return form;
}

function upload(
  cf: FakeCloudflare,
  form: FormData,
  path = SCRIPT,
): Promise<Answer> {
  return call(cf, "PUT", path, { body: form });
}

function assertRefused(answer: Answer, status: number, code: number): void {
  assert.equal(answer.status, status, JSON.stringify(answer.json));
  assert.equal(answer.json.success, false);
  assert.equal(answer.json.errors[0]?.code, code, JSON.stringify(answer.json));
}

Deno.test("FakeCloudflare refuses missing, malformed and wrong credentials", async (t) => {
  await withFake({}, async (cf) => {
    const cases: [string, Record<string, string>, number, number][] = [
      ["no credentials", {}, 400, CODES.missingCredentials],
      [
        "only X-Auth-Email",
        { "x-auth-email": "admin@example.com" },
        400,
        CODES.missingCredentials,
      ],
      [
        "malformed Authorization",
        { authorization: "Bearer a b" },
        400,
        CODES.invalidHeaders,
      ],
      [
        "unknown token",
        { authorization: "Bearer other-token" },
        403,
        CODES.authentication,
      ],
      [
        "wrong global key",
        { "x-auth-email": "admin@example.com", "x-auth-key": "nope" },
        403,
        CODES.unknownGlobalKey,
      ],
    ];
    for (const [name, headers, status, code] of cases) {
      await t.step(name, async () => {
        assertRefused(await call(cf, "GET", ROUTES, { headers }), status, code);
      });
    }
    await t.step("the legacy key pair is accepted", async () => {
      const headers = {
        "x-auth-email": "admin@example.com",
        "x-auth-key": "fake-global-key",
      };
      const answer = await call(cf, "GET", ROUTES, { headers });
      assert.deepEqual(answer.json, {
        success: true,
        errors: [],
        messages: [],
        result: [],
      });
    });
  });
});

Deno.test("FakeCloudflare refuses a token that lacks the endpoint's permission", async () => {
  await withFake({ tokenPermissions: ["workers_scripts:edit"] }, async (cf) => {
    assertRefused(await call(cf, "GET", ROUTES), 403, CODES.authentication);
    assert.equal((await upload(cf, workerForm())).status, 200);
  });
  await withFake({ tokenPermissions: ["workers_routes:edit"] }, async (cf) => {
    assertRefused(await upload(cf, workerForm()), 403, CODES.authentication);
    assert.equal(cf.scripts.size, 0);
  });
});

Deno.test("FakeCloudflare refuses an account or zone that is not the caller's", async () => {
  await withFake({}, async (cf) => {
    const otherAccount = "/accounts/someone-else/workers/scripts/cdn";
    assertRefused(
      await upload(cf, workerForm(), otherAccount),
      403,
      CODES.unauthorizedResource,
    );
    const otherZone = "/zones/other-zone/workers/routes";
    assertRefused(
      await call(cf, "GET", otherZone),
      403,
      CODES.unauthorizedResource,
    );
  });
});

Deno.test("FakeCloudflare answers unknown paths 404 and wrong methods 405", async () => {
  await withFake({}, async (cf) => {
    assertRefused(
      await call(cf, "GET", `${ACCOUNT}/workers/nothing`),
      404,
      CODES.noRoute,
    );
    assertRefused(
      await call(cf, "DELETE", DOMAINS),
      405,
      CODES.methodNotAllowed,
    );
  });
});

Deno.test("upload stores a module worker and answers like Cloudflare", async () => {
  await withFake({}, async (cf) => {
    const binary = new Uint8Array(256).map((_, i) => i);
    const form = workerForm({
      parts: [
        [
          "worker.js",
          new Blob([MODULE_SOURCE], { type: "application/javascript+module" }),
        ],
        ["table.bin", new Blob([binary], { type: "application/octet-stream" })],
      ],
    });
    const first = await upload(cf, form);
    assert.equal(first.status, 200, JSON.stringify(first.json));
    assert.equal(first.json.success, true);
    assert.equal(first.json.result.id, "cdn");
    assert.match(first.json.result.etag, /^[0-9a-f]{64}$/);
    assert.equal(first.json.result.compatibility_date, "2025-01-01");
    assert.equal(
      first.json.result.modified_on,
      cf.scripts.get("cdn")?.modifiedOn,
    );

    await upload(cf, workerForm());
    const stored = cf.scripts.get("cdn");
    assert.deepEqual(stored && { ...stored, modifiedOn: "", createdOn: "" }, {
      account: FAKE_ACCOUNT_ID,
      metadata: {
        main_module: "worker.js",
        compatibility_date: "2025-01-01",
        bindings: BINDINGS,
      },
      module: MODULE_SOURCE,
      moduleContentType: "application/javascript+module",
      uploads: 2,
      modifiedOn: "",
      createdOn: "",
      subdomain: { enabled: true, previews_enabled: true },
    });
    const recorded = cf.requests[0];
    assert.equal(recorded?.method, "PUT");
    assert.equal(recorded?.path, SCRIPT);
    assert.match(recorded?.body ?? "", /name="metadata"/);
  });
});

/** Uploads Cloudflare refuses; the code is 10021 unless given. */
const REFUSED_UPLOADS: {
  name: string;
  body: BodyInit;
  path?: string;
  code?: number;
}[] = [
  { name: "a body that is not multipart", body: "export default {}" },
  { name: "no metadata part", body: formWithout("metadata") },
  {
    name: "metadata that is not JSON",
    body: workerForm({ metadata: "{oops" }),
  },
  { name: "no main_module", body: withMetadata({ main_module: undefined }) },
  {
    name: "main_module naming no part",
    body: withMetadata({ main_module: "x.js" }),
  },
  {
    name: "a main module that is not a module",
    body: workerForm({
      parts: [["worker.js", new Blob([MODULE_SOURCE], { type: "text/plain" })]],
    }),
  },
  {
    name: "a malformed compatibility_date",
    body: withMetadata({ compatibility_date: "2025-13-01" }),
  },
  {
    name: "a future compatibility_date",
    body: withMetadata({ compatibility_date: "2999-01-01" }),
  },
  {
    name: "bindings that are not an array",
    body: withMetadata({ bindings: {} }),
  },
  {
    name: "an unsupported binding type",
    body: withBinding({ type: "kv_namespace", name: "KV", namespace_id: "x" }),
  },
  {
    name: "a bad binding name",
    body: withBinding({ type: "plain_text", name: "1X", text: "" }),
  },
  {
    name: "a binding without text",
    body: withBinding({ type: "secret_text", name: "X" }),
  },
  {
    name: "a binding name used twice",
    body: withMetadata({ bindings: [BINDINGS[0], BINDINGS[0]] }),
  },
  {
    name: "an invalid worker name",
    body: workerForm(),
    path: `${ACCOUNT}/workers/scripts/My_Worker`,
    code: CODES.invalidScriptName,
  },
];

function withMetadata(fields: Record<string, unknown>): FormData {
  return workerForm({ metadata: fields });
}

function withBinding(binding: Record<string, unknown>): FormData {
  return withMetadata({ bindings: [binding] });
}

function formWithout(name: string): FormData {
  const form = workerForm();
  form.delete(name);
  return form;
}

Deno.test("a refused upload leaves the previous worker as it was", async (t) => {
  await withFake({}, async (cf) => {
    assert.equal((await upload(cf, workerForm())).status, 200);
    const before = structuredClone(cf.scripts.get("cdn"));
    for (
      const { name, body, path = SCRIPT, code = CODES.invalidScript } of REFUSED_UPLOADS
    ) {
      await t.step(name, async () => {
        assertRefused(await call(cf, "PUT", path, { body }), 400, code);
        assert.deepEqual(cf.scripts.get("cdn"), before);
        assert.equal(cf.scripts.size, 1);
      });
    }
  });
});

Deno.test("upload with keep_bindings keeps secrets it does not mention", async () => {
  await withFake({}, async (cf) => {
    await upload(cf, workerForm());
    const bindings = [{ type: "plain_text", name: "BUCKET", text: "videos" }];
    await upload(
      cf,
      workerForm({ metadata: { bindings, keep_bindings: ["secret_text"] } }),
    );
    assert.deepEqual(cf.scripts.get("cdn")?.metadata.bindings, [
      ...bindings,
      BINDINGS[1],
    ]);
    await upload(cf, workerForm({ metadata: { bindings } }));
    assert.deepEqual(cf.scripts.get("cdn")?.metadata.bindings, bindings);
  });
});

Deno.test("settings answers bindings with secret_text values hidden", async () => {
  await withFake({}, async (cf) => {
    assertRefused(
      await call(cf, "GET", `${SCRIPT}/settings`),
      404,
      CODES.workerNotFound,
    );
    await upload(
      cf,
      workerForm({ metadata: { compatibility_flags: ["nodejs_compat"] } }),
    );
    const { json } = await call(cf, "GET", `${SCRIPT}/settings`);
    assert.deepEqual(json.result.bindings, [
      { type: "plain_text", name: "BUCKET", text: "photos" },
      { type: "secret_text", name: "B2_TOKEN" },
    ]);
    assert.equal(json.result.compatibility_date, "2025-01-01");
    assert.deepEqual(json.result.compatibility_flags, ["nodejs_compat"]);
  });
});

Deno.test("secrets updates a secret binding of a stored worker", async () => {
  await withFake({}, async (cf) => {
    const secret = { name: "B2_TOKEN", text: "rotated", type: "secret_text" };
    assertRefused(
      await call(cf, "PUT", `${SCRIPT}/secrets`, { json: secret }),
      404,
      CODES.workerNotFound,
    );
    await upload(cf, workerForm());
    const answer = await call(cf, "PUT", `${SCRIPT}/secrets`, { json: secret });
    assert.deepEqual(answer.json.result, {
      name: "B2_TOKEN",
      type: "secret_text",
    });
    const stored = cf.scripts.get("cdn");
    assert.deepEqual(stored?.metadata.bindings, [BINDINGS[0], { ...secret }]);
    assert.equal(stored?.uploads, 1);
    const clash = { ...secret, name: "BUCKET" };
    assertRefused(
      await call(cf, "PUT", `${SCRIPT}/secrets`, { json: clash }),
      400,
      CODES.bindingNameInUse,
    );
    const notJson = {
      body: "{",
      headers: { ...TOKEN, "content-type": "application/json" },
    };
    assertRefused(
      await call(cf, "PUT", `${SCRIPT}/secrets`, notJson),
      400,
      CODES.parseBody,
    );
  });
});

Deno.test("routes are created, refused when duplicated or outside the zone, updated and deleted", async (t) => {
  await withFake({}, async (cf) => {
    await upload(cf, workerForm());
    await upload(cf, workerForm(), `${ACCOUNT}/workers/scripts/other`);
    const created = await call(cf, "POST", ROUTES, {
      json: { pattern: "cdn.example.com/*", script: "cdn" },
    });
    const id: string = created.json.result.id;
    assert.deepEqual(created.json.result, {
      id,
      pattern: "cdn.example.com/*",
      script: "cdn",
    });

    await t.step(
      "a second route with the same pattern is a conflict",
      async () => {
        const again = await call(cf, "POST", ROUTES, {
          json: { pattern: "cdn.example.com/*", script: "other" },
        });
        assertRefused(again, 409, CODES.duplicateRoute);
      },
    );
    await t.step(
      "patterns outside the zone or malformed are refused",
      async () => {
        for (
          const pattern of [
            "cdn.example.org/*",
            "notexample.com/*",
            "cdn.example.com",
            "cdn.*.example.com/*",
          ]
        ) {
          const answer = await call(cf, "POST", ROUTES, {
            json: { pattern, script: "cdn" },
          });
          assertRefused(answer, 400, CODES.invalidRoutePattern);
        }
      },
    );
    await t.step(
      "a route to a worker that does not exist is refused",
      async () => {
        const answer = await call(cf, "POST", ROUTES, {
          json: { pattern: "x.example.com/*", script: "ghost" },
        });
        assertRefused(answer, 400, CODES.routeScriptMissing);
      },
    );
    await t.step("PUT replaces the route under the same id", async () => {
      const updated = await call(cf, "PUT", `${ROUTES}/${id}`, {
        json: { pattern: "cdn.example.com/*", script: "other" },
      });
      assert.deepEqual(updated.json.result, {
        id,
        pattern: "cdn.example.com/*",
        script: "other",
      });
      assert.deepEqual((await call(cf, "GET", ROUTES)).json.result, [
        updated.json.result,
      ]);
    });
    await t.step(
      "DELETE removes it, and a second DELETE finds nothing",
      async () => {
        assert.deepEqual(
          (await call(cf, "DELETE", `${ROUTES}/${id}`)).json.result,
          { id },
        );
        assert.deepEqual(cf.routes.get("20e00000000000000000000000000001"), []);
        assertRefused(
          await call(cf, "DELETE", `${ROUTES}/${id}`),
          404,
          CODES.notFound,
        );
      },
    );
  });
});

Deno.test("custom domains are replaced per hostname and checked against zone and worker", async (t) => {
  await withFake({}, async (cf) => {
    await upload(cf, workerForm());
    await upload(cf, workerForm(), `${ACCOUNT}/workers/scripts/other`);
    const domain = {
      hostname: "cdn.example.com",
      service: "cdn",
      zone_id: "20e00000000000000000000000000001",
      environment: "production",
    };
    const first = await call(cf, "PUT", DOMAINS, { json: domain });
    assert.deepEqual(first.json.result, {
      ...domain,
      id: first.json.result.id,
      zone_name: "example.com",
    });

    await t.step("another Worker's hostname is refused with 100116", async () => {
      const answer = await call(cf, "PUT", DOMAINS, {
        json: { ...domain, service: "other" },
      });
      assertRefused(answer, 409, CODES.customDomainInUse);
      assert.match(answer.json.errors[0].message, /override_existing_origin/);
      assert.deepEqual(cf.domains, [first.json.result]);
    });
    await t.step(
      "with override_existing_origin it is re-pointed, keeping its id",
      async () => {
        const second = await call(cf, "PUT", DOMAINS, {
          json: { ...domain, service: "other", override_existing_origin: true },
        });
        assert.equal(second.json.result.id, first.json.result.id);
        assert.deepEqual(cf.domains, [second.json.result]);
      },
    );
    await t.step("GET filters by query", async () => {
      const hit = await call(
        cf,
        "GET",
        `${DOMAINS}?hostname=cdn.example.com&service=other`,
      );
      assert.equal(hit.json.result.length, 1);
      const miss = await call(cf, "GET", `${DOMAINS}?service=cdn`);
      assert.deepEqual(miss.json.result, []);
    });
    await t.step("a hostname outside the zone is refused", async () => {
      const answer = await call(cf, "PUT", DOMAINS, {
        json: { ...domain, hostname: "cdn.example.org" },
      });
      assertRefused(answer, 400, CODES.zoneNotFound);
    });
    await t.step("a worker that does not exist is refused", async () => {
      const answer = await call(cf, "PUT", DOMAINS, {
        json: { ...domain, service: "ghost" },
      });
      assertRefused(answer, 404, CODES.workerNotFound);
    });
    await t.step("a hostname with a path or wildcard is refused", async () => {
      const answer = await call(cf, "PUT", DOMAINS, {
        json: { ...domain, hostname: "cdn.example.com/*" },
      });
      assertRefused(answer, 400, CODES.parseBody);
      assert.equal(cf.domains.length, 1);
    });
  });
});

Deno.test("fail() answers injected faults for the given number of requests", async () => {
  await withFake({}, async (cf) => {
    cf.fail(`${ACCOUNT}/workers/scripts/`, {
      status: 429,
      code: 971,
      message: "slow down",
      retryAfter: 7,
      times: 2,
    });
    for (let i = 0; i < 2; i++) {
      const answer = await upload(cf, workerForm());
      assertRefused(answer, 429, 971);
      assert.equal(answer.json.errors[0].message, "slow down");
      assert.equal(answer.headers.get("retry-after"), "7");
    }
    assert.equal(cf.scripts.size, 0);
    assert.equal((await upload(cf, workerForm())).status, 200);
  });
});

Deno.test("fail() with hang holds the request until the client aborts or the fake closes", async () => {
  await withFake({}, async (cf) => {
    cf.fail(ROUTES, { status: 503, hang: true });
    const signal = AbortSignal.timeout(50);
    await assert.rejects(fetch(cf.url + ROUTES, { headers: TOKEN, signal }));
  });
  const cf = startFakeCloudflare();
  cf.fail(ROUTES, { status: 503, hang: true });
  const pending = fetch(cf.url + ROUTES, { headers: TOKEN });
  await new Promise((resolve) => setTimeout(resolve, 20));
  const closed = cf.close();
  const response = await pending;
  assert.equal(response.status, 503);
  await response.body?.cancel();
  await closed;
});

Deno.test("latencyMs delays every answer", async () => {
  await withFake({ latencyMs: 60 }, async (cf) => {
    const started = performance.now();
    assert.equal((await call(cf, "GET", ROUTES)).status, 200);
    assert.ok(performance.now() - started >= 55);
  });
});

Deno.test("a hostname with an A, AAAA or CNAME record is refused with 100117, whatever the flags", async () => {
  await withFake({}, async (cf) => {
    await upload(cf, workerForm());
    cf.dnsRecords.push(dnsRecord({ name: "files.example.com", type: "CNAME" }));
    cf.dnsRecords.push(dnsRecord({ name: "mail.example.com", type: "TXT" }));
    const json = {
      hostname: "files.example.com",
      service: "cdn",
      zone_id: "20e00000000000000000000000000001",
    };
    for (const flags of [{}, { override_existing_origin: true }]) {
      const answer = await call(cf, "PUT", DOMAINS, { json: { ...json, ...flags } });
      assertRefused(answer, 409, CODES.customDomainDnsConflict);
      assert.match(answer.json.errors[0].message, /Hostname 'files\.example\.com' already has/);
    }
    const txtOnly = await call(cf, "PUT", DOMAINS, {
      json: { ...json, hostname: "mail.example.com" },
    });
    assert.equal(txtOnly.status, 200, JSON.stringify(txtOnly.json));
    cf.dnsRecords.splice(0, 1);
    const after = await call(cf, "PUT", DOMAINS, { json });
    assert.equal(after.status, 200, JSON.stringify(after.json));
    const detach = await call(cf, "DELETE", `${DOMAINS}/${after.json.result.id}`);
    assert.equal(detach.status, 200);
    assert.deepEqual(cf.domains.map((d) => d.hostname), ["mail.example.com"]);
  });
});

Deno.test("DNS records need dns_records:read to list and dns_records:edit to delete", async (t) => {
  const record = dnsRecord({ name: "files.example.com", type: "CNAME" });
  const list = "/zones/20e00000000000000000000000000001/dns_records?name=files.example.com";
  const one = `/zones/20e00000000000000000000000000001/dns_records/${record.id}`;
  await t.step("a Workers-only token may do neither", async () => {
    await withFake({}, async (cf) => {
      cf.dnsRecords.push(record);
      assertRefused(await call(cf, "GET", list), 403, CODES.authentication);
      assertRefused(await call(cf, "DELETE", one), 403, CODES.authentication);
      assert.equal(cf.dnsRecords.length, 1);
    });
  });
  await t.step("DNS: Read lists by name, but may not delete", async () => {
    await withFake({ tokenPermissions: ["dns_records:read"] }, async (cf) => {
      cf.dnsRecords.push(record, dnsRecord({ name: "www.example.com", type: "A" }));
      const answer = await call(cf, "GET", list);
      assert.deepEqual(answer.json.result, [record]);
      assertRefused(await call(cf, "DELETE", one), 403, CODES.authentication);
    });
  });
  await t.step("DNS: Edit lists and deletes", async () => {
    await withFake({ tokenPermissions: ["dns_records:edit"] }, async (cf) => {
      cf.dnsRecords.push(record);
      assert.equal((await call(cf, "GET", list)).json.result.length, 1);
      assert.equal((await call(cf, "DELETE", one)).status, 200);
      assertRefused(await call(cf, "DELETE", one), 404, CODES.dnsRecordNotFound);
      assert.deepEqual(cf.dnsRecords, []);
    });
  });
});

Deno.test("workers.dev: the account's subdomain, and each script's switch", async (t) => {
  const subdomain = `${SCRIPT}/subdomain`;
  await t.step("an account with a subdomain", async () => {
    await withFake({}, async (cf) => {
      const account = await call(cf, "GET", `${ACCOUNT}/workers/subdomain`);
      assert.deepEqual(account.json.result, { subdomain: "fake-subdomain" });
      assertRefused(await call(cf, "GET", subdomain), 404, CODES.workerNotFound);
      await upload(cf, workerForm());
      const off = await call(cf, "POST", subdomain, {
        json: { enabled: false, previews_enabled: false },
      });
      assert.deepEqual(off.json.result, { enabled: false, previews_enabled: false });
      assert.deepEqual((await call(cf, "GET", subdomain)).json.result, off.json.result);
      assertRefused(
        await call(cf, "POST", subdomain, { json: { previews_enabled: true } }),
        400,
        CODES.parseBody,
      );
    });
  });
  await t.step("an account that never chose one", async () => {
    await withFake({ workersDevSubdomain: null }, async (cf) => {
      const account = await call(cf, "GET", `${ACCOUNT}/workers/subdomain`);
      assertRefused(account, 404, CODES.workerNotFound);
      const first = await upload(cf, workerForm());
      assertRefused(first, 400, CODES.subdomainRequired);
      assert.equal(cf.scripts.size, 0);
    });
  });
});

let recordId = 0;
function dnsRecord(fields: { name: string; type: string }) {
  return {
    id: `record-${++recordId}`,
    zone_id: "20e00000000000000000000000000001",
    zone_name: "example.com",
    content: fields.type === "A" ? "192.0.2.1" : "f004.backblazeb2.com",
    proxied: true,
    ttl: 1,
    ...fields,
  };
}

const OTHER_ACCOUNT = { id: "acc00000000000000000000000000002", name: "Second account" };

Deno.test("token verify: a user's token at /user, an account's at /accounts/{id}, 1000 otherwise", async (t) => {
  const userVerify = "/user/tokens/verify";
  const accountVerify = `${ACCOUNT}/tokens/verify`;
  await t.step("a user-owned token", async () => {
    await withFake({}, async (cf) => {
      const answer = await call(cf, "GET", userVerify);
      assert.equal(answer.status, 200);
      assert.equal(answer.json.result.status, "active");
      assert.deepEqual(answer.json.messages.map((m: { code: number }) => m.code), [10000]);
      assertRefused(await call(cf, "GET", accountVerify), 401, CODES.invalidToken);
    });
  });
  await t.step("an account-owned token", async () => {
    await withFake({ tokenOwner: "account" }, async (cf) => {
      assertRefused(await call(cf, "GET", userVerify), 401, CODES.invalidToken);
      assert.equal((await call(cf, "GET", accountVerify)).json.result.status, "active");
      const elsewhere = `/accounts/${OTHER_ACCOUNT.id}/tokens/verify`;
      assertRefused(await call(cf, "GET", elsewhere), 401, CODES.invalidToken);
    });
  });
  await t.step("an unknown token gets 1000 at both", async () => {
    await withFake({}, async (cf) => {
      const headers = { authorization: "Bearer not-the-token" };
      assertRefused(await call(cf, "GET", userVerify, { headers }), 401, CODES.invalidToken);
      assertRefused(await call(cf, "GET", accountVerify, { headers }), 401, CODES.invalidToken);
    });
  });
});

Deno.test("/accounts lists what the credential sees, paged; an account token sees one", async (t) => {
  const many = Array.from({ length: 24 }, (_, i) => ({
    id: `acc${String(i + 10).padStart(29, "0")}`,
    name: `Account ${i}`,
  }));
  await t.step("a user in 25 accounts: two pages of 20 and 5", async () => {
    await withFake({ otherAccounts: many }, async (cf) => {
      const first = await call(cf, "GET", "/accounts");
      assert.equal(first.json.result.length, 20);
      assert.deepEqual(first.json.result_info, {
        page: 1,
        per_page: 20,
        count: 20,
        total_count: 25,
      });
      assert.equal(first.json.result[0].id, FAKE_ACCOUNT_ID);
      const second = await call(cf, "GET", "/accounts?page=2");
      assert.equal(second.json.result.length, 5);
      assert.equal(second.json.result.at(-1).id, many.at(-1)!.id);
    });
  });
  await t.step("an account-owned token sees only its account", async () => {
    await withFake({ otherAccounts: many, tokenOwner: "account" }, async (cf) => {
      const answer = await call(cf, "GET", "/accounts");
      assert.deepEqual(answer.json.result.map((a: { id: string }) => a.id), [FAKE_ACCOUNT_ID]);
      // ...and cannot use another account's endpoints.
      const other = `/accounts/${many[0]!.id}/workers/scripts`;
      assertRefused(await call(cf, "GET", other), 403, CODES.unauthorizedResource);
    });
  });
  await t.step("an unknown token is refused", async () => {
    await withFake({}, async (cf) => {
      const headers = { authorization: "Bearer nope" };
      assertRefused(await call(cf, "GET", "/accounts", { headers }), 403, CODES.authentication);
    });
  });
});

Deno.test("/zones?name= finds a zone by exact name, in its account, only with zone:read", async (t) => {
  const zones = [
    { id: FAKE_ZONE_ID, name: "example.com" },
    { id: "20e00000000000000000000000000002", name: "example.org", account: OTHER_ACCOUNT.id },
  ];
  const ids = (answer: Answer) => answer.json.result.map((z: { id: string }) => z.id);
  await withFake({ zones, otherAccounts: [OTHER_ACCOUNT] }, async (cf) => {
    await t.step("by name, with the account it belongs to", async () => {
      const answer = await call(cf, "GET", "/zones?name=example.org");
      assert.deepEqual(answer.json.result, [{
        id: "20e00000000000000000000000000002",
        name: "example.org",
        status: "active",
        account: OTHER_ACCOUNT,
      }]);
    });
    await t.step("a subdomain is not a zone: the walk must go up", async () => {
      assert.deepEqual(ids(await call(cf, "GET", "/zones?name=cdn.example.com")), []);
    });
    await t.step("account.id narrows", async () => {
      const asked = `/zones?name=example.org&account.id=${FAKE_ACCOUNT_ID}`;
      assert.deepEqual(ids(await call(cf, "GET", asked)), []);
    });
  });
  await withFake({ zones, tokenPermissions: ["workers_scripts:edit"] }, async (cf) => {
    await t.step("without zone:read: an empty list, not a refusal", async () => {
      const answer = await call(cf, "GET", "/zones?name=example.com");
      assert.equal(answer.status, 200);
      assert.deepEqual(ids(answer), []);
    });
  });
});

Deno.test("a Worker belongs to the account it was uploaded to", async () => {
  await withFake({ otherAccounts: [OTHER_ACCOUNT] }, async (cf) => {
    assert.equal((await upload(cf, workerForm())).status, 200);
    const list = (account: string) => call(cf, "GET", `/accounts/${account}/workers/scripts`);
    assert.deepEqual((await list(FAKE_ACCOUNT_ID)).json.result.map((s: { id: string }) => s.id), [
      "cdn",
    ]);
    assert.deepEqual((await list(OTHER_ACCOUNT.id)).json.result, []);
    const settings = `/accounts/${OTHER_ACCOUNT.id}/workers/scripts/cdn/settings`;
    assertRefused(await call(cf, "GET", settings), 404, CODES.workerNotFound);
  });
  await withFake({ tokenPermissions: ["workers_scripts:read"] }, async (cf) => {
    assert.equal((await call(cf, "GET", `${ACCOUNT}/workers/scripts`)).status, 200);
    assertRefused(await upload(cf, workerForm()), 403, CODES.authentication);
  });
});
