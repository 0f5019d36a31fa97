"""ONNX Runtime sessions: one way to load a model (its weights lent from one store, Q/DQ run as float
ops) and one way to run it (failures as one-line errors).

Weights: ONNX Runtime given a serialized model deserializes its own copy of every initializer, and the
serialization is another.  Here a session is given a *skeleton*: each initializer of at least
:data:`LENT_BYTES` is an external reference, its data lent from a :class:`WeightStore` as an OrtValue
through ``SessionOptions.add_external_initializers`` (ONNX Runtime's CPU provider uses the buffer as
is).  Inside :func:`shared_weights` every session of a run borrows from one store, so the float
weights, and the INT8 weights every candidate of a placement shares, are held once however many
sessions read them.  There the float model itself is a skeleton too (:func:`hold`): its large
initializers live in the store as read-only arrays, read from the user's external data files
directly, and every pass reads them there (:func:`held`), so a run holds one copy of the float
weights, not the protobuf's and the sessions' (:func:`fill` makes a held model whole again).
"""
from __future__ import annotations

import contextlib
import contextvars
import ctypes
import gc
import os
import weakref

import numpy as np
import onnx

from ..errors import QdqError
from ..modelio import STORE_LOCATION, fresh_name, in_store, read_in, subgraphs, values_bytes, without_initializers

# initializers from this size on are lent to sessions instead of serialized into them
LENT_BYTES = 4096
LENT_LOCATION = STORE_LOCATION   # the external-data location of a lent initializer
HELD_LOCATION = LENT_LOCATION + "/held/"   # + a number: the location of a held model's initializer
# a session whose lent weights pass this many bytes is fed them as inputs on every run
FED_BYTES = 1 << 28
# from this many bytes of weights on, the passes' garbage is collected and returned (release)
RELEASE_BYTES = 1 << 26
_STORE: contextvars.ContextVar = contextvars.ContextVar("qdq_weight_store", default=None)


class WeightStore:
    """Initializer data lent to live sessions: ``{(name, dtype, dims): [(array, OrtValue) weakly]}``, an
    entry per distinct content under that key (contents are compared, never assumed from the name).
    The sessions hold the OrtValues (each holding its array); an entry no live session borrows is
    gone, so the store never holds more than the sessions alive read."""

    def __init__(self):
        self._held: dict = {}
        self.feed = False   # every session is fed its weights (:func:`feed_large`)
        self.models: dict = {}   # location -> {name: read-only array}: the weights of held models (:func:`hold`)
        self.files: dict = {}    # (file, offset, dtype, dims) -> the array read there, read once per run

    def lend(self, t: onnx.TensorProto):
        """The OrtValue holding ``t``'s data (raw_data, little-endian): one a live session already
        borrows when the contents are equal, else a new one."""
        arr = np.frombuffer(t.raw_data, onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).reshape(tuple(t.dims))
        return self.lend_array(t.name, arr)

    def lend_array(self, name: str, arr: np.ndarray):
        """The OrtValue of ``arr`` under ``name`` (an equal one a live session borrows, else ``arr``
        itself, not copied: it must not change while lent)."""
        import onnxruntime as ort

        arr = np.ascontiguousarray(arr)
        key = (name, arr.dtype.str, arr.shape)
        live = [(a, v) for a, v in ((a(), v()) for a, v in self._held.get(key, ())) if v is not None]
        for held, value in live:
            if held is arr or np.array_equal(held, arr):
                return value
        value = ort.OrtValue.ortvalue_from_numpy(arr)
        self._held[key] = [(weakref.ref(a), weakref.ref(v)) for a, v in live + [(arr, value)]]
        return value

    @property
    def nbytes(self) -> int:
        """Bytes of the entries live sessions borrow."""
        return sum(a().nbytes for entries in self._held.values() for a, v in entries if v() is not None)


