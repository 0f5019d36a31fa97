"""Human-readable and machine-readable views of a quantization summary.

Names and paths are what users copy, so they are never cut: name columns fold instead of ending in
"…", and when stdout is not a terminal (a pipe, a log) lines are as wide as they need to be.
"""
from __future__ import annotations

import json
import re
import sys

from ..graph.shapes import shape_text
from ..measure.tasks import figure_name, why_unmeasured


def console(file=None):
    """A rich Console on ``file`` (stdout): the terminal's width, or unlimited lines for pipes and logs.
    Markup is off: tensor names and shapes such as ``[p2o.DynamicDimension.0, 1]`` print as they are."""
    from rich.console import Console

    file = file or sys.stdout
    probe = Console(file=file, markup=False, highlight=False)
    return probe if probe.is_terminal else Console(file=file, width=100_000, soft_wrap=True, markup=False, highlight=False)


# columns holding names, paths and sentences: they fold, never end in "…"
NAME_COLUMNS = ("node", "tensor", "layer", "output", "consumers", "engine layer", "reason", "message", "file",
                "why quantized", "type")
_TEXT_COLUMNS = NAME_COLUMNS + ("op", "kind", "method", "engine", "rule", "level", "dtype")


def table(title: str, columns, names=NAME_COLUMNS):
    """A rich Table with numbers right-aligned; the columns in ``names`` fold instead of truncating."""
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for col in columns:
        t.add_column(col, justify="left" if col in _TEXT_COLUMNS else "right",
                     overflow="fold" if col in names else "ellipsis", no_wrap=col not in names)
    return t


def summary_json(summary) -> str:
    return json.dumps(summary.to_dict(), indent=1, default=float)


def print_summary(summary, top: int = 12, file=None) -> None:
    """A rich table on ``file`` (stdout): coverage, skipped layers, the widest-clipping tensors."""
    con = console(file)
    _coverage_lines(con, summary)
    if summary.accuracy:
        print_held_back(con, summary)
    _layer_tables(con, summary, top)
    if summary.ranges_import:
        _import_lines(con, summary.ranges_import)
    if summary.engine:
        e = summary.engine
        con.print(f"as TensorRT builds it: {e['int8_layers']}/{e['weighted_layers']} weighted layers in INT8 "
                  f"({e['int8_mac_share']:.1%} of their MACs); {len(e['findings'])} findings (qdq check --layers)")
    diagnosis_lines(con, summary.diagnosis)
    for w in summary.warnings:
        con.print(f"warning: {w}", style="yellow")
    if summary.output:
        con.print(f"wrote {summary.output}", style="bold")


def _coverage_lines(con, summary) -> None:
    """The run's first two lines: model, target, method and samples; INT8 layers, MACs and Q/DQ pairs."""
    n_q, n_all = len(summary.quantized_layers), summary.weighted_layers
    con.print(f"{summary.model} → target {summary.target}, opset {summary.opset}, "
              f"method {summary.method}, {summary.samples} calibration samples")
    at = shape_text(summary.mac_shapes)
    unknown = summary.mac_unknown
    share = (f"{summary.int8_mac_share:.1%} of the multiply-accumulates of the {n_all - len(unknown)} layers whose "
             f"MACs are known; {len(unknown)} unknown: {', '.join(unknown[:3])}{' …' if len(unknown) > 3 else ''}"
             if unknown else f"{summary.int8_mac_share:.1%} of the multiply-accumulates")
    where = {"data": " measured on the data", "shape inference": " by shape inference"}.get(summary.mac_source, "")
    con.print(f"INT8 weighted layers: {n_q}/{n_all} ({share}" + (f"{where} at {at}" if at else where) + "); "
              f"Q/DQ pairs: {len(summary.activations)} activations, {len(summary.weights)} weights (per-channel); "
              f"bias correction: {summary.bias_correction} ({summary.bias_corrected} layers)")


