/**
 * A local stand-in for the Backblaze B2 native API (v4, and the v1 calls rclone 1.60 makes) and
 * its download endpoint, for tests, the demo and the benchmarks.
 *
 * It follows the documented shapes (www.backblaze.com/apidocs/, cited per endpoint) and checks
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
 * (www.backblaze.com/apidocs/b2-list-buckets; Backblaze's b2sdk always sends "all").
 */
const DEFAULT_BUCKET_TYPES = ["allPublic", "allPrivate", "snapshot"];

/**
 * One more application key of the fake account, such as a key that may only list
 * (`B2_LISTING_KEY_ID`). The first key is the one of {@linkcode FakeB2Options}.
 */
export interface FakeKey {
  keyId: string;
  applicationKey: string;
  capabilities: string[];
  /** Restricts the key to this bucket name. @default unrestricted */
  restrictToBucket?: string;
  /** Restricts the key to names with this prefix. @default null */
  namePrefix?: string | null;
}

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
  /**
   * Whether the account has Event Notifications, which B2 enables per account on request
   * (backblaze.com/docs/cloud-storage-event-notifications-reference-guide). @default true
   */
  eventNotifications?: boolean;
  /** How notifications reach their webhook (tests point it at a local worker). @default fetch */
  webhookFetch?: (url: string, init: RequestInit) => Promise<Response>;
  /** Further keys of the account, each authorizing on its own. @default [] */
  keys?: FakeKey[];
}

/** One Event Notification rule as the fake keeps it (the fields B2 documents). */
export interface FakeNotificationRule {
  name: string;
  eventTypes: string[];
  objectNamePrefix: string;
  isEnabled: boolean;
  maxEventsPerBatch?: number;
  targetConfiguration: {
    targetType: string;
    url: string;
    hmacSha256SigningSecret?: string;
    customHeaders?: { name: string; value: string }[] | null;
  };
  isSuspended: boolean;
  suspensionReason: string;
}

/** One change to report, as an upload, a delete or a hide would. */
export interface FakeChange {
  name: string;
  /** @default "b2:ObjectCreated:Upload" */
  eventType?: string;
  /** @default 0 */
  size?: number;
}

/** One POST the fake made to a webhook, and what it was answered. */
export interface Delivery {
  rule: string;
  url: string;
  body: string;
  /** The signature header sent, when the rule has a secret. */
  signature?: string;
  status: number;
  retryAfter: string | null;
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
// "The authorization token ... is valid for at most 24 hours"
// (backblaze.com/apidocs/b2-authorize-account); past it a call answers 401 expired_auth_token.
const ACCOUNT_TOKEN_MS = 86_400_000;
// b2_list_file_names: "maxFileCount ... The default value is 100, and the maximum is 10000"
// (backblaze.com/apidocs/b2-list-file-names).
const DEFAULT_LIST_COUNT = 100;
const MAX_LIST_COUNT = 10_000;

/** The running fake; `url` serves both the API and the downloads. */
export class FakeB2 {
  readonly requests: RecordedRequest[] = [];
  readonly accountTokens = new Set<string>();
  /** The key each account token was issued to, and until when it holds. */
  #accountGrants = new Map<string, { key: FakeKey; expiresAt: number }>();
  readonly downloadTokens = new Map<string, DownloadGrant>();
  #faults: { pathPrefix: string; fault: Fault; left: number }[] = [];
  #hanging = new Set<() => void>();
  /** Event Notification rules by bucket id. */
  readonly notificationRules = new Map<string, FakeNotificationRule[]>();
  /** Every webhook POST made, in order. */
  readonly deliveries: Delivery[] = [];
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
      eventNotifications: true,
      webhookFetch: (url, init) => fetch(url, init),
      keys: [],
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

