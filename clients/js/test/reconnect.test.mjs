// Reconnect, resubscribe and recover: an edge killed and restarted, recovery on the other
// edge, and a frozen edge noticed by the heartbeat probe.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { FiretowerClient, CloseCode } from '../firetower.js';
import { Cluster, Recorder, waitFor } from './cluster.mjs';

// Fast reconnects for the tests; the backoff shape is the library's default one.
const FAST = { minReconnectDelayMs: 100, maxReconnectDelayMs: 1000, connectTimeoutMs: 2000 };

describe('reconnect and recovery', () => {
  let cluster;
  let token;
  const clients = [];
  const client = (url, options) => {
    const c = new FiretowerClient(url, { token, ...FAST, ...options });
    clients.push(c);
    return c;
  };

  before(async () => {
    cluster = await Cluster.start();
    token = await cluster.token({ user: 'rita', subscribe: ['*'], publish: ['*'] });
  });
  after(async () => {
    clients.forEach((c) => c.close());
    await cluster?.stop();
  });

  it('an edge killed and restarted: the client reconnects to it, resubscribes and recovers what it missed', async () => {
    const c = client(cluster.wsUrl(1));
    const rec = new Recorder(c);
    const got = [];
    await c.connect();
    await c.subscribe('k/1', (data, meta) => got.push({ data, seq: meta.seq }));
    const p1 = await cluster.publish('k/1', '1');
    await waitFor(() => got.length === 1, { what: 'message 1' });

    await cluster.killEdge(1);
    const down = await rec.next('disconnected');
    assert.equal(down.wasOpen, true);
    assert.equal(down.willReconnect, true);
    // Published while the client has no connection.
    const p2 = await cluster.publish('k/1', '2');
    const p3 = await cluster.publish('k/1', '3');
    const mark = rec.length;
    await cluster.restartEdge(1);
    const ack = await rec.next('subscribed', (e) => e.topic === 'k/1', { from: mark, timeoutMs: 30000 });
    assert.deepEqual(ack, { topic: 'k/1', recovered: true, position: null, resubscribed: true });
    await waitFor(() => got.length === 3, { what: 'the recovered messages' });
    const p4 = await cluster.publish('k/1', '4');
    await waitFor(() => got.length === 4, { what: 'the live message after recovery' });
    assert.deepEqual(got, [
      { data: 1, seq: p1.seq },
      { data: 2, seq: p2.seq },
      { data: 3, seq: p3.seq },
      { data: 4, seq: p4.seq },
    ]);
    assert.ok(c.stats.connects >= 2);
    assert.equal(c.stats.duplicatesDropped, 0);
  });

  it('recovers across edges: positions taken on edge 1 give exactly the missed messages on edge 2', async () => {
    const c = client([cluster.wsUrl(1), cluster.wsUrl(2)]);
    const rec = new Recorder(c);
    const got = [];
    const recoveries = [];
    await c.connect();
    assert.equal(c.url, cluster.wsUrl(1));
    await c.subscribe('x/a', (data) => got.push(['a', data]), { onSubscribed: (e) => recoveries.push(e) });
    await c.subscribe('x/b', (data) => got.push(['b', data]), { onSubscribed: (e) => recoveries.push(e) });
    await c.subscribe('x/none', (data) => got.push(['none', data]), { onSubscribed: (e) => recoveries.push(e) });
    await cluster.publish('x/a', '"a1"', { distributor: 0 });
    await cluster.publish('x/b', '"b1"', { distributor: 1 });
    await waitFor(() => got.length === 2, { what: 'the first messages' });

    c.disconnect();
    assert.equal(c.state, 'idle');
    await cluster.publish('x/a', '"a2"');
    await cluster.publish('x/b', '"b2"');
    await cluster.publish('x/a', '"a3"');
    const mark = rec.length;
    await c.connect();
    assert.equal(c.url, cluster.wsUrl(2));
    await rec.next('subscribed', (e) => e.topic === 'x/a', { from: mark });
    await rec.next('subscribed', (e) => e.topic === 'x/b', { from: mark });
    await waitFor(() => got.length === 5, { what: 'the missed messages' });
    // Nothing else (no duplicate) came: a live message after them is the next one.
    await cluster.publish('x/a', '"a4"');
    await waitFor(() => got.length === 6, { what: 'a live message' });
    const of = (t) => got.filter(([topic]) => topic === t).map(([, d]) => d);
    assert.deepEqual(of('a'), ['a1', 'a2', 'a3', 'a4']);
    assert.deepEqual(of('b'), ['b1', 'b2']);
    assert.equal(c.stats.duplicatesDropped, 0, 'the edge sent a message twice');
    const after = recoveries.filter((e) => e.resubscribed);
    assert.deepEqual(after.find((e) => e.topic === 'x/a'), { topic: 'x/a', recovered: true, position: null, resubscribed: true });
    assert.deepEqual(after.find((e) => e.topic === 'x/b'), { topic: 'x/b', recovered: true, position: null, resubscribed: true });
    // A topic that never had a message had no position to recover from.
    await rec.next('subscribed', (e) => e.topic === 'x/none', { from: mark });
    assert.deepEqual(after.find((e) => e.topic === 'x/none'), { topic: 'x/none', recovered: false, position: null, resubscribed: true });
  });

  it('a new client given a saved position recovers; a position from another epoch says recovered:false with the position now', async () => {
    const p1 = await cluster.publish('s/1', '"one"');
    await cluster.publish('s/1', '"two"');
    const c = client(cluster.wsUrl(2));
    const got = [];
    await c.connect();
    const ack = await c.subscribe('s/1', (d) => got.push(d), { since: p1 });
    assert.deepEqual(ack, { topic: 's/1', recovered: true, position: null });
    await waitFor(() => got.length === 1, { what: 'the recovered message' });
    assert.deepEqual(got, ['two']);

    const stale = await c.subscribe('s/2', () => {}, { since: { epoch: 1, seq: 5 } });
    assert.equal(stale.recovered, false);
    assert.equal(typeof stale.position?.epoch, 'number');
    assert.deepEqual(c.position('s/2'), stale.position);
  });

  it('a frozen edge (TCP open, nothing answers) is noticed by the probe; the client moves to the other edge', async () => {
    const c = client([cluster.wsUrl(1), cluster.wsUrl(2)], { heartbeatIntervalMs: 400, heartbeatTimeoutMs: 400 });
    const rec = new Recorder(c);
    const got = [];
    await c.connect();
    assert.equal(c.url, cluster.wsUrl(1));
    await c.subscribe('f/1', (d) => got.push(d));
    await cluster.publish('f/1', '1');
    await waitFor(() => got.length === 1, { what: 'message 1' });
    // Quiet for longer than the interval: the probe keeps a live connection up.
    const opens = c.stats.connects;
    await waitFor(() => c.probeSentAt > 0 && c.lastHeard > c.probeSentAt, { what: 'a probe answered' });
    assert.equal(c.stats.connects, opens);

    cluster.freezeEdge(1);
    try {
      const down = await rec.next('disconnected');
      assert.equal(down.code, CloseCode.NO_PONG);
      assert.match(down.reason, /probe/);
      await cluster.publish('f/1', '2');
      await rec.next('subscribed', (e) => e.topic === 'f/1' && e.resubscribed);
      assert.equal(c.url, cluster.wsUrl(2));
      await waitFor(() => got.length === 2, { what: 'message 2, recovered on edge 2' });
      assert.deepEqual(got, [1, 2]);
    } finally {
      cluster.thawEdge(1);
    }
  });
});
