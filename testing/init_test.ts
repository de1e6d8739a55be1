/**
 * `init` as a person meets it: in a real pseudo-terminal (testing/pty.ts) against the B2 and
 * Cloudflare stand-ins, and in a pipe with flags. Each run checks the `.env` it wrote against
 * the one a hand-written setup would have, deploys from it, and reads the terminal's whole
 * scrollback for the secrets, which were typed unseen.
 */
import assert from "node:assert/strict";
import { parseEnv } from "node:util";
import { run } from "../main.ts";
import { type FakeB2, type FakeB2Options, startFakeB2 } from "../local/fake_b2.ts";
import {
  FAKE_ACCOUNT_ID,
  FAKE_ZONE_ID,
  type FakeCloudflare,
  type FakeCloudflareOptions,
  startFakeCloudflare,
} from "../local/fake_cloudflare.ts";
import { childEnv } from "./child_env.ts";
import { startInTerminal, type TerminalSession } from "./pty.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const KEY_ID = "0012ab34cd56ef780000000001";
const B2_KEY = "K001secretApplicationKeyAbCdEfGh";
const CF_TOKEN = "cf-token-Secret_0123456789abcdefXYZ";
/** Mistyped credentials: as secret as the right ones, never shown either. */
const WRONG_B2_KEYS = [
  "K001mistypedKeyOne0000000",
  "K001mistypedKeyTwo0000000",
  "K001mistypedKeyTri000000",
];
const WRONG_CF_TOKEN = "cf-token-Mistyped_0123456789abcdef";
const SECOND = { id: "acc00000000000000000000000000002", name: "Side project" };
/** What a stand-in's own tokens look like: never shown either. */
const FAKE_TOKEN = /fake-(download|account)-[0-9a-f]{8}-/;

interface Place {
  b2: FakeB2;
  cf: FakeCloudflare;
  dir: string;
  /** The stand-ins' addresses, as the settings that point at them. */
  apis: Record<string, string>;
  close(): Promise<void>;
}

async function place(
  options: { b2?: FakeB2Options; cloudflare?: FakeCloudflareOptions } = {},
): Promise<Place> {
  const b2 = startFakeB2({
    keyId: KEY_ID,
    applicationKey: B2_KEY,
    buckets: [
      { id: "bucket-photos", name: "photos", files: [{ name: "site/cat.jpg", body: "a cat" }] },
      { id: "bucket-backup", name: "backups", files: [] },
    ],
    ...options.b2,
  });
  const cf = startFakeCloudflare({ apiToken: CF_TOKEN, ...options.cloudflare });
  const dir = await Deno.makeTempDir({ prefix: "init-" });
  return {
    b2,
    cf,
    dir,
    apis: { B2_API_URL: b2.url, CLOUDFLARE_API_BASE_URL: cf.url },
    async close() {
      await Promise.all([b2.close(), cf.close()]);
      await Deno.remove(dir, { recursive: true });
    },
  };
}

const INIT = [
  Deno.execPath(),
  "run",
  "--allow-net",
  "--allow-env",
  "--allow-read",
  "--allow-write",
];

function initInTerminal(at: Place, env: Record<string, string> = {}): TerminalSession {
  return startInTerminal([...INIT, `${ROOT}main.ts`, "init"], {
    cwd: at.dir,
    env: childEnv({ NO_COLOR: "1", TERM: "xterm", ...at.apis, ...env }),
  });
}

/** The secrets a run was given, and the stand-ins' tokens: none may show. */
function assertNoSecret(text: string): void {
  const secrets = [B2_KEY, CF_TOKEN, ...WRONG_B2_KEYS, WRONG_CF_TOKEN];
  for (const secret of [...secrets, btoa(`${KEY_ID}:${B2_KEY}`)]) {
    assert.ok(!text.includes(secret), `a secret is on the screen:\n${text}`);
  }
  assert.doesNotMatch(text, FAKE_TOKEN);
}

