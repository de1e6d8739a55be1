/**
 * The processes the bench measures: our worker deployed against the B2
 * stand-in and run in workerd, whose process is found by pid, pinned to a
 * core of its own, and read from /proc for its CPU time and memory; and every
 * child stopped on Ctrl-C.
 *
 * @module
 */

import { stripTypeScriptTypes } from "node:module";
import {
  deriveEventSecret,
  parseConfig,
  type Settings,
  type WorkerFacts,
  type WorkerUpload,
  workerUpload,
} from "../main.ts";
import {
  type FakeB2,
  type FakeB2Options,
  type FakeFile,
  type FakeNotificationRule,
  startFakeB2,
} from "../local/fake_b2.ts";
import { type LocalWorker, startLocalWorker } from "../local/workerd.ts";

// The sections reach the B2 stand-in through this file alone.
export type { FakeB2 };

export const SMALL_OBJECT = 1024;
// USER_HZ, which Linux fixes at 100 for what /proc reports.
const CLOCK_TICKS_PER_SECOND = 100;

// On a machine of few cores, workerd, the origin and the load generator fight for them and
// every figure swings by a fifth from one round to the next. With workerd alone on one core
// and the rest on the other, the worker is what limits the rate, which is what is measured.
const WORKERD_CPU = 1;
const OTHERS_CPU = 0;
let pinned = false;

// ---------------------------------------------------------------------------
// The worker and its origin
// ---------------------------------------------------------------------------

/** The bench's bucket: a name B2 allows (6 to 63 characters), as refresh now checks. */
export const BENCH_BUCKET = "bench-bucket";
/** Its id, as startBenchB2() makes it. */
export const BENCH_BUCKET_ID = "bucket-bench";

/** The bench's event secret, derived as refresh derives it from B2_APPLICATION_KEY. */
export function benchEventSecret(): ReturnType<typeof deriveEventSecret> {
  return deriveEventSecret("bench-application-key");
}

/**
 * Sets our event rule on the bench's bucket directly (the stand-in's set call refuses http://,
 * and this is 127.0.0.1), and returns it.
 */
export function setBenchEventRule(
  b2: FakeB2,
  origin: string,
  derived: { secret: string; urlKey?: string },
): FakeNotificationRule {
  const key = derived.urlKey ? `?key=${derived.urlKey}` : "";
  const rule: FakeNotificationRule = {
    name: "b2cdn-bench",
    eventTypes: ["b2:ObjectCreated:*", "b2:ObjectDeleted:*", "b2:HideMarkerCreated:*"],
    objectNamePrefix: "",
    isEnabled: true,
    maxEventsPerBatch: 50,
    targetConfiguration: {
      targetType: "webhook",
      url: `${origin}/.well-known/b2-private-cdn/events${key}`,
      hmacSha256SigningSecret: derived.secret,
    },
    isSuspended: false,
    suspensionReason: "",
  };
  b2.notificationRules.set(BENCH_BUCKET_ID, [rule]);
  return rule;
}

/** The B2 stand-in with the one bucket the bench deploys against, holding `files`. */
export function startBenchB2(
  files: FakeFile[],
  options: Omit<FakeB2Options, "buckets"> = {},
): FakeB2 {
  return startFakeB2({ buckets: [{ id: BENCH_BUCKET_ID, name: BENCH_BUCKET, files }], ...options });
}

/** The 1 KiB object of the load runs. */
export function smallObject(): Uint8Array<ArrayBuffer> {
  return new Uint8Array(SMALL_OBJECT).map((_, i) => i % 251);
}

/**
 * The pass-through worker (`pass_through_worker.ts`), run like `like` (same compatibility
 * date), its cache on or off, and with `segment` bytes, reading ranges as segments.
 */
export async function passThroughUpload(
  origin: string,
  like: WorkerUpload,
  cache: "on" | "off",
  segment?: number,
): Promise<WorkerUpload> {
  const source = await Deno.readTextFile(new URL("pass_through_worker.ts", import.meta.url));
  return {
    metadata: {
      ...like.metadata,
      bindings: [
        { type: "plain_text", name: "ORIGIN", text: origin },
        { type: "plain_text", name: "CACHE", text: cache },
        ...(segment
          ? [{ type: "plain_text" as const, name: "SEGMENT", text: String(segment) }]
          : []),
      ],
    },
    module: stripTypeScriptTypes(source, { mode: "transform" }),
  };
}

/** What an upload needs of a B2 stand-in: where it answers, and a download token. */
export type B2Address = Pick<FakeB2, "url" | "issueDownloadToken">;

/** The facts our worker is deployed with, pointing at `b2`, and `secrets` as refresh sets them. */
export function ourUpload(
  module: string,
  b2: B2Address,
  settings: Settings,
  secrets: Pick<WorkerFacts, "eventSecret"> = {},
): WorkerUpload {
  const now = Date.now();
  return workerUpload(module, {
    ...secrets,
    downloadToken: b2.issueDownloadToken(BENCH_BUCKET, "", 86_400),
    downloadUrl: b2.url,
    bucketName: BENCH_BUCKET,
    prefix: "",
    issuedAt: now,
    expiresAt: now + 86_400_000,
    // These figures are the Cache API path's (caches.default in workerd); Workers Cache sits in
    // front of the worker and needs its stand-in.
    options: parseConfig({ WORKER_CACHE_MODE: "cache-api", ...settings }).worker,
  });
}

