/* legalign review: worklist, film viewer and decisions.  Plain JavaScript, no build step.
 *
 * Coordinates: film pixels with the origin at the centre of the top-left pixel (as in
 * every legalign output).  The view maps them to the screen with a scale and an offset:
 * screen = offset + (pixel + 0.5) * scale.
 * Every measurement shown is computed by the server with legalign's own geometry code. */
"use strict";

const TOKEN = document.querySelector('meta[name="review-token"]').content;
const HAS_INTERVALS = document.querySelector('meta[name="review-intervals"]').content === "yes";
const SVGNS = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);

const SHORT = {
  femoral_head: "FH", greater_trochanter: "GT", femoral_condyle_medial: "FCm",
  femoral_condyle_lateral: "FCl", tibial_plateau_medial: "TPm", tibial_plateau_lateral: "TPl",
  knee_centre: "KC", ankle_centre: "AC", femoral_shaft_proximal: "FSp",
  femoral_shaft_distal: "FSd", tibial_shaft_proximal: "TSp", tibial_shaft_distal: "TSd",
};
const MEASURES = [
  ["hka_deg", "HKA", "\u00b0"], ["mad_mm", "MAD", " mm"], ["wbl_ratio_pct", "WBL ratio", " %"],
  ["mldfa_deg", "mLDFA", "\u00b0"], ["mpta_deg", "MPTA", "\u00b0"], ["jlca_deg", "JLCA", "\u00b0"],
  ["mlpfa_deg", "mLPFA", "\u00b0"], ["atfa_deg", "aTFA", "\u00b0"], ["ama_deg", "AMA", "\u00b0"],
  ["leg_length_mm", "Leg length", " mm"],
];

const S = {
  rows: [], view: [], sortKey: "film", sortDir: 1, legId: null, leg: null,
  points: {},          // current landmark positions {name: [x, y]} (model's, amended applied)
  amended: {},         // the amended subset (what is saved)
  current: null,       // the leg as recomputed for `points`
  lld: null,
  film: null, preview: null, previewScale: 1, previewCanvas: null, previewData: null,
  region: null, regionSeq: 0, regionTimer: null,
  scale: 1, ox: 0, oy: 0, lo: 0, hi: 1, overlay: true,
  recomputeBusy: false, recomputePending: false, saving: false,
};

// ------------------------------------------------------------------------ helpers
function reviewer() { return $("reviewer").value.trim(); }

async function api(path, body) {
  const opt = body === undefined ? {} : {
    method: "POST", body: JSON.stringify(body),
    headers: { "Content-Type": "application/json", "X-Review-Token": TOKEN },
  };
  const r = await fetch(path, opt);
  let data = null;
  try { data = await r.json(); } catch (e) { data = null; }
  return { status: r.status, ok: r.ok, data };
}

function fmt(v, unit) {
  if (v === null || v === undefined) return "\u2013";
  const n = Math.abs(v) >= 100 ? v.toFixed(0) : v.toFixed(1);
  return (v > 0 && unit === "\u00b0" ? "+" : "") + n + (unit || "");
}
function fmtHka(v) { return v === null || v === undefined ? "\u2013" : (v > 0 ? "+" : "") + v.toFixed(1); }
function esc(s) { const d = document.createElement("div"); d.textContent = s == null ? "" : String(s); return d.innerHTML; }
function message(text, kind, extra) {
  const m = $("message");
  m.className = "message " + (kind || "");
  m.textContent = text || "";
  if (extra) m.appendChild(extra);
}

// ------------------------------------------------------------------------ worklist
async function loadWorklist() {
  const r = await api("/api/worklist");
  if (!r.ok) { $("worklist-foot").textContent = "worklist unavailable"; return; }
  S.rows = r.data.rows;
  renderWorklist();
}

function filtered() {
  const fr = $("f-review").value, ff = $("f-flag").value, fs = $("f-status").value;
  const fp = $("f-plan").value, ft = $("f-text").value.trim().toLowerCase();
  const fw = parseFloat($("f-width").value), fh = parseFloat($("f-hka").value);
  return S.rows.filter((r) => {
    if (fr === "todo" && ["accepted", "amended", "rejected"].includes(r.review_state)) return false;
    if (fr && fr !== "todo" && r.review_state !== fr) return false;
    if (ff === "yes" && !r.flagged) return false;
    if (ff === "no" && r.flagged) return false;
    if (fs && r.status !== fs) return false;
    if (fp === "none" && r.plan_level) return false;
    if (fp && fp !== "none" && r.plan_level !== fp) return false;
    if (ft && !r.film.toLowerCase().includes(ft)) return false;
    if (!isNaN(fw) && !(r.hka_interval_deg !== null && r.hka_interval_deg >= fw)) return false;
    if (!isNaN(fh) && !(r.hka_deg !== null && Math.abs(r.hka_deg) >= fh)) return false;
    return true;
  });
}

