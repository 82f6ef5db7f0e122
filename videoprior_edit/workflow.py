"""ComfyUI workflow files: the UI format (what the frontend saves and artists load) to the API format (what
`POST /prompt` takes), and checks that a workflow fits the nodes it uses.

Node schemas are given in `/object_info` form (`{"input": {"required": {...}, "optional": {...}}, "output": [...]}`):
the pack's come from its V3 node classes (`GET_NODE_INFO_V1`, in workflows/build.py), ComfyUI core nodes from a
snapshot (workflows/schemas/core_nodes.json).
How the frontend stores widgets: `widgets_values` lists the node's widget inputs in schema order (required, then
optional); a seed-like INT is followed by its "control after generate" value, an upload widget (LoadImage,
LoadVideo) by its button's value; an input with `forceInput`, or of a non-widget type, is a link slot only.
"""

from __future__ import annotations

from .errors import InputError

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
UI_ONLY = ("Note", "MarkdownNote", "Reroute", "PrimitiveNode")
CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize")
DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3"  # a V3 combo whose choice brings its own inputs (SaveVideo's format, codec)


def _options(spec: list) -> dict:
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def is_widget(spec: list) -> bool:
    kind = spec[0]
    return isinstance(kind, list) or kind == DYNAMIC_COMBO or (kind in WIDGET_TYPES and
                                                                not _options(spec).get("forceInput"))


def widget_slots(schema: dict, name: str = "") -> list[tuple[str, list]]:
    """The node's `widgets_values` layout: (input name, spec) per entry; extra entries are named "<input>#control"
    (seed control after generate) and "<input>#upload" (upload button)."""
    slots = []
    for section in ("required", "optional"):
        for input_name, spec in schema["input"].get(section, {}).items():
            if not is_widget(spec):
                continue
            if spec[0] == DYNAMIC_COMBO:
                slots += _dynamic_slots(input_name, spec)
                continue
            slots.append((input_name, spec))
            opts = _options(spec)
            if spec[0] == "INT" and (opts.get("control_after_generate") or input_name in ("seed", "noise_seed")):
                slots.append((input_name + "#control", ["COMBO", {"options": list(CONTROL_VALUES)}]))
            if opts.get("image_upload") or opts.get("video_upload"):
                slots.append((input_name + "#upload", ["STRING", {}]))
    return slots


def _dynamic_slots(name: str, spec: list) -> list[tuple[str, list]]:
    """A dynamic combo as a combo of its option keys, followed by the widgets its first (default) option adds,
    named "<combo>.<input>" as the API prompt names them (workflows here keep the default choice)."""
    options = _options(spec)["options"]
    slots = [(name, ["COMBO", {"options": [o["key"] for o in options], "default": options[0]["key"]}])]
    inner = widget_slots({"input": options[0]["inputs"]})
    return slots + [(f"{name}.{inner_name}", inner_spec) for inner_name, inner_spec in inner]


def _input_spec(schema: dict, name: str) -> list | None:
    for section in ("required", "optional"):
        if name in schema["input"].get(section, {}):
            return schema["input"][section][name]
    return None


def ui_to_api(ui: dict, schemas: dict) -> dict:
    """The API-format prompt of a UI-format workflow (UI-only nodes such as notes left out; muted nodes too), each
    node with its `_meta` title as the frontend's Save (API) writes it (ComfyUI's NodeReplace needs `_meta`)."""
    links = {link[0]: link for link in ui.get("links", [])}
    prompt = {}
    for node in ui["nodes"]:
        kind = node["type"]
        if kind in UI_ONLY or node.get("mode", 0) in (2, 4):
            continue
        if kind not in schemas:
            raise InputError(f"Workflow node {node['id']} is '{kind}', which neither this pack nor the ComfyUI core "
                             "snapshot defines.", "Install the node's pack or remove the node.")
        slots = widget_slots(schemas[kind])
        values = node.get("widgets_values") or []
        if len(values) != len(slots):
            raise InputError(f"Node {node['id']} ({kind}) stores {len(values)} widget values, its schema has "
                             f"{len(slots)} ({[s for s, _ in slots]}).", "Re-save the workflow in ComfyUI.")
        inputs = {name: value for (name, _), value in zip(slots, values) if "#" not in name}
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                link = links[slot["link"]]
                inputs[slot["name"]] = [str(link[1]), link[2]]
        prompt[str(node["id"])] = {"class_type": kind, "inputs": inputs, "_meta": {"title": node.get("title", kind)}}
    return prompt


