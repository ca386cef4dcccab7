"""Stage configs declared once as pydantic models and checked by the shared machinery."""

from __future__ import annotations

import dataclasses

import pytest

from drasclr_toolkit.cli.main import main
from drasclr_toolkit.config import PACKAGED, Config, ConfigError, load_config
from drasclr_toolkit.data.card import ColumnRule
from drasclr_toolkit.data.ct import CTChecks
from drasclr_toolkit.data.synthetic import SyntheticConfig
from drasclr_toolkit.embed.extract import EmbedConfig
from drasclr_toolkit.preprocess.lungmask import LungSegConfig
from drasclr_toolkit.preprocess.pipeline import PreprocessConfig
from drasclr_toolkit.preprocess.registration import RegistrationConfig
from drasclr_toolkit.train import PretrainConfig

# Each stage section of a config file and the model that reads it.
SECTIONS = {"synthetic": SyntheticConfig, "preprocess": PreprocessConfig,
            "pretrain": PretrainConfig, "embed": EmbedConfig}
EVERY_CONFIG = [PretrainConfig, EmbedConfig, SyntheticConfig, CTChecks, ColumnRule,
                PreprocessConfig, RegistrationConfig, LungSegConfig]


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
    with pytest.raises(ConfigError, match="embed.encoder: unknown key.*did you mean 'width'"):
        EmbedConfig.from_dict({"encoder": {"widht": 0.25}})


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
