"""Image-classification data: image folders, CSV/JSONL/... files of image paths, or built-in image sets,
validated and split into train / validation / test, plus named extra evaluation sets (data.eval_sets, or a
built-in set's own, e.g. fashion-mnist-shift's corrupted test images).

Same rules as text classification (data/text.py): splits given as files/folders or carved from train
(seeded), seeded subsets, label names from the training split, bad rows an error naming file:line and
field or counted (on_bad_rows: skip). Image files are only checked to exist here; they are decoded later,
one at a time, by read_image (so a corrupt file is reported by name when it is first read).

Image folder layout: ROOT/CLASS/[any/sub/folders/]IMAGE, one subfolder per class, named after it.
Files that are not images (by extension) or are hidden, and files directly in ROOT, are ignored but
counted and named in the report's source line, never dropped silently.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tunesmith.data.builtin import DATASETS, get_dataset
from tunesmith.data.columns import IMAGE_COLUMNS, Columns
from tunesmith.data.conditions import condition_field, condition_path, no_conditions
from tunesmith.data.config import DataConfig, field_name
from tunesmith.data.decode import read_image  # noqa: F401  (objectives read images through this module)
from tunesmith.data.packaged import BuiltinImages, DatasetEntry, ImageArrays
from tunesmith.data.sources import Row, check_format
from tunesmith.data.splits import (
    SPLITS,
    BadRows,
    DataReport,
    columns,
    existing_file,
    finish,
    label_counts,
    merge_eval_sets,
    path_value,
    start,
)
from tunesmith.data.text import Parsed, check_label, labels_of_training, to_examples
from tunesmith.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
DEFAULT_IMAGE_FIELD = "path"
_SHOWN_IGNORED = 5


@dataclass(frozen=True, slots=True)
class ImageExample:
    image: np.ndarray | Path  # in-memory uint8 (H, W) or (H, W, 3) (built-ins: a view, not a copy) or a file
    label: int  # index into ImageData.label_names
    where: str  # "train.csv:17", "data/cats/x.png", "builtin:fashion-mnist train #123" (0-based index)
    condition: Path | None = None  # its conditioning image (diffusion with objective.control: image)


@dataclass
class ImageData:
    train: list[ImageExample]
    validation: list[ImageExample]  # empty when its fraction is 0 and no file/folder was given
    test: list[ImageExample]
    label_names: list[str]
    report: DataReport
    # named extra evaluation sets (e.g. "ood-blur"), in order: the built-in set's own, then data.eval_sets
    eval_sets: dict[str, list[ImageExample]] = field(default_factory=dict)


class _Source:
    """The examples read from one folder or file (labels still strings), plus what was ignored in it."""

    def __init__(self, path: str, parsed: list[Parsed | None], ignored: list[str], kind: str,
                 conditions: dict[str, Path] | None = None) -> None:
        self.path, self.parsed, self.ignored, self.kind = path, parsed, ignored, kind
        self.conditions = conditions or {}  # each row's conditioning image, by its `where`

    def note(self) -> str:
        """A suffix for the report's source line naming ignored files ("" when there were none)."""
        if not self.ignored:
            return ""
        n = len(self.ignored)
        shown = ", ".join(self.ignored[:_SHOWN_IGNORED]) + (
            f", ... (+{n - _SHOWN_IGNORED:,} more)" if n > _SHOWN_IGNORED else ""
        )
        return (
            f"; ignored {n:,} non-image file{'s' if n != 1 else ''} (not {' '.join(IMAGE_EXTENSIONS)}, "
            f"hidden, or outside a class folder): {shown}"
        )


