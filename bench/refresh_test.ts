import assert from "node:assert/strict";
import { parseConfig } from "../main.ts";
import { fakeSettings, REFRESH_SCENARIOS } from "./refresh.ts";
import { startBenchB2 } from "./processes.ts";

// The bench's refresh section is run only by `deno task bench`: without this, a rule refresh
// gains (a bucket name B2 allows) stops the bench, and no test says so.
Deno.test("the bench's refresh scenarios are settings that parseConfig() accepts", async () => {
  const b2 = startBenchB2([]);
  try {
    for (const { scenario, settings } of REFRESH_SCENARIOS) {
      const all = fakeSettings(b2, "http://127.0.0.1:9/client/v4", settings);
      assert.doesNotThrow(() => parseConfig(all, { b2: true, cloudflare: true }), scenario);
    }
  } finally {
    await b2.close();
  }
});
