// chatkpi dashboard: asks this server's JSON API (POST /chatkpi.v1.MetricsService/<Method>, the
// proto3 JSON mapping) and draws the answers. No third-party code; charts are inline SVG.
//
// What every number means is docs/metrics.md; this file only formats. The formats (the
// dashboard test in tests/api/dashboard.rs checks the tiles against them):
//   count     1,234 (en-US grouping)
//   duration  < 60 s: "45 s"; < 1 h: minutes, one decimal below 10 ("4.5 min", "12 min");
//             < 48 h: hours, one decimal ("3.2 h"); else days, one decimal ("2.5 d")
//   percent   one decimal below 10 ("4.5 %"), else whole ("87 %")
//   nps       signed whole number ("+32", "-5", "0")
//   decimal   one decimal ("5.3")
// Rounding is half up: round(x) = floor(x + 0.5); one decimal = round(10 x) / 10.
'use strict';

const $ = (id) => document.getElementById(id);
const KEY = 'chatkpi.key';
const SERVICE = '/chatkpi.v1.MetricsService/';
const BACKLOG_EVERY_MS = 15000;

// ---- formats -------------------------------------------------------------------------------

const round = (x) => Math.floor(x + 0.5);
const round1 = (x) => round(x * 10) / 10;
const present = (v) => v !== undefined && v !== null && !Number.isNaN(v);

const FORMATS = {
  count: (n) => Number(n).toLocaleString('en-US'),
  duration: (s) => {
    if (s < 60) return `${round(s)} s`;
    if (s < 3600) {
      const m = s / 60;
      return m < 10 ? `${round1(m).toFixed(1)} min` : `${round(m)} min`;
    }
    if (s < 172800) return `${round1(s / 3600).toFixed(1)} h`;
    return `${round1(s / 86400).toFixed(1)} d`;
  },
  percent: (p) => (Math.abs(p) < 10 ? `${round1(p).toFixed(1)} %` : `${round(p)} %`),
  nps: (v) => {
    const r = round(v);
    return r > 0 ? `+${r}` : `${r}`;
  },
  decimal: (v) => round1(v).toFixed(1),
};

function format(kind, value) {
  return present(value) ? FORMATS[kind](value) : '–';
}

// uint64 fields arrive as strings and are left out when 0 (proto3 JSON).
const num = (v) => (present(v) ? Number(v) : 0);

// The share (%) of judged SLA clocks that were achieved; undefined without any.
function slaMet(stats) {
  const achieved = num(stats?.achieved);
  const judged = achieved + num(stats?.breached);
  return judged > 0 ? (100 * achieved) / judged : undefined;
}

// ---- what the page shows -------------------------------------------------------------------

// better: which direction is good news. drill: the DrillDown that lists the items behind it.
const TILES = [
  { id: 'conversations', label: 'Conversations', kind: 'count', better: 0, drill: 'opened', get: (k) => num(k.conversations) },
  { id: 'frt_p50', label: 'First response p50', kind: 'duration', better: -1, drill: 'opened', get: (k) => k.firstResponse?.p50 },
  { id: 'frt_p90', label: 'First response p90', kind: 'duration', better: -1, drill: 'opened', get: (k) => k.firstResponse?.p90 },
  { id: 'human_frt_p50', label: 'Human first response p50', kind: 'duration', better: -1, drill: 'opened', get: (k) => k.humanFirstResponse?.p50 },
  { id: 'resolution_p50', label: 'Resolution time p50', kind: 'duration', better: -1, drill: 'resolved', get: (k) => k.resolution?.p50 },
  { id: 'fcr', label: 'First contact resolution', kind: 'percent', better: 1, drill: 'not_fcr', get: (k) => k.fcrRate },
  { id: 'csat', label: 'CSAT', kind: 'percent', better: 1, drill: 'resolved', get: (k) => k.csat?.csatPercent },
  { id: 'nps', label: 'NPS', kind: 'nps', better: 1, drill: 'resolved', get: (k) => k.nps?.nps },
  { id: 'ces', label: 'CES (1-7)', kind: 'decimal', better: 1, drill: 'resolved', get: (k) => k.ces?.meanScore },
  { id: 'missed_rate', label: 'Missed', kind: 'percent', better: -1, drill: 'missed', get: (k) => k.missedRate },
  { id: 'automation_rate', label: 'Automation', kind: 'percent', better: 1, drill: 'resolved', get: (k) => k.automationRate },
  { id: 'conversion_rate', label: 'Conversion', kind: 'percent', better: 1, drill: 'opened', get: (k) => k.conversion?.rate },
  // SLA compliance (docs/metrics.md §10): achieved / (achieved + breached) of the clocks that
  // stopped in the range; "–" without policies or clocks.
  { id: 'sla_first_response', label: 'SLA first response met', kind: 'percent', better: 1, drill: 'sla_breached', get: (k) => slaMet(k.sla?.firstResponse) },
  { id: 'sla_next_response', label: 'SLA next response met', kind: 'percent', better: 1, drill: 'sla_breached', get: (k) => slaMet(k.sla?.nextResponse) },
  { id: 'sla_resolution', label: 'SLA resolution met', kind: 'percent', better: 1, drill: 'sla_breached', get: (k) => slaMet(k.sla?.resolution) },
];

