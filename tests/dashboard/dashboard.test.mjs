// End-to-end: `firetower dashboard` (src/dashboard.rs) in headless Chromium, following a
// real `firetower dev` cluster.
//
// Starts dev (its fixed ports: only one dev per machine), then the dashboard against its
// metastore with the API key and CA file dev prints; a subscriber on each edge and a
// publisher that keeps publishing to one topic. The page must show the 16384-slot grid in
// the two distributors' colours (read from the canvas's pixels), both distributors and both
// edges with their addresses, the metastore nodes, each edge's delivery rate from its
// /metrics; the busiest topics from the distributors' /topics when they register a
// "metrics" address, "no data" when they do not. Then the topic is split (`firetower hot
// set --shards 4`) and the page must show the split and its commit live, without a reload.
// The event stream refuses viewers past --max-viewers. A screenshot goes to
// docs/dashboard.png (or $DASHBOARD_SCREENSHOT).
//
// Slot moves need a distributor to leave, which dev (one process) cannot do; the second
// part runs the dashboard against a cluster of separate processes
// (clients/js/test/cluster.mjs), stops a distributor and starts it again: the page must show
// it leave and return, log every slot's move, flash the moved slots and settle on the new
// owners' colours, all without a reload. Any failed check fails the run.
//
// Run it with ./run.sh. Environment: FIRETOWER_BIN, CHROMIUM (default /usr/bin/chromium).

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { createServer } from 'node:net';
import { join } from 'node:path';
import puppeteer from 'puppeteer-core';
import { Cluster, startDev, waitFor, BIN, REPO } from '../../clients/js/test/cluster.mjs';
import { FiretowerClient } from '../../clients/js/firetower.js';

const run = promisify(execFile);
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const SCREENSHOT = process.env.DASHBOARD_SCREENSHOT ?? join(REPO, 'docs/dashboard.png');
const METASTORE = '127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103';
const TOPIC = `dash/live-${Date.now().toString(36)}`;
const MAX_VIEWERS = 3;

async function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** Starts `firetower dashboard`; resolves once its /healthz says the snapshot is in. */
async function startDashboard({ metastore, apiKeyFile, caFile }) {
  const port = await freePort();
  const child = spawn(BIN, [
    'dashboard', '--metastore', metastore, '--listen', `127.0.0.1:${port}`,
    '--api-key-file', apiKeyFile, '--ca-file', caFile,
    '--scrape-interval-ms', '1000', '--max-viewers', String(MAX_VIEWERS),
  ], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, RUST_LOG: 'warn' } });
  let log = '';
  child.stdout.on('data', (d) => { log += d; });
  child.stderr.on('data', (d) => { log += d; });
  process.on('exit', () => child.kill('SIGKILL'));
  const url = `http://127.0.0.1:${port}`;
  await waitFor(async () => child.exitCode !== null || (await fetch(`${url}/healthz`)).status === 200,
    { timeoutMs: 30000, what: 'the dashboard to have the metastore snapshot' });
  if (child.exitCode !== null) throw new Error(`dashboard exited (${child.exitCode}): ${log}`);
  return { child, url, log: () => log };
}

/** The slot map as drawn: the legend (owner, its colour, its slot count), the canvas's
 * pixels counted by colour, its size and its size on screen. */
function readGrid(page) {
  return page.evaluate(() => {
    const legend = [...document.querySelectorAll('#legend li')].map((li) => ({
      owner: Number(li.dataset.owner), rgb: li.dataset.rgb, slots: Number(li.dataset.slots),
    }));
    const canvas = document.querySelector('#slots');
    const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    const pixels = {};
    for (let i = 0; i < data.length; i += 4) {
      const key = `${data[i]},${data[i + 1]},${data[i + 2]}`;
      pixels[key] = (pixels[key] ?? 0) + 1;
    }
    const box = canvas.getBoundingClientRect();
    return { legend, pixels, size: [canvas.width, canvas.height], shown: [box.width, box.height] };
  });
}

/** Whether every slot's pixel is in its owner's colour, as the legend says. */
const gridMatchesLegend = (grid) => grid.legend.every((l) => (grid.pixels[l.rgb] ?? 0) === l.slots)
  && grid.legend.reduce((n, l) => n + l.slots, 0) === 16384;

function launchBrowser() {
  return puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    pipe: true, // Chromium exits when this process dies, whatever kills it
    args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu'],
  });
}

