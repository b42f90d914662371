"""Preference training end to end on tiny models: DPO with LoRA (adapters-off reference) and with full
fine-tuning (precomputed reference kept with the run), the reference-free objectives, KTO, reward models,
`tunesmith score` and `tunesmith pairs`, and a killed run that resumes bitwise."""

import json
import signal

import pytest
import torch
from helpers import cli, write_config
from safetensors.torch import load_file
from tiny import LORA, make_tiny_bert, pref_config, sentiment_rows, write_jsonl

from tunesmith.config import config_from_dict
from tunesmith.run import run

pytestmark = pytest.mark.slow


def test_dpo_with_lora_learns_the_preferences(tiny_llama, tmp_path):
    s = run(config_from_dict(pref_config(tiny_llama, tmp_path, {"name": "dpo", "beta": 0.5}, LORA)), tmp_path / "r")
    assert s["final"]["test_accuracy"] >= 0.9 and s["final"]["test_likelihood_accuracy"] >= 0.9
    # greedy answers name the chosen verdict first (DPO prefers it; it does not teach stopping after it)
    assert s["final"]["test_answer_match"] >= 0.9
    lines = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines() if "train_loss" in x]
    for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
                "logps/rejected"):
        assert f"train_{key}" in lines[-1], key
    assert lines[-1]["train_rewards/margins"] > lines[0]["train_rewards/margins"]
    assert not (tmp_path / "r" / "reference_logps.safetensors").exists()  # LoRA: adapters off is the reference
    assert (tmp_path / "r" / "adapter" / "adapter_model.safetensors").exists()
    out = cli("generate", str(tmp_path / "r"), "review the film was superb", "--max-new-tokens", "3")
    assert out.returncode == 0 and out.stdout.split("\n")[1].strip().startswith("fresh")