function sortRows(rows) {
  const k = S.sortKey, d = S.sortDir;
  return rows.slice().sort((a, b) => {
    let x = a[k], y = b[k];
    if (k === "hka_deg") { x = x === null ? null : Math.abs(x); y = y === null ? null : Math.abs(y); }
    if (x === y) return a.film < b.film ? -1 : a.film > b.film ? 1 : (a.side < b.side ? -1 : 1);
    if (x === null || x === undefined) return 1;
    if (y === null || y === undefined) return -1;
    return (x < y ? -1 : 1) * d;
  });
}

function renderWorklist() {
  S.view = sortRows(filtered());
  const tb = document.querySelector("#worklist tbody");
  tb.innerHTML = "";
  for (const r of S.view) {
    const tr = document.createElement("tr");
    tr.dataset.leg = r.leg_id;
    if (r.leg_id === S.legId) tr.className = "current";
    const width = r.hka_interval_deg === null ? "\u2013" : r.hka_interval_deg.toFixed(1);
    tr.innerHTML =
      `<td class="film" title="${esc(r.film)}">${esc(r.film)}</td>` +
      `<td>${r.side === "right" ? "R" : "L"}</td>` +
      `<td class="st-${esc(r.status)}">${esc(r.status)}</td>` +
      `<td class="flag" title="${esc(r.flags.join("; "))}">${r.flagged ? "\u25B2" : ""}</td>` +
      `<td class="num hka">${fmtHka(r.hka_deg)}</td>` +
      `<td class="num col-int">${width}</td>` +
      `<td>${esc(r.plan_level || "\u2013")}</td>` +
      `<td><span class="rv rv-${esc(r.review_state)}">${esc(r.review_state.replace("_", " "))}</span></td>`;
    tr.addEventListener("click", () => selectLeg(r.leg_id));
    tb.appendChild(tr);
  }
  document.querySelectorAll("#worklist th").forEach((th) => {
    th.classList.toggle("sorted-asc", th.dataset.key === S.sortKey && S.sortDir > 0);
    th.classList.toggle("sorted-desc", th.dataset.key === S.sortKey && S.sortDir < 0);
  });
  const done = S.rows.filter((r) => ["accepted", "amended", "rejected"].includes(r.review_state)).length;
  $("worklist-foot").textContent = `${S.view.length} of ${S.rows.length} legs shown \u00b7 ${done} decided`;
  $("counts").textContent = `${new Set(S.rows.map((r) => r.film_id)).size} films \u00b7 ${S.rows.length} legs`;
}

function step(delta, undecidedOnly) {
  if (!S.view.length) return;
  let i = S.view.findIndex((r) => r.leg_id === S.legId);
  for (let n = 0; n < S.view.length; n++) {
    i = i < 0 ? 0 : (i + delta + S.view.length) % S.view.length;
    const r = S.view[i];
    if (!undecidedOnly || !["accepted", "amended", "rejected"].includes(r.review_state)) {
      selectLeg(r.leg_id);
      return;
    }
  }
  message("every listed leg is decided", "ok");
}

// ------------------------------------------------------------------------ a leg
async function selectLeg(legId) {
  const r = await api(`/api/legs/${encodeURIComponent(legId)}`);
  if (!r.ok) { message("cannot load this leg", "error"); return; }
  const sameFilm = S.film && S.film.film_id === r.data.film.film_id;
  S.legId = legId;
  history.replaceState(null, "", "#leg=" + legId);
  applyLeg(r.data);
  message("");
  document.querySelectorAll("#worklist tbody tr").forEach((tr) => {
    tr.classList.toggle("current", tr.dataset.leg === legId);
    if (tr.dataset.leg === legId) tr.scrollIntoView({ block: "nearest" });
  });
  if (!sameFilm) await loadFilm(r.data.film);
  else { fitLeg(); draw(); }
  loadHistory();
  prefetchNext();
}

function applyLeg(data) {
  S.leg = data;
  S.amended = JSON.parse(JSON.stringify(data.state.points || {}));
  S.points = {};
  for (const [n, lm] of Object.entries(data.model.landmarks || {})) S.points[n] = [lm.x, lm.y];
  for (const [n, xy] of Object.entries(S.amended)) S.points[n] = xy.slice();
  S.current = data.current;
  S.lld = data.lld_mm;
  renderPanel();
}

