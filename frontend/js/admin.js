// The admin dashboard: create and import projects, and watch the budget loop — budget
// used, rounds with their state and timings, accuracy per round, selection diagnostics,
// annotators. It polls the API every few seconds; parts are redrawn only when they change.

import { ApiError, api, blobUrl, download, requireSession, signOut } from "./api.js";
import { barChart, categoryColour, confusionTable, lineChart, progressBar, scatterChart } from "./charts.js";
import { $, h, percent, replace, seconds } from "./dom.js";
import { brighten } from "./viewer.js";
import { zipFiles } from "./zip.js";

const session = requireSession();
const POLL_MS = 3000;
const POOL_PAGE = 48;
const UPLOAD_CHUNK_BYTES = 64 * 1024 * 1024;

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
      model_settings: { max_epochs: number(f.max_epochs) ?? 30 },
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
  draw("budget", progress, drawBudget);
  draw("rounds", [rounds, state.selectedRound], drawRounds);
  draw("curve", rounds.map((r) => [r.n_labels, r.metrics]), drawCurve);
  draw("confusion", [rounds.map((r) => r.metrics), state.selectedRound], drawConfusion);
  draw("diagnostics", rounds.map((r) => [r.diagnostics, r.selection_summary?.pool_expected_error]), drawDiagnostics);
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
    h("dt", {}, "Model"), h("dd", {}, `${p.start_model_id ? `from model ${p.start_model_id}` : "from scratch"}, up to ${p.model_settings.max_epochs} epochs a round`),
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
  const steps = stepsOf(p);
  if (steps.length) {
    parts.push(h("h3", {}, "Per step"), barChart(steps.map((s) => ({ label: `round ${s.round}`, value: s.labeled, text: `${s.labeled} / ${s.size}` })),
      { max: Math.max(...steps.map((s) => s.size)), title: "Labels per step" }));
  }
  const perClass = Object.entries(p.labels_per_class);
  if (perClass.length) {
    parts.push(h("h3", {}, "Per class"), barChart(perClass.map(([label, value]) => ({ label, value })),
      { format: (v) => String(v), title: "Labels per class" }));
  }
  replace($("#budget"), parts);
}

/** Labels given in each step: a step's labels are the next round's n_labels minus its own. */
function stepsOf(progress) {
  const rounds = progress.rounds;
  return rounds.filter((r) => r.n_selected > 0).map((r) => {
    const next = rounds.find((x) => x.number === r.number + 1);
    const labeled = progress.step?.round === r.number ? progress.step.labeled : next ? next.n_labels - r.n_labels : 0;
    return { round: r.number, labeled: Math.max(0, Math.min(labeled, r.n_selected)), size: r.n_selected };
  });
}

