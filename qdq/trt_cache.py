"""A complete TensorRT calibration cache, for implicit INT8 on TensorRT 8.x/10.x (a calibrator's
``readCalibrationCache``, ``trtexec --int8 --calib=FILE``).

Implicit INT8 needs a range for every tensor an INT8 layer reads or writes, Conv outputs included;
a layer missing one falls back to FP16/FP32.  TensorRT's own calibrator therefore writes an entry for
every network tensor.  :func:`network_ranges` does the same: the ranges a Q/DQ model carries win, and
every other float activation tensor is calibrated on data with the chosen method.

The header is ``TRT-<version>-<algorithm>``.  TensorRT ignores a cache whose algorithm differs from
its calibrator's, so the algorithm names the calibrator the cache is meant for: ``entropy`` →
``EntropyCalibration2``, ``max`` → ``MinMaxCalibration``; TensorRT has no percentile or MSE
calibrator, so their ranges go out under ``EntropyCalibration2`` (the one ``trtexec --calib`` and
``IInt8EntropyCalibrator2`` read) unless ``algorithm`` says otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from .calib.calibrate import calibrate
from .calib.ranges import compute_range
from .errors import QdqError
from .graph.bypass import weights_only
from .graph.index import GraphIndex
from .graph.precision import runnable
from .graph.qdq_file import model_ranges

ALGORITHMS = ("EntropyCalibration2", "EntropyCalibration", "MinMaxCalibration", "LegacyCalibration")
_BY_METHOD = {"entropy": "EntropyCalibration2", "max": "MinMaxCalibration"}


def algorithm_for(method: str) -> str:
    return _BY_METHOD.get(method, "EntropyCalibration2")


@dataclass
class NetworkRanges:
    """amax per tensor, where each came from, and the method the calibrated ones used."""

    amax: dict = field(default_factory=dict)
    from_model: list = field(default_factory=list)     # tensors whose range is the Q/DQ model's
    calibrated: list = field(default_factory=list)
    missing: list = field(default_factory=list)        # float tensors without a range (no data given)
    method: str = "max"


def network_tensors(model: onnx.ModelProto) -> list[str]:
    """Float activation tensors of ``model``'s network: graph inputs and node outputs, without
    constants, Q/DQ internals and values computed from constants only (dequantized weights)."""
    idx = GraphIndex.build(model)
    const_like = set(idx.constants)
    out = [t for t in idx.inputs if idx.is_float(t)]
    for node in idx.nodes:
        if node.op_type == "QuantizeLinear":
            const_like.update(node.output)
            continue
        if all(not t or t in const_like for t in node.input) or node.op_type == "DequantizeLinear":
            const_like.update(node.output)
            continue
        out += [t for t in node.output if t and idx.is_float(t)]
    return list(dict.fromkeys(out))


def network_ranges(model: onnx.ModelProto, dataset=None, method: str = "entropy", percentile: float = 99.99,
                   quiet: bool = False) -> NetworkRanges:
    """Ranges for every float activation tensor of ``model`` (a float or a Q/DQ model); those of
    its own Q/DQ pairs first, the rest calibrated on ``dataset`` (if given)."""
    own = model_ranges(model)
    net = weights_only(model) if own else model   # activation Q/DQ bypassed: the network TensorRT sees
    tensors = network_tensors(net)
    res = NetworkRanges(method=method)
    res.amax = {t: a for t, a in own.items() if t in tensors}
    res.from_model = list(res.amax)
    rest = [t for t in tensors if t not in res.amax]
    if rest and dataset is not None:
        cal = calibrate(runnable(net), dataset, rest, quiet=quiet)
        for t in rest:
            if cal.stats[t].count:
                res.amax[t] = compute_range(cal.stats[t], method, percentile).amax
                res.calibrated.append(t)
    res.missing = [t for t in tensors if t not in res.amax]
    if not res.amax:
        raise QdqError("no ranges to export: the model has no Q/DQ pairs; pass --calib DATA to calibrate its tensors")
    return res
