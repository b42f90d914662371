"""AI feedback: preference pairs from a model's own samples, judged by another run.

For each prompt the model samples k answers (each with its own seed, so they differ); the judge scores
them (a reward run's reward, or a classification run's probability of the `prefer` label); the best and
the worst answer become (chosen, rejected). Prompts whose answers all tie are skipped and counted. The
model's prompts are rendered as its run was trained (chat template or plain text; a model that is not a
run: its chat template where it has one), said on the console, and the pairs are written in that format
(TRL's conversational rows, or plain strings), ready for `objective: dpo` or a reward model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from tunesmith.atomic import write_text_atomic
from tunesmith.errors import TunesmithError


def _judge(run_dir: str, prefer: str | None):
    """(answers of one prompt -> scores), from a reward run or a classification run."""
    from tunesmith.infer import open_saved

    opened = open_saved(run_dir)
    saved = opened.saved
    if hasattr(opened.objective, "score"):
        if prefer is not None:
            raise TunesmithError("--prefer is for a classification judge; a reward run scores directly")
        return lambda prompt, answers: opened.objective.score(saved, answers, prompt, opened.cfg)
    if not opened.objective.has_labels:
        raise TunesmithError(f"--judge {run_dir}: a {opened.objective.name} run cannot judge; give a reward run or "
                             "a classification run")
    if prefer not in (opened.label_names or []):
        raise TunesmithError(f"--prefer: give the label whose probability is the score, one of "
                             f"{', '.join(opened.label_names)}")

    def judge(prompt: str, answers: list[str]) -> list[float]:
        rows = opened.objective.predict(saved, answers, opened.cfg)
        return [row["probabilities"][prefer] for row in rows]

    return judge


def make_pairs(model: str, prompts: list[str], judge_run: str, out: Path, k: int = 4, prefer: str | None = None,
               max_new_tokens: int = 48, temperature: float = 1.0, seed: int = 0,
               chat: bool | None = None) -> dict[str, Any]:
    import sys

    from tunesmith.generate import GenerationConfig, chat_for, describe_prompt_format, generate
    from tunesmith.infer import open_generator

    if k < 2:
        raise TunesmithError("--k: at least 2 samples per prompt make a pair")
    if not prompts:
        raise TunesmithError("--prompts: the file holds no prompts")
    policy, tokenizer, prompt_format = open_generator(model, "--model")
    judge = _judge(judge_run, prefer)
    chat, why = chat_for(prompt_format, tokenizer, chat)
    print(describe_prompt_format("chat" if chat else "plain", why, "the pairs are written in that format"),
          file=sys.stderr, flush=True)
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    rows, ties = [], 0
    for prompt in tqdm(prompts, desc="pairs", unit="prompt"):
        answers = generate(policy, tokenizer, [prompt] * k, cfg, chat=chat)
        scores = judge(prompt, answers)
        best = max(range(k), key=lambda i: scores[i])
        worst = min(range(k), key=lambda i: scores[i])
        if answers[best].strip() == answers[worst].strip() or scores[best] <= scores[worst]:
            ties += 1
            continue
        side = (lambda text: [{"role": "assistant", "content": text}]) if chat else (lambda text: text)
        rows.append({"prompt": [{"role": "user", "content": prompt}] if chat else prompt,
                     "chosen": side(answers[best]), "rejected": side(answers[worst]),
                     "scores": {"chosen": scores[best], "rejected": scores[worst]}})
    write_text_atomic(out, "".join(json.dumps(row) + "\n" for row in rows))
    return {"pairs": len(rows), "prompts": len(prompts), "skipped_ties": ties, "out": str(out),
            "samples_per_prompt": k, "model": model, "judge": judge_run, "prompt_format": "chat" if chat else "plain"}
