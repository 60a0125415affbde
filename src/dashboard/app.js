// The Firetower dashboard page: follows /api/events (Server-Sent Events) and draws what it
// says. No framework, no build step; served by `firetower dashboard` with the page.
//
// Events: `state` (everything: sent first, and again after every reconnect), `delta` (from
// the metastore's watch: slot moves, members, hot topics), `metrics` (every scrape round:
// node rates, busiest topics, subscriber counts, metastore nodes).

const SLOTS = 16384;
const SIDE = 128;
const FLASH_MS = 1500;
const TREND_POINTS = 60;
const MOVES_SHOWN = 30;

const $ = (sel) => document.querySelector(sel);

const view = {
  revision: 0,
  owners: new Float64Array(SLOTS),
  members: [],
  departed: [],
  hot: [],
  metrics: null,
  /** When the last state/delta/metrics arrived (ages tick on from it). */
  membersAt: 0,
  metricsAt: 0,
};
/** slot -> when it moved (for the flash). */
const flashes = new Map();
/** node key -> [{p, d}] rates over the last rounds. */
const trends = new Map();
/** node key -> its <details> (kept across rounds, so an opened one stays open). */
const familyBlocks = new Map();

// ---- colours -------------------------------------------------------------------------

const PALETTE = [
  [78, 121, 167], [242, 142, 43], [89, 161, 79], [225, 87, 89], [118, 183, 178],
  [237, 201, 72], [176, 122, 161], [255, 157, 167], [156, 117, 95], [186, 176, 172],
];
const UNOWNED = [42, 47, 58];

function hslToRgb(h, s, l) {
  const k = (n) => (n + h / 30) % 12;
  const a = s * Math.min(l, 1 - l);
  const f = (n) => l - a * Math.max(-1, Math.min(k(n) - 3, Math.min(9 - k(n), 1)));
  return [Math.round(f(0) * 255), Math.round(f(8) * 255), Math.round(f(4) * 255)];
}

/** The colour of distributor `id` (0: unowned), the same for an id on every page. */
function ownerColour(id) {
  if (!id) return UNOWNED;
  if (id <= PALETTE.length) return PALETTE[id - 1];
  return hslToRgb((id * 137.508) % 360, 0.6, 0.55);
}
const css = ([r, g, b]) => `rgb(${r}, ${g}, ${b})`;

// ---- formatting ----------------------------------------------------------------------

function fmtNum(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return '–';
  const abs = Math.abs(n);
  if (abs >= 1e9) return `${(n / 1e9).toFixed(2)}G`;
  if (abs >= 1e6) return `${(n / 1e6).toFixed(2)}M`;
  if (abs >= 1e4) return `${(n / 1e3).toFixed(1)}k`;
  if (abs >= 100 || Number.isInteger(n)) return String(Math.round(n));
  return n.toFixed(abs >= 10 ? 1 : 2);
}

function fmtAge(ms) {
  if (ms === null || ms === undefined) return '–';
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  const h = Math.floor(s / 3600);
  return h < 48 ? `${h} h ${Math.floor((s % 3600) / 60)} min` : `${Math.floor(h / 24)} d`;
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null) continue;
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

function setRows(tbody, rows, emptyText, columns) {
  tbody.replaceChildren(...(rows.length ? rows : [el('tr', { class: 'empty' }, el('td', { colspan: columns, text: emptyText }))]));
}

// ---- the slot map ----------------------------------------------------------------------

const canvas = $('#slots');
const ctx = canvas.getContext('2d');
const image = ctx.createImageData(SIDE, SIDE);
let flashTimer = null;

function paintSlot(slot, now) {
  let [r, g, b] = ownerColour(view.owners[slot]);
  const since = flashes.get(slot);
  if (since !== undefined) {
    const t = (now - since) / FLASH_MS;
    if (t >= 1) {
      flashes.delete(slot);
    } else {
      // From white to the new owner's colour.
      const w = 1 - t;
      r += (255 - r) * w; g += (255 - g) * w; b += (255 - b) * w;
    }
  }
  const i = slot * 4;
  image.data[i] = r; image.data[i + 1] = g; image.data[i + 2] = b; image.data[i + 3] = 255;
}

function drawSlots() {
  const now = performance.now();
  for (let s = 0; s < SLOTS; s++) paintSlot(s, now);
  ctx.putImageData(image, 0, 0);
  drawLegend();
}

