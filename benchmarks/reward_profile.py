"""Where a reward step's time goes on SmolLM2 + LoRA: 8 batches of 8 pairs through the joint route (every
sequence in full) and the shared-prompt route (packed rows), twice each, then a torch profile of 4 shared batches.

    .venv/bin/python -m benchmarks.reward_profile      (one torch thread; about 6 minutes)
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from benchmarks.results import machine_line


def main() -> None:
    from tunesmith.config import config_from_dict
    from tunesmith.methods import METHODS
    from tunesmith.models import load_text_classifier
    from tunesmith.objectives import OBJECTIVES

    torch.set_num_threads(1)
    cfg = config_from_dict({
        "model": {"name": "smollm2-135m", "max_length": 128}, "objective": "reward",
        "data": {"builtin": "rotten-tomatoes-prefs", "max_train_samples": 64,
                 "split": {"validation": 0.0, "test": 0.15, "seed": 0}},
        "method": {"name": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0,
                                            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}}})
    reward = OBJECTIVES["reward"](cfg)
    data = reward.load_data(cfg)
    loaded = load_text_classifier("smollm2-135m", ["reward"], 0)
    model = loaded.model
    METHODS["lora"]().apply(loaded, cfg.method)
    for name, p in model.named_parameters():
        if name in loaded.head_params:
            p.requires_grad_(True)
    items, _ = reward.encode(data.train, loaded.tokenizer, 128)
    items.sort(key=lambda it: len(it.input_ids))
    batches = [reward.collate(items[i : i + 8], loaded.tokenizer.pad_token_id) for i in range(0, 64, 8)]
    print(machine_line())
    print("tokens per pass: joint", sum(b["input_ids"].numel() for b in batches),
          "shared", sum(b["packed_ids"].numel() for b in batches))

    def step(batch: dict) -> None:
        chosen, rejected = reward.rewards(model, batch)
        (-F.logsigmoid(chosen - rejected).sum()).backward()

    model.train()
    for route in ("joint", "shared", "joint", "shared"):
        start = time.perf_counter()
        for b in batches:
            step(b if route == "shared" else {k: b[k] for k in ("input_ids", "attention_mask")})
        print(f"{route}: {time.perf_counter() - start:.1f} s")
    with torch.profiler.profile() as prof:
        for b in batches[:4]:
            step(b)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


if __name__ == "__main__":
    main()
