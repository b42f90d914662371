"""Preference objectives: every loss against a direct formula (and TRL's own code where it has it),
completion tokens cut from the joined text, the shared-prompt path equal to the joint one, and the
reference model without a second copy of the weights."""

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from tiny import write_jsonl
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunesmith.config import LoraConfig, MethodConfig, config_from_dict
from tunesmith.data import DataConfig, SplitConfig
from tunesmith.data.prefs import PrefExample, load_pref_data
from tunesmith.errors import ConfigError, DataError
from tunesmith.methods import METHODS
from tunesmith.models import load_causal_lm
from tunesmith.objectives import OBJECTIVES
from tunesmith.objectives.dpo import dpo_losses
from tunesmith.objectives.pairs import collate_pairs, encode_pairs, joint_logps, shared_logps, split_tokens

# fixed log-probs: summed over completion tokens (policy and reference), tokens per completion
PI_C, PI_R = torch.tensor([-3.0, -5.5, -2.0]), torch.tensor([-4.0, -5.0, -6.5])
REF_C, REF_R = torch.tensor([-3.5, -5.0, -2.5]), torch.tensor([-3.8, -5.2, -6.0])
TOKENS_C, TOKENS_R = torch.tensor([2.0, 3.0, 1.0]), torch.tensor([1.0, 4.0, 2.0])


def sig(x):
    return 1 / (1 + torch.exp(-x))


@pytest.mark.parametrize("loss_type", ["sigmoid", "robust", "hinge", "ipo"])
def test_dpo_losses_equal_the_papers_formulas(loss_type):
    beta, eps = 0.3, 0.2
    dpo = OBJECTIVES["dpo"]()
    dpo.cfg.beta, dpo.cfg.loss_type = beta, loss_type
    dpo.cfg.label_smoothing = eps if loss_type == "robust" else 0.0
    tokens = torch.stack([TOKENS_C, TOKENS_R], 1).flatten()
    losses, rewards_c, rewards_r = dpo.pair_loss(PI_C, PI_R, (REF_C, REF_R), tokens, {})
    h = (PI_C - REF_C) - (PI_R - REF_R)
    want = {"sigmoid": -torch.log(sig(beta * h)),
            "robust": (-(1 - eps) * torch.log(sig(beta * h)) + eps * torch.log(sig(-beta * h))) / (1 - 2 * eps),
            "hinge": torch.clamp(1 - beta * h, min=0),
            "ipo": ((PI_C - REF_C) / TOKENS_C - (PI_R - REF_R) / TOKENS_R - 1 / (2 * beta)) ** 2}[loss_type]
    torch.testing.assert_close(losses, want)
    torch.testing.assert_close(rewards_c, beta * (PI_C - REF_C))
    torch.testing.assert_close(rewards_r, beta * (PI_R - REF_R))
    assert dpo_losses(torch.tensor([0.0]), "sigmoid", beta, 0.0).item() == pytest.approx(torch.log(torch.tensor(2.0)))


def test_simpo_and_orpo_equal_trl():
    from trl.experimental.cpo import CPOTrainer
    from trl.experimental.orpo import ORPOTrainer

    avg_c, avg_r = PI_C / TOKENS_C, PI_R / TOKENS_R
    simpo = OBJECTIVES["simpo"]()
    simpo.cfg.beta, simpo.cfg.simpo_gamma, simpo.cfg.label_smoothing = 2.0, 0.8, 0.1
    ours = simpo.pair_loss(avg_c, avg_r, None, None, {})
    trl_self = SimpleNamespace(alpha=0.0, loss_type="simpo", simpo_gamma=0.8, beta=2.0, label_smoothing=0.1,
                               accelerator=SimpleNamespace(device="cpu"))
    theirs = CPOTrainer.cpo_loss(trl_self, avg_c, avg_r)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b)
    direct = -(0.9 * F.logsigmoid(2.0 * (avg_c - avg_r) - 0.8) + 0.1 * F.logsigmoid(-(2.0 * (avg_c - avg_r) - 0.8)))
    torch.testing.assert_close(ours[0], direct)

    orpo = OBJECTIVES["orpo"]()
    orpo.cfg.beta = 0.25
    losses, rewards_c, rewards_r = orpo.pair_loss(avg_c, avg_r, None, None, {})
    trl_losses, trl_c, trl_r, _, _ = ORPOTrainer.odds_ratio_loss(
        SimpleNamespace(beta=0.25, accelerator=SimpleNamespace(device="cpu")), avg_c, avg_r)
    torch.testing.assert_close(losses, -trl_losses)  # TRL returns beta * log sigmoid and subtracts its mean
    torch.testing.assert_close((rewards_c, rewards_r), (trl_c, trl_r))
    odds = lambda p: p - torch.log(1 - torch.exp(p))  # noqa: E731
    torch.testing.assert_close(losses, -0.25 * torch.log(sig(odds(avg_c) - odds(avg_r))))
    tokens = torch.stack([TOKENS_C, TOKENS_R], 1).flatten()
    assert orpo.extra_terms(avg_c, avg_r, tokens, {})["nll"].item() == pytest.approx(-PI_C.sum().item())


