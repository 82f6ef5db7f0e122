// VideoPrior Edit: show what a node reports after it runs (settings used, warnings, LoRA summaries) in a
// read-only text box on the node itself, so nothing important is only in the console.
// ComfyUI serves this file at /extensions/<pack folder>/js/node_report.js and the app at /scripts/app.js.
// The box is a DOM widget (a plain <textarea>), which both the canvas renderer and the Vue node renderer
// ("Nodes 2.0") show; it is never saved into the workflow.
import { app } from "../../../scripts/app.js";

const BOX = "vpe_report";

function reportBox(node) {
  const existing = node.widgets?.find((w) => w.name === BOX);
  if (existing) return existing;
  const area = document.createElement("textarea");
  area.className = "comfy-multiline-input";
  area.readOnly = true;
  area.spellcheck = false;
  area.style.cssText = "width: 100%; min-height: 60px; resize: vertical; font-size: 11px; opacity: 0.85;";
  const widget = node.addDOMWidget(BOX, "vpe_report", area, {
    getValue: () => area.value,
    setValue: (text) => { area.value = text ?? ""; },
    getMinHeight: () => 60,
    serialize: false, // not in the API prompt
  });
  widget.serialize = false; // not in the workflow's widgets_values
  return widget;
}

app.registerExtension({
  name: "VideoPriorEdit.NodeReport",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData.name?.startsWith("VPE_")) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const text = message?.text;
      if (!text?.length) return;
      reportBox(this).value = Array.isArray(text) ? text.join("\n") : String(text);
      this.setSize?.([this.size[0], Math.max(this.size[1], this.computeSize()[1])]);
      this.setDirtyCanvas?.(true, true);
    };
  },
});
