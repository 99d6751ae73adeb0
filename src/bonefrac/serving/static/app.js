(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const drop = $("drop"), input = $("file");
  let busy = false;
  let criterion = "";

  let token = sessionStorage.getItem("bonefrac-token") || "";
  const isNum = (v) => typeof v === "number" && isFinite(v);

  function authHeaders() {
    return token ? { Authorization: "Bearer " + token } : {};
  }

  function askToken() {
    $("token-form").hidden = false;
    $("token").focus();
  }

  // a banner for each safeguard the run lacks (tuned threshold, temperature, out-of-scope
  // detector, refer rule): what it means and the command that adds it; hidden when none
  function showSafeguards(missing) {
    const list = $("safeguard-list");
    list.replaceChildren();
    const items = Array.isArray(missing) ? missing.filter((m) => m && typeof m === "object") : [];
    for (const m of items) {
      const li = document.createElement("li");
      li.appendChild(document.createTextNode(String(m.detail || m.name || "") + " — "));
      const code = document.createElement("code");
      code.textContent = String(m.command || "");
      li.appendChild(code);
      list.appendChild(li);
    }
    $("safeguards").hidden = items.length === 0;
  }

  function el(tag, text) {
    const node = document.createElement(tag);
    if (text !== undefined) appendInline(node, text);
    return node;
  }

  // `code` and **bold** spans as DOM nodes; every piece of text goes in as a text node
  function appendInline(node, text) {
    const parts = String(text).split(/(`[^`]+`|\*\*[^*]+\*\*)/);
    for (const part of parts) {
      if (!part) continue;
      let child;
      if (part.length > 2 && part[0] === "`" && part[part.length - 1] === "`") {
        child = document.createElement("code");
        child.textContent = part.slice(1, -1);
      } else if (part.length > 4 && part.startsWith("**") && part.endsWith("**")) {
        child = document.createElement("strong");
        child.textContent = part.slice(2, -2);
      } else {
        child = document.createTextNode(part);
      }
      node.appendChild(child);
    }
  }

  const cells = (line) => line.trim().replace(/^\|/, "").replace(/\|$/, "").split("|")
    .map((c) => c.trim());
  const isRule = (line) => /^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$/.test(line);

  // The model card's markdown as DOM nodes, built from text nodes only (no HTML parsing):
  // headings (#, ##, ###), "- " bullet lines, pipe tables and paragraphs.
  function renderCard(markdown) {
    const out = document.createDocumentFragment();
    const lines = String(markdown).split(/\r?\n/);
    let para = null, list = null;
    const end = () => { para = null; list = null; };
    for (let i = 0; i < lines.length; i++) {
      const line = lines[i];
      const heading = /^(#{1,3})\s+(.*)$/.exec(line);
      if (!line.trim()) { end(); continue; }
      if (heading) {
        end();
        out.appendChild(el("h" + (heading[1].length + 1), heading[2]));
      } else if (/^\s*[-*]\s+/.test(line)) {
        para = null;
        if (!list) { list = el("ul"); out.appendChild(list); }
        list.appendChild(el("li", line.replace(/^\s*[-*]\s+/, "")));
      } else if (line.trim().startsWith("|")) {
        end();
        const table = el("table");
        let body = null;
        const header = i + 1 < lines.length && isRule(lines[i + 1]);
        if (header) {
          const tr = el("tr");
          for (const c of cells(line)) tr.appendChild(el("th", c));
          table.appendChild(el("thead")).appendChild(tr);
          i += 1;
        } else {
          i -= 1;
        }
        while (i + 1 < lines.length && lines[i + 1].trim().startsWith("|")) {
          i += 1;
          if (isRule(lines[i])) continue;
          if (!body) body = table.appendChild(el("tbody"));
          const tr = el("tr");
          for (const c of cells(lines[i])) tr.appendChild(el("td", c));
          body.appendChild(tr);
        }
        out.appendChild(table);
      } else if (list && /^\s+/.test(line)) {
        appendInline(list.lastChild, " " + line.trim());  // a bullet's continuation line
      } else {
        list = null;
        if (para) para.appendChild(document.createTextNode(" "));
        else { para = el("p"); out.appendChild(para); }
        appendInline(para, line.trim());
      }
    }
    return out;
  }

  function showCard(card) {
    const body = $("model-card-body");
    body.replaceChildren();
    const has = typeof card === "string" && card.trim() !== "";
    if (has) body.appendChild(renderCard(card));
    $("model-card").hidden = !has;
  }

  function loadModel() {
    fetch("/v1/model", { headers: authHeaders() }).then((r) => {
      if (r.status === 401) { askToken(); throw new Error("token"); }
      return r.json();
    }).then((m) => {
      criterion = m.threshold_criterion || "";
      showSafeguards(m.missing_safeguards);
      showCard(m.card);
      showMisses(m.misses);
      $("model-info").textContent = "Model: " + (m.architecture || "?") +
        " · input " + (m.image_size || "?") + " px · decision threshold " +
        (isNum(m.threshold) ? m.threshold.toFixed(3) : "unknown") +
        (typeof m.shipped === "string" && m.shipped ? " · shipped model " + m.shipped : "");
    }).catch(() => { $("model-info").textContent = "Model information unavailable"; });
  }
  loadModel();

  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    token = $("token").value.trim();
    sessionStorage.setItem("bonefrac-token", token);
    $("token-form").hidden = true;
    $("error").hidden = true;
    loadModel();
  });

  function showError(msg) {
    $("error").textContent = msg;
    $("error").hidden = false;
    $("status").textContent = "";
  }

  function showImages() {
    const withHeat = $("show-heatmap").checked && $("heatmap").getAttribute("src");
    $("heatmap").hidden = !withHeat;
    $("image").hidden = !!withHeat || !$("image").getAttribute("src");
  }

  const CAPTIONS = {
    detector: "The heatmap is the model's fracture map, trained on radiologists' fracture " +
      "boxes: how strongly each place looks like a boxed fracture. It is a suggestion to " +
      "check, and a cold region is not evidence of a normal bone.",
    gradcam: "The heatmap shows where the model looked; it is not an outline of a fracture, " +
      "and a cold region is not evidence of a normal bone.",
  };

  function isBox(b) { return Array.isArray(b) && b.length >= 5 && b.every(isNum); }

  // A localising model's boxes [cx, cy, w, h, score] (normalised to the image) as outlined
  // rectangles with their score; nothing for a model without a localisation head (null).
  // level "firm" (a fracture call) draws them solid, "doubt" (refer) dashed: "look here".
  // A flagged image with no box above the box threshold shows the detector's best box,
  // dashed and marked low-confidence.
  function drawBoxes(boxes, best, level) {
    const layer = $("boxes");
    layer.replaceChildren();
    const note = $("boxes-note");
    let valid = Array.isArray(boxes) ? boxes.filter(isBox) : null;
    if (valid === null) { note.hidden = true; return; }
    const flagged = level === "firm" || level === "doubt";
    const lowConfidence = !valid.length && flagged && isBox(best);
    if (lowConfidence) valid = [best];
    const dashed = lowConfidence || level === "doubt";
    for (const [cx, cy, w, h, score] of valid) {
      const div = document.createElement("div");
      div.className = dashed ? "box low" : "box";
      div.style.left = (100 * (cx - w / 2)) + "%";
      div.style.top = (100 * (cy - h / 2)) + "%";
      div.style.width = (100 * w) + "%";
      div.style.height = (100 * h) + "%";
      const label = document.createElement("span");
      label.textContent = (100 * score).toFixed(0) + "%" +
        (lowConfidence ? " (low confidence)" : level === "doubt" ? " (doubt: look here)" : "");
      div.appendChild(label);
      layer.appendChild(div);
    }
    note.textContent = lowConfidence
      ? "Dashed box: the detector's best box, below its box threshold (low confidence; the " +
        "number is its detection score). A suggestion to check, not an outline of a fracture."
      : valid.length && level === "doubt"
      ? "Dashed boxes: doubt, look here. The model is not sure enough for a fracture call; " +
        "these are the places to check (the number is each box's detection score)."
      : valid.length
      ? "Solid boxes: the model's fracture findings (the number is each box's detection " +
        "score). They are suggestions to check, not outlines of a fracture."
      : "The model's fracture detector found no box above its box threshold.";
    note.hidden = false;
  }

  // The run's test figures, misses first (from /v1/model): what its decisions do.
  function showMisses(m) {
    const banner = $("misses");
    if (!banner) return;
    const f = (e) => e && isNum(e.value) ? (100 * e.value).toFixed(1) + "%" +
      (isNum(e.ci_low) && isNum(e.ci_high) ? " [" + (100 * e.ci_low).toFixed(1) + "–" +
        (100 * e.ci_high).toFixed(1) + "%]" : "") : "n/a";
    if (!m || !m.miss_rate) { banner.hidden = true; return; }
    banner.textContent = "On its test images this model called " + f(m.miss_rate) +
      " of fractures no_fracture (missed), cleared " + f(m.normals_cleared) +
      " of normals, and referred " + f(m.referred) + " of images; " + f(m.fracture_ppv) +
      " of its fracture calls were fractures (95% CIs).";
    banner.hidden = false;
  }

  async function send(file) {
    if (!file || busy) return;
    busy = true;
    $("error").hidden = true;
    $("result").hidden = true;
    $("status").textContent = "Analysing " + file.name + "…";
    const form = new FormData();
    form.append("file", file, file.name);
    try {
      const resp = await fetch("/v1/predict?heatmap=true&image=true",
        { method: "POST", body: form, headers: authHeaders() });
      let body = null;
      try { body = await resp.json(); } catch (e) { body = null; }
      if (resp.status === 401) askToken();
      if (!resp.ok) {
        const detail = body && body.detail ? (typeof body.detail === "string" ? body.detail
          : JSON.stringify(body.detail)) : ("HTTP " + resp.status);
        showError("Could not analyse this file: " + detail);
        return;
      }
      // show only numbers the server actually sent: anything else is an error, not a result
      const DECISIONS = ["fracture", "no_fracture", "refer", "out_of_scope"];
      if (!body || !isNum(body.probability) || body.probability < 0 || body.probability > 1 ||
          DECISIONS.indexOf(body.decision) < 0 || !isNum(body.threshold)) {
        showError("Could not analyse this file: the server's answer has no valid probability " +
          "or decision, so no result is shown.");
        return;
      }
      $("hint").hidden = true;
      $("image").src = body.image_png ? "data:image/png;base64," + body.image_png : "";
      $("heatmap").src = body.heatmap_png ? "data:image/png;base64," + body.heatmap_png : "";
      showImages();
      // boxes are a fracture finding: none for an image the model declines as out of scope
      drawBoxes(body.decision === "out_of_scope" ? [] : body.pred_boxes, body.best_box,
        body.finding);
      $("map-caption").textContent = CAPTIONS[body.map] || CAPTIONS.gradcam;
      const dec = $("decision");
      const answered = body.decision === "fracture" || body.decision === "no_fracture";
      // a referred or out-of-scope image shows that state INSTEAD of a probability
      $("prob-block").hidden = !answered;
      if (body.decision === "out_of_scope") {
        dec.textContent = "This does not look like a limb radiograph";
        dec.className = "decision oos";
        const WHY = {
          modality: "The DICOM file is not a projection radiograph (its Modality), so ",
          colour: "It is a colour image, and radiographs are greyscale, so ",
          blank: "The image is (almost) blank, so ",
        };
        $("threshold-note").textContent = (WHY[body.ood_reason] ||
          "The image is unlike the radiographs the model was trained on, so ") +
          "the model gives no fracture estimate (model " + body.model + ").";
      } else if (body.decision === "refer") {
        dec.textContent = "Doubt: look here (refer to a radiologist)";
        dec.className = "decision refer";
        $("threshold-note").textContent = "The model is not sure enough for a fracture call " +
          "nor for clearing the image: a possible fracture, shown dashed; a radiologist should " +
          "read it (model " + body.model + ").";
      } else {
        const pct = (100 * body.probability);
        $("probability").textContent = (pct < 0.1 ? "<0.1" : pct > 99.9 ? ">99.9" : pct.toFixed(1)) + "%";
        const pos = body.decision === "fracture";
        dec.textContent = pos ? "Fracture suspected" : "No fracture suspected";
        dec.className = "decision " + (pos ? "pos" : "neg");
        const tuned = criterion && criterion !== "default";
        $("threshold-note").textContent = "Decision at the " +
          (tuned ? "tuned threshold (" + criterion + ") of " : "default threshold of ") +
          (100 * body.threshold).toFixed(1) + "% (model " + body.model + "). " +
          "Probabilities near the threshold are the least certain.";
      }
      $("status").textContent = file.name;
      $("result").hidden = false;
    } catch (e) {
      showError("The server did not answer: " + e);
    } finally {
      busy = false;
      input.value = "";
    }
  }

  drop.addEventListener("click", () => input.click());
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") input.click(); });
  input.addEventListener("change", () => send(input.files[0]));
  $("another").addEventListener("click", () => input.click());
  $("show-heatmap").addEventListener("change", showImages);
  ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => {
    e.preventDefault(); drop.classList.add("over");
  }));
  ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => {
    e.preventDefault(); drop.classList.remove("over");
  }));
  drop.addEventListener("drop", (e) => send(e.dataTransfer.files[0]));
})();
