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
      return window.katex.renderToString(src, { displayMode: display, throwOnError: false, trust: false, strict: "ignore", maxExpand: 200, maxSize: 20 });
    } catch (e) {
      return `<code>${escapeHtml(src)}</code>`;
    }
  }
  function escapeHtml(s) {
    return s.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  }
  function renderMarkdown(text) {
    const stash = [];
    let src = clean(text);
    for (const [re, display] of MATH) {
      src = src.replace(re, (m, inner) => {
        stash.push(tex(re.source.startsWith("(\\\\boxed") ? m : inner, display));
        return `\u0091${stash.length - 1}\u0092`;
      });
    }
    let html = window.marked ? window.marked.parse(src, { gfm: true, breaks: true, async: false }) : escapeHtml(src);
    html = html.replace(/\u0091(\d+)\u0092/g, (_, i) => stash[Number(i)] ?? "");
    const safe = window.DOMPurify ? window.DOMPurify.sanitize(html, { USE_PROFILES: { html: true, mathMl: true, svg: true } }) : escapeHtml(src);
    return safe;
  }
  function setMath(node, text) {
    node.innerHTML = renderMarkdown(text);
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
      this.pending = false;
    }
    addText(t) { this.raw += String(t).replace(SPECIAL, ""); this.schedule(); }
    addObservation(ev) { this.observations.push(ev); this.raw += ev.text || ""; this.schedule(); }
    finish() { this.live = false; this.render(); }
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
      const status = obs ? obs.status : p.output !== null ? "ok" : p.closed ? "running" : "writing";
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
    $("#empty")?.remove();
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
      v.innerHTML = renderMarkdown(`$${result.answer}$`);
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
    foot.append(thumbs(result.trajectory_id));
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
    if (flip) svg.style.transform = "rotate(180deg)";
    const p = document.createElementNS(ns, "path");
    p.setAttribute("d", path);
    p.setAttribute("fill", "currentColor");
    svg.append(p);
    return svg;
  }

  function thumbs(trajectoryId) {
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
          method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ rating }),
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

  function showError(t, message) {
    t.footer.append(el("div", "error-box", clean(message)));
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

  async function solve(problem) {
    const t = addTurn(problem);
    const body = { problem, stream: true };
    const gold = $("#gold").value.trim();
    if (gold) body.gold = gold;
    const turns = parseInt($("#max-turns").value, 10);
    if (!Number.isNaN(turns)) body.max_turns = turns;
    const samples = parseInt($("#samples").value, 10);
    if (samples > 1) body.samples = samples;
    controller = new AbortController();
    busy(true);
    let result = null;
    try {
      const r = await fetch("/v1/solve", {
        method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body), signal: controller.signal,
      });
      if (!r.ok) {
        const err = await r.json().catch(() => ({}));
        throw new Error(err.error?.message || `HTTP ${r.status}`);
      }
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
      if (e.name === "AbortError") showError(t, "stopped");
      else showError(t, e.message);
    } finally {
      t.map.forEach((e) => e.live && e.finish());
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
                    model_version: result.model_version, at: Date.now() });
    localStorage.setItem(HISTORY_KEY, JSON.stringify(items.slice(0, 100)));
    drawHistory();
  }
  function drawHistory() {
    historyList.replaceChildren();
    for (const h of loadHistory()) {
      const li = el("li");
      const b = el("button", "history-item");
      b.type = "button";
      b.append(el("span", "h-problem", clean(h.problem)));
      const mark = h.correct === true ? " ✓" : h.correct === false ? " ✗" : "";
      b.append(el("span", "h-meta", `${h.answer == null ? "no answer" : "= " + clean(h.answer)}${mark} · ${new Date(h.at).toLocaleString()}`));
      b.addEventListener("click", () => replay(h));
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
                        trajectory_id: tr.id, elapsed_ms: tr.timings.total_ms });
    } catch (err) {
      showError(t, `could not load this problem: ${err.message}`);
    }
  }

  // ---------------------------------------------------------------- model version + health
  async function refreshModel() {
    try {
      const [models, health] = await Promise.all([fetch("/v1/models").then((r) => r.json()), fetch("/readyz").then((r) => r.json())]);
      const m = models.data[0];
      $("#model-id").textContent = m.id;
      $("#model-version").textContent = m.version || "not loaded";
      $("#health-dot").className = `dot ${health.ready ? "up" : "down"}`;
      $("#health-dot").title = health.ready ? "ready" : "not ready: " + Object.entries(health.checks).filter(([, c]) => c.status !== "up").map(([k]) => k).join(", ");
    } catch {
      $("#health-dot").className = "dot down";
    }
  }

  // ---------------------------------------------------------------- wiring
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const problem = problemBox.value.trim();
    if (!problem || controller) return;
    problemBox.value = "";
    solve(problem);
  });
  problemBox.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) { ev.preventDefault(); form.requestSubmit(); }
  });
  stopBtn.addEventListener("click", () => controller?.abort());
  $("#new-chat").addEventListener("click", () => { problemBox.value = ""; problemBox.focus(); });
  document.querySelectorAll(".example").forEach((b) => b.addEventListener("click", () => { problemBox.value = b.textContent; problemBox.focus(); }));
  drawHistory();
  refreshModel();
  setInterval(refreshModel, 30000);
})();
