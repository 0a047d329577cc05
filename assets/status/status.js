// The status page: reads the coordinator's API with the operator's token,
// which stays in this tab's session storage. No external scripts or styles.
"use strict";

const API = "/api/v1/coordinator";
const KEY = "coordinator-token";
const $ = (sel) => document.querySelector(sel);

function token() {
  return sessionStorage.getItem(KEY) || "";
}

async function call(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (token()) headers["Authorization"] = "Bearer " + token();
  const resp = await fetch(path, Object.assign({}, options, { headers }));
  const text = await resp.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (_) { body = text; }
  return { status: resp.status, body };
}

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "" : String(text);
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "";
}

function showError(message) {
  const p = $("#error");
  p.textContent = message || "";
  p.hidden = !message;
}

async function readiness() {
  const pill = $("#ready");
  try {
    const { status, body } = await call("/readyz");
    const parts = body && typeof body === "object"
      ? ["database", "share"].map((k) => k + (body[k] && body[k].ok ? " ok" : " DOWN")).join(", ")
      : "";
    pill.textContent = (status === 200 ? "ready" : "not ready") + (parts ? " — " + parts : "");
    pill.className = "pill " + (status === 200 ? "ok" : "bad");
  } catch (e) {
    pill.textContent = "coordinator unreachable";
    pill.className = "pill bad";
  }
}

async function backlog() {
  try {
    const resp = await fetch("/metrics");
    if (!resp.ok) return;
    const text = await resp.text();
    const gauge = (name) => {
      const line = text.split("\n").find((l) => l.startsWith(name + " ") || l.startsWith(name + "{"));
      return line ? line.trim().split(/\s+/).pop() : "–";
    };
    $("#outbox").textContent = gauge("coordinator_outbox_pending");
    $("#archive").textContent = gauge("coordinator_archive_pending");
  } catch (_) { /* metrics are optional for the page */ }
}

async function runs() {
  const { status, body } = await call(API + "/runs?limit=10");
  if (status !== 200) return status;
  const tbody = $("#runs tbody");
  tbody.replaceChildren();
  for (const r of body.runs) {
    const tr = document.createElement("tr");
    tr.dataset.runId = r.run_id;
    cell(tr, when(r.started_at));
    cell(tr, r.trigger + (r.dry_run ? " (dry run)" : ""));
    cell(tr, r.status, "status-" + r.status);
    const s = r.summary || {};
    for (const k of ["scanned", "processed", "failed", "errors"]) cell(tr, s[k]);
    tbody.appendChild(tr);
  }
  return status;
}

async function awaiting() {
  const { status, body } = await call(API + "/files?status=failed&limit=100");
  if (status !== 200) return status;
  const tbody = $("#awaiting tbody");
  tbody.replaceChildren();
  for (const f of body.files) {
    const tr = document.createElement("tr");
    tr.dataset.id = f.id;
    cell(tr, f.id);
    cell(tr, f.remitter);
    cell(tr, f.file_name);
    cell(tr, f.status, "status-failed");
    cell(tr, when(f.updated_at));
    const actions = cell(tr, "");
    for (const [label, mode] of [["Retry", "retry"], ["Resolve", "resolve"]]) {
      const b = document.createElement("button");
      b.type = "button";
      b.className = mode;
      b.textContent = label;
      b.addEventListener("click", () => openAction(mode, f));
      actions.appendChild(b);
    }
    tbody.appendChild(tr);
  }
  $("#awaiting-empty").hidden = body.files.length > 0;
  return status;
}

async function refresh() {
  showError("");
  await Promise.all([readiness(), backlog()]);
  if (!token()) {
    $("#auth-state").textContent = "Enter the API token to see runs and files.";
    return;
  }
  try {
    const codes = await Promise.all([runs(), awaiting()]);
    if (codes.includes(401)) {
      $("#auth-state").textContent = "The token was refused (401).";
    } else {
      $("#auth-state").textContent = "Signed in for this tab. Updated " + new Date().toLocaleTimeString() + ".";
    }
  } catch (e) {
    showError("Could not read the API: " + e);
  }
  document.body.dataset.refreshed = String(Date.now());
}

let pending = null;

