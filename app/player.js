// The denoising player: draws a decode from its compact step events (app/feed.py) in the browser.
// Runs as a gr.HTML component's js_on_load: `element`, `props` and `watch` are Gradio's. The frames follow
// app/render.py's FrameBuilder and watch_frames (tested against them in tests/browser/): before each block's
// first step an "opening" frame (every position masked), then the state after every step.
const MASK = "\u2592";
const MAX_WATCH_MS = 20000; // a longer replay skips frames evenly, as app/replay.py did on the server
const PACES = [0, 30, 60, 120, 250, 500];
const END_MARK = "\u23ce end"; // the stop token (app/render.py END_MARK)
const END_TITLE = "the stop token: the answer ends here";

function esc(s) {
  return String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
}

function answerStart(steps) {
  if (!steps.length) return 0;
  return steps[0].at + (steps[0].x ? steps[0].x.length : 0);
}

// The feed's events arrive as one growing text (app/feed.py): a line of JSON per step, and {"pieces": {...}} lines
// with the text of the tokens the steps after them print. readLog parses the complete lines from `from` on into
// `steps` and `pieces`, and returns where it stopped.
function readLog(text, from, steps, pieces) {
  const end = text.lastIndexOf("\n") + 1;
  if (end <= from) return from;
  for (const line of text.slice(from, end).split("\n")) {
    if (!line) continue;
    const item = JSON.parse(line);
    if (item.pieces) Object.assign(pieces, item.pieces); else steps.push(item);
  }
  return end;
}

// A value with its log read: `steps` and `pieces` in place of `log`.
function expand(value) {
  const steps = [], pieces = {};
  readLog(value.log || "", 0, steps, pieces);
  return Object.assign({}, value, {steps, pieces});
}

// Incremental frame builder: push(step) returns the frame after it; opening(step) the frame before it.
function makeBuilder(value) {
  const stops = new Set(value.stop || []);
  const ar = !!value.ar;
  const st = {done: [], committed: new Map(), current: null, last: null, n: 0, end: null};
  function cellsOf(step, freshStep) {
    const prompt = new Set(step.x || []);
    const masked = new Map(step.m.map(([off, cand, conf]) => [off, [cand, conf]]));
    const cells = [];
    const width = value.L || 1;
    for (let off = 0; off < width; off++) {
      if (prompt.has(off)) continue;
      const pos = step.at + off;
      const c = st.committed.get(off);
      if (c) cells.push({pos, tok: c.tok, conf: c.conf, step: c.step, fresh: c.step === freshStep});
      else {
        const [cand, conf] = masked.get(off) || [null, null];
        cells.push({pos, tok: null, conf, step: null, cand});
      }
    }
    return cells;
  }
  function enter(step) {
    const key = step.b + ":" + step.at;
    if (st.current !== null && st.current !== key) {
      for (const c of cellsOf(st.last, null)) if (c.tok !== null) st.done.push(c);
      st.committed = new Map();
    }
    st.current = key;
  }
  return {
    opening(step) {
      enter(step);
      const prompt = new Set(step.x || []);
      const masked = new Map(step.m.map(([off, cand, conf]) => [off, [cand, conf]]));
      const block = [];
      for (let off = 0; off < (value.L || 1); off++) {
        if (prompt.has(off)) continue;
        const [cand, conf] = masked.get(off) || [null, null];
        block.push({pos: step.at + off, tok: null, conf, step: null, cand});
      }
      return {step: st.n, done: st.done.slice(), block, blockIndex: step.b, blockStep: null, final: false,
              opening: true, end: st.end};
    },
    push(step) {
      enter(step);
      step.c.forEach((off, i) => {
        st.committed.set(off, {tok: step.t[i], conf: step.p[i], step: st.n});
        if (stops.has(step.t[i])) st.end = Math.min(st.end === null ? Infinity : st.end, step.at + off + 1);
      });
      st.last = step;
      const frame = {step: st.n, done: st.done.slice(), block: cellsOf(step, st.n), blockIndex: step.b,
                     blockStep: step.s, final: !!step.f, opening: false, end: st.end};
      if (ar) { // one token per forward: the token joins the answer at once, nothing is ever masked
        frame.done = frame.done.concat(frame.block);
        frame.block = [];
      }
      st.n += 1;
      return frame;
    },
  };
}

