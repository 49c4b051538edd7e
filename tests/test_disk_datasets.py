"""Datasets from disk in the common layouts, on small files the tests make: CIFAR python batches, image
folders, .npz/.pt arrays; the values read equal the values written, and a bad file gets a clear error."""

import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from nvcim.cli import main
from nvcim.errors import DatasetError
from nvcim.experiments import load_dataset


def _cifar10(root, n_train=(6, 4), n_test=5, seed=0):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    batches = {}
    for i, n in enumerate(n_train, 1):
        batches[f"data_batch_{i}"] = n
    batches["test_batch"] = n_test
    written = {}
    for name, n in batches.items():
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n).tolist()
        with open(root / name, "wb") as f:  # the layout of the real files: bytes keys, a list of labels
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data,
                         b"filenames": [b"x.png"] * n}, f, protocol=2)
        written[name] = (data, labels)
    return written


def test_a_cifar10_folder_reads_as_written(tmp_path):
    written = _cifar10(tmp_path / "cifar-10-batches-py")
    d = load_dataset(str(tmp_path / "cifar-10-batches-py"))
    assert d.train[0].shape == (10, 3, 32, 32) and d.test[0].shape == (5, 3, 32, 32) and d.in_shape == (3, 32, 32)
    data, labels = written["data_batch_2"]
    # image 1 of batch 2 is train image 6 + 1; its green channel's first pixel is byte 1024 of its row
    assert d.train[0][7, 1, 0, 0] == pytest.approx(data[1, 1024] / 255.0)
    assert d.train[1][6:].tolist() == labels
    assert d.test[1].tolist() == written["test_batch"][1]
    assert 0.0 <= float(d.train[0].min()) and float(d.train[0].max()) <= 1.0


def test_a_cifar100_folder_uses_the_fine_labels(tmp_path):
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    for name, n in (("train", 4), ("test", 3)):
        with open(root / name, "wb") as f:
            pickle.dump({b"data": np.zeros((n, 3072), np.uint8), b"fine_labels": list(range(90, 90 + n)),
                         b"coarse_labels": [0] * n}, f)
    d = load_dataset(str(root))
    assert d.train[1].tolist() == [90, 91, 92, 93] and d.classes == 94


