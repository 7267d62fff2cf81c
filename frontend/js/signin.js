// Sign in, then pick a project: annotators go on to label it, admins may open its dashboard.

import { ApiError, api, currentSession, saveSession, signOut } from "./api.js";
import { progressBar } from "./charts.js";
import { $, h, replace } from "./dom.js";

const next = new URLSearchParams(location.search).get("next");

if (currentSession()) showProjects(); else showSignIn();

function showSignIn() {
  const form = $("#sign-in");
  form.hidden = false;
  $("#username").focus();
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const error = $("#sign-in-error");
    error.hidden = true;
    const button = form.querySelector("button");
    button.disabled = true;
    try {
      const token = await api("/api/auth/token", { method: "POST", json: { username: $("#username").value.trim(), password: $("#password").value } });
      saveSession({ token: token.token, tokenId: token.id, username: token.username, role: token.role });
      // only pages of this site: never an absolute URL from the query string
      if (next && /^[a-z]+\.html(\?[\w=&%.-]*)?$/.test(next)) location.href = next;
      else { form.hidden = true; showProjects(); }
    } catch (failure) {
      error.textContent = failure instanceof ApiError && failure.status === 401 ? "Wrong user name or password." : failure.message;
      error.hidden = false;
    } finally {
      button.disabled = false;
    }
  });
}

async function showProjects() {
  const session = currentSession();
  $("#who").textContent = `${session.username} · ${session.role}`;
  $("#sign-out").hidden = false;
  $("#sign-out").addEventListener("click", signOut);
  $("#projects").hidden = false;
  const admin = session.role === "admin";
  $("#new-project").hidden = !admin;
  const projects = await api("/api/projects");
  const list = $("#project-list");
  if (!projects.length) {
    replace(list, h("li", { class: "muted" }, admin ? "No project yet: create one." : "No project for you yet: ask an admin to make you a member of one."));
    return;
  }
  replace(list, projects.map((project) => {
    const progress = h("div", { class: "project-progress" });
    api(`/api/projects/${project.id}/progress`).then((p) => {
      if (p.budget) progress.append(progressBar("Budget", p.labeled, p.budget));
    }, () => {});
    return h("li", { class: "card project", dataset: { projectId: project.id } },
      h("div", { class: "project-head" },
        h("h3", {}, project.name),
        h("span", { class: `badge state-${project.state}` }, project.state)),
      project.description ? h("p", { class: "muted" }, project.description) : null,
      h("p", { class: "muted small" }, `${project.classes.length} classes · strategy ${project.strategy}`),
      progress,
      h("div", { class: "actions" },
        session.role !== "client" ? h("a", { class: "button primary", href: `label.html?project=${project.id}` }, "Label") : null,
        admin ? h("a", { class: "button", href: `admin.html?project=${project.id}` }, "Dashboard") : null));
  }));
  list.querySelector("a.button")?.focus();
}
