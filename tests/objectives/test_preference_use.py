"""Finished preference runs used as a user would: the prompt format a run trained with is the one
generate / score / pairs use (and say), `eval` evaluates reward and DPO runs on a new pairs file,
`score --file` reads a pairs file by its columns; and what a run refuses or says about its data."""

import json

import pytest
from helpers import cli, write_config
from tiny import LORA, make_tiny_bert, pref_config, pref_rows, sentiment_rows, write_jsonl

from tunesmith.config import config_from_dict
from tunesmith.data import DataConfig
from tunesmith.data.prefs import load_pref_data
from tunesmith.errors import DataError
from tunesmith.run import run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def plain_dpo(tiny_llama, tmp_path_factory):
    """A DPO + LoRA run on plain-string prompts, with a model whose tokenizer has a chat template."""
    tmp = tmp_path_factory.mktemp("plain-dpo")
    cfg = pref_config(tiny_llama, tmp, {"name": "dpo", "beta": 0.5}, LORA, chat=False, epochs=3)
    summary = run(config_from_dict(cfg), tmp / "r")
    return tmp / "r", summary, cfg


def test_a_run_remembers_its_prompt_format_and_generate_uses_it(plain_dpo, tiny_llama, tmp_path):
    run_dir, summary, _ = plain_dpo
    assert summary["prompt_format"] == "plain"
    prompt = "the film was superb answer"
    default = cli("generate", str(run_dir), prompt, "--max-new-tokens", "4", "--json")
    assert default.returncode == 0, default.stderr
    assert "prompts: plain text, without the chat template, as the run was trained" in default.stderr
    plain = cli("generate", str(run_dir), prompt, "--max-new-tokens", "4", "--json", "--no-chat")
    chat = cli("generate", str(run_dir), prompt, "--max-new-tokens", "4", "--json", "--chat")
    assert json.loads(default.stdout) == json.loads(plain.stdout)  # before: the chat template by default
    assert json.loads(default.stdout)["prompt"] == prompt
    assert "prompts: the chat template" in chat.stderr and "the run trained on plain prompts" in chat.stderr
    base = cli("generate", str(tiny_llama), prompt, "--max-new-tokens", "2")  # a model, not a run: its template
    assert "prompts: the chat template (user turn, then the assistant header), as the tokenizer has one" in base.stderr


