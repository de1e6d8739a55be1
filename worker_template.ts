/**
 * The Cloudflare Worker that serves a private Backblaze B2 bucket as a public,
 * cacheable site. `refresh` uploads this file with its types stripped and sets
 * the bindings of {@linkcode Env}; nothing else configures it.
 *
 * A module worker may only export functions and its entrypoints (workerd
 * refuses to start otherwise), so every other constant here stays private.
 *
 * The sections follow a request: the bindings and constants; the request
 * (`fetch`, then `respond()` and the Workers Cache mode); purges; settings;
 * names; ranges and conditionals; headers; bodies; the Cache API; B2; the
 * answer; then what only some requests meet: large objects, segments in
 * Workers Cache, signed links, event notifications and folder listings.
 *
 * @module
 */

// ---------------------------------------------------------------------------
// Bindings, types and constants
// ---------------------------------------------------------------------------

/** The bindings `refresh` sets. Options absent from an older deploy get their defaults. */
export interface Env {
  /** When the deploying run pinged REFRESH_PING_URL, for `status`; the worker does not read it. */
  REFRESH_PINGED?: string;
  /** The B2 download authorization token (a secret binding). */
  B2_DOWNLOAD_TOKEN: string;
  /** Like `https://f004.backblazeb2.com`. */
  B2_DOWNLOAD_URL: string;
  /** The bucket the token reads. */
  B2_BUCKET_NAME: string;
  /** Prepended to every name; empty serves the whole bucket. @default "" */
  B2_FILE_PREFIX?: string;
  /** ISO 8601, for whoever reads the worker's settings; the worker does not need them. */
  B2_TOKEN_ISSUED_AT?: string;
  /** ISO 8601, as `B2_TOKEN_ISSUED_AT`; what `status` judges. */
  B2_TOKEN_EXPIRES_AT?: string;
  /** `plain`: `/<path>` serves `<prefix><path>`; `b2`: `/file/<bucket>/<name>`. @default "plain" */
  WORKER_URL_STYLE?: string;
  /** Served for `/` and paths ending in `/`; empty turns it off. @default "index.html" */
  WORKER_INDEX_FILE?: string;
  /** Seconds the edge keeps an object; 0 turns the edge cache off. @default "86400" */
  WORKER_CACHE_TTL?: string;
  /** `Cache-Control` for browsers; empty keeps the object's own. @default "" */
  WORKER_CACHE_CONTROL?: string;
  /** Empty (no CORS), `*`, or a comma list of origins. @default "" */
  WORKER_CORS_ORIGINS?: string;
  /** Milliseconds to wait for B2's response headers. @default "30000" */
  WORKER_B2_TIMEOUT_MS?: string;
  /**
   * What HTML, SVG, XML and XHTML objects may do on the site's origin: `serve` them as they
   * are (a static site), `sandbox` them (`Content-Security-Policy: sandbox`: they render, no
   * script runs) or make them a `download`. @default "serve"
   */
  WORKER_ACTIVE_CONTENT?: string;
  /** Comma list of public path prefixes that need a signed link. @default "" */
  WORKER_SIGNED_PREFIXES?: string;
  /** The key links are signed with, base64url (a secret binding). */
  WORKER_SIGNING_KEY?: string;
  /** The key before the last rotation (a secret binding). */
  WORKER_SIGNING_KEY_PREVIOUS?: string;
  /** ISO 8601: links signed with the previous key are accepted until then. */
  WORKER_SIGNING_KEY_PREVIOUS_UNTIL?: string;
  /** Seconds: the longest life a link may claim. @default "604800" */
  WORKER_SIGNED_MAX_TTL?: string;
  /**
   * Which edge cache keeps objects: `workers-cache` (Cloudflare's tiered cache in front of the
   * worker, driven by the headers set here), `cache-api` (`caches.default`, in the worker) or
   * `off`. Absent means a deploy by an older `refresh`, which only knew the Cache API.
   * @default "cache-api"
   */
  WORKER_CACHE_MODE?: string;
  /** Workers Cache: seconds a stale object is served while it is revalidated. @default "86400" */
  WORKER_STALE_WHILE_REVALIDATE?: string;
  /** Workers Cache: seconds a stale object is served while the worker fails. @default "604800" */
  WORKER_STALE_IF_ERROR?: string;
  /** Hex HMAC-SHA256 key that signs purge requests (a secret binding); absent turns purge off. */
  WORKER_PURGE_KEY?: string;
  /** What `refresh` computed from everything that shapes an answer; purge answers echo it. */
  WORKER_FINGERPRINT?: string;
  /** A purge `refresh` still owes (read back by `refresh`, not by the worker). */
  WORKER_PURGE_PENDING?: string;
  /** What B2 signs Event Notifications with, 32 alphanumerics (a secret binding); absent: off. */
  B2_EVENT_NOTIFICATION_SECRET?: string;
  /**
   * Seconds between purges of everything while a burst of changes is coalesced. `refresh`
   * does not set it: it lets tests and the bench see a burst end quickly. @default "15"
   */
  WORKER_EVENT_COALESCE_SECONDS?: string;
  /** Bytes of one segment of a large object; 0 turns segmenting off. @default "8388608" */
  WORKER_SEGMENT_SIZE?: string;
  /**
   * Bytes above which an object is large (segmented, never stored whole). Never above the
   * cache's own limit; `refresh` does not set it: it lets tests and the bench use small objects.
   * @default the limit of the cache in use
   */
  WORKER_SEGMENT_THRESHOLD?: string;
  /** `on`: a folder without its index file answers a listing of it. @default "off" */
  WORKER_LISTING?: string;
  /** Seconds the edge keeps a listing. @default "60" */
  WORKER_LISTING_TTL?: string;
  /** The id of the key that may only list (a secret binding). */
  B2_LISTING_KEY_ID?: string;
  /** The key that may only list (a secret binding). */
  B2_LISTING_KEY?: string;
  /** Where refresh authorized, so the listing key authorizes there too. @default B2's */
  B2_API_URL?: string;
  /**
   * Names one listing page asks B2 for. `refresh` does not set it: it lets tests and the
   * bench page through small folders. @default "1000"
   */
  WORKER_LISTING_PAGE_SIZE?: string;
}

/** What `ctx.cache.purge` takes (Workers Cache; developers.cloudflare.com/workers/cache/purge/). */
export interface PurgeOptions {
  tags?: string[];
  pathPrefixes?: string[];
  purgeEverything?: boolean;
}

/** What `ctx.cache.purge` resolves to; `success: false` when refused or rate limited. */
export interface PurgeResult {
  success: boolean;
  errors: { code: number; message: string }[];
}

/** What a loopback binding of `ctx.exports` offers: a fetch to one of this worker's entrypoints. */
export interface Fetcher {
  fetch(request: Request): Promise<Response>;
}

/** The part of the Workers runtime this module uses; Deno's lib does not declare it. */
export interface ExecutionContext {
  waitUntil(promise: Promise<unknown>): void;
  /** Workers Cache; optional in Cloudflare's own types, and absent where it is off. */
  cache?: { purge(options: PurgeOptions): Promise<PurgeResult> };
  /**
   * Loopback bindings to this module's entrypoints, by export name (workerd from the
   * compatibility date 2025-11-17, `enable_ctx_exports`); absent in older runtimes.
   */
  exports?: Record<string, Fetcher | undefined>;
}

/** Which edge cache keeps objects. */
export type CacheMode = "workers-cache" | "cache-api" | "off";

/** What HTML, SVG, XML and XHTML objects may do on the site's origin (`WORKER_ACTIVE_CONTENT`). */
export type ActiveContent = "serve" | "sandbox" | "download";

/** {@linkcode Env} parsed once per request, defaults applied. */
export interface WorkerConfig {
  token: string;
  downloadUrl: string;
  bucketName: string;
  prefix: string;
  urlStyle: "plain" | "b2";
  indexFile: string;
  cacheTtl: number;
  cacheControl: string;
  corsOrigins: string[];
  timeoutMs: number;
  activeContent: ActiveContent;
  signing: SigningConfig;
  cacheMode: CacheMode;
  staleWhileRevalidate: number;
  staleIfError: number;
  purgeKey: string;
  fingerprint: string;
  /** Bytes of one segment; 0 when segmenting is off. */
  segmentSize: number;
  /** Bytes above which an object is large: the cache in use cannot hold it whole. */
  segmentThreshold: number;
  /** Folder listings; absent when off. */
  listing?: ListingConfig;
}

/** The B2 name a path maps to, or the status that refuses it. */
export type ObjectName = { name: string } | { status: 400 | 404 };

/** One range of a `Range: bytes=` header: from `start` (to `end`), or the last `suffix` bytes. */
export type RangeSpec = { start: number; end?: number } | { suffix: number };

/** Inclusive byte offsets within an object of known size. */
export interface ByteRange {
  start: number;
  end: number;
}

/**
 * The facts main.ts must agree with, defined here once: where purges and events are sent, the
 * purge request's headers and the defaults the worker applies. A module worker exports only
 * functions and its entrypoints, so they are handed out by this one.
 */
export function sharedFacts(): {
  purgePath: string;
  eventsPath: string;
  purgeTimestampHeader: string;
  purgeSignatureHeader: string;
  defaultStaleWhileRevalidate: number;
  defaultStaleIfError: number;
  defaultSegmentSize: number;
  defaultSignedMaxTtl: number;
} {
  return {
    purgePath: PURGE_PATH,
    eventsPath: EVENTS_PATH,
    purgeTimestampHeader: PURGE_TIMESTAMP_HEADER,
    purgeSignatureHeader: PURGE_SIGNATURE_HEADER,
    defaultStaleWhileRevalidate: DEFAULT_STALE_WHILE_REVALIDATE,
    defaultStaleIfError: DEFAULT_STALE_IF_ERROR,
    defaultSegmentSize: DEFAULT_SEGMENT_SIZE,
    defaultSignedMaxTtl: DEFAULT_SIGNED_MAX_TTL,
  };
}

// Bumped whenever the same object and settings would be answered differently (headers, status,
// mapping of paths to names): refresh then purges everything cached by older answers. 3: an
// ETag made from a file id no longer carries the bucket's id. 4: a path or query spelled
// otherwise than canonicalTarget() writes it is a 301, no longer an entry of its own. 5: answers
// in the b2 URL style describe their object with B2's own headers. 6: WORKER_ACTIVE_CONTENT reads
// Content-Type as a browser does (lists, text/xsl, unknown types), and a listing or a 304 is
// answered otherwise with it. 7: `?download` is a download link (a stored 301 would keep sending
// it to the bare path), and listings offer it.
// Only main.ts reads it, from this module's text.
const ANSWER_FORMAT = 7;
const DEFAULT_CACHE_TTL = 86_400;
// After its lifetime an object is served stale for a day while one request revalidates it
// (a HEAD to B2 when it did not change), so no visitor waits for B2 on a popular object.
const DEFAULT_STALE_WHILE_REVALIDATE = 86_400;
// A week: an expired token or a B2 outage keeps cached objects flowing for as long as a
// download token can live, which is longer than any refresh should stay broken.
const DEFAULT_STALE_IF_ERROR = 604_800;
// Where signed purge requests are POSTed. Unsigned ones get what a POST anywhere gets (405).
const PURGE_PATH = "/.well-known/b2-private-cdn/purge";
const PURGE_TIMESTAMP_HEADER = "X-B2cdn-Timestamp";
const PURGE_SIGNATURE_HEADER = "X-B2cdn-Signature";
// A signed request is good this long either side of the worker's clock, then refused.
const PURGE_WINDOW_SECONDS = 300;
// Workers Cache accepts at most 100 operations a purge
// (developers.cloudflare.com/workers/cache/purge/).
const MAX_PURGE_OPERATIONS = 100;
const MAX_PURGE_BODY_BYTES = 64 * 1024;
// Signatures already used by this isolate; another isolate may accept a replay within the
// window, which purges the same objects again and nothing else.
const usedSignatures = new Map<string, number>();
// Hex characters of SHA-256 in an object's tag: 160 bits, far from any collision.
const TAG_HEX_LENGTH = 40;
// The tags of names this isolate served lately: a large object's answer names its tag in the
// key of its facts and of every segment, and a purge or a notification in each of its names.
const TAGS = new Map<string, Promise<string>>();
const REMEMBERED_TAGS = 1000;
// What browsers get when neither WORKER_CACHE_CONTROL nor the object has a say: short enough
// that a replaced file shows up within the hour.
const DEFAULT_BROWSER_CACHE_CONTROL = "public, max-age=3600";
// Well past B2's usual first byte, yet before a visitor gives up on the page.
const DEFAULT_B2_TIMEOUT_MS = 30_000;
// A missing file may be uploaded any moment, so the edge remembers a 404 for a minute only.
const NOT_FOUND_TTL = 60;
// Larger objects stream past the edge cache. The copy for the cache is a tee of the body,
// and a tee holds whatever the visitor has not read yet: a slow visitor of a large video
// would hold most of it in an isolate that has 128 MB.
const MAX_CACHED_BYTES = 100 * 1024 * 1024;
// What a decoded segment may not hold: a separator of either kind, or a control character.
const HOSTILE_CHARACTER = /[/\\\p{Cc}]/u;
// B2 refuses longer names; refusing them here spares the round trip.
const MAX_NAME_BYTES = 1024;
// What a visitor may see of an object. Everything else B2 sends (x-bz-*, its own dates)
// stays at the edge, but for B2_OBJECT_HEADERS in the b2 URL style.
const PUBLIC_HEADERS = [
  "accept-ranges",
  "content-disposition",
  "content-encoding",
  "content-language",
  "content-length",
  "content-range",
  "content-type",
  "etag",
  "expires",
  "last-modified",
];
// What B2's own download answers say of their object: its id, name, SHA-1 and upload time, and
// the file info its uploader set (x-bz-info-*, large_file_sha1 and src_last_modified_millis
// among them). The b2 URL style passes them on, on every answer of an object, since clients made
// for B2 read them there: rclone's --b2-download-url takes an object's id, SHA-1 (its hash
// check) and modification time from a GET's or HEAD's headers, replacing its listing's
// (rclone backend/b2/b2.go, getOrHead and decodeMetaDataRaw, at v1.60.1). No other x-bz-*
// header of B2's answer (how B2 handled the request) goes on. The plain style shows none.
const B2_OBJECT_HEADERS = [
  "x-bz-file-id",
  "x-bz-file-name",
  "x-bz-content-sha1",
  "x-bz-upload-timestamp",
];
const B2_FILE_INFO_PREFIX = "x-bz-info-";
// The cached copy carries the edge's lifetime in Cache-Control, so the one meant for
// browsers travels beside it; PUBLIC_HEADERS keeps it from ever reaching a visitor.
const BROWSER_CACHE_CONTROL_HEADER = "x-b2cdn-browser-cache-control";
// Workers Cache reads the edge's lifetime here first and strips it before visitors.
const CDN_CACHE_CONTROL_HEADER = "Cloudflare-CDN-Cache-Control";
// What a player's script needs to read to seek and revalidate.
const EXPOSED_HEADERS = "Accept-Ranges, Content-Length, Content-Range, ETag, Last-Modified";
// The types a browser runs script in when it opens them, by essence: HTML, XML (which XSLT and
// XHTML namespaces can make a page of; Chromium and Firefox render text/xsl as XML too), every
// +xml type (SVG and XHTML among them), and multipart/x-mixed-replace, whose parts Firefox renders
// as pages.
const ACTIVE_CONTENT_TYPE =
  /^(text\/html|text\/xml|text\/xsl|application\/xml|multipart\/x-mixed-replace|.+\/.+\+xml)$/;
