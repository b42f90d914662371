"""README.md model cards for what a run saves (RUN_DIR/model, RUN_DIR/adapter) and for merged models.

The Hugging Face Hub convention: YAML front matter the Hub reads (base_model by its public Hub id,
library_name, pipeline_tag, license, tags), then what a reader needs to trust and use the model: the base,
the objective and method, the data, the final metrics, the settings that matter, and code that loads it
with tunesmith and with plain transformers / peft. Everything comes from the run's config and its
summary.json, so the card is written with the report, once the final metrics exist.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from tunesmith.atomic import write_text_atomic
from tunesmith.models.registry import MODELS, hub_id
from tunesmith.schema import RunConfig, stage_methods

PIPELINE_TAGS = {"text-classifier": "text-classification", "causal-lm": "text-generation",
                 "image-classifier": "image-classification"}
AUTO_CLASSES = {"text-classifier": "AutoModelForSequenceClassification", "causal-lm": "AutoModelForCausalLM"}
EXAMPLE_TEXT = "a gorgeous, witty film"


def public_base(model_name: str) -> str | None:
    """The base model's public name (Hub id), where it has one."""
    return hub_id(model_name)


def write_run_card(run_dir: Path, cfg: RunConfig, summary: dict[str, Any], objective: Any) -> Path | None:
    """The card of what the run saved (its adapter, else its model); None when it saved neither."""
    for name in ("adapter", "model"):
        folder = run_dir / name
        if folder.is_dir():
            return write_model_card(folder, cfg, objective, summary, run_dir=run_dir)
    return None


def write_model_card(out_dir: Path, cfg: RunConfig, objective: Any, summary: dict[str, Any] | None = None, *,
                     run_dir: Path | None = None, merged_from: Path | None = None) -> Path:
    """OUT_DIR/README.md for a saved model or adapter (an adapter folder holds adapter_config.json), or for
    a model merged from run `merged_from`'s adapter; returns its path."""
    out_dir = Path(out_dir)
    summary = summary or {}
    adapter = _read_json(out_dir / "adapter_config.json") if merged_from is None else None
    kept = _read_json(out_dir / "tunesmith.json") or {}
    base = public_base(cfg.model.name)
    local = kept.get("base_source") or (None if base else cfg.model.name)
    kind = objective.model_kind
    front = _front_matter(cfg, kind, base, adapter is not None, merged_from is not None, objective.library)
    sections = [
        f"# {(run_dir or out_dir).resolve().name}\n\n{_summary_line(cfg, objective, base, adapter, merged_from)}",
        _model_section(cfg, objective, summary, base, local, adapter),
        _data_section(cfg, summary),
        _results_section(summary),
        _training_section(cfg, summary),
        _usage_section(out_dir, run_dir, objective, summary, base, local, adapter, merged_from, _pooling(cfg)),
    ]
    text = "---\n" + yaml.safe_dump(front, sort_keys=False) + "---\n\n" + "\n\n".join(s for s in sections if s) + "\n"
    path = out_dir / "README.md"
    write_text_atomic(path, text)
    return path


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _front_matter(cfg: RunConfig, kind: str, base: str | None, is_adapter: bool, merged: bool,
                  own_library: str | None = None) -> dict[str, Any]:
    front: dict[str, Any] = {}
    if base:
        front["base_model"] = base
    library = own_library or ("peft" if is_adapter else "transformers" if kind in AUTO_CLASSES else None)
    if library:
        front["library_name"] = library
    if kind in PIPELINE_TAGS:
        front["pipeline_tag"] = PIPELINE_TAGS[kind]
    entry = MODELS.get(cfg.model.name)
    if entry is not None and entry.license:
        front["license"] = entry.license.lower()  # the base's licence, as the Hub spells SPDX ids
    methods = [m.name for _, m in stage_methods(cfg)]
    tags = ["tunesmith", *dict.fromkeys(methods), cfg.objective.name]
    if base:
        tags.insert(0, f"base_model:{'adapter' if is_adapter else 'finetune'}:{base}")
    if own_library:
        tags.append(own_library)
    elif is_adapter or merged:
        tags.append("transformers")
    front["tags"] = list(dict.fromkeys(tags))
    return front


