// `firetower dev` as a user starts it: its printed token and API key file, its two edges,
// the library served at /firetower.js and the demo page that loads it.
// dev listens on fixed ports (9999, 9998, 6667, 6677, 7101–7103): they must be free.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { FiretowerClient } from '../firetower.js';
import { startDev, waitFor } from './cluster.mjs';

describe('firetower dev', () => {
  let dev;
  const clients = [];

  before(async () => {
    dev = await startDev();
  });
  after(async () => {
    clients.forEach((c) => c.close());
    await dev?.stop();
  });

  it('a client on each edge with the printed token gets a CLI publish; a client publish crosses edges', async () => {
    const a = new FiretowerClient(dev.edges[0], { token: dev.token });
    const b = new FiretowerClient(dev.edges[1], { token: dev.token });
    clients.push(a, b);
    const gotA = [];
    const gotB = [];
    await Promise.all([a.connect(), b.connect()]);
    await a.subscribe('chat/lobby', (d, m) => gotA.push({ d, seq: m.seq }));
    await b.subscribe('chat/lobby', (d, m) => gotB.push({ d, seq: m.seq }));
    const p1 = await dev.publish('chat/lobby', '{"user":"cli","text":"hello"}');
    const p2 = await a.publish('chat/lobby', { user: 'a', text: 'hi from edge 1' });
    assert.deepEqual(p2, { epoch: p1.epoch, seq: p1.seq + 1 });
    await waitFor(() => gotA.length === 2 && gotB.length === 2, { what: 'both messages on both edges' });
    const want = [{ d: { user: 'cli', text: 'hello' }, seq: p1.seq }, { d: { user: 'a', text: 'hi from edge 1' }, seq: p2.seq }];
    assert.deepEqual(gotA, want);
    assert.deepEqual(gotB, want);
  });

  it('every edge serves the library at /firetower.js, and the demo page loads it', async () => {
    const source = await readFile(new URL('../firetower.js', import.meta.url), 'utf8');
    for (const port of [9999, 9998]) {
      const js = await fetch(`http://127.0.0.1:${port}/firetower.js`);
      assert.equal(js.status, 200);
      assert.match(js.headers.get('content-type'), /^text\/javascript/);
      assert.equal(await js.text(), source, 'the binary serves an older firetower.js: rebuild it');
      const page = await (await fetch(`http://127.0.0.1:${port}/`)).text();
      assert.match(page, /import \{ FiretowerClient \} from '\/firetower\.js'/);
      const token = await fetch(`http://127.0.0.1:${port}/dev/token?user=demo`);
      assert.equal(token.status, 200);
    }
  });
});