// Every frame a replay shows for `value` (opening frames before each block's first step, none for AR).
function buildFrames(value) {
  if (!value.steps) value = expand(value);
  const builder = makeBuilder(value);
  const frames = [];
  for (const step of value.steps || []) {
    if (step.s === 0 && !value.ar) frames.push(builder.opening(step));
    frames.push(builder.push(step));
  }
  return frames;
}

// Positions from here on follow the answer's end: the kept answer's end once the decode is done (every frame of a
// replay), else the first stop token committed by this frame.
function discardedAt(frame, value) {
  const end = value.end !== null && value.end !== undefined ? value.end : frame.end;
  return end === null || end === undefined ? Infinity : end;
}

// The frame as plain text: masks as the mask glyph (left out with masks=false), stop tokens and what follows
// the answer's end left out. Mirrors app/render.py frame_text.
function frameText(frame, value, masks = true) {
  const stops = new Set(value.stop || []);
  const end = discardedAt(frame, value);
  let out = "";
  for (const c of frame.done.concat(frame.block)) {
    if (c.pos >= end || stops.has(c.tok)) continue;
    if (c.tok === null) { if (masks) out += MASK; continue; }
    out += piece(value, c.tok);
  }
  return out;
}

function piece(value, tok) {
  const p = value.pieces[String(tok)];
  return p === undefined ? "<" + tok + ">" : p;
}

function colour(conf) {
  if (conf === null || conf === undefined || Number.isNaN(conf)) return "#e5e7eb";
  const c = Math.max(0, Math.min(1, conf));
  return "hsl(" + Math.round(120 * c) + ", 75%, 82%)";
}

function cellHtml(c, value, end) {
  if (c.tok === null) {
    const cand = c.cand === null || c.cand === undefined ? "" : " \u00b7 best guess " + JSON.stringify(piece(value, c.cand));
    const conf = c.conf === null || c.conf === undefined ? "" : " (" + c.conf.toFixed(2) + ")";
    return '<span class="sdar-tok sdar-mask" title="' + esc("position " + c.pos + ": masked" + cand + conf) + '">' +
      MASK + "</span>";
  }
  const stops = new Set(value.stop || []);
  if (stops.has(c.tok)) return '<span class="sdar-end" title="' + END_TITLE + '">' + END_MARK + "</span>";
  const classes = ["sdar-tok"];
  if (c.fresh) classes.push("sdar-fresh");
  if (c.pos >= end) classes.push("sdar-discarded");
  const text = esc(piece(value, c.tok)).replace(/\n/g, "\u21b5<br>") || "&nbsp;";
  const title = "position " + c.pos + " \u00b7 confidence " + (c.conf === null ? "?" : c.conf.toFixed(2)) +
    " \u00b7 committed at step " + (c.step + 1);
  return '<span class="' + classes.join(" ") + '" style="background:' + colour(c.conf) + '" title="' + esc(title) +
    '">' + text + "</span>";
}

function where(frame, value, total) {
  const of = total ? " of " + total : "";
  if (value.ar) return "token " + (frame.step + 1) + of + " (one token per forward)";
  if (frame.blockIndex === null || frame.blockIndex === undefined) return "";
  if (frame.opening) {
    const masked = frame.block.filter((c) => c.tok === null).length;
    return "block " + (frame.blockIndex + 1) + " opens, " + masked + " positions masked \u00b7 next: step " +
      (frame.step + 1) + of;
  }
  return "step " + (frame.step + 1) + of + " \u00b7 block " + (frame.blockIndex + 1) + ", its denoising step " +
    (frame.blockStep + 1) + (frame.final ? " (block complete)" : "");
}

