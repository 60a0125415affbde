// Firetower JavaScript client: one WebSocket to an edge, with reconnect, resubscribe,
// recovery of missed messages, dead-connection detection and publish answers.
//
// Plain ES module, no dependencies, no build step. Works in browsers and in Node (>= 22,
// or 20/21 with --experimental-websocket; or pass any WebSocket constructor with the
// browser API, e.g. the `ws` package, as `options.WebSocket`). Types: firetower.d.ts.
// Usage and the protocol's limits as seen from here: docs/clients.md. The wire protocol
// is docs/protocol.md §5; nothing here adds to it.
//
//   const client = new FiretowerClient('ws://127.0.0.1:9999/ws', { token, getToken });
//   await client.subscribe('chat/lobby', (data, meta) => ..., { onSubscribed: (info) => ... });
//   const position = await client.publish('chat/lobby', { text: 'hi' });
//
// Shape: every input (a frame, a close, a timer) goes through one method that updates the
// state and sends what it must; the only clocks are setTimeout and `options.now`, the
// only randomness `options.random` (tests inject both where they need to).

/** Close codes the edge sends (docs/protocol.md §5.9). */
export const CloseCode = Object.freeze({
  GOING_AWAY: 1001, // "edge shutting down": the edge drains; reconnect at once elsewhere
  POLICY: 1008, // rate limit exceeded
  NO_PONG: 4000, // the edge heard nothing from us (also used here for our own probe timeout)
  SLOW_CONSUMER: 4001,
  KICKED: 4002, // KickUser: never reconnect on our own
  PUBLISH_UNKNOWN: 4003, // a publish's outcome is unknown; the edge asks us to reconnect
});

/** A topic the library uses for its liveness probe; applications cannot subscribe to it. */
export const PROBE_TOPIC = '$firetower/probe';

const DEFAULTS = {
  // Backoff between reconnect attempts: base doubles from min to max; each delay is drawn
  // from [base/2, base] so that clients cut off together do not come back together.
  minReconnectDelayMs: 500,
  maxReconnectDelayMs: 30000,
  // After a drain (1001) or an "outcome unknown" close (4003) the edge asks for a reconnect
  // now; a little jitter still spreads a whole edge's clients over the others.
  drainReconnectJitterMs: 500,
  // The edge pings every 10 s, but neither browsers nor Node show pings to scripts. So
  // after this much silence the client asks for an answer itself (an unSubscribe of
  // PROBE_TOPIC, acked at once by any edge) ...
  heartbeatIntervalMs: 15000,
  // ... and a connection that stays silent this much longer is dead: close, reconnect.
  heartbeatTimeoutMs: 5000,
  // A handshake (TCP, HTTP upgrade, token check) that takes longer is abandoned.
  connectTimeoutMs: 10000,
  // Each publish carries a number (`id`) that the edge answers with a `published` frame
  // (its position) or an error frame carrying it, within publish_answer_timeout_ms (15 s by
  // default) or it closes with 4003. An edge too old to answer numbered publishes leaves
  // them unanswered: they resolve (with no position) once this long has passed.
  publishTimeoutMs: 16000,
  // Publishes made while not connected wait for the connection, at most this many.
  maxQueuedPublishes: 1000,
  // The edge refuses frames naming more topics (max_topics_per_conn, default 256).
  maxTopicsPerFrame: 256,
  // A token whose `exp` is this close counts as expired (clock skew between us and the edge).
  tokenExpiryMarginMs: 5000,
};

/** An error the edge sent (`code` is the protocol's), or one of the library's own codes:
 * `disconnected` (the connection closed before the publish was answered: it may or may not
 * have been delivered), `closed` (close() was called), `kicked`, `auth` (the token was
 * refused and no fresh one can be had), `queue_full`, `unsubscribed`. */
export class FiretowerError extends Error {
  constructor(code, message, topic = null) {
    super(message);
    this.name = 'FiretowerError';
    this.code = code;
    this.topic = topic;
  }
}