function legRow() { return S.rows.find((r) => r.leg_id === S.legId); }

function renderPanel() {
  const d = S.leg;
  const f = d.film;
  $("leg-title").textContent = `${d.side === "right" ? "Right" : "Left"} leg`;
  $("leg-sub").textContent = `${f.name} \u00b7 ${f.width} \u00d7 ${f.height} px` +
    (f.spacing_mm ? ` \u00b7 ${f.spacing_mm.toFixed(3)} mm/px` : " \u00b7 no pixel spacing (angles only)") +
    (f.bits_stored ? ` \u00b7 ${f.bits_stored}-bit` : "") + (f.source_available ? "" : " \u00b7 original film not found");
  const fl = $("flags");
  fl.innerHTML = "";
  for (const t of d.flags) { const li = document.createElement("li"); li.textContent = t; fl.appendChild(li); }
  if (d.hka_interval) {
    const li = document.createElement("li");
    li.textContent = `HKA interval ${fmtHka(d.hka_interval[0])} \u2026 ${fmtHka(d.hka_interval[1])}\u00b0 (model)`;
    li.className = "info";
    fl.appendChild(li);
  }
  const tb = document.querySelector("#measures tbody");
  tb.innerHTML = "";
  const m0 = d.model.measurements || {}, m1 = (S.current && S.current.measurements) || {};
  const rows = MEASURES.map(([k, label, unit]) => [k, label, unit, m0[k], m1[k]]);
  rows.push(["lld_mm", "LLD (L\u2212R)", " mm", d.lld_mm_model, S.lld]);
  for (const [k, label, unit, a, b] of rows) {
    const tr = document.createElement("tr");
    const delta = a !== null && a !== undefined && b !== null && b !== undefined ? b - a : null;
    if (delta !== null && Math.abs(delta) >= 0.05) tr.className = "changed";
    tr.innerHTML = `<td>${label}</td><td class="num">${fmt(a, unit)}</td>` +
      `<td class="num" id="${k === "hka_deg" ? "hka-current" : "v-" + k}">${fmt(b, unit)}</td>` +
      `<td class="num">${delta === null || Math.abs(delta) < 0.05 ? "" : fmt(delta, "")}</td>`;
    tb.appendChild(tr);
  }
  const cat0 = m0.category, cat1 = m1.category;
  const p0 = d.model.plan || {}, p1 = (S.current && S.current.plan) || {};
  const lvl = (p) => p.level || (p.indicated === false ? "no osteotomy" : "none");
  const corr = (p) => p.correction_deg != null ? `${p.correction_deg.toFixed(1)}\u00b0` : "\u2013";
  const gap = (p) => p.gap_mm != null ? `${p.gap_mm.toFixed(1)} mm` : "\u2013";
  const changed = lvl(p0) !== lvl(p1) || corr(p0) !== corr(p1) || gap(p0) !== gap(p1);
  $("plan").innerHTML =
    `<div>Alignment: <strong>${esc(cat1 || "\u2013")}</strong>` +
    (cat0 !== cat1 ? ` <span class="was">(model: ${esc(cat0 || "\u2013")})</span>` : "") + "</div>" +
    `<div>Plan: <span class="lvl" id="plan-level">${esc(lvl(p1))}</span> correction ${corr(p1)}, gap ${gap(p1)}` +
    (p1.target_wbl_pct != null ? `, target WBL ${p1.target_wbl_pct.toFixed(1)} %` : "") + "</div>" +
    (changed ? `<div class="was">model: ${esc(lvl(p0))}, ${corr(p0)}, ${gap(p0)}</div>` : "") +
    `<div class="reason">${esc(p1.reason || "")}</div>` +
    ((p1.warnings || []).length ? `<div class="reason">\u26A0 ${esc(p1.warnings.join("; "))}</div>` : "");
  const st = d.state;
  $("review-state").textContent = st.state.replace("_", " ");
  $("state-meta").textContent = st.version ? `v${st.version} \u00b7 ${st.reviewer} \u00b7 ${st.updated_at}` +
    (st.reason ? ` \u00b7 ${st.reason}` : "") : "";
  $("btn-reopen").disabled = !["accepted", "amended", "rejected"].includes(st.state);
  $("btn-reset").disabled = !Object.keys(S.amended).length;
  $("btn-accept").textContent = "";
  $("btn-accept").append(Object.keys(S.amended).length ? "Accept amended " : "Accept ");
  const kbd = document.createElement("kbd"); kbd.textContent = "A"; $("btn-accept").append(kbd);
}

