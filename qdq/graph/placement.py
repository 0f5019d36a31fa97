"""Placement: which tensors get Q/DQ, following TensorRT's explicit-quantization rules.

Rules (TensorRT "Working with Quantized Types" and NVIDIA's QAT tooling):

1. Weighted layers (Conv, ConvTranspose, Gemm, MatMul): quantize every input, activation inputs
   per-tensor, constant weights per output channel; never their outputs, so Conv→BN→ReLU fuse.
   An activation×activation MatMul (attention) gets both inputs quantized.
2. Residual Add fed by a quantized Conv: quantize the *other* (shortcut) input, so TensorRT fuses the
   Add into the Conv epilogue.  If both inputs come from Convs, the deeper one (longer path) is fused.
3. Pooling, Resize, Concat and shape-only ops: Q/DQ on their inputs only when their output is
   already quantized for a consumer, so they run in INT8 between quantized neighbours.
   MaxPool, Resize, Concat and shape ops share one scale between inputs and output (they do not
   change values, and TensorRT would otherwise insert reformats); averaging pools get their own.
4. Skipped (stay float, listed with the reason): layers matched by ``exclude``; Conv with fewer
   than 16 input or output channels unless both are multiples of 8; Gemm/MatMul that are GEMV
   shaped (M or N = 1) or have K or N < 16; weights that are not constants; ConvTranspose, which
   TensorRT-RTX builds in FP32 (``int8_deconv`` quantizes the ungrouped ones for TensorRT 8.x/10.x; a
   grouped one's per-output-channel scales cannot be written on one DequantizeLinear axis).
5. ``--force-ranges`` (``force``): Q/DQ on every float consumer of the tensors named, on top of the
   rules.  ``--exclude`` patterns and forced tensors are kept when mixed precision re-places the layers
   (:func:`replace`).
Graph outputs are never quantized: Q/DQ feed only the consumers that need them.

Nodes are referred to by id (position in the graph, see :class:`qdq.graph.index.GraphIndex`).  A weight
read by layers with different output-channel layouts (a Conv and a ConvTranspose, or a Gemm with and
without ``transB``) gets one INT8 copy per layout.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from ..modelio import subgraphs
from .index import GraphIndex

WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")
SAME_SCALE_OPS = ("MaxPool", "Resize", "Upsample", "Concat", "Reshape", "Flatten", "Squeeze",
                  "Unsqueeze", "Transpose")
OWN_SCALE_OPS = ("AveragePool", "GlobalAveragePool")
_FUSED_INTO_CONV = ("BatchNormalization",)

POINTWISE = {"Relu", "Clip", "LeakyRelu", "PRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu",
             "Softplus", "Mish", "Gelu", "Erf", "BatchNormalization", "Identity"}
BINARY = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min"}
# ops whose output the op itself bounds to |y| ≤ 1: Softmax, Sigmoid, HardSigmoid in [0, 1], Tanh in [−1, 1]
BOUNDED = ("Softmax", "Sigmoid", "HardSigmoid", "Tanh")
_TAIL_LIMIT = 8   # GELU written out is six nodes after the bias Add


def fused_tail(idx: GraphIndex, pos: int) -> tuple[list, str]:
    """The pointwise nodes TensorRT fuses after node ``pos`` (ids, in order) and the tensor leaving
    them: nodes reached from its output that are unary pointwise, or binary with every other input
    inside the region or constant, as long as exactly one tensor leaves the region."""
    start = idx.nodes[pos].output[0]
    if start in idx.outputs:
        return [], start
    region, inside = [], {start}
    queue = [p for p, _ in idx.consumers.get(start, [])]
    while queue:
        p = queue.pop(0)
        if p in region:
            continue
        n = idx.nodes[p]
        ok = (n.op_type in POINTWISE and n.input[0] in inside) or (
            n.op_type in BINARY and all(t in inside or idx.constant(t) is not None for t in n.input)
            and any(t in inside for t in n.input))
        if not ok or len(region) >= _TAIL_LIMIT:
            continue
        region.append(p)
        inside.update(n.output)
        queue += [c for o in n.output for c, _ in idx.consumers.get(o, [])]
    while True:   # shrink until exactly one tensor leaves the region
        exits = {t for t in inside if t in idx.outputs or any(c not in region for c, _ in idx.consumers.get(t, []))}
        if len(exits) == 1:
            out = exits.pop()
            return (sorted(region), out) if out != start else ([], start)
        if not region:
            return [], start
        region.pop()
        inside = {start} | {o for p in region for o in idx.nodes[p].output}


@dataclass
class WeightSpec:
    """A constant weight quantized per channel along ``axis`` (int8, DQ only)."""

    tensor: str
    axis: int
    consumers: list  # [(node id, input index)]


@dataclass
class Placement:
    """Where Q/DQ go.  ``activations[tensor]`` lists (node id, input index) to rewire;
    ``weights[key]`` one :class:`WeightSpec` per weight and layout (key: the tensor name, or
    ``name@axisN`` when the weight is read with several layouts)."""

    activations: dict = field(default_factory=dict)
    weights: dict = field(default_factory=dict)            # key -> WeightSpec
    groups: list = field(default_factory=list)             # lists of tensors sharing one amax
    quantized_layers: list = field(default_factory=list)   # node ids of weighted ops in INT8
    skipped: list = field(default_factory=list)            # (node id, reason)
    reasons: dict = field(default_factory=dict)            # activation tensor -> why it is quantized
    force: tuple = ()                                      # tensors --force-ranges asks Q/DQ on
    exclude: tuple = ()                                    # --exclude patterns
    int8_deconv: bool = False                              # --int8-deconv

    def add(self, tensor: str, node: int, index: int, reason: str) -> None:
        users = self.activations.setdefault(tensor, [])
        if (node, index) not in users:
            users.append((node, index))
        self.reasons.setdefault(tensor, reason)

    def add_weight(self, tensor: str, axis: int, node: int, index: int) -> None:
        same = [s for s in self.weights.values() if s.tensor == tensor]
        spec = next((s for s in same if s.axis == axis), None)
        if spec is None:
            spec = WeightSpec(tensor, axis, [])
            if same and same[0].axis != axis:  # a second layout: key both by axis
                first = same[0]
                self.weights = {(f"{first.tensor}@axis{first.axis}" if s is first else k): s
                                for k, s in self.weights.items()}
                self.weights[f"{tensor}@axis{axis}"] = spec
            else:
                self.weights[tensor] = spec
        spec.consumers.append((node, index))


class Excluder:
    """``--exclude`` patterns: an op type (e.g. ``MatMul``), an exact node name, a regex over node
    names, or ``depthwise`` (every Conv with one input channel per group)."""

    def __init__(self, patterns):
        self.patterns = list(patterns or [])
        self._regex = []
        for p in self.patterns:
            try:
                self._regex.append(re.compile(p))
            except re.error:
                self._regex.append(None)

    def match(self, node, idx: "GraphIndex | None" = None) -> bool:
        for p, rx in zip(self.patterns, self._regex):
            if node.op_type == p or node.name == p or (rx is not None and rx.fullmatch(node.name)):
                return True
            if p == "depthwise" and idx is not None and len(node.input) > 1 and is_depthwise(node, idx.constant(node.input[1])):
                return True
        return False


def _dims(idx: GraphIndex, name: str):
    return idx.shapes.get(name)


def weight_axis(node, w: np.ndarray) -> int:
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return w.ndim - 1  # MatMul: (..., K, N), output channels along N


def is_depthwise(node, w: np.ndarray | None) -> bool:
    """A Conv (NodeProto) with one input channel per group, ``w`` its weight (None: unknown)."""
    return (node.op_type == "Conv" and w is not None and w.ndim >= 3 and w.shape[1] == 1
            and _attr(node, "group", 1) == w.shape[0] > 1)


def _attr(node, name, default):
    for a in node.attribute:
        if a.name == name:
            return a.i
    return default


GROUPED_DECONV = ("grouped ConvTranspose: its per-output-channel weight scales would need two axes (group × "
                  "channel), which one DequantizeLinear axis cannot give, and TensorRT builds it in float")
DECONV = ("ConvTranspose: TensorRT-RTX builds it in FP32 (no INT8 kernel, see qdq check --layers), so Q/DQ would "
          "promise INT8 the engine does not run; --int8-deconv quantizes it for TensorRT 8.x/10.x")


def skip_reason(idx: GraphIndex, node, weight: np.ndarray | None, int8_deconv: bool = False) -> str | None:
    """Why the weighted layer ``node`` (weight ``weight``) stays float under rule 4, or None."""
    op = node.op_type
    if op in ("Conv", "ConvTranspose"):
        group = _attr(node, "group", 1)
        if op == "Conv":
            cout, cin = weight.shape[0], weight.shape[1] * group
        else:
            cin, cout = weight.shape[0], weight.shape[1] * group
            if group > 1:
                return GROUPED_DECONV
            if not int8_deconv:
                return DECONV
        if (cin < 16 or cout < 16) and not (cin % 8 == 0 and cout % 8 == 0):
            return f"{cin} input / {cout} output channels: too few for INT8 kernels (<16, not multiples of 8)"
        return None
    # Gemm / MatMul: A (M, K) · B (K, N)
    a_shape = _dims(idx, node.input[0])
    b_shape = list(weight.shape) if weight is not None else _dims(idx, node.input[1])
    if op == "Gemm":
        trans_a, trans_b = _attr(node, "transA", 0), _attr(node, "transB", 0)
        m = a_shape[trans_a] if a_shape and len(a_shape) == 2 else None  # A is (M, K), or (K, M) if transA
        n = b_shape[1 - trans_b] if b_shape and len(b_shape) == 2 else None
        k = b_shape[trans_b] if b_shape and len(b_shape) == 2 else None
    else:
        n = b_shape[-1] if b_shape and len(b_shape) >= 2 else (1 if b_shape and len(b_shape) == 1 else None)
        k = b_shape[-2] if b_shape and len(b_shape) >= 2 else None
        # with constant weights every leading dim of A is a row of the GEMM; otherwise batched
        rows = (a_shape[:-1] if weight is not None else a_shape[-2:-1]) if a_shape else None
        m = int(np.prod(rows)) if rows is not None and None not in rows else None
    if m == 1 or n == 1:
        return f"GEMV shape (M={m}, N={n}): no INT8 speed-up"
    if (k is not None and k < 16) or (n is not None and n < 16):
        return f"K={k}, N={n} < 16: too small for INT8 kernels"
    return None


def place(idx: GraphIndex, exclude=None, keep_float: dict | None = None, force=(), int8_deconv: bool = False) -> Placement:
    """Decide the Q/DQ placement for the main graph of ``idx.model`` (see module doc).
    ``keep_float`` maps node ids of weighted layers to keep in float to the reason (mixed precision);
    ``force`` names tensors that get Q/DQ on every float consumer whatever the rules say
    (``--force-ranges``), on top of the rules; ``int8_deconv`` quantizes ungrouped ConvTranspose.
    These user choices are kept in the placement, so that :func:`replace` redoes it with other layers
    in float and the same choices."""
    ex = Excluder(exclude)
    plan = Placement(exclude=tuple(exclude or ()), force=tuple(force), int8_deconv=int8_deconv)
    quantized = _place_layers(idx, plan, ex, keep_float or {}, int8_deconv)
    _place_residuals(idx, plan, ex, quantized)
    _propagate(idx, plan, ex)
    for t in [t for t in plan.force if t not in plan.activations and t not in idx.constants and idx.is_float(t)]:
        for node, i in idx.consumers.get(t, []):
            plan.add(t, node, i, "range forced by --force-ranges")
    return plan


def replace(idx: GraphIndex, plan: Placement, keep_float: dict) -> Placement:
    """``plan`` redone with the weighted layers ``keep_float`` (id → reason) in float too, under the
    same ``--exclude`` patterns and forced ranges."""
    return place(idx, plan.exclude, keep_float, plan.force, plan.int8_deconv) if keep_float else plan


def _activation_ok(idx: GraphIndex, name: str) -> bool:
    return bool(name) and name not in idx.constants and (name not in idx.dtypes or idx.is_float(name))


def _layer_skip(idx: GraphIndex, pos: int, node, ex: Excluder, keep_float: dict, int8_deconv: bool) -> str | None:
    """Why weighted layer ``pos`` stays float (rule 4, or ``keep_float``), or None to quantize it."""
    if ex.match(node, idx):
        return "excluded by --exclude"
    if pos in keep_float:
        return keep_float[pos]
    x, wname = node.input[0], node.input[1]
    w = idx.constant(wname)
    if idx.constant(x) is not None:
        return "first input is a constant"
    if w is None and node.op_type != "MatMul":
        return "weight is not a constant"
    if w is not None and (w.dtype.kind != "f" or w.ndim < 1):
        return f"weight dtype {w.dtype} is not float"
    if not _activation_ok(idx, x) or (w is None and not _activation_ok(idx, wname)):
        return "input is not a float tensor"
    return skip_reason(idx, node, w, int8_deconv)


def _place_layers(idx: GraphIndex, plan: Placement, ex: Excluder, keep_float: dict, int8_deconv: bool) -> set:
    """Rule 1: every input of the weighted layers not skipped; returns their ids."""
    quantized = set()
    for pos, node in enumerate(idx.nodes):
        if node.op_type not in WEIGHTED or node.domain not in ("", "ai.onnx"):
            continue
        reason = _layer_skip(idx, pos, node, ex, keep_float, int8_deconv)
        if reason:
            plan.skipped.append((pos, reason))
            continue
        x, wname = node.input[0], node.input[1]
        w = idx.constant(wname)
        plan.add(x, pos, 0, f"input of {node.op_type}")
        if w is None:
            plan.add(wname, pos, 1, f"input of {node.op_type} (activation x activation)")
        else:
            plan.add_weight(wname, weight_axis(node, w), pos, 1)
        plan.quantized_layers.append(pos)
        quantized.add(pos)
    return quantized


def _place_residuals(idx: GraphIndex, plan: Placement, ex: Excluder, quantized: set) -> None:
    """Rule 2: the shortcut input of a residual Add fed by a quantized Conv."""
    depth = _depths(idx.nodes)
    for pos, node in enumerate(idx.nodes):
        if not _residual_add(idx, node) or ex.match(node):
            continue
        fused = [_conv_source(idx, t, quantized) for t in node.input]
        if not any(fused):
            continue
        if all(fused):
            shortcut = min(node.input, key=lambda t: depth.get(t, 0))
        else:
            shortcut = node.input[0] if not fused[0] else node.input[1]
        if _activation_ok(idx, shortcut):
            plan.add(shortcut, pos, list(node.input).index(shortcut), "residual input of Add")


def _propagate(idx: GraphIndex, plan: Placement, ex: Excluder) -> None:
    """Rule 3: through pooling / resize / concat / shape ops whose output is quantized, in reverse
    graph order; same-scale ops join their inputs and output into one scale group."""
    groups = _UnionFind()
    for pos in reversed(range(len(idx.nodes))):
        node = idx.nodes[pos]
        if node.op_type not in SAME_SCALE_OPS + OWN_SCALE_OPS or ex.match(node):
            continue
        out = node.output[0]
        if out not in plan.activations or out in idx.outputs:
            continue
        data_inputs = list(node.input) if node.op_type == "Concat" else [node.input[0]]
        for i, t in enumerate(data_inputs):
            if not _activation_ok(idx, t):
                continue
            plan.add(t, pos, i, f"input of {node.op_type} between quantized layers")
            if node.op_type in SAME_SCALE_OPS:
                groups.union(out, t)
    plan.groups = [g for g in groups.groups() if len(g) > 1]


def scale_group(idx: GraphIndex, activations, tensor: str) -> set:
    """The tensors of ``activations`` that share ``tensor``'s amax under rule 3: joined through the
    same-scale ops whose output and data inputs all carry Q/DQ (``tensor`` alone when none)."""
    edges: dict = {}
    for node in idx.nodes:
        if node.op_type in SAME_SCALE_OPS and node.output[0] in activations:
            for t in (node.input if node.op_type == "Concat" else node.input[:1]):
                if t in activations:
                    edges.setdefault(t, set()).add(node.output[0])
                    edges.setdefault(node.output[0], set()).add(t)
    group, todo = {tensor}, [tensor]
    while todo:
        for t in edges.get(todo.pop(), ()):
            if t not in group:
                group.add(t)
                todo.append(t)
    return group


def served_layers(idx: GraphIndex, plan: Placement, tensor: str) -> set:
    """The quantized weighted layers whose INT8 input the Q/DQ on ``tensor`` serves: its readers, and
    through pooling / resize / concat / shape ops whose output carries Q/DQ (rule 3), theirs."""
    out, todo, seen = set(), [tensor], set()
    while todo:
        t = todo.pop()
        for pos, _ in plan.activations.get(t, []):
            if pos in plan.quantized_layers:
                out.add(pos)
            elif idx.nodes[pos].op_type in SAME_SCALE_OPS + OWN_SCALE_OPS and idx.nodes[pos].output[0] not in seen:
                seen.add(idx.nodes[pos].output[0])
                todo.append(idx.nodes[pos].output[0])
    return out


_SCORE_OPS = ("Mul", "Div", "Add", "Sub", "Where", "Cast")   # scale and mask between Q·Kᵀ and Softmax
_PROBS_OPS = ("Cast", "Dropout", "Identity", "QuantizeLinear", "DequantizeLinear")   # between Softmax and ·V


def _activation_matmul(idx: GraphIndex, pos) -> bool:
    n = idx.nodes[pos] if pos is not None else None
    return n is not None and n.op_type == "MatMul" and all(idx.constant(t) is None for t in n.input[:2])


def _scores_matmul(idx: GraphIndex, tensor: str, depth: int = 4):
    """The activation×activation MatMul ``tensor`` comes from through scale/mask ops, or None."""
    pos = idx.producer.get(tensor)
    if _activation_matmul(idx, pos):
        return pos
    if depth == 0 or pos is None or idx.nodes[pos].op_type not in _SCORE_OPS:
        return None
    found = (_scores_matmul(idx, t, depth - 1) for t in idx.nodes[pos].input if t and idx.constant(t) is None)
    return next((f for f in found if f is not None), None)


def attention_units(idx: GraphIndex) -> list[tuple[int, int]]:
    """(Q·Kᵀ MatMul, ·V MatMul) node ids of every attention block: a Softmax fed by a MatMul of two
    activations through scale/mask ops (Mul, Div, Add, Sub, Where, Cast; as PyTorch and TensorFlow
    converters export them), whose output (through Cast/Dropout/Identity, or its Q/DQ in a Q/DQ file)
    is the first input of a
    MatMul of two activations.  TensorRT fuses such a block only as a whole, so placement decisions
    take both MatMuls together."""
    units = []
    for s in (p for p, n in enumerate(idx.nodes) if n.op_type == "Softmax"):
        qk = _scores_matmul(idx, idx.nodes[s].input[0])
        probs, hops = idx.nodes[s].output[0], 0
        while hops < 3:
            users = idx.consumers.get(probs, [])
            av = next((p for p, i in users if i == 0 and _activation_matmul(idx, p)), None)
            if av is not None or len(users) != 1 or idx.nodes[users[0][0]].op_type not in _PROBS_OPS:
                break
            probs, hops = idx.nodes[users[0][0]].output[0], hops + 1
        if qk is not None and av is not None:
            units.append((qk, av))
    return units


def known_bounds(idx: GraphIndex, plan: Placement) -> dict:
    """tensor → producing op, for the activations of ``plan`` an op of :data:`BOUNDED` produces (their
    range is known without data: |y| ≤ 1)."""
    out = {}
    for t in plan.activations:
        pos = idx.producer.get(t)
        if pos is not None and idx.nodes[pos].op_type in BOUNDED:
            out[t] = idx.nodes[pos].op_type
    return out


def calibration_tensors(idx: GraphIndex, plan: Placement) -> list[str]:
    """Tensors to gather statistics for: the placement's, plus every float input of a residual Add
    (keeping a layer in float can move the shortcut Q/DQ to the Add's other input)."""
    extra = [t for node in idx.nodes if _residual_add(idx, node) for t in node.input
             if t not in plan.activations and idx.constant(t) is None and (t not in idx.dtypes or idx.is_float(t))]
    return list(plan.activations) + list(dict.fromkeys(extra))


def _residual_add(idx: GraphIndex, node) -> bool:
    return (node.op_type == "Add" and len(node.input) == 2
            and all(idx.constant(t) is None for t in node.input))


def _conv_source(idx: GraphIndex, tensor: str, quantized: set) -> bool:
    """True if ``tensor`` is the output of a quantized Conv/ConvTranspose (through a BatchNorm)."""
    pos = idx.producer.get(tensor)
    while pos is not None and idx.nodes[pos].op_type in _FUSED_INTO_CONV:
        pos = idx.producer.get(idx.nodes[pos].input[0])
    return pos is not None and idx.nodes[pos].op_type in ("Conv", "ConvTranspose") and pos in quantized


def _depths(nodes) -> dict:
    """Longest path (in nodes) from a graph input to each tensor."""
    depth = {}
    for node in nodes:
        d = 1 + max((depth.get(t, 0) for t in node.input if t), default=0)
        for o in node.output:
            depth[o] = d
    return depth


class _UnionFind:
    def __init__(self):
        self.parent = {}

    def find(self, x):
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a, b):
        self.parent[self.find(a)] = self.find(b)

    def groups(self):
        out = {}
        for x in self.parent:
            out.setdefault(self.find(x), []).append(x)
        return [sorted(v) for v in out.values()]


