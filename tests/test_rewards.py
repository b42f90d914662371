"""Rewards for online RL: users' functions with TRL's signature, reward-model runs, classifier runs."""

from __future__ import annotations

import math

import pytest
import torch
from tiny import make_tiny_bert, sentiment_rows, write_jsonl

from tunesmith.config import config_from_dict
from tunesmith.errors import ConfigError, TrainingError
from tunesmith.infer import open_saved, predict
from tunesmith.infer import score as run_score
from tunesmith.rewards import check_weights, load_rewards, score
from tunesmith.run import run

REWARDS = '''
def brevity(prompts, completions, **kwargs):
    return [-len(c) / 10 for c in completions]

def says_fresh(prompts, completions, step, kind, **kwargs):
    # a TRL-style function reading another column of the prompt rows, and the step
    return [1.0 if "fresh" in c else (None if k == "skip" else 0.0) for c, k in zip(completions, kind)]

def raises(prompts, completions, **kwargs):
    raise KeyError("label")

def too_few(prompts, completions, **kwargs):
    return [1.0]

def not_finite(prompts, completions, **kwargs):
    return [float("nan")] * len(completions)

def not_a_list(prompts, completions, **kwargs):
    return 3
'''


@pytest.fixture
def code(tmp_path):
    (tmp_path / "user_rewards.py").write_text(REWARDS)
    return tmp_path


def test_users_functions_are_called_with_trls_signature_and_summed_with_weights(code):
    rewards = load_rewards(["user_rewards:brevity", "user_rewards:says_fresh"], "objective.reward_funcs", code)
    prompts = ["p", "p", "q"]
    completions = ["fresh!", "rotten", "fresh and long"]
    total, per = score(rewards, [1.0, 2.0], prompts, completions, step=7, kind=["a", "skip", "a"])
    assert torch.allclose(per[:, 0], torch.tensor([-0.6, -0.6, -1.4]))
    assert per[0, 1] == 1.0 and math.isnan(per[1, 1]) and per[2, 1] == 1.0  # None: not scored
    assert torch.allclose(total, torch.tensor([-0.6 + 2.0, -0.6, -1.4 + 2.0]))
    # a file named directly, relative to the config's folder
    (code / "sub").mkdir()
    (code / "sub" / "more.py").write_text(REWARDS)
    assert load_rewards(["sub/more.py:brevity"], "x", code)[0].name == "brevity"


@pytest.mark.parametrize("name, message", [
    ("raises", "reward raises raised at step 3: KeyError: 'label'"),
    ("too_few", "reward too_few returned 1 values for 2 completions at step 3"),
    ("not_finite", "reward not_finite returned nan for completion 0 at step 3"),
    ("not_a_list", "reward not_a_list returned int at step 3, not a list of 2 numbers"),
])
def test_a_bad_reward_function_is_named_with_the_step(code, name, message):
    rewards = load_rewards([f"user_rewards:{name}"], "objective.reward_funcs", code)
    with pytest.raises(TrainingError, match=message.replace("(", r"\(").replace(")", r"\)")):
        score(rewards, [1.0], ["p", "p"], ["a", "b"], step=3)


def test_bad_reward_specs_and_weights_are_config_errors(code):
    with pytest.raises(ConfigError, match=r"objective.reward_funcs\[0\]: cannot import user_rewards:nope"):
        load_rewards(["user_rewards:nope"], "objective.reward_funcs", code)
    with pytest.raises(ConfigError, match=r"\[0\]: 'brevity' is not module:function, e.g. my_rewards:brevity"):
        load_rewards(["brevity"], "objective.reward_funcs", code)
    with pytest.raises(ConfigError, match="name at least one reward"):
        load_rewards([], "objective.reward_funcs", code)
    with pytest.raises(ConfigError, match=r"\[0\]: .* is not a finished tunesmith run"):
        load_rewards([{"run": str(code)}], "objective.reward_funcs", code)
    with pytest.raises(ConfigError, match="1 weight\\(s\\) for 2 reward\\(s\\)"):
        check_weights([1.0], 2, "objective.reward_weights")
    assert check_weights(None, 2, "w") == [1.0, 1.0]


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("clf")
    model = make_tiny_bert(tmp / "bert", dropout=0.0)
    cfg = {"model": {"name": str(model), "max_length": 32}, "objective": "classify", "method": {"name": "full"},
           "data": {"train": str(write_jsonl(tmp / "t.jsonl", sentiment_rows(200, 1))), "split": {"validation": 0.1}},
           "train": {"epochs": 3, "batch_size": 16, "lr": 1e-2, "progress": False}}
    run(config_from_dict(cfg), tmp / "r")
    return tmp / "r"


