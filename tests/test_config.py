import warnings

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


def test_objective_section_and_shorthand(tmp_path):
    short = load_config(write(tmp_path, "objective: causal_lm\nmodel:\n  name: smollm2-135m\n"))
    assert short.objective.name == "causal_lm" and short.objective.packing is False
    full = load_config(write(tmp_path, "objective:\n  name: causal_lm\n  packing: true\n"),
                       ["objective.exact_match=false"])
    assert full.objective.packing is True and full.objective.exact_match is False
    # --set into a section given by its shorthand
    assert load_config(write(tmp_path, "objective: causal_lm\n"), ["objective.packing=true"]).objective.packing
    assert load_config(write(tmp_path, "{}\n")).objective.name == "classify"  # the default objective


def test_objective_options_are_checked_against_that_objective(tmp_path):
    path = write(tmp_path, "objective:\n  name: classify\n  packing: true\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert f"{path}:3: objective.packing: unknown field" in str(e.value) and "cache_frozen_prefix" in str(e.value)
    with pytest.raises(ConfigError, match=r"run.yaml:1: objective: 'sft' is not one of classify, causal_lm, .*weak"):
        load_config(write(tmp_path, "objective: sft\n"))


def test_moved_train_fields_land_in_the_objective(tmp_path):
    with pytest.warns(FutureWarning, match=r"run.yaml:3: train.packing: train.packing is now objective.packing"):
        cfg = load_config(write(tmp_path, "objective: causal_lm\ntrain:\n  packing: true\n"))
    assert cfg.objective.packing is True
    # an old run dir records every moved field, mostly at its default: read silently
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        old = load_config(write(tmp_path, "train:\n  packing: false\n  exact_match: true\n  prefix_cache_mb: 2048\n"))
    assert old.objective.prefix_cache_mb == 2048
    with pytest.warns(FutureWarning, match="train.cache_frozen_prefix is now objective.cache_frozen_prefix"):
        assert load_config(write(tmp_path, "train:\n  cache_frozen_prefix: false\n")).objective.cache_frozen_prefix is False
    with pytest.raises(ConfigError, match="train.packing moved to objective.packing, which objective classify"):
        load_config(write(tmp_path, "train:\n  packing: true\n"))


def test_early_stopping_metric_defaults_to_the_objective_and_is_checked(tmp_path):
    assert load_config(write(tmp_path, "{}\n")).train.early_stopping.metric == "val_accuracy"
    lm = load_config(write(tmp_path, "objective: causal_lm\n"))
    assert lm.train.early_stopping.metric == "val_loss"  # a language model has no accuracy to stop on
    path = write(tmp_path, "objective: causal_lm\ntrain:\n  early_stopping:\n    metric: val_accuracy\n")
    with pytest.raises(ConfigError, match=r"run.yaml:4: train.early_stopping.metric: 'val_accuracy' is not computed"
                                          r".*val_loss, val_perplexity, val_token_accuracy"):
        load_config(path)
    ood = "data:\n  eval_sets: {ood-x: x.jsonl}\ntrain:\n  early_stopping: {metric: ood-x_accuracy}\n"
    with pytest.raises(ConfigError, match="not computed during training"):
        load_config(write(tmp_path, ood))
    both = load_config(write(tmp_path, ood.replace("train:\n", "train:\n  eval_sets_during_training: true\n")))
    assert both.train.early_stopping.metric == "ood-x_accuracy"


def test_method_and_objective_must_fit(tmp_path):
    with pytest.raises(ConfigError, match=r"run.yaml:2: method.name: prompt works on a causal-lm model; "
                                          "objective classify trains a text-classifier"):
        load_config(write(tmp_path, "method:\n  name: prompt\n"))
    with pytest.raises(ConfigError, match="objective.packing: prompt tuning cannot pack"):
        load_config(write(tmp_path, "objective: {name: causal_lm, packing: true}\nmethod: {name: prompt}\n"))
    stages = ("stages:\n  - {name: a, method: {name: lora}}\n  - {name: b, method: {name: dora}}\n")
    with pytest.raises(ConfigError, match=r"run.yaml:3: stages.1.method.name: a run has one adapter stage"):
        load_config(write(tmp_path, stages))
    prompt_then_full = ("objective: causal_lm\nstages:\n  - {name: a, method: {name: prompt}}\n"
                        "  - {name: b, method: {name: full}}\n")
    with pytest.raises(ConfigError, match="prompt wraps the model, so it cannot share a run"):
        load_config(write(tmp_path, prompt_then_full))
    with pytest.raises(ConfigError, match=r"stages.0.method.lora.r: must be > 0"):  # stage methods are checked too
        load_config(write(tmp_path, "stages:\n  - {name: a, method: {name: lora, lora: {r: 0}}}\n"))


@pytest.mark.parametrize("field,value,says", [
    ("train.max_steps", "-5", "must be > 0, got -5"),
    ("train.max_steps", "0", "must be > 0, got 0"),  # not read as "unset"
    ("train.head_lr", "-1e-3", "must be > 0"),
    ("train.max_grad_norm", "-1", "must be > 0"),
    ("train.epochs", ".nan", "must be a finite number, got nan"),
    ("train.lr", ".nan", "must be a finite number, got nan"),
    ("train.lr", ".inf", "must be a finite number, got inf"),
    ("train.weight_decay", "-0.1", "must be >= 0"),
    ("train.keep_checkpoints", "0", "must be >= 1"),
    ("train.warmup_steps", "-1", "must be >= 0"),
    ("train.checkpoint_minutes", "0", "must be > 0"),
    ("train.early_stopping.patience", "0", "must be >= 1"),
    ("train.early_stopping.min_delta", ".nan", "must be a finite number"),
    ("data.split.validation", "1.5", "must be in [0, 1)"),
    ("data.max_train_samples", "0", "must be >= 1"),
    ("method.lora.dropout", "1.0", "must be in [0, 1)"),
    ("objective.prefix_cache_mb", "-1", "must be > 0"),
])
def test_every_number_has_a_checked_range(tmp_path, field, value, says):
    section, _, name = field.rpartition(".")
    text = f"{section.split('.')[0]}:\n"
    indent = "  "
    for part in section.split(".")[1:]:
        text += f"{indent}{part}:\n"
        indent += "  "
    text += f"{indent}{name}: {value}\n"
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert f"{path}:{text.count(chr(10))}: {field}: {says}" in str(e.value)


def test_no_numeric_field_lacks_a_range():
    import dataclasses
    import typing

    from tunesmith.config import RunConfig
    from tunesmith.objectives import OBJECTIVES

    missing = []

    def walk(cls, prefix):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            inner = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
            if dataclasses.is_dataclass(inner[0]):
                walk(inner[0], f"{prefix}{f.name}.")
            elif typing.get_origin(hint) is list and dataclasses.is_dataclass(typing.get_args(hint)[0]):
                walk(typing.get_args(hint)[0], f"{prefix}{f.name}.N.")
            elif (any(a in (int, float) for a in inner) and "range" not in f.metadata
                  and f.name not in ("mean", "std", "crop_scale")):  # lists, checked whole in validate.py
                missing.append(prefix + f.name)

    walk(RunConfig, "")
    for objective in OBJECTIVES.values():
        walk(objective.Config, "objective.")
    assert missing == []


def test_a_key_given_twice_is_an_error(tmp_path):
    path = write(tmp_path, "train:\n  lr: 1e-3\n  epochs: 2\n  lr: 5e-5\n")
    with pytest.raises(ConfigError, match=r"run.yaml:4: train.lr: given twice \(lines 2 and 4\)"):
        load_config(path)


def test_set_errors_name_set_and_suggest_the_field(tmp_path):
    path = write(tmp_path, "train:\n  epochs: 2\n")
    with pytest.raises(ConfigError, match=r"^--set train.epochs: must be > 0, got -1.0$"):
        load_config(path, ["train.epochs=-1"])
    with pytest.raises(ConfigError, match=r"^--set train.learning_rate: unknown field; did you mean 'lr'\?"):
        load_config(path, ["train.learning_rate=1e-3"])
    with pytest.raises(ConfigError, match=r"run.yaml:2: train.epoch: unknown field; did you mean 'epochs'\?"):
        load_config(write(tmp_path, "train:\n  epoch: 2\n"))


def test_checks_that_need_the_machine_or_the_model_files(tmp_path, tiny_bert):
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"train.device: cuda, but this torch .* sees no CUDA device"):
            load_config(write(tmp_path, "train:\n  device: cuda\n"))
    # tiny_bert takes 64 positions (config.json); the check reads that file, not the weights
    with pytest.raises(ConfigError, match=rf"model.max_length: 100 is more than the model takes \(64 positions, "
                                          rf"from {tiny_bert}/config.json\); at most 64"):
        load_config(write(tmp_path, f"model:\n  name: {tiny_bert}\n  max_length: 100\n"))
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((tiny_bert / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(ConfigError, match=r"holds its weights only as pytorch_model.bin \(a pickle.*safe_serialization"):
        load_config(write(tmp_path, f"model:\n  name: {pickled}\n"))
    with pytest.raises(ConfigError, match="early stopping needs validation data"):
        load_config(write(tmp_path, "data:\n  split: {validation: 0}\ntrain:\n  early_stopping: {patience: 2}\n"))