  /**
   * A server in front of this fake that passes every request on as it came and
   * lets `reshape` change each answer (a body that arrives late, or one whose
   * bytes are counted), as a slow network or a meter between the worker and
   * B2 would. Its `url` stands for the fake's.
   */
  front(
    reshape: (answer: Response, request: Request) => Response | Promise<Response>,
  ): { url: string; close(): Promise<void> } {
    const server = Deno.serve(
      { hostname: "127.0.0.1", port: 0, onListen: () => {} },
      async (request) => {
        const url = new URL(request.url);
        const answer = await fetch(`${this.url}${url.pathname}${url.search}`, {
          method: request.method,
          headers: request.headers,
          ...(request.method === "POST" && { body: await request.arrayBuffer() }),
        });
        return await reshape(answer, request);
      },
    );
    return { url: `http://127.0.0.1:${server.addr.port}`, close: () => server.shutdown() };
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
      // rclone 1.60 authorizes, lists buckets and lists names with v1 and nothing else
      // (backend/b2/b2.go: "/b2api/v1/b2_authorize_account", then SetRoot(apiUrl + "/b2api/v1")).
      case "/b2api/v1/b2_authorize_account":
        return this.#authorize(request, 1);
      case "/b2api/v1/b2_list_file_names":
        return this.#withAccount(
          request,
          body,
          async (json, key) => withV1Sizes(await this.#fileNames(json, key)),
        );
      case "/b2api/v1/b2_list_buckets":
      case "/b2api/v4/b2_list_buckets":
        return this.#withAccount(
          request,
          body,
          (json, key) => this.#listBuckets(json, key),
        );
      case "/b2api/v4/b2_get_download_authorization":
        return this.#withAccount(
          request,
          body,
          (json, key) => this.#downloadAuthorization(json, key),
        );
      case "/b2api/v4/b2_list_file_names":
        return this.#listFileNames(request, { url, body });
      case "/b2api/v3/b2_get_bucket_notification_rules":
      case "/b2api/v4/b2_get_bucket_notification_rules":
        return this.#getNotificationRules(request, url);
      case "/b2api/v4/b2_set_bucket_notification_rules":
        return this.#withAccount(
          request,
          body,
          (json, key) => this.#setNotificationRules(json, key),
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