/** Opens the dashboard in a new page; resolves once it says it is live. Page errors and
 * console errors (a CSP violation or a failed load is one) go to `problems`. */
async function openDashboard(browser, url, problems) {
  const page = await browser.newPage();
  page.on('console', (m) => { if (m.type() === 'error') problems.push(`console.${m.type()}: ${m.text()}`); });
  page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`));
  await page.setViewport({ width: 1440, height: 1000 });
  const response = await page.goto(`${url}/`, { waitUntil: 'load' });
  assert.equal(response.status(), 200);
  assert.match(response.headers()['content-security-policy'] ?? '', /default-src 'self'/);
  await page.waitForFunction(() => document.querySelector('#conn')?.textContent === 'live', { timeout: 20000 });
  return page;
}

/** Publishes `topic<TAB>json` lines over one `publish --stream` at about `perSecond`. */
function startPublisher(dev, topic, perSecond) {
  const child = spawn(BIN, ['publish', '--stream', '--distributor', '127.0.0.1:6667',
    '--api-key-file', dev.apiKeyFile, '--ca-file', dev.caFile], { stdio: ['pipe', 'pipe', 'pipe'] });
  process.on('exit', () => child.kill('SIGKILL'));
  let out = '';
  child.stdout.on('data', (d) => { out += d; });
  child.stderr.on('data', (d) => { out += d; });
  let n = 0;
  const timer = setInterval(() => {
    let lines = '';
    for (let i = 0; i < perSecond / 10; i++) lines += `${topic}\t{"n":${n++}}\n`;
    child.stdin.write(lines);
  }, 100);
  return {
    published: () => (out.match(/^line=\d+ epoch=/gm) ?? []).length,
    errors: () => (out.match(/^line=\d+ error=.*$/gm) ?? []),
    async stop() {
      clearInterval(timer);
      const exited = new Promise((r) => child.once('exit', r));
      child.stdin.end();
      const code = await exited;
      return { code, out };
    },
  };
}

describe('firetower dashboard in headless Chromium against firetower dev', () => {
  let dev;
  let dashboard;
  let browser;
  let publisher;
  const clients = [];
  const pageProblems = [];

  before(async () => {
    dev = await startDev();
    dashboard = await startDashboard({ metastore: METASTORE, apiKeyFile: dev.apiKeyFile, caFile: dev.caFile });
    browser = await launchBrowser();
  });

  after(async () => {
    clients.forEach((c) => c.close());
    await publisher?.stop();
    await browser?.close();
    if (dashboard && dashboard.child.exitCode === null) dashboard.child.kill('SIGKILL');
    await dev?.stop();
  });

  it('shows the cluster, its rates and a hot-topic split live', { timeout: 240000 }, async (t) => {
    t.diagnostic(`firetower binary: ${BIN}; dashboard ${dashboard.url}; topic ${TOPIC}`);
    try {
      // A subscriber on each edge, and a steady publisher: rates and subscriber counts.
      const received = [0, 0];
      for (const [i, url] of dev.edges.entries()) {
        const c = new FiretowerClient(url, { token: dev.token });
        clients.push(c);
        await c.connect();
        await c.subscribe(TOPIC, () => { received[i] += 1; });
      }
      publisher = startPublisher(dev, TOPIC, 100);
      await waitFor(() => received[0] > 0 && received[1] > 0, { timeoutMs: 20000, what: 'both subscribers to receive the publisher\'s messages' });

      const page = await openDashboard(browser, dashboard.url, pageProblems);

      // Members: both distributors and both edges, with the addresses dev gave them.
      const members = await page.waitForFunction(() => {
        const rows = [...document.querySelectorAll('#members tbody tr[data-kind]')];
        const got = rows.map((r) => ({ kind: r.dataset.kind, id: Number(r.dataset.id), addrs: r.children[2].textContent }));
        return got.length >= 4 ? got : null;
      }, { timeout: 20000 }).then((h) => h.jsonValue());
      const member = (kind, id) => members.find((m) => m.kind === kind && m.id === id);
      for (const [kind, id, addr] of [['distributor', 1, 'grpc=127.0.0.1:6667'], ['distributor', 2, 'grpc=127.0.0.1:6677'], ['edge', 1, 'ws=127.0.0.1:9999'], ['edge', 2, 'ws=127.0.0.1:9998']]) {
        assert.ok(member(kind, id), `${kind} ${id} is listed: ${JSON.stringify(members)}`);
        assert.ok(member(kind, id).addrs.includes(addr), `${kind} ${id} shows ${addr}: ${member(kind, id).addrs}`);
      }

      // The grid: every slot's pixel in its owner's colour, two owners.
      const grid = await readGrid(page);
      t.diagnostic(`legend ${JSON.stringify(grid.legend)}`);
      assert.deepEqual(grid.size, [128, 128]);
      assert.ok(grid.shown[0] >= 256 && grid.shown[1] >= 256, `the grid is drawn large: ${grid.shown}`);
      const owners = grid.legend.filter((l) => l.owner !== 0 && l.slots > 0);
      assert.deepEqual(owners.map((l) => l.owner).sort(), [1, 2], 'slots are owned by distributors 1 and 2');
      assert.notEqual(owners[0].rgb, owners[1].rgb, 'the two owners have different colours');
      assert.ok(gridMatchesLegend(grid), `every slot's pixel is in its owner's colour: ${JSON.stringify(grid)}`);

      // The metastore nodes answer their ClusterStatus; one is the leader.
      await page.waitForFunction(() => {
        const rows = [...document.querySelectorAll('#metastore tbody tr[data-addr]')];
        return rows.length === 3 && rows.some((r) => r.textContent.includes('Leader'));
      }, { timeout: 20000 });

      // Every member's lease age from the leader: heartbeats every third of the TTL keep it
      // well below the TTL (3 s in dev).
      const leases = await page.waitForFunction(() => {
        const cells = [...document.querySelectorAll('#members tbody tr[data-kind] td.lease[data-age-ms]')];
        return cells.length >= 4 ? cells.map((c) => ({ age: Number(c.dataset.ageMs), text: c.textContent })) : null;
      }, { timeout: 20000 }).then((h) => h.jsonValue());
      t.diagnostic(`leases ${JSON.stringify(leases)}`);
      for (const l of leases) {
        assert.ok(l.age >= 0 && l.age < 3000, `a live member's lease is younger than its TTL: ${JSON.stringify(l)}`);
        assert.match(l.text, /^\d+\.\d s \/ 3\.0 s$/);
      }

      // Each edge's /metrics: its subscriber's connection, deliveries per second while the
      // publisher runs.
      const edgeRates = await page.waitForFunction(() => {
        const cell = (node, name) => document.querySelector(`#nodes tr[data-node="${node}"] td.${name}`)?.dataset.value;
        const rows = ['edge-1', 'edge-2'].map((n) => ({ node: n, deliveries: Number(cell(n, 'deliveries') ?? 0), connections: Number(cell(n, 'connections') ?? 0) }));
        return rows.every((r) => r.deliveries > 0 && r.connections >= 1) ? rows : null;
      }, { timeout: 30000 }).then((h) => h.jsonValue());
      t.diagnostic(`edge rates ${JSON.stringify(edgeRates)}`);

      // The distributors' metrics and /topics exist only where they register "metrics".
      const state = await (await fetch(`${dashboard.url}/api/state`)).json();
      const withMetrics = state.members.filter((m) => m.kind === 'distributor' && m.addrs.metrics);
      if (withMetrics.length > 0) {
        t.diagnostic(`distributors with a metrics address: ${withMetrics.map((m) => `${m.id}=${m.addrs.metrics}`).join(', ')}`);
        await page.waitForFunction(() => [...document.querySelectorAll('#nodes tr[data-node^="distributor-"] td.publishes')]
          .some((td) => Number(td.dataset.value ?? 0) > 0), { timeout: 30000 });
        await page.waitForFunction((topic) => {
          const row = document.querySelector(`#topics tr[data-topic="${CSS.escape(topic)}"]`);
          return row && Number(row.querySelector('td.rate').textContent) > 0
            && row.querySelector('td.subscribers').textContent === '2';
        }, { timeout: 30000 }, TOPIC);
      } else {
        t.diagnostic('no distributor registers a "metrics" address: busiest topics must say "no data"');
        await page.waitForFunction(() => document.querySelector('#topics')?.dataset.state === 'no-data'
          && document.querySelector('#topics tbody').textContent.includes('no data')
          && [...document.querySelectorAll('#nodes tr[data-node^="distributor-"]')].length === 2
          && [...document.querySelectorAll('#nodes tr[data-node^="distributor-"]')].every((r) => r.textContent.includes('no metrics address')),
        { timeout: 20000 });
      }

      // The event stream is bounded: the page holds one place, two more fit, then 503.
      const streams = [];
      try {
        for (let i = 1; i < MAX_VIEWERS; i++) {
          const controller = new AbortController();
          const r = await fetch(`${dashboard.url}/api/events`, { signal: controller.signal });
          streams.push(controller);
          assert.equal(r.status, 200, `viewer ${i + 1} of ${MAX_VIEWERS} is served`);
          assert.match(r.headers.get('content-type'), /^text\/event-stream/);
        }
        const refused = await fetch(`${dashboard.url}/api/events`);
        assert.equal(refused.status, 503, `viewer ${MAX_VIEWERS + 1} is refused`);
      } finally {
        streams.forEach((c) => c.abort());
      }

      // A change while the page is open: split the topic into 4. The page shows it (prepared,
      // then committed once both edges joined) and its subscribers, without reloading.
      await page.evaluate(() => { window.__sameDocument = true; });
      const revisionBefore = Number(await page.$eval('#revision', (e) => e.textContent));
      const { stdout } = await run(BIN, ['hot', 'set', '--metastore', METASTORE, '--topic', TOPIC, '--shards', '4',
        '--api-key-file', dev.apiKeyFile, '--ca-file', dev.caFile]);
      t.diagnostic(`hot set: ${stdout.trim().replace(/\n/g, ' | ')}`);
      const hot = await page.waitForFunction((topic) => {
        const row = document.querySelector(`#hot tr[data-topic="${CSS.escape(topic)}"]`);
        return row && row.dataset.shards === '4' && row.dataset.phase === 'committed'
          ? { shards: row.querySelector('td.shards').textContent, phase: row.dataset.phase } : null;
      }, { timeout: 20000 }, TOPIC).then((h) => h.jsonValue());
      assert.deepEqual(hot, { shards: '4', phase: 'committed' });
      assert.equal(await page.evaluate(() => window.__sameDocument), true, 'the page was not reloaded');
      const revisionAfter = Number(await page.$eval('#revision', (e) => e.textContent));
      assert.ok(revisionAfter > revisionBefore, `the revision moved on: ${revisionBefore} → ${revisionAfter}`);
      await page.waitForFunction((topic) => document.querySelector(`#hot tr[data-topic="${CSS.escape(topic)}"] td.subscribers`)?.textContent === '2',
        { timeout: 20000 }, TOPIC);

      // The picture, with a couple of rounds of rates in the trend lines.
      await new Promise((r) => setTimeout(r, 6000));
      await page.screenshot({ path: SCREENSHOT, fullPage: true });
      t.diagnostic(`screenshot: ${SCREENSHOT}`);

      assert.deepEqual(pageProblems, [], 'the page logged no errors (a CSP violation would be one)');
      const { code } = await publisher.stop();
      publisher = null;
      assert.equal(code, 0, 'every message was published');

      // SIGTERM ends the dashboard cleanly, with its event streams open.
      const exited = new Promise((r) => dashboard.child.once('exit', (c, s) => r({ c, s })));
      dashboard.child.kill('SIGTERM');
      const timer = setTimeout(() => dashboard.child.kill('SIGKILL'), 10000);
      const end = await exited;
      clearTimeout(timer);
      assert.deepEqual(end, { c: 0, s: null }, 'the dashboard exits 0 on SIGTERM');
    } catch (e) {
      t.diagnostic(`dashboard log:\n${dashboard.log()}`);
      if (pageProblems.length) t.diagnostic(`page problems:\n${pageProblems.join('\n')}`);
      throw e;
    }
  });
});

