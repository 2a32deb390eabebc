// The library against the real holdfast: network cuts, a holdfast draining behind a load
// balancer, and a sidecar rolling update. Each session must deliver every message exactly
// once and in order both ways, and the application must see no `close`.

import assert from "node:assert/strict";
import { test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";

import WS from "ws";

import { HoldfastWebSocket } from "../holdfast.mjs";
import { assertRollingUpdate, assertThreeCuts, cleanups, keyFile, observe, startApp, startHoldfast, startRelay, waitFor } from "./harness.mjs";

const range = (n, f) => Array.from({ length: n }, (_, i) => f(i));
const pushes = (seen) => seen.messages.filter((m) => typeof m === "string" && m.startsWith("push-"));
const echoes = (seen) => seen.messages.filter((m) => typeof m === "string" && !m.startsWith("push-"));
const url = (relay, path = "/feed") => `ws://127.0.0.1:${relay.port}${path}`;

/**
 * One app, one holdfast (`resume` lines for its [resume]), a relay as the network, and a
 * HoldfastWebSocket through it (`protocols`, `options` besides `WebSocket`), opened; all
 * stopped when the test ends.
 */
async function onePath(t, { resume = "", protocols = [], options = {} } = {}) {
  const clean = cleanups();
  t.after(() => clean.run());
  const app = await startApp();
  clean.add(() => app.stop());
  const holdfast = await startHoldfast({ upstreams: [app.port], key: keyFile(), resume });
  clean.add(() => holdfast.stop("SIGKILL"));
  const relay = await startRelay(holdfast.port);
  clean.add(() => relay.stop());
  const socket = new HoldfastWebSocket(url(relay), protocols, { WebSocket: WS, ...options });
  clean.add(() => socket.close());
  const seen = observe(socket);
  await seen.opened;
  return { app, holdfast, relay, socket, seen };
}

test("three network cuts while both sides stream: every message once, in order, no close", { timeout: 30_000 }, async (t) => {
  const { app, relay, socket, seen } = await onePath(t, { protocols: ["chat"] });
  assert.equal(socket.readyState, HoldfastWebSocket.OPEN);
  assert.equal(socket.resumable, true);
  assert.equal(socket.protocol, "chat", "the application's subprotocol, from the hello");
  assert.match(socket.session, /^[0-9a-f]{16}$/);

  socket.send("push 100 20");
  for (let i = 0; i < 100; i++) {
    socket.send(`c-${i}`);
    if (i === 25 || i === 50 || i === 75) assert.equal(relay.cut(), 1, "one live connection reset");
    await sleep(20);
  }
  await waitFor("every push and echo", () => pushes(seen).length >= 100 && echoes(seen).length >= 100, 15_000);
  await sleep(250); // a duplicate would arrive by now

  assertThreeCuts(seen, app, socket.bufferedAmount);

  socket.close(1000, "done");
  assert.equal(socket.readyState, HoldfastWebSocket.CLOSING);
  const closed = await seen.closed;
  assert.equal(closed.code, 1000);
  assert.equal(closed.reason, "done");
  assert.equal(closed.wasClean, true);
  assert.equal(socket.readyState, HoldfastWebSocket.CLOSED);
  await sleep(100);
  assert.equal(seen.closes.length, 1, "close fires once");
});

test("binary and text keep their types and bytes; messages sent while resuming go out once, after the resume", { timeout: 20_000 }, async (t) => {
  const { app, holdfast, relay, socket, seen } = await onePath(t, { options: { retryInitialDelay: 50, retryMaxDelay: 100 } });
  assert.equal(socket.binaryType, "arraybuffer", "ws in Node: arraybuffer semantics");
  assert.equal(socket.protocol, "", "no application subprotocol");

  const bytes = new Uint8Array([0, 1, 0x64, 255]);
  socket.send(bytes);
  bytes[0] = 99; // the library keeps its own copy for resends
  socket.send(new Uint16Array([0x0201]).buffer);
  socket.send(new DataView(new Uint8Array([7, 8, 9]).buffer, 1, 2));
  socket.send(new Blob([new Uint8Array([42, 43])]));
  socket.send("text after a blob");

  // The network is gone for a while: sends are queued.
  relay.pointAt(1); // nothing listens on port 1: the relay resets every new connection
  relay.cut();
  await waitFor("resuming", () => seen.resuming.length === 1);
  for (let i = 0; i < 5; i++) socket.send(`while-away-${i}`);
  socket.send(new Uint8Array([5, 5]));
  assert.equal(socket.readyState, HoldfastWebSocket.OPEN, "OPEN while resuming: sends are queued");
  assert.ok(socket.bufferedAmount > 0);
  await sleep(300);
  relay.pointAt(holdfast.port);
  await waitFor("resumed", () => seen.resumed.length === 1, 5_000);
  await waitFor("every echo", () => seen.messages.length >= 11, 5_000);
  await sleep(200);

  const shown = seen.messages.map((m) => (typeof m === "string" ? m : [...new Uint8Array(m)]));
  assert.deepEqual(shown, [
    [0, 1, 0x64, 255],
    [1, 2],
    [8, 9],
    [42, 43],
    "v1:-:text after a blob",
    ...range(5, (i) => `v1:-:while-away-${i}`),
    [5, 5],
  ]);
  assert.ok(seen.messages.filter((m) => typeof m !== "string").every((m) => m instanceof ArrayBuffer));
  assert.deepEqual(app.texts(), ["text after a blob", ...range(5, (i) => `while-away-${i}`)]);
  assert.equal(app.messages.filter((m) => m.binary).length, 5);
  assert.equal(app.handshakes.length, 1);
  assert.deepEqual(seen.closes, []);

  socket.binaryType = "blob";
  socket.send(new Uint8Array([1, 2, 3]));
  await waitFor("a blob", () => seen.messages.length === 12);
  const blob = seen.messages[11];
  assert.ok(blob instanceof Blob);
  assert.deepEqual([...new Uint8Array(await blob.arrayBuffer())], [1, 2, 3]);
});

test("a holdfast drains behind a load balancer: the session moves to the other one, no close", { timeout: 30_000 }, async (t) => {
  const clean = cleanups();
  t.after(() => clean.run());
  const app = await startApp();
  clean.add(() => app.stop());
  const key = keyFile();
  // replay_first = 1: the first message (auth) is replayed to the new upstream connection.
  const extra = "[restart]\nreplay_first = 1\n";
  const first = await startHoldfast({ upstreams: [app.port], key, extra });
  clean.add(() => first.stop("SIGKILL"));
  const second = await startHoldfast({ upstreams: [app.port], key, extra });
  clean.add(() => second.stop("SIGKILL"));
  const balancer = await startRelay(first.port);
  clean.add(() => balancer.stop());

  const socket = new HoldfastWebSocket(url(balancer), ["chat"], { WebSocket: WS });
  clean.add(() => socket.close());
  const seen = observe(socket);
  await seen.opened;
  socket.send("auth alice");
  socket.send("push 100 20");
  let drained;
  for (let i = 0; i < 100; i++) {
    socket.send(`c-${i}`);
    if (i === 40) {
      // The rollout: new connections go to the second; the first drains.
      balancer.pointAt(second.port);
      drained = first.stop("SIGTERM");
    }
    await sleep(20);
  }
  await waitFor("every push and echo", () => pushes(seen).length >= 100 && echoes(seen).length >= 100, 15_000);
  await sleep(250);

  assert.deepEqual(pushes(seen), range(100, (i) => `push-${i}`), "upstream → client: once, in order");
  assert.deepEqual(echoes(seen), range(100, (i) => `v1:alice:c-${i}`), "echoes once, in order; auth replayed");
  assert.deepEqual(app.texts(), range(100, (i) => `c-${i}`), "client → upstream: once, in order");
  assert.equal(app.handshakes.length, 2, "one new handshake for the move");
  const [old, moved] = app.handshakes;
  assert.equal(moved.headers["x-holdfast-session"], old.headers["x-holdfast-session"]);
  assert.equal(moved.headers["x-holdfast-session"], socket.session);
  assert.equal(moved.headers["x-holdfast-resume"], "1");
  assert.equal(moved.url, "/feed");
  assert.equal(app.messages.find((m) => m.conn === 1).data, "auth alice", "the opening message replayed first");
  assert.equal(app.messages.filter((m) => m.data === "auth alice").length, 2);
  assert.deepEqual(seen.resuming.map((r) => [r.code, r.moving]), [[1012, true]]);
  assert.deepEqual(seen.resumed.map((r) => r.state), ["moved"]);
  assert.equal(seen.resumed[0].replayed, 1);
  assert.deepEqual(seen.closes, [], "no close across the move");
  assert.equal(await drained, 0, "the first holdfast drained and exited 0");
  assert.equal(await second.metric('holdfast_client_resumes_total{outcome="moved"}'), 1);

  socket.close(1000);
  assert.equal((await seen.closed).code, 1000);
});

test("a sidecar rolling update: holdfast and app replaced together, the session continues on v2", { timeout: 30_000 }, async (t) => {
  const clean = cleanups();
  t.after(() => clean.run());
  const key = keyFile();
  const extra = "[restart]\nreplay_first = 1\n";
  // Pod A: holdfast A in front of app A (v1). Pod B: holdfast B in front of app B (v2).
  const appA = await startApp({ version: "v1" });
  clean.add(() => appA.stop());
  const appB = await startApp({ version: "v2" });
  clean.add(() => appB.stop());
  const holdfastA = await startHoldfast({ upstreams: [appA.port], key, extra });
  clean.add(() => holdfastA.stop("SIGKILL"));
  const holdfastB = await startHoldfast({ upstreams: [appB.port], key, extra });
  clean.add(() => holdfastB.stop("SIGKILL"));
  const balancer = await startRelay(holdfastA.port);
  clean.add(() => balancer.stop());

  const socket = new HoldfastWebSocket(url(balancer, "/chat?room=7"), ["chat"], { WebSocket: WS });
  clean.add(() => socket.close());
  const seen = observe(socket);
  await seen.opened;
  socket.send("auth alice");
  let podAGone;
  for (let i = 0; i < 60; i++) {
    socket.send(`c-${i}`);
    if (i === 30) {
      // Kubernetes: pod B is ready, the Service sends new connections to it, pod A gets
      // SIGTERM: its holdfast drains (moves the client), then its app stops.
      balancer.pointAt(holdfastB.port);
      podAGone = holdfastA.stop("SIGTERM").then(async (code) => {
        await appA.stop();
        return code;
      });
    }
    await sleep(20);
  }
  assert.equal(await podAGone, 0, "holdfast A drained and exited 0");
  socket.send("version");
  await waitFor("every echo", () => seen.messages.length >= 61, 15_000);
  await sleep(250);

  assertRollingUpdate(seen.messages, appA, appB);
  assert.equal(appB.handshakes[0].headers["sec-websocket-protocol"], "chat", "holdfast.* entries never reach the app");
  assert.deepEqual(seen.resumed.map((r) => r.state), ["moved"]);
  assert.equal(socket.protocol, "chat");
  assert.deepEqual(seen.closes, [], "no close across the rolling update");
});

test("tokens are refreshed (t): a resume after the first token expired works", { timeout: 20_000 }, async (t) => {
  // client_hold = 1s: tokens are valid for 1 s, refreshed every 500 ms.
  const { app, relay, socket, seen } = await onePath(t, { resume: 'client_hold = "1s"' });
  for (let i = 0; i < 25; i++) {
    socket.send(`c-${i}`);
    await sleep(100); // 2.5 s: the hello's token has long expired
  }
  relay.cut();
  await waitFor("resumed", () => seen.resumed.length === 1, 5_000);
  socket.send("after");
  await waitFor("every echo", () => seen.messages.length === 26, 5_000);
  assert.deepEqual(seen.messages, [...range(25, (i) => `v1:-:c-${i}`), "v1:-:after"]);
  assert.deepEqual(seen.closes, []);
  assert.equal(app.handshakes.length, 1);
});

test("acknowledgements keep a small holdfast buffer flowing: 600 fast pushes, buffer of 20", { timeout: 20_000 }, async (t) => {
  // holdfast stops reading the upstream while 20 messages wait for the client's ack.
  const { socket, seen } = await onePath(t, { resume: "buffer_messages = 20" });
  socket.send("push 600 0");
  await waitFor("every push", () => pushes(seen).length >= 600, 15_000);
  await sleep(200);
  assert.deepEqual(pushes(seen), range(600, (i) => `push-${i}`));
  assert.deepEqual(seen.closes, []);
});

test("a flood while the client is away overflows holdfast's buffer: the give-up close, once", { timeout: 20_000 }, async (t) => {
  const { holdfast, relay, socket, seen } = await onePath(t, { resume: "buffer_messages = 20", options: { retryInitialDelay: 20, retryMaxDelay: 50 } });
  socket.send("push 600 1");
  await waitFor("100 pushes", () => pushes(seen).length >= 100, 10_000);
  relay.pointAt(1); // away for 300 ms: the upstream sends far more than 20 messages
  relay.cut();
  await sleep(300);
  relay.pointAt(holdfast.port);
  const closed = await seen.closed;
  assert.deepEqual([closed.code, closed.reason], [1012, "upstream restarting; reconnect in 1-5s"]);
  const got = pushes(seen);
  assert.deepEqual(got, range(got.length, (i) => `push-${i}`), "what arrived arrived once, in order");
  await sleep(200);
  assert.equal(seen.closes.length, 1);
  assert.equal(seen.resumed.length, 0);
});