def release(weight_bytes: int) -> None:
    """Give the memory of the passes before back to the system when the weights in play
    (``weight_bytes``) reach :data:`RELEASE_BYTES`: collect the reference cycles that
    onnx-graphsurgeon graphs form (a pass's graph and the weights it read otherwise live on until
    Python's oldest generation is collected), then ask glibc to return its freed heap
    (``malloc_trim``; buffers under its mmap threshold, up to 32 MiB each, are otherwise kept for
    reuse).  Below the limit it does nothing: a full collection costs 0.02–0.3 s, more than the
    garbage of a small model weighs.  A no-op beyond glibc."""
    if weight_bytes < RELEASE_BYTES:
        return
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (AttributeError, OSError):
        pass


def model_bytes(model: onnx.ModelProto) -> int:
    """Bytes of ``model``'s initializers' values (none read)."""
    return sum(values_bytes(t) for t in model.graph.initializer)


def lent_bytes(lent: dict) -> int:
    """Bytes of what ``lent`` (:func:`lent_view`'s name → TensorProto or array) lends."""
    return sum(v.nbytes if isinstance(v, np.ndarray) else values_bytes(v) for v in lent.values())


@contextlib.contextmanager
def shared_weights():
    """Every session made inside borrows its weights from one :class:`WeightStore` (dropped on exit;
    inside another such block, that block's store)."""
    if _STORE.get() is not None:
        yield _STORE.get()
        return
    token = _STORE.set(WeightStore())
    try:
        yield _STORE.get()
    finally:
        _STORE.reset(token)


def feed_large(weight_bytes: int) -> None:
    """Inside :func:`shared_weights`: when the run's weights (``weight_bytes``) pass :data:`FED_BYTES`,
    every session made from here on is fed its weights, whatever it borrows itself.  A candidate of
    a large model borrows less than the float model (INT8 weights), but ONNX Runtime's copy of it
    would still sit on the float model's two copies; and one rule for the run keeps the float and
    candidate sessions computing alike (no prepacked kernels in either)."""
    store = _STORE.get()
    if store is not None:
        store.feed = weight_bytes > FED_BYTES


def holding() -> bool:
    """Whether a model loaded now would be held (:func:`hold`): inside :func:`shared_weights`."""
    return _STORE.get() is not None


def hold(model: onnx.ModelProto, folder=None) -> onnx.ModelProto:
    """Inside :func:`shared_weights`: a skeleton of ``model`` whose initializers of :data:`LENT_BYTES`
    or more are references to :data:`HELD_LOCATION` (no data), their values held once in the store
    as read-only arrays; data in external files (under ``folder``, already confined by
    :func:`qdq.modelio.load_model`) is read from them one tensor at a time, once per run (the user's
    model held again for its check shares the arrays).  Outside one, or for what is already a
    reference, ``model`` as it is.  ``model`` is never changed."""
    store = _STORE.get()
    if store is None:
        return model
    location = f"{HELD_LOCATION}{len(store.models)}"
    arrays = store.models.setdefault(location, {})
    m = without_initializers(model)
    for t in model.graph.initializer:
        arr = _read(t, folder, store.files)
        if arr is None:
            m.graph.initializer.append(t)
            if folder is not None and t.data_location == onnx.TensorProto.EXTERNAL and not in_store(t):
                read_in(m.graph.initializer[-1], folder)   # too small to hold: in the skeleton, as a session needs it
            continue
        arr.flags.writeable = False   # lent to sessions and read by every pass: never written
        arrays[t.name] = arr
        m.graph.initializer.append(lent_reference(t.name, t.dims, t.data_type, location))
    return m


def _read(t: onnx.TensorProto, folder, files: dict) -> np.ndarray | None:
    """``t``'s values as an array, when it is large enough to hold and held in its raw bytes or in
    an external file under ``folder`` (the array ``files`` has for that place, else one read and
    put there); else None."""
    if (len(t.dims) == 0 or values_bytes(t) < LENT_BYTES
            or t.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED)):
        return None
    dtype = onnx.helper.tensor_dtype_to_np_dtype(t.data_type)
    if t.data_location != onnx.TensorProto.EXTERNAL:   # a read of raw_data is a copy already
        raw = t.HasField("raw_data")
        return np.frombuffer(t.raw_data, dtype).reshape(tuple(t.dims)) if raw else onnx.numpy_helper.to_array(t)
    if folder is None or in_store(t):
        return None
    info = {e.key: e.value for e in t.external_data}
    count = values_bytes(t) // dtype.itemsize
    path, offset = os.path.join(folder, info["location"]), int(info.get("offset", 0))
    key = (path, offset, dtype.str, tuple(t.dims))
    if key not in files:
        arr = np.fromfile(path, dtype, count=count, offset=offset)
        if arr.size != count:
            raise QdqError(f"external data of tensor {t.name!r} ({path}) is shorter than its dims "
                           f"{list(t.dims)} need; re-export the model")
        files[key] = arr.reshape(tuple(t.dims))
    return files[key]


