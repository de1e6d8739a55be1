import assert from "node:assert/strict";
import { type FakeB2Options, signEventBody, startFakeB2 } from "./fake_b2.ts";

const RULE = {
  name: "b2cdn-site",
  eventTypes: ["b2:ObjectCreated:*"],
  objectNamePrefix: "site/",
  isEnabled: true,
  maxEventsPerBatch: 50,
  targetConfiguration: {
    targetType: "webhook",
    url: "https://cdn.example.com/hook",
    hmacSha256SigningSecret: "abcdefghijklmnopqrstuvwxyz012345",
  },
};

function rule(changes: Record<string, unknown> = {}, target: Record<string, unknown> = {}) {
  return {
    ...RULE,
    ...changes,
    targetConfiguration: { ...RULE.targetConfiguration, ...target },
  };
}

Deno.test("the B2 stand-in refuses the notification rules B2 documents it refuses", async (t) => {
  const b2 = startFakeB2({
    capabilities: ["readBucketNotifications", "writeBucketNotifications"],
  });
  try {
    const auth = await (await fetch(`${b2.url}/b2api/v4/b2_authorize_account`, {
      headers: { authorization: "Basic " + btoa("fake-key-id:fake-application-key") },
    })).json();
    const set = async (rules: unknown[]) => {
      const response = await fetch(`${b2.url}/b2api/v4/b2_set_bucket_notification_rules`, {
        method: "POST",
        headers: { authorization: auth.authorizationToken },
        body: JSON.stringify({ bucketId: "bucket-photos", eventNotificationRules: rules }),
      });
      return [response.status, await response.json()];
    };
    const cases: [string, unknown[], RegExp][] = [
      ["http", [rule({}, { url: "http://cdn.example.com/" })], /must use HTTPS/],
      ["a short secret", [rule({}, { hmacSha256SigningSecret: "short" })], /32 alphanumeric/],
      ["a reserved name", [rule({ name: "b2-mine" })], /reserved/],
      ["a short name", [rule({ name: "abc" })], /6 to 63/],
      ["a duplicate name", [rule(), rule()], /unique/],
      [
        "26 rules",
        Array.from(
          { length: 26 },
          (_, i) => rule({ name: `rule-${i}00`, objectNamePrefix: `${i}/` }),
        ),
        /up to 25/,
      ],
      [
        "overlapping prefixes",
        [rule(), rule({ name: "another", objectNamePrefix: "site/img/" })],
        /overlap/,
      ],
      ["an unknown event type", [rule({ eventTypes: ["b2:ObjectRead:*"] })], /known event types/],
    ];
    for (const [what, rules, message] of cases) {
      await t.step(what, async () => {
        const [status, body] = await set(rules);
        assert.deepEqual([status, body.code], [400, "bad_request"]);
        assert.match(body.message, message);
      });
    }
    await t.step("good rules are kept, listed by name, not suspended", async () => {
      const [status, body] = await set([
        rule({ name: "zz-last" }),
        rule({
          name: "aa-first",
          objectNamePrefix: "other/",
        }),
      ]);
      assert.equal(status, 200);
      assert.deepEqual(body.eventNotificationRules.map((r: { name: string }) => r.name), [
        "aa-first",
        "zz-last",
      ]);
      assert.equal(body.eventNotificationRules[0].isSuspended, false);
    });
  } finally {
    await b2.close();
  }
});

