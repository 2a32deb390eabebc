// The library in a real browser: Chromium (Debian's, driven by playwright-core) loads
// holdfast.mjs over HTTP as a page would and runs it on its own WebSocket, through network
// cuts, a holdfast draining behind a load balancer, and a sidecar rolling update. As in
// resume.test.mjs: every message exactly once and in order both ways, and no `close` in
// the page.

import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import http from "node:http";
import { test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";

import { assertRollingUpdate, assertThreeCuts, cleanups, holdfastBin, keyFile, startApp, startHoldfast, startRelay, tempDir, waitFor } from "./harness.mjs";

const CHROMIUM = process.env.TEST_CHROMIUM_BIN || "/usr/bin/chromium";
const LIBRARY = new URL("../holdfast.mjs", import.meta.url);
// CI sets it: a missing browser must fail there, not pass as a skip.
const REQUIRE_ALL = process.env.TEST_REQUIRE_ALL === "1";
// holdfast logs a line or two per connection event at info: the story a failure prints.
const LOG_LEVEL = process.env.TEST_HOLDFAST_LOG || "info";

/** playwright-core's exports, or null when it is not installed. */
async function loadPlaywright() {
  try {
    return await import("playwright-core");
  } catch (error) {
    if (error.code === "ERR_MODULE_NOT_FOUND") return null;
    throw error; // installed but broken: that is a failure, not a skip
  }
}

const playwright = await loadPlaywright();

/** What this machine lacks to run these tests, and how to get it ("" when nothing). */
function missingPieces() {
  const missing = [];
  if (!playwright) missing.push("playwright-core is not installed: run `npm install` in clients/js");
  if (!existsSync(CHROMIUM)) {
    missing.push(
      `no Chromium at ${CHROMIUM}: install it with \`apt-get update && apt-get install -y chromium\`, ` +
        "or set TEST_CHROMIUM_BIN to a Chromium or Chrome binary",
    );
  }
  return missing.join("; ");
}

const MISSING = missingPieces();

const range = (n, f) => Array.from({ length: n }, (_, i) => f(i));
const pushes = (seen) => seen.messages.filter((m) => m.startsWith("push-"));
const echoes = (seen) => seen.messages.filter((m) => !m.startsWith("push-"));
const url = (relay, path = "/feed") => `ws://127.0.0.1:${relay.port}${path}`;

// ---- the page ------------------------------------------------------------------------

// The application in the page: it imports the library as a site would and records what
// its HoldfastWebSocket fires in `window.app.seen`, for the test to read.
const PAGE = `<!doctype html>
<meta charset="utf-8">
<title>holdfast in a browser</title>
<link rel="icon" href="data:,">
<script type="module">
import { HoldfastWebSocket } from "/holdfast.mjs";

const seen = { opens: 0, closes: [], errors: 0, resuming: [], resumed: [], messages: [], sent: 0 };
let socket = null;

function state() {
  const { readyState, resumable, protocol, session, binaryType, bufferedAmount, extensions } = socket;
  return { readyState, resumable, protocol, session, binaryType, bufferedAmount, extensions };
}

function open(url, protocols) {
  socket = new HoldfastWebSocket(url, protocols);
  socket.addEventListener("open", () => seen.opens++);
  socket.addEventListener("close", (e) => seen.closes.push({ code: e.code, reason: e.reason, wasClean: e.wasClean }));
  socket.addEventListener("error", () => seen.errors++);
  socket.addEventListener("resuming", (e) => seen.resuming.push(e.detail));
  socket.addEventListener("resumed", (e) => seen.resumed.push(e.detail));
  // Every flow here is text: anything else shows up as its type, and fails the test.
  socket.addEventListener("message", (e) => seen.messages.push(typeof e.data === "string" ? e.data : String(e.data)));
  return new Promise((ok, fail) => {
    socket.addEventListener("open", () => ok(state()), { once: true });
    socket.addEventListener("close", (e) => fail(new Error("closed before open: " + e.code + " " + e.reason)), { once: true });
  });
}

/** Sends c-0 … c-(count-1), one every \`every\` ms on the page's own timer; seen.sent counts them. */
function stream(count, every) {
  const timer = setInterval(() => {
    socket.send("c-" + seen.sent++);
    if (seen.sent === count) clearInterval(timer);
  }, every);
}

function close(code, reason) {
  return new Promise((ok) => {
    socket.addEventListener("close", (e) => ok({ code: e.code, reason: e.reason, wasClean: e.wasClean }), { once: true });
    socket.close(code, reason);
  });
}

window.app = { seen, open, send: (text) => socket.send(text), stream, state, close };
</script>
`;

/** A loopback HTTP server for the page and the library, as a site serves them. */
async function serveSite() {
  const library = readFileSync(LIBRARY);
  const server = http.createServer((req, res) => {
    const path = new URL(req.url, "http://127.0.0.1").pathname;
    if (path === "/") {
      res.writeHead(200, { "content-type": "text/html; charset=utf-8" }).end(PAGE);
    } else if (path === "/holdfast.mjs") {
      res.writeHead(200, { "content-type": "text/javascript; charset=utf-8" }).end(library);
    } else {
      res.writeHead(404).end();
    }
  });
  await new Promise((ok) => server.listen(0, "127.0.0.1", ok));
  return {
    port: server.address().port,
    url: `http://127.0.0.1:${server.address().port}/`,
    async stop() {
      server.closeAllConnections();
      await new Promise((ok) => server.close(ok));
    },
  };
}

/** Resolves within `ms` or rejects saying what it was for. */
function bounded(what, promise, ms) {
  let timer;
  const late = new Promise((_, fail) => {
    timer = setTimeout(() => fail(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

/** Headless Chromium, closed by `clean`: a new page in it, with its console kept in `diag`. */
async function launchPage(clean, diag, extraArgs = []) {
  const browser = await playwright.chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    timeout: 15_000,
    args: [
      // Run as root (CI, containers), Chromium refuses to start with its sandbox.
      "--no-sandbox",
      // The page talks to 127.0.0.1 only: no proxy from the environment, and no name
      // resolves, so no background service of the browser reaches out either (the rule
      // would catch the loopback address too without its EXCLUDE).
      "--no-proxy-server",
      "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
      ...extraArgs,
    ],
  });
  clean.add(() => bounded("closing Chromium", browser.close(), 5_000));
  const page = await browser.newPage();
  page.setDefaultTimeout(10_000);
  page.on("console", (m) => diag.console.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => diag.console.push(`pageerror: ${e.message}`));
  diag.page = page;
  return page;
}

/**
 * Headless Chromium on the site's page, its module loaded; `diag` collects the page's
 * console. Everything it starts is stopped by `clean`.
 */
async function openPage(clean, diag) {
  const site = await serveSite();
  clean.add(() => site.stop());
  const page = await launchPage(clean, diag);
  await page.goto(site.url);
  await page.waitForFunction(() => window.app !== undefined, null, { timeout: 10_000 });
  return page;
}

/** The page's record of its socket's events, as a plain object. */
const seenBy = (page) => page.evaluate(() => window.app.seen);

/**
 * Waits until `check(seen, arg)` holds in the page (polled there, so `check` sees nothing
 * of this module: `arg` is its input); names `what` on timeout.
 */
async function pageWaitFor(page, what, check, { arg = null, ms = 10_000 } = {}) {
  try {
    await page.waitForFunction(`(${check})(window.app.seen, ${JSON.stringify(arg)})`, null, { polling: 10, timeout: ms });
  } catch (error) {
    throw new Error(`timed out after ${ms} ms waiting in the page for ${what} (${error.message.split("\n")[0]})`);
  }
}

// ---- the test wrapper ------------------------------------------------------------------

/** Prints what the page saw, what the upstreams got and holdfast logged: the story of a failure. */
async function explainFailure(name, diag) {
  const lines = [`---- ${name}: what the page saw, what the upstreams got, holdfast's log ----`];
  if (diag.page && !diag.page.isClosed()) {
    const view = await bounded("reading the page", seenBy(diag.page), 2_000).catch((e) => `unreadable: ${e.message}`);
    lines.push(`page: ${JSON.stringify(view)}`);
  }
  lines.push(...diag.console.map((line) => `page console ${line}`));
  for (const [label, app] of diag.apps) {
    const handshakes = app.handshakes.map((h) => `${h.url} session=${h.headers["x-holdfast-session"]} resume=${h.headers["x-holdfast-resume"]}`);
    lines.push(`${label}: handshakes ${JSON.stringify(handshakes)}, received ${JSON.stringify(app.messages.map((m) => m.data))}`);
  }
  for (const [label, holdfast] of diag.holdfasts) {
    const log = holdfast.log.trim();
    lines.push(`${label} log:${log ? `\n${log}` : " (empty)"}`);
  }
  console.error(lines.join("\n"));
}

/**
 * A test in Chromium: skipped (saying what is missing and how to get it) when the browser
 * or playwright-core is not there, failed instead under TEST_REQUIRE_ALL=1. The body gets
 * `clean` (cleanups, run at the end whatever happens) and `diag` (where it registers its
 * upstream apps and holdfasts as [label, handle] in `diag.apps` and `diag.holdfasts`), and
 * explains itself when it fails.
 */
function browserTest(name, body, open = openPage) {
  const skip = MISSING && !REQUIRE_ALL ? `${MISSING} (TEST_REQUIRE_ALL=1 makes this a failure)` : false;
  test(name, { timeout: 30_000, skip }, async () => {
    if (MISSING) throw new Error(`TEST_REQUIRE_ALL=1 and ${MISSING}`);
    const clean = cleanups();
    const diag = { page: null, console: [], apps: [], holdfasts: [] };
    try {
      await body({ clean, diag, page: await open(clean, diag) });
    } catch (error) {
      await explainFailure(name, diag);
      throw error;
    } finally {
      await clean.run();
    }
  });
}

// ---- the flows ---------------------------------------------------------------------------

browserTest("Chromium: three network cuts while both sides stream — every message once, in order, no close", async ({ clean, diag, page }) => {
  const app = await startApp();
  clean.add(() => app.stop());
  diag.apps.push(["app", app]);
  const holdfast = await startHoldfast({ upstreams: [app.port], key: keyFile(), logLevel: LOG_LEVEL });
  clean.add(() => holdfast.stop("SIGKILL"));
  diag.holdfasts.push(["holdfast", holdfast]);
  const relay = await startRelay(holdfast.port);
  clean.add(() => relay.stop());

  const opened = await page.evaluate(([u, p]) => window.app.open(u, p), [url(relay), ["chat"]]);
  assert.equal(opened.readyState, 1, "OPEN");
  assert.equal(opened.resumable, true);
  assert.equal(opened.protocol, "chat", "the application's subprotocol, from the hello");
  assert.match(opened.session, /^[0-9a-f]{16}$/);
  assert.equal(opened.binaryType, "blob", "the browser's own WebSocket (a WHATWG default)");

  await page.evaluate(() => {
    window.app.send("push 100 20");
    window.app.stream(100, 20);
  });
  for (const [cut, at] of [25, 50, 75].entries()) {
    // Each cut once the page has sent `at` messages and is attached again after the last
    // cut: a cut while it is still resuming would reset nothing.
    await pageWaitFor(page, `${at} sent and ${cut} resumes`, (s, [sent, resumes]) => s.sent >= sent && s.resumed.length === resumes, {
      arg: [at, cut],
    });
    assert.equal(relay.cut(), 1, `cut ${cut + 1}: one live connection reset`);
  }
  await pageWaitFor(page, "every push and echo", (s) => s.messages.length >= 200, { ms: 15_000 });
  await sleep(250); // a duplicate would arrive by now

  const seen = await seenBy(page);
  assertThreeCuts(seen, app, (await page.evaluate(() => window.app.state())).bufferedAmount);

  const closed = await page.evaluate(() => window.app.close(1000, "done"));
  assert.deepEqual(closed, { code: 1000, reason: "done", wasClean: true });
});

browserTest("Chromium: permessage-deflate through holdfast — the browser's own WebSocket and the library's", async ({ clean, diag, page }) => {
  const app = await startApp();
  clean.add(() => app.stop());
  diag.apps.push(["app", app]);
  const holdfast = await startHoldfast({ upstreams: [app.port], key: keyFile(), logLevel: LOG_LEVEL });
  clean.add(() => holdfast.stop("SIGKILL"));
  diag.holdfasts.push(["holdfast", holdfast]);
  const where = `ws://127.0.0.1:${holdfast.port}/feed`;

  // The page's own WebSocket: 50 JSON messages of a few hundred bytes, echoed.
  const plain = await bounded(
    "the browser's WebSocket",
    page.evaluate(async (u) => {
      const ws = new WebSocket(u);
      await new Promise((ok, fail) => {
        ws.onopen = ok;
        ws.onerror = () => fail(new Error("WebSocket error"));
      });
      const got = [];
      ws.onmessage = (e) => got.push(e.data);
      const sent = Array.from({ length: 50 }, (_, i) =>
        JSON.stringify({ type: "tick", seq: i, symbol: "ABC", price: 100 + i / 4, exchange: "NASDAQ", meta: { source: "feed-1", flags: ["live", "regular"] } }),
      );
      for (const m of sent) ws.send(m);
      while (got.length < sent.length) await new Promise((r) => setTimeout(r, 10));
      ws.close(1000);
      return { extensions: ws.extensions, sent, got };
    }, where),
    10_000,
  );
  assert.match(plain.extensions, /^permessage-deflate/, "Chromium negotiated permessage-deflate with holdfast");
  assert.deepEqual(plain.got, plain.sent.map((m) => `v1:-:${m}`), "every echo once, in order");
  const labels = '{direction="to_upstream",hop="client"}';
  const compressed = await holdfast.metric(`holdfast_compressed_bytes_total${labels}`);
  const uncompressed = await holdfast.metric(`holdfast_uncompressed_bytes_total${labels}`);
  assert.ok(compressed > 0 && compressed < uncompressed / 2, `Chromium's messages: ${compressed} of ${uncompressed} bytes on the wire`);

  // The library on the same browser: its connection negotiates the same, under the envelope.
  const opened = await page.evaluate((u) => window.app.open(u), where);
  assert.match(opened.extensions, /^permessage-deflate/, "the library reports its connection's extensions");
  await page.evaluate(() => window.app.stream(20, 5));
  await pageWaitFor(page, "20 echoes", (s) => s.messages.length >= 20);
  const seen = await seenBy(page);
  assert.deepEqual(seen.messages, range(20, (i) => `v1:-:c-${i}`));
  const closed = await page.evaluate(() => window.app.close(1000, "done"));
  assert.equal(closed.code, 1000);
});

browserTest("Chromium: a holdfast drains behind a load balancer — the session moves to the other one, no close", async ({ clean, diag, page }) => {
  const app = await startApp();
  clean.add(() => app.stop());
  diag.apps.push(["app", app]);
  const key = keyFile();
  // replay_first = 1: the first message (auth) is replayed to the new upstream connection.
  const extra = "[restart]\nreplay_first = 1\n";
  const first = await startHoldfast({ upstreams: [app.port], key, extra, logLevel: LOG_LEVEL });
  clean.add(() => first.stop("SIGKILL"));
  diag.holdfasts.push(["first holdfast", first]);
  const second = await startHoldfast({ upstreams: [app.port], key, extra, logLevel: LOG_LEVEL });
  clean.add(() => second.stop("SIGKILL"));
  diag.holdfasts.push(["second holdfast", second]);
  const balancer = await startRelay(first.port);
  clean.add(() => balancer.stop());

  const opened = await page.evaluate(([u, p]) => window.app.open(u, p), [url(balancer), ["chat"]]);
  assert.equal(opened.resumable, true);
  await page.evaluate(() => {
    window.app.send("auth alice");
    window.app.send("push 100 20");
    window.app.stream(100, 20);
  });
  await pageWaitFor(page, "40 sent", (s) => s.sent >= 40);
  // The rollout: new connections go to the second; the first drains.
  balancer.pointAt(second.port);
  const drained = first.stop("SIGTERM");
  await pageWaitFor(page, "every push and echo", (s) => s.messages.length >= 200, { ms: 15_000 });
  await sleep(250);

  const seen = await seenBy(page);
  const session = (await page.evaluate(() => window.app.state())).session;
  assert.deepEqual(pushes(seen), range(100, (i) => `push-${i}`), "upstream → page: once, in order");
  assert.deepEqual(echoes(seen), range(100, (i) => `v1:alice:c-${i}`), "echoes once, in order; auth replayed");
  assert.deepEqual(app.texts(), range(100, (i) => `c-${i}`), "page → upstream: once, in order");
  assert.equal(app.handshakes.length, 2, "one new handshake for the move");
  const [old, moved] = app.handshakes;
  assert.equal(moved.headers["x-holdfast-session"], old.headers["x-holdfast-session"]);
  assert.equal(moved.headers["x-holdfast-session"], session);
  assert.equal(moved.headers["x-holdfast-resume"], "1");
  assert.equal(moved.url, "/feed");
  assert.equal(app.messages.find((m) => m.conn === 1).data, "auth alice", "the opening message replayed first");
  assert.deepEqual(seen.resuming.map((r) => [r.code, r.moving]), [[1012, true]]);
  assert.deepEqual(seen.resumed.map((r) => r.state), ["moved"]);
  assert.equal(seen.resumed[0].replayed, 1);
  assert.deepEqual(seen.closes, [], "no close across the move");
  assert.equal(seen.errors, 0);
  assert.equal(await bounded("the first holdfast's exit", drained, 5_000), 0, "the first holdfast drained and exited 0");
  assert.equal(await second.metric('holdfast_client_resumes_total{outcome="moved"}'), 1);

  const closed = await page.evaluate(() => window.app.close(1000, "done"));
  assert.equal(closed.code, 1000);
});

browserTest("Chromium: a sidecar rolling update — holdfast and app replaced together, the session continues on v2", async ({ clean, diag, page }) => {
  const key = keyFile();
  const extra = "[restart]\nreplay_first = 1\n";
  // Pod A: holdfast A in front of app A (v1). Pod B: holdfast B in front of app B (v2).
  const appA = await startApp({ version: "v1" });
  clean.add(() => appA.stop());
  const appB = await startApp({ version: "v2" });
  clean.add(() => appB.stop());
  diag.apps.push(["app A (v1)", appA], ["app B (v2)", appB]);
  const holdfastA = await startHoldfast({ upstreams: [appA.port], key, extra, logLevel: LOG_LEVEL });
  clean.add(() => holdfastA.stop("SIGKILL"));
  diag.holdfasts.push(["holdfast A", holdfastA]);
  const holdfastB = await startHoldfast({ upstreams: [appB.port], key, extra, logLevel: LOG_LEVEL });
  clean.add(() => holdfastB.stop("SIGKILL"));
  diag.holdfasts.push(["holdfast B", holdfastB]);
  const balancer = await startRelay(holdfastA.port);
  clean.add(() => balancer.stop());

  await page.evaluate(([u, p]) => window.app.open(u, p), [url(balancer, "/chat?room=7"), ["chat"]]);
  await page.evaluate(() => {
    window.app.send("auth alice");
    window.app.stream(60, 20);
  });
  await pageWaitFor(page, "30 sent", (s) => s.sent >= 30);
  // Kubernetes: pod B is ready, the Service sends new connections to it, pod A gets
  // SIGTERM: its holdfast drains (moves the page's session), then its app stops.
  balancer.pointAt(holdfastB.port);
  const podAGone = holdfastA.stop("SIGTERM").then(async (code) => {
    await appA.stop();
    return code;
  });
  await pageWaitFor(page, "60 sent", (s) => s.sent >= 60);
  assert.equal(await bounded("pod A's end", podAGone, 10_000), 0, "holdfast A drained and exited 0");
  await page.evaluate(() => window.app.send("version"));
  await pageWaitFor(page, "every echo", (s) => s.messages.length >= 61, { ms: 10_000 });
  await sleep(250);

  const seen = await seenBy(page);
  assertRollingUpdate(seen.messages, appA, appB);
  assert.deepEqual(seen.resumed.map((r) => r.state), ["moved"]);
  assert.deepEqual(seen.closes, [], "no close across the rolling update");
  assert.equal(seen.errors, 0);
});

// ---- the demo page ---------------------------------------------------------------------

/** `holdfast demo --serve` on a free loopback port: its page's URL, and the process. */
async function startDemo(clean) {
  const demo = spawn(holdfastBin(), ["demo", "--serve", "--listen", "127.0.0.1:0"], {
    stdio: ["ignore", "pipe", "ignore"],
    // holdfast reads HOLDFAST_<SECTION>__<KEY> as configuration: none of the caller's.
    env: Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("HOLDFAST_"))),
  });
  const exited = new Promise((ok) => demo.on("exit", (code, signal) => ok({ code, signal })));
  clean.add(async () => {
    demo.kill("SIGKILL");
    await exited;
  });
  let out = "";
  const page = await bounded(
    "the demo's page line",
    new Promise((ok, fail) => {
      demo.stdout.on("data", (chunk) => {
        out += chunk;
        const found = /page\s+(http:\/\/127\.0\.0\.1:\d+\/)/.exec(out);
        if (found) ok(found[1]);
      });
      demo.on("exit", () => fail(new Error(`the demo exited: ${out}`)));
    }),
    10_000,
  );
  return { page, demo, exited, output: () => out };
}

/** The demo page's counters, by their element ids. */
const counters = (page) =>
  page.evaluate(() =>
    Object.fromEntries(
      ["sent", "received", "lost", "dup", "resumes"].map((id) => [id, Number(document.getElementById(id).textContent)]),
    ),
  );

browserTest(
  "Chromium: the demo page's buttons break things and its counters show nothing lost",
  async ({ clean, diag, page }) => {
    const demo = await startDemo(clean);
    diag.holdfasts.push(["holdfast demo --serve", { get log() { return demo.output(); } }]);
    await page.goto(demo.page);
    await page.waitForFunction(() => document.getElementById("state").textContent.startsWith("open — resumable"));
    const resumesReach = (n) =>
      page.waitForFunction((n) => Number(document.getElementById("resumes").textContent) >= n, n, { timeout: 10_000 });
    const echoFrom = (text) =>
      page.waitForFunction((t) => [...document.querySelectorAll("#feed li")].some((li) => li.textContent.includes(t)), text, {
        timeout: 10_000,
      });

    await echoFrom("← instance 1: message #2");
    await page.click("text=Cut my connection");
    await resumesReach(1);
    await page.click("text=Restart holdfast");
    await resumesReach(2);
    await page.click("text=Restart the app (1012)");
    await echoFrom("← instance 2: message #");
    // Stop sending, then let the last echoes arrive.
    await page.uncheck("#auto");
    await page.waitForFunction(() => {
      const n = (id) => Number(document.getElementById(id).textContent);
      return n("sent") === n("received");
    });
    const seen = await counters(page);
    assert.equal(seen.lost, 0, "nothing lost");
    assert.equal(seen.dup, 0, "nothing duplicated or out of order");
    assert.ok(seen.sent >= 4, `numbered messages flowed: ${JSON.stringify(seen)}`);
    assert.equal(seen.resumes, 2, "one re-attach after the cut, one move to the next holdfast");
    assert.ok(!(await page.textContent("#state")).startsWith("closed"));
    demo.demo.kill("SIGINT");
    assert.deepEqual(await bounded("the demo's exit", demo.exited, 40_000), { code: 0, signal: null });
  },
  launchPage,
);

// ---- HTTP/2 ----------------------------------------------------------------------------

/** A self-signed certificate for 127.0.0.1 (openssl), as [cert, key] paths. */
function selfSigned() {
  const dir = tempDir();
  const [cert, key] = [join(dir, "cert.pem"), join(dir, "key.pem")];
  execFileSync("openssl", [
    "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", cert,
  ], { stdio: "ignore" });
  return [cert, key];
}

browserTest(
  "Chromium over HTTP/2: the page and its resumable WebSocket share one h2 connection, routed to two apps, held across a restart",
  async ({ clean, diag, page }) => {
    // A gateway in front of two apps: the site (plain HTTP, the default route) and the
    // WebSocket app (route `app`, /ws). TLS, so Chromium speaks HTTP/2 to holdfast.
    const site = await serveSite();
    clean.add(() => site.stop());
    const app = await startApp();
    clean.add(() => app.stop());
    diag.apps.push(["app", app]);
    const [cert, key] = selfSigned();
    const extra = [
      "[listen.tls]",
      `cert = ${JSON.stringify(cert)}`,
      `key = ${JSON.stringify(key)}`,
      "[[route]]",
      'name = "app"',
      'path_prefix = "/ws"',
      "[route.upstream]",
      `endpoints = ["ws://127.0.0.1:${app.port}"]`,
    ].join("\n");
    const holdfast = await startHoldfast({ upstreams: [site.port], key: keyFile(), extra, logLevel: LOG_LEVEL });
    clean.add(() => holdfast.stop("SIGKILL"));
    diag.holdfasts.push(["holdfast", holdfast]);
    const origin = `https://127.0.0.1:${holdfast.port}`;

    await page.goto(`${origin}/`);
    await page.waitForFunction(() => window.app !== undefined, null, { timeout: 10_000 });
    const pageProtocol = await page.evaluate(() => performance.getEntriesByType("navigation")[0].nextHopProtocol);
    assert.equal(pageProtocol, "h2", "the page itself came over HTTP/2");

    const opened = await page.evaluate((u) => window.app.open(u, ["chat"]), `wss://127.0.0.1:${holdfast.port}/ws/feed`);
    assert.equal(opened.readyState, 1, "OPEN");
    assert.equal(opened.resumable, true);
    assert.equal(await holdfast.metric('holdfast_sessions_active{route="app",protocol="h2"}'), 1, "an HTTP/2 stream, routed to the app");

    // The app closes the connection with 1012: holdfast holds this stream's session and
    // re-dials; the page goes on streaming and sees every message once and no close.
    await page.evaluate(() => window.app.stream(20, 5));
    await pageWaitFor(page, "20 echoes", (s) => s.messages.length >= 20);
    await page.evaluate(() => window.app.send("close 1012 restarting"));
    await page.evaluate(() => window.app.stream(60, 10));
    await waitFor("holdfast to open the app again", () => app.handshakes.length >= 2 || null);
    await pageWaitFor(page, "the rest of the echoes", (s) => s.messages.length >= 60, { ms: 15_000 });
    await sleep(250);
    const seen = await seenBy(page);
    const echoed = seen.messages.filter((m) => m.startsWith("v1:-:c-"));
    assert.deepEqual(echoed, range(60, (i) => `v1:-:c-${i}`), "every message once, in order");
    assert.deepEqual(seen.closes, []);
    assert.equal(await holdfast.metric('holdfast_holds_total{outcome="resumed",route="app"}'), 1);
    assert.equal(await holdfast.metric('holdfast_http_requests_total{status="200",route="default",protocol="h2"}'), 2, "the page and the library");
  },
  (clean, diag) => launchPage(clean, diag, ["--ignore-certificate-errors"]),
);