function frameHtml(frame, value, total) {
  const end = discardedAt(frame, value);
  const done = frame.done.map((c) => cellHtml(c, value, end)).join("");
  const block = frame.block.length ? '<span class="sdar-block">' + frame.block.map((c) => cellHtml(c, value, end)).join("") +
    "</span>" : "";
  return done + block || '<span class="sdar-quiet">(nothing generated yet)</span>';
}

// The heatmap: x the answer's token index, y the global step (from 1), colour the confidence of each position
// while it was masked; a dark mark where a position was committed; a band on the step the player shows.
function drawHeatmap(canvas, value, frames, cursor) {
  const steps = value.steps || [];
  const ctx = canvas.getContext("2d");
  if (!steps.length) { canvas.width = canvas.height = 0; canvas.dataset.steps = "0"; return; }
  const start = answerStart(steps);
  let width = 0;
  for (const s of steps) width = Math.max(width, s.at + (value.L || 1) - start);
  const cw = Math.max(3, Math.min(18, Math.floor(860 / Math.max(width, 1))));
  const ch = Math.max(3, Math.min(14, Math.floor(420 / steps.length)));
  canvas.width = width * cw; canvas.height = steps.length * ch;
  canvas.dataset.steps = String(steps.length); canvas.dataset.tokens = String(width);
  ctx.fillStyle = "#f8fafc"; ctx.fillRect(0, 0, canvas.width, canvas.height);
  steps.forEach((s, y) => {
    for (const [off, , conf] of s.m) {
      const x = s.at + off - start;
      if (x < 0) continue;
      ctx.fillStyle = colour(conf); ctx.fillRect(x * cw, y * ch, cw, ch);
    }
    ctx.fillStyle = "#111827";
    for (const off of s.c) {
      const x = s.at + off - start;
      if (x >= 0) ctx.fillRect(x * cw + cw / 4, y * ch + ch / 4, Math.max(1, cw / 2), Math.max(1, ch / 2));
    }
  });
  const frame = frames[cursor];
  if (frame) {
    const y = frame.step; // an opening frame marks the step about to run
    canvas.dataset.shownStep = String(y + 1);
    ctx.strokeStyle = "#2563eb"; ctx.lineWidth = 2; ctx.strokeRect(1, y * ch + 1, canvas.width - 2, Math.max(ch - 2, 1));
  }
  canvas._geometry = {cw, ch, start};
}

