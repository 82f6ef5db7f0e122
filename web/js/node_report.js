// VideoPrior Edit: show what a node reports after it runs (settings used, warnings, LoRA summaries) in a
// read-only text box on the node itself, so nothing important is only in the console.
import { app } from "../../scripts/app.js";
import { ComfyWidgets } from "../../scripts/widgets.js";

const BOX = "vpe_report";

function showReport(node, text) {
  let widget = node.widgets?.find((w) => w.name === BOX);
  if (!widget) {
    widget = ComfyWidgets.STRING(node, BOX, ["STRING", { multiline: true }], app).widget;
    if (widget.inputEl) widget.inputEl.readOnly = true;
    widget.serialize = false; // never saved into the workflow's widget values
  }
  widget.value = text;
  node.setSize?.([node.size[0], Math.max(node.size[1], node.computeSize()[1])]);
  node.setDirtyCanvas?.(true, true);
}

app.registerExtension({
  name: "VideoPriorEdit.NodeReport",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData.name?.startsWith("VPE_")) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const text = message?.text;
      if (text && text.length) showReport(this, Array.isArray(text) ? text.join("\n") : String(text));
    };
  },
});
