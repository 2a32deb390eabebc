// Test harness: the real holdfast binary on loopback with a temporary config, an upstream
// application written with `ws`, and a TCP relay that acts as the network (it can reset
// every connection) and as a load balancer (it can be re-pointed at another target).
// Importing this module starts nothing; every process and server it starts is stopped by
// the returned handles' stop(), and every child is killed when the test process exits.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { setTimeout as sleep } from "node:timers/promises";

import { WebSocketServer } from "ws";

const HERE = dirname(fileURLToPath(import.meta.url));
const PACKAGE = resolve(HERE, "..");

/** The holdfast binary: $TEST_HOLDFAST_BIN, else the workspace's release build. */
export function holdfastBin() {
  const bin = process.env.TEST_HOLDFAST_BIN || resolve(PACKAGE, "../../target/release/holdfast");
  if (!existsSync(bin)) {
    throw new Error(
      `holdfast binary not found at ${bin}: build it with \`cargo build --release --bin holdfast\` ` +
        "in the repository root, or set TEST_HOLDFAST_BIN",
    );
  }
  return bin;
}

// ---- cleanup ---------------------------------------------------------------------------

const children = new Set();
const tempDirs = new Set();
process.on("exit", () => {
  for (const child of children) {
    try {
      child.kill("SIGKILL");
    } catch {
      // gone
    }
  }
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
});

export function tempDir() {
  const dir = mkdtempSync(join(tmpdir(), "holdfast-js-"));
  tempDirs.add(dir);
  return dir;
}

/** A resume key file (48 random bytes) in a temporary directory. */
export function keyFile(dir = tempDir()) {
  const path = join(dir, `resume-${randomBytes(4).toString("hex")}.key`);
  writeFileSync(path, randomBytes(48));
  return path;
}

/** A port free right now on 127.0.0.1 (holdfast cannot report one it picked itself). */
export async function freePort() {
  const server = net.createServer();
  await new Promise((ok, fail) => {
    server.once("error", fail);
    server.listen(0, "127.0.0.1", ok);
  });
  const { port } = server.address();
  await new Promise((ok) => server.close(ok));
  return port;
}

/** Resolves when `check()` is truthy; rejects after `ms` with `what`. */
export async function waitFor(what, check, ms = 10_000, every = 10) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(every);
  }
}

function httpStatus(port, path) {
  return new Promise((ok) => {
    const req = http.get({ host: "127.0.0.1", port, path, timeout: 1000 }, (res) => {
      res.resume();
      ok(res.statusCode);
    });
    req.on("error", () => ok(0));
    req.on("timeout", () => {
      req.destroy();
      ok(0);
    });
  });
}

// ---- holdfast ------------------------------------------------------------------------

/**
 * Starts holdfast in front of `upstreams` (ports of ws servers on 127.0.0.1).
 * `resume`: extra lines for [resume] (key_file is set from `key` when given);
 * `extra`: more TOML appended as is.
 */
