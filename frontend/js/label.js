// The labeling page: one leased cell at a time, labeled by keyboard, mouse or touch.
//
// Speed: the API leases one cell per annotator, so the next cell is only known once the
// current label is stored: the label's request leases it (`lease_next`), so each cell costs
// one request. While a cell is shown, the page reads the queue and fetches the images (and
// maps) of the next free cells into the blob cache; the leased cell is usually one of them
// and is drawn from memory. A label is never dropped: it is kept in sessionStorage until the
// server confirms it, retried on network errors, and a refusal is shown with the server's
// reason while the cell stays on screen.

import { api, ApiError, blobUrl, requireSession, signOut, withRetry } from "./api.js";
import { barChart, progressBar } from "./charts.js";
import { $, h, percent, replace } from "./dom.js";
import { CellViewer, GAINS, brighten } from "./viewer.js";

const session = requireSession();
const projectId = Number(new URLSearchParams(location.search).get("project"));
const base = `/api/projects/${projectId}`;
const outboxKey = `xal.outbox.${projectId}`;
const POLL_MS = 2000;
const MAP_METHODS = [
  { method: "deeptaylor", title: "DeepTaylor" },
  { method: "lrp-epsilon", title: "LRP-ε" },
];

const state = {
  project: null,
  classes: [],
  cell: null, // the leased cell on screen
  shownAt: 0,
  busy: false, // a label, undo or skip is on its way: keys wait for it
  reveal: null, // {cell, className} after a first answer in "label first, then reveal"
  history: [], // cells labeled in this page, for undo
  maps: new Map(), // image_id -> Promise<[{method, url}]>
  roundSummaries: new Map(), // round number -> Promise<selection summary>
  overlayMethod: null,
  pollTimer: null,
  progress: null,
};

const viewer = new CellViewer($("#stage"), { onChange: showViewerState });

// ---------------------------------------------------------------- start

init().catch((error) => toast(error.detail || error.message, { sticky: true }));

async function init() {
  if (!projectId) {
    location.href = "index.html";
    return;
  }
  $("#who").textContent = `${session.username} · ${session.role}`;
  $("#sign-out").addEventListener("click", signOut);
  if (session.role === "admin") {
    const link = $("#dashboard-link");
    link.href = `admin.html?project=${projectId}`;
    link.hidden = false;
  }
  state.project = await withRetry(() => api(base));
  state.classes = [...state.project.classes].sort((a, b) => a.position - b.position);
  document.title = `${state.project.name} · Label · XAL`;
  $("#project-name").textContent = state.project.name;
  buildControls();
  await flushOutbox();
  refreshProgress();
  await advance();
}

function buildControls() {
  replace($("#class-buttons"), state.classes.map((cls) =>
    h("button", {
      type: "button", class: "class-button", dataset: { className: cls.name, key: cls.key },
      "aria-keyshortcuts": cls.key, onclick: () => chooseClass(cls.name),
    }, h("kbd", {}, cls.key.toUpperCase()), h("span", {}, cls.name))));
  $("#undo").addEventListener("click", undo);
  $("#skip").addEventListener("click", () => skip("skip"));
  $("#unsure").addEventListener("click", () => skip("unsure"));
  $("#zoom-in").addEventListener("click", () => viewer.zoomBy(1));
  $("#zoom-out").addEventListener("click", () => viewer.zoomBy(-1));
  $("#gain").max = String(GAINS.length - 1);
  $("#gain").value = String(viewer.gainIndex);
  $("#gain").addEventListener("input", (event) => viewer.setGainIndex(Number(event.target.value)));
  $("#gain-auto").addEventListener("click", () => viewer.setAuto());
  $("#smooth").addEventListener("change", (event) => viewer.setSmooth(event.target.checked));
  $("#overlay-toggle").addEventListener("click", cycleOverlay);
  $("#reveal-keep").addEventListener("click", () => keepRevealedAnswer());
  $("#help-button").addEventListener("click", toggleHelp);
  buildHelp();
  document.addEventListener("keydown", onKey);
}

// ---------------------------------------------------------------- the queue

/** Asks for the next cell (the same one while our lease holds) and shows it, or waits. */
async function advance() {
  clearTimeout(state.pollTimer);
  let next;
  try {
    next = await withRetry(() => api(`${base}/queue/next`, { method: "POST" }), { onRetry: connectionTrouble });
  } catch (error) {
    if (error instanceof ApiError && error.status === 409) return showStopped(error.detail);
    throw error;
  }
  connectionBack();
  await showNext(next);
}