def _summary_line(cfg: RunConfig, objective: Any, base: str | None, adapter: dict | None,
                  merged_from: Path | None) -> str:
    base_text = f"[{base}](https://huggingface.co/{base})" if base else f"`{cfg.model.name}`"
    what = "An adapter for" if adapter else "A fine-tune of"
    line = (f"{what} {base_text}, trained with tunesmith (objective `{objective.name}`, method "
            f"`{', '.join(m.name for _, m in stage_methods(cfg))}`).")
    if merged_from is not None:
        line += f" The adapter of run `{merged_from}` is merged into the base weights: a plain model."
    return line


def _method_text(method: Any, adapter: dict | None) -> str:
    if method.name in ("lora", "dora"):
        lo = method.lora
        targets = (adapter or {}).get("target_modules") or lo.target_modules or "the model type's attention projections"
        targets = ", ".join(targets) if isinstance(targets, list) else targets
        saved = (adapter or {}).get("modules_to_save") or lo.modules_to_save
        return (f"{method.name}: r={lo.r}, alpha={lo.alpha:g}, dropout={lo.dropout:g}, targets: {targets}"
                + (f"; trained in full: {', '.join(saved)}" if saved else "") + ("; rsLoRA" if lo.use_rslora else "")
                + ("; DoRA" if lo.use_dora and method.name != "dora" else ""))
    if method.name == "prompt":
        return f"prompt tuning: {method.prompt.num_virtual_tokens} virtual tokens (init {method.prompt.init})"
    if method.name == "freeze":
        frozen = [f"the first {method.freeze_layers} blocks"] if method.freeze_layers else []
        frozen += ["the embeddings"] if method.freeze_embeddings else []
        frozen += method.freeze_patterns
        return "freeze: " + (", ".join(frozen) + " frozen" if frozen else "nothing frozen")
    return method.name


def _model_section(cfg: RunConfig, objective: Any, summary: dict, base: str | None, local: str | None,
                   adapter: dict | None) -> str:
    rows = []
    entry = MODELS.get(cfg.model.name)
    if base:
        rows.append(f"- Base model: `{base}` (tunesmith's built-in `{cfg.model.name}`"
                    + (f": {entry.description}" if entry else "") + ")")
    else:
        rows.append(f"- Base model: `{cfg.model.name}`")
    rows.append(f"- Objective: `{objective.name}`" + (f"; labels: {', '.join(map(str, summary['label_names']))}"
                                                   if summary.get("label_names") else ""))
    named = [(f" (stage {s.name})", s.method) for s in cfg.stages] or [("", cfg.method)]
    rows += [f"- Method{stage}: {_method_text(method, adapter)}" for stage, method in named]
    if summary.get("trainable_params") and summary.get("total_params"):
        t, n = summary["trainable_params"], summary["total_params"]
        rows.append(f"- Trainable parameters: {t:,} of {n:,} ({100 * t / n:.2f}%)")
    return "## Model\n\n" + "\n".join(rows)


def _data_section(cfg: RunConfig, summary: dict) -> str:
    d = cfg.data
    rows = [f"- Built-in data set: `{d.builtin}`"] if d.builtin else []
    for split in ("train", "validation", "test"):
        value = getattr(d, split)
        files = value if isinstance(value, list) else [value] if value else []
        if files:
            rows.append(f"- {split}: " + ", ".join(f"`{Path(str(f)).name}`" for f in files))
    report = summary.get("data") or {}
    unit = report.get("unit", "examples")
    counts = [f"{split} {n:,}" for split, n in (report.get("counts") or {}).items()]
    if counts:
        rows.append(f"- Sizes ({unit}): " + ", ".join(counts))
    return "## Data\n\n" + "\n".join(rows) if rows else ""


def _results_section(summary: dict) -> str:
    final = summary.get("final") or {}
    if not final:
        return ""
    lines = ["## Results", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in final.items()]
    best = summary.get("best")
    if best:
        lines += ["", f"Best {best['metric']} {best['value']:.4f} at step {best['step']}"
                  + ("; the weights are from that step" if best.get("restored") else "") + "."]
    return "\n".join(lines)


