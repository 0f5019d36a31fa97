"""Data loading: calibration/validation samples from .npz/.npy files or image folders.

Every sample is a dict ``input name -> np.ndarray`` with a leading batch axis of size 1, checked
against the model's inputs (names, rank, static dims, dtype, finiteness) before it is used.
Files are read lazily, one at a time, so memory does not grow with the number of samples.
"""
from __future__ import annotations

import hashlib
import queue
import threading
import zipfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx

from ..errors import QdqError
from .polygraphy_io import read_inputs

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")
DEFAULT_DYNAMIC_SIZE = 640


@dataclass(frozen=True)
class InputSpec:
    """A graph input: name, dims (int or None when dynamic), numpy dtype."""

    name: str
    shape: tuple
    dtype: np.dtype

    @property
    def is_float(self) -> bool:
        return self.dtype.kind == "f"

    @property
    def group(self) -> int:
        """Rows of axis 0 that make one sample: the model's fixed batch (e.g. 4), else 1; 0 for a rank-0
        input (a scalar: a threshold, a timestep), which has no axis 0."""
        if not self.shape:
            return 0
        return self.shape[0] if self.shape[0] else 1


def model_inputs(model: onnx.ModelProto) -> list[InputSpec]:
    inits = {t.name for t in model.graph.initializer}
    specs = []
    for i in model.graph.input:
        if i.name in inits:
            continue
        tt = i.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tt.shape.dim)
        specs.append(InputSpec(i.name, dims, np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))))
    return specs


def _per_channel(values, default: float, channels, flag: str, name: str) -> tuple:
    """``values`` (None, one value, or one per channel) as one value per channel of the input."""
    n = channels or 3
    if values is None:
        return (default,) * n
    values = tuple(values)
    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise QdqError(f"{flag} has {len(values)} values but input {name!r} has {n} channel{'s' * (n != 1)}; "
                       f"give {n} value{'s' * (n != 1)} or one for all")
    return values


