import pytest

from tunesmith.config import load_config
from tunesmith.errors import ConfigError


def write(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_valid_config_and_overrides(tmp_path):
    path = write(tmp_path, "model:\n  name: minilm-l6\ntrain:\n  lr: 5e-5\n  epochs: 3\n")
    cfg = load_config(path, ["train.epochs=2", "method.name=freeze", "method.freeze_patterns=[a.*, b.*]"])
    assert cfg.train.lr == 5e-5 and cfg.train.epochs == 2.0
    assert cfg.method.name == "freeze" and cfg.method.freeze_patterns == ["a.*", "b.*"]


def test_unknown_field_names_file_line_and_field(tmp_path):
    path = write(tmp_path, "model:\n  name: minilm-l6\ntrain:\n  epochs: 2\n  learning_rate: 1e-4\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert f"{path}:5: train.learning_rate: unknown field" in str(e.value)
    assert "lr" in str(e.value)  # lists the fields it does take


def test_wrong_type_names_line(tmp_path):
    path = write(tmp_path, "train:\n  batch_size: many\n")
    with pytest.raises(ConfigError, match=r"run.yaml:2: train.batch_size: expected an integer, got 'many'"):
        load_config(path)


def test_unknown_method_lists_choices(tmp_path):
    path = write(tmp_path, "method:\n  name: lorax\n")
    with pytest.raises(ConfigError, match=r"run.yaml:2: method.name: 'lorax' is not one of full, freeze"):
        load_config(path)


def test_bad_override_and_cross_field_rules(tmp_path):
    path = write(tmp_path, "train:\n  batch_size: 30\n  grad_accum: 4\n")
    with pytest.raises(ConfigError, match="not divisible"):
        load_config(path)
    with pytest.raises(ConfigError, match="FIELD=VALUE"):
        load_config(write(tmp_path, "{}\n"), ["train.epochs"])


def test_invalid_yaml_names_line(tmp_path):
    path = write(tmp_path, "train:\n  lr: [1,\n")
    with pytest.raises(ConfigError, match=r"run.yaml:\d+: invalid YAML"):
        load_config(path)