def test_eval_on_a_pairs_file_reproduces_the_runs_own_test_metrics(plain_dpo):
    run_dir, summary, cfg = plain_dpo
    out = cli("eval", str(run_dir), "--data", cfg["data"]["test"], "--out", str(run_dir.parent / "rows.jsonl"))
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert "reference log-probs of 16 pairs from" in out.stderr
    for key in ("loss", "accuracy", "margin", "likelihood_accuracy"):
        assert result[key] == pytest.approx(summary["final"][f"test_{key}"], rel=1e-4, abs=1e-6), key
    rows = [json.loads(x) for x in (run_dir.parent / "rows.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and sum(r["correct"] for r in rows) / 16 == pytest.approx(result["accuracy"])
    assert all(r["margin"] == pytest.approx(r["chosen_reward"] - r["rejected_reward"]) for r in rows)


def test_exact_match_is_skipped_for_free_form_answers(plain_dpo, tiny_llama, tmp_path):
    _, summary, _ = plain_dpo
    assert "test_answer_match" in summary["final"]  # two distinct answers (fresh / rotten): label-like
    # five distinct answers only, but sentences: free-form (before: exact match ran, and read 0.0)
    rows = [{"prompt": f"review {i} answer", "chosen": f" the film was very {w} and the plot was {w}",
             "rejected": " the plot was dull"} for i, w in enumerate(["good", "great", "fine", "lovely", "superb"] * 6)]
    data = tmp_path / "d"
    data.mkdir()
    cfg = {"model": {"name": str(tiny_llama), "max_length": 48}, "objective": "dpo", "method": LORA,
           "data": {"train": str(write_jsonl(data / "t.jsonl", rows)), "split": {"validation": 0.0, "test": 0.8}},
           "train": {"max_steps": 1, "batch_size": 4, "progress": False}}
    out = cli("train", str(write_config(tmp_path / "c.yaml", cfg)), "--out", str(tmp_path / "r"))
    assert out.returncode == 0, out.stderr
    assert "dpo: exact match skipped: the test answers are free-form (24 of 24 run longer than 5 words)" in out.stderr
    final = json.loads((tmp_path / "r" / "summary.json").read_text())["final"]
    assert "test_exact_match" not in final and not (tmp_path / "r" / "exact_match.jsonl").exists()


@pytest.fixture(scope="module")
def reward_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reward")
    model = make_tiny_bert(tmp / "bert", dropout=0.0)
    texts = sentiment_rows(400, 1)
    pos, neg = [r["text"] for r in texts if r["label"] == "pos"], [r["text"] for r in texts if r["label"] == "neg"]
    rows = [{"prompt": "the film", "chosen": p, "rejected": n} for p, n in zip(pos, neg, strict=False)]
    test = write_jsonl(tmp / "test.jsonl", rows[96:128])
    cfg = {"model": {"name": str(model), "max_length": 32}, "objective": "reward", "method": {"name": "full"},
           "data": {"train": str(write_jsonl(tmp / "t.jsonl", rows[:96])), "test": str(test),
                    "split": {"validation": 0.2}},
           "train": {"epochs": 10, "batch_size": 16, "lr": 1e-2, "progress": False}}
    summary = run(config_from_dict(cfg), tmp / "r")
    assert summary["best"]["metric"] == "val_loss"  # a reward model's default, as TRL (was val_accuracy)
    return tmp / "r", summary, test


def test_score_reads_a_pairs_file_by_its_columns(reward_run):
    run_dir, summary, test = reward_run
    out = cli("score", str(run_dir), "--file", str(test), "--json")
    assert out.returncode == 0, out.stderr
    *rows, total = [json.loads(x) for x in out.stdout.splitlines()]
    assert len(rows) == 32 and total["pairs"] == 32  # before: each raw JSON line was scored as one text
    assert total["accuracy"] == pytest.approx(summary["final"]["test_accuracy"])
    assert total["mean_margin"] == pytest.approx(summary["final"]["test_margin"], rel=1e-4)
    assert rows[0]["where"] == f"{test}:1" and rows[0]["prompt"] == "the film"
    one = cli("score", str(run_dir), "--prompt", "the film", json.loads(test.read_text().splitlines()[0])["chosen"],
              "--json")
    assert json.loads(one.stdout)["reward"] == pytest.approx(rows[0]["chosen_reward"], abs=1e-5)
    evaluated = json.loads(cli("eval", str(run_dir), "--data", str(test)).stdout)
    assert evaluated["accuracy"] == pytest.approx(summary["final"]["test_accuracy"])
    assert evaluated["loss"] == pytest.approx(summary["final"]["test_loss"], rel=1e-4)
    texts = write_jsonl(test.parent / "texts.jsonl", [{"text": "a superb plot"}, {"text": "a dull plot"}])
    by_text = [json.loads(x) for x in cli("score", str(run_dir), "--file", str(texts), "--json").stdout.splitlines()]
    assert [r["text"] for r in by_text] == ["a superb plot", "a dull plot"]
    assert by_text[0]["reward"] > by_text[1]["reward"]
    wrong = write_jsonl(test.parent / "wrong.jsonl", [{"review": "x"}])
    refused = cli("score", str(run_dir), "--file", str(wrong))
    assert refused.returncode == 2 and f"{wrong}:1: no text in field 'completion'" in refused.stderr


def test_one_chat_pair_among_plain_ones_is_refused(tmp_path):
    rows = pref_rows(20, 1, chat=False)
    rows[6] = pref_rows(1, 2, chat=True)[0]
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    with pytest.raises(DataError, match=rf"^{path}:7: 1 of 20 rows are conversations .* the other 19 are plain "
                                        r"strings .*data.allow_mixed: true"):
        load_pref_data(DataConfig(train=str(path)))
    assert len(load_pref_data(DataConfig(train=str(path), allow_mixed=True)).train) == 16


def test_the_data_report_counts_pairs_and_says_when_kto_unpairs_them(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", pref_rows(20, 1, chat=False))
    lines = load_pref_data(DataConfig(train=str(path))).report.lines()
    assert any(line.startswith("train: 16 pairs from") for line in lines)
    assert not any("labels:" in line for line in lines)  # before: "labels: pairs: 16"
    kto = load_pref_data(DataConfig(train=str(path)), paired=False).report.lines()
    assert any(line.startswith("train: 32 judgements from") for line in kto)
    assert "  judged: desirable: 16; undesirable: 16" in kto
    assert ("20 pairs (prompt, chosen, rejected) read as 40 unpaired judgements: each chosen answer desirable, each "
            "rejected one undesirable") in kto


def test_every_bad_pair_is_named_at_once(tmp_path):
    rows = pref_rows(10, 1, chat=False)
    for i in (2, 5, 8):
        del rows[i]["rejected"]
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    with pytest.raises(DataError) as e:
        load_pref_data(DataConfig(train=str(path)))
    assert str(e.value).startswith("3 bad rows")
    assert all(f"{path}:{i + 1}: field 'rejected' is missing" in str(e.value) for i in (2, 5, 8))
