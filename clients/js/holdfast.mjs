// holdfast's client library: a drop-in for the browser's WebSocket that speaks
// holdfast.resume.v1 (docs/RESUME.md). When its connection drops, or the holdfast it is
// attached to drains and tells it to move, it reconnects with its token and both sides
// resend what the other missed: the application sees every message exactly once, in order,
// and no `close` until the session really ends.
//
// One ES module, no dependencies, no Node imports: it runs in browsers as it is, and in
// Node with `options.WebSocket` (the `ws` package) or Node's own global WebSocket.

const SUBPROTOCOL = "holdfast.resume.v1";
const TOKEN_ENTRY = "holdfast.t.";
const RECEIVED_ENTRY = "holdfast.r.";

/** An acknowledgement is sent after this many unacknowledged messages at the latest… */
const ACK_EVERY = 16;
/** …or this long after the first of them. */
const ACK_AFTER_MS = 100;

const CONNECTING = 0;
const OPEN = 1;
const CLOSING = 2;
const CLOSED = 3;

const DEFAULTS = Object.freeze({
  maxRetryTime: 30_000,
  retryInitialDelay: 100,
  retryMaxDelay: 5_000,
  connectTimeout: 10_000,
});

// ---------------------------------------------------------------------------------------
// Events: the platform's where they exist, small stand-ins where they do not (Node 20 has
// no CloseEvent; Node 18 has no global CustomEvent).

const MessageEventImpl =
  typeof globalThis.MessageEvent === "function"
    ? globalThis.MessageEvent
    : class MessageEvent extends Event {
        #data;
        #origin;
        constructor(type, init = {}) {
          super(type, init);
          this.#data = init.data === undefined ? null : init.data;
          this.#origin = init.origin === undefined ? "" : String(init.origin);
        }
        get data() {
          return this.#data;
        }
        get origin() {
          return this.#origin;
        }
        get lastEventId() {
          return "";
        }
        get source() {
          return null;
        }
        get ports() {
          return [];
        }
      };

const CloseEventImpl =
  typeof globalThis.CloseEvent === "function"
    ? globalThis.CloseEvent
    : class CloseEvent extends Event {
        #code;
        #reason;
        #wasClean;
        constructor(type, init = {}) {
          super(type, init);
          this.#code = init.code === undefined ? 0 : init.code;
          this.#reason = init.reason === undefined ? "" : String(init.reason);
          this.#wasClean = Boolean(init.wasClean);
        }
        get code() {
          return this.#code;
        }
        get reason() {
          return this.#reason;
        }
        get wasClean() {
          return this.#wasClean;
        }
      };

const CustomEventImpl =
  typeof globalThis.CustomEvent === "function"
    ? globalThis.CustomEvent
    : class CustomEvent extends Event {
        #detail;
        constructor(type, init = {}) {
          super(type, init);
          this.#detail = init.detail === undefined ? null : init.detail;
        }
        get detail() {
          return this.#detail;
        }
      };

function domError(name, message) {
  if (typeof globalThis.DOMException === "function") {
    return new DOMException(message, name);
  }
  const error = new Error(message);
  error.name = name;
  return error;
}

// ---------------------------------------------------------------------------------------
// Helpers

/** UTF-8 length of a string, without encoding it. */
function utf8Length(text) {
  let n = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < text.length) {
      const next = text.charCodeAt(i + 1);
      if (next >= 0xdc00 && next <= 0xdfff) {
        n += 4;
        i++;
      } else n += 3;
    } else n += 3;
  }
  return n;
}

function isArrayBuffer(value) {
  const tag = Object.prototype.toString.call(value);
  return tag === "[object ArrayBuffer]" || tag === "[object SharedArrayBuffer]";
}

function isBlob(value) {
  return typeof globalThis.Blob === "function" && value instanceof globalThis.Blob;
}

/** The absolute ws(s):// URL, as the browser resolves it. */
function resolveUrl(url) {
  const text = String(url);
  let parsed;
  try {
    const base = globalThis.location && globalThis.location.href;
    parsed = base ? new URL(text, base) : new URL(text);
  } catch {
    return text; // the WebSocket implementation reports the error
  }
  if (parsed.protocol === "http:") parsed.protocol = "ws:";
  else if (parsed.protocol === "https:") parsed.protocol = "wss:";
  return parsed.href;
}

