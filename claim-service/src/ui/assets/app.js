// The live ownership page: reads ./api/overview and ./api/claims (one page
// at a time, never the whole list), follows ./api/changes (server-sent
// events) and reads again what a change touches. Names from nodes are shown
// as text only.
'use strict';

const PAGE_SIZE = 100;
const CHANGES_SHOWN = 300;

const page = {
  prefix: new URLSearchParams(location.search).get('prefix') || '',
  // The `after` of every page up to the one shown (null: the first).
  cursors: [null],
  last: null,
  more: false,
};

const $ = (id) => document.getElementById(id);

// The API's address, without the user name and password a sign-in link
// may carry (fetch refuses URLs with them; the browser sends what the
// sign-in cached).
const api = (path) => new URL(path, location.origin + location.pathname).href;

function el(tag, text, className) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (className) e.className = className;
  return e;
}

function row(cells) {
  const tr = document.createElement('tr');
  for (const c of cells) tr.appendChild(c instanceof Node ? c : el('td', c));
  return tr;
}

function cell(text, className) { return el('td', text, className); }

function clock(ms) { return ms ? new Date(ms).toLocaleTimeString() : ''; }

function age(ms) {
  if (!ms) return '';
  let s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  const d = Math.floor(s / 86400); s -= d * 86400;
  const h = Math.floor(s / 3600); s -= h * 3600;
  const m = Math.floor(s / 60); s -= m * 60;
  if (d) return `${d}d ${h}h ago`;
  if (h) return `${h}h ${m}m ago`;
  if (m) return `${m}m ${s}s ago`;
  return `${s}s ago`;
}

function showError(message) {
  const f = $('error');
  f.hidden = !message;
  f.textContent = message || '';
}

async function getJSON(url) {
  const r = await fetch(url, { cache: 'no-store' });
  if (!r.ok) throw new Error(`${new URL(url).pathname}: ${r.status} ${(await r.text()).trim()}`);
  return r.json();
}

// Runs `fn` at most once per `ms`, at once when it has not run for that
// long, and once more after the last call.
function throttled(fn, ms) {
  let last = 0, timer = null, again = false;
  const run = () => {
    if (timer) { again = true; return; }
    const wait = Math.max(0, last + ms - Date.now());
    timer = setTimeout(async () => {
      last = Date.now();
      again = false;
      try { await fn(); showError(''); } catch (e) { showError(e.message); }
      timer = null;
      if (again) run();
    }, wait);
  };
  return run;
}

function nodeState(n) {
  if (n.detached) return ['detached', n.grace_ends_unix_ms ? `in grace until ${clock(n.grace_ends_unix_ms)}` : 'detached'];
  if (n.draining) return ['draining', 'draining'];
  return ['attached', 'attached'];
}

async function loadOverview() {
  const o = await getJSON(api('api/overview'));
  $('replica').textContent = o.replica;
  $('total').textContent = o.claims.toLocaleString();
  $('revision').textContent = o.revision;
  const ready = $('ready');
  ready.textContent = o.ready ? 'ready' : 'not ready';
  ready.className = 'pill ' + (o.ready ? 'ok' : 'bad');

  const body = $('nodes').tBodies[0];
  const rows = o.nodes.map((n) => {
    const [state, label] = nodeState(n);
    const tr = row([
      cell(n.node_id, 'name'),
      cell(label, 'state-' + state),
      cell(n.replica),
      cell(n.claims.toLocaleString(), 'num'),
      cell(age(n.attached_at_unix_ms)),
      cell(Object.values(n.endpoints).join('  '), 'endpoints'),
    ]);
    tr.cells[5].title = Object.entries(n.endpoints).map(([k, v]) => `${k}: ${v}`).join('\n');
    tr.dataset.node = n.node_id;
    tr.dataset.state = state;
    tr.dataset.replica = n.replica;
    return tr;
  });
  body.replaceChildren(...rows);
  $('no-nodes').hidden = rows.length > 0;
  const replicas = new Set(o.nodes.map((n) => n.replica));
  $('node-count').textContent = `${o.nodes.length} on ${replicas.size} replica${replicas.size === 1 ? '' : 's'}`;

  $('replicas').replaceChildren(...o.replicas.map((r) => {
    const li = el('li');
    li.appendChild(el('b', r.replica));
    const what = [`${r.sessions} session${r.sessions === 1 ? '' : 's'}`];
    if (r.draining) what.push('draining');
    if (!r.live) what.push('no record (an older build)');
    if (r.version) what.push(r.version);
    li.appendChild(document.createTextNode(' ' + what.join(', ')));
    li.dataset.replica = r.replica;
    li.dataset.sessions = r.sessions;
    return li;
  }));

  const standby = $('standby');
  standby.replaceChildren(...o.standby.map((s) => {
    const li = el('li');
    li.appendChild(el('b', s.node_id));
    const more = s.broadcasts.length >= o.standby_listed_per_node ? ' …' : '';
    li.appendChild(document.createTextNode(' for ' + s.broadcasts.join(', ') + more));
    li.dataset.node = s.node_id;
    return li;
  }));
  $('no-standby').hidden = o.standby.length > 0;
}

