"""Method.reference(): the model as the method found it, without a second copy of the weights.

With LoRA, "adapters off" is the base model only if nothing else trained in place: the head,
modules_to_save and trained biases are kept as they were and put back inside reference()."""

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

from tunesmith.config import LoraConfig, MethodConfig, PromptConfig
from tunesmith.errors import TunesmithError
from tunesmith.methods import METHODS
from tunesmith.methods.lora import adapters_disabled
from tunesmith.models import load_causal_lm, load_text_classifier


def train_a_little(model: torch.nn.Module, steps: int = 3) -> None:
    """Move every trainable tensor, as training would."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(steps):
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn(p.shape, generator=g) * 0.05)


def test_lora_reference_of_a_causal_lm_equals_the_base_model(tiny_llama):
    loaded = load_causal_lm(str(tiny_llama), 0)
    method = METHODS["lora"]()
    method.apply(loaded, MethodConfig(name="lora", lora=LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"],
                                                                   modules_to_save=["model.norm"])))
    model = loaded.model.eval()
    train_a_little(model)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    x = torch.randint(3, 25, (2, 7))
    with torch.no_grad():
        trained = model(input_ids=x).logits
        with adapters_disabled(model):  # what a reference made only by switching adapters off would give
            adapters_off = model(input_ids=x).logits
        with method.reference(model) as reference:
            ref = reference(input_ids=x).logits
        after = model(input_ids=x).logits
        want = base(input_ids=x).logits
    assert torch.equal(ref, want)  # exactly the base model: model.norm is back to its pretrained weight
    assert not torch.allclose(adapters_off, want, atol=1e-4)  # switching adapters off alone is not enough
    assert torch.equal(after, trained)  # the trained state is back, bit for bit
    assert not torch.allclose(trained, want, atol=1e-4)


def test_lora_reference_restores_trained_biases_and_saved_modules(tiny_bert):
    loaded = load_text_classifier(str(tiny_bert), ["a", "b"], init_seed=0)
    before = copy.deepcopy(loaded.model).eval()
    method = METHODS["lora"]()
    method.apply(loaded, MethodConfig(name="lora", lora=LoraConfig(r=4, alpha=8, bias="all",
                                                                   modules_to_save=["bert.pooler"])))
    model = loaded.model.eval()
    trained_biases = [n for n, p in model.named_parameters() if p.requires_grad and n.endswith(".bias")]
    assert any(".base_layer." not in n and "pooler" not in n and "classifier" not in n for n in trained_biases)
    train_a_little(model)
    x = torch.randint(5, 27, (3, 9))
    with torch.no_grad():
        trained = model(input_ids=x).logits
        with method.reference(model) as reference:
            ref = reference(input_ids=x).logits
        assert torch.equal(ref, before(input_ids=x).logits)
        assert torch.equal(model(input_ids=x).logits, trained)


def test_prompt_reference_is_the_model_without_virtual_tokens(tiny_llama):
    loaded = load_causal_lm(str(tiny_llama), 0)
    method = METHODS["prompt"]()
    method.apply(loaded, MethodConfig(name="prompt", prompt=PromptConfig(num_virtual_tokens=3)))
    base = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    x = torch.randint(3, 25, (2, 5))
    with torch.no_grad(), method.reference(loaded.model.eval()) as reference:
        assert torch.equal(reference(input_ids=x).logits, base(input_ids=x).logits)


def test_methods_that_change_the_base_in_place_have_no_free_reference(tiny_bert):
    loaded = load_text_classifier(str(tiny_bert), ["a", "b"], init_seed=0)
    method = METHODS["full"]()
    method.apply(loaded, MethodConfig(name="full"))
    with pytest.raises(TunesmithError, match="compute reference outputs before training"):
        with method.reference(loaded.model):
            pass
