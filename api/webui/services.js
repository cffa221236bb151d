// Services: the list (health counts, search, health filter) and one service (instances, checks,
// sidecars and upstreams, the intentions that apply to it). Both follow blocking queries.

import {
  api, badge, checkList, coalesced, countBadges, counts, empty, fill, h, intentionAction, link, mapLimit,
  onFail, permissionText, section, showError, table, tags, watch, worst,
} from "./lib.js";

const HEALTH = ["any health", "passing", "warning", "critical"];

export function list({ main, signal }) {
  const search = h("input", { type: "search", id: "service-search", placeholder: "Search by name or tag", "aria-label": "Search services" });
  const health = h("select", { id: "service-health", "aria-label": "Health filter" }, HEALTH.map((s) => h("option", { value: s === HEALTH[0] ? "" : s }, s)));
  const errors = [h("div"), h("div"), h("div")];
  const body = h("div", { id: "services" }, empty("Loading…"));
  fill(main, h("h1", {}, "Services"), h("div", { class: "toolbar" }, search, health), errors, body);

  let names = null; // name -> tags, from /v1/catalog/services
  let rows = [];

  const render = () => {
    const q = search.value.trim().toLowerCase();
    const shown = rows.filter((r) => !r.proxy && (!health.value || r.worst === health.value)
      && (!q || r.name.toLowerCase().includes(q) || r.tags.some((t) => t.toLowerCase().includes(q))));
    if (!rows.length) return fill(body, empty("No services registered."));
    if (!shown.length) return fill(body, empty("No service matches."));
    fill(body, table(["Service", "Health checks", "Instances", "Tags"], shown.map((r) => h("tr", { "data-service": r.name, "data-health": r.worst, class: `health-${r.worst}` },
      h("td", {}, badge(r.worst, ""), " ", link(`#/services/${encodeURIComponent(r.name)}`, r.name), r.mesh ? h("span", { class: "tag mesh" }, "in mesh") : null),
      h("td", { class: "counts" }, countBadges(r.counts)),
      h("td", {}, `${r.instances} instance${r.instances === 1 ? "" : "s"}`, r.nodes > 1 ? h("span", { class: "muted" }, ` on ${r.nodes} nodes`) : null),
      h("td", {}, tags(r.tags)))), { id: "services-table" }));
  };
  search.addEventListener("input", render);
  health.addEventListener("change", render);

  // Instance and check counts come from each service's health. A change in the catalog's services
  // refetches every service; a check change refetches only the services whose checks changed (all of
  // them when a node's own check did). Bursts of changes coalesce into one refresh.
  const found = new Map(); // name -> /v1/health/service entries
  let stale = new Set();
  let allStale = true;
  let statuses = new Map(); // ServiceName ("" for node checks) -> its checks' statuses
  const refresh = coalesced(async () => {
    if (!names) return;
    const all = Object.keys(names).sort();
    const todo = all.filter((n) => allStale || stale.has(n) || !found.has(n));
    allStale = false;
    stale = new Set();
    try {
      const fetched = await mapLimit(todo, 4, async (name) => (await api("GET", `/v1/health/service/${encodeURIComponent(name)}`, { signal })).data || []);
      todo.forEach((name, i) => found.set(name, fetched[i]));
    } catch (err) {
      allStale = true;
      throw err;
    }
    for (const name of found.keys()) if (!(name in names)) found.delete(name);
    const meshed = new Set();
    rows = all.map((name) => {
      const entries = found.get(name);
      const checks = entries.flatMap((e) => e.Checks);
      const proxy = entries.length > 0 && entries.every((e) => e.Service.Kind === "connect-proxy");
      for (const e of entries) if (e.Service.Proxy?.DestinationServiceName) meshed.add(e.Service.Proxy.DestinationServiceName);
      return {
        name, proxy, tags: names[name] || [], instances: entries.length, nodes: new Set(entries.map((e) => e.Node.Node)).size,
        counts: counts(checks), worst: worst(checks),
      };
    });
    for (const r of rows) r.mesh = meshed.has(r.name);
    render();
  });
  const update = () => refresh().then(() => showError(errors[2], null), (err) => { if (!signal.aborted) showError(errors[2], err, "Service health"); });
  const checksChanged = (checks) => {
    const now = new Map();
    for (const c of checks || []) now.set(c.ServiceName, `${now.get(c.ServiceName) || ""}${c.Node}/${c.CheckID}=${c.Status};`);
    for (const name of new Set([...now.keys(), ...statuses.keys()])) {
      if (now.get(name) === statuses.get(name)) continue;
      if (name === "") allStale = true;
      else stale.add(name);
    }
    statuses = now;
    update();
  };

  watch("/v1/catalog/services", {}, signal, (data) => { names = data || {}; allStale = true; update(); }, onFail(errors[0], "Services", body));
  watch("/v1/health/state/any", {}, signal, checksChanged, (err) => showError(errors[1], err, "Health checks"));
}