def held(t: onnx.TensorProto) -> np.ndarray | None:
    """The read-only values of ``t`` when it references a held model's weights (:func:`hold`), else
    None; a reference whose run is over is an internal error (its data is gone)."""
    if t.data_location != onnx.TensorProto.EXTERNAL:
        return None
    location = next((e.value for e in t.external_data if e.key == "location"), "")
    if not location.startswith(HELD_LOCATION):
        return None
    arr = (_STORE.get().models if _STORE.get() is not None else {}).get(location, {}).get(t.name)
    if arr is None:
        raise QdqError(f"internal error: the weights of {t.name!r} were read after their run; please report it")
    return arr


def held_reference(name: str, arr: np.ndarray) -> onnx.TensorProto | None:
    """A reference to the held array ``arr`` (the very object :func:`held` gave for ``name``), else None."""
    store = _STORE.get()
    if store is None or arr.flags.writeable:
        return None
    for location, arrays in store.models.items():
        if arrays.get(name) is arr:
            return lent_reference(name, arr.shape, onnx.helper.np_dtype_to_tensor_dtype(arr.dtype), location)
    return None


def fill(model: onnx.ModelProto, move: bool = False) -> onnx.ModelProto:
    """``model`` made whole in place: each reference to a held model's weights given its data (one
    tensor at a time); with ``move`` each such array also leaves the store, so the model and the
    store do not hold the weights at once.  Returns ``model``."""
    places = _places() if move else {}
    for t in model.graph.initializer:
        arr = held(t)
        if arr is None:
            continue
        t.CopyFrom(onnx.helper.make_tensor(t.name, t.data_type, arr.shape, arr.tobytes(), raw=True))
        for where, key in places.get(id(arr), ()):
            where.pop(key, None)
        del arr
    return model


def keep_held(model: onnx.ModelProto) -> None:
    """Inside :func:`shared_weights`: the held arrays ``model`` does not reference leave the store
    (the weights preparation replaced, once the user's model has been checked against it)."""
    used = {id(a) for t in model.graph.initializer if (a := held(t)) is not None}
    for arr_id, found in _places().items():
        for where, key in found if arr_id not in used else ():
            del where[key]


def _places() -> dict:
    """id(array) -> [(dict, key)]: everywhere the store keeps each held array."""
    store, out = _STORE.get(), {}
    for arrays in ([*store.models.values(), store.files] if store is not None else ()):
        for key, arr in arrays.items():
            out.setdefault(id(arr), []).append((arrays, key))
    return out


def _lendable(t: onnx.TensorProto) -> bool:
    return (t.HasField("raw_data") and t.data_location != onnx.TensorProto.EXTERNAL and len(t.dims) > 0
            and t.data_type not in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED)
            and values_bytes(t) >= LENT_BYTES)


def lent_reference(name: str, dims, data_type: int, location: str = LENT_LOCATION) -> onnx.TensorProto:
    """An initializer with no data: an external reference to ``location`` in the store (by default
    :data:`LENT_LOCATION`, which a session fills from what is lent to it, :func:`session_for`; a held
    model's, :func:`hold`)."""
    ref = onnx.TensorProto(name=name, dims=list(dims), data_type=data_type, data_location=onnx.TensorProto.EXTERNAL)
    ref.external_data.add(key="location", value=location)
    return ref


