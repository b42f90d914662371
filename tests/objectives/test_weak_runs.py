"""Weak supervision end to end on a tiny BERT: LFs in the config, a weak fine-tune then COSINE, relabeling
in the log and the state, a killed run that resumes bitwise across a relabeling, `tunesmith weak-stats`,
and the bad-input errors."""

import json
import signal

import numpy as np
import pytest
import torch
from helpers import cli, model_weights, write_config
from tiny import NEGATIVE, POSITIVE, sentiment_rows, write_jsonl

from tunesmith.config import config_from_dict
from tunesmith.errors import ConfigError, DataError
from tunesmith.run import run

pytestmark = pytest.mark.slow

# each LF knows two of the five words of its sentiment: the others only self-training can pick up
LFS = [{"name": "pos_words", "label": "pos", "keywords": POSITIVE[:2]},
       {"name": "neg_words", "label": "neg", "keywords": NEGATIVE[:2]},
       {"name": "pos_regex", "label": "pos", "regex": r"\b(fine|lovely)\b"}]


def weak_config(model, tmp, stages=True, n_train=160, gold=False, **objective):
    data = tmp / "data"
    data.mkdir(parents=True, exist_ok=True)
    # no labels: weak supervision; gold: the label column is there (never trained on, only scored against)
    train = [r if gold else {"text": r["text"]} for r in sentiment_rows(n_train, 1)]
    cfg = {"model": {"name": str(model), "max_length": 16},
           "objective": {"name": "weak", "lfs": LFS, "update_period": 4, "eps": 0.05} | objective,
           "data": {"train": str(write_jsonl(data / "train.jsonl", train)),
                    "validation": str(write_jsonl(data / "val.jsonl", sentiment_rows(40, 2))),
                    "test": str(write_jsonl(data / "test.jsonl", sentiment_rows(64, 3)))},
           "train": {"epochs": 8, "batch_size": 16, "lr": 1e-2, "progress": False, "warmup_ratio": 0.0,
                     "log_every": 1, "checkpoint_minutes": None, "eval_every": 5}}
    if stages:
        cfg["stages"] = [{"name": "weak", "method": {"name": "full"}, "epochs": 8},
                         {"name": "cosine", "method": {"name": "full"}, "max_steps": 14, "lr": 1e-3}]
    return cfg


OPTIONS = [{"contrastive_features": "teacher"}, {"contrastive_pairs": "random"}, {"class_frequency": "batch"},
           {"contrastive_features": "teacher", "contrastive_pairs": "random", "class_frequency": "batch",
            "distmetric": "l2"}]


def test_weak_then_cosine_trains_relabels_and_reports(tiny_bert, tmp_path):
    s = run(config_from_dict(weak_config(tiny_bert, tmp_path)), tmp_path / "r")
    final = s["final"]
    # the LFs cover the texts that hold one of their words; the stats and the matrix are kept with the run
    stats = json.loads((tmp_path / "r" / "weak" / "lf_stats.json").read_text())
    assert stats["train"]["lfs"]["pos_words"]["coverage"] > 0.1
    assert stats["dev"]["lfs"]["neg_words"]["accuracy"] == 1.0  # a keyword LF on this data is never wrong
    assert 0.4 < final["train_lf_coverage"] < 0.8
    assert list((tmp_path / "r" / "weak").glob("label_matrix-*.npy"))
    assert (tmp_path / "r" / "weak" / "lf_stats.png").stat().st_size > 0
    # stage 1 trains on covered texts only; COSINE on all, relabeling at 0, 4, 8, 12
    assert s["stages"][0]["steps"] < s["stages"][1]["steps"] or s["stages"][1]["steps"] == 14
    assert final["cosine_relabels"] == 4.0 and final["cosine_relabel_seconds"] > 0
    lines = [json.loads(x) for x in (tmp_path / "r" / "stages" / "2-cosine" / "metrics.jsonl").read_text().splitlines()
             if "train_loss" in x]
    for key in ("train_self_training", "train_confidence", "train_contrastive", "train_selected"):
        assert key in lines[-1], key
    # the relabeling at the start goes out with step 1's metrics, then after steps 4, 8, 12
    assert [line["step"] for line in lines if "relabel_seconds" in line] == [1, 4, 8, 12]
    assert final["test_accuracy"] >= 0.85, final
    # the run is a plain classifier
    out = cli("predict", str(tmp_path / "r"), "the film was great")
    assert out.returncode == 0 and out.stdout.startswith("pos"), out.stderr