async function loadHistory() {
  if (!S.legId) return;
  const r = await api(`/api/legs/${encodeURIComponent(S.legId)}/history`);
  const ol = $("history");
  ol.innerHTML = "";
  if (!r.ok) return;
  for (const e of r.data.events.slice().reverse()) {
    const li = document.createElement("li");
    const pts = Object.keys(e.points).length;
    li.textContent = `${e.at} ${e.reviewer}: ${e.action}` + (e.action === "points" ? ` (${pts} moved)` : "") +
      ` \u2192 ${e.state.replace("_", " ")}` + (e.reason ? ` (${e.reason})` : "");
    ol.appendChild(li);
  }
}

// ------------------------------------------------------------------------ changes
async function change(action, extra) {
  if (!S.leg || S.saving) return false;
  if (!reviewer()) { message("enter your name as reviewer first (top right)", "error"); $("reviewer").focus(); return false; }
  S.saving = true;
  try {
    const body = Object.assign({ action, version: S.leg.state.version, reviewer: reviewer() }, extra || {});
    const r = await api(`/api/legs/${encodeURIComponent(S.legId)}/change`, body);
    if (r.status === 409) {
      const b = document.createElement("button");
      b.textContent = "Reload leg";
      b.addEventListener("click", () => { const id = S.legId; S.film = null; selectLeg(id); });
      message("Conflict: " + r.data.message + ". Nothing was overwritten.", "error", b);
      return false;
    }
    if (!r.ok) { message((r.data && (r.data.detail || r.data.error)) || `error ${r.status}`, "error"); return false; }
    applyLeg(r.data.leg);
    draw();
    const row = legRow();
    if (row) {
      row.review_state = r.data.state.state;
      row.hka_deg = (r.data.leg.current.measurements || {}).hka_deg;
      row.plan_level = (r.data.leg.current.plan || {}).level || null;
      row.reviewer = r.data.state.reviewer;
    }
    renderWorklist();
    loadHistory();
    return true;
  } finally { S.saving = false; }
}

async function accept() {
  if (await change("accept")) { message(`${S.leg.state.state} \u2713 saved`, "ok"); }
}
async function reject() {
  const reason = $("reject-reason").value;
  if (!reason) { message("choose a reject reason, then press Enter or Reject", "error"); $("reject-reason").focus(); return; }
  if (await change("reject", { reason })) { message("rejected \u2713 saved", "ok"); $("reject-reason").value = ""; }
}
async function resetPoints() {
  if (!Object.keys(S.amended).length) return;
  if (await change("points", { points: {} })) message("points reset to the model's", "ok");
}
async function reopen() { if (await change("reopen")) message("reopened", "ok"); }

async function recompute() {
  if (S.recomputeBusy) { S.recomputePending = true; return; }
  S.recomputeBusy = true;
  try {
    do {
      S.recomputePending = false;
      const r = await api(`/api/legs/${encodeURIComponent(S.legId)}/recompute`, { points: S.amended });
      if (r.ok) { S.current = r.data.current; S.lld = r.data.lld_mm; renderPanel(); drawOverlay(); }
      else message((r.data && r.data.detail) || "cannot recompute", "error");
    } while (S.recomputePending);
  } finally { S.recomputeBusy = false; }
}

// ------------------------------------------------------------------------ film view
const stage = $("stage"), canvas = $("film"), svg = $("overlay");

async function loadFilm(film) {
  S.film = film; S.preview = null; S.region = null; S.lo = 0; S.hi = 1;
  $("stage-msg").textContent = film.source_available ? "loading\u2026" : "original film not found: " + (film.source_note || "");
  fitLeg();
  draw();
  if (!film.source_available) return;
  const t0 = performance.now();
  const img = new Image();
  img.decoding = "async";
  img.src = `/api/films/${film.film_id}/preview.png`;
  try { await img.decode(); } catch (e) { $("stage-msg").textContent = "the film cannot be read"; return; }
  if (!S.film || S.film.film_id !== film.film_id) return;
  S.preview = img;
  S.previewScale = img.naturalHeight / film.height;
  const c = document.createElement("canvas");
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  const cx = c.getContext("2d", { willReadFrequently: true });
  cx.drawImage(img, 0, 0);
  S.previewCanvas = c;
  S.previewData = cx.getImageData(0, 0, c.width, c.height);
  S.previewShown = null;
  $("stage-msg").textContent = "";
  document.body.dataset.firstView = String(Math.round(performance.now() - t0));
  draw();
}

