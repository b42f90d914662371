"""Labeling functions, the label matrix, LF statistics, and the label models (against snorkel's)."""

import warnings

import numpy as np
import pytest

from tunesmith.data.label_model import dawid_skene, fit_label_model, majority_vote
from tunesmith.data.weak import ABSTAIN, LFConfig, compile_lfs, label_matrix, lf_stats, load_lf_file
from tunesmith.errors import ConfigError, DataError


def vote_upper(text):  # a `module:function` LF for the tests
    return "pos" if text.isupper() else None


def vote_bad_label(text):
    return "maybe"


def vote_raises(text):
    raise KeyError("oops")


def test_keywords_match_whole_words_and_phrases_case_insensitively():
    (lf,) = compile_lfs([LFConfig(name="k", label="pos", keywords=["great", "well made"])], "cfg")
    assert lf.vote("A GREAT film") == "pos"
    assert lf.vote("it was Well Made.") == "pos"
    assert lf.vote("greatest ever") is None  # not a whole word
    assert lf.vote("well-made") is None  # the phrase is two words


def test_regex_and_function_lfs():
    regex, function = compile_lfs([LFConfig(name="r", label="neg", regex=r"\bnot (good|great)\b"),
                                   LFConfig(name="f", function="test_weak:vote_upper")], "cfg")
    assert regex.vote("Not good at all") == "neg" and regex.vote("good") is None
    assert function.vote("LOUD") == "pos" and function.vote("quiet") is None


@pytest.mark.parametrize("lf, message", [
    (LFConfig(name="a", label="pos"), "give exactly one of keywords, regex or function (it has none)"),
    (LFConfig(name="a", label="pos", keywords=["x"], regex="y"), "(it has keywords, regex)"),
    (LFConfig(name="a", keywords=["x"]), "needs the label it votes"),
    (LFConfig(name="a", label="pos", regex="(unclosed"), "does not compile"),
    (LFConfig(name="a", function="no_such_module_xyz:f"), "cannot import no_such_module_xyz:f"),
    (LFConfig(name="a", function="test_weak"), "is not package.module:function"),
])
def test_bad_declarations_name_the_lf(lf, message):
    with pytest.raises(ConfigError, match="'a'") as e:
        compile_lfs([lf], "cfg.yaml:3: objective.lfs")
    assert message in str(e.value)


def test_two_lfs_with_one_name_are_refused():
    with pytest.raises(ConfigError, match="share this name"):
        compile_lfs([LFConfig(name="a", label="p", keywords=["x"]), LFConfig(name="a", label="p", keywords=["y"])], "c")


def test_label_matrix_and_errors_name_the_lf_and_row():
    lfs = compile_lfs([LFConfig(name="good", label="pos", keywords=["good"]),
                       LFConfig(name="bad", label="neg", keywords=["bad"])], "c")
    L = label_matrix(lfs, ["good", "bad", "good bad", "meh"], ["f:1", "f:2", "f:3", "f:4"], ["neg", "pos"])
    assert L.tolist() == [[1, ABSTAIN], [ABSTAIN, 0], [1, 0], [ABSTAIN, ABSTAIN]]
    outside = compile_lfs([LFConfig(name="odd", function="test_weak:vote_bad_label")], "c")
    with pytest.raises(DataError, match=r"f:1: labeling function 'odd' voted 'maybe', which is not one of the labels"):
        label_matrix(outside, ["x"], ["f:1"], ["neg", "pos"])
    raising = compile_lfs([LFConfig(name="boom", function="test_weak:vote_raises")], "c")
    with pytest.raises(DataError, match=r"f:7: labeling function 'boom' raised KeyError"):
        label_matrix(raising, ["x"], ["f:7"], ["neg", "pos"])


def test_lf_file_is_checked_like_a_config(tmp_path):
    path = tmp_path / "lfs.yaml"
    path.write_text("- name: a\n  label: pos\n  keywords: [x]\n- name: b\n  lable: neg\n")
    with pytest.raises(ConfigError, match=r"lfs.yaml.*1.lable.*did you mean 'label'"):
        load_lf_file(path)