/** Steps the flashes of moved slots; stops when none is left. (A timer, not animation
 * frames: a page in the background still ends with the right colours.) */
function animate() {
  if (flashTimer) return;
  flashTimer = setInterval(() => {
    const now = performance.now();
    for (const slot of [...flashes.keys()]) paintSlot(slot, now);
    ctx.putImageData(image, 0, 0);
    if (!flashes.size) {
      clearInterval(flashTimer);
      flashTimer = null;
    }
  }, 50);
}

function drawLegend() {
  const counts = new Map();
  for (let s = 0; s < SLOTS; s++) counts.set(view.owners[s], (counts.get(view.owners[s]) ?? 0) + 1);
  for (const m of view.members) {
    if (m.kind === 'distributor' && !counts.has(m.id)) counts.set(m.id, 0);
  }
  const ids = [...counts.keys()].sort((a, b) => a - b);
  $('#legend').replaceChildren(...ids.map((id) => {
    const rgb = ownerColour(id);
    const swatch = el('span', { class: 'swatch' });
    swatch.style.background = css(rgb);
    return el('li', { 'data-owner': String(id), 'data-rgb': rgb.join(','), 'data-slots': String(counts.get(id)) },
      swatch, `${id ? `distributor ${id}` : 'unowned'}: ${counts.get(id)} slots`);
  }));
}

canvas.addEventListener('mousemove', (e) => {
  const rect = canvas.getBoundingClientRect();
  const x = Math.floor(((e.clientX - rect.left) / rect.width) * SIDE);
  const y = Math.floor(((e.clientY - rect.top) / rect.height) * SIDE);
  if (x < 0 || y < 0 || x >= SIDE || y >= SIDE) return;
  const slot = y * SIDE + x;
  const owner = view.owners[slot];
  $('#slot-hover').textContent = `slot ${slot}: ${owner ? `distributor ${owner}` : 'unowned'}`;
});

function addMoves(revision, moves, before) {
  // One line per (from, to) pair of this revision.
  const pairs = new Map();
  moves.forEach(([slot, to], i) => {
    const key = `${before[i]}→${to}`;
    pairs.set(key, (pairs.get(key) ?? 0) + 1);
  });
  const log = $('#moves');
  log.querySelector('.empty')?.remove();
  for (const [key, n] of pairs) {
    const [from, to] = key.split('→').map(Number);
    const name = (id) => (id ? `d${id}` : 'unowned');
    const li = el('li', { class: 'fresh', 'data-revision': String(revision), text: `revision ${revision}: ${n} slot${n === 1 ? '' : 's'} ${name(from)} → ${name(to)}` });
    log.prepend(li);
    setTimeout(() => li.classList.remove('fresh'), 5000);
  }
  while (log.children.length > MOVES_SHOWN) log.lastChild.remove();
}

// ---- members, metastore ---------------------------------------------------------------

function scrapeOf(kind, id) {
  return view.metrics?.nodes?.find((n) => n.kind === kind && n.id === id);
}

// The lease column: the age of the member's lease (since the last heartbeat the leader
// took, as of the last scrape of the leader's ClusterStatus) against its TTL.
function leaseCell(m) {
  const ttl = `${(m.lease_ttl_ms / 1000).toFixed(1)} s`;
  const lease = (view.metrics?.leases ?? []).find((l) => l.kind === m.kind && l.id === m.id);
  if (!lease) {
    return { text: `– / ${ttl}`, title: 'no lease from the leader yet (only the leader tracks them)' };
  }
  const due = lease.remaining_ms === 0;
  return {
    text: `${(lease.age_ms / 1000).toFixed(1)} s / ${ttl}`,
    class: due ? 'num lease err' : 'num lease',
    title: due ? 'the lease ran out: the leader is expiring this member'
      : `last heartbeat ${lease.age_ms} ms before the scrape; expired in ${lease.remaining_ms} ms without another`,
    'data-age-ms': String(lease.age_ms),
  };
}

