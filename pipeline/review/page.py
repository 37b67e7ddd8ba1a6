"""The review page: one self-contained HTML page, its script and stylesheet (no CDN, works
offline). The script renders every piece of data with `textContent`, never as markup, and the
server's Content-Security-Policy allows no inline script, so a response holding `<script>` or
`<img onerror>` is shown as the text it is."""

HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>prefpipe review</title>
<link rel="stylesheet" href="/static/review.css">
<script src="/static/review.js" defer></script>
</head><body>
<header>
  <h1 id="title">prefpipe review</h1>
  <div id="progress-line"><progress id="bar" value="0" max="1"></progress> <span id="progress"></span></div>
  <nav><a href="/summary" id="summary-link">summary</a></nav>
</header>
<main id="review">
  <section id="prompt"><h2>Prompt</h2><div id="conversation"></div></section>
  <section id="responses">
    <article class="response" id="left"><h2>Response 1 <kbd>1</kbd></h2><div class="text" id="left-text"></div></article>
    <article class="response" id="right"><h2>Response 2 <kbd>2</kbd></h2><div class="text" id="right-text"></div></article>
  </section>
  <div id="actions">
    <button data-label="left">1: response 1 is better</button>
    <button data-label="right">2: response 2 is better</button>
    <button data-label="tie">t: tie</button>
    <button data-label="skip">s: skip</button>
    <button id="undo">u: undo last label</button>
  </div>
  <p id="status" role="status"></p>
</main>
<section id="done" hidden><h2>All pairs of this sample are labelled.</h2>
  <p>Press <kbd>u</kbd> to undo the last label, or see the <a href="/summary">summary</a>.</p></section>