const DRILLS = {
  opened: 'Conversations opened in the range',
  resolved: 'Conversations resolved in the range',
  not_fcr: 'Resolved conversations that were not first-contact resolutions',
  missed: 'Missed conversations',
  backlog: 'Conversations open at the end of the range',
  sla_breached: 'Conversations with an SLA clock breached in the range',
};

// KPIs the chart can draw: a count as bars, anything else as a line.
const SERIES = [
  { id: 'conversations', label: 'Conversations', kind: 'count', get: (k) => num(k.conversations) },
  { id: 'frt_p50', label: 'First response p50', kind: 'duration', get: (k) => k.firstResponse?.p50 },
  { id: 'resolution_p50', label: 'Resolution time p50', kind: 'duration', get: (k) => k.resolution?.p50 },
  { id: 'resolved', label: 'Resolved', kind: 'count', get: (k) => num(k.resolved) },
  { id: 'fcr', label: 'First contact resolution', kind: 'percent', get: (k) => k.fcrRate },
  { id: 'csat', label: 'CSAT', kind: 'percent', get: (k) => k.csat?.csatPercent },
  { id: 'missed_rate', label: 'Missed', kind: 'percent', get: (k) => k.missedRate },
  { id: 'messages_received', label: 'Messages received', kind: 'count', get: (k) => num(k.messagesReceived) },
];

const CHANNELS = ['whatsapp', 'webchat', 'email', 'sms', 'messenger', 'instagram', 'telegram', 'voice', 'other'];
const ZONES = ['UTC', 'Europe/Berlin', 'Europe/London', 'Europe/Madrid', 'America/New_York', 'America/Chicago',
  'America/Los_Angeles', 'America/Sao_Paulo', 'Asia/Kolkata', 'Asia/Singapore', 'Asia/Tokyo', 'Australia/Sydney'];

// ---- state: the URL fragment holds the question, so a view can be bookmarked ----------------

const state = {
  key: '',
  from: '',
  to: '',
  tz: '',
  bh: false,
  channel: '',
  agent: '',
  tag: '',
  series: 'conversations',
  granularity: 'GRANULARITY_DAY',
  drill: '',
  // A conversation whose facts are shown in the drill-down panel instead of a drill-down.
  conversation: '',
};
const seen = { agents: new Set(), tags: new Set() };
let agentSort = { column: 'conversations', direction: -1 };
let agentRows = [];
let backlogTimer = 0;

function readFragment() {
  const params = new URLSearchParams(location.hash.slice(1));
  // A key in the link (#key=...) is moved into session storage and out of the address bar.
  if (params.has('key')) {
    sessionStorage.setItem(KEY, params.get('key'));
    params.delete('key');
  }
  state.key = sessionStorage.getItem(KEY) || '';
  const today = new Date().toISOString().slice(0, 10);
  state.to = params.get('to') || today;
  state.from = params.get('from') || addDays(state.to, -6);
  state.tz = params.get('tz') || Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC';
  state.bh = params.get('bh') === '1';
  state.channel = params.get('channel') || '';
  state.agent = params.get('agent') || '';
  state.tag = params.get('tag') || '';
  state.series = params.get('series') || state.series;
  state.granularity = params.get('granularity') || state.granularity;
  state.drill = DRILLS[params.get('drill')] ? params.get('drill') : '';
  state.conversation = params.get('conversation') || '';
  writeFragment();
}

function writeFragment() {
  const params = new URLSearchParams();
  for (const name of ['from', 'to', 'tz', 'channel', 'agent', 'tag', 'series', 'granularity', 'drill', 'conversation']) {
    if (state[name]) params.set(name, state[name]);
  }
  if (state.bh) params.set('bh', '1');
  history.replaceState(null, '', `#${params}`);
}

// ---- time: a date range in a time zone, as the instants the API takes -----------------------

