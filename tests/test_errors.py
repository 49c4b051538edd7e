"""Bad input gets a clear NvcimError naming what is wrong, never a deep torch traceback."""

import gzip
import struct

import pytest
import torch
from helpers import lenet, linear
from torch import nn

import nvcim
from nvcim.errors import ConversionError, DatasetError, NvcimError, ShapeError
from nvcim.experiments import load_dataset
from nvcim.experiments.idx import load_idx_dir, read_idx


def test_model_with_nothing_to_convert():
    with pytest.raises(ConversionError, match="nothing to convert"):
        nvcim.convert(nn.Sequential(nn.ReLU(), nn.Flatten()), "ideal", chips=2)
    with pytest.raises(ConversionError, match="filter_fn"):
        nvcim.convert(linear(), "ideal", chips=2, filter_fn=lambda m, name: False)


def test_filter_fn_keeps_layers_digital():
    m = nvcim.convert(lenet(), "ideal", chips=2, filter_fn=lambda mod, name: isinstance(mod, nn.Linear))
    assert [layer.layer_name for layer in m.analog_layers()] == ["7", "9", "11"]
    assert isinstance(m.net[0], nn.Conv2d)


@pytest.mark.parametrize("chips", [0, -3, 2.5, True])
def test_bad_chip_count(chips):
    with pytest.raises(nvcim.ConfigError, match="chips"):
        nvcim.convert(linear(), "ideal", chips=chips)


def test_wrong_input_shape_names_the_layer():
    m = nvcim.convert(lenet(), "ideal", chips=2)
    with pytest.raises(ShapeError, match="layer '0' expects inputs of shape \\(batch, 1, H, W\\)"):
        m(torch.randn(4, 3, 28, 28))
    with pytest.raises(ShapeError, match="NaN"):
        m(torch.full((2, 1, 28, 28), float("nan")))
    lin = nvcim.convert(linear(k=10), "ideal", chips=2)
    with pytest.raises(ShapeError, match="expects inputs of shape \\(batch, ..., 10\\)"):
        lin(torch.randn(4, 11))


def test_nan_weights_are_refused():
    net = linear()
    with torch.no_grad():
        net[0].weight[0, 0] = float("inf")
    with pytest.raises(ConversionError, match="NaN or inf"):
        nvcim.convert(net, "ideal", chips=1)


def test_uncalibrated_converters_explain_what_to_do():
    m = nvcim.convert(linear(), "pcm", chips=2)
    with pytest.raises(NvcimError, match="calibrate"):
        m(torch.randn(3, 64))


def test_a_kernel_larger_than_the_array_is_refused_clearly():
    cfg = nvcim.override(nvcim.preset("ideal"), {"array.rows": 16})
    with pytest.raises(ConversionError, match=r"needs 25 rows but array.rows = 16"):
        nvcim.convert(nn.Sequential(nn.Conv2d(4, 4, 5, groups=2)), cfg, chips=1)


def test_unknown_dataset_and_model():
    with pytest.raises(DatasetError, match="unknown dataset"):
        load_dataset("cifar-11")
    from nvcim.experiments import build_model

    with pytest.raises(NvcimError, match="Did you mean 'lenet5'"):
        build_model("lenet", (1, 8, 8), 10)


def _write_idx(path, arr: torch.Tensor, code=0x08, gz=False):
    header = bytes([0, 0, code, arr.dim()]) + struct.pack(f">{arr.dim()}I", *arr.shape)
    data = header + arr.to(torch.uint8).numpy().tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


def _idx_dir(tmp_path, n_train=20, n_test=10, labels_train=None, gz=True):
    sfx = ".gz" if gz else ""
    _write_idx(tmp_path / f"train-images-idx3-ubyte{sfx}", torch.randint(0, 255, (n_train, 6, 6)), gz=gz)
    _write_idx(tmp_path / f"train-labels-idx1-ubyte{sfx}", torch.randint(0, 3, (labels_train or n_train,)), gz=gz)
    _write_idx(tmp_path / f"t10k-images-idx3-ubyte{sfx}", torch.randint(0, 255, (n_test, 6, 6)), gz=gz)
    _write_idx(tmp_path / f"t10k-labels-idx1-ubyte{sfx}", torch.randint(0, 3, (n_test,)), gz=gz)
    return tmp_path


@pytest.mark.parametrize("gz", [True, False])
def test_idx_folder_loads(tmp_path, gz):
    (xtr, ytr), (xte, yte) = load_idx_dir(_idx_dir(tmp_path, gz=gz))
    assert xtr.shape == (20, 1, 6, 6) and xte.shape == (10, 1, 6, 6) and ytr.shape == (20,)
    assert 0.0 <= float(xtr.min()) and float(xtr.max()) <= 1.0
    ds = load_dataset(str(tmp_path))
    assert ds.classes >= 1 and ds.in_shape == (1, 6, 6)


def test_idx_count_mismatch(tmp_path):
    with pytest.raises(DatasetError, match="20 train images but 19 labels"):
        load_idx_dir(_idx_dir(tmp_path, labels_train=19))


def test_idx_truncated_bad_magic_and_corrupt_gzip(tmp_path):
    d = _idx_dir(tmp_path, gz=False)
    f = d / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-5])
    with pytest.raises(DatasetError, match="header says"):
        read_idx(f)
    f.write_bytes(b"\x12\x34\x08\x03" + b"\x00" * 20)
    with pytest.raises(DatasetError, match="bad magic"):
        read_idx(f)
    g = tmp_path / "x.gz"
    g.write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x04abcd")[:-6] + b"garbage")
    with pytest.raises(DatasetError, match="corrupt gzip|truncated|header"):
        read_idx(g)
    with pytest.raises(DatasetError, match="missing"):
        load_idx_dir(tmp_path / "nothing-here") if (tmp_path / "nothing-here").mkdir() is None else None


def test_missing_dataset_folder():
    with pytest.raises(DatasetError, match="not found"):
        load_idx_dir("/nonexistent/folder")


def test_measured_table_errors_name_the_line(tmp_path):
    from nvcim.devices.measured import load_table

    p = tmp_path / "t.csv"
    p.write_text("target,mean,std\n1e-6,1e-6,1e-7\n2e-6,abc,1e-7\n")
    with pytest.raises(NvcimError, match=":3: expected three numbers"):
        load_table(str(p))
    p.write_text("level,mean\n")
    with pytest.raises(NvcimError, match=":1: expected the header"):
        load_table(str(p))
