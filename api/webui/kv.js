// Key/Value: browse by prefix (a folder per "/"), view, create, edit with check-and-set on the
// ModifyIndex the user loaded, delete; values shown as text, JSON or YAML. A failed save keeps
// what was typed and says why next to the button.

import {
  api, decodeValue, empty, fill, h, isText, kvHash, kvPath, link, notice, onFail, showError, table, toYAML, watch,
} from "./lib.js";

export function page(ctx) {
  const path = ctx.args[0];
  return path === "" || path.endsWith("/") ? folder(ctx, path) : key(ctx, path);
}

function crumbs(path) {
  const parts = path.split("/").filter(Boolean);
  const out = [link("#/kv/", "Key/Value"), " / "];
  parts.forEach((part, i) => {
    const isKey = i === parts.length - 1 && !path.endsWith("/");
    if (i < parts.length - 1) out.push(link(kvHash(parts.slice(0, i + 1).join("/") + "/"), part), " / ");
    else if (!isKey) out.push(part, " /");
  });
  return h("p", { class: "crumbs" }, out);
}

/** A value editor: format switch (text / JSON / YAML), textarea, and a preview in the chosen format. */
function editor(id) {
  const area = h("textarea", { id: `${id}-value`, rows: 12, spellcheck: "false", "aria-label": "Value" });
  const preview = h("pre", { class: "preview", id: `${id}-preview`, hidden: true });
  const problem = h("div", { class: "field-error", id: `${id}-format-error`, role: "alert" });
  let format = "text";
  const radios = ["text", "json", "yaml"].map((f) => h("label", { class: "radio" },
    h("input", { type: "radio", name: `${id}-format`, value: f, checked: f === format, onchange: () => { format = f; show(); } }), ` ${f === "text" ? "Text" : f.toUpperCase()}`));
  const show = () => {
    fill(problem);
    preview.hidden = format === "text";
    if (format === "text") return;
    let parsed;
    try {
      parsed = JSON.parse(area.value);
    } catch (err) {
      if (format === "json") { fill(preview, area.value); return fill(problem, `Not valid JSON: ${err.message}`); }
      return fill(preview, area.value); // YAML as typed
    }
    fill(preview, format === "json" ? JSON.stringify(parsed, null, 2) : toYAML(parsed));
  };
  area.addEventListener("input", show);
  show();
  return {
    el: h("div", { class: "editor" }, h("div", { class: "formats", role: "radiogroup", "aria-label": "View as" }, "View as: ", radios), area, problem, preview),
    area,
    /** The JSON error that blocks a save in JSON view, else null. */
    invalid: () => {
      if (format !== "json") return null;
      try { JSON.parse(area.value); return null; } catch (err) { return `Not saved: the value is not valid JSON (${err.message}). Switch to Text to save it as is.`; }
    },
    /** Load a stored value; JSON objects and arrays open in the JSON view. */
    set: (text) => {
      area.value = text;
      let looksJSON = false;
      try { looksJSON = typeof JSON.parse(text) === "object" && text.trim() !== "null"; } catch { /* text */ }
      if (looksJSON) {
        format = "json";
        for (const r of radios) r.firstChild.checked = r.firstChild.value === "json";
      }
      show();
    },
  };
}

function folder({ main, signal }, prefix) {
  const errSlot = h("div");
  const body = h("div", { id: "kv-list" }, empty("Loading…"));
  const name = h("input", { id: "kv-new-key", placeholder: "key, or folder/ to make a folder", autocomplete: "off", "aria-label": "New key" });
  const ed = editor("kv-new");
  const result = h("div", { id: "kv-create-result", role: "alert" });
  const create = h("form", { id: "kv-create", class: "form", onsubmit: async (e) => {
    e.preventDefault();
    fill(result);
    const rel = name.value.trim();
    if (!rel || rel.startsWith("/")) return fill(result, h("div", { class: "error" }, rel ? "A key cannot start with /" : "Enter a key name"));
    const full = prefix + rel;
    const invalid = rel.endsWith("/") ? null : ed.invalid();
    if (invalid) return fill(result, h("div", { class: "error" }, invalid));
    try {
      const resp = await api("PUT", kvPath(full), { query: { cas: 0 }, body: rel.endsWith("/") ? "" : ed.area.value });
      if (resp.data !== true) return fill(result, h("div", { class: "error" }, `Not created: "${full}" already exists. `, link(kvHash(full), "Open it"), " to edit it."));
      fill(result, notice(h("span", {}, "Created ", link(kvHash(full), full))));
      name.value = "";
      ed.set("");
    } catch (err) {
      showError(result, err, "Not created");
    }
  } }, h("label", {}, "Key ", h("span", { class: "mono muted" }, prefix), name), ed.el, h("div", { class: "actions" }, h("button", { type: "submit" }, "Create")), result);

  const title = prefix ? prefix : "Key/Value";
  const children = [crumbs(prefix), h("h1", {}, title), errSlot, h("section", { class: "card" }, body)];
  if (prefix) children.push(deleteFolder(prefix));
  children.push(h("section", { class: "card" }, h("h2", {}, "Create a key"), create));
  fill(main, ...children);

  watch(kvPath(prefix), { query: { keys: true, separator: "/" }, allow404: true }, signal, (keys) => {
    const items = (keys || []).filter((k) => k !== prefix);
    if (!items.length) return fill(body, empty(prefix ? "This folder is empty." : "No keys yet."));
    fill(body, table(["Key", "Kind"], items.map((k) => h("tr", { "data-key": k },
      h("td", {}, link(kvHash(k), k.slice(prefix.length))), h("td", { class: "muted" }, k.endsWith("/") ? "folder" : "key"))), { id: "kv-table" }));
  }, onFail(errSlot, "Keys", body));
}