function addDays(date, days) {
  const [y, m, d] = date.split('-').map(Number);
  return new Date(Date.UTC(y, m - 1, d + days)).toISOString().slice(0, 10);
}

// Milliseconds the zone is ahead of UTC at instant t.
function offsetAt(t, tz) {
  const parts = new Intl.DateTimeFormat('en-US', {
    timeZone: tz, hourCycle: 'h23', year: 'numeric', month: '2-digit', day: '2-digit',
    hour: '2-digit', minute: '2-digit', second: '2-digit',
  }).formatToParts(new Date(t));
  const p = Object.fromEntries(parts.map((x) => [x.type, Number(x.value)]));
  return Date.UTC(p.year, p.month - 1, p.day, p.hour, p.minute, p.second) - t;
}

// The instant the date starts in the zone (twice, so a DST change near midnight settles).
function startOf(date, tz) {
  const [y, m, d] = date.split('-').map(Number);
  const wall = Date.UTC(y, m - 1, d);
  const first = wall - offsetAt(wall, tz);
  return new Date(wall - offsetAt(first, tz)).toISOString().replace('.000Z', 'Z');
}

function query() {
  const filters = {};
  if (state.channel) filters.channels = [`CHANNEL_${state.channel.toUpperCase()}`];
  if (state.agent) filters.agents = [state.agent];
  if (state.tag) filters.tags = [state.tag];
  return {
    from: startOf(state.from, state.tz),
    // The "to" date is included: the window ends when the next day starts.
    to: startOf(addDays(state.to, 1), state.tz),
    timeZone: state.tz,
    businessHours: state.bh,
    filters,
  };
}

// ---- the API ---------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(code, message, status) {
    super(message);
    this.code = code;
    this.status = status;
  }
}

async function send(url, init) {
  let response;
  try {
    response = await fetch(url, init);
  } catch (e) {
    throw new ApiError('unavailable', `cannot reach the server (${e.message})`, 0);
  }
  if (response.ok) return response;
  const text = await response.text();
  let error = { code: 'unknown', message: text || response.statusText };
  try {
    error = JSON.parse(text);
  } catch (_) {
    // not a Connect error body: keep the text
  }
  throw new ApiError(error.code, error.message, response.status);
}

async function rpc(method, body) {
  const response = await send(SERVICE + method, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      'connect-protocol-version': '1',
      authorization: `Bearer ${state.key}`,
    },
    body: JSON.stringify(body),
  });
  return response.json();
}

function csvUrl(kind, limit) {
  const q = query();
  const params = new URLSearchParams({ kpi: kind, from: q.from, to: q.to, time_zone: q.timeZone });
  if (state.bh) params.set('business_hours', 'true');
  if (state.channel) params.set('channel', state.channel);
  if (state.agent) params.set('agent', state.agent);
  if (state.tag) params.set('tag', state.tag);
  if (limit) params.set('limit', String(limit));
  return `/v1/conversations.csv?${params}`;
}

async function csv(kind, limit) {
  const response = await send(csvUrl(kind, limit), { headers: { authorization: `Bearer ${state.key}` } });
  return response.text();
}

// ---- drawing helpers --------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === 'class') node.className = value;
    else if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
    else if (value !== undefined && value !== null) node.setAttribute(name, value);
  }
  for (const child of children) node.append(child);
  return node;
}

const SVG = 'http://www.w3.org/2000/svg';
function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  for (const child of children) node.append(child);
  return node;
}

function bars(container, rows) {
  container.replaceChildren();
  if (rows.length === 0) {
    container.append(el('p', { class: 'empty' }, 'Nothing in this range.'));
    return;
  }
  for (const row of rows) {
    const fill = el('span', { class: 'fill' });
    fill.style.width = `${Math.max(0, Math.min(100, row.share || 0))}%`;
    container.append(el('div', { class: 'bar-row', 'data-name': row.name },
      el('span', { class: 'name', title: row.name }, row.name),
      el('span', { class: 'bar' }, fill),
      el('span', { class: 'val' }, row.text)));
  }
}

// ---- sections -----------------------------------------------------------------------------------

