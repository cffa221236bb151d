// The shell: hash routes to pages, the ACL login box, and one AbortController per shown page so
// that leaving a page stops its blocking queries.

import { api, fill, h, token } from "./lib.js";
import * as services from "./services.js";
import * as nodes from "./nodes.js";
import * as kv from "./kv.js";
import * as intentions from "./intentions.js";
import * as acl from "./acl.js";

const ROUTES = [
  [/^services$/, services.list],
  [/^services\/(.+)$/, services.detail],
  [/^nodes$/, nodes.list],
  [/^nodes\/(.+)$/, nodes.detail],
  [/^kv\/(.*)$/, kv.page],
  [/^intentions$/, intentions.page],
  [/^acl\/tokens$/, acl.tokens],
  [/^acl\/tokens\/(.+)$/, acl.token],
  [/^acl\/policies$/, acl.policies],
  [/^acl\/policies\/(.+)$/, acl.policy],
];

// What the agent told us about ACLs: enabled, the default policy, and the logged-in token (or null).
const session = { aclEnabled: false, defaultPolicy: "allow", self: null, error: null };
let current = null;

async function loadSession() {
  session.self = null;
  session.error = null;
  let resp;
  try {
    resp = await api("GET", "/v1/acl/token/self");
    session.aclEnabled = true;
    session.self = token.get() ? resp.data : null; // without a token the agent answers with the anonymous one
  } catch (err) {
    resp = err;
    session.aclEnabled = ![0, 401].includes(err.status); // 401: "ACL support disabled"; 0: agent unreachable
    if (session.aclEnabled && token.get()) session.error = err;
  }
  session.defaultPolicy = resp.headers.get("X-Consul-Default-Acl-Policy") || "allow";
}

function renderLogin() {
  const box = document.getElementById("login");
  document.querySelectorAll(".acl-only").forEach((a) => { a.hidden = !session.aclEnabled; });
  if (!session.aclEnabled) return fill(box);
  if (session.self) {
    const who = session.self.Description || session.self.AccessorID;
    return fill(box, h("span", { class: "who", id: "logged-in", title: session.self.AccessorID }, "Token: ", who),
      h("button", { type: "button", id: "logout", onclick: logout }, "Log out"));
  }
  const input = h("input", { type: "password", id: "login-token", placeholder: "ACL token (SecretID)", autocomplete: "off", "aria-label": "ACL token" });
  const err = h("span", { class: "login-error", id: "login-error", role: "alert" });
  if (session.error) fill(err, `Stored token refused: ${session.error.message}`);
  const form = h("form", { id: "login-form", onsubmit: (e) => { e.preventDefault(); login(input.value.trim(), err); } },
    input, h("button", { type: "submit" }, "Log in"), err);
  return fill(box, form);
}

async function login(secret, errSlot) {
  if (!secret) return fill(errSlot, "Enter a token's SecretID");
  const previous = token.get();
  token.set(secret);
  try {
    await api("GET", "/v1/acl/token/self");
  } catch (err) {
    if (previous) token.set(previous); else token.clear();
    return fill(errSlot, `Token refused: ${err.message}`);
  }
  await refresh();
}

async function logout() {
  token.clear();
  await refresh();
}

function renderBanner() {
  const banner = document.getElementById("banner");
  const anonymous = session.aclEnabled && !session.self && session.defaultPolicy === "deny";
  fill(banner, anonymous ? h("div", { class: "notice warn" },
    "ACLs are on (default policy deny) and you are not logged in: lists may be empty and changes refused. Log in with a token above.") : null);
}

function show() {
  current?.abort();
  current = new AbortController();
  const path = location.hash.replace(/^#\/?/, "") || "services";
  const main = document.getElementById("main");
  main.replaceChildren();
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("active", path === a.dataset.section || path.startsWith(a.dataset.section + "/"));
  }
  for (const [re, page] of ROUTES) {
    const m = path.match(re);
    if (!m) continue;
    let args;
    try {
      args = m.slice(1).map((s) => s.split("/").map(decodeURIComponent).join("/"));
    } catch {
      break; // a malformed %-escape
    }
    page({ main, args, signal: current.signal, session });
    return;
  }
  fill(main, h("div", { class: "error" }, `No page at #/${path}`));
}

async function refresh() {
  await loadSession();
  renderLogin();
  renderBanner();
  show();
}

window.addEventListener("hashchange", show);
window.addEventListener("storage", (e) => { if (e.key === "proconsul.token") refresh(); });
refresh();