function drawMembers() {
  const sinceState = Date.now() - view.membersAt;
  const sinceMetrics = Date.now() - view.metricsAt;
  const rows = view.members.map((m) => {
    const addrs = el('span', { class: 'addr' });
    Object.entries(m.addrs).sort().forEach(([k, v], i) => {
      if (i) addrs.append(' ');
      addrs.append(`${k}=`, el('b', { text: v }));
    });
    const scrape = scrapeOf(m.kind, m.id);
    let seen = el('span', { class: 'dim', text: 'no data' });
    if (scrape?.last_ok_ms_ago !== undefined && scrape?.last_ok_ms_ago !== null && !scrape.error) {
      seen = el('span', { class: 'ok', text: `${fmtAge(scrape.last_ok_ms_ago + sinceMetrics)} ago` });
    } else if (scrape?.error) {
      seen = el('span', { class: scrape.error === 'no metrics address' ? 'dim' : 'err', text: scrape.error, title: scrape.error });
    }
    const registered = m.registered_ms_ago === null
      ? el('span', { class: 'dim', text: 'before this dashboard started', title: 'the metastore does not say when; it was registered when the dashboard took its snapshot' })
      : `${fmtAge(m.registered_ms_ago + sinceState)} ago`;
    return el('tr', { 'data-kind': m.kind, 'data-id': String(m.id) },
      el('td', { text: m.kind }),
      el('td', { class: 'num', text: String(m.id) }),
      el('td', {}, addrs),
      el('td', { class: 'num lease', ...leaseCell(m) }),
      el('td', {}, registered),
      el('td', { class: 'num', title: 'the metastore revision of this registration', text: String(m.incarnation) }),
      el('td', { class: 'num', text: m.slots === null || m.slots === undefined ? '' : String(m.slots) }),
      el('td', {}, seen));
  });
  setRows($('#members tbody'), rows, 'no members registered', 8);
  const departed = view.departed.map((d) => `${d.kind} ${d.id} (${fmtAge(d.ms_ago + sinceState)} ago)`);
  $('#departed').textContent = departed.length ? `Left: ${departed.join(', ')}` : '';
  const dist = view.members.filter((m) => m.kind === 'distributor').length;
  const edges = view.members.filter((m) => m.kind === 'edge').length;
  $('#counts').textContent = `${dist} distributor${dist === 1 ? '' : 's'}, ${edges} edge${edges === 1 ? '' : 's'}`;
}

function drawMetastore() {
  const nodes = view.metrics?.metastore ?? [];
  const rows = nodes.map((n) => (n.reachable
    ? el('tr', { 'data-addr': n.addr },
      el('td', { class: 'addr', text: n.addr }), el('td', { class: 'num', text: String(n.id) }),
      el('td', { class: n.state === 'Leader' ? 'ok' : '', text: n.state }), el('td', { class: 'num', text: String(n.term) }),
      el('td', { class: 'num', text: String(n.last_applied) }), el('td', { class: 'num', text: String(n.revision) }))
    : el('tr', { 'data-addr': n.addr },
      el('td', { class: 'addr', text: n.addr }), el('td', { colspan: 5, class: 'err', text: `unreachable: ${n.error}` }))));
  setRows($('#metastore tbody'), rows, 'no data yet', 6);
  const leader = nodes.find((n) => n.reachable && n.leader !== null && n.leader !== undefined);
  $('#leader').replaceChildren('leader ', el('b', { text: leader ? `${leader.leader} (term ${leader.term})` : 'unknown' }));
}

// ---- node rates -----------------------------------------------------------------------

function drawTrend(canvasEl, points) {
  const c = canvasEl.getContext('2d');
  const w = canvasEl.width;
  const h = canvasEl.height;
  c.clearRect(0, 0, w, h);
  const max = Math.max(1, ...points.flatMap((p) => [p.p ?? 0, p.d ?? 0]));
  const line = (key, colour) => {
    c.strokeStyle = colour;
    c.lineWidth = 1.5;
    c.beginPath();
    // Oldest at the left, newest at the right (spread over the width until there are
    // TREND_POINTS); no line where the figure is missing.
    const span = Math.max(1, points.length - 1);
    let drawing = false;
    points.forEach((p, i) => {
      if (p[key] === null || p[key] === undefined) {
        drawing = false;
        return;
      }
      const x = (i / span) * (w - 2) + 1;
      const y = h - 2 - (p[key] / max) * (h - 4);
      if (drawing) c.lineTo(x, y); else c.moveTo(x, y);
      drawing = true;
    });
    c.stroke();
  };
  line('d', css(PALETTE[0]));
  line('p', css(PALETTE[1]));
}

