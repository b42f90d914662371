"""Image runs end to end on EfficientNet-Lite0 at 32 px over small synthetic image folders: frozen
blocks really stay frozen (weights *and* BatchNorm statistics), LoRA runs predict / eval / merge, and a
killed run with random crops and flips resumes bitwise."""

import json
import signal

import numpy as np
import pytest
import torch
from helpers import cli, model_weights, write_config
from PIL import Image

from tunesmith.config import config_from_dict
from tunesmith.models.registry import vision_spec
from tunesmith.models.vision import read_weights
from tunesmith.run import run

pytestmark = pytest.mark.slow
COLOURS = {"red": (200, 40, 40), "green": (40, 190, 60), "blue": (50, 60, 210)}


def image_folder(root, per_class, seed):
    rng = np.random.default_rng(seed)
    for name, rgb in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(np.array(rgb) + rng.normal(0, 40, (20, 24, 3)), 0, 255).astype(np.uint8)
            image = Image.fromarray(pixels)
            (image.convert("L") if i % 5 == 0 else image).save(root / name / f"{i}.png")  # some grayscale
    return root


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    return image_folder(root / "train", 16, 0), image_folder(root / "test", 6, 1)


def image_config(images, method, **train):
    train_dir, test_dir = images
    return {"model": {"name": "efficientnet-lite0", "image_size": 32}, "objective": "image_classify",
            "method": method, "data": {"train": str(train_dir), "test": str(test_dir),
                                       "split": {"validation": 0.125, "test": 0.0}},
            "train": {"epochs": 2, "batch_size": 8, "lr": 1e-2, "progress": False, "eval_every": "epoch"} | train}


def test_frozen_blocks_keep_weights_and_batchnorm_statistics(images, tmp_path):
    s = run(config_from_dict(image_config(images, {"name": "freeze", "freeze_layers": 3})), tmp_path / "r")
    pretrained = read_weights(vision_spec("efficientnet-lite0").weights())
    saved = model_weights(tmp_path / "r")
    frozen = [k for k in saved if k.startswith(("_conv_stem.", "_bn0.", "_blocks.0.", "_blocks.1.", "_blocks.2."))]
    assert any("running_mean" in k for k in frozen) and any("num_batches_tracked" in k for k in frozen)
    for key in frozen:
        assert torch.equal(saved[key], pretrained[key]), key
    # the blocks that train do update their statistics (so the check above could have failed)
    assert not torch.equal(saved["_blocks.10._bn1.running_mean"], pretrained["_blocks.10._bn1.running_mean"])
    assert not torch.equal(saved["_blocks.10._project_conv.weight"], pretrained["_blocks.10._project_conv.weight"])
    assert s["trainable_params"] < s["total_params"]
    assert (tmp_path / "r" / "plots" / "confusion_test.png").stat().st_size > 0
    assert set(s["details"]["test"]["accuracy"]) == set(COLOURS)


def test_linear_probe_leaves_every_pretrained_tensor_alone(images, tmp_path):
    run(config_from_dict(image_config(images, {"name": "linear_probe"}, lr=0.05)), tmp_path / "r")
    pretrained = read_weights(vision_spec("efficientnet-lite0").weights())
    saved = model_weights(tmp_path / "r")
    for key, value in saved.items():
        if not key.startswith("_fc."):
            assert torch.equal(value, pretrained[key]), key


def test_lora_run_predicts_evaluates_and_merges(images, tmp_path):
    s = run(config_from_dict(image_config(images, {"name": "lora", "lora": {"r": 4}}, epochs=4, lr=3e-3)),
            tmp_path / "r")
    assert s["final"]["test_accuracy"] >= 0.6  # chance is 1/3: the adapter learned (0.83 here)
    assert (tmp_path / "r" / "adapter" / "adapter_config.json").exists()
    picture = next((images[1] / "green").glob("*.png"))
    out = cli("predict", str(tmp_path / "r"), str(picture), "--top-k", "2")
    assert out.returncode == 0, out.stderr
    top = dict(kv.split("=") for kv in out.stdout.strip().split("\t")[1].split("  "))
    assert len(top) == 2 and set(top) <= set(COLOURS) and 0 < sum(map(float, top.values())) <= 1.0001
    ev = cli("eval", str(tmp_path / "r"), "--data", str(images[1]))
    assert ev.returncode == 0, ev.stderr
    assert json.loads(ev.stdout)["accuracy"] == pytest.approx(s["final"]["test_accuracy"])
    merged = cli("merge", str(tmp_path / "r"), str(tmp_path / "merged"))
    assert merged.returncode == 0, merged.stderr
    assert not [k for k in read_weights(tmp_path / "merged" / "model.safetensors") if "lora_" in k]
    from tunesmith.infer import open_run
    from tunesmith.models.vision import load_saved_vision

    cfg, adapter_model, prep, labels = open_run(tmp_path / "r")
    plain, _, merged_labels = load_saved_vision(tmp_path / "merged", cfg.model)
    x = torch.randn(3, 3, 32, 32)
    assert merged_labels == labels
    assert (plain.eval()(x) - adapter_model(x)).abs().max().item() <= 1e-4


def test_killed_run_with_augmentation_resumes_bitwise(images, tmp_path):
    cfg = image_config(images, {"name": "full"}, epochs=2, checkpoint_every=3, lr=1e-3)
    cfg["data"]["augment"] = ["crop", "flip"]
    path = write_config(tmp_path / "cfg.yaml", cfg)
    assert cli("train", str(path), "--out", str(tmp_path / "full")).returncode == 0
    killed = cli("train", str(path), "--out", str(tmp_path / "killed"), env={"TUNESMITH_KILL_AT_STEP": "4"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = cli("train", "--resume", str(tmp_path / "killed"))
    assert resumed.returncode == 0, resumed.stderr
    a, b = model_weights(tmp_path / "full"), model_weights(tmp_path / "killed")
    for key in a:
        assert torch.equal(a[key], b[key]), key
