"""Named run configurations: ``tiny`` (CPU, minutes) and ``gpu`` (one GPU, real work).

A configuration is a YAML file with one section per stage (``synthetic``, ``preprocess``,
``pretrain``, ``embed``, ``evaluate``) and a shared ``model`` section: the encoder's
architecture, written once and handed by :func:`load_config` to every stage that builds an
encoder (pretraining, extraction's random-init baseline, fine-tuning). Each stage turns its
section into its own
:class:`Config` (a pydantic model): fields are declared once, typed and bounded, and the
shared machinery here checks them, rejects unknown keys ("did you mean"), coerces YAML 1.1
strings such as ``"1e-4"`` to numbers and turns every problem into one :class:`ConfigError`.

Example
-------
>>> cfg = load_config("tiny")
>>> sorted(cfg)
['embed', 'evaluate', 'model', 'preprocess', 'pretrain', 'synthetic']
>>> cfg["model"]["width"] == cfg["pretrain"]["width"] == cfg["embed"]["model"]["width"] == 0.25
True
>>> check_keys("embed config", {"batchsize": 8}, ["batch_size", "device"])
Traceback (most recent call last):
...
drasclr_toolkit.config.ConfigError: embed config: unknown key(s) ['batchsize']; did you mean 'batch_size'? allowed keys are ['batch_size', 'device']
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Mapping, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from drasclr_toolkit.errors import DrasclrError, InputError, MissingFileError

PACKAGED = ("tiny", "small", "gpu")
STAGES = ("synthetic", "preprocess", "model", "pretrain", "embed", "evaluate")
# How anatomy enters the encoder (drasclr_toolkit.models.DrasCLREncoder).
CONDITIONINGS = ("condconv", "none", "concat")


class ConfigError(DrasclrError, ValueError):
    """A configuration key or value that is not allowed, as one line: the section, the field,
    the value, the rule it breaks and the fix.

    ``section``, ``field``, ``value``, ``rule`` and ``fix`` describe the first problem;
    ``problems`` holds one sentence per problem (all of them are in the message).

    Example:
        >>> from drasclr_toolkit.train import PretrainConfig
        >>> PretrainConfig.from_dict({"lr": "3e-2x"})
        Traceback (most recent call last):
        ...
        drasclr_toolkit.config.ConfigError: pretrain config, field 'lr': '3e-2x' is not a number; give a float such as 0.01
    """

    def __init__(self, message: str, *, section: str | None = None, field: str | None = None,
                 value: Any = None, rule: str | None = None, fix: str | None = None,
                 problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.section, self.field, self.value, self.rule, self.fix = section, field, value, rule, fix
        self.problems = problems or [message]
        # DrasclrError's fields, of the first problem (the message lists them all)
        if section is not None:
            self.where = section + (f", field {field!r}" if field else "")
        if rule is not None:
            self.problem = f"{value!r} {rule}"


# A torch device as a config gives it.
Device = Annotated[str, Field(pattern=r"^(auto|(cpu|cuda|mps)(:\d+)?)$",
                              json_schema_extra={"fix": "give auto, cpu, cuda, cuda:N or mps"})]

ConfigT = TypeVar("ConfigT", bound="Config")


class Config(BaseModel):
    """Base of every stage's options: fields declared once (type, bounds, choices), checked
    by pydantic and reported as one :class:`ConfigError`.

    A subclass sets ``section`` (how messages name it, e.g. ``"pretrain config"``) and
    ``yaml_section`` (where :meth:`from_yaml` finds it, e.g. ``("pretrain",)``). Values are
    validated on construction, by :meth:`replace` and on assignment; numeric strings (YAML
    1.1 reads ``1e-4`` as text) become numbers.

    Example:
        >>> from drasclr_toolkit.train import PretrainConfig
        >>> cfg = PretrainConfig.from_dict({"lr": "3e-2", "weight_decay": "1e-4"})
        >>> cfg.lr, cfg.weight_decay
        (0.03, 0.0001)
        >>> cfg.replace(weight_decay=-1)
        Traceback (most recent call last):
        ...
        drasclr_toolkit.config.ConfigError: pretrain config, field 'weight_decay': -1 must be >= 0; give 0 or more, such as 0.0001
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    section: ClassVar[str] = "config"
    yaml_section: ClassVar[tuple[str, ...]] = ()
    key_advice: ClassVar[str] = ""           # appended to an unknown-key message
    ignored_keys: ClassVar[tuple[str, ...]] = ()  # allowed in the section, not options of this model

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise config_error(type(self), exc) from None

    def __setattr__(self, name: str, value: Any) -> None:
        try:
            super().__setattr__(name, value)
        except ValidationError as exc:
            raise config_error(type(self), exc) from None

    @model_validator(mode="before")
    @classmethod
    def _check_keys(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            check_keys(cls.section, data, [*cls.model_fields, *cls.ignored_keys],
                       advice=cls.key_advice)
            data = {k: v for k, v in data.items() if k not in cls.ignored_keys}
        return data

    @classmethod
    def from_dict(cls: type[ConfigT], data: Mapping[str, Any] | None = None) -> ConfigT:
        """Build from a mapping (a YAML section); unknown keys and bad values raise
        :class:`ConfigError`."""
        if data is not None and not isinstance(data, Mapping):
            raise ConfigError(f"{cls.section}: expected a mapping of options, got "
                              f"{type(data).__name__} {data!r}", section=cls.section, value=data,
                              rule="not a mapping", fix="give key: value lines")
        try:
            return cls.model_validate(dict(data or {}))
        except ValidationError as exc:
            raise config_error(cls, exc) from None

    @classmethod
    def from_yaml(cls: type[ConfigT], path: str | Path) -> ConfigT:
        """Read a YAML file or a packaged name (``"tiny"``, ``"gpu"``): its section of this
        stage (empty when the file has stage sections but not this one), or the whole file
        when it has no stage sections."""
        raw = read_yaml(config_path(path)) or {}
        if isinstance(raw, dict) and any(stage in raw for stage in STAGES):
            raw = load_config(raw, source=str(path))  # the shared model section handed on
            for key in cls.yaml_section:
                raw = (raw.get(key) if isinstance(raw, dict) else None) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{cls.section} in {path}: expected a mapping, got "
                              f"{type(raw).__name__}", section=cls.section, value=raw)
        return cls.from_dict(raw)

    @classmethod
    def coerce(cls: type[ConfigT], config: "ConfigT | Mapping[str, Any] | str | Path | None"
               ) -> ConfigT:
        """Accept a config, a dict, ``None`` (defaults), a YAML path or a packaged name."""
        if isinstance(config, cls):
            return config
        if config is None or isinstance(config, Mapping):
            return cls.from_dict(config)
        return cls.from_yaml(config)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (nested configs as dicts), e.g. to store beside results."""
        return self.model_dump()

    def field_error(self, field: str, value: Any, rule: str, fix: str) -> ConfigError:
        """A :class:`ConfigError` for one field of this section, worded as
        :func:`config_error` words pydantic's reports (for checks across fields)."""
        return ConfigError(_problem(f"{self.section}, field {field!r}", value, rule, fix),
                           section=self.section, field=field, value=value, rule=rule, fix=fix)

    def replace(self: ConfigT, **changes: Any) -> ConfigT:
        """A copy with some fields changed (validated)."""
        return self.from_dict({**{name: getattr(self, name) for name in type(self).model_fields},
                               **changes})


