"""Built-in distribution-shift sets: 20newsgroups-subpop (held-out sub-populations, eval set ood-subpop),
the plain 20newsgroups, and fashion-mnist-shift (corrupted copies of the official test images)."""

from __future__ import annotations

import gzip
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tunesmith.data import (
    DataConfig,
    SplitConfig,
    builtin_images,
    builtin_text,
    get_dataset,
    load_image_classification,
)
from tunesmith.data import load_text_classification as load_text
from tunesmith.data.builtin import DATASETS, builtin_eval_sets
from tunesmith.data.builtin_images import FASHION_MNIST_DIR, FASHION_MNIST_ENV, FMNIST_SHIFTS, corrupt_images
from tunesmith.data.builtin_text import NEWSGROUPS, NG_ID_GROUPS, NG_OOD_GROUPS, NG_SUBPOPULATIONS
from tunesmith.errors import DataError

ID_GROUPS = {
    "comp": ["comp.graphics", "comp.os.ms-windows.misc", "comp.sys.ibm.pc.hardware"],
    "rec": ["rec.autos", "rec.motorcycles"],
    "sci": ["sci.crypt", "sci.electronics"],
    "talk": ["talk.politics.guns", "talk.politics.mideast"],
}
OOD_GROUPS = {
    "comp": ["comp.sys.mac.hardware", "comp.windows.x"],
    "rec": ["rec.sport.baseball", "rec.sport.hockey"],
    "sci": ["sci.med", "sci.space"],
    "talk": ["talk.politics.misc", "talk.religion.misc"],
}
DROPPED = {"alt.atheism", "misc.forsale", "soc.religion.christian"}
SHIFTS = ["ood-noise", "ood-blur", "ood-contrast", "ood-rotate"]


# ------------------------------------------------------------------------------------- 20 Newsgroups


def test_subpopulation_groups_are_exactly_the_documented_ones() -> None:
    assert {t: list(ids) for t, (ids, _) in NG_SUBPOPULATIONS.items()} == ID_GROUPS
    assert {t: list(oods) for t, (_, oods) in NG_SUBPOPULATIONS.items()} == OOD_GROUPS
    assert set(NG_ID_GROUPS) | set(NG_OOD_GROUPS) | DROPPED == set(NEWSGROUPS) and len(NEWSGROUPS) == 20
    assert not set(NG_ID_GROUPS) & set(NG_OOD_GROUPS)
    description = get_dataset("20newsgroups-subpop").description
    for group in [*NG_ID_GROUPS, *NG_OOD_GROUPS, *DROPPED]:
        assert group in description
    docs = Path(__file__).parents[2] / "docs" / "assets.md"
    if docs.is_file():
        text = docs.read_text()
        assert all(group in text for group in NEWSGROUPS)


@pytest.fixture(scope="module")
def groups() -> dict[str, str]:
    """`where` -> newsgroup, for every post of both official files."""
    name = "20newsgroups-subpop"
    return {
        row.where: row.values["group"]
        for part in ("train", "test")
        for row in builtin_text._read_newsgroups(part, name)
    }


def test_20newsgroups_subpop_splits(groups: dict[str, str]) -> None:
    data = load_text(DataConfig(builtin="20newsgroups-subpop"))
    assert data.label_names == ["comp", "rec", "sci", "talk"]
    assert list(data.eval_sets) == ["ood-subpop"] == list(builtin_eval_sets("20newsgroups-subpop"))
    ood = data.eval_sets["ood-subpop"]
    sizes = (len(data.train), len(data.validation), len(data.test), len(ood))
    assert sizes == (4_710, 523, 3_497, 2_924)
    splits = {"train": data.train, "validation": data.validation, "test": data.test, "ood-subpop": ood}
    for split, examples in splits.items():
        part = "train" if split in ("train", "validation") else "test"
        assert all(e.where.startswith(f"builtin:20newsgroups-subpop {part}:") for e in examples), split
        allowed = set(NG_OOD_GROUPS) if split == "ood-subpop" else set(NG_ID_GROUPS)
        seen = Counter(groups[e.where] for e in examples)
        assert set(seen) == allowed, split  # no held-out group in train/validation/test, all present
        assert all(data.label_names[e.label] == groups[e.where].split(".")[0] for e in examples)
    # validation is carved from the in-distribution train posts only, disjoint from train
    train_ids = {w for w, g in groups.items() if w.split()[1].startswith("train:") and g in NG_ID_GROUPS}
    carved = [e.where for e in data.train + data.validation]
    assert len(set(carved)) == len(carved) and set(carved) == train_ids and len(train_ids) == 5_233
    assert Counter(data.label_names[e.label] for e in ood) == {"comp": 777, "rec": 796, "sci": 790, "talk": 561}
    assert data.report.label_counts["test"] == {"comp": 1_175, "rec": 793, "sci": 789, "talk": 740}
    lines = data.report.lines()
    assert "data.split.test is ignored" in data.report.sources["test"]
    assert any(line.startswith("eval set ood-subpop: 2,924 examples from builtin:20newsgroups-") for line in lines)

    again = load_text(DataConfig(builtin="20newsgroups-subpop"))
    for split, examples in splits.items():
        other = again.eval_sets[split] if split == "ood-subpop" else getattr(again, split)
        assert [(e.where, e.label) for e in other] == [(e.where, e.label) for e in examples]
    reseeded = load_text(DataConfig(builtin="20newsgroups-subpop", split=SplitConfig(validation=0.2, seed=1)))
    assert (len(reseeded.train), len(reseeded.validation)) == (4_186, 1_047)
    assert [e.where for e in reseeded.test] == [e.where for e in data.test]  # official: never re-split


