// The sprites web console: one page over the daemon's own API (see console.rs for the
// session). No framework and no build step; xterm.js is the one dependency.
"use strict";

const state = { csrf: null, org: null, scope: null, watch: null, term: null, armed: 0 };
const $ = (sel) => document.querySelector(sel);
const view = () => $("#view");

// h("button", {class: "x", onclick: f}, "text", child...) → an element.
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function notice(text, error) {
  const el = $("#notice");
  el.textContent = text;
  el.className = error ? "notice error" : "notice";
  el.hidden = !text;
  if (text && !error) setTimeout(() => { if (el.textContent === text) el.hidden = true; }, 4000);
}

function bytes(n) {
  if (n === undefined || n === null) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return i === 0 ? `${n} B` : `${n.toFixed(1)} ${units[i]}`;
}

function ago(iso) {
  if (!iso) return "";
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 90) return `${Math.round(s)} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  if (s < 172800) return `${Math.round(s / 3600)} h`;
  return `${Math.round(s / 86400)} d`;
}

// The API with the session cookie; changes carry the CSRF token.
async function api(method, path, body, opts = {}) {
  const headers = Object.assign({}, opts.headers || {});
  if (method !== "GET" && method !== "HEAD") headers["X-CSRF-Token"] = state.csrf || "";
  let payload = body;
  if (body !== undefined && !(body instanceof Blob) && typeof body !== "string") {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  const response = await fetch(path, { method, headers, body: payload, credentials: "same-origin" });
  if (response.status === 401 && !opts.noSignOut) { signedOut(); throw new Error("signed out"); }
  if (!response.ok) {
    let message = `${response.status}`;
    try { const err = await response.json(); message = err.message || err.error || message; } catch (_) { }
    throw new Error(message);
  }
  if (opts.raw) return response;
  if (response.status === 204) return null;
  const type = response.headers.get("content-type") || "";
  if (type.includes("ndjson")) {
    const text = await response.text();
    return text.split("\n").filter(Boolean).map((l) => JSON.parse(l));
  }
  return type.includes("json") ? response.json() : response.text();
}

const enc = encodeURIComponent;
const spritePath = (name, rest) => `/v1/sprites/${enc(name)}${rest || ""}`;

// ---- session ----------------------------------------------------------------

function signedOut() {
  state.csrf = null;
  stopWatch();
  $("#who").textContent = "";
  $("#logout").hidden = true;
  renderSignIn();
}

function signedIn(info) {
  state.csrf = info.csrf; state.org = info.org; state.scope = info.scope;
  $("#who").textContent = `${info.org} · ${info.scope}`;
  $("#logout").hidden = false;
}

function renderSignIn() {
  const input = h("input", { id: "token", type: "password", autocomplete: "current-password", placeholder: "spr_… or the admin token", "aria-label": "API token", required: true });
  const form = h("form", { class: "card signin", onsubmit: async (e) => {
    e.preventDefault();
    try {
      const response = await fetch("/console/login", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ token: input.value }), credentials: "same-origin" });
      const body = await response.json();
      if (!response.ok) throw new Error(body.message || body.error);
      signedIn(body);
      notice("");
      location.hash = "#/";
      route();
    } catch (err) { notice(`Sign-in failed: ${err.message}`, true); }
  } },
  h("h1", {}, "Sign in"),
  h("label", { for: "token" }, "API token"),
  input,
  h("p", { class: "muted" }, "The daemon's admin token (/var/lib/sprites/admin-token) or one from `sprite tokens create`. It is exchanged for a session cookie and not stored in the page."),
  h("button", { class: "primary", type: "submit", id: "signin" }, "Sign in"));
  view().replaceChildren(form);
  input.focus();
}

// ---- the list ----------------------------------------------------------------

function stopWatch() { if (state.watch) { clearTimeout(state.watch); state.watch = null; } }

// Live updates of the list: a look every 2 s while the page is visible. (Not the
// NDJSON watch: a browser keeps at most 6 HTTP/1.1 connections per host, and a
// stream held open per tab starves the others and the page's own loads.)
function watchList(refresh) {
  stopWatch();
  const tick = async () => {
    if (document.visibilityState === "visible") await refresh();
    if (state.watch !== null) state.watch = setTimeout(tick, 2000);
  };
  state.watch = setTimeout(tick, 2000);
}

async function renderList() {
  const tbody = h("tbody");
  const table = h("table", { class: "sprites" },
    h("thead", {}, h("tr", {}, ["Sprite", "Status", "Stored", "URL", ""].map((t) => h("th", { scope: "col" }, t)))), tbody);
  const name = h("input", { id: "new-name", placeholder: "name", "aria-label": "New sprite name", pattern: "[a-z0-9-]{1,63}", required: true });
  const image = h("input", { id: "new-image", placeholder: "image (default)", "aria-label": "Image", size: 14 });
  const create = h("form", { class: "inline", onsubmit: async (e) => {
    e.preventDefault();
    try {
      notice(`creating ${name.value}…`);
      await api("POST", "/v1/sprites", { name: name.value, image: image.value || undefined });
      notice(`created ${name.value}`);
      name.value = "";
      refresh();
    } catch (err) { notice(`Create failed: ${err.message}`, true); }
  } }, name, image, h("button", { class: "primary", type: "submit" }, "Create sprite"));
  const counts = h("p", { class: "muted", id: "counts" });
  view().replaceChildren(h("section", { class: "card" }, h("div", { class: "row" }, h("h1", { class: "grow" }, "Sprites"), counts), create, table));

  let shown = null;
  async function refresh() {
    let list;
    try { list = await api("GET", "/v1/sprites?max_results=1000"); } catch (err) { if (state.csrf) notice(err.message, true); return; }
    // Re-drawn only when something changed, and never under a pending "are you sure".
    const key = JSON.stringify(list.sprites.map((s) => [s.name, s.status, s.lifecycle && s.lifecycle.since, s.lifecycle && s.lifecycle.awake_because, s.storage && s.storage.bytes_stored]));
    if (key === shown || state.armed > 0) return;
    shown = key;
    if (list.org) counts.textContent = `${list.org.running} running · ${list.org.warm} warm · ${list.org.cold} cold (limit ${list.org.running_limit} awake)`;
    tbody.replaceChildren(...list.sprites.map((s) => {
      const life = s.lifecycle || {};
      const why = (life.awake_because || []).map((r) => r.description).join(", ");
      const act = (label, fn, cls) => h("button", { class: cls, onclick: async (e) => {
        const button = e.currentTarget;
        button.disabled = true;
        try { await fn(); refresh(); } catch (err) { notice(`${label}: ${err.message}`, true); }
        button.disabled = false;
      } }, label);
      return h("tr", { "data-sprite": s.name },
        h("td", {}, h("a", { href: `#/s/${enc(s.name)}/terminal` }, s.name), h("div", { class: "muted" }, s.image || "")),
        h("td", {}, h("span", { class: `status ${s.status}` }, s.status), h("div", { class: "muted" }, life.since ? `for ${ago(life.since)}` : "", why ? ` · awake: ${why}` : "")),
        h("td", {}, bytes(s.storage ? s.storage.bytes_stored : undefined)),
        h("td", {}, h("a", { href: s.url, target: "_blank", rel: "noopener" }, s.url.replace(/^https?:\/\//, ""))),
        h("td", {}, h("div", { class: "actions" },
          s.status === "running" ? act("Sleep", () => api("POST", spritePath(s.name, "/sleep"))) : act("Wake", () => api("POST", spritePath(s.name, "/wake"))),
          s.status !== "cold" ? act("Cold", () => api("POST", spritePath(s.name, "/sleep?cold=true"))) : null,
          confirmButton("Destroy", `Destroy ${s.name}?`, async () => { await api("DELETE", spritePath(s.name)); notice(`destroyed ${s.name}`); refresh(); }))));
    }));
    if (!list.sprites.length) tbody.replaceChildren(h("tr", {}, h("td", { colspan: 5, class: "muted" }, "No sprites yet: create one above.")));
  }
  await refresh();
  watchList(refresh);
}