  /** The keys of the account: the one of the options first, then `keys`. */
  #keys(): FakeKey[] {
    const { keyId, applicationKey, capabilities, restrictToBucket, namePrefix } = this.#options;
    return [
      { keyId, applicationKey, capabilities, restrictToBucket, namePrefix },
      ...this.#options.keys,
    ];
  }

  /** Makes every account token issued so far expired, as 24 hours would. */
  expireAccountTokens(): void {
    for (const grant of this.#accountGrants.values()) grant.expiresAt = -Infinity;
  }

  /**
   * `b2_authorize_account`: v4 puts the answer's fields under `apiInfo.storageApi`
   * (backblaze.com/apidocs/b2-authorize-account); v1 has them at the top level, as v2 did
   * (rclone 1.60 reads `apiUrl`, `downloadUrl` and `allowed.{bucketId, bucketName,
   * capabilities, namePrefix}` there: backend/b2/api/types.go, AuthorizeAccountResponse).
   */
  #authorize(request: Request, version: 1 | 4 = 4): Response {
    if (request.method !== "GET") {
      return b2Error(405, "method_not_allowed", "use GET");
    }
    const header = request.headers.get("authorization");
    const key = this.#keys().find((k) =>
      header === "Basic " + btoa(`${k.keyId}:${k.applicationKey}`)
    );
    if (!key) {
      return b2Error(401, "unauthorized", "invalid authorization");
    }
    const token = `fake-account-${crypto.randomUUID()}`;
    this.accountTokens.add(token);
    this.#accountGrants.set(token, { key, expiresAt: this.#options.now() + ACCOUNT_TOKEN_MS });
    const restricted = key.restrictToBucket ? this.#bucketByName(key.restrictToBucket) : undefined;
    if (version === 1) {
      return Response.json({
        accountId: ACCOUNT_ID,
        authorizationToken: token,
        apiUrl: this.url,
        downloadUrl: this.url,
        absoluteMinimumPartSize: 5_000_000,
        recommendedPartSize: 100_000_000,
        minimumPartSize: 100_000_000,
        allowed: {
          ...(restricted && { bucketId: restricted.id, bucketName: restricted.name }),
          capabilities: key.capabilities,
          namePrefix: key.namePrefix ?? null,
        },
      });
    }
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
            capabilities: key.capabilities,
            namePrefix: key.namePrefix ?? null,
          },
        },
      },
    });
  }

  /** The key behind an account token, or B2's refusal of the token. */
  #accountKey(request: Request): FakeKey | Response {
    const grant = this.#accountGrants.get(request.headers.get("authorization") ?? "");
    if (!grant) return b2Error(401, "bad_auth_token", "Invalid authorization token");
    if (grant.expiresAt <= this.#options.now()) {
      return b2Error(401, "expired_auth_token", "Authorization token has expired");
    }
    return grant.key;
  }

  #withAccount(
    request: Request,
    body: string,
    answer: (json: Record<string, unknown>, key: FakeKey) => Response | Promise<Response>,
  ): Response | Promise<Response> {
    if (request.method !== "POST") {
      return b2Error(405, "method_not_allowed", "use POST");
    }
    const key = this.#accountKey(request);
    if (key instanceof Response) return key;
    let json: unknown;
    try {
      json = JSON.parse(body);
    } catch {
      return b2Error(400, "bad_request", "body is not JSON");
    }
    if (typeof json !== "object" || json === null || Array.isArray(json)) {
      return b2Error(400, "bad_request", "body must be a JSON object");
    }
    return answer(json as Record<string, unknown>, key);
  }

  #listBuckets(json: Record<string, unknown>, key: FakeKey): Response {
    if (!key.capabilities.includes("listBuckets")) {
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
    const restricted = key.restrictToBucket;
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

  #downloadAuthorization(json: Record<string, unknown>, key: FakeKey): Response {
    const { bucketId, fileNamePrefix, validDurationInSeconds } = json;
    if (!key.capabilities.includes("shareFiles")) {
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
    const restricted = key.restrictToBucket;
    if (restricted && bucket.name !== restricted) {
      return b2Error(401, "unauthorized", `restricted to bucket ${restricted}`);
    }
    const keyPrefix = key.namePrefix;
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
    return serveFile(file, { request, bucket });
  }

  /**
   * `b2_list_file_names` (backblaze.com/apidocs/b2-list-file-names): a GET with the fields in
   * the query or a POST with them as JSON (Backblaze's b2sdk POSTs). Names in UTF-8 byte order
   * from `startFileName` (inclusive) under `prefix`; with a `delimiter`, the names past the
   * prefix that hold it are one item, `action: "folder"`, whose `fileName` ends in the
   * delimiter (b2sdk `raw_simulator.py`; rclone `backend/b2/api/types.go`). `nextFileName` is
   * where the next call starts, `null` when done.
   */
  #listFileNames(
    request: Request,
    sent: { url: URL; body: string },
  ): Response | Promise<Response> {
    if (request.method === "POST") {
      return this.#withAccount(request, sent.body, (json, key) => this.#fileNames(json, key));
    }
    if (request.method !== "GET") return b2Error(405, "method_not_allowed", "use GET or POST");
    const key = this.#accountKey(request);
    if (key instanceof Response) return key;
    return this.#fileNames(Object.fromEntries(sent.url.searchParams), key);
  }

  async #fileNames(json: Record<string, unknown>, key: FakeKey): Promise<Response> {
    const { bucketId, startFileName = "", prefix = "", delimiter = null } = json;
    const count = json.maxFileCount === undefined || json.maxFileCount === "0" ||
        json.maxFileCount === 0
      ? DEFAULT_LIST_COUNT
      : Number(json.maxFileCount);
    if (
      typeof bucketId !== "string" || typeof startFileName !== "string" ||
      typeof prefix !== "string" || (delimiter !== null && typeof delimiter !== "string")
    ) {
      return b2Error(400, "bad_request", "bucketId is required; names must be strings");
    }
    // Assumption: a count past the documented maximum is refused as "illegal values" (the
    // docs' 400 bad_request) rather than clamped.
    if (!Number.isInteger(count) || count < 1 || count > MAX_LIST_COUNT) {
      return b2Error(400, "bad_request", `maxFileCount out of range: ${json.maxFileCount}`);
    }
    const bucket = this.#options.buckets.find((b) => b.id === bucketId);
    if (!bucket) return b2Error(400, "bad_request", `Invalid bucketId: ${bucketId}`);
    // listFiles, the key's bucket and its name prefix: a list outside them is 401 unauthorized
    // with this message (Backblaze/B2_Command_Line_Tool issues 556 and 583).
    const outside = !key.capabilities.includes("listFiles") ||
      (key.restrictToBucket && key.restrictToBucket !== bucket.name) ||
      (key.namePrefix && !prefix.startsWith(key.namePrefix));
    if (outside) return b2Error(401, "unauthorized", unauthorizedMessage(key));
    return Response.json(
      await listNames(bucket, { startFileName, prefix, delimiter, count, accountId: ACCOUNT_ID }),
    );
  }

  /**
   * Replaces a file and tells the bucket's webhooks, as B2 does after an
   * upload (`b2:ObjectCreated:Upload`); resolves once every POST was answered.
   */
  async upload(bucketName: string, file: FakeFile): Promise<Delivery[]> {
    this.putFile(bucketName, file);
    return await this.notify(bucketName, [{ name: file.name, size: fileSize(file) }]);
  }

  /** Hides a file (an S3 delete without a version makes one) and tells the webhooks. */
  async hide(bucketName: string, name: string): Promise<Delivery[]> {
    const bucket = this.#bucketByName(bucketName);
    if (!bucket) throw new Error(`no bucket "${bucketName}" in the fake`);
    bucket.files = (bucket.files ?? []).filter((f) => f.name !== name);
    return await this.notify(bucketName, [{ name, eventType: "b2:HideMarkerCreated:Hide" }]);
  }

  /**
   * POSTs `changes` to every enabled, unsuspended rule of the bucket that
   * matches them, in batches of the rule's `maxEventsPerBatch`, with body
   * `{"events": [...]}` signed as the reference guide describes:
   * `X-Bz-Event-Notification-Signature: v1=<hex HMAC-SHA256 of the body>`,
   * keyed by the secret's characters.
   */
  async notify(bucketName: string, changes: FakeChange[]): Promise<Delivery[]> {
    const bucket = this.#bucketByName(bucketName);
    if (!bucket) throw new Error(`no bucket "${bucketName}" in the fake`);
    const made: Delivery[] = [];
    for (const rule of this.notificationRules.get(bucket.id) ?? []) {
      if (!rule.isEnabled || rule.isSuspended) continue;
      const events = changes
        .map((change) => ({ ...change, eventType: change.eventType ?? "b2:ObjectCreated:Upload" }))
        .filter((c) =>
          c.name.startsWith(rule.objectNamePrefix) &&
          rule.eventTypes.some((type) => typeCovers(type, c.eventType))
        )
        .map((c) => ({
          accountId: ACCOUNT_ID,
          bucketId: bucket.id,
          bucketName: bucket.name,
          eventId: crypto.randomUUID(),
          eventTimestamp: this.#options.now(),
          eventType: c.eventType,
          eventVersion: 1,
          matchedRuleName: rule.name,
          objectName: c.name,
          objectSize: c.eventType.startsWith("b2:ObjectCreated:") ? c.size ?? 0 : null,
          objectVersionId: `4_z${bucket.id}_f${crypto.randomUUID().replaceAll("-", "")}`,
        }));
      const batch = rule.maxEventsPerBatch ?? 1;
      for (let i = 0; i < events.length; i += batch) {
        const body = JSON.stringify({ events: events.slice(i, i + batch) });
        made.push(await this.deliver(rule, body));
      }
    }
    return made;
  }

  /** POSTs one body to a rule's webhook, signed with its secret; a redelivery sends it again. */
  async deliver(
    rule: Pick<FakeNotificationRule, "name" | "targetConfiguration">,
    body: string,
  ): Promise<Delivery> {
    const { url, hmacSha256SigningSecret: secret, customHeaders } = rule.targetConfiguration;
    const headers: Record<string, string> = { "content-type": "application/json" };
    for (const header of customHeaders ?? []) headers[header.name] = header.value;
    const signature = secret ? await signEventBody(secret, body) : undefined;
    if (signature) headers["x-bz-event-notification-signature"] = signature;
    const response = await this.#options.webhookFetch(url, { method: "POST", headers, body });
    await response.body?.cancel();
    const delivery: Delivery = {
      rule: rule.name,
      url,
      body,
      ...(signature && { signature }),
      status: response.status,
      retryAfter: response.headers.get("retry-after"),
    };
    this.deliveries.push(delivery);
    return delivery;
  }

  /** Suspends a rule, as B2 does after repeated failed deliveries (threshold unconfirmed). */
  suspendRule(bucketName: string, ruleName: string, reason: string): void {
    const bucket = this.#bucketByName(bucketName);
    const rule = this.notificationRules.get(bucket?.id ?? "")?.find((r) => r.name === ruleName);
    if (!rule) throw new Error(`no rule "${ruleName}" on bucket "${bucketName}"`);
    rule.isSuspended = true;
    rule.suspensionReason = reason;
  }

  /**
   * What both rule calls check first: the account has the feature, the token
   * the capability (backblaze.com/apidocs/b2-get-bucket-notification-rules and
   * b2-set-bucket-notification-rules), the bucket exists and the key may use it.
   */
  #notificationAccess(
    capability: string,
    access: { bucketId: unknown; key: FakeKey },
  ): Response | FakeBucket {
    const { bucketId, key } = access;
    if (!this.#options.eventNotifications) {
      // Assumption: reported as a 400 saying the feature is not enabled; the code is not
      // documented.
      return b2Error(
        400,
        "bad_request",
        "Event Notifications are not enabled for this account; contact Backblaze support",
      );
    }
    // Both calls' docs ("Errors"): 401 unauthorized, "The auth token is valid, but does not
    // allow you to make this call"; 400 bad_request, "The request had the wrong fields or
    // illegal values". The messages are ours. Assumption: B2's wording is not documented.
    if (!key.capabilities.includes(capability)) {
      return b2Error(401, "unauthorized", `key lacks the ${capability} capability`);
    }
    const bucket = this.#options.buckets.find((b) => b.id === bucketId);
    if (typeof bucketId !== "string" || !bucket) {
      return b2Error(400, "bad_request", `invalid bucketId: ${bucketId}`);
    }
    const restricted = key.restrictToBucket;
    if (restricted && bucket.name !== restricted) {
      return b2Error(401, "unauthorized", `restricted to bucket ${restricted}`);
    }
    return bucket;
  }

  #getNotificationRules(request: Request, url: URL): Response {
    if (request.method !== "GET") return b2Error(405, "method_not_allowed", "use GET");
    const key = this.#accountKey(request);
    if (key instanceof Response) return key;
    const bucket = this.#notificationAccess("readBucketNotifications", {
      bucketId: url.searchParams.get("bucketId") ?? undefined,
      key,
    });
    if (bucket instanceof Response) return bucket;
    return this.#rulesAnswer(bucket);
  }

  /** Lists alphabetically by name (the get call's docs). */
  #rulesAnswer(bucket: FakeBucket): Response {
    const rules = [...(this.notificationRules.get(bucket.id) ?? [])]
      .sort((a, b) => a.name < b.name ? -1 : 1);
    // Assumption: each rule's secret comes back as set (b2-sdk-python's integration test
    // compares what set and get answer, secret included).
    return Response.json({ bucketId: bucket.id, eventNotificationRules: structuredClone(rules) });
  }

  #setNotificationRules(json: Record<string, unknown>, key: FakeKey): Response {
    const bucket = this.#notificationAccess("writeBucketNotifications", {
      bucketId: json.bucketId,
      key,
    });
    if (bucket instanceof Response) return bucket;
    const rules = json.eventNotificationRules;
    if (!Array.isArray(rules)) {
      return b2Error(400, "bad_request", "eventNotificationRules must be a list");
    }
    // Each limit broken is "wrong fields or illegal values" (400 bad_request, the set call's
    // docs); Assumption: one answer names the first problem, in our words.
    const problem = notificationRuleProblem(rules);
    if (problem) return b2Error(400, "bad_request", problem);
    this.notificationRules.set(
      bucket.id,
      (rules as FakeNotificationRule[]).map((rule) => {
        // isSuspended and suspensionReason are ignored on set (the set call's docs).
        // Assumption: setting a suspended rule again lifts the suspension (not documented).
        const { isSuspended: _ignored, suspensionReason: _alsoIgnored, ...given } = rule;
        return {
          maxEventsPerBatch: 1,
          ...structuredClone(given),
          isSuspended: false,
          suspensionReason: "",
        };
      }),
    );
    return this.#rulesAnswer(bucket);
  }

  #bucketByName(name: string): FakeBucket | undefined {
    return this.#options.buckets.find((b) => b.name === name);
  }
}