function normalizeProtocols(protocols) {
  if (protocols === undefined || protocols === null) return [];
  const list = typeof protocols === "string" ? [protocols] : Array.from(protocols, String);
  for (const p of list) {
    if (p.startsWith("holdfast.")) {
      throw domError("SyntaxError", `subprotocol ${p}: holdfast.* entries are the library's own`);
    }
  }
  return list;
}

/**
 * An application message kept by the library: sent, resent after a reconnect until
 * holdfast acknowledges it. `text` or `bytes` (a private copy); `pending` while a Blob
 * is being read.
 */
function entryOf(data) {
  if (typeof data === "string") return { text: data, bytes: null, size: utf8Length(data), pending: false };
  if (isArrayBuffer(data)) {
    const bytes = new Uint8Array(data.slice(0));
    return { text: null, bytes, size: bytes.byteLength, pending: false };
  }
  if (ArrayBuffer.isView(data)) {
    const bytes = new Uint8Array(data.byteLength);
    bytes.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
    return { text: null, bytes, size: bytes.byteLength, pending: false };
  }
  if (isBlob(data)) return { text: null, bytes: null, size: data.size, pending: true, blob: data };
  const text = String(data);
  return { text, bytes: null, size: utf8Length(text), pending: false };
}

// ---------------------------------------------------------------------------------------

/**
 * A WebSocket whose session survives dropped connections and holdfast rolling updates.
 * See holdfast.d.ts and README.md.
 */
export class HoldfastWebSocket extends EventTarget {
  static CONNECTING = CONNECTING;
  static OPEN = OPEN;
  static CLOSING = CLOSING;
  static CLOSED = CLOSED;

  // Configuration
  #Impl;
  #implOptions;
  #url;
  #origin;
  #appProtocols;
  #maxRetryTime;
  #retryInitialDelay;
  #retryMaxDelay;
  #connectTimeout;

  // Public state
  #readyState = CONNECTING;
  #binaryType = null;
  #protocol = "";
  #extensions = "";

  // The current connection
  #ws = null;
  #generation = 0;
  /** "pending" until the first connection opens, then "resume" or "plain". */
  #mode = "pending";
  /** The hello arrived on the current connection. */
  #attached = false;
  #connectTimer = null;

  // The session
  #session = null;
  #token = null;
  #replayFirst = 0;
  /** `d` messages received in the session, and the count last acknowledged. */
  #received = 0;
  #ackedIn = 0;
  #ackTimer = null;
  /** How many of our messages holdfast has acknowledged: the session number of #queue[0]. */
  #ackedOut = 0;
  /** Messages sent by the application and not acknowledged yet (plain: not yet sent). */
  #queue = [];
  #queuedBytes = 0;
  /** How many of #queue went out on the current connection. */
  #onWire = 0;
  /** The session's first `replay` messages, kept to replay after a move. */
  #kept = [];
  /** Replays (`p`) still to send on the current connection, before the unacknowledged tail. */
  #replayOut = [];
  /** holdfast said to move: the close that follows is not the session's end. */
  #moving = false;

  // Resuming
  #resumingSince = 0;
  #attempt = 0;
  #retryTimer = null;

  #closeRequested = false;
  #handlers = new Map();
  /** The current connection opened (its 101 came). */
  #innerOpened = false;
  /** Try a plain connection once if the first (offering holdfast.resume.v1) fails unopened. */
  #plainFallback = true;
  /** The current (first-session) connection offers no holdfast.resume.v1. */
  #plainOnly = false;

