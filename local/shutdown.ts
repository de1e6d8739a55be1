/**
 * When `demo` and `dev` must stop: Ctrl-C, SIGTERM, SIGHUP, or the launcher
 * that started them gone. `npx -y deno@2 task demo & kill $!` kills npm only:
 * npm does not pass SIGTERM on, and `deno task` and the demo under it would
 * keep workerd and the port. So the demo also watches the processes that
 * launched it (its parent, and above it `deno`, `sh`, `node`, `npm`, `npx`),
 * and stops as on SIGTERM once one of them is gone.
 *
 * ```ts
 * using stop = untilStopped();
 * await stop.stopped; // then close what was opened
 * ```
 *
 * @module
 */

import { listenForCtrlC } from "../main.ts";

/** Processes whose death means nobody waits for the demo any more. */
const LAUNCHER = /^(deno|node|npm|npx|sh|dash|bash|zsh|pnpm|yarn|bun)\b/;
/** How often the launchers are looked at. */
const WATCH_MS = 500;

/** What {@linkcode untilStopped} hands back. */
export interface StopSignal extends Disposable {
  /** Resolves with why, once it must stop. */
  stopped: Promise<string>;
  /** Whether it must stop already. */
  wasStopped(): boolean;
}

/**
 * Resolves `stopped` on Ctrl-C, SIGTERM, SIGHUP, or when a launcher above
 * this process has gone. Disposing it stops listening and watching.
 */
export function untilStopped(options: { watchMs?: number } = {}): StopSignal {
  const ctrlC = listenForCtrlC();
  const { promise, resolve } = Promise.withResolvers<string>();
  let why: string | undefined;
  let disposed = false;
  const stop = (reason: string) => {
    why ??= reason;
    resolve(why);
  };
  ctrlC.pressed.then(() => stop("a signal"));
  const hangUp = () => stop("SIGHUP");
  const unix = Deno.build.os !== "windows";
  if (unix) Deno.addSignalListener("SIGHUP", hangUp);
  let timer: ReturnType<typeof setInterval> | undefined;
  if (unix) {
    launchers().then((watched) => {
      if (why || disposed) return;
      let busy = false;
      timer = setInterval(async () => {
        if (busy) return;
        busy = true;
        const gone = await firstGone(watched).finally(() => busy = false);
        if (gone) stop(`its launcher (pid ${gone.pid}, ${gone.name}) is gone`);
      }, options.watchMs ?? WATCH_MS);
      Deno.unrefTimer(timer as unknown as number);
    }, () => {});
  }
  return {
    stopped: promise,
    wasStopped: () => why !== undefined,
    [Symbol.dispose]() {
      disposed = true;
      ctrlC[Symbol.dispose]();
      if (unix) Deno.removeSignalListener("SIGHUP", hangUp);
      clearInterval(timer);
    },
  };
}

/** One process as the system lists it. */
export interface ProcessInfo {
  pid: number;
  ppid: number;
  /** Its command name, as `ps -o comm` shows it. */
  name: string;
  /** Whether it has ended and waits to be reaped (a zombie counts as gone). */
  ended: boolean;
}

/** The parent, then each launcher above it, nearest first. */
async function launchers(): Promise<ProcessInfo[]> {
  const chain: ProcessInfo[] = [];
  let pid = Deno.ppid;
  while (pid > 1 && chain.length < 8) {
    const info = (await processes([pid]))[0];
    if (!info || (chain.length > 0 && !LAUNCHER.test(info.name))) break;
    chain.push(info);
    pid = info.ppid;
  }
  return chain;
}

async function firstGone(watched: ProcessInfo[]): Promise<ProcessInfo | undefined> {
  const now = await processes(watched.map((p) => p.pid));
  return watched.find((p) => {
    const seen = now.find((n) => n.pid === p.pid);
    // A pid taken by another process since is gone too.
    return !seen || seen.ended || seen.name !== p.name;
  });
}

/** Reads `/proc` where there is one (Linux), else asks `ps` (macOS, the BSDs). */
export async function processes(pids: number[]): Promise<ProcessInfo[]> {
  if (pids.length === 0) return [];
  if (await hasProc()) {
    const found = await Promise.all(pids.map(async (pid) => {
      try {
        return parseProcStat(await Deno.readTextFile(`/proc/${pid}/stat`));
      } catch (error) {
        if (error instanceof Deno.errors.NotFound) return undefined;
        throw error;
      }
    }));
    return found.filter((p) => p !== undefined);
  }
  const { stdout } = await new Deno.Command("ps", {
    args: ["-o", "pid=,ppid=,stat=,comm=", "-p", pids.join(",")],
    stdout: "piped",
    stderr: "null",
  }).output();
  return new TextDecoder().decode(stdout).split("\n").flatMap((line) => {
    const match = /^\s*(\d+)\s+(\d+)\s+(\S+)\s+(.+)$/.exec(line);
    if (!match) return [];
    const name = match[4]!.trim().split("/").pop()!;
    return [{ pid: +match[1]!, ppid: +match[2]!, ended: match[3]!.startsWith("Z"), name }];
  });
}

let procChecked: Promise<boolean> | undefined;
function hasProc(): Promise<boolean> {
  return procChecked ??= Deno.stat("/proc/self/stat").then(() => true, () => false);
}

/**
 * `/proc/<pid>/stat`: `pid (comm) state ppid ...`; the name may hold spaces
 * and parentheses, so it ends at the last `)` (proc(5), /proc/pid/stat:
 * https://man7.org/linux/man-pages/man5/proc_pid_stat.5.html).
 */
export function parseProcStat(stat: string): ProcessInfo {
  const open = stat.indexOf("(");
  const close = stat.lastIndexOf(")");
  const [state = "", ppid = "0"] = stat.slice(close + 2).split(" ");
  return {
    pid: Number(stat.slice(0, open).trim()),
    ppid: Number(ppid),
    name: stat.slice(open + 1, close),
    ended: state === "Z" || state === "X",
  };
}
