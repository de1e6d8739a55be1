/**
 * What the bench's sections share: the figures of one load run and their
 * medians across alternated rounds, the load generator (`wrk` or `load.ts`),
 * a timed child process, and the report's header, tables and targets as
 * `deno task bench` prints them.
 *
 * @module
 */

import type { LoadResult } from "./load.ts";

/** The repository: where the CLI runs and `deno.lock` lies. */
export const ROOT = new URL("../", import.meta.url);
export const MIB = 1024 * 1024;

// The machine has 2 cores and workerd runs a worker on one thread, so a handful of
// connections already keeps it busy; 16 leaves no idle gaps between requests.
export const CONNECTIONS = 16;
const WARM_UP_SECONDS = 1;
const SETTLE_MS = 250;

/** One load run's figures. */
export interface Throughput {
  requestsPerSecond: number;
  /** CPU time workerd spent per request (user + system), in microseconds; null without /proc. */
  workerdCpuUs: number | null;
  p50Ms: number;
  p99Ms: number;
  requests: number;
  errors: number;
  /** Requests the origin received during the run. */
  originRequests: number;
}

/** How the rounds of a section under load ran. */
export interface LoadRounds {
  loadGenerator: string;
  /** Which processes ran on which core. */
  placement: string;
  connections: number;
  rounds: number;
  roundSeconds: number;
}

/** One target of issues 5, 8 and 11, judged. */
export interface Target {
  name: string;
  met: boolean;
  /** What was measured against what is wanted, in words. */
  detail: string;
}

/** When and on what a report was measured: the first lines of every report. */
export interface MachineFacts {
  date: string;
  cores: number;
  deno: string;
  miniflare: string;
}

/** The targets judged and the time the run took: the last lines of every report. */
export interface Verdict {
  targets: Target[];
  seconds: number;
}

// ---------------------------------------------------------------------------
// Statistics
// ---------------------------------------------------------------------------

