// @ts-check
// The panels around the map: Generate (strategy, count, custom prompt), the prompts of each class
// (edit, accept, revert to an earlier one), the metrics chart (SVG rendered in the kernel: no Vega
// here, nothing from a CDN), and the footer's status line and progress bar with Cancel.
// Prompts and status are model or user text: they go into the DOM as textContent or input values only.
import { button, el } from "./dom.js";

/**
 * @typedef {{ model: any, command: (name: string, args?: Record<string, any>) => void, keepFocus?: (el: HTMLElement) => void }} Host
 */

/**
 * The Generate panel; its button is disabled while a job runs.
 * @param {Host} host @param {HTMLElement} parent
 */
export function generatePanel(host, parent) {
  const { model } = host;
  const box = el("div", "dcw-panel", parent);
  box.dataset.role = "generate";
  el("div", "dcw-panel-title", box).textContent = "Generate";
  const field = (text) => { const row = el("label", "dcw-field", box); el("span", "", row).textContent = text; return row; };
  const strategy = el("select", "", field("strategy"));
  strategy.dataset.role = "strategy";
  const count = el("input", "", field("per class"));
  Object.assign(count, { type: "number", min: "1", max: "10000", value: "8" });
  count.dataset.role = "per-class";
  const customRow = field("prompt");
  const custom = el("input", "", customRow);
  Object.assign(custom, { type: "text", placeholder: "a photo of a {class} at night" });
  custom.dataset.role = "custom-prompt";
  const hint = el("small", "dcw-hint", box);
  const go = button(box, "Generate", "generate this many images per class with this strategy", () => {
    host.command("generate", { strategy: strategy.value, count: Math.max(1, Math.round(Number(count.value) || 1)), prompt: custom.value });
  }, "dcw-primary");
  go.dataset.action = "generate";
  const onStrategy = () => {
    customRow.style.display = strategy.value === "custom" ? "" : "none";
    hint.textContent = strategy.value === "evolved" ? "uses each class's current prompt from the panel below" : "";
  };
  strategy.addEventListener("change", onStrategy);
  const syncStrategies = () => {
    const options = model.get("strategies") || [];
    const keep = strategy.value;
    strategy.replaceChildren();
    for (const v of options) { const o = el("option", "", strategy); o.value = v; o.textContent = v; }
    strategy.value = options.includes(keep) ? keep : options.includes("caption") ? "caption" : options[0] || "";
    onStrategy();
  };
  const syncRunning = () => {
    const running = Boolean((model.get("progress") || {}).running);
    if (running) host.keepFocus?.(box);
    go.disabled = running;
  };
  syncStrategies();
  syncRunning();
  return { box, syncStrategies, syncRunning };
}

/**
 * One block per class: the current prompt (editable), Accept, Save edit, Revert to a chosen earlier prompt.
 * @param {Host} host @param {HTMLElement} parent
 */
export function promptsPanel(host, parent) {
  const { model } = host;
  const box = el("div", "dcw-panel", parent);
  box.dataset.role = "prompts";
  const sync = () => {
    host.keepFocus?.(box); // evolve's new prompts redraw the panel: the focus stays in the widget
    box.replaceChildren();
    el("div", "dcw-panel-title", box).textContent = "Prompts per class";
    const prompts = model.get("prompts") || {};
    const names = Object.keys(prompts);
    if (names.length === 0) {
      el("small", "dcw-hint", box).textContent = "none yet: mark images, then Evolve prompts (or type one with crafter.set_prompt)";
    }
    for (const name of names) {
      const entry = prompts[name] || {};
      const history = (Array.isArray(entry.history) ? entry.history : []).filter((h) => h && typeof h === "object");
      const block = el("div", "dcw-prompt", box);
      block.dataset.class = name;
      el("div", "dcw-prompt-name", block).textContent = name;
      const text = el("textarea", "", block);
      text.rows = 2;
      text.value = String(entry.current ?? "");
      text.dataset.role = "prompt-text";
      const mixture = [...new Set((entry.mixture || []).map(String))];
      // A rebalanced class cycles through several prompts; the text box shows the base one.
      if (mixture.length > 1) {
        el("small", "dcw-hint", block).textContent = `its images cycle through ${mixture.length} prompts, e.g. ${JSON.stringify(mixture[1])}; Save edit replaces them`;
      }
      const row = el("div", "dcw-row", block);
      const past = el("select", "");
      past.dataset.role = "prompt-history";
      history.forEach((h, k) => {
        const o = el("option", "", past);
        o.value = String(k);
        o.textContent = `${k + 1}. ${h.action ?? ""}: ${String(h.prompt ?? "").slice(0, 60)}`;
      });
      if (history.length) past.value = String(history.length - 1);
      button(row, "Accept", "keep the current prompt", () => host.command("prompt_accept", { class_name: name })).dataset.action = "prompt_accept";
      button(row, "Save edit", "use the text as typed", () => host.command("prompt_edit", { class_name: name, prompt: text.value })).dataset.action = "prompt_edit";
      const revert = button(row, "Revert", "go back to the chosen earlier prompt", () => host.command("prompt_revert", { class_name: name, index: Number(past.value) }));
      revert.dataset.action = "prompt_revert";
      revert.disabled = history.length === 0;
      block.appendChild(past);
    }
  };
  sync();
  return { box, sync };
}

/**
 * The metrics chart: SVG text from the kernel shown as an image (an <img> never runs what it shows).
 * @param {Host} host @param {HTMLElement} parent
 */
export function chartPanel(host, parent) {
  const box = el("div", "dcw-chart", parent);
  box.dataset.role = "chart";
  const img = el("img", "", box);
  img.alt = "metrics per round";
  let url = "";
  const sync = () => {
    const svg = String(host.model.get("chart") || "");
    if (url) URL.revokeObjectURL(url);
    url = svg ? URL.createObjectURL(new Blob([svg], { type: "image/svg+xml" })) : "";
    box.style.display = svg ? "block" : "none";
    if (url) img.src = url; else img.removeAttribute("src");
  };
  sync();
  return { sync, dispose: () => url && URL.revokeObjectURL(url) };
}

/**
 * The footer: the status line, and while a job runs one progress bar with its Cancel button.
 * @param {Host} host @param {HTMLElement} parent
 */
export function footer(host, parent) {
  const { model } = host;
  const box = el("div", "dcw-footer", parent);
  const status = el("span", "dcw-status", box);
  status.dataset.role = "status";
  const prog = el("span", "dcw-progress", box);
  prog.dataset.role = "progress";
  const bar = el("progress", "", prog);
  const text = el("span", "", prog);
  button(prog, "Cancel", "stop the running job; finished work is kept", () => host.command("cancel")).dataset.action = "cancel";
  /** @param {string} message */
  const say = (message) => { status.textContent = message; status.title = message; };
  const syncStatus = () => say(String(model.get("status") || ""));
  const syncProgress = () => {
    const p = model.get("progress") || {};
    prog.style.display = p.running ? "flex" : "none";
    const total = Number(p.total) || 0;
    if (total > 0) {
      bar.max = total;
      bar.value = Math.max(0, Number(p.done) || 0);
      text.textContent = `${p.done || 0}/${total} ${p.message || ""}`;
    } else {
      bar.removeAttribute("value"); // indeterminate: the work has no count (e.g. the first map)
      text.textContent = String(p.message || "");
    }
  };
  syncStatus();
  syncProgress();
  return { box, status, say, syncStatus, syncProgress };
}