/** The same rules as the edge (proto/src/topic.rs validate_topic), so that a bad topic
 * fails here and never reaches the wire, where its error could not be told apart from
 * another operation's on the same name. Returns the reason, or null when valid. */
export function topicError(topic) {
  if (typeof topic !== 'string' || topic.length === 0) return 'topic is empty';
  const bytes = new TextEncoder().encode(topic).length;
  if (bytes > 256) return `topic is ${bytes} bytes long; the limit is 256`;
  // Unicode category Cc, what Rust's char::is_control means.
  if (/[\u0000-\u001f\u007f-\u009f]/.test(topic)) return 'topic contains a control character';
  if (topic.includes(',')) return "topic contains ','; ',' separates topics in the client protocol";
  if (topic.includes('#')) return "topic contains '#'; '#' is reserved for hot sub-topics";
  return null;
}

/** Whether position a comes after position b (lexicographic on (epoch, seq), §5.7). */
function after(a, b) {
  return a.epoch > b.epoch || (a.epoch === b.epoch && a.seq > b.seq);
}

/** The `exp` claim of a JWT in ms, or null when it has none or is not a JWT we can read. */
function tokenExpiry(token) {
  try {
    const payload = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const json = JSON.parse(atob(payload + '='.repeat((4 - (payload.length % 4)) % 4)));
    return typeof json.exp === 'number' ? json.exp * 1000 : null;
  } catch {
    return null;
  }
}

export class FiretowerClient {
  /**
   * @param {string|string[]} url one edge's WebSocket URL (ws://host:port/ws), or several:
   *   each reconnect moves on to the next one.
   * @param {object} [options] see firetower.d.ts
   */
  constructor(url, options = {}) {
    this.urls = Array.isArray(url) ? [...url] : [url];
    if (this.urls.length === 0) throw new TypeError('at least one URL is needed');
    this.options = { ...DEFAULTS, ...options };
    this.WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this.WebSocket !== 'function') {
      throw new TypeError(
        'no WebSocket: use Node >= 22 (or --experimental-websocket), or pass options.WebSocket',
      );
    }
    this.now = options.now ?? (() => Date.now());
    this.random = options.random ?? Math.random;
    this.token = options.token ?? null;

    /** 'idle' | 'connecting' | 'open' | 'waiting' (to reconnect) | 'closed' (for good) */
    this.state = 'idle';
    /** Why the client closed for good: {code, reason}, once state is 'closed'. */
    this.closeReason = null;
    this.urlIndex = 0;
    this.ws = null;
    this.attempts = 0; // failed attempts since the last open, for the backoff
    this.generation = 0; // bumped by every attempt and every stop: a stale attempt gives up
    this.freshTokenNeeded = false; // the last handshake failed: ask getToken again
    this.timers = { reconnect: null, connect: null, heartbeat: null };
    this.lastHeard = 0;
    this.probeSentAt = 0;
    this.listeners = new Map();
    this.openWaiters = [];
    this.stats = { connects: 0, handshakeFailures: 0, duplicatesDropped: 0 };