function prefetchNext() {
  const i = S.view.findIndex((r) => r.leg_id === S.legId);
  const next = S.view[i + 1];
  if (next && (!S.film || next.film_id !== S.film.film_id)) {
    const img = new Image();
    img.src = `/api/films/${next.film_id}/preview.png`;
  }
}

function resizeCanvas() {
  const w = stage.clientWidth, h = stage.clientHeight, dpr = window.devicePixelRatio || 1;
  canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr);
  canvas.style.width = w + "px"; canvas.style.height = h + "px";
}

function fit() {
  if (!S.film) return;
  const w = stage.clientWidth, h = stage.clientHeight;
  S.scale = Math.min(w / S.film.width, h / S.film.height) * 0.98;
  S.ox = (w - S.film.width * S.scale) / 2;
  S.oy = (h - S.film.height * S.scale) / 2;
}

function fitLeg() {
  // the whole film height, centred on the leg
  fit();
  if (!S.film || !S.leg) return;
  const xs = Object.values(S.points).map((p) => p[0]);
  if (!xs.length) return;
  const cx = (Math.min(...xs) + Math.max(...xs)) / 2;
  const w = stage.clientWidth;
  const filmW = S.film.width * S.scale;
  if (filmW > w) S.ox = w / 2 - (cx + 0.5) * S.scale;
}

function zoomAt(factor, sx, sy) {
  const s = Math.max(0.02, Math.min(16, S.scale * factor));
  const f = s / S.scale;
  S.ox = sx - (sx - S.ox) * f;
  S.oy = sy - (sy - S.oy) * f;
  S.scale = s;
  draw();
}

function toScreen(p) { return [S.ox + (p[0] + 0.5) * S.scale, S.oy + (p[1] + 0.5) * S.scale]; }
function toFilm(sx, sy) { return [(sx - S.ox) / S.scale - 0.5, (sy - S.oy) / S.scale - 0.5]; }

function windowedPreview() {
  // window/level applied to the preview (8 bits of the full range) while the
  // full-precision crop for the current window is on its way
  if (!S.previewData) return null;
  const key = `${S.lo}:${S.hi}`;
  if (S.previewShown === key) return S.previewCanvas;
  const src = S.previewData.data;
  const out = new ImageData(S.previewData.width, S.previewData.height);
  const lut = new Uint8ClampedArray(256);
  const span = Math.max(S.hi - S.lo, 1e-6);
  for (let v = 0; v < 256; v++) lut[v] = ((v / 255 - S.lo) / span) * 255;
  const o = out.data;
  for (let i = 0; i < src.length; i += 4) { const g = lut[src[i]]; o[i] = g; o[i + 1] = g; o[i + 2] = g; o[i + 3] = 255; }
  S.previewCanvas.getContext("2d").putImageData(out, 0, 0);
  S.previewShown = key;
  return S.previewCanvas;
}

function draw() {
  resizeCanvas();
  const dpr = window.devicePixelRatio || 1;
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, stage.clientWidth, stage.clientHeight);
  if (S.film && S.preview) {
    const src = windowedPreview();
    ctx.imageSmoothingEnabled = true;
    ctx.drawImage(src, S.ox, S.oy, S.film.width * S.scale, S.film.height * S.scale);
    const r = S.region;
    if (r && r.filmId === S.film.film_id && r.lo === S.lo && r.hi === S.hi) {
      ctx.imageSmoothingEnabled = S.scale < 2;
      ctx.drawImage(r.img, S.ox + r.x0 * S.scale, S.oy + r.y0 * S.scale,
        (r.x1 - r.x0) * S.scale, (r.y1 - r.y0) * S.scale);
    }
    scheduleRegion();
  }
  $("zoom").textContent = S.film ? `${(S.scale * 100).toFixed(S.scale < 0.1 ? 1 : 0)} %` : "";
  const bits = (S.film && S.film.bits_stored) || 8;
  const full = Math.pow(2, bits) - 1;
  $("wl").textContent = `W ${Math.round((S.hi - S.lo) * full)}  L ${Math.round(((S.hi + S.lo) / 2) * full)}`;
  drawOverlay();
}

