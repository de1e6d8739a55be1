/**
 * Keeps the documentation from drifting: every relative link and `#anchor` in `README.md` and
 * `docs/*.md` resolves, and the settings table of `docs/configuration.md` names exactly the
 * settings `main.ts` reads (`VARIABLES`).
 *
 * Anchors follow GitHub's rules for heading ids (github-slugger, which github.com uses):
 * lowercase, punctuation dropped except `-` and `_`, each space a `-`, and a repeated heading
 * gets `-1`, `-2`, ...
 *
 * @module
 */

import assert from "node:assert/strict";
import { FOREIGN_VARIABLES, VARIABLES } from "../main.ts";

const ROOT = new URL("../", import.meta.url);

/** The heading under which `docs/configuration.md` keeps the table of every setting. */
const SETTINGS_HEADING = "## Settings";

/** The id GitHub gives a heading whose Markdown text is `text`. */
function githubSlug(text: string): string {
  const rendered = text
    .replace(/!?\[([^\]]*)\]\([^)]*\)/g, "$1") // a link shows its text
    .replace(/[`*]/g, ""); // code and emphasis marks are not part of the text
  return rendered.trim().toLowerCase()
    .replace(/[^\p{L}\p{M}\p{N}\p{Pc}\- ]/gu, "")
    .replace(/ /g, "-");
}

/** The lines of `markdown` outside fenced code blocks, where headings and links live. */
function proseLines(markdown: string): string[] {
  const lines: string[] = [];
  let fence: string | undefined;
  for (const line of markdown.split("\n")) {
    const marker = /^\s*(`{3,}|~{3,})/.exec(line)?.[1];
    if (fence === undefined && marker !== undefined) fence = marker;
    else if (fence !== undefined && marker?.startsWith(fence)) fence = undefined;
    else if (fence === undefined) lines.push(line);
  }
  return lines;
}

/** The ids of the headings in `markdown`, repeated headings numbered as GitHub numbers them. */
function headingIds(markdown: string): Set<string> {
  const ids = new Set<string>();
  const occurrences = new Map<string, number>();
  for (const line of proseLines(markdown)) {
    const text = /^#{1,6}\s+(.*?)(?:\s+#+)?\s*$/.exec(line)?.[1];
    if (text === undefined) continue;
    const base = githubSlug(text);
    let id = base;
    while (ids.has(id)) {
      const n = (occurrences.get(base) ?? 0) + 1;
      occurrences.set(base, n);
      id = `${base}-${n}`;
    }
    ids.add(id);
  }
  return ids;
}

