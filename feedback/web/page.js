// The annotation page's client side: keyboard shortcuts, the 1:1 compare view and the region boxes.
// Everything here only reads the page (the gallery's images and captions), sets the page's hidden fields and presses
// its own buttons, so every recorded action still goes through the server's handlers (feedback/web/ui.py).
(() => {
  const $ = (sel, root = document) => root.querySelector(sel);
  const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));
  const view = { cx: 0.5, cy: 0.5, zoom: 2, chosen: [], mode: "side", a: 0, b: 1, split: 0.5, interactions: 0 };
  let drag = null;

  // ---- the page's state as the DOM shows it ------------------------------------------------------------------
  function tiles() {  // [{k, src, caption, width, height}] in gallery order
    return $$("#gallery button.thumbnail-item").map((button, k) => {
      const img = $("img", button);
      const caption = $(".caption-label", button);
      return { k, src: img ? img.src : "", caption: caption ? caption.innerText.trim() : `#${k + 1}`,
               width: img ? img.naturalWidth : 0, height: img ? img.naturalHeight : 0 };
    });
  }
  function press(id) { const el = document.getElementById(id); if (el) el.click(); }
  function setText(id, value) {  // a (hidden) Gradio textbox: set its value as typing would
    const box = $(`#${id} textarea, #${id} input`);
    if (!box) return;
    box.value = value;
    box.dispatchEvent(new Event("input", { bubbles: true }));
  }
  function recordViewing() {
    setText("viewing", JSON.stringify({ zoom_count: view.interactions, viewport: [window.innerWidth, window.innerHeight],
                                        dpr: window.devicePixelRatio || 1 }));
  }
  function interacted() { view.interactions += 1; recordViewing(); }

  // ---- marks: a tile click cycles (none -> preferred -> rejected); the compare view sets one directly -----------
  function clickTile(k) { const b = $$("#gallery button.thumbnail-item")[k]; if (b) b.click(); }
  // Key presses mark one after another: each waits until the server re-captioned its tile (at most 2 s), so a
  // quick double press cycles twice instead of sending the same marks twice.
  let keyQueue = Promise.resolve();
  function clickTileQueued(k) {
    keyQueue = keyQueue.then(() => new Promise((resolve) => {
      const before = (tiles()[k] || {}).caption;
      clickTile(k);
      const t0 = Date.now();
      const poll = () => {
        if ((tiles()[k] || {}).caption !== before || Date.now() - t0 > 2000) resolve(); else setTimeout(poll, 30);
      };
      poll();
    }));
  }
  function setMark(k, mark) { setText("mark_request", `${k + 1}:${mark}`); setTimeout(() => press("mark_apply"), 30); }

  // ---- compare view ------------------------------------------------------------------------------------------
  function paneSize() { return view.mode === "slider" ? 640 : (view.chosen.length > 2 ? 300 : 420); }
  function place(img, t, size) {
    const w = t.width || img.naturalWidth || 1, h = t.height || img.naturalHeight || 1;
    const x = view.cx * w * view.zoom - size / 2, y = view.cy * h * view.zoom - size / 2;
    img.style.width = `${w * view.zoom}px`;
    img.style.height = `${h * view.zoom}px`;
    img.style.transform = `translate(${-x}px, ${-y}px)`;
  }
  function render() {
    const root = $("#compare_panes");
    if (!root) return;
    const all = tiles();
    const strip = $("#compare_strip");
    strip.innerHTML = "";
    all.forEach((t) => {
      const chip = document.createElement("button");
      chip.className = "compare-chip" + (view.chosen.includes(t.k) ? " chosen" : "");
      chip.dataset.k = t.k;
      chip.title = "add to / remove from the comparison";
      chip.innerHTML = `<img src="${t.src}" alt=""><span>${t.caption}</span>`;
      strip.appendChild(chip);
    });
    view.chosen = view.chosen.filter((k) => k < all.length);
    $("#compare_zoom").innerText = `${view.zoom}x`;
    root.innerHTML = "";
    root.className = view.mode === "slider" ? "slider" : "side";
    const size = paneSize();
    if (view.chosen.length < 2) {
      root.innerHTML = `<p class="compare-hint">Click two or more tiles above to compare them at ${view.zoom}x.</p>`;
      return;
    }
    if (view.mode === "slider") {
      const [ka, kb] = [view.chosen[view.a % view.chosen.length], view.chosen[view.b % view.chosen.length]];
      const pane = document.createElement("div");
      pane.className = "compare-pane";
      pane.style.width = pane.style.height = `${size}px`;
      for (const [k, cls] of [[ka, "under"], [kb, "over"]]) {
        const img = document.createElement("img");
        img.src = all[k].src;
        img.className = `compare-img ${cls}`;
        img.draggable = false;
        if (cls === "over") img.style.clipPath = `inset(0 0 0 ${view.split * 100}%)`;
        pane.appendChild(img);
        place(img, all[k], size);
      }
      // clip in pane coordinates: the over image shows right of the divider
      const over = $(".over", pane);
      const left = parseFloat(over.style.transform.match(/translate\((-?[\d.]+)px/)[1]);
      const width = parseFloat(over.style.width);
      over.style.clipPath = `inset(0 0 0 ${Math.max(0, (view.split * size - left) / width * 100)}%)`;
      const divider = document.createElement("div");
      divider.className = "compare-divider";
      divider.style.left = `${view.split * size}px`;
      pane.appendChild(divider);
      const label = document.createElement("div");
      label.className = "compare-label";
      label.innerText = `${all[ka].caption}  |  ${all[kb].caption}`;
      pane.appendChild(label);
      root.appendChild(pane);
      const range = document.createElement("input");
      range.type = "range"; range.min = 0; range.max = 100; range.value = Math.round(view.split * 100);
      range.id = "compare_split";
      range.addEventListener("input", () => { view.split = range.value / 100; interacted(); render(); });
      root.appendChild(range);
      return;
    }
    view.chosen.forEach((k) => {
      const t = all[k];
      const cell = document.createElement("div");
      cell.className = "compare-cell";
      const pane = document.createElement("div");
      pane.className = "compare-pane";
      pane.dataset.k = k;
      pane.style.width = pane.style.height = `${size}px`;
      const img = document.createElement("img");
      img.src = t.src; img.className = "compare-img"; img.draggable = false;
      pane.appendChild(img);
      place(img, t, size);
      const bar = document.createElement("div");
      bar.className = "compare-bar";
      bar.innerHTML = `<span>${t.caption}</span>` +
        `<button data-mark="preferred" data-k="${k}" title="mark preferred">✓ preferred</button>` +
        `<button data-mark="rejected" data-k="${k}" title="mark rejected">✗ rejected</button>` +
        `<button data-mark="none" data-k="${k}" title="clear the mark">clear</button>`;
      cell.appendChild(pane);
      cell.appendChild(bar);
      root.appendChild(cell);
    });
  }
  function zoomBy(factor) {
    view.zoom = Math.min(16, Math.max(1, Math.round(view.zoom * factor)));
    interacted(); render();
  }
  function pan(dx, dy) {  // dx, dy in screen pixels
    const t = tiles()[view.chosen[0]];
    if (!t || !t.width) return;
    view.cx = Math.min(1, Math.max(0, view.cx + dx / (t.width * view.zoom)));
    view.cy = Math.min(1, Math.max(0, view.cy + dy / (t.height * view.zoom)));
    render();
  }
  window.ttpoCompare = { view, render, zoomBy, pan, setMark };  // for tests and the curious

  document.addEventListener("click", (e) => {
    const chip = e.target.closest(".compare-chip");
    if (chip) {
      const k = Number(chip.dataset.k);
      view.chosen = view.chosen.includes(k) ? view.chosen.filter((x) => x !== k) : [...view.chosen, k];
      interacted(); render(); return;
    }
    const mark = e.target.closest(".compare-bar button");
    if (mark) { setMark(Number(mark.dataset.k), mark.dataset.mark); interacted(); return; }
    if (e.target.closest("#compare_zoom_in")) zoomBy(2);
    else if (e.target.closest("#compare_zoom_out")) zoomBy(0.5);
    else if (e.target.closest("#compare_one")) { view.zoom = 1; interacted(); render(); }
    else if (e.target.closest("#compare_mode")) {
      view.mode = view.mode === "slider" ? "side" : "slider";
      $("#compare_mode").innerText = view.mode === "slider" ? "side by side" : "before/after slider";
      interacted(); render();
    } else if (e.target.closest("#compare_swap")) { view.b = (view.b + 1) % Math.max(2, view.chosen.length);
      if (view.b === view.a) view.b = (view.b + 1) % Math.max(2, view.chosen.length); interacted(); render(); }
  });
  document.addEventListener("mousedown", (e) => {
    const pane = e.target.closest("#compare_panes .compare-pane");
    if (pane) { drag = { x: e.clientX, y: e.clientY }; e.preventDefault(); }
  });
  document.addEventListener("mousemove", (e) => {
    if (!drag) return;
    pan(drag.x - e.clientX, drag.y - e.clientY);
    drag = { x: e.clientX, y: e.clientY };
  });
  document.addEventListener("mouseup", () => { if (drag) { drag = null; interacted(); } });
  document.addEventListener("wheel", (e) => {
    if (!e.target.closest("#compare_panes .compare-pane")) return;
    e.preventDefault();
    zoomBy(e.deltaY < 0 ? 2 : 0.5);
  }, { passive: false });

  // ---- region marks: while drawing is on (the toggle or M), a drag on a tile draws a box where the problem is ------
  // Boxes are kept in [0, 1] coordinates of the tile's image ({on: tile number from 1, x, y, w, h, tag}), shown over
  // the tiles and listed under the tools (tag changeable, removable), and sent with the choice through the hidden
  // #regions field (feedback/web/ui_choices.py submit_choice; checked and stored by feedback/record/regions.py).
  const regions = { drawing: false, boxes: [], sketch: null };
  const floor4 = (v) => Math.floor(Math.min(1, Math.max(0, v)) * 10000) / 10000;
  function imageRect(img) {  // where the image is drawn inside its element (object-fit: contain), client pixels
    const r = img.getBoundingClientRect();
    const nw = img.naturalWidth || r.width || 1, nh = img.naturalHeight || r.height || 1;
    const s = Math.min(r.width / nw, r.height / nh);
    const w = nw * s, h = nh * s;
    return { left: r.left + (r.width - w) / 2, top: r.top + (r.height - h) / 2, width: w, height: h };
  }
  function setDrawing(on) {
    regions.drawing = on;
    document.body.classList.toggle("region-drawing", on);
    const toggle = document.getElementById("region_toggle");
    if (toggle) {
      toggle.classList.toggle("on", on);
      toggle.setAttribute("aria-pressed", String(on));
      toggle.innerText = on ? "Drawing: drag on a tile (M to stop)" : "Draw boxes on the tiles (M)";
    }
  }
  function regionsChanged() {
    setText("regions", regions.boxes.length ? JSON.stringify(regions.boxes) : "");
    drawRegions(true);
    listRegions();
  }
  function boxStyle(el, box) {
    Object.assign(el.style, { left: `${100 * box.x}%`, top: `${100 * box.y}%`, width: `${100 * box.w}%`,
                              height: `${100 * box.h}%` });
  }
  function drawRegions(force = false) {  // one layer per tile, over the drawn image; redrawn only when it changed
    $$("#gallery button.thumbnail-item").forEach((button, k) => {
      const img = $("img", button);
      if (!img) return;
      const on = String(k + 1);
      const boxes = regions.boxes.filter((b) => b.on === on);
      if (regions.sketch && regions.sketch.on === on) boxes.push(regions.sketch);
      const r = imageRect(img), br = button.getBoundingClientRect();
      const sig = JSON.stringify([boxes, Math.round(r.left - br.left), Math.round(r.top - br.top), Math.round(r.width),
                                  Math.round(r.height)]);
      let layer = $(".region-layer", button);
      if (!force && layer && layer.dataset.sig === sig) return;
      if (!boxes.length) { if (layer) layer.remove(); return; }
      if (!layer) { layer = document.createElement("div"); layer.className = "region-layer"; button.appendChild(layer); }
      layer.dataset.sig = sig;
      Object.assign(layer.style, { left: `${r.left - br.left}px`, top: `${r.top - br.top}px`, width: `${r.width}px`,
                                   height: `${r.height}px` });
      layer.replaceChildren(...boxes.map((box) => {
        const el = document.createElement("div");
        el.className = "region-box" + (box === regions.sketch ? " sketch" : "");
        boxStyle(el, box);
        const n = regions.boxes.indexOf(box);
        if (n >= 0) { el.dataset.n = n + 1; el.title = `box ${n + 1}${box.tag ? `: ${box.tag}` : ""}`; }
        return el;
      }));
    });
  }
  function listRegions() {
    const list = document.getElementById("region_list");
    const count = document.getElementById("region_count");
    if (count) count.innerText = regions.boxes.length ? `${regions.boxes.length} box${regions.boxes.length > 1 ? "es" : ""}`
                                                      : "no boxes";
    if (!list) return;
    const tags = $$("#region_tag option").map((o) => [o.value, o.innerText]);
    list.replaceChildren(...regions.boxes.map((box, n) => {
      const item = document.createElement("span");
      item.className = "region-item";
      item.dataset.n = n + 1;
      const what = document.createElement("span");
      what.innerText = `${n + 1}: tile #${box.on} at ${Math.round(100 * box.x)}%, ${Math.round(100 * box.y)}% ` +
                       `(${Math.round(100 * box.w)} x ${Math.round(100 * box.h)}%)`;
      const tag = document.createElement("select");
      tag.title = "what is wrong here (optional)";
      tag.append(...tags.map(([value, text]) => new Option(text, value, false, value === (box.tag || ""))));
      tag.onchange = () => { box.tag = tag.value || null; regionsChanged(); };
      const remove = document.createElement("button");
      remove.type = "button"; remove.innerText = "\u00d7"; remove.title = "remove this box";
      remove.onclick = () => { regions.boxes.splice(regions.boxes.indexOf(box), 1); regionsChanged(); };
      item.append(what, tag, remove);
      return item;
    }));
  }
  function clearRegions() { regions.boxes = []; regions.sketch = null; regionsChanged(); }
  window.ttpoRegions = { regions, setDrawing, clearRegions };  // for tests and the curious
  window.addEventListener("pointerdown", (e) => {
    if (!regions.drawing || e.button !== 0) return;
    const button = e.target.closest && e.target.closest("#gallery button.thumbnail-item");
    const img = button && $("img", button);
    if (!img) return;
    e.preventDefault();
    const on = String($$("#gallery button.thumbnail-item").indexOf(button) + 1);
    const r = imageRect(img);
    const at = (ev) => [(ev.clientX - r.left) / r.width, (ev.clientY - r.top) / r.height];
    const [x0, y0] = at(e).map((v) => Math.min(1, Math.max(0, v)));
    const move = (ev) => {
      const [x1, y1] = at(ev).map((v) => Math.min(1, Math.max(0, v)));
      const x = floor4(Math.min(x0, x1)), y = floor4(Math.min(y0, y1));
      regions.sketch = { on, x, y, w: Math.min(floor4(Math.max(x0, x1) - x), floor4(1 - x)),
                         h: Math.min(floor4(Math.max(y0, y1) - y), floor4(1 - y)), tag: null };
      drawRegions(true);
    };
    const up = (ev) => {
      window.removeEventListener("pointermove", move);
      move(ev);
      const box = regions.sketch;
      regions.sketch = null;
      if (box && box.w >= 0.01 && box.h >= 0.01 && regions.boxes.length < 20) {
        box.tag = ($("#region_tag") || {}).value || null;
        regions.boxes.push(box);
        interacted();
      }
      regionsChanged();
    };
    window.addEventListener("pointermove", move);
    window.addEventListener("pointerup", up, { once: true });
  }, true);
  // while drawing, a press on a tile draws instead of cycling the tile's mark (the number keys still mark: their
  // clicks are the page's own, not trusted)
  window.addEventListener("click", (e) => {
    if (regions.drawing && e.isTrusted && e.target.closest && e.target.closest("#gallery button.thumbnail-item")) {
      e.stopPropagation(); e.preventDefault();
    }
  }, true);
  window.addEventListener("dragstart", (e) => { if (regions.drawing) e.preventDefault(); }, true);
  document.addEventListener("click", (e) => {
    if (e.target.closest("#region_toggle")) setDrawing(!regions.drawing);
    else if (e.target.closest("#region_clear")) clearRegions();
  });
  window.addEventListener("resize", () => drawRegions(true));
  document.addEventListener("load", (e) => { if (e.target.closest && e.target.closest("#gallery")) drawRegions(); }, true);

  // ---- keyboard: 1-9 mark tiles, Enter submits, R refines, N next round, Esc clears; in the compare view also
  // arrows pan and + / - zoom -------------------------------------------------------------------------------------
  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.target.closest && e.target.closest("input, textarea, select, [contenteditable=true]")) return;
    const key = e.key;
    if (/^[1-9]$/.test(key)) { clickTileQueued(Number(key) - 1); e.preventDefault(); return; }
    const compareOpen = view.chosen.length >= 2 && $("#compare_panes .compare-pane");
    if (compareOpen && key.startsWith("Arrow")) {
      const step = 32;
      pan({ ArrowLeft: -step, ArrowRight: step }[key] || 0, { ArrowUp: -step, ArrowDown: step }[key] || 0);
      interacted(); e.preventDefault(); return;
    }
    if (compareOpen && (key === "+" || key === "=")) { zoomBy(2); e.preventDefault(); return; }
    if (compareOpen && key === "-") { zoomBy(0.5); e.preventDefault(); return; }
    if (key === "Enter" && e.target.closest && e.target.closest("button, a")) return;  // Enter presses that one
    if (key === "m" || key === "M") { setDrawing(!regions.drawing); e.preventDefault(); return; }
    const action = { Enter: "submit", r: "refine", R: "refine", n: "next_round", N: "next_round",
                     Escape: "clear_marks" }[key];
    if (action) { press(action); e.preventDefault(); }
  });

  // re-render when the gallery changes (new round, new captions)
  const observer = new MutationObserver(() => {
    const sig = tiles().map((t) => t.src + t.caption).join("|");
    if (sig !== observer.sig) {
      const srcs = tiles().map((t) => t.src).join("|");
      if (srcs !== observer.srcs) {  // a new round (or another one opened): its own marks, viewing facts and boxes
        view.chosen = []; view.interactions = 0; observer.srcs = srcs; recordViewing(); clearRegions();
      }
      observer.sig = sig;
      render();
    }
    drawRegions();  // the gallery may have redrawn its tiles without their boxes
  });
  const start = () => {
    if (!$("#compare_panes") || !$("#gallery")) { setTimeout(start, 200); return; }
    observer.observe(document.getElementById("gallery"), { childList: true, subtree: true, characterData: true,
                                                           attributes: true, attributeFilter: ["src"] });
    recordViewing();
    render();
    listRegions();
  };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start); else start();
})();