def test_cosine_reaches_texts_no_lf_covers(tiny_bert, tmp_path):
    """Stage 1 learns the LFs' words (and, from co-occurrence, little else); COSINE's pseudo-labels on
    the uncovered texts are where the rest is learned: test accuracy on the texts no LF covers goes up."""
    s = run(config_from_dict(weak_config(tiny_bert, tmp_path, stages=False)), tmp_path / "weak-only")
    both = run(config_from_dict(weak_config(tiny_bert, tmp_path)), tmp_path / "cosine")
    assert both["final"]["test_accuracy"] >= s["final"]["test_accuracy"]
    assert "cosine_relabels" not in s["final"]  # no stage is called cosine: weak fine-tuning only


@pytest.mark.parametrize("options", [{}, OPTIONS[-1]], ids=["default", "official-variants"])
def test_killed_run_resumes_bitwise_across_a_relabeling(tiny_bert, tmp_path, options):
    # the variants' state too: the teacher's features, the predictions to sharpen per batch, random pairs
    cfg = weak_config(tiny_bert, tmp_path, **options)
    cfg["train"]["checkpoint_every"] = 3
    cfg["stages"][1]["max_steps"] = 56  # longer than stage 1 (48 steps): the kill hook counts a stage's own steps
    path = write_config(tmp_path / "cfg.yaml", cfg)
    whole = cli("train", str(path), "--out", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr
    # killed at COSINE step 53, after the relabeling at 52; the last checkpoint (51) is from before it
    killed = cli("train", str(path), "--out", str(tmp_path / "k"), env={"TUNESMITH_KILL_AT_STEP": "53"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert "step 52: COSINE relabel 14" in killed.stderr
    resumed = cli("train", "--resume", str(tmp_path / "k"))
    assert resumed.returncode == 0, resumed.stderr
    assert "step 52: COSINE relabel 14" in resumed.stderr  # replayed from step 51, relabeled again
    a, b = model_weights(tmp_path / "whole"), model_weights(tmp_path / "k")
    assert all(torch.equal(a[k], b[k]) for k in a)
    summaries = [json.loads((tmp_path / r / "summary.json").read_text())["final"] for r in ("whole", "k")]
    assert summaries[0]["test_accuracy"] == summaries[1]["test_accuracy"]
    assert summaries[1]["cosine_relabels"] == 14.0  # the count came back from the checkpoint


def test_checkpoints_carry_the_pseudo_labels(tiny_bert, tmp_path):
    """The objective's state (pseudo-labels, selection weights, relabel count) is in every checkpoint."""
    from tunesmith.train import checkpoint as ckpt

    path = write_config(tmp_path / "cfg.yaml", weak_config(tiny_bert, tmp_path))
    assert cli("train", str(path), "--out", str(tmp_path / "r")).returncode == 0
    found = ckpt.load_checkpoint(tmp_path / "r" / "stages" / "2-cosine" / "checkpoints" / "step-00000014")
    state = found[1]["states"]["objective"]
    assert state["stage"] == "cosine" and state["relabels"] == 4  # relabeled at 0, 4, 8 and 12
    assert state["targets"].shape == (160, 2) and torch.allclose(state["targets"].sum(-1), torch.ones(160))
    assert ((state["weights"] == 0) | (state["weights"] > 0.05)).all()


def test_weak_stats_command(tiny_bert, tmp_path):
    path = write_config(tmp_path / "cfg.yaml", weak_config(tiny_bert, tmp_path))
    out = cli("weak-stats", str(path), "--out", str(tmp_path / "stats"))
    assert out.returncode == 0, out.stderr
    assert "pos_words" in out.stdout and "coverage" in out.stdout and "label model:" in out.stdout
    stats = json.loads((tmp_path / "stats" / "lf_stats.json").read_text())
    assert set(stats) >= {"train", "dev", "test", "label_model"}
    assert stats["test"]["label_model_accuracy"] > 0.6
    assert (tmp_path / "stats" / "lf_stats.png").exists()
    assert not (tmp_path / "runs").exists()  # nothing else written, no model loaded


def test_unlabelled_rows_with_a_label_column_are_fine_and_gold_gives_the_ceiling(tiny_bert, tmp_path):
    cfg = weak_config(tiny_bert, tmp_path, stages=False, label_model="gold")
    with pytest.raises(DataError, match="gold trains on the rows' own labels, and this row has none"):
        run(config_from_dict(cfg), tmp_path / "r")
    cfg["data"]["train"] = str(write_jsonl(tmp_path / "labelled.jsonl", sentiment_rows(160, 1)))
    ceiling = run(config_from_dict(cfg), tmp_path / "gold")
    assert ceiling["final"]["test_accuracy"] >= 0.95  # every word is learned from the real labels
    cfg["objective"]["label_model"] = "majority"
    weak = run(config_from_dict(cfg), tmp_path / "weak")  # the label column is there, and not trained on
    assert weak["final"]["train_label_model_accuracy"] == 1.0  # the hidden labels score the LFs
    assert weak["final"]["test_accuracy"] < ceiling["final"]["test_accuracy"]


def test_bad_inputs(tiny_bert, tmp_path):
    base = weak_config(tiny_bert, tmp_path)
    bad_label = json.loads(json.dumps(base))
    bad_label["objective"]["lfs"][0]["label"] = "positive"
    with pytest.raises(DataError, match=r"objective\.lfs\.0 'pos_words': votes 'positive', which is not one of"):
        run(config_from_dict(bad_label), tmp_path / "a")
    assert not (tmp_path / "a").exists()  # refused before the run dir is written
    in_file = write_config(tmp_path / "bad.yaml", bad_label)
    refused = cli("train", str(in_file), "--out", str(tmp_path / "a"))
    line = next(i for i, text in enumerate(in_file.read_text().splitlines(), 1) if "label: positive" in text)
    assert refused.returncode == 2 and f"{in_file}:" in refused.stderr and "'pos_words': votes 'positive'" in \
        refused.stderr, refused.stderr
    assert abs(int(refused.stderr.split(f"{in_file}:")[1].split(":")[0]) - line) <= 4  # the LF's own lines
    missing = json.loads(json.dumps(base))
    missing["objective"]["lfs"].append({"name": "mine", "function": "no_such_pkg_q:vote"})
    with pytest.raises(ConfigError, match=r"objective\.lfs\.3.*'mine': cannot import no_such_pkg_q:vote"):
        config_from_dict(missing)
    silent = json.loads(json.dumps(base))
    silent["objective"]["lfs"] = [{"name": "never", "label": "pos", "keywords": ["zebra"]}]
    with pytest.raises(DataError, match="no labeling function voted on any of the 160 training texts"):
        run(config_from_dict(silent), tmp_path / "b")
    first = json.loads(json.dumps(base))
    first["stages"] = first["stages"][::-1]
    with pytest.warns(UserWarning, match="self-training \\('cosine'\\) is the first stage"):
        config_from_dict(first)  # allowed: model.name may already be fine-tuned on the weak labels
    unnamed = json.loads(json.dumps(base))
    unnamed["stages"][1]["name"] = "selftrain"
    with pytest.raises(ConfigError, match="'cosine' is not one of the stages"):
        config_from_dict(unnamed)
    for key, value in (("contrastive_features", "frozen"), ("contrastive_pairs", "some"),
                       ("class_frequency", "epoch")):
        wrong = json.loads(json.dumps(base))
        wrong["objective"][key] = value
        with pytest.raises(ConfigError, match=rf"objective\.{key}: '{value}' is not one of"):
            config_from_dict(wrong)


def test_builtin_weak_sets_bring_their_lfs():
    from tunesmith.data.builtin import get_dataset
    from tunesmith.objectives.weak import _LF_DIR, Weak

    for name, labels in (("rotten-tomatoes-weak", ["fresh", "rotten"]),
                         ("20newsgroups-weak", ["comp", "rec", "sci", "talk"])):
        cfg = config_from_dict({"model": {"name": "minilm-l6"}, "objective": "weak",
                                "data": {"builtin": name, "max_train_samples": 300, "max_eval_samples": 100}})
        objective = Weak(cfg)
        data = objective.load_data(cfg)
        assert data.label_names == labels and len(data.validation) <= 100
        assert objective.stats["train"]["total"]["coverage"] > 0.2
        assert (np.array([e.label for e in data.test]) >= 0).all()
        assert data.report.label_counts["train"] == {}  # training labels are not used, so not reported
        lf_file = (_LF_DIR / get_dataset(name).labeling_functions).read_text()
        assert "never tuned on the test labels" in lf_file


def test_function_lfs_are_found_beside_the_config_and_predict_needs_no_lf_code(tiny_bert, tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "my_rules_q7.py").write_text("def stars(text):\n    return 'pos' if 'superb' in text.split() else None\n")
    cfg = weak_config(tiny_bert, tmp_path, stages=False)
    cfg["objective"]["lfs"] = LFS + [{"name": "stars", "function": "my_rules_q7:stars"}]
    cfg["train"]["epochs"] = 2
    path = write_config(project / "cfg.yaml", cfg)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    stats = cli("weak-stats", str(path), "--out", str(tmp_path / "stats"), cwd=elsewhere)  # no PYTHONPATH=.
    assert stats.returncode == 0, stats.stderr
    assert "stars" in stats.stdout
    trained = cli("train", str(path), "--out", str(tmp_path / "r"), cwd=elsewhere)
    assert trained.returncode == 0, trained.stderr
    saved = (tmp_path / "r" / "config.yaml").read_text()
    assert f"code_dir: {project}" in saved  # recorded: a resumed run finds the code again
    (project / "my_rules_q7.py").unlink()  # the LF code is gone: the trained classifier still predicts
    out = cli("predict", str(tmp_path / "r"), "the film was great", cwd=elsewhere)
    assert out.returncode == 0 and out.stdout.startswith("pos"), out.stderr
    gone = cli("weak-stats", str(path), "--out", str(tmp_path / "stats2"), cwd=elsewhere)
    assert gone.returncode == 2 and "cannot import my_rules_q7:stars" in gone.stderr
    assert f"looked in {project}, then the working directory" in gone.stderr


def test_a_cosine_stage_that_selects_nothing_says_why_and_says_so_in_the_summary(tiny_bert, tmp_path, capsys):
    cfg = weak_config(tiny_bert, tmp_path, eps=0.9999)
    cfg["stages"][1]["max_steps"] = 8
    s = run(config_from_dict(cfg), tmp_path / "r")
    err = capsys.readouterr().err
    assert "0 selected (0.0%, confidence > 0.9999); none is confident enough to learn from (the most confident " \
           "text: 0." in err
    assert s["final"]["cosine_selected_fraction"] == 0.0
    (warning,) = [w for w in s["warnings"] if "COSINE" in w]
    assert warning.startswith("COSINE selected no text at any of its 2 relabelings, so the self-training stage "
                              "learned nothing from its loss")
    assert f"warning: {warning}" in err


def test_the_cause_named_when_cosine_starts_from_early_restored_weights():
    from types import SimpleNamespace

    from tunesmith.objectives.weak import Weak

    objective = Weak()
    objective._context = SimpleNamespace(previous={"name": "weak", "steps": 60, "best": {
        "step": 10, "metric": "val_accuracy", "value": 0.8, "restored": True}})
    assert objective._starting_point() == ("; it started from the weak stage's weights of step 10 of 60, which "
                                           "early stopping restored (val_accuracy 0.8000)")
    objective._context.previous["best"]["restored"] = False
    assert objective._starting_point() == ""


def test_self_training_evaluates_its_start_and_never_ends_below_it(tiny_bert, tmp_path):
    """A self-training stage that only destroys (a learning rate of 1.0) keeps the model it started from:
    its starting point is evaluated (step 0) and is the best it saw."""
    cfg = weak_config(tiny_bert, tmp_path)
    cfg["stages"][1]["lr"] = 1.0
    s = run(config_from_dict(cfg), tmp_path / "r")
    lines = [json.loads(x) for x in (tmp_path / "r" / "stages" / "2-cosine" / "metrics.jsonl").read_text().splitlines()]
    evals = [line for line in lines if "val_accuracy" in line]
    assert evals[0]["step"] == 0 and len(evals) == 4  # the start, then steps 5, 10, 14
    assert max(e["val_accuracy"] for e in evals[1:]) < evals[0]["val_accuracy"]
    assert s["stages"][1]["best"] == {"step": 0, "metric": "val_accuracy", "value": evals[0]["val_accuracy"],
                                      "restored": True}
    assert s["final"]["val_accuracy"] == evals[0]["val_accuracy"]
    weak_lines = (tmp_path / "r" / "stages" / "1-weak" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(next(x for x in weak_lines if "val_accuracy" in x))["step"] > 0  # only self-training does


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "+".join(f"{k}={v}" for k, v in o.items()))
def test_each_cosine_variant_trains_and_gold_labels_never_reach_training(tiny_bert, tmp_path, options):
    """Each variant self-trains; a label column in the training file changes the diagnostics, not the
    weights; the pseudo-label accuracies are those of the pseudo-labels the run kept, worked out here."""
    from tunesmith.train import checkpoint as ckpt

    runs = {}
    for gold in (False, True):
        cfg = weak_config(tiny_bert, tmp_path / str(gold), gold=gold, **options)
        cfg["train"]["checkpoint_every"] = 14
        runs[gold] = run(config_from_dict(cfg), tmp_path / f"r{gold}")
    a, b = model_weights(tmp_path / "rFalse"), model_weights(tmp_path / "rTrue")
    assert all(torch.equal(a[k], b[k]) for k in a)  # the gold labels changed nothing that trains
    plain, scored = runs[False]["final"], runs[True]["final"]
    assert plain["test_accuracy"] >= 0.7 and plain["cosine_relabels"] == 4.0, plain
    assert not any(k.startswith("cosine_pseudo_accuracy") for k in plain)
    for term in ("self_training", "confidence", "contrastive"):
        assert scored[f"cosine_{term}_sum"] == plain[f"cosine_{term}_sum"]
    assert plain["cosine_self_training_sum"] > 0
    # by hand: the last relabeling's pseudo-labels (in the step-14 checkpoint) against the gold labels
    state = ckpt.load_checkpoint(tmp_path / "rTrue" / "stages" / "2-cosine" / "checkpoints" / "step-00000014")[1]
    state = state["states"]["objective"]
    assert ("features" in state) == (options.get("contrastive_features") == "teacher")
    if "features" in state:  # the teacher's features of every training text, fixed at the relabeling
        assert state["features"].shape[0] == 160 and state["features"].abs().sum() > 0
    assert ("probs" in state) == (options.get("class_frequency") == "batch")
    gold = np.array([["neg", "pos"].index(r["label"]) for r in sentiment_rows(160, 1)])
    matrix = np.load(next((tmp_path / "rTrue" / "weak").glob("label_matrix-*.npy")))
    covered, selected = (matrix != -1).any(axis=1), state["weights"].numpy() > 0
    right = state["targets"].argmax(-1).numpy() == gold
    assert scored["cosine_pseudo_accuracy"] == pytest.approx(right.mean(), abs=1e-4)
    for name, mask in {"covered_selected": covered & selected, "uncovered_selected": ~covered & selected,
                       "covered_unselected": covered & ~selected,
                       "uncovered_unselected": ~covered & ~selected}.items():
        key = f"cosine_pseudo_accuracy_{name}"
        assert (key in scored) == bool(mask.any())
        if mask.any():
            assert scored[key] == pytest.approx(right[mask].mean(), abs=1e-4)
    lines = [json.loads(x) for x in (tmp_path / "rTrue" / "stages" / "2-cosine" / "metrics.jsonl").read_text()
             .splitlines() if "relabel_seconds" in x]
    assert all("pseudo_accuracy" in line for line in lines)
    assert all("period_contrastive_sum" in line for line in lines[1:])  # every relabeling after the first
    # the stage's sum: the periods the relabelings closed, and the steps after the last one (13, 14)
    assert sum(line["period_self_training_sum"] for line in lines[1:]) < scored["cosine_self_training_sum"]
