// A real Firetower cluster for the tests, from the release binary: 3 metastore nodes, 2
// distributors and 2 edges, each its own process (so that one edge can be killed,
// frozen and restarted), on free loopback ports, with its data in a fresh temp dir.
// `firetower dev` runs the same roles in one process on fixed ports; startDev() below
// runs that one as it is.
//
// Every process started here is killed when the test process exits, on failure too.

import { spawn, execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { openSync, closeSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { createSocket } from 'node:dgram';
import http2 from 'node:http2';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const here = dirname(fileURLToPath(import.meta.url));
export const REPO = resolve(here, '../../..');
export const BIN = process.env.FIRETOWER_BIN ?? join(REPO, 'target/release/firetower');
const run = promisify(execFile);

// Every child of this test process, killed on the way out whatever happens, and every
// temp dir made here, removed then too (unless FIRETOWER_KEEP is set).
const children = new Set();
const tempDirs = new Set();
function killAll() {
  for (const child of children) {
    try {
      child.kill('SIGKILL'); // a frozen (SIGSTOP) process dies of it too
    } catch {
      // already gone
    }
  }
  children.clear();
  if (!process.env.FIRETOWER_KEEP) {
    for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
  }
  tempDirs.clear();
}
process.on('exit', killAll);
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    killAll();
    process.exit(130);
  });
}

/** Polls `check` (sync or async) until it returns a truthy value; fails after timeoutMs
 * naming `what`. Tests assert on what this returns, never on how long it took. */
export async function waitFor(check, { timeoutMs = 15000, what = 'condition', intervalMs = 25 } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const value = await check();
      if (value) return value;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${last.message}` : ''}`);
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

async function freeTcpPort() {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolvePort(port));
    });
  });
}

async function freeUdpPort() {
  return new Promise((resolvePort, reject) => {
    const socket = createSocket('udp4');
    socket.once('error', reject);
    socket.bind(0, '127.0.0.1', () => {
      const { port } = socket.address();
      socket.close(() => resolvePort(port));
    });
  });
}

function startProcess(name, args, dir) {
  const log = join(dir, `${name}.log`);
  const fd = openSync(log, 'a');
  const child = spawn(BIN, args, { stdio: ['ignore', fd, fd], env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? 'warn' } });
  closeSync(fd);
  children.add(child);
  child.once('exit', () => children.delete(child));
  child.logFile = log;
  return child;
}

async function stopProcess(child, signal = 'SIGTERM') {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  try {
    process.kill(child.pid, 'SIGCONT');
  } catch {
    // gone
  }
  child.kill(signal);
  const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
  await exited;
  clearTimeout(timer);
}

export class Cluster {
  static async start({ edges = 2, distributors = 2 } = {}) {
    const c = new Cluster();
    await c.#boot(edges, distributors);
    return c;
  }

  async #boot(edgeCount, distributorCount) {
    this.dir = await mkdtemp(join(tmpdir(), 'firetower-js-'));
    tempDirs.add(this.dir);
    const deploy = join(this.dir, 'deploy');
    const { stdout } = await run(BIN, ['certs', '--out', deploy, '--distributors', String(distributorCount), '--edges', String(edgeCount)]);
    // "metastore and distributor flags: --api-key … --api-key … --member-key-file …"
    const apiFlags = stdout.match(/^metastore and distributor flags: (.*)$/m)[1].split(' ');
    this.apiKeyFile = join(deploy, 'auth/api.key');
    this.jwtKeyFile = join(deploy, 'auth/jwt-hs256.key');
    // Every gRPC port serves TLS with the deployment's CA; the CLI checks it with --ca-file.
    this.caFile = join(deploy, 'tls/ca.crt');
    const memberKeyFile = join(deploy, 'auth/member.key');
    const tls = (role, id) => ['--tls-cert', join(deploy, `tls/${role}-${id}.crt`), '--tls-key', join(deploy, `tls/${role}-${id}.key`), '--tls-ca', join(deploy, 'tls/ca.crt')];

