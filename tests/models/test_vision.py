"""Image models: the built-in EfficientNet-Lite0 and bring-your-own `module:factory` models; new heads,
weights read without running code, conv LoRA in PEFT's format (round trip with `peft`)."""

import warnings

import pytest
import torch
from safetensors.torch import save_file

from tunesmith.config import LoraConfig, MethodConfig, ModelConfig
from tunesmith.errors import ConfigError, TunesmithError
from tunesmith.methods import METHODS
from tunesmith.methods.adapter_io import load_adapter
from tunesmith.models.hf import LoadedModel
from tunesmith.models.vision import build_classifier, read_weights

LITE0 = ModelConfig(name="efficientnet-lite0", image_size=32)


def loaded_lite0(num_labels=3, seed=0) -> LoadedModel:
    model, head, prep, source, targets = build_classifier(LITE0, num_labels, seed)
    return LoadedModel(model, prep, head, source, lora_targets=targets)


def test_efficientnet_lite0_loads_pretrained_with_a_seeded_new_head():
    a, b, c = loaded_lite0(seed=0), loaded_lite0(seed=0), loaded_lite0(seed=1)
    assert a.head_params == ["_fc.weight", "_fc.bias"]
    assert a.model._fc.out_features == 3 and a.tokenizer.size == 32 and a.tokenizer.mean == (0.5, 0.5, 0.5)
    assert torch.equal(a.model._fc.weight, b.model._fc.weight)  # same init seed, same head
    assert not torch.equal(a.model._fc.weight, c.model._fc.weight)
    # the backbone is the pretrained one: identical to the packaged weights, whatever the seed
    pretrained = read_weights(a.source)
    for name, tensor in c.model.state_dict().items():
        if not name.startswith("_fc."):
            assert torch.equal(tensor, pretrained[name]), name
    assert a.model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def _perturb(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)


@pytest.mark.parametrize("dora", [False, True])
def test_efficientnet_conv_lora_round_trip_with_peft(tmp_path, dora):
    peft = pytest.importorskip("peft")
    ours = loaded_lite0()
    method = METHODS["lora" if not dora else "dora"]()
    method.apply(ours, MethodConfig(name="lora", lora=LoraConfig(r=4, alpha=8)))
    assert len(method.targets) == 32  # every 1x1 expand/project conv + the head conv
    _perturb(ours.model)
    method.save(ours.model, tmp_path / "ours", base="efficientnet-lite0")
    x = torch.randn(2, 3, 32, 32)
    expected = ours.model.eval()(x)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        theirs = peft.PeftModel.from_pretrained(loaded_lite0(seed=5).model, str(tmp_path / "ours")).eval()
    assert not [w for w in caught if "missing" in str(w.message).lower() or "unexpected" in str(w.message).lower()]
    assert (theirs(x) - expected).abs().max().item() <= 1e-5
    # and back: PEFT's save of the same adapter loads into tunesmith with the same outputs
    theirs.save_pretrained(tmp_path / "peft")
    back = loaded_lite0(seed=7).model
    load_adapter(back, tmp_path / "peft")
    assert (back.eval()(x) - expected).abs().max().item() <= 1e-5


def test_lora_refuses_convs_it_cannot_wrap_exactly():
    stem = loaded_lite0()  # 3x3 stride-2 stem pads inside its own forward ('SAME'), LoRA's A could not follow
    with pytest.raises(ConfigError, match="_conv_stem.*own forward"):
        METHODS["lora"]().apply(stem, MethodConfig(name="lora", lora=LoraConfig(target_modules=["_conv_stem"])))
    depthwise = loaded_lite0()
    with pytest.raises(ConfigError, match="grouped convolution"):
        METHODS["lora"]().apply(depthwise, MethodConfig(name="lora", lora=LoraConfig(target_modules=["_depthwise_conv"])))


def test_bring_your_own_factory_with_safetensors_or_pth(tmp_path):
    from tiny import tiny_cnn

    torch.manual_seed(3)
    reference = tiny_cnn()
    state = reference.state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": state}, tmp_path / "w.pth")
    for weights in ("w.safetensors", "w.pth"):
        cfg = ModelConfig(name="tiny:tiny_cnn", weights=str(tmp_path / weights), image_size=16)
        model, head, prep, _, _ = build_classifier(cfg, 2, 0)
        assert head == ["fc.weight", "fc.bias"] and prep.size == 16 and prep.mean == (0.485, 0.456, 0.406)
        assert torch.equal(model.blocks[2].conv.weight, reference.blocks[2].conv.weight)
        assert model.fc.out_features == 2


def test_weights_files_that_would_run_code_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"w": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(TunesmithError, match="evil.pth: cannot read weights"):
        read_weights(tmp_path / "evil.pth")
    cfg = ModelConfig(name="tiny:tiny_cnn")
    with pytest.raises(ConfigError, match="model.weights"):
        build_classifier(cfg, 2, 0)
    with pytest.raises(ConfigError, match="no module 'head'"):
        build_classifier(ModelConfig(name="tiny:tiny_cnn", weights=str(tmp_path / "x"), head="head"), 2, 0,
                         pretrained=False)


def test_plain_pointwise_convs_change_nothing_but_the_class():
    from efficientnet_lite_pytorch import EfficientNet

    from tunesmith.models.vision_specs import plain_pointwise_convs

    torch.manual_seed(0)
    original = EfficientNet.from_name("efficientnet-lite0", image_size=32).eval()
    converted = plain_pointwise_convs(EfficientNet.from_name("efficientnet-lite0", image_size=32)).eval()
    converted.load_state_dict(original.state_dict())  # same keys, strict
    assert type(converted._blocks[1]._expand_conv) is torch.nn.Conv2d
    assert type(converted._conv_stem) is type(original._conv_stem)  # the padding stem stays as it was
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(converted(x), original(x), atol=1e-6)
