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
    with pytest.raises(ConfigError, match=r"run.yaml:1: objective: 'dpo' is not one of classify, causal_lm"):
        load_config(write(tmp_path, "objective: dpo\n"))


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
