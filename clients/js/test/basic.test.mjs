// Subscribe, receive, publish and the server's answers, against a real cluster.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { FiretowerClient, FiretowerError } from '../firetower.js';
import { Cluster, waitFor } from './cluster.mjs';

describe('subscribe and publish', () => {
  let cluster;
  const clients = [];
  const client = (url, options) => {
    const c = new FiretowerClient(url, options);
    clients.push(c);
    return c;
  };

  before(async () => {
    cluster = await Cluster.start();
  });
  after(async () => {
    clients.forEach((c) => c.close());
    await cluster?.stop();
  });

  it('receives a message a backend published with the CLI, with its position', async () => {
    const token = await cluster.token({ user: 'alice', subscribe: ['chat/*'] });
    const c = client(cluster.wsUrl(1), { token });
    await c.connect();
    const got = [];
    const ack = await c.subscribe('chat/cli', (data, meta) => got.push({ data, ...meta }));
    assert.deepEqual(ack, { topic: 'chat/cli', recovered: null, position: null });
    const pos = await cluster.publish('chat/cli', '{"text":"from the backend"}');
    await waitFor(() => got.length === 1, { what: 'the delivery' });
    assert.deepEqual(got, [{ data: { text: 'from the backend' }, topic: 'chat/cli', epoch: pos.epoch, seq: pos.seq }]);
    assert.deepEqual(c.position('chat/cli'), pos);
  });

  it('publishes from the client: the promise resolves with the position of its own echo', async () => {
    const token = await cluster.token({ user: 'bob', subscribe: ['room/*'], publish: ['room/*'] });
    const sender = client(cluster.wsUrl(1), { token });
    const other = client(cluster.wsUrl(2), { token });
    const seen = [];
    const mine = [];
    await Promise.all([sender.connect(), other.connect()]);
    await other.subscribe('room/1', (data, meta) => seen.push({ data, ...meta }));
    // Published before the subscribe's ack: the client holds it until the ack.
    const subscribed = sender.subscribe('room/1', (data, meta) => mine.push({ data, ...meta }));
    const answer = sender.publish('room/1', { text: 'hello', n: 1 });
    await subscribed;
    const pos = await answer;
    assert.equal(typeof pos.epoch, 'number');
    assert.equal(typeof pos.seq, 'number');
    await waitFor(() => seen.length === 1 && mine.length === 1, { what: 'both deliveries' });
    assert.deepEqual(seen, [{ data: { text: 'hello', n: 1 }, topic: 'room/1', ...pos }]);
    assert.deepEqual(mine, seen);
    // Several in flight, same data: each gets its own position, in order.
    const answers = await Promise.all([1, 2, 3].map(() => sender.publish('room/1', 'same')));
    assert.deepEqual(answers.map((p) => p.seq), [pos.seq + 1, pos.seq + 2, pos.seq + 3]);
  });

  it('a publish to a topic the client does not receive resolves with its position too', async () => {
    const token = await cluster.token({ user: 'carol', subscribe: ['news/*'], publish: ['news/*'] });
    const watcher = client(cluster.wsUrl(2), { token });
    const seen = [];
    // Subscribed before connecting: the frame goes out once the connection is open.
    const subscribed = watcher.subscribe('news/a', (data, meta) => seen.push({ data, ...meta }));
    await watcher.connect();
    await subscribed;
    const c = client(cluster.wsUrl(1), { token, publishTimeoutMs: 1500 });
    await c.connect();
    const answer = await c.publish('news/a', { breaking: true });
    await waitFor(() => seen.length === 1, { what: 'the other client to receive it' });
    assert.deepEqual(seen[0].data, { breaking: true });
    assert.deepEqual(answer, { epoch: seen[0].epoch, seq: seen[0].seq });
  });

  it('rejects with the edge\'s error code: a publish or subscribe the token does not grant', async () => {
    const token = await cluster.token({ user: 'dave', subscribe: ['mine/*'], publish: ['mine/*'] });
    const c = client(cluster.wsUrl(1), { token });
    await c.connect();
    const errors = [];
    c.on('error', (e) => errors.push(e));
    await assert.rejects(c.publish('theirs/x', { a: 1 }), (e) => e instanceof FiretowerError && e.code === 'denied' && e.topic === 'theirs/x');
    await assert.rejects(c.subscribe('theirs/x', () => {}), (e) => e.code === 'denied' && e.topic === 'theirs/x');
    assert.equal(c.subs.has('theirs/x'), false);
    // A bad topic never reaches the wire.
    await assert.rejects(c.publish('a,b', 1), (e) => e.code === 'bad_topic');
    await assert.rejects(c.subscribe('a#1', () => {}), (e) => e.code === 'bad_topic');
    // The connection is still fine.
    const ack = await c.subscribe('mine/ok', () => {});
    assert.equal(ack.topic, 'mine/ok');
    assert.equal(c.state, 'open');
    assert.deepEqual(errors.map((e) => e.code), ['denied']);
  });

  it('unsubscribes: the handler gets nothing after the ack', async () => {
    const token = await cluster.token({ user: 'erin', subscribe: ['u/*'], publish: ['u/*'] });
    const c = client(cluster.wsUrl(2), { token });
    const got = [];
    const handler = (data) => got.push(data);
    await c.connect();
    await c.subscribe('u/1', handler);
    await cluster.publish('u/1', '1');
    await waitFor(() => got.length === 1, { what: 'the first message' });
    await c.unsubscribe('u/1', handler);
    assert.equal(c.subs.has('u/1'), false);
    // Another connection on the same edge still holds the topic: once it has message 2,
    // the edge has passed it on to every connection that held the topic.
    const stays = client(cluster.wsUrl(2), { token });
    const other = [];
    await stays.connect();
    await stays.subscribe('u/1', (d) => other.push(d));
    await cluster.publish('u/1', '2');
    await waitFor(() => other.length === 1, { what: 'the other connection to get message 2' });
    assert.deepEqual(other, [2]);
    assert.deepEqual(got, [1]);
  });
});
