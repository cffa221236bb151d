// Nodes: the list (liveness, services, check counts) and one node (its services and checks).
// Liveness is the agent's member status (alive / failed / left), else the serfHealth check.

import {
  api, badge, checkList, coalesced, countBadges, counts, empty, fill, h, link, mapLimit, onFail, section,
  showError, sleep, table, tags, watch, worst,
} from "./lib.js";

const MEMBER_STATUS = { 1: "alive", 2: "leaving", 3: "left", 4: "failed" };
const LIVENESS_CLASS = { alive: "passing", leaving: "warning", left: "muted", failed: "critical", unknown: "muted" };

function liveness(member, checks) {
  if (member && MEMBER_STATUS[member.Status]) return MEMBER_STATUS[member.Status];
  const serf = checks.find((c) => c.CheckID === "serfHealth");
  if (!serf) return "unknown";
  return serf.Status === "passing" ? "alive" : "failed";
}

function livenessBadge(state) {
  return h("span", { class: `badge status-${LIVENESS_CLASS[state]}`, "data-liveness": state }, state);
}

async function members(signal) {
  try {
    const resp = await api("GET", "/v1/agent/members", { signal });
    return new Map((resp.data || []).map((m) => [m.Name, m]));
  } catch (err) {
    if (signal.aborted) throw err;
    return new Map(); // agent:read refused: fall back to serfHealth
  }
}

export function list({ main, signal }) {
  const search = h("input", { type: "search", id: "node-search", placeholder: "Search by name or address", "aria-label": "Search nodes" });
  const errors = [h("div"), h("div"), h("div")];
  const body = h("div", { id: "nodes" }, empty("Loading…"));
  fill(main, h("h1", {}, "Nodes"), h("div", { class: "toolbar" }, search), errors, body);

  let nodes = null;
  let checks = [];
  let byName = new Map(); // member name -> /v1/agent/members entry
  let services = new Map(); // node -> its service names
  let rows = [];
  const render = () => {
    const q = search.value.trim().toLowerCase();
    const shown = rows.filter((r) => !q || r.name.toLowerCase().includes(q) || r.address.includes(q));
    if (!shown.length) return fill(body, empty(rows.length ? "No node matches." : "No nodes."));
    fill(body, table(["Node", "Status", "Address", "Services", "Health checks"], shown.map((r) => h("tr", { "data-node": r.name, "data-liveness": r.state },
      h("td", {}, badge(r.worst, ""), " ", r.left ? r.name : link(`#/nodes/${encodeURIComponent(r.name)}`, r.name)),
      h("td", {}, livenessBadge(r.state)),
      h("td", { class: "mono" }, r.address),
      h("td", {}, r.services.map((s) => h("span", { class: "tag" }, s))),
      h("td", { class: "counts" }, r.left ? "" : countBadges(r.counts)))), { id: "nodes-table" }));
  };
  search.addEventListener("input", render);

  const compose = () => {
    if (!nodes) return;
    rows = nodes.map((n) => {
      const mine = checks.filter((c) => c.Node === n.Node);
      return { name: n.Node, address: n.Address, state: liveness(byName.get(n.Node), mine), services: services.get(n.Node) || [], counts: counts(mine), worst: worst(mine) };
    });
    const inCatalog = new Set(nodes.map((n) => n.Node));
    for (const m of byName.values()) {
      if (!inCatalog.has(m.Name)) rows.push({ name: m.Name, address: m.Addr, state: MEMBER_STATUS[m.Status] || "unknown", services: [], counts: {}, worst: "passing", left: true });
    }
    render();
  };
  // Each node's services: refetched when the nodes or the catalog's services change, not on check changes.
  const refresh = coalesced(async () => {
    if (!nodes) return;
    const found = await mapLimit(nodes, 4, async (n) => (await api("GET", `/v1/catalog/node-services/${encodeURIComponent(n.Node)}`, { signal })).data);
    services = new Map(nodes.map((n, i) => [n.Node, [...new Set((found[i]?.Services || []).map((s) => s.Service))].sort()]));
    compose();
  });
  const update = () => refresh().then(() => showError(errors[2], null), (err) => { if (!signal.aborted) showError(errors[2], err, "Node services"); });

  watch("/v1/catalog/nodes", {}, signal, (data) => { nodes = data || []; compose(); update(); }, onFail(errors[0], "Nodes", body));
  watch("/v1/catalog/services", {}, signal, update, (err) => showError(errors[2], err, "Services"));
  watch("/v1/health/state/any", {}, signal, (data) => { checks = data || []; compose(); }, (err) => showError(errors[1], err, "Health checks"));
  // Membership is not a blocking query: poll it, so a node that fails or leaves shows without a reload.
  (async () => {
    while (!signal.aborted) {
      const next = await members(signal).catch(() => byName);
      const key = (m) => JSON.stringify([...m.values()].map((x) => [x.Name, x.Status, x.Addr]));
      if (key(next) !== key(byName)) { byName = next; compose(); }
      await sleep(3000, signal);
    }
  })();
}

export function detail({ main, args: [name], signal }) {
  const title = h("h1", {}, name);
  const errors = [h("div"), h("div")];
  const info = h("div", { id: "node-info" });
  const services = h("div", { id: "node-services" }, empty("Loading…"));
  const checksBox = h("div", { id: "node-checks" }, empty("Loading…"));
  fill(main, h("p", { class: "crumbs" }, link("#/nodes", "Nodes"), " / "), title, info,
    section("Services", errors[0], services), section("Health checks", errors[1], checksBox));

  let checks = [];
  let nodeServices = null;
  const render = async () => {
    const member = (await members(signal)).get(name);
    fill(title, badge(worst(checks), ""), " ", name, " ", livenessBadge(liveness(member, checks)));
    fill(checksBox, checkList(checks));
    if (!nodeServices) return;
    const node = nodeServices.Node;
    if (!node) return fill(services, empty(`Node "${name}" is not in the catalog.`));
    fill(info, h("dl", { class: "facts" },
      h("dt", {}, "Address"), h("dd", { class: "mono" }, node.Address),
      h("dt", {}, "Datacenter"), h("dd", {}, node.Datacenter),
      h("dt", {}, "ID"), h("dd", { class: "mono" }, node.ID || ""),
      Object.entries(node.Meta || {}).filter(([, v]) => v !== "").map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])));
    const list = nodeServices.Services || [];
    if (!list.length) return fill(services, empty("No services on this node."));
    fill(services, table(["Service", "ID", "Port", "Tags", "Health checks"], list.map((s) => {
      const mine = checks.filter((c) => c.ServiceID === s.ID || c.ServiceID === "");
      return h("tr", { "data-service": s.Service },
        h("td", {}, badge(worst(mine), ""), " ", link(`#/services/${encodeURIComponent(s.Service)}`, s.Service), s.Kind ? h("span", { class: "tag" }, s.Kind) : null),
        h("td", {}, s.ID), h("td", { class: "mono" }, s.Port), h("td", {}, tags(s.Tags)), h("td", { class: "counts" }, countBadges(counts(mine))));
    })));
  };
  const update = () => render().catch((err) => { if (!signal.aborted) showError(errors[0], err); });
  watch(`/v1/health/node/${encodeURIComponent(name)}`, {}, signal, (data) => { checks = data || []; update(); }, onFail(errors[1], "Checks", checksBox));
  watch(`/v1/catalog/node-services/${encodeURIComponent(name)}`, {}, signal, (data) => { nodeServices = data || {}; update(); },
    onFail(errors[0], "Services", services));
}
