// Shared by every page: building DOM safely, the /v1 API with the user's token, blocking-query
// watches, and small formatting helpers. Data never goes through innerHTML: h() sets text nodes.

const TOKEN_KEY = "proconsul.token";
const WAIT = "55s"; // blocking queries: short enough that a proxy in between does not time them out

/** The ACL token the user logged in with; kept in this browser's localStorage only. */
export const token = {
  get: () => localStorage.getItem(TOKEN_KEY) || "",
  set: (secret) => localStorage.setItem(TOKEN_KEY, secret),
  clear: () => localStorage.removeItem(TOKEN_KEY),
};

/** An element: h("a", {href: "#/x", onclick: fn}, "text", child, [more]). */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else if (key === "value" || key === "checked") el[key] = value;
    else el.setAttribute(key, value === true ? "" : value);
  }
  el.append(...nodes(children));
  return el;
}

function nodes(children) {
  return children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false)
    .map((c) => (c instanceof Node ? c : String(c)));
}

/** Replace an element's children. */
export function fill(el, ...children) {
  el.replaceChildren(...nodes(children));
  return el;
}

export class ApiError extends Error {
  constructor(status, message, headers) {
    super(message);
    this.status = status;
    this.headers = headers || new Headers();
  }
  get denied() {
    return this.status === 403;
  }
}

/** A /v1 request with the stored token. Resolves to {data, index, status, headers}; throws ApiError. */
export async function api(method, path, { query, body, signal, allow404, text } = {}) {
  const url = new URL(path, location.origin);
  for (const [key, value] of Object.entries(query || {})) {
    if (value === undefined || value === null || value === false) continue;
    url.searchParams.set(key, value === true ? "" : value);
  }
  const headers = {};
  const secret = token.get();
  if (secret) headers["X-Consul-Token"] = secret;
  if (body !== undefined && typeof body !== "string") body = JSON.stringify(body);
  let resp;
  try {
    resp = await fetch(url, { method, headers, body, signal, cache: "no-store" });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, `Cannot reach the agent (${err.message})`);
  }
  const raw = await resp.text();
  if (!resp.ok && !(allow404 && resp.status === 404)) throw new ApiError(resp.status, raw.trim() || `${resp.status} ${resp.statusText}`, resp.headers);
  let data = null;
  if (resp.ok && raw) data = text || !(resp.headers.get("content-type") || "").includes("json") ? raw : JSON.parse(raw);
  return { data, index: Number(resp.headers.get("X-Consul-Index") || 0), status: resp.status, headers: resp.headers };
}

/** Follow a read with blocking queries until ``signal`` aborts: onData(data, resp) on every change,
 * onError(err) on a failure (then retried with backoff) and onError(null) once it works again. */
export function watch(path, { query, allow404 } = {}, signal, onData, onError) {
  (async () => {
    let index = 0;
    let delay = 0;
    let failing = false;
    while (!signal.aborted) {
      try {
        const q = { ...query };
        if (index > 0) Object.assign(q, { index, wait: WAIT });
        const resp = await api("GET", path, { query: q, signal, allow404 });
        if (signal.aborted) return;
        if (failing) onError(null);
        failing = false;
        delay = 0;
        if (resp.index !== index || index === 0) onData(resp.data, resp);
        // Consul: an index that goes backwards (a restored snapshot) starts the watch over.
        index = resp.index < index ? 0 : resp.index;
      } catch (err) {
        if (signal.aborted || err.name === "AbortError") return;
        failing = true;
        onError(err);
        delay = Math.min(delay ? delay * 2 : 500, 10000);
        await sleep(delay, signal);
      }
    }
  })();
}

export function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
  });
}

/** Run ``fn`` once now and, if called again while it runs, once more after it: refreshes coalesce. */
export function coalesced(fn) {
  let running = false;
  let again = false;
  return async function run() {
    if (running) { again = true; return; }
    running = true;
    try {
      do { again = false; await fn(); } while (again);
    } finally {
      running = false;
    }
  };
}