def test_lf_stats_coverage_overlap_conflict_accuracy():
    L = np.array([[0, 0, ABSTAIN], [0, 1, ABSTAIN], [ABSTAIN, ABSTAIN, ABSTAIN], [1, ABSTAIN, ABSTAIN]])
    gold = np.array([0, 1, 0, 1])
    stats = lf_stats(L, ["a", "b", "never"], 2, gold)
    a, b, never = (stats["lfs"][n] for n in ("a", "b", "never"))
    assert a["coverage"] == 0.75 and a["overlap"] == 0.5 and a["conflict"] == 0.25
    assert a["accuracy"] == pytest.approx(2 / 3) and a["judged"] == 3
    assert b["coverage"] == 0.5 and b["accuracy"] == 1.0
    assert never["coverage"] == 0.0 and never["accuracy"] is None
    assert stats["total"]["coverage"] == 0.75 and stats["total"]["conflicting"] == 0.25


def test_majority_vote_ties_and_uncovered_rows_are_explicit():
    L = np.array([[0, 0, 1], [0, 1, ABSTAIN], [ABSTAIN, ABSTAIN, ABSTAIN]])
    soft = majority_vote(L, 2)
    assert soft[0].tolist() == [1.0, 0.0]
    assert soft[1].tolist() == [0.5, 0.5]  # a tie is split, not silently given to label 0
    assert np.isnan(soft[2]).all()  # no LF voted: no label


def test_ties_break_at_random_with_a_fixed_seed():
    L = np.array([[0, 1]] * 400)
    model = fit_label_model("majority", L, 2)
    first, again = model.predict(L), model.predict(L)
    assert (first == again).all() and 0.4 < first.mean() < 0.6


def synthetic(n=3000, k=3, seed=0):
    """Labels from a class balance; LFs from the Dawid-Skene model: each fires with its own rate, votes
    the true label with its own accuracy, otherwise a wrong one (some LFs only ever vote one label)."""
    rng = np.random.default_rng(seed)
    y = rng.choice(k, size=n, p=[0.5, 0.3, 0.2])
    columns = []
    for j in range(9):
        fire = rng.random(n) < rng.uniform(0.2, 0.6)
        accurate = rng.random(n) < rng.uniform(0.55, 0.9)
        wrong = (y + rng.integers(1, k, size=n)) % k
        vote = np.where(accurate, y, wrong)
        if j % 3 == 0:  # a unipolar LF (a keyword list): votes only its label, fires more on it
            target = j % k
            vote = np.where((vote == target) & fire, target, ABSTAIN)
        columns.append(np.where(fire, vote, ABSTAIN))
    return np.stack(columns, 1), y


def accuracy(L, y, labels):
    covered = (L != ABSTAIN).any(1)
    return float((labels[covered] == y[covered]).mean())


@pytest.mark.parametrize("seed", [0, 1])
def test_dawid_skene_matches_or_beats_snorkel_label_model(seed):
    snorkel = pytest.importorskip("snorkel.labeling.model")
    L, y = synthetic(seed=seed)
    ours = fit_label_model("dawid_skene", L, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = snorkel.LabelModel(cardinality=3, verbose=False)
        reference.fit(L, n_epochs=500, seed=0, progress_bar=False)
    theirs = accuracy(L, y, reference.predict(L, tie_break_policy="random"))
    mine = accuracy(L, y, ours.predict(L))
    majority = accuracy(L, y, fit_label_model("majority", L, 3).predict(L))
    assert mine >= theirs - 0.005, (mine, theirs)
    assert mine > majority  # it learned which LFs to trust
    # it learned the class balance without labels
    np.testing.assert_allclose(ours.prior, [0.5, 0.3, 0.2], atol=0.05)
    soft = ours.soft_labels(L)
    covered = (L != ABSTAIN).any(1)
    assert np.isnan(soft[~covered]).all() and np.allclose(soft[covered].sum(1), 1)


def test_dawid_skene_learns_lf_accuracy():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 6000)
    rates = [0.95, 0.65, 0.65, 0.65, 0.65]
    L = np.stack([np.where(rng.random(6000) < r, y, 1 - y) for r in rates], 1)
    _, _, confusion = dawid_skene(L, 2)
    # confusion[j, c, 1 + c]: P(LF j votes c | true c)
    assert confusion[0, 0, 1] > 0.9 and confusion[0, 1, 2] > 0.9
    assert 0.55 < confusion[1, 0, 1] < 0.75 and 0.55 < confusion[1, 1, 2] < 0.75
    # three noisy LFs agreeing lose to the good one
    votes = np.array([[0, 1, 1, 1, ABSTAIN]])
    assert fit_label_model("dawid_skene", L, 2).predict(votes)[0] == 0
    assert fit_label_model("majority", L, 2).predict(votes)[0] == 1
