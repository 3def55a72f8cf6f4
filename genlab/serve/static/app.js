// genlab serve: the runs list, the run page and the live page. No framework, no build step, no CDN.
"use strict";

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else if (k === "text") e.textContent = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

async function getJSON(url) {
  const r = await fetch(url);
  const body = await r.json().catch(() => ({error: `HTTP ${r.status}`}));
  if (!r.ok) throw new Error(body.error || `HTTP ${r.status}`);
  return body;
}

function fmt(v, digits = 3) {
  if (v === null || v === undefined) return "-";
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toFixed(digits);
  return String(v);
}

function duration(s) {
  if (!s) return "-";
  return s < 90 ? `${s.toFixed(0)} s` : s < 5400 ? `${(s / 60).toFixed(1)} min` : `${(s / 3600).toFixed(2)} h`;
}

function errorCard(where, message) {
  where.append(el("div", {class: "card error"}, message));
}

function runUrl(name) { return "/run/" + name.split("/").map(encodeURIComponent).join("/"); }
function fileUrl(name, rel) { return "/files/" + (name + "/" + rel).split("/").map(encodeURIComponent).join("/"); }

// ------------------------------------------------------------------------------------------ runs list
async function runsPage() {
  const tbody = document.querySelector("#runs-table tbody");
  const errors = document.getElementById("runs-errors");
  let data;
  try { data = await getJSON("/api/runs"); } catch (e) { errorCard(errors, "cannot list the runs: " + e.message); return; }
  document.getElementById("root").textContent = data.root;
  const reports = document.getElementById("reports");
  for (const r of data.runs) {
    if (r.kind === "report") {
      if (r.error) { errorCard(errors, `${r.name}: ${r.error}`); continue; }
      reports.append(el("li", {}, el("a", {href: fileUrl(r.name, "index.html"), class: "report-link"}, r.name),
                        ` ${r.data || ""}, ${r.budget || ""}, ${(r.methods || []).length} methods`));
      continue;
    }
    if (r.error) { errorCard(errors, `${r.name}: ${r.error}`); continue; }
    tbody.append(el("tr", {class: "run-row"},
      el("td", {}, el("a", {href: runUrl(r.name)}, r.name)), el("td", {}, r.method || "-"), el("td", {}, r.data || "-"),
      el("td", {}, r.condition || "-"), el("td", {}, fmt(r.steps)), el("td", {}, duration(r.time_used)),
      el("td", {}, fmt(r.best_val_loss, 4)), el("td", {}, fmt(r.latest_fid, 2)),
      el("td", {}, el("span", {class: "badge " + r.status}, r.status))));
  }
  if (!reports.children.length) reports.append(el("li", {}, "none"));
}

// ------------------------------------------------------------------------------------------ run page
function plotLoss(svg, metrics) {
  const W = +svg.getAttribute("width"), H = +svg.getAttribute("height"), P = 40, L = 64;  // L: room for the y labels
  svg.innerHTML = "";
  const series = [["loss", "#2a6fb0"], ["val_loss", "#d2691e"], ["g_loss", "#7a3"]]
    .map(([k, c]) => [k, c, metrics.filter(r => typeof r[k] === "number" && isFinite(r[k]) && r[k] > 0)])
    .filter(s => s[2].length);
  if (!series.length) return;
  const xs = series.flatMap(s => s[2].map(r => r.step)), ys = series.flatMap(s => s[2].map(r => Math.log10(r[s[0]])));
  const lo = a => a.reduce((m, v) => v < m ? v : m, Infinity), hi = a => a.reduce((m, v) => v > m ? v : m, -Infinity);
  const x0 = lo(xs), x1 = Math.max(hi(xs), x0 + 1), y0 = lo(ys), y1 = Math.max(hi(ys), y0 + 1e-6);
  const sx = v => L + (v - x0) / (x1 - x0) * (W - L - P), sy = v => H - P + (P - H + P) * (v - y0) / (y1 - y0);
  const ns = "http://www.w3.org/2000/svg";
  const add = (tag, a) => { const e = document.createElementNS(ns, tag); for (const k in a) e.setAttribute(k, a[k]); svg.append(e); return e; };
  add("line", {x1: L, y1: H - P, x2: W - P, y2: H - P, stroke: "#999"});
  add("line", {x1: L, y1: P, x2: L, y2: H - P, stroke: "#999"});
  const t = (x, y, s, anchor) => { const e = add("text", {x, y, "font-size": 11, "text-anchor": anchor || "middle"}); e.textContent = s; };
  t(W / 2, H - 8, "step"); t(L, H - P + 14, x0); t(W - P, H - P + 14, x1);
  t(L - 4, H - P, Math.pow(10, y0).toPrecision(3), "end"); t(L - 4, P + 4, Math.pow(10, y1).toPrecision(3), "end");
  series.forEach(([k, c, rs], i) => {
    add("polyline", {fill: "none", stroke: c, "stroke-width": 1.5, class: "series-" + k,
                     points: rs.map(r => `${sx(r.step)},${sy(Math.log10(r[k]))}`).join(" ")});
    if (rs.length < 30) for (const r of rs) add("circle", {cx: sx(r.step), cy: sy(Math.log10(r[k])), r: 2, fill: c});
    t(W - P - 60, P + 14 * i, k, "start");
    add("rect", {x: W - P - 74, y: P - 8 + 14 * i, width: 10, height: 3, fill: c});
  });
}

