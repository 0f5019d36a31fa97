"""Ranges users already have: JSON files, TensorRT calibration caches, ONNX Runtime calibration
tables; read (format detected by content) and written.

Every range is reduced to a symmetric ``amax`` (INT8 scale = amax / 127):

* JSON ``{"tensor": amax}``, ``{"tensor": [min, max]}`` (→ max(|min|, |max|), reported as asymmetric),
  ONNX Runtime's ``calibration.json`` (``{"tensor": {"lowest": min, "highest": max}}``, and since
  ONNX Runtime 1.20 ``{"CLS": "TensorsData", "data": {...}}`` with NumPy values written as
  ``{"data": v, "dtype": …, "CLS": "numpy.array"}``), or qdq's own ``--ranges-out`` file
  ``{"ranges": {"tensor": {"amax": …}}}``;
* TensorRT calibration cache: ``TRT-<version>-<Algorithm>`` then ``<name>: <8 hex digits>``, the
  big-endian IEEE-754 float32 *scale*: amax = scale · 127.  ``0`` entries are listed, not applied;
* ONNX Runtime ``calibration.cache``: ``<name> <value in decimal>`` per line, where ONNX Runtime
  writes max(lowest, highest), *signed*: a tensor in [−5, 1] is written as 1 and its negative side is
  lost.  When ONNX Runtime's ``calibration.json`` lies beside it, that file is read instead.
"""
from __future__ import annotations

import difflib
import json
import math
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import QdqError
from ..version import __version__
from .ranges import QMAX

MAX_BYTES = 64 * 2 ** 20
_TRT_HEADER = re.compile(r"^TRT-\d+-\w+$")
_HEX = re.compile(r"^[0-9a-fA-F]{8}$")


@dataclass
class RangeFile:
    """Parsed ranges: ``amax[tensor]`` plus what was read but cannot be applied."""

    path: str
    kind: str                                       # json | qdq-json | ort-json | trt-cache | ort-cache
    amax: dict = field(default_factory=dict)
    zero: list = field(default_factory=list)        # entries of 0 (TensorRT writes them for unused tensors)
    asymmetric: list = field(default_factory=list)  # [min, max] ranges made symmetric
    header: str = ""
    note: str = ""                                  # what the reader did that the user should know


def _fail(path, msg: str, line: int | None = None):
    where = f"{path}:{line}" if line else str(path)
    raise QdqError(f"{where}: {msg}")


def _check_amax(path, name: str, value, line=None) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        _fail(path, f"range of {name!r} is not a number ({value!r})", line)
    if not math.isfinite(v) or v < 0:
        _fail(path, f"range of {name!r} is {v}: amax must be finite and >= 0", line)
    return v


def read_ranges(path) -> RangeFile:
    """Parse a ranges file; the format is detected from the content, not the file name."""
    path = Path(path)
    if not path.is_file():
        _fail(path, "no such ranges file")
    if path.stat().st_size > MAX_BYTES:
        _fail(path, f"ranges file is larger than {MAX_BYTES >> 20} MB; is this really a ranges file?")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        _fail(path, f"not UTF-8 text (byte {e.start}); expected JSON or a calibration cache")
    stripped = text.lstrip()
    if stripped.startswith("{"):
        return _read_json(path, text)
    first = stripped.splitlines()[0].strip() if stripped else ""
    if _TRT_HEADER.match(first):
        return _read_trt_cache(path, text)
    if not first:
        _fail(path, "empty ranges file")
    beside = path.with_name("calibration.json")
    if beside.is_file() and beside != path:
        rf = read_ranges(beside)
        rf.note = (f"read {beside.name} beside {path.name}: ONNX Runtime's .cache keeps max(lowest, highest) "
                   "and loses a larger negative side")
        return rf
    rf = _read_ort_cache(path, text)
    rf.note = ("ONNX Runtime's calibration.cache keeps max(lowest, highest), not max(|lowest|, |highest|): "
               "a tensor whose negative side is larger lost it; import calibration.json instead")
    return rf