def test_kto_loss_equals_the_formula():
    kto = OBJECTIVES["kto"]()
    kto.cfg.beta, kto.cfg.desirable_weight, kto.cfg.undesirable_weight = 0.5, 1.0, 1.5
    pi = torch.stack([PI_C, PI_R], 1).flatten()  # rows: judged completion, mismatched (KL) completion
    ref = torch.stack([REF_C, REF_R], 1)
    label = torch.tensor([True, False, True])
    kto.sequence_logps = lambda model, batch: (pi, None)
    losses, rewards, z, _ = kto._parts(None, {"reference": ref, "label": label})
    ratio = PI_C - REF_C
    want_z = torch.clamp((PI_R - REF_R).mean(), min=0)
    want = torch.where(label, 1 - sig(0.5 * (ratio - want_z)), 1.5 * (1 - sig(0.5 * (want_z - ratio))))
    torch.testing.assert_close(losses, want)
    assert z.item() == pytest.approx(want_z.item())


def test_reward_loss_is_bradley_terry_with_margin():
    reward = OBJECTIVES["reward"]()
    reward.cfg.margin = 0.5
    scores = torch.tensor([[2.0], [1.0], [0.0], [0.3]])  # rows: chosen 0, rejected 0, chosen 1, rejected 1
    model = lambda **_: SimpleNamespace(logits=scores)  # noqa: E731
    out = reward.loss(model, {"input_ids": torch.zeros(4, 2, dtype=torch.long)})
    want = -torch.log(sig(torch.tensor(1.0 - 0.5))) - torch.log(sig(torch.tensor(-0.3 - 0.5)))
    assert out.terms["pairs"].item() == pytest.approx(want.item())
    assert out.logs["accuracy"][0].item() == 1.0 and out.logs["margin"][0].item() == pytest.approx(0.7)


@pytest.fixture(scope="module")
def llama(tiny_llama):
    return AutoModelForCausalLM.from_pretrained(tiny_llama).eval(), AutoTokenizer.from_pretrained(tiny_llama)


def pairs(n=5):
    reviews = ["the film was great", "a dull plot", "superb actor", "very poor story and a weak scene", "fine"]
    return [PrefExample(f"x:{i}", [{"role": "user", "content": "review " + reviews[i % 5]}],
                        chosen=[{"role": "assistant", "content": "fresh" if i % 2 else "rotten"}],
                        rejected=[{"role": "assistant", "content": "rotten yes" if i % 2 else "fresh"}])
            for i in range(n)]


def test_completion_tokens_are_cut_from_the_joined_text(llama):
    _, tok = llama
    prompt, completion = split_tokens(tok, "review the film was", " great", "x:1")
    joined = tok("review the film was great", add_special_tokens=True)["input_ids"]
    assert prompt + completion == joined + [tok.eos_token_id]
    chat_prompt, chat_answer = split_tokens(tok, [{"role": "user", "content": "review fine"}],
                                            [{"role": "assistant", "content": "fresh"}], "x:2")
    whole = tok.apply_chat_template([{"role": "user", "content": "review fine"},
                                     {"role": "assistant", "content": "fresh"}], tokenize=True)
    whole = list(whole["input_ids"] if hasattr(whole, "keys") else whole)
    assert chat_prompt + chat_answer == whole and tok.eos_token_id in chat_answer


