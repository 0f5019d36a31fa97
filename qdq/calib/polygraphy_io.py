"""Polygraphy's JSON files, read and written without Polygraphy: the inputs ``polygraphy run
--load-inputs`` takes (``--save-inputs`` writes them) and the outputs ``--save-outputs`` writes.

Format (Polygraphy's ``polygraphy/json/serde.py`` and ``comparator/struct.py``; files written by
``polygraphy run`` 0.53 checked byte for byte in tests/test_device_loop.py):

* an array: ``{"array": base64 of np.save's bytes, "polygraphy_class": "ndarray"}`` (older versions:
  the marker ``"polygraphy_serialized_json_type"``, latin-1 text in place of base64);
* inputs: a JSON list, one ``{input name: array}`` per iteration;
* outputs (``RunResults``): ``{"lst": [[runner name, [IterationResult, …]], …]}``, an IterationResult
  ``{"outputs": {name: {"values": array, "polygraphy_class": "LazyArray"}}, "runtime", "runner_name"}``.

Arrays are loaded with ``allow_pickle=False``: a file holding Python objects is refused.
"""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np

from ..errors import QdqError
from ..modelio import atomic_write_text, read_json

MARKER, LEGACY_MARKER = "polygraphy_class", "polygraphy_serialized_json_type"


def _array(d: dict, where: str) -> np.ndarray:
    text = d.get("array")
    if not isinstance(text, str):
        raise QdqError(f"{where}: an ndarray entry without its 'array' data")
    try:
        data = base64.b64decode(text.encode(), validate=True)
    except ValueError:
        data = text.encode("latin-1")   # Polygraphy before base64
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as e:
        raise QdqError(f"{where}: an array qdq cannot read ({str(e)[:100]}); object arrays are refused") from None
    if not isinstance(arr, np.ndarray):   # an NPZ archive (old Polygraphy): its one array
        values = [arr[k] for k in arr.files]
        if len(values) != 1:
            raise QdqError(f"{where}: an archive of {len(values)} arrays where one was expected")
        arr = values[0]
    return arr


def _decode(obj, where: str):
    """Polygraphy's JSON objects as plain Python: arrays, dicts, lists."""
    if isinstance(obj, list):
        return [_decode(x, where) for x in obj]
    if not isinstance(obj, dict):
        return obj
    kind = obj.get(MARKER) or next((k for k, v in obj.items() if v == LEGACY_MARKER), None)
    if kind in ("ndarray", "np.ndarray", "numpy.ndarray"):
        return _array(obj, where)
    body = {k: _decode(v, where) for k, v in obj.items() if k != MARKER and v != LEGACY_MARKER}
    if kind in ("LazyArray", "LazyNumpyArray"):
        return body["values"]
    if kind in (None, "IterationResult", "RunResults"):
        return body
    raise QdqError(f"{where}: holds a Polygraphy {kind!r} object; expected inputs (--save-inputs) or outputs "
                   "(--save-outputs)")


def _load(path) -> object:
    return _decode(read_json(path, "expected Polygraphy's inputs or outputs"), str(path))


def read_inputs(path) -> list[dict]:
    """The feeds of a ``--save-inputs`` / ``--load-inputs`` file: one {input name: array} per iteration
    (one file of a per-iteration folder holds one)."""
    feeds = _load(path)
    feeds = [feeds] if isinstance(feeds, dict) else feeds
    if not isinstance(feeds, list) or not all(isinstance(f, dict) and all(isinstance(v, np.ndarray) for v in f.values())
                                              for f in feeds):
        raise QdqError(f"{path}: not Polygraphy inputs (a list of {{input name: array}}, as --save-inputs writes)")
    return feeds


def write_inputs(path, feeds: list[dict]) -> None:
    """``feeds`` as Polygraphy's inputs file, written to a temporary file and renamed."""
    def enc(a: np.ndarray) -> dict:
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
        return {"array": base64.b64encode(buf.getvalue()).decode(), MARKER: "ndarray"}

    atomic_write_text(path, json.dumps([{k: enc(v) for k, v in f.items()} for f in feeds]))


def read_outputs(path, runner: str | None = None) -> list[dict]:
    """The outputs one runner saved with ``--save-outputs``, one {output name: array} per iteration
    (:func:`read_run` without the runner's name)."""
    return read_run(path, runner)[1]


def read_run(path, runner: str | None = None) -> tuple:
    """(runner name, [{output name: array} per iteration]) of one runner's ``--save-outputs``: a file,
    or a folder of per-iteration files (``--save-outputs DIR``).  A run of several runners
    (``polygraphy run --trt --onnxrt``) needs ``runner`` (a name or the start of one)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.json"))
        if not files:
            raise QdqError(f"{path}: a folder without Polygraphy's per-iteration .json files")
        runs = [read_run(f, runner) for f in files]
        return runs[0][0], [it for _, its in runs for it in its]
    res = _load(path)
    lst = res.get("lst") if isinstance(res, dict) else None
    if not isinstance(lst, list) or not all(isinstance(r, list) and len(r) == 2 for r in lst):
        raise QdqError(f"{path}: not Polygraphy outputs (a RunResults, as --save-outputs writes)")
    names = [r[0] for r in lst]
    chosen = [r for r in lst if runner is None or str(r[0]).startswith(runner)]
    if len(chosen) != 1:
        raise QdqError(f"{path}: holds the runners {names}; " + ("name one" if runner is None else
                       f"{runner!r} matches {len(chosen)}") + " (FILE:RUNNER, e.g. FILE:trt-runner)")
    out = []
    for k, it in enumerate(chosen[0][1]):
        outputs = it.get("outputs") if isinstance(it, dict) else None
        if not isinstance(outputs, dict) or not all(isinstance(v, np.ndarray) for v in outputs.values()):
            raise QdqError(f"{path}: iteration {k} of {chosen[0][0]!r} has no outputs")
        out.append(outputs)
    return str(chosen[0][0]), out


class _Output:
    def __init__(self, name: str):
        self.name = name


class SavedRun:
    """An ONNX Runtime session stand-in (``get_outputs``, ``run``; :func:`qdq.calib.session.run_session`
    takes it) that returns what a device run saved: iteration k for the k-th sample fed, so the data
    must be the inputs that run loaded.  ``spec``: a ``--save-outputs`` file, or ``FILE:RUNNER``."""

    def __init__(self, spec, names: list):
        path, runner = str(spec), None
        if not Path(path).exists() and ":" in path:
            path, runner = path.rsplit(":", 1)
        self.path, self.names, self.used = path, list(names), 0
        self.runner, self.iterations = read_run(path, runner)
        missing = [n for n in self.names if n not in self.iterations[0]] if self.iterations else self.names
        if missing:
            raise QdqError(f"{path}: has no output {missing[0]!r} (it holds {sorted(self.iterations[0]) if self.iterations else []}); "
                           "save the outputs of the same model's engine")

    def get_outputs(self) -> list:
        return [_Output(n) for n in self.names]

    def run(self, names, feed) -> list:
        if self.used >= len(self.iterations):
            raise QdqError(f"{self.path}: holds {len(self.iterations)} iterations, the data more samples: save the "
                           "outputs of a run that loaded the same inputs (polygraphy run --load-inputs)")
        it = self.iterations[self.used]
        self.used += 1
        return [it[n] for n in names]

    def finish(self) -> None:
        """Every saved iteration was matched by a sample."""
        if self.used != len(self.iterations):
            raise QdqError(f"{self.path}: holds {len(self.iterations)} iterations, the data {self.used} samples: save "
                           "the outputs of a run that loaded the same inputs (polygraphy run --load-inputs)")
