"""Diffusion runs on tiny random-init diffusers UNets over image folders of our own making: the loss is
the scheduler's noise-prediction MSE (hand-computed), a LoRA run's adapter loads into plain diffusers and
PEFT with equal outputs, merging keeps them, sampling is seeded, a paused run resumes to the same end,
and bad input is one clear line before training."""

import json

import numpy as np
import pytest
import torch
from helpers import cli
from PIL import Image

from tunesmith import api
from tunesmith.config import config_from_dict
from tunesmith.errors import ConfigError, DataError
from tunesmith.methods.diffusers_lora import LORA_WEIGHTS
from tunesmith.models.diffusion import load_unet
from tunesmith.models.diffusion_base import init_caption_pipeline, init_unet
from tunesmith.objectives.denoising import per_image_loss, snr_weights
from tunesmith.run import run

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.slow
TINY = {"sample_size": 16, "block_out_channels": [16, 32, 32], "num_class_embeds": 3, "norm_num_groups": 8}


@pytest.fixture(scope="module")
def tiny_unet(tmp_path_factory):
    return init_unet(tmp_path_factory.mktemp("unet") / "tiny", seed=0, **TINY)


def shapes_folder(root, per_class=12, size=16, seed=0):
    """Three classes of grey 16x16 images: a bright square, a bright bar, a dark frame."""
    rng = np.random.default_rng(seed)
    for name in ("square", "bar", "frame"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            x = rng.normal(40, 10, (size, size))
            o = rng.integers(0, 4)
            if name == "square":
                x[4 + o : 10 + o, 4:10] = 220
            elif name == "bar":
                x[:, 6 + o : 9 + o] = 220
            else:
                x[:2], x[-2:], x[:, :2], x[:, -2:] = 200, 200, 200, 200
            Image.fromarray(np.clip(x, 0, 255).astype(np.uint8)).convert("RGB").save(root / name / f"{i}.png")
    return root


def config(model, data, method="lora", steps=6, **train):
    return {"model": {"name": str(model)}, "method": {"name": method, "lora": {"r": 4, "alpha": 8}},
            "objective": {"name": "diffusion", "samples_per_class": 2, "sample_steps": 4},
            "data": {"train": str(data), "split": {"seed": 0, "validation": 0.2, "test": 0.2}},
            "train": {"batch_size": 8, "lr": 1e-3, "max_steps": steps, "eval_every": 3, "threads": 1,
                      "progress": False} | train}


def test_loss_is_the_schedulers_noise_prediction_error(tiny_unet):
    unet, scheduler, _ = load_unet(tiny_unet)
    torch.manual_seed(0)
    x0, noise = torch.rand(4, 1, 16, 16) * 2 - 1, torch.randn(4, 1, 16, 16)
    labels, t = torch.tensor([0, 1, 2, 0]), torch.tensor([0, 10, 500, 999])
    a = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise  # DDPM's forward process, by hand
    with torch.no_grad():
        pred = unet(noisy, t, encoder_hidden_states=None, class_labels=labels).sample
        got = per_image_loss(unet, scheduler, x0, labels, noise, t)
    torch.testing.assert_close(got, ((pred - noise) ** 2).mean(dim=(1, 2, 3)))
    snr = (a / (1 - a)).flatten()
    torch.testing.assert_close(snr_weights(scheduler, t, 5.0), torch.minimum(snr, torch.tensor(5.0)) / snr)
    v = type(scheduler).from_config(scheduler.config, prediction_type="v_prediction")
    with torch.no_grad():
        got_v = per_image_loss(unet, v, x0, labels, noise, t)
    target = a.sqrt() * noise - (1 - a).sqrt() * x0  # velocity (Salimans & Ho 2022)
    torch.testing.assert_close(got_v, ((pred - target) ** 2).mean(dim=(1, 2, 3)))
    torch.testing.assert_close(snr_weights(v, t, 5.0), torch.minimum(snr, torch.tensor(5.0)) / (snr + 1))


@pytest.fixture(scope="module")
def lora_run(tiny_unet, tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    run(config_from_dict(config(tiny_unet, shapes_folder(root / "data"))), root / "run")
    return root / "run"


def test_lora_run_loads_in_diffusers_and_peft_with_equal_outputs(tiny_unet, lora_run, tmp_path):
    from peft import PeftModel

    from tunesmith.infer import open_saved

    adapter = lora_run / "adapter"
    assert (adapter / LORA_WEIGHTS).exists() and (lora_run / "plots" / "samples.png").exists()
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == ["conv1", "conv2", "to_k", "to_out.0", "to_q", "to_v"]
    ours = open_saved(lora_run).model
    plain = diffusers.UNet2DConditionModel.from_pretrained(tiny_unet / "unet")
    plain.load_lora_adapter(str(adapter), prefix="unet", weight_name=LORA_WEIGHTS)
    peft = PeftModel.from_pretrained(diffusers.UNet2DConditionModel.from_pretrained(tiny_unet / "unet"), str(adapter))
    base = diffusers.UNet2DConditionModel.from_pretrained(tiny_unet / "unet")
    assert cli("merge", str(lora_run), str(tmp_path / "merged")).returncode == 0
    merged = diffusers.UNet2DConditionModel.from_pretrained(tmp_path / "merged" / "unet")
    x, t, c = torch.randn(3, 1, 16, 16), torch.tensor([5, 300, 900]), torch.tensor([0, 1, 2])
    with torch.no_grad():
        out = {name: m.eval()(x, t, encoder_hidden_states=None, class_labels=c).sample
               for name, m in {"ours": ours, "diffusers": plain, "peft": peft, "merged": merged, "base": base}.items()}
    # ours runs in channels-last memory format: the same sums in another order
    torch.testing.assert_close(out["diffusers"], out["ours"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["peft"], out["ours"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["merged"], out["ours"], rtol=1e-4, atol=1e-5)
    assert (out["base"] - out["ours"]).abs().max() > 1e-3  # the adapter did train


def test_sample_command_is_seeded_and_names_classes(lora_run, tmp_path):
    for out in ("a", "b"):
        done = cli("sample", str(lora_run), "--class", "bar", "--num", "2", "--steps", "3", "--out", str(tmp_path / out))
        assert done.returncode == 0, done.stderr
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == ["bar_000.png", "bar_001.png", "grid.png"]
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert Image.open(tmp_path / "a" / "bar_000.png").size == (16, 16)
    written = api.load_run(lora_run).sample(tmp_path / "api", classes=["bar"], num=2, steps=3)
    assert [p.read_bytes() for p in written] == [(tmp_path / "a" / p.name).read_bytes() for p in written]
    bad = cli("sample", str(lora_run), "--class", "circle", "--out", str(tmp_path / "c"))
    assert bad.returncode == 2 and "'circle' is not a class of this model (bar, frame, square)" in bad.stderr


def test_paused_full_run_resumes_to_the_same_end(tiny_unet, tmp_path):
    data = shapes_folder(tmp_path / "data")
    whole = run(config_from_dict(config(tiny_unet, data, method="full")), tmp_path / "whole")
    cfg = config(tiny_unet, data, method="full", pause_at_fraction=0.5)
    assert run(config_from_dict(cfg), tmp_path / "p")["paused"]
    done = run(None, tmp_path / "p", resume=True)
    assert done["final"] == whole["final"]
    assert (tmp_path / "p" / "plots" / "samples.png").read_bytes() == (tmp_path / "whole" / "plots" / "samples.png").read_bytes()


def test_bad_input_is_one_line_before_training(tiny_unet, tmp_path):
    data = shapes_folder(tmp_path / "data")
    (tmp_path / "not-a-model").mkdir()
    (tmp_path / "not-a-model" / "config.json").write_text(json.dumps({"_class_name": "BertModel"}))
    with pytest.raises(ConfigError, match="describes a 'BertModel', not a diffusers UNet"):
        api.check(config(tmp_path / "not-a-model", data))
    crossing = init_unet(tmp_path / "text", **TINY | {"down_block_types": ["DownBlock2D", "DownBlock2D",
                                                                           "CrossAttnDownBlock2D"]})
    with pytest.raises(ConfigError, match="reads captions through cross-attention, but the folder has no "
                                          "text_encoder/ or tokenizer/"):
        api.check(config(crossing, data))
    two_classes = init_unet(tmp_path / "two", **TINY | {"num_class_embeds": 2})
    with pytest.raises(ConfigError, match="embeds 2 classes; the data has 3"):
        run(config_from_dict(config(two_classes, data)), tmp_path / "r2")
    Image.new("RGB", (20, 16)).save(data / "bar" / "wide.png")
    with pytest.raises(DataError, match=r"wide.png: 20x16 pixels, but .* is 16x16"):
        run(config_from_dict(config(tiny_unet, data)), tmp_path / "r3")
    assert not (tmp_path / "r3").exists()  # found from the files' headers, before the run dir is written


def card_code_runs(run_dir, tmp_path, shape) -> str:
    """The run's model card code, run on its own: it must end with `images` of `shape`. Returns the code."""
    import subprocess
    import sys

    code = (run_dir / "adapter" / "README.md").read_text().split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "use.py").write_text(code + f"assert images.shape == {tuple(shape)}\n")
    done = subprocess.run([sys.executable, str(tmp_path / "use.py")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return code


def test_model_card_code_loads_the_lora_with_diffusers(lora_run, tmp_path):
    card = (lora_run / "adapter" / "README.md").read_text()
    assert "library_name: diffusers" in card and f"tunesmith sample {lora_run}" in card
    assert "load_lora_adapter" in card_code_runs(lora_run, tmp_path, (4, 1, 16, 16))


def test_control_encoder_starts_as_the_base_and_conditions_are_what_they_say(tiny_unet):
    from tunesmith.models.control import attach, condition_of, set_condition

    unet, _, _ = load_unet(tiny_unet)
    x, t, c = torch.randn(2, 1, 16, 16), torch.tensor([3, 700]), torch.tensor([0, 2])
    with torch.no_grad():
        before = unet(x, t, encoder_hidden_states=None, class_labels=c).sample
        names = attach(unet, 1, seed=0)
        set_condition(unet, torch.randn(2, 1, 16, 16))
        after = unet(x, t, encoder_hidden_states=None, class_labels=c).sample
    assert names and all(n.startswith("conv_in.control_encoder.") for n in names)
    torch.testing.assert_close(after, before, rtol=0, atol=0)  # zero convolution: the base, exactly
    blocks = torch.arange(16.0).view(1, 1, 4, 4).repeat_interleave(4, 2).repeat_interleave(4, 3) / 16 - 0.5
    torch.testing.assert_close(condition_of(blocks, "downsample", 4), blocks)  # already 4x4-block constant
    assert torch.equal(condition_of(torch.full((1, 1, 8, 8), 0.3), "edges"), torch.full((1, 1, 8, 8), -1.0))
    step = torch.full((1, 1, 8, 8), -1.0)
    step[..., 4:] = 1.0  # a vertical edge: the Sobel magnitude peaks on the two columns beside it
    edges = condition_of(step, "edges")
    assert edges[0, 0, :, 3:5].min() > 0.9 and edges[0, 0, :, :2].max() == -1.0


def test_control_lora_run_trains_lora_and_encoder_only_and_reopens_merged_alike(tiny_unet, tmp_path):
    from tunesmith.infer import open_saved
    from tunesmith.models.control import condition_of, set_condition

    cfg = config(tiny_unet, shapes_folder(tmp_path / "data"), steps=4)
    cfg["objective"]["control"] = "downsample"
    run(config_from_dict(cfg), tmp_path / "run")
    trainable = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())["modules_to_save"]
    assert trainable == ["conv_in.control_encoder.net.0", "conv_in.control_encoder.net.2",
                         "conv_in.control_encoder.net.4"]
    assert cli("merge", str(tmp_path / "run"), str(tmp_path / "merged")).returncode == 0
    opened, merged = open_saved(tmp_path / "run").model, load_unet(tmp_path / "merged")[0]
    base = load_unet(tiny_unet)[0]
    x, t, c = torch.rand(3, 1, 16, 16) * 2 - 1, torch.tensor([5, 300, 900]), torch.tensor([0, 1, 2])
    outs = []
    with torch.no_grad():
        for model in (opened, merged):
            set_condition(model, condition_of(x, "downsample", 4))
            outs.append(model(x, t, encoder_hidden_states=None, class_labels=c).sample)
        plain = base(x, t, encoder_hidden_states=None, class_labels=c).sample
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-5)
    assert (outs[0] - plain).abs().max() > 1e-4  # LoRA and encoder trained
    image = tmp_path / "data" / "bar" / "0.png"
    done = cli("sample", str(tmp_path / "run"), "--condition-from", str(image), "--class", "bar", "--num", "2",
               "--steps", "3", "--out", str(tmp_path / "s"))
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["0_000.png", "0_001.png", "grid.png"]
    assert "give images to make them from with --condition-from" in cli(
        "sample", str(tmp_path / "run"), "--out", str(tmp_path / "s2")).stderr


def test_two_processes_draw_what_one_does(tiny_unet, tmp_path):
    """Noise is seeded per image and step, so torchrun's two processes train the one-process run."""
    from helpers import torchrun, write_config
    from safetensors.torch import load_file

    cfg = config(tiny_unet, shapes_folder(tmp_path / "data"), steps=4)
    cfg["train"] |= {"eval_every": 2}
    path = write_config(tmp_path / "cfg.yaml", cfg)
    single = cli("train", str(path), "--out", str(tmp_path / "single"))
    assert single.returncode == 0, single.stderr
    ddp = torchrun(2, "train", str(path), "--out", str(tmp_path / "ddp"))
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    a, b = (load_file(str(tmp_path / r / "adapter" / "adapter_model.safetensors")) for r in ("single", "ddp"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    s1, s2 = (json.loads((tmp_path / r / "summary.json").read_text()) for r in ("single", "ddp"))
    assert s2["world_size"] == 2 and s2["final"]["val_loss"] == pytest.approx(s1["final"]["val_loss"], rel=1e-4)


# -- caption-conditioned pipelines --------------------------------------------------------------------

WORDS = ["a", "bright", "square", "bar", "dark", "frame", "on", "grey"]


def caption_pipeline(path, seed=0, **unet):
    """A tiny text-to-image pipeline folder: a cross-attention UNet, a CLIP text encoder and its tokenizer."""
    crossing = {"num_class_embeds": None, "cross_attention_dim": 32,
                "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
                "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]}
    return init_caption_pipeline(path, WORDS, TINY | crossing | unet, width=32, seed=seed)


def caption_rows(root):
    """The shapes as captioned images: rows {path, text} in captions.jsonl."""
    shapes_folder(root)
    words = {"square": "a bright square", "bar": "a bright bar", "frame": "a dark frame"}
    rows = [{"path": f"{name}/{i}.png", "text": words[name]} for i in range(12) for name in words]
    (root / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / "captions.jsonl"


@pytest.fixture(scope="module")
def caption_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("captions")
    pipe = caption_pipeline(root / "pipe")
    cfg = config(pipe, caption_rows(root / "data"), steps=4)
    cfg["objective"] |= {"caption_dropout": 0.25, "guidance_scale": 2.0}
    run(config_from_dict(cfg), root / "run")
    return pipe, root / "run"


def test_caption_run_trains_and_its_lora_loads_in_diffusers_with_equal_outputs(caption_run, tmp_path):
    from tunesmith.infer import open_saved

    pipe, run_dir = caption_run
    assert (run_dir / "plots" / "samples.png").exists()
    assert (run_dir / "plots" / "samples.txt").read_text().splitlines()[0].startswith("row 1: a ")
    opened = open_saved(run_dir)
    text = opened.tokenizer.text
    ids = text.tokens(["a bright bar", "a dark frame"])
    assert ids.shape == (2, 8) and ids[0, :3].tolist() == [2, 3, 5]
    plain = diffusers.UNet2DConditionModel.from_pretrained(pipe / "unet")
    plain.load_lora_adapter(str(run_dir / "adapter"), prefix="unet", weight_name=LORA_WEIGHTS)
    base = diffusers.UNet2DConditionModel.from_pretrained(pipe / "unet")
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([50, 700])
    with torch.no_grad():
        context = text.embed(ids)
        ours = opened.model(x, t, encoder_hidden_states=context).sample
        theirs = plain.eval()(x, t, encoder_hidden_states=context).sample
        other = opened.model(x, t, encoder_hidden_states=text.embed(text.tokens(["a bright square"] * 2))).sample
        before = base.eval()(x, t, encoder_hidden_states=context).sample
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)
    assert (other - ours).abs().max() > 1e-4  # the caption steers it
    assert (before - ours).abs().max() > 1e-4  # the adapter trained the cross-attention UNet
    assert cli("merge", str(run_dir), str(tmp_path / "merged")).returncode == 0
    assert (tmp_path / "merged" / "text_encoder").is_dir() and (tmp_path / "merged" / "tokenizer").is_dir()
    assert "text_encoder(ids)" in card_code_runs(run_dir, tmp_path, (4, 1, 16, 16))


def test_caption_dropout_is_seeded_and_uses_the_empty_caption(caption_run):
    from tunesmith.objectives.diffusion import Diffusion

    pipe, run_dir = caption_run
    objective = Diffusion(config_from_dict(config(pipe, run_dir) | {"objective": {
        "name": "diffusion", "caption_dropout": 0.5}}))
    from tunesmith.models.diffusion import load_parts

    _, objective.parts = load_parts(pipe)
    text = objective.parts.text
    batch = {"input_ids": text.tokens(["a bright bar"] * 16)}
    seeds = list(range(16))
    got = objective.context(batch, "cpu", seeds)
    empty, kept = text.embed(text.tokens([""]))[0], text.embed(text.tokens(["a bright bar"]))[0]
    dropped = [bool(torch.equal(row, empty)) for row in got]
    assert all(d or torch.equal(row, kept) for d, row in zip(dropped, got, strict=True))
    assert 3 <= sum(dropped) <= 13  # about half, from the images' own seeds
    assert torch.equal(objective.context(batch, "cpu", seeds), got)
    assert torch.equal(objective.context(batch, "cpu"), kept.expand(16, -1, -1))  # evaluation: never dropped


def test_guidance_mixes_the_unconditional_prediction(caption_run):
    from tunesmith.models.diffusion import load_parts
    from tunesmith.objectives.denoising import sample, sample_captions

    pipe, _ = caption_run
    unet, parts = load_parts(pipe)
    context = parts.text.embed(parts.text.tokens(["a bright bar", "a dark frame"]))
    labels = torch.zeros(2, dtype=torch.long)
    plain = sample(unet, parts.scheduler, labels, 16, 1, 3, seed=0, context=context)
    # unconditional = conditional: uncond + s * (cond - uncond) is the conditional prediction, at any s
    same = sample(unet, parts.scheduler, labels, 16, 1, 3, seed=0, context=context, guidance_scale=4.0,
                  unconditional=context[:1])
    torch.testing.assert_close(same[:1], plain[:1], rtol=1e-4, atol=1e-5)
    guided = sample_captions(unet, parts, ["a bright bar", "a dark frame"], 1, 3, 0, guidance_scale=4.0)
    assert (guided - plain).abs().max() > 1e-3


def test_sample_prompts_are_seeded_and_refused_where_they_do_not_apply(caption_run, lora_run, tmp_path):
    _, run_dir = caption_run
    for out in ("a", "b"):
        done = cli("sample", str(run_dir), "--prompt", "a bright bar", "--prompt", "a dark frame", "--num", "2",
                   "--steps", "3", "--guidance", "3", "--out", str(tmp_path / out))
        assert done.returncode == 0, done.stderr
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == ["grid.png", "prompt1_000.png", "prompt1_001.png", "prompt2_000.png", "prompt2_001.png",
                     "prompts.txt"]
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    assert "prompt2 (row 2): a dark frame" in (tmp_path / "a" / "prompts.txt").read_text()
    no_prompt = cli("sample", str(run_dir), "--out", str(tmp_path / "c"))
    assert no_prompt.returncode == 2 and "reads captions: give one or more --prompt" in no_prompt.stderr
    classes = cli("sample", str(lora_run), "--prompt", "a bar", "--out", str(tmp_path / "d"))
    assert classes.returncode == 2 and "does not read captions" in classes.stderr


def test_caption_data_errors_name_the_row_before_training(tmp_path):
    pipe = caption_pipeline(tmp_path / "pipe")
    rows = caption_rows(tmp_path / "data")
    lines = rows.read_text().splitlines()
    lines[4] = json.dumps({"path": "bar/1.png", "caption": "a bright bar"})
    rows.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"captions.jsonl:5: no field 'text' \(the row has 'path', 'caption'\).*"
                                        r"data.text_field"):
        run(config_from_dict(config(pipe, rows)), tmp_path / "r1")
    assert not (tmp_path / "r1").exists()
    cfg = config(pipe, rows) | {"data": {"train": str(rows), "text_field": "caption"}}
    with pytest.raises(DataError, match="captions.jsonl:1: no field 'caption'"):
        run(config_from_dict(cfg), tmp_path / "r2")
    folder = tmp_path / "data"  # the imagefolder layout: a metadata file with file_name and text
    (folder / "metadata.jsonl").write_text("".join(json.dumps({"file_name": f"square/{i}.png", "text": "a square"}) + "\n"
                                                   for i in range(12)))
    from tunesmith.data.captions import load_image_captions

    loaded = load_image_captions(config_from_dict(config(pipe, folder)).data)
    assert len(loaded.train) + len(loaded.validation) + len(loaded.test) == 12
    assert loaded.train[0].image.parent.name == "square" and loaded.train[0].caption == "a square"
    with pytest.raises(DataError, match="needs a metadata file"):
        load_image_captions(config_from_dict(config(pipe, folder / "bar")).data)
    with pytest.raises(ConfigError, match="control: .* is a caption-conditioned model; ControlLoRA-style"):
        api.check(config(pipe, rows) | {"objective": {"name": "diffusion", "control": "edges"}})
    config_file = pipe / "unet" / "config.json"
    config_file.write_text(json.dumps(json.loads(config_file.read_text()) | {"addition_embed_type": "text_time"}))
    with pytest.raises(ConfigError, match="addition_embed_type 'text_time' \\(SDXL-style"):
        api.check(config(pipe, rows))
    with pytest.raises(ConfigError, match="caption_dropout: is for caption-conditioned models"):
        api.check(config(init_unet(tmp_path / "plain", **TINY), folder) | {
            "objective": {"name": "diffusion", "caption_dropout": 0.1}})


def latent_pipeline(path, seed=0):
    """A tiny Stable Diffusion-style pipeline folder: 16x16 RGB images, a VAE making 4x8x8 latents, a
    cross-attention UNet on them, a text encoder, and the model_index.json diffusers' pipelines read."""
    caption_pipeline(path, seed, in_channels=4, out_channels=4, sample_size=8)
    torch.manual_seed(seed)
    diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[16, 32],
                            down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                            norm_num_groups=8, sample_size=16).save_pretrained(path / "vae")
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
             "scheduler": ["diffusers", "DDPMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "PreTrainedTokenizerFast"], "safety_checker": [None, None],
             "feature_extractor": [None, None], "requires_safety_checker": False}
    (path / "model_index.json").write_text(json.dumps(index))
    return path


def test_latent_pipeline_trains_on_vae_latents_and_diffusers_pipeline_loads_the_lora(tmp_path):
    from tunesmith.infer import open_saved
    from tunesmith.objectives.denoising import encode_latents
    from tunesmith.objectives.diffusion import Diffusion

    pipe = latent_pipeline(tmp_path / "pipe")
    cfg = config(pipe, caption_rows(tmp_path / "data"), steps=4)
    run(config_from_dict(cfg), tmp_path / "run")
    grid = Image.open(tmp_path / "run" / "plots" / "samples.png")
    assert grid.mode == "RGB" and grid.size == (2 * 16, 3 * 16)  # decoded to 16x16 pixels, not 8x8 latents
    opened = open_saved(tmp_path / "run")
    parts = opened.tokenizer
    assert (parts.prep.pixel_size, parts.prep.pixel_channels, parts.prep.latent_scale) == (16, 3, 2)
    objective = Diffusion(config_from_dict(cfg))
    objective.parts = parts
    image = tmp_path / "data" / "bar" / "0.png"
    from tunesmith.data.captions import CaptionedImage

    (item,), _ = objective.encode([CaptionedImage(image, "a bright bar", "x")], parts, 0)
    pixels = torch.from_numpy(np.array(Image.open(image).convert("RGB"))).permute(2, 0, 1).float() / 127.5 - 1
    with torch.no_grad():
        want = parts.vae.encode(pixels[None]).latent_dist.mean[0] * parts.vae.config.scaling_factor
    torch.testing.assert_close(item.latents, want)
    torch.testing.assert_close(encode_latents(parts.vae, pixels[None])[0], want)

    sd = diffusers.StableDiffusionPipeline.from_pretrained(pipe)
    sd.load_lora_weights(str(tmp_path / "run" / "adapter"), weight_name=LORA_WEIGHTS)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([50, 700])
    with torch.no_grad():
        context = parts.text.embed(parts.text.tokens(["a bright bar", "a dark frame"]))
        ours = opened.model(x, t, encoder_hidden_states=context).sample
        theirs = sd.unet.eval()(x, t, encoder_hidden_states=context).sample
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)
    made = sd("a bright bar", num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0))
    assert made.images.shape == (1, 16, 16, 3)

    done = cli("sample", str(tmp_path / "run"), "--prompt", "a dark frame", "--num", "1", "--steps", "2", "--out",
               str(tmp_path / "s"))
    assert done.returncode == 0, done.stderr
    assert Image.open(tmp_path / "s" / "prompt1_000.png").size == (16, 16)
    index = json.loads((pipe / "model_index.json").read_text())  # as Stable Diffusion's: parts a merge does not write
    (pipe / "model_index.json").write_text(json.dumps(index | {"feature_extractor": ["transformers", "CLIPImageProcessor"]}))
    assert cli("merge", str(tmp_path / "run"), str(tmp_path / "merged")).returncode == 0
    assert json.loads((tmp_path / "merged" / "model_index.json").read_text())["feature_extractor"] == [None, None]
    merged = diffusers.StableDiffusionPipeline.from_pretrained(tmp_path / "merged")
    with torch.no_grad():
        torch.testing.assert_close(merged.unet(x, t, encoder_hidden_states=context).sample, ours, rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError, match="latent diffusion model"):
        api.check(cfg | {"objective": {"name": "diffusion", "control": "edges"}})
    assert "vae.decode" in card_code_runs(tmp_path / "run", tmp_path, (4, 3, 16, 16))


def test_control_images_given_per_row_train_and_must_match_their_targets(tiny_unet, tmp_path):
    from tunesmith.infer import open_saved
    from tunesmith.objectives.diffusion import Diffusion

    data = shapes_folder(tmp_path / "data")
    rows = []
    for name in ("square", "bar", "frame"):
        (data / "cond" / name).mkdir(parents=True)
        for i in range(12):
            inverted = 255 - np.array(Image.open(data / name / f"{i}.png"))  # any image of the target's size
            Image.fromarray(inverted).save(data / "cond" / name / f"{i}.png")
            rows.append({"path": f"{name}/{i}.png", "label": name, "conditioning_image": f"cond/{name}/{i}.png"})
    (data / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = config(tiny_unet, data / "rows.jsonl")
    cfg["objective"]["control"] = "image"
    run(config_from_dict(cfg), tmp_path / "run")
    opened = open_saved(tmp_path / "run")
    assert opened.tokenizer.prep.control == "image"
    objective = Diffusion(config_from_dict(cfg))
    objective.parts = opened.tokenizer
    loaded = objective.load_data(config_from_dict(cfg))
    items, _ = objective.encode(loaded.train[:2], opened.tokenizer, 0)
    batch = objective.collate(items, None)
    torch.testing.assert_close(batch["control"], -batch["pixel_values"], atol=1e-6, rtol=0)  # the inverted targets
    done = cli("sample", str(tmp_path / "run"), "--condition-from", str(data / "cond" / "bar" / "0.png"), "--class",
               "bar", "--num", "2", "--steps", "3", "--out", str(tmp_path / "s"))
    assert done.returncode == 0, done.stderr

    Image.new("RGB", (8, 8)).save(data / "cond" / "bar" / "3.png")
    with pytest.raises(DataError, match=r"rows.jsonl:\d+: conditioning image .*3.png is 8x8 pixels, but its image "
                                        r".*bar/3.png is 16x16"):
        run(config_from_dict(cfg), tmp_path / "r2")
    rows[5].pop("conditioning_image")
    (data / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"rows.jsonl:6: no field 'conditioning_image'"):
        run(config_from_dict(cfg), tmp_path / "r3")
    folder = config(tiny_unet, data)
    folder["objective"]["control"] = "image"
    with pytest.raises(DataError, match="reads each image's conditioning image from a rows file"):
        run(config_from_dict(folder), tmp_path / "r4")
    assert not any((tmp_path / name).exists() for name in ("r2", "r3", "r4"))  # before the run dir is written


def test_grey_images_among_colour_ones_are_refused_for_a_colour_model(tmp_path):
    pipe = caption_pipeline(tmp_path / "pipe", in_channels=3, out_channels=3)
    rows = caption_rows(tmp_path / "data")
    Image.open(tmp_path / "data" / "bar" / "2.png").convert("L").save(tmp_path / "data" / "bar" / "2.png")
    with pytest.raises(DataError, match=r"captions.jsonl:\d+: a grey image, but .* is colour"):
        run(config_from_dict(config(pipe, rows)), tmp_path / "r")
    assert not (tmp_path / "r").exists()
    grey = caption_pipeline(tmp_path / "grey")  # a one-channel model turns every image grey: nothing to refuse
    run(config_from_dict(config(grey, rows, steps=1) | {"objective": {"name": "diffusion", "samples_per_class": 0}}),
        tmp_path / "ok")


def test_header_sizes_are_what_decoding_gives_exif_rotation_included(tmp_path):
    from types import SimpleNamespace

    from tunesmith.data.decode import header_of, read_image

    image = Image.new("L", (20, 10))
    exif = image.getexif()
    exif[0x0112] = 6  # stored 20 wide, shown rotated: 10 wide, 20 high
    image.save(tmp_path / "turned.jpg", exif=exif)
    Image.new("RGB", (20, 10)).save(tmp_path / "plain.png")
    for name in ("turned.jpg", "plain.png"):
        example = SimpleNamespace(image=tmp_path / name, where=name)
        assert header_of(example)[:2] == read_image(example).shape[:2]
    assert header_of(SimpleNamespace(image=tmp_path / "turned.jpg"))[2] == "grey"
