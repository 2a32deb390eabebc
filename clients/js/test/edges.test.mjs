// Edges and hostile servers: no holdfast.resume.v1 (a plain WebSocket), refusals, the
// session gone, giving up, protocol errors, and the WebSocket API's own rules.

import assert from "node:assert/strict";
import { test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";

import WS, { WebSocketServer } from "ws";

import { HoldfastWebSocket } from "../holdfast.mjs";
import { cleanups, freePort, keyFile, observe, startApp, startHoldfast, startRelay, waitFor } from "./harness.mjs";

const url = (port, path = "/feed") => `ws://127.0.0.1:${port}${path}`;

/** A session through holdfast behind a relay, with one message each way done. */
async function session(clean, { holdfastOptions = {}, socketOptions = {} } = {}) {
  const app = await startApp();
  clean.add(() => app.stop());
  const key = holdfastOptions.key ?? keyFile();
  const holdfast = await startHoldfast({ upstreams: [app.port], key, ...holdfastOptions });
  clean.add(() => holdfast.stop("SIGKILL"));
  const relay = await startRelay(holdfast.port);
  clean.add(() => relay.stop());
  const socket = new HoldfastWebSocket(url(relay.port), ["chat"], { WebSocket: WS, ...socketOptions });
  clean.add(() => socket.close());
  const seen = observe(socket);
  await seen.opened;
  socket.send("hi");
  await waitFor("the echo", () => seen.messages.length === 1);
  return { app, key, holdfast, relay, socket, seen };
}

test("a plain ws server (no holdfast.resume.v1 selected): a plain WebSocket", { timeout: 10_000 }, async (t) => {
  const clean = cleanups();
  t.after(() => clean.run());
  const app = await startApp(); // selects "chat", never holdfast.resume.v1
  clean.add(() => app.stop());
  const socket = new HoldfastWebSocket(url(app.port), ["chat"], { WebSocket: WS });
  clean.add(() => socket.close());
  const seen = observe(socket);
  let handlerOpens = 0;
  socket.onopen = () => handlerOpens++;
  await seen.opened;
  assert.equal(handlerOpens, 1, "onopen");
  assert.equal(socket.resumable, false);
  assert.equal(socket.protocol, "chat");
  assert.equal(socket.session, null);
  assert.deepEqual(app.handshakes[0].headers["sec-websocket-protocol"].split(/\s*,\s*/), ["holdfast.resume.v1", "chat"]);
  socket.send("hello");
  socket.send(new Uint8Array([0x64, 1, 2]));
  socket.send(new Blob(["blob-bytes"]));
  socket.send("after the blob");
  await waitFor("echoes", () => seen.messages.length === 4);
  assert.equal(seen.messages[0], "v1:-:hello", "no envelope either way");
  assert.deepEqual([...new Uint8Array(seen.messages[1])], [0x64, 1, 2]);
  assert.equal(Buffer.from(seen.messages[2]).toString(), "blob-bytes");
  assert.equal(seen.messages[3], "v1:-:after the blob", "in order after the blob");
  assert.equal(app.messages[0].data, "hello");
  socket.close(1000, "bye");
  const closed = await seen.closed;
  assert.deepEqual([closed.code, closed.reason, closed.wasClean], [1000, "bye", true]);
  await sleep(100);
  assert.equal(seen.closes.length, 1);
  assert.equal(seen.errors, 0);
});

test("a server that selects no subprotocol: one plain retry (plainFallback), else close 1006", { timeout: 10_000 }, async (t) => {
  const clean = cleanups();
  t.after(() => clean.run());
  const offers = [];
  const server = new WebSocketServer({
    host: "127.0.0.1",
    port: 0,
    handleProtocols: () => false,
  });
  server.on("headers", (_headers, req) => offers.push(req.headers["sec-websocket-protocol"] ?? null));
  server.on("connection", (ws) => ws.on("message", (m) => ws.send(`plain:${m}`)));
  await new Promise((ok) => server.once("listening", ok));
  clean.add(() => new Promise((ok) => server.close(ok)));
  clean.add(() => server.clients.forEach((c) => c.terminate()));

  // ws (like Chrome and the WHATWG spec) fails a connection whose offered subprotocols
  // were all ignored; the library then connects once more offering none.
  const socket = new HoldfastWebSocket(url(server.address().port), undefined, { WebSocket: WS });
  const seen = observe(socket);
  await seen.opened;
  assert.deepEqual(offers, ["holdfast.resume.v1", null]);
  assert.equal(socket.resumable, false);
  assert.equal(socket.protocol, "");
  socket.send("x");
  await waitFor("the echo", () => seen.messages.length === 1);
  assert.equal(seen.messages[0], "plain:x");
  assert.equal(seen.errors, 0);
  socket.close(1000);
  assert.equal((await seen.closed).code, 1000);

  offers.length = 0;
  const strict = new HoldfastWebSocket(url(server.address().port), [], { WebSocket: WS, plainFallback: false });
  const strictSeen = observe(strict);
  assert.equal((await strictSeen.closed).code, 1006);
  assert.equal(strictSeen.errors, 1);
  assert.deepEqual(offers, ["holdfast.resume.v1"]);
});

test("holdfast with [resume] enabled = false: a plain WebSocket, a cut is the end", { timeout: 15_000 }, async (t) => {
  const clean = cleanups();
  t.after(() => clean.run());
  const app = await startApp();
  clean.add(() => app.stop());
  const holdfast = await startHoldfast({ upstreams: [app.port], resume: "enabled = false" });
  clean.add(() => holdfast.stop("SIGKILL"));
  const relay = await startRelay(holdfast.port);
  clean.add(() => relay.stop());
  const socket = new HoldfastWebSocket(url(relay.port), ["chat"], { WebSocket: WS });
  clean.add(() => socket.close());
  const seen = observe(socket);
  await seen.opened;
  assert.equal(socket.resumable, false);
  assert.equal(socket.protocol, "chat");
  assert.equal(app.handshakes[0].headers["sec-websocket-protocol"], "chat", "holdfast.* entries stripped");
  socket.send("hello");
  await waitFor("the echo", () => seen.messages.length === 1);
  assert.equal(seen.messages[0], "v1:-:hello");
  relay.cut();
  const closed = await seen.closed;
  assert.equal(closed.code, 1006);
  assert.equal(seen.errors, 1, "error, then close, as the browser");
  await sleep(300);
  assert.equal(relay.connections, 1, "no reconnect");
  assert.equal(seen.closes.length, 1);
  assert.equal(seen.resuming.length, 0);
});

test("a refused resume (the token is forged from the new holdfast's view): close 1008 resume-rejected", { timeout: 15_000 }, async (t) => {
  const clean = cleanups();
  t.after(() => clean.run());
  const { app, holdfast, relay, seen } = await session(clean);
  // holdfast is replaced by one with another key: the client's token is not its own.
  const other = await startHoldfast({ upstreams: [app.port], key: keyFile() });
  clean.add(() => other.stop("SIGKILL"));
  relay.pointAt(other.port);
  relay.cut();
  const closed = await seen.closed;
  assert.equal(closed.code, 1008);
  const reason = JSON.parse(closed.reason);
  assert.equal(reason.policy, "resume-rejected");
  assert.equal(typeof reason.detail, "string");
  assert.equal(seen.resuming.length, 1);
  assert.equal(seen.resumed.length, 0);
  await sleep(500);
  assert.equal(relay.connections, 2, "no retry after a refusal");
  assert.equal(seen.closes.length, 1);
  assert.equal(app.handshakes.length, 1, "the refusal dialled no upstream");
  await holdfast.stop("SIGKILL");
});

test("the session is gone (holdfast restarted, same key): the give-up close ends it", { timeout: 15_000 }, async (t) => {
  const clean = cleanups();
  t.after(() => clean.run());
  const { app, key, holdfast, relay, seen } = await session(clean);
  const restarted = await startHoldfast({ upstreams: [app.port], key });
  clean.add(() => restarted.stop("SIGKILL"));
  relay.pointAt(restarted.port);
  await holdfast.stop("SIGKILL"); // a crash: no move, the session dies with it
  const closed = await seen.closed;
  assert.equal(closed.code, 1012);
  assert.equal(closed.reason, "upstream restarting; reconnect in 1-5s");
  assert.equal(seen.resuming.length, 1);
  await sleep(300);
  assert.equal(seen.closes.length, 1);
  assert.equal(relay.connections, 2);
});

test("the upstream ends the session: its close reaches the app once, no reconnect", { timeout: 10_000 }, async (t) => {
  const clean = cleanups();
  t.after(() => clean.run());
  const { relay, socket, seen } = await session(clean);
  socket.send("close 4001 go away");
  const closed = await seen.closed;
  assert.deepEqual([closed.code, closed.reason], [4001, "go away"]);
  await sleep(300);
  assert.equal(seen.closes.length, 1);
  assert.equal(seen.resuming.length, 0);
  assert.equal(relay.connections, 1);
});

test("giving up: nothing answers for maxRetryTime → error, close 1006", { timeout: 15_000 }, async (t) => {
  const clean = cleanups();
  t.after(() => clean.run());
  const { relay, socket, seen } = await session(clean, {
    socketOptions: { maxRetryTime: 1500, retryInitialDelay: 50, retryMaxDelay: 400 },
  });
  relay.pointAt(await freePort()); // nothing listens there: every try is reset
  const since = Date.now();
  relay.cut();
  socket.send("queued, never delivered");
  const closed = await seen.closed;
  const took = Date.now() - since;
  assert.equal(closed.code, 1006);
  assert.equal(closed.wasClean, false);
  assert.equal(seen.errors, 1);
  assert.ok(took >= 1400 && took < 4000, `gave up after ${took} ms`);
  const tries = relay.connections - 1;
  assert.ok(tries >= 3 && tries < 40, `${tries} reconnect attempts: immediate, then backoff`);
  await sleep(500);
  assert.equal(relay.connections - 1, tries, "no attempt after giving up");
  assert.equal(seen.closes.length, 1);
});

test("the app closes while resuming: close fires once with its code, no more attempts", { timeout: 10_000 }, async (t) => {
  const clean = cleanups();
  t.after(() => clean.run());
  const { relay, socket, seen } = await session(clean, { socketOptions: { retryInitialDelay: 200 } });
  relay.pointAt(await freePort());
  relay.cut();
  await waitFor("resuming", () => seen.resuming.length === 1);
  socket.close(4000, "user left");
  assert.equal(socket.readyState, HoldfastWebSocket.CLOSED);
  const closed = await seen.closed;
  assert.deepEqual([closed.code, closed.reason], [4000, "user left"]);
  const tries = relay.connections;
  await sleep(600);
  assert.equal(relay.connections, tries);
  assert.equal(seen.closes.length, 1);
});

test("a hostile server that selects holdfast.resume.v1 but speaks no hello: close 1002, no retry", { timeout: 10_000 }, async (t) => {
  const clean = cleanups();
  t.after(() => clean.run());
  // ws's default handleProtocols selects the first protocol offered.
  const server = new WebSocketServer({ host: "127.0.0.1", port: 0 });
  await new Promise((ok) => server.once("listening", ok));
  let connections = 0;
  server.on("connection", (ws) => {
    connections++;
    ws.send("hello from a server that knows nothing");
  });
  clean.add(() => new Promise((ok) => server.close(ok)));
  clean.add(() => server.clients.forEach((c) => c.terminate()));
  const socket = new HoldfastWebSocket(url(server.address().port), [], { WebSocket: WS });
  const seen = observe(socket);
  await assert.rejects(seen.opened, /closed before open: 1002/);
  const closed = await seen.closed;
  assert.equal(closed.code, 1002);
  assert.match(closed.reason, /hello/);
  assert.equal(seen.errors, 1);
  await sleep(300);
  assert.equal(connections, 1);
  assert.equal(seen.closes.length, 1);
});

test("a hostile holdfast-like server: garbage envelopes and untrue acknowledgements are protocol errors", { timeout: 10_000 }, async (t) => {
  const clean = cleanups();
  t.after(() => clean.run());
  const hello = (extra = {}) =>
    "h" + JSON.stringify({ v: 1, session: "00000000000000aa", token: "tok", protocol: null, received: 0, replay: 0, state: "new", ...extra });
  const scripts = [
    [hello(), "x-unknown-kind", /unexpected frame/],
    [hello(), "a5", /acknowledged 5 messages; 0 were sent/],
    [hello(), "a-1", /bad acknowledgement/],
    [hello(), "m{not json", /unexpected frame/],
    ["h{nope", null, /bad hello/],
    [hello({ v: 2 }), null, /bad hello/],
  ];
  for (const [first, second, why] of scripts) {
    const server = new WebSocketServer({ host: "127.0.0.1", port: 0, handleProtocols: () => "holdfast.resume.v1" });
    await new Promise((ok) => server.once("listening", ok));
    server.on("connection", (ws) => {
      ws.send(first);
      if (second !== null) ws.send(second);
    });
    const socket = new HoldfastWebSocket(url(server.address().port), [], { WebSocket: WS });
    const seen = observe(socket);
    const closed = await seen.closed;
    assert.equal(closed.code, 1002, `${first} ${second}`);
    assert.match(closed.reason, why);
    for (const c of server.clients) c.terminate();
    await new Promise((ok) => server.close(ok));
  }
});

test("the WebSocket API's rules", { timeout: 10_000 }, async (t) => {
  const clean = cleanups();
  t.after(() => clean.run());
  assert.deepEqual(
    [HoldfastWebSocket.CONNECTING, HoldfastWebSocket.OPEN, HoldfastWebSocket.CLOSING, HoldfastWebSocket.CLOSED],
    [0, 1, 2, 3],
  );
  const app = await startApp();
  clean.add(() => app.stop());
  const socket = new HoldfastWebSocket(url(app.port), "chat", { WebSocket: WS });
  assert.deepEqual([socket.CONNECTING, socket.OPEN, socket.CLOSING, socket.CLOSED], [0, 1, 2, 3]);
  assert.ok(socket instanceof EventTarget);
  assert.equal(socket.url, url(app.port));
  assert.equal(socket.readyState, HoldfastWebSocket.CONNECTING);
  assert.throws(() => socket.send("too early"), { name: "InvalidStateError" });
  assert.throws(() => socket.close(1001), { name: "InvalidAccessError" });
  assert.throws(() => socket.close(1000, "x".repeat(124)), { name: "SyntaxError" });
  const seen = observe(socket);
  let viaHandler = 0;
  const handler = () => viaHandler++;
  socket.onmessage = handler;
  assert.equal(socket.onmessage, handler);
  await seen.opened;
  socket.send("one");
  await waitFor("one", () => seen.messages.length === 1);
  socket.onmessage = null;
  socket.send("two");
  await waitFor("two", () => seen.messages.length === 2);
  assert.equal(viaHandler, 1, "a handler set to null is removed");
  socket.close();
  socket.close(); // a second close is a no-op
  assert.equal((await seen.closed).code, 1005, "close() without a code");
  socket.send("after close is discarded");

  assert.throws(
    () => new HoldfastWebSocket(url(app.port), ["holdfast.t.stolen"], { WebSocket: WS }),
    { name: "SyntaxError" },
    "holdfast.* entries are the library's",
  );
  assert.throws(() => new HoldfastWebSocket("not a url", [], { WebSocket: WS }), SyntaxError);
  if (typeof globalThis.WebSocket === "undefined") {
    assert.throws(() => new HoldfastWebSocket(url(app.port)), TypeError, "no implementation");
  }

  // close() while CONNECTING fails the connection, as the browser does.
  const early = new HoldfastWebSocket(url(app.port), [], { WebSocket: WS });
  const earlySeen = observe(early);
  earlySeen.opened.catch(() => {});
  early.close(1000);
  assert.equal(early.readyState, HoldfastWebSocket.CLOSED);
  assert.equal((await earlySeen.closed).code, 1006);
  assert.equal(earlySeen.errors, 1);
  await sleep(100);
  assert.equal(earlySeen.opens, 0);

  // Nothing listening: error, close 1006, no retry (there is no session to resume yet).
  const nowhere = new HoldfastWebSocket(url(await freePort()), [], { WebSocket: WS });
  const nowhereSeen = observe(nowhere);
  nowhereSeen.opened.catch(() => {});
  assert.equal((await nowhereSeen.closed).code, 1006);
  assert.equal(nowhereSeen.errors, 1);
  assert.equal(nowhereSeen.resuming.length, 0);
});

test("webSocketOptions (headers) are sent on every connection: a cookie-bound session resumes", { timeout: 10_000 }, async (t) => {
  const clean = cleanups();
  t.after(() => clean.run());
  const { app, relay, socket, seen } = await session(clean, {
    socketOptions: { webSocketOptions: { headers: { Cookie: "sid=42" } } },
  });
  assert.equal(app.handshakes[0].headers.cookie, "sid=42", "forwarded to the upstream");
  relay.cut();
  await waitFor("resumed", () => seen.resumed.length === 1, 5_000);
  socket.send("after");
  await waitFor("the echo", () => seen.messages.length === 2);
  assert.deepEqual(seen.messages, ["v1:-:hi", "v1:-:after"]);
  assert.deepEqual(seen.closes, []);
});

test("a token presented with other credentials is refused (1008 resume-rejected)", { timeout: 10_000 }, async (t) => {
  const clean = cleanups();
  t.after(() => clean.run());
  const { relay, socket, seen } = await session(clean, {
    socketOptions: { webSocketOptions: { headers: { Cookie: "sid=42" } } },
  });
  // A thief replays the owner's offer (token and count) with another cookie.
  const token = await new Promise((ok) => {
    const probe = new WS(`ws://127.0.0.1:${relay.port}/feed`, ["holdfast.resume.v1", "chat"], { headers: { Cookie: "sid=42" } });
    probe.on("message", (m) => {
      ok(JSON.parse(String(m).slice(1)).token);
      probe.terminate();
    });
  });
  const thief = new WS(`ws://127.0.0.1:${relay.port}/feed`, ["holdfast.resume.v1", `holdfast.t.${token}`, "holdfast.r.0"], {
    headers: { Cookie: "sid=13" },
  });
  const [code, reason] = await new Promise((ok) => thief.on("close", (c, r) => ok([c, String(r)])));
  assert.equal(code, 1008);
  assert.equal(JSON.parse(reason).policy, "resume-rejected");
  socket.send("still mine");
  await waitFor("the echo", () => seen.messages.length === 2);
  assert.equal(seen.messages[1], "v1:-:still mine");
  assert.deepEqual(seen.closes, []);
});
