/**
 * A local stand-in for the two kinds of dead man's switch `REFRESH_PING_URL` may name, for tests:
 * healthchecks.io's ping API (`/ping/<uuid>`, `/start`, `/fail`, `/<exit status>`) and an Uptime
 * Kuma push monitor (`/api/push/<token>?status=&msg=`). It records every ping it takes, with its
 * body, and answers as each service does (API_FACTS, "Alerts for cron jobs", cited per
 * behaviour). {@linkcode FakeMonitor.hang} makes it take requests and never answer, as a monitor
 * behind a dead proxy does.
 *
 * ```ts
 * const monitor = startFakeMonitor({ checks: ["5e2b..."] });
 * // ... REFRESH_PING_URL=`${monitor.url}/ping/5e2b...` ...
 * console.log(monitor.pings);
 * await monitor.close();
 * ```
 *
 * @module
 */

/** The checks and push monitors the stand-in knows. */
export interface FakeMonitorOptions {
  /** healthchecks.io check UUIDs that exist. @default [] */
  checks?: string[];
  /** Uptime Kuma push tokens of active monitors. @default [] */
  pushTokens?: string[];
}

/** A ping as the stand-in took it. */
export interface Ping {
  /** Which service's API it came to. */
  service: "healthchecks" | "uptime-kuma";
  /** The check's UUID or the push token. */
  check: string;
  /**
   * What it reported: healthchecks.io `start`, `success` (the bare URL or exit status 0),
   * `fail` (or another exit status, as `exit <n>`); Uptime Kuma `success` (`status=up`) or
   * `fail` (any other status).
   */
  event: "start" | "success" | "fail" | `exit ${number}`;
  /** The request's method. */
  method: string;
  /** healthchecks.io: the body as kept; Uptime Kuma: the `msg` query parameter. */
  body: string;
}

/** healthchecks.io keeps the first 100,000 bytes of a body (API_FACTS, "Alerts for cron jobs"). */
const KEPT_BODY_BYTES = 100_000;

/** A running stand-in. */
export interface FakeMonitor {
  /** Its origin, `http://127.0.0.1:<port>`. */
  url: string;
  /** Every ping taken, in order. */
  pings: Ping[];
  /** From now on, takes every request and answers none until closed. */
  hang(): void;
  /** How many requests it took, answered or not. */
  requests(): number;
  /** Stops it; requests left hanging are answered 503 first. */
  close(): Promise<void>;
}

/** Starts the stand-in on a free port of 127.0.0.1. */
export function startFakeMonitor(options: FakeMonitorOptions = {}): FakeMonitor {
  const checks = new Set(options.checks ?? []);
  const tokens = new Set(options.pushTokens ?? []);
  const pings: Ping[] = [];
  const hanging: (() => void)[] = [];
  let hangs = false;
  let requests = 0;
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (request) => {
    requests++;
    if (hangs) {
      const { promise, resolve } = Promise.withResolvers<Response>();
      hanging.push(() => resolve(new Response("stopped", { status: 503 })));
      return promise;
    }
    const url = new URL(request.url);
    if (url.pathname.startsWith("/api/push/")) return kumaPush(url, { tokens, pings });
    return healthchecksPing(request, { checks, pings });
  });
  return {
    url: `http://127.0.0.1:${server.addr.port}`,
    pings,
    hang: () => void (hangs = true),
    requests: () => requests,
    async close() {
      for (const answer of hanging.splice(0)) answer();
      await server.shutdown();
    },
  };
}

/**
 * healthchecks.io's ping API: `<uuid>` success, `/start`, `/fail`, `/<0-255>` an exit status
 * (0 success); HEAD, GET or POST; answer 200 `OK`; a POST body is the run's log, of which the
 * first 100,000 bytes are kept (API_FACTS, "Alerts for cron jobs"). Assumption: an unknown
 * UUID or another path is 404 `not found`, and another method 405.
 */
async function healthchecksPing(
  request: Request,
  state: { checks: Set<string>; pings: Ping[] },
): Promise<Response> {
  const match = /^\/ping\/([0-9a-f-]+)(?:\/(start|fail|\d{1,3}))?\/?$/
    .exec(new URL(request.url).pathname);
  const suffix = match?.[2];
  const status = suffix !== undefined && /^\d+$/.test(suffix) ? Number(suffix) : undefined;
  if (!match || !state.checks.has(match[1]!) || (status !== undefined && status > 255)) {
    await request.body?.cancel();
    return new Response("not found", { status: 404 });
  }
  if (!["HEAD", "GET", "POST"].includes(request.method)) {
    await request.body?.cancel();
    return new Response("Method not allowed", { status: 405 });
  }
  const bytes = new Uint8Array(await request.arrayBuffer()).subarray(0, KEPT_BODY_BYTES);
  const event = suffix === "start" || suffix === "fail"
    ? suffix
    : status === undefined || status === 0
    ? "success"
    : `exit ${status}` as const;
  state.pings.push({
    service: "healthchecks",
    check: match[1]!,
    event,
    method: request.method,
    body: new TextDecoder().decode(bytes),
  });
  return new Response("OK", { headers: { "content-type": "text/plain; charset=utf-8" } });
}

/**
 * An Uptime Kuma push monitor: `router.all("/api/push/:pushToken")`, so any method, and only the
 * query is read: `status` (`up`, any other value down), `msg` (default `OK`). An unknown or
 * inactive token is 404 `{"ok":false,"msg":"Monitor not found or not active."}`, success
 * `{"ok":true}` (API_FACTS, "Alerts for cron jobs"). Assumption: a longer path, such as
 * `<url>/start`, matches no route and gets Express's own 404 page.
 */
function kumaPush(url: URL, state: { tokens: Set<string>; pings: Ping[] }): Response {
  const match = /^\/api\/push\/([^/]+)\/?$/.exec(url.pathname);
  if (!match) {
    return new Response(`<pre>Cannot GET ${url.pathname}</pre>`, {
      status: 404,
      headers: { "content-type": "text/html; charset=utf-8" },
    });
  }
  if (!state.tokens.has(match[1]!)) {
    return Response.json({ ok: false, msg: "Monitor not found or not active." }, { status: 404 });
  }
  state.pings.push({
    service: "uptime-kuma",
    check: match[1]!,
    event: url.searchParams.get("status") === "up" ? "success" : "fail",
    method: "GET",
    body: url.searchParams.get("msg") ?? "OK",
  });
  return Response.json({ ok: true });
}
