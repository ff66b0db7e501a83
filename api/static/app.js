// mathagent chat page. Everything the model writes is untrusted: text is cleaned of control,
// ANSI and bidi characters, markdown goes through DOMPurify, code and output are set as text.
"use strict";

(() => {
  const $ = (sel) => document.querySelector(sel);
  const thread = $("#thread");
  const form = $("#composer");
  const problemBox = $("#problem");
  const sendBtn = $("#send");
  const stopBtn = $("#stop");
  const historyList = $("#history");
  const sidebar = $("#sidebar");
  const backdrop = $("#backdrop");
  const menuBtn = $("#menu");
  const goldBox = $("#gold");
  const emptyState = $("#empty");
  const HISTORY_KEY = "mathagent.history.v1";
  let controller = null;

  // ---------------------------------------------------------------- untrusted text
  const ANSI = /\x1b\[[0-?]*[ -\/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-_]/g;
  const BIDI = /[\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c]/g;
  const SPECIAL = /<\|(?:im_end|im_start|endoftext)\|>/g; // end-of-turn tokens kept in stored trajectories
  const CONTROL = /[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]/g;
  function clean(s) {
    return String(s ?? "")
      .replace(ANSI, "")
      .replace(BIDI, (c) => `\u2039U+${c.codePointAt(0).toString(16).toUpperCase().padStart(4, "0")}\u203a`)
      .replace(CONTROL, (c) => (c === "\x00" ? "\u2400" : c === "\x1b" ? "\u241b" : "\ufffd"));
  }
  const el = (tag, cls, text) => {
    const n = document.createElement(tag);
    if (cls) n.className = cls;
    if (text !== undefined) n.textContent = text;
    return n;
  };

  // ---------------------------------------------------------------- markdown + math
  const MATH = [
    [/\$\$([\s\S]+?)\$\$/g, true],
    [/\\\[([\s\S]+?)\\\]/g, true],
    [/\\\(([\s\S]+?)\\\)/g, false],
    [/(?<![\\$\w])\$(?!\s)([^$\n]+?)(?<!\s)\$(?![\d$])/g, false],
    [/(\\boxed\{(?:[^{}]|\{(?:[^{}]|\{[^{}]*\})*\})*\})/g, false],
  ];
  function tex(src, display) {
    if (!window.katex) return `<code>${escapeHtml(src)}</code>`;
    try {
      const html = window.katex.renderToString(src, { displayMode: display, throwOnError: false, trust: false, strict: "ignore", maxExpand: 200, maxSize: 20 });
      return html.replace(/ style="/g, ' data-style="'); // KaTeX escapes quotes in text: this only meets attributes
    } catch (e) {
      return `<code>${escapeHtml(src)}</code>`;
    }
  }
  function escapeHtml(s) {
    return s.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  }
  // Math is typeset first and stashed behind placeholders, so markdown never sees (or breaks) it.
  function stashMath(text, inline) {
    const stash = [];
    let src = clean(text);
    for (const [re, display] of MATH) {
      src = src.replace(re, (m, inner) => {
        stash.push(tex(re.source.startsWith("(\\\\boxed") ? m : inner, display && !inline));
        return `\u0091${stash.length - 1}\u0092`;
      });
    }
    return { src, unstash: (html) => html.replace(/\u0091(\d+)\u0092/g, (_, i) => stash[Number(i)] ?? "") };
  }
  const PURIFY = { USE_PROFILES: { html: true, mathMl: true, svg: true } };
  function renderMarkdown(text) {
    const { src, unstash } = stashMath(text, false);
    const html = unstash(window.marked ? window.marked.parse(src, { gfm: true, breaks: true, async: false }) : escapeHtml(src));
    return window.DOMPurify ? window.DOMPurify.sanitize(html, PURIFY) : escapeHtml(src);
  }
  // The page's CSP allows no inline style attributes (not even while DOMPurify parses). KaTeX
  // positions its boxes with them, so tex() renames them to data-style and setHtml applies them
  // through the CSSOM, which CSP allows; only inside KaTeX's own output.
  function setHtml(node, html) {
    node.innerHTML = html;
    node.querySelectorAll(".katex [data-style]").forEach((n) => { n.style.cssText = n.dataset.style; n.removeAttribute("data-style"); });
  }
  function setMath(node, text) {
    setHtml(node, renderMarkdown(text));
  }
  // One line of text with its math typeset (history entries, example chips): no markdown.
  function setInlineMath(node, text) {
    const { src, unstash } = stashMath(text, true);
    const html = unstash(escapeHtml(src));
    setHtml(node, window.DOMPurify ? window.DOMPurify.sanitize(html, PURIFY) : escapeHtml(src));
  }

  // ---------------------------------------------------------------- parsing the model's text
  // The raw text holds the model's prose, its ```python blocks and the ```output blocks the
  // agent injected. Split it into prose and cells (a code block and the output that follows).
  function parse(raw) {
    const parts = [];
    const lines = raw.split("\n");
    let prose = [];
    let block = null;
    const flushProse = () => {
      if (prose.join("\n").trim()) parts.push({ kind: "prose", text: prose.join("\n") });
      prose = [];
    };
    for (const line of lines) {
      const fence = line.match(/^\s*```\s*([\w+-]*)\s*$/);
      if (block) {
        if (fence && !fence[1]) {
          finishBlock(block, true);
          block = null;
        } else block.lines.push(line);
        continue;
      }
      const open = line.match(/^\s*```\s*([\w+-]*)/);
      if (open) {
        flushProse();
        block = { lang: (open[1] || "").toLowerCase(), lines: [] };
        continue;
      }
      prose.push(line);
    }
    if (block) finishBlock(block, false);
    flushProse();
    return parts;

    function finishBlock(b, closed) {
      const body = b.lines.join("\n");
      if (b.lang === "output") {
        const last = parts[parts.length - 1];
        if (last && last.kind === "cell" && last.output === null) last.output = body;
        else parts.push({ kind: "cell", code: "", output: body, closed: true });
      } else if (b.lang === "" || b.lang === "python" || b.lang === "py" || b.lang === "python3") {
        parts.push({ kind: "cell", code: body, output: null, closed });
      } else {
        parts.push({ kind: "prose", text: "```" + b.lang + "\n" + body + (closed ? "\n```" : "") });
      }
    }
  }

  // ---------------------------------------------------------------- one assistant answer
  class Episode {
    constructor(container, key) {
      this.root = el("div", "episode");
      this.root.dataset.key = key;
      this.tag = el("div", "episode-tag");
      this.body = el("div", "episode-body");
      this.root.append(this.tag, this.body);
      container.append(this.root);
      this.raw = "";
      this.observations = [];
      this.collapsed = new Set();
      this.live = true;
      this.stopped = false;
      this.pending = false;
    }
    addText(t) { this.raw += String(t).replace(SPECIAL, ""); this.schedule(); }
    addObservation(ev) { this.observations.push(ev); this.raw += ev.text || ""; this.schedule(); }
    finish(stopped = false) { this.live = false; this.stopped = stopped; this.render(); }
    schedule() {
      if (this.pending) return;
      this.pending = true;
      requestAnimationFrame(() => { this.pending = false; this.render(); });
    }
    render() {
      const parts = parse(this.raw);
      const frag = document.createDocumentFragment();
      let cellIndex = 0;
      parts.forEach((p) => {
        if (p.kind === "prose") {
          const div = el("div", "prose");
          setMath(div, p.text);
          frag.append(div);
        } else {
          frag.append(this.cell(p, cellIndex));
          cellIndex += 1;
        }
      });
      if (this.live) {
        const caret = el("span", "caret");
        const last = frag.lastChild;
        if (last && last.classList && last.classList.contains("prose") && last.lastElementChild) last.lastElementChild.append(caret);
        else frag.append(caret);
      }
      this.body.replaceChildren(frag);
    }
    cell(p, index) {
      const obs = p.code ? this.observations[index] : undefined;
      let status = obs ? obs.status : p.output !== null ? "ok" : p.closed ? "running" : "writing";
      if (this.stopped && (status === "running" || status === "writing")) status = "stopped"; // it will never finish
      const d = el("details", "cell");
      d.dataset.status = status;
      d.open = !this.collapsed.has(index); // open by default; a cell the user collapses stays collapsed
      const s = el("summary");
      s.addEventListener("click", () => (d.open ? this.collapsed.add(index) : this.collapsed.delete(index)));
      s.append(el("span", "cell-title", `Python · cell ${index + 1}`), el("span", `badge cell-status ${status}`, status.replace("_", " ")));
      if (obs && obs.wall_ms) s.append(el("span", "cell-time", `${(obs.wall_ms / 1000).toFixed(2)} s`));
      d.append(s);
      if (p.code) {
        const pre = el("pre", "cell-code");
        pre.append(el("code", "", clean(p.code)));
        d.append(pre);
      }
      if (p.output !== null) {
        d.append(el("div", "cell-output-label", "output"));
        const out = el("pre", `cell-output ${status}`);
        out.textContent = clean(p.output);
        d.append(out);
      }
      return d;
    }
  }

  // ---------------------------------------------------------------- a turn (problem + answer card)
  function addTurn(problem) {
    if (emptyState.isConnected) emptyState.remove();
    const turn = el("article", "turn");
    const user = el("div", "user");
    const bubble = el("div", "bubble");
    setMath(bubble, problem);
    user.append(bubble);
    const card = el("div", "assistant");
    card.dataset.testid = "answer-card";
    const episodes = el("div", "episodes");
    const footer = el("div", "after");
    card.append(episodes, footer);
    turn.append(user, card);
    thread.append(turn);
    turn.scrollIntoView({ block: "end" });
    return { turn, card, episodes, footer, map: new Map() };
  }

  function episodeFor(t, ev) {
    const key = `${ev.sample}:${ev.revision}`;
    let e = t.map.get(key);
    if (!e) {
      e = new Episode(t.episodes, key);
      if (ev.sample > 0 || ev.revision > 0 || t.map.size > 0) {
        e.tag.textContent = `sample ${ev.sample + 1}` + (ev.revision ? ` · revision ${ev.revision}` : "");
      }
      if (t.map.size === 1) {
        const first = [...t.map.values()][0];
        if (!first.tag.textContent) first.tag.textContent = "sample 1";
      }
      t.map.set(key, e);
    }
    return e;
  }

  function renderResult(t, result) {
    t.footer.replaceChildren();
    const box = el("div", "answer");
    box.dataset.testid = "final-answer";
    if (result.answer === null || result.answer === undefined) {
      box.classList.add("none");
      box.append(el("span", "answer-label", "Answer"), el("span", "answer-value", "no final answer"));
    } else {
      const v = el("span", "answer-value");
      setMath(v, `$${result.answer}$`);
      box.append(el("span", "answer-label", "Answer"), v);
    }
    if (result.correct === true) box.append(el("span", "badge verified verdict", "✓ verified"));
    else if (result.correct === false) box.append(el("span", "badge wrong verdict", `✗ expected ${clean(result.gold)}`));
    t.footer.append(box);
    if (result.vote) {
      const votes = el("div", "votes");
      Object.entries(result.vote.shares).forEach(([a, s]) => votes.append(el("span", "", `${clean(a)} · ${(s * 100).toFixed(0)}%`)));
      t.footer.append(votes);
    }
    const foot = el("div", "foot");
    const ver = el("span", "", "answered by ");
    ver.append(el("code", "answered-version", result.model_version));
    foot.append(ver, el("span", "", `${(result.elapsed_ms / 1000).toFixed(1)} s`));
    foot.append(thumbs(result.trajectory_id, result.feedback_token));
    t.footer.append(foot);
  }

  // thumbs icon as inline SVG: emoji fonts are often missing (headless, minimal desktops)
  const THUMB = "M2 10h3v10H2zM7 20h9.2a2 2 0 0 0 2-1.6l1.5-7A2 2 0 0 0 17.7 9H13l.8-4.1A1.7 1.7 0 0 0 12.1 3L7 9z";
  function icon(path, flip) {
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", "0 0 22 23");
    svg.setAttribute("width", "16");
    svg.setAttribute("height", "16");
    svg.setAttribute("aria-hidden", "true");
    if (flip) svg.classList.add("flip");
    const p = document.createElementNS(ns, "path");
    p.setAttribute("d", path);
    p.setAttribute("fill", "currentColor");
    svg.append(p);
    return svg;
  }

  // The solve's feedback token (only its caller gets it) makes the rating a training label, not a vote.
  function thumbs(trajectoryId, feedbackToken) {
    const wrap = el("div", "thumbs");
    const note = el("span", "thanks");
    const up = el("button", "thumb");
    const down = el("button", "thumb");
    up.append(icon(THUMB), el("span", "sr", "good answer"));
    down.append(icon(THUMB, true), el("span", "sr", "bad answer"));
    up.type = down.type = "button";
    up.title = "good answer";
    down.title = "wrong or unhelpful";
    up.dataset.testid = "thumb-up";
    down.dataset.testid = "thumb-down";
    wrap.dataset.trajectoryId = trajectoryId;
    const send = async (rating, btn) => {
      up.disabled = down.disabled = true;
      try {
        const r = await fetch(`/v1/trajectories/${encodeURIComponent(trajectoryId)}/feedback`, {
          method: "POST", headers: { "content-type": "application/json" },
          body: JSON.stringify(feedbackToken ? { rating, feedback_token: feedbackToken } : { rating }),
        });
        if (!r.ok) throw new Error((await r.json()).error?.message || r.statusText);
        btn.classList.add("chosen");
        note.textContent = "thanks — this trains the next version";
        note.dataset.testid = "feedback-saved";
      } catch (e) {
        up.disabled = down.disabled = false;
        note.textContent = `could not save: ${clean(e.message)}`;
      }
    };
    up.addEventListener("click", () => send("up", up));
    down.addEventListener("click", () => send("down", down));
    wrap.append(note, up, down);
    return wrap;
  }

  // An error that says what happened and what to do; `retry` re-sends the same problem.
  function showError(t, message, { retry, stopped } = {}) {
    const box = el("div", stopped ? "error-box stopped" : "error-box");
    box.dataset.testid = stopped ? "stopped" : "error";
    box.setAttribute("role", "alert");
    box.append(el("span", "error-text", clean(message)));
    if (retry) {
      const b = el("button", "retry", "Try again");
      b.type = "button";
      b.dataset.testid = "retry";
      b.addEventListener("click", () => { if (!controller) { box.remove(); solve(retry.problem, retry.options); } });
      box.append(b);
    }
    t.footer.append(box);
  }
  class HttpError extends Error {
    constructor(message, status, retryAfter) { super(message); this.status = status; this.retryAfter = retryAfter; }
  }
  async function httpError(r) {
    const err = await r.json().catch(() => ({}));
    const message = err.error?.message || `the server answered HTTP ${r.status}`;
    return new HttpError(message, r.status, parseInt(r.headers.get("retry-after") || "", 10));
  }
  function advice(e) {
    if (e instanceof HttpError && e.status === 503) {
      const wait = Number.isFinite(e.retryAfter) ? `${e.retryAfter} s` : "a few seconds";
      return `${e.message}\nWait ${wait}, then press “Try again”.`;
    }
    if (e instanceof HttpError && e.status === 429) return `${e.message}\nToo many requests: wait a minute, then try again.`;
    if (e instanceof TypeError) return "The gateway cannot be reached (is `mathagent up` still running?). Check the connection, then try again.";
    return e.message;
  }

  // ---------------------------------------------------------------- streaming a solve
  async function* sseEvents(response) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const chunk = buf.slice(0, i);
        buf = buf.slice(i + 2);
        let event = "message";
        const data = [];
        for (const line of chunk.split("\n")) {
          if (line.startsWith("event:")) event = line.slice(6).trim();
          else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        }
        if (data.length) yield { event, data: JSON.parse(data.join("\n")) };
      }
    }
  }

  // The options of one problem: the expected answer belongs to it alone (cleared once sent, so the
  // next problem is not graded against it); tool calls and samples are preferences that stay.
  function takeOptions() {
    const options = { gold: goldBox.value.trim() };
    const turns = parseInt($("#max-turns").value, 10);
    if (!Number.isNaN(turns)) options.max_turns = turns;
    const samples = parseInt($("#samples").value, 10);
    if (samples > 1) options.samples = samples;
    goldBox.value = "";
    markOptions();
    return options;
  }
  function markOptions() { $("#options-set").hidden = !goldBox.value.trim(); }

  async function solve(problem, options) {
    const t = addTurn(problem);
    const body = { problem, stream: true };
    if (options.gold) body.gold = options.gold;
    if (options.max_turns !== undefined) body.max_turns = options.max_turns;
    if (options.samples) body.samples = options.samples;
    controller = new AbortController();
    busy(true);
    let result = null;
    let stopped = false;
    try {
      const r = await fetch("/v1/solve", {
        method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body), signal: controller.signal,
      });
      if (!r.ok) throw await httpError(r);
      for await (const { event, data } of sseEvents(r)) {
        if (event === "start") episodeFor(t, data).tag.dataset.version = data.model_version;
        else if (event === "text") episodeFor(t, data).addText(data.text);
        else if (event === "observation") episodeFor(t, data).addObservation(data);
        else if (event === "episode_done") episodeFor(t, data).finish();
        else if (event === "done") { result = data.result; renderResult(t, result); }
        else if (event === "error") throw new Error(data.error?.message || "the solve failed");
      }
      if (result) remember(problem, result);
    } catch (e) {
      stopped = e.name === "AbortError";
      if (stopped) showError(t, "Stopped: the solve was cancelled, nothing more runs. Unfinished cells are marked stopped.", { stopped: true, retry: { problem, options } });
      else showError(t, advice(e), { retry: { problem, options } });
    } finally {
      t.map.forEach((e) => e.live && e.finish(stopped));
      busy(false);
      controller = null;
      t.turn.scrollIntoView({ block: "end" });
    }
  }

  function busy(on) {
    sendBtn.disabled = on;
    stopBtn.hidden = !on;
    $("#hint").textContent = on ? "thinking, writing code, running it…" : "";
  }

  // ---------------------------------------------------------------- history (this browser only)
  function loadHistory() {
    try { return JSON.parse(localStorage.getItem(HISTORY_KEY) || "[]"); } catch { return []; }
  }
  function remember(problem, result) {
    const items = loadHistory().filter((h) => h.trajectory_id !== result.trajectory_id);
    items.unshift({ problem, answer: result.answer, correct: result.correct, trajectory_id: result.trajectory_id,
                    feedback_token: result.feedback_token, model_version: result.model_version, at: Date.now() });
    localStorage.setItem(HISTORY_KEY, JSON.stringify(items.slice(0, 100)));
    drawHistory();
  }
  function drawHistory() {
    historyList.replaceChildren();
    for (const h of loadHistory()) {
      const li = el("li");
      const b = el("button", "history-item");
      b.type = "button";
      const title = el("span", "h-problem");
      setInlineMath(title, h.problem);
      b.title = clean(h.problem);
      b.append(title);
      const mark = h.correct === true ? " ✓" : h.correct === false ? " ✗" : "";
      b.append(el("span", "h-meta", `${h.answer == null ? "no answer" : "= " + clean(h.answer)}${mark} · ${new Date(h.at).toLocaleString()}`));
      b.addEventListener("click", () => { closeDrawer(); replay(h); });
      li.append(b);
      historyList.append(li);
    }
  }
  async function replay(h) {
    const t = addTurn(h.problem);
    try {
      const r = await fetch(`/v1/trajectories/${encodeURIComponent(h.trajectory_id)}`);
      if (!r.ok) throw new Error((await r.json()).error?.message || `HTTP ${r.status}`);
      const { trajectory: tr } = await r.json();
      const e = episodeFor(t, { sample: 0, revision: 0 });
      let obs = 0;
      for (const seg of tr.segments) {
        if (seg.kind === "model") e.addText(seg.text);
        else if (seg.kind === "observation") {
          const call = tr.calls[obs++];
          e.addObservation({ text: seg.text, status: call ? call.result.status : "ok", wall_ms: call ? call.result.wall_ms : 0 });
        }
      }
      e.finish();
      renderResult(t, { answer: tr.answer, correct: tr.correct, gold: tr.gold, model_version: tr.model_version,
                        trajectory_id: tr.id, feedback_token: h.feedback_token, elapsed_ms: tr.timings.total_ms });
    } catch (err) {
      showError(t, `could not load this problem: ${err.message}`);
    }
  }

  // ---------------------------------------------------------------- model version + health
  function setHealth(up, note) {
    for (const id of ["#health-dot", "#health-dot-top"]) {
      $(id).className = `dot ${up ? "up" : "down"}`;
      $(id).title = up ? "ready" : note;
    }
    $("#health-note").textContent = up ? "" : note;
  }
  async function refreshModel() {
    try {
      const [models, health] = await Promise.all([fetch("/v1/models").then((r) => r.json()), fetch("/readyz").then((r) => r.json())]);
      const m = models.data[0];
      $("#model-id").textContent = m.id;
      $("#model-version").textContent = $("#model-version-top").textContent = m.version || "not loaded";
      const down = Object.entries(health.checks).filter(([, c]) => c.status !== "up").map(([k]) => k);
      setHealth(health.ready, `not ready: ${down.join(", ")} down; new problems are refused until it is back`);
    } catch {
      setHealth(false, "the gateway cannot be reached");
    }
  }

  // ---------------------------------------------------------------- wiring
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const problem = problemBox.value.trim();
    if (!problem || controller) return;
    problemBox.value = "";
    solve(problem, takeOptions());
  });
  problemBox.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) { ev.preventDefault(); form.requestSubmit(); }
  });
  stopBtn.addEventListener("click", () => controller?.abort());
  // A new problem starts clean: an empty thread, no text, no expected answer (a running solve is stopped).
  function newProblem() {
    controller?.abort();
    thread.replaceChildren(emptyState);
    problemBox.value = "";
    goldBox.value = "";
    markOptions();
    closeDrawer();
    problemBox.focus();
  }
  $("#new-chat").addEventListener("click", newProblem);
  $("#new-chat-top").addEventListener("click", newProblem);
  goldBox.addEventListener("input", markOptions);
  document.querySelectorAll(".example").forEach((b) => {
    setInlineMath(b, b.dataset.problem);
    b.addEventListener("click", () => { problemBox.value = b.dataset.problem; problemBox.focus(); });
  });

  // ---------------------------------------------------------------- the drawer (narrow screens)
  function openDrawer() {
    sidebar.classList.add("open");
    backdrop.hidden = false;
    menuBtn.setAttribute("aria-expanded", "true");
    $("#new-chat").focus();
  }
  function closeDrawer() {
    if (!sidebar.classList.contains("open")) return;
    sidebar.classList.remove("open");
    backdrop.hidden = true;
    menuBtn.setAttribute("aria-expanded", "false");
  }
  menuBtn.addEventListener("click", () => (sidebar.classList.contains("open") ? closeDrawer() : openDrawer()));
  backdrop.addEventListener("click", closeDrawer);
  document.addEventListener("keydown", (ev) => { if (ev.key === "Escape") closeDrawer(); });
  drawHistory();
  refreshModel();
  setInterval(refreshModel, 30000);
})();
