// The admin dashboard: create and import projects, and watch the budget loop — budget
// used, rounds with their state and timings, accuracy per round, selection diagnostics,
// annotators. It polls the API every few seconds; parts are redrawn only when they change.

import { ApiError, api, blobUrl, download, requireSession, signOut } from "./api.js";
import { barChart, categoryColour, confusionTable, lineChart, progressBar, scatterChart } from "./charts.js";
import { $, h, percent, replace, seconds } from "./dom.js";
import { brighten } from "./viewer.js";
import { planImport } from "./imports.js";
import { zipFiles } from "./zip.js";

const session = requireSession();
const POLL_MS = 3000;
const POOL_PAGE = 48;

const state = {
  projectId: Number(new URLSearchParams(location.search).get("project")) || null,
  project: null,
  progress: null,
  rounds: [],
  stats: null,
  selectedRound: null, // number of the round whose confusion matrix is shown
  drawn: new Map(), // part -> JSON of what it was drawn from
  poolOffset: 0,
  clustering: null, // the pool clustering overview
};

init().catch(showActionError);

async function init() {
  $("#who").textContent = `${session.username} · ${session.role}`;
  $("#sign-out").addEventListener("click", signOut);
  if (session.role !== "admin") {
    replace($("#content"), h("p", { class: "card" }, "The dashboard is for admins. ", h("a", { href: "index.html" }, "Back to the projects")));
    return;
  }
  const projects = await api("/api/projects");
  replace($("#project-select"), h("option", { value: "" }, "Choose a project…"),
    projects.map((p) => h("option", { value: p.id, selected: p.id === state.projectId }, p.name)));
  $("#project-select").addEventListener("change", (event) => {
    location.href = event.target.value ? `admin.html?project=${event.target.value}` : "admin.html#new";
  });
  setUpCreateForm();
  window.addEventListener("hashchange", showNewProjectForm);
  if (!state.projectId || location.hash === "#new") showNewProjectForm();
  if (state.projectId) await openProject();
}

// ---------------------------------------------------------------- create

function showNewProjectForm() {
  const show = location.hash === "#new" || !state.projectId;
  $("#new-project").hidden = !show;
  if (show) $("#create-form [name=name]").focus();
}

// the strategies as the server describes them (GET /api/strategies): names, needs, options
async function loadStrategies() {
  state.strategies = (await api("/api/strategies")).filter((s) => s.selectable);
  for (const select of document.querySelectorAll("select.strategy-choice")) {
    replace(select, state.strategies.map((s) => h("option", { value: s.name, title: s.description, selected: s.default }, s.name)));
  }
  const list = $("#strategies");
  if (list) replace(list, state.strategies.map((s) => h("option", { value: s.name }, s.description)));
}

function readsRelevance(name) {
  return (state.strategies || []).some((s) => s.name === name && s.needs.includes("relevance"));
}

async function setUpCreateForm() {
  const form = $("#create-form");
  await loadStrategies();
  try {
    const models = await api("/api/models");
    form.elements.start_model_id.append(...models.map((m) => h("option", { value: m.id }, `${m.name} (${m.class_names.length} classes)`)));
  } catch {
    // no models to offer: train from scratch
  }
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const f = form.elements;
    const number = (input) => (input.value ? Number(input.value) : undefined);
    const classes = f.classes.value.split("\n").map((line) => line.trim()).filter(Boolean).map((line) => {
      const [name, key] = line.split("=").map((part) => part.trim());
      return key ? { name, key } : { name };
    });
    const strategy = f.strategy.value;
    const body = {
      name: f.name.value.trim(), description: f.description.value.trim(), classes, channel: f.channel.value,
      budget: number(f.budget), initial_size: number(f.initial_size), step_size: number(f.step_size), strategy,
      strategy_options: readsRelevance(strategy) ? { relevance_method: f.relevance_method.value, representation: f.representation.value, centres: f.centres.value } : {},
      model_settings: number(f.max_epochs) ? { max_epochs: number(f.max_epochs) } : {},
      start_model_id: number(f.start_model_id) ?? null,
      cold_start: f.cold_start.value,
      ...(f.reveal_after_label.checked ? { reveal_after_label: true } : {}),
    };
    const error = $("#create-error");
    error.hidden = true;
    try {
      const project = await api("/api/projects", { method: "POST", json: body });
      location.href = `admin.html?project=${project.id}`;
    } catch (failure) {
      error.textContent = failure.detail || failure.message;
      error.hidden = false;
    }
  });
}

// ---------------------------------------------------------------- one project

