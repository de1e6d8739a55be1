import assert from "node:assert/strict";
import { problemsOf, tasks } from "../testing/examples.ts";
import { childEnv } from "../testing/child_env.ts";
import {
  descendants,
  portIsFree,
  ROOT,
  type Served,
  startUntil,
  stillRunning,
  whileServing,
} from "../testing/serving.ts";

const READY = /runs in workerd \(Cloudflare's runtime\) at (http:\/\/127\.0\.0\.1:\d+)/;

/** What the stand-ins' tokens and the demo's fake key look like: never printed. */
const SECRET =
  /fake-(download|account)-[0-9a-f]{8}-|fake-application-key|fake-cf-token|fake-listing-key(?!-id)/;

/** Once it has ended: nothing it started still runs, and its port takes a new listener. */
async function assertGone(
  served: Pick<Served, "children"> & { stdout?: string; stderr?: string },
  url: string,
): Promise<void> {
  assert.doesNotMatch(`${served.stdout ?? ""}${served.stderr ?? ""}`, SECRET);
  assert.deepEqual(await stillRunning(served.children), [], "no process of it is left");
  assert.ok(portIsFree(Number(new URL(url).port)), `${url}: the port is free again`);
}

/** A demo started as a child process and read until it serves. */
interface Started {
  child: Deno.ChildProcess;
  url: string;
  /** Its processes (workerd among them) while it served. */
  children: number[];
  /** Reads its output to the end, once it is told to stop: stdout whole, and stderr. */
  rest(): Promise<{ stdout: string; stderr: string }>;
}

/** Starts `program args` as the user would, and waits until it prints where it serves. */
async function startDemo(
  program: string,
  args: string[],
  env: Record<string, string> = { NO_COLOR: "1" },
): Promise<Started> {
  const started = await startUntil(program, args, { pattern: READY, env });
  const url = started.match?.[1];
  if (!url) {
    const { stdout, stderr } = await started.finish();
    assert.fail(`it printed no URL:\n${stdout}${stderr}`);
  }
  return {
    child: started.child,
    url,
    children: await descendants(started.child.pid),
    rest: started.finish,
  };
}

Deno.test("demo runs the whole chain locally and stops cleanly on Ctrl-C", async () => {
  let origin = "";
  const served = await whileServing(["demo"], { urlPattern: READY }, async (url, stdout) => {
    origin = url;
    assert.match(stdout, /entirely on this machine/);
    assert.match(stdout, /B2: download token for "site\/"/);
    const video = await fetch(`${url}/video/sample.mp4`, { headers: { range: "bytes=0-99" } });
    assert.equal(video.status, 206);
    const sample = await Deno.readFile(`${ROOT}local/fixtures/video/sample.mp4`);
    assert.deepEqual(new Uint8Array(await video.arrayBuffer()), sample.slice(0, 100));
    const page = await fetch(`${url}/`);
    assert.match(await page.text(), /Served from a private bucket/);
    // Workers Cache, shown with the deployed version's own cache_options: filled, hit, purged.
    const statuses = [...stdout.matchAll(/^ {4}(.+)$/gm)].map((m) => m[1]);
    assert.deepEqual(statuses.slice(0, 5), [
      "cf-cache-status: MISS",
      "cf-cache-status: HIT",
      "purged 1 path in 1 signed request to the worker",
      "cf-cache-status: MISS",
      "cf-cache-status: HIT",
    ]);
    // An upload to B2: its Event Notification purges the object, with no purge typed.
    assert.deepEqual(statuses.slice(5, 8), [
      "B2 sent 1 signed notification; the worker answered 200",
      "cf-cache-status: MISS",
      "cf-cache-status: HIT",
    ]);
    assert.match(await (await fetch(`${url}/hello.txt`)).text(), /^Hello again/);
    // A folder without its index file lists, its hostile name as text and its dot-name hidden.
    assert.match(
      stdout,
      /^ {4}data\/ {2}<img src=x onerror=alert\(1\)>\.txt {2}archive\.bin {2}notes & ideas\.txt$/m,
    );
    const listing = await fetch(`${url}/files/`);
    assert.equal(listing.status, 200);
    const html = await listing.text();
    assert.match(html, /<a href="\/files\/data\/">data\/<\/a>/);
    assert.match(html, />&#60;img src=x onerror=alert\(1\)&#62;\.txt<\/a>/);
    assert.doesNotMatch(html, /hidden|<script/);
    // The tour's command lines are written as they are run in a clone.
    const tour = [...stdout.matchAll(/^ {2}\$ (.+)$/gm)].map((m, i) => ({
      where: `the tour's line ${i + 1}`,
      line: m[1]!,
    }));
    assert.ok(tour.some(({ line }) => line.startsWith("deno task purge ")), "a purge is shown");
    assert.deepEqual(problemsOf(tour, await tasks()), []);
  });
  assert.equal(served.code, 0, served.stderr);
  assert.match(served.stdout, /Stopped\.\n$/);
  if (Deno.build.os === "linux") assert.ok(served.children.length > 0, "workerd was seen");
  await assertGone(served, origin);
});

Deno.test("demo stops cleanly on Ctrl-C while workerd is starting", async () => {
  const { code, stdout } = await whileServing(["demo"], {
    urlPattern: /^(Deployed worker) /m,
  }, () => Promise.resolve());
  assert.equal(code, 0, stdout);
  assert.match(stdout, /Stopped\.\n$/);
});

Deno.test("demo stops on SIGTERM with workerd, leaving no process and the port free", async () => {
  let origin = "";
  const served = await whileServing(["demo"], { urlPattern: READY, signal: "SIGTERM" }, (url) => {
    origin = url;
    return Promise.resolve();
  });
  assert.equal(served.code, 0, served.stderr);
  assert.match(served.stdout, /Stopped\.\n$/);
  await assertGone(served, origin);
});

Deno.test({
  name: "demo stops with workerd when the launcher above it is killed (npx ... & kill $!)",
  // The launcher is watched through /proc or ps; Windows has neither.
  ignore: Deno.build.os === "windows",
  async fn() {
    // As `npx -y deno@2 task demo & kill $!`: the process killed is a launcher (npm there, sh
    // here) two levels up, which passes nothing on; `deno task` and the demo outlive it.
    const demo = await startDemo("sh", ["-c", '"$0" task demo --port 0; true', Deno.execPath()]);
    demo.child.kill("SIGKILL");
    await demo.child.status;
    // Its output ends once every process under it has closed it: deno task, the demo, workerd.
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error("still running after 15 s")), 15_000);
    });
    try {
      const { stdout } = await Promise.race([demo.rest(), timeout]);
      assert.match(stdout, /Stopped\.\n$/);
      await assertGone({ children: demo.children, stdout }, demo.url);
    } finally {
      clearTimeout(timer);
    }
  },
});

