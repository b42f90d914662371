"""Online RL (GRPO, RLOO) on a tiny Llama whose reward is how many of its words are positive ones."""

from __future__ import annotations

import json
import signal

import pytest
import torch
from helpers import cli, model_weights, torchrun, write_config
from tiny import LORA, POSITIVE, make_tiny_llama, sentiment_rows, write_jsonl

from tunesmith.config import config_from_dict
from tunesmith.errors import ConfigError, TrainingError
from tunesmith.run import run

REWARDS = f'''
POSITIVE = {POSITIVE!r}

def positive(prompts, completions, **kwargs):
    return [sum(w in POSITIVE for w in c.split()) / max(len(c.split()), 1) for c in completions]

def chat_shaped(prompts, completions, topic, **kwargs):
    # TRL's conversational shapes: the prompt's messages; each completion a one-message list
    assert all(isinstance(p, list) and p[-1]["role"] == "user" for p in prompts)
    assert all(isinstance(c, list) and c[0]["role"] == "assistant" for c in completions)
    assert set(topic) == {{"films"}}
    return [float("great" in c[0]["content"]) for c in completions]

def raises(prompts, completions, **kwargs):
    raise ValueError("no score today")
'''


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("grpo")
    model = make_tiny_llama(tmp / "llama")
    (tmp / "grpo_rewards.py").write_text(REWARDS)
    rows = [{"prompt": "review " + " ".join(r["text"].split()[:2])} for r in sentiment_rows(60, 0)]
    return tmp, model, write_jsonl(tmp / "prompts.jsonl", rows)


def config(setup, kind="grpo", **changes):
    tmp, model, prompts = setup
    cfg = {"model": {"name": str(model), "max_length": 32}, "method": {"name": "full"},
           "objective": {"name": kind, "reward_funcs": ["grpo_rewards:positive"], "num_generations": 4,
                         "max_completion_length": 8, "code_dir": str(tmp)},
           "data": {"train": str(prompts), "split": {"validation": 0.2}},
           "train": {"max_steps": 30, "batch_size": 4, "lr": 5e-3, "eval_every": 15, "log_every": 5,
                     "progress": False}}
    if kind == "ppo":
        cfg["objective"]["beta"] = 0.0  # ppo's default penalty needs a reference, and full fine-tuning has none
    for key, value in changes.items():
        cfg[key] = cfg[key] | value
    return cfg