function delta(tile, current, previous) {
  if (!present(current) || !present(previous)) return { text: 'no previous data', cls: 'flat' };
  const diff = current - previous;
  let text;
  if (tile.kind === 'count' || tile.kind === 'duration') {
    if (previous === 0) return { text: current === 0 ? 'same as before' : 'new', cls: 'flat' };
    const change = round((diff / previous) * 100);
    text = `${change > 0 ? '+' : ''}${change} % vs previous`;
  } else {
    const change = round1(diff);
    const unit = tile.kind === 'percent' ? ' pp' : '';
    text = `${change > 0 ? '+' : ''}${change.toFixed(1)}${unit} vs previous`;
  }
  const direction = diff > 0 ? 1 : diff < 0 ? -1 : 0;
  const verdict = direction === 0 || tile.better === 0 ? '' : direction === tile.better ? ' good' : ' bad';
  return { text, cls: `${direction > 0 ? 'up' : direction < 0 ? 'down' : 'flat'}${verdict}` };
}

function renderTiles(current, previous) {
  const tiles = $('tiles');
  tiles.replaceChildren();
  for (const tile of TILES) {
    const value = tile.get(current);
    const change = delta(tile, value, previous ? tile.get(previous) : undefined);
    tiles.append(el('button', {
      type: 'button', class: 'tile', 'data-kpi': tile.id, 'data-raw': present(value) ? String(value) : '',
      title: 'List the conversations behind this number', onclick: () => openDrill(tile.drill),
    },
    el('span', { class: 'label' }, tile.label),
    el('span', { class: 'value' }, format(tile.kind, value)),
    el('span', { class: `delta ${change.cls}` }, change.text)));
  }
  $('empty').hidden = num(current.conversations) > 0;
}

function bucketLabel(start) {
  const t = new Date(start);
  const options = { timeZone: state.tz };
  if (state.granularity === 'GRANULARITY_HOUR') Object.assign(options, { hour: '2-digit', minute: '2-digit', hourCycle: 'h23' });
  else if (state.granularity === 'GRANULARITY_MONTH') Object.assign(options, { month: 'short', year: 'numeric' });
  else Object.assign(options, { day: 'numeric', month: 'short' });
  return new Intl.DateTimeFormat('en-GB', options).format(t);
}

function renderChart(points) {
  const chart = $('chart');
  chart.replaceChildren();
  const series = SERIES.find((s) => s.id === state.series) || SERIES[0];
  const values = points.map((p) => series.get(p.kpis || {}));
  const known = values.filter(present);
  if (points.length === 0 || known.length === 0) {
    chart.append(el('p', { class: 'empty' }, 'No data for this KPI in the range.'));
  }
  const width = 800;
  const height = 240;
  const pad = { left: 64, right: 12, top: 12, bottom: 28 };
  const max = Math.max(...known, 0) || 1;
  const step = (width - pad.left - pad.right) / Math.max(points.length, 1);
  const y = (v) => pad.top + (height - pad.top - pad.bottom) * (1 - v / max);
  const root = svg('svg', {
    viewBox: `0 0 ${width} ${height}`, role: 'img', class: 'series', 'data-points': String(points.length),
    'aria-label': `${series.label} per bucket`,
  });
  root.append(
    svg('line', { x1: pad.left, x2: width - pad.right, y1: y(0), y2: y(0), class: 'axis' }),
    svg('text', { x: pad.left - 6, y: y(max) + 4, class: 'tick end' }, format(series.kind, max)),
    svg('text', { x: pad.left - 6, y: y(0) + 4, class: 'tick end' }, format(series.kind, 0)),
  );
  const labelEvery = Math.ceil(points.length / 10);
  const line = [];
  points.forEach((point, i) => {
    const value = values[i];
    const x = pad.left + step * i;
    const group = svg('g', { class: 'bucket', 'data-start': point.start, 'data-value': present(value) ? String(value) : '' });
    group.append(svg('title', {}, `${bucketLabel(point.start)}: ${format(series.kind, value)}`));
    if (present(value)) {
      if (series.kind === 'count') {
        group.append(svg('rect', { x: x + step * 0.15, width: step * 0.7, y: y(value), height: y(0) - y(value), class: 'mark' }));
      } else {
        group.append(svg('circle', { cx: x + step / 2, cy: y(value), r: 3.5, class: 'mark' }));
        line.push(`${x + step / 2},${y(value)}`);
      }
    }
    if (i % labelEvery === 0) {
      group.append(svg('text', { x: x + step / 2, y: height - 8, class: 'tick middle' }, bucketLabel(point.start)));
    }
    root.append(group);
  });
  if (line.length > 1) root.insertBefore(svg('polyline', { points: line.join(' '), class: 'trend' }), root.children[3] || null);
  chart.append(root);
}

