// Node's `ws` (from clients/js/node_modules) as an Autobahn|Testsuite peer with
// permessage-deflate, the baseline holdfast's compression is compared with:
//
//   node scripts/ws-peer.mjs echo <port>                  an echo server (fuzzingclient's agent)
//   node scripts/ws-peer.mjs client <url> <agent> <ids>   fuzzingserver's client: runs the cases
//                                                         whose id starts with one of <ids>
//                                                         (comma-separated, e.g. "12.,13.")
// Loopback only: the echo server binds 127.0.0.1.

import { createRequire } from "node:module";

const require = createRequire(new URL("../clients/js/package.json", import.meta.url));
const { WebSocket, WebSocketServer } = require("ws");

const MAX = 64 << 20;
const [mode, ...args] = process.argv.slice(2);

if (mode === "echo") {
  const wss = new WebSocketServer({ host: "127.0.0.1", port: Number(args[0]), perMessageDeflate: true, maxPayload: MAX });
  wss.on("connection", (ws) => {
    ws.on("message", (data, binary) => ws.send(data, { binary }));
    ws.on("error", () => {});
  });
} else if (mode === "client") {
  const [server, agent, ids] = args;
  const prefixes = ids.split(",");
  const open = (path, onMessage) =>
    new Promise((done) => {
      const ws = new WebSocket(`${server}${path}`, { perMessageDeflate: true, maxPayload: MAX });
      ws.on("message", (data, binary) => onMessage(ws, data, binary));
      ws.on("error", () => {});
      ws.on("close", done);
    });
  let count = 0;
  await open("/getCaseCount", (_, data) => {
    count = Number(data.toString());
  });
  for (let n = 1; n <= count; n++) {
    let id = "";
    await open(`/getCaseInfo?case=${n}`, (_, data) => {
      id = JSON.parse(data.toString()).id;
    });
    if (!prefixes.some((p) => id.startsWith(p))) continue;
    await open(`/runCase?case=${n}&agent=${agent}`, (ws, data, binary) => ws.send(data, { binary }));
  }
  await open(`/updateReports?agent=${agent}`, () => {});
} else {
  console.error("usage: ws-peer.mjs echo <port> | client <url> <agent> <id prefixes>");
  process.exit(2);
}