def lent_view(model: onnx.ModelProto, lent: dict | None = None) -> tuple[onnx.ModelProto, dict]:
    """``model`` with each large initializer an external reference to :data:`LENT_LOCATION` (no data),
    and {name: its TensorProto in ``model``} to lend for them; ``model`` is not changed and its
    weights are not copied.  References already there take their data from ``lent`` (name → array
    or TensorProto: :func:`qdq.graph.surgery.export_lent`)."""
    m = without_initializers(model)
    out = {}
    for t in model.graph.initializer:
        if lent and t.data_location == onnx.TensorProto.EXTERNAL and t.name in lent:
            m.graph.initializer.append(t)
            out[t.name] = lent[t.name]
        elif (arr := held(t)) is not None:
            m.graph.initializer.append(lent_reference(t.name, t.dims, t.data_type))
            out[t.name] = arr
        elif _lendable(t):
            m.graph.initializer.append(lent_reference(t.name, t.dims, t.data_type))
            out[t.name] = t
        else:
            m.graph.initializer.append(t)
    return m, out


def session_for(model: onnx.ModelProto, providers=None, extra_outputs=(), threads: int | None = None,
                fold: bool = True, lent: dict | None = None, data_folder=None):
    """An ONNX Runtime session of ``model`` as given that also returns ``extra_outputs`` (tensor
    names); ``lent`` lends the data of initializers ``model`` holds as references (:func:`lent_view`).
    ``fold=False`` turns ONNX Runtime's graph optimizations off (a Cast of a weight stays a
    Cast instead of becoming a second copy of the weight).  ``data_folder``: where the external data
    ``model`` references lies (ONNX Runtime maps those files itself: no copy in this process's
    heap).  A model that computes in FP16 runs here as ONNX Runtime's CPU provider runs it, which
    hides much of FP16's rounding: measurements hand it :func:`qdq.graph.precision.runnable` first."""
    import onnxruntime as ort

    store = _STORE.get() or WeightStore()
    m, lent = lent_view(model, lent)
    _dequantize_as_mul(m, lent)
    names = list(lent)
    values = [store.lend_array(k, v) if isinstance(v, np.ndarray) else store.lend(v) for k, v in lent.items()]
    m = with_extrema(m, (), extra_outputs)[0] if extra_outputs else m
    so = ort.SessionOptions()
    so.log_severity_level = 3
    # idle ORT workers must not spin: the histogram thread needs the core between runs
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not fold or any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node):
        # Run Q/DQ as plain float ops: TensorRT's INT8 numerics (int32 accumulation).  ORT_ENABLE_ALL
        # fuses them into ONNX Runtime's integer kernels, which saturate int16 intermediates on CPUs
        # without VNNI; ORT_ENABLE_BASIC's constant folding of FP16 per-channel DequantizeLinear produced
        # wrong weights (docs/design.md has both measurements).
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads:
        so.intra_op_num_threads = threads
    if data_folder is not None:
        so.add_session_config_entry("session.model_external_initializers_file_folder_path", str(data_folder))
    available = ort.get_available_providers()
    providers = [p for p in (providers or ["CPUExecutionProvider"]) if p in available] or ["CPUExecutionProvider"]
    fed = {}
    if names and (store.feed or lent_bytes(lent) > FED_BYTES):
        # ONNX Runtime 1.32 copies what add_external_initializers gives it (a second copy of the
        # weights per session), while it reads inputs in place: large weights become inputs, fed on
        # every run; they are not constants to its optimizer then, so MatMul weights are not
        # prepacked (another copy) nor folded.  No memory pattern: it plans one block for every
        # tensor of a run, so the CPU arena would hold each weight a node dequantizes or rounds at
        # once; without it the arena reuses one weight's block for the next (without the arena each
        # such weight is a fresh mmap whose page faults cost as much as dequantizing it)
        m, fed = _as_inputs(m, set(names)), dict(zip(names, values))
        so.add_session_config_entry("session.disable_prepacking", "1")
        so.enable_mem_pattern = False
    elif names:
        so.add_external_initializers(names, values)
    try:
        sess = ort.InferenceSession(m.SerializeToString(), so, providers=providers)
    except Exception as e:
        msg = str(e).strip().splitlines()[0][:300]
        raise QdqError(f"ONNX Runtime cannot load the model: {msg}") from None
    sess.qdq_lent = (store, values)   # the lent buffers live as long as the session
    sess.qdq_fed = fed
    return sess


