import assert from "node:assert/strict";
import { COMMANDS } from "../main.ts";
import { documents, markdownExamples, problemsOf, tasks } from "./examples.ts";

Deno.test("every shell example in README.md and docs/ names a real task or command, with its flags", async () => {
  const examples = [...(await documents())].flatMap(([file, text]) => markdownExamples(file, text));
  assert.ok(examples.length > 30, `${examples.length} examples found`);
  assert.deepEqual(problemsOf(examples, await tasks()), []);
});

Deno.test("every help page's example names a real command, with its flags", async () => {
  const examples = Object.entries(COMMANDS).map(([name, spec]) => ({
    where: `help ${name}`,
    line: spec.example as string,
  }));
  assert.deepEqual(problemsOf(examples, await tasks()), []);
  for (const { where, line } of examples) {
    assert.match(line, /^(deno (run|task) |echo ")/, `${where} is written as it is run`);
  }
});

Deno.test("markdownExamples() and exampleProblem() find what does not run as written", () => {
  const markdown = [
    "Run `deno task refresh --dry-run`, or `main.ts keygen` in prose.",
    "```sh",
    "deno task purge --prefx /img/   # a typo",
    'echo "K=$(main.ts keygen)" >> .env',
    "deno run --allow-env main.ts status \\",
    "  --min-remaining 3d",
    "deno task nosuch",
    "B2_KEY=x deno task sign <path> --expires 1h --url <url>",
    "curl -I https://example.com | grep -i cf-cache-status",
    "```",
    "```text",
    "main.ts not an example",
    "```",
  ].join("\n");
  const known = { refresh: "deno run main.ts refresh", purge: "deno run main.ts purge" };
  const all = { ...known, sign: "deno run main.ts sign" };
  const examples = markdownExamples("x.md", markdown);
  assert.deepEqual(examples.map((e) => e.where), [
    "x.md:1",
    "x.md:1",
    "x.md:3",
    "x.md:4",
    "x.md:6",
    "x.md:7",
    "x.md:8",
    "x.md:9",
  ]);
  assert.deepEqual(problemsOf(examples, all), [
    'x.md:1: "main.ts keygen" does not run as written: use deno task keygen or deno run ' +
    "<permissions> main.ts keygen",
    "x.md:3: main.ts purge --prefx /img/: Unknown flag --prefx: did you mean --prefix?",
    'x.md:4: "main.ts keygen" does not run as written: use deno task keygen or deno run ' +
    "<permissions> main.ts keygen",
    "x.md:7: deno task nosuch: deno.json has no such task",
  ]);
});