async function openProject() {
  $("#project-view").hidden = false;
  $("#label-link").href = `label.html?project=${state.projectId}`;
  $("#label-link").hidden = false;
  setUpActions();
  setUpImport();
  setUpPool();
  setUpClustering();
  setUpMembers();
  await refresh();
  setInterval(() => refresh().catch(() => {}), POLL_MS);
}

async function refresh() {
  const base = `/api/projects/${state.projectId}`;
  const [project, progress, rounds] = await Promise.all([api(base), api(`${base}/progress`), api(`${base}/rounds`)]);
  state.project = project;
  state.progress = progress;
  state.rounds = rounds;
  if (!state.stats || Date.now() - (state.statsAt || 0) > 10000) {
    state.statsAt = Date.now();
    state.stats = await api(`${base}/stats`).catch((error) => ({ unavailable: error.detail }));
  }
  draw("summary", [project, progress.state], drawSummary);
  draw("budget", [progress, rounds.map((r) => [r.number, r.n_selected, r.labeled])], drawBudget);
  draw("rounds", [rounds, state.selectedRound], drawRounds);
  draw("curve", rounds.map((r) => [r.n_labels, r.metrics]), drawCurve);
  draw("confusion", [rounds.map((r) => r.metrics), state.selectedRound], drawConfusion);
  draw("diagnostics", rounds.map((r) => [r.diagnostics, r.labeled, r.selection_summary?.pool_expected_error]), drawDiagnostics);
  draw("annotators", state.stats, drawAnnotators);
  const clustering = state.clustering?.clustering;
  if (!state.clustering || ["queued", "running"].includes(clustering?.state) || Date.now() - (state.clusteringAt || 0) > 30000) {
    state.clusteringAt = Date.now();
    state.clustering = await api(`${base}/clustering`).catch(() => state.clustering);
  }
  draw("clustering", state.clustering, drawClustering);
}

/** Redraws a part only when its data changed, so focus and scroll stay put while polling. */
function draw(part, data, render) {
  const key = JSON.stringify(data);
  if (state.drawn.get(part) === key) return;
  state.drawn.set(part, key);
  render();
}

function drawSummary() {
  const p = state.project;
  document.title = `${p.name} · Dashboard · XAL`;
  $("#summary-title").textContent = p.name;
  const badge = $("#project-state");
  badge.textContent = p.state;
  badge.className = `badge state-${p.state}`;
  const options = Object.entries(p.strategy_options || {}).map(([k, v]) => `${k} ${v}`).join(", ");
  replace($("#project-facts"),
    h("dt", {}, "Classes"), h("dd", {}, p.classes.map((c) => `${c.name} (${c.key})`).join(", ")),
    h("dt", {}, "Strategy"), h("dd", {}, options ? `${p.strategy} — ${options}` : p.strategy),
    h("dt", {}, "Budget B / k / m"), h("dd", {}, `${p.budget ?? "auto"} / ${p.initial_size ?? "auto"} / ${p.step_size ?? "auto"}`),
    h("dt", {}, "Model"), h("dd", {}, `${p.start_model_id ? `from model ${p.start_model_id}` : "from scratch"}, ${p.model_settings.patience ? "up to " : ""}${p.model_settings.max_epochs} epochs a round`),
    h("dt", {}, "Reveal"), h("dd", {}, p.reveal_after_label ? "label first, then reveal" : "hints shown with the cell"),
    h("dt", {}, "First batch"), h("dd", {}, p.cold_start === "clusters" ? "spread over the pool's clusters" : "random cells"));
  $("#start").hidden = p.state !== "draft";
  const latest = state.rounds.at(-1);
  $("#cancel").disabled = !latest || !["queued", "running"].includes(latest.state);
  $("#retry").disabled = !latest || !["queued", "failed", "cancelled"].includes(latest.state);
  const form = $("#settings-form").elements;
  if (!$("#settings-form").contains(document.activeElement)) {
    form.budget.value = p.budget ?? "";
    form.step_size.value = p.step_size ?? "";
    form.strategy.value = p.strategy;
    form.reveal_after_label.checked = Boolean(p.reveal_after_label);
    form.cold_start.value = p.cold_start || "random";
  }
}