def test_20newsgroups_subpop_with_user_eval_set_and_limits(tmp_path: Path) -> None:
    mine = tmp_path / "mine.jsonl"
    mine.write_text('{"text": "a new gpu driver", "label": "comp"}\n{"text": "gun laws", "label": "talk"}\n')
    cfg = DataConfig(builtin="20newsgroups-subpop", eval_sets={"mine": str(mine)}, max_eval_samples=300)
    data = load_text(cfg)
    assert list(data.eval_sets) == ["ood-subpop", "mine"] == data.report.eval_sets
    assert [data.label_names[e.label] for e in data.eval_sets["mine"]] == ["comp", "talk"]
    assert len(data.eval_sets["ood-subpop"]) == len(data.test) == len(data.validation) == 300
    assert data.report.sources["ood-subpop"].endswith("; seeded subset of 300 of 2,924 (seed 0)")
    clash = r"data\.eval_sets\.ood-subpop: the built-in data set 20newsgroups-subpop already has an eval set"
    with pytest.raises(DataError, match=clash):
        load_text(DataConfig(builtin="20newsgroups-subpop", eval_sets={"ood-subpop": str(mine)}))


def test_plain_20newsgroups() -> None:
    data = load_text(DataConfig(builtin="20newsgroups"))
    assert data.label_names == list(NEWSGROUPS) and data.eval_sets == {}
    assert (len(data.train) + len(data.validation), len(data.test)) == (11_293, 7_528)
    assert len(data.validation) == 1_129
    assert data.report.label_counts["test"]["alt.atheism"] == 319
    assert get_dataset("20newsgroups").load()[0].values["label"] == "alt.atheism"  # load(): train rows


# ------------------------------------------------------------------------------------ fashion-mnist-shift


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def test_fashion_mnist_shift_synthetic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    for part, n in (("train", 20), ("t10k", 10)):
        write_idx(tmp_path / f"{part}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 12, 10)))
        write_idx(tmp_path / f"{part}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path))
    data = load_image_classification(DataConfig(builtin="fashion-mnist-shift"))
    plain = load_image_classification(DataConfig(builtin="fashion-mnist"))
    assert list(data.eval_sets) == SHIFTS == list(FMNIST_SHIFTS) == data.report.eval_sets
    # what config checks see before loading (early stopping on an eval set) is what loading gives
    assert builtin_eval_sets("fashion-mnist-shift") == tuple(SHIFTS)
    assert {n for n, d in DATASETS.items() if d.eval_sets} == {"20newsgroups-subpop", "fashion-mnist-shift"}
    for split in ("train", "validation", "test"):  # the same splits as fashion-mnist
        assert [e.label for e in getattr(data, split)] == [e.label for e in getattr(plain, split)]
    for name, examples in data.eval_sets.items():
        assert [e.label for e in examples] == [e.label for e in data.test]
        assert examples[3].where == f"builtin:fashion-mnist-shift {name} #3"
        stack = np.stack([e.image for e in examples])
        assert stack.dtype == np.uint8 and stack.shape == (10, 12, 10)
        assert not np.array_equal(stack, np.stack([e.image for e in data.test])), name
        assert not examples[0].image.flags.writeable
        assert data.report.sources[name].startswith(f"builtin:fashion-mnist-shift {name}: official test set, ")
    assert data.report.counts["ood-rotate"] == 10


@pytest.mark.skipif(
    not Path(FASHION_MNIST_DIR, "t10k-images-idx3-ubyte.gz").is_file(),
    reason=f"dataset-fashion-mnist is not installed ({FASHION_MNIST_DIR})",
)
def test_real_fashion_mnist_shift(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(FASHION_MNIST_ENV, raising=False)
    data = load_image_classification(DataConfig(builtin="fashion-mnist-shift", max_eval_samples=500))
    assert (len(data.train), len(data.validation), len(data.test)) == (54_000, 500, 500)
    assert {name: len(examples) for name, examples in data.eval_sets.items()} == dict.fromkeys(SHIFTS, 500)
    test_images = [e.where.rsplit("#", 1)[1] for e in data.test]
    for name in SHIFTS:  # the corrupted subsets hold the same pictures as the clean test subset
        assert [e.where.rsplit("#", 1)[1] for e in data.eval_sets[name]] == test_images, name
    official = builtin_images._fashion_mnist().test
    assert official is not None
    clean = np.asarray(official.images)
    cached = builtin_images._fashion_mnist_shift().eval_sets
    monkeypatch.setattr(builtin_images, "_SHIFT_CACHE", {})  # recompute from scratch: the same pixels
    fresh = builtin_images._fashion_mnist_shift().eval_sets
    for name in SHIFTS:
        shifted = fresh[name].images
        assert shifted is not cached[name].images and np.array_equal(shifted, cached[name].images), name
        assert shifted.shape == clean.shape == (10_000, 28, 28) and shifted.dtype == np.uint8
        change = np.abs(shifted.astype(np.int16) - clean).mean()
        assert 10 < change < 60, (name, change)  # visibly corrupted, not wiped out
        assert np.array_equal(fresh[name].labels, official.labels)
        example = data.eval_sets[name][7]
        index = int(example.where.rsplit("#", 1)[1])
        assert np.array_equal(example.image, shifted[index])
    with pytest.raises(ValueError, match="unknown shift 'ood-fog'"):
        corrupt_images(clean[:2], "ood-fog")