@pytest.mark.parametrize("attention", ["sdpa", "eager", "sdpa+checkpointing"])
def test_shared_prompt_equals_the_joint_forward(tiny_llama, attention):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, attn_implementation=attention.split("+")[0]).eval()
    if "checkpointing" in attention:  # the packed rows are one plain forward: activation checkpointing keeps them
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    items, _ = encode_pairs(pairs(), tok, max_length=64)
    assert len({len(it.prompt_ids) for it in items}) > 1  # prompts of several lengths: padding is exercised
    assert len({len(it.chosen_ids) - len(it.rejected_ids) for it in items}) > 1  # answers of several lengths
    batch = collate_pairs(items, tok.pad_token_id)
    from tunesmith.objectives.causal_lm import _body_and_head
    from tunesmith.objectives.pairs import can_share_prompt

    assert can_share_prompt(model)  # the once-per-model check agrees
    body, head = _body_and_head(model)
    results = []
    for path in ("joint", "shared"):
        model.zero_grad()
        logps, tokens = joint_logps(model, batch) if path == "joint" else shared_logps(body, head, batch)
        logps.sum().backward()
        results.append((logps.detach(), tokens, {n: p.grad.clone() for n, p in model.named_parameters()}))
    (joint, tj, gj), (shared, ts, gs) = results
    torch.testing.assert_close(shared, joint, rtol=1e-5, atol=1e-5)
    assert torch.equal(tj, ts)
    for name in gj:
        torch.testing.assert_close(gs[name], gj[name], rtol=1e-4, atol=1e-6)


def test_reward_model_shares_the_prompt_with_the_same_scores_and_gradients(tiny_llama, tiny_bert):
    from transformers import AutoModelForSequenceClassification

    from tunesmith.objectives.reward import score_route

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_llama, num_labels=1, pad_token_id=tok.pad_token_id)
    reward = OBJECTIVES["reward"]()
    items, _ = reward.encode(pairs(), tok, max_length=64)
    assert len({it.shared for it in items}) > 1  # prompts of several lengths: left padding is exercised
    batch = reward.collate(items, tok.pad_token_id)
    assert "score_at" in batch and score_route(model) is not None
    results = []
    for layout in (["input_ids", "attention_mask"], list(batch)):  # every sequence in full, then shared
        model.zero_grad()
        chosen, rejected = reward.rewards(model, {k: batch[k] for k in layout})
        (chosen.sum() - 2 * rejected.sum()).backward()
        results.append((torch.stack([chosen, rejected]).detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (joint, gj), (shared, gs) = results
    torch.testing.assert_close(shared, joint, rtol=1e-5, atol=1e-5)
    for name in gj:
        torch.testing.assert_close(gs[name], gj[name], rtol=1e-4, atol=1e-6)
    # the shared route replaces a forward of 2 x (prompt + answer) tokens by prompt + 2 x answer
    assert batch["packed_ids"].numel() < 0.7 * batch["input_ids"].numel()
    # too long: both sides lose the same leading tokens, so the rest of the prompt is still shared
    cut, _ = reward.encode(pairs()[3:4], tok, max_length=12)
    full, _ = reward.encode(pairs()[3:4], tok, max_length=64)
    (c, _), (r, _) = cut[0].chosen, cut[0].rejected
    assert max(len(c), len(r)) == 12 and cut[0].shared >= 1
    assert c == full[0].chosen[0][-len(c):] and r == full[0].rejected[0][-len(r):]
    # an encoder reads both directions: no shared route, the model's own forward runs
    encoder = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=1)
    assert score_route(encoder) is None


def test_preference_objectives_turn_the_models_dropout_off(tiny_bert, tiny_llama):
    """As TRL's disable_dropout: a reward model in train mode scores a text the same twice; an adapter's
    dropout stays as configured; `disable_dropout: false` keeps the model's own."""
    from peft import LoraConfig as PeftLora
    from peft import get_peft_model
    from transformers import AutoModelForSequenceClassification

    ids = {"input_ids": torch.tensor([[2, 5, 6, 7, 8, 3]])}
    for off in (True, False):
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=1)
        model = get_peft_model(model, PeftLora(r=2, target_modules=["query"], lora_dropout=0.3))
        reward = OBJECTIVES["reward"]()
        reward.cfg.disable_dropout = off
        note = reward.prepare_model(model)
        assert ("dropout off" in (note or "")) == off
        kept = [m.p for n, m in model.named_modules() if isinstance(m, torch.nn.Dropout) and "lora_dropout" in n]
        assert kept and all(p == 0.3 for p in kept)
        for name, module in model.named_modules():
            if "lora_dropout" in name:
                module.p = 0.0  # to see the model's own dropout alone
        model.train()
        same = torch.equal(model(**ids).logits, model(**ids).logits)
        assert same == off
    llama = AutoModelForCausalLM.from_pretrained(tiny_llama, attention_dropout=0.2)
    dpo = OBJECTIVES["dpo"]()
    assert "dropout off" in dpo.prepare_model(llama)
    assert all(getattr(m, "attention_dropout", 0.0) == 0.0 for m in llama.modules())


