// Ampora's web UI: forms over fetch, tables of JSON, live updates over server-sent events.
// Written for current Chromium and Firefox; no libraries, no build step.
"use strict";

(function () {
  const $ = (selector, root) => (root || document).querySelector(selector);
  const $$ = (selector, root) => Array.from((root || document).querySelectorAll(selector));
  const page = document.body.dataset.page;

  // === talking to the server ===

  function csrfToken() {
    const meta = $('meta[name="csrf-token"]');
    return meta ? meta.content : "";
  }

  // A server refusal, with its status and the server's own words.
  class Refusal extends Error {
    constructor(status, message, body) {
      super(message);
      this.status = status;
      this.body = body;
    }
  }

  // Calls the API; unsafe methods carry the CSRF token. Resolves to the JSON body (or null),
  // rejects with a Refusal for any error status.
  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    if (method !== "GET" && method !== "HEAD") headers["X-CSRF-Token"] = csrfToken();
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(path, {
        method, headers, credentials: "same-origin",
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (error) {
      throw new Refusal(0, "The server cannot be reached: " + error.message, null);
    }
    const text = await response.text();
    let json = null;
    try { json = text ? JSON.parse(text) : null; } catch (_) { json = null; }
    if (!response.ok) {
      const reason = json && json.error ? json.error : response.statusText;
      throw new Refusal(response.status, reason, json);
    }
    return json;
  }

  function describe(error) {
    if (!(error instanceof Refusal)) return String(error);
    switch (error.status) {
      case 401: return page === "login" ? error.message : "Not signed in (401): " + error.message;
      case 403: return "Refused by the server (403): " + error.message;
      case 404: return "Not available on this server (404): " + error.message;
      case 0: return error.message;
      default: return "The server answered " + error.status + ": " + error.message;
    }
  }

  function flash(message, kind) {
    const box = $("#flash");
    if (!box) return;
    box.textContent = message;
    box.className = kind || "error";
    box.hidden = false;
  }

  function clearFlash() {
    const box = $("#flash");
    if (box) box.hidden = true;
  }

  // Runs an action; a refusal is shown to the user, never swallowed.
  async function attempt(action) {
    clearFlash();
    try {
      return await action();
    } catch (error) {
      flash(describe(error));
      if (error instanceof Refusal && error.status === 401 && page !== "login") {
        location.assign("/login?next=" + encodeURIComponent(location.pathname + location.search));
      }
      return undefined;
    }
  }

  function formObject(form) {
    const out = {};
    new FormData(form).forEach((value, key) => { out[key] = value; });
    return out;
  }

  // === tables of the API's JSON ===

  // The list inside a response: the response itself, or its first array-valued field.
  function itemsOf(json) {
    if (Array.isArray(json)) return json;
    if (json && typeof json === "object") {
      for (const value of Object.values(json)) if (Array.isArray(value)) return value;
    }
    return [];
  }

  const pad = (number) => String(number).padStart(2, "0");

  // A time as the server-rendered pages show it: UTC to the second. The API gives RFC 3339
  // text or Unix seconds.
  function when(value) {
    if (value === null || value === undefined || value === "") return null;
    const at = typeof value === "number" ? new Date(value * 1000) : new Date(value);
    if (isNaN(at)) return String(value);
    return at.getUTCFullYear() + "-" + pad(at.getUTCMonth() + 1) + "-" + pad(at.getUTCDate()) + " " +
      pad(at.getUTCHours()) + ":" + pad(at.getUTCMinutes()) + ":" + pad(at.getUTCSeconds()) + " UTC";
  }

  function labels(value) {
    const pairs = Object.entries(value || {});
    return pairs.length ? pairs.map(([key, v]) => key + "=" + v).join(", ") : null;
  }

  // A value in one line, cut at `max` characters.
  function compact(value, max) {
    if (value === null || value === undefined) return null;
    const text = typeof value === "object" ? JSON.stringify(value) : String(value);
    return text.length <= max ? text : text.slice(0, max) + "…";
  }

  // An audit entry's value as `key: value, …`, cut at 100 characters.
  function change(value) {
    if (value === null || value === undefined) return null;
    if (typeof value !== "object" || Array.isArray(value)) return compact(value, 100);
    const text = Object.entries(value)
      .map(([key, v]) => key + ": " + (v === null ? "none" : typeof v === "object" ? JSON.stringify(v) : String(v)))
      .join(", ");
    return compact(text, 100);
  }

  function badge(text) {
    const element = document.createElement("span");
    element.className = "badge " + text;
    element.textContent = text;
    return element;
  }

  // Renders `items` as a table of `columns` ([heading, item => text or element or null, class
  // of its cells]); `actions(item)` gives the buttons of a row.
  function renderTable(container, items, columns, actions) {
    container.textContent = "";
    if (items.length === 0) {
      const empty = document.createElement("p");
      empty.className = "muted";
      empty.textContent = "None yet.";
      container.append(empty);
      return;
    }
    const table = document.createElement("table");
    table.className = "grid rows";
    const head = table.createTHead().insertRow();
    for (const [heading] of columns) {
      const th = document.createElement("th");
      th.scope = "col";
      th.textContent = heading;
      head.append(th);
    }
    if (actions) {
      const th = document.createElement("th");
      th.scope = "col";
      th.innerHTML = '<span class="visually-hidden">Actions</span>';
      head.append(th);
    }
    const body = table.createTBody();
    for (const item of items) {
      const row = body.insertRow();
      for (const [, cell, className] of columns) {
        const value = cell(item);
        const td = row.insertCell();
        if (className) td.className = className;
        if (value instanceof Node) td.append(value);
        else if (value === null || value === undefined || value === "") {
          td.textContent = "—";
          td.classList.add("muted");
        } else td.textContent = String(value);
      }
      if (actions) {
        const td = row.insertCell();
        td.className = "row-actions";
        for (const element of actions(item)) td.append(element, " ");
      }
    }
    container.append(table);
  }

  function button(label, onClick, className) {
    const element = document.createElement("button");
    element.type = "button";
    element.textContent = label;
    if (className) element.className = className;
    element.addEventListener("click", onClick);
    return element;
  }

  function showSecret(value) {
    const box = $("#secret");
    $("#secret-value").textContent = value;
    box.hidden = false;
  }

  document.addEventListener("click", async (event) => {
    const target = event.target.closest("[data-action]");
    if (!target) return;
    const action = target.dataset.action;
    if (action === "logout") {
      await attempt(() => api("POST", "/api/v1/auth/logout"));
      location.assign("/login");
    } else if (action === "copy-secret") {
      const value = $("#secret-value").textContent;
      try {
        await navigator.clipboard.writeText(value);
        flash("Copied.", "info");
      } catch (_) {
        const range = document.createRange();
        range.selectNodeContents($("#secret-value"));
        getSelection().removeAllRanges();
        getSelection().addRange(range);
        flash("Selected: copy it with your keyboard.", "info");
      }
    }
  });

  // === live updates ===

  // Re-renders the page's live regions from a fresh copy of the page, at most once a second.
  let refreshing = false, again = false, lastRefresh = 0;
  async function refresh() {
    if (refreshing) { again = true; return; }
    refreshing = true;
    try {
      const wait = Math.max(0, 1000 - (Date.now() - lastRefresh));
      if (wait) await new Promise((resolve) => setTimeout(resolve, wait));
      lastRefresh = Date.now();
      const response = await fetch(location.href, { credentials: "same-origin", headers: { Accept: "text/html" } });
      if (!response.ok) return;
      const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
      for (const region of $$("[data-live-region]")) {
        const replacement = fresh.getElementById(region.id);
        if (replacement) region.replaceWith(replacement);
      }
      document.body.dataset.refreshed = String(Number(document.body.dataset.refreshed || 0) + 1);
    } finally {
      refreshing = false;
      if (again) { again = false; refresh(); }
    }
  }

  function followLive() {
    if (!$("[data-live-region]") || !window.EventSource) return;
    const status = $("#live-status");
    const uid = document.body.dataset.uid;
    if (status) status.hidden = false;
    const source = new EventSource("/ui/live");
    source.addEventListener("open", () => {
      if (status) { status.textContent = "live"; status.classList.add("on"); }
      document.body.dataset.live = "open";
      // What changed between this page's rendering and the stream's opening.
      refresh();
    });
    source.addEventListener("error", () => {
      if (status) { status.textContent = "reconnecting"; status.classList.remove("on"); }
      document.body.dataset.live = "closed";
    });
    source.addEventListener("change", (event) => {
      const change = JSON.parse(event.data);
      if (!uid || change.many || change.agents.includes(uid)) refresh();
    });
  }

  // === pages ===

  const pages = {};

  pages.login = () => {
    $("#login-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const body = formObject(event.target);
      const ok = await attempt(() => api("POST", "/api/v1/auth/login", body));
      if (ok) {
        const next = new URLSearchParams(location.search).get("next");
        location.assign(next && next.startsWith("/") && !next.startsWith("//") ? next : "/fleet");
      }
    });
  };

  pages.configurations = () => {
    $("#create-configuration").addEventListener("submit", async (event) => {
      event.preventDefault();
      const body = formObject(event.target);
      const created = await attempt(() => api("POST", "/api/v1/configurations", body));
      if (created) location.assign("/configurations/" + created.id);
    });
  };

  pages.configuration = () => {
    const id = document.body.dataset.configuration;
    const draft = $("#draft");
    const gutter = $("#gutter");
    const list = $("#problems");
    const status = $("#editor-status");
    let rowVersion = Number(document.body.dataset.rowVersion);
    let marks = new Map();

    function drawGutter() {
      const lines = draft.value.split("\n").length;
      gutter.textContent = "";
      for (let line = 1; line <= lines; line++) {
        const number = document.createElement("div");
        number.textContent = line;
        const severity = marks.get(line);
        if (severity) number.className = "mark " + severity;
        gutter.append(number);
      }
      gutter.scrollTop = draft.scrollTop;
    }

    function goToLine(line, column) {
      const lines = draft.value.split("\n");
      let offset = 0;
      for (let i = 0; i < line - 1 && i < lines.length; i++) offset += lines[i].length + 1;
      offset += Math.max(0, (column || 1) - 1);
      draft.focus();
      draft.setSelectionRange(offset, offset);
      const lineHeight = draft.scrollHeight / Math.max(lines.length, 1);
      draft.scrollTop = Math.max(0, (line - 3) * lineHeight);
    }

    function showProblems(problems) {
      marks = new Map();
      list.textContent = "";
      for (const problem of problems) {
        if (problem.line && marks.get(problem.line) !== "error") marks.set(problem.line, problem.severity);
        const item = document.createElement("li");
        item.className = problem.severity;
        const where = button("Line " + problem.line + ":" + problem.column, () => goToLine(problem.line, problem.column), "link");
        where.setAttribute("aria-label", "Go to line " + problem.line + ", column " + problem.column);
        const text = document.createElement("span");
        text.textContent = " " + problem.severity + " [" + problem.rule + "] " + problem.message + (problem.hint ? " — " + problem.hint : "");
        item.append(where, text);
        list.append(item);
      }
      if (problems.length === 0) {
        const item = document.createElement("li");
        item.className = "ok";
        item.textContent = "No problems.";
        list.append(item);
      }
      drawGutter();
    }

    async function validate() {
      const result = await attempt(() => api("POST", "/api/v1/validate", { yaml: draft.value }));
      if (result) showProblems(result.problems || []);
      return result;
    }

    async function save() {
      const result = await attempt(() => api("PUT", "/api/v1/configurations/" + id + "/draft", { yaml: draft.value, row_version: rowVersion }));
      if (result) {
        rowVersion = result.row_version;
        status.textContent = "Draft saved.";
      }
      return result;
    }

    let timer = null;
    draft.addEventListener("input", () => {
      drawGutter();
      clearTimeout(timer);
      timer = setTimeout(validate, 400);
    });
    draft.addEventListener("scroll", () => { gutter.scrollTop = draft.scrollTop; });
    $('[data-action="validate"]').addEventListener("click", validate);
    $('[data-action="save"]').addEventListener("click", save);
    $('[data-action="publish"]').addEventListener("click", async () => {
      if (!(await save())) return;
      clearFlash();
      try {
        const published = await api("POST", "/api/v1/configurations/" + id + "/publish");
        status.textContent = "Published v" + published.version + ".";
        location.assign("/configurations/" + id + "?version=" + published.version);
      } catch (error) {
        if (error.body && error.body.problems) showProblems(error.body.problems);
        flash(describe(error));
      }
    });
    drawGutter();
    validate();
  };

  pages.users = () => {
    const container = $("#users-table");
    async function load() {
      const users = await attempt(() => api("GET", "/api/v1/users"));
      if (users === undefined) { container.textContent = ""; return; }
      const columns = [
        ["Username", (user) => user.username],
        ["Role", (user) => badge(user.role)],
        ["Created", (user) => when(user.created_at), "nowrap"],
        ["Changed", (user) => when(user.updated_at), "nowrap"],
      ];
      renderTable(container, itemsOf(users), columns, (user) => {
        const select = document.createElement("select");
        select.setAttribute("aria-label", "Role of " + user.username);
        for (const role of ["viewer", "operator", "admin"]) select.add(new Option(role, role, false, user.role === role));
        return [
          select,
          button("Change role", async () => {
            if (await attempt(() => api("PATCH", "/api/v1/users/" + encodeURIComponent(user.username), { role: select.value }))) load();
          }, "secondary"),
          button("Delete", async () => {
            if (await attempt(() => api("DELETE", "/api/v1/users/" + encodeURIComponent(user.username))) !== undefined) load();
          }, "danger"),
        ];
      });
    }
    $("#create-user").addEventListener("submit", async (event) => {
      event.preventDefault();
      const body = formObject(event.target);
      if (await attempt(() => api("POST", "/api/v1/users", body)) !== undefined) {
        event.target.reset();
        load();
      }
    });
    load();
  };

  pages["api-tokens"] = () => {
    const container = $("#api-tokens-table");
    async function load() {
      const tokens = await attempt(() => api("GET", "/api/v1/api-tokens"));
      if (tokens === undefined) { container.textContent = ""; return; }
      const columns = [
        ["Name", (token) => token.name],
        ["Role", (token) => badge(token.role)],
        ["Made by", (token) => token.created_by],
        ["Created", (token) => when(token.created_at), "nowrap"],
        ["Expires", (token) => when(token.expires_at) || "never", "nowrap"],
        ["Id", (token) => token.id],
      ];
      renderTable(container, itemsOf(tokens), columns, (token) => [
        button("Revoke", async () => {
          if (await attempt(() => api("DELETE", "/api/v1/api-tokens/" + encodeURIComponent(token.id))) !== undefined) load();
        }, "danger"),
      ]);
    }
    $("#create-api-token").addEventListener("submit", async (event) => {
      event.preventDefault();
      const form = formObject(event.target);
      const body = { name: form.name, role: form.role };
      if (form.ttl_seconds) body.ttl_seconds = Number(form.ttl_seconds);
      const created = await attempt(() => api("POST", "/api/v1/api-tokens", body));
      if (created) {
        showSecret(created.token);
        event.target.reset();
        load();
      }
    });
    load();
  };

  pages.audit = () => {
    const container = $("#audit-table");
    const older = $('[data-action="audit-older"]');
    let filters = {}, token = null, shown = [];
    async function load(more) {
      const query = new URLSearchParams();
      for (const [key, value] of Object.entries(filters)) if (value) query.set(key, value);
      if (more && token) query.set("page_token", token);
      const page = await attempt(() => api("GET", "/api/v1/audit?" + query));
      if (page === undefined) { container.textContent = ""; return; }
      shown = more ? shown.concat(itemsOf(page)) : itemsOf(page);
      token = page && page.next_page_token ? page.next_page_token : null;
      older.hidden = !token;
      renderTable(container, shown, [
        ["#", (entry) => entry.id],
        ["When", (entry) => when(entry.at), "nowrap"],
        ["Actor", (entry) => entry.actor],
        ["Action", (entry) => { const code = document.createElement("code"); code.textContent = entry.action; return code; }],
        ["Object", (entry) => entry.object_type + " " + entry.object_id],
        ["Change", (entry) => change(entry.new_value !== null ? entry.new_value : entry.old_value)],
        ["From", (entry) => entry.address],
      ]);
    }
    $("#audit-filters").addEventListener("submit", (event) => {
      event.preventDefault();
      const form = formObject(event.target);
      // The form's "object" is `TYPE` or `TYPE ID`; times are given as typed.
      const [objectType, ...objectId] = (form.object || "").trim().split(/\s+/);
      filters = {
        actor: form.actor, action: form.action, object_type: objectType,
        object_id: objectId.join(" "), since: form.since, until: form.until,
      };
      load(false);
    });
    older.addEventListener("click", () => load(true));
    $('[data-action="verify-audit"]').addEventListener("click", async () => {
      const output = $("#verify-result");
      output.textContent = "Verifying…";
      output.className = "";
      const result = await attempt(() => api("GET", "/api/v1/audit/verify"));
      if (!result) { output.textContent = ""; return; }
      output.className = result.ok ? "verified" : "broken";
      output.textContent = result.ok
        ? "Chain verified: " + result.checked + " records intact."
        : "Chain broken at record " + result.first_bad + " (" + result.checked + " checked).";
    });
    load(false);
  };

  pages.enrolment = () => {
    const tokens = $("#bootstrap-tokens-table");
    const certificates = $("#certificates-table");
    async function loadTokens() {
      const list = await attempt(() => api("GET", "/api/v1/bootstrap-tokens"));
      if (list === undefined) { tokens.textContent = ""; return; }
      const columns = [
        ["Id", (token) => token.id],
        ["State", (token) => badge(token.state)],
        ["Labels", (token) => labels(token.labels)],
        ["Created", (token) => when(token.created_at), "nowrap"],
        ["Expires", (token) => when(token.expires_at), "nowrap"],
        ["Used", (token) => when(token.used_at), "nowrap"],
        ["Agent", (token) => token.used_by],
      ];
      renderTable(tokens, itemsOf(list), columns, (token) => token.state !== "active" ? [] : [
        button("Revoke", async () => {
          if (await attempt(() => api("DELETE", "/api/v1/bootstrap-tokens/" + encodeURIComponent(token.id))) !== undefined) loadTokens();
        }, "danger"),
      ]);
    }
    async function loadCertificates() {
      const list = await attempt(() => api("GET", "/api/v1/certificates"));
      if (list === undefined) { certificates.textContent = ""; return; }
      const columns = [
        ["Agent", (certificate) => certificate.instance_uid],
        ["Fingerprint (SHA-256)", (certificate) => {
          const code = document.createElement("code");
          code.className = "fingerprint";
          code.title = certificate.fingerprint;
          code.textContent = compact(certificate.fingerprint, 16);
          return code;
        }],
        ["Labels", (certificate) => labels(certificate.labels)],
        ["Issued", (certificate) => when(certificate.issued_at), "nowrap"],
        ["Valid until", (certificate) => when(certificate.not_after), "nowrap"],
        ["State", (certificate) => badge(certificate.revoked_at ? "revoked" : "valid")],
      ];
      renderTable(certificates, itemsOf(list), columns, (certificate) => certificate.revoked_at ? [] : [
        button("Revoke", async () => {
          if (await attempt(() => api("POST", "/api/v1/certificates/" + encodeURIComponent(certificate.fingerprint) + "/revoke")) !== undefined) loadCertificates();
        }, "danger"),
      ]);
    }
    $("#create-bootstrap-token").addEventListener("submit", async (event) => {
      event.preventDefault();
      const form = formObject(event.target);
      const labels = {};
      for (const pair of (form.labels || "").split(",")) {
        const at = pair.indexOf("=");
        if (at > 0) labels[pair.slice(0, at).trim()] = pair.slice(at + 1).trim();
      }
      const created = await attempt(() => api("POST", "/api/v1/bootstrap-tokens", { ttl_seconds: Number(form.ttl_seconds), labels }));
      if (created) {
        showSecret(created.token);
        loadTokens();
      }
    });
    loadTokens();
    // Only admins see agents' certificates (the section is not on an operator's page).
    if (certificates) loadCertificates();
  };

  if (pages[page]) pages[page]();
  followLive();
  document.body.dataset.ready = "true";
})();