function drawBudget() {
  const p = state.progress;
  const parts = [
    progressBar("Budget used", p.labeled, p.budget ?? p.pool_size,
      { text: p.budget ? `${p.labeled} / ${p.budget} (${percent(p.budget_used, 0)})` : `${p.labeled} labeled, budget set at start` }),
  ];
  if (p.step) parts.push(progressBar(`Current step (round ${p.step.round})`, p.step.labeled, p.step.size));
  parts.push(h("p", { class: "muted small" }, `Pool ${p.pool_size} cells · test split ${p.test_size} cells`));
  const steps = stepsOf(state.rounds);
  if (steps.length) {
    parts.push(h("h3", {}, "Per step"),
      h("p", { class: "muted small" }, "Labels of the cells each round picked: its step, and the reserve (the next-ranked cells) labeled while the next round was computed."),
      stackedSteps(steps));
  }
  const perClass = Object.entries(p.labels_per_class);
  if (perClass.length) {
    parts.push(h("h3", {}, "Per class"), barChart(perClass.map(([label, value]) => ({ label, value })),
      { format: (v) => String(v), title: "Labels per class" }));
  }
  replace($("#budget"), parts);
}

/** Each round that picked cells: its step's size and labels, and its reserve's labels (given
 *  while the next round was computed), as GET rounds counts them by the round that queued each cell. */
function stepsOf(rounds) {
  return rounds.filter((r) => r.n_selected > 0).map((r) => ({
    round: r.number, size: r.n_selected, labeled: r.labeled?.step ?? 0, reserve: r.labeled?.reserve ?? 0,
    reserveSize: r.labeled?.reserve_size ?? 0,
  }));
}

function stepText(s) {
  return `${s.labeled} / ${s.size}${s.reserve ? ` + ${s.reserve} reserve` : ""}`;
}

function stackedSteps(steps) {
  return barChart(steps.map((s) => ({ label: `round ${s.round}`, value: s.labeled, extra: s.reserve, text: stepText(s) })),
    { max: Math.max(...steps.map((s) => s.size + s.reserve)), title: "Labels per step: " + steps.map((s) => `round ${s.round} ${stepText(s)}`).join(", ") });
}

/** Why a round's reserve has its size (worker.rounds.ReservePlan.size). */
function reserveBasis(basis) {
  if (!basis) return "";
  if (!basis.pace_labels_per_s || !basis.expected_wait_s) return "Reserve: the fixed share of the step (nothing measured yet).";
  return `Reserve sized for the annotators' pace, ${basis.pace_labels_per_s.toFixed(2)} labels/s, over the next round's ` +
    `expected wait, ${seconds(basis.expected_wait_s)}, with a margin; never below the fixed share of the step.`;
}

const ROUND_COLUMNS = [
  ["Round"], ["State"],
  ["Trained on", "labels the round's model was trained on (while it runs: the labels given before it started)"],
  ["Step", "cells the round picked for annotators (its step), and the reserve it picked after them"],
  ["Labeled", "labels given to the round's picks: its step's, and its reserve's while the next round was computed"],
  ["Progress"], ["Train"], ["Rank pool"], ["Maps"], ["Total"], ["ACA"], ["MCA"],
  ["Model had wrong", "of the round's labeled picks (step and reserve), how many the round's model had predicted another class for"],
  ["Pool error", "the error the model expected over the whole pool"], [""],
];

function drawRounds() {
  if (!state.rounds.length) {
    replace($("#rounds"), h("p", { class: "muted" }, "No round yet: import a pool and start the project."));
    return;
  }
  const rows = state.rounds.map((r) => {
    const t = r.timings || {};
    const labeled = r.labeled || {};
    const active = ["queued", "running", "waiting"].includes(r.state);
    const progressText = active
      ? (r.progress?.max_epochs ? `${r.progress.phase} ${r.progress.epoch ?? 0}/${r.progress.max_epochs}` : r.progress?.phase || r.state)
      : (r.error ? r.error : "");
    const trainedOn = r.state === "running" && labeled.training_labels != null ? labeled.training_labels
      : active || r.number === 0 ? "–" : r.n_labels;
    const picked = r.n_selected || labeled.reserve_size ? `${r.n_selected}${labeled.reserve_size ? ` + ${labeled.reserve_size} reserve` : ""}` : "–";
    const hasMetrics = r.metrics && r.metrics.confusion;
    return h("tr", { class: r.number === state.selectedRound ? "selected" : "", dataset: { round: r.number, state: r.state } },
      h("th", { scope: "row" }, r.number),
      h("td", {}, h("span", { class: `badge state-${r.state}` }, r.state)),
      h("td", { class: "num trained" }, trainedOn),
      h("td", { class: "num picked", title: reserveBasis(r.selection_summary?.reserve) }, picked),
      h("td", { class: "num labeled" }, r.n_selected ? stepText({ labeled: labeled.step ?? 0, size: r.n_selected, reserve: labeled.reserve ?? 0 }) : "–"),
      h("td", { class: "small" }, progressText),
      h("td", { class: "num" }, t.train_s === undefined ? "–" : seconds(t.train_s)),
      h("td", { class: "num" }, t.score_s === undefined ? "–" : seconds(t.score_s)),
      h("td", { class: "num" }, t.maps_s === undefined ? "–" : seconds(t.maps_s)),
      h("td", { class: "num" }, t.total_s === undefined ? "–" : seconds(t.total_s)),
      h("td", { class: "num aca" }, percent(r.metrics?.aca)),
      h("td", { class: "num mca" }, percent(r.metrics?.mca)),
      h("td", { class: "num wrong" }, labeled.judged ? `${labeled.wrong} of ${labeled.judged} (${percent(labeled.wrong / labeled.judged, 0)})` : "–"),
      h("td", { class: "num" }, percent(r.diagnostics?.pool_expected_error ?? r.selection_summary?.pool_expected_error, 0)),
      h("td", {}, hasMetrics ? h("button", { type: "button", class: "small", "aria-label": `Show the confusion matrix of round ${r.number}`,
        onclick: () => { state.selectedRound = r.number; refresh(); } }, "Matrix") : null));
  });
  replace($("#rounds"), h("table", { class: "rounds" },
    h("thead", {}, h("tr", {}, ROUND_COLUMNS.map(([text, title]) => h("th", { scope: "col", title }, text)))), h("tbody", {}, rows)),
  h("p", { class: "muted small" }, "Step: the cells a round picked for annotators; reserve: the next-ranked cells, served while the next round is computed. " +
    "Labeled counts both, by the round that picked each cell. Model had wrong: of those labeled picks, the ones whose label differs from the class the round's model predicted."));
}

