"""Causal-LM fine-tuning: EOS trained when pad == eos, truncation reporting, packing equivalence."""

import pytest
import torch

from tunesmith.data.lm import LMExample
from tunesmith.errors import DataError
from tunesmith.objectives import causal_lm as lm


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_llama):
    from tunesmith.models import load_causal_lm

    loaded = load_causal_lm(str(tiny_llama), 0)
    return loaded.model.eval(), loaded.tokenizer


def test_eos_is_a_target_even_when_pad_is_eos(model_and_tokenizer):
    _, tok = model_and_tokenizer
    assert tok.pad_token_id == tok.eos_token_id
    eos = tok.eos_token_id
    pc = LMExample("prompt", "x:1", prompt="review a good film answer", completion="fresh")
    chat = LMExample("chat", "x:2", messages=({"role": "user", "content": "review a dull film"},
                                              {"role": "assistant", "content": "rotten"}))
    items, stats = lm.encode([pc, chat], tok, max_length=64)
    assert stats == {"truncated": 0, "dropped_all_targets_truncated": 0}
    for item in items:
        targets = [t for t in item.labels if t != lm.IGNORE]
        assert targets[-1] == eos  # the model learns to stop
    assert [t for t in items[0].labels if t != lm.IGNORE] == tok("fresh", add_special_tokens=False)["input_ids"] + [eos]
    # chat: only the assistant turn is a target (the user's turn and the header are context)
    chat_targets = [t for t in items[1].labels if t != lm.IGNORE]
    assert chat_targets == [tok.convert_tokens_to_ids("rotten"), eos]
    batch = lm.collate(items, pad_id=tok.pad_token_id)  # padding uses the eos id...
    assert (batch["input_ids"] == eos).sum() > (batch["labels"] == eos).sum()
    assert lm.count(batch) == len(chat_targets) + 2  # ...but padded eos are not targets, real ones are


def test_truncation_drops_and_reports_all_masked(model_and_tokenizer):
    _, tok = model_and_tokenizer
    long = LMExample("prompt", "f:1", prompt="review " + "the film " * 20, completion="fresh")
    short = LMExample("prompt", "f:2", prompt="review good", completion="fresh")
    items, stats = lm.encode([long, short], tok, max_length=12)
    assert len(items) == 1 and stats == {"truncated": 1, "dropped_all_targets_truncated": 1}
    with pytest.raises(DataError, match="all 1 examples lost every target token"):
        lm.encode([long], tok, max_length=12)


def test_packed_batch_gives_the_same_per_sample_loss(model_and_tokenizer):
    model, tok = model_and_tokenizer
    examples = [LMExample("text", f"t:{i}", text=t) for i, t in enumerate(
        ["the film was good", "a dull plot is very weak", "great", "the actor was quite superb in the scene"])]
    items, _ = lm.encode(examples, tok, max_length=64)
    with torch.no_grad():
        per_sample = [lm.loss_sum(model, lm.collate([it], tok.pad_token_id)).item() for it in items]
        packed = lm.collate(items, tok.pad_token_id, pack=True, max_length=32)
        assert packed["input_ids"].shape[0] < len(items)  # really packed
        losses = lm.token_losses(model, packed)
    assert lm.count(packed) == sum(lm.count(lm.collate([it], tok.pad_token_id)) for it in items)
    # split the packed losses back per sample via the position-id restarts
    got = []
    for row, pos in zip(losses, packed["position_ids"], strict=True):
        starts = (pos == 0).nonzero().flatten().tolist() + [len(pos)]
        for a, b in zip(starts[:-1], starts[1:], strict=True):
            got.append(row[a : b - 1].sum().item())
    got = sorted(x for x in got if x > 0)
    assert got == pytest.approx(sorted(per_sample), abs=1e-4)
    # without the position restarts (i.e. attention across samples) the losses differ
    leaky = dict(packed, position_ids=torch.arange(packed["input_ids"].shape[1]).expand_as(packed["input_ids"]))
    with torch.no_grad():
        assert not torch.allclose(lm.token_losses(model, leaky), losses, atol=1e-4)


