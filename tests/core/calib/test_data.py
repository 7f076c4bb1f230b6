"""Calibration data sources: each DATA form, the rank rules, batching and the user-facing errors."""
from __future__ import annotations

import builtins
import os
from dataclasses import dataclass

import numpy as np
import pytest

from qinspect.core.calib.data import DataSource, check_feed, open_data
from qinspect.core.errors import DataError


@dataclass
class Inp:
    name: str
    dtype: np.dtype
    shape: tuple


def inp(name, dtype, shape):
    return Inp(name, np.dtype(dtype), tuple(shape))


X = inp("x", np.float32, ("N", 3, 4, 4))
X_FIXED = inp("x", np.float32, (1, 3, 4, 4))


def feeds(source, batch_size=1):
    return list(source.batches(batch_size))


# .npy ---------------------------------------------------------------------------------------------

def test_npy_stack_rank_r_plus_1(tmp_path):
    data = np.random.default_rng(0).standard_normal((5, 1, 3, 4, 4)).astype(np.float32)
    np.save(tmp_path / "d.npy", data)
    src = open_data(str(tmp_path / "d.npy"), [X])
    assert len(src) == 5
    s = src.sample(2)
    assert set(s) == {"x"} and s["x"].shape == (1, 3, 4, 4) and s["x"].dtype == np.float32
    np.testing.assert_array_equal(s["x"], data[2])
    assert type(s["x"]) is np.ndarray  # a copy, not a memmap view of the file


def test_npy_rank_r_split_along_batch_axis(tmp_path):
    data = np.arange(6 * 3 * 4 * 4, dtype=np.float32).reshape(6, 3, 4, 4)
    np.save(tmp_path / "d.npy", data)
    src = open_data(str(tmp_path / "d.npy"), [X])
    assert len(src) == 6
    np.testing.assert_array_equal(src.sample(4)["x"], data[4:5])


def test_npy_rank_r_chunks_of_a_static_batch(tmp_path):
    data = np.zeros((8, 3), np.float32)
    np.save(tmp_path / "d.npy", data)
    src = open_data(str(tmp_path / "d.npy"), [inp("x", np.float32, (4, 3))])
    assert len(src) == 2 and src.sample(1)["x"].shape == (4, 3)


def test_npy_float64_is_converted_and_samples_caps(tmp_path):
    np.save(tmp_path / "d.npy", np.ones((10, 1, 3, 4, 4)))  # float64
    src = open_data(str(tmp_path / "d.npy"), [X], samples=3)
    assert len(src) == 3
    assert [f["x"].dtype for f in feeds(src)] == [np.float32] * 3


def test_scalar_input_from_1d_stack(tmp_path):
    np.save(tmp_path / "s.npy", np.array([1.5, 2.5, 3.5], np.float32))
    src = open_data(str(tmp_path / "s.npy"), [inp("t", np.float32, ())])
    assert len(src) == 3
    got = feeds(src, batch_size=8)  # no batch axis: one sample per feed whatever batch_size says
    assert [f["t"].shape for f in got] == [()] * 3
    assert [float(f["t"]) for f in got] == [1.5, 2.5, 3.5]


def test_npy_needs_a_one_input_model(tmp_path):
    np.save(tmp_path / "d.npy", np.zeros((2, 3), np.float32))
    with pytest.raises(DataError, match="one-input model.*a, b"):
        open_data(str(tmp_path / "d.npy"), [inp("a", np.float32, (3,)), inp("b", np.float32, (3,))])


# batching -----------------------------------------------------------------------------------------

def test_batches_concatenate_when_first_dim_is_dynamic(tmp_path):
    np.save(tmp_path / "d.npy", np.zeros((7, 3, 4, 4), np.float32))
    got = feeds(open_data(str(tmp_path / "d.npy"), [X]), batch_size=3)
    assert [f["x"].shape[0] for f in got] == [3, 3, 1]


def test_batches_one_by_one_when_first_dim_is_fixed(tmp_path):
    np.save(tmp_path / "d.npy", np.zeros((7, 3, 4, 4), np.float32))
    got = feeds(open_data(str(tmp_path / "d.npy"), [X_FIXED]), batch_size=3)
    assert [f["x"].shape for f in got] == [(1, 3, 4, 4)] * 7