/** The `.env` written, parsed, after checking it is its owner's alone. */
async function written(at: Place, name = ".env"): Promise<Record<string, string>> {
  const path = `${at.dir}/${name}`;
  assert.equal((await Deno.stat(path)).mode! & 0o777, 0o600);
  return { ...parseEnv(await Deno.readTextFile(path)) } as Record<string, string>;
}

/** A refresh as cron will run it, from the written file and nothing else; its exit code. */
async function refreshFrom(at: Place, name = ".env"): Promise<{ code: number; output: string }> {
  const lines: string[] = [];
  const code = await run({
    args: ["refresh", "--env-file", `${at.dir}/${name}`],
    env: {},
    readEnvFile: (path) => Deno.readTextFile(path).catch(() => undefined),
    io: { stdout: (t) => lines.push(t), stderr: (t) => lines.push(t) },
  });
  return { code, output: lines.join("\n") };
}

/** The settings a person writes by hand for the stand-ins: the key, bucket, token, and ids. */
function byHand(at: Place, settings: Record<string, string>): Record<string, string> {
  return {
    B2_APPLICATION_KEY_ID: KEY_ID,
    B2_APPLICATION_KEY: B2_KEY,
    CLOUDFLARE_API_TOKEN: CF_TOKEN,
    ...at.apis,
    ...settings,
  };
}

Deno.test("init at a terminal: any key, several accounts, workers.dev; the .env deploys, no secret shown", async () => {
  const at = await place({ cloudflare: { otherAccounts: [SECOND] } });
  try {
    const session = initInTerminal(at);
    await session.answer("B2 application key id (keyID): ", KEY_ID);
    await session.answer("B2 application key (not shown as you type): ", B2_KEY);
    await session.expect(
      "all buckets of the account; may listBuckets, listFiles, readFiles, shareFiles",
    );
    await session.answer("Which bucket does the site serve?\r\n  1) photos\r\n  2) backups", "1");
    await session.answer("Serve only names under this prefix (Enter: the whole bucket): ", "site/");
    await session.expect('Bucket: photos, names under "site/"');
    await session.answer("Cloudflare API token (not shown as you type): ", CF_TOKEN);
    await session.expect("Cloudflare token: valid, a user's");
    await session.answer(`  2) Side project (${SECOND.id})`, "2");
    await session.answer("Where do visitors reach the site?", "1");
    await session.expect("may do everything this setup needs");
    await session.expect(/Wrote \.env \(mode 0600\)\.\r\n/);
    await session.expect(
      /17 4 \* \* \* cd \S+ && \S*deno run --allow-net --allow-env --allow-read \S+main\.ts refresh >> \S+b2-private-cdn\.log 2>&1/,
    );
    await session.answer("Run the first refresh now? [Y/n] ", "n");
    await session.expect(
      /Then deploy: .* --verify https:\/\/b2-private-cdn\.fake-subdomain\.workers\.dev\//,
    );
    const { code, transcript } = await session.finish();
    assert.equal(code, 0, transcript);
    assertNoSecret(transcript);
    // What was typed in the open is on the screen, as it should be.
    assert.match(transcript, new RegExp(`keyID\\): ${KEY_ID}\\r\\n`));
    assert.deepEqual(
      await written(at),
      byHand(at, {
        B2_BUCKET_NAME: "photos",
        B2_FILE_PREFIX: "site/",
        CLOUDFLARE_ACCOUNT_ID: SECOND.id,
      }),
    );
    const deployed = await refreshFrom(at);
    assert.equal(deployed.code, 0, deployed.output);
    assert.equal(at.cf.scripts.get("b2-private-cdn")?.account, SECOND.id);
    assertNoSecret(deployed.output);
  } finally {
    await at.close();
  }
});

