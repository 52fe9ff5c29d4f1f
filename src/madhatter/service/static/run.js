// Follows one run over server-sent events and updates its progress table in place.
// The page is complete without this script; it only spares the reader a reload.
(function () {
  "use strict";
  const root = document.getElementById("run");
  if (!root || !window.EventSource) return;
  const id = root.dataset.runId;
  const body = document.getElementById("steps-body");
  const status = document.getElementById("run-status");
  const items = document.getElementById("run-items");
  const cachedFact = document.getElementById("run-cached-fact");
  const cached = document.getElementById("run-cached");
  const wasTerminal = root.dataset.terminal === "true";
  const cacheable = JSON.parse(root.dataset.cacheable || "null");  // the steps the cache keeps
  const source = new EventSource("/api/runs/" + encodeURIComponent(id) + "/stream");

  function cell(text) { const td = document.createElement("td"); td.textContent = text; return td; }

  function row(step) {
    const tr = document.createElement("tr");
    tr.appendChild(cell(step.name));
    const td = document.createElement("td");
    const bar = document.createElement("progress");
    bar.max = 100; bar.value = step.percent;
    bar.setAttribute("aria-label", "progress of step " + step.name);
    bar.dataset.step = step.name;
    td.appendChild(bar);
    tr.appendChild(td);
    tr.appendChild(cell(step.percent.toFixed(0) + "%"));
    const source = step.total === 0 && step.items_out > 0;  // a source: items out, none in
    const count = cell(source ? step.items_out + " out" : step.done + (step.total !== null ? " / " + step.total : ""));
    if (step.cached > 0) {  // found in the chunk cache, not computed
      const note = document.createElement("span");
      note.className = "cached";
      note.textContent = step.cached + " of " + step.done + " items from cache";
      count.append(document.createElement("br"), note);
    }
    tr.appendChild(count);
    tr.appendChild(cell(step.rate.toFixed(1) + " items/s"));
    return tr;
  }

  source.addEventListener("progress", function (e) {
    const data = JSON.parse(e.data);
    root.dataset.updates = String(Number(root.dataset.updates || 0) + 1);
    status.textContent = data.status;
    status.className = "status status-" + data.status;
    items.textContent = data.items;
    if (data.steps.length) {
      body.replaceChildren.apply(body, data.steps.map(row));
      let found = 0, of = 0;  // as cache_share in _progress.py
      data.steps.forEach(function (step) {
        if (cacheable !== null ? cacheable.indexOf(step.name) >= 0 : step.cached > 0) {
          found += step.cached; of += step.done;
        }
      });
      cachedFact.hidden = found === 0;
      cached.textContent = found + " of " + of + " items from cache, over the parallel steps" +
        (of ? " (" + Math.floor(100 * found / of) + "%)" : "");
    }
  });
  const output = document.getElementById("step-output");
  const rendered = Number(root.dataset.lastEvent || 0);  // events the page was rendered with
  let outputSize = output ? output.textContent.length : 0;
  // a running chunk's output comes in pieces: the next piece goes under the same head
  const heads = output ? output.querySelectorAll(".output-head") : [];
  let lastHead = heads.length ? heads[heads.length - 1].textContent : "";
  const OUTPUT_LIMIT = 1024 * 1024;  // as PAGE_OUTPUT_CHARACTERS in _progress.py
  source.addEventListener("madhatter", function (e) {
    if (Number(e.lastEventId) <= rendered) return;
    const event = JSON.parse(e.data);
    if (!output || event.type !== "ChunkOutput" || outputSize + event.text.length > OUTPUT_LIMIT) return;
    outputSize += event.text.length;
    const text = "[" + event.step + " chunk " + event.chunk + " " + event.stream + "]\n";
    if (text !== lastHead) {
      const head = document.createElement("span");
      head.className = "output-head";
      head.textContent = text;
      output.append(head);
      lastHead = text;
    }
    output.append(document.createTextNode(event.text));
  });
  source.addEventListener("end", function () {
    source.close();
    if (!wasTerminal) window.location.reload();  // show the result, timeline and logs
  });
})();
