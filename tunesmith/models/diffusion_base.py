"""The built-in diffusion base: a small class-conditioned UNet pretrained here, since no pretrained
diffusion weights install offline. Its recipe is a tunesmith run (objective diffusion, full fine-tuning
of a seeded random init on Fashion-MNIST), started as `python -m tunesmith train` in its own process;
the first use trains it once and caches the result under $TUNESMITH_CACHE/models/<name>, as the GGUF
conversion does for smollm2-135m.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from tunesmith.errors import TunesmithError
from tunesmith.models.gguf import _locked, cache_root

BASE_NAME = "unet-fmnist"
RECIPE_VERSION = 1  # bump when the recipe changes, so the cached base is trained again

# ~1.0M parameters: ResNet blocks at 32 / 64 / 64 channels over 32x32 / 16x16 / 8x8, self-attention at
# 8x8 and in the middle (at 16x16 too it costs 40% more time per step), a class embedding added to the
# timestep embedding
UNET_CONFIG: dict[str, Any] = {
    "sample_size": 32, "in_channels": 1, "out_channels": 1, "layers_per_block": 1,
    "block_out_channels": [32, 64, 64],
    "down_block_types": ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
    "mid_block_type": "UNetMidBlock2D", "num_class_embeds": 10, "norm_num_groups": 8,
    "attention_head_dim": 8, "cross_attention_dim": 64,
}
SCHEDULER_CONFIG: dict[str, Any] = {"num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2",
                                    "prediction_type": "epsilon"}

# the recipe: full training of the init on all 60,000 Fashion-MNIST training images, 32x32 grey
RECIPE: dict[str, Any] = {
    "objective": {"name": "diffusion", "samples_per_class": 8, "sample_steps": 50},
    "method": {"name": "full"},
    "data": {"builtin": "fashion-mnist", "split": {"seed": 0, "validation": 0.02}, "max_eval_samples": 1000},
    "train": {"batch_size": 64, "lr": 1e-3, "max_steps": 2000, "warmup_ratio": 0.02, "schedule": "cosine",
              "weight_decay": 0.0, "eval_every": 500, "log_every": 50, "init_seed": 0, "data_seed": 0,
              "early_stopping": {"patience": None, "restore_best": False}},
}


def init_unet(out_dir: str | Path, seed: int = 0, **overrides: Any) -> Path:
    """A seeded random-init UNet2DConditionModel (UNET_CONFIG with `overrides`) and its DDPM scheduler,
    written as a diffusers folder: the recipe's start, and the tiny models the tests train."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**(UNET_CONFIG | overrides))
    unet.save_pretrained(out_dir / "unet", safe_serialization=True)
    DDPMScheduler(**SCHEDULER_CONFIG).save_pretrained(out_dir / "scheduler")
    return out_dir


def init_caption_pipeline(out_dir: str | Path, words: list[str], unet: dict[str, Any], width: int,
                          seed: int = 0) -> Path:
    """A seeded random-init text-to-image pipeline folder: a UNet2DConditionModel of `unet` (with
    cross-attention blocks of width `width`), a word-level tokenizer over `words` (captions of up to 8
    tokens) and a 2-layer CLIP text encoder of that width: the small pipelines the tests and the
    text-to-image benchmark train."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

    out_dir = init_unet(out_dir, seed=seed, **unet)
    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", *words])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                            model_max_length=8).save_pretrained(out_dir / "tokenizer")
    torch.manual_seed(seed)
    CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=width, intermediate_size=2 * width,
                                 num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=8,
                                 pad_token_id=0, bos_token_id=1, eos_token_id=1)).save_pretrained(out_dir / "text_encoder")
    return out_dir


def _record() -> dict[str, Any]:
    return {"recipe_version": RECIPE_VERSION, "unet": UNET_CONFIG, "scheduler": SCHEDULER_CONFIG, "recipe": RECIPE}


def pretrain(work_dir: Path, threads: int | None = None, steps: int | None = None) -> Path:
    """Run the recipe in `work_dir` (a tunesmith run, in its own process: resumable, with its metrics,
    plots and samples); returns the trained model's folder."""
    import subprocess
    import sys

    import yaml

    run_dir = work_dir / "run"
    if (run_dir / "summary.json").exists():
        return run_dir / "model"
    if (run_dir / "checkpoints").is_dir():  # a recipe killed part-way goes on from its last checkpoint
        command = ["train", "--resume", str(run_dir)]
    else:
        init = init_unet(work_dir / "init", seed=RECIPE["train"]["init_seed"])
        cfg = json.loads(json.dumps(RECIPE))
        cfg["model"] = {"name": str(init)}
        cfg["train"]["threads"] = threads
        if steps is not None:
            cfg["train"]["max_steps"] = steps
        (work_dir / "recipe.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        command = ["train", str(work_dir / "recipe.yaml"), "--out", str(run_dir), "--overwrite"]
    done = subprocess.run([sys.executable, "-m", "tunesmith", *command], check=False)
    if done.returncode != 0:
        raise TunesmithError(f"{BASE_NAME}: its recipe stopped (exit {done.returncode}); run it again to go on from "
                             f"its last checkpoint in {run_dir}")
    return run_dir / "model"


def locate_base() -> Path:
    """The cached base, trained once on first use (about 19 minutes on 2 CPU cores)."""
    import sys

    out = cache_root() / "models" / BASE_NAME
    if _current(out):
        return out
    with _locked(out.with_name(out.name + ".lock")):
        if _current(out):
            return out
        print(f"{BASE_NAME}: training the built-in diffusion base once (recipe in "
              f"tunesmith/models/diffusion_base.py; cached in {out})", file=sys.stderr, flush=True)
        model = pretrain(out.with_name(out.name + ".work"), threads=os.cpu_count())
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(model, tmp)
        (tmp / "recipe.json").write_text(json.dumps(_record(), indent=2) + "\n")
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    return out


def _current(out: Path) -> bool:
    try:
        return json.loads((out / "recipe.json").read_text()) == _record()
    except (OSError, ValueError):
        return False