def test_target_only_logits_equal_the_full_forward(model_and_tokenizer, monkeypatch):
    """The output layer on target positions only gives the same losses and gradients as the model's own
    forward over every position, and eval metrics agree."""
    model, tok = model_and_tokenizer
    model = model.train()
    examples = [LMExample("prompt", f"x:{i}", prompt="review " + "good film " * (i + 1), completion=answer)
                for i, answer in enumerate(["fresh", "rotten", "fresh and fun"])]
    items, _ = lm.encode(examples, tok, max_length=64)
    batch = lm.collate(items, pad_id=tok.pad_token_id)
    assert lm._body_and_head(model) is not None  # a plain causal LM takes the fast path

    def run():
        model.zero_grad()
        losses = lm.token_losses(model, batch)
        losses.sum().backward()
        return losses.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    fast, fast_grads = run()
    monkeypatch.setattr(lm, "TARGET_ONLY_LOGITS", False)
    slow, slow_grads = run()
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)
    assert (fast > 0).sum() == lm.count(batch)
    assert fast_grads.keys() == slow_grads.keys()
    for name in fast_grads:
        torch.testing.assert_close(fast_grads[name], slow_grads[name], rtol=1e-4, atol=1e-6)
    slow_metrics = lm.metrics(lm.eval_sums(model, items, 2, tok.pad_token_id, torch.device("cpu")))
    monkeypatch.setattr(lm, "TARGET_ONLY_LOGITS", True)
    fast_metrics = lm.metrics(lm.eval_sums(model, items, 2, tok.pad_token_id, torch.device("cpu")))
    assert fast_metrics == pytest.approx(slow_metrics, rel=1e-5)
    with torch.no_grad():  # token accuracy: the argmax of the model's own logits at the target positions
        logits = model.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    targets = batch["labels"][:, 1:]
    wanted = targets != lm.IGNORE
    assert fast_metrics["token_accuracy"] == pytest.approx((logits.argmax(-1)[wanted] == targets[wanted]).float().mean().item())


def test_target_only_logits_under_ddp(model_and_tokenizer, monkeypatch, tmp_path):
    """Under DDP the wrapper's own forward must run (it syncs gradients), so the model slices its logits
    with a boolean logits_to_keep mask: the output layer still sees only the target positions, and the
    losses and gradients equal the full forward's."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    model, tok = model_and_tokenizer
    examples = [LMExample("prompt", f"x:{i}", prompt="review " + "good film " * (i + 1), completion=answer)
                for i, answer in enumerate(["fresh", "rotten", "fresh and fun"])]
    items, _ = lm.encode(examples, tok, max_length=64)
    batch = lm.collate(items, pad_id=tok.pad_token_id)
    rows = []
    hook = model.lm_head.register_forward_hook(lambda m, args, out: rows.append(args[0].shape[0]))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        ddp = DistributedDataParallel(model.train())

        def run():
            ddp.zero_grad()
            losses = lm.token_losses(ddp, batch)
            losses.sum().backward()
            return losses.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

        assert lm._body_and_head(ddp) is None and lm._keeps_masked_logits(ddp)
        rows.clear()
        fast, fast_grads = run()
        assert rows == [lm.count(batch)]  # one call, on the target positions only
        monkeypatch.setattr(lm, "TARGET_ONLY_LOGITS", False)
        slow, slow_grads = run()
    finally:
        dist.destroy_process_group()
        hook.remove()
        model.eval()
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)
    assert fast_grads.keys() == slow_grads.keys() and fast_grads
    for name in fast_grads:
        torch.testing.assert_close(fast_grads[name], slow_grads[name], rtol=1e-4, atol=1e-6)