/** The targets of the inline links and images in `markdown`, outside code. */
function linkTargets(markdown: string): string[] {
  const prose = proseLines(markdown).join("\n").replace(/(`+)[\s\S]*?\1/g, "code");
  const link = /!?\[(?:[^[\]]|\[[^\]]*\])*\]\(\s*<?([^\s)>]*)>?(?:\s+"[^"]*")?\s*\)/g;
  return [...prose.matchAll(link)].map((match) => match[1] ?? "");
}

/** A Markdown file by its path from the repository's root. */
type Documents = ReadonlyMap<string, string>;

/**
 * Every link in `documents` that does not resolve, as `file: target (why)`. Links with a scheme
 * (`https:`, `mailto:`) are not followed; the rest must name a file of the repository, and an
 * anchor must name a heading of a Markdown file.
 */
async function brokenLinks(
  documents: Documents,
  exists: (path: string) => Promise<boolean>,
): Promise<string[]> {
  const broken: string[] = [];
  for (const [file, markdown] of documents) {
    for (const target of linkTargets(markdown)) {
      if (/^[a-z][a-z0-9+.-]*:/i.test(target)) continue;
      const [path = "", anchor] = target.split("#", 2);
      const base = new URL(`file:///repo/${file}`);
      const resolved = decodeURIComponent(new URL(path || file.split("/").pop()!, base).pathname);
      const name = resolved.replace(/^\/repo\//, "");
      const problem = target === ""
        ? "empty"
        : !resolved.startsWith("/repo/")
        ? "outside the repository"
        : !documents.has(name) && !(await exists(name))
        ? "no such file"
        : anchor === undefined
        ? undefined
        : !documents.has(name)
        ? "an anchor into a file that is not Markdown"
        : !headingIds(documents.get(name)!).has(anchor)
        ? `no heading "#${anchor}" in ${name}`
        : undefined;
      if (problem !== undefined) broken.push(`${file}: ${target} (${problem})`);
    }
  }
  return broken;
}

/**
 * The setting names in the first column of the table under `heading`: each name in backticks,
 * several to a row allowed.
 */
function tableSettings(markdown: string, heading: string): string[] {
  const lines = markdown.split("\n");
  const start = lines.indexOf(heading);
  if (start === -1) return [];
  const rows: string[] = [];
  for (const line of lines.slice(start + 1)) {
    if (/^#{1,6}\s/.test(line)) break;
    if (line.startsWith("|")) rows.push(line);
    else if (rows.length > 0) break;
  }
  return rows.slice(2).flatMap((row) => {
    const cell = row.split("|")[1] ?? "";
    return [...cell.matchAll(/`([A-Z][A-Z0-9_]*)`/g)].map((match) => match[1]!);
  });
}

/** What the settings table gets wrong against `variables`: missing, unknown and repeated names. */
function settingsProblems(named: string[], variables: readonly string[]): string[] {
  const known = new Set(variables);
  const seen = new Set<string>();
  const problems: string[] = [];
  for (const name of named) {
    if (!known.has(name)) problems.push(`${name} is in the table but is not a setting`);
    else if (seen.has(name)) problems.push(`${name} is in the table twice`);
    seen.add(name);
  }
  for (const name of variables) {
    if (!seen.has(name)) problems.push(`${name} is a setting the table does not name`);
  }
  return problems;
}

/** `README.md` and every `docs/*.md`, by path from the repository's root. */
async function readDocuments(): Promise<Map<string, string>> {
  const documents = new Map([["README.md", await Deno.readTextFile(new URL("README.md", ROOT))]]);
  for await (const entry of Deno.readDir(new URL("docs/", ROOT))) {
    if (!entry.isFile || !entry.name.endsWith(".md")) continue;
    const path = `docs/${entry.name}`;
    documents.set(path, await Deno.readTextFile(new URL(path, ROOT)));
  }
  return documents;
}

async function existsInRepository(path: string): Promise<boolean> {
  return await Deno.stat(new URL(path, ROOT)).then(() => true, () => false);
}

Deno.test("every relative link and anchor in README.md and docs/ resolves", async () => {
  const documents = await readDocuments();
  assert.ok(documents.size > 1, "docs/ holds Markdown files");
  assert.deepEqual(await brokenLinks(documents, existsInRepository), []);
});

Deno.test("docs/configuration.md's settings table names exactly the settings in VARIABLES", async () => {
  const markdown = await Deno.readTextFile(new URL("docs/configuration.md", ROOT));
  const named = tableSettings(markdown, SETTINGS_HEADING);
  assert.ok(named.length > 0, `docs/configuration.md has a table under "${SETTINGS_HEADING}"`);
  assert.deepEqual(settingsProblems(named, Object.keys(VARIABLES)), []);
});

Deno.test("githubSlug() makes the ids GitHub gives headings", () => {
  assert.deepEqual(
    [
      "Keys: least privilege",
      "Routes, custom domains, workers.dev, verification",
      "`cron`: stay running",
      "What the worker answers in Workers Cache mode",
      "Built-ins in place of `@std`",
      "HLS and DASH",
      "snake_case and [a link](x.md) stay",
      "Ünïcode letters stay",
    ].map(githubSlug),
    [
      "keys-least-privilege",
      "routes-custom-domains-workersdev-verification",
      "cron-stay-running",
      "what-the-worker-answers-in-workers-cache-mode",
      "built-ins-in-place-of-std",
      "hls-and-dash",
      "snake_case-and-a-link-stay",
      "ünïcode-letters-stay",
    ],
  );
});

Deno.test("headingIds() numbers repeated headings and skips code blocks", () => {
  const markdown = "# A\n## Notes\n```sh\n# not a heading\n```\n### Notes\n## Notes\n## Notes 1\n";
  assert.deepEqual(
    [...headingIds(markdown)],
    ["a", "notes", "notes-1", "notes-2", "notes-1-1"],
  );
});

Deno.test("brokenLinks() reports each kind of link that does not resolve", async (t) => {
  const documents: Documents = new Map([
    ["README.md", "# Top\n## Quick start\nSee [it](docs/a.md#usage) and [top](#quick-start).\n"],
    [
      "docs/a.md",
      "# A\n## Usage\n[back](../README.md#top), [licence](../LICENSE), [web](https://x.test/y#z)\n",
    ],
  ]);
  const exists = (path: string) => Promise.resolve(path === "LICENSE");
  await t.step("all resolve", async () => {
    assert.deepEqual(await brokenLinks(documents, exists), []);
  });
  await t.step("each broken one is named with why", async () => {
    const broken: Documents = new Map([
      ...documents,
      [
        "docs/b.md",
        "# B\n[1](gone.md) [2](a.md#nowhere) [3](#b-1) [4](../LICENSE#x) [5](../../out.md) []()\n" +
        "`[in code](gone.md)`\n```md\n[in a block](gone.md)\n```\n",
      ],
    ]);
    assert.deepEqual(await brokenLinks(broken, exists), [
      "docs/b.md: gone.md (no such file)",
      'docs/b.md: a.md#nowhere (no heading "#nowhere" in docs/a.md)',
      'docs/b.md: #b-1 (no heading "#b-1" in docs/b.md)',
      "docs/b.md: ../LICENSE#x (an anchor into a file that is not Markdown)",
      "docs/b.md: ../../out.md (outside the repository)",
      "docs/b.md:  (empty)",
    ]);
  });
});

Deno.test("tableSettings() and settingsProblems() catch a table that drifted", () => {
  const markdown = [
    "# Configuration",
    "## Settings",
    "",
    "| variable | meaning |",
    "| -------- | ------- |",
    "| `B2_A`\\*, `B2_B`\\* | the key |",
    "| `B2_C` | see `NOT_A_NAME_COLUMN` |",
    "| `B2_GONE` | removed from the code |",
    "",
    "| `OTHER_TABLE` | ignored |",
    "## Next",
  ].join("\n");
  const named = tableSettings(markdown, "## Settings");
  assert.deepEqual(named, ["B2_A", "B2_B", "B2_C", "B2_GONE"]);
  assert.deepEqual(settingsProblems(named, ["B2_A", "B2_B", "B2_C", "B2_NEW"]), [
    "B2_GONE is in the table but is not a setting",
    "B2_NEW is a setting the table does not name",
  ]);
  assert.deepEqual(settingsProblems(["B2_A", "B2_A"], ["B2_A"]), ["B2_A is in the table twice"]);
  assert.deepEqual(tableSettings(markdown, "## Missing"), []);
});

Deno.test("docs/configuration.md names exactly the b2 CLI's and wrangler's names that are left alone", async () => {
  const markdown = await Deno.readTextFile(new URL("docs/configuration.md", ROOT));
  const paragraph = /\*\*Names shared with the b2 CLI and wrangler\.\*\*[\s\S]*?\n\n/.exec(markdown)
    ?.[0];
  assert.ok(paragraph, "configuration.md has the paragraph");
  const named = [...paragraph.matchAll(/`([A-Z][A-Z0-9_]+)`/g)].map((match) => match[1]!);
  const ours = named.filter((name) => Object.hasOwn(VARIABLES, name));
  const theirs = named.filter((name) => !Object.hasOwn(VARIABLES, name));
  assert.ok(ours.length > 0, "it names the settings we share");
  assert.deepEqual(theirs.sort(), [...FOREIGN_VARIABLES].sort());
});
