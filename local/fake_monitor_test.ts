import assert from "node:assert/strict";
import { startFakeMonitor } from "./fake_monitor.ts";

const CHECK = "5e2b7c1a-0d5f-4c43-9a0e-0123456789ab";
const TOKEN = "AbCdEf1234";

Deno.test("the monitor stand-in takes healthchecks.io's start, success, fail and exit pings with their bodies", async () => {
  const monitor = startFakeMonitor({ checks: [CHECK] });
  try {
    const ping = async (path: string, init: RequestInit = {}) => {
      const response = await fetch(`${monitor.url}/ping/${CHECK}${path}`, init);
      return [response.status, await response.text()];
    };
    assert.deepEqual(await ping("/start", { method: "POST", body: "" }), [200, "OK"]);
    assert.deepEqual(await ping("", { method: "POST", body: "done\nall good" }), [200, "OK"]);
    assert.deepEqual(await ping("/fail", { method: "POST", body: "error: x" }), [200, "OK"]);
    assert.deepEqual(await ping("/0"), [200, "OK"]);
    assert.deepEqual(await ping("/3", { method: "HEAD" }), [200, ""]);
    assert.deepEqual(monitor.pings.map(({ event, method, body }) => [event, method, body]), [
      ["start", "POST", ""],
      ["success", "POST", "done\nall good"],
      ["fail", "POST", "error: x"],
      ["success", "GET", ""],
      ["exit 3", "HEAD", ""],
    ]);
  } finally {
    await monitor.close();
  }
});

Deno.test("the monitor stand-in keeps the first 100,000 bytes of a body, as healthchecks.io does", async () => {
  const monitor = startFakeMonitor({ checks: [CHECK] });
  try {
    await (await fetch(`${monitor.url}/ping/${CHECK}`, {
      method: "POST",
      body: "x".repeat(100_010),
    }))
      .body?.cancel();
    assert.equal(monitor.pings[0]?.body.length, 100_000);
  } finally {
    await monitor.close();
  }
});

Deno.test("the monitor stand-in refuses an unknown check, exit status or method", async () => {
  const monitor = startFakeMonitor({ checks: [CHECK] });
  try {
    for (
      const [path, method, status] of [
        [`/ping/${CHECK.replace("5", "6")}`, "POST", 404],
        [`/ping/${CHECK}/256`, "GET", 404],
        [`/ping/${CHECK}/log2`, "GET", 404],
        [`/ping/${CHECK}`, "PUT", 405],
      ] as const
    ) {
      const response = await fetch(`${monitor.url}${path}`, { method });
      await response.body?.cancel();
      assert.equal(response.status, status, `${method} ${path}`);
    }
    assert.deepEqual(monitor.pings, []);
  } finally {
    await monitor.close();
  }
});

Deno.test("the monitor stand-in answers an Uptime Kuma push by its query, and 404 to /start", async () => {
  const monitor = startFakeMonitor({ pushTokens: [TOKEN] });
  try {
    const push = async (path: string) => {
      const response = await fetch(`${monitor.url}/api/push/${path}`, { method: "POST" });
      return [response.status, await response.text()];
    };
    assert.deepEqual(await push(`${TOKEN}?status=up&msg=Deployed`), [200, '{"ok":true}']);
    assert.deepEqual(await push(`${TOKEN}?status=down&msg=error%3A+x`), [200, '{"ok":true}']);
    assert.deepEqual(await push(TOKEN), [200, '{"ok":true}']);
    assert.deepEqual(await push("unknown?status=up"), [
      404,
      '{"ok":false,"msg":"Monitor not found or not active."}',
    ]);
    const [status] = await push(`${TOKEN}/start`);
    assert.equal(status, 404);
    assert.deepEqual(monitor.pings.map(({ event, body }) => [event, body]), [
      ["success", "Deployed"],
      ["fail", "error: x"],
      ["fail", "OK"],
    ]);
  } finally {
    await monitor.close();
  }
});

Deno.test("the monitor stand-in, hanging, answers nothing until it is closed", async () => {
  const monitor = startFakeMonitor({ checks: [CHECK] });
  monitor.hang();
  const answer = fetch(`${monitor.url}/ping/${CHECK}`, { signal: AbortSignal.timeout(300) });
  await assert.rejects(answer, (error: Error) => error.name === "TimeoutError");
  assert.equal(monitor.requests(), 1);
  assert.deepEqual(monitor.pings, []);
  await monitor.close();
});