class ModelConfig(Config):
    """The encoder's architecture: the ``model:`` section, shared by pretraining (whose
    :class:`~drasclr_toolkit.train.PretrainConfig` is a ModelConfig plus training options),
    extraction (the random-init baseline, ``EmbedConfig.model``) and fine-tuning (the
    from-scratch twin). Defaults are the reference DrasCLR encoder.

    Example:
        >>> cfg = ModelConfig.from_yaml("tiny")
        >>> cfg.width, cfg.num_experts, cfg.conditioning
        (0.25, 4, 'condconv')
        >>> sorted(cfg.encoder_kwargs())
        ['conditioning', 'in_channels', 'num_experts', 'proj_dim', 'rep_dim', 'width']
    """

    section = "model config"
    yaml_section = ("model",)

    rep_dim: int = Field(128, ge=1)       # size of the representation h
    proj_dim: int = Field(128, ge=1)      # size of the projection z (contrastive head)
    width: float = Field(1.0, gt=0)       # multiplies every channel count (0.25: tiny CPU runs)
    num_experts: int = Field(8, ge=1)     # expert kernels per conditional convolution
    conditioning: Literal[CONDITIONINGS] = "condconv"  # condconv (DrasCLR) | none | concat

    @property
    def model(self) -> "ModelConfig":
        """The architecture alone (a plain ModelConfig, also of a PretrainConfig)."""
        return ModelConfig(**{name: getattr(self, name) for name in MODEL_KEYS})

    def encoder_kwargs(self) -> dict[str, Any]:
        """Arguments of :class:`~drasclr_toolkit.models.DrasCLREncoder` (what checkpoints
        store as ``encoder_config``)."""
        return dict(rep_dim=self.rep_dim, num_experts=self.num_experts, width=self.width,
                    conditioning=self.conditioning, proj_dim=self.proj_dim, in_channels=1)


