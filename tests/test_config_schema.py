"""Stage configs declared once as pydantic models and checked by the shared machinery."""

from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path

import pytest

from drasclr_toolkit.cli.main import main
from drasclr_toolkit.config import (PACKAGED, Config, ConfigError, ModelConfig, load_config,
                                    set_options)
from drasclr_toolkit.data.card import ColumnRule
from drasclr_toolkit.data.ct import CTChecks
from drasclr_toolkit.datasets.synthetic import SyntheticConfig
from drasclr_toolkit.embed.extract import EmbedConfig
from drasclr_toolkit.evaluate.budget import EvaluateConfig
from drasclr_toolkit.preprocess.lungmask import LungSegConfig
from drasclr_toolkit.preprocess.pipeline import PreprocessConfig
from drasclr_toolkit.preprocess.registration import RegistrationConfig
from drasclr_toolkit.train import PretrainConfig

# Each stage section of a config file and the model that reads it.
SECTIONS = {"synthetic": SyntheticConfig, "preprocess": PreprocessConfig, "model": ModelConfig,
            "pretrain": PretrainConfig, "embed": EmbedConfig, "evaluate": EvaluateConfig}
EVERY_CONFIG = [PretrainConfig, EmbedConfig, SyntheticConfig, CTChecks, ColumnRule,
                PreprocessConfig, RegistrationConfig, LungSegConfig, ModelConfig, EvaluateConfig]


def test_yaml_1_1_exponents_load_as_floats(tmp_path):
    # PyYAML (YAML 1.1) reads 3e-2 and 1e-4 (no dot) as strings.
    path = tmp_path / "run.yaml"
    path.write_text("pretrain:\n  lr: 3e-2\n  weight_decay: 1e-4\n")
    cfg = PretrainConfig.from_yaml(path)
    assert cfg.lr == pytest.approx(0.03) and isinstance(cfg.lr, float)
    assert cfg.weight_decay == pytest.approx(1e-4) and isinstance(cfg.weight_decay, float)
    assert PretrainConfig.from_dict(load_config(path)["pretrain"]).lr == pytest.approx(0.03)


def test_a_bad_value_names_section_field_value_rule_and_fix():
    with pytest.raises(ConfigError) as info:
        PretrainConfig.from_dict({"weight_decay": -1})
    err = info.value
    assert isinstance(err, ValueError)
    assert (err.section, err.field, err.value) == ("pretrain config", "weight_decay", -1)
    assert str(err).startswith("pretrain config, field 'weight_decay': -1 must be >= 0; give")
    with pytest.raises(ConfigError, match=r"field 'lr': '3e-2x' is not a number; give a float"):
        PretrainConfig.from_dict({"lr": "3e-2x"})
    with pytest.raises(ConfigError, match=r"field 'optimizer': 'adam' is not allowed; give 'sgd' or"):
        PretrainConfig.from_dict({"optimizer": "adam"})
    with pytest.raises(ConfigError, match=r"preprocess.registration, field 'iterations': 0 must"):
        PreprocessConfig.from_dict({"registration": {"iterations": 0}})
    with pytest.raises(ConfigError, match=r"field 'shrink_factors\[1\]': 'x' is not a whole"):
        RegistrationConfig.from_dict({"shrink_factors": [4, "x"]})
    # every problem at once, still one line
    with pytest.raises(ConfigError) as info:
        PretrainConfig.from_dict({"epochs": 0, "lr": "abc"})
    assert len(info.value.problems) == 2 and "\n" not in str(info.value)


def test_unknown_keys_say_did_you_mean_also_in_nested_sections():
    with pytest.raises(ConfigError, match="pretrain config: unknown key.*did you mean 'weight_decay'"):
        PretrainConfig.from_dict({"weight_decy": 1e-4})
    with pytest.raises(ConfigError, match="preprocess.segmentation: unknown key.*did you mean "
                                          "'work_spacing'"):
        PreprocessConfig.from_dict({"segmentation": {"work_spacin": 2.0}})
    # the random-init architecture is the shared model section (older files: embed.encoder)
    for key in ("model", "encoder"):
        with pytest.raises(ConfigError, match="model config: unknown key.*did you mean 'width'"):
            EmbedConfig.from_dict({key: {"widht": 0.25}})


def test_replace_validates_and_keeps_the_original():
    cfg = PretrainConfig.from_dict({"lr": 0.03})
    assert cfg.replace(weight_decay="5e-4").weight_decay == pytest.approx(5e-4)
    with pytest.raises(ConfigError, match="field 'weight_decay': -1"):
        cfg.replace(weight_decay=-1)
    with pytest.raises(ConfigError, match="did you mean 'weight_decay'"):
        cfg.replace(weight_decy=0.1)
    with pytest.raises(ConfigError, match="field 'lr'"):
        cfg.lr = "abc"  # assignment is validated too
    assert cfg.lr == 0.03 and cfg.weight_decay == 1e-4
    prep = PreprocessConfig()
    changed = prep.replace(registration=prep.registration.replace(iterations=50))
    assert changed.registration.iterations == 50 and prep.registration.iterations == 200
    with pytest.raises(ConfigError, match="frozen"):
        prep.spacing = 2.0
    rule = ColumnRule.from_dict({"min": 1}, base=ColumnRule(dtype="float", unit="years"))
    assert (rule.dtype, rule.min, rule.unit) == ("float", 1.0, "years")


