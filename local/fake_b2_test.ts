import assert from "node:assert/strict";
import { signEventBody, startFakeB2 } from "./fake_b2.ts";

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
