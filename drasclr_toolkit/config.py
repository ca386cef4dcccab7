"""Named run configurations: ``tiny`` (CPU, minutes) and ``gpu`` (one GPU, real work).

A configuration is a YAML file with one section per stage (``synthetic``, ``preprocess``,
``pretrain``, ``embed``, ``evaluate``). Each stage turns its section into its own dataclass
and rejects unknown keys, so a typo fails loudly instead of being ignored.

Example
-------
>>> cfg = load_config("tiny")
>>> sorted(cfg)[:2]
['embed', 'preprocess']
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import yaml

PACKAGED = ("tiny", "gpu")


def config_path(name_or_path: str | Path) -> Path:
    """Resolve a packaged configuration name or a path to a YAML file."""
    text = str(name_or_path)
    if text in PACKAGED:
        return Path(str(resources.files("drasclr_toolkit") / "configs" / f"{text}.yaml"))
    path = Path(text).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"configuration {text!r} is neither a packaged name ({', '.join(PACKAGED)}) "
            f"nor an existing YAML file"
        )
    return path


def load_config(name_or_path: str | Path | Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Load a configuration as a dict of stage sections (missing sections become ``{}``)."""
    if isinstance(name_or_path, Mapping):
        raw: Any = dict(name_or_path)
        source = "<dict>"
    else:
        path = config_path(name_or_path)
        source = str(path)
        raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"configuration {source}: the top level must be a mapping of stages")
    config: dict[str, dict[str, Any]] = {}
    for stage, section in raw.items():
        if section is None:
            section = {}
        if not isinstance(section, dict):
            raise ValueError(
                f"configuration {source}: section {stage!r} must be a mapping, "
                f"got {type(section).__name__}"
            )
        config[str(stage)] = dict(section)
    for stage in ("synthetic", "preprocess", "pretrain", "embed", "evaluate"):
        config.setdefault(stage, {})
    return config