/** Shows the cell queue/next answered (or that a label leased with it), or waits. */
async function showNext(next) {
  if (!next.cell) return showWaiting(next);
  await showCell(next.cell);
}

async function showCell(cell, { note = "" } = {}) {
  hideWaiting();
  state.cell = null; // keys wait until the cell is on screen
  state.reveal = null;
  $("#reveal-bar").hidden = true;
  document.body.classList.toggle("hints-hidden", Boolean(cell.hints_hidden));
  $("#note").value = "";
  markChosen(null);
  viewer.setOverlay(null); // the next cell's own map comes with renderMaps
  try {
    await viewer.show(cell.image_url);
  } catch {
    // the viewer says why; the annotator can still skip the cell
  }
  if (cell.round !== state.shownRound) refreshProgress(); // a new step: new step size
  state.shownRound = cell.round;
  state.cell = cell;
  state.shownAt = performance.now();
  $("#stage").dataset.imageId = String(cell.image_id);
  setLabelingEnabled(true);
  status(note);
  renderWhy(cell.details, cell);
  renderMaps(cell);
  prefetchNextCells(cell);
}

function showWaiting(next) {
  state.cell = null;
  viewer.clear();
  delete $("#stage").dataset.imageId;
  setLabelingEnabled(false);
  replace($("#why"), h("p", { class: "muted" }, "Waiting for the next cell."));
  replace($("#maps"), h("p", { class: "map-placeholder" }, "Waiting for the next cell."));
  markChosen(null);
  const computing = ["queued", "running"].includes(next.round_state);
  $("#waiting-title").textContent = computing ? "The next round is being computed" : "No cell for you right now";
  $("#waiting-message").textContent = computing
    ? "This step is done. The model is being retrained on every label so far; then it picks the next cells."
    : next.message;
  $("#waiting-hint").hidden = false;
  $("#waiting").hidden = false;
  $("#waiting").dataset.state = computing ? "computing" : "empty";
  refreshProgress();
  state.pollTimer = setTimeout(() => advance().catch(reportError), POLL_MS);
}

function showStopped(detail) {
  state.cell = null;
  viewer.clear();
  setLabelingEnabled(false);
  const finished = state.project && /budget/.test(detail);
  $("#waiting-title").textContent = finished ? "The budget is spent — thank you" : "Labeling has not started";
  $("#waiting-message").textContent = detail;
  $("#waiting-hint").hidden = finished;
  $("#waiting").hidden = false;
  $("#waiting").dataset.state = finished ? "finished" : "stopped";
  replace($("#waiting-progress"));
  if (finished) $("#waiting-message").append(" ", h("a", { href: "index.html" }, "Back to the projects"));
  const why = finished ? "No more cells: the project is finished." : "No cell yet.";
  replace($("#why"), h("p", { class: "muted" }, why));
  replace($("#maps"), h("p", { class: "map-placeholder" }, why));
  markChosen(null);
  refreshProgress();
  if (!finished) state.pollTimer = setTimeout(() => advance().catch(reportError), 3 * POLL_MS);
}

function hideWaiting() {
  $("#waiting").hidden = true;
  delete $("#waiting").dataset.state;
}

function setLabelingEnabled(enabled) {
  for (const button of document.querySelectorAll(".class-button, #skip, #unsure")) button.disabled = !enabled;
}

/** Fetches the images and maps of the cells queue/next will most likely lease next. */
async function prefetchNextCells(current) {
  try {
    const queue = await api(`${base}/queue`);
    const upcoming = queue.filter((entry) => entry.status === "queued" && entry.image_id !== current.image_id).slice(0, 2);
    for (const entry of upcoming) {
      blobUrl(`${base}/images/${entry.image_id}/file`).catch(() => {});
      mapsOf(entry.image_id).catch(() => {});
    }
  } catch {
    // prefetching is an optimisation only
  }
}

// ---------------------------------------------------------------- labels

function chooseClass(className) {
  if (state.reveal) return changeRevealedAnswer(className);
  return submitLabel(className);
}