function renderFunnel(kpis, excluded) {
  const funnel = $('funnel');
  if (excluded) {
    funnel.replaceChildren(el('p', { class: 'empty' }, 'The channel filter leaves WhatsApp out.'));
    return;
  }
  const sent = num(kpis.messagesSent);
  const delivered = num(kpis.messagesDelivered);
  const read = num(kpis.messagesRead);
  const failed = num(kpis.messagesFailed);
  const share = (n) => (sent ? (100 * n) / sent : 0);
  bars(funnel, sent === 0 ? [] : [
    { name: 'Sent', share: 100, text: format('count', sent) },
    { name: 'Delivered', share: share(delivered), text: `${format('count', delivered)} · ${format('percent', kpis.deliveryRate)}` },
    { name: 'Read', share: share(read), text: `${format('count', read)} · ${format('percent', kpis.readRate)} of delivered` },
    { name: 'Failed', share: share(failed), text: `${format('count', failed)} · ${format('percent', share(failed))}` },
  ]);
}

function renderShares(container, shares) {
  bars(container, (shares || []).map((s) => ({
    name: s.value || '(none)', share: s.share, text: `${format('percent', s.share)} · ${format('count', num(s.conversations))}`,
  })));
}

const AGENT_COLUMNS = [
  { id: 'agent', label: 'Agent', text: (r) => r.agent },
  { id: 'conversations', label: 'Conversations', text: (r) => format('count', r.conversations) },
  { id: 'frt', label: 'First response p50', text: (r) => format('duration', r.frt) },
  { id: 'resolution', label: 'Resolution p50', text: (r) => format('duration', r.resolution) },
  { id: 'fcr', label: 'FCR', text: (r) => format('percent', r.fcr) },
  { id: 'csat', label: 'CSAT', text: (r) => format('percent', r.csat) },
  { id: 'utilization', label: 'Utilization', text: (r) => format('percent', r.utilization) },
  { id: 'targets', label: 'Targets met', text: (r) => (r.targetsOf ? `${r.targets} of ${r.targetsOf}` : '–') },
];

function agentTable(breakdown, utilization, scorecard) {
  const util = new Map((utilization.agents || []).map((a) => [a.agentId, a.utilization]));
  const cards = new Map((scorecard.agents || []).map((c) => [c.scope, c.lines || []]));
  agentRows = (breakdown.rows || []).map((row) => {
    const k = row.kpis || {};
    const judged = (cards.get(row.value) || []).filter((l) => present(l.met));
    return {
      agent: row.value || '(unassigned)',
      conversations: num(k.conversations),
      frt: k.firstResponse?.p50,
      resolution: k.resolution?.p50,
      fcr: k.fcrRate,
      csat: k.csat?.csatPercent,
      utilization: util.get(row.value),
      targets: judged.filter((l) => l.met).length,
      targetsOf: judged.length,
      detail: judged.map((l) => `${l.kpi}: ${l.met ? 'met' : 'missed'} (target ${l.target})`).join('\n'),
    };
  });
  for (const row of agentRows) if (row.agent !== '(unassigned)') seen.agents.add(row.agent);
  drawAgents();
}

function drawAgents() {
  const { column, direction } = agentSort;
  const key = (r) => (column === 'targets' ? (r.targetsOf ? r.targets / r.targetsOf : undefined) : r[column]);
  const rows = [...agentRows].sort((a, b) => {
    const x = key(a);
    const y = key(b);
    if (!present(x) && !present(y)) return 0;
    if (!present(x)) return 1;
    if (!present(y)) return -1;
    return (typeof x === 'string' ? x.localeCompare(y) : x - y) * direction;
  });
  const head = el('tr', {}, ...AGENT_COLUMNS.map((c) => el('th', {
    scope: 'col', 'aria-sort': c.id === column ? (direction > 0 ? 'ascending' : 'descending') : 'none',
  }, el('button', {
    type: 'button',
    onclick: () => {
      agentSort = { column: c.id, direction: c.id === column ? -direction : c.id === 'agent' ? 1 : -1 };
      drawAgents();
    },
  }, c.label))));
  const body = rows.map((r) => el('tr', { 'data-agent': r.agent }, ...AGENT_COLUMNS.map((c) => {
    const cell = el('td', {}, c.text(r));
    if (c.id === 'targets' && r.targetsOf) {
      cell.className = r.targets === r.targetsOf ? 'good' : 'bad';
      cell.title = r.detail;
    }
    return cell;
  })));
  const table = $('agents');
  table.replaceChildren(el('thead', {}, head), el('tbody', {}, ...body));
  if (rows.length === 0) table.append(el('caption', {}, 'No agent handled a conversation in this range.'));
}