def test_batches_split_when_other_dynamic_dims_differ(tmp_path):
    seq = inp("ids", np.int64, ("N", "T"))
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    np.save(a, np.zeros((1, 5), np.int64))
    np.save(b, np.zeros((1, 6), np.int64))
    (tmp_path / "l.txt").write_text(f"{a}\n{a}\n{b}\n")
    got = feeds(open_data(str(tmp_path / "l.txt"), [seq]), batch_size=4)
    assert [f["ids"].shape for f in got] == [(2, 5), (1, 6)]


def test_bad_batch_size(tmp_path):
    src = open_data("random:2", [X])
    with pytest.raises(DataError, match="batch size"):
        src.batches(0)


# .npz ---------------------------------------------------------------------------------------------

TWO = [inp("a", np.float32, ("N", 3)), inp("b", np.int64, ("N", 2))]


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_npz_two_inputs_with_labels(tmp_path, save):
    a = np.random.default_rng(1).standard_normal((4, 3)).astype(np.float32)
    b = np.arange(8, dtype=np.int64).reshape(4, 1, 2)  # a stack (rank r+1)
    labels = np.array([0, 1, 2, 3])
    save(tmp_path / "d.npz", a=a, b=b, labels=labels)
    with open_data(str(tmp_path / "d.npz"), TWO, samples=3) as src:
        assert len(src) == 3
        np.testing.assert_array_equal(src.labels, labels[:3])
        for i in (2, 0, 1):  # random access, also backwards in a compressed stream
            s = src.sample(i)
            np.testing.assert_array_equal(s["a"], a[i:i + 1])
            np.testing.assert_array_equal(s["b"], b[i])
        got = feeds(src, batch_size=2)
    assert [f["a"].shape for f in got] == [(2, 3), (1, 3)]
    np.testing.assert_array_equal(got[0]["b"], b[:2, 0])


def test_npz_without_labels_and_fortran_order(tmp_path):
    a = np.asfortranarray(np.arange(12, dtype=np.float32).reshape(4, 3))
    np.savez(tmp_path / "d.npz", a=a, b=np.zeros((4, 2), np.int64))
    src = open_data(str(tmp_path / "d.npz"), TWO)
    assert src.labels is None and len(src) == 4
    np.testing.assert_array_equal(src.sample(3)["a"], a[3:4])


def test_npz_missing_and_extra_keys(tmp_path):
    np.savez(tmp_path / "d.npz", a=np.zeros((2, 3), np.float32), c=np.zeros(2))
    with pytest.raises(DataError, match=r"d\.npz.*missing b.*unexpected c"):
        open_data(str(tmp_path / "d.npz"), TWO)


def test_npz_sample_counts_differ(tmp_path):
    np.savez(tmp_path / "d.npz", a=np.zeros((2, 3), np.float32), b=np.zeros((3, 2), np.int64))
    with pytest.raises(DataError, match="different sample counts.*a: 2, b: 3"):
        open_data(str(tmp_path / "d.npz"), TWO)


def test_npz_wrong_shape_names_the_array(tmp_path):
    np.savez(tmp_path / "d.npz", a=np.zeros((2, 4), np.float32), b=np.zeros((2, 2), np.int64))
    with pytest.raises(DataError, match=r"d\.npz\['a'\].*input 'a' expects float32 of shape \(N, 3\)"):
        open_data(str(tmp_path / "d.npz"), TWO)


# input lists --------------------------------------------------------------------------------------

def test_input_list_with_name_pairs_and_comments(tmp_path):
    (tmp_path / "raw").mkdir()
    for i in range(3):
        np.full((1, 3), i, np.float32).tofile(tmp_path / "raw" / f"a{i}.raw")
        np.full((1, 2), i, np.int64).tofile(tmp_path / "raw" / f"b{i}.raw")
    lines = ["#a b", "%y_out", ""] + [f"b:=raw/b{i}.raw a:=raw/a{i}.raw" for i in range(3)] + ["# end"]
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    src = open_data(str(tmp_path / "list.txt"), TWO)
    assert len(src) == 3
    # QNN's output lines: '#' names layers, '%' tensors (not file paths)
    assert src.output_layers == ["a", "b", "end"] and src.output_tensors == ["y_out"]
    s = src.sample(2)
    assert s["a"].dtype == np.float32 and s["b"].dtype == np.int64
    np.testing.assert_array_equal(s["a"], np.full((1, 3), 2, np.float32))
    np.testing.assert_array_equal(s["b"], np.full((1, 2), 2, np.int64))
    assert [f["a"].shape for f in feeds(src, batch_size=2)] == [(2, 3), (1, 3)]