    /** topic → {handlers, onSubscribed[], position, acked, everAcked, sentSince, waiters[]} */
    this.subs = new Map();
    /** Publishes not yet on the wire, in order: {topic, text, resolve, reject}. */
    this.outbox = [];
    /** topic → publishes on the wire, oldest first: {id, resolve, reject, timer}. */
    this.inflight = new Map();
    /** The number the next publish carries (the edge answers it: `published` or an error). */
    this.nextPublishId = 1;
    /** topic → unsubscribe promises waiting for their unSubscribed ack. */
    this.unsubWaiters = new Map();
  }

  // ---- public API ----------------------------------------------------------------------

  /** Starts connecting (again, after disconnect()). Resolves once a connection is open;
   * rejects if the client closes for good first. */
  connect() {
    if (this.state === 'closed') return Promise.reject(this.#closedError());
    const opened = new Promise((resolve, reject) => this.openWaiters.push({ resolve, reject }));
    if (this.state === 'open') this.#settleOpenWaiters(null);
    if (this.state === 'idle') this.#attempt();
    return opened;
  }

  /** Drops the connection but keeps subscriptions, positions and queued publishes; connect()
   * resumes (and recovers what was missed meanwhile). */
  disconnect() {
    if (this.state === 'closed' || this.state === 'idle') return;
    this.#clearTimer('reconnect');
    this.generation += 1;
    this.#dropSocket(1000, 'disconnect() called');
    this.#lostConnection(1000, 'disconnect() called', false);
    this.#nextUrl();
    this.#setState('idle');
  }

  /** Closes for good: no reconnect; pending operations reject with code `closed`. */
  close() {
    if (this.state === 'closed') return;
    this.generation += 1;
    this.#dropSocket(1000, 'close() called');
    this.#lostConnection(1000, 'close() called', false);
    this.#closeForGood(1000, 'close() called', 'closed');
  }

  /** Drops the current connection and reconnects now (e.g. when the device is back online). */
  reconnect() {
    if (this.state === 'closed') return;
    this.#clearTimer('reconnect');
    if (this.ws) {
      this.#dropSocket(1000, 'reconnect() called');
      this.#lostConnection(1000, 'reconnect() called', false);
    }
    this.#nextUrl();
    this.#attempt();
  }

  /**
   * Subscribes `handler(data, {topic, epoch, seq})` to `topic`. Resolves with the first
   * ack: {topic, recovered, position}. `options.since` recovers from a position saved
   * earlier; `options.onSubscribed(info)` is called on every ack, including the ones after
   * each reconnect, where `recovered` says whether the missed messages followed.
   */
  subscribe(topic, handler, options = {}) {
    const invalid = topic === PROBE_TOPIC ? 'the topic is reserved by the client library' : topicError(topic);
    if (invalid) return Promise.reject(new FiretowerError('bad_topic', invalid, topic));
    if (this.state === 'closed') return Promise.reject(this.#closedError());
    let sub = this.subs.get(topic);
    const fresh = !sub;
    if (fresh) {
      sub = {
        handlers: new Set(),
        onSubscribed: [],
        position: options.since ? { epoch: options.since.epoch, seq: options.since.seq } : null,
        acked: false,
        everAcked: false,
        sentSince: false,
        waiters: [],
      };
      this.subs.set(topic, sub);
    }
    if (handler) sub.handlers.add(handler);
    if (options.onSubscribed) sub.onSubscribed.push(options.onSubscribed);
    if (!fresh && sub.everAcked) {
      // Already subscribed on the edge: nothing to send; this caller is answered now.
      return Promise.resolve({ topic, recovered: null, position: sub.position });
    }
    const acked = new Promise((resolve, reject) => sub.waiters.push({ resolve, reject }));
    if (fresh && this.state === 'open') this.#sendSubscribe([topic]);
    return acked;
  }

  /** Removes `handler` (or every handler) from `topic`; when none is left, unsubscribes on
   * the edge. Resolves once the edge acked it (at once when not connected). */
  unsubscribe(topic, handler) {
    const sub = this.subs.get(topic);
    if (!sub) return Promise.resolve();
    if (handler) sub.handlers.delete(handler);
    if (handler && sub.handlers.size > 0) return Promise.resolve();
    this.subs.delete(topic);
    for (const w of sub.waiters) w.reject(new FiretowerError('unsubscribed', 'unsubscribed before the ack', topic));
    if (this.state !== 'open') return Promise.resolve();
    const done = new Promise((resolve) => {
      const list = this.unsubWaiters.get(topic) ?? [];
      list.push(resolve);
      this.unsubWaiters.set(topic, list);
    });
    this.#send({ type: 'unSubscribe', topic });
    // Publishes held for this topic's ack can go now.
    this.#flushOutbox();
    return done;
  }

  /**
   * Publishes `data` (any JSON value) to `topic`. Resolves with the message's position
   * {epoch, seq} when the edge answers it (`published`), or with null once
   * `publishTimeoutMs` passed without an answer (an edge too old to answer numbered
   * publishes). Rejects with a FiretowerError carrying the edge's code
   * (`denied`, `unavailable`, `overloaded`, `rate_limited`, …), or `disconnected` when the
   * connection closed before the answer (the message may or may not have been delivered).
   */
  publish(topic, data) {
    const invalid = topicError(topic);
    if (invalid) return Promise.reject(new FiretowerError('bad_topic', invalid, topic));
    if (this.state === 'closed') return Promise.reject(this.#closedError());
    const text = JSON.stringify(data === undefined ? null : data);
    return new Promise((resolve, reject) => {
      if (this.outbox.length >= this.options.maxQueuedPublishes) {
        reject(new FiretowerError('queue_full', `${this.outbox.length} publishes already wait for the connection`, topic));
        return;
      }
      this.outbox.push({ topic, text, resolve, reject });
      this.#flushOutbox();
    });
  }

  /** The position of the last message handled on `topic`, or null. */
  position(topic) {
    const p = this.subs.get(topic)?.position;
    return p ? { ...p } : null;
  }

  /** The URL of the current (or next) connection. */
  get url() {
    return this.urls[this.urlIndex];
  }

  /** Listens to an event: 'state', 'open', 'disconnected', 'subscribed', 'error',
   * 'closed'. Returns a function that removes the listener. */
  on(event, listener) {
    const set = this.listeners.get(event) ?? new Set();
    set.add(listener);
    this.listeners.set(event, set);
    return () => set.delete(listener);
  }

  // ---- connecting ------------------------------------------------------------------------

  async #attempt() {
    const generation = ++this.generation;
    this.#setState('connecting');
    let token;
    try {
      token = await this.#tokenForAttempt();
    } catch (e) {
      if (generation !== this.generation) return;
      this.#emit('error', new FiretowerError('auth', `getToken failed: ${e?.message ?? e}`));
      this.#scheduleReconnect(this.#backoffDelay());
      return;
    }
    // close(), disconnect() or reconnect() may have run while the token was fetched.
    if (generation !== this.generation) return;
    const base = this.url;
    const url = token ? `${base}${base.includes('?') ? '&' : '?'}token=${encodeURIComponent(token)}` : base;
    let ws;
    try {
      ws = new this.WebSocket(url);
    } catch (e) {
      this.#emit('error', e);
      this.stats.handshakeFailures += 1;
      this.#scheduleReconnect(this.#backoffDelay());
      return;
    }
    this.ws = ws;
    let opened = false;
    ws.onopen = () => {
      if (this.ws !== ws) return;
      opened = true;
      this.#onOpen();
    };
    ws.onmessage = (event) => {
      if (this.ws !== ws) return;
      this.#onMessage(event.data);
    };
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.#onClose(event.code, event.reason ?? '', opened);
    };
    ws.onerror = () => {}; // a close event always follows, and carries what we need
    this.#setTimer('connect', this.options.connectTimeoutMs, () => {
      if (this.ws !== ws || opened) return;
      this.#dropSocket(4000, 'connect timeout');
      this.#onClose(1006, `no connection within ${this.options.connectTimeoutMs} ms`, false);
    });
  }

  /** The token for the next handshake: the one we have, unless it is known to be expired
   * or was refused, and getToken can give a fresh one. */
  async #tokenForAttempt() {
    const { getToken } = this.options;
    if (!getToken) return this.token;
    const expiry = this.token ? tokenExpiry(this.token) : null;
    const expired = expiry !== null && expiry - this.options.tokenExpiryMarginMs <= this.now();
    if (!this.token || expired || this.freshTokenNeeded) {
      this.token = await getToken();
      this.freshTokenNeeded = false;
    }
    return this.token;
  }

  #onOpen() {
    this.#clearTimer('connect');
    this.attempts = 0;
    this.stats.connects += 1;
    this.#setState('open');
    this.lastHeard = this.now();
    this.probeSentAt = 0;
    this.#armHeartbeat();
    // Resubscribe everything, with the positions we hold, before any publish goes out.
    const topics = [...this.subs.keys()];
    for (let i = 0; i < topics.length; i += this.options.maxTopicsPerFrame) {
      this.#sendSubscribe(topics.slice(i, i + this.options.maxTopicsPerFrame));
    }
    this.#flushOutbox();
    this.#emit('open', { url: this.url });
    this.#settleOpenWaiters(null);
  }

  #onClose(code, reason, wasOpen) {
    this.#clearTimer('connect');
    this.#lostConnection(code, reason, wasOpen);
    if (this.state === 'closed' || this.state === 'idle') return;
    if (code === CloseCode.KICKED) {
      // A kick is the server's decision about this user: coming back would undo it.
      this.#closeForGood(code, reason || 'kicked by the server', 'kicked');
      return;
    }
    let delay;
    if (!wasOpen) {
      // Browsers hide the HTTP status of a refused upgrade (401 for a bad token looks like
      // any network failure), so a failed handshake asks getToken for a fresh token next
      // time; without getToken, a token we can see is expired ends the client.
      this.stats.handshakeFailures += 1;
      this.freshTokenNeeded = true;
      const expiry = this.token ? tokenExpiry(this.token) : null;
      if (!this.options.getToken && expiry !== null && expiry <= this.now()) {
        this.#closeForGood(code, 'the token has expired and no getToken was given', 'auth');
        return;
      }
      delay = this.#backoffDelay();
    } else if (code === CloseCode.GOING_AWAY || code === CloseCode.PUBLISH_UNKNOWN) {
      delay = this.random() * this.options.drainReconnectJitterMs;
    } else {
      delay = this.#backoffDelay();
    }
    this.#nextUrl();
    this.#emit('disconnected', { code, reason, wasOpen, willReconnect: true, delayMs: delay });
    this.#scheduleReconnect(delay);
  }

  /** What every end of a connection does: publishes on the wire fail (their outcome is
   * unknown), subscriptions wait for the next connection's acks. */
  #lostConnection(code, reason, wasOpen) {
    this.#clearTimer('heartbeat');
    this.#clearTimer('connect');
    for (const [topic, list] of this.inflight) {
      for (const p of list) {
        clearTimeout(p.timer);
        p.reject(new FiretowerError('disconnected', `the connection closed (${code}${reason ? ': ' + reason : ''}) before the publish was answered; it may or may not have been delivered`, topic));
      }
    }
    this.inflight.clear();
    for (const sub of this.subs.values()) {
      sub.acked = false;
      sub.sentSince = false;
    }
    for (const list of this.unsubWaiters.values()) list.forEach((resolve) => resolve());
    this.unsubWaiters.clear();
    if (wasOpen) this.#setState('waiting');
  }

  #backoffDelay() {
    const { minReconnectDelayMs: min, maxReconnectDelayMs: max } = this.options;
    const base = Math.min(max, min * 2 ** this.attempts);
    this.attempts += 1;
    return base / 2 + (this.random() * base) / 2;
  }

  #scheduleReconnect(delay) {
    this.#setState('waiting');
    this.#setTimer('reconnect', delay, () => this.#attempt());
  }

  #nextUrl() {
    this.urlIndex = (this.urlIndex + 1) % this.urls.length;
  }

  #closeForGood(code, reason, errorCode) {
    for (const name of Object.keys(this.timers)) this.#clearTimer(name);
    this.closeReason = { code, reason, error: errorCode };
    this.#setState('closed');
    const error = this.#closedError();
    for (const p of this.outbox) p.reject(error);
    this.outbox = [];
    for (const sub of this.subs.values()) for (const w of sub.waiters) w.reject(error);
    for (const sub of this.subs.values()) sub.waiters = [];
    this.#settleOpenWaiters(error);
    this.#emit('closed', { code, reason, error: errorCode });
  }

  #closedError() {
    const r = this.closeReason ?? { code: 1000, reason: 'closed', error: 'closed' };
    return new FiretowerError(r.error, `the client is closed: ${r.reason} (${r.code})`);
  }

  #dropSocket(code, reason) {
    const ws = this.ws;
    this.ws = null;
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    try {
      ws.close(code === 1000 ? 1000 : 4000, reason);
    } catch {
      // A socket still connecting may refuse close() codes in some implementations.
      try { ws.close(); } catch { /* nothing more to do */ }
    }
  }

  // ---- heartbeats ------------------------------------------------------------------------

  // Any frame shows the connection is alive. After heartbeatIntervalMs of silence the
  // client sends the probe (an unSubscribe of PROBE_TOPIC, which the edge acks at once
  // without touching any subscription); no frame within heartbeatTimeoutMs after it means
  // the connection is dead even if TCP has not noticed (a frozen edge, a lost route).
  #armHeartbeat() {
    const now = this.now();
    const { heartbeatIntervalMs: interval, heartbeatTimeoutMs: timeout } = this.options;
    if (this.probeSentAt > this.lastHeard) {
      if (now - this.probeSentAt >= timeout) {
        const reason = `no frame within ${timeout} ms of a probe (client side)`;
        this.#dropSocket(CloseCode.NO_PONG, reason);
        this.#onClose(CloseCode.NO_PONG, reason, true);
        return;
      }
      this.#setTimer('heartbeat', this.probeSentAt + timeout - now, () => this.#armHeartbeat());
      return;
    }
    if (now - this.lastHeard >= interval) {
      this.probeSentAt = now;
      this.#send({ type: 'unSubscribe', topic: PROBE_TOPIC });
      this.#setTimer('heartbeat', timeout, () => this.#armHeartbeat());
      return;
    }
    this.#setTimer('heartbeat', this.lastHeard + interval - now, () => this.#armHeartbeat());
  }

  // ---- frames in -------------------------------------------------------------------------

  #onMessage(text) {
    this.lastHeard = this.now();
    if (typeof text !== 'string') return; // the edge sends text frames only
    if (text === 'heartbeat') return; // legacy heartbeat (edge --legacy-heartbeat)
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      this.#emit('error', new FiretowerError('bad_frame', `unparseable frame from the edge: ${text.slice(0, 200)}`));
      return;
    }
    switch (frame.type) {
      case 'publish':
        this.#onDelivery(frame);
        break;
      case 'published':
        this.#onPublished(frame);
        break;
      case 'subscribed':
        this.#onSubscribed(frame);
        break;
      case 'unSubscribed':
        for (const topic of frame.topic ?? []) {
          const list = this.unsubWaiters.get(topic);
          if (list) {
            this.unsubWaiters.delete(topic);
            list.forEach((resolve) => resolve());
          }
        }
        break;
      case 'error':
        this.#onError(frame);
        break;
      default:
        this.#emit('error', new FiretowerError('bad_frame', `unknown frame type from the edge: ${frame.type}`));
    }
  }

  /** The publish numbered `id` of `topic` on the wire, taken out of its list (or null). */
  #takeInflight(topic, id) {
    const list = this.inflight.get(topic);
    const i = list ? list.findIndex((p) => p.id === id) : -1;
    if (i < 0) return null;
    const [p] = list.splice(i, 1);
    clearTimeout(p.timer);
    return p;
  }

  #onPublished(frame) {
    const p = this.#takeInflight(frame.topic, frame.id);
    if (p) p.resolve({ epoch: frame.epoch, seq: frame.seq });
  }

  #onDelivery(frame) {
    const topic = frame.topic;
    const sub = this.subs.get(topic);
    const pos = { epoch: frame.epoch, seq: frame.seq };
    if (!sub) return; // unsubscribed; deliveries queued before the ack still arrive
    if (sub.position && !after(pos, sub.position)) {
      // The edge passes each topic on in increasing order (§5.7) and recovery has no
      // duplicate at its seam (§5.11); this only guards the app against a broken promise.
      this.stats.duplicatesDropped += 1;
      return;
    }
    sub.position = pos;
    const meta = { topic, epoch: pos.epoch, seq: pos.seq };
    for (const handler of [...sub.handlers]) {
      try {
        handler(frame.data, meta);
      } catch (e) {
        this.#emit('error', e);
      }
    }
  }

  #onSubscribed(frame) {
    const recovered = frame.recovered ?? {};
    const positions = frame.position ?? {};
    for (const topic of frame.topic ?? []) {
      const sub = this.subs.get(topic);
      if (!sub) continue;
      let info;
      if (Object.hasOwn(recovered, topic)) {
        const p = positions[topic];
        if (!recovered[topic] && p) sub.position = { epoch: p.epoch, seq: p.seq };
        info = { topic, recovered: recovered[topic], position: p ? { epoch: p.epoch, seq: p.seq } : null };
      } else {
        // Subscribed without a position: nothing could be recovered. On a first subscribe
        // there was nothing to recover (null); after a reconnect, anything published
        // while disconnected is lost to this client (false).
        info = { topic, recovered: sub.everAcked ? false : null, position: null };
      }
      const first = !sub.everAcked;
      sub.acked = true;
      sub.everAcked = true;
      const resubscribed = !first;
      const event = { ...info, resubscribed };
      if (first) {
        for (const w of sub.waiters) w.resolve(info);
        sub.waiters = [];
      }
      for (const cb of sub.onSubscribed) {
        try {
          cb(event);
        } catch (e) {
          this.#emit('error', e);
        }
      }
      this.#emit('subscribed', event);
    }
    this.#flushOutbox();
  }

  #onError(frame) {
    const error = new FiretowerError(frame.code, frame.message, frame.topic ?? null);
    const topic = frame.topic;
    // The answer to a numbered publish names it.
    if (typeof frame.id === 'number') {
      const p = topic == null ? null : this.#takeInflight(topic, frame.id);
      if (p) p.reject(error);
      else this.#emit('error', error);
      return;
    }
    if (topic == null) {
      if (frame.code === 'too_many_topics') this.#failUnacked(error);
      if (frame.code === 'rate_limited') {
        // A subscribe, unsubscribe or probe frame was not acted on (§5.5). Subscribes still
        // waiting go again later; one that was only waiting for its owner is acked once.
        setTimeout(() => {
          const waiting = [...this.subs].filter(([, sub]) => !sub.acked).map(([t]) => t);
          if (this.state === 'open' && waiting.length > 0) this.#sendSubscribe(waiting.slice(0, this.options.maxTopicsPerFrame));
        }, 1000);
      }
      this.#emit('error', error);
      return;
    }
    // A subscribe timeout names every timed-out topic, joined by ','; a publish's error
    // names its one topic (which has no ',').
    const topics = topic.split(',');
    const subscribeError = frame.code === 'denied' || frame.code === 'unavailable';
    const waitingSub = topics.map((t) => this.subs.get(t)).some((s) => s && !s.acked);
    if (subscribeError && (topics.length > 1 || waitingSub)) {
      for (const t of topics) this.#subscribeFailed(t, error);
      this.#emit('error', error);
      return;
    }
    // Otherwise it answers the oldest unanswered publish of that topic. Failures come back
    // in the order the publishes were sent; successes are silent, so this is the one.
    const list = this.inflight.get(topic);
    if (list && list.length > 0) {
      const p = list.shift();
      clearTimeout(p.timer);
      p.reject(error);
      return;
    }
    this.#emit('error', error);
  }

  #subscribeFailed(topic, error) {
    const sub = this.subs.get(topic);
    if (!sub || sub.acked) return;
    if (error.code === 'unavailable') {
      // The owner did not confirm in time (§5.6): the edge dropped it; ask again later,
      // keeping the position so that recovery still works.
      setTimeout(() => {
        if (this.state === 'open' && this.subs.get(topic) === sub && !sub.acked) this.#sendSubscribe([topic]);
      }, this.options.minReconnectDelayMs * (1 + this.random()));
      return;
    }
    // Refused for good (denied): forget it.
    this.subs.delete(topic);
    for (const w of sub.waiters) w.reject(error);
    this.#flushOutbox();
  }

  #failUnacked(error) {
    // A frame went past the connection's topic limit; the topics that fit are acked, the
    // others are not and never will be. Drop every topic still waiting, on both sides.
    const dropped = [];
    for (const [topic, sub] of this.subs) {
      if (sub.acked) continue;
      this.subs.delete(topic);
      for (const w of sub.waiters) w.reject(error);
      dropped.push(topic);
    }
    if (dropped.length > 0 && this.state === 'open') this.#send({ type: 'unSubscribe', topic: dropped.join(',') });
  }

  // ---- frames out ------------------------------------------------------------------------

  #sendSubscribe(topics) {
    const since = {};
    let any = false;
    for (const topic of topics) {
      const sub = this.subs.get(topic);
      if (sub?.position) {
        since[topic] = { epoch: sub.position.epoch, seq: sub.position.seq };
        sub.sentSince = true;
        any = true;
      }
    }
    const frame = { type: 'subscribe', topic: topics.join(','), data: '' };
    if (any) frame.since = since;
    this.#send(frame);
  }

  /** Sends the queued publishes that may go: connected, and not waiting for their topic's
   * first ack (the edge acks once the topic's owner has recorded this edge's interest, so a
   * client that subscribes and then publishes receives its own message). Order is kept per
   * topic: a held publish holds the later ones of its topic. */
  #flushOutbox() {
    if (this.state !== 'open') return;
    const held = new Set();
    const rest = [];
    for (const p of this.outbox) {
      const sub = this.subs.get(p.topic);
      if (held.has(p.topic) || (sub && !sub.acked)) {
        held.add(p.topic);
        rest.push(p);
        continue;
      }
      const list = this.inflight.get(p.topic) ?? [];
      this.inflight.set(p.topic, list);
      const entry = { id: this.nextPublishId++, resolve: p.resolve, reject: p.reject, timer: null };
      entry.timer = setTimeout(() => {
        const i = list.indexOf(entry);
        if (i < 0) return;
        list.splice(i, 1);
        entry.resolve(null); // unanswered: an edge that does not answer numbered publishes
      }, this.options.publishTimeoutMs);
      list.push(entry);
      this.#sendRaw(`{"type":"publish","topic":${JSON.stringify(p.topic)},"data":${p.text},"id":${entry.id}}`);
    }
    this.outbox = rest;
  }

  #send(frame) {
    this.#sendRaw(JSON.stringify(frame));
  }

  #sendRaw(text) {
    try {
      this.ws?.send(text);
    } catch (e) {
      this.#emit('error', e);
    }
  }

  // ---- small helpers ---------------------------------------------------------------------

  #setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.#emit('state', { state });
  }

  #settleOpenWaiters(error) {
    const waiters = this.openWaiters;
    this.openWaiters = [];
    for (const w of waiters) (error ? w.reject(error) : w.resolve());
  }

  #setTimer(name, ms, fn) {
    this.#clearTimer(name);
    this.timers[name] = setTimeout(() => {
      this.timers[name] = null;
      fn();
    }, Math.max(0, ms));
  }

  #clearTimer(name) {
    if (this.timers[name] !== null) clearTimeout(this.timers[name]);
    this.timers[name] = null;
  }

  #emit(event, value) {
    const set = this.listeners.get(event);
    if (!set || set.size === 0) {
      // An error nobody listens to must not vanish.
      if (event === 'error') console.error('firetower:', value);
      return;
    }
    for (const listener of [...set]) {
      try {
        listener(value);
      } catch (e) {
        if (event !== 'error') this.#emit('error', e);
      }
    }
  }
}