Deno.test("the B2 stand-in refuses the notification calls to a key without their capability", async (t) => {
  // Each call needs its own capability (backblaze.com/apidocs/b2-get-bucket-notification-rules,
  // b2-set-bucket-notification-rules): a key with only the other one is refused.
  for (
    const [has, lacks] of [
      ["writeBucketNotifications", "readBucketNotifications"],
      ["readBucketNotifications", "writeBucketNotifications"],
    ]
  ) {
    await t.step(`a key without ${lacks}`, async () => {
      const b2 = startFakeB2({ capabilities: ["listBuckets", has!] });
      try {
        const kept = { ...structuredClone(RULE), isSuspended: false, suspensionReason: "" };
        b2.notificationRules.set("bucket-photos", [kept]);
        const auth = await (await fetch(`${b2.url}/b2api/v4/b2_authorize_account`, {
          headers: { authorization: "Basic " + btoa("fake-key-id:fake-application-key") },
        })).json();
        const response = lacks === "readBucketNotifications"
          ? await fetch(
            `${b2.url}/b2api/v3/b2_get_bucket_notification_rules?bucketId=bucket-photos`,
            { headers: { authorization: auth.authorizationToken } },
          )
          : await fetch(`${b2.url}/b2api/v4/b2_set_bucket_notification_rules`, {
            method: "POST",
            headers: { authorization: auth.authorizationToken },
            body: JSON.stringify({ bucketId: "bucket-photos", eventNotificationRules: [] }),
          });
        const body = await response.json();
        assert.deepEqual([response.status, body.code], [401, "unauthorized"]);
        assert.match(body.message, new RegExp(`lacks the ${lacks} capability`));
        assert.deepEqual(b2.notificationRules.get("bucket-photos"), [kept], "nothing changed");
      } finally {
        await b2.close();
      }
    });
  }
});

Deno.test("signEventBody() signs as B2 does: v1= and the hex HMAC-SHA256 of the body", async () => {
  // The secret's characters are the key, as they are (not base64-decoded).
  const key = await crypto.subtle.importKey(
    "raw",
    new TextEncoder().encode(RULE.targetConfiguration.hmacSha256SigningSecret),
    { name: "HMAC", hash: "SHA-256" },
    false,
    ["sign"],
  );
  const mac = new Uint8Array(await crypto.subtle.sign("HMAC", key, new TextEncoder().encode("{}")));
  const hex = Array.from(mac, (b) => b.toString(16).padStart(2, "0")).join("");
  assert.equal(
    await signEventBody(RULE.targetConfiguration.hmacSha256SigningSecret, "{}"),
    `v1=${hex}`,
  );
});

const LISTING_KEY = {
  keyId: "listing-key-id",
  applicationKey: "listing-application-key",
  capabilities: ["listFiles"],
  restrictToBucket: "photos",
  namePrefix: "site/",
};

const LISTED_FILES = [
  "site/a.txt",
  "site/b/1.txt",
  "site/b/2.txt",
  "site/c.txt",
  "site/d/e/f.txt",
  "site/é.txt",
  "site/z.txt",
  "site/\u{1F600}.txt",
  "other/x.txt",
].map((name) => ({ name, body: name }));

async function authorize(b2: { url: string }, keyId: string, applicationKey: string) {
  const response = await fetch(`${b2.url}/b2api/v4/b2_authorize_account`, {
    headers: { authorization: "Basic " + btoa(`${keyId}:${applicationKey}`) },
  });
  return await response.json();
}