async function submitLabel(className) {
  const cell = state.cell;
  if (!cell || state.busy) return;
  state.busy = true;
  markChosen(className);
  const body = {
    image_id: cell.image_id,
    class_name: className,
    duration_ms: Math.round(performance.now() - state.shownAt),
    lease_next: !cell.hints_hidden, // the answer leases the next cell: one request per cell
  };
  sessionStorage.setItem(outboxKey, JSON.stringify(body));
  const slow = setTimeout(() => status(`Saving “${className}”…`), 300);
  try {
    const stored = await postLabel(body);
    state.history.push({ cell, className });
    bumpProgress(className);
    if (cell.hints_hidden) {
      startReveal(cell, className, stored.hints || {});
    } else if (stored.next) {
      await showNext(stored.next);
    } else {
      await advance(); // stored, but no next cell came with it: queue/next says why
    }
  } catch (error) {
    reportRefusal(error, `The label “${className}” was not saved`);
    markChosen(null);
  } finally {
    clearTimeout(slow);
    state.busy = false;
  }
}

/** POSTs a label until the server answers; clears the outbox once it has. */
async function postLabel(body) {
  try {
    const stored = await withRetry(() => api(`${base}/labels`, { method: "POST", json: body }), { onRetry: connectionTrouble });
    connectionBack();
    return stored;
  } finally {
    // reached on success and on a refusal (4xx): either way the server has answered
    sessionStorage.removeItem(outboxKey);
  }
}

/** A label typed before a reload or a lost connection, not yet confirmed: send it first. */
async function flushOutbox() {
  const pending = sessionStorage.getItem(outboxKey);
  if (!pending) return;
  try {
    await postLabel(JSON.parse(pending));
    toast("A label from before the page was reloaded has been saved.");
  } catch (error) {
    reportRefusal(error, "A label from before the page was reloaded was not saved");
  }
}

async function undo() {
  if (state.busy) return;
  state.busy = true;
  try {
    const undone = await withRetry(() => api(`${base}/labels/undo`, { method: "POST" }), { onRetry: connectionTrouble });
    connectionBack();
    bumpProgress(undone.class_name, -1);
    const index = state.history.findLastIndex((entry) => entry.cell.image_id === undone.image_id);
    let cell = index >= 0 ? state.history.splice(index, 1)[0].cell : null;
    if (!cell) cell = await cellFromQueue(undone.image_id);
    clearTimeout(state.pollTimer);
    await showCell(cell, { note: `Undone: this cell was labeled “${undone.class_name}”. Label it again.` });
  } catch (error) {
    reportRefusal(error, "Nothing was undone");
  } finally {
    state.busy = false;
  }
}

/** The undone cell as queue/next would give it (after a reload the page has no copy). */
async function cellFromQueue(imageId) {
  const entry = (await api(`${base}/queue`)).find((item) => item.image_id === imageId);
  return {
    image_id: imageId, image_url: `${base}/images/${imageId}/file`, round: entry?.round, rank: entry?.rank,
    score: entry?.score, details: entry?.details || {}, hints_hidden: Boolean(state.project.reveal_after_label),
  };
}

async function skip(reason) {
  const cell = state.cell;
  if (!cell || state.busy) return;
  state.busy = true;
  try {
    await withRetry(() => api(`${base}/queue/skip`, {
      method: "POST", json: { image_id: cell.image_id, reason, note: $("#note").value.trim() },
    }), { onRetry: connectionTrouble });
    connectionBack();
    toast(reason === "skip" ? "Skipped: the cell went back to the queue." : "Marked unsure: the cell went back to the queue with your note.");
    await advance();
  } catch (error) {
    reportRefusal(error, reason === "skip" ? "The cell was not skipped" : "The cell was not marked unsure");
  } finally {
    state.busy = false;
  }
}

// ---------------------------------------------------------------- label first, then reveal

function startReveal(cell, className, hints) {
  state.reveal = { cell, className };
  document.body.classList.remove("hints-hidden");
  renderWhy(hints, cell);
  renderMaps(cell);
  $("#reveal-text").textContent = `Your answer: “${className}”. The model's view is now shown: keep it, or press another class to change it (both answers are kept).`;
  $("#reveal-bar").hidden = false;
  $("#reveal-keep").focus({ preventScroll: true });
}

async function keepRevealedAnswer() {
  if (!state.reveal || state.busy) return;
  state.busy = true;
  try {
    state.reveal = null;
    $("#reveal-bar").hidden = true;
    await advance();
  } finally {
    state.busy = false;
  }
}

