"""Hypothesis strategies and properties shared by the tests (small budgets) and `make fuzz` (large ones)."""

from __future__ import annotations

import dataclasses
import gzip
import struct
import tempfile
from pathlib import Path
from typing import Any

import torch
from hypothesis import strategies as st
from torch import nn

import nvcim
from nvcim.config import ChipConfig, Variant
from nvcim.errors import ConfigError, DatasetError, NvcimError

# a valid measured level table, so that random configs also exercise the 'measured' model
TABLE = Path(tempfile.mkdtemp()) / "levels.csv"
TABLE.write_text("target,mean,std\n1e-6,1.1e-6,2e-7\n3e-5,2.9e-5,3e-6\n6e-5,6.1e-5,4e-6\n1e-4,0.98e-4,5e-6\n")

# upper caps that keep a random chip small enough to simulate in a test (the schema allows more)
CAPS = {"array.rows": 300, "array.cols": 300, "cost.adcs_per_array": 64}


def leaf_fields(cls: type = ChipConfig, prefix: str = "", model: tuple[type[Variant], str] | None = None,
                skip: frozenset[str] = frozenset()) -> list[tuple[str, Any, dict[str, Any]]]:
    """(dotted path, default, spec metadata) of every leaf field of the config tree. A typed section adds its
    ``model``/``scheme`` field (its choices: the registry's names) and every model's own fields, whose
    metadata say which model has them (``meta["model"] = (the section's base class, name)``)."""
    out = []
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        path = prefix + f.name
        if isinstance(default, Variant):
            base = default.family()
            out.append((f"{path}.{base.TAG}", default.variant_name(), {"doc": "model", "choices": base.REGISTRY}))
            out += leaf_fields(base, path + ".")
            for name, c in default.models().items():
                out += leaf_fields(c, path + ".", (base, name), frozenset(base.field_names()))
        elif dataclasses.is_dataclass(default):
            out += leaf_fields(type(default), path + ".")
        else:
            out.append((path, default, dict(f.metadata, **({"model": model} if model else {}))))
    return out


def place(data: dict[str, Any], path: str, value: Any, meta: dict[str, Any]) -> None:
    """Set ``path`` in a config dict; a model's own field also selects that model (its section then keeps
    the fields that the model has)."""
    node = data
    *parents, leaf = path.split(".")
    for k in parents:
        node = node[k]
    if "model" in meta:
        base, name = meta["model"]
        if node.get(base.TAG) != name:
            own = set(base.models()[name].field_names())
            for k in [k for k in node if k not in own and k != base.TAG]:
                del node[k]
            node[base.TAG] = name
    node[leaf] = value


FIELDS = leaf_fields()
PATHS = {p for p, _, _ in FIELDS}


def value_for(path: str, default: Any, meta: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values inside the field's declared range (and sometimes its 'off' zero)."""
    if meta.get("choices"):
        return st.sampled_from(meta["choices"])
    if isinstance(default, bool):
        return st.booleans()
    if isinstance(default, str):
        return st.sampled_from(["", str(TABLE)]) if path.endswith("table") else st.text(max_size=20)
    lo, hi = meta.get("lo"), meta.get("hi")
    if isinstance(default, tuple):
        return st.lists(st.floats(lo or 0.0, hi if hi is not None else 1e-3, allow_nan=False), max_size=5)
    hi = CAPS.get(path, hi)
    if isinstance(default, int):
        s = st.integers(int(lo if lo is not None else 0) + (1 if meta.get("lo_open") else 0),
                        int(hi if hi is not None else 10 * max(1, default)))
        return st.one_of(st.just(0), s) if meta.get("zero_ok") else s
    top = hi if hi is not None else max(10 * abs(default), 1.0)
    s = st.floats(lo if lo is not None else -top, top, allow_nan=False, allow_infinity=False,
                  exclude_min=bool(meta.get("lo_open")))
    return st.one_of(st.just(0.0), s) if meta.get("zero_ok") else s


def bad_value_for(path: str, default: Any, meta: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values outside the field's range or of the wrong type."""
    wrong_type = st.sampled_from([[1, 2], {"a": 1}, None]) if not isinstance(default, str) else st.sampled_from(
        [1, 2.5, [1], None, True])
    if meta.get("choices"):
        return st.one_of(wrong_type, st.text(min_size=1, max_size=8).filter(lambda t: t not in meta["choices"]))
    if isinstance(default, bool):
        return st.one_of(wrong_type, st.sampled_from([0, 1, "yes", 2.0]))
    if isinstance(default, str):
        return wrong_type.filter(lambda v: v is not None)
    lo, hi = meta.get("lo"), meta.get("hi")
    outs = [wrong_type, st.sampled_from([float("nan"), float("inf"), "1", True])]
    if lo is not None:
        below = st.floats(max_value=lo, allow_nan=False, allow_infinity=False, exclude_max=not meta.get("lo_open"))
        outs.append(below.filter(lambda v: not (meta.get("zero_ok") and v == 0)))
    if hi is not None:
        outs.append(st.floats(min_value=hi, allow_nan=False, allow_infinity=False, exclude_min=True))
    if isinstance(default, int) and not isinstance(default, bool):
        outs.append(st.just(lo + 0.5 if lo is not None else 0.5))
    if isinstance(default, tuple):
        return st.one_of(st.sampled_from(["x", 3, [float("nan")], [-1.0]]))
    return st.one_of(*outs)


@st.composite
def config_dicts(draw: Any, max_fields: int = 8) -> dict[str, Any]:
    """A nested dict overriding a random subset of fields of a random preset (often valid, sometimes not:
    cross-field rules such as g_min < g_max are left to the validator)."""
    base = draw(st.sampled_from(nvcim.preset_names()))
    chosen = draw(st.lists(st.sampled_from(FIELDS), max_size=max_fields, unique_by=lambda f: f[0]))
    data = nvcim.preset(base).to_dict()
    for path, default, meta in chosen:
        place(data, path, draw(value_for(path, default, meta)), meta)
    return data


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 3)).eval()


