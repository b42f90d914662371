"""`tunesmith init OBJECTIVE`: a commented starter config that runs as written (on a built-in model and
data set), with the lines to change for one's own data beside it. The comments are the fields' own help
texts, so they say what docs/config.md says."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from tunesmith.data.config import DataConfig
from tunesmith.errors import ConfigError
from tunesmith.objectives import OBJECTIVES
from tunesmith.parsing import yaml_value
from tunesmith.schema import MethodConfig, ModelConfig, TrainConfig

__all__ = ["starter_config", "STARTERS"]


@dataclass(frozen=True)
class Starter:
    model: str
    builtin: str
    method: dict[str, Any]
    train: dict[str, Any]
    own_data: str  # what a row of one's own file looks like
    objective: dict[str, Any] = field(default_factory=dict)
    stages: str = ""  # YAML lines, where the objective runs in stages
    data: dict[str, Any] = field(default_factory=dict)  # data fields besides builtin and max_train_samples


_LM_TRAIN = {"epochs": 1, "batch_size": 8, "lr": 2.0e-4, "eval_every": 50}
_PREF_TRAIN = {"epochs": 1, "batch_size": 8, "lr": 5.0e-5, "eval_every": 50}
_PAIRS = '{"prompt": "...", "chosen": "a better answer", "rejected": "a worse one"}'
# grpo and rloo differ only in the advantages: the same starter serves both
_ONLINE_RL = Starter("smollm2-135m", "rotten-tomatoes-openings", {"name": "lora"},
                     {"max_steps": 200, "batch_size": 4, "lr": 1.0e-4, "eval_every": 50},
                     '{"prompt": "..."} or {"prompt": [{"role": "user", "content": "..."}]}; other columns reach '
                     'the reward functions', objective={"reward_funcs": ["tunesmith.reward_functions:sentiment_words"],
                                                       "num_generations": 4, "max_completion_length": 24},
                     data={"max_eval_samples": 64})
STARTERS: dict[str, Starter] = {
    "classify": Starter("minilm-l6", "rotten-tomatoes", {"name": "full"},
                        {"epochs": 2, "batch_size": 32, "lr": 5.0e-5}, "CSV columns text,label"),
    "causal_lm": Starter("smollm2-135m", "rotten-tomatoes-chat", {"name": "lora"}, _LM_TRAIN,
                         '{"prompt": "...", "completion": "..."}, {"messages": [...]}, Alpaca or ShareGPT rows'),
    "image_classify": Starter("efficientnet-lite0", "fashion-mnist", {"name": "freeze", "freeze_layers": 8},
                              {"epochs": 1, "batch_size": 64, "lr": 1.0e-3},
                              "a folder with one subfolder of images per class, or a CSV of path,label"),
    "reward": Starter("minilm-l6", "rotten-tomatoes-prefs", {"name": "full"},
                      {"epochs": 1, "batch_size": 16, "lr": 5.0e-5, "eval_every": 50}, _PAIRS),
    "dpo": Starter("smollm2-135m", "rotten-tomatoes-prefs", {"name": "lora"}, _PREF_TRAIN, _PAIRS),
    "orpo": Starter("smollm2-135m", "rotten-tomatoes-prefs", {"name": "lora"}, _PREF_TRAIN, _PAIRS),
    "simpo": Starter("smollm2-135m", "rotten-tomatoes-prefs", {"name": "lora"}, _PREF_TRAIN, _PAIRS),
    "kto": Starter("smollm2-135m", "rotten-tomatoes-prefs", {"name": "lora"}, _PREF_TRAIN,
                   '{"prompt": "...", "completion": "...", "label": true}, or pairs (each split in two)'),
    "grpo": _ONLINE_RL,
    "rloo": _ONLINE_RL,
    "ppo": dataclasses.replace(_ONLINE_RL, objective={"reward_funcs": ["tunesmith.reward_functions:sentiment_words"],
                                                      "num_generations": 2, "max_completion_length": 24,
                                                      "beta": 0.05, "num_ppo_epochs": 2}),
    "diffusion": Starter("unet-fmnist", "mnist-5k", {"name": "lora", "lora": {"r": 8, "alpha": 8}},
                         {"max_steps": 600, "batch_size": 32, "lr": 1.0e-3, "eval_every": 100},
                         "a folder with one subfolder of images per class (all of one size), or a CSV of path,label;\n"
                         "  #   a text-to-image pipeline: rows of path,text (image and caption)",
                         objective={"samples_per_class": 8, "sample_steps": 50}),
    "weak": Starter("minilm-l6", "rotten-tomatoes-weak", {"name": "full"},
                    {"batch_size": 32, "lr": 5.0e-5, "eval_every": 25},
                    "text only (the labeling functions label it); validation and test need labels",
                    objective={"update_period": 50},
                    stages="stages:                          # a fine-tune on the texts the LFs cover, then COSINE\n"
                           "  - {name: weak, method: {name: full}, epochs: 2}\n"
                           "  - {name: cosine, method: {name: full}, epochs: 1, lr: 1.0e-5}\n"),
}


def _help(cls: type, name: str) -> str:
    meta = {f.name: f.metadata for f in dataclasses.fields(cls)}
    text = meta.get(name, {}).get("help", "")
    text = text.split("; ")[0]
    return text if len(text) <= 78 else text[:75].rsplit(" ", 1)[0] + " ..."


def _lines(section: str, cls: type, values: dict[str, Any]) -> list[str]:
    out = [f"{section}:"]
    width = max(len(f"  {k}: {yaml_value(v)}") for k, v in values.items()) + 2
    for key, value in values.items():
        entry = f"  {key}: {yaml_value(value)}"
        comment = _help(cls, key)
        out.append(f"{entry.ljust(width)}# {comment}" if comment else entry)
    return out


def starter_config(objective: str, model: str | None = None) -> str:
    """The starter config's text for `objective` (optionally on another model)."""
    if objective not in OBJECTIVES:
        raise ConfigError(f"init: unknown objective {objective!r}; one of {', '.join(OBJECTIVES)}")
    s = STARTERS[objective]
    obj_cls = OBJECTIVES[objective].Config
    lines = [
        f"# A starter config for objective {objective} ({OBJECTIVES[objective].description}).",
        f"# It runs as written, on a built-in model and data set ({s.model}, {s.builtin}):",
        "#   tunesmith check THIS_FILE     # every check, no model loaded; prints the resolved config",
        "#   tunesmith train THIS_FILE",
        "# Every field and its default: docs/config.md. Data formats: docs/data-formats.md.",
        "",
    ]
    text = {"max_length": 128} if OBJECTIVES[objective].checks_text_model else {}  # a UNet reads no tokens
    lines += _lines("model", ModelConfig, {"name": model or s.model, **text})
    if s.stages:
        lines += s.stages.rstrip("\n").split("\n")
    else:
        lines += _lines("method", MethodConfig, s.method)
    lines += ["", *_lines("objective", obj_cls, {"name": objective, **s.objective})]
    lines += ["", *_lines("data", DataConfig, {"builtin": s.builtin, "max_train_samples": 2000, **s.data})]
    lines += [
        "  # your own data instead: drop `builtin` and give files (.csv .jsonl .json .tsv .parquet);",
        f"  # rows: {s.own_data}",
        "  # train: my_train.csv",
        "  # validation: my_val.csv      # optional: else carved from train by data.split",
        "  # test: my_test.csv",
        "",
    ]
    lines += _lines("train", TrainConfig, s.train)
    return "\n".join(lines) + "\n"