def check_workflow(ui: dict, schemas: dict, model_files: set[str] | None = None) -> list[str]:
    """Problems of a UI workflow against the schemas: unknown nodes, widget values of the wrong type, out of range
    or not among the combo options, links between incompatible types, required inputs left unconnected, and model
    file names not in `model_files` (the manifest's)."""
    problems, nodes = [], {n["id"]: n for n in ui["nodes"]}
    for node in ui["nodes"]:
        kind = node["type"]
        if kind in UI_ONLY:
            continue
        if kind not in schemas:
            problems.append(f"node {node['id']}: unknown node type {kind}")
            continue
        problems += _check_widgets(node, schemas[kind], model_files)
        problems += _check_required(node, schemas[kind])
    for link_id, src, src_slot, dst, dst_slot, kind in ui.get("links", []):
        problems += _check_link(link_id, nodes.get(src), src_slot, nodes.get(dst), dst_slot, kind, schemas)
    return problems


def _check_widgets(node: dict, schema: dict, model_files: set[str] | None) -> list[str]:
    slots, values = widget_slots(schema), node.get("widgets_values") or []
    if len(values) != len(slots):
        return [f"node {node['id']} ({node['type']}): {len(values)} widget values for {len(slots)} widgets"]
    problems = []
    for (name, spec), value in zip(slots, values):
        problem = _check_value(spec, value, model_files)
        if problem:
            problems.append(f"node {node['id']} ({node['type']}) {name}: {problem}")
    return problems


def _check_value(spec: list, value, model_files: set[str] | None) -> str:
    kind, opts = spec[0], _options(spec)
    if isinstance(kind, list) or kind == "COMBO":
        options = kind if isinstance(kind, list) else opts.get("options", [])
        if _looks_like_model(value) and model_files is not None:
            return "" if value in model_files or value == "none" else f"model file {value!r} is not in the manifest"
        if options and value not in options and not opts.get("image_upload") and not opts.get("video_upload"):
            return f"{value!r} is not one of {options[:6]}"
        return ""
    types = {"INT": int, "FLOAT": (int, float), "STRING": str, "BOOLEAN": bool}[kind]
    if not isinstance(value, types) or (kind != "BOOLEAN" and isinstance(value, bool)):
        return f"{value!r} is not a {kind}"
    if kind in ("INT", "FLOAT") and not opts.get("min", value) <= value <= opts.get("max", value):
        return f"{value} is outside {opts.get('min')}..{opts.get('max')}"
    return ""


def workflow_model_files(workflow: dict) -> list[str]:
    """The model file names a workflow (UI or API format) picks in its widgets, in order, without repeats."""
    if "nodes" in workflow:  # UI format
        values = [v for node in workflow["nodes"] for v in _widget_list(node.get("widgets_values"))]
    else:  # API format
        values = [v for node in workflow.values() if isinstance(node, dict)
                  for v in (node.get("inputs") or {}).values()]
    return list(dict.fromkeys(v for v in values if _looks_like_model(v)))


def _widget_list(values) -> list:
    return list(values.values()) if isinstance(values, dict) else list(values or [])


def _looks_like_model(value) -> bool:
    return isinstance(value, str) and value.endswith((".safetensors", ".sft", ".gguf", ".ckpt", ".pt", ".bin"))


def _check_required(node: dict, schema: dict) -> list[str]:
    linked = {s["name"] for s in node.get("inputs", []) if s.get("link") is not None}
    return [f"node {node['id']} ({node['type']}): required input {name} is not connected"
            for name, spec in schema["input"].get("required", {}).items() if not is_widget(spec) and name not in linked]