function showGrids(name, grids, keepEnd) {
  const slider = document.getElementById("grid-slider"), img = document.getElementById("grid-img");
  const label = document.getElementById("grid-step");
  const atEnd = +slider.value >= +slider.max;
  slider.max = Math.max(0, grids.length - 1);
  if (keepEnd === undefined ? atEnd : keepEnd) slider.value = slider.max;
  const show = () => {
    const g = grids[+slider.value];
    if (!g) { label.textContent = "no sample grids yet"; img.removeAttribute("src"); return; }
    img.src = fileUrl(name, g.path) + "?v=" + grids.length;
    label.textContent = g.final ? "final samples" : `step ${g.step}`;
  };
  slider.oninput = show;
  show();
}

async function runPage() {
  const name = decodeURIComponent(location.pathname.slice("/run/".length));
  document.getElementById("run-title").textContent = name;
  const errors = document.getElementById("run-error");
  let d;
  try { d = await getJSON("/api/run/" + name.split("/").map(encodeURIComponent).join("/")); }
  catch (e) { errorCard(errors, `cannot read ${name}: ${e.message}`); return; }
  if (d.error) { errorCard(errors, `${name}: ${d.error}`); return; }
  let metrics = d.metrics, lines = d.lines;
  const stats = () => {
    const losses = metrics.filter(r => "loss" in r), last = losses[losses.length - 1] || {};
    document.getElementById("run-stats").replaceChildren(
      el("span", {class: "badge " + d.status, id: "run-status"}, d.status),
      ` ${d.method} on ${d.data}${d.condition ? " (" + d.condition + "-conditional)" : ""}, step ${fmt(last.step)}, `,
      `${duration(last.time_used)} of training, ${fmt(last.images_per_s, 0)} images/s`);
    const rows = [["last loss", fmt(last.loss, 4)], ["best val loss", fmt(d.best_val_loss, 4)],
                  ["latest FID", fmt(d.latest_fid, 2)]];
    for (const k of ["g_loss", "d_real", "d_fake", "r1"]) if (k in last) rows.push([k, fmt(last[k], 4)]);
    document.querySelector("#metrics-table tbody").replaceChildren(...rows.map(([a, b]) => el("tr", {}, el("td", {}, a), el("td", {}, b))));
    plotLoss(document.getElementById("loss-plot"), metrics);
  };
  stats();
  showGrids(name, d.grids, true);
  document.getElementById("config").textContent = d.config_text;
  document.getElementById("checkpoints").replaceChildren(...d.checkpoint_list.map(c =>
    el("li", {}, c.error ? `${c.name}: ${c.error}` : `${c.name} (step ${fmt(c.step)}, ${duration(c.time_used)})`)));
  // a run that is still training updates itself
  const poll = async () => {
    if (d.status !== "running") return;
    try {
      const u = await getJSON(`/api/run/${name.split("/").map(encodeURIComponent).join("/")}?since=${lines}`);
      metrics = metrics.concat(u.metrics);
      lines = u.lines;
      d.status = u.status; d.best_val_loss = u.best_val_loss; d.latest_fid = u.latest_fid;
      stats();
      showGrids(name, u.grids);
    } catch (e) { /* the next poll retries */ }
    setTimeout(poll, 2000);
  };
  setTimeout(poll, 2000);
}

// ------------------------------------------------------------------------------------------ live page
function control(o, slot) {
  const id = `opt-${o.name}-${slot}`;  // ids stay unique with two panels
  let input;
  if (o.type === "choice") {
    input = el("select", {id, name: o.name}, ...o.choices.map(c => el("option", {value: c}, c)));
    input.value = o.default;
  } else if (o.type === "bool") {
    input = el("input", {type: "checkbox", id, name: o.name});
    input.checked = !!o.default;
  } else {
    const a = {type: o.type === "str" ? "text" : "number", id, name: o.name, value: o.default ?? ""};
    if (o.type === "float") a.step = "any";
    if (o.min !== null && o.min !== undefined) a.min = o.min;
    if (o.max !== null && o.max !== undefined && o.max < 1e9) a.max = o.max;
    input = el("input", a);
  }
  return el("label", {title: o.help || ""}, o.name + " ", input);
}