async function changeRevealedAnswer(className) {
  const { cell, className: first } = state.reveal;
  if (className === first) return keepRevealedAnswer();
  if (state.busy) return;
  state.busy = true;
  markChosen(className);
  const body = { image_id: cell.image_id, class_name: className, after_reveal: true };
  sessionStorage.setItem(outboxKey, JSON.stringify(body));
  try {
    await postLabel(body);
    bumpProgress(first, -1);
    bumpProgress(className);
    state.history.at(-1).className = className;
    state.reveal = null;
    $("#reveal-bar").hidden = true;
    await advance();
  } catch (error) {
    reportRefusal(error, `The change to “${className}” was not saved`);
  } finally {
    state.busy = false;
  }
}

// ---------------------------------------------------------------- why this cell

function className(index) {
  if (typeof index === "string") return index;
  return state.classes[index]?.name ?? `class ${index}`;
}

function renderWhy(details, cell) {
  const why = $("#why");
  if (cell.hints_hidden && !state.reveal) {
    replace(why, h("p", { class: "hidden-hints" }, "Hints are hidden until you have labeled this cell."));
    return;
  }
  details = details || {};
  const strategy = details.strategy || (cell.round === 0 ? "random" : state.project.strategy);
  const parts = [
    h("p", { class: "facts-line" },
      "Rank ", h("strong", { id: "why-rank" }, cell.rank === undefined ? "–" : `#${cell.rank + 1}`),
      " · score ", h("strong", { id: "why-score" }, typeof cell.score === "number" ? cell.score.toFixed(3) : "–"),
      ` · ${strategy} · round ${cell.round ?? "–"}`),
    scoreMeaning(strategy, cell.score, details),
  ];
  if (cell.reserve) {
    parts.push(h("p", { class: "muted", id: "why-reserve" },
      "Reserve cell: ranked just after this round's step; you label it while the next round is computed."));
  }
  const distances = Array.isArray(details.distances) ? details.distances : null;
  const summary = { loaded: null };
  const names = () => centreNames(details, summary.loaded);
  if (Array.isArray(details.nearest) && details.nearest.length) {
    const medoids = h("div", { class: "medoids", id: "why-nearest" });
    const draw = () => replace(medoids, details.nearest.slice(0, 3).map((near, i) => medoidFigure(near, names()[near.centre], i === 0)));
    draw();
    parts.push(h("h3", {}, "Nearest labeled examples — compare"),
      h("p", { class: "muted small" }, "The labeled cells whose relevance (what the model looked at) is closest to this cell's, nearest first: the cell and its DeepTaylor map."),
      medoids);
    if (distances) {
      roundSummary(cell.round).then((loaded) => {
        summary.loaded = loaded;
        if (medoids.isConnected) draw();
      });
    }
  }
  if (Array.isArray(details.probabilities)) {
    const predicted = details.predicted === undefined ? null : className(details.predicted);
    parts.push(h("h3", {}, "Model's class probabilities"),
      barChart(details.probabilities.map((p, i) => ({ label: className(i), value: p, highlight: className(i) === predicted })),
        { max: 1, format: (v) => percent(v, 0), title: "Class probabilities" }));
  }
  if (distances) {
    const nearest = Math.min(...distances);
    const farthest = Math.max(...distances);
    const chart = () => barChart(distances.map((d, i) => ({ label: names()[i], value: d, highlight: d === nearest })),
      { min: nearest, max: farthest, format: (v) => v.toFixed(3), title: "Distance to each centre in relevance space, from the nearest to the farthest" });
    const holder = h("div", { id: "why-distances" }, chart());
    roundSummary(cell.round).then((loaded) => { summary.loaded = loaded; if (holder.isConnected) replace(holder, chart()); });
    parts.push(h("h3", {}, "Distance to each centre"),
      h("p", { class: "muted small" }, "How far this cell's relevance lies from each centre of the labeled examples. " +
        `The bars start at the nearest centre (${nearest.toFixed(3)}) and end at the farthest (${farthest.toFixed(3)}), ` +
        `so they show how the distances differ: the farthest is ${percent((farthest - nearest) / (nearest || 1), 0)} farther than the nearest.`),
      holder);
  }
  const technical = technicalDetails(details);
  if (technical) parts.push(technical);
  if (!details.probabilities && !distances && !details.phase && strategy !== "random" && strategy !== "cluster-spread") {
    parts.push(h("p", { class: "muted" }, "This strategy gives no per-cell hints."));
  }
  replace(why, parts);
}

const ln = Math.log;

