/**
 * Every example runs as written: each shell example in `README.md`, `docs/*.md` and the help
 * pages names a real task or command, with flags that command accepts. The examples are parsed,
 * not run: a `deno task` must be one of deno.json's, and the arguments of every `main.ts`
 * command line (by `deno task`, `deno run`, `./main.ts` or the installed `b2-private-cdn`) must
 * pass `parseCommandLine()`. A bare `main.ts <command>`, which no shell runs, is refused.
 *
 * What counts as an example: each line of a fenced `sh`, `shell`, `bash` or `crontab` block
 * (continuations joined, comments dropped), and inline code in the prose that begins as a
 * command line does (`deno task ...`, `deno run ...`, `./main.ts ...`, `main.ts <command>`).
 * Placeholders are filled in: `<url>` with a URL, `<command>` with `refresh`, any other
 * `<...>` with a word.
 *
 * ```ts
 * import { documents, markdownExamples, problemsOf, tasks } from "./examples.ts";
 * const examples = [...(await documents())].flatMap(([file, text]) => markdownExamples(file, text));
 * console.log(problemsOf(examples, await tasks()));
 * ```
 *
 * @module
 */

import { COMMANDS, parseCommandLine } from "../main.ts";

const ROOT = new URL("../", import.meta.url);

/** The languages of fenced blocks that hold shell commands. */
const SHELL_FENCES = new Set(["sh", "shell", "bash", "crontab"]);

/** Where each example comes from, and its text. */
export interface Example {
  where: string;
  line: string;
  /**
   * Inline code that names a command and nothing more (`deno task purge`), as prose refers to
   * one: the task or command must exist; its arguments are its page's business.
   */
  reference?: true;
}

/** The shell examples of one Markdown file. */
export function markdownExamples(file: string, markdown: string): Example[] {
  const examples: Example[] = [];
  let fence: { marker: string; shell: boolean } | undefined;
  let pending = "";
  for (const [index, text] of markdown.split("\n").entries()) {
    const where = `${file}:${index + 1}`;
    const open = /^\s*(`{3,}|~{3,})\s*(\w*)/.exec(text);
    if (fence === undefined && open) {
      fence = { marker: open[1]!, shell: SHELL_FENCES.has(open[2]!) };
      continue;
    }
    if (fence !== undefined && text.trim().startsWith(fence.marker)) {
      fence = undefined;
      continue;
    }
    if (fence?.shell) {
      const line = pending + text.trim();
      if (line.endsWith("\\")) pending = line.slice(0, -1);
      else {
        pending = "";
        if (line !== "" && !line.startsWith("#")) examples.push({ where, line });
      }
      continue;
    }
    if (fence !== undefined) continue;
    for (const [, code] of text.matchAll(/`([^`]+)`/g)) {
      const command = `(${Object.keys(COMMANDS).join("|")})\\b`;
      const starts = new RegExp(
        `^(deno (task|run) |\\./main\\.ts |main\\.ts ${command}|b2-private-cdn ${command})`,
      );
      if (!starts.test(code!)) continue;
      const reference = /^(deno task|(\.\/)?main\.ts|b2-private-cdn) [\w-]+$/.test(code!);
      examples.push({ where, line: code!, ...(reference && { reference: true as const }) });
    }
  }
  return examples;
}

/** The words of a shell line, quotes removed, a trailing comment dropped. */
function words(line: string): string[] {
  const out: string[] = [];
  const pattern = /"((?:[^"\\]|\\.)*)"|'([^']*)'|(#.*$)|([^\s"']+)/g;
  let word: string | undefined;
  let last = -1;
  for (const match of line.matchAll(pattern)) {
    if (match[3] !== undefined) break;
    const part = match[1] ?? match[2] ?? match[4] ?? "";
    // Parts with no space between them are one word: --url="https://x" or a"b".
    if (word !== undefined && match.index === last) word += part;
    else {
      if (word !== undefined) out.push(word);
      word = part;
    }
    last = match.index! + match[0].length;
  }
  if (word !== undefined) out.push(word);
  return out;
}

/**
 * The simple commands of a shell line: split at `&&`, `||`, `;` and `|`, with `$(...)`
 * opened up, redirections and leading `NAME=value` assignments dropped.
 */