Deno.test("init at a terminal: a key restricted to a bucket and prefix, an account's token, a route", async () => {
  const at = await place({
    b2: { restrictToBucket: "photos", namePrefix: "site/" },
    cloudflare: { tokenOwner: "account", otherAccounts: [SECOND] },
  });
  try {
    const session = initInTerminal(at);
    await session.answer("keyID): ", KEY_ID);
    await session.answer("(not shown as you type): ", B2_KEY);
    await session.expect('B2 key: restricted to bucket "photos", names starting with "site/"');
    // One bucket: not asked. The key's prefix is offered.
    await session.answer("Serve only names under this prefix [site/]: ", "");
    // Not asked, so said: which bucket the .env will name.
    await session.expect('Bucket: photos, names under "site/"');
    await session.answer("Cloudflare API token (not shown as you type): ", CF_TOKEN);
    await session.expect("Cloudflare token: valid, an account's");
    await session.expect(
      `Cloudflare account: Fake account (${FAKE_ACCOUNT_ID}), the one the token sees`,
    );
    await session.answer("Where do visitors reach the site?", "3");
    await session.answer("Route pattern: ", "https://cdn.example.com/*");
    // Checked like the setting: refused with its reason, and asked again.
    await session.expect("WORKER_ROUTE must not start with https://");
    await session.answer("Route pattern: ", "cdn.example.com/*");
    await session.expect(`Cloudflare zone: example.com (${FAKE_ZONE_ID})`);
    await session.answer("Run the first refresh now? [Y/n] ", "y");
    await session.answer("A file to fetch once deployed, to check (Enter: none): ", "");
    await session.expect(
      /Deployed worker "b2-private-cdn" for bucket "photos" \(prefix "site\/"\).*route created/,
    );
    const { code, transcript } = await session.finish();
    assert.equal(code, 0, transcript);
    assertNoSecret(transcript);
    assert.deepEqual(
      await written(at),
      byHand(at, {
        B2_BUCKET_NAME: "photos",
        B2_FILE_PREFIX: "site/",
        CLOUDFLARE_ACCOUNT_ID: FAKE_ACCOUNT_ID,
        CLOUDFLARE_ZONE_ID: FAKE_ZONE_ID,
        WORKER_ROUTE: "cdn.example.com/*",
      }),
    );
    assert.deepEqual(at.cf.routes.get(FAKE_ZONE_ID)?.map((r) => [r.pattern, r.script]), [
      ["cdn.example.com/*", "b2-private-cdn"],
    ]);
    const again = await refreshFrom(at);
    assert.equal(again.code, 0, again.output);
  } finally {
    await at.close();
  }
});

Deno.test("init at a terminal: a custom domain, and a token without Zone Read says which permission", async (t) => {
  await t.step("the zone is found and the domain deploys", async () => {
    const at = await place();
    try {
      const session = initInTerminal(at, { B2_APPLICATION_KEY_ID: KEY_ID });
      // The key id from the environment is not asked again; the key is.
      await session.answer("B2 application key (not shown as you type): ", B2_KEY);
      await session.answer("Choose 1-2 [1]: ", "");
      await session.answer("prefix (Enter: the whole bucket): ", "");
      await session.answer("API token (not shown as you type): ", CF_TOKEN);
      await session.answer("Where do visitors reach the site?", "2");
      await session.answer("Host name: ", "files.example.com");
      await session.expect(`Cloudflare zone: example.com (${FAKE_ZONE_ID})`);
      await session.answer("Run the first refresh now? [Y/n] ", "n");
      const { code, transcript } = await session.finish();
      assert.equal(code, 0, transcript);
      assertNoSecret(transcript);
      assert.deepEqual(
        await written(at),
        byHand(at, {
          B2_BUCKET_NAME: "photos",
          CLOUDFLARE_ACCOUNT_ID: FAKE_ACCOUNT_ID,
          CLOUDFLARE_ZONE_ID: FAKE_ZONE_ID,
          WORKER_DOMAIN: "files.example.com",
        }),
      );
      const deployed = await refreshFrom(at);
      assert.equal(deployed.code, 0, deployed.output);
      assert.equal(at.cf.domains[0]?.hostname, "files.example.com");
    } finally {
      await at.close();
    }
  });
  await t.step("no Zone Read: named, and a zone id typed instead is taken", async () => {
    const at = await place({
      cloudflare: { tokenPermissions: ["workers_scripts:edit", "workers_routes:edit"] },
    });
    try {
      const session = initInTerminal(at, {
        B2_BUCKET_NAME: "photos",
        WORKER_ROUTE: "cdn.example.com/*",
      });
      await session.answer("keyID): ", KEY_ID);
      await session.answer("(not shown as you type): ", B2_KEY);
      await session.answer("prefix (Enter: the whole bucket): ", "");
      await session.answer("API token (not shown as you type): ", CF_TOKEN);
      await session.expect(
        /Cannot find the zone of "cdn\.example\.com\/\*" \(tried cdn\.example\.com, example\.com in account \w+\): the domain is not on this account, or the token lacks "Zone: Read"/,
      );
      await session.answer(
        "Zone id (32 hex), as the Overview page shows it: ",
        `https://dash.cloudflare.com/${FAKE_ACCOUNT_ID}/example.com`,
      );
      await session.answer("holds the account id", FAKE_ZONE_ID);
      await session.answer("Run the first refresh now? [Y/n] ", "n");
      const { code, transcript } = await session.finish();
      assert.equal(code, 0, transcript);
      assert.equal((await written(at)).CLOUDFLARE_ZONE_ID, FAKE_ZONE_ID);
    } finally {
      await at.close();
    }
  });
});