// A button that asks again before acting (no modal dialog).
function confirmButton(label, question, action) {
  const button = h("button", { class: "danger" }, label);
  let armed = false;
  button.addEventListener("click", async () => {
    if (!armed) {
      armed = true; state.armed += 1; button.textContent = question; button.setAttribute("aria-label", question);
      setTimeout(() => { if (armed) { armed = false; state.armed -= 1; button.textContent = label; } }, 4000);
      return;
    }
    armed = false; state.armed -= 1;
    button.disabled = true;
    try { await action(); } catch (err) { notice(`${label}: ${err.message}`, true); }
    button.disabled = false; button.textContent = label;
  });
  return button;
}

// ---- one sprite -------------------------------------------------------------

const TABS = [["terminal", "Terminal"], ["files", "Files"], ["checkpoints", "Checkpoints"], ["services", "Services"], ["settings", "URL & network"], ["usage", "Usage"]];

function renderSprite(name, tab) {
  stopWatch();
  closeTerminal();
  const body = h("div", { class: "tab-body", id: "tab-body" });
  const tabs = h("div", { class: "tabs", role: "tablist" }, TABS.map(([id, label]) =>
    h("button", { role: "tab", "aria-selected": String(id === tab), id: `tab-${id}`, onclick: () => { location.hash = `#/s/${enc(name)}/${id}`; } }, label)));
  view().replaceChildren(h("div", { class: "row" }, h("a", { href: "#/" }, "← all sprites"), h("h1", { class: "grow" }, name)), tabs, body);
  const renderers = { terminal: renderTerminal, files: renderFiles, checkpoints: renderCheckpoints, services: renderServices, settings: renderSettings, usage: renderUsage };
  (renderers[tab] || renderTerminal)(name, body);
}