  /**
   * @param {string | URL} url
   * @param {string | string[]} [protocols] the application's subprotocols
   * @param {object} [options]
   */
  constructor(url, protocols, options = {}) {
    super();
    const opts = options || {};
    this.#Impl = opts.WebSocket || globalThis.WebSocket;
    if (typeof this.#Impl !== "function") {
      throw new TypeError(
        "HoldfastWebSocket: no WebSocket implementation: pass options.WebSocket (in Node, the `ws` package)",
      );
    }
    this.#implOptions = opts.webSocketOptions;
    this.#url = resolveUrl(url);
    try {
      this.#origin = new URL(this.#url).origin;
    } catch {
      this.#origin = "";
    }
    this.#appProtocols = normalizeProtocols(protocols);
    this.#maxRetryTime = opts.maxRetryTime ?? DEFAULTS.maxRetryTime;
    this.#retryInitialDelay = opts.retryInitialDelay ?? DEFAULTS.retryInitialDelay;
    this.#retryMaxDelay = opts.retryMaxDelay ?? DEFAULTS.retryMaxDelay;
    this.#connectTimeout = opts.connectTimeout ?? DEFAULTS.connectTimeout;
    this.#plainFallback = opts.plainFallback ?? true;
    if (opts.binaryType !== undefined) this.binaryType = opts.binaryType;
    // The first connection: errors in the arguments throw from here, as the browser's do.
    this.#connect(true);
  }

  // ---- the WebSocket interface --------------------------------------------------------

  get url() {
    return this.#url;
  }
  get readyState() {
    return this.#readyState;
  }
  get protocol() {
    return this.#protocol;
  }
  get extensions() {
    return this.#extensions;
  }
  get bufferedAmount() {
    const inner = this.#mode === "plain" && this.#ws ? this.#ws.bufferedAmount || 0 : 0;
    return this.#queuedBytes + inner;
  }
  get binaryType() {
    return this.#binaryType ?? "arraybuffer";
  }
  set binaryType(value) {
    if (value === "blob" || value === "arraybuffer") this.#binaryType = value;
    // Anything else is ignored, as the browser does.
  }

  /** The session id (the upstream's `X-Holdfast-Session`), once the hello came; else null. */
  get session() {
    return this.#session;
  }
  /** True when holdfast selected holdfast.resume.v1 (false: a plain WebSocket). */
  get resumable() {
    return this.#mode === "resume";
  }

