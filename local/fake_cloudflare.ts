/**
 * A local stand-in for the Workers part of the Cloudflare API v4, for tests,
 * the demo and the benchmarks.
 *
 * It checks what it receives the way Cloudflare does (see
 * developers.cloudflare.com/api/, cited per behaviour): credentials and token permissions, the
 * account and zone in the path, the multipart shape of a module-worker upload, binding and
 * script names, route patterns against the zone, custom domains against the
 * zone, the stored workers, other Workers' domains and the zone's DNS records
 * (refused with 100116 and 100117), DNS records behind "DNS: Read" and
 * "DNS: Edit", and the workers.dev subdomain of the account and of each
 * script. Every answer uses Cloudflare's envelope
 * `{ success, errors: [{ code, message }], messages, result }`. Faults can be
 * injected with {@linkcode FakeCloudflare.fail}.
 *
 * ```ts
 * const cf = startFakeCloudflare();
 * // ... point CLOUDFLARE_API_BASE_URL at cf.url ...
 * await cf.close();
 * ```
 *
 * Codes for refusals come from Cloudflare's documentation and from answers
 * seen in public bug reports; see {@linkcode CLOUDFLARE_ERROR_CODES}. Where no
 * source was found the fake picks the nearest documented code.
 *
 * @module
 */

/** An account as `GET /accounts` lists it. */
export interface FakeAccount {
  /** 32 hex characters, as Cloudflare's ids are. */
  id: string;
  name: string;
}

/** A zone of an account, as `GET /zones` lists it. */
export interface FakeZone {
  id: string;
  /** The domain, such as `example.com`. */
  name: string;
  /** The account that holds it. @default the first account */
  account?: string;
}

/** The id of the fake's first account unless `accountId` says otherwise: 32 hex, as Cloudflare's. */
export const FAKE_ACCOUNT_ID = "acc00000000000000000000000000001";
/** The id of the fake's default zone, `example.com`. */
export const FAKE_ZONE_ID = "20e00000000000000000000000000001";

/** How the fake account looks. */
export interface FakeCloudflareOptions {
  /** The account the workers go to, listed first. @default FAKE_ACCOUNT_ID */
  accountId?: string;
  /**
   * Further accounts the credential can see (a user in several). An account-owned token sees
   * only the first account all the same. @default []
   */
  otherAccounts?: FakeAccount[];
  /**
   * Who owns the Bearer token: a user (verified at `/user/tokens/verify`) or the first
   * account (verified at `/accounts/{id}/tokens/verify`). @default "user"
   */
  tokenOwner?: "user" | "account";
  /** Bearer token accepted. @default "fake-cf-token" */
  apiToken?: string;
  /** Legacy global key pair accepted (with `apiKey`). @default "admin@example.com" */
  email?: string;
  /** Legacy global key (`X-Auth-Key`). @default "fake-global-key" */
  apiKey?: string;
  /**
   * What the Bearer token may do; the legacy key may do everything. The others are
   * `workers_scripts:read`, `dns_records:read` and `dns_records:edit`.
   * @default ["workers_scripts:edit", "workers_routes:edit", "zone:read"]
   */
  tokenPermissions?: string[];
  /**
   * The account's workers.dev subdomain; `null` models an account that never
   * chose one. @default "fake-subdomain"
   */
  workersDevSubdomain?: string | null;
  /** @default [{ id: FAKE_ZONE_ID, name: "example.com" }] */
  zones?: FakeZone[];
  /** Added to every answer, to model a distant server. @default 0 */
  latencyMs?: number;
}

/** A binding in upload metadata; the fake supports text bindings only. */
export interface WorkerBinding {
  type: string;
  name: string;
  text?: string;
}

/** The `metadata` part of a module-worker upload. */
export interface WorkerMetadata {
  main_module: string;
  compatibility_date: string;
  compatibility_flags?: string[];
  bindings: WorkerBinding[];
  /** Workers Cache for this version (developers.cloudflare.com/workers/cache/configuration/). */
  cache_options?: { enabled: boolean; cross_version_cache?: boolean };
  [key: string]: unknown;
}

/** A worker as the fake holds it after a successful upload. */
export interface StoredScript {
  /** The account it was uploaded to; other accounts do not see it. */
  account: string;
  /** The metadata uploaded, with `bindings` as they now stand (kept and updated secrets included). */
  metadata: WorkerMetadata;
  /** Text of the main module part. */
  module: string;
  moduleContentType: string;
  /** How many uploads succeeded for this name. */
  uploads: number;
  /** ISO 8601 time of the last change (upload or secret). */
  modifiedOn: string;
  /** ISO 8601 time of the first upload. */
  createdOn: string;
  /** Whether it answers on workers.dev and on preview URLs. */
  subdomain: { enabled: boolean; previews_enabled: boolean };
}

/** An ordinary DNS record of a zone, as `GET /zones/{zone}/dns_records` lists it. */
export interface DnsRecord {
  id: string;
  zone_id: string;
  zone_name: string;
  name: string;
  type: string;
  content: string;
  proxied: boolean;
  ttl: number;
}

/** A route of a zone. */
export interface WorkerRoute {
  id: string;
  pattern: string;
  script: string;
}

/** A custom domain of the account. */
export interface WorkerDomain {
  id: string;
  zone_id: string;
  zone_name: string;
  hostname: string;
  service: string;
  environment: string;
}

/** A fault to answer instead of the real thing. */
export interface CloudflareFault {
  status: number;
  /** @default 10013 (`workers.api.error.unknown`) */
  code?: number;
  /** @default "injected fault" */
  message?: string;
  /** Seconds, sent as `Retry-After`. */
  retryAfter?: number;
  /** Never answer, until the client aborts or the fake closes. */
  hang?: boolean;
  /** How many requests get the fault. @default 1 */
  times?: number;
}

/** One request the fake received. */
export interface RecordedApiRequest {
  method: string;
  /** Relative to {@linkcode FakeCloudflare.url}, with the query. */
  path: string;
  headers: Headers;
  /** The body as text; binary parts come out as replacement characters. */
  body: string;
}