async function loadClaims() {
  const q = new URLSearchParams({ prefix: page.prefix, limit: PAGE_SIZE });
  const after = page.cursors[page.cursors.length - 1];
  if (after !== null) q.set('after', after);
  const p = await getJSON(api('api/claims?' + q));
  const body = $('claims').tBodies[0];
  const before = new Map([...body.rows].map((r) => [r.dataset.broadcast, r.dataset.token]));
  const rows = p.claims.map((c) => {
    let ownerState = 'attached', stateClass = 'attached';
    if (c.detached) {
      stateClass = 'detached';
      ownerState = c.grace_ends_unix_ms ? `in grace until ${clock(c.grace_ends_unix_ms)}` : 'owner gone: until its lease expires';
    }
    const tr = row([
      cell(c.broadcast, 'name'),
      cell(c.node_id, 'name'),
      cell(c.fencing_token, 'num'),
      cell(age(c.claimed_at_unix_ms)),
      cell(`${c.lease_ttl_ms / 1000} s`, 'num'),
      cell(c.adopted ? 'adopted' : ''),
      cell(ownerState, 'state-' + stateClass),
    ]);
    tr.dataset.broadcast = c.broadcast;
    tr.dataset.owner = c.node_id;
    tr.dataset.token = c.fencing_token;
    if (before.size && before.get(c.broadcast) !== String(c.fencing_token)) tr.className = 'fresh';
    return tr;
  });
  body.replaceChildren(...rows);
  page.last = p.claims.length ? p.claims[p.claims.length - 1].broadcast : null;
  page.more = p.more;
  $('no-claims').hidden = rows.length > 0;
  const of = p.matching.toLocaleString() + (p.matching_capped ? '+' : '');
  $('matching').textContent = page.prefix ? `${of} starting with "${page.prefix}"` : `${of} in all`;
  $('page-no').textContent = `page ${page.cursors.length}`;
  $('prev').disabled = page.cursors.length === 1;
  $('next').disabled = !page.more;
}

const refreshOverview = throttled(loadOverview, 1000);
const refreshClaims = throttled(loadClaims, 200);

function addChanges(changes, replace) {
  const body = $('changes').tBodies[0];
  if (replace) body.replaceChildren();
  const rows = changes.map((c) => {
    const tr = row([
      cell(clock(c.at_unix_ms)),
      cell(c.kind, 'kind-' + c.kind),
      cell(c.broadcast, 'name'),
      cell(c.node_id, 'name'),
      cell(c.fencing_token, 'num'),
      cell(c.revision, 'num'),
    ]);
    if (c.detail) tr.title = c.detail;
    tr.dataset.kind = c.kind;
    if (c.broadcast !== undefined) tr.dataset.broadcast = c.broadcast;
    if (!replace) tr.className = 'fresh';
    return tr;
  }).reverse();
  body.prepend(...rows);
  while (body.rows.length > CHANGES_SHOWN) body.deleteRow(-1);
}

function touchesPage(changes) {
  return changes.some((c) => c.kind === 'resync' || (c.broadcast !== undefined && c.broadcast.startsWith(page.prefix)));
}

function follow() {
  const live = $('live');
  const source = new EventSource(api('api/changes'));
  source.addEventListener('open', () => {
    live.textContent = 'live';
    live.className = 'pill ok';
    // Whatever happened while not following.
    refreshOverview();
    refreshClaims();
  });
  source.addEventListener('error', () => {
    live.textContent = 'reconnecting';
    live.className = 'pill warn';
  });
  source.addEventListener('recent', (e) => addChanges(JSON.parse(e.data), true));
  source.addEventListener('changes', (e) => {
    const changes = JSON.parse(e.data);
    addChanges(changes, false);
    if (touchesPage(changes)) refreshClaims();
    refreshOverview();
  });
  source.addEventListener('resync', () => {
    refreshClaims();
    refreshOverview();
  });
}

function setup() {
  const input = $('prefix');
  input.value = page.prefix;
  let typing = null;
  input.addEventListener('input', () => {
    clearTimeout(typing);
    typing = setTimeout(() => {
      page.prefix = input.value;
      page.cursors = [null];
      const url = new URL(location.href);
      if (page.prefix) url.searchParams.set('prefix', page.prefix); else url.searchParams.delete('prefix');
      history.replaceState(null, '', url);
      refreshClaims();
    }, 150);
  });
  $('next').addEventListener('click', () => {
    if (!page.more || page.last === null) return;
    page.cursors.push(page.last);
    refreshClaims();
  });
  $('prev').addEventListener('click', () => {
    if (page.cursors.length > 1) page.cursors.pop();
    refreshClaims();
  });
  // Ages and grace ends move with the clock; what sessions stand by for
  // changes without an event.
  setInterval(refreshOverview, 3000);
  setInterval(refreshClaims, 10000);
  follow();
}

setup();