def _check_link(link_id, src, src_slot, dst, dst_slot, kind, schemas) -> list[str]:
    if src is None or dst is None:
        return [f"link {link_id}: a node it connects does not exist"]
    if src["type"] in UI_ONLY or dst["type"] in UI_ONLY or src["type"] not in schemas or dst["type"] not in schemas:
        return []
    out_types = schemas[src["type"]]["output"]
    out_type = out_types[src_slot] if src_slot < len(out_types) else None
    name = dst["inputs"][dst_slot]["name"] if dst_slot < len(dst.get("inputs", [])) else None
    spec = _input_spec(schemas[dst["type"]], name) if name else None
    if out_type is None or spec is None:
        return [f"link {link_id}: slot {src_slot} of {src['type']} or input {name} of {dst['type']} does not exist"]
    in_type = "COMBO" if isinstance(spec[0], list) else spec[0]
    if out_type != in_type and "*" not in (out_type, in_type) or kind not in (out_type, "*"):
        return [f"link {link_id}: {src['type']} gives {out_type}, {dst['type']}.{name} takes {in_type}"]
    return []


# ------------------------------------------------------------------------------------------------ authoring
class Graph:
    """Builds a UI-format workflow from node types and widget values by name (the layout the frontend saves)."""

    def __init__(self, schemas: dict):
        self.schemas, self.nodes, self.links = schemas, [], []

    def node(self, kind: str, pos: tuple[int, int], title: str | None = None, size=(340, 200), **widgets) -> dict:
        schema = self.schemas[kind]
        unknown = set(widgets) - {name for name, _ in widget_slots(schema)}
        if unknown:
            raise InputError(f"{kind} has no widget {sorted(unknown)}.", "Check the node's input names.")
        slots = [{"name": n, "type": "COMBO" if isinstance(s[0], list) else s[0], "link": None}
                 for section in ("required", "optional") for n, s in schema["input"].get(section, {}).items()
                 if not is_widget(s)]
        names = schema.get("output_name") or schema["output"]
        record = {"id": len(self.nodes) + 1, "type": kind, "pos": list(pos), "size": list(size), "flags": {},
                  "order": len(self.nodes), "mode": 0, "inputs": slots,
                  "outputs": [{"name": n, "type": t, "links": [], "slot_index": i}
                              for i, (n, t) in enumerate(zip(names, schema["output"]))],
                  "properties": {"Node name for S&R": kind},
                  "widgets_values": [_value(name, spec, widgets) for name, spec in widget_slots(schema)]}
        if title:
            record["title"] = title
        self.nodes.append(record)
        return record

    def note(self, text: str, pos: tuple[int, int], size=(420, 260), title: str = "Read me") -> dict:
        record = {"id": len(self.nodes) + 1, "type": "Note", "pos": list(pos), "size": list(size), "flags": {},
                  "order": len(self.nodes), "mode": 0, "inputs": [], "outputs": [], "title": title,
                  "properties": {"text": ""}, "widgets_values": [text], "color": "#432", "bgcolor": "#653"}
        self.nodes.append(record)
        return record

    def link(self, src: dict, output: str, dst: dict, input_name: str) -> None:
        """Connect an output to an input (a widget input becomes a link slot, its stored value stays)."""
        out = next(o for o in src["outputs"] if o["name"] == output)
        if not any(s["name"] == input_name for s in dst["inputs"]):
            spec = _input_spec(self.schemas[dst["type"]], input_name)
            dst["inputs"].append({"name": input_name, "type": "COMBO" if isinstance(spec[0], list) else spec[0],
                                  "widget": {"name": input_name}, "link": None})
        slot = next(i for i, s in enumerate(dst["inputs"]) if s["name"] == input_name)
        link_id = len(self.links) + 1
        self.links.append([link_id, src["id"], out["slot_index"], dst["id"], slot, out["type"]])
        out["links"].append(link_id)
        dst["inputs"][slot]["link"] = link_id

    def to_ui(self) -> dict:
        return {"last_node_id": len(self.nodes), "last_link_id": len(self.links), "nodes": self.nodes,
                "links": self.links, "groups": [], "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}},
                "version": 0.4}


