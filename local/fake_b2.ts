/**
 * A local stand-in for the Backblaze B2 native API (v4) and its download
 * endpoint, for tests, the demo and the benchmarks.
 *
 * It follows the documented shapes (see `../shared/API_FACTS.md`) and checks
 * what it receives the way B2 does: Basic auth on authorize, the account token
 * on every API call, JSON bodies, the key's capabilities and restrictions, and
 * download tokens scoped to a bucket and a name prefix. Faults can be injected.
 *
 * ```ts
 * const b2 = await startFakeB2({ buckets: [{ id: "b1", name: "photos", files: [] }] });
 * // ... point B2_API_URL at b2.url ...
 * await b2.close();
 * ```
 *
 * @module
 */

/** A file held by the fake bucket. */
export interface FakeFile {
  name: string;
  /** The content, or a size whose deterministic bytes are made on the fly. */
  body: Uint8Array<ArrayBuffer> | string | { size: number };
  /** @default "application/octet-stream" */
  contentType?: string;
  /** Milliseconds since the epoch. @default 1700000000000 */
  uploadTimestamp?: number;
  /** File info, answered as `x-bz-info-*` (`b2-cache-control` as `Cache-Control`). */
  info?: Record<string, string>;
}

/** A bucket of the fake account. */
export interface FakeBucket {
  id: string;
  name: string;
  /**
   * `allPrivate`, `allPublic`, `snapshot`, `restricted` or `shared`.
   * @default "allPrivate"
   */
  type?: string;
  files?: FakeFile[];
}

/**
 * The bucket types `b2_list_buckets` answers when `bucketTypes` is not sent;
 * `restricted` and `shared` buckets need `bucketTypes: ["all"]`
 * (API_FACTS.md: List buckets; Backblaze's b2sdk always sends "all").
 */
const DEFAULT_BUCKET_TYPES = ["allPublic", "allPrivate", "snapshot"];

/** How the fake account and key look. */
export interface FakeB2Options {
  /** @default "fake-key-id" */
  keyId?: string;
  /** @default "fake-application-key" */
  applicationKey?: string;
  /** @default ["listBuckets", "listFiles", "readFiles", "shareFiles"] */
  capabilities?: string[];
  /** @default one bucket "photos" (id "bucket-photos") with no files */
  buckets?: FakeBucket[];
  /** Restricts the key to this bucket name. @default unrestricted */
  restrictToBucket?: string;
  /** Restricts the key to names with this prefix. @default null */
  namePrefix?: string | null;
  /** Added to every answer, to model a distant server. @default 0 */
  latencyMs?: number;
  /** The clock used for token expiry. @default Date.now */
  now?: () => number;
}

/** One request the fake received. */
export interface RecordedRequest {
  method: string;
  path: string;
  headers: Headers;
  body: string;
}

/** A fault to answer instead of the real thing. */
export interface Fault {
  status: number;
  code?: string;
  message?: string;
  /** Seconds, sent as `Retry-After`. */
  retryAfter?: number;
  /** Never answer (until the fake closes). */
  hang?: boolean;
  /** How many requests get the fault. @default 1 */
  times?: number;
}

interface DownloadGrant {
  bucketId: string;
  prefix: string;
  expiresAt: number;
}

const ACCOUNT_ID = "fake-account";
const ALL_CAPABILITIES = [
  "listBuckets",
  "listFiles",
  "readFiles",
  "shareFiles",
];
const MAX_DOWNLOAD_SECONDS = 604_800;

/** The running fake; `url` serves both the API and the downloads. */
export class FakeB2 {
  readonly requests: RecordedRequest[] = [];
  readonly accountTokens = new Set<string>();
  readonly downloadTokens = new Map<string, DownloadGrant>();
  #faults: { pathPrefix: string; fault: Fault; left: number }[] = [];
  #hanging = new Set<() => void>();
  #server: Deno.HttpServer<Deno.NetAddr>;
  #options: Required<FakeB2Options>;