const WHAT = {
  retry: {
    title: "Retry this file",
    what: "The next run sends it to FOI and ITM again.",
    confirm: "Retry",
  },
  resolve: {
    title: "Resolve this file",
    what: "Records your verdict instead of sending it; the next background pass archives it.",
    confirm: "Resolve",
  },
};

// The verdict word the operator typed, without an `ops_` typed before it.
function verdictWord() {
  const word = $("#act-status").value.trim();
  return word.startsWith("ops_") ? word.slice(4) : word;
}

// What is wrong with the dialog's fields, in words, with the field to fix;
// null when it can be sent.
function problem(mode) {
  if (mode === "resolve") {
    const word = verdictWord();
    if (!word) {
      return { field: "#act-status", message: "Type a verdict word, for example resent_by_hand." };
    }
    if (!/^[a-z0-9_]{1,40}$/.test(word)) {
      return {
        field: "#act-status",
        message: "The verdict \u201c" + word + "\u201d cannot be used: write it with lowercase letters, digits and _ only (at most 40), for example resent_by_hand.",
      };
    }
  }
  if (!$("#act-reason").value.trim()) {
    return { field: "#act-reason", message: "Type a reason: it is kept in the file's history." };
  }
  return null;
}

function dialogError(message, field) {
  const p = $("#act-error");
  p.textContent = message || "";
  p.hidden = !message;
  for (const f of ["#act-status", "#act-reason"]) {
    if (f === field) $(f).setAttribute("aria-invalid", "true");
    else $(f).removeAttribute("aria-invalid");
  }
  if (field) $(field).focus();
}

function openAction(mode, file) {
  pending = { mode, file };
  const what = WHAT[mode];
  $("#act-title").textContent = what.title;
  $("#act-file").textContent = file.remitter + " / " + file.file_name + " (" + file.status + ")";
  $("#act-what").textContent = what.what;
  $("#act-confirm").textContent = what.confirm;
  $("#act-verdict").hidden = mode !== "resolve";
  $("#act-status").disabled = mode !== "resolve";
  $("#act-status").value = "";
  $("#act-reason").value = "";
  dialogError("");
  $("#act-confirm").disabled = false;
  $("#act").showModal();
  (mode === "resolve" ? $("#act-status") : $("#act-reason")).focus();
}

async function confirmAction(event) {
  event.preventDefault();
  if (!pending) return;
  const { mode, file } = pending;
  const wrong = problem(mode);
  if (wrong) {
    dialogError(wrong.message, wrong.field);
    return;
  }
  const reason = $("#act-reason").value.trim();
  const body = mode === "retry" ? { reason } : { status: "ops_" + verdictWord(), reason };
  $("#act-confirm").disabled = true;
  let status;
  let answer;
  try {
    ({ status, body: answer } = await call(API + "/files/" + file.id + "/" + mode, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    }));
  } catch (e) {
    status = 0;
    answer = { message: "the coordinator could not be reached (" + e + ")" };
  }
  $("#act-confirm").disabled = false;
  if (status !== 200) {
    // Stays open with the coordinator's own words, so nothing typed is lost.
    const why = answer && answer.message ? answer.message : JSON.stringify(answer);
    // The code says what kind of refusal (403 `forbidden`: the token's role may not).
    const code = answer && answer.error ? " " + answer.error : "";
    dialogError(WHAT[mode].confirm + " was refused" + (status ? " (" + status + code + ")" : "") + ": " + why);
    return;
  }
  pending = null;
  $("#act").close();
  await refresh();
}

$("#token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY, $("#token").value.trim());
  $("#token").value = "";
  refresh();
});
$("#forget-token").addEventListener("click", () => {
  sessionStorage.removeItem(KEY);
  $("#runs tbody").replaceChildren();
  $("#awaiting tbody").replaceChildren();
  refresh();
});
$("#act-form").addEventListener("submit", confirmAction);
// Typing again puts the message about the last attempt away.
$("#act-form").addEventListener("input", () => dialogError(""));
$("#act-cancel").addEventListener("click", () => $("#act").close());
// Cancel, Escape, or a successful action: nothing is pending any more.
$("#act").addEventListener("close", () => { pending = null; });

refresh();
setInterval(refresh, 15000);
