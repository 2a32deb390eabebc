// The library on a WHATWG WebSocket (the browser's semantics: binaryType "blob" by
// default, close() taking only 1000 and 3000-4999, a server may select no subprotocol):
// Node's own global WebSocket, in a child process (Node 20 needs --experimental-websocket).

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";

import { WebSocketServer } from "ws";

import { cleanups, keyFile, startApp, startHoldfast, startRelay } from "./harness.mjs";

const LIBRARY = new URL("../holdfast.mjs", import.meta.url).href;
const flags = process.allowedNodeEnvironmentFlags.has("--experimental-websocket") ? ["--experimental-websocket"] : [];
const hasNative = Number(process.versions.node.split(".")[0]) >= 22 || flags.length > 0;

// Runs in the child: prints one JSON line per event the parent needs, and a summary.
const CLIENT = `
const { HoldfastWebSocket } = await import(${JSON.stringify(LIBRARY)});
const [relayPort, hostilePort, plainPort] = process.argv.slice(1).map(Number);
const say = (o) => console.log(JSON.stringify(o));
const socket = new HoldfastWebSocket("ws://127.0.0.1:" + relayPort + "/native", ["chat"]);
const got = [];
const events = { resuming: 0, resumed: [], closes: [] };
socket.onmessage = async (e) => got.push(e.data);
socket.addEventListener("resuming", () => events.resuming++);
socket.addEventListener("resumed", (e) => events.resumed.push(e.detail.state));
socket.addEventListener("close", (e) => events.closes.push(e.code));
await new Promise((ok) => (socket.onopen = ok));
const binaryType = socket.binaryType;
say({ open: true, protocol: socket.protocol, resumable: socket.resumable });
socket.send("push 30 15");
for (let i = 0; i < 30; i++) {
  socket.send("c-" + i);
  await new Promise((ok) => setTimeout(ok, 15));
}
socket.send(new Uint8Array([1, 2, 3]));
const deadline = Date.now() + 10000;
while (got.length < 61 && Date.now() < deadline) await new Promise((ok) => setTimeout(ok, 20));
await new Promise((ok) => setTimeout(ok, 200));
const shown = [];
for (const m of got) shown.push(typeof m === "string" ? m : { blob: m instanceof Blob, bytes: [...new Uint8Array(await m.arrayBuffer())] });
const closed = new Promise((ok) => socket.addEventListener("close", (e) => ok([e.code, e.reason, e.wasClean])));
socket.close(1000, "bye");
const close = await closed;

// A hostile server selecting holdfast.resume.v1 with garbage: the library's protocol error
// must close a WHATWG socket too (its close() refuses 1002).
const hostile = new HoldfastWebSocket("ws://127.0.0.1:" + hostilePort + "/", []);
const hostileClose = await new Promise((ok) => hostile.addEventListener("close", (e) => ok([e.code, e.reason])));

// A plain server that selects no subprotocol: a WHATWG WebSocket that offered one fails
// (Node 20's undici with an error and no close); the library tries once more without
// holdfast.resume.v1 and is a plain WebSocket.
const plain = new HoldfastWebSocket("ws://127.0.0.1:" + plainPort + "/", []);
await new Promise((ok, fail) => { plain.onopen = ok; plain.onclose = (e) => fail(new Error("plain closed " + e.code)); });
plain.send("ping");
const echo = await new Promise((ok) => (plain.onmessage = (e) => ok(e.data)));
const plainInfo = { resumable: plain.resumable, protocol: plain.protocol, echo };
plain.onclose = null;
plain.close();
say({ binaryType, shown, events, close, hostileClose, plainInfo });
`;

test("Node's global (WHATWG) WebSocket as the implementation: a cut, blobs, protocol errors", { timeout: 30_000, skip: !hasNative && "no global WebSocket in this Node" }, async (t) => {
  const clean = cleanups();
  t.after(() => clean.run());
  const app = await startApp();
  clean.add(() => app.stop());
  const holdfast = await startHoldfast({ upstreams: [app.port], key: keyFile() });
  clean.add(() => holdfast.stop("SIGKILL"));
  const relay = await startRelay(holdfast.port);
  clean.add(() => relay.stop());
  const hostile = new WebSocketServer({ host: "127.0.0.1", port: 0, handleProtocols: () => "holdfast.resume.v1" });
  hostile.on("connection", (ws) => ws.send("z-garbage"));
  const plain = new WebSocketServer({ host: "127.0.0.1", port: 0, handleProtocols: () => false });
  plain.on("connection", (ws) => ws.on("message", (m) => ws.send("plain:" + m)));
  await Promise.all([hostile, plain].map((s) => new Promise((ok) => s.once("listening", ok))));
  clean.add(() => Promise.all([hostile, plain].map((s) => new Promise((ok) => { s.clients.forEach((c) => c.terminate()); s.close(ok); }))));

  const child = spawn(
    process.execPath,
    [...flags, "--no-warnings", "--input-type=module", "-e", CLIENT, String(relay.port), String(hostile.address().port), String(plain.address().port)],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  clean.add(() => child.kill("SIGKILL"));
  let stderr = "";
  child.stderr.on("data", (c) => (stderr += c));
  const lines = [];
  let buffered = "";
  let onLine = () => {};
  child.stdout.on("data", (chunk) => {
    buffered += chunk;
    let at;
    while ((at = buffered.indexOf("\n")) >= 0) {
      lines.push(JSON.parse(buffered.slice(0, at)));
      buffered = buffered.slice(at + 1);
      onLine();
    }
  });
  const exited = new Promise((ok) => child.on("exit", ok));
  const line = (n) =>
    new Promise((ok, fail) => {
      const check = () => lines.length >= n && ok(lines[n - 1]);
      onLine = check;
      check();
      exited.then((code) => fail(new Error(`client exited ${code}: ${stderr}`)));
    });

  const opened = await line(1);
  assert.deepEqual(opened, { open: true, protocol: "chat", resumable: true });
  await sleep(120);
  relay.cut();
  await sleep(200);
  relay.cut();
  const summary = await line(2);
  assert.equal(await exited, 0, stderr);

  assert.equal(summary.binaryType, "blob", "the WHATWG default");
  const texts = summary.shown.filter((m) => typeof m === "string");
  assert.deepEqual(texts.filter((m) => m.startsWith("push-")), Array.from({ length: 30 }, (_, i) => `push-${i}`));
  assert.deepEqual(texts.filter((m) => !m.startsWith("push-")), Array.from({ length: 30 }, (_, i) => `v1:-:c-${i}`));
  assert.deepEqual(summary.shown.filter((m) => typeof m !== "string"), [{ blob: true, bytes: [1, 2, 3] }]);
  assert.deepEqual(app.texts(), Array.from({ length: 30 }, (_, i) => `c-${i}`));
  assert.equal(app.handshakes.length, 1);
  assert.equal(summary.events.resuming, 2);
  assert.deepEqual(summary.events.resumed, ["attached", "attached"]);
  assert.deepEqual(summary.close, [1000, "bye", true]);
  assert.deepEqual(summary.events.closes, [1000]);
  assert.equal(summary.hostileClose[0], 1002);
  assert.deepEqual(summary.plainInfo, { resumable: false, protocol: "", echo: "plain:ping" });
});
