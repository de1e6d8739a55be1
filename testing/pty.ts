/**
 * Runs a command in a real pseudo-terminal and talks to it as a person at a keyboard would:
 * util-linux `script` gives the child a terminal (so `Deno.stdin.isTerminal()` is true and raw
 * mode works), passes what is typed to it, and everything the terminal shows comes back as the
 * transcript, typed echoes included: the scrollback a person would see.
 *
 * ```ts
 * const session = startInTerminal([Deno.execPath(), "run", "-A", "main.ts", "init"], { cwd, env });
 * await session.answer("B2 application key id", "0012ab...");
 * const { code, transcript } = await session.finish();
 * ```
 *
 * @module
 */

/** A command running in a terminal. */
export interface TerminalSession {
  /** Waits until the terminal shows `text` after what earlier calls waited for. */
  expect(text: string | RegExp): Promise<void>;
  /** Types `line` and Enter (a carriage return, as a keyboard sends it). */
  type(line: string): Promise<void>;
  /** Waits for `prompt`, then types `reply`: one question and its answer. */
  answer(prompt: string | RegExp, reply: string): Promise<void>;
  /** Ends the input, waits for the command, and returns its exit code and the transcript. */
  finish(): Promise<{ code: number; transcript: string }>;
  /** Everything the terminal showed so far. */
  readonly transcript: string;
}

/** How long `expect()` waits before failing with the transcript. */
const EXPECT_MS = 30_000;

/** A word as `sh -c` reads it back. */
function shellWord(text: string): string {
  return `'${text.replaceAll("'", `'\\''`)}'`;
}

/** `script` running `command` in a new pseudo-terminal; `--return`: the command's exit code. */
function spawnScript(
  command: string[],
  options: { cwd: string; env: Record<string, string> },
): Deno.ChildProcess {
  return new Deno.Command("script", {
    args: [
      "--quiet",
      "--return",
      "--flush",
      "--command",
      command.map(shellWord).join(" "),
      "/dev/null",
    ],
    cwd: options.cwd,
    env: options.env,
    clearEnv: true,
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
}

/** Starts `command` in a new pseudo-terminal. */
export function startInTerminal(
  command: string[],
  options: { cwd: string; env: Record<string, string> },
): TerminalSession {
  let child: Deno.ChildProcess;
  try {
    child = spawnScript(command, options);
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
    throw new Error(
      "util-linux `script` runs the pseudo-terminal: apt-get install bsdutils (.ci/run does)",
    );
  }
  const writer = child.stdin.getWriter();
  let transcript = "";
  let seen = 0;
  const reading = (async () => {
    for await (const chunk of child.stdout.pipeThrough(new TextDecoderStream())) {
      transcript += chunk;
    }
  })();
  return {
    get transcript() {
      return transcript;
    },
    async expect(text) {
      const deadline = Date.now() + EXPECT_MS;
      for (;;) {
        const rest = transcript.slice(seen);
        const at = typeof text === "string" ? rest.indexOf(text) : rest.search(text);
        if (at >= 0) {
          seen += at + 1;
          // The prompt is out; give the program the moment it needs to start reading.
          await new Promise((resolve) => setTimeout(resolve, 150));
          return;
        }
        if (Date.now() > deadline) {
          throw new Error(`the terminal never showed ${text}; it shows:\n${transcript}`);
        }
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    },
    async type(line) {
      await writer.write(new TextEncoder().encode(`${line}\r`));
    },
    async answer(prompt, reply) {
      await this.expect(prompt);
      await this.type(reply);
    },
    async finish() {
      const status = await child.status;
      await writer.close().catch(() => {});
      await reading;
      await child.stderr.cancel();
      return { code: status.code, transcript };
    },
  };
}