def test_input_list_single_paths_absolute_and_relative(tmp_path):
    np.arange(48, dtype=np.float32).tofile(tmp_path / "s0.raw")
    np.ones(48, np.float32).tofile(tmp_path / "s1.raw")
    (tmp_path / "list.txt").write_text(f"s0.raw\n{tmp_path / 's1.raw'}\n")
    src = open_data(str(tmp_path / "list.txt"), [X])
    assert len(src) == 2
    np.testing.assert_array_equal(src.sample(0)["x"], np.arange(48, dtype=np.float32).reshape(1, 3, 4, 4))


def test_input_list_float16_input_reads_float32_raw(tmp_path):
    np.ones(3, np.float32).tofile(tmp_path / "s.raw")
    (tmp_path / "list.txt").write_text("s.raw\n")
    s = open_data(str(tmp_path / "list.txt"), [inp("h", np.float16, (3,))]).sample(0)
    assert s["h"].dtype == np.float16


def test_input_list_bad_raw_size(tmp_path):
    np.zeros(47, np.float32).tofile(tmp_path / "s0.raw")
    (tmp_path / "list.txt").write_text("s0.raw\n")
    with pytest.raises(DataError, match=r"s0\.raw: input 'x' expects 48 float32 values"):
        open_data(str(tmp_path / "list.txt"), [X])


def test_input_list_missing_file_and_missing_input(tmp_path):
    (tmp_path / "list.txt").write_text("nope.raw\n")
    with pytest.raises(DataError, match=r"list\.txt:1: file .*nope\.raw for input 'x' does not exist"):
        open_data(str(tmp_path / "list.txt"), [X])
    np.zeros(3, np.float32).tofile(tmp_path / "a.raw")
    (tmp_path / "list.txt").write_text("a:=a.raw\n")
    with pytest.raises(DataError, match=r"list\.txt:1: .*missing b"):
        open_data(str(tmp_path / "list.txt"), TWO)


def test_input_list_only_comments_is_empty(tmp_path):
    (tmp_path / "list.txt").write_text("# nothing\n\n")
    with pytest.raises(DataError, match="no samples"):
        open_data(str(tmp_path / "list.txt"), [X])


# images -------------------------------------------------------------------------------------------

def _write_pngs(folder, colours):
    Image = pytest.importorskip("PIL.Image")
    folder.mkdir()
    for k, rgb in enumerate(colours):  # names sort in this order: 0.png, 1.png ...
        Image.new("RGB", (10, 6), rgb).save(folder / f"{k}.png")