    const metaPorts = [await freeTcpPort(), await freeTcpPort(), await freeTcpPort()];
    this.metastore = metaPorts.map((p) => `127.0.0.1:${p}`).join(',');
    const peers = metaPorts.map((p, i) => `${i + 1}=127.0.0.1:${p}`).join(',');
    this.processes = {};
    metaPorts.forEach((port, i) => {
      const id = i + 1;
      this.processes[`metastore-${id}`] = startProcess(`metastore-${id}`, ['metastore', '--id', String(id), '--listen', `127.0.0.1:${port}`, '--data-dir', join(this.dir, `metastore-${id}`), '--peers', peers, ...tls('metastore', id), ...apiFlags], this.dir);
    });
    this.distributors = [];
    for (let id = 1; id <= distributorCount; id++) {
      const grpc = `127.0.0.1:${await freeTcpPort()}`;
      const quic = `127.0.0.1:${await freeUdpPort()}`;
      this.distributors.push(grpc);
      this.processes[`distributor-${id}`] = startProcess(`distributor-${id}`, ['distributor', '--id', String(id), '--metastore', this.metastore, '--grpc', grpc, '--quic', quic, ...tls('distributor', id), ...apiFlags], this.dir);
    }
    this.edgePorts = [];
    this.edgeArgs = {};
    for (let id = 1; id <= edgeCount; id++) {
      const port = await freeTcpPort();
      this.edgePorts.push(port);
      this.edgeArgs[id] = ['edge', '--id', String(id), '--metastore', this.metastore, '--listen', `127.0.0.1:${port}`, ...tls('edge', id), '--jwt-hs256-key-file', this.jwtKeyFile, '--member-key-file', memberKeyFile];
      this.processes[`edge-${id}`] = startProcess(`edge-${id}`, this.edgeArgs[id], this.dir);
    }
    this.adminToken = await this.token({ user: 'probe', subscribe: ['*'], publish: ['*'] });
    try {
      await this.waitReady();
    } catch (e) {
      throw new Error(`${e.message}; logs in ${this.dir}`);
    }
  }

  /** Like `dev`'s `ready`: a publish through each distributor reaches a subscriber on each
   * live edge (so every relay link is up and the slots are spread). */
  async waitReady(edgeIds = Object.keys(this.edgeArgs).map(Number)) {
    await waitFor(async () => {
      const { stdout } = await run(BIN, ['status', '--metastore', this.metastore, '--api-key-file', this.apiKeyFile, '--ca-file', this.caFile, '--json']);
      const s = JSON.parse(stdout);
      return s.unowned_slots === 0 && s.members.length >= this.distributors.length + edgeIds.length;
    }, { timeoutMs: 60000, what: 'the metastore to show every member and no unowned slot' });
    for (const edge of edgeIds) {
      for (let d = 0; d < this.distributors.length; d++) {
        await waitFor(() => this.#probe(edge, d), { timeoutMs: 60000, intervalMs: 200, what: `a publish through distributor ${d + 1} to reach edge ${edge}` });
      }
    }
  }

  async #probe(edge, d) {
    const topic = `ready-${edge}-${d}-${Date.now()}`;
    const ws = new WebSocket(`${this.wsUrl(edge)}?token=${this.adminToken}`);
    try {
      const frames = [];
      let wake = () => {};
      ws.onmessage = (e) => {
        frames.push(JSON.parse(e.data));
        wake();
      };
      const next = (ms) => new Promise((r) => {
        if (frames.length) return r(frames.shift());
        const t = setTimeout(() => r(null), ms);
        wake = () => { wake = () => {}; clearTimeout(t); r(frames.shift()); };
      });
      await new Promise((r, j) => { ws.onopen = r; ws.onerror = () => j(new Error('no connection')); });
      ws.send(JSON.stringify({ type: 'subscribe', topic, data: '' }));
      const ack = await next(6000);
      if (ack?.type !== 'subscribed') return false;
      await this.publish(topic, '"ready?"', { distributor: d });
      const got = await next(3000);
      return got?.type === 'publish';
    } finally {
      ws.close();
    }
  }

  wsUrl(edgeId) {
    return `ws://127.0.0.1:${this.edgePorts[edgeId - 1]}/ws`;
  }

  httpUrl(edgeId, path = '/') {
    return `http://127.0.0.1:${this.edgePorts[edgeId - 1]}${path}`;
  }

  /** A client token from `firetower token`. */
  async token({ user, subscribe = [], publish = [], ttlSecs = 3600 }) {
    const args = ['token', '--key-file', this.jwtKeyFile, '--user', user, '--ttl-secs', String(ttlSecs)];
    for (const p of subscribe) args.push('--subscribe', p);
    for (const p of publish) args.push('--publish', p);
    const { stdout } = await run(BIN, args);
    return stdout.trim();
  }

  /** Publishes through the CLI, as a backend would; returns {epoch, seq} as it printed. */
  async publish(topic, dataJson, { distributor = 0 } = {}) {
    const { stdout } = await run(BIN, ['publish', '--distributor', this.distributors[distributor], '--api-key-file', this.apiKeyFile, '--ca-file', this.caFile, '--topic', topic, '--data', dataJson]);
    const m = stdout.match(/epoch=(\d+) seq=(\d+)/);
    if (!m) throw new Error(`unexpected publish output: ${stdout}`);
    return { epoch: Number(m[1]), seq: Number(m[2]) };
  }

  /** KickUser (docs/protocol.md §6.6) over gRPC: the CLI has no command for it, so this is
   * a hand-made unary call (HTTP/2 over TLS, the distributors' server name, a
   * length-prefixed protobuf `KickUserRequest{user_id=1}`). */
  async kick(userId, { distributor = 0 } = {}) {
    const key = (await readFile(this.apiKeyFile, 'utf8')).split('\n')[0].trim();
    const user = Buffer.from(userId, 'utf8');
    const message = Buffer.concat([Buffer.from([0x0a, user.length]), user]); // field 1, wire type 2 (short ids only)
    const body = Buffer.concat([Buffer.from([0, 0, 0, 0, message.length]), message]);
    const ca = await readFile(this.caFile);
    const session = http2.connect(`https://${this.distributors[distributor]}`, { ca, servername: 'distributor.firetower' });
    try {
      return await new Promise((resolveCall, reject) => {
        session.once('error', reject);
        const req = session.request({
          ':method': 'POST',
          ':path': '/firetower.distributor.v1.Distributor/KickUser',
          'content-type': 'application/grpc',
          te: 'trailers',
          authorization: `Bearer ${key}`,
        });
        const chunks = [];
        let status = null;
        let detail = '';
        req.on('response', (h) => { if (h['grpc-status'] !== undefined) { status = h['grpc-status']; detail = h['grpc-message'] ?? ''; } });
        req.on('trailers', (t) => { status = t['grpc-status']; detail = t['grpc-message'] ?? ''; });
        req.on('data', (d) => chunks.push(d));
        req.on('error', reject);
        req.on('end', () => {
          if (status !== '0') return reject(new Error(`KickUser: grpc-status ${status} ${decodeURIComponent(detail)}`));
          // KickUserReply{connections_closed = 1 (varint)}; empty when 0.
          const reply = Buffer.concat(chunks).subarray(5);
          let closed = 0;
          if (reply.length >= 2 && reply[0] === 0x08) {
            for (let i = 1, shift = 0; i < reply.length; i++, shift += 7) {
              closed += (reply[i] & 0x7f) * 2 ** shift;
              if (!(reply[i] & 0x80)) break;
            }
          }
          resolveCall(closed);
        });
        req.end(body);
      });
    } finally {
      session.close();
    }
  }

  /** The edge's /metrics as {name: value}. */
  async metrics(edgeId) {
    const text = await (await fetch(this.httpUrl(edgeId, '/metrics'))).text();
    const out = {};
    for (const line of text.split('\n')) {
      const m = line.match(/^firetower_edge_(\w+)\{[^}]*\} (\d+)$/);
      if (m) out[m[1]] = Number(m[2]);
    }
    return out;
  }

  /** SIGKILL: the edge dies without closing anything (clients see 1006). */
  async killEdge(id) {
    await stopProcess(this.processes[`edge-${id}`], 'SIGKILL');
  }

  /** SIGTERM: the edge shuts down cleanly (it closes its clients with 1001). */
  async stopEdge(id) {
    await stopProcess(this.processes[`edge-${id}`], 'SIGTERM');
  }

  /** SIGSTOP: the edge freezes with its sockets open (a dead peer TCP does not notice). */
  freezeEdge(id) {
    process.kill(this.processes[`edge-${id}`].pid, 'SIGSTOP');
  }

  thawEdge(id) {
    process.kill(this.processes[`edge-${id}`].pid, 'SIGCONT');
  }

  /** Starts edge `id` again on its port and waits until it serves publishes. */
  async restartEdge(id) {
    await stopProcess(this.processes[`edge-${id}`], 'SIGKILL');
    this.processes[`edge-${id}`] = startProcess(`edge-${id}`, this.edgeArgs[id], this.dir);
    await this.waitReady([id]);
  }

  async stop() {
    const procs = Object.values(this.processes ?? {});
    // Edges and distributors first, then the metastore.
    await Promise.all(procs.filter((p) => !/metastore/.test(p.spawnargs[1])).map((p) => stopProcess(p)));
    await Promise.all(procs.map((p) => stopProcess(p)));
    if (this.dir && !process.env.FIRETOWER_KEEP) await rm(this.dir, { recursive: true, force: true });
  }
}