function scheduleRegion() {
  // full-resolution pixels when the screen shows more detail than the preview holds,
  // or when the window differs from the preview's (full precision of 16-bit films)
  clearTimeout(S.regionTimer);
  const needDetail = S.scale > S.previewScale * 1.05;
  const needWindow = S.lo !== 0 || S.hi !== 1;
  if (!needDetail && !needWindow) return;
  const f = S.film;
  const [ax, ay] = toFilm(0, 0), [bx, by] = toFilm(stage.clientWidth, stage.clientHeight);
  const x0 = Math.max(0, Math.floor(ax)), y0 = Math.max(0, Math.floor(ay));
  const x1 = Math.min(f.width, Math.ceil(bx) + 1), y1 = Math.min(f.height, Math.ceil(by) + 1);
  if (x1 <= x0 || y1 <= y0) return;
  const dpr = window.devicePixelRatio || 1;
  const w = Math.max(1, Math.min(x1 - x0, Math.round((x1 - x0) * S.scale * dpr)));
  const h = Math.max(1, Math.min(y1 - y0, Math.round((y1 - y0) * S.scale * dpr)));
  const r = S.region;
  if (r && r.filmId === f.film_id && r.lo === S.lo && r.hi === S.hi && r.x0 <= x0 && r.y0 <= y0 &&
      r.x1 >= x1 && r.y1 >= y1 && r.w / (r.x1 - r.x0) >= w / (x1 - x0) * 0.99) return;
  S.regionTimer = setTimeout(async () => {
    const seq = ++S.regionSeq;
    const lo = S.lo, hi = S.hi, filmId = f.film_id;
    const img = new Image();
    img.src = `/api/films/${filmId}/region.png?x0=${x0}&y0=${y0}&x1=${x1}&y1=${y1}&w=${w}&h=${h}&lo=${lo}&hi=${hi}`;
    try { await img.decode(); } catch (e) { return; }
    if (seq !== S.regionSeq || !S.film || S.film.film_id !== filmId) return;
    S.region = { img, x0, y0, x1, y1, w, h, lo, hi, filmId };
    draw();
  }, 90);
}