function deleteFolder(prefix) {
  const out = h("div", { role: "alert" });
  const confirm = h("button", { type: "button", class: "danger", hidden: true, onclick: async () => {
    try {
      await api("DELETE", kvPath(prefix), { query: { recurse: true } });
      location.hash = kvHash(prefix.replace(/[^/]*\/$/, ""));
    } catch (err) {
      showError(out, err, "Not deleted");
    }
  } }, `Really delete ${prefix} and every key under it`);
  const ask = h("button", { type: "button", class: "danger-outline", onclick: () => { confirm.hidden = false; } }, "Delete folder");
  return h("div", { class: "actions" }, ask, confirm, out);
}

function key({ main, signal }, path) {
  const info = h("dl", { class: "facts" });
  const status = h("div", { id: "kv-status", role: "status" });
  const result = h("div", { id: "kv-save-result", role: "alert" });
  const ed = editor("kv");
  let loaded = null; // the entry the user is editing against: its ModifyIndex is the CAS index
  let current = null; // the latest entry the watch saw (null: absent)
  let seen = false;
  const dirty = () => ed.area.value !== (loaded ? decodeValue(loaded.Value) : "");

  const binary = h("div", { id: "kv-binary" });
  const load = (entry) => {
    loaded = entry;
    ed.set(entry ? decodeValue(entry.Value) : "");
    fill(binary, entry && !isText(entry.Value)
      ? notice("This value is binary, not UTF-8 text: it is shown with \uFFFD for the bytes that are not text, and saving stores the text as shown.", "warn") : null);
    renderInfo();
  };
  const renderInfo = () => {
    const e = loaded;
    fill(info, e ? [
      h("dt", {}, "ModifyIndex"), h("dd", { id: "kv-modify-index" }, e.ModifyIndex),
      h("dt", {}, "CreateIndex"), h("dd", {}, e.CreateIndex),
      h("dt", {}, "Flags"), h("dd", {}, e.Flags),
      e.Session ? [h("dt", {}, "Locked by session"), h("dd", { class: "mono" }, e.Session)] : null,
    ] : [h("dt", {}, "State"), h("dd", {}, "not stored yet: saving creates it")]);
  };

  const save = async (cas) => {
    fill(result);
    const invalid = ed.invalid();
    if (invalid) return fill(result, h("div", { class: "error" }, invalid));
    const query = { cas };
    if (loaded?.Flags) query.flags = loaded.Flags;
    try {
      const resp = await api("PUT", kvPath(path), { query, body: ed.area.value });
      if (resp.data === true) {
        const fresh = await api("GET", kvPath(path), { allow404: true });
        load(fresh.data?.[0] || null);
        fill(status);
        return fill(result, notice("Saved."));
      }
      await conflict();
    } catch (err) {
      showError(result, err, "Not saved");
    }
  };
  // CAS refused: show what is stored now next to the button; the text typed stays in the editor.
  const conflict = async () => {
    const now = (await api("GET", kvPath(path), { allow404: true })).data?.[0] || null;
    const theirs = now ? `ModifyIndex ${now.ModifyIndex}` : "it was deleted";
    fill(result, h("div", { class: "error", id: "kv-conflict" },
      `Not saved: someone changed this key since you opened it (you edited ModifyIndex ${loaded ? loaded.ModifyIndex : "0 (new)"}; now ${theirs}). Your text is still in the editor.`,
      now ? [h("div", {}, "Stored now:"), h("pre", { class: "preview", id: "kv-theirs" }, decodeValue(now.Value))] : null,
      h("div", { class: "actions" },
        h("button", { type: "button", id: "kv-overwrite", onclick: () => save(now ? now.ModifyIndex : 0) }, "Overwrite with my text"),
        h("button", { type: "button", onclick: () => { load(now); fill(result); fill(status); } }, "Discard mine, load theirs"))));
  };

  const confirmDelete = h("button", { type: "button", class: "danger", id: "kv-delete-confirm", hidden: true, onclick: async () => {
    fill(result);
    try {
      const resp = await api("DELETE", kvPath(path), { query: { cas: loaded ? loaded.ModifyIndex : 0 } });
      if (resp.data === true) { location.hash = kvHash(path.replace(/[^/]*$/, "")); return; }
      fill(result, h("div", { class: "error" }, "Not deleted: the key changed since you opened it. Look at the new value before deleting."));
    } catch (err) {
      showError(result, err, "Not deleted");
    }
  } }, "Really delete");
  const form = h("form", { id: "kv-edit", class: "form", onsubmit: (e) => { e.preventDefault(); save(loaded ? loaded.ModifyIndex : 0); } },
    ed.el, h("div", { class: "actions" }, h("button", { type: "submit", id: "kv-save" }, "Save"),
      h("button", { type: "button", class: "danger-outline", id: "kv-delete", onclick: () => { confirmDelete.hidden = false; } }, "Delete"), confirmDelete),
    result);

  const errSlot = h("div");
  fill(main, crumbs(path), h("h1", { class: "mono" }, path), errSlot, status, h("section", { class: "card" }, info, binary, form));

  watch(kvPath(path), { allow404: true }, signal, (data) => {
    current = data?.[0] || null;
    if (!seen || !dirty()) { seen = true; load(current); fill(status); return; }
    if ((current?.ModifyIndex || 0) !== (loaded?.ModifyIndex || 0)) {
      fill(status, notice(current ? `Changed elsewhere since you opened it (now ModifyIndex ${current.ModifyIndex}); saving will ask before overwriting.`
        : "Deleted elsewhere since you opened it; saving will ask before re-creating it.", "warn"));
    }
  }, (err) => showError(errSlot, err, "Key"));
}