function mount(element, props, watch) {
  const root = element.querySelector(".sdar-player");
  root.innerHTML =
    '<div class="sdar-head"><span class="sdar-title"></span><span class="sdar-where"></span></div>' +
    '<div class="sdar-frame" aria-live="polite"></div>' +
    '<div class="sdar-controls">' +
    '<button type="button" class="sdar-replay" title="Play the decode again from its first frame">\u25b6 Replay</button>' +
    '<button type="button" class="sdar-stop" title="Stop the replay on the frame it shows">\u25a0 Stop</button>' +
    '<label class="sdar-speed-label">delay per frame <select class="sdar-speed"></select></label>' +
    '<input type="range" class="sdar-scrub" min="0" max="0" value="0" step="1" aria-label="frame">' +
    '<span class="sdar-count"></span></div>' +
    '<div class="sdar-note"></div>' +
    '<div class="sdar-legend">confidence <span class="sdar-tok" style="background:' + colour(0.1) + '">0.1</span>' +
    '<span class="sdar-tok" style="background:' + colour(0.5) + '">0.5</span><span class="sdar-tok" style="background:' +
    colour(0.9) + '">0.9</span> \u00b7 <span class="sdar-tok sdar-mask">' + MASK + '</span> still masked \u00b7 ' +
    '<span class="sdar-tok sdar-fresh">new</span> committed at this step \u00b7 <span class="sdar-block">\u2026</span> ' +
    'block being denoised \u00b7 <span class="sdar-end">' + END_MARK + '</span> the answer ends \u00b7 ' +
    '<span class="sdar-tok sdar-discarded">after</span> decoded after the end: dropped</div>' +
    '<div class="sdar-heat"><div class="sdar-heat-title">How sure the model was of each position while it was still ' +
    'masked. One row per denoising step (top: first), one column per answer position; colour: the confidence of ' +
    'its best guess (red: unsure, green: sure); dark dot: committed at that step; blue outline: the step shown. ' +
    'Hover a cell for its guess, click a row to show that step.</div><canvas class="sdar-heatmap"></canvas></div>';
  const $ = (sel) => root.querySelector(sel);
  const speed = $(".sdar-speed");
  for (const ms of PACES) {
    const o = document.createElement("option");
    o.value = String(ms); o.textContent = ms === 0 ? "none (live)" : ms + " ms";
    speed.appendChild(o);
  }
  const withHeatmap = !!props.heatmap;
  if (!withHeatmap) $(".sdar-heat").style.display = "none";
  const state = {run: null, value: null, frames: [], builder: null, pushed: 0, cursor: 0, timer: null,
                 playing: false, pace: 120, follow: true, autoplay: false, read: 0, steps: [], pieces: {}};

  function total() {
    return state.value && state.value.status !== "decoding" ? state.value.steps.length : null;
  }
  function draw() {
    const v = state.value;
    if (!v) return;
    const frames = state.frames;
    root.dataset.status = v.status;
    root.dataset.playing = state.playing ? "1" : "0";
    root.dataset.frames = String(frames.length);
    $(".sdar-title").textContent = v.title || "";
    $(".sdar-note").textContent = v.note || "";
    $(".sdar-controls").style.display = frames.length ? "" : "none";
    if (!frames.length) {
      $(".sdar-frame").innerHTML = '<span class="sdar-quiet">' + esc(v.note || (v.status === "decoding" ?
        "Decoding\u2026" : "Nothing to show yet.")) + "</span>";
      $(".sdar-where").textContent = "";
      root.dataset.frame = "-1"; root.dataset.masked = "0"; root.dataset.filled = "0";
      if (withHeatmap) drawHeatmap($(".sdar-heatmap"), v, frames, -1);
      return;
    }
    const i = Math.max(0, Math.min(state.cursor, frames.length - 1));
    const frame = frames[i];
    const last = i === frames.length - 1 && v.status !== "decoding";
    $(".sdar-frame").innerHTML = frameHtml(frame, v, total());
    const label = state.playing ? "Watch" : (v.status === "decoding" ? "Live" : (last ? "Done" : "Frame"));
    $(".sdar-where").textContent = (v.title ? " \u2014 " : "") + label + ": " + where(frame, v, total());
    const scrub = $(".sdar-scrub");
    scrub.max = String(frames.length - 1); scrub.value = String(i);
    $(".sdar-count").textContent = "frame " + (i + 1) + " of " + frames.length + (v.status === "decoding" ? "+" : "");
    root.dataset.frame = String(i);
    root.dataset.masked = String(frame.block.filter((c) => c.tok === null).length);
    root.dataset.filled = String(frame.block.filter((c) => c.tok !== null).length);
    root.dataset.text = frameText(frame, v);
    if (withHeatmap) drawHeatmap($(".sdar-heatmap"), v, frames, i);
  }
  function stopTimer() {
    if (state.timer) clearTimeout(state.timer);
    state.timer = null; state.playing = false;
  }
  function tick() {
    state.timer = null;
    const n = state.frames.length;
    const stride = Math.max(1, Math.ceil(n * state.pace / MAX_WATCH_MS));
    state.cursor = Math.min(n - 1, state.cursor + stride);
    if (state.cursor >= n - 1 && state.value.status !== "decoding") state.playing = false; // the replay's end
    draw();
    if (state.playing) state.timer = setTimeout(tick, state.pace);
  }
  function play(from) {
    stopTimer();
    state.cursor = from; state.playing = true; state.follow = false;
    draw();
    state.timer = setTimeout(tick, state.pace || 120);
  }
  $(".sdar-replay").addEventListener("click", () => {
    if (!state.pace) { state.pace = 120; speed.value = "120"; }
    play(0);
  });
  $(".sdar-stop").addEventListener("click", () => { stopTimer(); state.follow = false; draw(); });
  speed.addEventListener("change", () => {
    state.pace = Number(speed.value);
    if (!state.pace) { stopTimer(); state.follow = true; state.cursor = state.frames.length - 1; draw(); }
  });
  $(".sdar-scrub").addEventListener("input", (ev) => {
    stopTimer(); state.follow = false; state.cursor = Number(ev.target.value); draw();
  });
  const heat = $(".sdar-heatmap");
  heat.addEventListener("mousemove", (ev) => {
    const g = heat._geometry, v = state.value;
    if (!g || !v) return;
    const r = heat.getBoundingClientRect();
    const x = Math.floor((ev.clientX - r.left) * heat.width / r.width / g.cw);
    const y = Math.floor((ev.clientY - r.top) * heat.height / r.height / g.ch);
    const s = v.steps[y];
    if (!s) return;
    const m = s.m.find(([off]) => s.at + off - g.start === x);
    heat.title = "token " + x + " \u00b7 step " + (y + 1) + (m ? " \u00b7 confidence " + m[2].toFixed(3) + " \u00b7 best guess " +
      JSON.stringify(piece(v, m[1])) : " \u00b7 not masked at this step");
  });
  heat.addEventListener("click", (ev) => { // shows the frame after the step clicked
    const g = heat._geometry;
    if (!g) return;
    const r = heat.getBoundingClientRect();
    const y = Math.floor((ev.clientY - r.top) * heat.height / r.height / g.ch);
    const i = state.frames.findIndex((f) => !f.opening && f.step === y);
    if (i >= 0) { stopTimer(); state.follow = false; state.cursor = i; draw(); }
  });

  function update() {
    const v = props.value;
    if (!v || typeof v !== "object") return;
    if (v.run !== state.run) { // a new decode: start over
      stopTimer();
      state.run = v.run; state.frames = []; state.pushed = 0; state.builder = makeBuilder(v); state.cursor = 0;
      state.read = 0; state.steps = []; state.pieces = {};
      state.pace = Number(v.pace) || 0; state.follow = !state.pace && v.cursor !== 0; state.autoplay = !!state.pace;
      speed.value = PACES.includes(state.pace) ? String(state.pace) : "120";
      if (!PACES.includes(state.pace) && state.pace) {
        const o = document.createElement("option"); o.value = String(state.pace); o.textContent = state.pace + " ms";
        speed.appendChild(o); speed.value = String(state.pace);
      }
    }
    const log = typeof v.log === "string" ? v.log : "";
    if (log.length < state.read) { // the same run sent anew (never shorter otherwise): read it again
      state.read = 0; state.steps = []; state.pieces = {}; state.frames = []; state.pushed = 0;
      state.builder = makeBuilder(v);
    }
    state.read = readLog(log, state.read, state.steps, state.pieces);
    state.value = Object.assign({}, v, {steps: state.steps, pieces: state.pieces});
    const steps = state.steps;
    for (; state.pushed < steps.length; state.pushed++) {
      const step = steps[state.pushed];
      if (step.s === 0 && !v.ar) state.frames.push(state.builder.opening(step));
      state.frames.push(state.builder.push(step));
    }
    if (state.follow) state.cursor = Math.max(0, state.frames.length - 1);
    if (state.autoplay && state.frames.length) { // watch mode: the replay starts with the first frame received
      state.autoplay = false;
      play(0);
      return;
    }
    draw();
  }
  watch("value", update);
  update();
}

window.SDARPlayer = {buildFrames, frameText, answerStart, expand};
if (element) mount(element, props, watch); // without one (tests under node): the pure functions only