def _layer_tables(con, summary, top: int) -> None:
    """Layers mixed precision floated, layers the placement rules left float, the most clipped ranges."""
    if summary.float_layers:
        t = table("kept in float by mixed precision (costliest INT8 per MAC first)", ("node", "op", "MACs", "its INT8 would cost dB"))
        for f in sorted(summary.float_layers, key=lambda f: -f["cost_db"]):
            t.add_row(f["node"], f["op"], f"{f['mac_share']:.1%}", f"{f['cost_db']:.2f}")
        con.print(t)
    rules = [s for s in summary.skipped if not s["reason"].startswith("kept in float:")]
    if rules:
        t = table("weighted layers left in float by the placement rules", ("node", "op", "reason"))
        for s in rules:
            t.add_row(s["node"], s["op"], s["reason"])
        con.print(t)
    t = table(f"activation ranges (most clipped first, top {top})",
              ("tensor", "amax", "scale", "clipped", "method", "why quantized"))
    rows = sorted(summary.activations.items(), key=lambda kv: -(kv[1]["clipped"] or 0.0))[:top]
    for name, a in rows:
        clipped = "–" if a["clipped"] is None else f"{a['clipped']:.3%}"
        t.add_row(name, f"{a['amax']:.5g}", f"{a['scale']:.5g}", clipped, a["method"], a["reason"])
    con.print(t)


def _import_lines(con, imp: dict) -> None:
    """What an imported ranges file applied, shared, left unused, or named wrongly."""
    con.print(f"ranges from {imp['file']} ({imp['kind']}): {imp['applied']} applied, "
              f"{len(imp['unused'])} not applied, {len(imp['not_in_model'])} not in the model, "
              f"{len(imp['zero'])} zero entries")
    for t, others in imp.get("shared", {}).items():
        if others:
            con.print(f"  {t}: shares one scale with {len(others)} tensor{'s' * (len(others) != 1)} "
                      f"({', '.join(others[:3])}{' …' if len(others) > 3 else ''}): your range is theirs too")
    for group in imp.get("unshared_groups", []):
        con.print(f"  {', '.join(group)}: your ranges differ inside one scale group, which is left unshared "
                  "(TensorRT reformats between them: qdq inspect QDQ004)")
    _unused_lines(con, imp["unused"])
    for label, key in (("not in the model", "not_in_model"), ("zero", "zero")):
        if imp[key]:
            con.print(f"  {label}: {', '.join(imp[key][:8])}" + (" …" if len(imp[key]) > 8 else ""))


# more entries not applied than this are grouped by reason (a calibration cache of every tensor)
UNUSED_LINES = 12


def _unused_lines(con, unused: list) -> None:
    """Each range not applied with its reason; beyond :data:`UNUSED_LINES`, one line per reason with its
    count and first tensors (``--json`` lists every one)."""
    if len(unused) <= UNUSED_LINES:
        for u in unused:
            con.print(f"  not applied: {u['tensor']}: {u['reason']}")
        return
    kinds: dict = {}
    for u in unused:
        kinds.setdefault(re.sub(r" \(read by [^)]*\)", "", u["reason"]), []).append(u["tensor"])
    for reason, names in sorted(kinds.items(), key=lambda kv: -len(kv[1])):
        con.print(f"  not applied: {len(names)} tensor{'s' * (len(names) != 1)} ({', '.join(names[:3])}"
                  f"{' …' if len(names) > 3 else ''}): {reason.replace('applies it', 'applies them')}")
    con.print("  (--json lists each range not applied with its reason)")


def _fig(value, interval, samples=None, unit="dB", unmeasured="nothing to count") -> str:
    """``23.8 dB (21.9–25.1, 12 samples)``, a share ``96.0% (91.0–99.0%, 12 samples)``, or
    ``– (no boxes in either model, 12 samples)`` where ``value`` is unmeasured (None or NaN)."""
    n = f", {samples} samples" if samples else ""
    if value is None or value != value:
        return f"– ({unmeasured}{n})"
    if unit == "dB":
        one = lambda v: "inf" if v == float("inf") else ("-inf" if v == float("-inf") else f"{v:.1f}")  # noqa: E731
        return f"{one(value)} dB ({one(interval[0])}–{one(interval[1])}{n})"
    if unit == "x":
        return f"{value:.3g} ({interval[0]:.3g}–{interval[1]:.3g}{n})"
    return f"{value:.1%} ({interval[0]:.1%}–{interval[1]:.1%}{n})"


def task_line(task: dict, samples: int | None = None, reference: str = "fp32") -> str:
    """The task's figures in one line: ``box F1 96.0% (91.0–99.0%, 12 samples), map IoU …``, and its
    words on where the disagreement comes from (``reference``: what the file was compared with)."""
    parts = []
    for k, f in task["figures"].items():
        unit = "x" if k == "rank" or task["name"] == "metric" else ""
        parts.append(f"{figure_name(k, reference)} "
                     f"{_fig(f['value'], (f['low'], f['high']), samples if not parts else None, unit, why_unmeasured(k))}")
    return ", ".join(parts) + (f" ({task['note']})" if task.get("note") else "")


