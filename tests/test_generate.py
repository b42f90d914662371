"""Generation: batched greedy decoding equals one-by-one decoding and transformers' own `generate`."""

import random

import torch
from tiny import FILLER, POSITIVE
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunesmith.generate import (
    GenerationConfig,
    eos_ids,
    first_answer,
    generate_ids,
    generate_many,
    prompt_ids,
)


def _prompts(tokenizer, n: int) -> list[list[int]]:
    rng = random.Random(0)
    texts = [" ".join(rng.choices(FILLER + POSITIVE, k=rng.randint(2, 4))) for _ in range(n)]
    return [prompt_ids(tokenizer, t) for t in texts]


def test_batched_greedy_equals_one_by_one_and_hf_generate(tiny_llama):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    prompts = _prompts(tokenizer, 12)
    assert len({len(p) for p in prompts}) < len(prompts)  # some lengths repeat, so batches form
    # the tiny random model never emits EOS on its own: pick a frequent token as EOS so rows stop at different steps
    cfg = GenerationConfig(max_new_tokens=8)
    eos = eos_ids(model, tokenizer) | {tokenizer.convert_tokens_to_ids("film")}
    batched = generate_many(model, prompts, eos, cfg, batch_size=8)
    alone = [generate_ids(model, p, eos, cfg) for p in prompts]
    assert batched == alone
    for p, new in zip(prompts, alone, strict=True):
        with torch.no_grad():
            ref = model.generate(torch.tensor([p]), max_new_tokens=8, do_sample=False, eos_token_id=sorted(eos),
                                 pad_token_id=tokenizer.pad_token_id)[0, len(p):].tolist()
        assert new == [t for t in ref if t not in eos][: len(new)] and (len(new) == 8 or ref[len(new)] in eos)


def test_sampling_is_seeded_and_respects_top_p(tiny_llama):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    ids = _prompts(tokenizer, 1)[0]
    cfg = GenerationConfig(max_new_tokens=6, temperature=1.0, seed=3)
    assert generate_ids(model, ids, set(), cfg) == generate_ids(model, ids, set(), cfg)
    tiny_p = GenerationConfig(max_new_tokens=6, temperature=1.0, top_p=1e-6, seed=3)  # top-p that small is greedy
    assert generate_ids(model, ids, set(), tiny_p) == generate_ids(model, ids, set(), GenerationConfig(6))


def test_first_answer_finds_the_first_label_mentioned():
    labels = ["fresh", "rotten"]
    assert first_answer("Fresh.", labels) == "fresh"
    assert first_answer("The review is rotten, not fresh", labels) == "rotten"
    assert first_answer("refreshing!", labels) is None  # whole words only
    assert first_answer("I'd say: fresh", labels) == "fresh"


def test_generate_restores_train_mode_and_samples_each_prompt_on_its_own(tiny_llama):
    from tunesmith.generate import generate

    model = AutoModelForCausalLM.from_pretrained(tiny_llama).train()
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    cfg = GenerationConfig(max_new_tokens=8, temperature=1.5, seed=7)
    samples = generate(model, tokenizer, ["review the film was great"] * 6, cfg)
    assert model.training  # generating in the middle of training leaves dropout as it was
    assert len(set(samples)) > 1  # six samples of one prompt are not six copies
    assert generate(model, tokenizer, ["review the film was great"] * 6, cfg) == samples  # and are seeded
    # a prompt's sample does not depend on which other prompts share its batch (same length: one batch)
    mixed = generate(model, tokenizer, ["review the film was great"] * 6 + ["review the plot was awful"], cfg)
    assert mixed[:6] == samples
    greedy = generate(model.eval(), tokenizer, ["review the film was great"] * 3, GenerationConfig(max_new_tokens=8))
    assert len(set(greedy)) == 1
