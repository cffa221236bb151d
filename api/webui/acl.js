// ACL tokens and policies (shown when the agent has ACLs on): lists that follow blocking
// queries, one token or policy, create, edit a policy's rules, delete.

import { ago, api, empty, fill, h, link, notice, onFail, section, showError, table, watch } from "./lib.js";

function disabled(main, session) {
  if (session.aclEnabled) return false;
  fill(main, h("h1", {}, "ACLs"), empty("ACLs are not enabled on this agent (acl.enabled in its configuration)."));
  return true;
}

function policyLinks(list) {
  return (list || []).map((p) => h("span", { class: "tag" }, link(`#/acl/policies/${encodeURIComponent(p.ID)}`, p.Name)));
}

/** A delete button that asks once more before it calls ``run``; errors land in ``out``. */
function deleteButton(label, out, run) {
  const really = h("button", { type: "button", class: "danger", hidden: true, onclick: async () => {
    try { await run(); } catch (err) { showError(out, err, "Not deleted"); }
  } }, `Really delete`);
  return [h("button", { type: "button", class: "danger-outline", onclick: () => { really.hidden = false; } }, label), really];
}

export function tokens({ main, signal, session }) {
  if (disabled(main, session)) return;
  const errSlot = h("div");
  const body = h("div", { id: "tokens" }, empty("Loading…"));
  const desc = h("input", { id: "token-description", placeholder: "what the token is for", "aria-label": "Description" });
  const choices = h("div", { class: "choices", id: "token-policies" }, empty("Loading policies…"));
  const result = h("div", { id: "token-result", role: "alert" });
  const form = h("form", { class: "form", id: "token-form", onsubmit: async (e) => {
    e.preventDefault();
    fill(result);
    const Policies = [...choices.querySelectorAll("input:checked")].map((c) => ({ ID: c.value }));
    try {
      const resp = await api("PUT", "/v1/acl/token", { body: { Description: desc.value, Policies } });
      fill(result, notice(h("span", {}, "Created ", link(`#/acl/tokens/${encodeURIComponent(resp.data.AccessorID)}`, resp.data.AccessorID),
        ". Its SecretID, the token to use: ", h("code", { id: "new-secret" }, resp.data.SecretID))));
      desc.value = "";
    } catch (err) {
      showError(result, err, "Not created");
    }
  } }, h("label", {}, "Description", desc), h("fieldset", {}, h("legend", {}, "Policies"), choices),
  h("div", { class: "actions" }, h("button", { type: "submit" }, "Create token")), result);
  fill(main, h("h1", {}, "ACL tokens"), errSlot, h("section", { class: "card" }, body), section("Create a token", form));

  watch("/v1/acl/tokens", {}, signal, (data) => {
    const list = data || [];
    if (!list.length) return fill(body, empty("No tokens you may read."));
    fill(body, table(["AccessorID", "Description", "Policies", "Scope", "Created"], list.map((t) => h("tr", { "data-token": t.AccessorID },
      h("td", { class: "mono" }, link(`#/acl/tokens/${encodeURIComponent(t.AccessorID)}`, t.AccessorID)),
      h("td", {}, t.Description || ""), h("td", {}, policyLinks(t.Policies)),
      h("td", {}, t.Local ? "local" : "global"), h("td", { class: "muted" }, ago(t.CreateTime)))), { id: "tokens-table" }));
  }, onFail(errSlot, "Tokens", body));
  api("GET", "/v1/acl/policies", { signal }).then((resp) => fill(choices, (resp.data || []).map((p) => h("label", { class: "choice" },
    h("input", { type: "checkbox", value: p.ID }), ` ${p.Name}`))), (err) => showError(choices, err, "Policies"));
}

