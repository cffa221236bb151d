// Intentions: the list in precedence order, a form that creates or edits one (allow, deny or L7
// permissions, written by name through /v1/connect/intentions/exact), delete, and a
// "can A talk to B?" box that asks /v1/connect/intentions/check again whenever the list changes.

import { api, empty, fill, h, intentionAction, notice, onFail, permissionText, section, showError, table, watch } from "./lib.js";

const PATHS = [["", "any path"], ["PathPrefix", "path prefix"], ["PathExact", "exact path"], ["PathRegex", "path regex"]];

export function page({ main, signal }) {
  let intentions = [];
  let editing = null; // the intention loaded into the form, if any

  // ---- can A talk to B?
  const checkSrc = h("input", { id: "check-source", placeholder: "source service", list: "service-names", autocomplete: "off", "aria-label": "Check source" });
  const checkDst = h("input", { id: "check-destination", placeholder: "destination service", list: "service-names", autocomplete: "off", "aria-label": "Check destination" });
  const checkOut = h("span", { id: "check-result", role: "status" });
  let asked = null;
  const runCheck = async () => {
    if (!asked) return;
    try {
      const resp = await api("GET", "/v1/connect/intentions/check", { query: { source: asked[0], destination: asked[1] }, signal });
      const allowed = resp.data?.Allowed === true;
      fill(checkOut, h("span", { class: `badge big status-${allowed ? "passing" : "critical"}`, "data-allowed": String(allowed) },
        allowed ? `✓ Allowed: ${asked[0]} may connect to ${asked[1]}` : `✗ Denied: ${asked[0]} may not connect to ${asked[1]}`));
    } catch (err) {
      if (!signal.aborted) showError(checkOut, err, "Cannot check");
    }
  };
  const checkForm = h("form", { id: "check-form", class: "inline-form", onsubmit: (e) => {
    e.preventDefault();
    const src = checkSrc.value.trim();
    const dst = checkDst.value.trim();
    if (!src || !dst) return fill(checkOut, h("span", { class: "error" }, "Enter a source and a destination"));
    asked = [src, dst];
    runCheck();
  } }, checkSrc, h("span", {}, "→"), checkDst, h("button", { type: "submit" }, "Check"), checkOut);

  // ---- create / edit
  const src = h("input", { id: "ixn-source", placeholder: "source service, or *", list: "service-names", autocomplete: "off", "aria-label": "Source" });
  const dst = h("input", { id: "ixn-destination", placeholder: "destination service, or *", list: "service-names", autocomplete: "off", "aria-label": "Destination" });
  const desc = h("input", { id: "ixn-description", placeholder: "optional", "aria-label": "Description" });
  const perms = h("div", { id: "ixn-permissions", class: "permissions", hidden: true });
  let kind = "allow";
  const kinds = [["allow", "Allow"], ["deny", "Deny"], ["l7", "L7 permissions (HTTP)"]].map(([v, label]) => h("label", { class: "radio" },
    h("input", { type: "radio", name: "ixn-kind", value: v, checked: v === kind, onchange: () => setKind(v) }), ` ${label}`));
  const setKind = (v) => {
    kind = v;
    for (const r of document.getElementsByName("ixn-kind")) r.checked = r.value === v;
    perms.hidden = v !== "l7";
    if (v === "l7" && !perms.querySelector(".perm")) perms.prepend(permRow());
  };
  perms.append(h("button", { type: "button", id: "ixn-add-permission", onclick: () => perms.insertBefore(permRow(), perms.lastChild) }, "+ permission"));
  const formError = h("div", { id: "intention-error", role: "alert" });
  const title = h("h2", {}, "Create an intention");
  const cancel = h("button", { type: "button", hidden: true, onclick: () => reset() }, "Cancel edit");
  const reset = () => {
    editing = null;
    src.value = dst.value = desc.value = "";
    src.readOnly = dst.readOnly = false;
    perms.querySelectorAll(".perm").forEach((p) => p.remove());
    setKind("allow");
    fill(title, "Create an intention");
    cancel.hidden = true;
  };
  const edit = (i) => {
    reset();
    editing = i;
    src.value = i.SourceName;
    dst.value = i.DestinationName;
    src.readOnly = dst.readOnly = true;
    desc.value = i.Description || "";
    if (i.Permissions?.length) {
      setKind("l7");
      perms.querySelectorAll(".perm").forEach((p) => p.remove());
      for (const p of i.Permissions) perms.insertBefore(permRow(p), perms.lastChild);
    } else setKind(i.Action);
    fill(title, `Edit ${i.SourceName} → ${i.DestinationName}`);
    cancel.hidden = false;
    fill(formError);
    src.scrollIntoView({ block: "center" });
  };

  const form = h("form", { id: "intention-form", class: "form", onsubmit: async (e) => {
    e.preventDefault();
    fill(formError);
    const source = src.value.trim();
    const destination = dst.value.trim();
    if (!source || !destination) return fill(formError, h("div", { class: "error" }, "Enter a source and a destination (a service name, or *)"));
    const exists = intentions.find((i) => i.SourceName === source && i.DestinationName === destination);
    if (exists && !editing) {
      return fill(formError, h("div", { class: "error" }, `An intention from ${source} to ${destination} already exists: `,
        h("button", { type: "button", class: "link", onclick: () => edit(exists) }, "edit it"), " instead."));
    }
    const body = { Description: desc.value };
    if (kind === "l7") {
      const rows = [...perms.querySelectorAll(".perm")].map(readPerm);
      const bad = rows.find((r) => typeof r === "string");
      if (bad) return fill(formError, h("div", { class: "error" }, bad));
      if (!rows.length) return fill(formError, h("div", { class: "error" }, "Add at least one permission, or choose Allow or Deny"));
      body.Permissions = rows;
    } else body.Action = kind;
    try {
      await api("PUT", "/v1/connect/intentions/exact", { query: { source, destination }, body });
      reset();
      fill(formError, notice(`Saved ${source} → ${destination}.`));
    } catch (err) {
      showError(formError, err, "Not saved");
    }
  } },
  h("div", { class: "row" }, h("label", {}, "Source", src), h("span", { class: "arrow" }, "→"), h("label", {}, "Destination", dst)),
  h("div", { class: "row kinds" }, kinds), perms,
  h("label", {}, "Description", desc),
  h("div", { class: "actions" }, h("button", { type: "submit", id: "ixn-save" }, "Save"), cancel), formError);

  const listErr = h("div");
  const body = h("div", { id: "intentions-list" }, empty("Loading…"));
  const names = h("datalist", { id: "service-names" });
  fill(main, h("h1", {}, "Intentions"), names,
    section("Can A talk to B?", checkForm),
    h("section", { class: "card" }, title, form),
    section("All intentions, highest precedence first", listErr, body));

  const remove = async (i, out) => {
    try {
      await api("DELETE", "/v1/connect/intentions/exact", { query: { source: i.SourceName, destination: i.DestinationName } });
    } catch (err) {
      showError(out, err, "Not deleted");
    }
  };

  watch("/v1/connect/intentions", {}, signal, (data) => {
    intentions = data || [];
    runCheck();
    if (!intentions.length) return fill(body, empty("No intentions: the default policy decides every connection."));
    fill(body, table(["Source", "", "Destination", "Action", "Precedence", "Description", ""], intentions.map((i) => {
      const out = h("div", { role: "alert" });
      const really = h("button", { type: "button", class: "danger", hidden: true, onclick: () => remove(i, out) }, "Really delete");
      return h("tr", { "data-intention": `${i.SourceName}->${i.DestinationName}` },
        h("td", {}, i.SourceName), h("td", { class: "arrow" }, "→"), h("td", {}, i.DestinationName),
        h("td", {}, intentionAction(i), (i.Permissions || []).map((p) => h("div", { class: "muted mono" }, permissionText(p)))),
        h("td", {}, i.Precedence), h("td", {}, i.Description || ""),
        h("td", { class: "row-actions" }, h("button", { type: "button", onclick: () => edit(i) }, "Edit"),
          h("button", { type: "button", class: "danger-outline", onclick: () => { really.hidden = false; } }, "Delete"), really, out));
    }), { id: "intentions-table" }));
  }, onFail(listErr, "Intentions", body));

  api("GET", "/v1/catalog/services", { signal }).then((resp) => fill(names, Object.keys(resp.data || {}).map((n) => h("option", { value: n }))), () => {});
}