function fillSelect(select, values, chosen, label) {
  const all = [...new Set([...values, ...(chosen ? [chosen] : [])])].sort();
  select.replaceChildren(el('option', { value: '' }, 'All'), ...all.map((v) => el('option', { value: v }, label ? label(v) : v)));
  select.value = chosen;
}

// ---- loading --------------------------------------------------------------------------------------

function setStatus(text) {
  $('status').textContent = text;
}

async function loadAll() {
  document.body.dataset.state = 'loading';
  setStatus('Loading…');
  hideError();
  try {
    const q = query();
    const whatsappExcluded = state.channel !== '' && state.channel !== 'whatsapp';
    const whatsapp = { ...q, filters: { ...q.filters, channels: ['CHANNEL_WHATSAPP'] } };
    const [overview, funnel, series, agents, utilization, scorecard] = await Promise.all([
      rpc('GetOverview', { query: q, comparePrevious: true }),
      whatsappExcluded ? Promise.resolve({}) : rpc('GetOverview', { query: whatsapp }),
      rpc('GetTimeSeries', { query: q, granularity: state.granularity }),
      rpc('GetBreakdown', { query: q, dimension: 'DIMENSION_AGENT' }),
      rpc('GetUtilization', { query: q }),
      rpc('GetScorecard', { query: q }),
    ]);
    const current = overview.current || {};
    renderTiles(current, overview.previous);
    renderChart(series.points || []);
    renderFunnel((funnel && funnel.current) || {}, whatsappExcluded);
    agentTable(agents, utilization, scorecard);
    renderShares($('channels'), current.channels);
    renderShares($('tags'), current.tags);
    for (const t of current.tags || []) if (t.value) seen.tags.add(t.value);
    fillSelect($('agent'), seen.agents, state.agent);
    fillSelect($('tag'), seen.tags, state.tag);
    await loadBacklog();
    if (state.conversation) await openConversation(state.conversation);
    else if (state.drill) await openDrill(state.drill);
    document.body.dataset.state = 'ready';
    setStatus(`Updated ${new Date().toLocaleTimeString('en-GB')}`);
  } catch (e) {
    fail(e);
  }
}

async function loadSeries() {
  try {
    const series = await rpc('GetTimeSeries', { query: query(), granularity: state.granularity });
    renderChart(series.points || []);
  } catch (e) {
    fail(e);
  }
}

// The backlog as of now (no "to"), under the same filters; polled while the page is open.
async function loadBacklog() {
  const q = query();
  const now = { timeZone: q.timeZone, businessHours: q.businessHours, filters: q.filters };
  const backlog = await rpc('GetBacklog', { query: now });
  const cell = (label, value, id) => el('div', { class: 'stat', 'data-backlog': id },
    el('span', { class: 'value' }, value), el('span', { class: 'label' }, label));
  $('backlog').replaceChildren(
    cell('open', format('count', num(backlog.open)), 'open'),
    cell('unassigned', format('count', num(backlog.unassigned)), 'unassigned'),
    cell('unanswered', format('count', num(backlog.unanswered)), 'unanswered'),
    cell('median age', format('duration', backlog.age?.p50), 'age'),
  );
  $('backlog-at').textContent = `as of ${new Date(backlog.at || Date.now()).toLocaleTimeString('en-GB')}, every 15 s`;
  await loadAtRisk(now);
  await loadAlerts();
}

// The alert rules firing now (GetFiringAlerts, docs/metrics.md §12), refreshed with the backlog.
async function loadAlerts() {
  const answer = await rpc('GetFiringAlerts', {});
  const rows = answer.alerts || [];
  const value = (v) => (v === undefined ? 'no value' : format('decimal', v));
  $('alerts-count').textContent = `${rows.length} firing`;
  $('alerts').replaceChildren(
    el('thead', {}, el('tr', {}, ...['rule', 'metric', 'value', 'threshold', 'since'].map((c) => el('th', { scope: 'col' }, c)))),
    el('tbody', {}, ...rows.map((a) => el('tr', { class: 'alert-row bad', 'data-alert': a.ruleId },
      el('td', {}, a.name),
      el('td', {}, a.metric),
      el('td', {}, value(a.value)),
      el('td', {}, `${a.comparison.replace('_', ' ')} ${format('decimal', a.threshold)}`),
      el('td', {}, a.since ? new Date(a.since).toLocaleString('en-GB', { timeZone: state.tz }) : '')))),
  );
  $('alerts-empty').hidden = rows.length > 0;
}

const RISK_LIMIT = 10;
const METRICS = { first_response: 'first response', next_response: 'next response', resolution: 'resolution' };