Deno.test("the B2 stand-in lists names as b2_list_file_names does: folders, pages, byte order", async (t) => {
  const b2 = startFakeB2({
    buckets: [{ id: "bucket-photos", name: "photos", files: LISTED_FILES }],
    keys: [LISTING_KEY],
  });
  try {
    const auth = await authorize(b2, LISTING_KEY.keyId, LISTING_KEY.applicationKey);
    assert.deepEqual(auth.apiInfo.storageApi.allowed, {
      buckets: [{ id: "bucket-photos", name: "photos" }],
      capabilities: ["listFiles"],
      namePrefix: "site/",
    });
    const list = async (fields: Record<string, string | number>, method = "POST") => {
      const url = new URL(`${b2.url}/b2api/v4/b2_list_file_names`);
      const body = { bucketId: "bucket-photos", ...fields };
      if (method === "GET") {
        for (const [name, value] of Object.entries(body)) url.searchParams.set(name, String(value));
      }
      const response = await fetch(url, {
        method,
        headers: { authorization: auth.authorizationToken },
        ...(method === "POST" && { body: JSON.stringify(body) }),
      });
      return [response.status, await response.json()];
    };
    const names = (body: { files: { fileName: string; action: string }[] }) =>
      body.files.map((f) => `${f.action}:${f.fileName}`);

    await t.step("a delimiter makes each folder one item, in UTF-8 byte order", async () => {
      for (const method of ["POST", "GET"]) {
        const [status, body] = await list({ prefix: "site/", delimiter: "/" }, method);
        assert.equal(status, 200);
        assert.deepEqual(names(body), [
          "upload:site/a.txt",
          "folder:site/b/",
          "upload:site/c.txt",
          "folder:site/d/",
          "upload:site/z.txt",
          "upload:site/é.txt",
          "upload:site/\u{1F600}.txt",
        ]);
        assert.equal(body.nextFileName, null);
      }
    });

    await t.step("a file item carries its size, hash, id and time; a folder none", async () => {
      const [, body] = await list({ prefix: "site/", delimiter: "/", maxFileCount: 2 });
      assert.deepEqual(body.files[0], {
        accountId: "fake-account",
        action: "upload",
        bucketId: "bucket-photos",
        contentLength: 10,
        contentSha1: "81c329157632e27d2821b47f6d643712cbd0cbe5",
        contentType: "application/octet-stream",
        fileId: "4_zbucket-photos_f10x10",
        fileInfo: {},
        fileName: "site/a.txt",
        uploadTimestamp: 1_700_000_000_000,
      });
      assert.deepEqual(
        [body.files[1].action, body.files[1].fileId, body.files[1].contentLength],
        ["folder", null, 0],
      );
    });

    await t.step("pages follow nextFileName, which starts the next page inclusively", async () => {
      const seen: string[] = [];
      let start: string | null = "";
      let calls = 0;
      while (start !== null) {
        const [status, body] = await list({
          prefix: "site/",
          delimiter: "/",
          maxFileCount: 2,
          startFileName: start,
        });
        assert.equal(status, 200);
        seen.push(...names(body));
        start = body.nextFileName;
        calls++;
      }
      assert.equal(calls, 4);
      assert.equal(new Set(seen).size, seen.length, "no item twice");
      assert.deepEqual(seen.length, 7);
    });

    await t.step("a prefix inside a folder lists that folder", async () => {
      const [, body] = await list({ prefix: "site/d/", delimiter: "/" });
      assert.deepEqual(names(body), ["folder:site/d/e/"]);
    });

    await t.step("without a delimiter every name is listed", async () => {
      const [, body] = await list({ prefix: "site/b/" });
      assert.deepEqual(names(body), ["upload:site/b/1.txt", "upload:site/b/2.txt"]);
    });

    await t.step("maxFileCount past 10,000 is refused", async () => {
      const [status, body] = await list({ prefix: "site/", maxFileCount: 10_001 });
      assert.deepEqual([status, body.code], [400, "bad_request"]);
    });
  } finally {
    await b2.close();
  }
});

Deno.test("the B2 stand-in refuses a list outside the key's capabilities and restrictions", async (t) => {
  const b2 = startFakeB2({
    buckets: [
      { id: "bucket-photos", name: "photos", files: LISTED_FILES },
      { id: "bucket-other", name: "other", files: [] },
    ],
    keys: [LISTING_KEY, { ...LISTING_KEY, keyId: "no-list", capabilities: ["readFiles"] }],
  });
  try {
    const listing = await authorize(b2, LISTING_KEY.keyId, LISTING_KEY.applicationKey);
    const noList = await authorize(b2, "no-list", LISTING_KEY.applicationKey);
    const list = async (token: string, body: Record<string, unknown>) => {
      const response = await fetch(`${b2.url}/b2api/v4/b2_list_file_names`, {
        method: "POST",
        headers: { authorization: token },
        body: JSON.stringify(body),
      });
      return [response.status, await response.json()];
    };
    const refusal = "unauthorized for application key with capabilities 'listFiles', " +
      "restricted to bucket 'photos', restricted to files that start with 'site/'";
    const cases: [string, string, Record<string, unknown>, number, string][] = [
      [
        "a prefix outside the key's",
        listing.authorizationToken,
        {
          bucketId: "bucket-photos",
          prefix: "other/",
        },
        401,
        "unauthorized",
      ],
      ["no prefix", listing.authorizationToken, { bucketId: "bucket-photos" }, 401, "unauthorized"],
      [
        "another bucket",
        listing.authorizationToken,
        {
          bucketId: "bucket-other",
          prefix: "site/",
        },
        401,
        "unauthorized",
      ],
      [
        "a key without listFiles",
        noList.authorizationToken,
        {
          bucketId: "bucket-photos",
          prefix: "site/",
        },
        401,
        "unauthorized",
      ],
      [
        "a made-up token",
        "fake-account-made-up",
        {
          bucketId: "bucket-photos",
          prefix: "site/",
        },
        401,
        "bad_auth_token",
      ],
      ["no bucket", listing.authorizationToken, { prefix: "site/" }, 400, "bad_request"],
    ];
    for (const [what, token, body, status, code] of cases) {
      await t.step(what, async () => {
        const [got, answer] = await list(token, body);
        assert.deepEqual([got, answer.code], [status, code]);
        if (what === "a prefix outside the key's") assert.equal(answer.message, refusal);
      });
    }
    await t.step("an expired account token: 401 expired_auth_token", async () => {
      b2.expireAccountTokens();
      const [status, body] = await list(listing.authorizationToken, {
        bucketId: "bucket-photos",
        prefix: "site/",
      });
      assert.deepEqual([status, body.code], [401, "expired_auth_token"]);
    });
    await t.step("the listing key cannot get a download token", async () => {
      const fresh = await authorize(b2, LISTING_KEY.keyId, LISTING_KEY.applicationKey);
      const response = await fetch(`${b2.url}/b2api/v4/b2_get_download_authorization`, {
        method: "POST",
        headers: { authorization: fresh.authorizationToken },
        body: JSON.stringify({
          bucketId: "bucket-photos",
          fileNamePrefix: "site/",
          validDurationInSeconds: 60,
        }),
      });
      assert.deepEqual([response.status, (await response.json()).code], [401, "unauthorized"]);
    });
  } finally {
    await b2.close();
  }
});