/** `firetower dev` itself, in a temp data dir: it listens on its fixed ports (edges 9999
 * and 9998, distributors 6667/6677, metastore 7101–7103), so only one can run at a time on
 * a machine. Resolves once it printed `ready`, with what it printed. */
export async function startDev() {
  const dir = await mkdtemp(join(tmpdir(), 'firetower-js-dev-'));
  tempDirs.add(dir);
  const busy = [];
  for (const port of [9999, 9998, 6667, 6677, 7101, 7102, 7103]) {
    const free = await new Promise((r) => {
      const s = createServer();
      s.once('error', () => r(false));
      s.listen(port, '127.0.0.1', () => s.close(() => r(true)));
    });
    if (!free) busy.push(port);
  }
  if (busy.length) throw new Error(`firetower dev needs its fixed ports; in use: ${busy.join(', ')}`);
  const child = spawn(BIN, ['dev', '--data-dir', join(dir, 'data')], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, RUST_LOG: 'warn' } });
  children.add(child);
  child.once('exit', () => children.delete(child));
  let out = '';
  child.stdout.on('data', (d) => { out += d; });
  child.stderr.on('data', () => {});
  await waitFor(() => /^ready$/m.test(out) || child.exitCode !== null, { timeoutMs: 90000, what: '`firetower dev` to print ready' });
  if (child.exitCode !== null) throw new Error(`firetower dev exited (${child.exitCode}): ${out}`);
  const field = (name) => out.match(new RegExp(`^${name}: (.*)$`, 'm'))[1].trim();
  return {
    out,
    token: field('client token'),
    apiKeyFile: field('api key file'),
    jwtKeyFile: field('jwt key file'),
    caFile: field('ca file'),
    edges: ['ws://127.0.0.1:9999/ws', 'ws://127.0.0.1:9998/ws'],
    async publish(topic, dataJson) {
      const { stdout } = await run(BIN, ['publish', '--distributor', '127.0.0.1:6667', '--api-key-file', this.apiKeyFile, '--ca-file', this.caFile, '--topic', topic, '--data', dataJson]);
      const m = stdout.match(/epoch=(\d+) seq=(\d+)/);
      if (!m) throw new Error(`unexpected publish output: ${stdout}`);
      return { epoch: Number(m[1]), seq: Number(m[2]) };
    },
    async stop() {
      await stopProcess(child, 'SIGTERM');
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** Collects a client's events, for assertions: `await rec.next('subscribed', e => …)`. */
export class Recorder {
  constructor(client, events = ['state', 'open', 'disconnected', 'subscribed', 'error', 'closed']) {
    this.events = [];
    for (const name of events) client.on(name, (value) => this.events.push({ name, value }));
  }

  /** The first recorded event `name` at or after index `from` that passes `filter`. */
  async next(name, filter = () => true, { from = 0, timeoutMs = 15000 } = {}) {
    return waitFor(() => this.events.slice(from).find((e) => e.name === name && filter(e.value))?.value, { timeoutMs, what: `event ${name}` });
  }

  get length() {
    return this.events.length;
  }
}