/** The error codes the fake answers with, by meaning. */
export const CLOUDFLARE_ERROR_CODES = {
  /**
   * 401: `/user/tokens/verify` asked with a token that is not a user's (an account-owned one,
   * or none valid): "Invalid API Token". wrangler's `whoami` reads it as "account-owned"
   * (workers-sdk `packages/wrangler/src/user/whoami.ts`, `getTokenType`).
   */
  invalidToken: 1000,
  /** 403: unknown token, or a token lacking the permission. */
  authentication: 10000,
  /** 400: neither a Bearer token nor the legacy header pair. */
  missingCredentials: 9106,
  /** 403: the legacy email/key pair is wrong. */
  unknownGlobalKey: 9103,
  /** 400: malformed `Authorization` header (with `error_chain` code 6111). */
  invalidHeaders: 6003,
  /** 403: the account or zone in the path is not this account's. */
  unauthorizedResource: 9109,
  /** 404: no such endpoint. */
  noRoute: 7000,
  /** 405: the endpoint exists, the method does not. */
  methodNotAllowed: 7001,
  /** 404: no such route id. */
  notFound: 10005,
  /** 404: no such worker. */
  workerNotFound: 10007,
  /** 500 `workers.api.error.unknown`; also the default code of injected faults. */
  unknown: 10013,
  /** 400: the worker name breaks the naming rule. */
  invalidScriptName: 10016,
  /** 400: a route names a worker that does not exist. */
  routeScriptMissing: 10019,
  /** 409: another route of the zone has this pattern. */
  duplicateRoute: 10020,
  /** 400: the upload is not a valid module worker (multipart, metadata, modules, bindings). */
  invalidScript: 10021,
  /** 400: the route pattern is malformed or outside the zone. */
  invalidRoutePattern: 10022,
  /** 400: a JSON body is not JSON or lacks a required field. */
  parseBody: 10026,
  /** 400: a secret would take the name of a plain_text binding. */
  bindingNameInUse: 10053,
  /** 400: a custom domain's hostname is not in the zone. */
  zoneNotFound: 10083,
  /**
   * 400: the account has no workers.dev subdomain, so a new Worker cannot be
   * uploaded nor a Worker enabled on workers.dev (workers-sdk#9045, #14494).
   */
  subdomainRequired: 10063,
  /** 409: the hostname is another Worker's custom domain (alchemy-run/alchemy-async#1384). */
  customDomainInUse: 100116,
  /** 409: the hostname has an ordinary DNS record (workers-sdk#9878, vm0-ai/vm0#33406). */
  customDomainDnsConflict: 100117,
  /** 404: no DNS record with this id. */
  dnsRecordNotFound: 81044,
} as const;

const CODES = CLOUDFLARE_ERROR_CODES;
const API_PREFIX = "/client/v4";
const SCRIPTS_EDIT = "workers_scripts:edit";
const ROUTES_EDIT = "workers_routes:edit";
const SCRIPTS_READ = "workers_scripts:read";
const ZONE_READ = "zone:read";
const DNS_READ = "dns_records:read";
const DNS_EDIT = "dns_records:edit";
/**
 * The record types a custom domain cannot share its hostname with
 * (developers.cloudflare.com/workers/configuration/routing/custom-domains/).
 */
