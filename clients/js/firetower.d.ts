// Type declarations for firetower.js (the Firetower JavaScript client). docs/clients.md.

/** A message's place in its topic's stream (docs/protocol.md §5.7). */
export interface Position {
  epoch: number;
  seq: number;
}

/** Close codes the edge sends (docs/protocol.md §5.9). */
export declare const CloseCode: Readonly<{
  GOING_AWAY: 1001;
  POLICY: 1008;
  NO_PONG: 4000;
  SLOW_CONSUMER: 4001;
  KICKED: 4002;
  PUBLISH_UNKNOWN: 4003;
}>;

/** The topic of the library's liveness probe; subscribing to it is refused. */
export declare const PROBE_TOPIC: '$firetower/probe';

/** The edge's topic rules: the reason a topic is invalid, or null. */
export declare function topicError(topic: string): string | null;

/** An error frame from the edge (its `code`: `denied`, `unavailable`, `overloaded`,
 * `rate_limited`, `too_many_topics`, …) or the library's own: `disconnected`, `closed`,
 * `kicked`, `auth`, `queue_full`, `unsubscribed`, `bad_topic`, `bad_frame`. */
export declare class FiretowerError extends Error {
  constructor(code: string, message: string, topic?: string | null);
  readonly code: string;
  readonly topic: string | null;
}

/** The browser WebSocket API, as much of it as the client uses. */
export interface WebSocketLike {
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason?: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
}

export interface FiretowerOptions {
  /** A client token (JWT), sent as `?token=` on the upgrade. */
  token?: string;
  /** Gives a fresh token: called before a handshake when there is none, when the one held
   * is expired (its `exp`), or after a handshake failed (browsers hide the 401). */
  getToken?: () => Promise<string> | string;
  /** A WebSocket constructor (default: globalThis.WebSocket). */
  WebSocket?: new (url: string) => WebSocketLike;
  /** Backoff between reconnects: doubles from min to max, each delay drawn in [base/2, base]. Defaults 500 / 30000. */
  minReconnectDelayMs?: number;
  maxReconnectDelayMs?: number;
  /** After a 1001 (edge shutting down) or 4003 close: reconnect within this (default 500). */
  drainReconnectJitterMs?: number;
  /** Silence before the client probes the connection (default 15000). */
  heartbeatIntervalMs?: number;
  /** Silence after a probe before the connection counts as dead (default 5000). */
  heartbeatTimeoutMs?: number;
  /** Longest handshake (default 10000). */
  connectTimeoutMs?: number;
  /** A publish the edge does not answer (an edge too old to answer numbered publishes) resolves null after this (default 16000). */
  publishTimeoutMs?: number;
  /** Publishes waiting for a connection (default 1000). */
  maxQueuedPublishes?: number;
  /** Topics per subscribe frame (default 256, the edge's max_topics_per_conn). */
  maxTopicsPerFrame?: number;
  /** A token this close to its `exp` counts as expired (default 5000). */
  tokenExpiryMarginMs?: number;
  /** Clock and randomness, for tests. */
  now?: () => number;
  random?: () => number;
}

export interface MessageMeta extends Position {
  topic: string;
}

/** How a subscribe was acked. `recovered`: null for a first subscribe without `since`;
 * true when the messages after the position followed; false when they could not be
 * recovered (then `position`, when the edge knew it, is where the topic is now). */
export interface SubscribeAck {
  topic: string;
  recovered: boolean | null;
  position: Position | null;
}

export interface SubscribedEvent extends SubscribeAck {
  /** True for the acks after a reconnect. */
  resubscribed: boolean;
}

export interface SubscribeOptions {
  /** Recover the messages after this position (saved from an earlier session). */
  since?: Position;
  /** Called on every ack of this topic, including the ones after each reconnect. */
  onSubscribed?: (event: SubscribedEvent) => void;
}

export interface DisconnectedEvent {
  code: number;
  reason: string;
  /** False when the handshake failed (refused token, edge down, timeout). */
  wasOpen: boolean;
  willReconnect: true;
  delayMs: number;
}

export interface ClosedEvent {
  code: number;
  reason: string;
  /** Why: `closed` (close()), `kicked` (4002), `auth` (token refused, no getToken). */
  error: string;
}

export type ClientState = 'idle' | 'connecting' | 'open' | 'waiting' | 'closed';

export interface ClientEvents {
  state: { state: ClientState };
  open: { url: string };
  disconnected: DisconnectedEvent;
  subscribed: SubscribedEvent;
  error: FiretowerError | Error;
  closed: ClosedEvent;
}

export declare class FiretowerClient {
  /** One edge URL (ws://host:port/ws) or several: each reconnect moves to the next. */
  constructor(url: string | string[], options?: FiretowerOptions);
  readonly state: ClientState;
  readonly url: string;
  readonly closeReason: ClosedEvent | null;
  readonly stats: { connects: number; handshakeFailures: number; duplicatesDropped: number };
  /** Resolves once a connection is open; rejects if the client closes for good first. */
  connect(): Promise<void>;
  /** Drops the connection, keeps subscriptions and positions; connect() resumes. */
  disconnect(): void;
  /** Drops the connection and reconnects now. */
  reconnect(): void;
  /** Closes for good. */
  close(): void;
  subscribe(
    topic: string,
    handler?: (data: unknown, meta: MessageMeta) => void,
    options?: SubscribeOptions,
  ): Promise<SubscribeAck>;
  unsubscribe(topic: string, handler?: (data: unknown, meta: MessageMeta) => void): Promise<void>;
  /** Resolves with the message's position when the edge answers the publish, or null
   * once publishTimeoutMs passed unanswered (an older edge); rejects with a FiretowerError. */
  publish(topic: string, data: unknown): Promise<Position | null>;
  /** The position of the last message handled on the topic. */
  position(topic: string): Position | null;
  on<K extends keyof ClientEvents>(event: K, listener: (value: ClientEvents[K]) => void): () => void;
}