Deno.test("init at a terminal: a key without shareFiles is refused with how to make one, not asked again", async () => {
  const at = await place({ b2: { capabilities: ["listBuckets", "listFiles", "readFiles"] } });
  try {
    const session = initInTerminal(at);
    await session.answer("keyID): ", KEY_ID);
    await session.answer("(not shown as you type): ", B2_KEY);
    // Were it asked again, init would wait for input here instead, and the wait time out.
    await session.expect("error: The B2 key lacks shareFiles");
    const { code, transcript } = await session.finish();
    assert.equal(code, 2, transcript);
    assert.equal(transcript.split("(not shown as you type): ").length - 1, 1, transcript);
    assert.equal(authorizations(at), 1);
    assert.match(
      transcript,
      /The B2 key lacks shareFiles, which serving needs .*B2 Cloud Storage > Application Keys > Add a New Application Key.*b2 key create --bucket photos b2-private-cdn listBuckets,readFiles,shareFiles/s,
    );
    assertNoSecret(transcript);
    await assert.rejects(Deno.stat(`${at.dir}/.env`), Deno.errors.NotFound);
  } finally {
    await at.close();
  }
});

/** How many times the B2 stand-in was asked to authorize a key. */
function authorizations(at: Place): number {
  return at.b2.requests.filter((r) => r.path.endsWith("/b2_authorize_account")).length;
}

/** What init says when B2 refuses the key pair, as it said it before keys were asked again. */
const B2_REFUSAL = new RegExp(
  "Cannot authorize the B2 application key: B2 answered 401 \\w+.*\\. Fix: check " +
    "B2_APPLICATION_KEY_ID and B2_APPLICATION_KEY\\.",
);

/** Types the key id and `key` at their prompts; on a second round the id is offered. */
async function typeB2Key(session: TerminalSession, key: string, again = false): Promise<void> {
  await session.answer(
    again ? `B2 application key id (keyID) [${KEY_ID}]: ` : "keyID): ",
    again ? "" : KEY_ID,
  );
  await session.answer("B2 application key (not shown as you type): ", key);
}