function drawCurve() {
  const evaluated = state.rounds.filter((r) => typeof r.metrics?.aca === "number");
  if (!evaluated.length) {
    replace($("#curve"), h("p", { class: "muted" }, "Accuracy on the test split appears after the first trained round."));
    return;
  }
  replace($("#curve"),
    lineChart([
      { name: "ACA", points: evaluated.map((r) => [r.n_labels, r.metrics.aca]) },
      { name: "MCA", points: evaluated.map((r) => [r.n_labels, r.metrics.mca]) },
    ], { xLabel: "labels used", yLabel: "accuracy on the test split", title: "Label efficiency: accuracy on the test split against labels used" }),
  );
  $("#curve svg").dataset.points = String(evaluated.length);
}

function drawConfusion() {
  const evaluated = state.rounds.filter((r) => r.metrics?.confusion);
  const round = evaluated.find((r) => r.number === state.selectedRound) || evaluated.at(-1);
  if (!round) {
    replace($("#confusion"), h("p", { class: "muted" }, "No trained round yet."));
    return;
  }
  const names = round.metrics.class_names || state.project.classes.map((c) => c.name);
  const perClass = round.metrics.per_class_accuracy;
  replace($("#confusion"),
    h("p", { class: "muted small" }, `Round ${round.number}, ${round.n_labels} labels: ACA ${percent(round.metrics.aca)}, MCA ${percent(round.metrics.mca)}`),
    confusionTable(round.metrics.confusion, names),
    Array.isArray(perClass) ? barChart(perClass.map((v, i) => ({ label: names[i], value: v })),
      { max: 1, format: (v) => percent(v, 0), title: "Accuracy per class" }) : null);
}

function drawDiagnostics() {
  const rows = state.rounds.filter((r) => r.labeled?.judged);
  if (!rows.length) {
    replace($("#diagnostics"), h("p", { class: "muted" },
      "Once cells picked by a model are labeled, this shows how many of them the model had wrong, against the error rate expected over the whole pool."));
    return;
  }
  const poolError = (r) => r.diagnostics?.pool_expected_error ?? r.selection_summary?.pool_expected_error;
  replace($("#diagnostics"),
    h("p", { class: "muted small" }, "A strategy that finds the model's mistakes picks more wrong cells than the pool's error rate. Counted over each round's labeled picks, step and reserve."),
    barChart(rows.flatMap((r) => [
      { label: `round ${r.number} picks`, value: r.labeled.wrong / r.labeled.judged, highlight: true, text: `${r.labeled.wrong} of ${r.labeled.judged} wrong` },
      { label: "pool", value: poolError(r) ?? 0, text: percent(poolError(r), 0) },
    ]), { max: 1, labelWidth: 120, title: "Share of labeled picks the model had wrong, against the pool's expected error" }),
    h("p", { class: "small" }, rows.filter((r) => r.diagnostics?.n).map((r) =>
      `round ${r.number}: error AUROC ${r.diagnostics.error_auroc == null ? "–" : r.diagnostics.error_auroc.toFixed(2)} (over the ${r.diagnostics.n} picks labeled when round ${r.number + 1} started)`).join(" · ")));
}