/** What the score says, in words, and where it lies between its least and most informative
 *  values (worker/ml/ranking.py and worker/ml/xal.py define the scores). */
function scoreMeaning(strategy, score, details) {
  const n = state.classes.length;
  const k = Array.isArray(details.distances) ? details.distances.length : 0;
  const has = typeof score === "number";
  const box = (...children) => h("div", { class: "score-meaning", id: "why-score-meaning" }, ...children);
  const scale = (label, fraction, text, words) => box(
    progressBar(label, Math.round(1000 * Math.max(0, Math.min(1, fraction))), 1000, { text }),
    h("p", { class: "small" }, words));
  const share = (fraction) => `${(100 * fraction).toFixed(1)}%`;
  const probabilities = Array.isArray(details.probabilities) ? details.probabilities : null;
  const top2 = probabilities ? [...probabilities.keys()].sort((a, b) => probabilities[b] - probabilities[a]).slice(0, 2) : [];
  if (strategy === "random" || (!has && !details.phase)) {
    return box(h("p", { class: "small" }, strategy === "random"
      ? "Picked at random: there is no model yet (or the project asks for random cells). The score is the random draw and says nothing about the cell."
      : "No score for this cell."));
  }
  if (strategy === "cluster-spread") {
    return box(h("p", { class: "small" }, `Picked to spread the first cells over the pool's clusters${details.cluster === undefined ? "" : ` (this one from cluster ${details.cluster + 1})`}. There is no model yet; the score only orders the picks.`));
  }
  if (details.phase === "coverage") {
    return box(h("p", { class: "small" }, `Picked to cover the pool: the most typical cell of a group of ${details.cluster_size ?? "similar"} cells ` +
      `${details.cluster_covered ? "that already has labeled cells" : "that no labeled cell represents yet"}. The score only orders the picks.`));
  }
  const spread = details.phase === "uncertainty" ? " Among them, the picks are spread over the pool." : "";
  if (strategy === "margin" || (details.phase === "uncertainty" && typeof details.margin === "number")) {
    const value = details.phase === "uncertainty" ? details.margin : score;
    const names = top2.map((i) => `${className(i)} ${percent(probabilities[i], 0)}`).join(" and ");
    return scale("How torn the model is between two classes", value, `${share(value)} of a tie`,
      `${names ? `Its two likeliest classes, ${names}, are` : "Its two likeliest classes are"} ${percent(1 - value, 0)} apart; 100% means a tie. The closest calls are picked first.${spread}`);
  }
  if (strategy === "entropy" || details.phase === "uncertainty") {
    const value = details.phase === "uncertainty" ? details.entropy : score;
    const most = ln(n);
    return scale("How unsure the model is", value / most, `${share(value / most)} of the most unsure possible`,
      `Entropy ${value.toFixed(3)} of at most ln ${n} = ${most.toFixed(3)}, when all ${n} classes are equally likely; 0 when the model is sure of one class. ` +
      `The most unsure cells are picked first.${spread}`);
  }
  if (strategy === "least_confidence") {
    const most = 1 - 1 / n;
    return scale("How unsure the model is", score / most, `${share(score / most)} of the most unsure possible`,
      `The model gives its likeliest class ${percent(1 - score, 0)}; the least it can give is 1/${n} (${percent(1 / n, 0)}), when all ${n} classes are equally likely. Cells whose likeliest class is least likely are picked first.`);
  }
  if (strategy === "xal-entropy" && k) {
    const most = ln(k);
    return scale("How evenly the cell lies between the centres", score / most, `${share(score / most)} of perfectly even`,
      `Compared by what the model looked at (relevance), this cell is about as far from each of the ${k} centres of the labeled examples: ` +
      `score ${score.toFixed(3)} of at most ln ${k} = ${most.toFixed(3)}, reached when it is equally far from all of them. ` +
      "Cells that resemble no labeled group more than another are picked first.");
  }
  if (strategy === "xal-margin" && k) {
    return scale("How close the two nearest centres are to a tie", 1 + score, `${share(1 + score)} of a tie`,
      `The two nearest centres of the labeled examples are nearly as far from this cell as each other (score ${score.toFixed(3)}; 0 is a tie, −1 the clearest case). The closest calls are picked first.`);
  }
  if (strategy === "xal-least" && k) {
    return scale("How far the cell is from even its nearest centre", score * k, `${share(score * k)} of the most possible`,
      `Its nearest centre holds ${percent(score, 1)} of its summed distances to the ${k} centres; at most 1/${k} (${percent(1 / k, 1)}), when every centre is as far. Cells near no centre are picked first.`);
  }
  return box(h("p", { class: "small" }, `Picked by ${strategy}; higher scores are picked first.`));
}