</body></html>
"""

CSS = """
body { font-family: system-ui, sans-serif; margin: 1em 2em; color: #222; }
header { display: flex; align-items: center; gap: 2em; flex-wrap: wrap; }
h1 { font-size: 1.3em; margin: 0; }
h2 { font-size: 1em; margin: .2em 0 .5em; }
progress { width: 14em; }
.turn { border-left: 4px solid #aaa; padding: .3em .8em; margin: .4em 0; background: #f6f6f6; }
.turn.user { border-color: #3b73b9; }
.turn.assistant { border-color: #5a9e5a; }
.turn.system { border-color: #999; font-style: italic; }
.role { font-weight: bold; font-size: 85%; color: #555; display: block; }
.content, .text { white-space: pre-wrap; overflow-wrap: anywhere; }
#responses { display: grid; grid-template-columns: 1fr 1fr; gap: 1.5em; margin-top: 1em; }
.response { border: 1px solid #ccc; border-radius: 4px; padding: .6em 1em; max-height: 60vh; overflow: auto; }
#actions { margin: 1em 0; display: flex; gap: .6em; flex-wrap: wrap; }
button { padding: .4em .9em; font-size: 95%; cursor: pointer; }
kbd { border: 1px solid #999; border-radius: 3px; padding: 0 .3em; font-size: 85%; background: #fff; }
#status { color: #555; min-height: 1.2em; }
table { border-collapse: collapse; margin: .5em 0 1.5em; font-size: 90%; }
td, th { border: 1px solid #ccc; padding: .25em .6em; text-align: left; }
td.n { text-align: right; }
"""

JS = r"""
"use strict";
let state = null, busy = false;
const $ = id => document.getElementById(id);
const KEYS = {"1": "left", "2": "right", "t": "tie", "s": "skip"};
const ROLES = {user: "User", assistant: "Assistant", system: "System"};

function turn(message) {
  const div = document.createElement("div");
  div.className = "turn " + (ROLES[message.role] ? message.role : "other");
  const role = document.createElement("span");
  role.className = "role";
  role.textContent = ROLES[message.role] || message.role;
  const content = document.createElement("div");
  content.className = "content";
  content.textContent = message.content;
  div.append(role, content);
  return div;
}

function render(s) {
  state = s;
  $("title").textContent = `review ${s.dataset}@${s.version} (${s.reviewer})`;
  $("bar").max = Math.max(s.total, 1);
  $("bar").value = s.done;
  $("progress").textContent = `${s.done} of ${s.total} labelled`;
  document.body.dataset.done = String(s.done);
  document.body.dataset.pair = s.pair ? s.pair.pair_id : "";
  $("undo").disabled = !s.last;
  if (!s.pair) {
    $("review").hidden = true;
    $("done").hidden = false;
    return;
  }
  $("review").hidden = false;
  $("done").hidden = true;
  $("conversation").replaceChildren(...s.pair.prompt.map(turn));
  $("left-text").textContent = s.pair.left;
  $("right-text").textContent = s.pair.right;
  $("left").scrollTop = 0;
  $("right").scrollTop = 0;
}

async function call(path, body) {
  if (busy) return;
  busy = true;
  document.body.dataset.busy = "1";
  try {
    const r = await fetch(path, body === undefined ? {} :
      {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
    const data = await r.json();
    if (!r.ok) {
      $("status").textContent = data.detail || `error ${r.status}`;
      await refresh();
      return;
    }
    $("status").textContent = body === undefined ? "" : (data.message || "");
    render(data);
  } catch (err) {
    $("status").textContent = "the review server is not answering: restart it (labels so far are saved)";
  } finally {
    busy = false;
    document.body.dataset.busy = "";
  }
}

async function refresh() {
  const r = await fetch("/api/state");
  render(await r.json());
}

function label(choice) {
  if (state && state.pair) call("/api/label", {pair_id: state.pair.pair_id, label: choice});
}

function undo() {
  if (state && state.last) call("/api/undo", {pair_id: state.last.pair_id});
}

document.addEventListener("keydown", e => {
  if (e.ctrlKey || e.metaKey || e.altKey || e.repeat) return;
  const key = e.key.toLowerCase();
  if (KEYS[key]) { e.preventDefault(); label(KEYS[key]); }
  else if (key === "u") { e.preventDefault(); undo(); }
});
document.querySelectorAll("button[data-label]").forEach(b => b.addEventListener("click", () => label(b.dataset.label)));
$("undo").addEventListener("click", undo);
call("/api/state");
"""

SUMMARY = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>summary - prefpipe review</title>
<link rel="stylesheet" href="/static/review.css"></head><body>
<h1>{{ s.dataset }}@{{ s.version }}: review summary</h1>
<p><a href="/">back to labelling</a></p>
<section id="progress-summary"><h2>This sample (seed {{ s.seed }})</h2>
<p>{{ s.reviewer }}: {{ s.done }} of {{ s.total }} pairs labelled
({% for k, v in s.counts.items() %}{{ k }} {{ v }}{% if not loop.last %}, {% endif %}{% endfor %}).
Labels: <code>{{ s.labels_file }}</code>.</p></section>
<section id="audit"><h2>Agreement with the published pairs</h2>
{% if not audit %}<p>No labels yet.</p>{% else %}
<p>{{ headline }}</p>
<table><tr><th>group</th><th>pairs in version</th><th>labelled</th><th>human ties</th><th>accuracy (ties excluded)</th><th>95% CI</th><th>Cohen's kappa</th><th>95% CI</th></tr>
{% for name, g in groups %}<tr><td>{{ name }}</td><td class="n">{{ g.population if g.population is defined else "" }}</td>
<td class="n">{{ g.pairs }}</td><td class="n">{{ g.human_ties }}</td><td class="n">{{ num(g.accuracy_excluding_ties) }}</td>
<td>{{ ci(g.ci95.accuracy_excluding_ties) }}</td><td class="n">{{ num(g.cohen_kappa) }}</td><td>{{ ci(g.ci95.cohen_kappa) }}</td></tr>
{% endfor %}</table>
<h2>Between reviewers</h2>
{% if audit.inter_reviewer %}<table><tr><th>reviewers</th><th>common pairs</th><th>agreement</th><th>Cohen's kappa</th><th>95% CI</th></tr>
{% for r in audit.inter_reviewer %}<tr><td>{{ r.reviewers|join(" / ") }}</td><td class="n">{{ r.pairs }}</td>
<td class="n">{{ num(r.agreement) }}</td><td class="n">{{ num(r.cohen_kappa) }}</td><td>{{ ci(r.kappa_ci95) }}</td></tr>{% endfor %}</table>
{% else %}<p>One reviewer so far: agreement between reviewers needs two.</p>{% endif %}
{% endif %}</section>
</body></html>
"""