const CONFLICTING_RECORD_TYPES = ["A", "AAAA", "CNAME"];
const MODULE_TYPE = "application/javascript+module";
const SUPPORTED_BINDINGS = ["plain_text", "secret_text"];
const BINDING_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
/** Lowercase, starts with a letter, ends with a letter or digit, at most 63 characters. */
const SCRIPT_NAME = /^[a-z](?:[a-z0-9_-]{0,61}[a-z0-9])?$/;
/** RFC 7235 token68; anything else in `Authorization` is refused with 6003/6111. */
const BEARER = /^Bearer ([A-Za-z0-9\-._~+/]+=*)$/;
const HOSTNAME = /^(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+[a-z]{2,}$/;
const DAY_MS = 86_400_000;

/** A refusal, turned into an error envelope by the request handler. */
class Refusal extends Error {
  constructor(
    readonly status: number,
    readonly code: number,
    message: string,
    readonly errorChain?: { code: number; message: string }[],
  ) {
    super(message);
  }
}

/** Who is calling: what they may do, and who owns the credential. */
interface Credential {
  permissions: "all" | string[];
  owner: "user" | "account";
}

interface Call {
  /** Absent for the endpoints that check the credential themselves. */
  credential?: Credential;
  request: Request;
  url: URL;
  body: Uint8Array<ArrayBuffer>;
  account: string;
  zone: string;
  script: string;
  route: string;
  domain: string;
  record: string;
}

interface Endpoint {
  pattern: RegExp;
  /**
   * Any one of these permissions lets the token call it; `"none"`: any valid credential
   * (the token checks itself, as the verify endpoints do).
   */
  permission: string | string[] | "none";
  methods: Record<string, (call: Call) => Response | Promise<Response>>;
}

/** The running fake; `url` is the API base, like `https://api.cloudflare.com/client/v4`. */
export class FakeCloudflare {
  readonly requests: RecordedApiRequest[] = [];
  readonly scripts = new Map<string, StoredScript>();
  readonly routes = new Map<string, WorkerRoute[]>();
  readonly domains: WorkerDomain[] = [];
  /** Ordinary DNS records of every zone; tests add the ones a zone starts with. */
  readonly dnsRecords: DnsRecord[] = [];
  #faults: { pathPrefix: string; fault: CloudflareFault; left: number }[] = [];
  #hanging = new Set<() => void>();
  #server: Deno.HttpServer<Deno.NetAddr>;
  #options: Required<FakeCloudflareOptions>;
  #endpoints: Endpoint[] = [
    {
      // developers.cloudflare.com/api/resources/user/subresources/tokens/methods/verify/: needs
      // no permission; a token that is not a user's gets 1000 (API_FACTS "Discovery").
      pattern: /^\/user\/tokens\/verify$/,
      permission: "none",
      methods: { GET: (call) => this.#verifyToken(call, "user") },
    },
    {
      pattern: /^\/accounts\/(?<account>[^/]+)\/tokens\/verify$/,
      permission: "none",
      methods: { GET: (call) => this.#verifyToken(call, "account") },
    },
    {
      // The accounts the credential can see; an account-owned token sees its one account
      // (cloudflare-typescript `src/resources/accounts/accounts.ts`; API_FACTS "Discovery").
      // Assumption: any valid token lists the accounts it has a permission on.
      pattern: /^\/accounts$/,
      permission: "none",
      methods: { GET: (call) => this.#listAccounts(call) },
    },
    {
      // GET /zones?name=&account.id= needs "Zone > Zone > Read". Assumption (reports differ,
      // API_FACTS "Discovery"): without it the answer is an empty list, not a 403, which is
      // the case worse for a client, since it cannot tell "no such zone" from "not allowed".
      pattern: /^\/zones$/,
      permission: "none",
      methods: { GET: (call) => this.#listZones(call) },
    },
    {
      // The account's Workers; reading needs "Workers Scripts: Read" or Edit.
      pattern: /^\/accounts\/(?<account>[^/]+)\/workers\/scripts$/,
      permission: [SCRIPTS_READ, SCRIPTS_EDIT],
      methods: { GET: (call) => this.#listScripts(call) },
    },
    {
      pattern: /^\/accounts\/(?<account>[^/]+)\/workers\/scripts\/(?<script>[^/]+)$/,
      permission: SCRIPTS_EDIT,
      methods: { PUT: (call) => this.#upload(call) },
    },
    {
      pattern: /^\/accounts\/(?<account>[^/]+)\/workers\/scripts\/(?<script>[^/]+)\/settings$/,
      permission: SCRIPTS_EDIT,
      methods: { GET: (call) => this.#settings(call) },
    },
    {
      pattern: /^\/accounts\/(?<account>[^/]+)\/workers\/scripts\/(?<script>[^/]+)\/secrets$/,
      permission: SCRIPTS_EDIT,
      methods: { PUT: (call) => this.#putSecret(call) },
    },
    {
      pattern: /^\/zones\/(?<zone>[^/]+)\/workers\/routes$/,
      permission: ROUTES_EDIT,
      methods: {
        GET: (call) => ok(this.#zoneRoutes(call.zone)),
        POST: (call) => this.#saveRoute(call),
      },
    },
    {
      pattern: /^\/zones\/(?<zone>[^/]+)\/workers\/routes\/(?<route>[^/]+)$/,
      permission: ROUTES_EDIT,
      methods: {
        GET: (call) => ok(this.#route(call)),
        PUT: (call) => this.#saveRoute(call),
        DELETE: (call) => this.#deleteRoute(call),
      },
    },
    {
      pattern: /^\/accounts\/(?<account>[^/]+)\/workers\/domains$/,
      permission: SCRIPTS_EDIT,
      methods: {
        GET: (call) => this.#listDomains(call),
        PUT: (call) => this.#putDomain(call),
      },
    },
    {
      pattern: /^\/accounts\/(?<account>[^/]+)\/workers\/domains\/(?<domain>[^/]+)$/,
      permission: SCRIPTS_EDIT,
      methods: { DELETE: (call) => this.#deleteDomain(call) },
    },
    {
      pattern: /^\/accounts\/(?<account>[^/]+)\/workers\/subdomain$/,
      permission: SCRIPTS_EDIT,
      methods: { GET: () => ok({ subdomain: this.#accountSubdomain() }) },
    },
    {
      pattern: /^\/accounts\/(?<account>[^/]+)\/workers\/scripts\/(?<script>[^/]+)\/subdomain$/,
      permission: SCRIPTS_EDIT,
      methods: {
        GET: (call) => ok(this.#script(call.script, call.account).subdomain),
        POST: (call) => this.#setScriptSubdomain(call),
      },
    },
    {
      // developers.cloudflare.com/fundamentals/api/reference/permissions/: reading needs "DNS:
      // Read" (or Edit), deleting "DNS: Edit".
      pattern: /^\/zones\/(?<zone>[^/]+)\/dns_records$/,
      permission: [DNS_READ, DNS_EDIT],
      methods: { GET: (call) => ok(this.#listDnsRecords(call)) },
    },
    {
      pattern: /^\/zones\/(?<zone>[^/]+)\/dns_records\/(?<record>[^/]+)$/,
      permission: DNS_EDIT,
      methods: { DELETE: (call) => this.#deleteDnsRecord(call) },
    },
  ];

  constructor(options: FakeCloudflareOptions = {}) {
    this.#options = {
      accountId: FAKE_ACCOUNT_ID,
      apiToken: "fake-cf-token",
      email: "admin@example.com",
      apiKey: "fake-global-key",
      otherAccounts: [],
      tokenOwner: "user",
      // Assumption: Cloudflare's "Edit Cloudflare Workers" token template includes Zone Read.
      tokenPermissions: [SCRIPTS_EDIT, ROUTES_EDIT, ZONE_READ],
      zones: [{ id: FAKE_ZONE_ID, name: "example.com" }],
      latencyMs: 0,
      workersDevSubdomain: "fake-subdomain",
      ...options,
    };
    this.#server = Deno.serve(
      { hostname: "127.0.0.1", port: 0, onListen() {} },
      (request) => this.#handle(request),
    );
  }

  /** The API base, e.g. `http://127.0.0.1:PORT/client/v4`; append `/accounts/...`. */
  get url(): string {
    return `http://127.0.0.1:${this.#server.addr.port}${API_PREFIX}`;
  }

  /** Answers the next `times` requests whose path (relative to `url`) starts with `pathPrefix` with a fault. */
  fail(pathPrefix: string, fault: CloudflareFault): void {
    this.#faults.push({ pathPrefix, fault, left: fault.times ?? 1 });
  }

  async close(): Promise<void> {
    for (const release of this.#hanging) release();
    await this.#server.shutdown();
  }

  async #handle(request: Request): Promise<Response> {
    const url = new URL(request.url);
    const body = new Uint8Array(await request.arrayBuffer());
    const path = url.pathname.startsWith(API_PREFIX)
      ? url.pathname.slice(API_PREFIX.length)
      : url.pathname;
    this.requests.push({
      method: request.method,
      path: path + url.search,
      headers: request.headers,
      body: new TextDecoder().decode(body),
    });
    if (this.#options.latencyMs > 0) {
      await new Promise((resolve) => setTimeout(resolve, this.#options.latencyMs));
    }
    const fault = this.#takeFault(path);
    if (fault?.hang) return await this.#hang(request);
    if (fault) return faultResponse(fault);
    try {
      if (!url.pathname.startsWith(API_PREFIX + "/")) throw noRoute();
      return await this.#dispatch({ request, url, body }, path);
    } catch (error) {
      if (error instanceof Refusal) return refusalResponse(error);
      throw error;
    }
  }

  #takeFault(path: string): CloudflareFault | undefined {
    const entry = this.#faults.find((f) => f.left > 0 && path.startsWith(f.pathPrefix));
    if (!entry) return undefined;
    entry.left--;
    return entry.fault;
  }

  async #hang(request: Request): Promise<Response> {
    const { promise, resolve } = Promise.withResolvers<void>();
    const release = () => resolve();
    this.#hanging.add(release);
    request.signal.addEventListener("abort", release);
    await promise;
    // Detached so the signal Deno aborts after the answer is sent finds no listener.
    this.#hanging.delete(release);
    request.signal.removeEventListener("abort", release);
    return refusalResponse(new Refusal(503, CODES.unknown, "gave up waiting"));
  }

  /** Finds the endpoint, then checks method, credentials, account or zone, and permission, in that order. */
  #dispatch(
    base: Pick<Call, "request" | "url" | "body">,
    path: string,
  ): Response | Promise<Response> {
    for (const endpoint of this.#endpoints) {
      const match = endpoint.pattern.exec(path);
      if (!match) continue;
      const groups = match.groups ?? {};
      const handler = endpoint.methods[base.request.method];
      if (!handler) {
        throw new Refusal(
          405,
          CODES.methodNotAllowed,
          `Method ${base.request.method} not available for that URI.`,
        );
      }
      if (endpoint.permission === "none") {
        // The handler checks the credential itself.
        const { account = "" } = decodeAll(groups);
        return handler({ ...base, ...NO_IDS, account });
      }
      const credential = this.#authenticate(base.request.headers);
      const { permissions } = credential;
      const {
        account = "",
        zone = "",
        script = "",
        route = "",
        domain = "",
        record = "",
      } = decodeAll(groups);
      const visible = this.#visibleAccounts(credential);
      if (groups.account !== undefined && !visible.some((a) => a.id === account)) {
        throw unauthorizedResource();
      }
      if (groups.zone !== undefined && !this.#zoneById(zone, credential)) {
        throw unauthorizedResource();
      }
      const allowed = [endpoint.permission].flat();
      if (permissions !== "all" && !allowed.some((p) => permissions.includes(p))) {
        throw new Refusal(403, CODES.authentication, "Authentication error");
      }
      return handler({ ...base, credential, account, zone, script, route, domain, record });
    }
    throw noRoute();
  }

  /** What the caller may do: `"all"` for the legacy key, else the token's permissions. */
  #authenticate(headers: Headers): Credential {
    const authorization = headers.get("authorization");
    if (authorization !== null) {
      const token = BEARER.exec(authorization)?.[1];
      if (token === undefined) {
        throw new Refusal(
          400,
          CODES.invalidHeaders,
          "Invalid request headers",
          [
            { code: 6111, message: "Invalid format for Authorization header" },
          ],
        );
      }
      if (token !== this.#options.apiToken) {
        throw new Refusal(403, CODES.authentication, "Authentication error");
      }
      return { permissions: this.#options.tokenPermissions, owner: this.#options.tokenOwner };
    }
    const email = headers.get("x-auth-email");
    const key = headers.get("x-auth-key");
    if (email === null || key === null) {
      throw new Refusal(
        400,
        CODES.missingCredentials,
        "Missing X-Auth-Key, X-Auth-Email or Authorization headers",
      );
    }
    if (email !== this.#options.email || key !== this.#options.apiKey) {
      throw new Refusal(
        403,
        CODES.unknownGlobalKey,
        "Unknown X-Auth-Key or X-Auth-Email",
      );
    }
    return { permissions: "all", owner: "user" };
  }

  /**
   * GET /user/tokens/verify and /accounts/{id}/tokens/verify: `{ id, status }` with message
   * 10000 "This API Token is valid and active" for a token of that owner; anything else
   * (another owner's token, an unknown one) 401 with 1000 "Invalid API Token" (API_FACTS
   * "Discovery"; the status is an assumption from reports). The legacy key is no token.
   */
  #verifyToken(call: Call, where: "user" | "account"): Response {
    const token = BEARER.exec(call.request.headers.get("authorization") ?? "")?.[1];
    const owner = this.#options.tokenOwner;
    const valid = token === this.#options.apiToken && owner === where &&
      (where === "user" || call.account === this.#options.accountId);
    if (!valid) throw new Refusal(401, CODES.invalidToken, "Invalid API Token");
    return Response.json({
      success: true,
      errors: [],
      messages: [{ code: 10000, message: "This API Token is valid and active", type: null }],
      result: { id: "f4e3000000000000000000000000000c", status: "active" },
    });
  }

  #listAccounts(call: Call): Response {
    const credential = this.#authenticate(call.request.headers);
    const accounts = this.#visibleAccounts(credential).map((a) => ({
      ...a,
      type: "standard",
      settings: { enforce_twofactor: false },
    }));
    return paged(call, accounts);
  }

  /** GET /zones?name=&account.id=: the credential's zones, by exact name (wrangler's walk asks so). */
  #listZones(call: Call): Response {
    const credential = this.#authenticate(call.request.headers);
    const { permissions } = credential;
    const name = call.url.searchParams.get("name");
    const account = call.url.searchParams.get("account.id");
    const readable = permissions === "all" || permissions.includes(ZONE_READ);
    const visible = this.#visibleAccounts(credential);
    const zones = !readable ? [] : this.#options.zones.flatMap((zone) => {
      const holder = visible.find((a) => a.id === this.#zoneAccount(zone));
      if (!holder || (name !== null && zone.name !== name)) return [];
      if (account !== null && holder.id !== account) return [];
      return [{ id: zone.id, name: zone.name, status: "active", account: holder }];
    });
    return paged(call, zones);
  }

  #listScripts(call: Call): Response {
    const scripts = [...this.scripts].filter(([, s]) => s.account === call.account);
    return ok(
      scripts.map(([id, s]) => ({ id, created_on: s.createdOn, modified_on: s.modifiedOn })),
    );
  }

  async #upload(call: Call): Promise<Response> {
    if (!SCRIPT_NAME.test(call.script)) {
      throw new Refusal(
        400,
        CODES.invalidScriptName,
        `Invalid Worker name "${call.script}": use lowercase letters, digits, "-" and "_", ` +
          "start with a letter, end with a letter or digit, at most 63 characters",
      );
    }
    const form = await readMultipart(call);
    const metadata = await readMetadata(form);
    const main = form.get(metadata.main_module);
    if (!(main instanceof File)) {
      throw invalidScript(
        `No such module "${metadata.main_module}": main_module must name a file part of the upload`,
      );
    }
    if (main.type !== MODULE_TYPE) {
      throw invalidScript(
        `Module "${metadata.main_module}" has content type "${main.type}"; ` +
          `the main module of a module worker must be ${MODULE_TYPE}`,
      );
    }
    // One Worker per name across the fake's accounts: an upload to another account replaces it.
    const stored = this.scripts.get(call.script);
    const previous = stored?.account === call.account ? stored : undefined;
    if (!previous && this.#options.workersDevSubdomain === null) {
      // workers-sdk#14494: the first upload of a Worker on such an account is refused.
      throw subdomainRequired();
    }
    const now = new Date().toISOString();
    const next: StoredScript = {
      account: call.account,
      metadata: { ...metadata, bindings: keptBindings(metadata, previous) },
      module: await main.text(),
      moduleContentType: main.type,
      uploads: (previous?.uploads ?? 0) + 1,
      modifiedOn: now,
      createdOn: previous?.createdOn ?? now,
      // Assumed, as the dashboard does: a new Worker answers on workers.dev until told
      // otherwise. The tool sets it on every deploy, so its tests do not rest on this.
      subdomain: previous?.subdomain ?? { enabled: true, previews_enabled: true },
    };
    this.scripts.set(call.script, next);
    const etag = await sha256Hex(next.module);
    return ok({
      id: call.script,
      tag: etag.slice(0, 32),
      etag,
      handlers: ["fetch"],
      created_on: next.createdOn,
      modified_on: next.modifiedOn,
      compatibility_date: metadata.compatibility_date,
      compatibility_flags: metadata.compatibility_flags ?? [],
      has_modules: true,
      logpush: false,
      usage_model: "standard",
      startup_time_ms: 0,
    });
  }

  #settings(call: Call): Response {
    const { metadata } = this.#script(call.script, call.account);
    return ok({
      bindings: metadata.bindings.map(({ text, ...binding }) =>
        binding.type === "secret_text" ? binding : { ...binding, text }
      ),
      compatibility_date: metadata.compatibility_date,
      compatibility_flags: metadata.compatibility_flags ?? [],
      // Listed in the SDK's settings type; absent when the upload did not set it
      // (developers.cloudflare.com/workers/cache/configuration/).
      ...(metadata.cache_options && { cache_options: metadata.cache_options }),
      logpush: false,
      placement: {},
      tail_consumers: [],
      usage_model: "standard",
    });
  }

  #putSecret(call: Call): Response {
    const stored = this.#script(call.script, call.account);
    const { name, text, type } = readJson(call);
    if (typeof name !== "string" || !BINDING_NAME.test(name)) {
      throw parseBody(
        `secret name must match ${BINDING_NAME}, got ${JSON.stringify(name)}`,
      );
    }
    if (typeof text !== "string") {
      throw parseBody("secret text must be a string");
    }
    if (type !== "secret_text") {
      throw parseBody(`secret type must be "secret_text"`);
    }
    const bindings = stored.metadata.bindings;
    if (bindings.some((b) => b.name === name && b.type !== "secret_text")) {
      throw new Refusal(
        400,
        CODES.bindingNameInUse,
        `Binding name '${name}' already in use`,
      );
    }
    stored.metadata.bindings = [
      ...bindings.filter((b) => b.name !== name),
      { type: "secret_text", name, text },
    ];
    // Assumption: the version this makes may not keep the caching setting (the docs
    // do not say; wrangler 4 copies it across explicitly): the fake takes that worst case.
    delete stored.metadata.cache_options;
    stored.modifiedOn = new Date().toISOString();
    return ok({ name, type: "secret_text" });
  }

  /** POST creates a route; PUT (with a route id in the path) replaces one. */
  #saveRoute(call: Call): Response {
    const routes = this.#zoneRoutes(call.zone);
    const existing = call.route ? this.#route(call) : undefined;
    const { pattern, script } = readJson(call);
    if (typeof pattern !== "string") {
      throw parseBody("pattern must be a string");
    }
    if (script !== undefined && typeof script !== "string") {
      throw parseBody("script must be a string");
    }
    checkRoutePattern(pattern, this.#zoneById(call.zone, call.credential!)?.name ?? "");
    const zone = this.#zoneById(call.zone, call.credential!)!;
    if (script && this.scripts.get(script)?.account !== this.#zoneAccount(zone)) {
      throw new Refusal(
        400,
        CODES.routeScriptMissing,
        `workers.api.error.invalid_route_script_missing: no Worker named "${script}"`,
      );
    }
    if (routes.some((r) => r.pattern === pattern && r.id !== existing?.id)) {
      throw new Refusal(
        409,
        CODES.duplicateRoute,
        "workers.api.error.duplicate_route",
      );
    }
    const route = {
      id: existing?.id ?? randomId(),
      pattern,
      script: script ?? "",
    };
    this.routes.set(call.zone, [
      ...routes.filter((r) => r.id !== route.id),
      route,
    ]);
    return ok(route);
  }

  #deleteRoute(call: Call): Response {
    const { id } = this.#route(call);
    this.routes.set(
      call.zone,
      this.#zoneRoutes(call.zone).filter((r) => r.id !== id),
    );
    return ok({ id });
  }

  #listDomains(call: Call): Response {
    const filters = [
      "hostname",
      "service",
      "zone_id",
      "zone_name",
      "environment",
    ] as const;
    const wanted = filters.flatMap((field) => {
      const value = call.url.searchParams.get(field);
      return value === null ? [] : [[field, value] as const];
    });
    return ok(
      this.domains.filter((d) => wanted.every(([field, value]) => d[field] === value)),
    );
  }

  #putDomain(call: Call): Response {
    const {
      hostname,
      service,
      zone_id,
      zone_name,
      environment = "production",
      override_existing_origin,
    } = readJson(call);
    if (typeof hostname !== "string" || !HOSTNAME.test(hostname)) {
      throw parseBody(
        `hostname must be a bare lowercase hostname (no scheme, path or wildcard), ` +
          `got ${JSON.stringify(hostname)}`,
      );
    }
    if (typeof service !== "string" || service === "") {
      throw parseBody("service is required");
    }
    if (typeof environment !== "string") {
      throw parseBody("environment must be a string");
    }
    const zone = this.#options.zones.find((z) =>
      this.#zoneAccount(z) === call.account &&
      (zone_id === undefined || z.id === zone_id) &&
      (zone_name === undefined || z.name === zone_name) &&
      inZone(hostname, z.name)
    );
    if (!zone) {
      throw new Refusal(
        400,
        CODES.zoneNotFound,
        `workers.api.error.zone_not_found for "${hostname}": ` +
          `no zone of this account (matching zone_id ${JSON.stringify(zone_id)}) contains it`,
      );
    }
    this.#script(service, call.account);
    const existing = this.domains.findIndex((d) => d.hostname === hostname);
    const holder = this.domains[existing];
    if (holder && holder.service !== service && override_existing_origin !== true) {
      // alchemy-run/alchemy-async#1384 quotes this refusal;
      // developers.cloudflare.com/workers/configuration/routing/custom-domains/.
      throw new Refusal(
        409,
        CODES.customDomainInUse,
        `Hostname '${hostname}' already in use by other custom domain. Either delete it, ` +
          "try a different hostname, or use the option 'override_existing_origin' to override.",
      );
    }
    if (this.#recordsNamed(zone.id, hostname).length > 0) {
      // No flag clears this one: `override_existing_dns_record` only applies to another
      // Worker's record (cloudflare/workers-sdk#9878, as quoted in vm0-ai/vm0#33406).
      throw new Refusal(
        409,
        CODES.customDomainDnsConflict,
        `Hostname '${hostname}' already has externally managed DNS records (A, CNAME, etc). ` +
          "Delete them first or try a different hostname.",
      );
    }
    const domain: WorkerDomain = {
      id: this.domains[existing]?.id ?? randomId(),
      zone_id: zone.id,
      zone_name: zone.name,
      hostname,
      service,
      environment,
    };
    if (existing >= 0) this.domains[existing] = domain;
    else this.domains.push(domain);
    return ok(domain);
  }

  #deleteDomain(call: Call): Response {
    const index = this.domains.findIndex((d) => d.id === call.domain);
    if (index < 0) {
      throw new Refusal(404, CODES.notFound, "workers.api.error.not_found");
    }
    this.domains.splice(index, 1);
    return ok(null);
  }

  /** GET /accounts/{id}/workers/subdomain; wrangler takes code 10007 to mean "none chosen yet". */
  #accountSubdomain(): string {
    const subdomain = this.#options.workersDevSubdomain;
    if (subdomain === null) {
      throw new Refusal(404, CODES.workerNotFound, "workers.api.error.subdomain_not_found");
    }
    return subdomain;
  }

  /** POST /accounts/{id}/workers/scripts/{name}/subdomain `{ enabled, previews_enabled? }`. */
  #setScriptSubdomain(call: Call): Response {
    const stored = this.#script(call.script, call.account);
    const { enabled, previews_enabled } = readJson(call);
    if (typeof enabled !== "boolean") throw parseBody("enabled must be a boolean");
    if (previews_enabled !== undefined && typeof previews_enabled !== "boolean") {
      throw parseBody("previews_enabled must be a boolean");
    }
    if ((enabled || previews_enabled) && this.#options.workersDevSubdomain === null) {
      throw subdomainRequired();
    }
    stored.subdomain = {
      enabled,
      previews_enabled: previews_enabled ?? stored.subdomain.previews_enabled,
    };
    return ok(stored.subdomain);
  }

  #listDnsRecords(call: Call): DnsRecord[] {
    const name = call.url.searchParams.get("name");
    const type = call.url.searchParams.get("type");
    return this.dnsRecords.filter((r) =>
      r.zone_id === call.zone && (name === null || r.name === name) &&
      (type === null || r.type === type)
    );
  }

  #deleteDnsRecord(call: Call): Response {
    const index = this.dnsRecords.findIndex((r) => r.zone_id === call.zone && r.id === call.record);
    if (index < 0) {
      throw new Refusal(404, CODES.dnsRecordNotFound, "Record does not exist.");
    }
    this.dnsRecords.splice(index, 1);
    return ok({ id: call.record });
  }

  #recordsNamed(zoneId: string, hostname: string): DnsRecord[] {
    return this.dnsRecords.filter((r) =>
      r.zone_id === zoneId && r.name === hostname && CONFLICTING_RECORD_TYPES.includes(r.type)
    );
  }

  #script(name: string, account: string): StoredScript {
    const stored = this.scripts.get(name);
    if (!stored || stored.account !== account) {
      throw new Refusal(
        404,
        CODES.workerNotFound,
        "This Worker does not exist on your account.",
      );
    }
    return stored;
  }

  #route(call: Call): WorkerRoute {
    const route = this.#zoneRoutes(call.zone).find((r) => r.id === call.route);
    if (!route) {
      throw new Refusal(404, CODES.notFound, "workers.api.error.not_found");
    }
    return route;
  }

  #zoneRoutes(zoneId: string): WorkerRoute[] {
    return this.routes.get(zoneId) ?? [];
  }

  /** A zone the credential can see: one of its accounts holds it. */
  #zoneById(id: string, credential: Credential): FakeZone | undefined {
    const accounts = this.#visibleAccounts(credential).map((a) => a.id);
    return this.#options.zones.find((z) => z.id === id && accounts.includes(this.#zoneAccount(z)));
  }

  #zoneAccount(zone: FakeZone): string {
    return zone.account ?? this.#options.accountId;
  }

  /** The accounts a credential can see: an account-owned token only its own. */
  #visibleAccounts(credential: Credential): FakeAccount[] {
    const all = [
      { id: this.#options.accountId, name: "Fake account" },
      ...this.#options.otherAccounts,
    ];
    return credential.owner === "account" ? all.slice(0, 1) : all;
  }
}