// The SLA clocks running now that breach soonest (GetSlaStatus), refreshed with the backlog; a
// conversation opens its facts.
async function loadAtRisk(now) {
  const status = await rpc('GetSlaStatus', { query: now, limit: RISK_LIMIT });
  const rows = status.atRisk || [];
  const left = (s) => (s < 0 ? `${format('duration', -s)} over` : `${format('duration', s)} left`);
  $('risk-counts').textContent = `${format('count', num(status.overall?.active))} running, `
    + `${format('count', num(status.overall?.activeBreached))} breached`;
  $('at-risk').replaceChildren(
    el('thead', {}, el('tr', {}, ...['conversation', 'clock', 'policy', 'assignee', 'time'].map((c) => el('th', { scope: 'col' }, c)))),
    el('tbody', {}, ...rows.map((r) => el('tr', { class: `risk-row${r.timeLeftSeconds < 0 ? ' bad' : ''}`, 'data-risk': r.conversationId },
      el('td', {}, el('button', { type: 'button', class: 'link', onclick: () => openConversation(r.conversationId) }, r.conversationId)),
      el('td', {}, METRICS[r.metric] || r.metric),
      el('td', {}, r.policy),
      el('td', {}, r.assignee || 'unassigned'),
      el('td', {}, left(r.timeLeftSeconds))))),
  );
  $('risk-empty').hidden = rows.length > 0;
}

// One conversation's facts (GetConversation) in the drill-down panel, as field / value lines.
async function openConversation(id) {
  state.conversation = id;
  state.drill = '';
  writeFragment();
  $('drill').hidden = false;
  $('drill-csv').hidden = true;
  $('drill-title').textContent = `Conversation ${id}`;
  $('drill-note').textContent = 'Loading…';
  try {
    const facts = (await rpc('GetConversation', { conversationId: id, query: query() })).conversation;
    const text = (name, value) => {
      if (name === 'slaBreaches') {
        return value.map((b) => `${METRICS[b.metric] || b.metric} (${b.policy}): ${format('duration', b.actualSeconds)} of ${format('duration', b.targetSeconds)}`).join('; ');
      }
      if (Array.isArray(value)) return value.map((v) => (name.endsWith('Seconds') ? format('duration', v) : String(v))).join(', ');
      if (name.endsWith('Seconds')) return format('duration', value);
      if (name.endsWith('At')) return new Date(value).toLocaleString('en-GB', { timeZone: state.tz });
      return String(value);
    };
    $('drill-table').replaceChildren(el('tbody', {}, ...Object.entries(facts).map(([name, value]) => el('tr', { class: 'fact-row' },
      el('th', { scope: 'row' }, name.replace(/[A-Z]/g, (c) => ` ${c.toLowerCase()}`)),
      el('td', {}, text(name, value))))));
    $('drill-note').textContent = 'Every field of the conversation (fields without a value are left out).';
    $('drill').scrollIntoView({ block: 'nearest' });
  } catch (e) {
    fail(e);
  }
}

function parseCsv(text) {
  const rows = [];
  let row = [];
  let cell = '';
  let quoted = false;
  for (let i = 0; i < text.length; i += 1) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') { cell += '"'; i += 1; } else if (c === '"') quoted = false; else cell += c;
    } else if (c === '"') quoted = true;
    else if (c === ',') { row.push(cell); cell = ''; } else if (c === '\n') { row.push(cell); rows.push(row); row = []; cell = ''; } else if (c !== '\r') cell += c;
  }
  if (cell || row.length) { row.push(cell); rows.push(row); }
  return rows;
}

const DRILL_LIMIT = 100;
const DRILL_COLUMNS = ['conversation_id', 'channel', 'agent', 'state', 'opened_at', 'first_response_seconds', 'resolution_seconds', 'csat_score', 'tags', 'sla_breaches'];

