// Types for holdfast.mjs: a drop-in for the browser's WebSocket whose session survives
// dropped connections and holdfast rolling updates (holdfast.resume.v1).

/** The constructor of a WebSocket implementation: the browser's, Node's global, or `ws`. */
export interface WebSocketConstructor {
  new (url: string, protocols?: string | string[], options?: any): WebSocketLike;
}

/** What the library uses of a WebSocket implementation (WHATWG-style handlers). */
export interface WebSocketLike {
  readonly readyState: number;
  readonly protocol: string;
  readonly extensions: string;
  readonly bufferedAmount: number;
  binaryType: string;
  onopen: ((event: any) => void) | null;
  onmessage: ((event: any) => void) | null;
  onclose: ((event: any) => void) | null;
  onerror: ((event: any) => void) | null;
  send(data: string | ArrayBufferLike | ArrayBufferView | Blob): void;
  close(code?: number, reason?: string): void;
}

export interface HoldfastOptions {
  /**
   * The WebSocket implementation. Default: `globalThis.WebSocket` (browsers, Node 22+).
   * In Node 18/20: `import WebSocket from "ws"` and pass it here.
   */
  WebSocket?: WebSocketConstructor;
  /** Passed as the implementation's third constructor argument (e.g. `ws`'s `headers`). */
  webSocketOptions?: unknown;
  /**
   * How long (ms) to keep trying to resume after a connection drops before giving up with
   * `close` 1006. Default 30000 (holdfast's default `resume.client_hold` is 30 s).
   */
  maxRetryTime?: number;
  /** Backoff after the first immediate retry: full jitter in [0, min(max, initial·2ⁿ)]. Default 100 ms. */
  retryInitialDelay?: number;
  /** Backoff ceiling. Default 5000 ms. */
  retryMaxDelay?: number;
  /** A connection attempt (handshake and hello) taking longer is abandoned. Default 10000 ms; 0 = none. */
  connectTimeout?: number;
  /**
   * When the application offers no subprotocol and the first connection fails before it
   * opens, connect once more without offering holdfast.resume.v1 (a server that selects no
   * subprotocol is refused by `ws`, Chrome and the WHATWG spec when one was offered).
   * Default true.
   */
  plainFallback?: boolean;
  /** The initial `binaryType`. Default: "blob" on a browser-like implementation, else "arraybuffer". */
  binaryType?: BinaryType;
}

export type BinaryType = "blob" | "arraybuffer";

/** `resuming`'s detail: why the connection was lost. */
export interface ResumingDetail {
  /** The lost connection's close code: 1006 (dropped) or 1012 (told to move). */
  code: number;
  reason: string;
  /** holdfast drained and told the client to move (`m`). */
  moving: boolean;
}

/** `resumed`'s detail. */
export interface ResumedDetail {
  /** `attached`: the same holdfast, the upstream untouched; `moved`: a new upstream connection. */
  state: "attached" | "moved";
  session: string;
  /** Connection attempts it took. */
  attempts: number;
  /** Messages sent again (not acknowledged before, or queued while away). */
  resent: number;
  /** Opening messages replayed (`p`) after a move. */
  replayed: number;
}

// The events' shapes, declared here so that no DOM lib is needed (Node has no CloseEvent
// before 23; the library supplies one).
export interface HoldfastMessageEvent extends Event {
  /** A string, an ArrayBuffer (binaryType "arraybuffer") or a Blob (binaryType "blob"). */
  readonly data: any;
  readonly origin: string;
}
export interface HoldfastCloseEvent extends Event {
  readonly code: number;
  readonly reason: string;
  readonly wasClean: boolean;
}
export interface HoldfastCustomEvent<T> extends Event {
  readonly detail: T;
}

/** addEventListener's options (declared here: Node's types name them differently). */
export interface HoldfastListenerOptions {
  capture?: boolean;
  once?: boolean;
  passive?: boolean;
  signal?: AbortSignal;
}
export type HoldfastListener = ((event: Event) => any) | { handleEvent(event: Event): any };

export interface HoldfastEventMap {
  open: Event;
  message: HoldfastMessageEvent;
  close: HoldfastCloseEvent;
  error: Event;
  resuming: HoldfastCustomEvent<ResumingDetail>;
  resumed: HoldfastCustomEvent<ResumedDetail>;
}

export declare class HoldfastWebSocket extends EventTarget {
  constructor(url: string | URL, protocols?: string | string[], options?: HoldfastOptions);

  static readonly CONNECTING: 0;
  static readonly OPEN: 1;
  static readonly CLOSING: 2;
  static readonly CLOSED: 3;
  readonly CONNECTING: 0;
  readonly OPEN: 1;
  readonly CLOSING: 2;
  readonly CLOSED: 3;

  /** The absolute URL (http(s) turned into ws(s)). */
  readonly url: string;
  /**
   * CONNECTING until the first hello (or a plain server's open), OPEN for the whole session
   * (also while resuming: sends are queued), CLOSING after close(), CLOSED after `close`.
   */
  readonly readyState: 0 | 1 | 2 | 3;
  /** The application's subprotocol (from the hello), "" when none. */
  readonly protocol: string;
  readonly extensions: string;
  /** Bytes sent and not acknowledged by holdfast yet, plus those queued (resumable). */
  readonly bufferedAmount: number;
  binaryType: BinaryType;
  /** The session id (the upstream's X-Holdfast-Session); null before the hello or when plain. */
  readonly session: string | null;
  /** True when holdfast selected holdfast.resume.v1; false: a plain WebSocket. */
  readonly resumable: boolean;

  send(data: string | ArrayBufferLike | ArrayBufferView | Blob): void;
  close(code?: number, reason?: string): void;

  onopen: ((this: HoldfastWebSocket, event: Event) => any) | null;
  onmessage: ((this: HoldfastWebSocket, event: HoldfastMessageEvent) => any) | null;
  onclose: ((this: HoldfastWebSocket, event: HoldfastCloseEvent) => any) | null;
  onerror: ((this: HoldfastWebSocket, event: Event) => any) | null;
  onresuming: ((this: HoldfastWebSocket, event: HoldfastCustomEvent<ResumingDetail>) => any) | null;
  onresumed: ((this: HoldfastWebSocket, event: HoldfastCustomEvent<ResumedDetail>) => any) | null;

  addEventListener<K extends keyof HoldfastEventMap>(
    type: K,
    listener: (this: HoldfastWebSocket, event: HoldfastEventMap[K]) => any,
    options?: boolean | HoldfastListenerOptions,
  ): void;
  addEventListener(
    type: string,
    listener: HoldfastListener | null,
    options?: boolean | HoldfastListenerOptions,
  ): void;
  removeEventListener<K extends keyof HoldfastEventMap>(
    type: K,
    listener: (this: HoldfastWebSocket, event: HoldfastEventMap[K]) => any,
    options?: boolean | { capture?: boolean },
  ): void;
  removeEventListener(
    type: string,
    listener: HoldfastListener | null,
    options?: boolean | { capture?: boolean },
  ): void;
}

export default HoldfastWebSocket;