def _value(name: str, spec: list, widgets: dict):
    base, _, extra = name.partition("#")
    if extra == "control":
        return "fixed"
    if extra == "upload":
        return "image"
    if base in widgets:
        return widgets[base]
    opts = _options(spec)
    if "default" in opts:
        return opts["default"]
    options = spec[0] if isinstance(spec[0], list) else opts.get("options", [])
    return options[0] if options else {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(spec[0], "")


def blueprint(inner: Graph, name: str, inputs: list[tuple], outputs: list[tuple], widgets: list[tuple] = (),
              description: str = "", category: str = "VideoPriorEdit") -> dict:
    """A subgraph blueprint (what ComfyUI serves from a pack's subgraphs/ folder: one node that opens into `inner`).

    inputs: (name, type, [(inner node, input name), ...]) fed from the blueprint node's input; outputs: (name, type,
    inner node, output name); widgets: (inner node, widget name) shown on the blueprint node."""
    import uuid

    key = str(uuid.uuid5(uuid.NAMESPACE_URL, "videoprior-edit/" + name))  # stable across rebuilds
    links = [{"id": i, "origin_id": o, "origin_slot": os_, "target_id": t, "target_slot": ts, "type": kind}
             for i, o, os_, t, ts, kind in inner.links]
    next_link = len(links) + 1
    sub_inputs, sub_outputs = [], []
    for slot, (input_name, kind, targets) in enumerate(inputs):
        ids = []
        for node, target in targets:
            index = next(i for i, s in enumerate(node["inputs"]) if s["name"] == target)
            links.append({"id": next_link, "origin_id": -10, "origin_slot": slot, "target_id": node["id"],
                          "target_slot": index, "type": kind})
            node["inputs"][index]["link"] = next_link
            ids.append(next_link)
            next_link += 1
        sub_inputs.append({"id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{key}/in/{input_name}")), "name": input_name,
                           "type": kind, "linkIds": ids, "pos": [0, 20 * slot]})
    for slot, (output_name, kind, node, output) in enumerate(outputs):
        out = next(o for o in node["outputs"] if o["name"] == output)
        links.append({"id": next_link, "origin_id": node["id"], "origin_slot": out["slot_index"], "target_id": -20,
                      "target_slot": slot, "type": kind})
        out["links"].append(next_link)
        sub_outputs.append({"id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{key}/out/{output_name}")),
                            "name": output_name, "type": kind, "linkIds": [next_link], "pos": [0, 20 * slot]})
        next_link += 1
    xs = [n["pos"][0] for n in inner.nodes]
    right = max(n["pos"][0] + n["size"][0] for n in inner.nodes)
    definition = {"id": key, "version": 1, "revision": 0, "config": {}, "name": name, "category": category,
                  "description": description, "state": {"lastGroupId": 0, "lastNodeId": len(inner.nodes),
                                                        "lastLinkId": next_link - 1, "lastRerouteId": 0},
                  "inputNode": {"id": -10, "bounding": [min(xs) - 220, 80, 160, 40 + 20 * len(inputs)]},
                  "outputNode": {"id": -20, "bounding": [right + 60, 80, 140, 40 + 20 * len(outputs)]},
                  "inputs": sub_inputs, "outputs": sub_outputs, "widgets": [], "nodes": inner.nodes, "links": links,
                  "groups": [], "extra": {}}
    node = {"id": 1, "type": key, "pos": [0, 0], "size": [400, 60 + 20 * max(len(inputs), len(outputs))],
            "flags": {}, "order": 0, "mode": 0, "title": name,
            "inputs": [{"name": n, "type": k, "link": None} for n, k, _ in inputs],
            "outputs": [{"name": n, "type": k, "links": []} for n, k, _, _ in outputs],
            "properties": {"proxyWidgets": [[str(node["id"]), widget] for node, widget in widgets]},
            "widgets_values": []}
    return {"revision": 0, "last_node_id": 1, "last_link_id": 0, "nodes": [node], "links": [], "version": 0.4,
            "definitions": {"subgraphs": [definition]}, "extra": {}}