MODEL_KEYS: tuple[str, ...] = tuple(ModelConfig.model_fields)


def config_error(model: type[Config], exc: ValidationError) -> ConfigError:
    """Turn pydantic's report into one :class:`ConfigError` line naming section and field."""
    errors = exc.errors(include_url=False)
    problems: list[str] = []
    first: dict[str, Any] = {}
    for err in errors:
        inner = (err.get("ctx") or {}).get("error")
        if isinstance(inner, ConfigError):  # already ours (an unknown key, checked first)
            if len(errors) == 1:
                return inner
            problems.append(str(inner))
            first = first or dict(section=inner.section, field=inner.field, value=inner.value,
                                  rule=inner.rule, fix=inner.fix)
            continue
        owner, name, path = _locate(model, err["loc"])
        info = owner.model_fields.get(name) if name is not None else None
        rule, fix = _rule_and_fix(err, info)
        where = owner.section + (f", field {path!r}" if path else "")
        problems.append(_problem(where, err.get("input"), rule, fix))
        first = first or dict(section=owner.section, field=path, value=err.get("input"),
                              rule=rule, fix=fix)
    return ConfigError("; ".join(problems), problems=problems, **first)


def _problem(where: str, value: Any, rule: str, fix: str) -> str:
    return f"{where}: {value!r} {rule}; {fix}"


def _locate(model: type[Config], loc: tuple[Any, ...]) -> tuple[type[Config], str | None, str]:
    """The (nested) config that owns the field at ``loc``, the field's name, and its path."""
    owner, i = model, 0
    while i < len(loc) - 1:
        info = owner.model_fields.get(loc[i]) if isinstance(loc[i], str) else None
        sub = info.annotation if info is not None else None
        if not (isinstance(sub, type) and issubclass(sub, Config)):
            break
        owner, i = sub, i + 1
    rest = loc[i:]
    if not rest:
        return owner, None, ""
    path = str(rest[0]) + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in rest[1:])
    return owner, str(rest[0]), path


def _rule_and_fix(err: Mapping[str, Any], info: Any) -> tuple[str, str]:
    kind, ctx = err["type"], err.get("ctx") or {}
    default = getattr(info, "default", None)
    such = (f" such as {default!r}" if isinstance(default, (int, float))
            and not isinstance(default, bool) else "")
    hint = (getattr(info, "json_schema_extra", None) or {}).get("fix") if info else None
    if hint is None and info is not None:  # a hint declared on an Annotated type
        hint = next((m.json_schema_extra.get("fix") for m in info.metadata
                     if isinstance(getattr(m, "json_schema_extra", None), dict)), None)
    bound = {"greater_than": (">", "gt", "a number above {}"),
             "greater_than_equal": (">=", "ge", "{} or more"),
             "less_than": ("<", "lt", "a number below {}"),
             "less_than_equal": ("<=", "le", "{} or less")}
    if kind in bound:
        sign, key, text = bound[kind]
        limit = f"{ctx[key]:g}" if isinstance(ctx[key], float) else ctx[key]
        return f"must be {sign} {limit}", hint or "give " + text.format(limit) + ("," + such if such else "")
    rules = {
        "float_parsing": ("is not a number", f"give a float{such or ' such as 0.5'}"),
        "float_type": ("is not a number", f"give a float{such or ' such as 0.5'}"),
        "int_parsing": ("is not a whole number", f"give an integer{such or ' such as 1'}"),
        "int_type": ("is not a whole number", f"give an integer{such or ' such as 1'}"),
        "int_from_float": ("is not a whole number", f"give an integer{such or ' such as 1'}"),
        "bool_parsing": ("is not true or false", "give true or false"),
        "bool_type": ("is not true or false", "give true or false"),
        "string_type": ("is not text", "give a string"),
        "literal_error": ("is not allowed", f"give {ctx.get('expected')}"),
        "string_pattern_mismatch": ("is not allowed", f"give a value matching {ctx.get('pattern')}"),
        "tuple_type": ("is not a list", "give a list of values"),
        "list_type": ("is not a list", "give a list of values"),
        "dict_type": ("is not a mapping", "give key: value lines"),
        "model_type": ("is not a mapping", "give key: value lines"),
        "model_attributes_type": ("is not a mapping", "give key: value lines"),
        "extra_forbidden": ("is not a known key", "remove it or fix its spelling"),
        "frozen_instance": ("cannot be changed (the config is frozen)",
                            "make a changed copy with .replace(...)"),
        "value_error": (str(ctx.get("error", err["msg"])), "see the field's documentation"),
    }
    rule, fix = rules.get(kind, (err["msg"][:1].lower() + err["msg"][1:], "see the documentation"))
    return rule, hint or fix


