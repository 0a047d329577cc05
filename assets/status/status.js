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

function openAction(mode, file) {
  pending = { mode, file };
  $("#act-title").textContent = mode === "retry" ? "Retry this file" : "Resolve this file";
  $("#act-file").textContent = file.remitter + " / " + file.file_name + " (" + file.status + ")";
  $("#act-status-label").hidden = mode !== "resolve";
  $("#act-status").required = mode === "resolve";
  $("#act-status").value = "";
  $("#act-reason").value = "";
  $("#act").showModal();
}

async function confirmAction(event) {
  event.preventDefault();
  if (!pending) return;
  const { mode, file } = pending;
  const reason = $("#act-reason").value.trim();
  const body = mode === "retry"
    ? { reason }
    : { status: "ops_" + $("#act-status").value.trim(), reason };
  const { status, body: answer } = await call(API + "/files/" + file.id + "/" + mode, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  $("#act").close();
  pending = null;
  if (status !== 200) {
    showError(mode + " refused (" + status + "): " + (answer && answer.message ? answer.message : JSON.stringify(answer)));
  }
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
$("#act-cancel").addEventListener("click", () => { pending = null; $("#act").close(); });

refresh();
setInterval(refresh, 15000);