function drawAnnotators() {
  const stats = state.stats;
  if (!stats || stats.unavailable) {
    replace($("#annotators"), h("p", { class: "muted" }, `Annotator statistics are not available${stats?.unavailable ? `: ${stats.unavailable}` : ""}.`));
    return;
  }
  const a = stats.agreement || {};
  replace($("#annotators"),
    stats.annotators?.length ? h("table", { class: "annotators" },
      h("thead", {}, h("tr", {}, ["Annotator", "Labels", "Per hour", "Median time"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, stats.annotators.map((row) => h("tr", {},
        h("th", { scope: "row" }, row.username), h("td", { class: "num" }, row.labels),
        h("td", { class: "num" }, row.labels_per_hour == null ? "–" : Math.round(row.labels_per_hour)),
        h("td", { class: "num" }, row.median_seconds == null ? "–" : seconds(row.median_seconds))))))
      : h("p", { class: "muted" }, "No labels yet."),
    h("p", {}, a.cells_labeled_twice
      ? `Agreement on ${a.cells_labeled_twice} cells labeled twice: ${percent(a.percent_agreement > 1 ? a.percent_agreement / 100 : a.percent_agreement, 0)}, Cohen's κ ${a.cohen_kappa == null ? "–" : a.cohen_kappa.toFixed(2)}`
      : "No cell has been labeled by two annotators yet."),
    stats.reveal?.n ? h("p", {}, `Label first, then reveal: ${stats.reveal.changed} of ${stats.reveal.n} answers changed after the reveal.`) : null);
}

// ---------------------------------------------------------------- actions

function setUpActions() {
  const base = `/api/projects/${state.projectId}`;
  const act = (button, fn) => button.addEventListener("click", async () => {
    $("#action-error").hidden = true;
    button.disabled = true;
    try {
      await fn();
      await refresh();
    } catch (error) {
      showActionError(error);
    } finally {
      button.disabled = false;
      state.drawn.delete("summary");
      refresh().catch(() => {});
    }
  });
  act($("#start"), () => api(`${base}/start`, { method: "POST" }));
  act($("#retry"), () => api(`${base}/rounds/retry`, { method: "POST" }));
  act($("#cancel"), () => api(`${base}/rounds/cancel`, { method: "POST" }));
  act($("#export-csv"), () => download(`${base}/labels/export?format=csv`, "labels.csv"));
  act($("#export-json"), () => download(`${base}/labels/export?format=json&history=true`, "labels.json"));
  $("#settings-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const f = event.target.elements;
    const changes = { strategy: f.strategy.value.trim() };
    if ("reveal_after_label" in state.project) changes.reveal_after_label = f.reveal_after_label.checked;
    if ("cold_start" in state.project) changes.cold_start = f.cold_start.value;
    if (f.budget.value) changes.budget = Number(f.budget.value);
    if (f.step_size.value) changes.step_size = Number(f.step_size.value);
    try {
      await api(base, { method: "PATCH", json: changes });
      state.drawn.delete("summary");
      document.activeElement.blur();
      await refresh();
    } catch (error) {
      showActionError(error);
    }
  });
}

function showActionError(error) {
  const box = $("#action-error");
  box.textContent = error instanceof ApiError ? error.detail : error.message;
  box.hidden = false;
}

// ---------------------------------------------------------------- members

function setUpMembers() {
  $("#member-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    await changeMembers(() => api(`/api/projects/${state.projectId}/members/${$("#member-user").value}`, { method: "PUT" }));
  });
  loadMembers().catch(showMemberError);
}

async function changeMembers(change) {
  $("#member-error").hidden = true;
  try {
    await change();
    await loadMembers();
  } catch (error) {
    showMemberError(error);
  }
}

function showMemberError(error) {
  $("#member-error").textContent = error instanceof ApiError ? error.detail : error.message;
  $("#member-error").hidden = false;
}