export async function token({ main, args: [id], signal, session }) {
  if (disabled(main, session)) return;
  const out = h("div", { role: "alert" });
  fill(main, h("p", { class: "crumbs" }, link("#/acl/tokens", "Tokens"), " / "), h("h1", { class: "mono" }, id), out);
  let t;
  try {
    t = (await api("GET", `/v1/acl/token/${encodeURIComponent(id)}`, { signal })).data;
  } catch (err) {
    return showError(out, err, "Token");
  }
  const secret = h("code", { id: "token-secret" }, "••••••••");
  const reveal = h("button", { type: "button", class: "link", onclick: () => { fill(secret, t.SecretID); reveal.hidden = true; } }, "show");
  main.append(h("section", { class: "card" }, h("dl", { class: "facts" },
    h("dt", {}, "Description"), h("dd", {}, t.Description || ""),
    h("dt", {}, "SecretID"), h("dd", {}, secret, " ", reveal),
    h("dt", {}, "Policies"), h("dd", {}, policyLinks(t.Policies)),
    h("dt", {}, "Roles"), h("dd", {}, (t.Roles || []).map((r) => h("span", { class: "tag" }, r.Name))),
    h("dt", {}, "Scope"), h("dd", {}, t.Local ? "local" : "global"),
    h("dt", {}, "Created"), h("dd", {}, ago(t.CreateTime))),
  h("div", { class: "actions" }, deleteButton("Delete token", out, async () => {
    await api("DELETE", `/v1/acl/token/${encodeURIComponent(id)}`);
    location.hash = "#/acl/tokens";
  }))));
}

export function policies({ main, signal, session }) {
  if (disabled(main, session)) return;
  const errSlot = h("div");
  const body = h("div", { id: "policies" }, empty("Loading…"));
  const editor = policyForm(null, async (p) => {
    const resp = await api("PUT", "/v1/acl/policy", { body: p });
    return notice(h("span", {}, "Created ", link(`#/acl/policies/${encodeURIComponent(resp.data.ID)}`, resp.data.Name)));
  });
  fill(main, h("h1", {}, "ACL policies"), errSlot, h("section", { class: "card" }, body), section("Create a policy", editor));
  watch("/v1/acl/policies", {}, signal, (data) => {
    const list = data || [];
    if (!list.length) return fill(body, empty("No policies you may read."));
    fill(body, table(["Name", "Description", "Datacenters", "ID"], list.map((p) => h("tr", { "data-policy": p.Name },
      h("td", {}, link(`#/acl/policies/${encodeURIComponent(p.ID)}`, p.Name)), h("td", {}, p.Description || ""),
      h("td", {}, (p.Datacenters || []).join(", ") || "all"), h("td", { class: "mono muted" }, p.ID))), { id: "policies-table" }));
  }, onFail(errSlot, "Policies", body));
}

export async function policy({ main, args: [id], signal, session }) {
  if (disabled(main, session)) return;
  const out = h("div", { role: "alert" });
  const title = h("h1", {}, id);
  fill(main, h("p", { class: "crumbs" }, link("#/acl/policies", "Policies"), " / "), title, out);
  let p;
  try {
    p = (await api("GET", `/v1/acl/policy/${encodeURIComponent(id)}`, { signal })).data;
  } catch (err) {
    return showError(out, err, "Policy");
  }
  fill(title, p.Name);
  const editor = policyForm(p, async (changed) => {
    const resp = await api("PUT", `/v1/acl/policy/${encodeURIComponent(id)}`, { body: { ...changed, ID: id } });
    fill(title, resp.data.Name);
    return notice("Saved.");
  });
  main.append(h("section", { class: "card" }, h("p", { class: "muted mono" }, `ID ${p.ID}`), editor,
    h("div", { class: "actions" }, deleteButton("Delete policy", out, async () => {
      await api("DELETE", `/v1/acl/policy/${encodeURIComponent(id)}`);
      location.hash = "#/acl/policies";
    }))));
}

/** Name, description and rules; ``submit`` writes them and returns what to show. Errors stay next to the
 * button and the form keeps what was typed. */
function policyForm(p, submit) {
  const name = h("input", { id: "policy-name", value: p?.Name || "", "aria-label": "Name" });
  const desc = h("input", { id: "policy-description", value: p?.Description || "", "aria-label": "Description" });
  const rules = h("textarea", { id: "policy-rules", rows: 10, spellcheck: "false", value: p?.Rules || "", "aria-label": "Rules",
    placeholder: 'key_prefix "app/" { policy = "write" }\nservice_prefix "" { policy = "read" }' });
  const result = h("div", { id: "policy-result", role: "alert" });
  return h("form", { class: "form", id: "policy-form", onsubmit: async (e) => {
    e.preventDefault();
    fill(result);
    try {
      fill(result, await submit({ Name: name.value.trim(), Description: desc.value, Rules: rules.value }));
    } catch (err) {
      showError(result, err, "Not saved");
    }
  } }, h("label", {}, "Name", name), h("label", {}, "Description", desc), h("label", {}, "Rules (HCL or JSON)", rules),
  h("div", { class: "actions" }, h("button", { type: "submit" }, p ? "Save" : "Create policy")), result);
}
