"""Human-readable and machine-readable views of a quantization summary."""
from __future__ import annotations

import json
import sys


def summary_json(summary) -> str:
    return json.dumps(summary.to_dict(), indent=1, default=float)


def print_summary(summary, top: int = 12, file=None) -> None:
    """A rich table on ``file`` (stdout): coverage, skipped layers, the widest-clipping tensors."""
    from rich.console import Console
    from rich.table import Table

    con = Console(file=file or sys.stdout)
    n_q, n_all = len(summary.quantized_layers), summary.weighted_layers
    con.print(f"[bold]{summary.model}[/bold] → target {summary.target}, opset {summary.opset}, "
              f"method {summary.method}, {summary.samples} calibration samples")
    con.print(f"INT8 weighted layers: {n_q}/{n_all}; Q/DQ pairs: {len(summary.activations)} activations, "
              f"{len(summary.weights)} weights (per-channel)")
    if summary.skipped:
        t = Table(title="weighted layers left in float", title_justify="left")
        for col in ("node", "op", "reason"):
            t.add_column(col)
        for s in summary.skipped:
            t.add_row(s["node"], s["op"], s["reason"])
        con.print(t)
    t = Table(title=f"activation ranges (most clipped first, top {top})", title_justify="left")
    for col, just in (("tensor", "left"), ("amax", "right"), ("scale", "right"), ("clipped", "right"),
                      ("method", "left"), ("why quantized", "left")):
        t.add_column(col, justify=just)
    rows = sorted(summary.activations.items(), key=lambda kv: -kv[1]["clipped"])[:top]
    for name, a in rows:
        t.add_row(name, f"{a['amax']:.5g}", f"{a['scale']:.5g}", f"{a['clipped']:.3%}", a["method"], a["reason"])
    con.print(t)
    for w in summary.warnings:
        con.print(f"[yellow]warning:[/yellow] {w}")
    if summary.output:
        con.print(f"wrote [bold]{summary.output}[/bold]")