/** A fake with two files, and a caller of its v1 API with a fresh token, as rclone 1.60 calls. */
async function v1B2(options: FakeB2Options = {}) {
  const b2 = startFakeB2({
    buckets: [{
      id: "bucket-photos",
      name: "photos",
      files: ["site/a.txt", "site/docs/b.txt"].map((name) => ({
        name,
        body: name,
        info: { src_last_modified_millis: "5" },
      })),
    }],
    ...options,
  });
  const auth = await (await fetch(`${b2.url}/b2api/v1/b2_authorize_account`, {
    headers: { authorization: "Basic " + btoa("fake-key-id:fake-application-key") },
  })).json();
  const call = async (api: string, fields: Record<string, unknown>) =>
    await (await fetch(`${b2.url}/b2api/v1/${api}`, {
      method: "POST",
      headers: { authorization: auth.authorizationToken },
      body: JSON.stringify(fields),
    })).json();
  return { b2, auth, call };
}

Deno.test("the B2 stand-in answers rclone 1.60's v1 calls in v1's shape", async () => {
  const { b2, auth, call } = await v1B2({ restrictToBucket: "photos" });
  try {
    // rclone reads these at the top level (backend/b2/api/types.go, AuthorizeAccountResponse).
    assert.deepEqual(
      { ...auth, authorizationToken: "token" },
      {
        accountId: "fake-account",
        authorizationToken: "token",
        apiUrl: b2.url,
        downloadUrl: b2.url,
        absoluteMinimumPartSize: 5_000_000,
        recommendedPartSize: 100_000_000,
        minimumPartSize: 100_000_000,
        allowed: {
          bucketId: "bucket-photos",
          bucketName: "photos",
          capabilities: ["listBuckets", "listFiles", "readFiles", "shareFiles"],
          namePrefix: null,
        },
      },
    );
    const buckets = await call("b2_list_buckets", {
      accountId: "fake-account",
      bucketId: "bucket-photos",
    });
    assert.deepEqual(buckets.buckets.map((b: { bucketName: string }) => b.bucketName), ["photos"]);
    // rclone 1.60 reads a file's length from `size` (its api.File); folders are 0.
    const names = await call("b2_list_file_names", {
      bucketId: "bucket-photos",
      prefix: "site/",
      delimiter: "/",
    });
    assert.deepEqual(
      names.files.map((f: Record<string, unknown>) => [f.fileName, f.size, f.contentLength]),
      [["site/a.txt", 10, 10], ["site/docs/", 0, 0]],
    );
    const refused = await call("b2_list_file_names", { bucketId: "nope" });
    assert.deepEqual([refused.status, refused.code], [400, "bad_request"]);
  } finally {
    await b2.close();
  }
});