export async function startHoldfast({
  upstreams,
  key,
  resume = "",
  extra = "",
  logLevel = process.env.TEST_HOLDFAST_LOG || "warn",
  // holdfast's own default I/O (io-uring where the kernel allows it), on two workers on
  // any machine: connections go to the workers round robin, so a returning client usually
  // lands on another worker than its session's.
  io = process.env.TEST_HOLDFAST_IO,
  workers = process.env.TEST_HOLDFAST_WORKERS || 2,
}) {
  const bin = holdfastBin();
  const dir = tempDir();
  let lastError = "";
  for (let attempt = 0; attempt < 5; attempt++) {
    const port = await freePort();
    const adminPort = await freePort();
    const config = [
      "[listen]",
      `address = "127.0.0.1:${port}"`,
      "[admin]",
      `address = "127.0.0.1:${adminPort}"`,
      "[upstream]",
      `endpoints = [${upstreams.map((p) => `"ws://127.0.0.1:${p}"`).join(", ")}]`,
      "[shutdown]",
      'drain_timeout = "10s"',
      "[resume]",
      key ? `key_file = ${JSON.stringify(key)}` : "",
      resume,
      extra,
      "",
    ].join("\n");
    const configPath = join(dir, `holdfast-${attempt}.toml`);
    writeFileSync(configPath, config);
    const args = ["--config", configPath, "--log-level", logLevel, "--log-format", "json"];
    if (io) args.push("--io", io);
    if (workers) args.push("--workers", String(workers));
    const child = spawn(bin, args, {
      stdio: ["ignore", "pipe", "pipe"],
      // holdfast reads HOLDFAST_<SECTION>__<KEY> as configuration: none of the caller's.
      env: Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("HOLDFAST_"))),
    });
    children.add(child);
    let log = "";
    child.stdout.on("data", (chunk) => {
      log += chunk;
    });
    child.stderr.on("data", (chunk) => {
      log += chunk;
    });
    const exited = new Promise((ok) => {
      child.on("exit", (code, signal) => {
        children.delete(child);
        ok({ code, signal });
      });
    });
    let exit = null;
    exited.then((e) => {
      exit = e;
    });
    const ready = await waitFor(
      "holdfast /readyz",
      async () => (exit ? "exited" : (await httpStatus(adminPort, "/readyz")) === 200 ? "ready" : null),
      10_000,
      25,
    ).catch((e) => e.message);
    if (ready === "ready") {
      return {
        port,
        adminPort,
        child,
        exited,
        get log() {
          return log;
        },
        /** Sends `signal` (SIGTERM: drain) and resolves with the exit code. */
        async stop(signal = "SIGTERM", ms = 15_000) {
          if (exit) return exit.code;
          child.kill(signal);
          const timer = setTimeout(() => child.kill("SIGKILL"), ms);
          const { code } = await exited;
          clearTimeout(timer);
          return code;
        },
        async metric(name) {
          const text = await new Promise((ok, fail) => {
            http
              .get({ host: "127.0.0.1", port: adminPort, path: "/metrics" }, (res) => {
                let body = "";
                res.on("data", (c) => (body += c));
                res.on("end", () => ok(body));
              })
              .on("error", fail);
          });
          const line = text.split("\n").find((l) => l.startsWith(`${name} `));
          return line ? Number(line.slice(name.length + 1)) : 0;
        },
      };
    }
    child.kill("SIGKILL");
    await exited;
    lastError = `${ready}\n${log}`;
    // Most likely a port taken between freePort() and holdfast's bind: try others.
  }
  throw new Error(`holdfast did not start:\n${lastError}`);
}

// ---- the upstream application ----------------------------------------------------------

/**
 * An upstream app (the "pod's application container"): answers every text message with
 * `<version>:<user>:<message>` (user from `auth <user>`, "-" before), echoes binary
 * messages, and understands commands:
 *   auth <user>          sets the connection's user (replayed by holdfast after a move)
 *   push <n> <ms>        sends push-<i> for i in [0, n) every ms on the session's current
 *                        connection; the count is the session's (X-Holdfast-Session), so a
 *                        session moved to a new connection of this app continues it
 *   close <code> <why>   closes the connection
 * It records every handshake (headers, url, the permessage-deflate it answered) and every
 * data message, in order. `deflate`: it accepts permessage-deflate (ws's own, compressing
 * every message) when offered.
 */
