// A JavaScript subscriber for clients/python/test/run.sh: one FiretowerClient
// (clients/js/firetower.js) per edge URL, all subscribed to one topic. It prints
// `subscribed` once every client's subscribe is acked, then one JSON line per delivery:
// {"edge":URL,"topic":T,"data":<the JSON value>,"epoch":E,"seq":S}. Once every client has
// `--count` messages it waits `--grace-ms` more, so that a message too many is seen too, and
// exits: 0 when each client got exactly --count, 1 when one got more, 2 when the messages did
// not all come within --timeout-ms. What the messages must be, run.sh checks.
//
//   node [--experimental-websocket] subscriber.mjs --url ws://127.0.0.1:9999/ws \
//       [--url ws://127.0.0.1:9998/ws] --token JWT --topic T --count N
//
// Node 22+ has a global WebSocket; 20 and 21 need --experimental-websocket.

import { parseArgs } from 'node:util';
import { FiretowerClient } from '../../js/firetower.js';

const { values } = parseArgs({
  options: {
    url: { type: 'string', multiple: true },
    token: { type: 'string' },
    topic: { type: 'string' },
    count: { type: 'string' },
    'grace-ms': { type: 'string', default: '1000' },
    'timeout-ms': { type: 'string', default: '20000' },
  },
});
for (const name of ['url', 'token', 'topic', 'count']) {
  if (values[name] === undefined) {
    console.error(`subscriber: --${name} is required`);
    process.exit(64);
  }
}
const count = Number(values.count);
const graceMs = Number(values['grace-ms']);
const timeoutMs = Number(values['timeout-ms']);
const out = (line) => process.stdout.write(`${line}\n`);

const clients = [];
const received = new Map();
let finishing = false;
function finish(code, why) {
  if (finishing) return; // close() below fires `closed` events of our own
  finishing = true;
  if (why) console.error(`subscriber: ${why}`);
  for (const c of clients) c.close();
  // Let stdout drain before leaving.
  process.stdout.write('', () => process.exit(code));
}

let timer = setTimeout(() => {
  const got = [...received].map(([url, n]) => `${url}: ${n}`).join(', ');
  finish(2, `timed out after ${timeoutMs} ms waiting for ${count} messages per edge (${got})`);
}, timeoutMs);

function delivered() {
  const counts = [...received.values()];
  if (counts.some((n) => n > count)) {
    clearTimeout(timer);
    finish(1, `more than ${count} messages: ${[...received].map(([u, n]) => `${u}: ${n}`).join(', ')}`);
  } else if (counts.every((n) => n === count) && timer !== null) {
    clearTimeout(timer);
    timer = null;
    setTimeout(() => {
      if ([...received.values()].every((n) => n === count)) finish(0);
    }, graceMs);
  }
}

try {
  for (const url of values.url) {
    const client = new FiretowerClient(url, { token: values.token });
    client.on('error', (e) => console.error(`subscriber: ${url}: ${e.code ?? ''} ${e.message}`));
    client.on('closed', ({ code, reason, error }) => {
      if (error) finish(3, `${url}: client closed (${code} ${reason}, ${error})`);
    });
    clients.push(client);
    received.set(url, 0);
    await client.connect();
    await client.subscribe(values.topic, (data, { topic, epoch, seq }) => {
      received.set(url, received.get(url) + 1);
      out(JSON.stringify({ edge: url, topic, data, epoch, seq }));
      delivered();
    });
  }
  out('subscribed');
} catch (e) {
  clearTimeout(timer);
  finish(3, `could not subscribe: ${e.code ?? ''} ${e.message}`);
}