def test_a_classifier_run_rewards_the_probability_of_its_label(classifier_run):
    (reward,) = load_rewards([{"run": str(classifier_run), "label": "pos"}], "objective.reward_funcs", open_run=open_saved)
    prompts, completions = ["the film was", "the film was"], [" superb and lovely", " dull and awful"]
    total, _ = score([reward], [1.0], prompts, completions, step=1)
    expected = [row["probabilities"]["pos"] for row in predict(classifier_run, [p + c for p, c in
                                                                              zip(prompts, completions, strict=True)])[0]]
    assert torch.allclose(total, torch.tensor(expected)) and total[0] > total[1]
    (alone,) = load_rewards([{"run": str(classifier_run), "label": "pos", "input": "completion"}], "r",
                              open_run=open_saved)
    expected = [row["probabilities"]["pos"] for row in predict(classifier_run, completions)[0]]
    assert torch.allclose(score([alone], [1.0], prompts, completions, step=1)[0], torch.tensor(expected))
    with pytest.raises(ConfigError, match=r"r\[0\].label: 'fresh' is not a class of .* \(its classes: neg, pos\)"):
        load_rewards([{"run": str(classifier_run), "label": "fresh"}], "r")
    with pytest.raises(ConfigError, match="is a classify run, not a reward model; a classifier run needs `label:`"):
        load_rewards([{"run": str(classifier_run)}], "r")


def test_a_reward_model_run_scores_each_completion_given_its_prompt(tmp_path):
    model = make_tiny_bert(tmp_path / "bert", dropout=0.0)
    texts = sentiment_rows(64, 1)
    pos = [r["text"] for r in texts if r["label"] == "pos"]
    neg = [r["text"] for r in texts if r["label"] == "neg"]
    rows = [{"prompt": "the film", "chosen": p, "rejected": n} for p, n in zip(pos, neg, strict=False)]
    cfg = {"model": {"name": str(model), "max_length": 32}, "objective": "reward", "method": {"name": "full"},
           "data": {"train": str(write_jsonl(tmp_path / "t.jsonl", rows)), "split": {"validation": 0.2}},
           "train": {"max_steps": 2, "batch_size": 8, "progress": False}}
    run(config_from_dict(cfg), tmp_path / "r")
    (reward,) = load_rewards([{"run": str(tmp_path / "r")}], "objective.reward_funcs", open_run=open_saved)
    prompts, completions = ["the film", "a play", "the film"], ["good", "bad", "ok"]
    total, _ = score([reward], [1.0], prompts, completions, step=1)
    by_hand = [run_score(tmp_path / "r", [c], p)[0] for p, c in zip(prompts, completions, strict=True)]
    assert torch.allclose(total, torch.tensor(by_hand), atol=1e-5)


def test_the_shipped_online_rl_config_checks_once_its_classifier_run_exists(tmp_path, monkeypatch):
    import json

    from tunesmith.config import load_config
    from tunesmith.shipped import resolve_config_path

    monkeypatch.chdir(tmp_path)
    path = resolve_config_path("rt-smollm2-grpo")
    with pytest.raises(ConfigError, match=r"runs/rt-minilm-full is not a finished tunesmith run .*train it first"):
        load_config(path)
    run_dir = tmp_path / "runs" / "rt-minilm-full"  # relative to the working directory, as the config says
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps({"objective": "classify", "label_names": ["fresh", "rotten"]}))
    cfg = load_config(path)
    assert cfg.objective.name == "grpo" and cfg.method.name == "lora" and cfg.objective.beta > 0