def _remainder_text(summary) -> str:
    acc = summary.accuracy
    if acc.get("remainder") != "fp16":
        return "layers without Q/DQ in FP32 as written (--remainder fp32)"
    pinned = f", {len(summary.fp32_nodes)} nodes pinned to FP32" if summary.fp32_nodes else ""
    if summary.target == "trt11":
        return f"layers without Q/DQ in FP16 as the file casts them{pinned}"
    return f"layers without Q/DQ in FP16 as TensorRT 8.x/10.x runs them with --int8 --fp16{pinned}"


def print_held_back(con, summary) -> None:
    """The held-back check: the file, its weights alone, the task, the data ×1.25, and what it means."""
    acc = summary.accuracy
    n = acc["held_back_samples"]
    where = "samples set aside from the calibration data" if acc.get("held_back", True) else \
        "calibration samples: too few to hold any back"
    chose = (f", apart from the {acc['chosen_on']} that chose the method, bias correction and where mixed precision "
             "stops" if acc.get("chosen_on") else "; the samples that chose also report: optimistic")
    con.print(f"held-back check ({n} {where}{chose}; {_remainder_text(summary)}):")
    reach = "" if acc.get("reached") is None else (f"; within {acc['max_loss_db']:g} dB of it: "
                                                   + ("yes" if acc["reached"] else "no") + " (lower end of the interval)")
    worst = worst_text(acc["final_outputs"]) if acc.get("final_outputs") else ""
    con.print(f"  this file {_fig(acc['final_db'], acc['final_interval_db'], n)}{worst}; its weights alone "
              f"{_fig(acc['final_weights_only_db'], acc['final_weights_only_interval_db'])}; all layers INT8 "
              f"{acc['int8_db']:.1f} dB{reach}")
    task = acc.get("task") or {}
    if task.get("figures"):
        con.print(f"  task {task['name']} ({task['reason']}): {task_line(task, n)}")
    elif task:
        con.print(f"  task: none ({task['reason']})")
    robust = f"{acc['robust_scale']:g}"
    line = f"  the same samples ×{robust} (data brighter, louder, larger than calibration saw): " \
           f"{_fig(acc['robust_db'], acc['robust_interval_db'])}"
    if task.get("robust"):
        line += "; " + task_line({"name": task["name"], "figures": task["robust"]})
    con.print(line)
    if acc.get("method_scores"):
        con.print("  --method auto: " + ", ".join(f"{m} {v:.2f} dB" for m, v in acc["method_scores"].items())
                  + f" (held-back and ×{robust} together): {summary.method}")
    known = acc.get("known_ranges")
    if known:
        gap = "" if known["gap_low_db"] is None else f" (lower end of the paired gap {known['gap_low_db']:+.2f} dB)"
        n = len(known["tensors"])
        con.print(f"  softmax/sigmoid/tanh outputs at their known range, amax 1 ({n} tensor{'s' if n != 1 else ''}): "
                  + ("taken" if known["taken"] else "not taken, calibrated ranges kept") + gap)
    con.print(f"  these samples come from the calibration data: data from elsewhere can land lower. Measure on your own "
              f"validation data: qdq compare {summary.model} {summary.output or 'FILE'} --data YOUR_DATA")
    if acc.get("more_samples"):
        con.print(f"  only {n} held-back samples: {acc['more_samples']} more ({n + acc['more_samples']} in all) would "
                  "halve the interval")


def _db(v: float) -> str:
    return "inf" if v == float("inf") else ("-inf" if v == float("-inf") else f"{v:.2f}")


def worst_text(q: dict) -> str:
    """`` at output 'scores', the worst of 2 (all pooled 37.2 dB)`` for a figure of several outputs."""
    if q.get("outputs", 1) < 2:
        return ""
    p = q["pooled"]
    return f" at output {q['output']!r}, the worst of {q['outputs']} (all outputs pooled {_fig(p['value'], (p['low'], p['high']))})"


def diagnosis_lines(con, causes: list) -> None:
    """The diagnosis (:mod:`qdq.measure.diagnosis`): one numbered line per cause."""
    if causes:
        con.print("diagnosis: what costs most, and the fix", style="bold")
        for k, c in enumerate(causes, 1):
            con.print(f" {k}. {c['text']}", soft_wrap=True)