/** Starts a fake Cloudflare API on 127.0.0.1 at a free port. */
export function startFakeCloudflare(
  options?: FakeCloudflareOptions,
): FakeCloudflare {
  return new FakeCloudflare(options);
}

const NO_IDS = { zone: "", script: "", route: "", domain: "", record: "" };

/** Pages from 1, 20 a page by default, at most 50 (`result_info`, API_FACTS "Discovery"). */
const PER_PAGE = { default: 20, max: 50 };

function paged(call: Call, items: unknown[]): Response {
  const page = Math.max(1, Number(call.url.searchParams.get("page") ?? 1) || 1);
  const asked = Number(call.url.searchParams.get("per_page") ?? PER_PAGE.default);
  const perPage = Math.min(PER_PAGE.max, Math.max(1, asked || PER_PAGE.default));
  const result = items.slice((page - 1) * perPage, page * perPage);
  return Response.json({
    success: true,
    errors: [],
    messages: [],
    result,
    result_info: { page, per_page: perPage, count: result.length, total_count: items.length },
  });
}

function ok(result: unknown): Response {
  return Response.json({ success: true, errors: [], messages: [], result });
}

function refusalResponse(
  refusal: Refusal,
  headers: Record<string, string> = {},
): Response {
  const error = { code: refusal.code, message: refusal.message };
  const errors = [
    refusal.errorChain ? { ...error, error_chain: refusal.errorChain } : error,
  ];
  return Response.json(
    { success: false, errors, messages: [], result: null },
    { status: refusal.status, headers },
  );
}