export function detail({ main, args: [name], signal }) {
  const title = h("h1", {}, name);
  const errors = [h("div"), h("div"), h("div")];
  const instances = h("div", { id: "instances" }, empty("Loading…"));
  const proxies = h("div", { id: "sidecars" }, empty("Loading…"));
  const ixns = h("div", { id: "service-intentions" }, empty("Loading…"));
  fill(main, h("p", { class: "crumbs" }, link("#/services", "Services"), " / "), title,
    section("Instances", errors[0], instances), section("Sidecar proxies and upstreams", errors[1], proxies),
    section("Intentions", errors[2], ixns));

  watch(`/v1/health/service/${encodeURIComponent(name)}`, {}, signal, (data) => {
    const entries = data || [];
    const all = entries.flatMap((e) => e.Checks);
    fill(title, badge(worst(all), ""), " ", name, entries[0]?.Service.Kind ? h("span", { class: "tag" }, entries[0].Service.Kind) : null);
    if (!entries.length) return fill(instances, empty(`No instances of "${name}" are registered.`));
    fill(instances, table(["Instance", "Node", "Address", "Tags", "Checks"], entries.map((e) => h("tr", { "data-instance": e.Service.ID, "data-health": worst(e.Checks) },
      h("td", {}, e.Service.ID, e.Service.Proxy?.DestinationServiceName
        ? h("div", { class: "muted" }, "proxy for ", link(`#/services/${encodeURIComponent(e.Service.Proxy.DestinationServiceName)}`, e.Service.Proxy.DestinationServiceName)) : null),
      h("td", {}, link(`#/nodes/${encodeURIComponent(e.Node.Node)}`, e.Node.Node)),
      h("td", { class: "mono" }, `${e.Service.Address || e.Node.Address}:${e.Service.Port}`),
      h("td", {}, tags(e.Service.Tags)),
      h("td", {}, checkList(e.Checks)))), { id: "instances-table" }));
    if (entries.some((e) => e.Service.Kind === "connect-proxy")) fill(proxies, upstreamTable(entries));
  }, onFail(errors[0], "Instances", instances));

  watch(`/v1/health/connect/${encodeURIComponent(name)}`, {}, signal, (data) => {
    const entries = (data || []).filter((e) => e.Service.Kind === "connect-proxy");
    if (entries.length) fill(proxies, upstreamTable(entries));
    else if (!proxies.querySelector("table")) fill(proxies, empty(`"${name}" has no sidecar proxy: it is not in the mesh.`));
  }, onFail(errors[1], "Sidecar proxies", proxies));

  watch("/v1/connect/intentions", {}, signal, (data) => {
    const applies = (data || []).filter((i) => [name, "*"].includes(i.DestinationName) || [name, "*"].includes(i.SourceName));
    if (!applies.length) return fill(ixns, empty(`No intention names "${name}"; the default policy decides.`));
    fill(ixns, table(["Source", "", "Destination", "Action", "Precedence"], applies.map((i) => h("tr", {},
      h("td", {}, i.SourceName), h("td", { class: "arrow" }, "→"), h("td", {}, i.DestinationName),
      h("td", {}, intentionAction(i), (i.Permissions || []).map((p) => h("div", { class: "muted mono" }, permissionText(p)))),
      h("td", {}, i.Precedence)))), h("p", {}, link("#/intentions", "Manage intentions")));
  }, onFail(errors[2], "Intentions", ixns));
}

function upstreamTable(entries) {
  return table(["Proxy", "Node", "Address", "Upstreams", "Health"], entries.map((e) => h("tr", { "data-proxy": e.Service.ID },
    h("td", {}, link(`#/services/${encodeURIComponent(e.Service.Service)}`, e.Service.ID)),
    h("td", {}, link(`#/nodes/${encodeURIComponent(e.Node.Node)}`, e.Node.Node)),
    h("td", { class: "mono" }, `${e.Service.Address || e.Node.Address}:${e.Service.Port}`),
    h("td", {}, (e.Service.Proxy?.Upstreams || []).length
      ? h("ul", { class: "plain" }, e.Service.Proxy.Upstreams.map((u) => h("li", {},
        link(`#/services/${encodeURIComponent(u.DestinationName)}`, u.DestinationName), h("span", { class: "muted mono" }, ` on ${u.LocalBindAddress || "127.0.0.1"}:${u.LocalBindPort}`))))
      : h("span", { class: "muted" }, "none")),
    h("td", {}, countBadges(counts(e.Checks))))), { id: "sidecars-table" });
}
