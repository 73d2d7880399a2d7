// The page of `ctl serve`: upload a scene, ask /v1/look, draw one row of products per category and the
// selected category's 7x7 attention over the scene. Plain JS, no build step.
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = { scene: null, sceneName: null, look: null, selected: null, categories: [] };

function setState(name) { document.body.dataset.state = name; }

function showError(message) {
  const box = $("#error");
  box.textContent = message;
  box.hidden = false;
  setState("error");
  $("#status").textContent = "";
}

function clearError() { $("#error").hidden = true; $("#error").textContent = ""; }

async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body && body.message) return `${body.message} (HTTP ${response.status})`;
  } catch (_) { /* not JSON */ }
  return `the server answered HTTP ${response.status} ${response.statusText}`;
}

function shortName(category) { return category.split("|").pop(); }

// -- start-up: categories and examples ---------------------------------------------------------------

async function loadCategories() {
  const response = await fetch("/v1/categories");
  if (!response.ok) { showError(await errorMessage(response)); return; }
  const data = await response.json();
  state.categories = data.categories;
  $("#index-info").textContent = `${data.products.toLocaleString()} products in ${data.categories.length} ` +
    `categories · index ${data.index_version || "(flat)"}`;
  const notice = data.model && data.model.notice;   // a model trained on the sample's rendered looks says so
  $("#model-notice").textContent = notice || "";
  $("#model-notice").hidden = !notice;
  const list = $("#category-list");
  list.replaceChildren(...data.categories.map((c) => {
    const label = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox"; box.value = c.category; box.checked = true;
    label.append(box, ` ${c.name} `);
    const count = document.createElement("span");
    count.className = "muted"; count.textContent = `(${c.products})`;
    label.append(count);
    return label;
  }));
}

async function loadExamples() {
  const response = await fetch("/v1/examples");
  if (!response.ok) return;
  const { examples } = await response.json();
  if (!examples.length) return;
  const list = $("#example-list");
  list.replaceChildren(...examples.map((ex) => {
    const button = document.createElement("button");
    button.type = "button"; button.className = "example"; button.title = ex.name;
    const img = document.createElement("img");
    img.src = ex.url; img.alt = `example ${ex.name}`; img.loading = "lazy";
    button.append(img);
    button.addEventListener("click", async () => {
      const r = await fetch(ex.url);
      if (!r.ok) { showError(await errorMessage(r)); return; }
      submit(await r.blob(), ex.name);
    });
    return button;
  }));
  $("#examples").hidden = false;
}

// -- asking for a look ------------------------------------------------------------------------------------

function chosenCategories() {
  const boxes = [...document.querySelectorAll("#category-list input")];
  const chosen = boxes.filter((b) => b.checked).map((b) => b.value);
  return chosen.length === boxes.length ? null : chosen;   // null: every category (the default)
}

async function submit(blob, name) {
  clearError();
  state.scene = blob; state.sceneName = name;
  $("#rerun").disabled = false;
  const chosen = chosenCategories();
  if (chosen && !chosen.length) { showError("choose at least one category"); return; }
  const params = new URLSearchParams({ k: $("#k").value || "4" });
  (chosen || []).forEach((c) => params.append("categories", c));
  const form = new FormData();
  form.append("image", blob, name);
  setState("loading");
  $("#status").textContent = `asking for the look of ${name}…`;
  let response;
  try {
    response = await fetch(`/v1/look?${params}`, { method: "POST", body: form });
  } catch (err) {
    showError(`the request failed: ${err}`); return;
  }
  if (!response.ok) { showError(await errorMessage(response)); return; }
  const look = await response.json();
  const timing = response.headers.get("Server-Timing") || "";
  state.look = look;
  $("#status").textContent = `${name}: ${look.categories.length} categories · index ` +
    `${response.headers.get("X-Index-Version") || "?"} · ${summariseTiming(timing)}`;
  showScene(blob);
  renderRows(look);
  const keep = look.categories.find((c) => c.category === state.selected);
  select((keep || look.categories[0] || {}).category || null);
  setState("done");
}

function summariseTiming(header) {
  const total = header.split(",").map((part) => parseFloat((part.split("dur=")[1]) || "0"))
    .reduce((a, b) => a + b, 0);
  return header ? `${total.toFixed(0)} ms on the server` : "";
}

function showScene(blob) {
  const img = $("#scene-img");
  if (img.dataset.url) URL.revokeObjectURL(img.dataset.url);
  img.dataset.url = URL.createObjectURL(blob);
  img.src = img.dataset.url;
  $("#result").hidden = false;
}

// -- rows of products ---------------------------------------------------------------------------------------

function fmt(x) { return Number(x).toFixed(4); }