@dataclass
class Preprocess:
    """How images become tensors: ``x = (pixel · scale − mean) / std`` per channel.

    ``size`` (H, W) defaults to the model's static input dims (640 where dynamic); ``resize`` is
    ``stretch`` or ``letterbox`` (keep aspect, pad with ``pad_value`` pixels); ``color`` RGB/BGR/GRAY;
    ``layout`` NCHW/NHWC (default read from the input shape: a dim of 1 or 3 after the batch → NCHW).
    """

    size: tuple | None = None
    resize: str = "stretch"
    mean: tuple | None = None      # one value per channel, or one for all (default 0)
    std: tuple | None = None       # the same (default 1)
    scale: float = 1.0 / 255.0
    color: str = "RGB"
    layout: str | None = None
    pad_value: int = 114

    def resolved(self, spec: InputSpec) -> "Preprocess":
        """Fill the defaults this input's shape implies."""
        if len(spec.shape) != 4:
            raise QdqError(f"input {spec.name!r} has rank {len(spec.shape)}; images need a rank-4 input "
                           "(N,C,H,W or N,H,W,C); pass .npz/.npy data instead")
        layout = self.layout or ("NHWC" if spec.shape[3] in (1, 3) and spec.shape[1] not in (1, 3) else "NCHW")
        hw = spec.shape[2:4] if layout == "NCHW" else spec.shape[1:3]
        ch = spec.shape[1] if layout == "NCHW" else spec.shape[3]
        size = self.size or tuple(d if d else DEFAULT_DYNAMIC_SIZE for d in hw)
        color = "GRAY" if ch == 1 else self.color
        if color == "GRAY" and ch not in (1, None):
            raise QdqError(f"--color GRAY gives 1 channel, but input {spec.name!r} takes {ch}")
        mean, std = (_per_channel(v, d, ch, flag, spec.name) for v, d, flag in
                     ((self.mean, 0.0, "--mean"), (self.std, 1.0, "--std")))
        return Preprocess(size=tuple(size), resize=self.resize, mean=mean, std=std, scale=self.scale,
                          color=color, layout=layout, pad_value=self.pad_value)

    def apply(self, path: Path, spec: InputSpec) -> np.ndarray:
        """The image at ``path`` as a (1, C, H, W) or (1, H, W, C) array of ``spec.dtype``."""
        try:
            from PIL import Image   # the images extra: the core reads .npz/.npy without it
        except ImportError:
            raise QdqError(f"{path}: reading images needs Pillow: pip install 'qdq[images]' (or pass .npz data)") from None

        h, w = self.size
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path) as im:
                    im.load()
                    im = im.convert("L" if self.color == "GRAY" else "RGB")
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise QdqError(f"{path}: image too large to decode safely (decompression-bomb limit); "
                           "downscale it first") from None
        except Exception as e:
            raise QdqError(f"{path}: cannot read image ({type(e).__name__}: {str(e)[:120]}); "
                           "remove or replace the file") from None
        if self.resize == "letterbox":
            r = min(h / im.height, w / im.width)
            nh, nw = max(1, round(im.height * r)), max(1, round(im.width * r))
            canvas = Image.new(im.mode, (w, h), self.pad_value if im.mode == "L" else (self.pad_value,) * 3)
            canvas.paste(im.resize((nw, nh), Image.BILINEAR), ((w - nw) // 2, (h - nh) // 2))
            im = canvas
        else:
            im = im.resize((w, h), Image.BILINEAR)
        a = np.asarray(im, dtype=np.float32)
        if a.ndim == 2:
            a = a[:, :, None]
        if self.color == "BGR":
            a = a[:, :, ::-1]
        c = a.shape[2]
        mean = np.asarray(self.mean, np.float32)[:c]
        std = np.asarray(self.std, np.float32)[:c]
        a = (a * np.float32(self.scale) - mean) / std
        if self.layout == "NCHW":
            a = a.transpose(2, 0, 1)
        return np.ascontiguousarray(a[None]).astype(spec.dtype)


@dataclass
class Dataset:
    """Samples for a model, read lazily from ``path``.  Iterating yields ``(source, feed)``."""

    path: Path
    inputs: list
    preprocess: Preprocess = field(default_factory=Preprocess)
    limit: int | None = None

    def __post_init__(self):
        self.path = Path(self.path)
        if not self.path.exists():
            raise QdqError(f"{self.path}: no such file or folder")
        self.kind, self.files = self._discover()
        if not self.inputs:
            raise QdqError(f"{self.path}: the model has no inputs to feed")

    def _discover(self):
        p = self.path
        if p.is_dir():   # sub-folders too (a recording, a source, a class each): the held-back choice spreads over them
            files = sorted(f for f in p.rglob("*") if f.is_file()
                           and not any(part.startswith(".") for part in f.relative_to(p).parts))
            npz = [f for f in files if f.suffix == ".npz"]
            images = [f for f in files if f.suffix.lower() in IMAGE_EXTS]
            if npz:
                return "npz", npz
            if not images and any(f.suffix == ".json" for f in files):   # Polygraphy's --save-inputs DIR
                return "json", [f for f in files if f.suffix == ".json"]
            if images:
                return "images", images
            raise QdqError(f"{p}: folder holds no .npz files, images ({', '.join(IMAGE_EXTS)}) or Polygraphy inputs")
        if p.suffix == ".npz":
            return "npz", [p]
        if p.suffix == ".json":   # Polygraphy's inputs (polygraphy run --save-inputs / --load-inputs)
            return "json", [p]
        if p.suffix == ".npy":
            if len(self.inputs) != 1:
                names = ", ".join(i.name for i in self.inputs)
                raise QdqError(f"{p}: a .npy feeds a single-input model; this one has inputs {names}: use .npz")
            return "npy", [p]
        if p.suffix.lower() in IMAGE_EXTS:
            return "images", [p]
        raise QdqError(f"{p}: unsupported data file; use a folder of .npz files or images, a .npz, a .npy or "
                       "Polygraphy's inputs .json")

    def __iter__(self) -> Iterator[tuple[str, dict]]:
        n = 0
        for source, feed in self._samples():
            if self.limit is not None and n >= self.limit:
                return
            n += 1
            yield source, feed
        if n == 0:
            raise QdqError(f"{self.path}: contains no samples")

    def count(self) -> int | None:
        """Number of samples when cheap to know (images, one sample per file), else None."""
        if self.kind == "images":
            n = len(self.files) // max(self.inputs[0].group, 1)
            return min(n, self.limit) if self.limit is not None else n
        return None

    def sources(self) -> list:
        """The name of every sample iteration yields, in order, read from file names and array headers
        only (no pixel or array data is loaded)."""
        if self.kind == "images":
            group = max(self.inputs[0].group, 1)
            names = [str(f) for f in self.files[group - 1::group]]
        else:
            names = [f"{f}[{i}]" for f in self.files for i in range(self._rows(f))]
        return names[:self.limit] if self.limit is not None else names

    def _rows(self, f: Path) -> int:
        """Samples in file ``f`` by the header of its first array that is an input (as :meth:`_count`)."""
        if f.suffix == ".json":
            return len(read_inputs(f))
        try:
            if f.suffix == ".npy":
                shapes = {self.inputs[0].name: np.load(f, mmap_mode="r", allow_pickle=False).shape}
            else:
                shapes = _npz_shapes(f)
        except Exception as e:
            raise QdqError(f"{f}: cannot read ({type(e).__name__}: {str(e)[:120]})") from None
        for k, shape in shapes.items():
            spec = next((s for s in self.inputs if s.name == k), None)
            if spec is None:
                continue
            if spec.group == 0:
                return 1 if len(shape) == 0 else shape[0]
            rows = 1 if len(shape) == len(spec.shape) - 1 else (shape[0] if shape else 1)
            return rows // spec.group
        return 0

    def _samples(self):
        if self.kind == "images":
            yield from self._image_samples()
            return
        if self.kind == "json":
            yield from self._json_samples()
            return
        for f in self.files:
            arrays = self._read(f)
            counts = {k: self._count(f, k, v) for k, v in arrays.items()}
            if len(set(counts.values())) != 1:
                raise QdqError(f"{f}: arrays hold different numbers of samples {counts} (axis 0, in the model's "
                               "batches)")
            for i in range(next(iter(counts.values()))):
                src = f"{f}[{i}]"
                yield src, {k: self._check(src, self._spec(k), self._take(k, v, i)) for k, v in arrays.items()}

    def _json_samples(self):
        """One sample per iteration of Polygraphy's inputs file, each as Polygraphy feeds it (with its batch)."""
        expected = sorted(s.name for s in self.inputs)
        for f in self.files:
            for i, feed in enumerate(read_inputs(f)):
                src = f"{f}[{i}]"
                if sorted(feed) != expected:
                    raise QdqError(f"{src}: inputs {sorted(feed)} do not match the model inputs {expected}")
                yield src, {k: self._check(src, self._spec(k), v) for k, v in feed.items()}

    def _image_samples(self):
        spec = self.inputs[0]
        if len(self.inputs) != 1:
            raise QdqError(f"{self.path}: images feed a single-input model; this one has "
                           f"{len(self.inputs)} inputs: use .npz")
        if not spec.is_float:
            raise QdqError(f"{self.path}: input {spec.name!r} is {spec.dtype}, not an image tensor; use .npz")
        pre = self.preprocess.resolved(spec)
        group, pending = max(spec.group, 1), []
        for f in self.files:   # a model with a fixed batch of B takes B images a sample
            pending.append(pre.apply(f, spec))
            if len(pending) == group:
                yield str(f), {spec.name: self._check(str(f), spec, np.concatenate(pending))}
                pending = []

    def _count(self, f: Path, name: str, v: np.ndarray) -> int:
        """Samples array ``v`` holds for input ``name``: rows / the model's batch (values for a scalar)."""
        group = self._spec(name).group
        if group == 0:
            return 1 if v.ndim == 0 else len(v)
        if len(v) % group:
            raise QdqError(f"{f}: tensor {name!r} has {len(v)} rows; the model takes batches of {group}: give a "
                           f"multiple of {group}")
        return len(v) // group

    def _take(self, name: str, v: np.ndarray, i: int) -> np.ndarray:
        group = self._spec(name).group
        if group == 0:
            return v if v.ndim == 0 else np.asarray(v[i])
        return v[i * group:(i + 1) * group]

    def _spec(self, name: str) -> InputSpec:
        return next(s for s in self.inputs if s.name == name)

    def _read(self, f: Path) -> dict:
        try:
            if f.suffix == ".npy":
                arrays = {self.inputs[0].name: np.load(f, allow_pickle=False)}
            else:
                with np.load(f, allow_pickle=False) as z:
                    arrays = {k: z[k] for k in z.files}
        except ValueError as e:
            if "pickle" in str(e):
                raise QdqError(f"{f}: holds object arrays (pickled Python objects); refusing to load "
                               "them: save plain numeric arrays") from None
            raise QdqError(f"{f}: cannot read ({str(e)[:120]})") from None
        except Exception as e:
            raise QdqError(f"{f}: cannot read ({type(e).__name__}: {str(e)[:120]})") from None
        expected = [s.name for s in self.inputs]
        unknown = sorted(set(arrays) - set(expected))
        missing = [n for n in expected if n not in arrays]
        if unknown or missing:
            raise QdqError(f"{f}: arrays {sorted(arrays)} do not match the model inputs {expected}"
                           + (f" (missing {missing})" if missing else "") + (f" (unknown {unknown})" if unknown else ""))
        out = {}
        for k, v in arrays.items():
            spec = self._spec(k)
            if spec.group == 0 and v.ndim <= 1:   # a scalar input: one value, or one per sample
                out[k] = v
                continue
            if v.ndim == len(spec.shape) - 1:
                v = v[None]  # one sample without its batch axis
            if v.ndim != len(spec.shape):
                raise QdqError(f"{f}: tensor {k!r} has shape {v.shape}; the model expects rank "
                               f"{len(spec.shape)} {_fmt_shape(spec.shape)}")
            out[k] = v
        return out

    @staticmethod
    def _check(src: str, spec: InputSpec, x: np.ndarray) -> np.ndarray:
        if x.dtype.kind not in "fiub":
            raise QdqError(f"{src}: tensor {spec.name!r} has dtype {x.dtype}; expected {spec.dtype}")
        if spec.is_float != (x.dtype.kind == "f"):
            raise QdqError(f"{src}: tensor {spec.name!r} has dtype {x.dtype}; the model expects {spec.dtype}")
        if x.ndim != len(spec.shape):
            raise QdqError(f"{src}: tensor {spec.name!r} has shape {x.shape}; the model expects {_fmt_shape(spec.shape)}")
        for i, (d, want) in enumerate(zip(x.shape, spec.shape)):
            if want is not None and d != want:
                raise QdqError(f"{src}: tensor {spec.name!r} has shape {x.shape}; the model expects "
                               f"{_fmt_shape(spec.shape)} (dim {i} must be {want})")
        x = x.astype(spec.dtype, copy=False)
        if spec.is_float and not np.isfinite(x).all():
            raise QdqError(f"{src}: tensor {spec.name!r} contains NaN or Inf; clean the data")
        return x


def _npz_shapes(f: Path) -> dict:
    """array name → shape of each array of the .npz ``f``, from the .npy headers alone."""
    out = {}
    with zipfile.ZipFile(f) as z:
        for member in z.namelist():
            with z.open(member) as fh:
                version = np.lib.format.read_magic(fh)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                out[member[:-4] if member.endswith(".npy") else member] = read(fh)[0]
    return out


def _fmt_shape(shape) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


class HoldOut:
    """Iterates ``dataset`` for calibration while setting a seeded random choice of its samples aside
    (``held``, their names in ``held_sources``), copying the first ``keep`` samples it yields (``kept``,
    for the analysis pass) and the first ``cap`` it yields (``rest``, for a dataset too small to hold
    any back).

    The choice (:func:`choose_held`): ``min(n // every, cap)`` of the ``n`` samples, spread over the
    folder's sub-folders in turn, each taking its samples in the order of a seeded hash of their names.
    It depends on the set of sample names and the seed only: not on file order, batch size, or where a
    recording starts."""

    def __init__(self, dataset, every: int = 5, cap: int = 32, keep: int = 6, seed: int = 0):
        self.dataset, self.every, self.cap, self.keep, self.seed = dataset, every, cap, keep, seed
        self.inputs, self.path = dataset.inputs, dataset.path
        self.held, self.kept, self.rest, self.held_sources = [], [], [], []
        self._chosen = None

    def chosen(self) -> set:
        """The sources held back (hashed by their names relative to the data folder: the same choice
        wherever the folder lies)."""
        if self._chosen is None:
            names = self.dataset.sources()
            self._chosen = choose_sources(self.dataset, names, min(len(names) // self.every, self.cap), self.seed)
        return self._chosen

    def count(self) -> int | None:
        n = self.dataset.count()
        return None if n is None else n - len(self.chosen())

    def __iter__(self):
        chosen = self.chosen()
        self.held, self.kept, self.rest, self.held_sources = [], [], [], []
        for source, feed in self.dataset:
            if source in chosen:
                self.held.append(feed)
                self.held_sources.append(source)
                continue
            if len(self.rest) < self.cap:
                self.rest.append(feed)
            if len(self.kept) < self.keep:
                self.kept.append(feed)
            yield source, feed


def _unit(name: str, seed: int) -> float:
    """A seeded hash of ``name`` in [0, 1): the same on every machine and Python run."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{name}".encode(), digest_size=8).digest(), "big") / 2.0 ** 64


def choose_sources(dataset, names: list, count: int, seed: int = 0) -> set:
    """:func:`choose_held` of ``dataset``'s sample ``names``, hashed by their names relative to its
    folder: the same choice wherever the folder lies."""
    root = str(dataset.path)
    rel = {n[len(root):].lstrip("/\\") if n.startswith(root) else n: n for n in names}
    return {rel[n] for n in choose_held(list(rel), count, seed)}


def choose_held(names: list, count: int, seed: int = 0) -> set:
    """``count`` of the sample ``names`` (``path`` or ``path[i]``), one sub-folder after another (the
    folders in the order of their first hash, round after round), each folder's names in the order of
    their seeded hash."""
    groups: dict = {}
    for n in names:
        groups.setdefault(str(Path(n.split("[")[0]).parent), []).append(n)
    queues = sorted((sorted(g, key=lambda n: _unit(n, seed)) for g in groups.values()), key=lambda q: _unit(q[0], seed))
    out: list = []
    while len(out) < count and any(queues):
        for q in queues:
            if q and len(out) < count:
                out.append(q.pop(0))
    return set(out)


class Feeds:
    """A list of feeds as a dataset (``inputs``, ``count()``, iteration), e.g. held-back samples."""

    def __init__(self, inputs, feeds: list, path="samples"):
        self.inputs, self.feeds, self.path = inputs, feeds, Path(str(path))

    def count(self) -> int:
        return len(self.feeds)

    def __iter__(self):
        for k, feed in enumerate(self.feeds):
            yield f"{self.path}[{k}]", feed


def first_feeds(dataset, n: int) -> list[dict]:
    """The first ``n`` samples of ``dataset`` as feeds (input name -> array)."""
    out = []
    for _, feed in dataset:
        out.append(feed)
        if len(out) >= n:
            break
    return out


def batches(dataset, batch_size: int):
    """Group consecutive samples of equal shapes into batches of up to ``batch_size`` along axis 0
    (samples with a scalar input or a model's fixed batch run alone).

    Yields ``(sources, feed)``.  Statistics do not depend on how samples are batched.
    """
    if batch_size > 1 and any(s.group != 1 for s in dataset.inputs):
        batch_size = 1
    pending, sources = [], []

    def flush():
        feed = pending[0] if len(pending) == 1 else {k: np.concatenate([p[k] for p in pending]) for k in pending[0]}
        return list(sources), feed

    for src, feed in dataset:
        if pending and any(feed[k].shape[1:] != pending[0][k].shape[1:] for k in feed):
            yield flush()
            pending.clear()
            sources.clear()
        pending.append(feed)
        sources.append(src)
        if len(pending) >= batch_size:
            yield flush()
            pending.clear()
            sources.clear()
    if pending:
        yield flush()


def prefetch(iterable, depth: int = 2):
    """Iterate ``iterable`` in a background thread, ``depth`` items ahead, so decoding the next
    samples overlaps the current inference (PIL and ONNX Runtime release the GIL).  Errors raised
    while producing an item are raised here, in order."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def work():
        try:
            for item in iterable:
                if stop.is_set():
                    return
                q.put((item, None))
        except BaseException as e:  # handed to the consumer
            q.put((None, e))
            return
        q.put((done, None))

    threading.Thread(target=work, daemon=True).start()
    try:
        while True:
            item, err = q.get()
            if err is not None:
                raise err
            if item is done:
                return
            yield item
    finally:
        stop.set()