function headlineCell(name, h, kind) {
  const td = el('td', { class: `num ${name}` });
  if (!h) {
    td.textContent = '–';
    td.title = `no ${name} family in this node's metrics`;
    return td;
  }
  const value = kind === 'rate' ? h.rate : h.value;
  td.textContent = value === null || value === undefined ? '…' : fmtNum(value);
  td.title = `${h.family} = ${fmtNum(h.value)}`;
  if (value !== null && value !== undefined) td.dataset.value = String(value);
  return td;
}

function drawNodes() {
  const nodes = view.metrics?.nodes ?? [];
  const rows = nodes.map((n) => {
    const key = `${n.kind}-${n.id}`;
    const h = n.headline ?? {};
    const trend = el('canvas', { class: 'spark', width: '120', height: '24' });
    drawTrend(trend, trends.get(key) ?? []);
    const scrape = n.error
      ? el('span', { class: n.error === 'no metrics address' ? 'dim' : 'err', text: n.error, title: n.addr ?? '' })
      : el('span', { class: 'ok', text: `ok · ${n.families_total ?? 0} families${n.truncated ? ' (truncated)' : ''}`, title: n.addr ?? '' });
    return el('tr', { 'data-node': key },
      el('td', { text: `${n.kind} ${n.id}` }),
      headlineCell('publishes', h.publishes, 'rate'),
      headlineCell('deliveries', h.deliveries, 'rate'),
      headlineCell('connections', h.connections, 'value'),
      el('td', {}, trend),
      el('td', {}, scrape));
  });
  setRows($('#nodes tbody'), rows, 'no members', 6);

  // Every family of each node, in a block that stays open once opened.
  const box = $('#families');
  const keys = new Set();
  for (const n of nodes) {
    const key = `${n.kind}-${n.id}`;
    keys.add(key);
    let block = familyBlocks.get(key);
    if (!block) {
      block = el('details', { 'data-node': key }, el('summary'), el('table', {}, el('thead', {}, el('tr', {},
        el('th', { text: 'family' }), el('th', { text: 'kind' }), el('th', { class: 'num', text: 'value' }), el('th', { class: 'num', text: 'per second' }))), el('tbody')));
      familyBlocks.set(key, block);
      box.append(block);
    }
    const families = n.families ?? [];
    block.querySelector('summary').textContent = `${n.kind} ${n.id}: ${families.length} of ${n.families_total ?? 0} families${n.error ? ` (${n.error})` : ''}`;
    setRows(block.querySelector('tbody'), families.map((f) => el('tr', {},
      el('td', { class: 'addr', text: f.name }), el('td', { class: 'dim', text: f.kind }),
      el('td', { class: 'num', text: fmtNum(f.value) }), el('td', { class: 'num', text: f.rate === null ? '–' : fmtNum(f.rate) }))), 'no data', 4);
  }
  for (const [key, block] of familyBlocks) {
    if (!keys.has(key)) {
      block.remove();
      familyBlocks.delete(key);
    }
  }
}

function recordTrends() {
  const keys = new Set();
  for (const n of view.metrics?.nodes ?? []) {
    const key = `${n.kind}-${n.id}`;
    keys.add(key);
    const points = trends.get(key) ?? [];
    points.push({ p: n.headline?.publishes?.rate ?? null, d: n.headline?.deliveries?.rate ?? null });
    while (points.length > TREND_POINTS) points.shift();
    trends.set(key, points);
  }
  for (const key of [...trends.keys()]) if (!keys.has(key)) trends.delete(key);
}

// ---- topics ---------------------------------------------------------------------------

/** The topics whose row changed since the last drawing, to flash them. */
const hotSeen = new Map();

function subscribersOf(topic) {
  const n = view.metrics?.subscribers?.[topic];
  return n === null || n === undefined ? '–' : String(n);
}

function drawHot() {
  const live = view.hot.filter((h) => !(h.committed && h.shards === 0));
  const merged = view.hot.length - live.length;
  const rows = live.map((h) => {
    const phase = h.committed ? 'committed' : 'prepared';
    const sig = `${h.shards}/${h.prev_shards}/${phase}/${h.since}`;
    const changed = hotSeen.has(h.topic) && hotSeen.get(h.topic) !== sig;
    hotSeen.set(h.topic, sig);
    return el('tr', { 'data-topic': h.topic, 'data-shards': String(h.shards), 'data-phase': phase, class: changed ? 'changed' : undefined },
      el('td', { class: 'addr', text: h.topic }),
      el('td', { class: 'num shards', text: String(h.shards), title: `previously ${h.prev_shards}` }),
      el('td', { class: `phase-${phase}`, text: h.committed ? 'committed' : `prepared (${h.prev_shards} → ${h.shards}, edges joining)` }),
      el('td', { class: 'num', text: `rev ${h.since}` }),
      el('td', { class: 'num subscribers', text: subscribersOf(h.topic) }));
  });
  setRows($('#hot tbody'), rows, 'none', 5);
  $('#hot').dataset.state = rows.length ? 'rows' : 'empty';
  $('#merged').textContent = merged ? `${merged} topic${merged === 1 ? '' : 's'} merged back into one` : '';
}