export async function startApp({ version = "v1", deflate = false } = {}) {
  const handshakes = [];
  const messages = []; // { session, conn (index in handshakes), data, binary }
  const sessions = new Map();
  const wss = new WebSocketServer({
    host: "127.0.0.1",
    port: 0,
    handleProtocols: (offered) => (offered.has("chat") ? "chat" : false),
    perMessageDeflate: deflate ? { threshold: 0 } : false,
  });
  await new Promise((ok) => wss.once("listening", ok));
  // The answer's extension header, read as ws writes it (before "connection").
  let answered = "";
  wss.on("headers", (headers) => {
    const line = headers.find((h) => h.toLowerCase().startsWith("sec-websocket-extensions:"));
    answered = line ? line.slice(line.indexOf(":") + 1).trim() : "";
  });
  let n = 0;
  const closed = new Set(); // connections (index in handshakes) whose close handshake ended
  wss.on("connection", (ws, req) => {
    const conn = handshakes.length;
    handshakes.push({ headers: { ...req.headers }, url: req.url, extensions: answered });
    const id = req.headers["x-holdfast-session"] || `direct-${n++}`;
    let session = sessions.get(id);
    if (!session) {
      session = { ws: null, pushed: 0, target: 0, timer: null };
      sessions.set(id, session);
    }
    session.ws = ws;
    let user = "-";
    ws.on("message", (data, binary) => {
      messages.push({ session: id, conn, data: binary ? Buffer.from(data) : data.toString(), binary });
      if (binary) {
        ws.send(data, { binary: true });
        return;
      }
      const text = data.toString();
      const [command, ...args] = text.split(" ");
      if (command === "auth") {
        user = args[0];
      } else if (command === "push") {
        const [count, every] = args.map(Number);
        session.target = Math.max(session.target, count);
        if (!session.timer) {
          session.timer = setInterval(() => {
            // Counted only when it goes out on an open connection: a message sent after
            // the peer's close frame is lost, and must not be counted as sent.
            if (session.ws && session.ws.readyState === 1) {
              session.ws.send(`push-${session.pushed}`);
              session.pushed++;
            }
            if (session.pushed >= session.target) {
              clearInterval(session.timer);
              session.timer = null;
            }
          }, every);
        }
      } else if (command === "close") {
        ws.close(Number(args[0]), args.slice(1).join(" "));
      } else {
        ws.send(`${version}:${user}:${text}`);
      }
    });
    ws.on("close", () => {
      closed.add(conn);
      if (session.ws === ws) session.ws = null;
    });
  });
  return {
    port: wss.address().port,
    version,
    handshakes,
    messages,
    /** Whether connection `conn` (index in handshakes) has closed. */
    isClosed(conn) {
      return closed.has(conn);
    },
    /** Text messages that are not commands, in arrival order (of connection `conn`). */
    texts(conn) {
      return messages
        .filter((m) => conn === undefined || m.conn === conn)
        .filter((m) => !m.binary && !/^(auth|push|close) /.test(m.data))
        .map((m) => m.data);
    },
    async stop() {
      for (const s of sessions.values()) clearInterval(s.timer);
      for (const client of wss.clients) client.terminate();
      await new Promise((ok) => wss.close(ok));
    },
  };
}

// ---- the network / load balancer ------------------------------------------------------

/**
 * A TCP relay on 127.0.0.1: new connections go to `target` (a port); `cut()` resets every
 * live connection (RST both ways: a network change), `pointAt(port)` sends new
 * connections elsewhere (a load balancer's rollout). Counts the connections it took.
 */
