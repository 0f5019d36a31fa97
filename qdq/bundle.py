"""``qdq bundle``: a folder to copy to the device (a Jetson, any TensorRT machine) holding the Q/DQ
file, a seeded choice of the user's samples in Polygraphy's input format, qdq's prediction for exactly
those samples, and RUN.txt: the Polygraphy and trtexec commands that build and run the engines there
and save what ``qdq compare --outputs`` and ``qdq check --profile`` read back.

Flags, checked against NVIDIA/TensorRT's sources (``tools/Polygraphy/CHANGELOG.md``,
``samples/common/sampleOptions.cpp``): Polygraphy ``--load-inputs`` (0.21), ``--save-outputs`` (0.11),
``--precision-constraints`` (0.37), ``--layer-precisions`` (0.40.3), ``--trt-min/opt/max-shapes``;
Polygraphy since 0.47 supports TensorRT ≥ 8.5 and Python ≥ 3.6 (JetPack 5).  trtexec
``--exportProfile`` (6.0), ``--separateProfileRun`` (7.2; always on and deprecated in 11.0),
``--exportLayerInfo`` and ``--profilingVerbosity=detailed`` (8.2), ``--precisionConstraints`` (8.2),
``--layerPrecisions`` (8.4); TensorRT 11.0 removed ``--fp16`` and made ``--stronglyTyped`` the default.
"""
from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from .calib.data import Dataset, Preprocess, choose_sources, model_inputs
from .calib.polygraphy_io import write_inputs
from .errors import QdqError
from .measure.autocast import fp16_model
from .measure.comparison import compare
from .measure.metrics import json_safe
from .modelio import atomic_write_text, load_model, metadata, save_model
from .targets import prepare
from .trt.backend import pin_args, pinned_layers

INT8, FLOAT = "model_int8.onnx", "model_float.onnx"


@dataclass(frozen=True)
class Bundle:
    folder: Path
    target: str                                   # the Q/DQ file's TensorRT family: trt8, trt10 or trt11
    samples: list = field(default_factory=list)   # names of the samples in inputs.json, in order
    prediction: dict = field(default_factory=dict)
    commands: list = field(default_factory=list)  # RUN.txt's command lines, in order


def _choose(data, fmodel, count: int, seed: int, preprocess) -> tuple:
    """(names, feeds) of ``count`` samples of ``data`` chosen by a seeded hash of their names (all when
    there are fewer), in the data's order."""
    inputs, pre = model_inputs(fmodel), preprocess or Preprocess()
    dataset = Dataset(data, inputs, pre)
    names = dataset.sources()
    chosen = set(names) if len(names) <= count else choose_sources(dataset, names, count, seed)
    if dataset.kind == "images" and inputs[0].group <= 1:   # read only the chosen images
        picked = [next(iter(Dataset(Path(n), inputs, pre))) for n in names if n in chosen]
    else:
        picked = [(src, feed) for src, feed in dataset if src in chosen]
    return [s for s, _ in picked], [f for _, f in picked]


def _shape_args(fmodel, feeds: list) -> list:
    """Polygraphy's optimization profile spanning the samples' shapes, for a model with dynamic inputs."""
    if not feeds or all(None not in spec.shape for spec in model_inputs(fmodel)):
        return []
    names = list(feeds[0])
    lo = {n: [min(f[n].shape[d] for f in feeds) for d in range(feeds[0][n].ndim)] for n in names}
    hi = {n: [max(f[n].shape[d] for f in feeds) for d in range(feeds[0][n].ndim)] for n in names}
    fmt = (lambda dims: " ".join(f"{n}:[{','.join(str(d) for d in dims[n])}]" for n in names))
    return [f"--trt-min-shapes {fmt(lo)}", f"--trt-opt-shapes {fmt(hi)}", f"--trt-max-shapes {fmt(hi)}"]


def _pins(pins: list) -> tuple:
    """(Polygraphy's, trtexec's) arguments that keep the named layers FP32 (weakly typed builds)."""
    if not pins:
        return "", ""
    return (f"--precision-constraints obey --layer-precisions {' '.join(shlex.quote(f'{n}:float32') for n in pins)} ",
            " ".join(shlex.quote(a) for a in pin_args(pins)) + " ")