def _read_json(path, text: str) -> RangeFile:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        _fail(path, f"malformed JSON: {e.msg} (column {e.colno})", e.lineno)
    if not isinstance(doc, dict):
        _fail(path, "JSON ranges must be an object mapping tensor names to ranges")
    rf = RangeFile(str(path), "json")
    if doc.get("CLS") == "TensorsData" and isinstance(doc.get("data"), dict):   # ONNX Runtime >= 1.20
        rf.kind, doc = "ort-json", doc["data"]
    if isinstance(doc.get("ranges"), dict) and "qdq_version" in doc:
        rf.kind = "qdq-json"
        doc = {k: (v.get("amax") if isinstance(v, dict) else v) for k, v in doc["ranges"].items()}
    for name, v in doc.items():
        if isinstance(v, dict) and ("lowest" in v or "highest" in v):
            rf.kind = "ort-json"
            v = [_scalar(path, name, v.get("lowest", 0.0)), _scalar(path, name, v.get("highest", 0.0))]
        if isinstance(v, (list, tuple)):
            if len(v) != 2:
                _fail(path, f"range of {name!r} must be amax or [min, max], got {len(v)} numbers")
            lo, hi = (_scalar(path, name, x) for x in v)
            if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
                _fail(path, f"range of {name!r} is [{lo}, {hi}]: need finite min <= max")
            if lo != -hi:
                rf.asymmetric.append(name)
            v = max(abs(lo), abs(hi))
        amax = _check_amax(path, name, v)
        (rf.zero.append(name) if amax == 0 else rf.amax.__setitem__(name, amax))
    return rf


def _scalar(path, name, x) -> float:
    if isinstance(x, dict) and x.get("CLS") == "numpy.array":  # ONNX Runtime's JSON for a NumPy value
        x = x.get("data")
    if isinstance(x, list) and len(x) == 1:  # ONNX Runtime stores 0-d arrays as one-element lists
        x = x[0]
    try:
        return float(x)
    except (TypeError, ValueError):
        _fail(path, f"range of {name!r} is not a number ({x!r})")


def _read_trt_cache(path, text: str) -> RangeFile:
    lines = text.splitlines()
    rf = RangeFile(str(path), "trt-cache", header=lines[0].strip())
    for no, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        name, sep, value = line.rpartition(":")
        name, value = name.strip(), value.strip()
        if not sep or not name:
            _fail(path, f"expected '<tensor name>: <8 hex digits>', got {line[:80]!r}", no)
        if name in rf.amax or name in rf.zero:
            _fail(path, f"tensor {name!r} appears twice", no)
        if value == "0":
            rf.zero.append(name)
            continue
        if not _HEX.match(value):
            _fail(path, f"{value[:40]!r} is not 8 hex digits (a big-endian float32 scale)", no)
        scale = struct.unpack(">f", bytes.fromhex(value))[0]
        if not math.isfinite(scale) or scale < 0:
            _fail(path, f"scale of {name!r} is {scale}: must be finite and >= 0", no)
        if scale == 0:
            rf.zero.append(name)
        else:
            rf.amax[name] = float(scale) * QMAX
    return rf


def _read_ort_cache(path, text: str) -> RangeFile:
    rf = RangeFile(str(path), "ort-cache")
    for no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        name, _, value = line.strip().rpartition(" ")
        if not name:
            _fail(path, "not a recognised ranges file: expected JSON, a TensorRT cache (TRT-<version>-<algorithm> "
                        "header) or '<tensor> <amax>' lines", no)
        if name in rf.amax or name in rf.zero:
            _fail(path, f"tensor {name!r} appears twice", no)
        amax = _check_amax(path, name, value, no)
        (rf.zero.append(name) if amax == 0 else rf.amax.__setitem__(name, amax))
    return rf