export async function startRelay(target) {
  let to = target;
  const pairs = new Set();
  let connections = 0;
  const server = net.createServer((client) => {
    connections++;
    const upstream = net.connect({ host: "127.0.0.1", port: to });
    const pair = { client, upstream };
    pairs.add(pair);
    const drop = () => {
      pairs.delete(pair);
      if (!client.destroyed) client.resetAndDestroy();
      if (!upstream.destroyed) upstream.resetAndDestroy();
    };
    client.on("error", drop);
    upstream.on("error", drop);
    client.on("close", () => {
      pairs.delete(pair);
      upstream.destroy();
    });
    upstream.on("close", () => {
      pairs.delete(pair);
      client.destroy();
    });
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise((ok) => server.listen(0, "127.0.0.1", ok));
  return {
    port: server.address().port,
    get connections() {
      return connections;
    },
    pointAt(port) {
      to = port;
    },
    /** Resets every live connection; returns how many. */
    cut() {
      const n = pairs.size;
      for (const { client, upstream } of [...pairs]) {
        if (!client.destroyed) client.resetAndDestroy();
        if (!upstream.destroyed) upstream.resetAndDestroy();
      }
      pairs.clear();
      return n;
    },
    async stop() {
      this.cut();
      await new Promise((ok) => server.close(ok));
    },
  };
}

// ---- a client's view ------------------------------------------------------------------

/** Records everything a HoldfastWebSocket fires. */
export function observe(socket) {
  const seen = { opens: 0, closes: [], errors: 0, resuming: [], resumed: [], messages: [] };
  socket.addEventListener("open", () => seen.opens++);
  socket.addEventListener("close", (e) => seen.closes.push({ code: e.code, reason: e.reason, wasClean: e.wasClean }));
  socket.addEventListener("error", () => seen.errors++);
  socket.addEventListener("resuming", (e) => seen.resuming.push(e.detail));
  socket.addEventListener("resumed", (e) => seen.resumed.push(e.detail));
  socket.addEventListener("message", (e) => seen.messages.push(e.data));
  seen.opened = new Promise((ok, fail) => {
    socket.addEventListener("open", ok, { once: true });
    socket.addEventListener("close", (e) => fail(new Error(`closed before open: ${e.code} ${e.reason}`)), { once: true });
  });
  seen.opened.catch(() => {}); // a test that expects no open need not await it
  seen.closed = new Promise((ok) => socket.addEventListener("close", ok, { once: true }));
  return seen;
}

/** Runs every cleanup, the last registered first, ignoring failures. */
export function cleanups() {
  const list = [];
  return {
    add(fn) {
      list.push(fn);
    },
    async run() {
      for (const fn of list.reverse()) {
        try {
          await fn();
        } catch {
          // best effort
        }
      }
    },
  };
}

// `node --test` (Node 20+) also runs every .mjs under test/ as a test file, this one too:
// run that way, it checks the one thing every other test needs.
if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const { test } = await import("node:test");
  test("the holdfast binary is built", () => {
    holdfastBin();
  });
}

/**
 * The sidecar rolling update's outcome, as the page or the Node client saw it (`got`: its
 * 61 messages) and apps A (v1) and B (v2) received it: every echo once and in order, one
 * switch from v1 to v2, each message at one app once, the opening message replayed to B,
 * which saw one handshake continuing A's session.
 */
export function assertRollingUpdate(got, appA, appB) {
  const range = (n, f) => Array.from({ length: n }, (_, i) => f(i));
  assert.equal(got.length, 61);
  assert.deepEqual(
    got.slice(0, 60).map((m) => m.replace(/^v[12]:/, "")),
    range(60, (i) => `alice:c-${i}`),
    "every echo once, in order",
  );
  const versions = got.slice(0, 60).map((m) => m.slice(0, 2));
  const switchAt = versions.indexOf("v2");
  assert.ok(switchAt > 20, `v1 answered the start (switch at ${switchAt})`);
  assert.ok(versions.slice(switchAt).every((v) => v === "v2"), `one switch from v1 to v2: ${versions.join(",")}`);
  assert.equal(got[60], "v2:alice:version", "after the move the new version answers");
  assert.deepEqual([...appA.texts(), ...appB.texts()], [...range(60, (i) => `c-${i}`), "version"], "each message reached one app once, in order");
  assert.equal(appB.messages[0].data, "auth alice", "the opening message was replayed to app B");
  assert.equal(appB.handshakes.length, 1);
  assert.equal(appB.handshakes[0].headers["x-holdfast-resume"], "1");
  assert.equal(appB.handshakes[0].headers["x-holdfast-session"], appA.handshakes[0].headers["x-holdfast-session"]);
  assert.equal(appB.handshakes[0].url, "/chat?room=7");
}

/**
 * The three-cuts flow's outcome, as the page or the Node client saw it (`seen`, from
 * observe() or the page) and the app received it: 100 pushes and 100 echoes, each once and
 * in order, over one upstream handshake, three resumes that each re-attached, no close, and
 * (`bufferedAmount`, read from the socket) everything acknowledged.
 */
export function assertThreeCuts(seen, app, bufferedAmount) {
  const range = (n, f) => Array.from({ length: n }, (_, i) => f(i));
  const pushes = seen.messages.filter((m) => m.startsWith("push-"));
  const echoes = seen.messages.filter((m) => !m.startsWith("push-"));
  assert.deepEqual(pushes, range(100, (i) => `push-${i}`), "upstream → client: once, in order");
  assert.deepEqual(echoes, range(100, (i) => `v1:-:c-${i}`));
  assert.deepEqual(app.texts(), range(100, (i) => `c-${i}`), "client → upstream: once, in order");
  assert.equal(app.handshakes.length, 1, "the upstream saw one handshake");
  assert.equal(seen.resuming.length, 3);
  assert.deepEqual(
    seen.resumed.map((r) => r.state),
    ["attached", "attached", "attached"],
  );
  assert.equal(seen.opens, 1);
  assert.deepEqual(seen.closes, [], "no close across the cuts");
  assert.equal(seen.errors, 0);
  assert.equal(bufferedAmount, 0, "everything acknowledged");
}