function faultResponse(fault: CloudflareFault): Response {
  const headers: Record<string, string> = {};
  if (fault.retryAfter !== undefined) {
    headers["retry-after"] = String(fault.retryAfter);
  }
  const refusal = new Refusal(
    fault.status,
    fault.code ?? CODES.unknown,
    fault.message ?? "injected fault",
  );
  return refusalResponse(refusal, headers);
}

function subdomainRequired(): Refusal {
  return new Refusal(
    400,
    CODES.subdomainRequired,
    "You need a workers.dev subdomain in order to proceed. Please go to the dashboard and open " +
      "the Workers menu. Opening the Workers landing page for the first time will create a " +
      "workers.dev subdomain automatically.",
  );
}

function noRoute(): Refusal {
  return new Refusal(404, CODES.noRoute, "No route for that URI");
}

function unauthorizedResource(): Refusal {
  return new Refusal(
    403,
    CODES.unauthorizedResource,
    "Unauthorized to access requested resource",
  );
}

function invalidScript(message: string): Refusal {
  return new Refusal(400, CODES.invalidScript, message);
}

function parseBody(detail: string): Refusal {
  return new Refusal(
    400,
    CODES.parseBody,
    `workers.api.error.parse_body: ${detail}`,
  );
}

function decodeAll(groups: Record<string, string>): Record<string, string> {
  try {
    return Object.fromEntries(
      Object.entries(groups).map((
        [key, value],
      ) => [key, decodeURIComponent(value)]),
    );
  } catch {
    throw noRoute();
  }
}