/** The strategy's settings and the network's channels, collapsed: for whoever tunes the method. */
function technicalDetails(details) {
  const rows = [];
  if (details.relevance_method) rows.push(["Relevance", details.relevance_method === "deeptaylor" ? "DeepTaylor" : details.relevance_method]);
  if (details.representation) {
    rows.push(["Compared by", details.representation === "concept"
      ? "relevance per feature channel of the network's last block (concept)" : "relevance per pixel (pixel)"]);
  }
  if (details.centres) {
    rows.push(["Centres", details.centres === "classes"
      ? "one per class: the most central labeled cell of each class"
      : "groups of the labeled cells by relevance, each represented by its most central cell"]);
  }
  if (Array.isArray(details.top_channels) && details.top_channels.length) {
    rows.push(["Channels that carried the decision", `${details.top_channels.map((c) => `channel ${c.channel} (${percent(c.share, 0)} of the relevance)`).join(", ")}. ` +
      "Internal feature detectors of the network; their numbers have no meaning of their own."]);
  }
  if (!rows.length) return null;
  return h("details", { class: "technical", id: "why-technical" }, h("summary", {}, "Technical details"),
    h("dl", { class: "facts small" }, rows.map(([name, value]) => [h("dt", {}, name), h("dd", {}, value)])));
}

/** Each centre's name: the class of its medoid (the labeled cell at its centre), from the
 *  round's summary (every centre) or else from the cell's nearest centres; centres that share
 *  a class are told apart by number ("Speckled, centre 2"), others by their class alone. */
function centreNames(details, summary) {
  const known = new Map();
  for (const m of summary?.centre_medoids || []) known.set(m.centre, m.class_name ?? className(m.class));
  for (const n of details.nearest || []) if (!known.has(n.centre)) known.set(n.centre, n.class_name ?? className(n.class));
  const k = Math.max(details.distances?.length || 0, ...[...known.keys()].map((c) => c + 1));
  const total = new Map();
  for (const name of known.values()) total.set(name, (total.get(name) || 0) + 1);
  const seen = new Map();
  return Array.from({ length: k }, (_, i) => {
    if (!known.has(i)) return `centre ${i + 1}`;
    const name = known.get(i);
    if (total.get(name) === 1) return name;
    seen.set(name, (seen.get(name) || 0) + 1);
    return `${name}, centre ${seen.get(name)}`;
  });
}

/** The round's selection summary (centres and their medoids), fetched once per round. */
function roundSummary(number) {
  if (!state.roundSummaries.has(number)) {
    state.roundSummaries.set(number, api(`${base}/rounds/${number}`).then((r) => r.selection_summary || {}, () => ({})));
  }
  return state.roundSummaries.get(number);
}

function medoidFigure(near, name, nearest) {
  name = name || near.class_name || className(near.class);
  const cellImg = h("img", { alt: `Labeled example ${name}` });
  const mapImg = h("img", { alt: `Its DeepTaylor map` });
  const figure = h("figure", { class: "medoid" },
    h("div", { class: "pair" }, cellImg, mapImg),
    h("figcaption", {}, h("strong", {}, name), ` · distance ${Number(near.distance).toFixed(3)}${nearest ? " (nearest)" : ""}`));
  blobUrl(`${base}/images/${near.image_id}/file`).then((url) => { cellImg.src = url; brighten(cellImg); }, () => {});
  mapsOf(near.image_id).then((maps) => {
    const map = maps.find((m) => m.method === "deeptaylor") || maps[0];
    if (map) mapImg.src = map.url; else mapImg.replaceWith(h("span", { class: "map-missing" }, "no map yet"));
  }, () => mapImg.remove());
  return figure;
}

// ---------------------------------------------------------------- relevance maps

/** The newest model's maps of an image: [{method, url}] (object URLs); [] until computed. */
function mapsOf(imageId) {
  if (!state.maps.has(imageId)) {
    const promise = api(`${base}/images/${imageId}/maps`)
      .catch((error) => { if (error.status === 404) return []; throw error; })
      .then(async (rows) => {
        const newest = Math.max(-1, ...rows.map((r) => r.model_version_id ?? -1));
        const latest = rows.filter((r) => (r.model_version_id ?? -1) === newest);
        return Promise.all(latest.map(async (r) => ({ method: r.method, url: await blobUrl(r.png_url) })));
      });
    promise.catch(() => state.maps.delete(imageId));
    state.maps.set(imageId, promise);
  }
  return state.maps.get(imageId);
}

