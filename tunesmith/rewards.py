"""What scores a sampled completion in online RL: users' reward functions and finished tunesmith runs.

A reward is named in a config as one of
- `module:function` (or `path/file.py:function`), with TRL's signature
  `function(prompts, completions, **kwargs) -> list[float | None]`, so reward functions written for
  TRL work unchanged; kwargs carry the prompt rows' other columns (one list per column) and `step`;
  None marks a completion the function cannot score;
- `{run: RUN_DIR}`: a tunesmith reward-model run, the reward of the completion given its prompt;
- `{run: RUN_DIR, label: NAME}`: a tunesmith classifier run, the probability of class NAME for the
  prompt followed by the completion (`input: completion` scores the completion alone).
Conversational prompts reach functions as TRL hands them (the prompt's messages, each completion as
[{"role": "assistant", "content": ...}]); a run reward reads the last user turn and the answer's text.
Several are summed with weights (`reward_weights`). Each call is checked: a function that raises,
returns the wrong count or a value that is not a finite number is an error naming it and the step.
`check_rewards` checks the specs when the config is read (users' functions import; runs exist, and a
classifier run has the label), before any model loads.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tunesmith.errors import ConfigError, TrainingError
from tunesmith.user_code import import_object

INPUTS = ("prompt+completion", "completion")


@dataclass
class Reward:
    name: str
    fn: Callable[..., Sequence[Any]]


def _run_dir(spec: dict, at: str, code_dir: str | Path | None) -> tuple[Path, dict]:
    """The run a spec names (relative: to the config's folder first) and its summary.json, checked."""
    unknown = set(spec) - {"run", "label", "input"}
    if unknown:
        raise ConfigError(f"{at}: unknown key(s) {', '.join(sorted(unknown))}; a run reward takes run, label, input")
    run_dir = Path(str(spec["run"]))
    if not run_dir.is_absolute() and code_dir is not None and (Path(code_dir) / run_dir).exists():
        run_dir = Path(code_dir) / run_dir
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        raise ConfigError(f"{at}: {run_dir} is not a finished tunesmith run (no summary.json); train it first (a "
                          "relative path is read from the config's folder, then the working directory)") from None
    if spec.get("input", INPUTS[0]) not in INPUTS:
        raise ConfigError(f"{at}.input: {spec['input']!r} is not one of {', '.join(INPUTS)}")
    label, labels = spec.get("label"), summary.get("label_names") or []
    kind = summary.get("objective")
    if label is None and kind != "reward":
        raise ConfigError(f"{at}: {run_dir} is a {kind} run, not a reward model; a classifier run needs `label:` "
                          f"(the class whose probability is the reward)")
    if label is not None and str(label) not in labels:
        raise ConfigError(f"{at}.label: {label!r} is not a class of {run_dir} (its classes: {', '.join(labels)})")
    return run_dir, summary


def text_of(value: Any) -> str:
    """A prompt or completion as text: conversational ones (lists of messages) give their last turn."""
    if isinstance(value, list):
        return str(value[-1]["content"]) if value else ""
    return str(value)


def _from_run(spec: dict, at: str, code_dir: str | Path | None, open_run: Callable[[Path], Any]) -> Reward:
    run_dir, _ = _run_dir(spec, at, code_dir)
    opened = open_run(run_dir)
    input_text = _joined if spec.get("input", INPUTS[0]) == INPUTS[0] else (lambda p, c: text_of(c))
    label = spec.get("label")
    if label is None:

        def reward_model(prompts, completions, **_):
            prompts, completions = [text_of(p) for p in prompts], [text_of(c) for c in completions]
            out = [0.0] * len(completions)
            for prompt in dict.fromkeys(prompts):  # a prompt's k completions in one batch
                where = [i for i, p in enumerate(prompts) if p == prompt]
                for i, r in zip(where, opened.objective.score(opened.saved, [completions[i] for i in where], prompt,
                                                              opened.cfg), strict=True):
                    out[i] = r
            return out

        return Reward(f"run {run_dir.name}", reward_model)

    def class_probability(prompts, completions, **_):
        rows = opened.objective.predict(opened.saved, [input_text(p, c) for p, c in zip(prompts, completions,
                                                                                      strict=True)], opened.cfg)
        return [row["probabilities"][str(label)] for row in rows]

    return Reward(f"P({label}) by {run_dir.name}", class_probability)


def _joined(prompt: Any, completion: Any) -> str:
    return text_of(prompt) + text_of(completion)


def check_rewards(specs: Sequence[str | dict], at: str, code_dir: str | Path | None = None) -> None:
    """What can be checked before a model loads: functions import, runs exist and fit."""
    if not specs:
        raise ConfigError(f"{at}: name at least one reward (module:function, or {{run: RUN_DIR}})")
    for i, spec in enumerate(specs):
        if isinstance(spec, dict) and "run" in spec:
            _run_dir(spec, f"{at}[{i}]", code_dir)
        else:
            _function(spec, f"{at}[{i}]", code_dir)


def _function(spec: Any, at: str, code_dir: str | Path | None) -> Reward:
    if not isinstance(spec, str):
        raise ConfigError(f"{at}: {spec!r} is neither module:function nor {{run: RUN_DIR}}")
    fn = import_object(spec, at, code_dir, "module:function", "my_rewards:brevity")
    if not callable(fn):
        raise ConfigError(f"{at}: {spec} is not callable")
    return Reward(spec.rpartition(":")[2], fn)


def load_rewards(specs: Sequence[str | dict], at: str, code_dir: str | Path | None = None,
                 open_run: Callable[[Path], Any] | None = None) -> list[Reward]:
    """Every reward `specs` names (an error naming `at[i]` for one that cannot be had); `open_run` opens a
    finished run for use (tunesmith.infer.open_saved: passed in, since infer sits above the objectives)."""
    check_rewards(specs, at, code_dir)
    out = []
    for i, spec in enumerate(specs):
        where = f"{at}[{i}]"
        if isinstance(spec, dict) and "run" in spec:
            if open_run is None:
                raise ConfigError(f"{where}: a run reward needs a way to open the run (open_run)")
            out.append(_from_run(spec, where, code_dir, open_run))
        else:
            out.append(_function(spec, where, code_dir))
    return out


def check_weights(weights: Sequence[float] | None, count: int, at: str) -> list[float]:
    if weights is None:
        return [1.0] * count
    if len(weights) != count:
        raise ConfigError(f"{at}: {len(weights)} weight(s) for {count} reward(s)")
    if not all(isinstance(w, int | float) and math.isfinite(w) for w in weights):
        raise ConfigError(f"{at}: every weight must be a finite number (got {list(weights)})")
    return [float(w) for w in weights]


def score(rewards: Sequence[Reward], weights: Sequence[float], prompts: list[str], completions: list[str],
          step: int, **columns: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(total, per_reward): the weighted sum per completion (NaN where no reward scored it) and each
    reward's own values, (N,) and (N, R); None from a function is NaN (unscored)."""
    per = torch.full((len(completions), len(rewards)), float("nan"), dtype=torch.float64)
    for j, reward in enumerate(rewards):
        try:
            values = reward.fn(prompts=prompts, completions=completions, step=step, **columns)
        except Exception as e:  # a user's function: say which and when
            raise TrainingError(f"reward {reward.name} raised at step {step}: {type(e).__name__}: {e}") from e
        try:
            values = list(values)
        except TypeError:
            raise TrainingError(f"reward {reward.name} returned {type(values).__name__} at step {step}, not a list "
                                f"of {len(completions)} numbers") from None
        if len(values) != len(completions):
            raise TrainingError(f"reward {reward.name} returned {len(values)} values for {len(completions)} "
                                f"completions at step {step}")
        for i, v in enumerate(values):
            if v is None:
                continue
            v = v.item() if hasattr(v, "item") and getattr(v, "ndim", 0) == 0 else v  # numpy / torch scalars
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
                raise TrainingError(f"reward {reward.name} returned {v!r} for completion {i} at step {step}; "
                                    "rewards must be finite numbers (or None: not scored)")
            per[i, j] = float(v)
    weight = torch.tensor(list(weights), dtype=torch.float64)
    total = (per * weight).nansum(1)
    total[per.isnan().all(1)] = float("nan")
    return total.float(), per.float()
