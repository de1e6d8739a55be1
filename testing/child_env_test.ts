import assert from "node:assert/strict";
import { childEnv } from "./child_env.ts";

Deno.test("childEnv() keeps what Deno and the network need and drops the rest", () => {
  const source = {
    PATH: "/usr/bin",
    HOME: "/home/ci",
    DENO_DIR: "/cache/deno",
    XDG_CACHE_HOME: "/cache",
    HTTPS_PROXY: "http://proxy:3128",
    no_proxy: "localhost",
    DENO_CERT: "/etc/ca.pem",
    SSL_CERT_FILE: "/etc/ssl/cert.pem",
    NODE_EXTRA_CA_CERTS: "/etc/extra.pem",
    NPM_CONFIG_REGISTRY: "http://registry.local/",
    B2_APPLICATION_KEY: "a developer's key",
    CLOUDFLARE_API_TOKEN: "a developer's token",
    WORKER_NAME: "from-the-shell",
    DENO_DEPLOY: "1",
  };
  assert.deepEqual(childEnv({ WORKER_NAME: "from-the-test", NO_COLOR: "1" }, source), {
    PATH: "/usr/bin",
    HOME: "/home/ci",
    DENO_DIR: "/cache/deno",
    XDG_CACHE_HOME: "/cache",
    HTTPS_PROXY: "http://proxy:3128",
    no_proxy: "localhost",
    DENO_CERT: "/etc/ca.pem",
    SSL_CERT_FILE: "/etc/ssl/cert.pem",
    NODE_EXTRA_CA_CERTS: "/etc/extra.pem",
    NPM_CONFIG_REGISTRY: "http://registry.local/",
    WORKER_NAME: "from-the-test",
    NO_COLOR: "1",
  });
});