  constructor(options: FakeB2Options = {}) {
    this.#options = {
      keyId: "fake-key-id",
      applicationKey: "fake-application-key",
      capabilities: ALL_CAPABILITIES,
      buckets: [{ id: "bucket-photos", name: "photos", files: [] }],
      restrictToBucket: "",
      namePrefix: null,
      latencyMs: 0,
      now: Date.now,
      ...options,
    };
    this.#server = Deno.serve(
      { hostname: "127.0.0.1", port: 0, onListen() {} },
      (request) => this.#handle(request),
    );
  }

  get url(): string {
    return `http://127.0.0.1:${this.#server.addr.port}`;
  }

  get buckets(): FakeBucket[] {
    return this.#options.buckets;
  }

  /** Answers the next `times` requests whose path starts with `pathPrefix` with a fault. */
  fail(pathPrefix: string, fault: Fault): void {
    this.#faults.push({ pathPrefix, fault, left: fault.times ?? 1 });
  }

  /** Makes a download token directly, as if `b2_get_download_authorization` had. */
  issueDownloadToken(
    bucketName: string,
    prefix: string,
    validSeconds: number,
  ): string {
    const bucket = this.#bucketByName(bucketName);
    if (!bucket) throw new Error(`no bucket "${bucketName}" in the fake`);
    const token = `fake-download-${crypto.randomUUID()}`;
    this.downloadTokens.set(token, {
      bucketId: bucket.id,
      prefix,
      expiresAt: this.#options.now() + validSeconds * 1000,
    });
    return token;
  }

  /** Adds or replaces a file. */
  putFile(bucketName: string, file: FakeFile): void {
    const bucket = this.#bucketByName(bucketName);
    if (!bucket) throw new Error(`no bucket "${bucketName}" in the fake`);
    bucket.files = [
      ...(bucket.files ?? []).filter((f) => f.name !== file.name),
      file,
    ];
  }

  async close(): Promise<void> {
    for (const release of this.#hanging) release();
    await this.#server.shutdown();
  }

  async #handle(request: Request): Promise<Response> {
    const url = new URL(request.url);
    const body = request.method === "POST" ? await request.text() : "";
    this.requests.push({
      method: request.method,
      path: url.pathname + url.search,
      headers: request.headers,
      body,
    });
    if (this.#options.latencyMs > 0) {
      await new Promise((resolve) => setTimeout(resolve, this.#options.latencyMs));
    }
    const fault = this.#takeFault(url.pathname);
    if (fault?.hang) {
      // Held until the client gives up or the fake closes.
      await new Promise<void>((resolve) => {
        this.#hanging.add(resolve);
        request.signal.addEventListener("abort", () => resolve());
      });
      return b2Error(503, "service_unavailable", "gave up waiting");
    }
    if (fault) {
      const headers: Record<string, string> = {};
      if (fault.retryAfter !== undefined) {
        headers["retry-after"] = String(fault.retryAfter);
      }
      return b2Error(
        fault.status,
        fault.code ?? "service_unavailable",
        fault.message ?? "injected fault",
        headers,
      );
    }
    if (url.pathname.startsWith("/file/")) return this.#download(request, url);
    switch (url.pathname) {
      case "/b2api/v4/b2_authorize_account":
        return this.#authorize(request);
      case "/b2api/v4/b2_list_buckets":
        return this.#withAccount(
          request,
          body,
          (json) => this.#listBuckets(json),
        );
      case "/b2api/v4/b2_get_download_authorization":
        return this.#withAccount(
          request,
          body,
          (json) => this.#downloadAuthorization(json),
        );
      default:
        return b2Error(404, "not_found", `no such API: ${url.pathname}`);
    }
  }

  #takeFault(path: string): Fault | undefined {
    const entry = this.#faults.find((f) => f.left > 0 && path.startsWith(f.pathPrefix));
    if (!entry) return undefined;
    entry.left--;
    return entry.fault;
  }

  #authorize(request: Request): Response {
    if (request.method !== "GET") {
      return b2Error(405, "method_not_allowed", "use GET");
    }
    const expected = "Basic " +
      btoa(`${this.#options.keyId}:${this.#options.applicationKey}`);
    if (request.headers.get("authorization") !== expected) {
      return b2Error(401, "unauthorized", "invalid authorization");
    }
    const token = `fake-account-${crypto.randomUUID()}`;
    this.accountTokens.add(token);
    const restricted = this.#options.restrictToBucket
      ? this.#bucketByName(this.#options.restrictToBucket)
      : undefined;
    return Response.json({
      accountId: ACCOUNT_ID,
      authorizationToken: token,
      applicationKeyExpirationTimestamp: null,
      apiInfo: {
        storageApi: {
          apiUrl: this.url,
          downloadUrl: this.url,
          s3ApiUrl: this.url,
          absoluteMinimumPartSize: 5_000_000,
          recommendedPartSize: 100_000_000,
          allowed: {
            buckets: restricted ? [{ id: restricted.id, name: restricted.name }] : null,
            capabilities: this.#options.capabilities,
            namePrefix: this.#options.namePrefix,
          },
        },
      },
    });
  }

  #withAccount(
    request: Request,
    body: string,
    answer: (json: Record<string, unknown>) => Response,
  ): Response {
    if (request.method !== "POST") {
      return b2Error(405, "method_not_allowed", "use POST");
    }
    const token = request.headers.get("authorization") ?? "";
    if (!this.accountTokens.has(token)) {
      return b2Error(401, "bad_auth_token", "Invalid authorization token");
    }
    let json: unknown;
    try {
      json = JSON.parse(body);
    } catch {
      return b2Error(400, "bad_request", "body is not JSON");
    }
    if (typeof json !== "object" || json === null || Array.isArray(json)) {
      return b2Error(400, "bad_request", "body must be a JSON object");
    }
    return answer(json as Record<string, unknown>);
  }

  #listBuckets(json: Record<string, unknown>): Response {
    if (!this.#options.capabilities.includes("listBuckets")) {
      return b2Error(
        401,
        "unauthorized",
        "key lacks the listBuckets capability",
      );
    }
    if (json.accountId !== ACCOUNT_ID) {
      return b2Error(400, "bad_request", "accountId is missing or wrong");
    }
    const { bucketName, bucketId } = json;
    const restricted = this.#options.restrictToBucket;
    if (restricted && bucketName !== restricted && !bucketId) {
      return b2Error(401, "unauthorized", `restricted to bucket ${restricted}`);
    }
    const { bucketTypes = DEFAULT_BUCKET_TYPES } = json;
    if (
      !Array.isArray(bucketTypes) || bucketTypes.length === 0 ||
      !bucketTypes.every((t) => typeof t === "string")
    ) {
      return b2Error(400, "bad_request", "bucketTypes must be a list of bucket types");
    }
    const typeWanted = (type: string) => bucketTypes.includes("all") || bucketTypes.includes(type);
    const buckets = this.#options.buckets.filter((b) =>
      (bucketName === undefined || b.name === bucketName) &&
      (bucketId === undefined || b.id === bucketId) &&
      (!restricted || b.name === restricted) &&
      typeWanted(b.type ?? "allPrivate")
    );
    return Response.json({
      buckets: buckets.map((b) => ({
        accountId: ACCOUNT_ID,
        bucketId: b.id,
        bucketName: b.name,
        bucketType: b.type ?? "allPrivate",
      })),
    });
  }

  #downloadAuthorization(json: Record<string, unknown>): Response {
    const { bucketId, fileNamePrefix, validDurationInSeconds } = json;
    if (!this.#options.capabilities.includes("shareFiles")) {
      return b2Error(
        401,
        "unauthorized",
        "key lacks the shareFiles capability",
      );
    }
    if (typeof bucketId !== "string" || typeof fileNamePrefix !== "string") {
      return b2Error(
        400,
        "bad_request",
        "bucketId and fileNamePrefix are required",
      );
    }
    if (
      typeof validDurationInSeconds !== "number" ||
      !Number.isInteger(validDurationInSeconds) ||
      validDurationInSeconds < 1 ||
      validDurationInSeconds > MAX_DOWNLOAD_SECONDS
    ) {
      return b2Error(
        400,
        "bad_request",
        "validDurationInSeconds must be 1..604800",
      );
    }
    const bucket = this.#options.buckets.find((b) => b.id === bucketId);
    if (!bucket) {
      return b2Error(400, "bad_request", `invalid bucketId: ${bucketId}`);
    }
    const restricted = this.#options.restrictToBucket;
    if (restricted && bucket.name !== restricted) {
      return b2Error(401, "unauthorized", `restricted to bucket ${restricted}`);
    }
    const keyPrefix = this.#options.namePrefix;
    if (keyPrefix && !fileNamePrefix.startsWith(keyPrefix)) {
      return b2Error(
        401,
        "unauthorized",
        `restricted to names starting ${keyPrefix}`,
      );
    }
    const authorizationToken = this.issueDownloadToken(
      bucket.name,
      fileNamePrefix,
      validDurationInSeconds,
    );
    return Response.json({ bucketId, fileNamePrefix, authorizationToken });
  }

  #download(request: Request, url: URL): Response | Promise<Response> {
    if (request.method !== "GET" && request.method !== "HEAD") {
      return b2Error(405, "method_not_allowed", "use GET or HEAD");
    }
    const [bucketName = "", ...encoded] = url.pathname.slice("/file/".length)
      .split("/");
    let name: string;
    try {
      name = encoded.map(decodeURIComponent).join("/");
    } catch {
      return b2Error(400, "bad_request", "bad percent-encoding");
    }
    const token = request.headers.get("authorization") ??
      url.searchParams.get("Authorization") ?? "";
    const grant = this.downloadTokens.get(token);
    const bucket = this.#bucketByName(bucketName);
    if (
      !grant || !bucket || grant.bucketId !== bucket.id ||
      !name.startsWith(grant.prefix)
    ) {
      return b2Error(401, "bad_auth_token", "Invalid authorization token");
    }
    if (grant.expiresAt <= this.#options.now()) {
      return b2Error(
        401,
        "expired_auth_token",
        "Authorization token has expired",
      );
    }
    const file = bucket.files?.find((f) => f.name === name);
    if (!file) {
      return b2Error(404, "not_found", `File with such name does not exist.`);
    }
    return serveFile(file, request);
  }

  #bucketByName(name: string): FakeBucket | undefined {
    return this.#options.buckets.find((b) => b.name === name);
  }
}