export function median(values: number[]): number {
  const sorted = values.toSorted((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1
    ? sorted[middle]!
    : ((sorted[middle - 1] ?? 0) + (sorted[middle] ?? 0)) / 2;
}

/** Medians of runs of one case; counts summed. */
export function summarizeRuns(runs: Throughput[]): Throughput {
  const sum = (pick: (t: Throughput) => number) => runs.reduce((n, t) => n + pick(t), 0);
  return {
    requestsPerSecond: median(runs.map((t) => t.requestsPerSecond)),
    p50Ms: median(runs.map((t) => t.p50Ms)),
    p99Ms: median(runs.map((t) => t.p99Ms)),
    workerdCpuUs: runs.every((t) => t.workerdCpuUs !== null)
      ? median(runs.map((t) => t.workerdCpuUs!))
      : null,
    requests: sum((t) => t.requests),
    errors: sum((t) => t.errors),
    originRequests: sum((t) => t.originRequests),
  };
}

/** {@linkcode summarizeRuns} of each case across rounds. */
export function summarizeCases<C extends string>(
  perRound: Record<C, Throughput>[],
  cases: readonly C[],
): Record<C, Throughput> {
  const summary: Partial<Record<C, Throughput>> = {};
  for (const name of cases) summary[name] = summarizeRuns(perRound.map((round) => round[name]));
  return summary as Record<C, Throughput>;
}

/**
 * Median across rounds of one case's requests per second over another's in
 * the same round: a ratio within a round, so drift between rounds cancels.
 */
export function medianRatio<C extends string>(
  perRound: Record<C, Throughput>[],
  cases: { of: C; to: C },
): number {
  return median(
    perRound.map((r) => r[cases.of].requestsPerSecond / r[cases.to].requestsPerSecond),
  );
}

/**
 * Measures each case once a round, the order rotated so that no case always
 * runs first or right after the same one: drift (JIT, CPU frequency,
 * neighbours) then hits each alike.
 */
export async function alternatedRounds<C extends string, T>(
  plan: { cases: readonly C[]; rounds: number },
  measure: (name: C) => Promise<T>,
): Promise<Record<C, T>[]> {
  const { cases, rounds } = plan;
  const perRound: Record<C, T>[] = [];
  for (let round = 0; round < rounds; round++) {
    const figures: Partial<Record<C, T>> = {};
    for (let i = 0; i < cases.length; i++) {
      const name = cases[(i + round) % cases.length]!;
      figures[name] = await measure(name);
    }
    perRound.push(figures as Record<C, T>);
  }
  return perRound;
}

// ---------------------------------------------------------------------------
// Load and processes
// ---------------------------------------------------------------------------

/** `wrk` when it is installed, else the Deno fetch loop of `load.ts`; or either by name. */
export type LoadChoice = "auto" | "wrk" | "fetch";

/** Runs `wrk` or the fetch loop against `url` for `seconds`. */
export type LoadGenerator = {
  name: string;
  run(url: string, seconds: number): Promise<LoadResult>;
};

async function wrkVersion(): Promise<string | undefined> {
  try {
    const { stdout, stderr } = await new Deno.Command("wrk", { args: ["-v"] }).output();
    const text = new TextDecoder().decode(stdout) + new TextDecoder().decode(stderr);
    return /wrk \S+/.exec(text)?.[0] ?? "wrk";
  } catch {
    return undefined;
  }
}

function parseLoadResult(output: Deno.CommandOutput, what: string): LoadResult {
  const line = lastLine(output.stdout);
  if (!output.success || !line.startsWith("{")) {
    throw new Error(`${what} failed: ${lastLine(output.stderr) || line}`);
  }
  return JSON.parse(line) as LoadResult;
}

export async function pickLoadGenerator(choice: LoadChoice): Promise<LoadGenerator> {
  const wrk = choice === "fetch" ? undefined : await wrkVersion();
  if (choice === "wrk" && wrk === undefined) {
    throw new Error("--load wrk: wrk is not installed (apt-get install wrk), or use --load fetch");
  }
  if (wrk !== undefined) {
    const script = new URL("wrk_report.lua", import.meta.url).pathname;
    return {
      name: `${wrk} (1 thread, ${CONNECTIONS} connections)`,
      run: async (url, seconds) => {
        const { output } = await spawnMs("wrk", [
          "-t1",
          `-c${CONNECTIONS}`,
          `-d${seconds}s`,
          "--timeout",
          "10s",
          "-s",
          script,
          url,
        ]);
        return parseLoadResult(output, "wrk");
      },
    };
  }
  const loader = new URL("load.ts", import.meta.url).pathname;
  return {
    name: `Deno fetch loop, bench/load.ts (${CONNECTIONS} connections${
      choice === "auto" ? "; wrk not installed" : ""
    })`,
    run: async (url, seconds) => {
      const { output } = await spawnMs(Deno.execPath(), [
        "run",
        "--allow-net",
        loader,
        url,
        "--connections",
        String(CONNECTIONS),
        "--seconds",
        String(seconds),
      ]);
      return parseLoadResult(output, "bench/load.ts");
    },
  };
}

/** One load run against one case, with the workerd CPU it cost on the clock given. */
async function measureRun(
  generator: LoadGenerator,
  target: {
    url: string;
    pid: number | undefined;
    origin: { requests: unknown[] };
    seconds: number;
    /** CPU seconds a process has used so far. */
    cpuSeconds: (pid: number | undefined) => number | undefined;
  },
): Promise<Throughput> {
  // Requests the last run left in flight reach the origin late: let them land first.
  await new Promise((resolve) => setTimeout(resolve, SETTLE_MS));
  target.origin.requests.length = 0;
  const cpuBefore = target.cpuSeconds(target.pid);
  const result = await generator.run(target.url, target.seconds);
  const cpu = (target.cpuSeconds(target.pid) ?? NaN) - (cpuBefore ?? NaN);
  return {
    requestsPerSecond: result.requests / (result.durationUs / 1e6),
    workerdCpuUs: Number.isNaN(cpu) ? null : cpu * 1e6 / result.requests,
    p50Ms: result.p50Us / 1000,
    p99Ms: result.p99Us / 1000,
    requests: result.requests,
    errors: result.errors,
    originRequests: target.origin.requests.length,
  };
}

/**
 * Warms each case up, then runs the load against each in alternated rounds
 * of `seconds`, with the workerd CPU each cost on the clock given.
 */
export async function loadRounds<C extends string>(
  generator: LoadGenerator,
  plan: {
    cases: readonly C[];
    rounds: number;
    seconds: number;
    targets: Record<C, { url: string; pid: number | undefined }>;
    origin: { requests: unknown[] };
    cpuSeconds: (pid: number | undefined) => number | undefined;
  },
): Promise<Record<C, Throughput>[]> {
  const { targets, origin, seconds, cpuSeconds } = plan;
  for (const { url } of Object.values<{ url: string }>(targets)) {
    await generator.run(url, WARM_UP_SECONDS);
  }
  const perRound = await alternatedRounds(
    plan,
    (name) => measureRun(generator, { ...targets[name], origin, seconds, cpuSeconds }),
  );
  origin.requests.length = 0;
  return perRound;
}

export async function fetchOk(url: string): Promise<void> {
  const response = await fetch(url);
  await response.arrayBuffer();
  if (!response.ok) throw new Error(`${url} answered ${response.status}`);
}

export async function spawnMs(
  command: string,
  args: string[],
  options: { env?: Record<string, string>; cwd?: string } = {},
): Promise<{ ms: number; output: Deno.CommandOutput }> {
  const started = performance.now();
  const output = await new Deno.Command(command, {
    args,
    cwd: options.cwd ?? ROOT.pathname,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    ...(options.env && { env: options.env, clearEnv: true }),
  }).output();
  return { ms: performance.now() - started, output };
}

export function lastLine(bytes: Uint8Array): string {
  return new TextDecoder().decode(bytes).trim().split("\n").at(-1) ?? "";
}

// ---------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------

/**
 * Runs `measure`, then adds when and on what it ran, the targets `judge`
 * finds, and the seconds it all took.
 */
export async function measureReport<T extends object>(
  measure: () => Promise<T>,
  judge: (measured: MachineFacts & T) => Target[],
): Promise<MachineFacts & T & Verdict> {
  const started = performance.now();
  const sections = await measure();
  const measured = { ...await machineFacts(), ...sections };
  return {
    ...measured,
    targets: judge(measured),
    seconds: (performance.now() - started) / 1000,
  };
}

async function machineFacts(): Promise<MachineFacts> {
  return {
    date: new Date().toISOString().replace(/\.\d+Z$/, "Z"),
    cores: navigator.hardwareConcurrency,
    deno: Deno.version.deno,
    miniflare: await miniflareVersion(),
  };
}

async function miniflareVersion(): Promise<string> {
  try {
    const lock = JSON.parse(await Deno.readTextFile(new URL("deno.lock", ROOT))) as {
      specifiers?: Record<string, string>;
    };
    return lock.specifiers?.["npm:miniflare@4"] ?? "4";
  } catch {
    return "4";
  }
}

/** A report as text: the machine, each section's lines, the targets, the time. */
export function formatSections(report: MachineFacts & Verdict, sections: string[][]): string {
  return [
    `b2-private-cdn bench, ${report.date}`,
    `machine: ${report.cores} cores, Deno ${report.deno}, workerd via miniflare ${report.miniflare}`,
    "",
    ...sections.flatMap((section) => [...section, ""]),
    "Targets",
    ...report.targets.map((t) => `  ${t.met ? "✓" : "✗"} ${t.name}: ${t.detail}`),
    "",
    `(${report.seconds.toFixed(0)} s)`,
  ].join("\n");
}

export function signed(value: number, digits: number): string {
  return (value >= 0 ? "+" : "") + value.toFixed(digits);
}

export function ms(value: number): string {
  return value >= 100 ? `${value.toFixed(0)} ms` : `${value.toFixed(1)} ms`;
}

/** Rows as columns: the first left-aligned, the rest right-aligned, indented by two. */
export function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, column) =>
    Math.max(...rows.map((row) => (row[column] ?? "").length))
  );
  return rows.map((row) =>
    "  " +
    row.map((cell, column) =>
      column === 0 ? cell.padEnd(widths[column]!) : cell.padStart(widths[column]!)
    ).join("   ")
  ).join("\n");
}

/** The header of a table of {@linkcode throughputRow}s. */
export const THROUGHPUT_COLUMNS = [
  "case",
  "req/s",
  "workerd CPU/req",
  "p50",
  "p99",
  "requests",
  "origin hits",
  "errors",
];

export function throughputRow(name: string, t: Throughput): string[] {
  return [
    name,
    Math.round(t.requestsPerSecond).toLocaleString("en-US"),
    t.workerdCpuUs === null ? "n/a" : `${Math.round(t.workerdCpuUs)} µs`,
    ms(t.p50Ms),
    ms(t.p99Ms),
    t.requests.toLocaleString("en-US"),
    t.originRequests.toLocaleString("en-US"),
    String(t.errors),
  ];
}

/**
 * mulberry32: a small seeded pseudo-random sequence in [0, 1), so that a workload is the same on
 * every run.
 */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