/** The members, each with a Remove button; the annotators and clients who are not members to add. */
async function loadMembers() {
  const base = `/api/projects/${state.projectId}/members`;
  const [members, users] = await Promise.all([api(base), api("/api/users")]);
  const memberIds = new Set(members.map((m) => m.id));
  const candidates = users.filter((u) => u.role !== "admin" && !memberIds.has(u.id));
  replace($("#member-user"), candidates.length
    ? candidates.map((u) => h("option", { value: u.id }, `${u.username} (${u.role})`))
    : h("option", { value: "" }, "every annotator and client is a member"));
  $("#add-member").disabled = !candidates.length;
  replace($("#members"), members.length ? h("table", { class: "annotators members" },
    h("thead", {}, h("tr", {}, ["User", "Role", "Added", ""].map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, members.map((m) => h("tr", { dataset: { userId: m.id } },
      h("th", { scope: "row" }, m.username), h("td", {}, m.role),
      h("td", {}, m.added_at.slice(0, 10)),
      h("td", {}, h("button", { type: "button", class: "small", "aria-label": `Remove ${m.username} from the project`,
        onclick: () => changeMembers(() => api(`${base}/${m.id}`, { method: "DELETE" })) }, "Remove"))))))
    : h("p", { class: "muted" }, "No members yet: only admins see this project."));
}

// ---------------------------------------------------------------- import

function setUpImport() {
  const form = $("#import-form");
  form.elements.files.addEventListener("change", (event) => importFiles([...event.target.files].map((file) => ({ path: file.name, file }))));
  form.elements.folder.addEventListener("change", (event) => importFiles([...event.target.files].map((file) => ({
    // drop the chosen folder's own name: what is left is "Class/cell.png" or "cell.png"
    path: (file.webkitRelativePath || file.name).split("/").slice(1).join("/") || file.name, file,
  }))));
}

/** Imports what was picked: a folder's (or the picked) images sent as zips of at most
 *  BATCH_FILES files, each image with its mask and a labels.csv cut to each batch's rows
 *  (js/imports.js); picked zips as they are, one a request. Shows the files sent and the batch,
 *  then what the whole import did: imported, duplicates and invalid files over every batch. */
async function importFiles(entries) {
  if (!entries.length) return;
  const form = $("#import-form");
  const status = $("#import-status");
  const split = form.elements.split.value;
  const onDuplicate = form.elements.skip_duplicates.checked ? "skip" : "error";
  const done = () => {
    form.reset();
    form.elements.split.value = split;
    for (const input of form.querySelectorAll("input, select")) input.disabled = false;
  };
  let plan;
  try {
    plan = await planImport(entries);
  } catch (error) {
    replace(status, h("p", { class: "error" }, `Nothing was imported: ${error.message}`));
    done();
    return;
  }
  for (const input of form.querySelectorAll("input, select")) input.disabled = true;
  const requests = [...plan.zips.map((zip) => ({ zip, files: 1 })), ...plan.batches];
  const total = requests.reduce((sum, request) => sum + request.files, 0);
  const totals = { imported: 0, duplicates: [], invalid: [], sent: 0, batches: 0 };
  const show = (index, what) => replace(status,
    progressBar(`Importing into the ${split} split: batch ${index + 1} of ${requests.length}, ${what}`, totals.sent, total,
      { text: `${count(totals.sent)} / ${count(total)} files sent` }));
  try {
    if (!requests.length) throw new Error("there are no image files among the files picked");
    for (const [index, request] of requests.entries()) {
      show(index, "packing");
      const body = new FormData();
      if (request.zip) body.append("files", request.zip.file, request.zip.path.split("/").at(-1));
      else body.append("files", await zipFiles(request.entries), `import-${index + 1}.zip`);
      body.append("split", split);
      body.append("on_duplicate", onDuplicate);
      body.append("on_invalid", "skip");
      show(index, `sending ${count(request.files)} files`);
      let report;
      try {
        report = await api(`/api/projects/${state.projectId}/images`, { method: "POST", body });
      } catch (error) {
        error.batch = index;
        error.csvLines = request.csvLines;
        throw error;
      }
      totals.imported += report.imported;
      totals.duplicates.push(...report.duplicates);
      totals.invalid.push(...report.invalid);
      totals.sent += request.files;
      totals.batches += 1;
    }
    replace(status, importSummary(totals, plan, split, requests.length));
  } catch (error) {
    replace(status, importFailure(error, totals, split, requests.length));
  } finally {
    done();
    state.poolOffset = 0;
    loadPool();
    refresh().catch(() => {});
  }
}

const count = (n) => n.toLocaleString("en");
const plural = (n, one, many = `${one}s`) => `${count(n)} ${n === 1 ? one : many}`;

/** What a whole import did, over every batch. */
function importSummary(totals, plan, split, batches) {
  const withMasks = plan.masks ? `, ${count(plan.masks)} of them with a mask` : "";
  return h("div", { class: "import-summary" },
    h("p", {}, h("strong", {}, `Imported ${count(totals.imported)} images into the ${split} split.`),
      ` Sent ${totals.sent === plan.picked ? `the ${plural(totals.sent, "file")}` : `${count(totals.sent)} of the ${plural(plan.picked, "file")}`}` +
      ` in ${plural(batches, "batch", "batches")} (${plural(plan.images, "image")}${withMasks}${plan.csv ? `, listed in ${plan.csv}` : ""}).`),
    h("dl", { class: "import-counts" },
      h("dt", {}, "Imported"), h("dd", { dataset: { count: "imported" } }, count(totals.imported)),
      h("dt", {}, "Duplicates skipped"), h("dd", { dataset: { count: "duplicates" } }, count(totals.duplicates.length),
        totals.duplicates.length ? " (the same image is already in the project, or twice in the folder)" : ""),
      h("dt", {}, "Invalid files skipped"), h("dd", { dataset: { count: "invalid" } }, count(totals.invalid.length)),
      plan.unsent.length ? [h("dt", {}, "Not sent"), h("dd", { dataset: { count: "unsent" } },
        `${plural(plan.unsent.length, "file")} ${plan.csv ? `not listed in ${plan.csv}` : "that are not images"}`)] : null),
    listed("The invalid files and why", totals.invalid.map((i) => `${i.filename}: ${i.error}`)),
    listed("The duplicates", totals.duplicates),
    listed("The files not sent", plan.unsent));
}

function importFailure(error, totals, split, batches) {
  let detail = error.detail || error.message;
  if (error.csvLines) detail = detail.replace(/\bline (\d+)/g, (text, n) => `line ${error.csvLines.get(Number(n)) ?? n}`);
  const where = error.batch === undefined ? "" : ` at batch ${error.batch + 1} of ${batches}`;
  const before = totals.batches
    ? `Batches 1–${totals.batches} were imported and stay: ${count(totals.imported)} images in the ${split} split` +
      `${totals.duplicates.length ? `, ${plural(totals.duplicates.length, "duplicate")} skipped` : ""}` +
      `${totals.invalid.length ? `, ${plural(totals.invalid.length, "invalid file")} skipped` : ""}. ` +
      "To add the rest, fix the problem and import the folder again with “skip duplicates” checked."
    : "Nothing was imported.";
  return h("div", { class: "import-summary" },
    h("p", { class: "error" }, `Import stopped${where}: ${detail}`), h("p", {}, before));
}

function listed(title, items) {
  if (!items.length) return null;
  const shown = items.slice(0, 200);
  return h("details", { class: "import-list" }, h("summary", {}, `${title} (${count(items.length)})`),
    h("ul", {}, shown.map((item) => h("li", {}, item))),
    items.length > shown.length ? h("p", { class: "muted small" }, `and ${count(items.length - shown.length)} more`) : null);
}

// ---------------------------------------------------------------- the pool

function setUpPool() {
  $("#pool-split").addEventListener("change", () => { state.poolOffset = 0; loadPool(); });
  $("#pool-status").addEventListener("change", () => { state.poolOffset = 0; loadPool(); });
  $("#pool-prev").addEventListener("click", () => { state.poolOffset = Math.max(0, state.poolOffset - POOL_PAGE); loadPool(); });
  $("#pool-next").addEventListener("click", () => { state.poolOffset += POOL_PAGE; loadPool(); });
  loadPool();
}

async function loadPool() {
  const query = new URLSearchParams({ split: $("#pool-split").value, limit: POOL_PAGE, offset: state.poolOffset });
  if ($("#pool-status").value) query.set("status", $("#pool-status").value);
  const page = await api(`/api/projects/${state.projectId}/images?${query}`);
  const last = Math.min(page.total, state.poolOffset + page.items.length);
  $("#pool-count").textContent = page.total ? `${state.poolOffset + 1}–${last} of ${page.total}` : "no images";
  $("#pool-prev").disabled = state.poolOffset === 0;
  $("#pool-next").disabled = last >= page.total;
  replace($("#pool"), page.items.map((image) => {
    const img = h("img", { alt: image.filename, loading: "lazy" });
    blobUrl(`/api/projects/${state.projectId}/images/${image.id}/file`).then((url) => { img.src = url; brighten(img); }, () => {});
    return h("li", { class: "thumb", title: image.filename },
      img,
      h("span", { class: "thumb-label" }, image.label ? `✓ ${image.label}` : (image.reference_class ? `(${image.reference_class})` : "unlabeled")));
  }));
}

// ---------------------------------------------------------------- pool clusters

function setUpClustering() {
  const form = $("#cluster-form");
  const showFields = () => {
    const contrastive = form.elements.representation.value === "contrastive";
    form.querySelectorAll(".contrastive-only").forEach((el) => { el.hidden = !contrastive; });
    form.querySelectorAll(".autoencoder-only").forEach((el) => { el.hidden = contrastive; });
  };
  form.elements.representation.addEventListener("change", showFields);
  showFields();
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const f = form.elements;
    const body = f.representation.value === "contrastive"
      ? { representation: "contrastive", pretext_epochs: Number(f.pretext_epochs.value) }
      : { representation: "autoencoder", case: Number(f.case.value), pretrain_epochs: Number(f.pretrain_epochs.value), cluster_epochs: Number(f.cluster_epochs.value) };
    if (f.n_clusters.value) body.n_clusters = Number(f.n_clusters.value);
    const error = $("#cluster-error");
    error.hidden = true;
    try {
      await api(`/api/projects/${state.projectId}/clustering`, { method: "POST", json: body });
      state.clustering = null; // fetched again on the next refresh
      await refresh();
    } catch (failure) {
      error.textContent = failure.detail || failure.message;
      error.hidden = false;
    }
  });
}

