"""AI feedback: preference pairs from a model's own samples, judged by another run.

For each prompt the model samples k answers (each with its own seed, so they differ); the judge scores
them (a reward run's reward, or a classification run's probability of the `prefer` label); the best and
the worst answer become (chosen, rejected). Prompts whose answers all tie are skipped and counted. The
pairs are written in TRL's conversational format (or as plain strings for a model without a chat
template), ready for `objective: dpo` or a reward model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from tunesmith.atomic import write_text_atomic
from tunesmith.errors import TunesmithError


def _generator(name: str):
    if (Path(name) / "config.yaml").exists():
        from tunesmith.infer import open_saved

        opened = open_saved(name)
        if not opened.objective.generates:
            raise TunesmithError(f"--model {name}: a {opened.objective.name} run does not generate text")
        return opened.model, opened.tokenizer
    from tunesmith.models import load_causal_lm

    loaded = load_causal_lm(name, 0)
    return loaded.model.eval(), loaded.tokenizer


def _judge(run_dir: str, prefer: str | None):
    """(answers of one prompt -> scores), from a reward run or a classification run."""
    from tunesmith.infer import open_saved
    from tunesmith.objectives import SavedRun

    opened = open_saved(run_dir)
    saved = SavedRun(opened.model, opened.tokenizer, opened.label_names)
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
               max_new_tokens: int = 48, temperature: float = 1.0, seed: int = 0) -> dict[str, Any]:
    from tunesmith.generate import GenerationConfig, generate

    if k < 2:
        raise TunesmithError("--k: at least 2 samples per prompt make a pair")
    if not prompts:
        raise TunesmithError("--prompts: the file holds no prompts")
    policy, tokenizer = _generator(model)
    judge = _judge(judge_run, prefer)
    chat = bool(getattr(tokenizer, "chat_template", None))
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    rows, ties = [], 0
    for prompt in tqdm(prompts, desc="pairs", unit="prompt"):
        answers = generate(policy, tokenizer, [prompt] * k, cfg)
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
            "samples_per_prompt": k, "model": model, "judge": judge_run}