def lines(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("objective", ["grpo", "rloo", "ppo"])
def test_the_policy_learns_what_the_reward_asks_for(setup, tmp_path, objective):
    summary = run(config_from_dict(config(setup, objective)), tmp_path / "r")
    rows = lines(tmp_path / "r")
    train = [r["train_reward"] for r in rows if "train_reward" in r]
    evals = [r for r in rows if "val_reward" in r]
    assert evals[0]["step"] == 0  # the starting policy is measured
    assert train[-1] > train[0] + 0.2, train  # sampled completions: about 0.2 of their words positive at first
    assert summary["final"]["val_reward"] > evals[0]["val_reward"] + 0.3
    assert all(0 < r["train_completion_length"] <= 9 for r in rows if "train_completion_length" in r)
    samples = [json.loads(x) for x in (tmp_path / "r" / "samples.jsonl").read_text().splitlines()]
    # every evaluation's first completions: steps 0, 15 and 30 on 12 validation prompts, then the final
    # evaluations (of the restored best weights) on validation and on the 6 test prompts
    assert [s["step"] for s in samples] == [0] * 8 + [15] * 8 + [30] * 8 + [30] * 8 + [30] * 6
    assert {"prompt", "completion", "reward"} <= set(samples[0])
    page = (tmp_path / "r" / "samples.html").read_text()
    assert page.count("<tr>") == 1 + len(samples) and samples[-1]["completion"].split()[0] in page
    entropies = [r["train_entropy"] for r in rows if "train_entropy" in r]
    assert entropies[-1] < entropies[0]  # the policy grows surer as it finds what pays


@pytest.mark.parametrize("objective", ["grpo", "ppo"])
def test_a_killed_run_resumes_exactly(setup, tmp_path, objective):
    """ppo: its value head and the head's AdamW come back from the checkpoint too."""
    cfg = config(setup, objective, train={"max_steps": 12, "checkpoint_every": 4, "eval_every": 12})
    path = write_config(tmp_path / "c.yaml", cfg)
    whole = cli("train", str(path), "--out", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr
    killed = cli("train", str(path), "--out", str(tmp_path / "k"), env={"TUNESMITH_KILL_AT_STEP": "7"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = cli("train", "--resume", str(tmp_path / "k"))
    assert resumed.returncode == 0, resumed.stderr
    a, b = model_weights(tmp_path / "whole"), model_weights(tmp_path / "k")
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same completions were sampled after the resume


def test_lora_with_a_kl_penalty_logs_the_kl_and_keeps_closer_to_the_start(setup, tmp_path):
    free = run(config_from_dict(config(setup, method=LORA, train={"max_steps": 20, "lr": 2e-2})), tmp_path / "a")
    tied = run(config_from_dict(config(setup, method=LORA, objective={"beta": 2.0}, train={"max_steps": 20,
                                                                                          "lr": 2e-2})), tmp_path / "b")
    kls = [r["train_kl"] for r in lines(tmp_path / "b") if "train_kl" in r]  # k3: never negative
    assert kls and kls[-1] > 0 and all(k >= 0 for k in kls)
    assert not any("train_kl" in r for r in lines(tmp_path / "a"))
    # the guards against reward hacking: perplexity under the reference (the adapters off) and distinct-n
    evals = [r for r in lines(tmp_path / "a") if "val_reward" in r]
    assert all(r["val_ref_perplexity"] > 1 and 0 < r["val_distinct_2"] <= 1 for r in evals)
    assert free["final"]["val_reward"] >= 0 and tied["final"]["val_reward"] >= 0


def test_ppo_keeps_its_value_head_out_of_the_adapter_and_steps_the_schedule_once_per_loop_step(setup, tmp_path):
    import glob
    from pathlib import Path

    from tunesmith.train.checkpoint import read_torch

    train = {"max_steps": 6, "log_every": 1, "eval_every": 6, "checkpoint_every": 3, "lr": 2e-2, "warmup_ratio": 0.2}
    run(config_from_dict(config(setup, "ppo", method=LORA, train=train,
                                objective={"beta": 0.2, "num_ppo_epochs": 3, "num_mini_batches": 2})), tmp_path / "ppo")
    run(config_from_dict(config(setup, "grpo", method=LORA, train=train)), tmp_path / "grpo")
    ppo, grpo = lines(tmp_path / "ppo"), lines(tmp_path / "grpo")
    # 6 updates per step, one schedule step: the learning rates are grpo's (one update per step)
    assert [r["lr"] for r in ppo if "lr" in r] == pytest.approx([r["lr"] for r in grpo if "lr" in r])
    trained = [r for r in ppo if "train_value_loss" in r]
    assert len(trained) == 6 and all(r["train_value_loss"] >= 0 for r in trained)
    assert trained[0]["train_kl"] == 0 and all(r["train_kl"] != 0 for r in trained[1:])  # LoRA starts at the reference
    from safetensors.torch import load_file

    adapter = load_file(str(tmp_path / "ppo" / "adapter" / "adapter_model.safetensors"))
    assert adapter and all("lora_" in key for key in adapter)  # no value head among the policy's weights
    state = read_torch(Path(sorted(glob.glob(str(tmp_path / "ppo" / "checkpoints" / "step-*" / "rank-*.pt")))[-1]))
    head = state["states"]["step"]["value_head"]
    assert head["weight"].shape == (1, 32) and head["weight"].abs().sum() > 0  # trained from its zero start


def test_distinct_n_by_hand():
    from tunesmith.objectives.grpo import distinct

    assert distinct([5, 5, 5, 5], 1) == 0.25 and distinct([5, 5, 5, 5], 2) == 1 / 3
    assert distinct([1, 2, 3], 2) == 1.0 and distinct([7], 2) == 1.0


def test_ppo_in_bf16_with_lora_and_its_reference(setup, tmp_path):
    """bf16 autocast: the value head runs in float32 outside it, the reference under it as the policy, so
    the KL of LoRA's first step (the policy is the reference) is exactly 0."""
    summary = run(config_from_dict(config(setup, "ppo", method=LORA, objective={"beta": 0.2},
                                          train={"max_steps": 3, "precision": "bf16", "eval_every": 3,
                                                 "log_every": 1})), tmp_path / "r")
    trained = [r for r in lines(tmp_path / "r") if "train_value_loss" in r]
    assert len(trained) == 3 and trained[0]["train_kl"] == 0 and summary["final"]["val_reward"] >= 0


def test_ppo_rewards_and_advantages_by_hand():
    from tunesmith.objectives.ppo import token_rewards

    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    kl = torch.tensor([[0.1, -0.2, 0.3], [0.5, 9.0, 9.0], [1.0, 1.0, 1.0]]) * mask
    out = token_rewards(torch.tensor([1.0, 2.0, 3.0]), mask, kl, beta=0.5)
    # -0.5 kl per token, the reward on the last completion token; a completion with no tokens gets nothing
    assert torch.allclose(out, torch.tensor([[-0.05, 0.1, 0.85], [1.75, 0.0, 0.0], [0.0, 0.0, 0.0]]))


def test_chat_prompts_reach_rewards_in_trls_shapes_with_their_columns(setup, tmp_path):
    tmp, _, _ = setup
    rows = [{"prompt": [{"role": "user", "content": "review " + r["text"].split()[0]}], "topic": "films"}
            for r in sentiment_rows(20, 1)]
    cfg = config(setup, objective={"reward_funcs": ["grpo_rewards:chat_shaped"]},
                 data={"train": str(write_jsonl(tmp_path / "chat.jsonl", rows))}, train={"max_steps": 2})
    summary = run(config_from_dict(cfg), tmp_path / "r")
    assert summary["prompt_format"] == "chat"


def test_bad_rewards_and_settings_are_named(setup, tmp_path):
    tmp, _, _ = setup
    # the starting policy is evaluated first (step 0)
    with pytest.raises(TrainingError, match="reward raises raised at step 0: ValueError: no score today"):
        run(config_from_dict(config(setup, objective={"reward_funcs": ["grpo_rewards:raises"]})), tmp_path / "r")
    with pytest.raises(ConfigError, match=r"objective.reward_funcs\[0\]: cannot import grpo_rewards:nope"):
        config_from_dict(config(setup, objective={"reward_funcs": ["grpo_rewards:nope"]}))
    with pytest.raises(ConfigError, match="objective.beta.*full changes the base weights.*reference_copy"):
        config_from_dict(config(setup, objective={"beta": 0.1}))
    config_from_dict(config(setup, objective={"beta": 0.1, "reference_copy": True}))  # opted in: fine
    with pytest.raises(ConfigError, match="method: ppo's value head reads the hidden states"):
        config_from_dict(config(setup, "ppo", method={"name": "prompt"}))
    with pytest.raises(ConfigError, match="train.precision: fp16's loss scaling"):
        config_from_dict(config(setup, "ppo", train={"precision": "fp16"}))
    with pytest.MonkeyPatch.context() as env:  # as torchrun would launch it
        env.setenv("RANK", "0")
        env.setenv("WORLD_SIZE", "2")
        with pytest.raises(ConfigError, match="objective.reference_copy: a frozen copy of a sharded model"):
            config_from_dict(config(setup, objective={"beta": 0.1, "reference_copy": True},
                                    train={"parallelism": "fsdp"}))
    with pytest.raises(ConfigError, match=r"reward_weights.*1 weight\(s\) for 2 reward\(s\)"):
        config_from_dict(config(setup, objective={"reward_funcs": ["grpo_rewards:positive", "grpo_rewards:positive"],
                                                  "reward_weights": [1.0]}))


def test_prompts_too_long_for_the_completion_are_counted_not_fatal(setup, tmp_path):
    rows = [{"prompt": "review " + "the " * 30}] * 3 + [{"prompt": "review the film"}] * 17
    cfg = config(setup, data={"train": str(write_jsonl(tmp_path / "p.jsonl", rows))}, train={"max_steps": 1})
    summary = run(config_from_dict(cfg), tmp_path / "r")
    assert sum(s.get("left_out_prompt_too_long", 0) for s in summary["encoding"].values()) == 3


@pytest.mark.slow
@pytest.mark.parametrize("objective, parallelism", [("grpo", "ddp"), ("rloo", "ddp"), ("ppo", "ddp"),
                                                    ("grpo", "fsdp"), ("ppo", "fsdp")])
def test_two_processes_match_one(setup, tmp_path, objective, parallelism):
    """torchrun with 2 CPU processes: each samples its share of the prompts (seeded by the global row), the
    micro-batches weigh by the whole step's totals, so the update is one process's (bnpo: by tokens; the
    batch-wide reward std; a KL penalty through LoRA's reference; ppo: minibatches of the whole step's
    completions, advantages whitened over all processes, the value head's gradients summed)."""
    extra = {"grpo": {"loss_type": "bnpo", "scale_rewards": "batch"}, "rloo": {},
             "ppo": {"num_mini_batches": 2, "num_ppo_epochs": 2}}[objective]
    cfg = config(setup, objective, method=LORA, objective={"beta": 0.5, **extra},
                 train={"max_steps": 6, "batch_size": 6, "grad_accum": 2, "eval_every": 3, "log_every": 1,
                        "lr": 2e-2})
    path = write_config(tmp_path / "c.yaml", cfg)
    cfg["train"]["parallelism"] = parallelism  # one process runs without (fsdp needs a process group)
    sharded_or_not = write_config(tmp_path / "two.yaml", cfg)
    single = cli("train", str(path), "--out", str(tmp_path / "one"))
    assert single.returncode == 0, single.stderr
    ddp = torchrun(2, "train", str(sharded_or_not), "--out", str(tmp_path / "two"))
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["parallelism"] == parallelism
    from safetensors.torch import load_file

    a, b = (load_file(str(tmp_path / r / "adapter" / "adapter_model.safetensors")) for r in ("one", "two"))
    # float noise only: the processes pad their own batches and DDP sums gradients in another order; Adam at
    # lr 2e-2 turns a near-zero gradient's noise into up to a step of its own, so the bound is a few 1e-5
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 2e-4
    one, two = lines(tmp_path / "one"), lines(tmp_path / "two")
    assert any(r.get("train_kl", 0) > 0 for r in one)  # the penalty was there to compare
    logged = ("train_reward", "train_kl", "train_completion_length", "train_entropy", "train_loss")
    for key in logged + (("train_value_loss",) if objective == "ppo" else ()):
        # ppo takes 4 updates a step at lr 2e-2 on float noise of its own (whitening, its value head's summed
        # gradients): by the last steps its figures drift by a few 1e-4 relative (the first four agree to 1e-4)
        tolerance = {"rel": 1e-3, "abs": 5e-5} if objective == "ppo" else {"rel": 1e-4, "abs": 1e-6}
        assert [r[key] for r in one if key in r] == pytest.approx([r[key] for r in two if key in r],
                                                                   **tolerance), key
    assert [r["val_reward"] for r in one if "val_reward" in r] == \
        pytest.approx([r["val_reward"] for r in two if "val_reward" in r], abs=1e-6)
