import assert from "node:assert/strict";
import { formatListings, judgeListings, listingViews } from "./listings.ts";
import { listings } from "./test_figures.ts";

Deno.test("listingViews() spreads the same views over the hour for a seed, most on the first page", () => {
  const views = listingViews();
  assert.deepEqual(views, listingViews());
  assert.equal(views.length, 1000);
  assert.equal(views.at(-1)!.at, 3596);
  const first = views.filter((v) => v.url === "/archive/").length;
  assert.ok(first > 500 && first < 700, `${first} views of the first page`);
});

Deno.test("judgeListings() holds the cache to one list call a page per TTL, and no failed view", async (t) => {
  await t.step("met", () => {
    assert.deepEqual(judgeListings(listings()).map((target) => target.met), [true]);
  });
  await t.step("a list call a view with the cache on is missed", () => {
    const [target] = judgeListings(listings({ classC: 1001 }));
    assert.equal(target!.met, false);
    assert.match(target!.detail, /^1001 Class C for 1000 views \(at most 245\)/);
  });
  await t.step("a failed view is missed", () => {
    assert.equal(judgeListings(listings({ errors: 1 }))[0]!.met, false);
  });
});

Deno.test("formatListings() prints each run's Class C per 1,000 views and a month's cost of a page", () => {
  const lines = formatListings(listings());
  assert.match(lines[0]!, /^Folder listings: 1000 views of a folder of 2500 names \(4 page URLs\)/);
  assert.match(lines.join("\n"), /cache on, TTL 60 s \(the default\) +199 +1 +200\.0/);
  assert.match(lines.at(-1)!, /at most 43,200 Class C, \$0\.17 past the 2,500 free a day$/);
});
