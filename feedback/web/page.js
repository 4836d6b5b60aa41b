// The annotation page's client side: keyboard shortcuts and the 1:1 compare view.
// Everything here only reads the page (the gallery's images and captions) and presses the page's own buttons, so
// every recorded action still goes through the server's handlers (feedback/web/ui.py).
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
    const action = { Enter: "submit", r: "refine", R: "refine", n: "next_round", N: "next_round",
                     Escape: "clear_marks" }[key];
    if (action) { press(action); e.preventDefault(); }
  });

  // re-render when the gallery changes (new round, new captions)
  const observer = new MutationObserver(() => {
    const sig = tiles().map((t) => t.src + t.caption).join("|");
    if (sig !== observer.sig) {
      const srcs = tiles().map((t) => t.src).join("|");
      if (srcs !== observer.srcs) { view.chosen = []; view.interactions = 0; observer.srcs = srcs; recordViewing(); }
      observer.sig = sig;
      render();
    }
  });
  const start = () => {
    if (!$("#compare_panes") || !$("#gallery")) { setTimeout(start, 200); return; }
    observer.observe(document.getElementById("gallery"), { childList: true, subtree: true, characterData: true,
                                                           attributes: true, attributeFilter: ["src"] });
    recordViewing();
    render();
  };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start); else start();
})();