def _dequantize_as_mul(model: onnx.ModelProto, lent: dict) -> None:
    """Each DequantizeLinear of an INT8 initializer along its last axis (a MatMul weight's output
    channels), with FP32 scales and zero points 0, becomes Cast(FLOAT) then Mul by the scales, in
    ``model`` (a session's own skeleton): the same float(q)·s for every element, bit for bit, where
    ONNX Runtime 1.32's kernel takes 1.7 ns per element along the last axis (a scale per element of
    its inner loop), 2.3× the pair's time.  ``lent``: name → array or TensorProto of the references
    (the zero points no node reads any more leave it and ``model``)."""
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}

    def values(name):
        v = lent.get(name, inits.get(name))
        if isinstance(v, onnx.TensorProto) and v.data_location != onnx.TensorProto.EXTERNAL:
            return numpy_helper.to_array(v)
        return v if isinstance(v, np.ndarray) else None

    def fits(n):
        x, s = (inits.get(n.input[i]) if len(n.input) > i else None for i in (0, 1))
        if n.op_type != "DequantizeLinear" or x is None or s is None or len(x.dims) < 2 or len(s.dims) != 1 \
                or any(a.name != "axis" for a in n.attribute):   # block_size, output_dtype: left to the kernel
            return False
        if x.data_type != onnx.TensorProto.INT8 or s.data_type != onnx.TensorProto.FLOAT:
            return False
        axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
        zero = values(n.input[2]) if len(n.input) > 2 and n.input[2] else np.zeros(1)
        return axis % len(x.dims) == len(x.dims) - 1 and zero is not None and not zero.any()

    rewritten = [fits(n) for n in model.graph.node]
    if not any(rewritten):
        return
    taken = {x for n in model.graph.node for x in (n.name, *n.output)} | set(inits) | {i.name for i in model.graph.input}
    nodes, zeros = [], set()
    for n, rewrite in zip(model.graph.node, rewritten):
        if not rewrite:
            nodes.append(n)
            continue
        zeros.update(n.input[2:3])
        cast = fresh_name(f"{n.output[0]}__float", taken)
        nodes += [helper.make_node("Cast", [n.input[0]], [cast], name=fresh_name(f"{n.name}__cast", taken), to=onnx.TensorProto.FLOAT),
                  helper.make_node("Mul", [cast, n.input[1]], [n.output[0]], name=fresh_name(f"{n.name}__mul", taken))]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    used = _names_read(model.graph)
    for t in [t for t in model.graph.initializer if t.name in zeros - used]:   # the zero points the Muls left
        model.graph.initializer.remove(t)
        lent.pop(t.name, None)


def _names_read(graph: onnx.GraphProto) -> set:
    """The names ``graph``'s nodes, their subgraphs' nodes and its outputs read."""
    out = {o.name for o in graph.output}
    for n in graph.node:
        out.update(n.input)
        for g in subgraphs(n):
            out |= _names_read(g)
    return out


def _as_inputs(model: onnx.ModelProto, names: set) -> onnx.ModelProto:
    """``model`` (a skeleton :func:`session_for` owns) with the initializers ``names`` as graph inputs
    of their type and dims instead."""
    from onnx import helper

    refs = [t for t in model.graph.initializer if t.name in names]
    kept = [t for t in model.graph.initializer if t.name not in names]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    declared = {i.name for i in model.graph.input}
    model.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                             for t in refs if t.name not in declared)
    return model


