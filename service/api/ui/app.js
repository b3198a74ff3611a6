// The try-it page: lists the models, sends the chosen image to the public HTTP API and shows the answer.
// Plain browser JavaScript, no build step and no library. Every URL is relative to this page
// (<prefix>/ui/), so it works under any route prefix. The API key, when one is typed, goes in the
// Authorization header and is kept in this tab's sessionStorage only.
"use strict";

const API = "../v1/models";
const KEY_STORAGE = "segserve.apiKey";
const $ = (id) => document.getElementById(id);

const state = { models: new Map(), file: null, imageUrl: null, downloadUrl: null, sequence: 0 };

function setState(name, message, isError = false) {
  document.body.dataset.state = name;
  const status = $("status");
  status.textContent = message;
  status.classList.toggle("error", isError);
}

function apiKey() {
  return $("api-key").value.trim();
}

function headers(extra = {}) {
  const key = apiKey();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

// The service answers errors as {"error": {"code", "message", "request_id"}}; anything else (a proxy's
// page, a network failure) is described as well as it can be.
async function errorMessage(response) {
  let detail = response.statusText;
  try {
    const body = await response.json();
    if (body.error) {
      detail = `${body.error.code}: ${body.error.message}` +
        (body.error.request_id ? ` (request ${body.error.request_id})` : "");
    }
  } catch (_) { /* not JSON: keep the status text */ }
  const hint = response.status === 401
    ? " This service needs an API key: type it in the API key field and press Use key."
    : "";
  return `${response.status} ${detail}.${hint}`;
}

async function callApi(url, init = {}) {
  let response;
  try {
    response = await fetch(url, { ...init, headers: headers(init.headers), cache: "no-store" });
  } catch (error) {
    throw new Error(`could not reach the service: ${error.message}`);
  }
  if (!response.ok) throw new Error(await errorMessage(response));
  return response.json();
}

// --- models ------------------------------------------------------------------------------------------

async function loadModels() {
  setState("loading", "Loading the models…");
  const select = $("model");
  const previous = select.value;
  select.replaceChildren();
  select.disabled = true;
  state.models.clear();
  let body;
  try {
    body = await callApi(API);
  } catch (error) {
    setState("error", error.message, true);
    updateButton();
    return;
  }
  for (const model of body.models) {
    state.models.set(model.name, model);
    select.append(new Option(`${model.name} (${model.task})`, model.name));
  }
  if (state.models.has(previous)) select.value = previous;
  select.disabled = state.models.size === 0;
  modelChanged();
  setState("ready", state.models.size ? "Choose or drop an image." : "This service serves no model.");
}

function currentModel() {
  return state.models.get($("model").value);
}

function modelChanged() {
  const model = currentModel();
  $("model-info").textContent = model ? `${model.task}: ${model.description}` : "";
  // coco_panoptic is a panoptic model's format; the service refuses it for the others.
  const panopticOnly = $("format").querySelector('option[value="coco_panoptic"]');
  panopticOnly.disabled = !model || model.task !== "panoptic";
  if (panopticOnly.disabled && $("format").value === "coco_panoptic") $("format").value = "png";
  updateButton();
}

function updateButton() {
  $("segment").disabled = !(currentModel() && state.file);
}

// --- the image ---------------------------------------------------------------------------------------

function chooseFile(file) {
  if (!file) return;
  state.file = file;
  if (state.imageUrl) URL.revokeObjectURL(state.imageUrl);
  state.imageUrl = URL.createObjectURL(file);
  $("drop").querySelector("span").textContent = `${file.name} (${formatBytes(file.size)}): drop or choose another`;
  updateButton();
  segment();
}

async function segment() {
  const model = currentModel();
  if (!model || !state.file) return;
  const sequence = ++state.sequence; // an answer that arrives after a newer request was sent is dropped
  const format = $("format").value;
  setState("busy", `Segmenting with ${model.name}…`);
  $("segment").disabled = true;
  const url = `${API}/${encodeURIComponent(model.name)}/segment?format=${encodeURIComponent(format)}&overlay=true`;
  try {
    const answer = await callApi(url, {
      method: "POST",
      body: state.file,
      headers: { "Content-Type": state.file.type || "application/octet-stream" },
    });
    if (sequence !== state.sequence) return;
    await showAnswer(answer, model);
    setState("done", `Done: ${answer.model}, ${answer.width}×${answer.height}, ${answer.timings_ms.total} ms on the server.`);
  } catch (error) {
    if (sequence !== state.sequence) return;
    setState("error", error.message, true);
  } finally {
    if (sequence === state.sequence) updateButton();
  }
}

// --- the answer --------------------------------------------------------------------------------------

async function showAnswer(answer, model) {
  const colors = new Map(model.classes.map((c) => [c.id, c.color]));
  const names = new Map(model.classes.map((c) => [c.id, c.name]));
  $("input-image").src = state.imageUrl;
  const overlay = $("overlay");
  overlay.hidden = !answer.overlay;
  if (answer.overlay) {
    overlay.src = `data:${answer.overlay.media_type};base64,${answer.overlay.data}`;
    await overlay.decode().catch(() => {});
  }
  fillLegend(answer, colors);
  $("segments-box").hidden = !answer.segments;
  if (answer.segments) fillSegments(answer.segments, names);
  $("instances-box").hidden = !answer.instances;
  if (answer.instances) fillInstances(answer.instances, names);
  fillTimings(answer.timings_ms);
  $("answer-info").textContent =
    `request ${answer.request_id} · batch of ${answer.batch_size} · mask: ${describeMask(answer.mask)}`;
  if (state.downloadUrl) URL.revokeObjectURL(state.downloadUrl);
  state.downloadUrl = URL.createObjectURL(new Blob([JSON.stringify(answer)], { type: "application/json" }));
  $("download").href = state.downloadUrl;
  $("result").hidden = false;
  $("result").dataset.requestId = answer.request_id;
}

function row(cells, data = {}) {
  const tr = document.createElement("tr");
  for (const [key, value] of Object.entries(data)) tr.dataset[key] = value;
  for (const cell of cells) {
    const td = document.createElement("td");
    if (cell instanceof Node) td.append(cell);
    else td.textContent = cell;
    if (typeof cell === "number") td.className = "num";
    tr.append(td);
  }
  return tr;
}

function swatch(color) {
  const span = document.createElement("span");
  span.className = "swatch";
  if (color) span.style.backgroundColor = `rgb(${color.join(",")})`;
  return span;
}

function fillLegend(answer, colors) {
  const total = answer.width * answer.height;
  const rows = answer.classes.map((c) => {
    const tr = row([swatch(colors.get(c.id)), c.id, c.name, c.pixels, ((100 * c.pixels) / total).toFixed(1)],
      { classId: c.id, pixels: c.pixels });
    tr.cells[3].classList.add("pixels");
    return tr;
  });
  $("legend").tBodies[0].replaceChildren(...rows);
}

function bbox(box) {
  return `[${box.map((v) => Math.round(v)).join(", ")}]`;
}

function fillSegments(segments, names) {
  const rows = segments.map((s) => row(
    [s.id, names.get(s.category_id) ?? s.category_id, s.isthing ? "thing" : "stuff", s.area,
      s.score.toFixed(2), bbox(s.bbox)],
    { segmentId: s.id, categoryId: s.category_id }));
  $("segments").tBodies[0].replaceChildren(...rows);
}

function fillInstances(instances, names) {
  const rows = instances.map((i) => row(
    [i.id, i.name ?? names.get(i.category_id) ?? i.category_id, i.score.toFixed(2), i.area, bbox(i.bbox)],
    { instanceId: i.id, categoryId: i.category_id }));
  $("instances").tBodies[0].replaceChildren(...rows);
}

function fillTimings(timings) {
  const rows = Object.entries(timings).map(([stage, ms]) => row([stage, ms.toFixed(1)], { stage }));
  $("timings").tBodies[0].replaceChildren(...rows);
}

function describeMask(mask) {
  if (mask.data !== undefined) {
    const bytes = Math.floor((mask.data.length * 3) / 4);
    const shape = mask.shape ? ` ${mask.dtype} [${mask.shape.join(", ")}]` : "";
    return `${mask.format}${shape}, ${formatBytes(bytes)}`;
  }
  if (mask.rle) return `${mask.format}, ${mask.rle.length} RLE entries`;
  if (mask.polygons) return `${mask.format}, ${mask.polygons.length} entries`;
  return mask.format;
}

function formatBytes(n) {
  return n < 1024 ? `${n} B` : n < 1048576 ? `${(n / 1024).toFixed(1)} KiB` : `${(n / 1048576).toFixed(1)} MiB`;
}

// --- wiring ------------------------------------------------------------------------------------------

function useKey() {
  const key = apiKey();
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
  loadModels();
}

function init() {
  $("api-key").value = sessionStorage.getItem(KEY_STORAGE) ?? "";
  $("use-key").addEventListener("click", useKey);
  $("api-key").addEventListener("keydown", (e) => {
    if (e.key === "Enter") { e.preventDefault(); useKey(); }
  });
  $("forget-key").addEventListener("click", () => {
    $("api-key").value = "";
    useKey();
  });
  $("model").addEventListener("change", () => { modelChanged(); segment(); });
  $("format").addEventListener("change", () => segment());
  $("controls").addEventListener("submit", (e) => { e.preventDefault(); segment(); });
  $("file").addEventListener("change", (e) => chooseFile(e.target.files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    chooseFile(e.dataTransfer.files[0]);
  });
  loadModels();
}

init();