def print_compare(result, top: int = 15, file=None) -> None:
    """Output metrics, the task's agreement, the loss budget and the worst Q/DQ tensors."""
    con = console(file)
    q = result.sqnr
    con.print(f"quantized file vs {result.reference.upper()} on {result.samples} samples ({result.remainder}): "
              f"output SQNR {_fig(q['value'], (q['low'], q['high']), q['samples'])}{worst_text(q)}" if q else "")
    if result.task is not None and result.task["figures"]:
        con.print(f"task {result.task['name']} ({result.task['reason']}): {task_line(result.task, result.samples, result.reference)}")
    elif result.task is not None:
        con.print(f"task: none ({result.task['reason']})")
    diagnosis_lines(con, result.diagnosis)
    if result.layers is None:
        con.print("diagnosis: run with --layerwise to name the tensors and ranges that cost most")
    elif not result.diagnosis:
        con.print("diagnosis: no imported range, range far from calibration, output gain or single Q/DQ stands out")
    _outputs_table(con, result)
    if result.budget:
        b = table("where the loss lives (output SQNR dB; the halves with your model's biases, no bias correction)",
                  ("output", "weights only", "activations only", "both (the file)"))
        for o in result.outputs:
            b.add_row(o.name, *(_db(result.budget[k][o.name]) for k in ("weights_only", "activations_only", "both")))
        con.print(b)
    if result.layers:
        by_name = {r.tensor: r for r in result.layers}
        w = table(f"Q/DQ tensors, most noise at their consumer's output first (top {top})", ("tensor", "at consumer dB", "local dB", "accumulated dB", "amax", "clipped", "levels used"))
        shown = result.ranked[:top] + ([result.first_below] if result.first_below and result.first_below
                                       not in result.ranked[:top] else [])   # the line below names it: show it
        for name in shown:
            r = by_name[name]
            w.add_row(name, _db(r.output_sqnr_db), _db(r.local_sqnr_db), _db(r.accumulated_sqnr_db), f"{r.amax:.4g}",
                      f"{r.clipped:.3%}", f"{r.levels_used:.0%}")
        con.print(w)
        if result.first_below:
            con.print(f"first tensor below {result.threshold_db:g} dB (accumulated): {result.first_below}")


def _outputs_table(con, result) -> None:
    """Per output: SQNR, cosine, errors, bias and gain (top-1/top-5 only where an output is class scores)."""
    tops = any(o.top1 is not None for o in result.outputs)
    cols = ["output", "SQNR dB", "cosine", "max|err|", "mean|err|", "bias", "gain"] + (["top-1", "top-5"] if tops else [])
    t = table(f"outputs vs {result.reference.upper()} ({result.samples} samples)", cols)
    if result.reference == "fp16":
        t.add_column("FP16 vs FP32 dB", justify="right", no_wrap=True)
    for o in result.outputs:
        m = o.metrics
        row = [o.name, _db(m["sqnr_db"]), f"{m['cosine']:.5f}", f"{m['max_abs']:.4g}", f"{m['mean_abs']:.4g}",
               f"{m['bias']:+.4f}", f"{m['gain']:.4f}"]
        if tops:
            row += ["–" if o.top1 is None else f"{o.top1:.1%}", "–" if o.top5 is None else f"{o.top5:.1%}"]
        if result.reference == "fp16":
            row.append(_db(o.fp16_vs_fp32["sqnr_db"]))
        t.add_row(*row)
    con.print(t)


def print_inspection(ins, rules, file=None) -> None:
    """Q/DQ pairs, INT8 coverage with the float layers, and lint findings."""
    con = console(file)
    t = table("Q/DQ pairs", ("tensor", "kind", "consumers", "amax", "scale min/median/max", "axis", "dtype"))
    for p in ins.pairs:
        scales = (f"{p['scale_min']:.4g}" if p["channels"] == 1 else
                  f"{p['scale_min']:.3g}/{p['scale_median']:.3g}/{p['scale_max']:.3g}")
        t.add_row(p["tensor"], p["kind"], ", ".join(p["consumers"][:2]) + (" …" if len(p["consumers"]) > 2 else ""),
                  f"{p['amax']:.5g}", scales, "" if p["axis"] is None else str(p["axis"]), p["scale_dtype"])
    con.print(t)
    c = ins.coverage
    unknown = (f" of the {c['layers'] - c['unknown_shape_layers']} layers whose MACs shape inference knows "
               f"({c['unknown_shape_layers']} unknown)" if c["unknown_shape_layers"] else "")
    con.print(f"INT8 coverage: {c['share']:.1%} of {c['total_macs'] / 1e6:.1f} M multiply-accumulates{unknown}; "
              f"{c['layers'] - c['float_layers']}/{c['layers']} weighted layers in INT8")
    if ins.float_layers:
        f = table("weighted layers in float", ("node", "op", "MACs", "reason"))
        for r in ins.float_layers:
            f.add_row(r["node"], r["op"], "?" if r["macs"] is None else f"{r['macs']:,}", r["reason"])
        con.print(f)
    if ins.findings:
        lint = table("TensorRT lint", ("rule", "level", "node", "message"))
        for fnd in ins.findings:
            lint.add_row(fnd.rule, fnd.level, fnd.node, f"{rules[fnd.rule][1]}: {fnd.message}")
        con.print(lint)
    else:
        con.print("TensorRT lint: no findings")