function drawRounds() {
  if (!state.rounds.length) {
    replace($("#rounds"), h("p", { class: "muted" }, "No round yet: import a pool and start the project."));
    return;
  }
  const header = ["Round", "State", "Labels", "Picked", "Progress", "Train", "Rank pool", "Maps", "Total", "ACA", "MCA", "Picked wrong", "Pool error", ""];
  const rows = state.rounds.map((r) => {
    const t = r.timings || {};
    const d = r.diagnostics || {};
    const progressText = ["queued", "running"].includes(r.state)
      ? (r.progress?.max_epochs ? `${r.progress.phase} ${r.progress.epoch ?? 0}/${r.progress.max_epochs}` : r.progress?.phase || r.state)
      : (r.error ? r.error : "");
    const hasMetrics = r.metrics && r.metrics.confusion;
    return h("tr", { class: r.number === state.selectedRound ? "selected" : "", dataset: { round: r.number, state: r.state } },
      h("th", { scope: "row" }, r.number),
      h("td", {}, h("span", { class: `badge state-${r.state}` }, r.state)),
      h("td", { class: "num" }, r.n_labels),
      h("td", { class: "num" }, r.n_selected),
      h("td", { class: "small" }, progressText),
      h("td", { class: "num" }, t.train_s === undefined ? "–" : seconds(t.train_s)),
      h("td", { class: "num" }, t.score_s === undefined ? "–" : seconds(t.score_s)),
      h("td", { class: "num" }, t.maps_s === undefined ? "–" : seconds(t.maps_s)),
      h("td", { class: "num" }, t.total_s === undefined ? "–" : seconds(t.total_s)),
      h("td", { class: "num aca" }, percent(r.metrics?.aca)),
      h("td", { class: "num mca" }, percent(r.metrics?.mca)),
      h("td", { class: "num" }, d.n ? `${d.errors} / ${d.n} (${percent(d.hit_rate, 0)})` : "–"),
      h("td", { class: "num" }, percent(d.pool_expected_error ?? r.selection_summary?.pool_expected_error, 0)),
      h("td", {}, hasMetrics ? h("button", { type: "button", class: "small", "aria-label": `Show the confusion matrix of round ${r.number}`,
        onclick: () => { state.selectedRound = r.number; refresh(); } }, "Matrix") : null));
  });
  replace($("#rounds"), h("table", { class: "rounds" },
    h("thead", {}, h("tr", {}, header.map((text) => h("th", { scope: "col" }, text)))), h("tbody", {}, rows)));
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
  const rows = state.rounds.filter((r) => r.diagnostics?.n);
  if (!rows.length) {
    replace($("#diagnostics"), h("p", { class: "muted" },
      "Once a model-picked batch is labeled, this shows how many of its cells the model had wrong, against the error rate expected over the whole pool."));
    return;
  }
  replace($("#diagnostics"),
    h("p", { class: "muted small" }, "A strategy that finds the model's mistakes picks more wrong cells than the pool's error rate."),
    barChart(rows.flatMap((r) => [
      { label: `round ${r.number} picked`, value: r.diagnostics.hit_rate, highlight: true, text: `${r.diagnostics.errors}/${r.diagnostics.n} wrong` },
      { label: "pool", value: r.diagnostics.pool_expected_error ?? 0, text: percent(r.diagnostics.pool_expected_error, 0) },
    ]), { max: 1, labelWidth: 120, title: "Share of picked cells the model had wrong, against the pool's expected error" }),
    h("p", { class: "small" }, rows.map((r) => `round ${r.number}: error AUROC ${r.diagnostics.error_auroc == null ? "–" : r.diagnostics.error_auroc.toFixed(2)}`).join(" · ")));
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

/** Uploads files: loose images and zips as they are, a folder's files zipped with their
 *  sub-folders (the class, for the test split) in chunks below the upload limit. */
async function importFiles(entries) {
  if (!entries.length) return;
  const form = $("#import-form");
  const status = $("#import-status");
  const split = form.elements.split.value;
  const onDuplicate = form.elements.skip_duplicates.checked ? "skip" : "error";
  const nested = entries.some((entry) => entry.path.includes("/"));
  const chunks = [];
  let chunk = [];
  let size = 0;
  for (const entry of entries) {
    if (chunk.length && size + entry.file.size > UPLOAD_CHUNK_BYTES) {
      chunks.push(chunk);
      chunk = [];
      size = 0;
    }
    chunk.push(entry);
    size += entry.file.size;
  }
  if (chunk.length) chunks.push(chunk);
  let imported = 0;
  let duplicates = 0;
  const invalid = [];
  try {
    for (const [index, part] of chunks.entries()) {
      status.textContent = `Uploading part ${index + 1} of ${chunks.length}…`;
      const body = new FormData();
      if (nested) body.append("files", await zipFiles(part), `import-${index + 1}.zip`);
      else for (const { file, path } of part) body.append("files", file, path);
      body.append("split", split);
      body.append("on_duplicate", onDuplicate);
      body.append("on_invalid", "skip");
      const report = await api(`/api/projects/${state.projectId}/images`, { method: "POST", body });
      imported += report.imported;
      duplicates += report.duplicates.length;
      invalid.push(...report.invalid);
    }
    status.textContent = `Imported ${imported} images into the ${split} split` +
      (duplicates ? `; ${duplicates} duplicates skipped` : "") +
      (invalid.length ? `; ${invalid.length} invalid files skipped (${invalid.slice(0, 3).map((i) => `${i.filename}: ${i.error}`).join("; ")})` : "") + ".";
    state.poolOffset = 0;
    loadPool();
    refresh();
  } catch (error) {
    status.textContent = `Import failed: ${error.detail || error.message}`;
  } finally {
    form.reset();
    form.elements.split.value = split;
  }
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