def _nested_layers(graph) -> int:
    """Weighted layers inside the subgraphs of ``graph``'s nodes (If, Loop, Scan bodies), at any depth."""
    return sum(sum(n.op_type in WEIGHTED for n in sub.node) + _nested_layers(sub)
               for node in graph.node for sub in subgraphs(node))


def why_none(idx: GraphIndex, plan: Placement) -> str:
    """Why a placement quantizes no layer, from its skip reasons (the commonest first)."""
    if not plan.skipped:
        nested = _nested_layers(idx.model.graph)
        if nested:
            flow = sorted({n.op_type for n in idx.nodes if subgraphs(n)})
            return (f"the main graph has no Conv, ConvTranspose, Gemm or MatMul; its {nested} weighted layers are inside the "
                    f"subgraphs of {'/'.join(flow)} nodes, which qdq does not quantize: export the branch you run "
                    "as a plain graph (its condition fixed, loops unrolled)")
        return "the model has no Conv, ConvTranspose, Gemm or MatMul"
    kinds: dict = {}   # the same rule with other numbers is one kind
    for pos, why in plan.skipped:
        kinds.setdefault(re.sub(r"\d+", "#", why), []).append((idx.labels[pos], why))
    parts = [f"{len(v)} like {v[0][0]!r} ({v[0][1]})" for v in sorted(kinds.values(), key=lambda v: -len(v))[:3]]
    return f"all {len(plan.skipped)} weighted layers stay float by the placement rules: " + "; ".join(parts)