def trt_cache_text(scales: dict, version: int = 8601, algorithm: str = "EntropyCalibration2") -> str:
    """A TensorRT calibration cache: ``scales[tensor]`` (float32 scale = amax / 127) as big-endian hex."""
    lines = [f"TRT-{version}-{algorithm}"]
    for name, s in scales.items():
        lines.append(f"{name}: {struct.pack('>f', float(np.float32(s))).hex()}")
    return "\n".join(lines) + "\n"


def qdq_json_text(entries: dict, method: str, **extra) -> str:
    """qdq's ranges JSON (what ``--ranges-out`` and ``qdq ranges --to json`` write, and ``read_ranges``
    reads): ``entries[tensor]`` is a dict with at least ``amax``; ``extra`` adds top-level fields."""
    return json.dumps({"qdq_version": __version__, "method": method, **extra, "ranges": entries}, indent=1)


def check_sources(imp: RangeFile | None, given: dict | None, wanted: list, known: set, have_data: bool,
                  source: str) -> str | None:
    """Every tensor in ``wanted`` (the placed activations) needs a range: from ``imp``, from a given
    calibration's statistics ``given`` (tensor → stats), or calibrated (``have_data``); else a
    :class:`QdqError`.  Entries of ``imp`` naming no tensor in ``known`` (the model's) give the text to
    tell the user, with the nearest names; all of them naming none is an error."""
    text = _unknown_entries(imp, known, source) if imp is not None else None
    missing = [t for t in wanted if imp is None or t not in imp.amax]
    if given is not None:
        lacking = [t for t in missing if t not in given]
        if lacking:
            raise QdqError(f"the given calibration has no statistics for {lacking[0]!r}; calibrate again")
    elif missing and not have_data:
        raise QdqError(f"no range for {len(missing)} tensors (e.g. {missing[0]!r})"
                       + (f" in {imp.path}" if imp else "") + ": pass --calib DATA to calibrate them")
    return text


def _unknown_entries(imp: RangeFile, known: set, source: str) -> str | None:
    lost = sorted(t for t in imp.amax if t not in known)
    if not lost:
        return None
    near = {t: difflib.get_close_matches(t, known, n=2, cutoff=0.6) for t in lost[:5]}
    hint = "; ".join(f"{t!r}" + (f" (nearest: {', '.join(map(repr, c))})" if c else "") for t, c in near.items())
    if len(lost) == len(imp.amax):
        raise QdqError(f"{imp.path}: none of its {len(lost)} entries names a tensor of {source} ({hint}); "
                       "is it the ranges file of this model?")
    return f"{len(lost)} of {len(imp.amax)} entries of {imp.path} name no tensor of the model: {hint}"


def range_warnings(ranges: dict, stats: dict, imp: RangeFile | None, activations: list) -> list:
    """What the user should know of ``ranges`` (tensor → Range): zero or constant tensors on the
    calibration ``stats``; imported ranges ONNX Runtime's .cache lost (below the negative values the
    data reaches), asymmetric entries made symmetric."""
    w = []
    for t, r in ranges.items():
        st = stats.get(t)
        if r.amax == 0.0:
            w.append(f"tensor {t!r} has a zero range; given scale 1")
        elif st is not None and st.min == st.max:
            w.append(f"tensor {t!r} is constant ({st.min:g}) on the calibration data")
    if imp is None:
        return w
    if imp.note:
        w.append(imp.note)
    if imp.kind == "ort-cache":
        lost = [t for t in activations if t in imp.amax and t in stats and -stats[t].min > imp.amax[t] * 1.001]
        if lost:
            w.append(f"{len(lost)} imported ranges are smaller than the negative values the calibration data "
                     f"reaches (lost in ONNX Runtime's .cache): {', '.join(lost[:5])}" + (" …" if len(lost) > 5 else ""))
    if imp.asymmetric:
        w.append(f"{len(imp.asymmetric)} asymmetric [min, max] ranges made symmetric max(|min|, |max|): "
                 + ", ".join(imp.asymmetric[:5]) + (" …" if len(imp.asymmetric) > 5 else ""))
    return w