def test_image_folder_nchw_rgb_mean_std(tmp_path):
    _write_pngs(tmp_path / "img", [(255, 0, 0), (0, 255, 0), (0, 0, 255)])
    (tmp_path / "img" / "notes.txt").write_text("not an image")
    src = open_data(str(tmp_path / "img"), [X], mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert len(src) == 3
    s = src.sample(0)["x"]
    assert s.shape == (1, 3, 4, 4) and s.dtype == np.float32
    np.testing.assert_allclose(s[0, :, 0, 0], [1.0, -1.0, -1.0])
    np.testing.assert_allclose(src.sample(2)["x"][0, :, 2, 3], [-1.0, -1.0, 1.0])
    assert [f["x"].shape for f in feeds(src, batch_size=2)] == [(2, 3, 4, 4), (1, 3, 4, 4)]


def test_image_folder_nhwc_bgr_gray_and_size(tmp_path):
    _write_pngs(tmp_path / "img", [(255, 0, 0), (0, 0, 255)])
    nhwc = inp("x", np.float32, (1, "H", "W", 3))
    s = open_data(str(tmp_path / "img"), [nhwc], layout="NHWC", channels="bgr", image_size=(5, 7)).sample(0)
    assert s["x"].shape == (1, 5, 7, 3)
    np.testing.assert_allclose(s["x"][0, 2, 3], [0.0, 0.0, 1.0])  # red pixel, channels in B, G, R order
    gray = inp("g", np.float32, (1, 1, 4, 4))
    g = open_data(str(tmp_path / "img"), [gray], channels="gray").sample(1)["g"]
    np.testing.assert_allclose(g, np.full((1, 1, 4, 4), 29 / 255), atol=1e-6)  # blue's luma


def test_image_folder_uint8_input_gets_raw_pixels(tmp_path):
    _write_pngs(tmp_path / "img", [(10, 20, 30)])
    s = open_data(str(tmp_path / "img"), [inp("x", np.uint8, (1, 4, 4, 3))], layout="NHWC").sample(0)
    assert s["x"].dtype == np.uint8
    np.testing.assert_array_equal(s["x"][0, 0, 0], [10, 20, 30])


def test_image_folder_of_npy_needs_no_pillow(tmp_path, monkeypatch):
    (tmp_path / "img").mkdir()
    np.save(tmp_path / "img" / "a.npy", np.full((8, 8, 3), 255, np.uint8))
    real_import = builtins.__import__

    def no_pil(name, *args, **kwargs):
        if name == "PIL" or name.startswith("PIL."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pil)
    s = open_data(str(tmp_path / "img"), [X]).sample(0)
    np.testing.assert_allclose(s["x"], np.ones((1, 3, 4, 4)))
    (tmp_path / "img" / "b.png").write_bytes(b"\x89PNG")
    with pytest.raises(DataError, match="b.png: .*needs Pillow; run `pip install pillow`"):
        open_data(str(tmp_path / "img"), [X]).sample(1)


def test_image_folder_errors(tmp_path):
    _write_pngs(tmp_path / "img", [(0, 0, 0)])
    folder = str(tmp_path / "img")
    with pytest.raises(DataError, match="has 3 channels .*channels='gray' gives 1"):
        open_data(folder, [X], channels="gray")
    with pytest.raises(DataError, match="dynamic height or width; give an image size"):
        open_data(folder, [inp("x", np.float32, (1, 3, "H", "W"))])
    with pytest.raises(DataError, match=r"input 'x' expects float32 of shape \(N, 3, 4, 4\)"):
        open_data(folder, [X], image_size=(5, 5))
    with pytest.raises(DataError, match="mean needs 1 or 3 values"):
        open_data(folder, [X], mean=(0.1, 0.2))
    (tmp_path / "img" / "z.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"z\.jpg: cannot read this image"):
        open_data(folder, [X]).sample(1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: found 0 images \(\.png"):
        open_data(str(tmp_path / "empty"), [X])


# random -------------------------------------------------------------------------------------------

def test_random_float_int_bool_deterministic():
    ins = [inp("f", np.float32, ("batch", 3, "T")), inp("i", np.int64, ("batch", "T")),
           inp("m", np.bool_, (2,)), inp("h", np.float16, ())]
    src = open_data("random:4", ins, seed=7)
    assert len(src) == 4
    s = src.sample(1)
    assert s["f"].shape == (1, 3, 8) and s["f"].dtype == np.float32
    assert s["i"].shape == (1, 8) and s["i"].dtype == np.int64 and 0 <= s["i"].min() and s["i"].max() < 10
    assert s["m"].dtype == np.bool_ and s["m"].shape == (2,)
    assert s["h"].shape == () and s["h"].dtype == np.float16
    again = open_data("random:4", ins, seed=7).sample(1)
    for k in s:
        np.testing.assert_array_equal(s[k], again[k])
    assert not np.array_equal(open_data("random:4", ins, seed=8).sample(1)["f"], s["f"])
    assert len(open_data("random:4", ins, samples=2)) == 2


def test_random_float_data_looks_normal():
    x = np.concatenate([f["x"].ravel() for f in open_data("random:64", [X]).batches(16)])
    assert abs(x.mean()) < 0.1 and 0.9 < x.std() < 1.1


def test_random_bad_count():
    with pytest.raises(DataError, match="random:N"):
        open_data("random:many", [X])
    with pytest.raises(DataError, match="no samples"):
        open_data("random:0", [X])


# checks and errors --------------------------------------------------------------------------------

def test_wrong_shape_names_input_and_expected_shape(tmp_path):
    np.save(tmp_path / "d.npy", np.zeros((5, 3, 5, 5), np.float32))
    with pytest.raises(DataError) as err:
        open_data(str(tmp_path / "d.npy"), [X])
    msg = str(err.value)
    assert "d.npy" in msg and "input 'x'" in msg and "(N, 3, 4, 4)" in msg and "(5, 3, 5, 5)" in msg
    assert "\n" not in msg


def test_wrong_dtype_float_for_int_input(tmp_path):
    ids = inp("ids", np.int64, ("N", 4))
    np.save(tmp_path / "ok.npy", np.array([[1.0, 2.0, 3.0, 4.0]]))  # whole numbers: converted
    assert open_data(str(tmp_path / "ok.npy"), [ids]).sample(0)["ids"].dtype == np.int64
    np.save(tmp_path / "bad.npy", np.array([[1.0, 2.5, 3.0, 4.0]]))
    with pytest.raises(DataError, match=r"bad\.npy: input 'ids' expects int64 .* float64 .*\(e\.g\. 2\.5\); "
                                        r"save the data as int64"):
        open_data(str(tmp_path / "bad.npy"), [ids])


def test_wrong_dtype_int_for_float_input():
    f32 = inp("x", np.float32, (2,))
    assert check_feed("d", f32, np.array([1, 2])).dtype == np.float32
    with pytest.raises(DataError, match="expects float32 .* int64 .*cannot hold exactly"):
        check_feed("d", f32, np.array([1, 2 ** 24 + 1]))
    with pytest.raises(DataError, match="expects uint8 .*e.g. 300"):
        check_feed("d", inp("x", np.uint8, (2,)), np.array([1, 300]))
    with pytest.raises(DataError, match="expects bool"):
        check_feed("d", inp("m", np.bool_, (2,)), np.array([0, 2]))
    with pytest.raises(DataError, match="expects float32 .* but the data are str32"):
        check_feed("d", f32, np.array(["a", "b"]))


def test_nan_and_inf_are_allowed(tmp_path):
    np.save(tmp_path / "d.npy", np.array([[np.nan, np.inf, -np.inf]]))
    s = open_data(str(tmp_path / "d.npy"), [inp("x", np.float32, ("N", 3))]).sample(0)
    assert np.isnan(s["x"][0, 0]) and np.isinf(s["x"][0, 1:]).all()


def test_empty_data(tmp_path):
    np.save(tmp_path / "d.npy", np.zeros((0, 3, 4, 4), np.float32))
    with pytest.raises(DataError, match=r"d\.npy: holds no samples"):
        open_data(str(tmp_path / "d.npy"), [X])
    np.save(tmp_path / "e.npy", np.zeros((3, 1, 3, 4, 4), np.float32))
    with pytest.raises(DataError, match="no samples"):
        open_data(str(tmp_path / "e.npy"), [X], samples=0)


def test_unknown_spec(tmp_path):
    with pytest.raises(DataError, match="no such file or folder; DATA is a .npy file, a .npz file"):
        open_data(str(tmp_path / "missing.npy"), [X])
    (tmp_path / "d.csv").write_text("1,2\n")
    with pytest.raises(DataError, match=r"unknown kind of data file '\.csv'.*random:N"):
        open_data(str(tmp_path / "d.csv"), [X])


def test_corrupt_files(tmp_path):
    (tmp_path / "d.npy").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"d\.npy: not a readable \.npy array"):
        open_data(str(tmp_path / "d.npy"), [X])
    (tmp_path / "d.npz").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"d\.npz: not a readable \.npz file"):
        open_data(str(tmp_path / "d.npz"), [X])
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataError, match="Python objects"):
        open_data(str(tmp_path / "o.npy"), [X])


def test_sources_are_datasources_and_index_checked(tmp_path):
    src = open_data("random:2", [X])
    assert isinstance(src, DataSource) and src.name == "random:2"
    with pytest.raises(IndexError):
        src.sample(2)


def test_feeds_run_in_onnxruntime(tmp_path):
    """The feeds are what onnxruntime takes, including a batch of several samples."""
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 4, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.save(tmp_path / "d.npy", np.ones((5, 1, 3, 4, 4)))
    outs = [sess.run(None, f)[0] for f in open_data(str(tmp_path / "d.npy"), [X]).batches(4)]
    assert [o.shape[0] for o in outs] == [4, 1]
    assert os.path.exists(tmp_path / "d.npy")


@pytest.mark.parametrize("kind", ["npy", "npz", "npz_compressed"])
def test_file_sources_read_one_sample_at_a_time(tmp_path, kind):
    """Memory stays flat: iterating 24 MB of samples never holds more than a few of them."""
    import tracemalloc

    data = np.zeros((2000, 3, 32, 32), np.float32)
    path = tmp_path / ("d.npy" if kind == "npy" else "d.npz")
    {"npy": np.save, "npz": lambda p, a: np.savez(p, x=a),
     "npz_compressed": lambda p, a: np.savez_compressed(p, x=a)}[kind](path, data)
    del data
    tracemalloc.start()
    try:
        src = open_data(str(path), [inp("x", np.float32, ("N", 3, 32, 32))])
        count = sum(f["x"].shape[0] for f in src.batches(8))
        src.sample(1500), src.sample(10)  # jumps forward and back
        peak = tracemalloc.get_traced_memory()[1]
        src.close()
    finally:
        tracemalloc.stop()
    assert count == 2000
    assert peak < 6e6, f"peak {peak / 1e6:.1f} MB"