/** Starts a fake B2 on 127.0.0.1 at a free port. */
export function startFakeB2(options?: FakeB2Options): FakeB2 {
  return new FakeB2(options);
}

function b2Error(
  status: number,
  code: string,
  message: string,
  headers: Record<string, string> = {},
): Response {
  return Response.json({ status, code, message }, { status, headers });
}

function fileSize(file: FakeFile): number {
  const { body } = file;
  if (typeof body === "string") return new TextEncoder().encode(body).length;
  return body instanceof Uint8Array ? body.length : body.size;
}

/** The byte at `offset` of a generated body: a repeating, checkable pattern. */
export function patternByte(offset: number): number {
  return offset % 251;
}

const CHUNK = 64 * 1024;

function bodyStream(
  file: FakeFile,
  start: number,
  end: number,
): ReadableStream<Uint8Array> {
  const { body } = file;
  if (typeof body === "string" || body instanceof Uint8Array) {
    const bytes = typeof body === "string" ? new TextEncoder().encode(body) : body;
    return new Blob([bytes.slice(start, end + 1)]).stream();
  }
  let offset = start;
  return new ReadableStream<Uint8Array>({
    pull(controller) {
      if (offset > end) return controller.close();
      const length = Math.min(CHUNK, end - offset + 1);
      const chunk = new Uint8Array(length);
      for (let i = 0; i < length; i++) chunk[i] = patternByte(offset + i);
      offset += length;
      controller.enqueue(chunk);
    },
  }, { highWaterMark: 0 });
}

