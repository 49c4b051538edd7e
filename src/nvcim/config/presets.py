"""Named chip presets, each a TOML file under ``presets/`` that cites its source."""

from __future__ import annotations

import difflib
from importlib import resources

from ..errors import NvcimError
from .io import parse_text
from .schema import ChipConfig


def preset_names() -> list[str]:
    """Names of the built-in presets, sorted."""
    files = resources.files("nvcim.config").joinpath("presets").iterdir()
    return sorted(f.name[:-5] for f in files if f.name.endswith(".toml"))


def preset(name: str) -> ChipConfig:
    """The built-in chip config ``name``; an unknown name gets the closest known one suggested."""
    names = preset_names()
    if name not in names:
        near = difflib.get_close_matches(name, names, n=1, cutoff=0.3)
        hint = f" Did you mean '{near[0]}'?" if near else ""
        raise NvcimError(f"unknown preset '{name}'.{hint} Known presets: {', '.join(names)}")
    text = resources.files("nvcim.config").joinpath("presets").joinpath(f"{name}.toml").read_text(encoding="utf-8")
    return ChipConfig.from_dict(parse_text(text, "toml", f"preset {name}"))
