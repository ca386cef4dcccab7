"""Named run configurations: ``tiny`` (CPU, minutes) and ``gpu`` (one GPU, real work).

A configuration is a YAML file with one section per stage (``synthetic``, ``preprocess``,
``pretrain``, ``embed``, ``evaluate``). Each stage turns its section into its own dataclass
and rejects unknown keys, so a typo fails loudly instead of being ignored.

Example
-------
>>> cfg = load_config("tiny")
>>> sorted(cfg)
['embed', 'evaluate', 'preprocess', 'pretrain', 'synthetic']
>>> check_keys("embed config", {"batchsize": 8}, ["batch_size", "device"])
Traceback (most recent call last):
...
ValueError: embed config: unknown key(s) ['batchsize']; did you mean 'batch_size'? allowed keys are ['batch_size', 'device']
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import yaml

PACKAGED = ("tiny", "small", "gpu")


def check_keys(section: str, given: Iterable[Any], known: Iterable[Any], *,
               advice: str = "") -> None:
    """Raise ``ValueError`` when ``given`` holds a key that is not in ``known``.

    The message names the section, lists the unknown keys (sorted), suggests the closest
    known key for each typo (``difflib``) and lists the allowed keys (sorted), so a typo in
    a YAML section fails loudly instead of being ignored. Every stage config's
    ``from_dict`` calls this before building its dataclass.

    Args:
        section: what the keys belong to, as the user would look for it, e.g.
            ``"pretrain config"`` or ``"preprocess.registration"``; starts the message.
        given: the keys found (a mapping works: its keys are used).
        known: the keys that are allowed.
        advice: an optional sentence appended to the message (what to fix where).

    Example:
        >>> check_keys("pretrain config", {"width": 0.5}, ["width", "epochs"])  # all known
        >>> check_keys("pretrain config", ["widht", "epoks", "zzz"], ["width", "epochs"])
        Traceback (most recent call last):
        ...
        ValueError: pretrain config: unknown key(s) ['epoks', 'widht', 'zzz']; did you mean 'epochs' (for 'epoks'), 'width' (for 'widht')? allowed keys are ['epochs', 'width']
    """
    known_list = sorted(set(known), key=str)
    unknown = sorted(set(given) - set(known_list), key=str)
    if not unknown:
        return
    names = [str(k) for k in known_list]
    matches = [(key, difflib.get_close_matches(str(key), names, n=1)) for key in unknown]
    matches = [(key, m[0]) for key, m in matches if m]
    message = f"{section}: unknown key(s) {unknown}; "
    if len(unknown) == 1 and matches:
        message += f"did you mean {matches[0][1]!r}? "
    elif matches:
        message += "did you mean " + ", ".join(f"{m!r} (for {k!r})" for k, m in matches) + "? "
    message += f"allowed keys are {known_list}"
    if advice:
        message += f". {advice}"
    raise ValueError(message)


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