# ---------------------------------------------------------------------------------------------- reading


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _class_files(folder: Path, root: Path, ignored: list[str]) -> list[Path]:
    """Image files anywhere below one class folder, sorted; follows links, but never round in a loop."""
    images: list[Path] = []
    seen: set[str] = set()
    errors: list[OSError] = []
    for dirpath, dirnames, filenames in os.walk(folder, onerror=errors.append, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        for name in sorted(dirnames):
            if name.startswith("."):  # .ipynb_checkpoints, .git, ...
                ignored.append(Path(dirpath, name).relative_to(root).as_posix() + "/")
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            path = Path(dirpath, name)
            # hidden files include macOS "._x.png" resource forks, which have an image extension
            if _is_image(name) and not name.startswith("."):
                images.append(path)
            else:
                ignored.append(path.relative_to(root).as_posix())
    if errors:
        e = errors[0]
        raise DataError(f"{e.filename or folder}: cannot list the folder ({e.strerror or e})")
    return sorted(images)


def _read_folder(path: str) -> _Source:
    root = Path(path)
    try:
        entries = sorted(root.iterdir())
    except OSError as e:
        raise DataError(f"{path}: cannot list the folder ({e.strerror or e})") from e
    ignored: list[str] = []
    classes = []
    for entry in entries:
        if entry.name.startswith("."):
            ignored.append(entry.name + ("/" if entry.is_dir() else ""))
        elif entry.is_dir():
            classes.append(entry)
        else:
            ignored.append(entry.name)
    if not classes:
        found = f" (it holds only {len(ignored):,} loose files)" if ignored else " (it is empty)"
        raise DataError(
            f"{path}: no class subfolders{found}; an image folder needs one subfolder per class, named "
            f"after it: {path}/CLASS_A/x.png, {path}/CLASS_B/y.jpg, ..."
        )
    parsed: list[Parsed | None] = []
    for folder in classes:
        before = len(ignored)
        files = _class_files(folder, root, ignored)
        if not files:
            others = len(ignored) - before
            found = f" (only {others:,} other files, e.g. {ignored[before]})" if others else ""
            raise DataError(
                f"{folder}: class folder {folder.name!r} holds no image files{found}; image files end in "
                f"{' '.join(IMAGE_EXTENSIONS)}; add images or remove the folder"
            )
        parsed += [Parsed(str(f), folder.name, str(f)) for f in files]
    return _Source(path, parsed, ignored, f"image folder, {len(classes)} classes")


def _parse_row(
    row: Row, image_field: str, label_field: str, base: Path, bad: BadRows
) -> Parsed | None:
    """Check one row of a file listing images; None when it was bad (and on_bad_rows is skip)."""
    values, where = row.values, row.where
    for name, holds in ((image_field, "image path"), (label_field, "label")):
        if name not in values:
            field = "image_field" if name == image_field else "label_field"
            bad.bad(
                where,
                f"no field {name!r} (the row has {columns(values)})",
                bad.name_column(field, holds),
            )
            return None
    value, label = path_value(values, image_field, where, bad), values[label_field]
    if value is None or not check_label(label, label_field, where, bad):
        return None
    path = existing_file(value, image_field, where, base, bad)
    return None if path is None else Parsed(str(path), str(label), where)


def _read_source(
    path: str | Path, format: str, image_field: str, label_field: str, bad: BadRows,
    condition_field: str | None = None,
) -> _Source:
    """A folder (image-folder layout) or a file of rows naming an image and its label (and, with
    `condition_field`, its conditioning image)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        if condition_field:
            raise no_conditions(path)
        return _read_folder(path)
    if not os.path.exists(path):
        here = "" if os.path.isabs(path) else f" (relative paths start at the working directory {Path.cwd()})"
        raise DataError(
            f"{path}: not found{here}; give an image folder (one subfolder per class) or a "
            f"CSV/TSV/JSONL/Parquet file with columns {image_field!r} (image path) and {label_field!r}"
        )
    base = Path(path).parent
    rows = bad.read(path, format)
    parsed, conditions = [], {}
    for r in rows:
        p = _parse_row(r, image_field, label_field, base, bad)
        if p is not None and condition_field:
            conditions[r.where] = condition_path(r, condition_field, base, bad)
            p = p if conditions[r.where] is not None else None
        parsed.append(p)
    return _Source(path, parsed, [], "", conditions)


def _image_examples(
    parsed: list[Parsed], index: dict[str, int], bad: BadRows, unknown: str, conditions: dict[str, Path]
) -> list[ImageExample]:
    return [ImageExample(Path(e.text), e.label, e.where, conditions.get(e.where))
            for e in to_examples(parsed, index, bad, unknown)]


def _unknown(source: _Source, label_field: str, tail: str) -> str:
    return f"(class folder) {tail}" if source.kind else f"(field {label_field!r}) {tail}"


# ---------------------------------------------------------------------------------------------- loading


def _image_entry(name: str) -> tuple[DatasetEntry, BuiltinImages]:
    entry = get_dataset(name)
    if entry.load_images is None:
        images = ", ".join(n for n, d in DATASETS.items() if d.load_images is not None)
        raise DataError(
            f"{name} is a {entry.task} data set, not an image one; image classification needs an image "
            f"data set (built-in: {images}) or data.train naming an image folder (one subfolder per class) "
            "or a CSV/JSONL file of image paths and labels"
        )
    return entry, entry.load_images()


def load_image_classification(cfg: DataConfig, conditioned: bool = False) -> ImageData:
    """Load, validate and split the image data a run config describes; `conditioned`: each row names a
    conditioning image too (data/conditions.py)."""
    plan = start(cfg, "an image folder or a file listing images")
    bad = plan.bad
    if isinstance(cfg.train, list) or cfg.train_weights is not None:
        raise DataError("data.train: a list of files mixed by data.train_weights is for text rows; image "
                        "classification reads one folder or file")
    Columns.of(cfg.columns, (*IMAGE_COLUMNS, "condition") if conditioned else IMAGE_COLUMNS, "image rows")
    image_field = field_name(cfg, "image") or DEFAULT_IMAGE_FIELD
    label_field = field_name(cfg, "label") or "label"
    if conditioned and cfg.builtin is not None:
        raise no_conditions(f"data.builtin: {cfg.builtin}")
    extra = condition_field(cfg) if conditioned else None
    builtin = _image_entry(cfg.builtin) if cfg.builtin is not None else None
    official_test = builtin is not None and builtin[1].test is not None and cfg.test is None
    carved = plan.carve(official_test)
    builtin_sets = builtin[1].eval_sets if builtin is not None else {}
    eval_names = merge_eval_sets(builtin_sets, plan.eval_files, cfg.builtin)
    train = None if builtin else _read_source(cfg.train, cfg.format, image_field, label_field, bad, extra)
    given = {s: _read_source(getattr(cfg, s), cfg.format, image_field, label_field, bad, extra)
             for s in ("validation", "test") if getattr(cfg, s) is not None}
    given_eval = {name: _read_source(path, cfg.format, image_field, label_field, bad, extra)
                  for name, path in plan.eval_files.items()}

    examples: dict[str, list[ImageExample]] = {}
    indices = plan.indices(len(builtin[1].train.labels) if builtin else len(train.parsed))
    if builtin is not None:
        entry, arrays = builtin
        label_names = list(arrays.label_names)  # the official order, not re-sorted
        train_source = f"builtin:{entry.name}"
        for split in ("train", *carved):
            examples[split] = _array_examples(entry.name, arrays.train, indices[split])
        if official_test:
            examples["test"] = _array_examples(entry.name, arrays.test, range(len(arrays.test.labels)))
        for name, part in builtin_sets.items():
            examples[name] = _array_examples(entry.name, part, range(len(part.labels)))
        unknown = "is not a class of the built-in data set"
    else:
        train_source = str(cfg.train)
        parsed = {s: [p for i in indices[s] if (p := train.parsed[i]) is not None] for s in ("train", *carved)}
        what = "class folder" if train.kind else f"label in field {label_field!r}"
        hint = "" if train.kind else " (is data.label_field the right column?)"
        label_names = labels_of_training(
            parsed["train"], str(cfg.train), lambda label: f"{what} ({label!r}); classification needs at least 2{hint}",
            bad, rows="images", allow_mixed=cfg.allow_mixed)
        index = {name: i for i, name in enumerate(label_names)}
        for split in ("train", *carved):
            tail = "never appears in training" if split == "train" else "never appears in the training split"
            examples[split] = _image_examples(parsed[split], index, bad, _unknown(train, label_field, tail),
                                              train.conditions)
        unknown = "never appears in the training split"

    index = {name: i for i, name in enumerate(label_names)}
    for split, source in [*given.items(), *given_eval.items()]:
        parsed_given = [p for p in source.parsed if p is not None]
        examples[split] = _image_examples(parsed_given, index, bad, _unknown(source, label_field, unknown),
                                          source.conditions)
        if not examples[split]:
            what = f"the eval set {split!r}" if split in given_eval else f"the {split} split"
            raise DataError(f"{source.path}: no images left for {what}" + bad.note())

    sources = plan.sources(train_source, [*given, *(["test"] if official_test else [])])
    if official_test:
        ignored = "; data.split.test is ignored" if cfg.split.test else ""
        sources["test"] = f"builtin:{builtin[0].name} official test set{ignored}"
    sources = {s: sources[s] for s in SPLITS}
    if train is not None:
        sources["train"] += train.note()
    for split, source in given.items():
        sources[split] += source.note()
    for name in eval_names:
        if name in given_eval:
            sources[name] = given_eval[name].path + given_eval[name].note()
        else:
            about = builtin_sets[name].about
            sources[name] = f"builtin:{cfg.builtin} {name}" + (f": {about}" if about else "")
    # a corrupted copy of the official test set: subset it like the test split, image for image
    copies = [n for n in eval_names if n in builtin_sets and builtin_sets[n].copy_of_test and official_test]
    report = finish(plan, examples, sources, eval_names, lambda ex: label_counts(ex, label_names), copies)
    return ImageData(examples["train"], examples["validation"], examples["test"], label_names, report,
                     {name: examples[name] for name in eval_names})


def _array_examples(name: str, part: ImageArrays, indices: Iterable[int]) -> list[ImageExample]:
    """Examples holding views into the built-in's one big array (no pixel is copied)."""
    images, labels = part.images, part.labels.tolist()
    prefix = f"builtin:{name} {part.part} #" if part.part else f"builtin:{name} #"
    return [ImageExample(images[i], labels[i], f"{prefix}{i}") for i in indices]


def load_labelled_images(
    path: str | Path,
    label_names: list[str],
    image_field: str | None = None,
    label_field: str | None = None,
    on_bad_rows: str = "error",
    format: str = "auto",
) -> tuple[list[ImageExample], DataReport]:
    """Load images to evaluate a trained model on (a folder or a file of paths and labels): their labels
    must be among the ones it was trained on."""
    check_format(format)
    bad = BadRows(on_bad_rows, style="flags")
    label_field = label_field or "label"
    source = _read_source(path, format, image_field or DEFAULT_IMAGE_FIELD, label_field, bad)
    index = {name: i for i, name in enumerate(label_names)}
    examples = _image_examples(
        [p for p in source.parsed if p is not None],
        index,
        bad,
        _unknown(source, label_field, "is not one the model was trained on"),
        source.conditions,
    )
    if not examples:
        raise DataError(f"{path}: no usable images" + bad.note())
    bad.stop()
    report = DataReport(
        sources={"eval": str(path) + source.note()},
        counts={"eval": len(examples)},
        label_counts={"eval": label_counts(examples, list(label_names))},
        skipped=bad.count,
        skipped_examples=list(bad.examples),
    )
    return examples, report