// -- terminal: xterm.js over the exec WebSocket (TTY), re-attached after a drop.
function closeTerminal() {
  if (state.term) { state.term.closing = true; if (state.term.ws) state.term.ws.close(); state.term.term.dispose(); window.removeEventListener("resize", state.term.onresize); state.term = null; }
}

function renderTerminal(name, body) {
  const box = h("div", { id: "terminal", role: "application", "aria-label": `Terminal of ${name}` });
  const status = h("div", { class: "term-state", "aria-live": "polite" }, "connecting…");
  const keys = h("div", { class: "keys", role: "toolbar", "aria-label": "Keys" });
  body.replaceChildren(h("div", { class: "terminal-wrap" }, status, box, keys));
  body.parentElement.classList.add("terminal-view");
  const phone = window.innerWidth < 700;
  const term = new Terminal({ cursorBlink: true, fontSize: phone ? 13 : 14, scrollback: 5000, convertEol: false });
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(box);
  const t = { term, fit, ws: null, session: null, ctrl: false, closing: false, retries: 0, exited: false };
  state.term = t;
  window.sprites = { term, state: t };
  try { fit.fit(); } catch (_) { }
  const encoder = new TextEncoder();
  const send = (data) => { if (t.ws && t.ws.readyState === 1) t.ws.send(encoder.encode(data)); };
  term.onData((data) => {
    if (t.ctrl && data.length === 1) {
      const code = data.toUpperCase().charCodeAt(0);
      if (code >= 64 && code <= 95) data = String.fromCharCode(code - 64);
      t.ctrl = false; ctrlKey.setAttribute("aria-pressed", "false");
    }
    send(data);
  });
  term.onResize(({ cols, rows }) => { if (t.ws && t.ws.readyState === 1) t.ws.send(JSON.stringify({ type: "resize", cols, rows })); });
  t.onresize = () => { try { fit.fit(); } catch (_) { } };
  window.addEventListener("resize", t.onresize);
  const ctrlKey = h("button", { "aria-pressed": "false", onclick: () => { t.ctrl = !t.ctrl; ctrlKey.setAttribute("aria-pressed", String(t.ctrl)); term.focus(); } }, "Ctrl");
  const key = (label, seq, aria) => h("button", { "aria-label": aria || label, onclick: () => { send(seq); term.focus(); } }, label);
  keys.replaceChildren(ctrlKey, key("Esc", "\x1b", "Escape"), key("Tab", "\t"), key("←", "\x1b[D", "Left"), key("↑", "\x1b[A", "Up"), key("↓", "\x1b[B", "Down"), key("→", "\x1b[C", "Right"));

  const connect = () => {
    if (t.closing) return;
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const query = `tty=true&stdin=true&cols=${term.cols}&rows=${term.rows}&cmd=bash&cmd=-l`;
    const url = t.session ? `${proto}//${location.host}${spritePath(name, `/exec/${enc(t.session)}`)}` : `${proto}//${location.host}${spritePath(name, `/exec?${query}`)}`;
    const ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    t.ws = ws;
    let opened = false;
    const again = !!t.session;
    ws.onopen = () => { opened = true; t.retries = 0; status.textContent = again ? "reconnected" : "connected"; if (again) { term.reset(); ws.send(JSON.stringify({ type: "resize", cols: term.cols, rows: term.rows })); } term.focus(); };
    ws.onmessage = (event) => {
      if (typeof event.data === "string") {
        let msg; try { msg = JSON.parse(event.data); } catch (_) { return; }
        if (msg.type === "session_info") { t.session = msg.session_id; status.textContent = `${again ? "reconnected" : "connected"} · session ${msg.session_id}`; }
        else if (msg.type === "exit") { t.exited = true; status.textContent = `exited with ${msg.exit_code ?? msg.code}`; term.write(`\r\n[exited ${msg.exit_code ?? msg.code}; reload the tab for a new shell]\r\n`); }
        return;
      }
      term.write(new Uint8Array(event.data));
    };
    ws.onclose = () => {
      if (t.closing || t.exited) return;
      t.retries += 1;
      const wait = Math.min(10000, 500 * 2 ** Math.min(t.retries, 5));
      status.textContent = `${opened ? "connection lost" : "cannot connect"}; retrying in ${Math.round(wait / 1000)} s…`;
      setTimeout(connect, wait);
    };
  };
  t.send = send;
  connect();
}

