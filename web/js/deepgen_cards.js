// DeepGen score cards: the RL rollout preview and the OCR reward as cards inside their nodes.
// The nodes send structured data in their UI output (`deepgen_rollout`, `deepgen_ocr`; see nodes/ui_data.py);
// this module only renders it. Plain ES module, no build step.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

const NODES = { DeepGenRolloutPreview: "rollout", DeepGenOCRReward: "ocr" };
const STYLE = `
.deepgen-panel { font: 12px/1.35 system-ui, sans-serif; color: var(--input-text, #ddd); overflow: auto; box-sizing: border-box;
  padding: 4px; height: 100%; }
.deepgen-bar-row { display: flex; align-items: center; gap: 6px; margin: 1px 0; }
.deepgen-toolbar { display: flex; gap: 10px; align-items: center; margin-bottom: 6px; flex-wrap: wrap; }
.deepgen-toolbar label { display: flex; gap: 4px; align-items: center; cursor: pointer; }
.deepgen-status { opacity: .8; }
.deepgen-progress { height: 4px; background: #333; border-radius: 2px; overflow: hidden; margin-bottom: 6px; }
.deepgen-progress > div { height: 100%; background: #4a9eff; width: 0; transition: width .2s; }
.deepgen-group { margin-bottom: 8px; }
.deepgen-group-head { display: flex; gap: 8px; align-items: baseline; margin: 2px 0 4px; font-weight: 600; }
.deepgen-flag { font-weight: 600; color: #111; background: #f0b429; border-radius: 3px; padding: 0 5px; }
.deepgen-cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(128px, 1fr)); gap: 6px; }
.deepgen-card { background: rgba(0,0,0,.28); border-radius: 5px; padding: 4px; cursor: zoom-in; border: 2px solid transparent; }
.deepgen-card img { width: 100%; aspect-ratio: 1; object-fit: contain; image-rendering: pixelated; border-radius: 3px; display: block; }
.deepgen-card .deepgen-head { display: flex; justify-content: space-between; margin: 3px 0 2px; }
.deepgen-adv { font-weight: 700; border-radius: 3px; padding: 0 4px; color: #fff; }
.deepgen-bar-name { width: 74px; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; opacity: .85; }
.deepgen-bar { flex: 1; height: 7px; background: #333; border-radius: 3px; overflow: hidden; }
.deepgen-bar > div { height: 100%; background: #4a9eff; }
.deepgen-bar-value { width: 38px; text-align: right; font-variant-numeric: tabular-nums; }
.deepgen-total { font-weight: 600; margin-top: 2px; font-variant-numeric: tabular-nums; }
.deepgen-read { opacity: .8; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.deepgen-overlay { position: fixed; inset: 0; background: rgba(0,0,0,.8); z-index: 10000; display: flex; align-items: center;
  justify-content: center; cursor: zoom-out; }
.deepgen-overlay-box { background: #222; color: #eee; padding: 14px; border-radius: 8px; display: flex; gap: 16px; max-width: 90vw;
  font: 14px/1.45 system-ui, sans-serif; }
.deepgen-overlay-box img { width: min(60vh, 512px); height: min(60vh, 512px); object-fit: contain; image-rendering: pixelated; }
.deepgen-overlay-box pre { white-space: pre-wrap; margin: 0; max-width: 40ch; font: 13px/1.4 ui-monospace, monospace; }
`;

function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  for (const child of children) node.append(child);
  return node;
}

function imageUrl(ref) {
  const query = new URLSearchParams({ filename: ref.filename, subfolder: ref.subfolder ?? "", type: ref.type ?? "temp" });
  return api.apiURL(`/view?${query}`);
}

function fmt(value, digits = 3) {
  return value === null || value === undefined ? "n/a" : value.toFixed(digits);
}

// Advantage colour: red (below the group mean) to green (above), stronger with |advantage|.
function advantageColour(advantage, scale) {
  const strength = Math.min(1, Math.abs(advantage) / (scale || 1));
  const hue = advantage >= 0 ? 130 : 0;
  return `hsl(${hue} ${Math.round(25 + 50 * strength)}% ${Math.round(38 - 8 * strength)}%)`;
}

