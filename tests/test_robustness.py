"""Hostile and broken inputs on real models and real data: one-line errors (exit 2), nothing the
user owns changed, no partial files.  Each test is a row of docs/robustness.md."""
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from qdq.errors import QdqError
from qdq.modelio import _atomic, load_model, save_model, serialized_size
from qdq.pipeline import quantize

from clitools import one_line_error, run_qdq

DET = ["--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5", "--color", "BGR", "--size", "320x320"]


@pytest.fixture()
def det_copy(ppocr_det, tmp_path):
    p = tmp_path / "det.onnx"
    shutil.copy(ppocr_det.model, p)
    return p


def test_non_protobuf_and_checker_failures(ppocr_det, tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(os.urandom(4096))
    one_line_error(run_qdq("quantize", junk, "--calib", ppocr_det.calib, "-o", tmp_path / "o.onnx"), "junk.onnx")
    m = onnx.load(str(ppocr_det.model))
    next(n for n in m.graph.node if n.input).input[0] = "no_such_tensor"   # dangling: onnx.checker rejects it
    bad = tmp_path / "dangling.onnx"
    onnx.save(m, bad)
    one_line_error(run_qdq("quantize", bad, "--calib", ppocr_det.calib, "-o", tmp_path / "o.onnx"), "dangling.onnx", "onnx.checker")


def test_old_opset_is_upgraded(prepared):
    ds = prepared("ddddocr_det")                          # opset 11 as shipped
    assert onnx.load(str(ds.model)).opset_import[0].version == 11
    r = quantize(ds.model, ds.calib, preprocess=ds.preprocess, limit=4, quiet=True)
    assert r.model.opset_import[0].version == 17
    assert any(n.op_type == "DequantizeLinear" and n.attribute for n in r.model.graph.node)  # per-axis is legal now


def test_custom_op_onnxruntime_cannot_run(ppocr_det, tmp_path):
    m = onnx.load(str(ppocr_det.model))
    relu = next(n for n in m.graph.node if n.op_type == "Relu")
    relu.op_type, relu.domain = "FancyRelu", "com.example"
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    p = tmp_path / "custom.onnx"
    onnx.save(m, p)
    one_line_error(run_qdq("quantize", p, "--calib", ppocr_det.calib, "-o", tmp_path / "o.onnx", *DET), "FancyRelu")


def test_subgraphs_are_left_alone_and_reported(effnet, tmp_path):
    m = onnx.load(str(effnet.model))
    out = m.graph.output[0].name
    prod = next(n for n in m.graph.node if out in n.output)
    prod.output[0] = out + "_pre"
    branch = lambda name, k: helper.make_graph(  # noqa: E731
        [helper.make_node("Mul", [out + "_pre", f"{name}_k"], [f"{name}_y"])], name, [],
        [helper.make_tensor_value_info(f"{name}_y", onnx.TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array(k, np.float32), f"{name}_k")])
    m.graph.initializer.append(numpy_helper.from_array(np.array(True), "cond"))
    m.graph.node.append(helper.make_node("If", ["cond"], [out], name="scale_if",
                                         then_branch=branch("then", 1.0), else_branch=branch("else", 2.0)))
    p = tmp_path / "if.onnx"
    onnx.save(m, p)
    r = quantize(p, effnet.calib, preprocess=effnet.preprocess, limit=4, quiet=True)
    assert any("subgraphs" in w and "scale_if" in w for w in r.summary.warnings)
    if_node = next(n for n in r.model.graph.node if n.op_type == "If")
    assert all(n.op_type == "Mul" for a in if_node.attribute for n in a.g.node)


def test_layers_only_inside_control_flow_are_a_clear_error(tmp_path):
    """A model whose layers all sit in an If's branches (silero-vad's export) is named as such, with what to do."""
    branch = lambda name: helper.make_graph(  # noqa: E731
        [helper.make_node("MatMul", ["x", f"{name}_w"], [f"{name}_y"])], name, [],
        [helper.make_tensor_value_info(f"{name}_y", onnx.TensorProto.FLOAT, [1, 16])],
        [numpy_helper.from_array(np.ones((16, 16), np.float32), f"{name}_w")])
    g = helper.make_graph([helper.make_node("If", ["cond"], ["y"], name="by_rate", then_branch=branch("a"), else_branch=branch("b"))],
                          "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 16]),
                                helper.make_tensor_value_info("cond", onnx.TensorProto.BOOL, [])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 16])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "if.onnx")
    (tmp_path / "d").mkdir()
    np.savez(tmp_path / "d" / "0.npz", x=np.ones((1, 16), np.float32), cond=np.array(True))
    with pytest.raises(QdqError, match=r"its 2 weighted layers are inside the subgraphs of If nodes, which qdq does not "
                                       r"quantize: export the branch you run as a plain graph"):
        quantize(tmp_path / "if.onnx", tmp_path / "d", quiet=True)