// -- files
async function renderFiles(name, body, dir) {
  dir = dir || "/home/sprite";
  const list = h("ul");
  const crumbs = h("div", { class: "row" }, h("strong", {}, dir));
  const upload = h("input", { type: "file", id: "upload", multiple: true, "aria-label": "Upload files" });
  upload.addEventListener("change", async () => {
    for (const file of upload.files) {
      try {
        await api("PUT", `${spritePath(name, "/fs/write")}?path=${enc(`${dir}/${file.name}`)}&mkdirParents=true`, file, { headers: { "Content-Type": "application/octet-stream" } });
        notice(`uploaded ${file.name} to ${dir}`);
      } catch (err) { notice(`Upload of ${file.name} failed: ${err.message}`, true); }
    }
    renderFiles(name, body, dir);
  });
  const editor = h("div", { id: "editor" });
  body.replaceChildren(h("section", { class: "card files" }, crumbs, h("div", { class: "row" }, h("label", { for: "upload" }, "Upload to this directory: "), upload), list, editor));
  let entries;
  try { entries = (await api("GET", `${spritePath(name, "/fs/list")}?path=${enc(dir)}`)).entries; } catch (err) { notice(`List ${dir}: ${err.message}`, true); return; }
  entries.sort((a, b) => (b.is_dir - a.is_dir) || a.name.localeCompare(b.name));
  const parent = dir.replace(/\/[^/]+$/, "") || "/";
  const items = [];
  if (dir !== "/") items.push(h("li", {}, h("button", { class: "quiet name", onclick: () => renderFiles(name, body, parent) }, "↑ ..")));
  for (const entry of entries) {
    const path = entry.path;
    if (entry.is_dir) { items.push(h("li", {}, h("button", { class: "quiet name", onclick: () => renderFiles(name, body, path) }, `${entry.name}/`))); continue; }
    items.push(h("li", { "data-file": entry.name },
      h("span", { class: "name" }, entry.name), h("span", { class: "muted" }, bytes(entry.size)),
      h("a", { href: `${spritePath(name, "/fs/read")}?path=${enc(path)}`, download: entry.name }, "Download"),
      entry.size <= 262144 ? h("button", { onclick: () => editFile(name, path, editor, () => renderFiles(name, body, dir)) }, "Edit") : null));
  }
  list.replaceChildren(...items);
}

async function editFile(name, path, editor, done) {
  let text;
  try { text = await (await api("GET", `${spritePath(name, "/fs/read")}?path=${enc(path)}`, undefined, { raw: true })).text(); } catch (err) { notice(err.message, true); return; }
  const area = h("textarea", { class: "editor", "aria-label": `Contents of ${path}`, spellcheck: "false" });
  area.value = text;
  editor.replaceChildren(h("h2", {}, path), area, h("div", { class: "row" },
    h("button", { class: "primary", onclick: async () => {
      try { await api("PUT", `${spritePath(name, "/fs/write")}?path=${enc(path)}`, new Blob([area.value]), { headers: { "Content-Type": "application/octet-stream" } }); notice(`saved ${path}`); done(); } catch (err) { notice(`Save failed: ${err.message}`, true); }
    } }, "Save"), h("button", { onclick: () => editor.replaceChildren() }, "Close")));
  area.focus();
}

