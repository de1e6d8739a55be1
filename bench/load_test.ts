import assert from "node:assert/strict";
import { load } from "./load.ts";

Deno.test("load() keeps its connections busy, counts failures and stops at its bound", async () => {
  let served = 0;
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, () => {
    served++;
    return new Response("x", { status: served % 2 === 0 ? 500 : 200 });
  });
  try {
    const result = await load(`http://127.0.0.1:${server.addr.port}/`, {
      connections: 4,
      seconds: 10,
      maxRequests: 200,
    });
    assert.equal(result.requests, 200);
    assert.equal(served, 200);
    assert.equal(result.errors, 100);
    assert.ok(result.p50Us > 0 && result.p50Us <= result.p99Us, JSON.stringify(result));
    assert.ok(result.durationUs < 10e6, "stopped at 200 requests, not after 10 s");
  } finally {
    await server.shutdown();
  }
});