// A MIME type's essence as a browser parses it (Fetch, "parse a MIME type"): two HTTP tokens.
const MIME_ESSENCE = /^\s*([!#$%&'*+.^_`|~0-9a-z-]+\/[!#$%&'*+.^_`|~0-9a-z-]+)\s*(;|$)/i;
// Types a browser sniffs, which may find a page (MIME Sniffing, "unknown MIME type").
const UNKNOWN_TYPES = ["*/*", "unknown/unknown", "application/unknown"];
// What activeContentHeaders() sets, which a 304 carries as the whole answer would.
const ACTIVE_CONTENT_HEADERS = ["Content-Security-Policy", "Content-Disposition"];
// What a 304 carries of the whole answer, as Headers names them (lower case).
const NOT_MODIFIED_HEADERS = new Set(
  ["cache-control", "etag", "last-modified", ...ACTIVE_CONTENT_HEADERS]
    .map((name) => name.toLowerCase()),
);
// One encoder for the isolate (it holds no state): a signed link's message is encoded on every
// request, and each object made through workerd's API costs it there.
const UTF8 = new TextEncoder();
const PREFLIGHT_MAX_AGE = "86400";
const STATUS_TEXT = {
  400: "Bad request",
  403: "Forbidden",
  404: "Not found",
  405: "Method not allowed",
  409: "Conflict",
  416: "Range not satisfiable",
  502: "Bad gateway",
  504: "Gateway timeout",
};

// ---------------------------------------------------------------------------
// The request
// fetch() takes a signed purge or B2's event notification first, then respond() (methods,
// names, one spelling, the Workers Cache mode or the Cache API and B2, the answer), then what
// every answer gets: nosniff, active content and CORS.
// ---------------------------------------------------------------------------

export default {
  async fetch(request: Request, env: Env, ctx: ExecutionContext): Promise<Response> {
    const config = readConfig(env);
    const url = new URL(request.url);
    // Under any path, so that a worker reached only through a route such as example.com/cdn/*
    // can still be asked (the signature covers the fixed PURGE_PATH, not where it was sent).
    if (request.method === "POST" && url.pathname.endsWith(PURGE_PATH)) {
      // Anything not signed, fresh and unused falls through to what any POST gets.
      const purged = await signedPurge(request, { url, config, ctx });
      if (purged) return purged;
    }
    if (request.method === "POST" && url.pathname.endsWith(EVENTS_PATH)) {
      const handled = await eventNotification(request, env, { url, config, ctx });
      if (handled) return handled;
    }
    const visit = await readVisit(request, url, config);
    // Every answer respond() gives is one made here, never B2's or the cache's own, so its
    // headers can be changed in place; so are listings.
    const response = await withListing(
      { visit, config, ctx },
      () => respond(request, visit, { config, ctx }),
    );
    response.headers.set("X-Content-Type-Options", "nosniff");
    // A copy the Cache API kept for a deploy in the b2 style outlives a refresh to the plain one.
    if (config.urlStyle !== "b2") withoutB2Headers(response.headers);
    const cors = corsHeaders(request.headers.get("Origin"), config.corsOrigins, {
      // Workers Cache stores the answer with its CORS headers and serves it to every origin:
      // with "*" it is the same for all of them, so it must not be split by Origin.
      varyOnAnyOrigin: config.cacheMode !== "workers-cache",
    });
    for (const [name, value] of Object.entries(cors)) response.headers.set(name, value);
    if (request.method !== "HEAD" || response.body === null) return response;
    await response.body.cancel();
    return new Response(null, response);
  },
};

/**
 * What fetch() reads of a request once, for every step after it: its URL, the time, what its
 * signed link allows (one HMAC verification a request) and the folder it lists, if any.
 */
interface Visit {
  url: URL;
  /** Unix seconds. */
  now: number;
  link: LinkCheck;
  /** {@linkcode listedFolder}'s answer. */
  folder: string | undefined;
}

async function readVisit(request: Request, url: URL, config: WorkerConfig): Promise<Visit> {
  const now = Math.floor(Date.now() / 1000);
  // Signed links: a protected path is refused before any cache or B2 is asked.
  const link = await checkSignedLink(url, { signing: config.signing, now });
  const folder = listedFolder({ method: request.method, url, link }, config);
  return { url, now, link, folder };
}

async function respond(
  request: Request,
  visit: Visit,
  where: { config: WorkerConfig; ctx: ExecutionContext },
): Promise<Response> {
  const { config, ctx } = where;
  // Methods
  const cors = config.corsOrigins.length > 0;
  const allow = cors ? "GET, HEAD, OPTIONS" : "GET, HEAD";
  if (request.method === "OPTIONS" && cors) return preflight(request, config, allow);
  if (request.method !== "GET" && request.method !== "HEAD") {
    return textResponse(405, { Allow: allow });
  }

  // Names: refused before B2 is asked anything
  const { url, link, now } = visit;
  const name = objectName(url.pathname, config);
  // One spelling per object and per grant, in every mode: any other goes to the canonical
  // one without asking B2, so that no spelling costs a cache entry and a download of its own.
  const listed = visit.folder !== undefined;
  const moved = "status" in name ? undefined : movedToCanonical(url, { link, listed, now, config });
  if (moved) return applyGrant(moved, link, now);
  // A download link names the attachment; a signed link its grant's `dl`, in applyGrant().
  const asked = "status" in name || link.access !== "public" || listed
    ? undefined
    : downloadQuery(url);
  const download = asked && "name" in name ? attachmentName(asked, name.name) : undefined;
  const finish = (answered: Response) => asAttachment(applyGrant(answered, link, now), download);
  if (config.cacheMode === "workers-cache") {
    if (asked?.name) {
      return finish(await namedFromShared(request, { url, ctx }));
    }
    return finish(await behindWorkersCache(request, { url, name, link, now, ctx }, config));
  }
  if ("status" in name) return textResponse(name.status);
  if (link.access === "refused") return textResponse(403);
  return finish(await throughCacheApi(request, { url, name: name.name, ctx }, config));
}

/**
 * The Cache API mode, or no edge cache: a copy kept in the Cache API, a large object's
 * segments, or B2's answer, made the visitor's (conditional, range, a streamed body).
 */
async function throughCacheApi(
  request: Request,
  where: { url: URL; name: string; ctx: ExecutionContext },
  config: WorkerConfig,
): Promise<Response> {
  const { url, name, ctx } = where;
  // Range. With If-Range the answer depends on validators only known once the
  // object is here, so the whole object is fetched and answer() decides.
  const range = parseRange(request.headers.get("Range"));
  const rangeToFetch = request.headers.has("If-Range") ? undefined : range;

  // The Cache API, keyed by the public URL: no query, no token, so it survives rotation.
  // A TTL of 0 or the mode "off" turns it off: nothing is looked up, nothing kept.
  const cacheKey = url.origin + url.pathname;
  const cacheApi = config.cacheMode === "cache-api" && config.cacheTtl > 0;
  const cached = cacheApi ? await lookUpCache(cacheKey, rangeToFetch) : undefined;
  // Large objects: segments, once the edge knows the object is one (or B2 just said so).
  const target = { url, name, config, ctx };
  const known = cached ? undefined : await knownLarge(request, target);
  if (known) return known;
  const large: LargeProbe | undefined = handlesLarge(config)
    ? { above: config.segmentThreshold }
    : undefined;
  const object = cached ??
    await askB2(request.method, name, {
      range: rangeToFetch,
      wholeFromZero: true,
      config,
      ...(cacheApi && { keep: { key: cacheKey, ctx } }),
      ...(large && { large }),
    });
  if (large?.facts) return await learnedLarge(request, large.facts, target);

  // The answer: conditional, range and a streamed body
  return await answer(request, object, { range, config });
}

/**
 * Workers Cache mode: the cache in front of the worker stores what this
 * answers, by path and query, for as long as its headers say. No
 * `caches.default` here: a second copy would make purges miss one.
 */
async function behindWorkersCache(
  request: Request,
  target: { url: URL; name: ObjectName; link: LinkCheck; now: number; ctx: ExecutionContext },
  config: WorkerConfig,
): Promise<Response> {
  const { url, name, link, ctx } = target;
  if ("status" in name) return edgeLifetime(textResponse(name.status), config);
  if (link.access === "refused") return edgeLifetime(textResponse(403), config);
  // A signed link keeps its query (respond() sent every other spelling to the canonical one),
  // so each link is its own entry, kept no longer than the link lives.
  const signedFor = signedLifetime(link, target.now);
  const tag = await objectTag(name.name);
  const large = { url, name: name.name, config, ctx };
  // A large object's answers are never stored here (the cache cannot hold it whole): its
  // segments are kept in the Cache API instead.
  const known = await knownLarge(request, large);
  if (known) return atEdgeNever(known);
  const range = parseRange(request.headers.get("Range"));
  const conditional = request.headers.has("If-None-Match") ||
    request.headers.has("If-Modified-Since");
  const found: LargeProbe = { above: config.segmentThreshold };
  if (conditional && !range) {
    // The cache revalidating a stored copy: a HEAD tells whether it changed, and a 304 spares
    // B2 sending the body again.
    const head = await askB2("HEAD", name.name, { config, large: found });
    if (found.facts) return atEdgeNever(await learnedLarge(request, found.facts, large));
    if (!head.ok || notModified(request.headers, head.headers)) {
      return keptAtEdge(request, await answer(request, head, { config }), {
        config,
        tag,
        signedFor,
      });
    }
  }
  // A Range reaches the worker on every miss, and the cache never stores a 206 made here
  // (developers.cloudflare.com/workers/cache/configuration/, "Status codes that are never
  // cached"): it is answered with the whole object, a 200 the cache stores and answers later
  // ranges from. The size comes with that answer (one B2 request, no probe first). What the
  // cache hands the visitor of that first miss (the whole 200, or a 206 it slices) is its own
  // and not documented; `check-cache` reports it from the real edge. Past the cache's limit,
  // a range takes its first bytes from that same answer (one B2 round trip before them; a
  // range past the first segment asks B2 for its own bytes only, see firstRead()), and the
  // rest of the object is served from segments.
  const first = request.method === "GET" ? firstRead(range, config) : undefined;
  found.keepAnswer = range !== undefined && request.method === "GET";
  let object = await askB2(request.method, name.name, { config, large: found, range: first });
  if (first && object.status === 206 && !found.facts) {
    // It turned out small: the whole object, a 200 the cache keeps and slices the range from.
    await object.body?.cancel();
    object = await askB2(request.method, name.name, { config, large: found });
  }
  if (found.facts) {
    return atEdgeNever(await learnedLarge(request, found.facts, large, found.answer));
  }
  return keptAtEdge(request, await answer(request, object, { config }), {
    config,
    tag,
    signedFor,
  });
}

/**
 * {@linkcode edgeLifetime} for an object's answer, except that a 304 is kept
 * only when it answers the cache's own revalidation, the one 304 Workers
 * Cache is documented to take (it keeps the stored body); a 304 a visitor
 * shaped otherwise (`If-None-Match: *`, a list, another date) is never marked
 * for the edge, so it cannot become the answer everyone gets.
 */
function keptAtEdge(
  request: Request,
  answered: Response,
  options: { config: WorkerConfig; tag: string; signedFor: number | undefined },
): Response {
  const kept = edgeLifetime(answered, options.config, options);
  if (kept.status !== 304 || revalidatesStoredCopy(request.headers, kept.headers)) return kept;
  return atEdgeNever(kept);
}

/**
 * What B2 is asked for when a range reaches an object not known here: `undefined` for the whole
 * object (today's request of any object, which a small one is answered and kept from), or, for
 * a range past the first segment or of the last bytes, only the visitor's own bytes up to the
 * end of the segment they start in. An object under one segment never gets such a range (its
 * bytes all lie in the first), so it costs one request as before, except for a suffix range
 * (`bytes=-N`), whose start is not known before B2 answers; one that turns out small costs a
 * second request, the whole object, which the cache keeps: the default leans toward large
 * objects there, since a first visit that starts a segment or more into an object is a seek or a
 * reader's index lookup, which is what large archives and long videos get. See
 * docs/large-objects.md ("The first viewer").
 */
function firstRead(range: RangeSpec | undefined, config: WorkerConfig): RangeSpec | undefined {
  const size = config.segmentSize;
  if (!range || size === 0) return undefined;
  if ("suffix" in range) return range;
  if (range.start < size) return undefined;
  const segmentEnd = (Math.floor(range.start / size) + 1) * size - 1;
  return { start: range.start, end: Math.min(range.end ?? Infinity, segmentEnd) };
}

/** Keeps an answer out of Workers Cache (and its stale windows): large objects, visitors' 304s. */
function atEdgeNever(response: Response): Response {
  response.headers.set(CDN_CACHE_CONTROL_HEADER, "no-store");
  return response;
}

/**
 * A `301` to {@linkcode canonicalTarget} when the request spells its path or
 * query otherwise; `undefined` when it is canonical already or refused (a
 * refusal is answered as such, never redirected). Behind Workers Cache the
 * redirect is kept like an object, or no longer than its link lives.
 */
function movedToCanonical(
  url: URL,
  options: { link: LinkCheck; listed: boolean; now: number; config: WorkerConfig },
): Response | undefined {
  const { link, listed, now, config } = options;
  if (link.access === "refused") return undefined;
  const canonical = canonicalTarget(url, link, { listed });
  if (canonical === undefined || canonical === spelledTarget(url)) return undefined;
  const moved = movedTo(canonical);
  if (config.cacheMode !== "workers-cache") return moved;
  return edgeLifetime(moved, config, { signedFor: signedLifetime(link, now) });
}

/** A request's path and query as spelled: `/a?` too, which URL.search reads as no query. */
function spelledTarget(url: URL): string {
  return url.pathname + (url.search || (url.href.endsWith("?") ? "?" : ""));
}

/**
 * Whether a conditional request carries exactly the validators Workers Cache
 * builds from a stored copy of this object when it revalidates it
 * (`If-None-Match` with its one ETag; only for an object without one,
 * `If-Modified-Since` with its date): the one 304 the cache is documented to
 * take. A visitor's other shapes (`*`, a list, a weak tag, a date where the
 * object has an ETag, another date) get a 304 the edge never keeps.
 */
export function revalidatesStoredCopy(request: Headers, object: Headers): boolean {
  const etag = object.get("ETag");
  const ifNoneMatch = request.get("If-None-Match");
  if (etag !== null) return ifNoneMatch !== null && ifNoneMatch.trim() === etag;
  const since = request.get("If-Modified-Since");
  return ifNoneMatch === null && since !== null && since.trim() === object.get("Last-Modified");
}

/**
 * Tells Workers Cache what to keep, in `Cloudflare-CDN-Cache-Control` (the
 * edge's own header, stripped before visitors; `max-age`, since `s-maxage`
 * would switch the stale directives off): objects and redirects for the
 * TTL with their stale windows, a 404 briefly, everything else never. The
 * answer to a signed link (`signedFor`: seconds it has left) is kept no
 * longer than the link lives and never served stale, so an expired link's
 * entry is never answered from the cache.
 */
export function edgeLifetime(
  response: Response,
  config: Pick<WorkerConfig, "cacheTtl" | "staleWhileRevalidate" | "staleIfError">,
  options: { tag?: string | undefined; signedFor?: number | undefined } = {},
): Response {
  const { status, headers } = response;
  const { tag, signedFor } = options;
  const cap = (seconds: number) => signedFor === undefined ? seconds : Math.min(seconds, signedFor);
  const stale = signedFor === undefined
    ? `stale-while-revalidate=${config.staleWhileRevalidate}, stale-if-error=${config.staleIfError}`
    : "stale-while-revalidate=0, stale-if-error=0";
  if (status === 200 || status === 304 || status === 301) {
    headers.set(
      CDN_CACHE_CONTROL_HEADER,
      `public, max-age=${cap(config.cacheTtl)}, ${stale}`,
    );
  } else if (status === 404) {
    const lifetime = `public, max-age=${cap(Math.min(NOT_FOUND_TTL, config.cacheTtl))}` +
      (signedFor === undefined ? "" : `, ${stale}`);
    headers.set(CDN_CACHE_CONTROL_HEADER, lifetime);
    // Whether a browsers' no-store would still keep it out of the cache is not documented.
    headers.set("Cache-Control", lifetime);
  } else {
    headers.set(CDN_CACHE_CONTROL_HEADER, "no-store");
  }
  if (tag && (status === 200 || status === 304 || status === 404)) headers.set("Cache-Tag", tag);
  return response;
}

// ---------------------------------------------------------------------------
// Purges
// Tags name what a purge removes; a signed POST to PURGE_PATH says which.
// ---------------------------------------------------------------------------

/**
 * The `Cache-Tag` of one B2 name: tags are case-insensitive printable ASCII,
 * so the exact name is hashed (SHA-256, hex) and `/a` never shares `/a-2`'s.
 */
export function objectTag(name: string): Promise<string> {
  const known = TAGS.get(name);
  if (known) return known;
  const tag = crypto.subtle.digest("SHA-256", UTF8.encode(name)).then((digest) =>
    "b2cdn-" + toHex(new Uint8Array(digest)).slice(0, TAG_HEX_LENGTH)
  );
  TAGS.set(name, tag);
  // A Map iterates in insertion order: the first is the oldest.
  if (TAGS.size > REMEMBERED_TAGS) TAGS.delete(TAGS.keys().next().value!);
  return tag;
}

/** Lowercase hex of bytes, as purge signatures and fingerprints are written. */
export function toHex(bytes: Uint8Array): string {
  return Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("");
}

/** The bytes of lowercase hex, as {@linkcode toHex} writes them. */
export function fromHex(hex: string): Uint8Array<ArrayBuffer> {
  return Uint8Array.from(hex.match(/../g) ?? [], (pair) => parseInt(pair, 16));
}

/** What a purge request's signature covers; `main.ts` signs the same text. */
export function purgeMessage(timestamp: string, body: string): string {
  return `POST ${PURGE_PATH}\n${timestamp}\n${body}`;
}

/**
 * The body of a purge request signed with `WORKER_PURGE_KEY` (HMAC-SHA256
 * over {@linkcode purgeMessage}) within the time window and not seen before
 * by this isolate; `undefined` for anything else.
 */
async function verifiedBody(request: Request, config: WorkerConfig): Promise<string | undefined> {
  if (!/^[0-9a-f]{64}$/i.test(config.purgeKey)) return undefined;
  const timestamp = request.headers.get(PURGE_TIMESTAMP_HEADER) ?? "";
  const signature = (request.headers.get(PURGE_SIGNATURE_HEADER) ?? "").toLowerCase();
  if (!/^\d{1,12}$/.test(timestamp) || !/^[0-9a-f]{64}$/.test(signature)) return undefined;
  const now = Date.now() / 1000;
  if (Math.abs(now - Number(timestamp)) > PURGE_WINDOW_SECONDS) return undefined;
  const body = await readCapped(request, MAX_PURGE_BODY_BYTES);
  if (body === undefined) return undefined;
  const message = UTF8.encode(purgeMessage(timestamp, body));
  const mac = { encoding: "hex" as const, signature: fromHex(signature), message };
  if (!await hmacVerifies(config.purgeKey, mac)) return undefined;
  for (const [used, at] of usedSignatures) {
    if (at < now - PURGE_WINDOW_SECONDS) usedSignatures.delete(used);
  }
  if (usedSignatures.has(signature)) return undefined;
  usedSignatures.set(signature, Number(timestamp));
  return body;
}

/**
 * The body as text, or `undefined` once it passes `limit` bytes: a chunked
 * body has no `Content-Length` to refuse it by, so it is counted as it comes.
 */
async function readCapped(request: Request, limit: number): Promise<string | undefined> {
  const bytes = await readCappedBytes(request, limit);
  return bytes && new TextDecoder().decode(bytes);
}

/** The body's exact bytes, or `undefined` once it passes `limit` bytes. */
async function readCappedBytes(
  request: Request,
  limit: number,
): Promise<Uint8Array<ArrayBuffer> | undefined> {
  if (Number(request.headers.get("Content-Length") ?? 0) > limit) return undefined;
  if (request.body === null) return new Uint8Array(0);
  const chunks: Uint8Array[] = [];
  let size = 0;
  for await (const chunk of request.body) {
    size += chunk.byteLength;
    if (size > limit) return undefined;
    chunks.push(chunk);
  }
  const bytes = new Uint8Array(size);
  let offset = 0;
  for (const chunk of chunks) bytes.set(chunk, (offset += chunk.byteLength) - chunk.byteLength);
  return bytes;
}

/**
 * A signed purge request: `{ paths?, prefixes?, everything?, expect? }`.
 * Paths are purged by their object's tag (exactly that object), prefixes as
 * path prefixes. With `expect`, nothing is purged unless this version's
 * fingerprint is that one (the new version must answer before a purge).
 * Every answer carries the fingerprint; `undefined` when not signed.
 */
async function signedPurge(
  request: Request,
  where: { url: URL; config: WorkerConfig; ctx: ExecutionContext },
): Promise<Response | undefined> {
  const { config, ctx } = where;
  const body = await verifiedBody(request, config);
  if (body === undefined) return undefined;
  const reply = (status: number, facts: Record<string, unknown>) =>
    serviceReply(
      status,
      { fingerprint: config.fingerprint, answerFormat: ANSWER_FORMAT, ...facts },
      status === 429 ? 60 : undefined,
    );
  const order = await purgeOrder(body, config);
  if ("refused" in order) return reply(order.refused, order.facts);
  const { options } = order;
  const operations = (options.tags?.length ?? 0) + (options.pathPrefixes?.length ?? 0) +
    (options.purgeEverything ? 1 : 0);
  if (operations === 0) return reply(200, { purged: null });
  if (operations > MAX_PURGE_OPERATIONS) {
    return reply(400, { error: `at most ${MAX_PURGE_OPERATIONS} operations a request` });
  }
  if (config.cacheMode !== "workers-cache") {
    return reply(400, { error: `this worker caches with ${config.cacheMode}, not Workers Cache` });
  }
  const purger = purgerFor(ctx, config);
  if (!purger) {
    return reply(501, { error: "ctx.cache is missing: Workers Cache is off for this version" });
  }
  const { status, facts } = await purgeOutcome(purger, order, where);
  return reply(status, facts);
}

/**
 * A purge order read from its body and checked against this site: the B2 names of its paths and
 * what `ctx.cache.purge` is to be asked, or the status and facts that refuse it.
 */
async function purgeOrder(
  body: string,
  config: WorkerConfig,
): Promise<
  { names: string[]; options: PurgeOptions } | {
    refused: 400 | 409;
    facts: Record<string, unknown>;
  }
> {
  let order: { paths?: unknown; prefixes?: unknown; everything?: unknown; expect?: unknown };
  try {
    order = JSON.parse(body);
  } catch {
    return { refused: 400, facts: { error: "the body is not JSON" } };
  }
  const strings = (value: unknown) =>
    value === undefined
      ? []
      : Array.isArray(value) && value.every((v) => typeof v === "string")
      ? value as string[]
      : undefined;
  const paths = strings(order?.paths);
  const prefixes = strings(order?.prefixes);
  if (!paths || !prefixes || ![undefined, true, false].includes(order.everything as boolean)) {
    const error = "paths and prefixes must be lists of paths, everything a boolean";
    return { refused: 400, facts: { error } };
  }
  if (order.expect !== undefined && order.expect !== config.fingerprint) {
    return { refused: 409, facts: { error: "another version answers" } };
  }
  const named = paths.map((path) => ({ path, name: objectName(path, config) }));
  const unknown = named.filter(({ name }) => "status" in name).map(({ path }) => path);
  const odd = prefixes.filter((prefix) => !prefix.startsWith("/"));
  if (unknown.length > 0 || odd.length > 0) {
    return {
      refused: 400,
      facts: { error: "not paths of this site", paths: [...unknown, ...odd] },
    };
  }
  const names = named.flatMap(({ name }) => "name" in name ? [name.name] : []);
  const options: PurgeOptions = {};
  if (names.length > 0) options.tags = [...new Set(await Promise.all(names.map(objectTag)))];
  if (prefixes.length > 0) options.pathPrefixes = prefixes;
  if (order.everything === true) options.purgeEverything = true;
  return { names, options };
}

/**
 * Purges what an order asks (visitors' entries, then the segments where the Segments entrypoint
 * keeps them) and forgets the named large objects' facts here: the answer's status and facts.
 */
async function purgeOutcome(
  purger: Purger,
  order: { names: string[]; options: PurgeOptions },
  where: { url: URL; config: WorkerConfig; ctx: ExecutionContext },
): Promise<{ status: number; facts: Record<string, unknown> }> {
  const { names, options } = order;
  const { url, config, ctx } = where;
  const result = await purger.purge(options);
  const segments = result.success && purger.segments ? await purger.segments(options) : undefined;
  const largeObjects = await forgetLargeFacts(url, names, { config, ctx });
  // A purge Workers Cache refused (its rate limit, most likely) is tried again later; a relay
  // that failed otherwise (codes 501 and 502 of purgerFor and relayedPurge) is the worker's.
  const relayFailed = segments?.errors.some((e) => e.code === 501 || e.code === 502) ?? false;
  const status = !result.success || segments?.success === false ? (relayFailed ? 502 : 429) : 200;
  const facts = {
    ...(status === 502 && { error: "the Segments entrypoint's purge failed" }),
    purged: options,
    result,
    ...(segments && { segments }),
    largeObjects,
  };
  return { status, facts };
}

/** A JSON answer of the worker's own endpoints (purge, events), never kept by any cache. */
function serviceReply(
  status: number,
  facts: Record<string, unknown>,
  retryAfter?: number,
): Response {
  return Response.json({ service: "b2-private-cdn", ...facts }, {
    status,
    headers: {
      "Cache-Control": "no-store",
      [CDN_CACHE_CONTROL_HEADER]: "no-store",
      "X-Content-Type-Options": "nosniff",
      ...(retryAfter !== undefined && { "Retry-After": String(retryAfter) }),
    },
  });
}

// ---------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------

/** Parses the bindings, applying the defaults of {@linkcode Env}. */
export function readConfig(env: Env): WorkerConfig {
  const listing = readListing(env);
  return {
    token: env.B2_DOWNLOAD_TOKEN,
    downloadUrl: env.B2_DOWNLOAD_URL.replace(/\/+$/, ""),
    bucketName: env.B2_BUCKET_NAME,
    prefix: env.B2_FILE_PREFIX ?? "",
    urlStyle: env.WORKER_URL_STYLE === "b2" ? "b2" : "plain",
    indexFile: env.WORKER_INDEX_FILE ?? "index.html",
    cacheTtl: wholeNumber(env.WORKER_CACHE_TTL, DEFAULT_CACHE_TTL),
    cacheControl: env.WORKER_CACHE_CONTROL?.trim() ?? "",
    corsOrigins: (env.WORKER_CORS_ORIGINS ?? "").split(",")
      .map((origin) => origin.trim().replace(/\/$/, ""))
      .filter((origin) => origin !== ""),
    timeoutMs: wholeNumber(env.WORKER_B2_TIMEOUT_MS, DEFAULT_B2_TIMEOUT_MS),
    activeContent:
      env.WORKER_ACTIVE_CONTENT === "sandbox" || env.WORKER_ACTIVE_CONTENT === "download"
        ? env.WORKER_ACTIVE_CONTENT
        : "serve",
    signing: readSigning(env),
    cacheMode: env.WORKER_CACHE_MODE === "workers-cache" || env.WORKER_CACHE_MODE === "off"
      ? env.WORKER_CACHE_MODE
      : "cache-api",
    staleWhileRevalidate: wholeNumber(
      env.WORKER_STALE_WHILE_REVALIDATE,
      DEFAULT_STALE_WHILE_REVALIDATE,
    ),
    staleIfError: wholeNumber(env.WORKER_STALE_IF_ERROR, DEFAULT_STALE_IF_ERROR),
    purgeKey: env.WORKER_PURGE_KEY ?? "",
    fingerprint: env.WORKER_FINGERPRINT ?? "",
    ...readSegmenting(env),
    ...(listing && { listing }),
  };
}

function wholeNumber(text: string | undefined, fallback: number): number {
  const value = Number(text?.trim() || NaN);
  return Number.isInteger(value) && value >= 0 ? value : fallback;
}

// ---------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------

/**
 * Maps a request path (still percent-encoded, as `URL.pathname` gives it) to
 * the B2 name it serves. Each segment is decoded exactly once; a segment that
 * decodes to nothing, `.`, `..`, a `/` or `\`, or a control character is
 * refused with 400, since B2 or any URL parser on the way could turn it into
 * a name outside the prefix. Paths outside `/file/<bucket>/<prefix>` in the
 * `b2` style are 404.
 */
export function objectName(
  pathname: string,
  config: Pick<WorkerConfig, "urlStyle" | "bucketName" | "prefix" | "indexFile">,
): ObjectName {
  let segments = pathname.split("/").slice(1);
  if (config.urlStyle === "b2") {
    const [file, bucket, ...rest] = segments;
    if (file !== "file" || bucket !== config.bucketName || rest.length === 0) {
      return { status: 404 };
    }
    segments = rest;
  }
  const folder = segments.at(-1) === "";
  const parts = (folder ? segments.slice(0, -1) : segments).map(decodeSegment);
  if (parts.some((part) => part === undefined)) return { status: 400 };
  if (folder) {
    if (config.indexFile === "") return { status: 404 };
    parts.push(config.indexFile);
  }
  const relative = parts.join("/");
  // Links in B2's shape carry the full name: the prefix is checked, not added.
  const name = config.urlStyle === "b2" ? relative : config.prefix + relative;
  if (!name.startsWith(config.prefix)) return { status: 404 };
  // A UTF-16 code unit is at most 3 UTF-8 bytes: a short name needs no encoding to be measured.
  const long = name.length * 3 > MAX_NAME_BYTES;
  if (long && UTF8.encode(name).length > MAX_NAME_BYTES) return { status: 400 };
  return { name };
}

function decodeSegment(segment: string): string | undefined {
  let part: string;
  try {
    part = decodeURIComponent(segment);
  } catch {
    return undefined;
  }
  const hostile = part === "" || part === "." || part === ".." || HOSTILE_CHARACTER.test(part);
  return hostile ? undefined : part;
}

/** The B2 download URL of a name, percent-encoded per segment as B2 documents. */
export function b2Url(
  config: Pick<WorkerConfig, "downloadUrl" | "bucketName">,
  name: string,
): string {
  return `${config.downloadUrl}/file/${encodePath(config.bucketName)}/${encodePath(name)}`;
}

/** A name as a URL path: each `/`-separated part percent-encoded, the `/` kept. */
export function encodePath(path: string): string {
  return path.split("/").map(encodeURIComponent).join("/");
}

// ---------------------------------------------------------------------------
// Ranges and conditionals
// ---------------------------------------------------------------------------

/**
 * Reads a `Range` header. Anything but one `bytes=` range (several ranges,
 * other units, nonsense) is `undefined`: HTTP lets a server ignore it and
 * answer the whole object.
 */
export function parseRange(header: string | null): RangeSpec | undefined {
  const match = /^bytes=(\d*)-(\d*)$/.exec(header?.trim() ?? "");
  if (!match) return undefined;
  const [, first = "", last = ""] = match;
  if (first === "") return last === "" ? undefined : { suffix: Number(last) };
  const start = Number(first);
  if (last === "") return { start };
  const end = Number(last);
  return end < start ? undefined : { start, end };
}

/** The bytes a range covers in an object of `size` bytes; `undefined` when unsatisfiable (416). */
export function resolveRange(range: RangeSpec, size: number): ByteRange | undefined {
  if ("suffix" in range) {
    if (range.suffix === 0 || size === 0) return undefined;
    return { start: Math.max(0, size - range.suffix), end: size - 1 };
  }
  if (range.start >= size) return undefined;
  return { start: range.start, end: Math.min(range.end ?? size - 1, size - 1) };
}

/** A `Range` header value for one range. */
export function formatRange(range: RangeSpec): string {
  return "suffix" in range ? `bytes=-${range.suffix}` : `bytes=${range.start}-${range.end ?? ""}`;
}

/**
 * Whether a conditional request can be answered 304, per RFC 9110:
 * `If-None-Match` (weak comparison) wins over `If-Modified-Since`.
 */
export function notModified(request: Headers, object: Headers): boolean {
  const ifNoneMatch = request.get("If-None-Match");
  if (ifNoneMatch !== null) {
    const etag = object.get("ETag");
    if (ifNoneMatch.trim() === "*") return true;
    const opaque = (tag: string) => tag.trim().replace(/^W\//, "");
    return etag !== null && ifNoneMatch.split(",").some((tag) => opaque(tag) === opaque(etag));
  }
  const since = Date.parse(request.get("If-Modified-Since") ?? "");
  const modified = Date.parse(object.get("Last-Modified") ?? "");
  return modified <= since;
}

/** Whether `If-Range`, if any, still names this object (strong comparison), so its range applies. */
export function ifRangeMatches(request: Headers, object: Headers): boolean {
  const ifRange = request.get("If-Range");
  if (ifRange === null) return true;
  return ifRange === object.get("Last-Modified") ||
    (!ifRange.startsWith("W/") && ifRange === object.get("ETag"));
}

// ---------------------------------------------------------------------------
// Headers
// ---------------------------------------------------------------------------

/**
 * Only the headers in the public allowlist, and with `describe` the ones
 * B2's answers describe their object with (`X-Bz-File-Id`, `X-Bz-File-Name`,
 * `X-Bz-Content-Sha1`, `X-Bz-Upload-Timestamp`, every `X-Bz-Info-*`).
 */
export function publicHeaders(headers: Headers, options: { describe?: boolean } = {}): Headers {
  const kept = new Headers();
  for (const name of PUBLIC_HEADERS) {
    const value = headers.get(name);
    if (value !== null) kept.set(name, value);
  }
  if (options.describe) {
    for (const [name, value] of headers) {
      if (isB2ObjectHeader(name)) kept.set(name, value);
    }
  }
  return kept;
}

function isB2ObjectHeader(name: string): boolean {
  return B2_OBJECT_HEADERS.includes(name) || name.startsWith(B2_FILE_INFO_PREFIX);
}

/** Removes every `x-bz-*` header, in place: what the plain URL style never shows. */
function withoutB2Headers(headers: Headers): void {
  for (const name of [...headers.keys()]) {
    if (name.startsWith("x-bz-")) headers.delete(name);
  }
}

/**
 * The headers an object is cached and served with, made from B2's: the
 * allowlist (and in the b2 URL style B2's description of the object),
 * validators from B2's metadata, the edge lifetime in `Cache-Control` and
 * the browsers' one beside it.
 */
export function objectHeaders(
  b2: Headers,
  config: Pick<WorkerConfig, "cacheTtl" | "cacheControl"> & Partial<Pick<WorkerConfig, "urlStyle">>,
): Headers {
  const headers = publicHeaders(b2, { describe: config.urlStyle === "b2" });
  headers.set("Accept-Ranges", "bytes");
  // B2 answers "none" for large files uploaded in parts; their id names the version just as well.
  const sha1 = b2.get("x-bz-content-sha1")?.replace(/^unverified:/, "");
  const fileId = b2.get("x-bz-file-id");
  // The first that names a version; the later ones are read only when needed.
  const named = (value: string | null | undefined) => value && value !== "none" ? value : undefined;
  const version = named(sha1) ?? named(b2.get("x-bz-info-large_file_sha1")) ??
    named(fileId && withoutBucketId(fileId));
  if (version) headers.set("ETag", `"${version}"`);
  const uploaded = new Date(Number(b2.get("x-bz-upload-timestamp") ?? NaN));
  if (!Number.isNaN(uploaded.getTime())) headers.set("Last-Modified", uploaded.toUTCString());
  headers.set("Cache-Control", `public, max-age=${config.cacheTtl}`);
  headers.set(
    BROWSER_CACHE_CONTROL_HEADER,
    config.cacheControl || b2.get("Cache-Control") || DEFAULT_BROWSER_CACHE_CONTROL,
  );
  return headers;
}

/**
 * Applies `WORKER_ACTIVE_CONTENT` to an object's headers, in place. HTML,
 * SVG, XML and XHTML (and any `Content-Type` a browser may take for one:
 * none, one it cannot parse, a list) can run script on the site's origin: `sandbox` lets them render
 * without it (`Content-Security-Policy: sandbox`), `download` makes them an
 * attachment (keeping a file name the object names), `serve` leaves them be.
 */
export function activeContentHeaders(headers: Headers, choice: ActiveContent): void {
  if (choice === "serve" || !activeType(headers.get("Content-Type"))) return;
  if (choice === "sandbox") {
    headers.set("Content-Security-Policy", "sandbox");
    return;
  }
  const disposition = headers.get("Content-Disposition") ?? "";
  // Only the type changes: `inline; filename="a.html"` keeps its file name.
  const [, parameters = ""] = /^[^;]*(;.*)?$/s.exec(disposition) ?? [];
  headers.set("Content-Disposition", `attachment${parameters}`);
}

/**
 * Whether a browser may run script in an answer of this `Content-Type`. It
 * reads the last type of a list that it can parse (Fetch, "extract a MIME
 * type"): `text/plain, text/html` is HTML. So a list is taken as active
 * whatever it holds, as are no type, a type it cannot parse and the types
 * it sniffs; only one clear type of another kind is not.
 */
function activeType(type: string | null): boolean {
  if (type === null || type.includes(",")) return true;
  const essence = MIME_ESSENCE.exec(type)?.[1]?.toLowerCase();
  return essence === undefined || UNKNOWN_TYPES.includes(essence) ||
    ACTIVE_CONTENT_TYPE.test(essence);
}

/**
 * The CORS headers for a request from `origin`: none when CORS is off, only
 * `Vary` when the origin is not allowed. With `*`, `Vary: Origin` only when
 * `varyOnAnyOrigin` (the default, for the Cache API, which keeps no headers
 * of this step); a list of origins always varies, so a shared cache keeps one
 * copy per origin.
 */
export function corsHeaders(
  origin: string | null,
  allowedOrigins: string[],
  options: { varyOnAnyOrigin?: boolean } = {},
): Record<string, string> {
  if (allowedOrigins.length === 0) return {};
  const any = allowedOrigins.includes("*");
  const vary: Record<string, string> = any && options.varyOnAnyOrigin === false
    ? {}
    : { Vary: "Origin" };
  const allowed = any ? "*" : allowedOrigins.find((candidate) => candidate === origin);
  if (allowed === undefined) return vary;
  return {
    "Access-Control-Allow-Origin": allowed,
    "Access-Control-Expose-Headers": EXPOSED_HEADERS,
    ...vary,
  };
}

/**
 * A file id fit for visitors: B2's ids carry the bucket's id after `_z`
 * (`4_z<bucketId>_f<version>_d<date>...`, as the file ids in B2's API examples
 * show, www.backblaze.com/apidocs/b2-upload-file), which stays inside; the rest
 * still names the version.
 */
export function withoutBucketId(fileId: string): string {
  return fileId.replace(/^(\d+)_z[^_]+_/, "$1_");
}

// ---------------------------------------------------------------------------
// Bodies, and the CORS preflight
// ---------------------------------------------------------------------------

/**
 * The bytes of `range` out of a stream of the whole object, as they arrive.
 * Stops reading (and cancels the source) once the range is sent.
 */
export function sliceBody(
  body: ReadableStream<Uint8Array>,
  range: ByteRange,
): ReadableStream<Uint8Array> {
  // workerd only sends Content-Length for a script-made stream when told the length up front.
  return sliceStream(body, range).pipeThrough(fixedLengthStream(range.end - range.start + 1));
}

/** The bytes of `range` out of a stream starting at offset 0, of unknown length. */
function sliceStream(
  body: ReadableStream<Uint8Array>,
  range: ByteRange,
): ReadableStream<Uint8Array> {
  let offset = 0;
  return body.pipeThrough(
    new TransformStream<Uint8Array, Uint8Array>({
      transform(chunk, controller) {
        const from = Math.max(range.start - offset, 0);
        const to = Math.min(range.end + 1 - offset, chunk.byteLength);
        offset += chunk.byteLength;
        if (from < to) controller.enqueue(chunk.subarray(from, to));
        if (offset > range.end) controller.terminate();
      },
    }),
  );
}

function preflight(request: Request, config: WorkerConfig, allow: string): Response {
  const cors = corsHeaders(request.headers.get("Origin"), config.corsOrigins);
  const headers: Record<string, string> = { Allow: allow };
  if ("Access-Control-Allow-Origin" in cors) {
    headers["Access-Control-Allow-Methods"] = allow;
    headers["Access-Control-Allow-Headers"] = "Range, If-None-Match, If-Modified-Since, If-Range";
    headers["Access-Control-Max-Age"] = PREFLIGHT_MAX_AGE;
  }
  return new Response(null, { status: 204, headers });
}

// ---------------------------------------------------------------------------
// The Cache API
// What the cache-api mode keeps per data centre (caches.default); Workers Cache needs none.
// ---------------------------------------------------------------------------

function edgeCache(): Cache {
  return (caches as unknown as { default: Cache }).default;
}

/**
 * A cached object (206 when the runtime applied the range), a 404 or 416
 * answer, or nothing: one lookup, but for a range on an empty or missing name.
 */
async function lookUpCache(key: string, range?: RangeSpec): Promise<Response | undefined> {
  // A plain GET is looked up by its URL: no Request to build on every hit.
  const lookup = range ? new Request(key, { headers: { Range: formatRange(range) } }) : key;
  let cached = await edgeCache().match(lookup);
  if (cached?.status === 416 && cached.headers.get("Content-Range") === "bytes */0") {
    // A ranged match turns a cached 404 into the 416 of an empty object: ask which it was.
    await cached.body?.cancel();
    cached = await edgeCache().match(key);
  }
  if (cached?.status === 404 || cached?.status === 416) {
    await cached.body?.cancel();
    return cached.status === 404
      ? textResponse(404)
      : notSatisfiable(cached.headers.get("Content-Range"));
  }
  return cached;
}

/**
 * Keeps a copy at the edge after the answer is sent; a failure only costs a later miss.
 * Resolves once it is kept, or failed.
 */
function store(ctx: ExecutionContext, key: string, response: Response): Promise<void> {
  const put = edgeCache().put(key, response).catch((error) => {
    console.error(`Cannot keep ${key} in the edge cache: ${error}`);
  });
  ctx.waitUntil(put);
  return put;
}

// ---------------------------------------------------------------------------
// B2
// ---------------------------------------------------------------------------

/**
 * Asks B2 for a name with only the token and the range, keeps what may
 * be cached when told where (the Cache API) and turns B2's failures into short generic
 * answers. Conditional headers stay at the edge: the validators are ours,
 * not B2's.
 */
async function askB2(
  method: string,
  name: string,
  options: {
    range?: RangeSpec;
    /** Fetch the whole object for a range from byte 0, so that the Cache API can keep it. */
    wholeFromZero?: boolean;
    config: WorkerConfig;
    /** Where the Cache API keeps what may be kept. */
    keep?: { key: string; ctx: ExecutionContext };
    /** Filled, and the body not read, when the object is larger than `above` bytes. */
    large?: LargeProbe;
  },
): Promise<Response> {
  const { range, config, keep, large } = options;
  const headers = new Headers({ Authorization: config.token });
  // A range from byte 0 is how players start: fetching the whole object costs the visitor
  // nothing and fills the cache. Later ranges go straight to B2 and are not cached.
  const fromZero = range && "start" in range && range.start === 0;
  if (method === "GET" && range && !(options.wholeFromZero && fromZero)) {
    headers.set("Range", formatRange(range));
  }
  const b2 = await fetchB2(name, { method, headers }, config);
  if (b2 === "timed out" || b2 instanceof Error) {
    console.error(`B2 did not answer for "${name}": ${b2 instanceof Error ? b2.message : b2}`);
    return textResponse(b2 === "timed out" ? 504 : 502);
  }

  // Only an object past the limit needs its facts: a small one's headers are built once, below.
  const facts = b2.ok && large && (totalSize(b2.headers) ?? 0) > large.above
    ? readFacts(b2.headers, config)
    : undefined;
  if (large && facts) {
    if (large.keepAnswer) large.answer = b2;
    else await b2.body?.cancel();
    large.facts = facts;
    return new Response(null, { status: 204 });
  }
  return await fromB2(b2, { method, name, config, keep });
}

/**
 * B2's answer made ours: an object with our headers (kept in the Cache API when told where and
 * it may be), a 404 (kept briefly), a 416, or a short 502 for anything else, logged.
 */
async function fromB2(
  b2: Response,
  asked: {
    method: string;
    name: string;
    config: WorkerConfig;
    keep: { key: string; ctx: ExecutionContext } | undefined;
  },
): Promise<Response> {
  const { method, name, config, keep } = asked;
  if (b2.ok) {
    const object = new Response(b2.body, {
      status: b2.status,
      headers: objectHeaders(b2.headers, config),
    });
    const size = Number(b2.headers.get("Content-Length") ?? NaN);
    if (keep && b2.status === 200 && method === "GET" && size <= MAX_CACHED_BYTES) {
      store(keep.ctx, keep.key, object.clone());
    }
    return object;
  }
  if (b2.status === 404) {
    await b2.body?.cancel();
    const ttl = Math.min(NOT_FOUND_TTL, config.cacheTtl);
    if (keep && ttl > 0) {
      const notFound = new Response(null, {
        status: 404,
        headers: { "Cache-Control": `public, max-age=${ttl}` },
      });
      store(keep.ctx, keep.key, notFound);
    }
    return textResponse(404);
  }
  if (b2.status === 416) {
    await b2.body?.cancel();
    return notSatisfiable(b2.headers.get("Content-Range"));
  }
  const code = await b2ErrorCode(b2);
  const hint = b2.status === 401 || b2.status === 403
    ? ": the download token is wrong or expired; run refresh"
    : "";
  console.error(`B2 answered ${b2.status} ${code} for "${name}"${hint}`);
  return textResponse(502);
}

/**
 * B2's answer for `name`, or why there is none: its headers must come within
 * WORKER_B2_TIMEOUT_MS; once they are here the body may stream for as long
 * as it takes.
 */
async function fetchB2(
  name: string,
  init: { method?: string; headers: HeadersInit },
  config: WorkerConfig,
): Promise<Response | "timed out" | Error> {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), config.timeoutMs);
  try {
    return await fetch(b2Url(config, name), { ...init, signal: controller.signal });
  } catch (error) {
    return controller.signal.aborted ? "timed out" : new Error(String(error));
  } finally {
    clearTimeout(timer);
  }
}

async function b2ErrorCode(response: Response): Promise<string> {
  try {
    const { code } = await response.json() as { code?: unknown };
    return typeof code === "string" ? code : "(no code)";
  } catch {
    return "(no code)";
  }
}

// ---------------------------------------------------------------------------
// The answer
// ---------------------------------------------------------------------------

/**
 * The visitor's answer from an object (cached or from B2) or an error
 * answer: 304 when the client's copy is current, 206/416 for a range the
 * runtime did not apply, the browsers' `Cache-Control`, `WORKER_ACTIVE_CONTENT`,
 * a streamed body.
 */
async function answer(
  request: Request,
  object: Response,
  options: { range?: RangeSpec | undefined; config: Pick<WorkerConfig, "activeContent"> },
): Promise<Response> {
  if (!object.ok) return object;
  const { range, config } = options;
  // The object's headers are objectHeaders(): B2's description is there only in the b2 style.
  const headers = publicHeaders(object.headers, { describe: true });
  headers.set(
    "Cache-Control",
    object.headers.get(BROWSER_CACHE_CONTROL_HEADER) ?? DEFAULT_BROWSER_CACHE_CONTROL,
  );
  // Here, on an object's own answers only: a listing is the worker's page, with its own policy.
  activeContentHeaders(headers, config.activeContent);

  if (notModified(request.headers, object.headers)) {
    await object.body?.cancel();
    return notModifiedAnswer(headers);
  }

  const size = Number(object.headers.get("Content-Length") ?? NaN);
  if (
    object.status !== 200 || !range || !Number.isInteger(size) ||
    !ifRangeMatches(request.headers, headers)
  ) {
    return new Response(object.body, { status: object.status, headers });
  }
  const bytes = resolveRange(range, size);
  if (!bytes) {
    await object.body?.cancel();
    return notSatisfiable(`bytes */${size}`);
  }
  headers.set("Content-Range", `bytes ${bytes.start}-${bytes.end}/${size}`);
  headers.set("Content-Length", String(bytes.end - bytes.start + 1));
  const whole = bytes.start === 0 && bytes.end === size - 1;
  const body = object.body && !whole ? sliceBody(object.body, bytes) : object.body;
  return new Response(body, { status: 206, headers });
}

/**
 * 304 with the validators and browsers' lifetime of an answer's `headers`, what
 * `WORKER_ACTIVE_CONTENT` set, and B2's description of the object where the answer has it: a
 * cache that revalidates its copy, a browser's too, updates the copy's headers from the 304 (RFC
 * 9110 15.4.5 lets a 304 carry metadata that guides that update; RFC 9111 4.3.4), so Workers
 * Cache's copy keeps describing the object as B2 does, and a browser's copy kept from before
 * `sandbox` or `download` was chosen gets them too, instead of running on.
 */
function notModifiedAnswer(headers: Headers): Response {
  const validators = new Headers();
  for (const [name, value] of headers) {
    if (NOT_MODIFIED_HEADERS.has(name) || isB2ObjectHeader(name)) validators.set(name, value);
  }
  return new Response(null, { status: 304, headers: validators });
}

function textResponse(
  status: keyof typeof STATUS_TEXT,
  headers: Record<string, string> = {},
): Response {
  return new Response(`${STATUS_TEXT[status]}\n`, {
    status,
    headers: {
      "Content-Type": "text/plain; charset=utf-8",
      "Cache-Control": "no-store",
      ...headers,
    },
  });
}

/** 416, with the object's size in `Content-Range` when it is known. */
function notSatisfiable(contentRange: string | null): Response {
  return textResponse(416, contentRange ? { "Content-Range": contentRange } : {});
}

// ---------------------------------------------------------------------------
// Large objects
//
// An object larger than the cache in use can hold whole (LARGE_WORKERS_CACHE_BYTES behind
// Workers Cache, MAX_CACHED_BYTES with the Cache API) is kept as aligned segments of
// WORKER_SEGMENT_SIZE bytes: B2 is asked only for `bytes=k*S-(k+1)*S-1` (the last one shorter),
// each segment is kept as a 200 with its Content-Length (cache.put refuses a 206) under a key
// naming the object's version (B2's X-Bz-File-Id) and the index, never the token, and a
// visitor's range is sliced from the segments it spans, one segment at a time.
//
// Where they are kept: in workers-cache mode, in Workers Cache itself, as the answers of the
// Segments entrypoint (see "Segments in Workers Cache" below): tiered, purged by the object's
// tag, on workers.dev too. In cache-api mode, and where the runtime offers no ctx.exports, in
// the Cache API (caches.default), which is per data centre and does nothing on workers.dev
// (developers.cloudflare.com/workers/runtime-apis/cache/): there large objects are still
// served right, from B2 every time. The facts below are kept in the Cache API in both modes,
// so on workers.dev each request for a large object also costs B2 one request for its
// headers (its body left unread), while its segments still come from Workers Cache.
//
// What the worker learns of the object (its facts: size, file id, type, validators) comes from
// the first B2 answer it gets for the object, which is the request it makes for any object
// (a whole GET behind Workers Cache; the Cache API mode's usual request), so a small object
// costs no B2 request more; what it does cost is one Cache API lookup for facts on each run of
// the worker that reaches B2's path (a Workers Cache miss, a Cache API miss). A large one costs
// that answer's headers once per WORKER_CACHE_TTL and data centre: its body is cancelled and
// the segments are asked for instead.
// ---------------------------------------------------------------------------

/** What the edge remembers of a large object. */
export interface ObjectFacts {
  size: number;
  /** B2's `X-Bz-File-Id`: one version of the object. */
  fileId: string;
  /** {@linkcode objectHeaders} of the object, without its length or range. */
  headers: Headers;
}

/** What {@linkcode askB2} fills when B2's answer shows an object past `above` bytes. */
interface LargeProbe {
  above: number;
  facts?: ObjectFacts;
  /** Whether B2's answer is wanted, body unread, for the visitor's first bytes. */
  keepAnswer?: boolean;
  /** B2's answer, body unread, when `keepAnswer`. */
  answer?: Response;
}

/** Where a large object's answer comes from. */
interface LargeTarget {
  /** The visitor's URL: its origin and path name the Cache API entries. */
  url: URL;
  name: string;
  config: WorkerConfig;
  ctx: ExecutionContext;
}

/** One answer's bytes: `start..end` from segments, then, for a whole GET, the rest from B2. */
interface SegmentPlan extends LargeTarget {
  facts: ObjectFacts;
  start: number;
  end: number;
  /** Where one B2 request takes over after the segments, to the object's end. */
  tailFrom?: number | undefined;
  /** The puts of segments this answer fetched from B2. */
  filling: Promise<void>[];
}

// Workers Cache stores at most 512 MB an answer on every plan for now (developers.cloudflare.com/
// cache/reference/range-requests/, "Caching limitations"), checked against the complete size,
// so a larger object is never kept whole: counted in decimal megabytes, the stricter reading.
const LARGE_WORKERS_CACHE_BYTES = 512_000_000;
const DEFAULT_SEGMENT_SIZE = 8 * 1024 * 1024;
// Segments one answer takes from the cache (or B2): each costs up to three subrequests (match,
// fetch, put), and the Free plan allows 50 a request (developers.cloudflare.com/workers/
// platform/limits/): 12 leave room for the facts and the object lookups. A longer range gets a
// shorter 206 whose Content-Range says so (RFC 9110, 15.3.7), and players ask for the rest; a
// GET without Range must be whole, so past these it streams the rest from B2 in one request.
const MAX_SEGMENTS_PER_ANSWER = 12;
// Cache API keys with a query: respond() looks objects up by origin and path only, so no
// visitor's request can ever be answered with one of these entries.
const FACTS_PATH = "/.well-known/b2-private-cdn/facts";
const SEGMENT_PATH = "/.well-known/b2-private-cdn/segment";

function readSegmenting(env: Env): Pick<WorkerConfig, "segmentSize" | "segmentThreshold"> {
  const limit = env.WORKER_CACHE_MODE === "workers-cache"
    ? LARGE_WORKERS_CACHE_BYTES
    : MAX_CACHED_BYTES;
  const threshold = wholeNumber(env.WORKER_SEGMENT_THRESHOLD, limit);
  return {
    segmentSize: wholeNumber(env.WORKER_SEGMENT_SIZE, DEFAULT_SEGMENT_SIZE),
    segmentThreshold: Math.min(threshold, limit),
  };
}

/**
 * Whether large objects are told apart: behind Workers Cache always (a small one's ranges are
 * answered whole so that the cache keeps it; a large one's cannot be), with the Cache API when
 * segmenting is on. Never without a cache.
 */
function handlesLarge(config: WorkerConfig): boolean {
  if (config.cacheTtl === 0) return false;
  return config.cacheMode === "workers-cache" ||
    (config.cacheMode === "cache-api" && config.segmentSize > 0);
}

/** An object's whole size from B2's headers: a range's `Content-Range` total, else its length. */
function totalSize(b2: Headers): number | undefined {
  const contentRange = b2.get("Content-Range");
  const total = contentRange === null
    ? b2.get("Content-Length")
    : /^bytes \d+-\d+\/(\d+)$/.exec(contentRange)?.[1];
  const size = Number(total ?? NaN);
  return Number.isInteger(size) ? size : undefined;
}

/** The facts of a large object from B2's answer (a 200, a 206 or a HEAD); `undefined` if none. */
export function readFacts(
  b2: Headers,
  config: Pick<WorkerConfig, "cacheTtl" | "cacheControl"> & Partial<Pick<WorkerConfig, "urlStyle">>,
): ObjectFacts | undefined {
  const fileId = b2.get("x-bz-file-id");
  const size = totalSize(b2);
  if (!fileId || size === undefined) return undefined;
  const headers = objectHeaders(b2, config);
  headers.delete("Content-Length");
  headers.delete("Content-Range");
  return { size, fileId, headers };
}

/**
 * The key of a large object's facts: its name and the deploy's fingerprint (what refresh
 * computed from everything that shapes an answer, the bucket and prefix included, never the
 * token). The Cache API is per data centre and refresh cannot empty it, so facts (and the
 * headers they carry) kept by a version with other settings are never read by this one: the
 * first request after such a refresh learns them again from B2, under the new settings.
 */
async function factsKey(
  target: Pick<LargeTarget, "url" | "name"> & { config: Pick<WorkerConfig, "fingerprint"> },
): Promise<string> {
  const query = new URLSearchParams({
    object: await objectTag(target.name),
    fingerprint: target.config.fingerprint,
  });
  return `${target.url.origin}${FACTS_PATH}?${query}`;
}

/**
 * The key of segment `index`: the object's name, version and segment size, never the token.
 * Neither the bucket nor the fingerprint: a file id names one version of one file in all of B2
 * (b2_download_file_by_id takes the id alone, no bucket: www.backblaze.com/apidocs/
 * b2-download-file-by-id), and a segment holds only its bytes, no header. A version with other
 * settings reaches a segment only through facts it learned itself from B2, so only once B2
 * served it that very file id.
 */
async function segmentKey(plan: SegmentPlan, index: number): Promise<string> {
  const query = new URLSearchParams({
    object: await objectTag(plan.name),
    version: plan.facts.fileId,
    size: String(plan.config.segmentSize),
    index: String(index),
  });
  return `${plan.url.origin}${SEGMENT_PATH}?${query}`;
}

// Where the Segments entrypoint keeps the segments, the facts this isolate used lately are also
// held in memory, for at most FACTS_IN_MEMORY_MS and never past their own expiry: a repeated
// range then costs one loopback call and no Cache API lookup. Safe there, since every purge
// reaches the segments everywhere: facts of a version B2 no longer serves lead to a purged
// segment, which B2 then refuses, and the answer starts over (segmentedBody).
const recentFacts = new Map<string, { facts: ObjectFacts; until: number }>();
const FACTS_IN_MEMORY_MS = 60_000;
const REMEMBERED_FACTS = 1000;

async function lookUpFacts(target: LargeTarget): Promise<ObjectFacts | undefined> {
  const key = await factsKey(target);
  const inMemory = segmentsEntrypoint(target.ctx, target.config) && recentFacts.get(key);
  if (inMemory && inMemory.until > Date.now()) return inMemory.facts;
  const cached = await edgeCache().match(key);
  if (!cached) return undefined;
  try {
    const { size, fileId, headers, until } = await cached.json() as Record<string, unknown>;
    if (!Number.isInteger(size) || typeof fileId !== "string" || !Array.isArray(headers)) {
      return undefined;
    }
    const facts = { size: size as number, fileId, headers: new Headers(headers) };
    if (typeof until === "number") holdFacts(key, { facts, until });
    return facts;
  } catch {
    return undefined;
  }
}

async function keepFacts(target: LargeTarget, facts: ObjectFacts): Promise<void> {
  const key = await factsKey(target);
  const until = Date.now() + target.config.cacheTtl * 1000;
  holdFacts(key, { facts, until });
  const body = { size: facts.size, fileId: facts.fileId, headers: [...facts.headers], until };
  store(
    target.ctx,
    key,
    Response.json(body, {
      headers: { "Cache-Control": `public, max-age=${target.config.cacheTtl}` },
    }),
  );
}

function holdFacts(key: string, held: { facts: ObjectFacts; until: number }): void {
  const { facts, until } = held;
  recentFacts.delete(key);
  recentFacts.set(key, { facts, until: Math.min(until, Date.now() + FACTS_IN_MEMORY_MS) });
  // A Map iterates in insertion order: the first is the oldest.
  if (recentFacts.size > REMEMBERED_FACTS) recentFacts.delete(recentFacts.keys().next().value!);
}

/** Forgets a version that B2 no longer serves: the next request learns the current one. */
async function forgetFacts(target: LargeTarget): Promise<void> {
  await forgetFactsOf(target.url, [target.name], target.config);
}

/** Deletes the facts of `names`, at most `limit`, from this data centre's Cache API: how many. */
async function forgetFactsOf(
  url: URL,
  names: string[],
  config: WorkerConfig,
  limit = Infinity,
): Promise<number> {
  // Not every runtime that runs this module has a Cache API (Deno, in main.ts's tests).
  const cache = (globalThis as { caches?: { default?: Cache } }).caches?.default;
  if (!cache) return 0;
  const forgotten = await Promise.all(
    names.slice(0, limit).map(async (name) => {
      const key = await factsKey({ url, name, config });
      recentFacts.delete(key);
      return await cache.delete(key).catch(() => false);
    }),
  );
  return forgotten.filter(Boolean).length;
}

/**
 * A purge's reach into large objects: their segments are keyed by version, so a replaced
 * object is never served from them once its facts are gone; the facts of the named objects
 * are forgotten here, in this data centre's Cache API only (it is per data centre), for the
 * host the purge was sent to. Where the Segments entrypoint keeps segments in Workers Cache,
 * the purge reached them everywhere: elsewhere the facts' next segment comes from B2, which
 * shows the new version, and the answer starts over from it. With the Cache API, facts
 * elsewhere last until WORKER_CACHE_TTL runs out. A refresh that changes the fingerprint (and
 * so purges everything) reaches them in every data centre: facts are keyed by it.
 */
async function forgetLargeFacts(
  url: URL,
  names: string[],
  where: { config: WorkerConfig; ctx: ExecutionContext },
): Promise<Record<string, unknown>> {
  const { config, ctx } = where;
  // Each deletion is a subrequest: the Free plan allows 50 a request.
  const left = Math.max(0, names.length - MAX_CACHE_DELETES);
  return {
    factsForgotten: await forgetFactsOf(url, names, config, MAX_CACHE_DELETES),
    ...(left > 0 && { factsNotForgotten: left }),
    reach: segmentsEntrypoint(ctx, config)
      ? "segments: Workers Cache, everywhere; facts: this data centre's Cache API, this host, " +
        "and elsewhere at the next segment B2 sends"
      : "this data centre's Cache API, this host; elsewhere until WORKER_CACHE_TTL runs out",
  };
}

/** The answer for an object the edge knows is large, or `undefined` when it knows no such thing. */
async function knownLarge(request: Request, target: LargeTarget): Promise<Response | undefined> {
  if (!handlesLarge(target.config)) return undefined;
  const facts = await lookUpFacts(target);
  if (!facts || facts.size <= target.config.segmentThreshold) return undefined;
  // `undefined` too when B2 now holds another version: the caller asks B2 as for any object.
  return await answerLarge(request, facts, target);
}

/**
 * A large object's answer right after B2 said it is one: the facts are kept for later ones.
 * `first`: B2's answer that told it, body unread, whose bytes start the visitor's range when
 * they cover its start; otherwise it is cancelled.
 */
async function learnedLarge(
  request: Request,
  facts: ObjectFacts,
  target: LargeTarget,
  first?: Response,
): Promise<Response> {
  const answered = await answerLarge(request, facts, target, { fromB2: true, first });
  if (first?.body && !first.body.locked) await first.body.cancel();
  // Replaced again between B2's answer and its first segment: nothing worth keeping.
  if (!answered) return textResponse(502);
  await keepFacts(target, facts);
  return answered;
}

/**
 * A large object's answer from its facts: 304, 416 and `HEAD` without
 * asking B2; a range as a 206 of at most MAX_SEGMENTS_PER_ANSWER segments;
 * a GET without (applicable) range whole. With segmenting off, B2 answers
 * the visitor's range itself. `undefined` when the first segment shows that
 * B2 holds another version now (the facts are forgotten). `fromB2`: the facts
 * come from B2's answer to this very request.
 */
async function answerLarge(
  request: Request,
  facts: ObjectFacts,
  target: LargeTarget,
  how: { fromB2?: boolean; first?: Response | undefined } = {},
): Promise<Response | undefined> {
  const { config } = target;
  const headers = publicHeaders(facts.headers, { describe: true });
  headers.set(
    "Cache-Control",
    facts.headers.get(BROWSER_CACHE_CONTROL_HEADER) ?? DEFAULT_BROWSER_CACHE_CONTROL,
  );
  activeContentHeaders(headers, config.activeContent);
  const unmodified = notModified(request.headers, facts.headers);
  const factsAlone = unmodified || request.method === "HEAD";
  if (factsAlone && !how.fromB2 && !await factsHold(facts, target)) return undefined;
  if (unmodified) return notModifiedAnswer(headers);
  const requested = parseRange(request.headers.get("Range"));
  const range = requested && ifRangeMatches(request.headers, headers) ? requested : undefined;
  if (config.segmentSize === 0) {
    const object = await askB2(request.method, target.name, { ...(range && { range }), config });
    return await answer(request, object, { range, config });
  }
  const bytes = range ? resolveRange(range, facts.size) : { start: 0, end: facts.size - 1 };
  if (!bytes) return notSatisfiable(`bytes */${facts.size}`);
  const firstIndex = Math.floor(bytes.start / config.segmentSize);
  const lastByte = (firstIndex + MAX_SEGMENTS_PER_ANSWER) * config.segmentSize - 1;
  const first = range && request.method === "GET" ? firstBytes(how.first, bytes.start) : undefined;
  const end = Math.min(bytes.end, lastByte);
  const tailFrom = !range && bytes.end > lastByte ? lastByte + 1 : undefined;
  headers.set("Content-Length", String((range ? end : bytes.end) - bytes.start + 1));
  if (range) headers.set("Content-Range", `bytes ${bytes.start}-${end}/${facts.size}`);
  const status = range ? 206 : 200;
  if (request.method === "HEAD") return new Response(null, { status, headers });
  const plan = { ...target, facts, start: bytes.start, end, tailFrom, filling: [] };
  // The first segment's part from B2's first answer (the rest from segments, as for any range),
  // while that segment is kept meanwhile.
  const firstEnd = first && Math.min(end, first.last, (firstIndex + 1) * config.segmentSize - 1);
  const given = first && firstEnd !== undefined
    ? sliceStream(first.body, { start: bytes.start - first.offset, end: firstEnd - first.offset })
    : undefined;
  if (given) target.ctx.waitUntil(keepSegment(plan, firstIndex));
  const body = await segmentedBody(plan, given);
  if (body === "changed") return undefined;
  return body === "failed" ? textResponse(502) : new Response(body, { status, headers });
}

/**
 * The body of B2's first answer for an object and the offsets it holds, when they hold the
 * byte `start` (a 200 holds the object from its first byte, a 206 says where it starts).
 */
function firstBytes(
  b2: Response | undefined,
  start: number,
): { body: ReadableStream<Uint8Array>; offset: number; last: number } | undefined {
  if (!b2?.body || b2.body.locked) return undefined;
  const offset = b2.status === 206
    ? Number(/^bytes (\d+)-/.exec(b2.headers.get("Content-Range") ?? "")?.[1] ?? NaN)
    : 0;
  const last = offset + Number(b2.headers.get("Content-Length") ?? NaN) - 1;
  if (!(start >= offset && start <= last)) return undefined;
  return { body: b2.body, offset, last };
}

/**
 * Has Workers Cache keep segment `index` whole while the visitor's first bytes come from B2's
 * own answer: a one-byte read through the Segments entrypoint, whose miss the cache fills from
 * B2 with the whole segment (it never stores the slice it hands back). Where the Cache API
 * keeps segments, the next range fills it instead. A segment B2 now holds in another version
 * is not kept, and the facts are forgotten.
 */
async function keepSegment(plan: SegmentPlan, index: number): Promise<void> {
  const entrypoint = segmentsEntrypoint(plan.ctx, plan.config);
  if (!entrypoint) return;
  try {
    const piece = { index, within: { start: 0, end: 0 }, entrypoint };
    await (await segmentFromWorkersCache(plan, piece)).cancel();
  } catch (error) {
    if (!(error instanceof SegmentFailure)) throw error;
    console.error(error.message);
    if (error.changed) await forgetFacts(plan);
  }
}

/**
 * Whether the facts' version is still the one the edge serves, asked before an answer made
 * from the facts alone (a 304, a HEAD). Where the Segments entrypoint keeps segments, every
 * purge and notification removes a replaced object's segments everywhere, so a one-byte read
 * of its first segment comes from Workers Cache (the facts are as current as the edge's copy)
 * or from B2, which refuses the old version: then the facts are forgotten. With the Cache API
 * the facts stand (they last until WORKER_CACHE_TTL in data centres a purge did not reach).
 */
async function factsHold(facts: ObjectFacts, target: LargeTarget): Promise<boolean> {
  const entrypoint = segmentsEntrypoint(target.ctx, target.config);
  if (!entrypoint) return true;
  const plan = { ...target, facts, start: 0, end: 0, filling: [] };
  try {
    const piece = { index: 0, within: { start: 0, end: 0 }, entrypoint };
    await (await segmentFromWorkersCache(plan, piece)).cancel();
    return true;
  } catch (error) {
    // Only another version is a reason to doubt them; a failure to read says nothing.
    if (!(error instanceof SegmentFailure) || !error.changed) return true;
    await forgetFacts(target);
    return false;
  }
}

/** A writable whose readable has a known length (workerd sends it as Content-Length). */
function fixedLengthStream(length: number): TransformStream<Uint8Array, Uint8Array> {
  const { FixedLengthStream } = globalThis as {
    FixedLengthStream?: new (length: number) => TransformStream<Uint8Array, Uint8Array>;
  };
  return FixedLengthStream ? new FixedLengthStream(length) : new TransformStream();
}

/**
 * The plan's bytes as one stream, filled one segment at a time (the runtime
 * pipes each native body on its own): a visitor who stops reading ends it,
 * and no further segment is asked for. The first segment is asked for before
 * the answer starts, so that a version B2 no longer serves (`changed`) or a
 * B2 failure (`failed`) is answered cleanly instead of cut short; `given`: the first
 * segment's part already at hand (from B2's answer that told the facts).
 */
async function segmentedBody(
  plan: SegmentPlan,
  given?: ReadableStream<Uint8Array>,
): Promise<ReadableStream<Uint8Array> | "changed" | "failed"> {
  let first: ReadableStream<Uint8Array>;
  try {
    first = given ?? await segmentPiece(plan, Math.floor(plan.start / plan.config.segmentSize));
  } catch (error) {
    if (!(error instanceof SegmentFailure)) throw error;
    console.error(error.message);
    if (!error.changed) return "failed";
    await forgetFacts(plan);
    return "changed";
  }
  const last = plan.tailFrom === undefined ? plan.end : plan.facts.size - 1;
  const { readable, writable } = fixedLengthStream(last - plan.start + 1);
  plan.ctx.waitUntil(pumpSegments(plan, writable, first));
  return readable;
}

/** A segment B2 would not give: `changed` when it now holds another version of the object. */
class SegmentFailure extends Error {
  constructor(message: string, readonly changed = false) {
    super(message);
  }
}

async function pumpSegments(
  plan: SegmentPlan,
  writable: WritableStream<Uint8Array>,
  first: ReadableStream<Uint8Array>,
) {
  const size = plan.config.segmentSize;
  const firstIndex = Math.floor(plan.start / size);
  try {
    for (let index = firstIndex; index * size <= plan.end; index++) {
      const piece = index === firstIndex ? first : await segmentPiece(plan, index);
      const last = plan.tailFrom === undefined && (index + 1) * size > plan.end;
      await (last ? sentOnceKept(piece, plan.filling) : piece).pipeTo(writable, {
        preventClose: true,
      });
    }
    if (plan.tailFrom !== undefined) {
      const length = plan.facts.size - plan.tailFrom;
      const tail = await b2Bytes(plan, { offset: plan.tailFrom, length });
      await tail.body!.pipeTo(writable, { preventClose: true });
    }
    await Promise.all(plan.filling);
    await writable.close();
  } catch (error) {
    // Anything else is the visitor going away, which ends the stream already.
    if (!(error instanceof SegmentFailure)) return;
    console.error(error.message);
    if (error.changed) await forgetFacts(plan);
    // An answer cut short, never one spliced from two versions: the client sees a body
    // shorter than its Content-Length.
    await writable.abort(error).catch(() => {});
  }
}

/**
 * The answer's last piece, its last chunk held back until the segments this answer fetched
 * are kept: the visitor has every byte of a fixed length only then, so a player's next range,
 * asked as soon as this one is complete, finds the segment it shares with this one instead of
 * fetching it again while the put still runs. A piece from the cache alone is piped natively.
 */
function sentOnceKept(
  piece: ReadableStream<Uint8Array>,
  filling: Promise<void>[],
): ReadableStream<Uint8Array> {
  if (filling.length === 0) return piece;
  let held: Uint8Array | undefined;
  return piece.pipeThrough(
    new TransformStream<Uint8Array, Uint8Array>({
      transform(chunk, controller) {
        if (held) controller.enqueue(held);
        held = chunk;
      },
      async flush(controller) {
        await Promise.all(filling);
        if (held) controller.enqueue(held);
      },
    }),
  );
}

/** Where segment `index` starts and how long it is (the last one is shorter). */
function segmentBounds(plan: SegmentPlan, index: number): { offset: number; length: number } {
  const offset = index * plan.config.segmentSize;
  return { offset, length: Math.min(plan.config.segmentSize, plan.facts.size - offset) };
}

/**
 * The bytes of segment `index` that the plan's answer takes: from Workers
 * Cache through the Segments entrypoint where it keeps them, else from the
 * Cache API (filled from B2 meanwhile).
 */
async function segmentPiece(plan: SegmentPlan, index: number): Promise<ReadableStream<Uint8Array>> {
  const { offset, length } = segmentBounds(plan, index);
  const within = {
    start: Math.max(plan.start, offset) - offset,
    end: Math.min(plan.end, offset + length - 1) - offset,
  };
  const entrypoint = segmentsEntrypoint(plan.ctx, plan.config);
  if (!entrypoint) return await segmentFromCacheApi(plan, { index, within });
  const piece = { index, within, entrypoint };
  // A range that starts inside a segment would wait, on a miss, for the bytes before it: the
  // segment is asked for only if kept, else the visitor's own bytes come from B2 at once while
  // the segment is kept meanwhile (one B2 request more, for his bytes alone).
  if (within.start === 0) return await segmentFromWorkersCache(plan, piece);
  const kept = await segmentFromWorkersCache(plan, { ...piece, ifKept: true });
  if (kept) return kept;
  const own = { offset: offset + within.start, length: within.end - within.start + 1 };
  const b2 = await b2Bytes(plan, own);
  // Once B2 has shown the facts' version still holds: no segment asked of a replaced object.
  plan.ctx.waitUntil(keepSegment(plan, index));
  return b2.body!;
}

/** The Cache API's copy of a segment (which slices a stored 200 itself), else B2's, kept. */
async function segmentFromCacheApi(
  plan: SegmentPlan,
  piece: { index: number; within: ByteRange },
): Promise<ReadableStream<Uint8Array>> {
  const { within } = piece;
  const { offset, length } = segmentBounds(plan, piece.index);
  const whole = within.start === 0 && within.end === length - 1;
  const key = await segmentKey(plan, piece.index);
  const lookup = new Request(key, {
    headers: whole ? {} : { Range: `bytes=${within.start}-${within.end}` },
  });
  const cached = await edgeCache().match(lookup);
  if (cached?.body && (cached.status === 200 || cached.status === 206)) return cached.body;
  await cached?.body?.cancel();
  const [kept, sent] = (await b2Bytes(plan, { offset, length })).body!.tee();
  const copy = kept.pipeThrough(fixedLengthStream(length));
  const headers = {
    "Cache-Control": `public, max-age=${plan.config.cacheTtl}`,
    "Content-Type": "application/octet-stream",
  };
  plan.filling.push(store(plan.ctx, key, new Response(copy, { headers })));
  // Not sliceBody(): a FixedLengthStream's readable piped into the answer's own
  // FixedLengthStream stalls in workerd, and the answer's length is fixed already.
  return whole ? sent : sliceStream(sent, within);
}

/**
 * The bytes of a segment as B2 sent them, the exact version the facts name:
 * the checked answer (its body is there), else a {@linkcode SegmentFailure}.
 */
async function b2Bytes(
  source: { config: WorkerConfig; name: string; facts: Pick<ObjectFacts, "fileId"> },
  bytes: { offset: number; length: number },
): Promise<Response> {
  const { offset, length } = bytes;
  const { config, name, facts } = source;
  const headers = { Authorization: config.token, Range: `bytes=${offset}-${offset + length - 1}` };
  const b2 = await fetchB2(name, { headers }, config);
  if (!(b2 instanceof Response)) {
    const why = b2 instanceof Error ? b2.message : b2;
    throw new SegmentFailure(`B2 did not answer for bytes ${offset}- of "${name}": ${why}`);
  }
  const fileId = b2.headers.get("x-bz-file-id");
  if ((b2.status === 206 || b2.status === 200) && fileId === facts.fileId && b2.body) return b2;
  await b2.body?.cancel();
  if (b2.ok || b2.status === 404 || b2.status === 416) {
    throw new SegmentFailure(
      `"${name}" changed while served (B2 answered ${b2.status} with another version): ` +
        "this answer ends here and the next request serves the new version",
      true,
    );
  }
  throw new SegmentFailure(`B2 answered ${b2.status} for bytes ${offset}- of "${name}"`);
}

// ---------------------------------------------------------------------------
// Segments in Workers Cache
//
// In workers-cache mode the worker keeps segments in Workers Cache itself: Workers Cache caches
// loopback calls between a worker's entrypoints through ctx.exports like visitors' requests
// (developers.cloudflare.com/workers/cache/configuration/: "caching applies to every fetch()
// invocation — eyeball requests, service binding fetch() calls, and loopback fetch() calls
// between entrypoints via ctx.exports"). So the default entrypoint asks the Segments
// entrypoint below for each segment, and each segment is a cached answer of its own: tiered,
// on workers.dev too, and purged by the object's tag. The entrypoint is part of the cache's
// key (developers.cloudflare.com/workers/cache/cache-keys/), and visitors only ever reach the
// default one, so no visitor's request is answered with a segment. Purge is scoped to the
// entrypoint that calls it (developers.cloudflare.com/workers/cache/purge/): the worker's purges
// are relayed to this entrypoint too (an event notification's one window later, together). Without ctx.exports (an older runtime) the Cache API
// keeps them, as in cache-api mode. The objects' facts stay in the Cache API in both modes.
// ---------------------------------------------------------------------------

/** Where segment requests go: the host is not part of Workers Cache's key. */
const SEGMENTS_ORIGIN = "https://segments.b2-private-cdn.invalid";

/** The Segments entrypoint where it keeps the segments; `undefined` where the Cache API does. */
function segmentsEntrypoint(ctx: ExecutionContext, config: WorkerConfig): Fetcher | undefined {
  if (config.cacheMode !== "workers-cache" || config.segmentSize === 0) return undefined;
  return ctx.exports?.Segments;
}

/**
 * A segment's address at the Segments entrypoint: the visitor's path, so that
 * a purge by path prefix matches there as for visitors, and in the query the
 * object's version, the segment size, the index and the segment's length (the
 * last one is shorter); never the token.
 */
function segmentUrl(plan: SegmentPlan, index: number): string {
  const query = new URLSearchParams({
    version: plan.facts.fileId,
    size: String(plan.config.segmentSize),
    index: String(index),
    length: String(segmentBounds(plan, index).length),
  });
  return `${SEGMENTS_ORIGIN}${plan.url.pathname}?${query}`;
}

/**
 * Asked of the Segments entrypoint with a segment wanted only if the cache keeps it: reached
 * only on a miss, it answers at once that it is not kept (404, never stored) instead of
 * asking B2. Not part of the cache's key (developers.cloudflare.com/workers/cache/cache-keys/).
 */
const IF_KEPT_HEADER = "X-B2-Private-CDN-If-Kept";

/**
 * The bytes `within` of a segment from the Segments entrypoint, through Workers Cache; with
 * `ifKept`, `undefined` when the cache does not keep it.
 */
async function segmentFromWorkersCache(
  plan: SegmentPlan,
  piece: { index: number; within: ByteRange; entrypoint: Fetcher; ifKept: true },
): Promise<ReadableStream<Uint8Array> | undefined>;
async function segmentFromWorkersCache(
  plan: SegmentPlan,
  piece: { index: number; within: ByteRange; entrypoint: Fetcher },
): Promise<ReadableStream<Uint8Array>>;
async function segmentFromWorkersCache(
  plan: SegmentPlan,
  piece: { index: number; within: ByteRange; entrypoint: Fetcher; ifKept?: true },
): Promise<ReadableStream<Uint8Array> | undefined> {
  const { index, within, entrypoint } = piece;
  const { length } = segmentBounds(plan, index);
  const whole = within.start === 0 && within.end === length - 1;
  const headers = new Headers(whole ? {} : { Range: `bytes=${within.start}-${within.end}` });
  if (piece.ifKept) headers.set(IF_KEPT_HEADER, "1");
  let answer: Response;
  try {
    answer = await entrypoint.fetch(new Request(segmentUrl(plan, index), { headers }));
    if (answer.status === 404 && answer.headers.has(IF_KEPT_HEADER)) {
      await answer.body?.cancel();
      if (piece.ifKept) return undefined;
      // A miss the cache collapsed onto another caller's "only if kept": asked again.
      answer = await entrypoint.fetch(new Request(segmentUrl(plan, index), { headers }));
    }
  } catch (error) {
    throw new SegmentFailure(`Segment ${index} of "${plan.name}" failed: ${error}`);
  }
  const sliced = answer.status === 206 &&
    answer.headers.get("Content-Range") === `bytes ${within.start}-${within.end}/${length}`;
  const complete = answer.status === 200 && answer.headers.get("Content-Length") === `${length}`;
  if (answer.body && (sliced || complete)) {
    // A miss may bring the whole segment to a range (what the cache hands the caller of a
    // ranged miss is not documented): sliced here then.
    return sliced || whole ? answer.body : sliceStream(answer.body, within);
  }
  await answer.body?.cancel();
  throw new SegmentFailure(
    `Segment ${index} of "${plan.name}" came back ${answer.status}` +
      (answer.status === 409 ? ": B2 holds another version now" : ""),
    answer.status === 409,
  );
}

/**
 * The entrypoint that keeps large objects' segments in Workers Cache (see the
 * section's comment). Reached only by this worker, through `ctx.exports`:
 * visitors never reach a named entrypoint. It checks no signed link and no
 * purge signature, so another Worker of the account bound to it by name (a
 * service binding with `entrypoint: "Segments"`) could read any object or
 * purge: bind it from nothing else.
 */
export const Segments = {
  async fetch(request: Request, env: Env, ctx: ExecutionContext): Promise<Response> {
    const config = readConfig(env);
    const url = new URL(request.url);
    if (request.method === "POST" && url.pathname === PURGE_PATH) {
      return await relayedPurge(request, ctx);
    }
    if (request.method !== "GET" && request.method !== "HEAD") {
      return textResponse(405, { Allow: "GET, HEAD" });
    }
    // Reached only on a miss: a kept segment is answered by the cache.
    if (request.headers.has(IF_KEPT_HEADER)) {
      return atEdgeNever(textResponse(404, { [IF_KEPT_HEADER]: "not kept" }));
    }
    return await segmentAnswer(url, config);
  },
};

/**
 * One whole segment as a 200 the cache keeps (whatever `Range` the cache
 * passes on: a 206 is never stored), tagged with its object's tag; 409 when
 * B2 holds another version than the one asked for, never stored.
 */
async function segmentAnswer(url: URL, config: WorkerConfig): Promise<Response> {
  const name = objectName(url.pathname, config);
  const fileId = url.searchParams.get("version") ?? "";
  const number = (key: string) => Number(url.searchParams.get(key));
  const [index, size, length] = [number("index"), number("size"), number("length")];
  if (
    "status" in name || fileId === "" || !Number.isSafeInteger(index) || index < 0 ||
    size !== config.segmentSize || size === 0 || !(length > 0 && length <= size)
  ) {
    return atEdgeNever(textResponse(400));
  }
  try {
    const source = { config, name: name.name, facts: { fileId } };
    const b2 = await b2Bytes(source, { offset: index * size, length });
    const headers = { "Content-Type": "application/octet-stream", "Content-Length": `${length}` };
    const answer = new Response(b2.body, { status: 200, headers });
    return edgeLifetime(answer, config, { tag: await objectTag(name.name) });
  } catch (error) {
    if (!(error instanceof SegmentFailure)) throw error;
    console.error(error.message);
    return atEdgeNever(textResponse(error.changed ? 409 : 502));
  }
}

/** The Segments entrypoint's own purge, asked by the default one: purges are scoped so. */
async function relayedPurge(request: Request, ctx: ExecutionContext): Promise<Response> {
  if (!ctx.cache) {
    return Response.json({
      success: false,
      errors: [{ code: 501, message: "ctx.cache is missing: Workers Cache is off" }],
    });
  }
  return Response.json(await ctx.cache.purge(await request.json() as PurgeOptions));
}

/** What the worker's purges go through. */
interface Purger {
  /** `ctx.cache.purge`: visitors' entries. */
  purge(options: PurgeOptions): Promise<PurgeResult>;
  /** The Segments entrypoint's own purge, where it keeps segments. */
  segments?: (options: PurgeOptions) => Promise<PurgeResult>;
}

/**
 * `ctx.cache`, and the Segments entrypoint's purge where it keeps segments;
 * `undefined` without Workers Cache. Every call counts against one purge rate
 * limit (Assumption: whether the two entrypoints share it is not documented;
 * sharing is the worst case).
 */
function purgerFor(ctx: ExecutionContext, config: WorkerConfig): Purger | undefined {
  const cache = ctx.cache;
  if (!cache) return undefined;
  const segments = segmentsEntrypoint(ctx, config);
  return {
    purge: (options) => cache.purge(options),
    ...(segments && {
      segments: async (options: PurgeOptions) => {
        try {
          const relayed = await segments.fetch(
            new Request(`${SEGMENTS_ORIGIN}${PURGE_PATH}`, {
              method: "POST",
              body: JSON.stringify(options),
            }),
          );
          return await relayed.json() as PurgeResult;
        } catch (error) {
          return { success: false, errors: [{ code: 502, message: String(error) }] };
        }
      },
    }),
  };
}

// ---------------------------------------------------------------------------
// Signed links
//
// A path under WORKER_SIGNED_PREFIXES is served only with a link that `main.ts sign` (or any
// backend holding WORKER_SIGNING_KEY) made: `?exp=<unix>[&nbf=<unix>][&dl=<name>]
// [&scope=<prefix>]&sig=<base64url>`, an HMAC-SHA256 over signedLinkMessage(). The check runs
// before any cache lookup or B2 request, so a cached copy is never served to a request that
// would be refused; the query never reaches B2 nor changes the name served.
// ---------------------------------------------------------------------------

/** The signing bindings, parsed: what {@linkcode checkSignedLink} needs. */
export interface SigningConfig {
  /** Canonical protected prefixes, each ending in `/`; empty protects nothing. */
  prefixes: string[];
  /**
   * `WORKER_INDEX_FILE`: a folder's path serves it, so a folder is protected when its index
   * file is (`/solo/index.html` protects `/solo/` too). Empty: folders serve nothing.
   */
  indexFile: string;
  /** The current key (base64url); empty refuses every protected path. */
  key: string;
  /** The key before the last rotation; empty when there is none. */
  previousKey: string;
  /** Unix seconds until which links signed with `previousKey` are accepted. */
  previousUntil: number;
  /** The longest life a link may claim, in seconds, counted from now. */
  maxTtl: number;
}

/** What the signature check decided for one request. */
export type LinkCheck =
  | { access: "public" }
  | { access: "refused" }
  | {
    access: "signed";
    /** Unix seconds when this permission ends: the link's expiry, or the previous key's end. */
    expiresAt: number;
    /** The `Content-Disposition` file name the link asks for. */
    downloadName?: string;
    /** The link's query as {@linkcode signedLinkQuery} writes it: the one spelling served. */
    query: string;
  };

/** What a signature covers: one canonical path, or every path under a canonical prefix. */
export interface SignedGrant {
  /** A canonical path (`/members/a.mp4`) or, with `prefix`, a canonical prefix ending in `/`. */
  path: string;
  prefix: boolean;
  /** Unix seconds. */
  expires: number;
  notBefore?: number;
  downloadName?: string;
}

// Links must not outlive this unless WORKER_SIGNED_MAX_TTL says otherwise: a week, the longest
// a B2 download authorization lives, so a leaked link is worth no more than a leaked B2 one.
const DEFAULT_SIGNED_MAX_TTL = 7 * 86_400;
// A link signed at the full cap on a clock a little ahead of the edge's is still accepted.
const SIGNING_CLOCK_SKEW = 300;
// The first line of every signed message: a version, so a later format cannot be confused
// with this one, and a label, so the key signs nothing else by mistake.
const SIGNED_LINK_VERSION = "b2cdn-link-v1";
// Every parameter a signed link may carry; any other on a protected path is refused, and any
// other spelling of these goes to the one signedLinkQuery() writes, so each grant has one URL
// (the query is part of Workers Cache's key) and nothing rides along.
const SIGNED_LINK_PARAMETERS = new Set(["exp", "nbf", "dl", "scope", "sig"]);
const UNIX_SECONDS = /^\d{1,11}$/;
// 32 bytes of HMAC-SHA256, base64url without padding.
const SIGNATURE = /^[A-Za-z0-9_-]{43}$/;
// The last characters of such a signature whose 2 unused bits are zero: base64url's values 0, 4,
// 8, ... 60.
const CANONICAL_SIGNATURE_END = /[AEIMQUYcgkosw048]$/;
// What a download name may not hold: a separator, a quote, or a control character.
const HOSTILE_DOWNLOAD_NAME = /[/\\"\p{Cc}]/u;
const MAX_DOWNLOAD_NAME_BYTES = 255;
// Imported keys by their base64url text: bindings do not change within an isolate, and an
// import per request would cost every protected request.
// Imported once per isolate, by encoding and binding text: the purge key (hex), the signing
// keys (base64url) and B2's event secret (its characters as they are).
const HMAC_KEYS = new Map<string, Promise<CryptoKey | undefined>>();
type KeyEncoding = "hex" | "base64url" | "text";

/** Parses the signing bindings; anything malformed fails closed (more protected, not less). */
export function readSigning(env: Env): SigningConfig {
  const prefixes = (env.WORKER_SIGNED_PREFIXES ?? "").split(",")
    .map((prefix) => prefix.trim())
    .filter((prefix) => prefix !== "")
    .map((prefix) => canonicalPrefix(prefix) ?? "/");
  const until = Date.parse(env.WORKER_SIGNING_KEY_PREVIOUS_UNTIL ?? "");
  return {
    prefixes,
    indexFile: env.WORKER_INDEX_FILE ?? "index.html",
    key: env.WORKER_SIGNING_KEY ?? "",
    previousKey: env.WORKER_SIGNING_KEY_PREVIOUS ?? "",
    previousUntil: Number.isNaN(until) ? 0 : Math.floor(until / 1000),
    maxTtl: wholeNumber(env.WORKER_SIGNED_MAX_TTL, DEFAULT_SIGNED_MAX_TTL),
  };
}

/**
 * The canonical form of a request path: each segment decoded once, exactly
 * as {@linkcode objectName} decodes it, so `/%6Dembers/a` and `/members/a`
 * are one path. `undefined` for a path `objectName` refuses.
 */
export function canonicalPath(pathname: string): string | undefined {
  const segments = pathname.split("/");
  // "" is no path (a URL's pathname is at least "/"): refused, not taken for "/".
  if (segments[0] !== "" || segments.length < 2) return undefined;
  const folder = segments.length > 2 && segments.at(-1) === "";
  const parts = segments.slice(1, folder ? -1 : undefined);
  if (parts.length === 1 && parts[0] === "") return "/";
  const decoded = parts.map(decodeSegment);
  if (decoded.some((part) => part === undefined)) return undefined;
  return `/${decoded.join("/")}${folder ? "/" : ""}`;
}

// What a canonical URL path keeps as it is: RFC 3986's unreserved characters, its sub-delims,
// ":" and "@" (a path's pchar), none of which a URL parser encodes in a path, so a Location
// written with them comes back unchanged (no redirect loop). Everything else is percent-encoded,
// UTF-8, uppercase hex: "@2x.png" stays, "%68" becomes "h", "%c3%a9" becomes "%C3%A9".
// "/" stays too: it separates the segments.
const PATH_ESCAPED = /[^A-Za-z0-9\-._~!$&'()*+,;=:@/]/gu;

/**
 * A canonical path (from {@linkcode canonicalPath}, decoded) written as a
 * URL path, in the one spelling the worker serves: every other spelling of
 * it is answered `301` to this one.
 */
export function urlPath(path: string): string {
  // One pass over the path; a lone surrogate throws, as encodeURIComponent() does.
  return path.replace(PATH_ESCAPED, (c) => encodeURIComponent(c));
}

/**
 * The one spelling of a request's path and query that is served (the rule
 * `sign` and `purge` write links and prefixes by): its canonical path written
 * by {@linkcode urlPath}, and for a signed link the query
 * {@linkcode signedLinkQuery} writes for its grant; on a folder that is
 * `listed` ({@linkcode listedFolder}), a listing's query as
 * {@linkcode listingQuery} writes it. `undefined` for a path
 * {@linkcode objectName} refuses.
 */
export function canonicalTarget(
  url: URL,
  link: LinkCheck,
  options: { listed?: boolean } = {},
): string | undefined {
  const path = canonicalPath(url.pathname);
  if (path === undefined) return undefined;
  const query = link.access === "signed" ? `?${link.query}` : publicQuery(url, options);
  return urlPath(path) + query;
}

/**
 * The query a public path keeps, with its `?`: none, but a listing's own, or
 * on anything else a download link's ({@linkcode downloadQuery}). The query is
 * part of Workers Cache's key, so each other would be one more entry and one
 * more B2 download of the same object: a query a public path may keep is
 * added here, and only here.
 */
function publicQuery(url: URL, options: { listed?: boolean }): string {
  if (options.listed) return listingQuery(url)?.canonical ?? "";
  return downloadQuery(url)?.canonical ?? "";
}

// Download links: `?download` names the attachment after the object, `?download=<name>` as
// asked. What the name may not hold: a separator, a control character, or a character that
// reorders text (U+202E shows "exe.txt" as "txt.exe"), so the name a visitor saves is the one
// they read.
const REORDERING_CHARACTERS = "\\u061C\\u200E\\u200F\\u202A-\\u202E\\u2066-\\u2069";
const HOSTILE_ATTACHMENT_NAME = new RegExp(`[/\\\\\\p{Cc}${REORDERING_CHARACTERS}]`, "u");
const HOSTILE_ATTACHMENT_CHARACTERS = new RegExp(HOSTILE_ATTACHMENT_NAME, "gu");
const REORDERING_CHARACTER = new RegExp(`[${REORDERING_CHARACTERS}]`, "gu");

/**
 * A download link's query: exactly one `download` parameter, bare (the
 * object's own name) or with a file name of at most 255 UTF-8 bytes that
 * holds no separator, control or bidirectional formatting character.
 * `canonical` is its one spelling (`?download`, or `?download=` and the name
 * form-encoded, as `URLSearchParams` writes it); `name` is empty for the
 * object's own. `undefined` for any other query, which is answered `301` to
 * the bare path.
 */
export function downloadQuery(url: URL): { name: string; canonical: string } | undefined {
  // Most requests have no query: nothing to read, here and in canonicalTarget()'s call.
  if (url.search === "") return undefined;
  const parameters = [...url.searchParams];
  const [only] = parameters;
  if (parameters.length !== 1 || only?.[0] !== "download") return undefined;
  const name = only[1];
  if (name === "") return { name, canonical: "?download" };
  const valid = name.trim() !== "" && !HOSTILE_ATTACHMENT_NAME.test(name) &&
    UTF8.encode(name).length <= MAX_DOWNLOAD_NAME_BYTES;
  return valid ? { name, canonical: `?${new URLSearchParams({ download: name })}` } : undefined;
}

/**
 * The file name a public request's download link asks for: its own, or the last
 * part of the object's B2 name for a bare `?download`.
 */
function attachmentName(asked: { name: string }, objectName: string): string {
  return asked.name || objectName.slice(objectName.lastIndexOf("/") + 1)
    .replace(HOSTILE_ATTACHMENT_CHARACTERS, "_");
}

/**
 * Behind Workers Cache, a download link that names its file (`?download=<name>`) is answered
 * from the object's own `?download` entry, through a loopback call that the cache serves like a
 * visitor's (developers.cloudflare.com/workers/cache/configuration/: caching applies to
 * "loopback fetch() calls between entrypoints via ctx.exports"), renamed by the caller, and never
 * kept itself: names are free to invent, and each one kept would be one more entry and one more
 * B2 download of the whole object. Assumption: a loopback call to the default entrypoint shares
 * visitors' entries, since the entrypoint is what the key adds. Where the runtime offers no
 * `ctx.exports`, the name is dropped by a `301` to `?download`, which costs nothing new.
 */
async function namedFromShared(
  request: Request,
  target: { url: URL; ctx: ExecutionContext },
): Promise<Response> {
  const shared = new URL(target.url);
  shared.search = "?download";
  const self = target.ctx.exports?.default;
  if (!self) {
    return atEdgeNever(movedTo(shared.pathname + shared.search));
  }
  const answered = await self.fetch(new Request(shared, request));
  // The loopback's answer may have immutable headers; a copy can be renamed and marked.
  return atEdgeNever(new Response(answered.body, answered));
}

/**
 * Names an object's answer (200 or 206) as an attachment when a download link asked for one,
 * in place: behind Workers Cache before the cache stores it, so the link's entry keeps it.
 */
function asAttachment(response: Response, name: string | undefined): Response {
  if (name !== undefined && (response.status === 200 || response.status === 206)) {
    response.headers.set("Content-Disposition", contentDisposition(name));
  }
  return response;
}

/** A prefix (as configured, percent-encoded or not) in canonical form, always ending in `/`. */
function canonicalPrefix(prefix: string): string | undefined {
  const path = canonicalPath(prefix);
  if (path === undefined) return undefined;
  return path.endsWith("/") ? path : `${path}/`;
}

/**
 * Whether a `scope` (decoded once already, as a query parameter) is a
 * canonical prefix: it is not decoded again, so it must hold no segment that
 * {@linkcode objectName} would refuse.
 */
function isCanonicalPrefix(scope: string): boolean {
  if (scope === "/") return true;
  if (!scope.startsWith("/") || !scope.endsWith("/")) return false;
  return scope.slice(1, -1).split("/").every((part) =>
    part !== "" && part !== "." && part !== ".." && !HOSTILE_CHARACTER.test(part)
  );
}

/**
 * Whether a canonical path lies under a canonical prefix, on whole
 * segments: `/course1/` covers `/course1`, `/course1/` and `/course1/a`,
 * never `/course10/a`; `/` covers everything.
 */
export function coversPath(prefix: string, path: string): boolean {
  const folder = prefix.replace(/\/$/, "");
  return path === folder || path.startsWith(`${folder}/`);
}

/**
 * Whether a canonical path needs a signature: it lies under a prefix, or it
 * is a folder whose index file (the name finally served) does.
 */
export function isProtected(
  path: string,
  signing: Pick<SigningConfig, "prefixes" | "indexFile">,
): boolean {
  const served = path.endsWith("/") && signing.indexFile !== "" ? path + signing.indexFile : path;
  return signing.prefixes.some((prefix) => coversPath(prefix, path) || coversPath(prefix, served));
}

/**
 * The exact text a signature is the HMAC-SHA256 of, lines joined by `\n`:
 * the version, the canonical path or prefix, `path` or `prefix`, the expiry,
 * the not-before time (empty when none) and the download name (empty when
 * none). No line can hold a `\n`: canonical paths and download names refuse
 * control characters.
 */
export function signedLinkMessage(grant: SignedGrant): string {
  return [
    SIGNED_LINK_VERSION,
    grant.path,
    grant.prefix ? "prefix" : "path",
    String(grant.expires),
    grant.notBefore === undefined ? "" : String(grant.notBefore),
    grant.downloadName ?? "",
  ].join("\n");
}

/**
 * The query of a link to a grant with this signature, exactly as `sign`
 * writes it (`exp`, `nbf`, `dl`, `scope`, `sig`, form-encoded, the signature
 * in base64url without padding): the one spelling of the grant the worker
 * serves; any other is answered `301` to it.
 */
export function signedLinkQuery(grant: SignedGrant, signature: Uint8Array): string {
  return grantQuery(grant, toBase64Url(signature));
}

/** {@linkcode signedLinkQuery} with the signature written already, as base64url. */
function grantQuery(grant: SignedGrant, signature: string): string {
  // Digits and base64url are their own form encoding: written as they are, since the worker
  // writes this query on every signed request to compare it with the one asked, and each
  // call into URLSearchParams there cost microseconds (docs/benchmarks.md, "Signed links").
  let query = `exp=${grant.expires}`;
  if (grant.notBefore !== undefined) query += `&nbf=${grant.notBefore}`;
  if (grant.downloadName !== undefined) {
    query += `&${new URLSearchParams({ dl: grant.downloadName })}`;
  }
  if (grant.prefix) query += `&${new URLSearchParams({ scope: grant.path })}`;
  return `${query}&sig=${signature}`;
}

/** Base64url without padding, as signatures are written. */
export function toBase64Url(bytes: Uint8Array): string {
  return btoa(String.fromCharCode(...bytes)).replaceAll("+", "-").replaceAll("/", "_")
    .replace(/=+$/, "");
}

/** Whether a download name may go into `Content-Disposition` and a signed message. */
export function validDownloadName(name: string): boolean {
  return name !== "" && name.trim() === name && !HOSTILE_DOWNLOAD_NAME.test(name) &&
    UTF8.encode(name).length <= MAX_DOWNLOAD_NAME_BYTES;
}

/**
 * The grant a signed link's query asks for, with its signature's text, when every parameter is
 * known, given once, well formed and in force now; `undefined` otherwise. The signature is
 * not checked here.
 */
function askedGrant(
  url: URL,
  options: { path: string; signing: SigningConfig; now: number },
): { signedGrant: SignedGrant; sig: string } | undefined {
  const { path, signing, now } = options;
  const parameters = new Map<string, string>();
  for (const [name, value] of url.searchParams) {
    if (!SIGNED_LINK_PARAMETERS.has(name) || parameters.has(name)) return undefined;
    parameters.set(name, value);
  }
  const [exp = "", nbf, dl, scope, sig = ""] = ["exp", "nbf", "dl", "scope", "sig"]
    .map((name) => parameters.get(name));
  if (!UNIX_SECONDS.test(exp) || !SIGNATURE.test(sig)) return undefined;
  if (nbf !== undefined && !UNIX_SECONDS.test(nbf)) return undefined;
  if (dl !== undefined && !validDownloadName(dl)) return undefined;
  if (scope !== undefined && (!isCanonicalPrefix(scope) || !coversPath(scope, path))) {
    return undefined;
  }
  const expires = Number(exp);
  const notBefore = nbf === undefined ? undefined : Number(nbf);
  if (now >= expires || (notBefore !== undefined && now < notBefore)) return undefined;
  if (expires - now > signing.maxTtl + SIGNING_CLOCK_SKEW) return undefined;

  const signedGrant: SignedGrant = {
    path: scope ?? path,
    prefix: scope !== undefined,
    expires,
    ...(notBefore !== undefined && { notBefore }),
    ...(dl !== undefined && { downloadName: dl }),
  };
  return { signedGrant, sig };
}

/**
 * Decides whether a request may be served: `public` when its path is not
 * protected, `signed` when its link is valid now, else `refused`. Missing,
 * malformed, expired, not yet valid, forged and foreign parameters are all
 * one `refused`, so probing learns nothing. The signature is compared in
 * constant time by `crypto.subtle.verify`.
 */
export async function checkSignedLink(
  url: URL,
  options: { signing: SigningConfig; now: number },
): Promise<LinkCheck> {
  const { signing, now } = options;
  // The common case, a site with nothing protected, costs one comparison.
  if (signing.prefixes.length === 0) return { access: "public" };
  const path = canonicalPath(url.pathname);
  if (path !== undefined && !isProtected(path, signing)) return { access: "public" };
  const refused = { access: "refused" } as const;
  if (path === undefined) return refused;

  const asked = askedGrant(url, { path, signing, now });
  if (!asked) return refused;
  const { signedGrant, sig } = asked;
  const { downloadName: dl, expires } = signedGrant;
  const message = UTF8.encode(signedLinkMessage(signedGrant));
  const signature = fromBase64Url(sig);
  // A signature's 43rd character carries 4 of its bits and 2 unused ones: with those zero, as
  // toBase64Url() writes them, the text asked is the one written, and needs no writing again.
  const query = grantQuery(
    signedGrant,
    CANONICAL_SIGNATURE_END.test(sig) ? sig : toBase64Url(signature),
  );
  const grant = (expiresAt: number) =>
    ({
      access: "signed",
      expiresAt,
      ...(dl !== undefined && { downloadName: dl }),
      query,
    }) as const;
  const mac = { encoding: "base64url" as const, signature, message };
  if (await hmacVerifies(signing.key, mac)) return grant(expires);
  if (
    now < signing.previousUntil &&
    await hmacVerifies(signing.previousKey, mac)
  ) {
    return grant(Math.min(expires, signing.previousUntil));
  }
  return refused;
}

/**
 * Seconds a signed answer may still be kept (by a browser, or at the edge:
 * cap the edge lifetime with it), `undefined` for a public one. Never
 * negative.
 */
export function signedLifetime(check: LinkCheck, now: number): number | undefined {
  return check.access === "signed" ? Math.max(0, check.expiresAt - now) : undefined;
}

/**
 * Makes a signed answer private to the browser for at most the link's
 * remaining life (never longer than it would otherwise keep it), and names
 * the download when the link asks for it. Public answers and `no-store`
 * ones pass unchanged. The headers are changed in place.
 */
export function applyGrant(response: Response, check: LinkCheck, now: number): Response {
  const lifetime = signedLifetime(check, now);
  if (lifetime === undefined || check.access !== "signed") return response;
  const cacheControl = response.headers.get("Cache-Control") ?? "";
  if (!/(^|,)\s*no-store\s*(,|$)/i.test(cacheControl)) {
    const own = /(?:^|,)\s*max-age=(\d+)/i.exec(cacheControl)?.[1];
    const maxAge = own === undefined ? lifetime : Math.min(lifetime, Number(own));
    response.headers.set("Cache-Control", `private, max-age=${maxAge}`);
  }
  // A 304 that updates the browser's copy's Content-Disposition updates it to the link's.
  const named = response.status === 200 || response.status === 206 ||
    (response.status === 304 && response.headers.has("Content-Disposition"));
  if (check.downloadName !== undefined && named) {
    response.headers.set("Content-Disposition", contentDisposition(check.downloadName));
  }
  return response;
}

/**
 * `Content-Disposition: attachment` for a file name, as RFC 6266 advises: `filename` an ASCII
 * fallback, a quoted string without `"`, `\\` or `%` (section 4.3 and appendix D: recipients
 * treat them unevenly), and `filename*` the exact name, UTF-8 in RFC 8187's form. Any name
 * gives one header line: everything outside printable ASCII is replaced or percent-encoded.
 */
export function contentDisposition(name: string): string {
  const ascii = name.replace(/[^\x20-\x7e]|["\\%]/g, "_");
  const exact = encodeURIComponent(name).replace(
    /['()*]/g,
    (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`,
  );
  return `attachment; filename="${ascii}"; filename*=UTF-8''${exact}`;
}

async function hmacVerifies(
  key: string,
  mac: {
    encoding: KeyEncoding;
    signature: Uint8Array<ArrayBuffer>;
    message: Uint8Array<ArrayBuffer>;
  },
): Promise<boolean> {
  const { encoding, signature, message } = mac;
  if (key === "") return false;
  const id = `${encoding}:${key}`;
  let imported = HMAC_KEYS.get(id);
  if (imported === undefined) {
    imported = importHmacKey(key, encoding);
    HMAC_KEYS.set(id, imported);
  }
  const cryptoKey = await imported;
  return cryptoKey !== undefined &&
    await crypto.subtle.verify("HMAC", cryptoKey, signature, message);
}

async function importHmacKey(key: string, encoding: KeyEncoding): Promise<CryptoKey | undefined> {
  const bytes = encoding === "hex"
    ? fromHex(key)
    : encoding === "base64url"
    ? fromBase64Url(key)
    : UTF8.encode(key);
  // main.ts refuses shorter signing keys; a binding set by hand that is too short protects nothing.
  if (encoding === "base64url" && bytes.length < 32) return undefined;
  return await crypto.subtle.importKey(
    "raw",
    bytes,
    { name: "HMAC", hash: "SHA-256" },
    false,
    ["verify"],
  );
}

/** Bytes of base64url text (padding optional), as keys are read; empty for anything else. */
export function fromBase64Url(text: string): Uint8Array<ArrayBuffer> {
  if (!/^[A-Za-z0-9_-]*={0,2}$/.test(text)) return new Uint8Array(0);
  try {
    const binary = atob(text.replace(/=+$/, "").replaceAll("-", "+").replaceAll("_", "/"));
    // A loop, not Uint8Array.from(binary, ...): a signed link's signature is read on each request.
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
    return bytes;
  } catch {
    return new Uint8Array(0);
  }
}

// ---------------------------------------------------------------------------
// Event notifications
//
// With B2_EVENT_NOTIFICATIONS=on, refresh gives the bucket a rule under which B2 POSTs what
// changed (objects created or replaced, deleted, hidden) to EVENTS_PATH, signed with
// B2_EVENT_NOTIFICATION_SECRET
// (backblaze.com/docs/cloud-storage-event-notifications-reference-guide).
// Each changed object of our bucket under our prefix has its tag purged, the tag its answers
// carry (objectTag). Anything not signed with the secret over the exact body gets what any
// other POST gets. B2 delivers at least once and retries whatever is not a 2xx, so an answer
// is 200 only once every event in it is covered by a purge that worked; a refused or rate
// limited purge answers 503, and B2 sends the events again later.
//
// Bursts: Workers Cache takes 5 purges a minute, bursts to 25, up to 100 tags each
// (developers.cloudflare.com/workers/cache/, purge). Tags are purged while this isolate's
// estimate of that budget keeps PURGE_RESERVE in hand; past it, a burst is coalesced: one
// purge of everything at most every COALESCE_SECONDS covers every event that came before it,
// and the events that come after wait (503, Retry-After) for the next. A replayed
// notification purges the same objects again, or nothing when they were purged since.
// ---------------------------------------------------------------------------

const EVENTS_PATH = "/.well-known/b2-private-cdn/events";
const EVENT_SIGNATURE_HEADER = "X-Bz-Event-Notification-Signature";
// B2 sends at most 50 events a POST (maxEventsPerBatch), well under a kilobyte each.
const MAX_EVENTS_BODY_BYTES = 256 * 1024;
// What changes an object as visitors see it; b2:TestEvent and types added later purge nothing.
const CHANGE_EVENT = /^b2:(ObjectCreated|ObjectDeleted|HideMarkerCreated):/;
const PURGE_BURST = 25;
const PURGES_PER_MINUTE = 5;
// Kept for coalesced purges and for `main.ts purge`, which share the same budget.
const PURGE_RESERVE = 5;
// Four purges of everything a minute at most: under the refill of five, so tags come back.
const COALESCE_SECONDS = 15;
// Assumption: B2's clock and the edge's agree within this. An event this isolate has not seen
// before is covered by an earlier purge only when that is this much later than its timestamp.
const EVENT_CLOCK_SKEW_MS = 10_000;
// Cache API deletions a delivery makes at most: each is a subrequest, and the Free plan allows
// 50 a request (developers.cloudflare.com/workers/platform/limits/), purges included. They only
// reach one data centre anyway; the tag purge is what reaches everywhere.
const MAX_CACHE_DELETES = 40;
// What one change may cost there: its path, its folder's for an index file, a large object's facts.
const CACHE_DELETES_PER_CHANGE = 3;
// B2's largest batch (1-50, the reference guide).
const MAX_EVENTS_PER_BATCH = 50;
// How long an oversized cache-api delivery waits; what it asks for is a refresh, which sets
// the batch that fits.
const OVERSIZED_RETRY_SECONDS = 300;
// Tags purged and events seen lately, so that a retried or replayed notification costs no
// second purge.
const REMEMBERED = 20_000;

/** One change, as B2 reports it; only the fields used here. */
interface ChangeEvent {
  tag: string;
  /** The tags of the listings that show the name (listings on), else none. */
  listingTags: string[];
  name: string;
  /** B2's `eventTimestamp`, ms: the latest of the name's events. */
  at: number;
  /** B2's `eventId`s of the name's events (unique: B2's idempotency key). */
  ids: string[];
}

/**
 * The `maxEventsPerBatch` refresh sets on the rule: B2's largest (50), but in
 * `cache-api` mode only as many events as one delivery's Cache API deletions
 * always cover (13: three keys a change, 40 deletions a delivery), so that
 * every copy a delivery names here is deleted before it is answered 200.
 */
export function eventsPerBatch(cacheMode: string): number {
  return cacheMode === "cache-api"
    ? Math.floor(MAX_CACHE_DELETES / CACHE_DELETES_PER_CHANGE)
    : MAX_EVENTS_PER_BATCH;
}

/**
 * This isolate's view of the purge budget and of what it purged. Only an
 * estimate (other isolates purge too): the answer of each purge decides.
 */
const eventPurges = {
  tokens: PURGE_BURST,
  tokensAt: 0,
  everythingAt: -Infinity,
  everythingTriedAt: -Infinity,
  /** When each tag was last purged (ms, this isolate's clock). */
  tags: new Map<string, number>(),
  /** When each event was first received (ms, this isolate's clock). */
  seen: new Map<string, number>(),
  /** Tags purged for visitors whose segments are still to be purged, or everything. */
  segmentsOwed: new Set<string>(),
  segmentsOwedEverything: false,
  /** When a purge of the Segments entrypoint was scheduled; -Infinity once it has run. */
  segmentsScheduledAt: -Infinity,
};

// waitUntil work gets 30 s after the answer (developers.cloudflare.com/workers/runtime-apis/
// context/): the Segments purge waits at most 20 s, and one scheduled longer ago than the 30 s
// was cut off with its isolate's work and is scheduled again.
const SEGMENTS_PURGE_DELAY_MAX_MS = 20_000;
const WAIT_UNTIL_MS = 30_000;

/**
 * Purges the segments of what a delivery just purged for visitors, one window later and
 * together with whatever later deliveries add meanwhile: bursts spend the purge budget on
 * visitors' entries first, and the segments cost one purge a window. Done after B2 is
 * answered (ctx.waitUntil); what fails stays owed for the next delivery this isolate gets
 * to schedule, and B2, answered 200 already, does not deliver again: until then, elsewhere, a
 * replaced large object's old segments may still be served.
 */
function oweSegmentsPurge(
  ctx: ExecutionContext,
  purge: NonNullable<Purger["segments"]>,
  how: { covered: PurgeOptions; windowMs: number },
): void {
  const state = eventPurges;
  if (how.covered.purgeEverything) state.segmentsOwedEverything = true;
  for (const tag of how.covered.tags ?? []) state.segmentsOwed.add(tag);
  if (Date.now() - state.segmentsScheduledAt < WAIT_UNTIL_MS) return;
  state.segmentsScheduledAt = Date.now();
  const delay = Math.min(how.windowMs, SEGMENTS_PURGE_DELAY_MAX_MS);
  ctx.waitUntil((async () => {
    await new Promise((resolve) => setTimeout(resolve, delay));
    const tags = [...state.segmentsOwed];
    const everything = state.segmentsOwedEverything || tags.length > MAX_PURGE_OPERATIONS;
    state.segmentsOwed.clear();
    state.segmentsOwedEverything = false;
    state.tokens = Math.max(0, state.tokens - 1);
    // purgerFor's relay answers a failure as a result, never by throwing.
    const result = await purge(everything ? { purgeEverything: true } : { tags });
    state.segmentsScheduledAt = -Infinity;
    if (result.success) return;
    console.error(`Cannot purge segments yet: ${JSON.stringify(result.errors)}`);
    for (const tag of tags) state.segmentsOwed.add(tag);
    state.segmentsOwedEverything ||= everything;
  })());
}

/**
 * B2's notification at `EVENTS_PATH`: purges what changed and answers B2;
 * `undefined` when it is not signed with the secret, so it gets what any POST gets.
 */
async function eventNotification(
  request: Request,
  env: Env,
  options: { url: URL; config: WorkerConfig; ctx: ExecutionContext },
): Promise<Response | undefined> {
  const body = await signedEventBody(request, env.B2_EVENT_NOTIFICATION_SECRET ?? "");
  if (body === undefined) return undefined;
  const { url, config, ctx } = options;
  let events: unknown;
  try {
    events = (JSON.parse(new TextDecoder().decode(body)) as { events?: unknown })?.events;
  } catch {
    events = undefined;
  }
  // Signed, so B2's: a retry would bring the same body, and B2 retries what is not a 2xx until
  // it suspends the rule. There is nothing in it to purge.
  if (!Array.isArray(events)) return serviceReply(200, { purged: 0, note: "no events list" });
  const changes = await changesOf(events, config);
  if (changes.length === 0) return serviceReply(200, { purged: 0 });
  if (config.cacheMode === "cache-api") {
    const { deleted, left } = await deleteHere(url, changes, config);
    if (left === 0) return serviceReply(200, { purged: changes.length, deletedHere: deleted });
    // More than one delivery may delete: only a rule set before refresh lowered its batch
    // (eventsPerBatch) sends that many. Answered 503, so B2 keeps the events until then.
    return serviceReply(503, {
      error: `${left} Cache API deletions over the ${MAX_CACHE_DELETES} a delivery may make: ` +
        "run refresh, which sets the rule's batch that fits",
      deletedHere: deleted,
    }, OVERSIZED_RETRY_SECONDS);
  }
  await forgetLargeHere(url, changes, config);
  if (config.cacheMode !== "workers-cache") return serviceReply(200, { purged: 0 });
  const purger = purgerFor(ctx, config);
  if (!purger) return serviceReply(503, { error: "Workers Cache is off for this version" }, 60);
  const windowMs = wholeNumber(env.WORKER_EVENT_COALESCE_SECONDS, COALESCE_SECONDS) * 1000;
  const outcome = await purgeChanges(purger, changes, { now: Date.now(), windowMs });
  const segments = outcome.covered && purger.segments;
  if (segments) oweSegmentsPurge(ctx, segments, { covered: outcome.covered!, windowMs });
  return outcome.retryAfter === undefined
    ? serviceReply(200, {
      purged: changes.length,
      by: outcome.by,
      ...(segments &&
        { segments: `purged in ${Math.min(windowMs, SEGMENTS_PURGE_DELAY_MAX_MS)} ms` }),
    })
    : serviceReply(503, { error: "purge refused or rate limited" }, outcome.retryAfter);
}

/**
 * The exact body bytes when `X-Bz-Event-Notification-Signature` is `v1=` and
 * the hex HMAC-SHA256 of them under `secret` (its characters as they are),
 * checked by `crypto.subtle.verify` in constant time; else `undefined`.
 */
async function signedEventBody(
  request: Request,
  secret: string,
): Promise<Uint8Array<ArrayBuffer> | undefined> {
  if (!/^[A-Za-z0-9]{32}$/.test(secret)) return undefined;
  const header = request.headers.get(EVENT_SIGNATURE_HEADER) ?? "";
  const signature = /^v1=([0-9a-f]{64})$/i.exec(header.trim())?.[1];
  if (!signature) return undefined;
  const body = await readCappedBytes(request, MAX_EVENTS_BODY_BYTES);
  if (body === undefined) return undefined;
  const mac = {
    encoding: "text" as const,
    signature: fromHex(signature.toLowerCase()),
    message: body,
  };
  const valid = await hmacVerifies(secret, mac);
  return valid ? body : undefined;
}

/** The changes of our bucket under our prefix, one per name (the latest), with their tags. */
async function changesOf(events: unknown[], config: WorkerConfig): Promise<ChangeEvent[]> {
  const latest = new Map<string, { at: number; ids: string[] }>();
  for (const event of events) {
    const { bucketName, eventType, objectName, eventTimestamp, eventId } = (event ?? {}) as Record<
      string,
      unknown
    >;
    if (bucketName !== config.bucketName || typeof eventType !== "string") continue;
    if (!CHANGE_EVENT.test(eventType) || typeof objectName !== "string") continue;
    if (!objectName.startsWith(config.prefix)) continue;
    const at = typeof eventTimestamp === "number" ? eventTimestamp : Date.now();
    const known = latest.get(objectName) ?? { at: 0, ids: [] };
    if (typeof eventId === "string") known.ids.push(eventId);
    latest.set(objectName, { at: Math.max(at, known.at), ids: known.ids });
  }
  const listed = async (name: string) =>
    config.listing ? await Promise.all(foldersAbove(name, config.prefix).map(listingTag)) : [];
  return await Promise.all(
    [...latest].map(async ([name, { at, ids }]) => ({
      name,
      at,
      ids,
      tag: await objectTag(name),
      listingTags: await listed(name),
    })),
  );
}

/**
 * Purges the tags of `changes` not purged since they happened, in one
 * request, while the budget allows; else one purge of everything per
 * window. `retryAfter` (seconds) when some change is left uncovered.
 */
async function purgeChanges(
  cache: Purger,
  changes: ChangeEvent[],
  clock: { now: number; windowMs: number },
): Promise<
  { by: "tags" | "everything" | "earlier purges"; retryAfter?: number; covered?: PurgeOptions }
> {
  const { now, windowMs: window } = clock;
  const state = eventPurges;
  state.tokens = Math.min(
    PURGE_BURST,
    state.tokens + (now - state.tokensAt) * PURGES_PER_MINUTE / 60_000,
  );
  state.tokensAt = now;
  // A purge covers a change when it came after the change's events were received here (no
  // clock but this one), or, for events first seen now, well after B2 timestamped them.
  const purgedSince = (change: ChangeEvent) => {
    const purged = Math.max(state.tags.get(change.tag) ?? -Infinity, state.everythingAt);
    const received = Math.max(...change.ids.map((id) => state.seen.get(id) ?? Infinity));
    if (Number.isFinite(received)) return purged >= received;
    return purged - EVENT_CLOCK_SKEW_MS >= change.at;
  };
  const pending = changes.filter((c) => !purgedSince(c));
  for (const id of changes.flatMap((c) => c.ids)) {
    if (!state.seen.has(id)) remember(state.seen, id, now);
  }
  const objectTags = [...new Set(pending.map((c) => c.tag))];
  if (objectTags.length === 0) return { by: "earlier purges" };
  // A listing is purged with the objects it shows; segments (`covered`) are objects' only.
  const tags = [...new Set([...objectTags, ...pending.flatMap((c) => c.listingTags)])];
  // B2 sends at most MAX_EVENTS_PER_BATCH events a delivery, so the tags fit one purge; more
  // (a rule set by hand, or names in many folders when listings are on) are covered by a
  // purge of everything.
  const fits = tags.length <= MAX_PURGE_OPERATIONS;
  if (fits && state.tokens - 1 >= PURGE_RESERVE) {
    state.tokens -= 1;
    const result = await cache.purge({ tags });
    if (result.success) {
      for (const tag of objectTags) remember(state.tags, tag, now);
      return { by: "tags", covered: { tags: objectTags } };
    }
    state.tokens = 0;
  }
  if (now - state.everythingTriedAt >= window) {
    state.everythingTriedAt = now;
    state.tokens = Math.max(0, state.tokens - 1);
    const result = await cache.purge({ purgeEverything: true });
    // Everything cached before now is gone, and every event here happened before now.
    if (result.success) {
      state.everythingAt = now;
      return { by: "everything", covered: { purgeEverything: true } };
    }
  }
  return {
    by: "everything",
    retryAfter: Math.max(1, Math.ceil((state.everythingTriedAt + window - now) / 1000)),
  };
}

function remember(map: Map<string, number>, key: string, at: number): void {
  map.delete(key);
  map.set(key, at);
  // A Map iterates in insertion order: the first is the oldest.
  if (map.size > REMEMBERED) map.delete(map.keys().next().value!);
}

/**
 * `cache-api` mode: the Cache API is per data centre, so only the copies
 * kept where B2's POST lands can be deleted: each name's canonical path (and
 * its folder's, for an index file), and a large object's facts. Copies
 * elsewhere stay until their TTL. At most MAX_CACHE_DELETES; `left` says how
 * many more it would take.
 */
async function deleteHere(
  url: URL,
  changes: ChangeEvent[],
  config: WorkerConfig,
): Promise<{ deleted: number; left: number }> {
  const origin = url.origin;
  const keys: string[] = handlesLarge(config)
    ? await Promise.all(changes.map(({ name }) => factsKey({ url, name, config })))
    : [];
  for (const { name } of changes) {
    const path = config.urlStyle === "b2"
      ? `/file/${config.bucketName}/${encodePath(name)}`
      : `/${encodePath(name.slice(config.prefix.length))}`;
    keys.push(origin + path);
    if (config.indexFile !== "" && (path.endsWith(`/${encodeURIComponent(config.indexFile)}`))) {
      keys.push(origin + path.slice(0, -encodeURIComponent(config.indexFile).length));
    }
  }
  // Listings go with what budget is left, their folder's first page only: best effort, since
  // they expire after WORKER_LISTING_TTL anyway.
  const listings = config.listing
    ? [...new Set(changes.map(({ name }) => name.slice(0, name.lastIndexOf("/") + 1)))]
      .filter((folder) => folder.startsWith(config.prefix))
      .flatMap((folder) =>
        [false, true].map((json) => listingCacheKey(origin, { folder, from: "", json }, config))
      )
    : [];
  const budget = keys.slice(0, MAX_CACHE_DELETES);
  budget.push(...listings.slice(0, MAX_CACHE_DELETES - budget.length));
  const deleted = await Promise.all(
    budget.map((key) => edgeCache().delete(key).catch(() => false)),
  );
  return {
    deleted: deleted.filter(Boolean).length,
    left: Math.max(0, keys.length - MAX_CACHE_DELETES),
  };
}

/**
 * `workers-cache` mode (deleteHere does it in `cache-api` mode): what the edge remembers of a
 * large object (its facts: size and version) is kept with the Cache API in both modes, so only
 * the data centre that receives B2's POST can forget it: there the next request learns the new
 * version from B2, and the old version's segments, keyed by that version, are never used again.
 * Elsewhere the facts stay, until oweSegmentsPurge() purges the segments they lead to.
 */
async function forgetLargeHere(
  url: URL,
  changes: ChangeEvent[],
  config: WorkerConfig,
): Promise<void> {
  if (!handlesLarge(config)) return;
  await forgetFactsOf(url, changes.map(({ name }) => name), config, MAX_CACHE_DELETES);
}

// ---------------------------------------------------------------------------
// Folder listings
//
// With WORKER_LISTING=on, a folder path (ending in `/`) whose index file B2 does not have
// answers a listing of that folder: an HTML page, or JSON with `?format=json`, one page per
// b2_list_file_names call (`delimiter=/`; the next page is `?from=<name>`). A download token
// cannot list, so the worker holds a second key that can do nothing but list the bucket under
// B2_FILE_PREFIX (refresh refuses any other), and authorizes with it at B2_API_URL, the address
// refresh used: one account token per isolate, renewed when B2 says it expired (tokens live at
// most 24 hours; backblaze.com/apidocs/b2-authorize-account). What a visitor may not fetch is
// never listed: hidden names (a segment starting with `.`, B2's `.bzEmpty` among them), names
// a path cannot reach, and anything under a signed prefix. Listings are kept at the edge for
// WORKER_LISTING_TTL, tagged by folder, and an event notification for a name purges the
// listings of its folder and of every folder above it up to the prefix.
// ---------------------------------------------------------------------------

/** What listing folders takes, from the bindings. */
export interface ListingConfig {
  keyId: string;
  key: string;
  /** Where `b2_authorize_account` is called: refresh's `B2_API_URL`. */
  apiUrl: string;
  /** Seconds the edge keeps a listing. */
  ttl: number;
  /** Names a page asks B2 for: one `b2_list_file_names` call. */
  pageSize: number;
}

/** One folder or file a listing shows. */
export interface ListedEntry {
  /** Relative to the folder listed; a folder's ends in `/`. */
  name: string;
  /** The worker's own path of it, percent-encoded. */
  path: string;
  folder: boolean;
  /** Bytes; files only. */
  size?: number;
  /** B2's upload time, ms since the epoch; files only. */
  uploaded?: number;
}

/** One page of a folder, as visitors may see it. */
export interface FolderPage {
  /** The folder's public path, decoded (`/docs/`). */
  title: string;
  /** The folder's own path, percent-encoded. */
  path: string;
  /** From the top down to this folder, each with its path. */
  crumbs: { name: string; path: string }[];
  folders: ListedEntry[];
  files: ListedEntry[];
  /** Where the next page starts (`?from=`), relative to the folder; absent on the last. */
  next?: string;
}

// Short: a listing without event notifications shows a new upload within this many seconds.
const DEFAULT_LISTING_TTL = 60;
// b2_list_file_names is billed per 1,000 names returned (backblaze.com/b2/
// b2-transactions-price.html), so a page of 1,000 costs one Class C transaction.
const DEFAULT_LISTING_PAGE_SIZE = 1000;
const MAX_LISTING_PAGE_SIZE = 10_000;
const LISTING_TAG_PREFIX = "b2cdn-list-";
// The only query a listing takes, in this order: anything else is sent to the bare folder.
const LISTING_PARAMETERS = ["from", "format"];
const LISTING_STYLE = [
  "body{font:16px/1.5 system-ui,sans-serif;margin:2rem auto;max-width:60rem;padding:0 1rem}",
  "nav ol{list-style:none;padding:0;margin:0 0 1rem}nav li{display:inline}",
  'nav li+li::before{content:" / "}',
  "table{border-collapse:collapse;width:100%}caption{text-align:left;color:#555}",
  "th,td{text-align:left;padding:.25rem .75rem .25rem 0;border-bottom:1px solid #ddd}",
  ".size{text-align:right;white-space:nowrap}",
  "a:focus-visible{outline:3px solid #1a5fb4;outline-offset:2px}",
  "a.download{font-size:.85em;color:#555;margin-left:.5rem}",
].join("");
// The page's style is allowed by its hash: no script, no other source.
let listingStyleHash: Promise<string> | undefined;
// Account tokens of the listing key, one per isolate and key; see listingSession().
const listingSessions = new Map<string, Promise<ListingSession>>();

interface ListingSession {
  token: string;
  apiUrl: string;
  bucketId: string;
}

/** The listing bindings, or `undefined` when listings are off or the key is missing. */
export function readListing(env: Env): ListingConfig | undefined {
  if (env.WORKER_LISTING !== "on" || !env.B2_LISTING_KEY_ID || !env.B2_LISTING_KEY) {
    return undefined;
  }
  const pageSize = wholeNumber(env.WORKER_LISTING_PAGE_SIZE, DEFAULT_LISTING_PAGE_SIZE);
  return {
    keyId: env.B2_LISTING_KEY_ID,
    key: env.B2_LISTING_KEY,
    apiUrl: (env.B2_API_URL ?? "https://api.backblazeb2.com").replace(/\/+$/, ""),
    ttl: wholeNumber(env.WORKER_LISTING_TTL, DEFAULT_LISTING_TTL),
    pageSize: Math.min(Math.max(pageSize, 1), MAX_LISTING_PAGE_SIZE),
  };
}

/**
 * The B2 folder (`site/docs/`) a request may list, or `undefined`: listings on, a GET or
 * HEAD of a path ending in `/` that objectName() would accept, under the prefix, no hidden
 * segment, and public (a signed prefix is never listed).
 */
export function listedFolder(
  request: { method: string; url: URL; link: LinkCheck },
  config: Pick<WorkerConfig, "listing" | "urlStyle" | "bucketName" | "prefix">,
): string | undefined {
  const { method, url, link } = request;
  if (!config.listing || (method !== "GET" && method !== "HEAD")) return undefined;
  if (!url.pathname.endsWith("/") || link.access !== "public") return undefined;
  // The folder's index file by objectName()'s rules, with a name of one character: whatever
  // path it refuses, or maps outside the prefix, is not listed either.
  const mapped = objectName(url.pathname, { ...config, indexFile: "-" });
  if ("status" in mapped) return undefined;
  const folder = mapped.name.slice(0, -1);
  return hiddenName(folder.slice(config.prefix.length)) ? undefined : folder;
}

/** Whether a name (relative to the prefix) has a hidden segment: `.git/`, `.bzEmpty`. */
function hiddenName(relative: string): boolean {
  return relative.split("/").some((segment) => segment.startsWith("."));
}

/** `from` and `format` of a listing's query, with the query they make; `undefined`: foreign. */
export function listingQuery(
  url: URL,
): { from: string; json: boolean; canonical: string } | undefined {
  const names = [...url.searchParams.keys()];
  if (names.some((name) => !LISTING_PARAMETERS.includes(name))) return undefined;
  if (new Set(names).size !== names.length) return undefined;
  const from = url.searchParams.get("from") ?? "";
  const format = url.searchParams.get("format");
  if (format !== null && format !== "json") return undefined;
  const json = format === "json";
  return { from, json, canonical: listingSearch(from, json) };
}

/** The one query string of a listing page: `?from=<strictly encoded>&format=json`. */
function listingSearch(from: string, json: boolean): string {
  const parts = [...(from ? [`from=${strictEncode(from)}`] : []), ...(json ? ["format=json"] : [])];
  return parts.length === 0 ? "" : `?${parts.join("&")}`;
}

/**
 * Percent-encodes all but letters, digits and `-._~`, so that no browser re-encodes what a
 * link holds (they differ on `'` in a query) and the cache sees one URL per page.
 */
function strictEncode(text: string): string {
  return encodeURIComponent(text).replace(
    /[!'()*]/g,
    (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`,
  );
}

/** The `Cache-Tag` of a folder's listings, as objectTag() hashes names. */
export async function listingTag(folder: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", UTF8.encode(folder));
  return LISTING_TAG_PREFIX + toHex(new Uint8Array(digest)).slice(0, TAG_HEX_LENGTH);
}

/** The folders whose listings show a name: its own and each above it, up to the prefix. */
export function foldersAbove(name: string, prefix: string): string[] {
  const relative = name.slice(prefix.length).split("/").slice(0, -1);
  return relative.map((_, i) => prefix + relative.slice(0, i + 1).join("/") + "/")
    .reverse().concat(prefix);
}

/** Why a listing could not be made: logged, and answered 502 or 504. */
class ListingError extends Error {
  constructor(message: string, readonly status: 502 | 504 = 502) {
    super(message);
  }
}

/**
 * This isolate's account token of the listing key, authorizing once; `renew` drops the one
 * held (B2 said it expired). A failed authorization is not kept.
 */
function listingSession(config: WorkerConfig, renew: boolean): Promise<ListingSession> {
  const listing = config.listing!;
  const id = `${listing.apiUrl} ${listing.keyId}`;
  const held = renew ? undefined : listingSessions.get(id);
  if (held) return held;
  const session = authorizeListing(config);
  listingSessions.set(id, session);
  session.catch(() => {
    if (listingSessions.get(id) === session) listingSessions.delete(id);
  });
  return session;
}

/** `b2_authorize_account` with the listing key; the bucket's id from what the key may reach. */
async function authorizeListing(config: WorkerConfig): Promise<ListingSession> {
  const listing = config.listing!;
  const response = await listingFetch(`${listing.apiUrl}/b2api/v4/b2_authorize_account`, {
    headers: { Authorization: `Basic ${btoa(`${listing.keyId}:${listing.key}`)}` },
  }, config);
  if (!response.ok) {
    const code = await b2ErrorCode(response);
    // A 5xx (or 429) is B2 unable to answer now, not a verdict on the key.
    throw new ListingError(
      response.status >= 500 || response.status === 429
        ? `B2 could not authorize the listing key now: ${response.status} ${code}`
        : `B2 refused the listing key: ${response.status} ${code}; check B2_LISTING_KEY_ID and ` +
          "B2_LISTING_KEY, then run refresh",
    );
  }
  const answer = await response.json() as {
    authorizationToken?: string;
    apiInfo?: { storageApi?: { apiUrl?: string; allowed?: { buckets?: unknown } } };
  };
  const storage = answer.apiInfo?.storageApi;
  const buckets = Array.isArray(storage?.allowed?.buckets) ? storage.allowed.buckets : [];
  const bucket = (buckets as { id?: string; name?: string }[])
    .find((b) => b.name === config.bucketName);
  if (!answer.authorizationToken || !storage?.apiUrl || !bucket?.id) {
    throw new ListingError(
      "the listing key's authorization names no API address or not this bucket; run refresh, " +
        "which checks the key",
    );
  }
  return {
    token: answer.authorizationToken,
    apiUrl: storage.apiUrl.replace(/\/+$/, ""),
    bucketId: bucket.id,
  };
}

/** A B2 API call within WORKER_B2_TIMEOUT_MS; never throws but as a ListingError. */
async function listingFetch(url: string, init: RequestInit, config: WorkerConfig) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), config.timeoutMs);
  try {
    return await fetch(url, { ...init, signal: controller.signal });
  } catch (error) {
    throw controller.signal.aborted
      ? new ListingError("B2 did not answer the listing in time", 504)
      : new ListingError(`B2 could not be reached for a listing: ${error}`);
  } finally {
    clearTimeout(timer);
  }
}

/** One item of `b2_list_file_names`; only the fields used here. */
interface B2ListedFile {
  action?: string;
  fileName?: string;
  contentLength?: number;
  uploadTimestamp?: number;
}

/**
 * One `b2_list_file_names` page of `folder` from `startFileName`, with `delimiter=/`; an
 * account token B2 calls expired (or bad) is renewed once.
 */
async function listB2Folder(
  config: WorkerConfig,
  page: { folder: string; startFileName: string },
): Promise<{ files: B2ListedFile[]; nextFileName: string | null }> {
  const held = await askB2List(config, { ...page, renew: false });
  if (held !== "renew") return held;
  const renewed = await askB2List(config, { ...page, renew: true });
  if (renewed !== "renew") return renewed;
  throw new ListingError("B2 refused a fresh account token of the listing key; run refresh");
}

async function askB2List(
  config: WorkerConfig,
  page: { folder: string; startFileName: string; renew: boolean },
): Promise<{ files: B2ListedFile[]; nextFileName: string | null } | "renew"> {
  const session = await listingSession(config, page.renew);
  const response = await listingFetch(`${session.apiUrl}/b2api/v4/b2_list_file_names`, {
    method: "POST",
    headers: { Authorization: session.token, "Content-Type": "application/json" },
    body: JSON.stringify({
      bucketId: session.bucketId,
      prefix: page.folder,
      delimiter: "/",
      startFileName: page.startFileName,
      maxFileCount: config.listing!.pageSize,
    }),
  }, config);
  if (response.ok) {
    const body = await response.json() as { files?: unknown; nextFileName?: unknown };
    return {
      files: Array.isArray(body.files) ? body.files : [],
      nextFileName: typeof body.nextFileName === "string" ? body.nextFileName : null,
    };
  }
  const code = await b2ErrorCode(response);
  if (response.status === 401 && (code === "expired_auth_token" || code === "bad_auth_token")) {
    return "renew";
  }
  throw new ListingError(
    `B2 answered ${response.status} ${code} to the listing of "${page.folder}"` +
      (response.status === 401 ? ": the listing key cannot list it; run refresh" : ""),
  );
}

/**
 * One page of `folder` as visitors may see it: folders, then files, each in B2's order (by
 * name, in UTF-8 bytes), leaving out what listedEntry() refuses.
 */
async function folderPage(
  config: WorkerConfig,
  page: { folder: string; from: string },
): Promise<FolderPage> {
  const { folder } = page;
  const { entries, next } = await shownPage(config, page);
  const root = config.urlStyle === "b2" ? `/file/${config.bucketName}/${config.prefix}` : "/";
  const below = folder.slice(config.prefix.length).split("/").slice(0, -1);
  const crumbs = [{ name: "Top", path: publicPath(config.prefix, config) }].concat(
    below.map((name, i) => ({
      name,
      path: publicPath(config.prefix + below.slice(0, i + 1).join("/") + "/", config),
    })),
  );
  return {
    title: root + below.map((segment) => `${segment}/`).join(""),
    path: publicPath(folder, config),
    crumbs,
    folders: entries.filter((entry) => entry.folder),
    files: entries.filter((entry) => !entry.folder),
    ...(next && { next }),
  };
}

/**
 * The entries of one page a visitor may see, in B2's order, and where the next page starts.
 * A page B2 fills with nothing to show, and whose next name may not be shown either, is
 * followed to B2's next one, since only a shown name may start a page.
 */
async function shownPage(
  config: WorkerConfig,
  page: { folder: string; from: string },
): Promise<{ entries: ListedEntry[]; next?: string }> {
  const { folder, from } = page;
  let startFileName = from ? folder + from : "";
  for (;;) {
    const b2 = await listB2Folder(config, { folder, startFileName });
    const entries = b2.files.flatMap((file) => listedEntry(file, { folder, config }) ?? []);
    const more = b2.nextFileName?.startsWith(folder) && b2.nextFileName !== startFileName;
    const next = more ? nextFrom(b2.nextFileName!, { folder, config, entries }) : undefined;
    if (!more || next !== undefined) return { entries, ...(next && { next }) };
    startFileName = b2.nextFileName!;
  }
}

/**
 * The `from` of the next page, never a name listedEntry() would not show (a hidden or signed
 * name, or a file inside a folder): B2's next name cut to its item when that item is shown,
 * else the least name past the page's last entry; `undefined` when the page shows none.
 */
function nextFrom(
  nextFileName: string,
  where: { folder: string; config: WorkerConfig; entries: ListedEntry[] },
): string | undefined {
  const { folder, config, entries } = where;
  const rest = nextFileName.slice(folder.length);
  const cut = rest.indexOf("/");
  const item = cut === -1 ? rest : rest.slice(0, cut + 1);
  const action = cut === -1 ? "upload" : "folder";
  if (listedEntry({ action, fileName: folder + item }, { folder, config })) return item;
  const last = entries.at(-1);
  if (!last) return undefined;
  // B2 allows no character below a space in a name, and "0" follows "/" (b2-list-file-names).
  return last.folder ? `${last.name.slice(0, -1)}0` : `${last.name} `;
}

/**
 * A B2 item as a listing shows it, or `undefined` when an unsigned visitor may not see it:
 * not a live file or a folder, hidden (a name starting with `.`), a name no path reaches
 * (what objectName() refuses), or under a signed prefix.
 */
function listedEntry(
  file: B2ListedFile,
  where: { folder: string; config: WorkerConfig },
): ListedEntry | undefined {
  const { folder, config } = where;
  const isFolder = file.action === "folder";
  if (!isFolder && file.action !== "upload") return undefined;
  if (typeof file.fileName !== "string" || !file.fileName.startsWith(folder)) return undefined;
  const name = file.fileName.slice(folder.length);
  const segment = isFolder ? name.slice(0, -1) : name;
  if (segment === "" || segment.startsWith(".") || HOSTILE_CHARACTER.test(segment)) {
    return undefined;
  }
  if (isFolder !== name.endsWith("/")) return undefined;
  const decoded = config.urlStyle === "b2"
    ? `/file/${config.bucketName}/${file.fileName}`
    : `/${file.fileName.slice(config.prefix.length)}`;
  if (isProtected(decoded, config.signing)) return undefined;
  const path = publicPath(file.fileName, config);
  if (isFolder) return { name, path, folder: true };
  return {
    name,
    path,
    folder: false,
    size: Number(file.contentLength ?? 0),
    uploaded: Number(file.uploadTimestamp ?? 0),
  };
}

/** The worker's own path of a B2 name (or folder), in its canonical spelling. */
function publicPath(name: string, config: WorkerConfig): string {
  // In the one spelling the worker serves (urlPath()), so a link is never a redirect.
  return urlPath(
    config.urlStyle === "b2"
      ? `/file/${config.bucketName}/${name}`
      : `/${name.slice(config.prefix.length)}`,
  );
}

/** Text fit for HTML, in an element or a quoted attribute: `<script>` stays text. */
export function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** Bytes for people: `999 B`, `1.5 KiB`, `12.0 MiB`. */
export function formatSize(bytes: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let unit = 0;
  while (bytes >= 1024 ** (unit + 1) && unit < units.length - 1) unit++;
  return unit === 0 ? `${bytes} B` : `${(bytes / 1024 ** unit).toFixed(1)} ${units[unit]}`;
}

/** `1,234,567`: the exact size shown on hover. */
function groupDigits(value: number): string {
  return String(value).replace(/\B(?=(\d{3})+(?!\d))/g, ",");
}

/** `1 file`, `2 files`. */
function count(n: number, noun: string): string {
  return `${n} ${noun}${n === 1 ? "" : "s"}`;
}

/**
 * A name as a listing page shows it: each character that reorders the text around it as its
 * code point (`[U+202E]`), since U+202E shows `invoice\u202Etxt.exe` as `invoiceexe.txt`; the
 * same characters a download link's name may not hold. The JSON form keeps the exact name.
 */
function readableName(name: string): string {
  return name.replace(
    REORDERING_CHARACTER,
    (c) => `[U+${c.charCodeAt(0).toString(16).toUpperCase().padStart(4, "0")}]`,
  );
}

/** The listing page: no script at all, links only, so keyboards and text browsers work. */
export function listingHtml(page: FolderPage): string {
  // Every text and attribute of the page: links are percent-encoded paths, which this keeps.
  const e = (text: string) => escapeHtml(readableName(text));
  const crumbs = page.crumbs.map((crumb, i) =>
    i === page.crumbs.length - 1
      ? `<li><a href="${e(crumb.path)}" aria-current="page">${e(crumb.name)}</a></li>`
      : `<li><a href="${e(crumb.path)}">${e(crumb.name)}</a></li>`
  );
  const folderRows = page.folders.map((entry) =>
    `<tr><td><a href="${e(entry.path)}">${e(entry.name)}</a></td><td class="size">folder</td>` +
    "<td></td></tr>"
  );
  const fileRows = page.files.map((entry) => {
    const uploaded = new Date(entry.uploaded ?? 0).toISOString();
    const shown = `${uploaded.slice(0, 10)} ${uploaded.slice(11, 16)} UTC`;
    // A download link beside each file (see downloadQuery()), named for screen readers.
    const download = `<a href="${e(downloadLink(entry.path))}" class="download" ` +
      `aria-label="Download ${e(entry.name)}">download</a>`;
    return `<tr><td><a href="${e(entry.path)}">${e(entry.name)}</a> ${download}</td>` +
      `<td class="size"><data value="${entry.size}" title="${
        groupDigits(entry.size ?? 0)
      } bytes">` +
      `${formatSize(entry.size ?? 0)}</data></td>` +
      `<td><time datetime="${uploaded}">${shown}</time></td></tr>`;
  });
  const empty = folderRows.length + fileRows.length === 0
    ? ['<tr><td colspan="3">Nothing to list here.</td></tr>']
    : [];
  const next = page.next === undefined
    ? ""
    : `<p><a href="${e(page.path + listingSearch(page.next, false))}" rel="next">Next page</a></p>`;
  return [
    '<!doctype html><html lang="en"><head><meta charset="utf-8">',
    '<meta name="viewport" content="width=device-width, initial-scale=1">',
    `<title>Index of ${e(page.title)}</title><style>${LISTING_STYLE}</style></head><body>`,
    `<nav aria-label="Breadcrumb"><ol>${crumbs.join("")}</ol></nav>`,
    `<main><h1>Index of ${e(page.title)}</h1><table>`,
    `<caption>${count(page.folders.length, "folder")}, ${count(page.files.length, "file")}` +
    `${page.next === undefined ? "" : " on this page"}</caption>`,
    '<thead><tr><th scope="col">Name</th><th scope="col" class="size">Size</th>',
    '<th scope="col">Uploaded</th></tr></thead><tbody>',
    ...folderRows,
    ...fileRows,
    ...empty,
    "</tbody></table>",
    next,
    `<p><a href="${e(page.path + listingSearch("", true))}">This listing as JSON</a></p>`,
    "</main></body></html>",
  ].join("\n");
}

/** A file's download link (see downloadQuery()), in the one spelling the worker serves. */
function downloadLink(path: string): string {
  return `${path}?download`;
}

/** The listing for scripts: the same entries with files' download links, and the next page's. */
export function listingJson(page: FolderPage): string {
  const entry = (item: ListedEntry) => ({
    name: item.name,
    path: item.path,
    ...(!item.folder && {
      download: downloadLink(item.path),
      size: item.size,
      uploaded: new Date(item.uploaded ?? 0).toISOString(),
    }),
  });
  return JSON.stringify({
    folder: page.title,
    folders: page.folders.map(entry),
    files: page.files.map(entry),
    next: page.next === undefined ? null : page.path + listingSearch(page.next, true),
  });
}

/**
 * A folder's listing when the request may list it and B2 has no index file there; anything
 * else is what `otherwise` answers. In every mode the folder's path and the listing's query
 * must be spelled as canonicalTarget() writes them (else a 301 to that), since the query is
 * part of Workers Cache's key, and a listing's query on a folder with its index file is a 301
 * to the bare folder. The Cache API keeps listings under keys of their own.
 */
async function withListing(
  where: { visit: Visit; config: WorkerConfig; ctx: ExecutionContext },
  otherwise: () => Promise<Response>,
): Promise<Response> {
  const { visit: { url, link, folder }, config, ctx } = where;
  if (folder === undefined) return await otherwise();
  const query = listingQuery(url);
  const target = { folder, from: query?.from ?? "", json: query?.json ?? false };
  const indexName = config.indexFile === "" ? undefined : folder + config.indexFile;
  if (config.cacheMode === "workers-cache" && url.search !== "") {
    if (!query) return await otherwise();
    const tags = await listingTags(folder, indexName);
    // The one spelling of the folder's path and of the listing's query.
    const canonical = canonicalTarget(url, link, { listed: true });
    if (canonical !== undefined && canonical !== spelledTarget(url)) {
      return listingRedirect(canonical, { config, tags });
    }
    if (indexName) {
      const index = await askB2("HEAD", indexName, { config });
      if (index.ok) return listingRedirect(url.pathname, { config, tags });
      if (index.status !== 404) return edgeLifetime(index, config);
    }
    return await listingAnswer(target, { config, tags });
  }
  // Another spelling is respond()'s 301, as behind Workers Cache: never a kept page's answer.
  const canonical = canonicalTarget(url, link, { listed: true });
  if (canonical !== undefined && canonical !== spelledTarget(url)) return await otherwise();
  const cacheKey = listingCacheKey(url.origin, target, config);
  const keep = config.cacheMode === "cache-api" && config.listing!.ttl > 0;
  const cached = keep ? await edgeCache().match(cacheKey) : undefined;
  if (cached) return new Response(cached.body, cached);
  const answered = await otherwise();
  if (answered.status !== 404) return indexFound(answered, url);
  await answered.body?.cancel();
  const listed = await listingAnswer(target, {
    config,
    tags: await listingTags(folder, indexName),
  });
  if (keep && listed.ok) store(ctx, cacheKey, listed.clone());
  return listed;
}

/**
 * What a listed folder answers when it has its index file after all: the index, on the bare
 * folder only. A listing's query is then one more spelling of the index, a 301 to the bare
 * folder as behind Workers Cache.
 */
async function indexFound(answered: Response, url: URL): Promise<Response> {
  if (url.search === "" || !answered.ok) return answered;
  await answered.body?.cancel();
  return movedTo(url.pathname);
}

/** A permanent redirect browsers keep as long as they keep an object without a say of its own. */
function movedTo(location: string): Response {
  return new Response(null, {
    status: 301,
    headers: { Location: location, "Cache-Control": DEFAULT_BROWSER_CACHE_CONTROL },
  });
}

/**
 * Where the Cache API keeps a listing page: the folder's path as publicPath() writes it, so
 * that a notification finds it whatever encoding the visitor's path had.
 */
function listingCacheKey(
  origin: string,
  page: { folder: string; from: string; json: boolean },
  config: WorkerConfig,
): string {
  const query = listingSearch(page.from, page.json).replace("?", "&");
  return `${origin}${publicPath(page.folder, config)}?b2cdn-listing${query}`;
}

/** What a folder's listing answers are tagged with: its listing tag, its index file's tag. */
async function listingTags(folder: string, indexName: string | undefined): Promise<string[]> {
  return [await listingTag(folder), ...(indexName ? [await objectTag(indexName)] : [])];
}

/** A redirect kept at the edge as long as a listing is, and purged with it. */
function listingRedirect(
  location: string,
  where: { config: WorkerConfig; tags: string[] },
): Response {
  const { ttl } = where.config.listing!;
  return new Response(null, {
    status: 301,
    headers: {
      Location: location,
      "Cache-Control": `public, max-age=${ttl}`,
      [CDN_CACHE_CONTROL_HEADER]: ttl > 0 ? `public, max-age=${ttl}` : "no-store",
      "Cache-Tag": where.tags.join(","),
    },
  });
}

/** The listing page (HTML, or JSON), with its lifetimes and tags; 502 or 504 when B2 fails. */
async function listingAnswer(
  target: { folder: string; from: string; json: boolean },
  where: { config: WorkerConfig; tags: string[] },
): Promise<Response> {
  const { config, tags } = where;
  let page: FolderPage;
  try {
    page = await folderPage(config, target);
  } catch (error) {
    if (!(error instanceof ListingError)) throw error;
    console.error(`Cannot list a folder: ${error.message}`);
    return edgeLifetime(textResponse(error.status), config);
  }
  const { ttl } = config.listing!;
  const headers = new Headers({
    "Content-Type": target.json ? "application/json; charset=utf-8" : "text/html; charset=utf-8",
    "Content-Security-Policy": "default-src 'none'; " +
      `style-src '${await styleHash()}'; base-uri 'none'; form-action 'none'; ` +
      "frame-ancestors 'none'",
    "Referrer-Policy": "same-origin",
    "Cache-Control": ttl > 0 ? `public, max-age=${ttl}` : "no-cache",
  });
  if (config.cacheMode === "workers-cache") {
    headers.set(CDN_CACHE_CONTROL_HEADER, ttl > 0 ? `public, max-age=${ttl}` : "no-store");
    headers.set("Cache-Tag", tags.join(","));
  }
  const body = target.json ? listingJson(page) : listingHtml(page);
  return new Response(body, { status: 200, headers });
}

/** `sha256-<base64>` of the page's style, for its Content-Security-Policy. */
function styleHash(): Promise<string> {
  listingStyleHash ??= crypto.subtle.digest("SHA-256", UTF8.encode(LISTING_STYLE))
    .then((digest) => `sha256-${btoa(String.fromCharCode(...new Uint8Array(digest)))}`);
  return listingStyleHash;
}