async function sha1Hex(file: FakeFile): Promise<string> {
  if (!(typeof file.body === "string" || file.body instanceof Uint8Array)) {
    return "none";
  }
  const bytes = typeof file.body === "string" ? new TextEncoder().encode(file.body) : file.body;
  const digest = await crypto.subtle.digest("SHA-1", bytes);
  return Array.from(
    new Uint8Array(digest),
    (b) => b.toString(16).padStart(2, "0"),
  ).join("");
}

/** Parses one `bytes=` range the way B2 does; `null` when unsatisfiable, `undefined` when absent. */
function byteRange(
  header: string | null,
  size: number,
): [number, number] | null | undefined {
  if (!header) return undefined;
  const match = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!match) return undefined;
  const [, first = "", last = ""] = match;
  if (first === "" && last === "") return undefined;
  if (first === "") {
    const length = Number(last);
    if (length === 0 || size === 0) return null;
    return [Math.max(0, size - length), size - 1];
  }
  const start = Number(first);
  if (start >= size) return null;
  const end = last === "" ? size - 1 : Math.min(Number(last), size - 1);
  if (end < start) return undefined;
  return [start, end];
}

async function serveFile(file: FakeFile, request: Request): Promise<Response> {
  const size = fileSize(file);
  const headers = new Headers({
    "content-type": file.contentType ?? "application/octet-stream",
    "accept-ranges": "bytes",
    "x-bz-file-name": file.name.split("/").map(encodeURIComponent).join("/"),
    "x-bz-file-id": `4_z${file.name.length}_f${size}`,
    "x-bz-content-sha1": await sha1Hex(file),
    "x-bz-upload-timestamp": String(file.uploadTimestamp ?? 1_700_000_000_000),
  });
  for (const [key, value] of Object.entries(file.info ?? {})) {
    if (key === "b2-cache-control") headers.set("cache-control", value);
    else headers.set(`x-bz-info-${key}`, value);
  }
  const range = byteRange(request.headers.get("range"), size);
  if (range === null) {
    headers.set("content-range", `bytes */${size}`);
    const body = JSON.stringify({
      status: 416,
      code: "range_not_satisfiable",
      message: "The range requested is not satisfiable",
    });
    return new Response(body, { status: 416, headers });
  }
  const [start, end] = range ?? [0, size - 1];
  headers.set("content-length", String(end - start + 1));
  if (range) headers.set("content-range", `bytes ${start}-${end}/${size}`);
  const status = range ? 206 : 200;
  if (request.method === "HEAD" || size === 0) {
    return new Response(null, { status, headers });
  }
  return new Response(bodyStream(file, start, end), { status, headers });
}