// -- checkpoints
async function renderCheckpoints(name, body) {
  const comment = h("input", { id: "checkpoint-comment", placeholder: "comment (optional)", "aria-label": "Checkpoint comment" });
  const list = h("tbody");
  const forkName = h("input", { id: "fork-name", placeholder: "new sprite name", "aria-label": "Fork into a new sprite named" });
  body.replaceChildren(h("section", { class: "card" },
    h("form", { class: "inline", onsubmit: async (e) => {
      e.preventDefault();
      try { const events = await api("POST", spritePath(name, "/checkpoint"), { comment: comment.value || undefined }); const done = events.find((ev) => ev.type === "complete"); notice(done ? done.data : "checkpoint created"); comment.value = ""; renderCheckpoints(name, body); } catch (err) { notice(`Checkpoint failed: ${err.message}`, true); }
    } }, comment, h("button", { class: "primary", type: "submit", id: "checkpoint-create" }, "Create checkpoint")),
    h("p", { class: "muted" }, "Fork copies a checkpoint into a new sprite: "), forkName,
    h("table", {}, h("thead", {}, h("tr", {}, ["Checkpoint", "Made", "Comment", ""].map((t) => h("th", {}, t)))), list)));
  let checkpoints;
  try { checkpoints = await api("GET", spritePath(name, "/checkpoints")); } catch (err) { notice(err.message, true); return; }
  list.replaceChildren(...checkpoints.filter((c) => c.id !== "Current").map((c) => h("tr", { "data-checkpoint": c.id },
    h("td", {}, c.id), h("td", {}, `${ago(c.create_time)} ago`), h("td", {}, c.comment || ""),
    h("td", {}, h("div", { class: "actions" },
      confirmButton("Restore", `Restore ${c.id}?`, async () => { notice(`restoring ${c.id}…`); await api("POST", spritePath(name, `/checkpoints/${enc(c.id)}/restore`)); notice(`restored ${name} to ${c.id}`); }),
      h("button", { onclick: async () => {
        if (!forkName.value) { notice("Name the new sprite first (the field above)", true); forkName.focus(); return; }
        try { await api("POST", "/v1/sprites", { name: forkName.value, from: { sprite: name, checkpoint: c.id } }); notice(`forked ${c.id} into ${forkName.value}`); } catch (err) { notice(`Fork failed: ${err.message}`, true); }
      } }, "Fork"))))));
  if (!list.children.length) list.replaceChildren(h("tr", {}, h("td", { colspan: 4, class: "muted" }, "No checkpoints yet.")));
}

// -- services
async function renderServices(name, body) {
  const logs = h("pre", { class: "logs", "aria-live": "polite", id: "service-logs" });
  const rows = h("tbody");
  body.replaceChildren(h("section", { class: "card" }, h("table", {}, h("thead", {}, h("tr", {}, ["Service", "State", "Command", ""].map((t) => h("th", {}, t)))), rows), logs));
  let services;
  try { services = await api("GET", spritePath(name, "/services")); } catch (err) { notice(err.message, true); return; }
  const list = Array.isArray(services) ? services : (services.services || []);
  rows.replaceChildren(...list.map((s) => h("tr", {},
    h("td", {}, s.name), h("td", {}, (s.state && s.state.status) || s.status || ""), h("td", { class: "muted" }, [s.cmd, ...(s.args || [])].join(" ")),
    h("td", {}, h("div", { class: "actions" },
      h("button", { onclick: async () => { try { await api("POST", spritePath(name, `/services/${enc(s.name)}/start`)); renderServices(name, body); } catch (err) { notice(err.message, true); } } }, "Start"),
      h("button", { onclick: async () => { try { await api("POST", spritePath(name, `/services/${enc(s.name)}/stop`)); renderServices(name, body); } catch (err) { notice(err.message, true); } } }, "Stop"),
      h("button", { onclick: () => followLogs(name, s.name, logs) }, "Follow logs"))))));
  if (!list.length) rows.replaceChildren(h("tr", {}, h("td", { colspan: 4, class: "muted" }, "No services. `sprite services create` or the MCP tool service_create makes one.")));
}

async function followLogs(name, service, out) {
  out.textContent = "";
  try {
    const response = await api("GET", `${spritePath(name, `/services/${enc(service)}/logs`)}?lines=200&duration=300s`, undefined, { raw: true });
    const reader = response.body.getReader(); const decoder = new TextDecoder(); let buffered = "";
    for (;;) {
      const { value, done } = await reader.read(); if (done) break;
      buffered += decoder.decode(value, { stream: true });
      let i;
      while ((i = buffered.indexOf("\n")) >= 0) {
        const line = buffered.slice(0, i); buffered = buffered.slice(i + 1);
        try { const ev = JSON.parse(line); if (ev.data) { out.textContent += ev.data; out.scrollTop = out.scrollHeight; } } catch (_) { }
      }
    }
  } catch (err) { notice(`Logs: ${err.message}`, true); }
}

