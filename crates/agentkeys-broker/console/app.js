// The AgentKeys console: plain JavaScript over the broker's JSON API. The session lives in an
// HttpOnly cookie this script never sees; every change carries the session's CSRF token. Data
// from the broker is only ever put into the page as text (textContent), never as HTML.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  let me = null; // the ConsoleSession: who is signed in, and the CSRF token

  // ---- the page and the API ------------------------------------------------------------------

  /** el("td", {class: "mono", text: "…", onclick: f}, child, …) */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) {
      if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
    }
    return node;
  }

  class ApiError extends Error {
    constructor(status, kind, message) { super(message); this.status = status; this.kind = kind; }
  }

  async function api(method, path, body) {
    const headers = { accept: "application/json" };
    if (body !== undefined) headers["content-type"] = "application/json";
    if (method !== "GET" && me) headers["x-csrf-token"] = me.csrf_token;
    const r = await fetch(path, {
      method, headers, credentials: "same-origin", cache: "no-store",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (r.status === 204) return null;
    const data = await r.json().catch(() => ({}));
    if (!r.ok) throw new ApiError(r.status, data.error || "error", data.message || r.statusText);
    return data;
  }

  function flash(message, isError) {
    const f = $("flash");
    f.textContent = message;
    f.className = isError ? "error" : "";
    f.hidden = !message;
  }

  /** Runs an action of a button: disables it meanwhile, shows the outcome, reloads the page. */
  async function act(button, fn, done) {
    button.disabled = true;
    try {
      const result = await fn();
      flash(typeof result === "string" ? result : done || "Done.", false);
      await render();
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) return signedOut("Your session ended; sign in again.");
      flash(e.message || String(e), true);
    } finally {
      button.disabled = false;
    }
  }

  const short = (s, n = 10) => (s && s.length > n + 2 ? s.slice(0, n) + "…" : s || "");
  const statusCell = (s) => el("td", { class: "status-" + s, text: s });
  const when = (t) => (t ? t.replace("T", " ").replace("Z", " UTC") : "");

  function table(headers, rows) {
    return el("table", {},
      el("thead", {}, el("tr", {}, headers.map((h) => el("th", { text: h })))),
      el("tbody", {}, rows));
  }

  function utf8Hex(text) {
    return "0x" + Array.from(new TextEncoder().encode(text), (b) => b.toString(16).padStart(2, "0")).join("");
  }

  // ---- the wallet (EIP-1193) ----------------------------------------------------------------

  function wallet() {
    if (!window.ethereum || typeof window.ethereum.request !== "function") {
      throw new Error("No browser wallet found (an EIP-1193 provider such as MetaMask).");
    }
    return window.ethereum;
  }

  async function chainId(eth) {
    try {
      const id = parseInt(await eth.request({ method: "eth_chainId" }), 16);
      return Number.isInteger(id) && id > 0 ? id : 1;
    } catch (_) {
      return 1;
    }
  }

  /** A challenge for `address` (and `purpose`), signed by the wallet with personal_sign. */
  async function signChallenge(eth, address, purpose) {
    const body = { address, chain_id: await chainId(eth) };
    if (purpose) body.purpose = purpose;
    const c = await api("POST", "/v1/auth/wallet/challenge", body);
    const signature = await eth.request({ method: "personal_sign", params: [utf8Hex(c.message), address] });
    return { challenge_id: c.challenge_id, signature };
  }

  // ---- sign-in and out ------------------------------------------------------------------------

  async function walletSignIn(button) {
    button.disabled = true;
    try {
      const eth = wallet();
      const [address] = await eth.request({ method: "eth_requestAccounts" });
      if (!address) throw new Error("The wallet gave no account.");
      const proof = await signChallenge(eth, address, null);
      me = await api("POST", "/v1/auth/wallet/browser", proof);
      flash("", false);
      location.hash = "#requests";
      await show();
    } catch (e) {
      flash("Not signed in: " + (e.message || String(e)), true);
    } finally {
      button.disabled = false;
    }
  }

  function randomVerifier() {
    const bytes = crypto.getRandomValues(new Uint8Array(32));
    return btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  async function emailSignIn(event) {
    event.preventDefault();
    const address = $("email").value.trim();
    try {
      // The broker wants a PKCE-style challenge for the code path; this page signs in through
      // the link instead, so the verifier is not kept.
      const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(randomVerifier()));
      const challenge = btoa(String.fromCharCode(...new Uint8Array(digest)))
        .replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
      await api("POST", "/v1/auth/email/start", { email: address, code_challenge: challenge });
      flash("We sent a sign-in link to " + address + ". Open it in this browser and confirm there; then come back here.", false);
    } catch (e) {
      flash("No email sent: " + e.message, true);
    }
  }

  async function logout(button) {
    button.disabled = true;
    try {
      await api("POST", "/v1/session/logout");
    } catch (_) {
      // Already ended: the cookie goes anyway.
    }
    signedOut("Signed out; the session is revoked.");
    button.disabled = false;
  }

  function signedOut(message) {
    me = null;
    $("nav").hidden = true;
    $("account").hidden = true;
    $("page").hidden = true;
    $("signin").hidden = false;
    flash(message || "", false);
  }

  // ---- pages ----------------------------------------------------------------------------------

  const pages = { requests, agents, grants, audit, sessions, identities };

  async function requests(page) {
    page.append(el("h2", { text: "Pairing codes and access requests" }));
    // Pairing: the code the device shows, then which device it is, then approve or deny.
    const code = el("input", { id: "pair-code", placeholder: "ABCD-EFGH", size: 11, autocomplete: "off" });
    const found = el("div", { id: "pairing-found" });
    const lookup = el("form", {
      id: "pairing-form",
      onsubmit: async (e) => {
        e.preventDefault();
        found.replaceChildren();
        try {
          const p = await api("POST", "/v1/agents/pairing/lookup", { code: code.value.trim() });
          const label = el("input", { id: "pair-label", placeholder: "label, e.g. bot1", pattern: "[a-z0-9-]{1,32}", required: true });
          const approve = el("button", {
            id: "pair-approve", type: "button",
            onclick: () => act(approve, async () => {
              const a = await api("POST", "/v1/agents/pairing/approve", { code: p.code, label: label.value.trim() });
              return "Paired agent " + a.label + " (device " + a.device_address + ").";
            }),
          }, "Approve");
          const deny = el("button", {
            id: "pair-deny", type: "button", class: "danger",
            onclick: () => act(deny, async () => {
              await api("POST", "/v1/agents/pairing/deny", { code: p.code });
              return "Refused pairing code " + p.code + ".";
            }),
          }, "Deny");
          found.append(el("div", { class: "card" },
            el("p", {}, "Code ", el("strong", { text: p.code }), " is a device with key ",
              el("code", { id: "pair-device", text: p.device_address }),
              el("span", { class: "muted", text: " (asked " + when(p.created_at) + ", expires " + when(p.expires_at) + ")" })),
            el("p", { class: "muted", text: "Compare the address with the one the device printed before approving." }),
            el("label", {}, "Label ", label), approve, deny));
        } catch (err) {
          found.append(el("p", { class: "status-failed", text: err.message }));
        }
      },
    }, el("label", {}, "Pairing code ", code), el("button", { type: "submit" }, "Look up"));
    page.append(el("div", { class: "card" }, el("h3", { text: "Pair a device" }), lookup, found));

    const list = await api("GET", "/v1/access-requests?status=pending");
    page.append(el("h3", { text: "Access requests waiting for you" }));
    if (list.requests.length === 0) {
      page.append(el("p", { class: "muted", id: "no-requests", text: "No access requests are waiting." }));
      return;
    }
    for (const r of list.requests) {
      const approve = el("button", {
        class: "approve-request", type: "button", "data-request": r.request_id,
        onclick: () => act(approve, () => approveRequest(r)),
      }, me.wallet ? "Approve with wallet" : "Approve");
      const deny = el("button", {
        class: "danger deny-request", type: "button", "data-request": r.request_id,
        onclick: () => act(deny, async () => {
          await api("POST", "/v1/access-requests/" + encodeURIComponent(r.request_id) + "/deny");
          return "Denied the request of " + r.agent_label + ".";
        }),
      }, "Deny");
      const uses = r.max_uses === null ? "unlimited mints" : r.max_uses + (r.max_uses === 1 ? " mint" : " mints");
      page.append(el("div", { class: "card access-request", "data-request": r.request_id },
        el("p", {}, el("strong", { text: r.agent_label }), " asks for ", el("code", { text: r.scope_tag || r.scope }),
          " — " + uses + " for " + r.ttl_seconds + " s"),
        el("p", {}, "Reason: ", el("q", { text: r.reason })),
        el("p", { class: "muted" }, "Agent ", el("code", { text: r.agent }), ", device ", el("code", { text: r.device_address }),
          "; request expires " + when(r.expires_at)),
        el("p", { class: "exposure", text: "Worst case: " + r.worst_case_exposure.seconds + " s — " + r.worst_case_exposure.explanation }),
        approve, deny));
    }
  }

  /** A wallet master signs the approval's terms; others approve with the session. */
  async function approveRequest(r) {
    const path = "/v1/access-requests/" + encodeURIComponent(r.request_id) + "/approve";
    let done;
    if (me.wallet) {
      const eth = wallet();
      const expiresAt = new Date(Date.now() + r.ttl_seconds * 1000).toISOString().replace(/\.\d{3}Z$/, "Z");
      const purpose = { approve_access: {
        request_id: r.request_id, agent_label: r.agent_label, agent: r.agent,
        scope_tag: r.scope_tag, max_uses: r.max_uses, expires_at: expiresAt,
      } };
      const proof = await signChallenge(eth, me.wallet, purpose);
      done = await api("POST", path, { wallet_proof: proof, expires_at: expiresAt });
    } else {
      done = await api("POST", path, {});
    }
    return "Approved: " + done.agent_label + " has grant " + done.grant.grant_id + " until " + when(done.grant.expires_at) + ".";
  }

  async function agents(page) {
    page.append(el("h2", { text: "Agents" }));
    const list = await api("GET", "/v1/agents");
    if (list.agents.length === 0) {
      page.append(el("p", { class: "muted", text: "No agents yet. On the agent's machine run `agentkeys agent pair`, then enter its code under Requests." }));
      return;
    }
    const rows = list.agents.map((a) => {
      const path = "/v1/agents/" + encodeURIComponent(a.agent_omni);
      const actions = el("td", {});
      if (a.status === "active") {
        const b = el("button", { class: "secondary", type: "button", "data-action": "suspend", onclick: () => act(b, () => api("POST", path + "/suspend"), "Suspended " + a.label + ": its next mint is refused.") }, "Suspend");
        actions.append(b);
      } else if (a.status === "suspended") {
        const b = el("button", { class: "secondary", type: "button", "data-action": "resume", onclick: () => act(b, () => api("POST", path + "/resume"), "Resumed " + a.label + ".") }, "Resume");
        actions.append(b);
      }
      if (a.status !== "removed") {
        // Two steps, without a dialog: the first click arms, the second removes.
        const b = el("button", { class: "danger", type: "button", "data-action": "remove" }, "Remove");
        b.addEventListener("click", () => {
          if (b.dataset.armed !== "1") { b.dataset.armed = "1"; b.textContent = "Confirm removal"; return; }
          act(b, () => api("DELETE", path), "Removed " + a.label + " for good; its sessions are revoked.");
        });
        actions.append(b);
      }
      return el("tr", { "data-agent": a.label },
        el("td", { text: a.label }), el("td", { class: "mono", title: a.agent_omni, text: short(a.agent_omni, 12) }),
        el("td", { class: "mono", text: a.device_address }), statusCell(a.status), el("td", { text: when(a.created_at) }), actions);
    });
    page.append(table(["Label", "Omni", "Device", "Status", "Paired", ""], rows));
  }

  function grantStatus(g) {
    if (g.revoked_at) return "revoked";
    if (Date.parse(g.expires_at) <= Date.now()) return "expired";
    if (g.max_uses !== null && g.uses >= g.max_uses) return "used up";
    return "active";
  }

  async function grants(page) {
    page.append(el("h2", { text: "Grants" }));
    const [list, agentList] = await Promise.all([api("GET", "/v1/grants"), api("GET", "/v1/agents")]);
    const live = agentList.agents.filter((a) => a.status !== "removed");
    const labelOf = (omni) => (agentList.agents.find((a) => a.agent_omni === omni) || {}).label || short(omni);
    const agent = el("select", { id: "grant-agent", required: true }, live.map((a) => el("option", { value: a.agent_omni, text: a.label })));
    const scope = el("input", { id: "grant-scope", placeholder: "inbox/", required: true, size: 16 });
    const hours = el("input", { id: "grant-hours", type: "number", min: 1, max: 8760, value: 24, size: 5, required: true });
    const uses = el("input", { id: "grant-uses", type: "number", min: 1, placeholder: "unlimited", size: 8 });
    const result = el("div", { id: "grant-result" });
    const create = el("form", {
      id: "grant-form",
      onsubmit: async (e) => {
        e.preventDefault();
        const button = create.querySelector("button");
        await act(button, async () => {
          const body = {
            agent: agent.value, scope: scope.value.trim(),
            expires_at: new Date(Date.now() + Number(hours.value) * 3600 * 1000).toISOString().replace(/\.\d{3}Z$/, "Z"),
          };
          if (uses.value) body.max_uses = Number(uses.value);
          const g = await api("POST", "/v1/grants", body);
          return "Granted " + labelOf(g.agent) + " " + g.scope + " (tag " + g.scope_tag + ") as " + g.grant_id +
            ". Worst case after a revocation: " + g.worst_case_exposure.seconds + " s — " + g.worst_case_exposure.explanation + ".";
        });
      },
    }, el("label", {}, "Agent ", agent), el("label", {}, "Scope ", scope), el("label", {}, "Hours ", hours),
    el("label", {}, "Uses ", uses), el("button", { type: "submit", disabled: live.length === 0 }, "Create grant"));
    const worst = list.worst_case_exposure;
    page.append(el("div", { class: "card" }, el("h3", { text: "Give an agent part of your prefix" }), create,
      el("p", { class: "exposure", id: "grant-exposure", text: "Worst case after a revocation: " + worst.seconds + " s — " + worst.explanation + "." }),
      result));
    if (list.grants.length === 0) {
      page.append(el("p", { class: "muted", text: "No grants." }));
      return;
    }
    const rows = list.grants.map((g) => {
      const status = grantStatus(g);
      const actions = el("td", {});
      if (!g.revoked_at) {
        const b = el("button", { class: "danger", type: "button", "data-action": "revoke", onclick: () => act(b, () => api("DELETE", "/v1/grants/" + encodeURIComponent(g.grant_id)), "Revoked grant " + g.grant_id + ": the next mint under it is refused.") }, "Revoke");
        actions.append(b);
      }
      return el("tr", { "data-grant": g.grant_id },
        el("td", { class: "mono", text: g.grant_id }), el("td", { text: labelOf(g.agent) }), el("td", { class: "mono", text: g.scope_tag }),
        statusCell(status), el("td", { text: g.uses + " / " + (g.max_uses === null ? "∞" : g.max_uses) }),
        el("td", { text: when(g.expires_at) }),
        el("td", { class: "exposure", title: g.worst_case_exposure.explanation, text: g.worst_case_exposure.seconds + " s" }), actions);
    });
    page.append(table(["Grant", "Agent", "Scope tag", "Status", "Uses", "Expires", "Worst case", ""], rows));
  }

  const auditState = { after: [], filters: {} };

  async function audit(page) {
    page.append(el("h2", { text: "Audit trail" }));
    const chain = el("p", { id: "chain-status", class: "muted", text: "Checking the chain…" });
    page.append(chain);
    api("GET", "/v1/audit/chain").then((c) => {
      chain.className = c.intact ? "chain-ok" : "chain-bad";
      chain.textContent = c.intact
        ? "Chain intact: " + c.verified_events + " events verified, head seq " + c.head_seq + " (" + short(c.head_hash, 16) + ")."
        : "Chain BROKEN at seq " + c.broken_at + ": " + c.reason;
    }).catch((e) => { chain.className = "chain-bad"; chain.textContent = "Chain status unavailable: " + e.message; });

    const agentList = await api("GET", "/v1/agents");
    const f = auditState.filters;
    const kind = el("input", { id: "audit-kind", placeholder: "e.g. mint", value: f.kind || "", size: 18 });
    const agent = el("select", { id: "audit-agent" }, el("option", { value: "", text: "anyone" }),
      agentList.agents.map((a) => el("option", { value: a.agent_omni, text: a.label, selected: f.agent === a.agent_omni })));
    const since = el("input", { id: "audit-since", type: "datetime-local", value: f.since || "" });
    const form = el("form", {
      id: "audit-form",
      onsubmit: (e) => {
        e.preventDefault();
        auditState.filters = { kind: kind.value.trim(), agent: agent.value, since: since.value };
        auditState.after = [];
        render();
      },
    }, el("label", {}, "Kind ", kind), el("label", {}, "Actor ", agent), el("label", {}, "Since ", since),
    el("button", { type: "submit" }, "Filter"));
    page.append(el("div", { class: "card" }, form));

    const params = new URLSearchParams({ limit: "25" });
    if (f.kind) params.set("kind", f.kind);
    if (f.agent) params.set("agent", f.agent);
    if (f.since) params.set("since", new Date(f.since).toISOString().replace(/\.\d{3}Z$/, "Z"));
    const after = auditState.after[auditState.after.length - 1];
    if (after) params.set("after", String(after));
    const pageData = await api("GET", "/v1/audit?" + params);
    const labels = Object.fromEntries(agentList.agents.map((a) => [a.agent_omni, a.label]));
    const actorName = (omni) => (!omni ? "" : omni === me.omni_account ? "you" : labels[omni] || short(omni));
    const rows = pageData.events.map((e) => el("tr", { "data-kind": e.kind },
      el("td", { text: String(e.seq) }), el("td", { class: "nowrap", text: when(e.time) }),
      el("td", { class: "mono nowrap", text: e.kind }),
      el("td", { text: actorName(e.actor) }), statusCell(e.outcome),
      el("td", { class: "mono details", text: JSON.stringify(e.details) }), el("td", { class: "mono", title: e.hash, text: short(e.hash, 8) })));
    page.append(pageData.events.length
      ? table(["Seq", "Time", "Kind", "Actor", "Outcome", "Details", "Hash"], rows)
      // A page that searched its share of a long log and found nothing still has a `next`.
      : el("p", { class: "muted", text: pageData.next === null ? "No events match."
        : "No events match up to seq " + pageData.next + ". Next page searches further." }));
    const prev = el("button", { class: "secondary", type: "button", id: "audit-prev", disabled: auditState.after.length === 0,
      onclick: () => { auditState.after.pop(); render(); } }, "Previous page");
    const next = el("button", { class: "secondary", type: "button", id: "audit-next", disabled: pageData.next === null,
      onclick: () => { auditState.after.push(pageData.next); render(); } }, "Next page");
    page.append(el("div", { class: "toolbar" }, prev, next));
  }

  async function sessions(page) {
    page.append(el("h2", { text: "Sessions" }));
    const list = await api("GET", "/v1/sessions");
    const rows = list.sessions.map((s) => {
      const actions = el("td", {});
      if (s.current) {
        actions.append(el("span", { class: "muted", text: "this browser" }));
      } else {
        const b = el("button", { class: "danger", type: "button", "data-action": "revoke-session",
          onclick: () => act(b, () => api("POST", "/v1/sessions/" + encodeURIComponent(s.id) + "/revoke"), "Revoked session " + s.id + ".") }, "Revoke");
        actions.append(b);
      }
      return el("tr", { "data-session": s.id }, el("td", { class: "mono", text: s.id }), el("td", { text: s.kind }),
        el("td", { text: when(s.created_at) }), el("td", { text: when(s.expires_at) }), actions);
    });
    page.append(table(["Session", "Kind", "Created", "Expires", ""], rows));
  }

  async function identities(page) {
    page.append(el("h2", { text: "Linked identities" }));
    const list = await api("GET", "/v1/identities");
    if (list.identities.length === 0) {
      page.append(el("p", { class: "muted", text: "No linked identities. Link one with `agentkeys identities link-email ADDRESS --key-file FILE`." }));
      return;
    }
    page.append(table(["Type", "Value", "Linked"], list.identities.map((i) =>
      el("tr", {}, el("td", { text: i.identity_type }), el("td", { text: i.identity_value }), el("td", { text: when(i.linked_at) })))));
  }

  // ---- routing ------------------------------------------------------------------------------

  async function render() {
    const name = (location.hash || "#requests").slice(1);
    const draw = pages[name] || requests;
    for (const a of document.querySelectorAll("nav a")) a.classList.toggle("current", a.dataset.page === name);
    const page = $("page");
    const fresh = el("section", { id: "page" });
    try {
      await draw(fresh);
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) return signedOut("Your session ended; sign in again.");
      fresh.append(el("p", { class: "status-failed", text: e.message }));
    }
    page.replaceWith(fresh);
    fresh.dataset.ready = name;
  }

  async function show() {
    $("signin").hidden = true;
    $("nav").hidden = false;
    $("account").hidden = false;
    $("who").textContent = me.wallet || me.via || me.omni_account;
    await render();
  }

  async function start() {
    $("wallet-signin").addEventListener("click", (e) => walletSignIn(e.currentTarget));
    $("email-form").addEventListener("submit", emailSignIn);
    $("logout").addEventListener("click", (e) => logout(e.currentTarget));
    window.addEventListener("hashchange", () => { flash("", false); if (me) render(); });
    me = await api("GET", "/v1/console/session").catch(() => null);
    if (me && me.kind !== "master") {
      me = null;
      return signedOut("This is an agent's session; the console is for masters.");
    }
    if (me) await show(); else signedOut("");
  }

  start();
})();