def print_sensitivity(result, top: int = 20, file=None) -> None:
    con = console(file)
    full = f"; every layer INT8: {_db(result.full_db)} dB" if result.full_db is not None else ""
    t = table(f"layers, most output noise per MAC first ({result.samples} samples{full})",
              ("layer", "op", "MACs", "input dB", "weight dB", "layer dB", "at output dB")
              + (("all but this dB",) if result.full_db is not None else ()))
    for r in result.layers[:top]:
        row = [r.node, r.op, f"{r.mac_share:.1%}", _db(r.input_db), _db(r.weight_db), _db(r.layer_db), _db(r.contribution_db)]
        if result.full_db is not None:
            row.append("" if r.all_but_db is None else _db(r.all_but_db))
        t.add_row(*row)
    con.print(t)
    con.print("input/weight/layer dB: SQNR at the layer's own output with its INT8 input, weight, both; "
              "at output: estimated SQNR at the model's output from its input alone")


def print_engine_view(view, file=None) -> None:
    """``qdq check --layers``: the weighted layers as built, layer counts, reformats, findings."""
    con = console(file)
    n = len(view.weighted)
    con.print(f"engine: {len(view.layers)} layers, {view.engine_bytes / 1e6:.1f} MB; weighted layers in INT8: "
              f"{view.int8_layers}/{n} ({view.int8_mac_share:.1%} of their multiply-accumulates); "
              f"{view.reformats} reformat layers")
    t = table("weighted ONNX nodes as built", ("node", "op", "file", "engine", "engine layer"))
    for w in view.weighted:
        t.add_row(w["node"], w["op"], w["file"], w["precision"], w["engine_layer"] or "–")
    con.print(t)
    precisions = sorted({p for by in view.counts.values() for p in by})
    counts = table("engine layers by type and precision", ["type"] + precisions)
    for kind, by in sorted(view.counts.items()):
        counts.add_row(kind, *(str(by.get(p, "")) for p in precisions))
    con.print(counts)
    sizes = view.constant_bytes()
    con.print("engine constants: " + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in sorted(sizes["by_datatype"].items(),
                                                                                       key=lambda kv: -kv[1])))
    for f in view.findings:
        con.print(f"{f['kind']}: {f['node']}: {f['message']}", style="yellow")
    if not view.findings:
        con.print("every weighted layer runs in the precision the file asks for; every Q/DQ is fused")


def print_timings(view, file=None) -> None:
    """``qdq check --profile``: the device's per-layer times, INT8 engine against FP16 engine."""
    con = console(file)
    fp16 = "fp16" in view.total_ms
    ms = (lambda v: f"{v:.4f}" if v is not None else "–")
    con.print(f"INT8 engine {view.total_ms['int8']:.3f} ms per inference ({view.reformat_ms['int8']:.3f} ms in reformats)"
              + (f"; FP16 engine {view.total_ms['fp16']:.3f} ms ({view.reformat_ms['fp16']:.3f} ms in reformats)" if fp16 else ""))
    t = table("weighted ONNX nodes: ms per inference on the device", ("node", "op", "INT8 engine", "precision")
              + (("FP16 engine", "INT8 / FP16") if fp16 else ()))
    for n in view.nodes:
        row = [n.node, n.op, ms(n.int8_ms), n.precision or "?"]
        if fp16:
            ratio = f"{n.int8_ms / n.fp16_ms:.2f}" if n.int8_ms is not None and n.fp16_ms else "–"
            row += [ms(n.fp16_ms), ratio + (" slower" if n.slower else "")]
        t.add_row(*row)
    con.print(t)
    for engine, names in view.unmapped.items():
        if names:
            con.print(f"{engine} engine: {len(names)} layers name no node of the model (e.g. {names[0]!r}); "
                      "pass its trtexec --exportLayerInfo to map them", style="yellow")
    if fp16:
        slower = view.slower
        con.print(f"{len(slower)} layers are slower in INT8 than in FP16" + (
            f"; to keep them in float: qdq quantize … {view.exclude_line()}" if slower else ""))
