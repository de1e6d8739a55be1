/**
 * Section 4 of the bench: how fast the CLI starts, `main.ts --version` run
 * with `deno run` and as a `deno compile`d binary.
 *
 * @module
 */

import { lastLine, median, ms, ROOT, spawnMs, table } from "./measure.ts";

/** The production script, as crontab runs it. */
export const MAIN = new URL("main.ts", ROOT).pathname;
/** The permissions the production script's own commands run with. */
export const MAIN_PERMISSIONS = ["--allow-net", "--allow-env", "--allow-read"];

const STARTUP_RUNS = 5;
const COMPILE_TIMEOUT_MS = 180_000;

/** Section 4. */
export interface Startup {
  denoRunMs: number;
  compiledMs: number | null;
  /** Why the compiled binary was not measured. */
  compileError?: string;
}

async function medianRun(command: string, args: string[]): Promise<number> {
  const times: number[] = [];
  // One untimed run first: it fills Deno's caches.
  for (let i = 0; i <= STARTUP_RUNS; i++) {
    const { ms, output } = await spawnMs(command, args);
    if (!output.success) {
      throw new Error(`${command} ${args.join(" ")} failed: ${lastLine(output.stderr)}`);
    }
    if (i > 0) times.push(ms);
  }
  return median(times);
}

export async function benchDenoRun(): Promise<number> {
  return await medianRun(Deno.execPath(), ["run", ...MAIN_PERMISSIONS, MAIN, "--version"]);
}

export async function benchCompiled(): Promise<Pick<Startup, "compiledMs" | "compileError">> {
  const directory = await Deno.makeTempDir({ prefix: "b2cdn-bench-" });
  try {
    const binary = `${directory}/b2-private-cdn`;
    const compile = new Deno.Command(Deno.execPath(), {
      args: [
        "compile",
        ...MAIN_PERMISSIONS,
        "--include",
        "worker_template.ts",
        "--output",
        binary,
        "main.ts",
      ],
      cwd: ROOT.pathname,
      env: { NO_COLOR: "1" },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
      signal: AbortSignal.timeout(COMPILE_TIMEOUT_MS),
    });
    const output = await compile.output();
    if (!output.success) {
      // Its first cause names what went wrong (often: denort could not be downloaded).
      const lines = new TextDecoder().decode(output.stderr).split("\n").map((l) => l.trim());
      const cause = lines.find((line) => /^1: /.test(line))?.slice(3) ??
        lines.find((line) => /error/i.test(line));
      return { compiledMs: null, compileError: `deno compile failed: ${cause ?? "no message"}` };
    }
    return { compiledMs: await medianRun(binary, ["--version"]) };
  } catch (error) {
    return { compiledMs: null, compileError: `deno compile failed: ${(error as Error).message}` };
  } finally {
    await Deno.remove(directory, { recursive: true });
  }
}

/** Section 4 as `deno task bench` prints it. */
export function formatStartup(startup: Startup): string[] {
  return [
    `4. Start-up, \`main.ts --version\` (median of ${STARTUP_RUNS})`,
    table([
      ["how", "time"],
      ["deno run", ms(startup.denoRunMs)],
      ["compiled binary", startup.compiledMs === null ? "not measured" : ms(startup.compiledMs)],
    ]),
    ...(startup.compileError ? [`  ${startup.compileError}`] : []),
  ];
}
