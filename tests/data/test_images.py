"""Image-classification data: image folders, files of image paths, built-in image sets (IDX and CSV),
decoding to uint8 RGB; every problem names the file (and line and field)."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tunesmith.data import (
    DataConfig,
    ImageExample,
    SplitConfig,
    get_dataset,
    load_image_classification,
    load_labelled_images,
    load_text_classification,
    read_image,
)
from tunesmith.data.builtin import FASHION_MNIST_DIR, FASHION_MNIST_ENV, FASHION_MNIST_LABELS
from tunesmith.errors import DataError


def png(path: Path, value: int = 0, mode: str = "RGB", size: tuple[int, int] = (4, 3)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode != "RGB" else (value, value, value)).save(path)
    return path


def image_folder(root: Path, counts: dict[str, int]) -> Path:
    for label, n in counts.items():
        for i in range(n):
            png(root / label / f"{i:03d}.png", i)
    return root


# ------------------------------------------------------------------------------------------ image folders


def test_image_folder_classes_counts_and_deterministic_split(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "imgs", {"dog": 12, "cat": 8})
    png(root / "cat" / "nested" / "deep.JPG", 1)  # recursive, extension case-insensitive
    cfg = DataConfig(train=str(root), split=SplitConfig(validation=0.2, test=0.1, seed=1))
    data = load_image_classification(cfg)
    assert data.label_names == ["cat", "dog"]
    assert (len(data.train), len(data.validation), len(data.test)) == (15, 4, 2)
    everything = data.train + data.validation + data.test
    assert sorted(str(e.image) for e in everything) == sorted(str(p) for p in root.rglob("*.*"))
    assert all(isinstance(e.image, Path) and e.where == str(e.image) for e in everything)
    assert all(data.label_names[e.label] == Path(e.image).relative_to(root).parts[0] for e in everything)
    again = load_image_classification(cfg)
    assert [e.where for e in again.validation] == [e.where for e in data.validation]
    other = load_image_classification(DataConfig(train=str(root), split=SplitConfig(0.2, 0.1, seed=2)))
    assert [e.where for e in other.validation] != [e.where for e in data.validation]
    assert data.report.counts == {"train": 15, "validation": 4, "test": 2}
    assert sum(data.report.label_counts["train"].values()) == 15


def test_non_image_files_are_counted_not_dropped_silently(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "imgs", {"a": 3, "b": 3})
    (root / "a" / "notes.txt").write_text("x")
    (root / "b" / "._001.png").write_bytes(b"\x00\x05")  # macOS resource fork: hidden, not an image
    (root / "README.md").write_text("loose file in the root")
    data = load_image_classification(DataConfig(train=str(root), split=SplitConfig(0.0, 0.0)))
    assert len(data.train) == 6
    source = data.report.sources["train"]
    assert "ignored 3 non-image files" in source
    assert "a/notes.txt" in source and "README.md" in source and "b/._001.png" in source
    assert any("ignored 3" in line for line in data.report.lines())
    assert data.report.skipped == 0


def test_empty_class_folder_is_an_error_naming_it(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "imgs", {"a": 2, "b": 2})
    (root / "empty").mkdir()
    (root / "empty" / "info.txt").write_text("x")
    with pytest.raises(DataError, match=r"imgs/empty: class folder 'empty' holds no image files"):
        load_image_classification(DataConfig(train=str(root)))


def test_folder_without_class_subfolders(tmp_path: Path) -> None:
    png(tmp_path / "flat" / "x.png")
    with pytest.raises(DataError, match=r"flat: no class subfolders .*one subfolder per class"):
        load_image_classification(DataConfig(train=str(tmp_path / "flat")))


def test_validation_folder_with_unknown_class(tmp_path: Path) -> None:
    train = image_folder(tmp_path / "train", {"a": 2, "b": 2})
    val = image_folder(tmp_path / "val", {"a": 1, "zebra": 1})
    with pytest.raises(DataError, match=r"val/zebra/000\.png: label 'zebra' \(class folder\) never appears"):
        load_image_classification(DataConfig(train=str(train), validation=str(val)))


# ------------------------------------------------------------------------------------------ path files


def test_csv_with_relative_paths(tmp_path: Path) -> None:
    for i in range(6):
        png(tmp_path / "images" / f"{i}.png", i)
    lines = ["path,label"] + [f"images/{i}.png,{'odd' if i % 2 else 'even'}" for i in range(6)]
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    data = load_image_classification(DataConfig(train=str(tmp_path / "train.csv"), split=SplitConfig(0, 0)))
    assert data.label_names == ["even", "odd"]
    assert [e.where for e in data.train] == [f"{tmp_path / 'train.csv'}:{n}" for n in range(2, 8)]
    assert data.train[3].image == tmp_path / "images" / "3.png" and data.train[3].label == 1
    assert read_image(data.train[3]).shape == (3, 4, 3)


def test_jsonl_custom_fields_and_test_file(tmp_path: Path) -> None:
    rows = [{"file": f"i/{i}.png", "y": i % 3} for i in range(9)]
    for r in rows:
        png(tmp_path / r["file"])
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "test.jsonl").write_text(json.dumps({"file": "i/0.png", "y": 2}) + "\n")
    cfg = DataConfig(
        train=str(tmp_path / "train.jsonl"),
        test=str(tmp_path / "test.jsonl"),
        image_field="file",
        label_field="y",
        split=SplitConfig(validation=0.0),
    )
    data = load_image_classification(cfg)
    assert data.label_names == ["0", "1", "2"]
    assert (len(data.train), len(data.validation), len(data.test)) == (9, 0, 1)
    assert data.test[0].label == 2 and data.report.sources["test"] == str(tmp_path / "test.jsonl")


def test_missing_image_names_file_line_and_field(tmp_path: Path) -> None:
    png(tmp_path / "ok.png")
    (tmp_path / "train.csv").write_text("path,label\nok.png,a\nmissing.png,b\nok.png,b\n")
    cfg = DataConfig(train=str(tmp_path / "train.csv"), split=SplitConfig(0, 0))
    with pytest.raises(
        DataError, match=r"train\.csv:3: field 'path': image 'missing\.png' not found .*on_bad_rows: skip"
    ):
        load_image_classification(cfg)
    cfg.on_bad_rows = "skip"
    data = load_image_classification(cfg)
    assert len(data.train) == 2 and data.report.skipped == 1
    assert "train.csv:3: field 'path'" in data.report.skipped_examples[0]


def test_missing_column_and_non_string_path(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("image,label\nx.png,a\n")
    with pytest.raises(DataError, match=r"a\.csv:2: no field 'path' .*set data\.image_field"):
        load_image_classification(DataConfig(train=str(tmp_path / "a.csv")))
    (tmp_path / "b.jsonl").write_text(json.dumps({"path": 3, "label": "a"}) + "\n")
    with pytest.raises(DataError, match=r"b\.jsonl:1: field 'path' is a int \(3\), not a string"):
        load_image_classification(DataConfig(train=str(tmp_path / "b.jsonl")))


def test_unknown_label_in_test_file(tmp_path: Path) -> None:
    png(tmp_path / "x.png")
    (tmp_path / "train.csv").write_text("path,label\nx.png,cat\nx.png,dog\n")
    (tmp_path / "test.csv").write_text("path,label\nx.png,cat\nx.png,bird\n")
    cfg = DataConfig(train=str(tmp_path / "train.csv"), test=str(tmp_path / "test.csv"), split=SplitConfig(0))
    with pytest.raises(DataError, match=r"test\.csv:3: label 'bird' \(field 'label'\) never appears"):
        load_image_classification(cfg)


def test_load_labelled_images_folder_and_file(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "eval", {"b": 2, "a": 1})
    examples, report = load_labelled_images(root, ["a", "b", "c"])
    assert [e.label for e in examples] == [0, 1, 1]
    assert report.counts == {"eval": 3} and report.label_counts["eval"] == {"a": 1, "b": 2, "c": 0}
    (tmp_path / "e.csv").write_text("img,cls\neval/a/000.png,a\neval/b/000.png,z\n")
    with pytest.raises(DataError, match=r"e\.csv:3: label 'z' .*not one the model was trained on"):
        load_labelled_images(tmp_path / "e.csv", ["a", "b"], image_field="img", label_field="cls")
    examples, report = load_labelled_images(
        tmp_path / "e.csv", ["a", "b"], image_field="img", label_field="cls", on_bad_rows="skip"
    )
    assert len(examples) == 1 and report.skipped == 1


# ------------------------------------------------------------------------------------------ decoding


def test_corrupt_image_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"this is not a png at all")
    example = ImageExample(bad, 0, "train.csv:17")
    with pytest.raises(DataError, match=r"train\.csv:17: .*broken\.png: cannot read the image"):
        read_image(example)
    good = png(tmp_path / "cut.png", 7, size=(64, 64))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:60])
    with pytest.raises(DataError, match=r"truncated\.png: cannot read the image"):
        read_image(ImageExample(truncated, 0, str(truncated)))


def test_grayscale_png_and_in_memory_arrays_become_rgb(tmp_path: Path) -> None:
    gray = png(tmp_path / "g.png", 200, mode="L", size=(5, 2))
    out = read_image(ImageExample(gray, 0, str(gray)))
    assert out.shape == (2, 5, 3) and out.dtype == np.uint8
    assert (out == 200).all()
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    out = read_image(ImageExample(array, 0, "mem"))
    assert out.shape == (3, 4, 3) and out.dtype == np.uint8
    assert (out[..., 0] == array).all() and (out[..., 1] == array).all() and (out[..., 2] == array).all()
    assert read_image(ImageExample(array[:, :, None], 0, "mem")).shape == (3, 4, 3)
    with pytest.raises(DataError, match=r"mem: in-memory image has shape \(3, 4, 2\)"):
        read_image(ImageExample(np.zeros((3, 4, 2), np.uint8), 0, "mem"))


def test_palette_rgba_and_16_bit_images(tmp_path: Path) -> None:
    rgba = tmp_path / "a.png"
    Image.new("RGBA", (3, 3), (10, 20, 30, 128)).save(rgba)
    assert read_image(ImageExample(rgba, 0, "a"))[0, 0].tolist() == [10, 20, 30]
    pal = tmp_path / "p.gif"
    Image.new("RGB", (3, 3), (255, 0, 0)).convert("P").save(pal)
    assert read_image(ImageExample(pal, 0, "p"))[1, 1].tolist() == [255, 0, 0]
    deep = tmp_path / "d.png"
    Image.fromarray(np.full((2, 2), 32896, np.uint16)).save(deep)  # 32896 = 128 * 257
    assert read_image(ImageExample(deep, 0, "d"))[0, 0].tolist() == [128, 128, 128]


# ------------------------------------------------------------------------------------------ built-ins


def write_idx(path: Path, array: np.ndarray, header: bytes | None = None) -> None:
    if header is None:
        header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def fake_fashion(folder: Path, n_train: int = 20, n_test: int = 10) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for part, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{part}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 6, 5)))
        write_idx(folder / f"{part}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return folder


def test_fashion_mnist_from_synthetic_idx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FASHION_MNIST_ENV, str(fake_fashion(tmp_path / "fm")))
    data = load_image_classification(
        DataConfig(builtin="fashion-mnist", split=SplitConfig(validation=0.25, test=0.5, seed=0))
    )
    assert data.label_names == FASHION_MNIST_LABELS and data.label_names[0] == "T-shirt/top"
    assert (len(data.train), len(data.validation), len(data.test)) == (15, 5, 10)  # split.test ignored
    assert [e.label for e in data.test] == [i % 10 for i in range(10)]
    assert data.test[3].where == "builtin:fashion-mnist test #3"
    assert data.report.sources["test"].startswith("builtin:fashion-mnist official test set")
    assert "data.split.test is ignored" in data.report.sources["test"]
    assert data.train[0].where.startswith("builtin:fashion-mnist train #")
    assert data.train[0].image.shape == (6, 5) and data.train[0].image.base is not None  # a view
    assert read_image(data.train[0]).shape == (6, 5, 3)


def test_fashion_mnist_corrupt_or_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = fake_fashion(tmp_path / "fm")
    monkeypatch.setenv(FASHION_MNIST_ENV, str(folder))
    bad = folder / "t10k-images-idx3-ubyte.gz"
    write_idx(bad, np.zeros((10, 6, 5)), header=bytes([0, 0, 8, 3]) + struct.pack(">3I", 10, 6, 6))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz: the IDX header says 10 x 6 x 6"):
        load_image_classification(DataConfig(builtin="fashion-mnist"))
    write_idx(bad, np.zeros((10, 6, 5)), header=b"\x08\x03\x00\x00")
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz: not an IDX file"):
        load_image_classification(DataConfig(builtin="fashion-mnist"))
    write_idx(bad, np.zeros((9, 6, 5)))
    with pytest.raises(DataError, match=r"holds 9 images but .*t10k-labels-idx1-ubyte\.gz 10 labels"):
        load_image_classification(DataConfig(builtin="fashion-mnist"))
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match=r"apt-get install dataset-fashion-mnist"):
        load_image_classification(DataConfig(builtin="fashion-mnist"))


def test_text_and_image_sets_do_not_mix(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"fashion-mnist is an image data set; use objective image_classify"):
        load_text_classification(DataConfig(builtin="fashion-mnist"))
    with pytest.raises(DataError, match=r"rotten-tomatoes is a text-classification data set, not an image"):
        load_image_classification(DataConfig(builtin="rotten-tomatoes"))


def test_image_registry_entries() -> None:
    for name in ("fashion-mnist", "mnist-5k"):
        entry = get_dataset(name)
        assert entry.task == "image-classification" and entry.load_images is not None
        assert entry.license and entry.source and entry.description and entry.install_hint
    assert "data.split.test is ignored" in get_dataset("fashion-mnist").description


@pytest.mark.skipif(
    not Path(FASHION_MNIST_DIR, "t10k-images-idx3-ubyte.gz").is_file(),
    reason=f"dataset-fashion-mnist is not installed ({FASHION_MNIST_DIR})",
)
def test_real_fashion_mnist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(FASHION_MNIST_ENV, raising=False)
    data = load_image_classification(DataConfig(builtin="fashion-mnist"))  # split.validation 0.1
    assert (len(data.train), len(data.validation), len(data.test)) == (54_000, 6_000, 10_000)
    assert len(data.label_names) == 10 and data.label_names[-1] == "Ankle boot"
    assert data.report.label_counts["test"] == dict.fromkeys(FASHION_MNIST_LABELS, 1_000)
    assert data.test[0].image.shape == (28, 28)
    first = read_image(data.test[0])
    assert first.shape == (28, 28, 3) and first.dtype == np.uint8
    assert data.label_names[data.test[0].label] == "Ankle boot"  # the well-known first t10k image


def test_real_mnist_5k() -> None:
    data = load_image_classification(DataConfig(builtin="mnist-5k"))
    assert len(data.train) + len(data.validation) + len(data.test) == 5_000
    assert (len(data.validation), len(data.test)) == (500, 500)
    assert data.label_names == [str(d) for d in range(10)]
    total = {
        name: sum(data.report.label_counts[s][name] for s in ("train", "validation", "test"))
        for name in data.label_names
    }
    assert total == dict.fromkeys(data.label_names, 500)
    assert data.train[0].where.startswith("builtin:mnist-5k #")
    image = read_image(data.train[0])
    assert image.shape == (28, 28, 3) and image.max() > 0