export function commandsOf(line: string): string[][] {
  const inner = [...line.matchAll(/\$\(([^)]*)\)/g)].map((match) => match[1]!);
  const outer = line.replace(/\$\([^)]*\)/g, "x");
  return [outer, ...inner]
    .flatMap((part) => part.split(/&&|\|\||;|\|/))
    .map((part) => {
      const argv = words(part).filter((word, i, all) =>
        !/^\d?>>?/.test(word) && !/^\d?>>?$/.test(all[i - 1] ?? "") && !/^\d>&\d$/.test(word)
      );
      while (argv.length > 0 && /^[A-Z_][A-Z0-9_]*=/.test(argv[0]!)) argv.shift();
      return argv;
    })
    .filter((argv) => argv.length > 0);
}

/** A placeholder's stand-in: a URL where a URL goes, `refresh` for a command, else a word. */
function filled(word: string, previous: string | undefined): string {
  if (!/<[^>]+>/.test(word)) return word;
  if (word === "<command>") return "refresh";
  if (/^<(url|origin)>$/.test(word) || /^--(url|verify|large-url)$/.test(previous ?? "")) {
    return word.replace(/^<[^>]+>/, "https://example.com").replace(/<[^>]+>/g, "x");
  }
  return word.replace(/<[^>]+>/g, "x");
}

/** What a `main.ts` command line gets wrong, or `undefined` when it parses. */
function commandLineProblem(args: string[]): string | undefined {
  const argv = args.map((word, i) => filled(word, args[i - 1]));
  try {
    parseCommandLine(argv);
    return undefined;
  } catch (error) {
    return `main.ts ${argv.join(" ")}: ${(error as Error).message}`;
  }
}

/** The tasks of deno.json, by name. */
export type Tasks = Readonly<Record<string, string>>;

/**
 * What one simple command gets wrong, or `undefined`: a task that does not exist, a bare
 * `main.ts`, or arguments the command refuses. Commands of other programs pass.
 */
export function exampleProblem(
  argv: readonly string[],
  options: { tasks: Tasks; reference?: boolean },
): string | undefined {
  const { tasks } = options;
  const check = (args: string[]) =>
    options.reference && args.length === 1 ? undefined : commandLineProblem(args);
  let [program, ...rest] = argv;
  if (program === "npx") {
    // npx -y deno@2 task ...: Deno from the npm registry.
    const at = rest.findIndex((word) => /^deno(@.*)?$/.test(word));
    if (at === -1) return undefined;
    program = "deno";
    rest = rest.slice(at + 1);
  }
  if (program === "main.ts") {
    return `"main.ts ${rest.join(" ")}" does not run as written: use deno task ${rest[0]} ` +
      `or deno run <permissions> main.ts ${rest[0]}`;
  }
  if (program === "b2-private-cdn" || program?.endsWith("/main.ts")) return check(rest);
  if (program !== "deno") return undefined;
  const [sub, ...after] = rest;
  if (sub === "task") {
    const [name, ...args] = after.filter((word) => word !== "-q");
    if (name === undefined) return undefined;
    const task = tasks[name];
    if (task === undefined) return `deno task ${name}: deno.json has no such task`;
    const command = /main\.ts (\S+)$/.exec(task)?.[1] ?? /local\/(\w+)\.ts$/.exec(task)?.[1];
    return command === undefined ? undefined : check([command, ...args]);
  }
  if (sub === "run") {
    const script = after.findIndex((word) => !word.startsWith("-"));
    const path = after[script] ?? "";
    if (!/(^|\/)main\.ts$|^jsr:@b2-private-cdn\/b2-private-cdn$/.test(path)) return undefined;
    return commandLineProblem(after.slice(script + 1));
  }
  return undefined;
}

/** `README.md` and `docs/*.md`, by path. */
export async function documents(): Promise<Map<string, string>> {
  const found = new Map([["README.md", await Deno.readTextFile(new URL("README.md", ROOT))]]);
  for await (const entry of Deno.readDir(new URL("docs/", ROOT))) {
    if (!entry.isFile || !entry.name.endsWith(".md")) continue;
    found.set(`docs/${entry.name}`, await Deno.readTextFile(new URL(`docs/${entry.name}`, ROOT)));
  }
  return found;
}

/** deno.json's tasks. */
export async function tasks(): Promise<Tasks> {
  return JSON.parse(await Deno.readTextFile(new URL("deno.json", ROOT))).tasks;
}

/** The problems of every example given, as `where: problem`. */
export function problemsOf(examples: Example[], tasks: Tasks): string[] {
  return examples.flatMap(({ where, line, reference }) =>
    commandsOf(line).flatMap((argv) => {
      const problem = exampleProblem(argv, { tasks, ...(reference && { reference }) });
      return problem === undefined ? [] : [`${where}: ${problem}`];
    })
  );
}