function bar(name, score) {
  const width = score === null ? 0 : Math.max(0, Math.min(1, score)) * 100;
  return el("div", { className: "deepgen-bar-row", title: `${name}: ${fmt(score, 4)}` },
    el("span", { className: "deepgen-bar-name", textContent: name }),
    el("div", { className: "deepgen-bar" }, el("div", { style: `width:${width}%` })),
    el("span", { className: "deepgen-bar-value", textContent: fmt(score) }));
}

function showLarge(ref, title, lines) {
  const box = el("div", { className: "deepgen-overlay-box" },
    el("img", { src: imageUrl(ref), alt: title }),
    el("div", {}, el("h3", { textContent: title, style: "margin:0 0 8px" }), el("pre", { textContent: lines.join("\n") })));
  const overlay = el("div", { className: "deepgen-overlay" }, box);
  overlay.addEventListener("click", () => overlay.remove());
  document.body.append(overlay);
}

function rolloutCard(item, data, scale) {
  const card = el("div", { className: "deepgen-card" });
  Object.assign(card.dataset, { index: item.index, advantage: item.advantage, total: item.total, group: item.group });
  card.style.borderColor = advantageColour(item.advantage, scale);
  const adv = el("span", { className: "deepgen-adv", textContent: `${item.advantage >= 0 ? "+" : ""}${fmt(item.advantage, 2)}`,
    title: "group advantage (what training multiplies this image's log-probability ratio by)" });
  adv.style.background = advantageColour(item.advantage, scale);
  card.append(el("img", { src: imageUrl(item.image), alt: `rollout image ${item.index}`, loading: "lazy" }),
    el("div", { className: "deepgen-head" }, el("span", { textContent: `#${item.index}` }), adv),
    ...data.rewards.map((name) => bar(data.rewards.length > 1 ? `${name}×${data.weights[name]}` : name, item.scores[name])),
    el("div", { className: "deepgen-total", textContent: `total ${fmt(item.total, 4)}` }));
  if (item.details.ocr) card.append(el("div", { className: "deepgen-read", textContent: item.details.ocr }));
  card.addEventListener("click", () => showLarge(item.image, `#${item.index} · ${item.prompt}`, [
    ...data.rewards.map((name) => `${name} (weight ${data.weights[name]}): ${fmt(item.scores[name], 4)}\n  ${item.details[name] ?? ""}`),
    `weighted total: ${fmt(item.total, 4)}`, `group advantage: ${fmt(item.advantage, 4)}`]));
  return card;
}

function renderRollout(panel, data) {
  panel.state.data = data;
  const { sort, grouped } = panel.state;
  const scale = Math.max(1e-6, ...data.images.map((i) => Math.abs(i.advantage)));
  const order = (items) => (sort === "advantage" ? [...items].sort((a, b) => b.advantage - a.advantage || a.index - b.index) : items);
  const body = el("div");
  const sets = grouped ? data.groups.map((g) => ({ group: g, items: g.members.map((i) => data.images[i]) }))
    : [{ group: null, items: data.images }];
  for (const { group, items } of sets) {
    const box = el("div", { className: "deepgen-group" });
    if (group) {
      box.dataset.zeroVariance = group.zero_variance;
      const head = el("div", { className: "deepgen-group-head" }, el("span", { textContent: `group ${group.index}: ${group.prompt}` }));
      if (group.zero_variance) {
        head.append(el("span", { className: "deepgen-flag", textContent: "zero variance: no learning signal",
          title: "Every image of this group has the same total reward, so every advantage is 0 and training learns nothing from it." }));
      }
      box.append(head);
    }
    box.append(el("div", { className: "deepgen-cards" }, ...order(items).map((item) => rolloutCard(item, data, scale))));
    body.append(box);
  }
  panel.content.replaceChildren(body);
  panel.status.textContent = `${data.images.length} images · ${data.groups.length} group(s) of ${data.group_size} · rewards ${data.rewards.join(", ")}`;
}