function drawTopics() {
  const table = $('#topics');
  const topics = view.metrics?.topics;
  const sources = view.metrics?.topic_sources;
  if (!topics) {
    setRows(table.querySelector('tbody'), [], 'no data', 4);
    table.dataset.state = 'no-data';
    $('#topic-sources').textContent = !view.metrics ? ''
      : sources?.distributors ? `${sources.distributors} distributor /topics endpoint${sources.distributors === 1 ? '' : 's'} did not answer`
        : 'no distributor registers a "metrics" address serving /topics';
    return;
  }
  table.dataset.state = 'rows';
  const rows = topics.map((t) => el('tr', { 'data-topic': t.topic },
    el('td', { class: 'addr', text: t.topic }),
    el('td', { class: 'num', text: fmtNum(t.published) }),
    el('td', { class: 'num rate', text: t.rate === null ? '–' : fmtNum(t.rate) }),
    el('td', { class: 'num subscribers', text: t.subscribers === null || t.subscribers === undefined ? '–' : String(t.subscribers) })));
  setRows(table.querySelector('tbody'), rows, 'no topics published yet', 4);
  $('#topic-sources').textContent = `from ${sources.answered} of ${sources.distributors} distributors`;
}

// ---- the stream -----------------------------------------------------------------------

function setOwners(runs) {
  let slot = 0;
  for (const [owner, count] of runs) {
    view.owners.fill(owner, slot, Math.min(SLOTS, slot + count));
    slot += count;
  }
}

function onState(s) {
  view.revision = s.revision;
  setOwners(s.slots);
  view.members = s.members;
  view.departed = s.departed;
  view.hot = s.hot;
  view.membersAt = Date.now();
  if (s.metrics) {
    view.metrics = s.metrics;
    view.metricsAt = Date.now();
  }
  flashes.clear();
  drawSlots();
  drawAll();
}

function onDelta(d) {
  view.revision = d.revision;
  if (d.moves) {
    const before = d.moves.map(([slot]) => view.owners[slot]);
    const now = performance.now();
    for (const [slot, owner] of d.moves) {
      view.owners[slot] = owner;
      flashes.set(slot, now);
    }
    addMoves(d.revision, d.moves, before);
    drawSlots();
    animate();
  }
  if (d.members) {
    view.members = d.members;
    view.departed = d.departed;
    view.membersAt = Date.now();
    drawLegend();
  }
  if (d.hot) view.hot = d.hot;
  drawAll();
}

function onMetrics(m) {
  view.metrics = m;
  view.metricsAt = Date.now();
  if (m.revision > view.revision) view.revision = m.revision;
  recordTrends();
  drawAll();
}

function drawAll() {
  $('#revision').textContent = String(view.revision);
  drawMembers();
  drawMetastore();
  drawNodes();
  drawHot();
  drawTopics();
}

function connect() {
  const conn = $('#conn');
  const events = new EventSource('/api/events');
  const handle = (fn) => (e) => {
    try {
      fn(JSON.parse(e.data));
    } catch (err) {
      console.error('dashboard: bad event', e.type, err);
    }
  };
  events.addEventListener('state', handle((s) => {
    onState(s);
    conn.textContent = s.synced ? 'live' : 'waiting for the metastore';
    conn.className = `pill ${s.synced ? 'good' : 'bad'}`;
  }));
  events.addEventListener('delta', handle(onDelta));
  events.addEventListener('metrics', handle(onMetrics));
  events.onerror = () => {
    // EventSource reconnects on its own; the next `state` brings everything back.
    conn.textContent = 'reconnecting';
    conn.className = 'pill bad';
  };
}

// Ages tick on between events.
setInterval(drawMembers, 1000);
drawSlots();
connect();
