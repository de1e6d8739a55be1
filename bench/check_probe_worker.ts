/**
 * For the benchmark: a module worker that repeats, `n` times in one request,
 * the signed-link work our worker does on every request (read the bindings,
 * parse the URL, `checkSignedLink()`, `applyGrant()`), imported from
 * `worker_template.ts` itself. Over thousands of repetitions workerd's CPU
 * time tells what that work costs in workerd, apart from the HTTP hop whose
 * noise hides it in a load test.
 *
 * `GET /?n=<count>&url=<request URL to check>[&off]`: with `off`, the same
 * bindings without protected prefixes (the feature turned off). Answers the
 * last check's `access`.
 *
 * `signed_links.ts` strips the types, points the import below at the
 * upload's module and runs it in workerd in front of it, like the real
 * worker.
 *
 * @module
 */

import { applyGrant, checkSignedLink, type Env, readConfig } from "../worker_template.ts";

export default {
  async fetch(request: Request, env: Env): Promise<Response> {
    const params = new URL(request.url).searchParams;
    const count = Number(params.get("n"));
    const target = params.get("url") ?? "";
    // What a worker deployed without protected prefixes is given.
    const bindings = params.has("off") ? { ...env, WORKER_SIGNED_PREFIXES: "" } : env;
    let access = "";
    for (let i = 0; i < count; i++) {
      const { signing } = readConfig(bindings);
      const now = Math.floor(Date.now() / 1000);
      const check = await checkSignedLink(new URL(target), { signing, now });
      const answer = new Response(null, { headers: { "Cache-Control": "public, max-age=3600" } });
      applyGrant(answer, check, now);
      access = check.access;
    }
    return new Response(access);
  },
};