def _commands(target: str, pins: list, float_pins: list, float_name: str, shapes: list) -> list:
    """RUN.txt: the engines built and run on the bundle's inputs, their outputs and layer timings saved,
    and the qdq command that reads them back (``pins``: the Q/DQ file's FP32 layers, ``float_pins``:
    those of them the float model has)."""
    run = "polygraphy run {model} --trt {flags}--load-inputs inputs.json --save-outputs {out}"
    (pin, tpin), (fpin, ftpin) = _pins(pins), _pins(float_pins)
    shape = " ".join(shapes) + " " if shapes else ""
    exe = "trtexec --onnx={model} {flags}--profilingVerbosity=detailed {sep}--exportProfile={label}_profile.json " \
          "--exportLayerInfo={label}_layers.json"
    if target == "trt11":
        lines = ["# TensorRT 11.x (JetPack 7.2.2+): strongly typed, the precision is in the files",
                 run.format(model=float_name, flags=shape, out="fp16.json"),
                 run.format(model=INT8, flags=shape, out="int8.json"),
                 exe.format(model=float_name, flags="", sep="", label="fp16"),
                 exe.format(model=INT8, flags="", sep="", label="int8")]
    else:
        lines = ["# TensorRT 8.5 / 8.6 / 10.x (JetPack 5, JetPack 6): INT8 from the Q/DQ, the rest FP16, the FP16 plan's "
                 "FP32 layers pinned",
                 run.format(model=float_name, flags="--fp16 " + fpin + shape, out="fp16.json"),
                 run.format(model=INT8, flags="--int8 --fp16 " + pin + shape, out="int8.json"),
                 exe.format(model=float_name, flags="--fp16 " + ftpin, sep="--separateProfileRun ", label="fp16"),
                 exe.format(model=INT8, flags="--int8 --fp16 " + tpin, sep="--separateProfileRun ", label="int8")]
    return lines + ["# then, here, with the saved files copied back into this folder:",
                    f"qdq compare {FLOAT} {INT8} --data inputs.json --outputs int8.json --reference-outputs "
                    "fp16.json --reference fp16 --layer-info int8_layers.json",
                    f"qdq check {INT8} --profile int8_profile.json --profile-fp16 fp16_profile.json "
                    "--layer-info int8_layers.json --layer-info-fp16 fp16_layers.json",
                    "# and to let the device's timings steer which layers stay in float:",
                    "qdq quantize YOUR_FLOAT.onnx --calib YOUR_DATA -o model_int8.onnx --overwrite --device-profile ."]


def _predict(fmodel, qmodel, inputs: Path, task, quiet: bool) -> dict:
    """qdq's figures for the bundle's samples: the file as the device runs it against FP32 and FP16."""
    out = {}
    for ref in ("fp32", "fp16"):
        r = compare(fmodel, qmodel, inputs, reference=ref, budget=False, quiet=quiet, task=task)
        out[f"int8_vs_{ref}"] = {"sqnr": r.sqnr, "task": r.task, "remainder": r.remainder}
    return out


def bundle(float_model, quant_model, data, folder, *, samples: int = 32, seed: int = 0,
           preprocess: Preprocess | None = None, task=None, overwrite: bool = False, quiet: bool = False) -> Bundle:
    """Write the bundle (see module doc) into ``folder`` (created; an existing bundle is replaced only
    with ``overwrite``): ``samples`` of ``data`` chosen with ``seed``."""
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())) and not overwrite:
        raise QdqError(f"{folder}: exists and is not an empty folder; pass --overwrite or another -o")
    raw = float_model if isinstance(float_model, onnx.ModelProto) else load_model(float_model)
    qmodel = quant_model if isinstance(quant_model, onnx.ModelProto) else load_model(quant_model)
    target = metadata(qmodel).get("qdq_target", "trt10")
    fmodel = prepare(raw, target if target in ("trt8", "trt10", "trt11") else "trt10")
    names, feeds = _choose(data, fmodel, samples, seed, preprocess)   # bad data fails before anything is written
    folder.mkdir(parents=True, exist_ok=True)
    write_inputs(folder / "inputs.json", feeds)
    save_model(qmodel, folder / INT8, overwrite=True)
    float_name = FLOAT
    save_model(fmodel, folder / FLOAT, overwrite=True)
    if target == "trt11":   # the FP16 engine of the float model is built from its FP16 cast
        float_name = "model_fp16.onnx"
        save_model(fp16_model(fmodel, Dataset(folder / "inputs.json", model_inputs(fmodel)), quiet), folder / float_name,
                   overwrite=True)
    prediction = dict(_predict(fmodel, qmodel, folder / "inputs.json", task, quiet), samples=names)
    atomic_write_text(folder / "prediction.json", json.dumps(json_safe(prediction), indent=1))
    pins, nodes = pinned_layers(qmodel), {n.name for n in fmodel.graph.node}
    commands = _commands(target, pins, [n for n in pins if n in nodes], float_name, _shape_args(fmodel, feeds))
    atomic_write_text(folder / "RUN.txt", "\n".join(commands) + "\n")
    return Bundle(folder, target, names, prediction, commands)