def test_dpo_full_precomputes_the_reference_and_resume_reuses_it(tiny_llama, tmp_path):
    cfg = pref_config(tiny_llama, tmp_path, "dpo", {"name": "full"}, chat=False, epochs=3, lr=1e-3,
                      checkpoint_every=3)
    path = write_config(tmp_path / "cfg.yaml", cfg)
    whole = cli("train", str(path), "--out", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr
    assert "reference log-probs of 96 pairs computed once" in whole.stderr
    stored = load_file(str(tmp_path / "whole" / "reference_logps.safetensors"))
    # they are the base model's own log-probs
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.data import DataConfig
    from tunesmith.data.prefs import load_pref_data
    from tunesmith.objectives.pairs import collate_pairs, encode_pairs, joint_logps
    from tunesmith.objectives.preference import stored_keys

    base, tok = AutoModelForCausalLM.from_pretrained(tiny_llama).eval(), AutoTokenizer.from_pretrained(tiny_llama)
    data = load_pref_data(DataConfig(**cfg["data"]))
    items, _ = encode_pairs(data.test, tok, 48)
    with torch.no_grad():
        logps = joint_logps(base, collate_pairs(items, tok.pad_token_id))[0].view(-1, 2)
    index = {k: i for i, k in enumerate(stored_keys(stored))}
    kept = torch.stack([stored["logps"][index[it.where]] for it in items])
    torch.testing.assert_close(kept, logps, rtol=1e-5, atol=1e-5)
    killed = cli("train", str(path), "--out", str(tmp_path / "k"), env={"TUNESMITH_KILL_AT_STEP": "7"})
    assert killed.returncode == -signal.SIGKILL
    resumed = cli("train", "--resume", str(tmp_path / "k"))
    assert resumed.returncode == 0, resumed.stderr
    assert "reference log-probs of 96 pairs read from" in resumed.stderr
    a = load_file(str(tmp_path / "whole" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "k" / "model" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("objective", [{"name": "orpo", "beta": 1.0}, {"name": "simpo", "beta": 2.0},
                                       {"name": "kto", "beta": 0.5}, {"name": "dpo", "loss_type": "ipo"}])
def test_other_objectives_train(tiny_llama, tmp_path, objective):
    name = objective["name"]
    # KTO at lr 2e-2 crossed the 0.75 line on this toy with the seed and with rounding-level changes
    # (0.69-0.81 over four seeds); at 5e-3 for 8 epochs, 0.75-1.0
    slower = {"lr": 5e-3, "epochs": 8} if name == "kto" else {}
    s = run(config_from_dict(pref_config(tiny_llama, tmp_path, objective, LORA, **slower)), tmp_path / "r")
    lines = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines() if "train_loss" in x]
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]
    if name == "orpo":  # two terms, two denominators; on this toy the SFT term learns first, the pair term slowly
        assert lines[-1]["train_nll"] < lines[0]["train_nll"] and lines[-1]["train_pairs"] < lines[0]["train_pairs"]
    else:
        assert s["final"]["test_accuracy"] >= 0.75, (name, s["final"])


def test_reward_model_scores_and_saves_a_plain_classifier(tmp_path):
    model = make_tiny_bert(tmp_path / "bert", dropout=0.0)
    # a reward for positive reviews: each pair is a positive and a negative review of the same prompt
    texts = sentiment_rows(400, 1)
    pos, neg = [r["text"] for r in texts if r["label"] == "pos"], [r["text"] for r in texts if r["label"] == "neg"]
    rows = [{"prompt": "the film", "chosen": p, "rejected": n} for p, n in zip(pos, neg, strict=False)][:96]
    data = tmp_path / "d"
    data.mkdir()
    cfg = {"model": {"name": str(model), "max_length": 32}, "objective": "reward", "method": {"name": "full"},
           "data": {"train": str(write_jsonl(data / "t.jsonl", rows)), "split": {"validation": 0.2, "test": 0.2}},
           "train": {"epochs": 15, "batch_size": 16, "lr": 1e-2, "progress": False}}
    s = run(config_from_dict(cfg), tmp_path / "r")
    assert s["final"]["test_accuracy"] >= 0.9 and s["final"]["test_margin"] > 0
    from transformers import AutoModelForSequenceClassification

    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "r" / "model")
    assert plain.config.num_labels == 1
    out = cli("score", str(tmp_path / "r"), "a superb plot", "a dull plot", "--prompt", "the film", "--json")
    assert out.returncode == 0, out.stderr
    good, bad = (json.loads(x)["reward"] for x in out.stdout.splitlines())
    assert good > bad
    refused = cli("predict", str(tmp_path / "r"), "x")
    assert refused.returncode == 2 and "use `tunesmith score`" in refused.stderr


def test_pairs_from_samples_judged_by_a_classifier(tiny_llama, tiny_bert, tmp_path):
    from tiny import tiny_config

    judge = tiny_config(tiny_bert, tmp_path / "jd", epochs=8, lr=1e-2)
    assert cli("train", str(write_config(tmp_path / "j.yaml", judge)), "--out", str(tmp_path / "judge")).returncode == 0
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("review the film\nreview the plot\nreview a scene\n")
    out = cli("pairs", "--model", str(tiny_llama), "--judge", str(tmp_path / "judge"), "--prefer", "pos",
              "--prompts", str(prompts), "--k", "4", "--max-new-tokens", "6", "--out", str(tmp_path / "pairs.jsonl"))
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    rows = [json.loads(x) for x in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert report["pairs"] == len(rows) and report["pairs"] + report["skipped_ties"] == 3
    for row in rows:
        assert row["scores"]["chosen"] > row["scores"]["rejected"] and row["chosen"] != row["rejected"]
    again = cli("pairs", "--model", str(tiny_llama), "--judge", str(tmp_path / "judge"), "--prefer", "pos",
                "--prompts", str(prompts), "--out", str(tmp_path / "pairs.jsonl"))
    assert again.returncode == 2 and "--overwrite" in again.stderr
