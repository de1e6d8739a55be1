/**
 * The environment for a child process in the tests and the bench: only what Deno and the
 * network need, plus what the caller gives. Each test then sees exactly the settings it means
 * to (no B2_* or CLOUDFLARE_* from the developer's shell), while the child still finds the
 * parent's Deno cache (a `DENO_DIR` set by CI, or one under a `HOME` that is not the account's)
 * and reaches the npm registry through a proxy or a custom certificate authority.
 *
 * ```ts
 * import { childEnv } from "./testing/child_env.ts";
 * const child = new Deno.Command(Deno.execPath(), {
 *   args: ["run", "main.ts", "render"],
 *   env: childEnv({ B2_BUCKET_NAME: "photos" }),
 *   clearEnv: true,
 * });
 * ```
 *
 * @module
 */

/** Passed through when set: where Deno caches, how it reaches the registry, what it trusts. */
export const KEPT_VARIABLES: readonly string[] = [
  // Finding programs and the cache.
  "PATH",
  "HOME",
  "USERPROFILE",
  "LOCALAPPDATA",
  "SYSTEMROOT",
  "TMPDIR",
  "TEMP",
  "TMP",
  "DENO_DIR",
  "XDG_CACHE_HOME",
  // Proxies (lower-case too: both spellings are read).
  "HTTP_PROXY",
  "HTTPS_PROXY",
  "NO_PROXY",
  "ALL_PROXY",
  "http_proxy",
  "https_proxy",
  "no_proxy",
  "all_proxy",
  // Certificate authorities.
  "DENO_CERT",
  "DENO_TLS_CA_STORE",
  "SSL_CERT_FILE",
  "SSL_CERT_DIR",
  "NODE_EXTRA_CA_CERTS",
  // The npm registry Deno installs from.
  "NPM_CONFIG_REGISTRY",
  "npm_config_registry",
];

/** {@linkcode KEPT_VARIABLES} from `source` (this process's environment), then `env` on top. */
export function childEnv(
  env: Record<string, string> = {},
  source: Record<string, string | undefined> = Deno.env.toObject(),
): Record<string, string> {
  const kept: Record<string, string> = {};
  for (const name of KEPT_VARIABLES) {
    const value = source[name];
    if (value !== undefined) kept[name] = value;
  }
  return { ...kept, ...env };
}