/** A worker in workerd, with the pid of the workerd process that runs it when it can be found. */
export interface RunningWorker extends LocalWorker {
  pid: number | undefined;
}

/** Starts `upload` in workerd, pinned to its core while {@linkcode pinning} is in force. */
export async function startWorker(
  upload: WorkerUpload,
  options?: Parameters<typeof startLocalWorker>[1],
): Promise<RunningWorker> {
  const before = childPids();
  const worker = await startLocalWorker(upload, options);
  const pid = [...childPids()].find((p) => !before.has(p) && commandName(p).includes("workerd"));
  if (pid !== undefined && pinned) await pin(pid, WORKERD_CPU);
  return { ...worker, pid };
}

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

/** The pids of this process's children, from /proc; empty where there is no /proc. */
function childPids(): Set<number> {
  const pids = new Set<number>();
  let entries: Iterable<Deno.DirEntry>;
  try {
    entries = Deno.readDirSync("/proc");
  } catch {
    return pids;
  }
  for (const entry of entries) {
    if (!/^\d+$/.test(entry.name)) continue;
    const pid = Number(entry.name);
    // The parent's pid is field 4: the second after the command name.
    if (Number(statFields(pid)?.[1]) === Deno.pid) pids.add(pid);
  }
  return pids;
}

/**
 * The fields of `/proc/<pid>/stat` after the command name (which may itself
 * hold spaces and parentheses), so field N of proc(5) is at index N - 3;
 * undefined when the process is gone or there is no /proc.
 */
function statFields(pid: number): string[] | undefined {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  } catch {
    return undefined;
  }
}

function commandName(pid: number): string {
  try {
    return Deno.readTextFileSync(`/proc/${pid}/comm`).trim();
  } catch {
    return "";
  }
}

/** Moves every thread of `pid` to `cpus` with `taskset`; false when that cannot be done. */
async function pin(pid: number, cpus: number | string): Promise<boolean> {
  try {
    const { success } = await new Deno.Command("taskset", {
      args: ["--all-tasks", "--cpu-list", "--pid", String(cpus), String(pid)],
      stdout: "null",
      stderr: "null",
    }).output();
    return success;
  } catch {
    return false;
  }
}

/**
 * Pins this process (the origin) and what it spawns from now on, and the
 * workers started until it is disposed, unless there is only one core.
 */
export async function pinning(): Promise<AsyncDisposable & { placement: string }> {
  const cores = navigator.hardwareConcurrency;
  pinned = cores >= 2 && await pin(Deno.pid, OTHERS_CPU);
  return {
    placement: pinned
      ? `workerd on CPU ${WORKERD_CPU}, origin and load on CPU ${OTHERS_CPU}`
      : cores < 2
      ? "not pinned: one core"
      : "not pinned: taskset failed",
    async [Symbol.asyncDispose]() {
      if (pinned) await pin(Deno.pid, `0-${cores - 1}`);
      pinned = false;
    },
  };
}

/**
 * Ctrl-C still stops workerd and the load generator, which would otherwise
 * outlive us. Returns what removes the listeners.
 */
export function stopChildrenOnInterrupt(): () => void {
  const stop = () => {
    for (const pid of childPids()) {
      try {
        Deno.kill(pid, "SIGTERM");
      } catch {
        // Already gone.
      }
    }
    Deno.exit(130);
  };
  Deno.addSignalListener("SIGINT", stop);
  Deno.addSignalListener("SIGTERM", stop);
  return () => {
    Deno.removeSignalListener("SIGINT", stop);
    Deno.removeSignalListener("SIGTERM", stop);
  };
}

// ---------------------------------------------------------------------------
// CPU time and memory
// ---------------------------------------------------------------------------

/** VmRSS (or VmHWM, the peak since it was last reset) of a process, in bytes. */
export function memoryOf(pid: number, field: "VmRSS" | "VmHWM"): number | undefined {
  try {
    const status = Deno.readTextFileSync(`/proc/${pid}/status`);
    const kib = new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(status)?.[1];
    return kib === undefined ? undefined : Number(kib) * 1024;
  } catch {
    return undefined;
  }
}

/** Resets VmHWM (Linux: `5` to clear_refs), so it then holds the peak of what follows. */
export function resetPeak(pid: number): boolean {
  try {
    Deno.writeTextFileSync(`/proc/${pid}/clear_refs`, "5");
    return true;
  } catch {
    return false;
  }
}

/** CPU time (user + system, all threads) a process has used, in seconds. */
export function cpuSeconds(pid: number | undefined): number | undefined {
  const fields = pid === undefined ? undefined : statFields(pid);
  if (fields === undefined) return undefined;
  // utime and stime are fields 14 and 15.
  return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS_PER_SECOND;
}

/**
 * CPU time of every thread of a process, in seconds, from the nanoseconds
 * of `/proc/<pid>/task/<tid>/schedstat`; the ticks of {@linkcode cpuSeconds}
 * (10 ms) where that is missing. A difference of a few microseconds per
 * request over a few thousand requests is below a tick's resolution.
 */
export function preciseCpuSeconds(pid: number | undefined): number | undefined {
  if (pid === undefined) return undefined;
  try {
    let nanoseconds = 0;
    for (const task of Deno.readDirSync(`/proc/${pid}/task`)) {
      const stat = Deno.readTextFileSync(`/proc/${pid}/task/${task.name}/schedstat`);
      nanoseconds += Number(stat.split(" ")[0]);
    }
    return nanoseconds / 1e9;
  } catch {
    return cpuSeconds(pid);
  }
}
