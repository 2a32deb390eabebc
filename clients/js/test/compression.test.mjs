// permessage-deflate through holdfast with peers it did not write: Node's `ws` as the
// client and as the upstream application, each hop negotiating on its own. (These test
// holdfast, not the library; they live here for the harness and the `ws` package.)

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";

import WebSocket from "ws";

import { cleanups, startApp, startHoldfast, waitFor } from "./harness.mjs";

const range = (n, f) => Array.from({ length: n }, (_, i) => f(i));

/** A realistic JSON message: a few hundred bytes, the same keys every time. */
const tick = (i) =>
  JSON.stringify({
    type: "tick",
    seq: i,
    symbol: ["AAPL", "MSFT", "GOOG", "AMZN"][i % 4],
    price: 100 + ((i * 37) % 5000) / 100,
    volume: 1000 + ((i * 7919) % 50000),
    exchange: "NASDAQ",
    currency: "USD",
    meta: { source: `feed-${i % 8}`, flags: ["live", "regular"], session: "2026-12-01" },
  });

/** A `ws` client to holdfast; `deflate`: its permessage-deflate option (false: none). */
async function connect(holdfast, deflate = { threshold: 0 }) {
  const ws = new WebSocket(`ws://127.0.0.1:${holdfast.port}/feed`, { perMessageDeflate: deflate });
  const messages = [];
  const closed = new Promise((ok) => ws.on("close", (code, reason) => ok({ code, reason: reason.toString() })));
  ws.on("message", (data, binary) => messages.push(binary ? data : data.toString()));
  ws.on("error", () => {}); // the close says what happened
  await new Promise((ok, fail) => {
    ws.once("open", ok);
    ws.once("unexpected-response", (_, res) => fail(new Error(`HTTP ${res.statusCode}`)));
    ws.once("close", () => fail(new Error("closed before open")));
  });
  return { ws, messages, closed };
}

/** holdfast's compression counters: { [hop]: { [direction]: [compressed, uncompressed] } }. */
async function compressionCounts(holdfast) {
  const counts = {};
  for (const hop of ["client", "upstream"]) {
    counts[hop] = {};
    for (const direction of ["to_client", "to_upstream"]) {
      const labels = `{direction="${direction}",hop="${hop}"}`;
      counts[hop][direction] = [
        await holdfast.metric(`holdfast_compressed_bytes_total${labels}`),
        await holdfast.metric(`holdfast_uncompressed_bytes_total${labels}`),
      ];
    }
  }
  return counts;
}

/** Runs `body(clean)` with cleanups that always run; prints holdfast's log on failure. */
function flow(name, body) {
  test(name, { timeout: 30_000 }, async () => {
    const clean = cleanups();
    const logs = [];
    try {
      await body(clean, logs);
    } catch (error) {
      for (const [label, holdfast] of logs) console.error(`---- ${label} log ----\n${holdfast.log}`);
      throw error;
    } finally {
      await clean.run();
    }
  });
}

flow("a ws client compresses on the client hop; the upstream without deflate gets plain frames", async (clean, logs) => {
  const app = await startApp();
  clean.add(() => app.stop());
  const holdfast = await startHoldfast({ upstreams: [app.port] });
  clean.add(() => holdfast.stop("SIGKILL"));
  logs.push(["holdfast", holdfast]);

  const client = await connect(holdfast);
  clean.add(() => client.ws.terminate());
  assert.match(client.ws.extensions, /^permessage-deflate/, "holdfast accepted the client's offer");
  const sent = range(200, tick);
  for (const message of sent) client.ws.send(message);
  await waitFor("200 echoes", () => client.messages.length >= 200);
  assert.deepEqual(client.messages, sent.map((m) => `v1:-:${m}`), "every echo once, in order");
  assert.deepEqual(app.texts(), sent, "the upstream got every message once, in order");
  assert.equal(app.handshakes[0].headers["sec-websocket-extensions"], undefined, "no offer upstream (upstream = false)");

  const counts = await compressionCounts(holdfast);
  for (const direction of ["to_client", "to_upstream"]) {
    const [compressed, uncompressed] = counts.client[direction];
    assert.ok(uncompressed >= 200 * 150, `${direction}: ${uncompressed} bytes went through compression`);
    assert.ok(compressed < uncompressed / 3, `${direction}: ${compressed} of ${uncompressed} bytes on the wire`);
  }
  assert.deepEqual(counts.upstream, { to_client: [0, 0], to_upstream: [0, 0] });
});

