"""Every real model the tests and tools know, through the whole tool as a new user runs it: ``quantize``
for trt8, trt10 and trt11, ``compare --layerwise`` of each file on the model's held-out data,
``check --layers`` (TensorRT-RTX, when installed) and ``inspect``; one row per model and target with the
task inferred and why, the INT8 share of the MACs and where the layers' dims came from, any layer whose
MACs stay unknown, each output's SQNR (the worst named), the engine's INT8 share, and any failure.

  python tools/zoo_sweep.py                              # all models (tools/datasets.py, MORE too), 40 samples each
  python tools/zoo_sweep.py --models ppocr_cls captcha --limit 60 --json docs/zoo.json --markdown docs/zoo.md
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools import datasets  # noqa: E402

TARGETS = ("trt8", "trt10", "trt11")
SKIP = {"frames"}   # the same model as effnet, other data


def _row(name: str, target: str, limit: int) -> dict:
    """One model at one target, every stage; a stage that fails is recorded with its one-line error."""
    from qdq.errors import QdqError
    from qdq.measure.comparison import compare
    from qdq.pipeline import quantize
    from qdq.report.inspection import inspect_model
    from qdq.trt.backend import built_view

    ds = datasets.prepared(name)
    row, t0 = {"model": name, "target": target}, time.perf_counter()
    try:
        r = quantize(ds.model, ds.calib, preprocess=ds.preprocess, target=target, limit=limit, quiet=True)
        s = r.summary
        row.update(task=s.accuracy["task"]["name"], task_reason=s.accuracy["task"]["reason"],
                   int8_mac_share=round(s.int8_mac_share, 4), mac_source=s.mac_source, mac_unknown=s.mac_unknown,
                   held_back_db=round(s.accuracy["final_db"], 2), held_back_output=s.accuracy["final_outputs"]["output"])
        c = compare(ds.model, r.model, ds.val, preprocess=ds.preprocess, layerwise=True, quiet=True, limit=limit)
        row.update(outputs={k: round(f["value"], 2) for k, f in c.sqnr["per_output"].items()}, worst=c.sqnr["output"],
                   compare_task=c.task["name"] if c.task else None)
        ins = inspect_model(r.model, target=target)
        row.update(inspect_share=round(ins.coverage["share"], 4),
                   lint_errors=[f.rule for f in ins.findings if f.level == "error"])
        view, problem = built_view(r.model)
        row.update(engine_share=round(view.int8_mac_share, 4) if view is not None else None, engine_problem=problem)
    except QdqError as e:
        row["failure"] = str(e)
    except Exception as e:   # an internal error is what the sweep is for: kept with its place
        row["failure"] = f"internal error: {type(e).__name__}: {e} ({traceback.extract_tb(e.__traceback__)[-1].name})"
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def markdown(rows: list) -> str:
    head = ("| model | target | task (why) | INT8 MACs (dims from) | unknown | held-back dB (worst output) | "
            "compare: each output dB | inspect / engine share | failure |\n|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        outs = ", ".join(f"{k} {v}" for k, v in (r.get("outputs") or {}).items())
        lines.append(f"| {r['model']} | {r['target']} | {r.get('task', '')} ({r.get('task_reason', '')[:90]}) | "
                     f"{r.get('int8_mac_share', '')} ({r.get('mac_source', '')}) | {len(r.get('mac_unknown') or [])} | "
                     f"{r.get('held_back_db', '')} ({r.get('held_back_output', '')}) | {outs} | "
                     f"{r.get('inspect_share', '')} / {r.get('engine_share') or r.get('engine_problem') or '–'} | "
                     f"{r.get('failure', '')} |")
    return head + "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="*", default=[m for m in {**datasets.MODELS, **datasets.MORE} if m not in SKIP])
    p.add_argument("--targets", nargs="*", default=list(TARGETS))
    p.add_argument("--limit", type=int, default=40, help="calibration and compare samples per model")
    p.add_argument("--json", type=Path)
    p.add_argument("--markdown", type=Path)
    a = p.parse_args()
    rows = []
    for name in a.models:
        for target in a.targets:
            rows.append(_row(name, target, a.limit))
            print(json.dumps(rows[-1]), flush=True)
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))
    if a.markdown:
        a.markdown.write_text(markdown(rows))
    bad = [r for r in rows if "internal error" in r.get("failure", "")]
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