def check_keys(section: str, given: Iterable[Any], known: Iterable[Any], *,
               advice: str = "") -> None:
    """Raise :class:`ConfigError` (a ``ValueError``) when ``given`` holds a key that is not in ``known``.

    The message names the section, lists the unknown keys (sorted), suggests the closest
    known key for each typo (``difflib``) and lists the allowed keys (sorted), so a typo in
    a YAML section fails loudly instead of being ignored. Every stage config's
    :class:`Config` calls this before validating the values.

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
        drasclr_toolkit.config.ConfigError: pretrain config: unknown key(s) ['epoks', 'widht', 'zzz']; did you mean 'epochs' (for 'epoks'), 'width' (for 'widht')? allowed keys are ['epochs', 'width']
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
    raise ConfigError(message, section=section, field=str(unknown[0]), rule="unknown key")


def config_path(name_or_path: str | Path) -> Path:
    """Resolve a packaged configuration name or a path to a YAML file."""
    text = str(name_or_path)
    if text in PACKAGED:
        return Path(str(resources.files("drasclr_toolkit") / "configs" / f"{text}.yaml"))
    path = Path(text).expanduser()
    if not path.is_file():
        raise MissingFileError(
            f"configuration {text!r} is neither a packaged name ({', '.join(PACKAGED)}) "
            f"nor an existing YAML file"
        )
    return path


def parse_overrides(pairs: Iterable[str]) -> dict[str, Any]:
    """``KEY=VALUE`` command-line overrides → {KEY: VALUE}, each value read as YAML.

    Example:
        >>> parse_overrides(["max_steps=100", "pretrain.lr=0.01", "name=run a"])
        {'max_steps': 100, 'pretrain.lr': 0.01, 'name': 'run a'}
    """
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"--set expects KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def read_yaml(path: str | Path) -> Any:
    """A YAML file's content; a syntax error is a ConfigError naming the file, line and
    column (1-based, as an editor shows them).

    Example:
        >>> import tempfile
        >>> bad = Path(tempfile.mkdtemp()) / "c.yaml"
        >>> _ = bad.write_text("pretrain:\\n  lr: [0.1\\n  epochs: 3\\n")
        >>> read_yaml(bad)
        Traceback (most recent call last):
        ...
        drasclr_toolkit.config.ConfigError: config file ..., line 3, column 9: ...
    """
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"config file {path}"
        if mark is not None:
            where += f", line {mark.line + 1}, column {mark.column + 1}"
        what = " ".join(str(getattr(exc, "problem", None) or exc).split())
        context = getattr(exc, "context", None)
        raise ConfigError(f"{where}: the YAML syntax is wrong ({what}"
                          + (f", {context}" if context else "") + "). What to do: fix the "
                          "line (indentation, a missing ':' or closing bracket, a tab)",
                          field="YAML syntax", fix="fix the YAML syntax") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path}: not UTF-8 text ({exc})", fix="save it as "
                          "UTF-8 text") from None


def load_config(name_or_path: str | Path | Mapping[str, Any], *,
                source: str | None = None) -> dict[str, dict[str, Any]]:
    """Load a configuration as a dict of stage sections (missing sections become ``{}``).

    The ``model`` section (the encoder's architecture, written once) is handed on: the
    ``pretrain`` section carries its keys and ``embed`` gets it as ``embed.model``, so each
    stage's section is all that stage needs. Older files that put these keys under
    ``pretrain:`` or ``embed.encoder`` still load: the keys are merged into ``model``, and a
    key given twice with different values is a :class:`ConfigError` naming both places.
    Loading an already loaded configuration gives it back unchanged.

    Example:
        >>> old = {"pretrain": {"width": 0.5, "lr": 0.01}, "embed": {"encoder": {"width": 0.5}}}
        >>> cfg = load_config(old)
        >>> cfg["model"], cfg["embed"]["model"], cfg["pretrain"]["width"]
        ({'width': 0.5}, {'width': 0.5}, 0.5)
        >>> load_config({"model": {"width": 0.25}, "pretrain": {"width": 0.5}})
        Traceback (most recent call last):
        ...
        drasclr_toolkit.config.ConfigError: configuration <dict>: the encoder's width is 0.25 under model: but 0.5 under pretrain:; the architecture is written once. What to do: keep width under model: only
    """
    if isinstance(name_or_path, Mapping):
        raw: Any = dict(name_or_path)
        source = source or "<dict>"
    else:
        path = config_path(name_or_path)
        source = source or str(path)
        raw = read_yaml(path) or {}
    if not isinstance(raw, dict):
        raise InputError(f"configuration {source}: the top level must be a mapping of stages")
    config: dict[str, dict[str, Any]] = {}
    for stage, section in raw.items():
        if section is None:
            section = {}
        if not isinstance(section, dict):
            raise InputError(
                f"configuration {source}: section {stage!r} must be a mapping, "
                f"got {type(section).__name__}"
            )
        config[str(stage)] = dict(section)
    for stage in STAGES:
        config.setdefault(stage, {})
    _hand_on_model(config, source)
    return config


def _hand_on_model(config: dict[str, dict[str, Any]], source: str) -> None:
    """Merge the architecture keys of older files (``pretrain:``, ``embed.encoder``) into
    ``model`` and hand ``model`` to pretraining and extraction (in place)."""
    model = dict(config["model"])
    origin = {key: "model:" for key in model}
    embed = config["embed"]
    places: list[tuple[str, Any]] = [("pretrain:", config["pretrain"]),
                                     ("embed.encoder", embed.pop("encoder", None)),
                                     ("embed.model", embed.get("model"))]
    for where, section in places:
        if section is None:
            continue
        if not isinstance(section, dict):
            raise ConfigError(f"configuration {source}: {where} must be a mapping of "
                              f"architecture keys, got {section!r}", section=where,
                              value=section, fix="give key: value lines under model:")
        if where != "pretrain:":  # all of it is architecture; unknown keys fail in ModelConfig
            keys = list(section)
        else:
            keys = [key for key in MODEL_KEYS if key in section]
        for key in keys:
            value = section[key]
            if key in model and model[key] != value:
                raise ConfigError(
                    f"configuration {source}: the encoder's {key} is {model[key]!r} under "
                    f"{origin[key]} but {value!r} under {where}; the architecture is written "
                    f"once. What to do: keep {key} under model: only",
                    section=where, field=str(key), value=value, rule="disagrees with "
                    + origin[key], fix=f"keep {key} under model: only")
            model.setdefault(key, value)
            origin.setdefault(key, where)
    config["model"] = model
    config["pretrain"].update({key: value for key, value in model.items() if key in MODEL_KEYS})
    embed["model"] = dict(model)


def set_options(config: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """A copy of a configuration with ``SECTION.KEY[.SUBKEY]`` overrides set, loaded again
    (so ``model.width`` reaches pretraining and extraction alike).

    Example:
        >>> cfg = set_options(load_config("tiny"), {"model.width": 0.5, "pretrain.lr": 0.01})
        >>> cfg["pretrain"]["width"], cfg["embed"]["model"]["width"], cfg["pretrain"]["lr"]
        (0.5, 0.5, 0.01)
    """
    out = copy.deepcopy({str(k): dict(v or {}) for k, v in config.items()})
    changed_model = {}
    for key, value in overrides.items():
        parts = str(key).split(".")
        if len(parts) < 2 or not all(parts):
            raise ConfigError(f"override {key!r}: write SECTION.KEY=VALUE, e.g. pretrain.lr=0.01",
                              field=str(key), fix="write SECTION.KEY=VALUE")
        if parts[0] == "model":
            changed_model[parts[1]] = value
        node = out.setdefault(parts[0], {})
        for part in parts[1:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    # the handed-on copies follow the model section (else they would disagree with it)
    for key, value in changed_model.items():
        if key in MODEL_KEYS:
            out.get("pretrain", {})[key] = value
        out.get("embed", {}).get("model", {})[key] = value
    return load_config(out)