def test_a_pickle_that_would_run_code_is_refused_and_broken_batches_are_named(tmp_path):
    class Evil:
        def __reduce__(self):
            import os

            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    _cifar10(tmp_path / "c")
    (tmp_path / "c" / "test_batch").write_bytes(pickle.dumps({b"data": Evil(), b"labels": [0]}))
    with pytest.raises(DatasetError, match=r"test_batch: refusing to load (posix|os)\.system"):
        load_dataset(str(tmp_path / "c"))
    assert not (tmp_path / "pwned").exists()
    (tmp_path / "c" / "test_batch").write_bytes(b"\x80\x02}q")  # truncated
    with pytest.raises(DatasetError, match="test_batch: not a CIFAR python batch"):
        load_dataset(str(tmp_path / "c"))
    with open(tmp_path / "c" / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(DatasetError, match=r"'data' must be \(N, 3072\)"):
        load_dataset(str(tmp_path / "c"))


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_an_image_folder_tree_reads_as_written(tmp_path):
    rng = np.random.default_rng(1)
    imgs = {}
    for split, n in (("train", 3), ("test", 2)):
        for cls in ("cat", "dog"):
            for i in range(n):
                a = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
                _png(tmp_path / "pets" / split / cls / f"{i}.png", a)
                imgs[(split, cls, i)] = a
    d = load_dataset(str(tmp_path / "pets"))
    assert d.train[0].shape == (6, 3, 12, 10) and d.test[0].shape == (4, 3, 12, 10) and d.classes == 2
    assert d.train[1].tolist() == [0, 0, 0, 1, 1, 1]  # classes in sorted folder order: cat 0, dog 1
    a = imgs[("test", "dog", 1)]
    torch.testing.assert_close(d.test[0][3], torch.from_numpy(a).permute(2, 0, 1).float() / 255.0)


def test_a_flat_image_folder_is_split_80_20_and_bad_images_are_named(tmp_path):
    for cls in ("a", "b"):
        for i in range(5):
            _png(tmp_path / "flat" / cls / f"{i}.png", np.full((8, 8), 40 * i, np.uint8))
    d = load_dataset(str(tmp_path / "flat"))
    assert d.train[0].shape == (8, 1, 8, 8) and d.test[0].shape == (2, 1, 8, 8)
    assert sorted(d.train[1].tolist() + d.test[1].tolist()) == [0] * 5 + [1] * 5
    _png(tmp_path / "flat" / "b" / "big.png", np.zeros((9, 8), np.uint8))
    with pytest.raises(DatasetError, match=r"big.png: size 8x9 .* resize"):
        load_dataset(str(tmp_path / "flat"))
    (tmp_path / "flat" / "b" / "big.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="big.png: not a readable image"):
        load_dataset(str(tmp_path / "flat"))


@pytest.mark.parametrize("suffix", [".npz", ".pt"])
def test_array_files_read_as_written_with_clear_errors(tmp_path, suffix):
    x = np.arange(6 * 4 * 4, dtype=np.uint8).reshape(6, 4, 4)
    y = np.array([0, 1, 2, 0, 1, 2])

    def save(path, **arrays):
        if suffix == ".npz":
            np.savez(path, **arrays)
        else:
            torch.save({k: torch.as_tensor(v) for k, v in arrays.items()}, path)

    f = tmp_path / f"data{suffix}"
    save(f, x_train=x[:4], y_train=y[:4], x_test=x[4:], y_test=y[4:])
    d = load_dataset(str(f))
    assert d.train[0].shape == (4, 1, 4, 4) and d.classes == 3
    assert float(d.test[0][1, 0, 3, 3]) == pytest.approx(95 / 255.0)
    save(f, x=x, y=y)
    d = load_dataset(str(f))
    assert len(d.train[1]) == 5 and len(d.test[1]) == 1
    save(f, x=x, y=y[:5])
    with pytest.raises(DatasetError, match=r"labels must be a vector of 6"):
        load_dataset(str(f))
    save(f, images=x)
    with pytest.raises(DatasetError, match=r"needs arrays x_train.*found \['images'\]"):
        load_dataset(str(f))
    f.write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="not a readable"):
        load_dataset(str(f))


def test_evaluate_recover_and_a_sweep_run_end_to_end_on_a_cifar_folder(tmp_path):
    from nvcim.experiments.runner import run
    from nvcim.experiments.spec import from_dict

    _cifar10(tmp_path / "cifar", n_train=(60, 60), n_test=20)
    out = tmp_path / "out"
    assert main(["evaluate", "--model", "lenet5", "--dataset", str(tmp_path / "cifar"), "--epochs", "1",
                 "--chips", "3", "--chip", "rram-mlc-4bit", "--out", str(out), "--quiet"]) == 0
    res = json.loads((out / "result.json").read_text())
    assert res["dataset"] == "cifar" and res["images"] == 20 and len(res["accuracy"]["per_chip"]) == 3
    out = tmp_path / "rec"
    assert main(["recover", "--model", "mlp", "--dataset", str(tmp_path / "cifar"), "--epochs", "2",
                 "--chips", "3", "--method", "self-tune", "--out", str(out), "--quiet"]) == 0
    res = json.loads((out / "result.json").read_text())
    assert res["metric"]["name"] == "top1" and res["methods"] == ["self-tune"] and res["images"] == 20
    assert (out / "recovery.png").read_bytes()[:4] == b"\x89PNG"
    exp = from_dict({"name": "cifar-sweep", "model": "mlp", "dataset": str(tmp_path / "cifar"), "epochs": 2,
                     "chips": 3, "methods": ["none"], "sweep": {"device.programming.sigma": [0.05, 0.3]}})
    summary = run(exp, tmp_path / "run", progress=False)
    assert summary.computed == 2 and not summary.failed