def _training_section(cfg: RunConfig, summary: dict) -> str:
    t = cfg.train
    rows = [f"- Steps{' (last stage)' if cfg.stages else ''}: {summary.get('steps', '?')} of "
            f"{summary.get('total_steps', '?')}"
            + (f" ({summary['epochs']:g} epoch{'' if summary['epochs'] == 1 else 's'})" if "epochs" in summary else "")
            + (", stopped early" if summary.get("stopped_early") else ""),
            f"- Batch size {t.batch_size} (gradient accumulation {t.grad_accum}), max length {cfg.model.max_length}",
            f"- Learning rate {t.lr:g}" + (f" (head {t.head_lr:g})" if t.head_lr else "")
            + f", {t.schedule} schedule, " + (f"warmup {t.warmup_steps} steps" if t.warmup_steps
                                              else f"warmup {t.warmup_ratio:g} of the steps" if t.warmup_ratio and
                                              t.warmup_steps is None else "no warmup")
            + f", weight decay {t.weight_decay:g}" + (f", gradient clipping {t.max_grad_norm:g}" if t.max_grad_norm else ""),
            f"- Precision {t.precision}, weights in {cfg.model.dtype}; seeds: init {t.init_seed}, data {t.data_seed}"]
    if summary.get("train_seconds") is not None:
        n = summary.get("world_size", 1)
        rows.append(f"- Training time: {summary['train_seconds']:,.0f} s" + (
            f" on {n} processes ({summary.get('parallelism')})" if n > 1 else ""))
    return "## Training\n\n" + "\n".join(rows)


def _pooling(cfg: RunConfig) -> str:
    """The run's `model.pooling`, `auto` resolved as the loader did (cls where the model is gone)."""
    if cfg.model.pooling != "auto":
        return cfg.model.pooling
    from tunesmith.errors import TunesmithError
    from tunesmith.models.pooling import resolve_pooling
    from tunesmith.models.registry import resolve_model_dir

    try:
        return resolve_pooling("auto", resolve_model_dir(cfg.model.name))
    except TunesmithError:
        return "cls"


# Plain-transformers code for a head that reads pooled tokens: AutoModelForSequenceClassification alone
# would run BERT's [CLS] pooler, which such a model does not have (its weights would be random).
POOLED = {
    "mean": ["    mask = inputs[\"attention_mask\"].unsqueeze(-1).to(hidden.dtype)",
             "    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)"],
    "max": ["    mask = inputs[\"attention_mask\"].unsqueeze(-1)",
            "    pooled = hidden.masked_fill(mask == 0, -1e9).max(1).values"],
    "last": ["    pooled = hidden[torch.arange(len(hidden)), inputs[\"attention_mask\"].sum(1) - 1]"],
}


def _usage_section(out_dir: Path, run_dir: Path | None, objective: Any, summary: dict, base: str | None,
                   local: str | None, adapter: dict | None, merged_from: Path | None, pooling: str = "cls") -> str:
    parts = ["## Use it"]
    if run_dir is not None:
        command = {"predict": f'tunesmith predict {run_dir} "{EXAMPLE_TEXT}"',
                   "generate": f'tunesmith generate {run_dir} "Is this review fresh or rotten? {EXAMPLE_TEXT}"',
                   "score": f'tunesmith score {run_dir} "{EXAMPLE_TEXT}"',
                   "sample": f"tunesmith sample {run_dir} --num 8 --out samples"}.get(objective.command)
        if command:
            parts += ["With tunesmith:", f"```bash\n{command}\n```"]
    elif objective.model_kind == "causal-lm":
        parts += ["With tunesmith:", f'```bash\ntunesmith generate {out_dir} "{EXAMPLE_TEXT}"\n```']
    own = objective.usage_code(out_dir, base or local, adapter is not None)
    code = None if own else _python(out_dir, objective, summary, base, local, adapter, pooling)
    if own:
        libraries, snippet = own
        parts += [f"With {libraries}:", f"```python\n{snippet}```"]
    elif code:
        parts += ["With " + ("transformers and peft" if adapter else "transformers") + ":", f"```python\n{code}```"]
        if adapter and base and local:
            parts.append(f"The adapter was trained on tunesmith's local copy of `{base}` (`{local}`); to reproduce "
                         "its results exactly, point `base` there.")
    elif objective.model_kind == "image-classifier" and run_dir is not None:
        parts += ["With tunesmith in Python:", "```python\nfrom tunesmith.infer import predict\n\n"
                  f"rows, _ = predict({_q(str(run_dir))}, [\"image.png\"])\nprint(rows[0])\n```"]
    if merged_from is None and run_dir is not None:
        parts.append(f"To train on from it, give `model: {{name: {out_dir}}}` in a new config." if not adapter else
                     f"A plain model with the adapter merged in: `tunesmith merge {run_dir} merged-model`.")
    return "\n\n".join(parts)