  send(data) {
    if (this.#readyState === CONNECTING) {
      throw domError("InvalidStateError", "HoldfastWebSocket is still CONNECTING");
    }
    if (this.#readyState !== OPEN) return; // CLOSING or CLOSED: discarded, as the browser does
    const entry = entryOf(data);
    if (entry.pending) this.#readBlob(entry);
    if (this.#mode === "resume" && this.#ackedOut + this.#queue.length < this.#replayFirst) {
      this.#kept.push(entry);
    }
    this.#queue.push(entry);
    this.#queuedBytes += entry.size;
    this.#flush();
  }

  close(code, reason) {
    if (code !== undefined && !(code === 1000 || (Number.isInteger(code) && code >= 3000 && code <= 4999))) {
      throw domError("InvalidAccessError", `close code ${code}: must be 1000 or 3000-4999`);
    }
    const why = reason === undefined ? "" : String(reason);
    if (utf8Length(why) > 123) {
      throw domError("SyntaxError", "close reason longer than 123 bytes");
    }
    if (this.#readyState === CLOSING || this.#readyState === CLOSED) return;
    const was = this.#readyState;
    this.#readyState = CLOSING;
    this.#closeRequested = true;
    clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    if (was === CONNECTING) {
      // As the browser: closing before the connection is established fails it.
      this.#dropInner();
      this.#finish(1006, "", false, true);
      return;
    }
    const ws = this.#ws;
    const usable = ws && ws.readyState === OPEN && (this.#mode === "plain" || this.#attached);
    if (!usable) {
      // Resuming: there is no connection to close on. holdfast ends the session when its
      // client_hold passes.
      this.#dropInner();
      this.#finish(code ?? 1005, why, false, false);
      return;
    }
    if (this.#mode === "resume" && this.#received > this.#ackedIn) this.#sendAck();
    clearTimeout(this.#ackTimer);
    this.#ackTimer = null;
    try {
      if (code === undefined) ws.close();
      else ws.close(code, why);
    } catch {
      this.#dropInner();
      this.#finish(code ?? 1005, why, false, false);
    }
  }

  // ---- event handler attributes ------------------------------------------------------

  get onopen() {
    return this.#getHandler("open");
  }
  set onopen(handler) {
    this.#setHandler("open", handler);
  }
  get onmessage() {
    return this.#getHandler("message");
  }
  set onmessage(handler) {
    this.#setHandler("message", handler);
  }
  get onclose() {
    return this.#getHandler("close");
  }
  set onclose(handler) {
    this.#setHandler("close", handler);
  }
  get onerror() {
    return this.#getHandler("error");
  }
  set onerror(handler) {
    this.#setHandler("error", handler);
  }
  get onresuming() {
    return this.#getHandler("resuming");
  }
  set onresuming(handler) {
    this.#setHandler("resuming", handler);
  }
  get onresumed() {
    return this.#getHandler("resumed");
  }
  set onresumed(handler) {
    this.#setHandler("resumed", handler);
  }

  #getHandler(type) {
    const slot = this.#handlers.get(type);
    return slot ? slot.handler : null;
  }

  #setHandler(type, handler) {
    let slot = this.#handlers.get(type);
    const fn = typeof handler === "function" ? handler : null;
    if (!slot) {
      if (!fn) return;
      slot = { handler: fn, listener: null };
      slot.listener = (event) => {
        if (slot.handler) slot.handler.call(this, event);
      };
      this.#handlers.set(type, slot);
      this.addEventListener(type, slot.listener);
      return;
    }
    if (fn) {
      slot.handler = fn;
    } else {
      this.removeEventListener(type, slot.listener);
      this.#handlers.delete(type);
    }
  }

  // ---- connections -------------------------------------------------------------------

  #connect(first) {
    const generation = ++this.#generation;
    this.#innerOpened = false;
    const offer = this.#plainOnly ? [] : [SUBPROTOCOL];
    if (this.#token !== null) {
      offer.push(TOKEN_ENTRY + this.#token, RECEIVED_ENTRY + this.#received);
    }
    offer.push(...this.#appProtocols);
    let ws;
    try {
      ws =
        this.#implOptions === undefined
          ? new this.#Impl(this.#url, offer)
          : new this.#Impl(this.#url, offer, this.#implOptions);
    } catch (error) {
      if (first) throw error;
      this.#lost({ code: 1006, reason: String(error && error.message), moving: false });
      return;
    }
    if (this.#binaryType === null) {
      // The platform's default: "blob" in browsers; `ws`'s "nodebuffer" reads as arraybuffer.
      this.#binaryType = ws.binaryType === "blob" ? "blob" : "arraybuffer";
    }
    ws.binaryType = "arraybuffer";
    this.#ws = ws;
    this.#attached = false;
    const current = () => generation === this.#generation;
    ws.onopen = () => current() && this.#onInnerOpen(ws);
    ws.onmessage = (event) => current() && this.#onInnerMessage(ws, event.data);
    // An error fails the connection: a close (1006) follows in browsers and ws, but not
    // always in Node 20's undici (it stays CONNECTING after a refused subprotocol).
    ws.onerror = () => {
      if (!current()) return;
      this.#dropInner();
      this.#onInnerClose(1006, "", false);
    };
    ws.onclose = (event) => current() && this.#onInnerClose(event.code, event.reason, event.wasClean);
    if (this.#connectTimeout > 0) {
      this.#connectTimer = setTimeout(() => {
        this.#connectTimer = null;
        if (!current()) return;
        this.#dropInner();
        if (this.#session === null) this.#finish(1006, "connect timeout", false, true);
        else this.#lost({ code: 1006, reason: "connect timeout", moving: false });
      }, this.#connectTimeout);
    }
  }

  /** Forgets the current connection (its events are ignored from now on) and closes it. */
  #dropInner(code) {
    this.#generation++;
    clearTimeout(this.#connectTimer);
    this.#connectTimer = null;
    const ws = this.#ws;
    this.#ws = null;
    this.#attached = false;
    if (!ws) return;
    ws.onopen = null;
    ws.onmessage = null;
    ws.onclose = null;
    ws.onerror = () => {};
    if (ws.readyState !== CONNECTING && ws.readyState !== OPEN) return;
    try {
      if (code === undefined) ws.close();
      else ws.close(code);
    } catch {
      // A browser's close() takes only 1000 and 3000-4999.
      try {
        ws.close();
      } catch {
        // already failing
      }
    }
  }

  #onInnerOpen(ws) {
    this.#innerOpened = true;
    this.#extensions = ws.extensions || "";
    if (ws.protocol === SUBPROTOCOL) {
      if (this.#mode === "pending") this.#mode = "resume";
      return; // the hello comes next
    }
    clearTimeout(this.#connectTimer);
    this.#connectTimer = null;
    if (this.#session === null && this.#mode === "pending") {
      // holdfast.resume.v1 not selected: a plain WebSocket from now on.
      this.#mode = "plain";
      this.#protocol = ws.protocol || "";
      this.#readyState = OPEN;
      this.dispatchEvent(new Event("open"));
      this.#flush();
      return;
    }
    // A reconnect reached a server that does not resume: the session is lost.
    this.#dropInner(1000);
    this.#finish(1006, "holdfast.resume.v1 not selected on reconnect: the session cannot resume", false, true);
  }

  #onInnerMessage(ws, data) {
    if (this.#mode === "plain") {
      this.#deliver(data);
      return;
    }
    let kind;
    let text = null;
    if (typeof data === "string") {
      text = data;
      kind = data.charCodeAt(0);
    } else {
      kind = data.byteLength > 0 ? new Uint8Array(data)[0] : NaN;
    }
    if (!this.#attached) {
      if (text !== null && kind === 0x68 /* h */) {
        let hello;
        try {
          hello = JSON.parse(text.slice(1));
        } catch {
          hello = null;
        }
        this.#onHello(ws, hello);
      } else {
        this.#protocolError("holdfast.resume.v1 selected but the first frame is not a hello");
      }
      return;
    }
    switch (kind) {
      case 0x64 /* d */:
        this.#received++;
        this.#deliver(text !== null ? text.slice(1) : data.slice(1));
        this.#ackSoon();
        return;
      case 0x61 /* a */:
        if (text !== null) return this.#onAck(text.slice(1));
        break;
      case 0x74 /* t */:
        if (text !== null && text.length > 1) {
          this.#token = text.slice(1);
          return;
        }
        break;
      case 0x6d /* m */:
        if (text !== null) {
          let move = null;
          try {
            move = JSON.parse(text.slice(1));
          } catch {
            // below
          }
          if (move && typeof move.token === "string") {
            this.#token = move.token;
            this.#moving = true;
            return;
          }
        }
        break;
      default:
        break;
    }
    this.#protocolError(`unexpected frame from holdfast (kind ${JSON.stringify(String.fromCharCode(kind))})`);
  }

  #onHello(ws, hello) {
    const valid =
      hello &&
      typeof hello === "object" &&
      hello.v === 1 &&
      typeof hello.token === "string" &&
      typeof hello.session === "string" &&
      Number.isSafeInteger(hello.received) &&
      hello.received >= 0;
    if (!valid) return this.#protocolError("bad hello");
    clearTimeout(this.#connectTimer);
    this.#connectTimer = null;
    this.#attached = true;
    this.#token = hello.token;
    if (this.#session === null) {
      this.#session = hello.session;
      this.#protocol = typeof hello.protocol === "string" ? hello.protocol : "";
      this.#replayFirst = Number.isSafeInteger(hello.replay) && hello.replay > 0 ? hello.replay : 0;
      this.#readyState = OPEN;
      this.dispatchEvent(new Event("open"));
      this.#flush();
      return;
    }
    // A resumed connection.
    if (hello.session !== this.#session) return this.#protocolError("hello for another session");
    const theirs = hello.received;
    if (theirs < this.#ackedOut || theirs > this.#ackedOut + this.#queue.length) {
      return this.#protocolError(
        `hello says holdfast received ${theirs} messages; ${this.#ackedOut} were acknowledged, ${this.#ackedOut + this.#queue.length} sent`,
      );
    }
    this.#forget(theirs - this.#ackedOut);
    this.#onWire = 0;
    const moved = hello.state === "moved";
    this.#replayOut = moved ? this.#kept.slice() : [];
    this.#moving = false;
    const detail = {
      state: moved ? "moved" : "attached",
      session: this.#session,
      attempts: this.#attempt,
      resent: this.#queue.length,
      replayed: this.#replayOut.length,
    };
    this.#resumingSince = 0;
    this.#attempt = 0;
    this.#flush();
    // The acknowledgement sent before the drop may have been lost: holdfast keeps what it
    // sent until it hears one (and waits for it before moving us).
    if (this.#received > 0) this.#sendAck();
    this.dispatchEvent(new CustomEventImpl("resumed", { detail }));
  }

  #onAck(digits) {
    if (!/^[0-9]{1,20}$/.test(digits)) return this.#protocolError("bad acknowledgement");
    const count = Number(digits);
    if (count < this.#ackedOut) return; // older than what we know
    if (count > this.#ackedOut + this.#onWire) {
      return this.#protocolError(`holdfast acknowledged ${count} messages; ${this.#ackedOut + this.#onWire} were sent`);
    }
    const n = count - this.#ackedOut;
    this.#forget(n);
    this.#onWire -= n;
  }

  /** Drops the first `n` queued messages: holdfast has them. */
  #forget(n) {
    if (n <= 0) return;
    const gone = this.#queue.splice(0, n);
    for (const entry of gone) this.#queuedBytes -= entry.size;
    this.#ackedOut += n;
  }

  #onInnerClose(code, reason, wasClean) {
    clearTimeout(this.#connectTimer);
    this.#connectTimer = null;
    clearTimeout(this.#ackTimer);
    this.#ackTimer = null;
    this.#ws = null;
    this.#attached = false;
    this.#generation++;
    if (this.#shouldFallBack(code)) {
      // Offering holdfast.resume.v1 to a server that selects no subprotocol fails the
      // connection (ws, Chrome, the WHATWG spec): try once as a plain WebSocket.
      this.#plainOnly = true;
      this.#connect(false);
      return;
    }
    if (this.#closeRequested || this.#mode !== "resume" || this.#session === null) {
      // The application's close, a plain WebSocket's close, or a first connection that
      // never got its hello (refused, or never connected): the end.
      this.#finish(code, reason, wasClean, code === 1006);
      return;
    }
    const moving = this.#moving;
    this.#moving = false;
    if ((moving && code === 1012) || code === 1006 || code === 1015) {
      this.#lost({ code, reason, moving: moving && code === 1012 });
      return;
    }
    // A close frame: a refusal (1008 resume-rejected), the give-up code, or the
    // application's own close from the other side. The session's end.
    this.#finish(code, reason, wasClean, false);
  }

  #shouldFallBack(code) {
    return (
      this.#plainFallback &&
      !this.#plainOnly &&
      !this.#closeRequested &&
      code === 1006 &&
      !this.#innerOpened &&
      this.#mode === "pending" &&
      this.#appProtocols.length === 0
    );
  }

  // ---- resuming ----------------------------------------------------------------------

  #lost(detail) {
    if (this.#readyState !== OPEN) return;
    const first = this.#resumingSince === 0;
    if (first) {
      this.#resumingSince = Date.now();
      this.#attempt = 0;
      this.dispatchEvent(new CustomEventImpl("resuming", { detail }));
      if (this.#readyState !== OPEN) return; // closed from the listener
    } else if (detail.moving) {
      this.#attempt = 0; // told to move: at once
    }
    const elapsed = Date.now() - this.#resumingSince;
    if (elapsed >= this.#maxRetryTime) {
      this.#finish(1006, "holdfast: the session could not be resumed within maxRetryTime", false, true);
      return;
    }
    // At once first, then full jitter: random in [0, min(max, initial * 2^(n-1))].
    let delay = 0;
    if (this.#attempt > 0) {
      const ceiling = Math.min(this.#retryMaxDelay, this.#retryInitialDelay * 2 ** (this.#attempt - 1));
      delay = Math.random() * ceiling;
    }
    delay = Math.min(delay, this.#maxRetryTime - elapsed);
    this.#attempt++;
    clearTimeout(this.#retryTimer);
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = null;
      if (this.#readyState === OPEN) this.#connect(false);
    }, delay);
  }

  #protocolError(why) {
    this.#dropInner(1002);
    this.#finish(1002, why.slice(0, 120), false, true);
  }

  #finish(code, reason, wasClean, withError) {
    if (this.#readyState === CLOSED) return;
    this.#readyState = CLOSED;
    clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    clearTimeout(this.#ackTimer);
    this.#ackTimer = null;
    clearTimeout(this.#connectTimer);
    this.#connectTimer = null;
    if (this.#ws) this.#dropInner();
    this.#replayOut = [];
    if (withError) this.dispatchEvent(new Event("error"));
    this.dispatchEvent(
      new CloseEventImpl("close", { code: code ?? 1005, reason: reason || "", wasClean: Boolean(wasClean) }),
    );
  }

  // ---- sending -----------------------------------------------------------------------

  #readBlob(entry) {
    entry.blob.arrayBuffer().then(
      (buffer) => {
        entry.bytes = new Uint8Array(buffer);
        entry.blob = null;
        entry.pending = false;
        this.#flush();
      },
      () => {
        if (this.#readyState === CLOSED) return;
        this.#dropInner(1011);
        this.#finish(1006, "a Blob passed to send() could not be read", false, true);
      },
    );
  }

  /** Sends what is due on the current connection, in order. */
  #flush() {
    const ws = this.#ws;
    if (!ws || ws.readyState !== OPEN) return;
    if (this.#mode === "plain") {
      while (this.#queue.length > 0 && !this.#queue[0].pending) {
        const entry = this.#queue.shift();
        this.#queuedBytes -= entry.size;
        ws.send(entry.text !== null ? entry.text : entry.bytes);
      }
      return;
    }
    if (!this.#attached) return;
    while (this.#replayOut.length > 0) {
      if (this.#replayOut[0].pending) return;
      this.#transmit(ws, this.#replayOut.shift(), "p", 0x70);
    }
    while (this.#onWire < this.#queue.length) {
      const entry = this.#queue[this.#onWire];
      if (entry.pending) return;
      this.#transmit(ws, entry, "d", 0x64);
      this.#onWire++;
    }
  }

  #transmit(ws, entry, kind, kindByte) {
    if (entry.text !== null) {
      ws.send(kind + entry.text);
      return;
    }
    const out = new Uint8Array(entry.bytes.byteLength + 1);
    out[0] = kindByte;
    out.set(entry.bytes, 1);
    ws.send(out);
  }

  // ---- receiving ---------------------------------------------------------------------

  #deliver(data) {
    if (this.#readyState !== OPEN) return; // as the browser: nothing after close()
    let value = data;
    if (typeof data !== "string" && this.#binaryType === "blob" && typeof globalThis.Blob === "function") {
      value = new globalThis.Blob([data]);
    }
    this.dispatchEvent(new MessageEventImpl("message", { data: value, origin: this.#origin }));
  }

  #ackSoon() {
    if (this.#received - this.#ackedIn >= ACK_EVERY) {
      this.#sendAck();
    } else if (this.#ackTimer === null) {
      this.#ackTimer = setTimeout(() => {
        this.#ackTimer = null;
        if (this.#received > this.#ackedIn) this.#sendAck();
      }, ACK_AFTER_MS);
    }
  }

  #sendAck() {
    const ws = this.#ws;
    // holdfast takes replays (p) only before any other frame of a moved connection.
    if (!ws || ws.readyState !== OPEN || !this.#attached || this.#replayOut.length > 0) return;
    clearTimeout(this.#ackTimer);
    this.#ackTimer = null;
    ws.send("a" + this.#received);
    this.#ackedIn = this.#received;
  }
}

for (const [name, value] of Object.entries({ CONNECTING, OPEN, CLOSING, CLOSED })) {
  Object.defineProperty(HoldfastWebSocket.prototype, name, { value, enumerable: true });
}
export default HoldfastWebSocket;