function readJson(call: Call): Record<string, unknown> {
  let json: unknown;
  try {
    json = JSON.parse(new TextDecoder().decode(call.body));
  } catch {
    throw parseBody("the body is not JSON");
  }
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    throw parseBody("the body must be a JSON object");
  }
  return json as Record<string, unknown>;
}

async function readMultipart(call: Call): Promise<FormData> {
  const contentType = call.request.headers.get("content-type") ?? "";
  if (!contentType.toLowerCase().startsWith("multipart/form-data")) {
    throw invalidScript(
      `Content-Type is "${contentType}"; a module worker is uploaded as multipart/form-data`,
    );
  }
  try {
    return await new Response(call.body, {
      headers: { "content-type": contentType },
    }).formData();
  } catch {
    throw invalidScript("could not parse the multipart/form-data body");
  }
}

async function readMetadata(form: FormData): Promise<WorkerMetadata> {
  const part = form.get("metadata");
  if (part === null) {
    throw invalidScript("could not read content for part metadata");
  }
  let json: unknown;
  try {
    json = JSON.parse(typeof part === "string" ? part : await part.text());
  } catch {
    throw invalidScript("could not parse part metadata: it is not JSON");
  }
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    throw invalidScript("part metadata must be a JSON object");
  }
  const metadata = json as Record<string, unknown>;
  const {
    main_module,
    compatibility_date,
    compatibility_flags,
    bindings = [],
  } = metadata;
  if (typeof main_module !== "string" || main_module === "") {
    throw invalidScript(
      "metadata.main_module must name the main module (the fake accepts module workers only)",
    );
  }
  checkCompatibilityDate(compatibility_date);
  checkCacheOptions(metadata.cache_options);
  if (
    compatibility_flags !== undefined &&
    !(Array.isArray(compatibility_flags) &&
      compatibility_flags.every((f) => typeof f === "string"))
  ) {
    throw invalidScript(
      "metadata.compatibility_flags must be an array of strings",
    );
  }
  return {
    ...metadata,
    main_module,
    compatibility_date,
    bindings: checkBindings(bindings),
  };
}