def check_config_property(data: dict[str, Any]) -> str:
    """Either a ConfigError naming a real field, or a chip whose outputs are finite and well shaped."""
    try:
        cfg = ChipConfig.from_dict(data)
    except ConfigError as e:
        field = e.path.split("[")[0]
        assert field in PATHS, f"error names an unknown field {e.path!r}: {e}"
        assert "allowed" in str(e) and e.path in str(e)
        return "invalid"
    torch.manual_seed(1)
    x = torch.rand(10, 12) * 2 - 0.5
    model = nvcim.convert(tiny_net(), cfg, chips=3, seed=0, runtime=nvcim.Runtime(compile="off"))
    model.calibrate(x)
    y = model(x)
    assert y.shape == (3, 10, 3)
    assert bool(torch.isfinite(y).all()), f"non-finite outputs for a valid config: {cfg}"
    res = nvcim.evaluate(model, (x, torch.arange(10) % 3), progress=False)
    assert all(0.0 <= a <= 1.0 for a in res.accuracy.per_chip)
    return "valid"


def check_bad_value_property(path: str, value: Any, meta: dict[str, Any] | None = None) -> None:
    """Any bad value of a field gets a ConfigError naming the field, the value and the allowed range."""
    data = nvcim.preset("rram-mlc-4bit").to_dict()  # as a config file would give it: no string parsing
    place(data, path, value, meta or {})
    try:
        ChipConfig.from_dict(data)
    except ConfigError as e:
        assert e.path.split("[")[0] == path, (path, value, str(e))
        assert "allowed" in str(e)
        return
    raise AssertionError(f"{path} = {value!r} was accepted")


# ---- IDX files ----------------------------------------------------------------------------------

def idx_bytes(n: int = 3, h: int = 4, w: int = 4, labels: bool = False) -> bytes:
    if labels:
        return struct.pack(">BBBBI", 0, 0, 8, 1, n) + bytes(i % 10 for i in range(n))
    return struct.pack(">BBBBIII", 0, 0, 8, 3, n, h, w) + bytes((i * 7) % 256 for i in range(n * h * w))


@st.composite
def mutated_idx(draw: Any) -> bytes:
    """A valid IDX file (maybe gzipped), then truncated, bit-flipped, spliced or its header rewritten."""
    raw = idx_bytes(draw(st.integers(0, 5)), draw(st.integers(1, 6)), draw(st.integers(1, 6)), draw(st.booleans()))
    if draw(st.booleans()):
        raw = gzip.compress(raw)
    ops = draw(st.lists(st.sampled_from(["truncate", "flip", "insert", "header", "magic"]), max_size=3))
    b = bytearray(raw)
    for op in ops:
        if not b:
            break
        i = draw(st.integers(0, len(b) - 1))
        if op == "truncate":
            b = b[:i]
        elif op == "flip":
            b[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            b[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "header":
            b[4:8] = struct.pack(">I", draw(st.integers(0, 2**32 - 1)))
        else:
            b[:4] = draw(st.binary(min_size=4, max_size=4))
    return bytes(b)


def check_idx_property(tmp: Any, data: bytes) -> str:
    """read_idx returns a tensor whose size matches its header, or raises DatasetError; nothing else."""
    from nvcim.experiments.idx import read_idx

    p = tmp / "f-idx3-ubyte"
    p.write_bytes(data)
    try:
        t = read_idx(p)
    except DatasetError as e:
        assert str(p) in str(e)
        return "error"
    assert isinstance(t, torch.Tensor)
    return "ok"


def check_text_property(text: str, fmt: str) -> None:
    """Any text in any config format: a config, or an NvcimError (never another exception)."""
    from nvcim.config.io import parse_text

    try:
        data = parse_text(text, fmt, f"x.{fmt}")
        ChipConfig.from_dict(data)
    except NvcimError:
        pass