async function renderMaps(cell) {
  const box = $("#maps");
  if (cell.hints_hidden && !state.reveal) {
    replace(box, h("p", { class: "hidden-hints" }, "Maps are hidden until you have labeled this cell."));
    viewer.setOverlay(null);
    return;
  }
  let maps = [];
  try {
    maps = await mapsOf(cell.image_id);
  } catch {
    maps = [];
  }
  if (state.cell?.image_id !== cell.image_id && state.reveal?.cell.image_id !== cell.image_id) return;
  state.currentMaps = maps;
  if (!maps.length) {
    replace(box, h("p", { class: "map-placeholder" }, "Maps are computed with the next model."));
    viewer.setOverlay(null);
    showViewerState(viewer);
    return;
  }
  replace(box, MAP_METHODS.map(({ method, title }) => {
    const map = maps.find((m) => m.method === method);
    return h("figure", { class: "map" },
      map ? h("img", { src: map.url, alt: `${title} relevance map of this cell` }) : h("div", { class: "map-missing" }, "not computed"),
      h("figcaption", {}, title));
  }));
  applyOverlay();
}

function cycleOverlay() {
  const available = MAP_METHODS.map((m) => m.method).filter((m) => state.currentMaps?.some((x) => x.method === m));
  const order = [null, ...available];
  state.overlayMethod = order[(order.indexOf(state.overlayMethod) + 1) % order.length] ?? null;
  if (!available.length) toast("No relevance map for this cell yet.");
  applyOverlay();
}

function applyOverlay() {
  const map = state.overlayMethod && state.currentMaps?.find((m) => m.method === state.overlayMethod);
  const hidden = state.cell?.hints_hidden && !state.reveal;
  viewer.setOverlay(map && !hidden ? map.url : null);
}

function showViewerState(v) {
  $("#zoom-readout").textContent = v.zoom === 1 ? "fit" : `×${v.zoom}`;
  const gainText = v.auto ? `auto ${v.levels.low}–${v.levels.high}` : `×${v.gain}`;
  $("#gain-readout").textContent = gainText;
  $("#gain-readout").title = v.auto
    ? `Display range: intensities ${v.levels.low} to ${v.levels.high} (of 255) shown black to white`
    : `Gain ×${v.gain}: intensities multiplied by ${v.gain} (×1 = as acquired)`;
  if (!v.auto) $("#gain").value = String(v.gainIndex);
  $("#gain").setAttribute("aria-valuetext", gainText);
  $("#gain-auto").setAttribute("aria-pressed", String(v.auto));
  const title = MAP_METHODS.find((m) => m.method === state.overlayMethod)?.title;
  const button = $("#overlay-toggle");
  replace(button, `Overlay: ${v.overlayOn && title ? title : "off"} `, h("kbd", {}, "O"));
  button.setAttribute("aria-pressed", String(v.overlayOn));
}

// ---------------------------------------------------------------- progress

async function refreshProgress() {
  try {
    state.progress = await api(`${base}/progress`);
    renderProgress();
    renderRoundProgress();
  } catch {
    // progress is informative; the queue goes on without it
  }
}

function bumpProgress(className, delta = 1) {
  const progress = state.progress;
  if (!progress) return;
  progress.labeled += delta;
  if (progress.step) progress.step.labeled += delta;
  if (className in progress.labels_per_class) progress.labels_per_class[className] += delta;
  renderProgress();
  clearTimeout(state.progressTimer);
  state.progressTimer = setTimeout(refreshProgress, 1500);
}

function renderProgress() {
  const p = state.progress;
  const bars = [];
  if (p.step) bars.push(progressBar(`Step ${p.step.round}`, p.step.labeled, p.step.size));
  if (p.budget) bars.push(progressBar("Budget", p.labeled, p.budget));
  replace($("#progress"), bars);
}

