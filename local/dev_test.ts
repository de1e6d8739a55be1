import assert from "node:assert/strict";
import { run } from "../main.ts";
import { type FakeB2, startFakeB2 } from "./fake_b2.ts";
import { portIsFree, ROOT, stillRunning, whileServing } from "../testing/serving.ts";
import { childEnv } from "../testing/child_env.ts";

const B2_KEY = "fake-application-key";
const PHOTO = { name: "site/cat.jpg", body: "pretend this is a cat", contentType: "image/jpeg" };
const READY = /runs in workerd at (http:\/\/127\.0\.0\.1:\d+)/;

/** A stand-in B2 with one photo, and the settings dev needs: B2's only. */
function bucket(): { b2: FakeB2; env: Record<string, string> } {
  const b2 = startFakeB2({ buckets: [{ id: "bucket-photos", name: "photos", files: [PHOTO] }] });
  return {
    b2,
    env: {
      B2_APPLICATION_KEY_ID: "fake-key-id",
      B2_APPLICATION_KEY: B2_KEY,
      B2_BUCKET_NAME: "photos",
      B2_FILE_PREFIX: "site/",
      B2_API_URL: b2.url,
    },
  };
}

/** Neither the key nor a download token the stand-in issued appears in `text`. */
function assertNoSecret(b2: FakeB2, text: string): void {
  for (const secret of [B2_KEY, ...b2.downloadTokens.keys(), ...b2.accountTokens]) {
    assert.ok(!text.includes(secret), "a secret was printed");
  }
}

Deno.test("dev serves the bucket through the real worker with B2 credentials only", async (t) => {
  const downloads = (b2: FakeB2) => b2.requests.filter((r) => r.path.startsWith("/file/")).length;
  await t.step("behind the Workers Cache stand-in: MISS, then HIT without B2", async () => {
    const { b2, env } = bucket();
    try {
      let origin = "";
      const served = await whileServing(["dev"], { env, urlPattern: READY }, async (url) => {
        origin = url;
        const statuses = [];
        for (let i = 0; i < 2; i++) {
          const response = await fetch(`${url}/cat.jpg`);
          assert.equal(response.status, 200);
          assert.equal(await response.text(), PHOTO.body);
          statuses.push(response.headers.get("cf-cache-status"));
        }
        assert.deepEqual(statuses, ["MISS", "HIT"]);
        assert.equal(downloads(b2), 1, "the hit never reached B2");
        // dev's worker holds the purge key refresh would give it: purge works against it.
        const out: string[] = [];
        const purged = await run({
          args: ["purge", "/cat.jpg", "--url", url],
          env,
          readEnvFile: () => Promise.resolve(undefined),
          io: { stdout: (line) => out.push(line), stderr: (line) => out.push(line) },
        });
        assert.equal(purged, 0, out.join("\n"));
        const again = await fetch(`${url}/cat.jpg`);
        await again.body?.cancel();
        assert.equal(again.headers.get("cf-cache-status"), "MISS");
      });
      assert.equal(served.code, 0, served.stderr);
      assert.match(served.stdout, /behind a stand-in for Workers Cache/);
      assertNoSecret(b2, served.stdout + served.stderr);
      assert.deepEqual(await stillRunning(served.children), [], "workerd is gone");
      assert.ok(portIsFree(Number(new URL(origin).port)));
    } finally {
      await b2.close();
    }
  });
  await t.step("in the Cache API mode the stand-in passes every request on", async () => {
    const { b2, env } = bucket();
    try {
      const { code, stdout, stderr } = await whileServing(["dev"], {
        env: { ...env, WORKER_CACHE_MODE: "cache-api" },
        urlPattern: READY,
        signal: "SIGTERM",
      }, async (url) => {
        const response = await fetch(`${url}/cat.jpg`);
        assert.equal(await response.text(), PHOTO.body);
        assert.equal(response.headers.get("cf-cache-status"), null);
      });
      assert.equal(code, 0, stderr);
      assert.match(stdout, /Edge cache: cache-api: every request runs the worker/);
      assertNoSecret(b2, stdout + stderr);
    } finally {
      await b2.close();
    }
  });
});

Deno.test("dev on a taken port exits 2 naming the port and --port", async () => {
  const { b2, env } = bucket();
  using taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = taken.addr.port;
  try {
    const { code, stderr } = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", `--lock=${ROOT}deno.lock`, `${ROOT}local/dev.ts`, "--port", `${port}`],
      cwd: ROOT,
      env: childEnv({ NO_COLOR: "1", ...env }),
      clearEnv: true,
      stdout: "null",
    }).output();
    const text = new TextDecoder().decode(stderr);
    assert.equal(code, 2, text);
    assert.match(
      text,
      new RegExp(`^error: Port ${port} is taken: .*deno task dev --port \\d+\\.\\n$`),
    );
    assertNoSecret(b2, text);
  } finally {
    await b2.close();
  }
});