function checkCompatibilityDate(date: unknown): asserts date is string {
  if (typeof date !== "string" || !isCalendarDate(date)) {
    throw invalidScript(
      `metadata.compatibility_date must be a date YYYY-MM-DD, got ${JSON.stringify(date)}`,
    );
  }
  // A day of slack for callers whose local date is ahead of UTC.
  const latest = new Date(Date.now() + DAY_MS).toISOString().slice(0, 10);
  if (date > latest) {
    throw invalidScript(`Can't set compatibility date in the future: ${date}`);
  }
}

/**
 * `cache_options`, when present: an object whose `enabled` is required and
 * boolean, and `cross_version_cache` an optional boolean (developers.cloudflare.com/
 * workers/cache/configuration/; the `cloudflare` SDK's script upload types). The refusal's code is the
 * metadata one, 10021: no source names a more specific code.
 */
function checkCacheOptions(options: unknown): void {
  if (options === undefined) return;
  if (typeof options !== "object" || options === null || Array.isArray(options)) {
    throw invalidScript("metadata.cache_options must be an object");
  }
  const { enabled, cross_version_cache } = options as Record<string, unknown>;
  if (typeof enabled !== "boolean") {
    throw invalidScript("metadata.cache_options.enabled is required and must be a boolean");
  }
  if (cross_version_cache !== undefined && typeof cross_version_cache !== "boolean") {
    throw invalidScript("metadata.cache_options.cross_version_cache must be a boolean");
  }
}