async function openDrill(kind) {
  state.drill = kind;
  state.conversation = '';
  writeFragment();
  $('drill').hidden = false;
  $('drill-csv').hidden = false;
  $('drill-title').textContent = DRILLS[kind];
  $('drill-note').textContent = 'Loading…';
  try {
    const [header, ...rows] = parseCsv(await csv(kind, DRILL_LIMIT + 1));
    const shown = rows.slice(0, DRILL_LIMIT);
    const index = DRILL_COLUMNS.map((c) => header.indexOf(c));
    const text = (column, value) => (column.endsWith('_seconds') && value !== '' ? format('duration', Number(value))
      : column.endsWith('_at') && value ? new Date(value).toLocaleString('en-GB', { timeZone: state.tz }) : value);
    $('drill-table').replaceChildren(
      el('thead', {}, el('tr', {}, ...DRILL_COLUMNS.map((c) => el('th', { scope: 'col' }, c.replace(/_/g, ' '))))),
      el('tbody', {}, ...shown.map((r) => el('tr', { class: 'drill-row' }, ...index.map((i, j) => el('td', {}, text(DRILL_COLUMNS[j], r[i] ?? '')))))),
    );
    $('drill-note').textContent = rows.length > DRILL_LIMIT
      ? `The first ${DRILL_LIMIT} conversations; the CSV has all of them, with every column.`
      : `${rows.length} ${rows.length === 1 ? 'conversation' : 'conversations'}; the CSV has every column.`;
    $('drill').scrollIntoView({ block: 'nearest' });
  } catch (e) {
    fail(e);
  }
}

async function downloadDrill() {
  try {
    const blob = new Blob([await csv(state.drill, 0)], { type: 'text/csv' });
    const link = el('a', { href: URL.createObjectURL(blob), download: `conversations-${state.drill}-${state.from}-${state.to}.csv` });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  } catch (e) {
    fail(e);
  }
}

// ---- errors and the key ---------------------------------------------------------------------------

function hideError() {
  $('error').hidden = true;
}

function fail(e) {
  document.body.dataset.state = 'error';
  setStatus('');
  const code = e.code || 'unknown';
  const box = $('error');
  box.dataset.code = code;
  box.hidden = false;
  if (code === 'unauthenticated' || code === 'permission_denied') {
    box.textContent = `The API key was not accepted (${code}): ${e.message}`;
    sessionStorage.removeItem(KEY);
    state.key = '';
    showLogin();
  } else if (e instanceof RangeError) {
    box.textContent = `Unknown time zone "${state.tz}": use an IANA name such as Europe/Berlin.`;
  } else {
    box.textContent = `Could not load the numbers (${code}): ${e.message}`;
  }
}

function showLogin() {
  clearInterval(backlogTimer);
  $('login').hidden = false;
  $('dashboard').hidden = true;
  $('signout').hidden = true;
  $('key').focus();
}

function showDashboard() {
  $('login').hidden = true;
  $('dashboard').hidden = false;
  $('signout').hidden = false;
  $('from').value = state.from;
  $('to').value = state.to;
  $('tz').value = state.tz;
  $('bh').checked = state.bh;
  fillSelect($('channel'), CHANNELS, state.channel);
  $('series-kpi').value = state.series;
  $('granularity').value = state.granularity;
  loadAll();
  clearInterval(backlogTimer);
  backlogTimer = setInterval(() => loadBacklog().catch(fail), BACKLOG_EVERY_MS);
}

function start() {
  $('zones').replaceChildren(...ZONES.map((z) => el('option', { value: z })));
  $('series-kpi').replaceChildren(...SERIES.map((s) => el('option', { value: s.id }, s.label)));
  readFragment();
  $('key-form').addEventListener('submit', (event) => {
    event.preventDefault();
    state.key = $('key').value.trim();
    sessionStorage.setItem(KEY, state.key);
    hideError();
    showDashboard();
  });
  $('signout').addEventListener('click', () => {
    sessionStorage.removeItem(KEY);
    state.key = '';
    showLogin();
  });
  $('controls').addEventListener('submit', (event) => {
    event.preventDefault();
    if ($('from').value > $('to').value) {
      fail(new ApiError('invalid_argument', '"From" must not be after "To".', 0));
      return;
    }
    Object.assign(state, {
      from: $('from').value, to: $('to').value, tz: $('tz').value.trim(), bh: $('bh').checked,
      channel: $('channel').value, agent: $('agent').value, tag: $('tag').value,
    });
    writeFragment();
    loadAll();
  });
  $('series-kpi').addEventListener('change', () => { state.series = $('series-kpi').value; writeFragment(); loadSeries(); });
  $('granularity').addEventListener('change', () => { state.granularity = $('granularity').value; writeFragment(); loadSeries(); });
  $('drill-close').addEventListener('click', () => { state.drill = ''; state.conversation = ''; writeFragment(); $('drill').hidden = true; });
  $('drill-csv').addEventListener('click', downloadDrill);
  if (state.key) showDashboard(); else showLogin();
}

// startOf throws RangeError for an unknown zone: fail() says so.
window.addEventListener('unhandledrejection', (event) => fail(event.reason));
document.addEventListener('DOMContentLoaded', start);