function permRow(p) {
  const http = p?.HTTP || {};
  const action = h("select", { class: "perm-action", "aria-label": "Permission action" }, ["allow", "deny"].map((a) => h("option", { value: a }, a)));
  action.value = p?.Action || "allow";
  const pathKind = h("select", { class: "perm-path-kind", "aria-label": "Path match" }, PATHS.map(([v, label]) => h("option", { value: v }, label)));
  pathKind.value = PATHS.find(([v]) => v && http[v])?.[0] || "";
  const path = h("input", { class: "perm-path", placeholder: "/api/", value: pathKind.value ? http[pathKind.value] : "", "aria-label": "Path" });
  const methods = h("input", { class: "perm-methods", placeholder: "methods: GET,POST (empty: any)", value: (http.Methods || []).join(","), "aria-label": "Methods" });
  const row = h("div", { class: "perm" }, action, pathKind, path, methods, h("button", { type: "button", class: "link", onclick: () => row.remove() }, "remove"));
  return row;
}

/** A permission row as Consul's IntentionPermission, or a message saying what is missing. */
function readPerm(row) {
  const action = row.querySelector(".perm-action").value;
  const kind = row.querySelector(".perm-path-kind").value;
  const path = row.querySelector(".perm-path").value.trim();
  const methods = row.querySelector(".perm-methods").value.split(",").map((m) => m.trim().toUpperCase()).filter(Boolean);
  if (kind && !path) return "A permission's path is empty: enter one, or choose \"any path\"";
  const http = {};
  if (kind) http[kind] = path;
  if (methods.length) http.Methods = methods;
  return { Action: action, HTTP: http };
}