/** `YYYY-MM-DD` naming a day that exists (no 2025-02-30). */
function isCalendarDate(text: string): boolean {
  if (!/^\d{4}-\d{2}-\d{2}$/.test(text)) return false;
  const time = Date.parse(`${text}T00:00:00Z`);
  return !Number.isNaN(time) && new Date(time).toISOString().startsWith(text);
}

function checkBindings(bindings: unknown): WorkerBinding[] {
  if (!Array.isArray(bindings)) {
    throw invalidScript("metadata.bindings must be an array");
  }
  const seen = new Set<string>();
  return bindings.map((binding: unknown) => {
    const { type, name, text } = (binding ?? {}) as Record<string, unknown>;
    if (typeof name !== "string" || !BINDING_NAME.test(name)) {
      throw invalidScript(
        `binding name ${JSON.stringify(name)} must match ${BINDING_NAME}`,
      );
    }
    if (typeof type !== "string" || !SUPPORTED_BINDINGS.includes(type)) {
      throw invalidScript(
        `binding "${name}" has type ${JSON.stringify(type)}; ` +
          `the fake supports ${SUPPORTED_BINDINGS.join(" and ")} only`,
      );
    }
    if (typeof text !== "string") {
      throw invalidScript(`binding "${name}" needs a string text`);
    }
    if (seen.has(name)) {
      throw invalidScript(`binding name "${name}" is used twice`);
    }
    seen.add(name);
    return { type, name, text };
  });
}

/** The new bindings, plus previous ones of the types `keep_bindings` names that the upload did not replace. */
function keptBindings(
  metadata: WorkerMetadata,
  previous?: StoredScript,
): WorkerBinding[] {
  const keep = metadata.keep_bindings;
  if (!previous || !Array.isArray(keep)) return metadata.bindings;
  const names = new Set(metadata.bindings.map((b) => b.name));
  const kept = previous.metadata.bindings.filter((b) =>
    keep.includes(b.type) && !names.has(b.name)
  );
  return [...metadata.bindings, ...kept];
}

/** Checks a route pattern the way Cloudflare's route validation documents (code 10022). */
function checkRoutePattern(pattern: string, zoneName: string): void {
  const refuse = (message: string) =>
    new Refusal(400, CODES.invalidRoutePattern, `${message}: ${pattern}`);
  const bare = pattern.replace(/^https?:\/\//, "");
  const slash = bare.indexOf("/");
  if (slash <= 0) {
    throw refuse(
      "Could not understand route pattern, please try a different pattern",
    );
  }
  const host = bare.slice(0, slash);
  const path = bare.slice(slash);
  if (path.includes("?")) {
    throw refuse("Route pattern should not have query parameters");
  }
  if (host.slice(1).includes("*") || path.slice(0, -1).includes("*")) {
    throw refuse(
      "Route pattern may only contain wildcards at the beginning of the hostname and the end of the path",
    );
  }
  if (!inZone(host.replace(/^\*\.?/, ""), zoneName)) {
    throw refuse("Route pattern must include zone name");
  }
}

function inZone(hostname: string, zoneName: string): boolean {
  return hostname === zoneName || hostname.endsWith(`.${zoneName}`);
}

function randomId(): string {
  return crypto.randomUUID().replaceAll("-", "");
}

async function sha256Hex(text: string): Promise<string> {
  const digest = await crypto.subtle.digest(
    "SHA-256",
    new TextEncoder().encode(text),
  );
  return Array.from(
    new Uint8Array(digest),
    (b) => b.toString(16).padStart(2, "0"),
  ).join("");
}
