"""Self-contained HTML report of a comparison: inline SVG and CSS, no scripts, no network."""
from __future__ import annotations

import html
import math

from ..calib.ranges import QMAX
from ..graph.qdq_file import MIXED_FLOAT
from ..measure.tasks import figure_name, why_unmeasured

_CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:20px}h2{font-size:16px;margin-top:28px}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}.bad{background:#fde2e2}.note{color:#555;font-size:13px}
.hists{display:flex;flex-wrap:wrap;gap:16px}.hist{border:1px solid #ddd;padding:6px}
"""


def _e(x) -> str:
    return html.escape(str(x))


def _db(v) -> str:
    if v is None:
        return "–"
    return "∞" if v == math.inf else ("-∞" if v == -math.inf else f"{v:.2f}")


def _layer_chart(layers, threshold: float, first_below) -> str:
    """Accumulated SQNR (line) and local SQNR (bars) per Q/DQ tensor, in graph order."""
    w, h, pad = 1100, 300, 40
    n = len(layers)
    top = 60.0

    def y(v):
        v = max(0.0, min(top, v if math.isfinite(v) else top))
        return pad + (h - 2 * pad) * (1 - v / top)

    step = (w - 2 * pad) / max(n, 1)
    parts = [f'<svg id="layer-chart" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img">',
             f'<rect x="0" y="0" width="{w}" height="{h}" fill="#fff"/>']
    for v in range(0, int(top) + 1, 10):
        parts.append(f'<line x1="{pad}" x2="{w - pad}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#eee"/>'
                     f'<text x="{pad - 6}" y="{y(v) + 4:.1f}" font-size="10" text-anchor="end">{v}</text>')
    for i, r in enumerate(layers):
        x = pad + i * step
        cls = "#e07070" if r.tensor == first_below else "#9cc3e6"
        parts.append(f'<rect class="local" x="{x:.1f}" y="{y(r.local_sqnr_db):.1f}" width="{max(step - 1, 1):.1f}" '
                     f'height="{h - pad - y(r.local_sqnr_db):.1f}" fill="{cls}"><title>{_e(r.tensor)}: local '
                     f'{_db(r.local_sqnr_db)} dB, accumulated {_db(r.accumulated_sqnr_db)} dB</title></rect>')
    pts = " ".join(f"{pad + (i + 0.5) * step:.1f},{y(r.accumulated_sqnr_db):.1f}" for i, r in enumerate(layers))
    parts.append(f'<polyline points="{pts}" fill="none" stroke="#c0392b" stroke-width="2"/>')
    parts.append(f'<line x1="{pad}" x2="{w - pad}" y1="{y(threshold):.1f}" y2="{y(threshold):.1f}" '
                 f'stroke="#333" stroke-dasharray="5,4"/>')
    parts.append(f'<text x="{w - pad}" y="{y(threshold) - 4:.1f}" font-size="11" text-anchor="end">'
                 f'threshold {threshold:g} dB</text>')
    parts.append(f'<text x="{pad}" y="16" font-size="12">SQNR (dB) per Q/DQ tensor in graph order — bars: local '
                 '(this tensor\'s own Q/DQ), line: accumulated (INT8 model up to here)</text></svg>')
    return "".join(parts)


def _histogram(r, width=340, height=140) -> str:
    """|x| histogram of the reference tensor (log counts, 128 bars) with ±amax marked."""
    hist, bw = r.hist, r.bin_width
    used = max((i for i, c in enumerate(hist) if c), default=0) + 1
    span = max(used * bw, r.amax * 1.05)
    nbars = 128
    bars = [0] * nbars
    for i, c in enumerate(hist[:used]):
        bars[min(nbars - 1, int((i + 0.5) * bw / span * nbars))] += c
    peak = max(math.log10(c + 1) for c in bars) or 1.0
    bw_px = width / nbars
    parts = [f'<svg class="hist" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 18}">']
    for i, c in enumerate(bars):
        bh = height * math.log10(c + 1) / peak
        parts.append(f'<rect x="{i * bw_px:.1f}" y="{height - bh:.1f}" width="{bw_px:.1f}" height="{bh:.1f}" fill="#6c8ebf"/>')
    xa = width * r.amax / span
    parts.append(f'<line x1="{xa:.1f}" x2="{xa:.1f}" y1="0" y2="{height}" stroke="#c0392b" stroke-width="2"/>')
    parts.append(f'<text x="{min(xa + 3, width - 60):.1f}" y="12" font-size="11" fill="#c0392b">amax {r.amax:.4g}</text>')
    parts.append(f'<text x="0" y="{height + 14}" font-size="10">0</text><text x="{width}" y="{height + 14}" '
                 f'font-size="10" text-anchor="end">|x| {span:.4g}</text></svg>')
    return "".join(parts)


_COLOURS = {"int8": "#4caf50", "fp16": "#42a5f5", "fp32": "#ff9800"}


def _precision_strip(engine) -> str:
    """One cell per weighted layer in graph order, coloured by the precision TensorRT runs it in;
    layers mixed precision kept in float are outlined."""
    w, h = 1100, 46
    n = max(len(engine.weighted), 1)
    step = w / n
    cells = []
    for i, layer in enumerate(engine.weighted):
        colour = _COLOURS.get(layer["precision"], "#9e9e9e")
        kept = layer["file"] == MIXED_FLOAT
        stroke = ' stroke="#000" stroke-width="2"' if kept else ""
        cells.append(f'<rect class="engine-layer {_e(layer["precision"])}" x="{i * step:.1f}" y="2" '
                     f'width="{max(step - 1, 1):.1f}" height="28" fill="{colour}"{stroke}><title>{_e(layer["node"])}: '
                     f'{_e(layer["precision"])} in the engine{" (kept in float by mixed precision)" if kept else ""}'
                     f'</title></rect>')
    legend = " ".join(f'<span style="color:{c}">■</span> {p}' for p, c in _COLOURS.items())
    return (f'<svg id="precision-strip" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}">{"".join(cells)}'
            f'</svg><p class="note">{legend}; outlined: kept in float by mixed precision. '
            f'{engine.int8_layers}/{len(engine.weighted)} weighted layers in INT8, {engine.int8_mac_share:.1%} of their '
            f'MACs; {_e(engine.size_note())}.</p>')


def _agreement(result) -> str:
    """The worst output's SQNR (each output's and the pooled one beside it) and the task's figures, each
    with its 90 % interval."""
    q, t = result.sqnr, result.task
    out = [f"<h2 id='agreement'>Agreement with {result.reference.upper()}</h2><p class='note'>{_e(result.remainder)}; "
           "intervals: 90 % bootstrap over samples.</p><table><tr><th>figure</th><th>value</th><th>90 % interval</th></tr>"]
    if q:
        rows = [(f"output SQNR dB, {q['output']} (the worst output)" if q.get("outputs", 1) > 1 else "output SQNR dB", q)]
        if q.get("outputs", 1) > 1:
            rows += [(f"output SQNR dB, {name}", f) for name, f in q["per_output"].items() if name != q["output"]]
            rows.append(("output SQNR dB, all outputs pooled", q["pooled"]))
        out += [f"<tr><td>{_e(label)}</td><td>{_db(f['value'])}</td><td>{_db(f['low'])} – {_db(f['high'])}</td></tr>"
                for label, f in rows]
    for name, f in (t or {}).get("figures", {}).items():
        if f["value"] is None or f["value"] != f["value"]:
            out.append(f"<tr><td>{_e(t['name'])}: {_e(figure_name(name, result.reference))}</td><td>–</td>"
                       f"<td>unmeasured: {_e(why_unmeasured(name))}</td></tr>")
            continue
        fmt = (lambda v: f"{v:.3g}") if name == "rank" or t["name"] == "metric" else (lambda v: f"{v:.1%}")
        out.append(f"<tr><td>{_e(t['name'])}: {_e(figure_name(name, result.reference))}</td><td>{fmt(f['value'])}</td>"
                   f"<td>{fmt(f['low'])} – {fmt(f['high'])}</td></tr>")
    out.append("</table>")
    if t is not None:
        out.append(f"<p class='note'>task: {_e(t['name'])} ({_e(t['reason'])})</p>")
        if t.get("note"):
            out.append(f"<p class='note'>{_e(t['note'])}</p>")
    return "".join(out)


def _diagnosis(causes: list) -> str:
    """The causes, most recoverable first, as an ordered list (empty when there are none)."""
    if not causes:
        return ""
    items = "".join(f"<li>{_e(c['text'])}</li>" for c in causes)
    return f"<h2>Diagnosis</h2><ol class='diagnosis'>{items}</ol>"


def render(result, float_name: str, quant_name: str, worst: int = 6, engine=None) -> str:
    """The report of :class:`qdq.measure.comparison.CompareResult` as one HTML document; ``engine``, a
    :class:`qdq.trt.layers.EngineView` of the quantized file, adds the precision strip."""
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>qdq compare</title><style>{_CSS}</style></head><body>",
           f"<h1>{_e(quant_name)} vs {_e(float_name)}</h1>",
           f"<p class='note'>reference: {result.reference.upper()}, {result.samples} samples. SQNR = 10·log10(Σ‖ref‖²/Σ‖q−ref‖²); "
           "bias = mean(q−ref)/std(ref); gain = least-squares slope of q on ref.</p>",
           _diagnosis(result.diagnosis),
           _agreement(result),
           "<h2>Outputs</h2><table><tr><th>output</th><th>SQNR dB</th><th>cosine</th><th>max |err|</th>"
           "<th>mean |err|</th><th>bias</th><th>gain</th><th>top-1</th><th>top-5</th><th>FP16 vs FP32 dB</th></tr>"]
    for o in result.outputs:
        m = o.metrics
        out.append(f"<tr><td>{_e(o.name)}</td><td>{_db(m['sqnr_db'])}</td><td>{m['cosine']:.5f}</td><td>{m['max_abs']:.4g}</td>"
                   f"<td>{m['mean_abs']:.4g}</td><td>{m['bias']:+.4f}</td><td>{m['gain']:.4f}</td>"
                   f"<td>{'' if o.top1 is None else f'{o.top1:.1%}'}</td><td>{'' if o.top5 is None else f'{o.top5:.1%}'}</td>"
                   f"<td>{'' if o.fp16_vs_fp32 is None else _db(o.fp16_vs_fp32['sqnr_db'])}</td></tr>")
    out.append("</table>")
    empty = [why for col, why in (("top1", "top-1/top-5 only for outputs shaped [N, classes] with 10 or more classes"),
                                  ("fp16_vs_fp32", "FP16 vs FP32 only with --reference fp16"))
             if any(getattr(o, col) is None for o in result.outputs)]
    if empty:
        out.append(f"<p class='note'>Empty cells: {_e('; '.join(empty))}.</p>")
    if result.budget:
        out.append("<h2>Where the loss lives (output SQNR, dB)</h2><p class='note'>weights only: the file's INT8 "
                   "weights with your model's biases (no bias correction).</p><table><tr><th>output</th><th>weights only</th>"
                   "<th>activations only</th><th>both</th></tr>")
        for o in result.outputs:
            b = result.budget
            out.append(f"<tr><td>{_e(o.name)}</td><td>{_db(b['weights_only'][o.name])}</td>"
                       f"<td>{_db(b['activations_only'][o.name])}</td><td>{_db(b['both'][o.name])}</td></tr>")
        out.append("</table>")
    if engine is not None:
        out.append("<h2>What TensorRT runs, layer by layer (graph order)</h2>")
        out.append(_precision_strip(engine))
    if result.layers:
        out.append("<h2>Layer by layer</h2>")
        if result.first_below:
            out.append(f"<p>First tensor whose accumulated SQNR falls below {result.threshold_db:g} dB: "
                       f"<b>{_e(result.first_below)}</b>. Most SQNR removed by its own Q/DQ: <b>{_e(result.ranked[0])}</b>.</p>")
        out.append(_layer_chart(result.layers, result.threshold_db, result.first_below))
        by_name = {r.tensor: r for r in result.layers}
        out.append("<h2>Worst tensors: |x| histograms with the chosen amax</h2><div class='hists'>")
        for t in result.ranked[:worst]:
            r = by_name[t]
            out.append(f"<div class='hist'><div><b>{_e(t)}</b></div><div class='note'>local {_db(r.local_sqnr_db)} dB, "
                       f"clipped {r.clipped:.3%}, levels used {r.levels_used:.0%}</div>{_histogram(r)}</div>")
        out.append("</div><h2>All Q/DQ tensors</h2><table><tr><th>tensor</th><th>amax</th><th>scale</th>"
                   "<th>at consumer dB</th><th>accumulated dB</th><th>local dB</th><th>clipped</th><th>levels used</th></tr>")
        for r in result.layers:
            cls = " class='bad'" if r.accumulated_sqnr_db < result.threshold_db else ""
            out.append(f"<tr{cls}><td>{_e(r.tensor)}</td><td>{r.amax:.4g}</td><td>{r.amax / QMAX:.4g}</td>"
                       f"<td>{_db(r.output_sqnr_db)}</td><td>{_db(r.accumulated_sqnr_db)}</td>"
                       f"<td>{_db(r.local_sqnr_db)}</td><td>{r.clipped:.3%}</td>"
                       f"<td>{r.levels_used:.0%}</td></tr>")
        out.append("</table>")
    out.append("</body></html>")
    return "".join(out)


def render_sensitivity(result, model_name: str) -> str:
    """Sensitivity report: per layer, the SQNR its INT8 leaves at its own output and at the model's."""
    rows = result.layers
    w, h, pad = 1100, 260, 40
    top = max([60.0] + [r.input_db for r in rows if math.isfinite(r.input_db)])
    step = (w - 2 * pad) / max(len(rows), 1)

    def y(v):
        v = max(0.0, min(top, v if math.isfinite(v) else top))
        return pad + (h - 2 * pad) * (1 - v / top)

    bars = "".join(
        f'<rect class="layer" x="{pad + i * step:.1f}" y="{y(r.contribution_db):.1f}" width="{max(step - 1, 1):.1f}" '
        f'height="{h - pad - y(r.contribution_db):.1f}" fill="#9cc3e6"><title>{_e(r.node)}: at the output '
        f'{_db(r.contribution_db)} dB, at its own output {_db(r.input_db)} dB</title></rect>' for i, r in enumerate(rows))
    chart = (f'<svg id="sensitivity-chart" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}">'
             f'<rect width="{w}" height="{h}" fill="#fff"/>{bars}'
             f'<text x="{pad}" y="16" font-size="12">estimated output SQNR with only this layer\'s input INT8 '
             '(most output noise per MAC first)</text></svg>')
    verified = result.full_db is not None
    table = "".join(f"<tr><td>{_e(r.node)}</td><td>{_e(r.op)}</td><td>{r.mac_share:.1%}</td><td>{_db(r.input_db)}</td>"
                    f"<td>{_db(r.weight_db)}</td><td>{_db(r.layer_db)}</td><td>{_db(r.contribution_db)}</td>"
                    + (f"<td>{_db(r.all_but_db)}</td>" if verified else "") + "</tr>" for r in rows)
    note = f" Every layer INT8: {_db(result.full_db)} dB (measured)." if verified else ""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>qdq sensitivity</title><style>{_CSS}</style>"
            f"</head><body><h1>Sensitivity of {_e(model_name)}</h1><p class='note'>{result.samples} validation samples."
            f"{note}</p>{chart}<h2>Layers, most output noise per MAC first</h2><table><tr><th>layer</th><th>op</th>"
            "<th>MACs</th><th>input dB</th><th>weight dB</th><th>layer dB</th><th>at output dB</th>"
            + ("<th>all but this dB</th>" if verified else "") + f"</tr>{table}</table></body></html>")