flow("both hops compress, each on its own; a 1012 hold in the middle — every message once, in order", async (clean, logs) => {
  const app = await startApp({ deflate: true });
  clean.add(() => app.stop());
  const holdfast = await startHoldfast({
    upstreams: [app.port],
    extra: "[websocket.compression]\nupstream = true\n",
    logLevel: "info",
  });
  clean.add(() => holdfast.stop("SIGKILL"));
  logs.push(["holdfast", holdfast]);

  const client = await connect(holdfast);
  clean.add(() => client.ws.terminate());
  assert.match(client.ws.extensions, /^permessage-deflate/);
  const sent = range(100, tick);
  for (const [i, message] of sent.entries()) {
    client.ws.send(message);
    // The upstream restarts: it closes this connection with 1012, holdfast holds the
    // session (the client's messages meanwhile are buffered) and dials it again. The next
    // message waits for the close handshake: one the old connection read after its close
    // would be the old connection's, never echoed.
    if (i === 40) {
      client.ws.send("close 1012 restarting");
      await waitFor("the old connection's close", () => app.isClosed(0));
    }
    await sleep(5);
  }
  await waitFor("the upstream got all 100", () => app.texts().length >= 100);
  await waitFor("100 echoes", () => client.messages.length >= 100);
  await sleep(200); // a duplicate would arrive by now
  assert.deepEqual(app.texts(), sent, "client → upstream: once, in order, across the hold");
  assert.deepEqual(client.messages, sent.map((m) => `v1:-:${m}`), "upstream → client: once, in order");
  assert.equal(app.handshakes.length, 2, "a second upstream connection after the 1012");
  for (const handshake of app.handshakes) {
    assert.equal(handshake.headers["sec-websocket-extensions"], "permessage-deflate; client_max_window_bits");
    assert.match(handshake.extensions, /^permessage-deflate/, "the upstream accepted holdfast's offer");
  }
  assert.ok(app.texts(1).length > 0, "the second connection carried messages");
  assert.equal(app.handshakes[1].headers["x-holdfast-session"], app.handshakes[0].headers["x-holdfast-session"]);

  const counts = await compressionCounts(holdfast);
  for (const hop of ["client", "upstream"]) {
    for (const direction of ["to_client", "to_upstream"]) {
      const [compressed, uncompressed] = counts[hop][direction];
      assert.ok(uncompressed > 0 && compressed < uncompressed / 2, `${hop} ${direction}: ${compressed} of ${uncompressed}`);
    }
  }
  client.ws.close(1000);
  await client.closed;
  await waitFor("the session's log line", () => holdfast.log.includes('"message":"session ended"'));
  assert.match(holdfast.log, /"compression":"both"/, "the session's log line says both hops compressed");
});

flow("offers holdfast cannot or may not honour get no extension, never a failed handshake", async (clean, logs) => {
  const app = await startApp();
  clean.add(() => app.stop());
  const holdfast = await startHoldfast({ upstreams: [app.port] });
  clean.add(() => holdfast.stop("SIGKILL"));
  logs.push(["holdfast", holdfast]);
  const off = await startHoldfast({ upstreams: [app.port], extra: "[websocket.compression]\nclient = false\n" });
  clean.add(() => off.stop("SIGKILL"));
  logs.push(["holdfast with client = false", off]);

  const cases = [
    ["no offer", holdfast, false],
    // zlib cannot compress with a 256-byte window: holdfast declines the offer.
    ["server_max_window_bits=8", holdfast, { serverMaxWindowBits: 8, threshold: 0 }],
    ["client = false", off, { threshold: 0 }],
  ];
  for (const [label, proxy, deflate] of cases) {
    const client = await connect(proxy, deflate);
    assert.equal(client.ws.extensions, "", `${label}: no extension`);
    client.ws.send(tick(1));
    await waitFor(`${label}: the echo`, () => client.messages.length === 1);
    assert.equal(client.messages[0], `v1:-:${tick(1)}`);
    client.ws.close(1000);
    await client.closed;
  }
});

flow("a compression bomb is closed with 1009 before it inflates past the limit; the rest is served", async (clean, logs) => {
  const app = await startApp();
  clean.add(() => app.stop());
  const holdfast = await startHoldfast({ upstreams: [app.port] });
  clean.add(() => holdfast.stop("SIGKILL"));
  logs.push(["holdfast", holdfast]);
  const rss = () => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${holdfast.child.pid}/status`, "utf8"))[1]) * 1024;

  const bystander = await connect(holdfast);
  clean.add(() => bystander.ws.terminate());
  const before = rss();
  // 16 clients at once, each a 64 MiB message of zeros: ~64 KiB on the wire, within the
  // 1 MiB frame limit; inflated, 64 times the 1 MiB message limit.
  const bombers = await Promise.all(range(16, () => connect(holdfast)));
  for (const bomber of bombers) clean.add(() => bomber.ws.terminate());
  const bomb = Buffer.alloc(64 << 20);
  for (const bomber of bombers) bomber.ws.send(bomb);
  const closes = await Promise.all(bombers.map((b) => b.closed));
  const grown = rss() - before;
  assert.deepEqual(
    closes.map((c) => c.code),
    range(16, () => 1009),
    "each bomb closed with 1009 (message too big)",
  );
  assert.ok(grown < 48 << 20, `holdfast's RSS grew by ${grown} bytes for 16 bombs of 64 MiB each`);

  bystander.ws.send(tick(7));
  await waitFor("the bystander's echo", () => bystander.messages.length === 1);
  assert.equal(bystander.messages[0], `v1:-:${tick(7)}`);
  assert.equal(app.texts().length, 1, "no bomb reached the upstream");
});
