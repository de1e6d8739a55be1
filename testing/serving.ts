/**
 * Runs a long-running command (`demo`, `dev`, `cron`) as a child process the way its task runs
 * it, waits for what it prints once ready, and stops it: what the tests of `local/demo.ts`,
 * `local/dev.ts` and `main.ts cron` share. Also lists a process's descendants, so a test can
 * check that none outlives the command.
 *
 * ```ts
 * const run = await whileServing(["demo"], { urlPattern: /at (http:\S+)/ }, async (url) => {
 *   assert.equal((await fetch(url)).status, 200);
 * });
 * assert.equal(run.code, 0);
 * ```
 *
 * @module
 */

import assert from "node:assert/strict";
import { childEnv } from "./child_env.ts";
import { parseProcStat, processes } from "../local/shutdown.ts";

/** The repository's root, with a trailing `/`. */
export const ROOT: string = new URL("../", import.meta.url).pathname;

/** How a served command ended. */
export interface Served {
  /** Its exit code. */
  code: number;
  stdout: string;
  stderr: string;
  /** Its process id. */
  pid: number;
  /** The processes under it (workerd among them) while it served; empty without `/proc`. */
  children: number[];
}

/** A child process read until its stdout matched a pattern. */
export interface Started {
  child: Deno.ChildProcess;
  /** The pattern's match, or `undefined` when the output ended first. */
  match: RegExpExecArray | undefined;
  /** Its stdout so far. */
  stdout(): string;
  /** Waits for it to end, reading the rest of its output. */
  finish(): Promise<{ code: number; stdout: string; stderr: string }>;
}

/** Starts `command` with only what Deno and the network need, and reads it until `pattern`. */
export async function startUntil(
  command: string,
  args: string[],
  options: { pattern: RegExp; env?: Record<string, string>; cwd?: string; signal?: AbortSignal },
): Promise<Started> {
  const child = new Deno.Command(command, {
    args,
    cwd: options.cwd ?? ROOT,
    env: childEnv(options.env ?? { NO_COLOR: "1" }),
    clearEnv: true,
    ...(options.signal && { signal: options.signal }),
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const stderr = new Response(child.stderr).text();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let stdout = "";
  let match: RegExpExecArray | undefined;
  while (!match) {
    const { value, done } = await reader.read();
    if (done) break;
    stdout += value;
    match = options.pattern.exec(stdout) ?? undefined;
  }
  const finish = async () => {
    for (let chunk = await reader.read(); !chunk.done; chunk = await reader.read()) {
      stdout += chunk.value;
    }
    const { code } = await child.status;
    return { code, stdout, stderr: await stderr };
  };
  return { child, match, stdout: () => stdout, finish };
}

/**
 * Starts `args` (`dev` and `demo` from their `local/` entry points on a port of the system's
 * choosing, the rest through `main.ts`), waits until stdout matches `urlPattern`, hands its
 * first group to `check`, then sends `signal` (Ctrl-C's SIGINT by default).
 */
export async function whileServing(
  args: string[],
  options: {
    env?: Record<string, string>;
    urlPattern: RegExp;
    signal?: Deno.Signal;
  },
  check: (url: string, stdout: string) => Promise<void>,
): Promise<Served> {
  const started = await startUntil(Deno.execPath(), [
    "run",
    "-A",
    `--lock=${ROOT}deno.lock`,
    ...(args[0] === "dev" || args[0] === "demo"
      ? [`${ROOT}local/${args[0]}.ts`, ...args.slice(1), "--port", "0"]
      : [`${ROOT}main.ts`, ...args]),
  ], { pattern: options.urlPattern, env: { NO_COLOR: "1", ...options.env } });
  const { child } = started;
  const url = started.match?.[1];
  let children: number[] = [];
  try {
    assert.ok(url, `it printed its URL:\n${started.stdout()}`);
    await check(url, started.stdout());
    children = await descendants(child.pid);
  } finally {
    child.kill(options.signal ?? "SIGINT");
  }
  return { ...await started.finish(), pid: child.pid, children };
}

/** Every process under `pid`, from `/proc` (Linux); empty where there is none. */
export async function descendants(pid: number): Promise<number[]> {
  const parents = new Map<number, number>();
  try {
    for await (const entry of Deno.readDir("/proc")) {
      if (!/^\d+$/.test(entry.name)) continue;
      const stat = await Deno.readTextFile(`/proc/${entry.name}/stat`).catch(() => undefined);
      if (stat) parents.set(Number(entry.name), parseProcStat(stat).ppid);
    }
  } catch {
    return [];
  }
  const found: number[] = [];
  const queue = [pid];
  while (queue.length > 0) {
    const parent = queue.shift()!;
    for (const [p, ppid] of parents) {
      if (ppid === parent) found.push(p), queue.push(p);
    }
  }
  return found;
}

/** The processes of `pids` still running (a zombie has ended). */
export async function stillRunning(pids: number[]): Promise<number[]> {
  return (await processes(pids)).filter((p) => !p.ended).map((p) => p.pid);
}

/** Whether something can listen on 127.0.0.1:`port` now. */
export function portIsFree(port: number): boolean {
  try {
    Deno.listen({ hostname: "127.0.0.1", port }).close();
    return true;
  } catch (error) {
    if (error instanceof Deno.errors.AddrInUse) return false;
    throw error;
  }
}