function el(name, attrs, parent) {
  const e = document.createElementNS(SVGNS, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  (parent || svg).appendChild(e);
  return e;
}
function line(a, b, cls, parent) {
  if (!a || !b) return;
  const [x1, y1] = toScreen(a), [x2, y2] = toScreen(b);
  el("line", { x1, y1, x2, y2, class: cls }, parent);
}
function rotate(p, c, deg) {
  const t = (deg * Math.PI) / 180, dx = p[0] - c[0], dy = p[1] - c[1];
  return [c[0] + dx * Math.cos(t) - dy * Math.sin(t), c[1] + dx * Math.sin(t) + dy * Math.cos(t)];
}

function drawAxes(P, plan, cls) {
  const g = el("g", { class: cls || "" });
  const c = (k) => (cls ? "before" : k);
  line(P.femoral_head, P.knee_centre, c("ax"), g);
  line(P.knee_centre, P.ankle_centre, c("ax"), g);
  line(P.femoral_head, P.ankle_centre, c("wbl"), g);
  line(P.femoral_condyle_medial, P.femoral_condyle_lateral, c("fj"), g);
  line(P.tibial_plateau_medial, P.tibial_plateau_lateral, c("tj"), g);
  if (!cls) {
    line(P.femoral_shaft_proximal, P.femoral_shaft_distal, "shaft", g);
    line(P.tibial_shaft_proximal, P.tibial_shaft_distal, "shaft", g);
  }
  const steps = (plan && plan.steps) || [];
  for (const s of steps) {
    if (!s.hinge || !s.cut_start) continue;
    const open = rotate(s.cut_start, s.hinge, s.rotation_deg || 0);
    const pts = [s.cut_start, s.hinge, open].map((p) => toScreen(p).join(",")).join(" ");
    el("polygon", { points: pts, class: cls ? "before" : "wedge" }, g);
    if (!cls) { const [hx, hy] = toScreen(s.hinge); el("circle", { cx: hx, cy: hy, r: 3.5, class: "hinge" }, g); }
  }
}

function pointsOf(landmarks) {
  const P = {};
  for (const [n, lm] of Object.entries(landmarks || {})) P[n] = [lm.x, lm.y];
  return P;
}

function drawOverlay() {
  svg.innerHTML = "";
  if (!S.leg || !S.film || !S.overlay) return;
  for (const o of S.leg.other_legs || []) {
    const P = pointsOf(o.landmarks);
    const g = el("g", {});
    line(P.femoral_head, P.knee_centre, "other", g);
    line(P.knee_centre, P.ankle_centre, "other", g);
  }
  const moved = Object.keys(S.amended).length > 0;
  if (moved) {
    const P0 = pointsOf(S.leg.model.landmarks);
    drawAxes(P0, S.leg.model.plan, "before");
    for (const n of Object.keys(S.amended)) {
      if (!P0[n]) continue;
      const [x, y] = toScreen(P0[n]);
      el("circle", { cx: x, cy: y, r: 5, class: "before-pt" });
    }
  }
  drawAxes(S.points, S.current && S.current.plan, null);
  const lms = (S.current && S.current.landmarks) || S.leg.model.landmarks || {};
  for (const [n, p] of Object.entries(S.points)) {
    const [x, y] = toScreen(p);
    const info = lms[n] || {};
    const g = el("g", { class: "lm" + (S.amended[n] ? " amended" : "") + (info.used === false ? " low" : ""), "data-name": n });
    el("circle", { cx: x, cy: y, r: 11, class: "hit" }, g);
    el("circle", { cx: x, cy: y, r: 4.5, class: "dot" }, g);
    // labels around the knee go outwards (condyles above, plateau below) so they stay legible
    let dx = 8, dy = -7, anchor = "start";
    const kc = S.points.knee_centre;
    if (kc && /condyle|plateau/.test(n)) {
      const left = p[0] < kc[0];
      dx = left ? -9 : 9; anchor = left ? "end" : "start"; dy = n.includes("condyle") ? -9 : 17;
    } else if (n === "knee_centre") { dx = 0; dy = -13; anchor = "middle"; }
    const t = el("text", { x: x + dx, y: y + dy, "text-anchor": anchor }, g);
    t.textContent = SHORT[n] + (info.used === false && info.confidence != null ? ` ${info.confidence.toFixed(2)}` : "");
    const title = el("title", {}, g);
    title.textContent = `${n.replace(/_/g, " ")}` + (info.confidence != null ? ` (confidence ${info.confidence.toFixed(2)})` : " (placed by reviewer)");
  }
}

// ------------------------------------------------------------------------ interaction
let drag = null;
stage.addEventListener("contextmenu", (e) => e.preventDefault());
stage.addEventListener("pointerdown", (e) => {
  if (!S.film) return;
  const rect = stage.getBoundingClientRect();
  const sx = e.clientX - rect.left, sy = e.clientY - rect.top;
  const lm = e.target.closest && e.target.closest(".lm");
  stage.setPointerCapture(e.pointerId);
  if (lm && e.button === 0 && !e.shiftKey) {
    drag = { kind: "point", name: lm.dataset.name, moved: false };
    lm.classList.add("dragging");
  } else if (e.button === 2 || (e.button === 0 && e.shiftKey)) {
    drag = { kind: "window", sx, sy, lo: S.lo, hi: S.hi };
  } else {
    drag = { kind: "pan", sx, sy, ox: S.ox, oy: S.oy };
    stage.classList.add("panning");
  }
});
stage.addEventListener("pointermove", (e) => {
  const rect = stage.getBoundingClientRect();
  const sx = e.clientX - rect.left, sy = e.clientY - rect.top;
  if (S.film) {
    const [fx, fy] = toFilm(sx, sy);
    const mm = S.film.spacing_mm;
    $("cursor").textContent = `x ${fx.toFixed(0)}  y ${fy.toFixed(0)}` + (mm ? `  (${(fx * mm).toFixed(0)}, ${(fy * mm).toFixed(0)} mm)` : "");
  }
  if (!drag) return;
  if (drag.kind === "pan") {
    S.ox = drag.ox + (sx - drag.sx); S.oy = drag.oy + (sy - drag.sy); draw();
  } else if (drag.kind === "window") {
    const width = Math.max(0.002, (drag.hi - drag.lo) * Math.exp((sx - drag.sx) / 200));
    const level = (drag.hi + drag.lo) / 2 - (sy - drag.sy) / 600;
    S.lo = level - width / 2; S.hi = level + width / 2; draw();
  } else if (drag.kind === "point") {
    const f = S.film;
    let [fx, fy] = toFilm(sx, sy);
    fx = Math.max(-0.5, Math.min(f.width - 0.5, fx)); fy = Math.max(-0.5, Math.min(f.height - 0.5, fy));
    S.points[drag.name] = [fx, fy];
    S.amended[drag.name] = [fx, fy];
    drag.moved = true;
    drawOverlay();
    recompute();
  }
});
async function endDrag() {
  if (!drag) return;
  const d = drag;
  drag = null;
  stage.classList.remove("panning");
  if (d.kind === "window") { S.lo = Math.round(S.lo * 1e4) / 1e4; S.hi = Math.round(S.hi * 1e4) / 1e4; draw(); }
  if (d.kind === "point" && d.moved) {
    await recompute();
    if (await change("points", { points: S.amended })) message("amended points saved (not yet accepted)", "ok");
  }
}
stage.addEventListener("pointerup", endDrag);
stage.addEventListener("pointercancel", endDrag);
stage.addEventListener("wheel", (e) => {
  e.preventDefault();
  const rect = stage.getBoundingClientRect();
  zoomAt(Math.exp(-e.deltaY * 0.0015), e.clientX - rect.left, e.clientY - rect.top);
}, { passive: false });

document.addEventListener("keydown", (e) => {
  const tag = (e.target.tagName || "").toLowerCase();
  if (tag === "input" || tag === "textarea") return;
  if (tag === "select") {
    if (e.target.id === "reject-reason" && e.key === "Enter") { e.preventDefault(); reject(); }
    return;
  }
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const k = e.key;
  const w = stage.clientWidth / 2, h = stage.clientHeight / 2;
  const act = {
    j: () => step(1), ArrowDown: () => step(1), k: () => step(-1), ArrowUp: () => step(-1),
    n: () => step(1, true), a: accept, r: () => { $("reject-reason").focus(); message("choose a reason, Enter rejects"); },
    u: resetPoints, o: reopen, f: () => { fitLeg(); draw(); },
    1: () => { const [cx, cy] = toFilm(w, h); S.scale = 1 / (window.devicePixelRatio || 1); S.ox = w - (cx + 0.5) * S.scale; S.oy = h - (cy + 0.5) * S.scale; draw(); },
    "+": () => zoomAt(1.25, w, h), "=": () => zoomAt(1.25, w, h), "-": () => zoomAt(0.8, w, h),
    w: () => { S.lo = 0; S.hi = 1; draw(); }, h: () => { S.overlay = !S.overlay; drawOverlay(); },
    "?": () => { $("help").hidden = !$("help").hidden; }, Escape: () => { $("help").hidden = true; },
  }[k];
  if (act) { e.preventDefault(); act(); }
});

// ------------------------------------------------------------------------ start
function wire() {
  if (!HAS_INTERVALS) document.body.classList.add("no-intervals");
  const saved = localStorage.getItem("legalign-reviewer");
  $("reviewer").value = saved || document.querySelector('meta[name="review-reviewer"]').content || "";
  $("reviewer").addEventListener("change", () => localStorage.setItem("legalign-reviewer", reviewer()));
  for (const id of ["f-review", "f-flag", "f-status", "f-plan"]) $(id).addEventListener("change", renderWorklist);
  for (const id of ["f-text", "f-width", "f-hka"]) $(id).addEventListener("input", renderWorklist);
  document.querySelectorAll("#worklist th").forEach((th) => th.addEventListener("click", () => {
    const k = th.dataset.key;
    S.sortDir = S.sortKey === k ? -S.sortDir : (["hka_deg", "hka_interval_deg", "flagged"].includes(k) ? -1 : 1);
    S.sortKey = k;
    renderWorklist();
  }));
  $("btn-accept").addEventListener("click", accept);
  $("btn-reject").addEventListener("click", reject);
  $("btn-reset").addEventListener("click", resetPoints);
  $("btn-reopen").addEventListener("click", reopen);
  $("btn-fit").addEventListener("click", () => { fitLeg(); draw(); });
  $("btn-11").addEventListener("click", () => document.dispatchEvent(new KeyboardEvent("keydown", { key: "1" })));
  $("btn-zin").addEventListener("click", () => zoomAt(1.25, stage.clientWidth / 2, stage.clientHeight / 2));
  $("btn-zout").addEventListener("click", () => zoomAt(0.8, stage.clientWidth / 2, stage.clientHeight / 2));
  $("btn-wl").addEventListener("click", () => { S.lo = 0; S.hi = 1; draw(); });
  $("btn-overlay").addEventListener("click", () => { S.overlay = !S.overlay; drawOverlay(); });
  $("btn-help").addEventListener("click", () => { $("help").hidden = !$("help").hidden; });
  $("btn-help-close").addEventListener("click", () => { $("help").hidden = true; });
  window.addEventListener("resize", draw);
}

(async function main() {
  wire();
  await loadWorklist();
  const m = /leg=([0-9a-f]+-(?:right|left))/.exec(location.hash);
  const start = m && S.rows.some((r) => r.leg_id === m[1]) ? m[1] : (S.view[0] && S.view[0].leg_id);
  if (start) await selectLeg(start);
  document.body.dataset.ready = "1";
})();