def _q(value: Any) -> str:
    """A Python literal with double quotes, as code in cards usually is."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_q(k)}: {_q(v)}" for k, v in value.items()) + "}"
    return json.dumps(value) if isinstance(value, str) else repr(value)


def _python(out_dir: Path, objective: Any, summary: dict, base: str | None, local: str | None,
            adapter: dict | None, pooling: str = "cls") -> str | None:
    """Plain transformers (and peft) code that loads the saved model and runs it once."""
    kind = objective.model_kind
    auto = AUTO_CLASSES.get(kind)
    if auto is None:
        return None
    path = str(out_dir)
    labels = summary.get("label_names") or []
    lines = ["import torch", f"from transformers import {auto}, AutoTokenizer"]
    if adapter:
        lines += ["from peft import PeftModel", "",
                  f"base = {_q(base or local)}" + ("  # or the local copy it was trained on (below)"
                                                   if base and local else ""),
                  f"adapter = {_q(path)}", "tokenizer = AutoTokenizer.from_pretrained(adapter)"]
        if kind == "text-classifier":
            id2label = dict(enumerate(labels)) if labels else {0: "score"}
            lines += [f"id2label = {_q(id2label)}",
                      f"model = {auto}.from_pretrained(base, num_labels=len(id2label), id2label=id2label,",
                      "    label2id={v: k for k, v in id2label.items()})"]
        else:
            lines.append(f"model = {auto}.from_pretrained(base)")
        lines += ["model.config.pad_token_id = tokenizer.pad_token_id",
                  "model = PeftModel.from_pretrained(model, adapter).eval()"]
    else:
        lines += ["", f"path = {_q(path)}", "tokenizer = AutoTokenizer.from_pretrained(path)",
                  f"model = {auto}.from_pretrained(path).eval()"]
    if kind == "text-classifier":
        lines += [f"inputs = tokenizer([{_q(EXAMPLE_TEXT)}], return_tensors=\"pt\", truncation=True)",
                  "with torch.no_grad():"]
        if pooling in POOLED:  # the head reads the tokens pooled by `pooling`, not the [CLS] pooler
            lines += [f"    # the head reads the {pooling}-pooled last hidden states (model.pooling: {pooling})",
                      "    body = " + ("model.get_base_model().base_model" if adapter else "model.base_model"),
                      "    hidden = body(**inputs).last_hidden_state",
                      *POOLED[pooling], "    logits = model.classifier(pooled)"]
        else:
            lines.append("    logits = model(**inputs).logits")
        lines += (["print(model.config.id2label[int(logits.argmax(-1))], logits.softmax(-1).tolist())"]
                  if labels else ["print(float(logits[0, 0]))  # the reward"])
    else:
        prompt = f"Is this review fresh or rotten? {EXAMPLE_TEXT}"
        if summary.get("prompt_format") == "chat":
            lines += [f"messages = [{{\"role\": \"user\", \"content\": {_q(prompt)}}}]",
                      "text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)",
                      "inputs = tokenizer(text, return_tensors=\"pt\", add_special_tokens=False)"]
        else:
            lines.append(f"inputs = tokenizer({_q(prompt)}, return_tensors=\"pt\")")
        lines += ["with torch.no_grad():",
                  "    out = model.generate(**inputs, max_new_tokens=16, do_sample=False,"
                  " pad_token_id=tokenizer.pad_token_id)",
                  "print(tokenizer.decode(out[0, inputs[\"input_ids\"].shape[1]:], skip_special_tokens=True))"]
    return "\n".join(lines) + "\n"