/** ``fn`` over ``items`` with at most ``limit`` at once (browsers keep ~6 connections per host). */
export async function mapLimit(items, limit, fn) {
  const out = new Array(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i], i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

// ---------------------------------------------------------------- display helpers

const ORDER = { passing: 0, warning: 1, critical: 2 };

/** The worst status among checks ("passing" when there are none). */
export function worst(checks) {
  return checks.reduce((w, c) => (ORDER[c.Status] > ORDER[w] ? c.Status : w), "passing");
}

export function counts(checks) {
  const out = { passing: 0, warning: 0, critical: 0 };
  for (const c of checks) if (c.Status in out) out[c.Status] += 1;
  return out;
}

export function badge(status, text) {
  return h("span", { class: `badge status-${status}`, "data-status": status }, text ?? status);
}

/** Passing / warning / critical check counts, each a coloured badge (zeros left out). */
export function countBadges(c) {
  const parts = [];
  if (c.passing) parts.push(badge("passing", `✓ ${c.passing} passing`));
  if (c.warning) parts.push(badge("warning", `! ${c.warning} warning`));
  if (c.critical) parts.push(badge("critical", `✗ ${c.critical} critical`));
  return parts.length ? parts : h("span", { class: "muted" }, "no checks");
}

export function tags(list) {
  return (list || []).map((t) => h("span", { class: "tag" }, t));
}

/** A box that shows an error (with a hint for permission denied) or nothing. */
export function errorBox(err, what) {
  if (!err) return null;
  const hint = err.denied ? (token.get() ? " Your token does not allow this." : " Log in with an ACL token that allows it.") : "";
  return h("div", { class: "error", role: "alert" }, what ? `${what}: ` : "", err.message, hint);
}

/** Show ``err`` in ``slot`` (an element kept for it), or clear it. */
export function showError(slot, err, what) {
  fill(slot, errorBox(err, what));
}

/** A watch's onError: the error in ``slot`` and, while it lasts, nothing stale or "Loading…" in ``body``. */
export function onFail(slot, what, body) {
  return (err) => {
    showError(slot, err, what);
    if (err && body) fill(body, empty("Not available."));
  };
}

export function notice(text, kind = "ok") {
  return h("div", { class: `notice ${kind}`, role: "status" }, text);
}

export function table(head, rows, attrs) {
  return h("table", attrs || {}, h("thead", {}, h("tr", {}, head.map((c) => h("th", {}, c)))), h("tbody", {}, rows));
}

export function empty(text) {
  return h("p", { class: "muted empty" }, text);
}

export function link(hash, text) {
  return h("a", { href: hash }, text);
}

export function section(title, ...children) {
  return h("section", { class: "card" }, h("h2", {}, title), ...children);
}

/** A KV key or prefix as a #/kv/ route, each segment encoded. */
export function kvHash(path) {
  return "#/kv/" + path.split("/").map(encodeURIComponent).join("/");
}

export function kvPath(key) {
  return "/v1/kv/" + key.split("/").map(encodeURIComponent).join("/");
}

const bytesOf = (b64) => Uint8Array.from(atob(b64 || ""), (c) => c.charCodeAt(0));

/** A KV value (base64) as text; bytes that are not UTF-8 become U+FFFD. */
export function decodeValue(b64) {
  return new TextDecoder().decode(bytesOf(b64));
}

export function isText(b64) {
  try {
    new TextDecoder("utf-8", { fatal: true }).decode(bytesOf(b64));
    return true;
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------- YAML (a view of JSON values)

function yamlScalar(v) {
  if (v === null) return "null";
  if (typeof v !== "string") return String(v);
  const plain = v !== "" && !/^(true|false|null|yes|no|on|off|y|n|~)$/i.test(v) && !/^[-+.]?\d/.test(v)
    && !/[:#\n\r\t"'{}[\],&*!|>%@`\\]|^[\s\-?]|\s$/.test(v);
  return plain ? v : JSON.stringify(v);
}

const isContainer = (v) => v !== null && typeof v === "object";
const isEmpty = (v) => (Array.isArray(v) ? v.length === 0 : Object.keys(v).length === 0);

/** A JSON value as YAML (block style, strings quoted where YAML would read them otherwise). */
export function toYAML(v, indent = "") {
  const inline = (x) => (isContainer(x) ? (Array.isArray(x) ? "[]" : "{}") : yamlScalar(x));
  if (!isContainer(v) || isEmpty(v)) return indent + inline(v);
  if (Array.isArray(v)) {
    return v.map((x) => (isContainer(x) && !isEmpty(x)
      ? `${indent}- ${toYAML(x, indent + "  ").slice(indent.length + 2)}`
      : `${indent}- ${inline(x)}`)).join("\n");
  }
  return Object.entries(v).map(([k, x]) => (isContainer(x) && !isEmpty(x)
    ? `${indent}${yamlScalar(k)}:\n${toYAML(x, indent + "  ")}`
    : `${indent}${yamlScalar(k)}: ${inline(x)}`)).join("\n");
}

export function ago(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return isNaN(d) ? iso : d.toLocaleString();
}

/** Checks as a list: status badge, name and ID, then the output. */
export function checkList(checks) {
  if (!checks.length) return h("span", { class: "muted" }, "no checks");
  return h("ul", { class: "checks" }, checks.map((c) => h("li", { class: `check status-${c.Status}`, "data-check": c.CheckID, "data-status": c.Status },
    badge(c.Status), " ", h("strong", {}, c.Name), " ", h("span", { class: "muted" }, c.CheckID, c.Type ? ` · ${c.Type}` : ""),
    c.Notes ? h("div", { class: "muted" }, c.Notes) : null,
    c.Output ? h("pre", { class: "output" }, c.Output) : null)));
}

/** An intention's decision: allow / deny, or its L7 permissions. */
export function intentionAction(ixn) {
  if (ixn.Permissions?.length) {
    return h("span", { class: "badge l7" }, `L7: ${ixn.Permissions.length} permission${ixn.Permissions.length > 1 ? "s" : ""}`);
  }
  return badge(ixn.Action === "allow" ? "passing" : "critical", ixn.Action);
}

/** One L7 permission as text: "allow GET,POST /api/*". */
export function permissionText(p) {
  const http = p.HTTP || {};
  const path = http.PathExact ? `= ${http.PathExact}` : http.PathPrefix ? `${http.PathPrefix}*` : http.PathRegex ? `~ ${http.PathRegex}` : "any path";
  const methods = http.Methods?.length ? http.Methods.join(",") : "any method";
  const headers = (http.Header || []).map((x) => ` header ${x.Name}`).join("");
  return `${p.Action} ${methods} ${path}${headers}`;
}