// Slot moves need a distributor to leave, which `dev` (one process) cannot show: the same
// dashboard against a cluster of separate processes (clients/js/test/cluster.mjs).
describe('firetower dashboard: slot moves on a cluster of separate processes', () => {
  let cluster;
  let dashboard;
  let browser;
  const pageProblems = [];

  before(async () => {
    cluster = await Cluster.start({ edges: 1, distributors: 2 });
    dashboard = await startDashboard(cluster);
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    if (dashboard && dashboard.child.exitCode === null) dashboard.child.kill('SIGKILL');
    await cluster?.stop();
  });

  /** Resolves once the grid is drawn with exactly these owners, every pixel settled in its
   * owner's colour (no move still flashing). */
  async function waitForOwners(page, owners, what) {
    let last;
    await waitFor(async () => {
      last = await readGrid(page);
      const drawn = last.legend.filter((l) => l.slots > 0).map((l) => l.owner).sort();
      return JSON.stringify(drawn) === JSON.stringify(owners) && gridMatchesLegend(last);
    }, { timeoutMs: 30000, intervalMs: 100, what: `${what}; last legend ${JSON.stringify(last?.legend)}` });
    return last;
  }

  /** The moves the page logged: {revision, n, from, to}. */
  const readMoves = (page) => page.$$eval('#moves li[data-revision]', (lis) => lis.map((li) => {
    const m = li.textContent.match(/^revision (\d+): (\d+) slots? (\S+) → (\S+)$/);
    return m ? { revision: Number(m[1]), n: Number(m[2]), from: m[3], to: m[4] } : { text: li.textContent };
  }));

  it('shows a distributor leave and come back, its slots moving live', { timeout: 240000 }, async (t) => {
    try {
      const page = await openDashboard(browser, dashboard.url, pageProblems);
      await page.evaluate(() => { window.__sameDocument = true; });
      const before = await waitForOwners(page, [1, 2], 'the two distributors to own the slots');
      const d2Slots = before.legend.find((l) => l.owner === 2).slots;

      // Distributor 2 stops: its slots go to distributor 1.
      const d2 = cluster.processes['distributor-2'];
      const args = d2.spawnargs.slice(1);
      const exited = new Promise((r) => d2.once('exit', r));
      d2.kill('SIGTERM');
      await exited;
      await page.waitForFunction(() => !document.querySelector('#members tr[data-kind="distributor"][data-id="2"]')
        && document.querySelector('#departed').textContent.includes('distributor 2'), { timeout: 30000 });
      await waitForOwners(page, [1], 'distributor 1 to own every slot');
      let moves = await readMoves(page);
      t.diagnostic(`moves after distributor 2 left: ${JSON.stringify(moves)}`);
      const toD1 = moves.filter((m) => m.from === 'd2' && m.to === 'd1').reduce((n, m) => n + m.n, 0);
      assert.equal(toD1, d2Slots, 'the log shows every slot of distributor 2 moving to distributor 1');

      // It comes back (a new registration): rebalancing moves slots back to it.
      const child = spawn(BIN, args, { stdio: 'ignore', env: { ...process.env, RUST_LOG: 'warn' } });
      process.on('exit', () => child.kill('SIGKILL'));
      cluster.processes['distributor-2'] = child;
      // A move caught while it flashes: some slots are drawn in neither owner's colour.
      const flashing = await waitFor(async () => {
        const grid = await readGrid(page);
        const owned = grid.legend.reduce((n, l) => n + (grid.pixels[l.rgb] ?? 0), 0);
        return owned < 16384 && grid.legend.some((l) => l.owner === 2 && l.slots > 0) ? 16384 - owned : 0;
      }, { timeoutMs: 30000, intervalMs: 20, what: 'slots moving to distributor 2 to flash' });
      t.diagnostic(`${flashing} slots flashing at once`);
      // Registered while the page watched: its registration's age is known.
      await page.waitForFunction(() => {
        const row = document.querySelector('#members tr[data-kind="distributor"][data-id="2"]');
        return row && /\d+ s ago/.test(row.children[4].textContent);
      }, { timeout: 30000 });
      const after = await waitForOwners(page, [1, 2], 'the slots to be spread over both distributors again');
      moves = await readMoves(page);
      const toD2 = moves.filter((m) => m.from === 'd1' && m.to === 'd2').reduce((n, m) => n + m.n, 0);
      assert.equal(toD2, after.legend.find((l) => l.owner === 2).slots, 'the log shows each slot moved to distributor 2');
      assert.equal(await page.evaluate(() => window.__sameDocument), true, 'the page was not reloaded');
      assert.deepEqual(pageProblems, [], 'the page logged no errors');
    } catch (e) {
      t.diagnostic(`dashboard log:\n${dashboard.log()}`);
      if (pageProblems.length) t.diagnostic(`page problems:\n${pageProblems.join('\n')}`);
      throw e;
    }
  });
});