def test_external_data_is_read_written_and_confined(effnet, tmp_path, monkeypatch):
    m = onnx.load(str(effnet.model))
    src = tmp_path / "ext" / "model.onnx"
    src.parent.mkdir()
    onnx.save_model(m, str(src), save_as_external_data=True, location="model.data", size_threshold=1024)
    loaded = load_model(src)
    assert loaded.ByteSize() > 10e6                       # weights came back from model.data
    out = tmp_path / "ext" / "q.onnx"
    r = quantize(src, effnet.calib, preprocess=effnet.preprocess, limit=2, quiet=True)
    monkeypatch.setattr("qdq.modelio.PROTOBUF_LIMIT", 1 << 20)   # the >2 GB path, exercised at 1 MB
    before = r.model.SerializeToString()
    save_model(r.model, out)
    assert r.model.SerializeToString() == before           # the model in memory is left as it was
    assert (tmp_path / "ext" / "q.onnx.data").stat().st_size > 1e6 and out.stat().st_size < 1e6
    back = {t.name: numpy_helper.to_array(t) for t in load_model(out).graph.initializer}
    assert all(np.array_equal(back[t.name], numpy_helper.to_array(t)) for t in r.model.graph.initializer)
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.data", "model.onnx", "q.onnx", "q.onnx.data"]
    # external data pointing outside the model's folder: refused before anything is read
    for loc in ("../secret.bin", "/etc/passwd"):
        m2 = onnx.load(str(src), load_external_data=False)
        for t in m2.graph.initializer:
            for e in t.external_data:
                if e.key == "location":
                    e.value = loc
        evil = tmp_path / "ext" / "evil.onnx"
        onnx.save(m2, evil)
        with pytest.raises(QdqError, match="outside the model's folder"):
            load_model(evil)


def test_bad_data_files(ppocr_det, tmp_path):
    model, out = ppocr_det.model, tmp_path / "o.onnx"
    np.savez(tmp_path / "rank.npz", x=np.zeros((64, 64), np.float32))        # rank 2 for a rank-4 input
    one_line_error(run_qdq("quantize", model, "--calib", tmp_path / "rank.npz", "-o", out), "rank.npz", "'x'", "rank")
    np.savez(tmp_path / "chan.npz", x=np.zeros((1, 4, 64, 64), np.float32))  # 4 channels, model takes 3
    one_line_error(run_qdq("quantize", model, "--calib", tmp_path / "chan.npz", "-o", out), "chan.npz", "dim 1 must be 3")
    np.savez(tmp_path / "int.npz", x=np.zeros((1, 3, 64, 64), np.int32))
    one_line_error(run_qdq("quantize", model, "--calib", tmp_path / "int.npz", "-o", out), "int.npz", "dtype")
    inf = np.zeros((1, 3, 64, 64), np.float32)
    inf[0, 0, 0, 0] = np.inf
    np.savez(tmp_path / "inf.npz", x=inf)
    one_line_error(run_qdq("quantize", model, "--calib", tmp_path / "inf.npz", "-o", out), "inf.npz", "Inf")
    assert not out.exists()


def test_fewer_samples_than_a_batch(ppocr_det, tmp_path):
    np.savez(tmp_path / "three.npz", x=np.random.default_rng(0).standard_normal((3, 3, 64, 64)).astype(np.float32))
    r = run_qdq("quantize", ppocr_det.model, "--calib", tmp_path / "three.npz", "-o", tmp_path / "o.onnx",
            "--batch-size", "8", "-q")
    assert r.returncode == 0, r.stderr
    assert onnx.load(str(tmp_path / "o.onnx")).metadata_props


def test_decompression_bomb_is_refused(ppocr_det, tmp_path):
    from PIL import Image

    folder = tmp_path / "bomb"
    folder.mkdir()
    Image.new("1", (20000, 12000)).save(folder / "bomb.png")   # 240 Mpixel, a few kB on disk
    assert (folder / "bomb.png").stat().st_size < 1e6
    one_line_error(run_qdq("quantize", ppocr_det.model, "--calib", folder, "-o", tmp_path / "o.onnx", *DET),
             "bomb.png", "too large")


