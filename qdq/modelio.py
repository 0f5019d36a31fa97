"""Loading and saving ONNX models safely: external data confined to the model's folder,
atomic writes (temp file + rename), opset conversion."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import onnx
from onnx import version_converter

from .errors import QdqError

PROTOBUF_LIMIT = 2 ** 31 - 1  # bytes: larger models cannot be one serialised protobuf
SKELETON_BYTES = 1 << 16      # initializers above this many bytes are left out of a model's skeleton
STORE_LOCATION = "qdq-weight-store"   # external data of this location lives in a run's weight store only


def too_large(model: onnx.ModelProto) -> bool:
    """Whether ``model`` is beyond :data:`PROTOBUF_LIMIT` (read at call time: tests lower it to run the
    external-data paths on small models)."""
    return serialized_size(model) > PROTOBUF_LIMIT


def serialized_size(model: onnx.ModelProto) -> int:
    """``model.ByteSize()``, computed without serializing a weight (upb's ByteSize encodes the whole
    message: a copy of every weight, and beyond 2 GiB an error)."""
    head = without_initializers(model)
    bare = head.graph.ByteSize()
    inner = bare + sum(_field_size(_tensor_size(t)) for t in model.graph.initializer)
    return head.ByteSize() - _field_size(bare) + _field_size(inner)


def _field_size(n: int) -> int:
    """Bytes of a length-delimited field of ``n`` bytes (a field number below 16: one tag byte)."""
    return 1 + len(_varint(n)) + n


def _tensor_size(t: onnx.TensorProto) -> int:
    """``t.ByteSize()``; for raw data from its dims (upb's ByteSize would encode the bytes)."""
    if not t.HasField("raw_data"):
        return t.ByteSize()
    rest = onnx.TensorProto()
    _copy_fields(t, rest, lambda f: f.name != "raw_data")
    return rest.ByteSize() + _field_size(values_bytes(t))


def write_external(model: onnx.ModelProto, path: Path, data_name: str) -> None:
    """``model`` to ``path`` with the bytes of its initializers above 1 KiB in ``data_name`` beside it
    (each at a 4 KiB-aligned offset, so ONNX Runtime can map it), leaving ``model`` untouched: a header
    model of external references is written, one tensor's bytes at a time.  (onnx's own writer moves
    the bytes out of ``model`` and reading them back grows the message's arena by a copy each time.)"""
    from onnx import numpy_helper

    header = without_initializers(model)
    with open(path.with_name(data_name), "wb") as data:
        for t in model.graph.initializer:
            if values_bytes(t) <= 1024 or t.data_location == onnx.TensorProto.EXTERNAL:
                header.graph.initializer.append(t)
                continue
            raw = t.raw_data if t.HasField("raw_data") else numpy_helper.to_array(t).tobytes()
            data.write(b"\0" * (-data.tell() % 4096))
            ref = header.graph.initializer.add(name=t.name, data_type=t.data_type, dims=t.dims,
                                               data_location=onnx.TensorProto.EXTERNAL)
            for k, v in (("location", data_name), ("offset", str(data.tell())), ("length", str(len(raw)))):
                ref.external_data.add(key=k, value=v)
            data.write(raw)
            del raw
    onnx.save_model(header, str(path))


def without_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with every field but its initializers (their bytes are not copied)."""
    m = onnx.ModelProto()
    _copy_fields(model, m, lambda f: f.name != "graph")
    _copy_fields(model.graph, m.graph, lambda f: f.name != "initializer")
    return m


def _copy_fields(src, dst, keep) -> None:
    """Every set field of protobuf message ``src`` for which ``keep(field descriptor)`` into ``dst``
    (a field left out is never read: reading ``raw_data`` copies it)."""
    for field in src.DESCRIPTOR.fields:
        if not keep(field):
            continue
        repeated = field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED
        if repeated:   # protobuf 7 has only is_repeated, earlier ones only label
            if len(getattr(src, field.name)):
                getattr(dst, field.name).extend(getattr(src, field.name))
        elif not src.HasField(field.name):
            continue
        elif field.message_type:
            getattr(dst, field.name).CopyFrom(getattr(src, field.name))
        else:
            setattr(dst, field.name, getattr(src, field.name))


def write_streamed(model: onnx.ModelProto, f) -> None:
    """``model.SerializeToString()`` written to the binary file ``f``, byte for byte, without it
    ever being one bytes object (a copy of every weight): a message serializes as its fields in
    field-number order, so the model's fields before its graph, the graph's before its
    initializers, each initializer, and the rest are serialized apart and written in that order."""
    graph = model.graph
    parts = [onnx.ModelProto(), onnx.GraphProto(), onnx.GraphProto(), onnx.ModelProto()]
    _copy_fields(model, parts[0], lambda fd: fd.number < 7)
    _copy_fields(graph, parts[1], lambda fd: fd.number < 5)
    _copy_fields(graph, parts[2], lambda fd: fd.number > 5)
    _copy_fields(model, parts[3], lambda fd: fd.number > 7)
    sizes = [_tensor_size(t) for t in graph.initializer]
    length = parts[1].ByteSize() + parts[2].ByteSize() + sum(_field_size(n) for n in sizes)
    f.write(parts[0].SerializeToString())
    if model.HasField("graph"):
        f.write(b"\x3a" + _varint(length))   # field 7 (graph), length-delimited
        f.write(parts[1].SerializeToString())
        for t, n in zip(graph.initializer, sizes):
            f.write(b"\x2a" + _varint(n))     # field 5 (initializer), length-delimited
            f.write(t.SerializeToString())
        f.write(parts[2].SerializeToString())
    f.write(parts[3].SerializeToString())


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def values_bytes(t: onnx.TensorProto) -> int:
    """Bytes of an initializer's values from its dims and type (reading ``raw_data`` would copy it)."""
    n = 1
    for d in t.dims:
        n *= d
    try:
        return n * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    except Exception:   # strings and types numpy lacks: counted large
        return n * 8


def load_model(path, external: bool = True) -> onnx.ModelProto:
    """Load an ONNX model; its external data must lie inside the model's own folder.  With
    ``external=False`` its initializers' data stays in its files (references ONNX Runtime can map, see
    :func:`qdq.calib.session.session_for`'s ``data_folder``, or :func:`qdq.calib.session.hold` reads)."""
    path = Path(path)
    if not path.is_file():
        raise QdqError(f"{path}: no such model file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # truncated file, not protobuf
        raise QdqError(f"{path}: not a readable ONNX model ({type(e).__name__}); re-export it") from None
    if not model.graph.node:
        raise QdqError(f"{path}: the ONNX graph has no nodes; is this an ONNX model?")
    base = path.parent.resolve()
    for t in _external_tensors(model):
        loc = next((e.value for e in t.external_data if e.key == "location"), "")
        target = (base / loc).resolve()
        if os.path.isabs(loc) or base not in target.parents:
            raise QdqError(f"{path}: tensor {t.name!r} points to external data {loc!r} outside the "
                           "model's folder; refusing to read it (move the data next to the model)")
        if not target.is_file():
            raise QdqError(f"{path}: external data file {loc!r} of tensor {t.name!r} is missing")
    if external and has_external_data(model):
        onnx.load_external_data_for_model(model, str(base))
    for t in _external_tensors(model) if not external else ():
        if t not in model.graph.initializer:   # a Constant node's: read in (only initializers stay references)
            read_in(t, base)
    try:
        check_onnx(model)
    except Exception as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise QdqError(f"{path}: fails onnx.checker ({first}); fix or re-export the model") from None
    name_nodes(model)
    return model


def read_in(t: onnx.TensorProto, folder) -> None:
    """Tensor ``t``'s external data (under ``folder``) read into it; it references no file after."""
    onnx.external_data_helper.load_external_data_for_tensor(t, str(folder))
    t.data_location = onnx.TensorProto.DEFAULT
    del t.external_data[:]


def in_store(t: onnx.TensorProto) -> bool:
    """Whether ``t`` references a run's weight store (:data:`STORE_LOCATION`), not a file."""
    return any(e.key == "location" and e.value.startswith(STORE_LOCATION) for e in t.external_data)


def has_external_data(model: onnx.ModelProto) -> bool:
    """Whether a tensor of ``model`` references data outside it."""
    return any(True for _ in _external_tensors(model))


def _external_tensors(model):
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            yield t
    for n in model.graph.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_location == onnx.TensorProto.EXTERNAL:
                yield a.t


def metadata(model: onnx.ModelProto) -> dict:
    """The model's ``metadata_props`` as a dict (key → value)."""
    return {p.key: p.value for p in model.metadata_props}


def subgraphs(node: onnx.NodeProto) -> list:
    """The graphs ``node`` holds (If branches, Loop and Scan bodies): its GRAPH and GRAPHS attributes."""
    return [g for a in node.attribute for g in ([a.g] if a.type == a.GRAPH else a.graphs)]


def fresh_name(base: str, taken: set) -> str:
    """``base``, or ``base_1``, ``base_2`` … whichever is not in ``taken`` (then added to it)."""
    out, k = base, 1
    while out in taken:
        out, k = f"{base}_{k}", k + 1
    taken.add(out)
    return out


def unique_names(nodes) -> list[str]:
    """One unique, readable name per node, the only naming scheme in qdq: a node keeps its own name
    when no earlier node has it; an unnamed node is called ``<op>_<position>``, a repeated name
    becomes ``<name>_1``, ``<name>_2`` … (never a name another node already has).  ``nodes`` are
    ``(name, op_type)`` pairs in graph order."""
    taken = {name for name, _ in nodes if name}
    seen, out = set(), []
    for pos, (name, op) in enumerate(nodes):
        new = name if name and name not in seen else fresh_name(name or f"{op}_{pos}", taken)
        seen.add(new)
        out.append(new)
    return out


def name_nodes(model: onnx.ModelProto) -> int:
    """Name every node of ``model`` by :func:`unique_names`, in place; returns how many repeated
    names were changed (unnamed nodes are not counted)."""
    nodes = model.graph.node
    names = unique_names([(n.name, n.op_type) for n in nodes])
    renamed = sum(1 for n, new in zip(nodes, names) if n.name and n.name != new)
    for n, new in zip(nodes, names):
        n.name = new
    return renamed


def opset_of(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` without the bytes of its large initializers (above :data:`SKELETON_BYTES`): each becomes
    a graph input of the same type and shape, which is all inference needs, as does one whose data
    lies in a file; small ones (shape vectors, axes, scales) keep their values for data propagation.
    Nodes keep their positions."""
    m = without_initializers(model)
    src, g = model.graph, m.graph
    declared = {i.name for i in src.input}
    for t in src.initializer:
        if values_bytes(t) <= SKELETON_BYTES and t.data_location != onnx.TensorProto.EXTERNAL:
            g.initializer.append(t)
        elif t.name not in declared:
            g.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return m


def check_onnx(model: onnx.ModelProto, full_check: bool = False) -> None:
    """``onnx.checker.check_model`` (``full_check``: then strict type and shape inference) run on the
    skeleton of ``model`` (:func:`skeleton`), and each large initializer's data checked against its
    dims here: the checker takes a model serialized, so a full model would be copied twice more
    (serialized, then parsed) and one over 2 GB not at all.  Raises what the checker raises."""
    for t in model.graph.initializer:
        if (values_bytes(t) > SKELETON_BYTES and t.HasField("raw_data")
                and t.data_type not in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED)):
            got = len(t.raw_data)
            if got != values_bytes(t):
                raise ValueError(f"initializer {t.name!r} holds {got} bytes for dims {list(t.dims)}")
    onnx.checker.check_model(skeleton(model), full_check=full_check)


def convert_opset(model: onnx.ModelProto, target: int, source: str = "model") -> onnx.ModelProto:
    """The model at opset ``target`` of the default domain (no-op when already there)."""
    if opset_of(model) == target:
        return model
    bare = skeleton(model)   # the converter serialises: only the graph goes through it, not the weights
    try:
        converted = version_converter.convert_version(bare, target)
    except Exception as e:
        raise QdqError(f"{source}: cannot convert from opset {opset_of(model)} to {target} "
                       f"({str(e).splitlines()[0][:200]}); re-export the model at opset {target}") from None
    left_out = {i.name for i in bare.graph.input} - {i.name for i in model.graph.input}
    if left_out:
        inputs = [i for i in converted.graph.input if i.name not in left_out]
        del converted.graph.input[:]
        converted.graph.input.extend(inputs)
        converted.graph.initializer.extend(t for t in model.graph.initializer if t.name in left_out)
    name_nodes(converted)
    return converted


def check_output(path, overwrite: bool = False, protect=()) -> Path:
    """Raise the one-line error writing ``path`` would meet (missing or read-only folder, an existing
    file without ``overwrite``, an input in ``protect``): called before any long work.  Returns the folder."""
    return _check_target(Path(path), overwrite, protect)


def _check_target(path: Path, overwrite: bool, protect=()) -> Path:
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise QdqError(f"{path}: folder {folder} does not exist; create it first")
    for p in protect:
        if Path(p).exists() and path.exists() and os.path.samefile(p, path):
            raise QdqError(f"{path}: is the input model; choose another output path")
    if path.exists() and not overwrite:
        raise QdqError(f"{path}: already exists; pass --overwrite or choose another output path")
    if not os.access(folder, os.W_OK):
        raise QdqError(f"{path}: folder {folder} is not writable")
    return folder


def _atomic(path: Path, folder: Path, write) -> Path:
    """Call ``write(tmp)`` on a temp file beside ``path``, then rename it over ``path``.  On any
    failure or interruption the temp file is removed and ``path`` is left as it was."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as e:
        raise QdqError(f"{path}: cannot write in {folder} ({e.strerror})") from None
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a written model should read like any file
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise QdqError(f"{path}: cannot write ({e.strerror or e}); nothing was changed") from None
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path, text: str, overwrite: bool = True) -> Path:
    """Write ``text`` to ``path`` through a temp file and a rename."""
    path = Path(path)
    folder = _check_target(path, overwrite)

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    return _atomic(path, folder, write)


def save_model(model: onnx.ModelProto, path, overwrite: bool = False, protect=()) -> Path:
    """Write ``model`` to ``path`` atomically (temp file in the same folder, then rename); ``model``
    is left as it was.

    Models beyond the protobuf limit (2 GB) are written with their tensors in ``<name>.data`` beside
    the file; the data file is renamed into place first, then the model.  ``protect`` lists paths (e.g.
    the input model) that must never be replaced.
    """
    path = Path(path)
    stray = next((t.name for t in _external_tensors(model) if in_store(t)), None)
    if stray is not None:
        raise QdqError(f"internal error: tensor {stray!r} has no data outside its run; nothing was written, "
                       "please report it")
    folder = _check_target(path, overwrite, protect)
    if not too_large(model):
        return _atomic(path, folder, lambda tmp: _write_to(tmp, model))
    data = path.with_name(path.name + ".data")
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=folder) as stage:
        staged = Path(stage) / path.name
        try:
            write_external(model, staged, data.name)
            os.replace(Path(stage) / data.name, data)
            os.replace(staged, path)
        except OSError as e:
            raise QdqError(f"{path}: cannot write ({e.strerror or e}); nothing was changed") from None
    return path


def _write_to(path, model: onnx.ModelProto) -> None:
    with open(path, "wb") as f:
        write_streamed(model, f)


def read_json(path, hint: str = "") -> object:
    """The parsed JSON file at ``path``; a missing or malformed file is one :class:`QdqError` line
    (``hint`` appended to say what the file should be)."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise QdqError(f"{path}: no such file") from None
    except (OSError, ValueError) as e:
        raise QdqError(f"{path}: not JSON ({str(e)[:100]})" + (f"; {hint}" if hint else "")) from None