/** Starts a fake B2 on 127.0.0.1 at a free port. */
export function startFakeB2(options?: FakeB2Options): FakeB2 {
  return new FakeB2(options);
}

/** `v1=<lowercase hex HMAC-SHA256 of body>`, keyed by the secret's characters as they are. */
export async function signEventBody(secret: string, body: string): Promise<string> {
  const key = await crypto.subtle.importKey(
    "raw",
    new TextEncoder().encode(secret),
    { name: "HMAC", hash: "SHA-256" },
    false,
    ["sign"],
  );
  const mac = await crypto.subtle.sign("HMAC", key, new TextEncoder().encode(body));
  return "v1=" + Array.from(new Uint8Array(mac), (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * The event types of the reference guide
 * (backblaze.com/docs/cloud-storage-event-notifications-reference-guide); each group also
 * as `:*`.
 */
const EVENT_GROUPS: Record<string, string[]> = {
  "b2:ObjectCreated": ["Upload", "MultipartUpload", "Copy", "Replica", "MultipartReplica"],
  "b2:ObjectDeleted": ["Delete", "LifecycleRule"],
  "b2:HideMarkerCreated": ["Hide", "LifecycleRule"],
  "b2:MultipartUploadCreated": ["LiveRead"],
};

function knownEventType(type: string): boolean {
  const cut = type.lastIndexOf(":");
  const group = EVENT_GROUPS[type.slice(0, cut)];
  const last = type.slice(cut + 1);
  return group !== undefined && (last === "*" || group.includes(last));
}

/** Whether a rule's event type (`b2:ObjectCreated:*`) covers an event's. */
function typeCovers(ruleType: string, eventType: string): boolean {
  return ruleType === eventType ||
    (ruleType.endsWith(":*") && eventType.startsWith(ruleType.slice(0, -1)));
}

/**
 * Why B2 would refuse these rules, or `undefined`: the limits of the set
 * call's docs (backblaze.com/apidocs/b2-set-bucket-notification-rules) and the
 * reference guide: at most 25 rules a bucket; names of 6-63 letters, digits
 * and `-`, unique, not starting `b2-`; known event types; prefixes of two rules
 * may not overlap for one event type; `maxEventsPerBatch` 1-50; webhooks only,
 * HTTPS only; a signing secret of exactly 32 alphanumeric characters.
 */
export function notificationRuleProblem(rules: unknown[]): string | undefined {
  if (rules.length > 25) return "A bucket can have up to 25 Event Notification rules";
  const names = new Set<string>();
  const seen: { prefix: string; types: string[]; name: string }[] = [];
  for (const raw of rules) {
    const rule = (raw ?? {}) as Partial<FakeNotificationRule>;
    const name = String(rule.name ?? "");
    if (!/^[A-Za-z0-9-]{6,63}$/.test(name)) {
      return `Invalid rule name "${name}": 6 to 63 letters, digits and "-"`;
    }
    if (name.startsWith("b2-")) return `Rule names starting with "b2-" are reserved: "${name}"`;
    if (names.has(name)) return `Rule names must be unique in a bucket: "${name}"`;
    names.add(name);
    const types = rule.eventTypes;
    if (!Array.isArray(types) || types.length === 0 || !types.every(knownEventType)) {
      return `Rule "${name}": eventTypes must list known event types`;
    }
    if (typeof rule.objectNamePrefix !== "string" || typeof rule.isEnabled !== "boolean") {
      return `Rule "${name}": objectNamePrefix (a string) and isEnabled are required`;
    }
    const batch = rule.maxEventsPerBatch ?? 1;
    if (!Number.isInteger(batch) || batch < 1 || batch > 50) {
      return `Rule "${name}": maxEventsPerBatch must be 1 to 50`;
    }
    const target = rule.targetConfiguration;
    if (target?.targetType !== "webhook") return `Rule "${name}": targetType must be webhook`;
    if (!URL.canParse(target.url ?? "") || new URL(target.url).protocol !== "https:") {
      return `Rule "${name}": the webhook URL must use HTTPS`;
    }
    const secret = target.hmacSha256SigningSecret;
    if (secret !== undefined && !/^[A-Za-z0-9]{32}$/.test(secret)) {
      return `Rule "${name}": hmacSha256SigningSecret must be 32 alphanumeric characters`;
    }
    const overlap = seen.find((other) =>
      (other.prefix.startsWith(rule.objectNamePrefix!) ||
        rule.objectNamePrefix!.startsWith(other.prefix)) &&
      other.types.some((a) => types.some((b) => typeCovers(a, b) || typeCovers(b, a)))
    );
    if (overlap) {
      return `Rules "${overlap.name}" and "${name}" overlap: the same event type under ` +
        "overlapping prefixes";
    }
    seen.push({ prefix: rule.objectNamePrefix, types, name });
  }
  return undefined;
}

/**
 * A `b2_list_file_names` answer in v1's shape: each file's length as `size` too, which rclone
 * 1.60 reads (backend/b2/api/types.go, File). Assumption: v1 answers carried both fields, as
 * later versions carry `contentLength`; B2's v1 reference is not at hand.
 */
async function withV1Sizes(answer: Response): Promise<Response> {
  if (!answer.ok) return answer;
  const page = await answer.json() as { files: Record<string, unknown>[] };
  for (const file of page.files) file.size = file.contentLength;
  return Response.json(page);
}

/** B2's message for a call outside the key's capabilities or restrictions. */
function unauthorizedMessage(key: FakeKey): string {
  return `unauthorized for application key with capabilities '${key.capabilities.join(",")}'` +
    (key.restrictToBucket ? `, restricted to bucket '${key.restrictToBucket}'` : "") +
    (key.namePrefix ? `, restricted to files that start with '${key.namePrefix}'` : "");
}

const UTF8 = new TextEncoder();

/** Orders names as B2 does: by their UTF-8 bytes. */
export function compareNames(a: string, b: string): number {
  const x = UTF8.encode(a);
  const y = UTF8.encode(b);
  for (let i = 0; i < Math.min(x.length, y.length); i++) {
    if (x[i] !== y[i]) return x[i]! - y[i]!;
  }
  return x.length - y.length;
}

/** One page of `b2_list_file_names`; see `FakeB2`'s handler of it. */
async function listNames(
  bucket: FakeBucket,
  page: {
    startFileName: string;
    prefix: string;
    delimiter: string | null;
    count: number;
    accountId: string;
  },
): Promise<{ files: Record<string, unknown>[]; nextFileName: string | null }> {
  const { startFileName, prefix, delimiter, count, accountId } = page;
  const names = (bucket.files ?? [])
    .filter((f) => f.name.startsWith(prefix) && compareNames(f.name, startFileName) >= 0)
    .sort((a, b) => compareNames(a.name, b.name));
  const files: Record<string, unknown>[] = [];
  let folder: string | undefined;
  for (const file of names) {
    if (folder !== undefined && file.name.startsWith(folder)) continue;
    if (files.length === count) {
      return { files, nextFileName: file.name };
    }
    const cut = delimiter ? file.name.indexOf(delimiter, prefix.length) : -1;
    if (cut === -1) {
      files.push(await fileItem(file, { bucket, accountId }));
      continue;
    }
    folder = file.name.slice(0, cut + delimiter!.length);
    // Assumption: a folder has no id, size, hash or time; the zero values are b2sdk's.
    files.push({
      accountId,
      action: "folder",
      bucketId: bucket.id,
      contentLength: 0,
      contentSha1: null,
      contentType: null,
      fileId: null,
      fileInfo: {},
      fileName: folder,
      uploadTimestamp: 0,
    });
  }
  return { files, nextFileName: null };
}

async function fileItem(
  file: FakeFile,
  where: { bucket: FakeBucket; accountId: string },
): Promise<Record<string, unknown>> {
  return {
    accountId: where.accountId,
    action: "upload",
    bucketId: where.bucket.id,
    contentLength: fileSize(file),
    contentSha1: await sha1Hex(file),
    contentType: file.contentType ?? "application/octet-stream",
    fileId: fileId(file, where.bucket),
    fileInfo: { ...file.info },
    fileName: file.name,
    uploadTimestamp: file.uploadTimestamp ?? DEFAULT_UPLOAD_TIMESTAMP,
  };
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
/** The pattern from offset 0, one period longer than a chunk: any chunk is a copy of a piece. */
const PATTERN = Uint8Array.from({ length: CHUNK + 251 }, (_, i) => patternByte(i));

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
      const from = patternByte(offset);
      controller.enqueue(PATTERN.slice(from, from + length));
      offset += length;
    },
  }, { highWaterMark: 0 });
}

const DEFAULT_UPLOAD_TIMESTAMP = 1_700_000_000_000;

/**
 * B2's ids carry the bucket's id after "_z" (its API examples); the rest follows the name's
 * length and the size here, so a replaced file of another size is a new version.
 */
function fileId(file: FakeFile, bucket: FakeBucket): string {
  return `4_z${bucket.id}_f${file.name.length}x${fileSize(file)}`;
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

async function serveFile(
  file: FakeFile,
  where: { request: Request; bucket: FakeBucket },
): Promise<Response> {
  const { request, bucket } = where;
  const size = fileSize(file);
  const headers = new Headers({
    "content-type": file.contentType ?? "application/octet-stream",
    "accept-ranges": "bytes",
    "x-bz-file-name": file.name.split("/").map(encodeURIComponent).join("/"),
    "x-bz-file-id": fileId(file, bucket),
    "x-bz-content-sha1": await sha1Hex(file),
    "x-bz-upload-timestamp": String(file.uploadTimestamp ?? DEFAULT_UPLOAD_TIMESTAMP),
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