function renderRoundProgress() {
  const round = state.progress?.current_round;
  const box = $("#waiting-progress");
  if (!round || $("#waiting").hidden || !["queued", "running"].includes(round.state)) return replace(box);
  const phase = round.progress?.phase || round.state;
  const parts = [h("p", { class: "phase" }, `Round ${round.number}: ${phase}`)];
  if (round.progress?.max_epochs) {
    parts.push(progressBar("Training", round.progress.epoch ?? 0, round.progress.max_epochs,
      { text: `epoch ${round.progress.epoch ?? 0} of ${round.progress.max_epochs}` }));
  }
  replace(box, parts);
}

// ---------------------------------------------------------------- keyboard

function onKey(event) {
  const target = event.target;
  if ($("#help").open) return; // the dialog handles Escape itself
  if (target.matches("input[type=text], textarea, select")) {
    if (event.key === "Escape") target.blur();
    return;
  }
  if (event.altKey || event.metaKey) return;
  if (event.ctrlKey) {
    if (event.key.toLowerCase() === "z") { event.preventDefault(); undo(); }
    return;
  }
  const key = event.key;
  const cls = state.classes.find((c) => c.key.toLowerCase() === key.toLowerCase());
  if (cls) {
    event.preventDefault();
    if (state.cell || state.reveal) chooseClass(cls.name);
    return;
  }
  const actions = {
    "?": toggleHelp,
    z: undo, Z: undo,
    s: () => skip("skip"), S: () => skip("skip"),
    u: () => skip("unsure"), U: () => skip("unsure"),
    "+": () => viewer.zoomBy(1), "=": () => viewer.zoomBy(1),
    "-": () => viewer.zoomBy(-1), _: () => viewer.zoomBy(-1),
    "[": () => viewer.gainBy(-1), "]": () => viewer.gainBy(1),
    a: () => viewer.setAuto(), A: () => viewer.setAuto(),
    o: cycleOverlay, O: cycleOverlay,
    n: () => $("#note").focus(), N: () => $("#note").focus(),
    "0": () => viewer.resetZoom(),
  };
  if (key === "Enter" && state.reveal && !target.matches("button")) {
    event.preventDefault();
    keepRevealedAnswer();
    return;
  }
  if (actions[key]) {
    event.preventDefault();
    actions[key]();
  }
}

function buildHelp() {
  const rows = [
    ...state.classes.map((c) => [c.key.toUpperCase(), `label as ${c.name}`]),
    ["Z or Ctrl+Z", "undo your last label"],
    ["S", "skip: the cell goes back to the queue"],
    ["U", "unsure: back to the queue with your note"],
    ["N", "write a note (Esc leaves the field)"],
    ["+ / −", "zoom in / out (0: fit); drag to pan"],
    ["[ / ]", "less / more contrast (gain)"],
    ["A", "auto contrast: this cell's own range, black to white (the default)"],
    ["O", "overlay: off → DeepTaylor → LRP-ε"],
    ["Enter", "keep your answer after the reveal"],
    ["Tab", "move between controls; Enter or Space presses"],
    ["?", "this help"],
  ];
  replace($("#help-keys"), rows.map(([key, what]) => h("tr", {}, h("th", { scope: "row" }, h("kbd", {}, key)), h("td", {}, what))));
}

function toggleHelp() {
  const dialog = $("#help");
  if (dialog.open) dialog.close(); else dialog.showModal();
}

// ---------------------------------------------------------------- messages

function markChosen(name) {
  for (const button of document.querySelectorAll(".class-button")) {
    button.classList.toggle("chosen", button.dataset.className === name);
  }
}

function status(text) {
  $("#status").textContent = text || "";
}

let toastTimer = null;
function toast(text, { sticky = false, kind = "info" } = {}) {
  const box = $("#toast");
  clearTimeout(toastTimer);
  replace(box, h("span", {}, text), h("button", { type: "button", class: "ghost", "aria-label": "Dismiss", onclick: () => { box.hidden = true; } }, "×"));
  box.dataset.kind = kind;
  box.hidden = false;
  if (!sticky) toastTimer = setTimeout(() => { box.hidden = true; }, 3500);
}

function reportRefusal(error, what) {
  const reason = error instanceof ApiError ? error.detail : error.message;
  toast(`${what}: ${reason}`, { sticky: true, kind: "error" });
}

function reportError(error) {
  toast(error.detail || error.message, { sticky: true, kind: "error" });
}

function connectionTrouble() {
  status("The server cannot be reached — your label is kept and will be sent when it is back.");
  document.body.classList.add("offline");
}

function connectionBack() {
  if (document.body.classList.contains("offline")) status("");
  document.body.classList.remove("offline");
}