Deno.test("init at a terminal: a mistyped B2 key is refused in B2's words and asked again; the right one is written", async () => {
  const at = await place();
  try {
    const session = initInTerminal(at);
    await typeB2Key(session, WRONG_B2_KEYS[0]!);
    await session.expect(B2_REFUSAL);
    await typeB2Key(session, B2_KEY, true);
    await session.answer("Which bucket does the site serve?", "1");
    await session.answer("Serve only names under this prefix (Enter: the whole bucket): ", "");
    await session.answer("Cloudflare API token (not shown as you type): ", CF_TOKEN);
    await session.answer("Where do visitors reach the site?", "1");
    await session.answer("Run the first refresh now? [Y/n] ", "n");
    const { code, transcript } = await session.finish();
    assert.equal(code, 0, transcript);
    assertNoSecret(transcript);
    assert.equal(authorizations(at), 2);
    assert.deepEqual(
      await written(at),
      byHand(at, { B2_BUCKET_NAME: "photos", CLOUDFLARE_ACCOUNT_ID: FAKE_ACCOUNT_ID }),
    );
  } finally {
    await at.close();
  }
});

Deno.test("init at a terminal: three mistyped B2 keys end it as one did before, exit 1, nothing written", async () => {
  const at = await place();
  try {
    const session = initInTerminal(at);
    await typeB2Key(session, WRONG_B2_KEYS[0]!);
    await typeB2Key(session, WRONG_B2_KEYS[1]!, true);
    await typeB2Key(session, WRONG_B2_KEYS[2]!, true);
    // A fourth round would wait for input here instead, and the wait time out.
    await session.expect("error: Cannot authorize the B2 application key");
    const { code, transcript } = await session.finish();
    assert.equal(code, 1, transcript);
    const lines = transcript.split("\r\n");
    assert.equal(lines.filter((line) => B2_REFUSAL.test(line)).length, 3, transcript);
    assert.equal(transcript.split("(not shown as you type): ").length - 1, 3, transcript);
    assert.match(lines.findLast((line) => line.trim() !== "") ?? "", /^error: /);
    assert.match(lines.findLast((line) => line.trim() !== "") ?? "", B2_REFUSAL);
    assert.equal(authorizations(at), 3);
    assertNoSecret(transcript);
    await assert.rejects(Deno.stat(`${at.dir}/.env`), Deno.errors.NotFound);
  } finally {
    await at.close();
  }
});

Deno.test("init at a terminal: a mistyped Cloudflare token is asked again, the B2 key kept", async () => {
  const at = await place({ b2: { restrictToBucket: "photos" } });
  try {
    const session = initInTerminal(at);
    await typeB2Key(session, B2_KEY);
    await session.answer("Serve only names under this prefix (Enter: the whole bucket): ", "");
    await session.answer("Cloudflare API token (not shown as you type): ", WRONG_CF_TOKEN);
    await session.expect("CLOUDFLARE_API_TOKEN is not a valid API token");
    await session.answer("Cloudflare API token (not shown as you type): ", CF_TOKEN);
    await session.expect("Cloudflare token: valid, a user's");
    await session.answer("Where do visitors reach the site?", "1");
    await session.answer("Run the first refresh now? [Y/n] ", "n");
    const { code, transcript } = await session.finish();
    assert.equal(code, 0, transcript);
    assertNoSecret(transcript);
    assert.equal(authorizations(at), 1, "the key accepted is not tried again");
    assert.deepEqual(
      await written(at),
      byHand(at, { B2_BUCKET_NAME: "photos", CLOUDFLARE_ACCOUNT_ID: FAKE_ACCOUNT_ID }),
    );
  } finally {
    await at.close();
  }
});

Deno.test("init at a terminal: a key refused that came from the environment is not asked for", async () => {
  const at = await place();
  try {
    const session = initInTerminal(at, {
      B2_APPLICATION_KEY_ID: KEY_ID,
      B2_APPLICATION_KEY: WRONG_B2_KEYS[0]!,
    });
    await session.expect("error: Cannot authorize the B2 application key");
    const { code, transcript } = await session.finish();
    assert.equal(code, 1, transcript);
    assert.match(transcript, B2_REFUSAL);
    assert.doesNotMatch(transcript, /keyID\)|not shown as you type/);
    assert.equal(authorizations(at), 1);
    assertNoSecret(transcript);
  } finally {
    await at.close();
  }
});