function card(hit) {
  const div = document.createElement("div");
  div.className = "card";
  div.dataset.productId = hit.product_id;
  const details = `#${hit.rank} ${hit.product_id}\nscore ${fmt(hit.score)}\n` +
    `hybrid d_h ${fmt(hit.hybrid_distance)}\nglobal d_g ${fmt(hit.global_distance)}\nlocal d_l ${fmt(hit.local_distance)}`;
  div.title = details;
  const img = document.createElement("img");
  img.src = `/v1/products/${encodeURIComponent(hit.product_id)}/image`;
  img.alt = `product ${hit.product_id}`; img.loading = "lazy";
  const caption = document.createElement("div");
  caption.className = "caption";
  caption.innerHTML = `<span class="rank">#${hit.rank}</span> <span class="score">${fmt(hit.score)}</span>`;
  const hover = document.createElement("div");
  hover.className = "distances";
  hover.textContent = `d_h ${fmt(hit.hybrid_distance)} · d_g ${fmt(hit.global_distance)} · d_l ${fmt(hit.local_distance)}`;
  div.append(img, caption, hover);
  return div;
}

function renderRows(look) {
  const rows = $("#rows");
  rows.replaceChildren(...look.categories.map((c) => {
    const row = document.createElement("section");
    row.className = "row"; row.dataset.category = c.category;
    const head = document.createElement("button");
    head.type = "button"; head.className = "row-head";
    head.textContent = shortName(c.category);
    if (c.presence_probability !== null && c.presence_probability !== undefined) {
      const p = document.createElement("span");
      p.className = "muted";
      p.textContent = ` · ${c.present ? "already in the scene" : "missing"} (p=${Number(c.presence_probability).toFixed(2)})`;
      head.append(p);
    }
    head.addEventListener("click", () => select(c.category));
    const cards = document.createElement("div");
    cards.className = "cards";
    cards.append(...c.hits.map(card));
    if (!c.hits.length) cards.textContent = "(no products)";
    row.append(head, cards);
    return row;
  }));
}

// -- the attention heatmap --------------------------------------------------------------------------------

// A perceptual ramp (dark blue -> magenta -> yellow); alpha grows with the weight.
const RAMP = [[13, 8, 135], [126, 3, 168], [204, 71, 120], [248, 149, 64], [240, 249, 33]];

function colour(t) {
  const x = Math.min(Math.max(t, 0), 1) * (RAMP.length - 1);
  const i = Math.min(Math.floor(x), RAMP.length - 2), f = x - i;
  return RAMP[i].map((v, j) => Math.round(v + f * (RAMP[i + 1][j] - v)));
}

function drawHeatmap(grid) {
  const canvas = $("#heatmap");
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (!grid || !grid.length || !$("#show-heatmap").checked) return;
  const side = grid.length;
  const values = grid.flat();
  const lo = Math.min(...values), hi = Math.max(...values);
  const small = document.createElement("canvas");
  small.width = side; small.height = side;
  const pixels = small.getContext("2d").createImageData(side, side);
  values.forEach((v, i) => {
    const t = hi > lo ? (v - lo) / (hi - lo) : 0.5;
    const [r, g, b] = colour(t);
    pixels.data.set([r, g, b, Math.round(20 + 170 * t)], 4 * i);
  });
  small.getContext("2d").putImageData(pixels, 0, 0);
  ctx.imageSmoothingEnabled = true;
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(small, 0, 0, canvas.width, canvas.height);
}

function select(category) {
  state.selected = category;
  document.querySelectorAll(".row").forEach((row) => {
    row.classList.toggle("selected", row.dataset.category === category);
  });
  const look = state.look && state.look.categories.find((c) => c.category === category);
  drawHeatmap(look ? look.attention : null);
  $("#heatmap").dataset.category = category || "";
  $("#heatmap-label").textContent = category ? `where the model looks for ${shortName(category)}` : "";
}

// -- wiring -------------------------------------------------------------------------------------------------

function useFile(file) { if (file) submit(file, file.name); }

$("#scene-input").addEventListener("change", (e) => { useFile(e.target.files[0]); e.target.value = ""; });
const drop = $("#drop");
["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
["dragleave", "drop"].forEach((t) => drop.addEventListener(t, () => drop.classList.remove("over")));
drop.addEventListener("drop", (e) => { e.preventDefault(); useFile(e.dataTransfer.files[0]); });
$("#rerun").addEventListener("click", () => { if (state.scene) submit(state.scene, state.sceneName); });
$("#show-heatmap").addEventListener("change", () => select(state.selected));
$("#all-categories").addEventListener("click", () => {
  document.querySelectorAll("#category-list input").forEach((b) => { b.checked = true; });
});
$("#no-categories").addEventListener("click", () => {
  document.querySelectorAll("#category-list input").forEach((b) => { b.checked = false; });
});

Promise.all([loadCategories(), loadExamples()]).then(() => {
  if (document.body.dataset.state === "idle") document.body.dataset.ready = "yes";
});
