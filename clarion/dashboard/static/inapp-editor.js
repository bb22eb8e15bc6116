// Clarion dashboard: the live preview of the in-app editor and the theme editor. The message is
// drawn by the SDK's own renderer (inapp-render.js, window.ClarionInApp), from the same JSON the
// SDK is handed (SdkMessage in clarion/inapp/schemas.py), rebuilt from the form on every input.
// Without the renderer the pages still work: the preview says it is missing.
"use strict";

(() => {
  const stage = document.querySelector("[data-preview-stage]");
  if (!stage) return;
  const form = document.getElementById("inapp-form") || document.getElementById("theme-form");
  const select = document.querySelector("[data-preview-select]");
  const value = (root, name) => root.querySelector(`[name=${name}]`)?.value.trim() || "";
  const orNull = (text) => text || null;
  let shown = null;

  // #rrggbb and an opacity in percent as #rrggbbaa (opaque colours stay 6 digits), as the
  // server's inapp_forms._with_alpha writes them.
  function colour(name) {
    const hex = value(form, `colour_${name}`);
    const alpha = Number(value(form, `alpha_${name}`) || 100);
    if (alpha >= 100 || hex.length !== 7) return hex;
    return hex + Math.round(Math.max(alpha, 0) * 2.55).toString(16).padStart(2, "0");
  }

  // The theme being edited, as SdkMessage.theme.
  function themeFromForm() {
    const colours = {};
    for (const field of form.querySelectorAll("[name^=colour_]")) {
      const name = field.name.slice("colour_".length);
      colours[name] = colour(name);
    }
    return {
      code: value(form, "code") || "preview",
      layout: value(form, "layout") || "modal",
      colours,
      font: { family: value(form, "font_family") || "system-ui, sans-serif", size: Number(value(form, "font_size") || 16) },
      close_button: value(form, "close_button") || "top_right",
      corner_radius: Number(value(form, "corner_radius") || 0),
      // A preview stays on screen: a banner's auto close would empty it while one edits.
      auto_close_seconds: 0,
    };
  }

  const rows = () => Array.from(form.querySelectorAll(".inapp-content"));

  // The message selector lists each language (and version) of the form.
  function refreshChoices() {
    if (!select) return;
    const chosen = select.selectedIndex;
    select.replaceChildren(...rows().map((row, index) => {
      const version = value(row, "content_version");
      const option = new Option(`${value(row, "content_language") || "default"}${version ? ` · version ${version}` : ""}`, String(index));
      return option;
    }));
    select.selectedIndex = Math.min(Math.max(chosen, 0), select.options.length - 1);
  }

  function actionsOf(row) {
    const actions = [];
    for (const slot of row.querySelectorAll(".cta")) {
      const label = value(slot, "cta_label");
      const link = value(slot, "cta_link");
      if (!label && !link) continue;
      const action = { label, action: value(slot, "cta_action") || "continue" };
      if (link || action.action === "deeplink") action.args = { l: link };
      actions.push(action);
    }
    return actions;
  }

  // The campaign being edited, in the language chosen, as the SDK is handed it.
  function campaignMessage() {
    const themes = JSON.parse(document.getElementById("inapp-themes").textContent);
    const row = rows()[Number(select.value || 0)];
    const when = value(form, "trigger_when").toLowerCase() || "next_session";
    let payload = null;
    try { payload = JSON.parse(value(form, "custom_payload") || "null"); } catch (error) { payload = null; }
    const theme = { ...(themes[value(form, "theme")] || themes.default) };
    theme.auto_close_seconds = 0;  // see themeFromForm
    return {
      campaign_token: "preview",
      version: row ? orNull(value(row, "content_version")) : null,
      trigger: { when, event: orNull(value(form, "trigger_event")), label: orNull(value(form, "trigger_label")), last_server_event_at: null },
      capping: null,
      grace_period_seconds: 0,
      start: null,
      end: null,
      theme,
      image: orNull(value(form, "image")),
      image_description: orNull(value(form, "image_description")),
      header: row ? orNull(value(row, "content_header")) : null,
      title: row ? orNull(value(row, "content_title")) : null,
      body: row ? orNull(value(row, "content_body")) : null,
      actions: row ? actionsOf(row) : [],
      deeplink: orNull(value(form, "deeplink")),
      custom_payload: payload && typeof payload === "object" ? payload : null,
    };
  }

  // A theme is previewed with a sample message: a header, a title, a body and two buttons.
  function themeMessage() {
    return {
      campaign_token: "preview", version: null,
      trigger: { when: "now", event: null, label: null, last_server_event_at: null },
      capping: null, grace_period_seconds: 0, start: null, end: null,
      theme: themeFromForm(), image: null, image_description: null,
      header: "Header", title: "A title", body: "The body of the message, as the app shows it.",
      actions: [{ label: "Continue", action: "continue" }, { label: "Not now", action: "dismiss" }],
      deeplink: null, custom_payload: null,
    };
  }

  function draw() {
    if (!window.ClarionInApp) return;  // the renderer is missing: the page says so
    stage.querySelector("[data-preview-missing]")?.remove();
    const message = form.id === "inapp-form" ? campaignMessage() : themeMessage();
    try {
      shown?.close();
    } catch (error) {
      // Already closed by the message itself (a button pressed in the preview).
    }
    stage.replaceChildren();
    shown = window.ClarionInApp.render(message, { container: stage, preview: true });
    stage.dataset.rendered = String(Number(stage.dataset.rendered || 0) + 1);
  }

  // The server's refusal names the API's field ("MALFORMED_PARAMETER: landing.contents.1.title:
  // ..."): the form's field for it is marked, described by the message, and focused.
  const FIELDS = {
    name: "name", labels: "labels", start_date: "start", local_start_date: "start",
    end_date: "end", local_end_date: "end", "trigger.when": "trigger_when",
    "trigger.event": "trigger_event", "trigger.label": "trigger_label", "trigger.capping": "capping",
    "trigger.grace_period": "grace_every", "landing.theme": "theme", "landing.image": "image",
    "landing.image_description": "image_description", deeplink: "deeplink",
    custom_payload: "custom_payload", layout: "layout", close_button: "close_button",
    corner_radius: "corner_radius", auto_close_seconds: "auto_close_seconds",
    "font.family": "font_family", "font.size": "font_size", code: "code",
  };
  function refusedField(path) {
    const content = /^landing\.contents\.(\d+)(?:\.(header|title|body|language|version|actions)(?:\.(\d+))?)?/.exec(path);
    if (content) {
      const row = rows()[Number(content[1])];
      if (!row) return null;
      if (content[2] === "actions") {
        return row.querySelectorAll("[name=cta_label]")[Number(content[3] || 0)] || null;
      }
      return row.querySelector(`[name=content_${content[2] || "title"}]`);
    }
    const colour = /^colours\.(\w+)/.exec(path);
    if (colour) return form.querySelector(`[name=colour_${colour[1]}]`);
    const key = Object.keys(FIELDS)
      .filter((prefix) => path === prefix || path.startsWith(`${prefix}.`))
      .sort((a, b) => b.length - a.length)[0];
    return key ? form.querySelector(`[name=${FIELDS[key]}]`) : null;
  }
  const alert = document.querySelector("main > .error[role=alert]");
  const named = alert && /^[A-Z_]+: ([\w.]+):/.exec(alert.textContent.trim());
  const refused = named && refusedField(named[1]);
  if (refused) {
    alert.id = "refusal";
    refused.setAttribute("aria-invalid", "true");
    refused.setAttribute("aria-describedby", "refusal");
    refused.focus();
    refused.addEventListener("input", () => refused.removeAttribute("aria-invalid"), { once: true });
  }

  refreshChoices();
  draw();
  form.addEventListener("input", () => { refreshChoices(); draw(); });
  form.addEventListener("change", () => { refreshChoices(); draw(); });
  select?.addEventListener("change", draw);
  // Rows added or removed (app.js's buttons) change the choices.
  const contents = document.getElementById("contents");
  if (contents) new MutationObserver(() => { refreshChoices(); draw(); }).observe(contents, { childList: true });
})();
