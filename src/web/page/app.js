// The findings page: one EventSource to /events; its first events are the whole state (the
// status, each finding kept, "ready"), then each finding and each status change. No
// framework, no request elsewhere.
"use strict";
const $ = (id) => document.getElementById(id);
const cards = new Map(); // source -> card element
const SOURCE_NAMES = { "watch-folder": "Watch folder", "dicom-scp": "DICOM received", "v4l2": "Live ultrasound", "replay": "Live ultrasound (replay)", "file": "File" };
const RECENT = 20;

function pct(x) { return (100 * x).toFixed(1) + " %"; }
function mib(b) { return (b / 1048576).toFixed(1) + " MiB"; }

function labels(f) {
  const over = new Set(f.over_threshold || []);
  const items = [];
  for (const s of f.scores || []) {
    if (over.has(s.label)) items.push({ hit: true, text: `${s.label.replace(/_/g, " ")} ${s.score.toFixed(2)}` });
  }
  if (items.length === 0) items.push({ hit: false, text: "nothing over threshold" });
  return items;
}

function detail(f) {
  const parts = [];
  for (const r of f.regions || []) {
    if (!(f.over_threshold || []).includes(r.label)) continue;
    let t = `${r.label.replace(/_/g, " ")}: ${pct(r.fraction)} of the image`;
    if (r.area_mm2 != null) t += `, ${r.area_mm2.toFixed(0)} mm²`;
    if (r.count != null) t += `, ${r.count} region${r.count === 1 ? "" : "s"}`;
    parts.push(t);
  }
  for (const d of f.detections || []) {
    let t = `${d.label.replace(/_/g, " ")} ${d.score.toFixed(2)}`;
    if (d.size_mm) t += ` (${d.size_mm[0].toFixed(0)} × ${d.size_mm[1].toFixed(0)} mm)`;
    parts.push(t);
  }
  if (f.video) {
    const v = f.video;
    const span = (Date.parse(v.last_captured_at) - Date.parse(v.first_captured_at)) / 1000;
    parts.push(v.present.length ? `present: ${v.present.join(", ").replace(/_/g, " ")}` : "nothing present");
    parts.push(`${v.event}: ${v.frames_processed} frames over ${span.toFixed(1)} s`);
  }
  return parts.join("; ");
}

// One card per source: its latest overlay, and per model the latest finding.
function showFinding(f, fresh) {
  const source = f.source || "file";
  let card = cards.get(source);
  if (!card) {
    card = $("card").content.firstElementChild.cloneNode(true);
    card.dataset.source = source;
    cards.set(source, card);
    $("cards").prepend(card);
  }
  card.dataset.finding = f.id;
  card.querySelector(".source").textContent = SOURCE_NAMES[source] || source;
  const t = card.querySelector("header time");
  t.dateTime = f.created_at; t.textContent = new Date(f.created_at).toLocaleTimeString();
  let row = card.querySelector(`.result[data-model="${CSS.escape(f.model.id)}"]`);
  if (!row) {
    row = $("result").content.firstElementChild.cloneNode(true);
    row.dataset.model = f.model.id;
    card.querySelector(".results").append(row);
  }
  row.dataset.finding = f.id;
  row.querySelector(".model").textContent = `${f.model.id} ${f.model.version} · ${f.task}` + (!f.video && f.image && f.image.frames > 1 ? ` · frame ${f.image.frame + 1} of ${f.image.frames}` : "");
  const ul = row.querySelector(".labels");
  ul.replaceChildren(...labels(f).map((l) => { const li = document.createElement("li"); li.className = l.hit ? "hit" : "none"; li.textContent = l.text; return li; }));
  row.querySelector(".detail").textContent = detail(f);
  const a = row.querySelector(".json");
  a.href = `/api/findings/${encodeURIComponent(f.id)}`;
  const rt = row.querySelector(".links time");
  rt.dateTime = f.created_at; rt.textContent = new Date(f.created_at).toLocaleTimeString();
  const img = card.querySelector(".overlay");
  if (source === "v4l2" || source === "replay") { img.hidden = true; }
  else { img.hidden = false; img.onerror = () => { img.hidden = true; }; img.src = `/overlays/${source}.png?finding=${encodeURIComponent(f.id)}`; }
  if (fresh) { card.classList.add("fresh"); setTimeout(() => card.classList.remove("fresh"), 4000); }
  const li = document.createElement("li");
  const link = document.createElement("a");
  link.href = a.href; link.textContent = `${new Date(f.created_at).toLocaleTimeString()} ${SOURCE_NAMES[source] || source}: ${f.model.id} — ${labels(f).map((l) => l.text).join(", ")}`;
  li.append(link);
  $("recent").prepend(li);
  while ($("recent").children.length > RECENT) $("recent").lastElementChild.remove();
}

function showStatus(s) {
  if (!s || !s.device) return;
  $("device").textContent = s.device; $("site").textContent = s.site ? `· ${s.site}` : "";
  const online = s.state === "online";
  $("state").textContent = online ? "online" : "offline"; $("state").className = "pill " + (online ? "online" : "offline");
  $("broker").textContent = online ? "connected" : "not connected: findings wait in the outbox";
  if (s.outbox) $("outbox").textContent = `${s.outbox.depth} finding(s) waiting${s.outbox.full ? " — FULL" : ""}`;
  $("camera").textContent = s.video ? (s.video.state || JSON.stringify(s.video)) : "none";
  if (s.memory) $("memory").textContent = `${mib(s.memory.rss)} resident; plan ${mib(s.memory.plan)}` + (s.memory.budget ? ` of ${mib(s.memory.budget)}` : "");
  if (s.dicom_outbox) $("pacs").textContent = s.dicom_outbox.destinations.map((d) => `${d.destination}: ${d.pending} waiting, ${d.sent} sent${d.dead ? `, ${d.dead} refused` : ""}${d.reachable === false ? " (unreachable)" : ""}`).join("; ");
  else $("pacs").textContent = "none";
  $("models").textContent = (s.models || []).map((m) => `${m.id} ${m.version}`).join(", ");
}

function connect() {
  const es = new EventSource("/events");
  // On every (re)connection the state comes first: the status, each finding kept, "ready".
  es.onopen = () => { $("recent").replaceChildren(); };
  es.addEventListener("kept", (e) => showFinding(JSON.parse(e.data), false));
  es.addEventListener("finding", (e) => showFinding(JSON.parse(e.data), true));
  es.addEventListener("status", (e) => showStatus(JSON.parse(e.data)));
  es.onerror = () => { $("state").textContent = "reconnecting…"; $("state").className = "pill unknown"; };
}
connect();