function renderOcr(panel, data) {
  const cards = data.images.map((item) => {
    const card = el("div", { className: "deepgen-card" });
    Object.assign(card.dataset, { index: item.index, score: item.score ?? "" });
    card.append(el("img", { src: imageUrl(item.image), alt: `image ${item.index}`, loading: "lazy" }),
      el("div", { className: "deepgen-head" }, el("span", { textContent: `#${item.index}` })),
      bar("ocr", item.score), el("div", { className: "deepgen-read", textContent: item.detail, title: item.detail }));
    card.addEventListener("click", () => showLarge(item.image, `#${item.index} · target ${JSON.stringify(data.target)}`,
      [`score: ${fmt(item.score, 4)}`, item.detail]));
    return card;
  });
  panel.content.replaceChildren(el("div", { className: "deepgen-cards" }, ...cards));
  panel.status.textContent = `target ${JSON.stringify(data.target)} · ${data.images.length} image(s)`;
}

function toolbar(panel) {
  const sort = el("select", {}, el("option", { value: "advantage", textContent: "advantage" }), el("option", { value: "index", textContent: "image order" }));
  const grouped = el("input", { type: "checkbox", checked: true });
  const rerender = () => {
    Object.assign(panel.state, { sort: sort.value, grouped: grouped.checked });
    if (panel.state.data) renderRollout(panel, panel.state.data);
  };
  sort.addEventListener("change", rerender);
  grouped.addEventListener("change", rerender);
  return el("div", { className: "deepgen-toolbar" },
    el("label", {}, "sort by", sort), el("label", {}, grouped, "group by prompt"), panel.status);
}

function makePanel(node, kind) {
  const root = el("div", { className: `deepgen-panel deepgen-${kind}` });
  const panel = { root, kind, state: { sort: "advantage", grouped: true, data: null },
    status: el("span", { className: "deepgen-status", textContent: "run the workflow to see the cards" }),
    progress: el("div", { className: "deepgen-progress" }, el("div")), content: el("div") };
  panel.progress.style.visibility = "hidden";
  root.append(kind === "rollout" ? toolbar(panel) : el("div", { className: "deepgen-toolbar" }, panel.status), panel.progress, panel.content);
  // Wheel over the cards scrolls them, not the canvas.
  root.addEventListener("wheel", (event) => event.stopPropagation(), { passive: true });
  return panel;
}

function fit(node) {
  node.setSize([Math.max(node.size[0], node.deepgenPanel.kind === "rollout" ? 620 : 420), Math.max(node.size[1], node.computeSize()[1])]);
  node.setDirtyCanvas?.(true, true);
}

function setProgress(panel, value, max) {
  panel.progress.style.visibility = value < max ? "visible" : "hidden";
  panel.progress.firstChild.style.width = `${(100 * value) / max}%`;
  if (value < max) panel.status.textContent = panel.kind === "rollout" ? `sampling the group: step ${value} of ${max - 1}` : `scoring…`;
}

app.registerExtension({
  name: "DeepGen.ScoreCards",
  setup() {
    document.head.append(el("style", { textContent: STYLE }));
    api.addEventListener("progress", ({ detail }) => {
      const node = app.graph?.getNodeById(Number(detail?.node));
      if (node?.deepgenPanel) setProgress(node.deepgenPanel, detail.value, detail.max);
    });
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    const kind = NODES[nodeData.name];
    if (!kind) return;
    const created = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = created?.apply(this, arguments);
      this.deepgenPanel = makePanel(this, kind);
      // The cards replace the frontend's image preview (the rollout's captioned grid stays in the output for API clients).
      this.onDrawBackground = function () {};
      this.addDOMWidget("deepgen_cards", "deepgen_cards", this.deepgenPanel.root, {
        serialize: false, hideOnZoom: false,
        getMinHeight: () => (this.deepgenPanel.state.data || this.deepgenPanel.content.childElementCount ? 380 : 60),
      });
      return result;
    };
    const executed = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output) {
      const result = executed?.apply(this, arguments);
      const data = output?.[kind === "rollout" ? "deepgen_rollout" : "deepgen_ocr"]?.[0];
      if (data) {
        (kind === "rollout" ? renderRollout : renderOcr)(this.deepgenPanel, data);
        setProgress(this.deepgenPanel, 1, 1);
        fit(this);
      }
      return result;
    };
  },
});
