// Tokens and close codes: getToken on an expired or refused token, no reconnect after an
// auth failure or a kick, an immediate reconnect after a drain (1001).

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { FiretowerClient, CloseCode } from '../firetower.js';
import { Cluster, Recorder, waitFor } from './cluster.mjs';

const FAST = { minReconnectDelayMs: 100, maxReconnectDelayMs: 1000, connectTimeoutMs: 2000 };

/** An HS256 JWT signed with `secret`, claims as `firetower token` writes them. */
function jwt(secret, claims) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const head = `${b64({ typ: 'JWT', alg: 'HS256' })}.${b64(claims)}`;
  return `${head}.${createHmac('sha256', secret).update(head).digest('base64url')}`;
}

describe('tokens and close codes', () => {
  let cluster;
  let secret;
  const clients = [];
  const client = (url, options) => {
    const c = new FiretowerClient(url, { ...FAST, ...options });
    clients.push(c);
    return c;
  };
  const claims = (user, expSecs) => ({ sub: user, exp: Math.floor(Date.now() / 1000) + expSecs, subscribe: ['*'], publish: ['*'] });

  before(async () => {
    cluster = await Cluster.start();
    secret = await readFile(cluster.jwtKeyFile);
  });
  after(async () => {
    clients.forEach((c) => c.close());
    await cluster?.stop();
  });

  it('a token that expired while connected is replaced through getToken before the next handshake', async () => {
    const short = await cluster.token({ user: 'tina', subscribe: ['*'], ttlSecs: 2 });
    const exp = JSON.parse(Buffer.from(short.split('.')[1], 'base64url')).exp;
    let calls = 0;
    const c = client(cluster.wsUrl(1), {
      token: short,
      tokenExpiryMarginMs: 0,
      getToken: async () => {
        calls += 1;
        return cluster.token({ user: 'tina', subscribe: ['*'] });
      },
    });
    const rec = new Recorder(c);
    const got = [];
    await c.connect();
    assert.equal(calls, 0, 'the given token was still valid');
    await c.subscribe('t/1', (d) => got.push(d));
    await cluster.publish('t/1', '1');
    await waitFor(() => got.length === 1, { what: 'message 1' });
    // The edge checks tokens at the upgrade only: the open connection outlives its token.
    await waitFor(() => Date.now() > exp * 1000 + 1000, { timeoutMs: 10000, what: 'the token to expire' });
    const mark = rec.length;
    c.reconnect();
    await cluster.publish('t/1', '2');
    const ack = await rec.next('subscribed', (e) => e.topic === 't/1', { from: mark });
    assert.equal(ack.recovered, true);
    await waitFor(() => got.length === 2, { what: 'message 2' });
    assert.deepEqual(got, [1, 2]);
    assert.equal(calls, 1);
    assert.equal(c.stats.handshakeFailures, 0, 'the expired token was never sent');
  });

  it('a token the edge refuses (bad signature) makes the client ask getToken, then connect', async () => {
    const before = (await cluster.metrics(1)).auth_refused_total;
    const forged = jwt('not the edges key, not at all, no', claims('uma', 3600));
    let calls = 0;
    const c = client(cluster.wsUrl(1), {
      token: forged,
      getToken: async () => {
        calls += 1;
        return cluster.token({ user: 'uma', subscribe: ['*'] });
      },
    });
    const rec = new Recorder(c);
    await c.connect();
    const down = await rec.next('disconnected');
    assert.equal(down.wasOpen, false);
    assert.equal(calls, 1);
    assert.equal(c.stats.handshakeFailures, 1);
    assert.equal((await cluster.metrics(1)).auth_refused_total, before + 1);
    const ack = await c.subscribe('t/2', () => {});
    assert.equal(ack.topic, 't/2');
  });

  it('without getToken, an expired token the edge refuses ends the client: no reconnect', async () => {
    const before = (await cluster.metrics(2)).auth_refused_total;
    const expired = jwt(secret, claims('vic', -60));
    const c = client(cluster.wsUrl(2), { token: expired });
    const rec = new Recorder(c);
    const published = c.publish('t/3', 1);
    await assert.rejects(c.connect(), (e) => e.code === 'auth');
    await assert.rejects(published, (e) => e.code === 'auth');
    const closed = await rec.next('closed');
    assert.equal(closed.error, 'auth');
    assert.equal(c.state, 'closed');
    assert.equal(c.stats.handshakeFailures, 1);
    assert.equal(c.timers.reconnect, null, 'a reconnect is scheduled');
    assert.equal((await cluster.metrics(2)).auth_refused_total, before + 1);
    assert.equal(rec.events.filter((e) => e.name === 'disconnected').length, 0);
  });

  it('a kick (KickUser, close 4002) closes the client for good; other users stay', async () => {
    const kimToken = await cluster.token({ user: 'kim', subscribe: ['*'], publish: ['*'] });
    const leoToken = await cluster.token({ user: 'leo', subscribe: ['*'] });
    const kim = client([cluster.wsUrl(1), cluster.wsUrl(2)], { token: kimToken });
    const leo = client(cluster.wsUrl(1), { token: leoToken });
    const rec = new Recorder(kim);
    const leoGot = [];
    await Promise.all([kim.connect(), leo.connect()]);
    await kim.subscribe('k/room', () => {});
    await leo.subscribe('k/room', (d) => leoGot.push(d));
    const closedCount = await cluster.kick('kim');
    assert.equal(closedCount, 1);
    const closed = await rec.next('closed');
    assert.equal(closed.code, CloseCode.KICKED);
    assert.equal(closed.error, 'kicked');
    assert.equal(kim.state, 'closed');
    assert.equal(kim.timers.reconnect, null);
    assert.equal(rec.events.filter((e) => e.name === 'disconnected').length, 0);
    await assert.rejects(kim.publish('k/room', 'after'), (e) => e.code === 'kicked');
    await cluster.publish('k/room', '"still here"');
    await waitFor(() => leoGot.length === 1, { what: 'the other user\'s delivery' });
    assert.equal(leo.state, 'open');
    assert.equal(kim.stats.connects, 1);
  });

  it('an edge that shuts down (1001) sends its clients to another edge at once, with recovery', async () => {
    const token = await cluster.token({ user: 'max', subscribe: ['*'] });
    // A backoff far longer than the test's timeout: only the drain path can reconnect in time.
    const c = client([cluster.wsUrl(2), cluster.wsUrl(1)], { token, minReconnectDelayMs: 60000, maxReconnectDelayMs: 60000 });
    const rec = new Recorder(c);
    const got = [];
    await c.connect();
    await c.subscribe('d/1', (d) => got.push(d));
    await cluster.publish('d/1', '1');
    await waitFor(() => got.length === 1, { what: 'message 1' });
    await cluster.stopEdge(2);
    const down = await rec.next('disconnected');
    assert.equal(down.code, CloseCode.GOING_AWAY);
    assert.ok(down.delayMs <= 500, `drain delay ${down.delayMs}`);
    await cluster.publish('d/1', '2');
    const ack = await rec.next('subscribed', (e) => e.resubscribed);
    assert.equal(c.url, cluster.wsUrl(1));
    assert.equal(ack.recovered, true);
    await waitFor(() => got.length === 2, { what: 'message 2' });
    assert.deepEqual(got, [1, 2]);
  });
});