def test_huge_ranges_file_is_refused(effnet, tmp_path):
    f = tmp_path / "huge.json"
    with open(f, "wb") as fh:
        fh.truncate(65 * 2 ** 20)
    one_line_error(run_qdq("quantize", effnet.model, "--ranges", f, "-o", tmp_path / "o.onnx"), "huge.json", "larger than")


def test_output_folder_problems(ppocr_det, tmp_path):
    one_line_error(run_qdq("quantize", ppocr_det.model, "--calib", ppocr_det.calib, "-o", tmp_path / "missing" / "o.onnx", *DET),
             "does not exist")
    # every output is checked before any work: the data is never read (its path does not even exist)
    one_line_error(run_qdq("quantize", ppocr_det.model, "--calib", tmp_path / "no-data", "-o", tmp_path / "o.onnx",
                           "--ranges-out", tmp_path / "missing" / "r.json"), "missing", "does not exist")
    one_line_error(run_qdq("compare", ppocr_det.model, ppocr_det.model, "--data", tmp_path / "no-data",
                           "--report", tmp_path / "missing" / "r.html"), "missing", "does not exist")
    one_line_error(run_qdq("quantize", ppocr_det.model, "--calib", ppocr_det.calib, "-o", "/proc/qdq-test.onnx", "--limit", "2",
                 *DET), "/proc/qdq-test.onnx")


def test_interrupted_write_leaves_nothing(tmp_path):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"previous version")

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half a model")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _atomic(target, tmp_path, write)
    assert target.read_bytes() == b"previous version"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_a_saved_model_is_its_serialization_byte_for_byte_written_a_weight_at_a_time(tmp_path):
    """save_model streams the initializers (no bytes object of the whole model); the file is what
    SerializeToString gives, every kind of field around the graph and inside it included."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("W", (300, 200)), ("b", (200,)), ("big", (128, 1024)))]   # sizes of 1- to 3-byte varints
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["m"], name="mm"),
                           helper.make_node("Add", ["m", "b"], ["y"], name="add")], "g",
                          [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 300])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 200])], inits,
                          doc_string="graph doc", value_info=[helper.make_tensor_value_info("m", onnx.TensorProto.FLOAT, [1, 200])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], doc_string="model doc", producer_name="t")
    helper.set_model_props(m, {"k": "v"})
    save_model(m, tmp_path / "m.onnx")
    assert (tmp_path / "m.onnx").read_bytes() == m.SerializeToString()
    assert serialized_size(m) == m.ByteSize()          # sized without encoding a weight


def test_ctrl_c_mid_calibration(prepared, tmp_path):
    ds = prepared("frames")                                     # 256 frames: long enough to interrupt
    out = tmp_path / "o.onnx"
    proc = subprocess.Popen([sys.executable, "-m", "qdq.cli", "quantize", str(ds.model), "--calib", str(ds.calib),
                             "-o", str(out), "--scale", "1", "--mean", "127,127,127", "--std", "128,128,128", "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # a parent that ignores SIGINT (a backgrounded shell) passes that on: restore it
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(6)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_debug_shows_the_traceback(ppocr_det, tmp_path):
    r = run_qdq("--debug", "quantize", ppocr_det.model, "--calib", tmp_path / "nope", "-o", tmp_path / "o.onnx")
    assert r.returncode != 0 and "Traceback" in r.stderr


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_damaged_external_data_is_one_line_naming_the_file(tmp_path, damage):
    """A model whose external data file is cut short or gone: one line naming the file and the tensor
    (exit 2), nothing written, the user's folder byte for byte as it was."""
    rng = np.random.default_rng(0)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], "g",
                          [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 64])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 64])],
                          [numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "W")])
    folder = tmp_path / "m"
    folder.mkdir()
    onnx.save_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(folder / "m.onnx"),
                    save_as_external_data=True, location="m.data", size_threshold=0)
    data = folder / "m.data"
    if damage == "truncated":
        data.write_bytes(data.read_bytes()[:1000])
    else:
        data.unlink()
    (tmp_path / "d").mkdir()
    np.savez(tmp_path / "d" / "0.npz", x=rng.standard_normal((1, 64)).astype(np.float32))
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    r = run_qdq("quantize", folder / "m.onnx", "--calib", tmp_path / "d", "-o", tmp_path / "q.onnx")
    one_line_error(r, "m.data", "'W'")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before and not (tmp_path / "q.onnx").exists()
