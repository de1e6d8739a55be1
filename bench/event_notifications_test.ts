import assert from "node:assert/strict";
import { formatEventNotifications, judgeEventNotifications } from "./event_notifications.ts";
import { eventNotifications } from "./test_figures.ts";

Deno.test("judgeEventNotifications() misses a stale GET or a burst left unacknowledged", () => {
  assert.deepEqual(judgeEventNotifications(eventNotifications()).filter((t) => !t.met), []);
  const missed = judgeEventNotifications(eventNotifications({
    freshMisses: 19,
    bursts: [{ ...eventNotifications().bursts[0]!, unacknowledged: 3 }],
  })).filter((t) => !t.met).map((t) => t.detail);
  assert.deepEqual(missed, [
    "median 12.0 ms, max 30.0 ms; 19/20 fresh MISS",
    "10,000 events: 3 unacknowledged, 0 refused",
  ]);
});

Deno.test("formatEventNotifications() prints purges per 1,000 events for each burst", () => {
  const text = formatEventNotifications(eventNotifications()).join("\n");
  assert.match(text, /10,000 events +380 +20 +2 +2 +2\.2 +16\.0 s/);
});