@pytest.mark.parametrize("config_class", EVERY_CONFIG, ids=lambda c: c.__name__)
def test_every_config_has_the_shared_api(config_class):
    assert issubclass(config_class, Config) and not dataclasses.is_dataclass(config_class)
    cfg = config_class.coerce(None)
    assert config_class.from_dict(cfg.to_dict()) == cfg
    assert config_class.coerce(cfg) is cfg
    assert cfg.replace() == cfg
    with pytest.raises(ConfigError, match="unknown key.*did you mean"):
        config_class.from_dict({next(iter(config_class.model_fields)) + "x": 1})


@pytest.mark.parametrize("name", PACKAGED)
def test_every_packaged_config_loads_through_every_section(name):
    config = load_config(name)
    for stage, config_class in SECTIONS.items():
        assert config_class.from_dict(config[stage]) == config_class.from_yaml(name)
    assert PreprocessConfig.from_yaml(name).segmentation == LungSegConfig.from_yaml(name)
    assert PreprocessConfig.from_yaml(name).registration == RegistrationConfig.from_yaml(name)


def test_cli_bad_value_is_one_clear_line(tmp_path, capsys):
    code = main(["pretrain", "--store", str(tmp_path / "no-store"), "--out", str(tmp_path / "run"),
                 "--set", "lr=abc"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert err.splitlines()[0] == ("drasclr pretrain: error: pretrain config, field 'lr': 'abc' "
                                   "is not a number; give a float such as 0.01")


# -- the shared model section and the evaluation budget ------------------------------------
@pytest.mark.parametrize("name", PACKAGED)
def test_the_architecture_is_written_once_and_read_by_every_stage(name):
    text = (Path(str(resources.files("drasclr_toolkit") / "configs" / f"{name}.yaml"))
            .read_text())
    assert text.count("width:") == 1  # only under model:
    model = ModelConfig.from_yaml(name)
    assert PretrainConfig.from_yaml(name).model == model
    assert EmbedConfig.from_yaml(name).model == model
    assert model.width == {"tiny": 0.25, "small": 0.25, "gpu": 1.0}[name]


def test_an_older_file_with_the_architecture_under_pretrain_and_embed_still_loads(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text("pretrain:\n  width: 0.5\n  lr: 0.02\nembed:\n  encoder:\n"
                   "    width: 0.5\n    num_experts: 2\n")
    assert ModelConfig.from_yaml(old) == ModelConfig(width=0.5, num_experts=2)
    pretrain = PretrainConfig.from_yaml(old)
    assert (pretrain.width, pretrain.num_experts, pretrain.lr) == (0.5, 2, 0.02)
    assert EmbedConfig.from_yaml(old).model == ModelConfig(width=0.5, num_experts=2)
    assert load_config(load_config(old)) == load_config(old)  # loading again changes nothing

    both = tmp_path / "both.yaml"
    both.write_text("model:\n  width: 0.25\npretrain:\n  width: 0.5\n")
    with pytest.raises(ConfigError, match=r"width is 0.25 under model: but 0.5 under "
                                          r"pretrain:.*keep width under model: only"):
        PretrainConfig.from_yaml(both)
    twice = tmp_path / "twice.yaml"
    twice.write_text("pretrain:\n  num_experts: 4\nembed:\n  encoder:\n    num_experts: 8\n")
    with pytest.raises(ConfigError, match="num_experts is 4 under pretrain: but 8 under "
                                          "embed.encoder"):
        load_config(twice)


def test_a_model_override_reaches_pretraining_and_extraction():
    cfg = set_options(load_config("tiny"), {"model.conditioning": "none", "pretrain.lr": 0.02})
    assert PretrainConfig.from_dict(cfg["pretrain"]).conditioning == "none"
    assert EmbedConfig.from_dict(cfg["embed"]).model.conditioning == "none"
    assert PretrainConfig.from_dict(cfg["pretrain"]).lr == 0.02
    with pytest.raises(ConfigError, match="under model: but"):  # one place for the width
        set_options(load_config("tiny"), {"pretrain.width": 0.5})


def test_the_evaluation_budget_comes_from_the_config_not_its_name(tmp_path):
    from drasclr_toolkit.workspace import Workspace

    assert EvaluateConfig.from_yaml("tiny").n_permutations == 19
    for name in ("small", "gpu"):
        assert EvaluateConfig.from_yaml(name) == EvaluateConfig()  # the thorough defaults
    copy = tmp_path / "my_tiny.yaml"  # a copy of tiny under another name: still quick
    copy.write_text((Path(str(resources.files("drasclr_toolkit") / "configs" / "tiny.yaml"))
                     .read_text()))
    budget = Workspace(tmp_path / "w", copy, verbose=False).evaluation_budget()
    assert budget["n_permutations"] == budget.n_permutations == 19
    assert budget["fractions"] == (0.1, 0.3, 1.0)
    with pytest.raises(ConfigError, match="evaluate config, field 'n_repeats'"):
        EvaluateConfig.from_dict({"n_repeats": 0})