def test_lora_reference_equals_a_separately_loaded_base(llama, tiny_llama):
    base, tok = llama
    loaded = load_causal_lm(str(tiny_llama), 0)
    method = METHODS["lora"]()
    method.apply(loaded, MethodConfig(name="lora", lora=LoraConfig(r=4, alpha=8, target_modules="all-linear",
                                                                   modules_to_save=["model.norm"])))
    with torch.no_grad():
        for p in loaded.model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)  # as if trained
    dpo = OBJECTIVES["dpo"]()
    dpo._reference = lambda: method.reference(loaded.model)
    items, _ = encode_pairs(pairs(), tok, max_length=64)
    batch = collate_pairs(items, tok.pad_token_id)
    ref_c, ref_r = dpo.reference_of(loaded.model.eval(), batch)
    with torch.no_grad():
        want = joint_logps(base, batch)[0]
    torch.testing.assert_close(torch.stack([ref_c, ref_r], 1).flatten(), want, rtol=1e-5, atol=1e-5)
    policy = joint_logps(loaded.model, batch)[0].detach()
    assert not torch.allclose(policy, want, atol=1e-3)  # the trained model itself is not the reference


def test_preference_rows_are_validated(tmp_path):
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "p", "chosen": "same", "rejected": "same"}]
    with pytest.raises(DataError, match=r"bad\.jsonl:2: chosen and rejected are the same"):
        load_pref_data(DataConfig(train=str(write_jsonl(tmp_path / "bad.jsonl", rows))))
    empty = [{"prompt": "p", "chosen": "", "rejected": "b"}]
    with pytest.raises(DataError, match=r"e\.jsonl:1: field 'chosen' is empty"):
        load_pref_data(DataConfig(train=str(write_jsonl(tmp_path / "e.jsonl", empty))))
    unpaired = [{"prompt": "p", "completion": "a", "label": True}] * 3
    with pytest.raises(DataError, match="use objective: kto for unpaired data"):
        load_pref_data(DataConfig(train=str(write_jsonl(tmp_path / "u.jsonl", unpaired)),
                                  split=SplitConfig(validation=0, test=0)))
    skipped = load_pref_data(DataConfig(train=str(write_jsonl(tmp_path / "bad.jsonl", rows * 5)), on_bad_rows="skip",
                                        split=SplitConfig(validation=0, test=0)))
    assert len(skipped.train) == 5 and skipped.report.skipped == 5


def test_config_time_checks_of_preference_objectives(tmp_path):
    base = {"model": {"name": "smollm2-135m"}, "data": {"builtin": "rotten-tomatoes-prefs"}}
    with pytest.raises(ConfigError, match="objective.loss_type: 'kl' is not one of sigmoid"):
        config_from_dict(base | {"objective": {"name": "dpo", "loss_type": "kl"}})
    with pytest.raises(ConfigError, match="objective.label_smoothing: must be in \\[0, 0.5\\)"):
        config_from_dict(base | {"objective": {"name": "dpo", "loss_type": "robust", "label_smoothing": 0.5}})
    with pytest.raises(ConfigError, match="precompute_reference: false, but method full changes the base weights"):
        config_from_dict(base | {"objective": {"name": "dpo", "precompute_reference": False},
                                 "method": {"name": "full"}})
    assert config_from_dict(base | {"objective": "dpo"}).train.early_stopping.metric == "val_loss"


def test_truncation_never_leaves_an_empty_completion(llama):
    _, tok = llama
    long = [PrefExample("y:1", "review " + "great " * 60, chosen=" fine film", rejected=" poor film")]
    items, stats = encode_pairs(long, tok, max_length=16)
    (item,) = items
    assert stats["truncated"] == 1 and item.chosen_ids and item.rejected_ids
    assert len(item.prompt_ids) + max(len(item.chosen_ids), len(item.rejected_ids)) <= 16
    assert item.prompt_ids[-1] == tok("great", add_special_tokens=False)["input_ids"][-1]  # the prompt keeps its end
    json.dumps(stats)
