// End-to-end: the chat demo (edge/src/demo.html, served by every edge at `/` on top of
// `/firetower.js`) in headless Chromium against a real cluster of separate processes
// (../test/cluster.mjs: 3 metastore nodes, 2 distributors, 2 edges).
//
// Page A (alice) is on edge 1, page B (bob) on edge 2, in the same room. Alice chats; bob
// sees it. Then edge 2 is killed (SIGKILL) and started again on its port while alice keeps
// chatting: bob's page reconnects on its own, says the room's missed messages were
// recovered, and shows every message exactly once, in order. Everything is read from the
// pages' DOM, by polling with timeouts.
//
// Run it with ./run.sh (it installs Chromium and puppeteer-core when missing). Needs a
// global WebSocket in node for cluster.mjs (node >= 22, or 20 with --experimental-websocket).
// Environment: FIRETOWER_BIN (default target/release/firetower), CHROMIUM (default
// /usr/bin/chromium), FIRETOWER_KEEP=1 keeps the cluster's temp dir and logs.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp } from 'node:fs/promises';
import { rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import puppeteer from 'puppeteer-core';
import { Cluster, waitFor, BIN } from '../test/cluster.mjs';

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const ROOM = `e2e-${Date.now().toString(36)}`;
const TOPIC = `chat/${ROOM}`;

/** What the page's #log shows: one entry per line, in order. A chat line is
 * {nick, text, seq}; a system or error line is {cls: 'sys'|'err', text}. */
function readLog(page) {
  return page.$$eval('#log li', (lis) => lis.map((li) => {
    const spans = [...li.children];
    if (li.classList.contains('sys') || li.classList.contains('err')) {
      return { cls: li.className, text: li.textContent };
    }
    return {
      nick: li.querySelector('.nick')?.textContent ?? '',
      text: spans[1]?.textContent ?? '',
      seq: li.querySelector('.seq')?.textContent ?? '',
    };
  }));
}

/** Empties the input `selector`, focuses it and types `text` with key events. (Not
 * puppeteer's locators or clicks: they wait for animation frames, which a page whose
 * window is not in front does not get.) */
async function typeInto(page, selector, text) {
  await page.$eval(selector, (el) => { el.value = ''; el.focus(); });
  await page.keyboard.type(text);
  const value = await page.$eval(selector, (el) => el.value);
  assert.equal(value, text, `${selector} holds what was typed`);
}

const chatTexts = (log) => log.filter((l) => !l.cls).map((l) => `${l.nick} ${l.text}`);
const status = (page) => page.$eval('#status', (el) => el.textContent);

describe('chat demo in headless Chromium, across two edges and an edge restart', () => {
  let cluster;
  let browser;
  const pages = {};
  // What each page printed to its console and any uncaught error: shown when a test fails.
  const pageLogs = [];

  before(async () => {
    cluster = await Cluster.start();
    // cluster.stop() removes the cluster's temp dir; when a signal ends the run instead
    // (run.sh's Ctrl-C or SIGTERM), cluster.mjs kills the processes and this removes it.
    process.on('exit', () => {
      if (!process.env.FIRETOWER_KEEP) {
        try {
          rmSync(cluster.dir, { recursive: true, force: true, maxRetries: 3 });
        } catch {
          // a process still dying kept writing there: left for the OS's tmp cleanup
        }
      }
    });
    browser = await puppeteer.launch({
      executablePath: CHROMIUM,
      headless: true, // --headless=new
      pipe: true, // CDP over a pipe: Chromium exits when this process dies, whatever kills it
      args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu'],
    });
  });

  after(async () => {
    await browser?.close();
    await cluster?.stop();
  });

  /** Opens the demo from edge `edge` with a token minted for `user`, sets the nick and
   * the room and joins it; resolves once the page says it subscribed. */
  async function openChat(name, edge, user) {
    const token = await cluster.token({ user, subscribe: ['chat/*'], publish: ['chat/*'] });
    // A browser context (a window with its own storage) per user, as two people would.
    const context = await browser.createBrowserContext();
    const page = await context.newPage();
    page.on('console', (m) => pageLogs.push(`[${name} console.${m.type()}] ${m.text()}`));
    page.on('pageerror', (e) => pageLogs.push(`[${name} pageerror] ${e.message}`));
    await page.setViewport({ width: 800, height: 700 });
    const url = cluster.httpUrl(edge, `/?token=${encodeURIComponent(token)}`);
    const response = await page.goto(url, { waitUntil: 'load' });
    assert.equal(response.status(), 200, `GET ${url}`);
    await waitFor(async () => (await status(page)) === 'connected', { timeoutMs: 20000, what: `page ${name} to show "connected"` });
    await typeInto(page, '#nick', user);
    await typeInto(page, '#room', ROOM);
    await page.keyboard.press('Enter'); // Enter in the room box joins, like the Join button
    await waitFor(async () => (await readLog(page)).some((l) => l.cls === 'sys' && l.text === `subscribed to ${TOPIC}`),
      { timeoutMs: 20000, what: `page ${name} to show "subscribed to ${TOPIC}"` });
    pages[name] = page;
    return page;
  }

  /** Types `text` into page A's box and sends it with the Send button; resolves once A
   * shows its own message (back from the topic), so that messages are sent one at a time
   * and their order is known. */
  const sent = [];
  async function say(text) {
    const a = pages.A;
    await typeInto(a, '#text', text);
    await a.keyboard.press('Enter'); // submits the form, like the Send button
    sent.push(`alice: ${text}`);
    await waitFor(async () => chatTexts(await readLog(a)).includes(`alice: ${text}`),
      { timeoutMs: 20000, what: `page A to show its own message "${text}"` });
  }

  /** Polls until page `name` shows exactly the messages sent so far (no more, no fewer). */
  async function waitForAll(name, timeoutMs = 20000) {
    let last = [];
    try {
      await waitFor(async () => {
        last = chatTexts(await readLog(pages[name]));
        return last.length >= sent.length;
      }, { timeoutMs, what: `page ${name} to show ${sent.length} messages` });
    } catch (e) {
      throw new Error(`${e.message}; it shows ${JSON.stringify(last)}`);
    }
    assert.deepEqual(chatTexts(await readLog(pages[name])), sent, `page ${name}'s messages`);
  }

  it('chats between pages on two edges and recovers what page B missed while its edge restarted', { timeout: 240000 }, async (t) => {
    t.diagnostic(`firetower binary: ${BIN}; cluster dir: ${cluster.dir}; room ${ROOM}`);
    let passed = false;
    try {
      await openChat('A', 1, 'alice');
      await openChat('B', 2, 'bob');
      // The demo takes its socket from the page's own host: A is on edge 1, B on edge 2.
      assert.equal(new URL(pages.A.url()).port, String(cluster.edgePorts[0]));
      assert.equal(new URL(pages.B.url()).port, String(cluster.edgePorts[1]));

      // 1. Both edges up: what A says, B shows.
      for (let i = 1; i <= 3; i++) await say(`before ${i}`);
      await waitForAll('B');

      // 2. Edge 2 dies without a word (SIGKILL): B's page notices and says so.
      await cluster.killEdge(2);
      await waitFor(async () => /^closed \(1006\b/.test(await status(pages.B)),
        { timeoutMs: 20000, what: 'page B to show "closed (1006…)" after edge 2 was killed' });
      const bLogBeforeRestart = await readLog(pages.B);

      // 3. A keeps chatting while edge 2 is down ...
      for (let i = 1; i <= 3; i++) await say(`while down ${i}`);
      // ... and while it starts again on the same port (restartEdge resolves once it
      // serves publishes), one message at a time.
      let restarted = false;
      const restart = cluster.restartEdge(2).finally(() => { restarted = true; });
      restart.catch(() => {}); // awaited below; a failure must not count as unhandled meanwhile
      let during = 0;
      while (!restarted) {
        await say(`during restart ${++during}`);
        if (!restarted) await new Promise((r) => setTimeout(r, 250)); // pacing, not an assertion
      }
      await restart;
      t.diagnostic(`${during} messages sent while edge 2 was starting again`);
      // B got none of these before it reconnected (its edge was dead).
      assert.deepEqual(chatTexts(bLogBeforeRestart), sent.slice(0, 3));

      // 4. B reconnects to edge 2 on its own (the library's backoff) and says the room's
      // missed messages were recovered; then shows everything, exactly once and in order.
      const recoveredLine = `reconnected to ${TOPIC}: missed messages recovered`;
      await waitFor(async () => (await readLog(pages.B)).some((l) => l.cls === 'sys' && l.text.startsWith(`reconnected to ${TOPIC}`)),
        { timeoutMs: 60000, what: 'page B to show that it reconnected to the room' });
      await waitFor(async () => (await status(pages.B)) === 'connected', { timeoutMs: 20000, what: 'page B to show "connected" again' });
      await waitForAll('B');
      for (let i = 1; i <= 2; i++) await say(`after ${i}`); // live again
      await waitForAll('B');
      await waitForAll('A');

      const bLog = await readLog(pages.B);
      const sysLines = bLog.filter((l) => l.cls === 'sys').map((l) => l.text);
      assert.ok(sysLines.includes(recoveredLine), `page B shows "${recoveredLine}"; its system lines: ${JSON.stringify(sysLines)}`);
      assert.ok(!sysLines.some((s) => s.includes('could not be recovered')), `page B says something was not recovered: ${JSON.stringify(sysLines)}`);
      // The recovered messages come after the recovery notice (they follow the ack), the
      // ones from before the kill before it.
      const at = (text) => bLog.findIndex((l) => !l.cls && `${l.nick} ${l.text}` === text);
      const notice = bLog.findIndex((l) => l.cls === 'sys' && l.text === recoveredLine);
      assert.ok(at(sent[2]) < notice && notice < at('alice: while down 1'),
        `the recovery notice sits between "before 3" and "while down 1" in page B's log: ${JSON.stringify(bLog)}`);
      // The positions B shows are strictly increasing: nothing twice, nothing out of order.
      const seqs = bLog.filter((l) => !l.cls).map((l) => l.seq.split('.').map(Number));
      for (let i = 1; i < seqs.length; i++) {
        const [e0, s0] = seqs[i - 1];
        const [e1, s1] = seqs[i];
        assert.ok(e1 > e0 || (e1 === e0 && s1 > s0), `positions in page B's order: ${seqs.map((p) => p.join('.')).join(' ')}`);
      }
      // The two pages show the same messages at the same positions, and no error.
      const aLog = await readLog(pages.A);
      assert.deepEqual(aLog.filter((l) => !l.cls).map((l) => [l.text, l.seq]), bLog.filter((l) => !l.cls).map((l) => [l.text, l.seq]));
      for (const [name, log] of [['A', aLog], ['B', bLog]]) {
        assert.deepEqual(log.filter((l) => l.cls === 'err'), [], `page ${name} shows errors`);
      }
      assert.equal(await status(pages.A), 'connected');
      t.diagnostic(`page B shows ${sent.length} messages: 3 before the kill, ${sent.length - 5} sent while edge 2 was down or starting, 2 after`);
      passed = true;
    } finally {
      if (pages.B) {
        const dir = await mkdtemp(join(tmpdir(), 'firetower-e2e-'));
        const path = join(dir, 'chat-page-b.png');
        await pages.B.screenshot({ path, fullPage: true }).catch((e) => pageLogs.push(`screenshot failed: ${e.message}`));
        t.diagnostic(`screenshot of page B: ${path}`);
      }
      if (!passed && pageLogs.length) t.diagnostic(`page console:\n${pageLogs.join('\n')}`);
    }
  });
});
