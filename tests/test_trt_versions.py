"""qdq's TensorRT code path for each version (8.5 on JetPack 5.1, 8.6, 10.x, 11.x), run against
stand-in ``tensorrt`` modules (tests/trt_standins.py) that enforce each version's contract on top of
TensorRT-RTX's real parser and builder."""
import pytest

from qdq.pipeline import quantize
from qdq.cli.trt import engines_on
from qdq.trt.backend import Backend, check_model
from trt_standins import make

VERSIONS = [("8.5.2", "trt8"), ("8.6.1", "trt8"), ("10.3.0", "trt10"), ("11.0.0", "trt11")]
SHAPES = {"x": (1, 3, 320, 320)}


@pytest.fixture(scope="module")
def det(ppocr_det):
    return {t: quantize(ppocr_det.model, ppocr_det.calib, preprocess=ppocr_det.preprocess, target=t, limit=6,
                        quiet=True) for t in ("trt8", "trt10", "trt11")}


def _backend(version):
    mod = make(version)
    return Backend("tensorrt", mod, version), mod


@pytest.mark.parametrize("version,target", VERSIONS)
def test_each_version_parses_and_builds_its_target(det, version, target):
    b, mod = _backend(version)
    res = check_model(det[target].model, SHAPES, backend=b)
    assert res.ok, res.errors
    major = int(version.split(".")[0])
    flags, builder_flags = mod.calls["flags"][-1], mod.calls["builder_flags"]
    if major == 8:
        assert flags == 1 << mod.NetworkDefinitionCreationFlag.EXPLICIT_BATCH
    elif major == 10:
        assert flags == 0                                  # always explicit; the deprecated flag is not passed
    else:
        assert flags == 1 << mod.NetworkDefinitionCreationFlag.STRONGLY_TYPED
    if major < 11:                                         # weakly typed: INT8 engine = Q/DQ + INT8 and FP16 flags
        assert sorted(builder_flags) == sorted([mod.BuilderFlag.FP16, mod.BuilderFlag.INT8])
    else:
        assert builder_flags == [] and not hasattr(mod.BuilderFlag, "FP16")


def test_standins_enforce_what_qdq_used_to_get_wrong(det):
    class ImplicitBatch(Backend):          # qdq before this release: builder.create_network(0) everywhere
        def network_flags(self):
            return 0

    mod = make("8.5.2")
    res = check_model(det["trt8"].model, SHAPES, backend=ImplicitBatch("tensorrt", mod, "8.5.2"))
    assert not res.parsed and "explicit batch" in res.errors[0]
    # 8.5 takes opset 13-17 and FP32 scales: the strongly typed trt11 file is refused, and said why
    b, _ = _backend("8.5.2")
    res = check_model(det["trt11"].model, SHAPES, backend=b)
    assert not res.parsed and "opset 19" in res.errors[0]
    # 10.x takes it (opset 19, FP16 scales), 8.6 refuses nothing of the trt8 file
    assert check_model(det["trt11"].model, SHAPES, backend=_backend("10.3.0")[0]).ok
    # a node TensorRT cannot import is named through the 8.5 API (node index only) as through 8.6+ (names)
    m = det["trt8"].model
    m2 = type(m)()
    m2.CopyFrom(m)
    node = next(n for n in m2.graph.node if n.op_type == "Relu")
    node.op_type = "LayerNormalization"
    res = check_model(m2, SHAPES, backend=_backend("8.5.2")[0])
    assert not res.parsed and node.name in res.errors[0]


@pytest.mark.parametrize("version", ["8.6.1", "11.0.0"])
def test_trt_build_per_api(prepared, tmp_path, version):
    """Weakly typed: FP16 engine from the FP32 file with the FP16 flag.  Strongly typed: the FP16
    casts are written next to the engines and built as typed."""
    from qdq.calib.data import Dataset, model_inputs
    from qdq.modelio import load_model, save_model

    ds = prepared("effnet")
    q = quantize(ds.model, ds.calib, preprocess=ds.preprocess, limit=8, quiet=True,
                 target="trt11" if version.startswith("11") else "trt10")
    qpath = save_model(q.model, tmp_path / "int8.onnx")
    data = Dataset(ds.val, model_inputs(load_model(ds.model)), ds.preprocess, limit=2)
    b, mod = _backend(version)
    eng = engines_on(ds.model, qpath, data, tmp_path / "engines", backend=b, quiet=True)
    assert eng.fp16.stat().st_size > 1e6 and eng.int8.stat().st_size > 1e6
    cast_files = [(tmp_path / "engines" / f).exists() for f in ("fp16.onnx", "int8_fp16.onnx")]
    if version.startswith("11"):
        assert all(cast_files) and mod.calls["builder_flags"] == []
    else:
        assert not any(cast_files) and mod.BuilderFlag.FP16 in mod.calls["builder_flags"]
