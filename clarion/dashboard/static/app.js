// Clarion dashboard: progressive enhancement only. Every page works without this file; it adds
// copy buttons, confirmations, the query builder's rows, the live audience estimate and
// notification preview, drag-and-drop audience upload with progress, and live campaign progress.
"use strict";

const csrfToken = () => document.body.dataset.csrf || "";

function debounce(fn, ms) {
  let timer;
  return (...args) => { clearTimeout(timer); timer = setTimeout(() => fn(...args), ms); };
}

// A fragment from the server; a session that expired meanwhile is sent to the sign-in page
// (the server redirected the request there) rather than shown inside the page.
async function fetchFragment(url, options = {}) {
  const response = await fetch(url, { credentials: "same-origin", ...options });
  if (response.redirected && new URL(response.url).pathname === "/dashboard/login") {
    window.location.assign(response.url);
    return null;
  }
  return response.text();
}

function postForm(url, form) {
  const body = new URLSearchParams(new FormData(form));
  return fetchFragment(url, { method: "POST", body, headers: { "X-CSRF-Token": csrfToken() } });
}

function copyText(text) {
  // navigator.clipboard exists on secure origins only (HTTPS, localhost).
  if (navigator.clipboard) return navigator.clipboard.writeText(text);
  const field = document.createElement("textarea");
  field.value = text;
  document.body.appendChild(field);
  field.select();
  document.execCommand("copy");
  field.remove();
  return Promise.resolve();
}

document.addEventListener("click", (event) => {
  const copy = event.target.closest("[data-copy]");
  if (copy) {
    const source = document.querySelector(copy.dataset.copy);
    const text = source.value !== undefined ? source.value : source.textContent;
    copyText(text.trim()).then(() => {
      const label = copy.textContent;
      copy.textContent = "Copied";
      setTimeout(() => { copy.textContent = label; }, 1500);
    });
  }
  const add = event.target.closest("[data-add-row]");
  if (add) {
    const template = document.getElementById(add.dataset.addRow);
    const target = document.getElementById(add.dataset.target);
    target.appendChild(template.content.cloneNode(true));
    target.lastElementChild.querySelector("input, select")?.focus();
  }
  const remove = event.target.closest("[data-remove-row]");
  if (remove) {
    const row = remove.closest(".condition, .message");
    const form = row.closest("form");
    row.remove();
    form?.dispatchEvent(new Event("input", { bubbles: true }));
  }
});

document.addEventListener("submit", (event) => {
  const form = event.target;
  if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
    event.preventDefault();
    return;
  }
  // A form that creates something posts once: a double click, or Enter pressed again while the
  // answer loads, would otherwise create it twice (two apps, two campaigns).
  if (form.hasAttribute("data-once")) {
    if (form.dataset.sent) event.preventDefault();
    form.dataset.sent = "1";
  }
});

// Back to a page the browser kept in memory: its forms may post again.
window.addEventListener("pageshow", (event) => {
  if (event.persisted) document.querySelectorAll("form[data-sent]").forEach((form) => delete form.dataset.sent);
});

document.addEventListener("change", (event) => {
  if (event.target.matches("[data-autosubmit]") && event.target.value) event.target.form.submit();
});

// Live audience estimate: the server answers with a fragment, rules and messages as the API's.
for (const form of document.querySelectorAll("form[data-estimate-url]")) {
  const output = document.getElementById("estimate");
  let asked = 0;  // answers can arrive out of order: only the latest question's is shown
  const refresh = debounce(async () => {
    const question = ++asked;
    output.setAttribute("aria-busy", "true");
    const answer = await postForm(form.dataset.estimateUrl, form);
    if (answer === null || question !== asked) return;
    output.innerHTML = answer;
    output.removeAttribute("aria-busy");
  }, 300);
  form.addEventListener("input", (event) => {
    if (event.target.closest("[data-targeting]")) refresh();
  });
  form.addEventListener("change", (event) => {
    if (event.target.closest("[data-targeting]")) refresh();
  });
  refresh();
}

// Notification preview: the first message's title and body, as each platform shows them.
function updatePreview() {
  const title = document.querySelector(".message [name=message_title]");
  const body = document.querySelector(".message [name=message_body]");
  for (const node of document.querySelectorAll("[data-preview=title]")) {
    node.textContent = title ? title.value : "";
  }
  for (const node of document.querySelectorAll("[data-preview=body]")) {
    node.textContent = body ? body.value : "";
  }
}
document.addEventListener("input", (event) => {
  if (event.target.matches("[name=message_title], [name=message_body]")) updatePreview();
});

// Audience upload: drag and drop, or pick a file; the body streams to the server with progress.
for (const form of document.querySelectorAll("form[data-upload]")) {
  const zone = form.querySelector(".dropzone");
  const input = form.querySelector("input[type=file]");
  const bar = form.querySelector("progress");
  const result = document.getElementById(form.dataset.result);
  ["dragenter", "dragover"].forEach((name) => zone.addEventListener(name, (event) => {
    event.preventDefault(); zone.classList.add("over");
  }));
  ["dragleave", "drop"].forEach((name) => zone.addEventListener(name, () => zone.classList.remove("over")));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    input.files = event.dataTransfer.files;
    zone.querySelector("[data-file-name]").textContent = input.files[0]?.name || "";
  });
  input.addEventListener("change", () => {
    zone.querySelector("[data-file-name]").textContent = input.files[0]?.name || "";
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const file = input.files[0];
    if (!file) { result.innerHTML = '<p class="error" role="alert">Choose a file first.</p>'; return; }
    const params = new URLSearchParams();
    for (const [key, value] of new FormData(form)) {
      if (typeof value === "string" && key !== "csrf_token") params.append(key, value);
    }
    const request = new XMLHttpRequest();
    request.open("POST", form.dataset.upload + "?" + params.toString());
    request.setRequestHeader("X-CSRF-Token", csrfToken());
    request.setRequestHeader("Content-Type", "text/csv");
    bar.hidden = false; bar.value = 0;
    request.upload.addEventListener("progress", (progress) => {
      if (progress.lengthComputable) bar.value = progress.loaded / progress.total;
    });
    request.addEventListener("load", () => {
      if (new URL(request.responseURL).pathname === "/dashboard/login") {
        window.location.assign(request.responseURL);  // the session expired meanwhile
        return;
      }
      bar.value = 1;
      result.innerHTML = request.responseText;
    });
    request.addEventListener("error", () => {
      result.innerHTML = '<p class="error" role="alert">The upload failed: the connection was lost.</p>';
    });
    request.send(file);
  });
}

// Live progress while a campaign sends: the fragment says when there is nothing more to watch.
for (const node of document.querySelectorAll("[data-refresh]")) {
  const poll = async () => {
    if (node.querySelector("[data-final]")) return;
    try {
      const fragment = await fetchFragment(node.dataset.refresh);
      if (fragment === null) return;
      node.innerHTML = fragment;
    } catch (error) {
      // A lost connection: keep the last figures and ask again.
    }
    setTimeout(poll, 2000);
  };
  setTimeout(poll, 2000);
}