def with_extrema(model: onnx.ModelProto, names, outputs=(), shapes=(), nan_safe: bool = False) -> tuple[onnx.ModelProto, dict]:
    """A copy of ``model`` that also outputs the tensors ``outputs``, for each tensor in ``shapes`` its
    shape (int64 vector, output ``{tensor: name}`` under the key ``"shapes"`` of the returned map) and,
    for each float tensor in ``names``, its min and max as FP32 scalars: returns it and
    ``{tensor: (min output, max output, check output or None)}``.  The tensors themselves never leave
    ONNX Runtime, so a pass over every float tensor of a model holds one sample's activations, not
    all of them at once.

    Plain ReduceMin/ReduceMax with a ReduceSum as the check: a sum is NaN when any value is (IEEE
    addition propagates NaN), while a SIMD min/max over NaN may drop real values; where the check is
    NaN the caller asks again with ``nan_safe``, which replaces NaN by ±inf first (NaN ignored; an
    all-NaN or empty tensor gives min +inf, max −inf) and has no check.  Without NaN both forms give
    the same numbers, and the plain one makes no full-size copies (docs/design.md has the timing).

    The copy only feeds a session and is never written, so it is built with onnx.helper rather than
    onnx-graphsurgeon (whose export would re-check and copy a model only ONNX Runtime reads)."""
    from onnx import TensorProto, helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    present = {o.name for o in m.graph.output}
    m.graph.output.extend(helper.make_empty_tensor_value_info(t) for t in dict.fromkeys(outputs) if t not in present)
    if not names and not shapes:
        return m, {}
    typed = {v.name: v.type.tensor_type.elem_type for v in
             list(m.graph.value_info) + list(m.graph.input) + list(m.graph.output)}
    taken = {o for n in m.graph.node for o in n.output} | set(typed) | {i.name for i in m.graph.initializer}
    pre = "qdq_extrema"
    while any(t.startswith(pre) for t in taken):
        pre += "_"
    if nan_safe:
        m.graph.initializer.extend([helper.make_tensor(f"{pre}_lo", TensorProto.FLOAT, [], [float("-inf")]),
                                    helper.make_tensor(f"{pre}_hi", TensorProto.FLOAT, [], [float("inf")])])
    out = {}
    for k, t in enumerate(dict.fromkeys(names)):
        x = t
        if typed.get(t) != TensorProto.FLOAT:   # FP64/FP16: compared in FP32 (beyond it is beyond FP16 too)
            x = f"{pre}{k}_f"
            m.graph.node.append(helper.make_node("Cast", [t], [x], to=TensorProto.FLOAT))
        lo, hi, check = f"{pre}{k}_min", f"{pre}{k}_max", None if nan_safe else f"{pre}{k}_sum"
        a = b = x
        if nan_safe:
            a, b = f"{pre}{k}_a", f"{pre}{k}_b"
            m.graph.node.extend([helper.make_node("IsNaN", [x], [f"{pre}{k}_nan"]),
                                 helper.make_node("Where", [f"{pre}{k}_nan", f"{pre}_hi", x], [a]),
                                 helper.make_node("Where", [f"{pre}{k}_nan", f"{pre}_lo", x], [b])])
        m.graph.node.extend([helper.make_node("ReduceMin", [a], [lo], keepdims=0),
                             helper.make_node("ReduceMax", [b], [hi], keepdims=0)])
        m.graph.node.extend([helper.make_node("ReduceSum", [x], [check], keepdims=0)] if check else [])
        m.graph.output.extend(helper.make_tensor_value_info(o, TensorProto.FLOAT, []) for o in (lo, hi, check) if o)
        out[t] = (lo, hi, check)
    if shapes:
        out["shapes"] = {t: f"{pre}_shape{k}" for k, t in enumerate(dict.fromkeys(shapes))}
        for t, o in out["shapes"].items():
            m.graph.node.append(helper.make_node("Shape", [t], [o]))
            m.graph.output.append(helper.make_tensor_value_info(o, TensorProto.INT64, [None]))
    return m, out


def run_session(sess, feed: dict, source) -> dict:
    """Run and return ``{output name: array}``; ONNX Runtime failures become one-line errors."""
    try:
        names = [o.name for o in sess.get_outputs()]
        fed = getattr(sess, "qdq_fed", None)
        return dict(zip(names, sess.run(names, feed | fed if fed else feed)))
    except QdqError:
        raise
    except Exception as e:
        msg = str(e).strip().splitlines()[0][:300]
        raise QdqError(f"{source}: ONNX Runtime failed on this sample: {msg}") from None