Deno.test("demo on a taken port exits 2 naming the port and --port, without a stack", async () => {
  using taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = taken.addr.port;
  const { code, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `--lock=${ROOT}deno.lock`, `${ROOT}local/demo.ts`, "--port", `${port}`],
    cwd: ROOT,
    env: childEnv({ NO_COLOR: "1" }),
    clearEnv: true,
    stdout: "null",
  }).output();
  const text = new TextDecoder().decode(stderr);
  assert.equal(code, 2, text);
  assert.equal(
    text,
    `error: Port ${port} is taken: another program (or a demo still running) listens on ` +
      `127.0.0.1:${port}. Stop it, or choose another port: deno task demo --port ${port + 1}.\n`,
  );
});

Deno.test("demo prints no escape codes when its output is not a terminal", async () => {
  // NO_COLOR is left unset here on purpose: a pipe alone must keep the output plain.
  const demo = await startDemo(Deno.execPath(), [
    "run",
    "-A",
    `--lock=${ROOT}deno.lock`,
    `${ROOT}local/demo.ts`,
    "--port",
    "0",
  ], {});
  demo.child.kill("SIGTERM");
  const { stdout, stderr: errors } = await demo.rest();
  assert.equal((await demo.child.status).code, 0, errors);
  assert.ok(!`${stdout}${errors}`.includes("\x1b["), `an escape code in:\n${stdout}${errors}`);
});

Deno.test({
  name: "deno task demo stops cleanly on a terminal's Ctrl-C, which reaches the whole group",
  // setsid gives the task a process group of its own, as a terminal gives its foreground job.
  ignore: Deno.build.os !== "linux",
  async fn() {
    const group = await startDemo("setsid", [Deno.execPath(), "task", "demo", "--port", "0"]);
    // Every process of the group gets SIGINT: deno task, the demo, workerd; and deno task
    // passes its own on, so the demo gets a second one while it stops. Sent twice here so the
    // second is sure to arrive then, whoever wins the race.
    Deno.kill(-group.child.pid, "SIGINT");
    Deno.kill(-group.child.pid, "SIGINT");
    const { stdout, stderr: errors } = await group.rest();
    assert.equal((await group.child.status).code, 0, errors);
    assert.match(stdout, /Stopped\.\n$/);
    await assertGone({ children: group.children, stdout, stderr: errors }, group.url);
  },
});