async function buildPanel(panel, runs, slot) {
  const select = el("select", {class: "run-select", id: "run-" + slot}, el("option", {value: ""}, slot ? "(none)" : "choose a run"),
                    ...runs.map(r => el("option", {value: r.name}, `${r.name} (${r.method})`)));
  const form = el("div", {class: "controls"});
  const img = el("img", {class: "px live-img", id: "live-img-" + slot, alt: "generation"});
  const st = el("div", {class: "stats", id: "live-stats-" + slot});
  panel.replaceChildren(select, form, img, st);
  select.onchange = async () => {
    form.replaceChildren(); st.textContent = "";
    if (!select.value) return;
    try {
      const c = await getJSON("/api/options/" + select.value.split("/").map(encodeURIComponent).join("/"));
      if (c.error) throw new Error(c.error);
      if (!c.draws_samples) throw new Error(`${select.value} is a ${c.method} run: it draws no samples`);
      form.append(el("div", {}, `${c.label} (${c.family})`));
      form.append(control({name: "n", type: "int", default: 4, min: 1, max: 16}, slot));
      form.append(control({name: "seed", type: "int", default: 0, min: 0}, slot));
      if (c.condition.class) form.append(control({name: "class", type: "int", default: "", min: 0, max: c.condition.class.count - 1}, slot));
      if (c.condition.prompt) form.append(control({name: "prompt", type: "str", default: "a red circle in the top left"}, slot));
      for (const o of c.options) form.append(control(o, slot));
    } catch (e) { st.textContent = "cannot use this run: " + e.message; }
  };
  return {select, form, img, st};
}

function params(panel) {
  const q = new URLSearchParams({run: panel.select.value});
  for (const input of panel.form.querySelectorAll("input,select")) {
    const v = input.type === "checkbox" ? String(input.checked) : input.value;
    if (v !== "") q.set(input.name, v);
  }
  return q;
}

async function livePage() {
  const errors = document.getElementById("live-error");
  let runs = [];
  try { runs = (await getJSON("/api/runs")).runs.filter(r => r.kind === "run" && !r.error); }
  catch (e) { errorCard(errors, "cannot list the runs: " + e.message); }
  const panels = [await buildPanel(document.getElementById("panel-0"), runs, 0),
                  await buildPanel(document.getElementById("panel-1"), runs, 1)];
  const pre = new URLSearchParams(location.search).get("run");
  if (pre) { panels[0].select.value = pre; await panels[0].select.onchange(); }
  const button = document.getElementById("generate"), first = document.getElementById("first-frame");
  let sources = [];
  button.onclick = () => {
    sources.forEach(s => s.close());
    sources = [];
    const pair = String(Date.now()) + Math.random().toString(16).slice(2);
    const t0 = performance.now();
    let firstMs = null;
    first.textContent = "";
    document.body.dataset.state = "generating";
    let open = 0;
    for (const p of panels) {
      if (!p.select.value) continue;
      const q = params(p); q.set("pair", pair);
      const src = new EventSource("/api/generate?" + q.toString());
      sources.push(src); open++;
      let frames = 0;
      p.st.textContent = "waiting ...";
      const finish = () => { src.close(); if (--open === 0) document.body.dataset.state = "done"; };
      src.addEventListener("frame", ev => {
        const f = JSON.parse(ev.data); frames++;
        if (firstMs === null) { firstMs = performance.now() - t0; first.textContent = `first frame after ${firstMs.toFixed(0)} ms`; first.dataset.ms = firstMs.toFixed(1); }
        p.img.src = f.png;
        p.st.textContent = `step ${f.step}, ${f.nfe} network evaluations, ${f.seconds.toFixed(2)} s`;
        p.st.dataset.frames = frames;
      });
      src.addEventListener("done", ev => {
        const f = JSON.parse(ev.data);
        p.img.src = f.png;
        p.st.textContent = `done: ${f.nfe} network evaluations per sample, ${f.frames} steps, ${f.seconds.toFixed(2)} s`;
        p.st.dataset.frames = frames; p.st.dataset.done = "1";
        finish();
      });
      src.addEventListener("error", ev => {
        if (ev.data) { p.st.textContent = "error: " + JSON.parse(ev.data).message; p.st.dataset.error = "1"; }
        finish();
      });
    }
    if (!open) { document.body.dataset.state = "idle"; errorCard(errors, "choose a run first"); }
  };
}

const page = document.body.dataset.page;
({runs: runsPage, run: runPage, live: livePage})[page]();