// -- URL and network policy
async function renderSettings(name, body) {
  let info, policy;
  try { info = await api("GET", spritePath(name)); policy = await api("GET", spritePath(name, "/policy/network")); } catch (err) { notice(err.message, true); return; }
  const auth = h("select", { id: "url-auth", "aria-label": "Who may open the URL" }, ["sprite", "public"].map((v) => h("option", { value: v, selected: info.url_settings.auth === v }, v === "public" ? "public: anyone" : "sprite: token holders")));
  const rules = h("textarea", { class: "editor", id: "policy", "aria-label": "Network policy (JSON)", spellcheck: "false" });
  rules.value = JSON.stringify(policy, null, 2);
  body.replaceChildren(h("section", { class: "card" },
    h("h2", {}, "URL"), h("p", {}, h("a", { href: info.url, target: "_blank", rel: "noopener" }, info.url)),
    h("div", { class: "row" }, auth, h("button", { onclick: async () => { try { await api("PUT", spritePath(name), { url_settings: { auth: auth.value } }); notice(`URL is now ${auth.value}`); } catch (err) { notice(err.message, true); } } }, "Save")),
    h("h2", {}, "Network policy"), h("p", { class: "muted" }, "Egress rules (API.md, Policy): domains and networks the sprite may reach."), rules,
    h("div", { class: "row" }, h("button", { class: "primary", onclick: async () => {
      let parsed; try { parsed = JSON.parse(rules.value); } catch (err) { notice(`The policy is not JSON: ${err.message}`, true); return; }
      try { await api("POST", spritePath(name, "/policy/network"), parsed); notice("network policy saved"); } catch (err) { notice(`Policy refused: ${err.message}`, true); }
    } }, "Save policy"))));
}

// -- usage: bar charts of the hourly history
async function renderUsage(name, body) {
  let usage;
  try { usage = await api("GET", `${spritePath(name, "/usage")}?since=48h`); } catch (err) { notice(err.message, true); return; }
  const hours = usage.history || [];
  const chart = (title, values, format) => {
    const max = Math.max(1e-9, ...values);
    const w = 100 / Math.max(1, values.length);
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("viewBox", "0 0 100 40"); svg.setAttribute("preserveAspectRatio", "none"); svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", `${title}: ${values.map(format).join(", ")}`);
    values.forEach((v, i) => {
      const r = document.createElementNS("http://www.w3.org/2000/svg", "rect");
      const height = (v / max) * 38;
      r.setAttribute("x", String(i * w + w * 0.1)); r.setAttribute("width", String(w * 0.8));
      r.setAttribute("y", String(40 - height)); r.setAttribute("height", String(height));
      const tip = document.createElementNS("http://www.w3.org/2000/svg", "title"); tip.textContent = `${hours[i].hour}: ${format(v)}`; r.append(tip);
      svg.append(r);
    });
    return h("div", { class: "chart" }, h("h3", {}, `${title} (peak ${format(Math.max(0, ...values))})`), svg);
  };
  body.replaceChildren(h("section", { class: "card", id: "usage" },
    h("p", {}, `Stored now: ${bytes(usage.bytes_stored)}`),
    hours.length ? [
      chart("CPU seconds per hour", hours.map((x) => x.cpu_seconds), (v) => `${v.toFixed(1)} s`),
      chart("Memory (average)", hours.map((x) => x.memory_avg_bytes), bytes),
      chart("Stored bytes", hours.map((x) => x.stored_bytes || 0), bytes),
      chart("Network in + out", hours.map((x) => x.net_rx_bytes + x.net_tx_bytes), bytes),
    ] : h("p", { class: "muted" }, "No usage recorded yet (sampled every usage_interval).")));
}

// ---- routing ----------------------------------------------------------------

function route() {
  if (!state.csrf) { renderSignIn(); return; }
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  if (parts[0] === "s" && parts[1]) renderSprite(parts[1], parts[2] || "terminal");
  else { closeTerminal(); renderList(); }
}

window.addEventListener("hashchange", route);
$("#logout").addEventListener("click", async () => {
  try { await api("POST", "/console/logout"); } catch (_) { }
  closeTerminal();
  signedOut();
});

(async () => {
  try {
    const response = await fetch("/console/session", { credentials: "same-origin" });
    if (response.ok) signedIn(await response.json());
  } catch (_) { }
  route();
})();