/** `init` in a pipe: stdin and stdout are not terminals. */
async function initInPipe(
  at: Place,
  options: { env?: Record<string, string>; args?: string[] } = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const child = new Deno.Command(Deno.execPath(), {
    args: [...INIT.slice(1), `${ROOT}main.ts`, "init", ...(options.args ?? [])],
    cwd: at.dir,
    env: childEnv({ NO_COLOR: "1", ...at.apis, ...options.env }),
    clearEnv: true,
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  // Input stays open: a run that waited for it would hang here, and the test time out.
  const output = await child.output();
  const decode = (bytes: Uint8Array) => new TextDecoder().decode(bytes);
  const result = {
    code: output.code,
    stdout: decode(output.stdout),
    stderr: decode(output.stderr),
  };
  assertNoSecret(result.stdout + result.stderr);
  return result;
}

Deno.test("init in a pipe: from flags and the environment; what is missing is named, never waited for", async (t) => {
  const credentials = {
    B2_APPLICATION_KEY_ID: KEY_ID,
    B2_APPLICATION_KEY: B2_KEY,
    CLOUDFLARE_API_TOKEN: CF_TOKEN,
  };
  await t.step("nothing given: exit 2 naming the credentials", async () => {
    const at = await place();
    try {
      const { code, stderr } = await initInPipe(at);
      assert.equal(code, 2);
      assert.match(
        stderr,
        /init has no terminal to ask, so set B2_APPLICATION_KEY_ID, B2_APPLICATION_KEY/,
      );
      assert.match(stderr, /set B2_APPLICATION_KEY_ID, B2_APPLICATION_KEY, CLOUDFLARE_API_TOKEN /);
      assert.equal(at.b2.requests.length, 0);
    } finally {
      await at.close();
    }
  });
  await t.step("only the Cloudflare token missing: named before the B2 key is tried", async () => {
    const at = await place();
    try {
      const { code, stderr } = await initInPipe(at, {
        env: { B2_APPLICATION_KEY_ID: KEY_ID, B2_APPLICATION_KEY: B2_KEY },
      });
      assert.equal(code, 2);
      assert.match(stderr, /init has no terminal to ask, so set CLOUDFLARE_API_TOKEN /);
      assert.equal(at.b2.requests.length, 0);
      assertNoSecret(stderr);
    } finally {
      await at.close();
    }
  });
  await t.step(
    "several buckets and accounts: each choice named, then a custom domain written",
    async (inner) => {
      const at = await place({ cloudflare: { otherAccounts: [SECOND] } });
      try {
        const noBucket = await initInPipe(at, { env: credentials });
        assert.equal(noBucket.code, 2);
        assert.match(noBucket.stderr, /set B2_BUCKET_NAME/);
        const noAccount = await initInPipe(at, {
          env: credentials,
          args: ["--b2-bucket-name", "photos"],
        });
        assert.equal(noAccount.code, 2);
        assert.match(
          noAccount.stderr,
          /the token sees 2 accounts: set it to one of them \(Fake account: acc0+1; Side project: acc0+2\)/,
        );
        const args = [
          "--b2-bucket-name",
          "photos",
          "--cloudflare-account-id",
          FAKE_ACCOUNT_ID,
          "--worker-domain",
          "cdn.example.com",
        ];
        const done = await initInPipe(at, { env: credentials, args });
        assert.equal(done.code, 0, done.stderr);
        assert.match(done.stdout, /Wrote \.env \(mode 0600\)\./);
        assert.deepEqual(
          await written(at),
          byHand(at, {
            B2_BUCKET_NAME: "photos",
            CLOUDFLARE_ACCOUNT_ID: FAKE_ACCOUNT_ID,
            CLOUDFLARE_ZONE_ID: FAKE_ZONE_ID,
            WORKER_DOMAIN: "cdn.example.com",
          }),
        );
        assert.deepEqual(
          at.cf.requests.filter((r) => r.method !== "GET"),
          [],
          "init writes nothing there",
        );
        const deployed = await refreshFrom(at);
        assert.equal(deployed.code, 0, deployed.output);
        await inner.step("an existing .env is kept unless --force, which backs it up", async () => {
          const again = await initInPipe(at, { env: credentials, args });
          assert.equal(again.code, 2);
          assert.match(again.stderr, /\.env exists and was left as it is: pass --force/);
          const before = await Deno.readTextFile(`${at.dir}/.env`);
          const forced = await initInPipe(at, { env: credentials, args: [...args, "--force"] });
          assert.equal(forced.code, 0, forced.stderr);
          const backup = /the old one is (\S+)\./.exec(forced.stdout)?.[1];
          assert.ok(backup, forced.stdout);
          assert.equal(await Deno.readTextFile(`${at.dir}/${backup}`), before);
          assert.equal((await Deno.stat(`${at.dir}/${backup}`)).mode! & 0o777, 0o600);
          await written(at);
        });
      } finally {
        await at.close();
      }
    },
  );
  await t.step("a mistyped key: refused once, never asked for, nothing written", async () => {
    const at = await place();
    try {
      const { code, stdout, stderr } = await initInPipe(at, {
        env: { ...credentials, B2_APPLICATION_KEY: WRONG_B2_KEYS[0]! },
      });
      assert.equal(code, 1, stderr);
      assert.match(stderr, /^error: /);
      assert.match(stderr, B2_REFUSAL);
      assert.doesNotMatch(stdout + stderr, /keyID\)|not shown as you type/);
      assert.equal(authorizations(at), 1);
      await assert.rejects(Deno.stat(`${at.dir}/.env`), Deno.errors.NotFound);
    } finally {
      await at.close();
    }
  });
  await t.step("a token without the route permission: named, nothing written", async () => {
    const at = await place({
      cloudflare: { tokenPermissions: ["workers_scripts:edit", "zone:read"] },
    });
    try {
      const { code, stderr } = await initInPipe(at, {
        env: { ...credentials, B2_BUCKET_NAME: "photos", WORKER_ROUTE: "cdn.example.com/*" },
      });
      assert.equal(code, 2);
      assert.match(
        stderr,
        /The Cloudflare token lacks "Zone > Workers Routes > Edit" on zone 20e0+1/,
      );
      await assert.rejects(Deno.stat(`${at.dir}/.env`), Deno.errors.NotFound);
    } finally {
      await at.close();
    }
  });
});

Deno.test("init at a terminal: Ctrl-C at a secret's prompt stops it, writing nothing", async () => {
  const at = await place();
  try {
    const session = initInTerminal(at);
    await session.answer("keyID): ", KEY_ID);
    await session.expect("(not shown as you type): ");
    // Raw mode: Ctrl-C arrives as a character, half a key typed before it.
    await session.type(`${B2_KEY.slice(0, 10)}\x03`);
    const { code, transcript } = await session.finish();
    assert.equal(code, 2, transcript);
    assert.match(transcript, /init stopped \(Ctrl-C\); nothing written\./);
    assert.ok(!transcript.includes(B2_KEY.slice(0, 10)), "nothing of the key shows");
    await assert.rejects(Deno.stat(`${at.dir}/.env`), Deno.errors.NotFound);
    assert.equal(at.b2.requests.length, 0);
  } finally {
    await at.close();
  }
});

Deno.test("init at a terminal: an existing .env is replaced only when the person says so", async () => {
  const at = await place();
  try {
    await Deno.writeTextFile(`${at.dir}/.env`, "B2_BUCKET_NAME=photos\n");
    const session = initInTerminal(at);
    await session.answer(".env exists. Replace it (the old one is kept beside it)? [y/N] ", "");
    const { code, transcript } = await session.finish();
    assert.equal(code, 2, transcript);
    assert.match(transcript, /\.env exists and was left as it is/);
    assert.equal(await Deno.readTextFile(`${at.dir}/.env`), "B2_BUCKET_NAME=photos\n");
    assert.equal(at.b2.requests.length, 0, "asked first, before any key is tried");
  } finally {
    await at.close();
  }
});