function drawClustering() {
  const overview = state.clustering;
  const clustering = overview?.clustering;
  const status = $("#cluster-status");
  $("#cluster-pool").disabled = ["queued", "running"].includes(clustering?.state);
  if (!clustering) {
    replace(status, h("p", { class: "muted" }, "The pool has not been clustered yet. Clustering groups similar cells without labels; " +
      "a project whose first batch is “spread over the pool's clusters” then draws its first k cells evenly from them."));
    replace($("#cluster-scatter"));
    replace($("#cluster-examples"));
    return;
  }
  const progress = clustering.progress || {};
  if (clustering.state === "running" && progress.chunks) {
    replace(status, progressBar(`Clustering: ${progress.phase}`, progress.chunks_done || 0, progress.chunks, { text: `${progress.chunks_done || 0} of ${progress.chunks} chunks of the pool` }));
  } else if (clustering.state === "running" && progress.epochs) {
    replace(status, progressBar(`Clustering: ${progress.phase}`, progress.epoch || 0, progress.epochs, { text: `epoch ${progress.epoch || 0} of ${progress.epochs}` }));
  } else if (clustering.state === "failed") {
    replace(status, h("p", { class: "error" }, `The clustering failed: ${clustering.error}`));
  } else if (clustering.state !== "done") {
    replace(status, h("p", {}, `Clustering ${clustering.state}${progress.phase ? ` (${progress.phase})` : ""}…`));
  } else {
    const m = clustering.metrics || {};
    const scores = m.acc !== undefined ? ` Against the reference classes of ${m.n_reference} cells: ACC ${percent(m.acc)}, NMI ${m.nmi.toFixed(2)}, ARI ${m.ari.toFixed(2)}.` : "";
    const c = clustering.config;
    const how = (c.representation || "autoencoder") === "contrastive"
      ? `network pretrained on the pool without labels, ${c.pretext_epochs} epochs, k-means of its features` +
        (m.start_model ? "; it is the project's start model" : "")
      : `autoencoder, decoder case ${c.case}, ${c.pretrain_epochs} + ${c.cluster_epochs} epochs, reconstruction MSE ${Number(m.recon_mse).toPrecision(3)}`;
    replace(status, h("p", {}, `${m.n_cells} cells in ${c.n_clusters} clusters (${how}).${scores}`));
  }
  if (clustering.state !== "done") return;
  const names = (c) => `cluster ${c + 1}`;
  replace($("#cluster-scatter"), scatterChart(
    overview.points.map((p) => ({ x: p.x, y: p.y, category: p.cluster, title: `${names(p.cluster)}${p.label ? ` · ${p.label}` : ""} · image ${p.image_id}` })),
    { names, title: "" }));
  replace($("#cluster-examples"), overview.clusters.map((cluster) => h("div", { class: "cluster-examples" },
    h("h3", { style: { borderLeft: `0.6rem solid ${categoryColour(cluster.cluster)}`, paddingLeft: "0.4rem" } }, `${names(cluster.cluster)} · ${cluster.size} cells`),
    h("ul", { class: "pool-grid" }, cluster.example_image_ids.map((imageId) => {
      const img = h("img", { alt: `image ${imageId}`, loading: "lazy" });
      blobUrl(`/api/projects/${state.projectId}/images/${imageId}/file`).then((url) => { img.src = url; brighten(img); }, () => {});
      const point = overview.points.find((p) => p.image_id === imageId);
      return h("li", { class: "thumb", title: `image ${imageId}` }, img, h("span", { class: "thumb-label" }, point?.label ?? `image ${imageId}`));
    })))));
}
