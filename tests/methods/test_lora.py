"""LoRA / rsLoRA / DoRA against the real `peft` package: same outputs both ways, no missing keys;
merge / unmerge / disable; several adapters; errors at apply time."""

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from tunesmith.config import LoraConfig, MethodConfig
from tunesmith.errors import ConfigError
from tunesmith.methods import METHODS
from tunesmith.methods import lora as L
from tunesmith.methods.adapter_io import load_adapter, save_adapter
from tunesmith.models import load_text_classifier

peft = pytest.importorskip("peft")


def perturb(model, seed=1, only_lora=False):
    """Make every trainable tensor non-trivial (B starts at zero, which would hide mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad and (not only_lora or "lora_" in n):
                p.add_(torch.randn(p.shape, generator=g) * (1.0 if only_lora else 0.2))


def load_with_peft(base: nn.Module, adapter_dir: Path) -> nn.Module:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = peft.PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    bad = [str(w.message) for w in caught if "missing" in str(w.message).lower() or "unexpected" in str(w.message).lower()]
    assert not bad, bad
    return model


BERT_CASES = {
    "linear": dict(),
    "rslora": dict(use_rslora=True),
    "dora": dict(use_dora=True),
    "embedding": dict(target_modules=["word_embeddings", "query"]),
    "embedding-dora": dict(target_modules=["word_embeddings", "value"], use_dora=True),
    "bias-lora-only": dict(bias="lora_only", dropout=0.1),
    "all-linear-gaussian": dict(target_modules="all-linear", init="gaussian"),
    "regex": dict(target_modules=r".*layer\.1\.attention\.self\.(query|key)"),
}


@pytest.mark.parametrize("case", BERT_CASES)
def test_bert_adapter_round_trip_with_peft(tiny_bert_nodrop, tmp_path, case):
    from transformers import AutoModelForSequenceClassification

    loaded = load_text_classifier(str(tiny_bert_nodrop), ["a", "b"], init_seed=0)
    method = METHODS["lora"]()
    method.apply(loaded, MethodConfig(name="lora", lora=LoraConfig(r=4, alpha=8, **BERT_CASES[case])))
    perturb(loaded.model)
    method.save(loaded.model, tmp_path / "ours", base=str(tiny_bert_nodrop))
    x = torch.randint(5, 27, (3, 9))
    ours = loaded.model.eval()(input_ids=x).logits

    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert_nodrop, num_labels=2)
    theirs_model = load_with_peft(base, tmp_path / "ours")
    theirs = theirs_model(input_ids=x).logits
    assert (ours - theirs).abs().max().item() <= 1e-5

    # and PEFT's own save of it loads into tunesmith with the same outputs
    theirs_model.save_pretrained(tmp_path / "peft")
    back = load_text_classifier(str(tiny_bert_nodrop), ["a", "b"], init_seed=7)  # another random head
    load_adapter(back.model, tmp_path / "peft")
    assert (back.model.eval()(input_ids=x).logits - ours).abs().max().item() <= 1e-5


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.seq = nn.Conv1d(8, 6, 3, padding=1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        h = torch.relu(self.conv(x))  # (b, 8, 4, 4)
        h = torch.relu(self.seq(h.flatten(2)))  # (b, 6, 16)
        return self.fc(h.mean(-1))


@pytest.mark.parametrize("dora", [False, True])
def test_conv_adapter_round_trip_with_peft(tmp_path, dora):
    torch.manual_seed(0)
    model = SmallCNN()
    settings = LoraConfig(r=2, alpha=4, target_modules=["conv", "seq", "fc"], use_dora=dora)
    paths = L.inject(model, settings)
    for n, p in model.named_parameters():
        p.requires_grad_("lora_" in n)
    perturb(model)
    save_adapter(model, tmp_path / "ours", settings, paths, [], "SmallCNN")
    x = torch.randn(2, 3, 8, 8)
    ours = model.eval()(x)
    torch.manual_seed(0)
    theirs = load_with_peft(SmallCNN(), tmp_path / "ours")(x)
    assert (ours - theirs).abs().max().item() <= 1e-5
    # PEFT-made conv adapter into tunesmith
    torch.manual_seed(0)
    pm = peft.get_peft_model(SmallCNN(), peft.LoraConfig(r=2, lora_alpha=4, target_modules=["conv", "seq", "fc"],
                                                          use_dora=dora, init_lora_weights=False))
    pm.save_pretrained(tmp_path / "peft")
    torch.manual_seed(0)
    back = SmallCNN()
    load_adapter(back, tmp_path / "peft")
    assert (back.eval()(x) - pm.eval()(x)).abs().max().item() <= 1e-5


def test_gpt2_conv1d_fan_in_fan_out_round_trip_with_peft(tmp_path):
    from transformers import GPT2Config, GPT2Model

    config = GPT2Config(vocab_size=50, n_positions=32, n_embd=16, n_layer=2, n_head=2, resid_pdrop=0, embd_pdrop=0,
                        attn_pdrop=0)
    torch.manual_seed(0)
    model = GPT2Model(config)
    settings = LoraConfig(r=4, alpha=8, target_modules=["c_attn", "c_proj"])
    paths = L.inject(model, settings)
    for n, p in model.named_parameters():
        p.requires_grad_("lora_" in n)
    perturb(model)
    save_adapter(model, tmp_path / "ours", settings, paths, [], "gpt2-tiny")
    assert '"fan_in_fan_out": true' in (tmp_path / "ours" / "adapter_config.json").read_text()
    x = torch.randint(0, 50, (2, 10))
    ours = model.eval()(input_ids=x).last_hidden_state
    torch.manual_seed(0)
    theirs = load_with_peft(GPT2Model(config), tmp_path / "ours")(input_ids=x).last_hidden_state
    assert (ours - theirs).abs().max().item() <= 1e-5
    # merging a fan_in_fan_out layer stores the update transposed, and must give the same outputs
    L.merge(model)
    assert (model(input_ids=x).last_hidden_state - ours).abs().max().item() <= 1e-5


@pytest.mark.parametrize("kw", [dict(), dict(use_dora=True), dict(target_modules=["word_embeddings", "query"], use_dora=True)])
def test_merge_unmerge_and_disable(tiny_bert_nodrop, kw):
    loaded = load_text_classifier(str(tiny_bert_nodrop), ["a", "b"], init_seed=0)
    x = torch.randint(5, 27, (3, 9))
    model = loaded.model.eval()
    base_out = model(input_ids=x).logits
    METHODS["lora"]().apply(loaded, MethodConfig(name="lora", lora=LoraConfig(r=4, alpha=8, **kw)))
    assert (model(input_ids=x).logits - base_out).abs().max() == 0  # B = 0 (A = 0 for embeddings): no change
    perturb(model, only_lora=True)
    with torch.no_grad():
        before = {n: p.clone() for n, p in model.named_parameters()}
    adapted = model(input_ids=x).logits
    assert (adapted - base_out).abs().max() > 1e-5
    with L.adapters_disabled(model):
        assert (model(input_ids=x).logits - base_out).abs().max() <= 1e-6
    L.merge(model)
    assert (model(input_ids=x).logits - adapted).abs().max().item() <= 1e-5
    with pytest.raises(ValueError, match="merged"):
        with L.adapters_disabled(model):
            pass
    L.unmerge(model)
    for n, p in model.named_parameters():
        assert torch.allclose(p, before[n], atol=1e-5), n
    plain = L.unload(model)
    assert not list(L.lora_layers(plain))
    assert (plain(input_ids=x).logits - adapted).abs().max().item() <= 1e-5


def test_several_named_adapters(tiny_bert_nodrop):
    loaded = load_text_classifier(str(tiny_bert_nodrop), ["a", "b"], init_seed=0)
    model = loaded.model.eval()
    settings = LoraConfig(r=2, alpha=4, target_modules=["query", "value"])
    L.inject(model, settings, "one")
    L.inject(model, settings, "two")
    for n, p in model.named_parameters():
        p.requires_grad_("lora_" in n)
    perturb(model)
    x = torch.randint(5, 27, (2, 6))
    L.set_active(model, "one")
    out_one = model(input_ids=x).logits
    L.set_active(model, "two")
    out_two = model(input_ids=x).logits
    assert (out_one - out_two).abs().max() > 1e-4
    L.add_weighted_adapter(model, ["one", "two"], [0.3, 0.7], "mix")
    for _, layer in L.lora_layers(model):
        expected = 0.3 * layer.delta_weight("one") + 0.7 * layer.delta_weight("two")
        assert torch.allclose(layer.delta_weight("mix"), expected, atol=1e-6)
    L.delete_adapter(model, "one")
    with pytest.raises(ValueError, match="no adapter 'one'"):
        L.set_active(model, "one")
    L.set_active(model, "two")
    assert torch.allclose(model(input_ids=x).logits, out_two)


def test_target_errors_name_the_module(tiny_bert):
    loaded = load_text_classifier(str(tiny_bert), ["a", "b"], init_seed=0)
    with pytest.raises(ConfigError, match="'qkv' matches no module"):
        METHODS["lora"]().apply(loaded, MethodConfig(name="lora", lora=LoraConfig(target_modules=["qkv"])))
    with pytest.raises(ConfigError, match="LayerNorm, which LoRA cannot wrap"):
        METHODS["lora"]().apply(loaded, MethodConfig(name="lora", lora=LoraConfig(target_modules=["LayerNorm"])))
    cnn = nn.Sequential(nn.Conv2d(4, 4, 3, groups=4))
    with pytest.raises(ConfigError, match="grouped convolution"):
        L.resolve_targets(cnn, ["0"], set())


def test_lora_wraps_the_base_weights_in_place(tiny_bert_nodrop):
    """No second copy of the pretrained weights: every wrapped layer holds the original tensor."""
    loaded = load_text_classifier(str(tiny_bert_nodrop), ["a", "b"], init_seed=0)
    model = loaded.model
    before = {name: p.data_ptr() for name, p in model.named_parameters()}
    base_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    METHODS["lora"]().apply(loaded, MethodConfig(name="lora", lora=LoraConfig(r=4, alpha=8,
                                                                         target_modules="all-linear")))
    wrapped = list(L.lora_layers(model))
    assert wrapped
    after = {name.replace(".base_layer", ""): p.data_ptr() for name, p in model.named_parameters()
             if "lora_" not in name}
    assert after == before  # same storage, not copies
    storages = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in model.parameters()}
    adapters = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "lora_" in n)
    assert sum(storages.values()) == base_bytes + adapters
