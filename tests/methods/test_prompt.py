"""Prompt tuning: PEFT's PROMPT_TUNING format both ways, with the same outputs."""

import warnings

import pytest
import torch

from tunesmith.config import MethodConfig, PromptConfig
from tunesmith.methods import METHODS
from tunesmith.methods.prompt import load_prompt
from tunesmith.models import load_causal_lm

peft = pytest.importorskip("peft")


@pytest.mark.parametrize("init", ["vocab", "text"])
def test_prompt_tuning_round_trip_with_peft(tiny_llama, tmp_path, init):
    from transformers import AutoModelForCausalLM

    loaded = load_causal_lm(str(tiny_llama), 0)
    base_table = loaded.model.get_input_embeddings().weight.detach().clone()
    cfg = MethodConfig(name="prompt", prompt=PromptConfig(num_virtual_tokens=5, init=init,
                                                          init_text="review the film" if init == "text" else None))
    method = METHODS["prompt"]()
    method.apply(loaded, cfg)
    model = loaded.model
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["prompt_embeddings.weight"]
    if init == "text":  # initialised from the embeddings of the text's tokens, repeated
        ids = loaded.tokenizer("review the film", add_special_tokens=False)["input_ids"]
        assert torch.equal(model.prompt_embeddings.weight[:3], base_table[ids])
    with torch.no_grad():
        model.prompt_embeddings.weight.add_(torch.randn_like(model.prompt_embeddings.weight) * 0.5)
    method.save(model, tmp_path / "ours", base=str(tiny_llama))
    x = torch.randint(3, 20, (2, 7))
    ours = model.eval()(input_ids=x, attention_mask=torch.ones_like(x)).logits
    assert ours.shape[1] == 7

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        theirs_model = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama),
                                                      str(tmp_path / "ours")).eval()
    assert not [w for w in caught if "missing" in str(w.message).lower()]
    theirs = theirs_model(input_ids=x, attention_mask=torch.ones_like(x)).logits[:, 5:]  # PEFT keeps virtual ones
    assert (theirs - ours).abs().max().item() <= 1e-5

    theirs_model.save_pretrained(tmp_path / "peft")
    back = load_causal_lm(str(tiny_llama), 1)
    load_prompt(back, tmp_path / "peft")
    assert (back.model(input_ids=x, attention_mask=torch.ones_like(x)).logits - ours).abs().max().item() <= 1e-5
