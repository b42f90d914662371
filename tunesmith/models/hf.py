"""Load Hugging Face-format text models offline and attach a task head trained from scratch."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from tunesmith.errors import TunesmithError
from tunesmith.models.registry import resolve_model_dir


def _quiet_transformers() -> None:
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:  # transformers 5 writes shards with huggingface_hub's bars
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:
        pass


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: object
    head_params: list[str]  # parameters trained from scratch (not in the pretrained checkpoint)
    source: str
    lora_targets: list[str] | None = None  # what method lora wraps when target_modules is not given
    save: Callable[[nn.Module, Path], None] | None = None  # writes RUN_DIR/model; None: Hugging Face format
    # formats the model family writes beside a saved PEFT adapter folder (e.g. diffusers' LoRA file),
    # each given that folder
    adapter_exports: list[Callable[[Path], Path]] = field(default_factory=list)


def untrained_pooler(path: Path) -> bool:
    """Whether a checkpoint says its [CLS] pooler was never what it was trained through: a
    sentence-transformers model that pools by mean (or max) over tokens, e.g. all-MiniLM-L6-v2. Its
    pooler weights are left over from pretraining, so a classifier must learn them with its head."""
    import json

    pooling = path / "1_Pooling" / "config.json"
    try:
        config = json.loads(pooling.read_text())
    except (OSError, ValueError):
        return False
    return not config.get("pooling_mode_cls_token", False)


def load_text_classifier(name_or_path: str, label_names: list[str], init_seed: int,
                         train_pooler: bool | None = None, dtype: torch.dtype = torch.float32,
                         pooling: str = "cls") -> LoadedModel:
    """Pretrained encoder + a new classification head for `label_names`, seeded by `init_seed`.

    `pooling` (`model.pooling`): cls keeps the architecture's own head; mean / max / last replace the
    [CLS] pooler by a parameter-free pooling over the real tokens (tunesmith.models.pooling); auto: what
    the checkpoint declares, else cls.

    `train_pooler`: the pooler (dense + tanh on [CLS]) trains as part of the head, under every method
    (linear_probe and LoRA included); None: where the checkpoint declares its pooler untrained
    (`untrained_pooler`). The model stays a plain BertForSequenceClassification (PEFT: the pooler is
    one of modules_to_save)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    _quiet_transformers()
    path = resolve_model_dir(name_or_path)
    id2label = dict(enumerate(label_names))
    torch.manual_seed(init_seed)  # the head's initial weights (and the dropout stream that follows)
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=len(label_names), id2label=id2label, label2id={v: k for k, v in id2label.items()},
            local_files_only=True, ignore_mismatched_sizes=True, output_loading_info=True, dtype=dtype,
        )
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise TunesmithError(f"cannot load a text classifier from {path}: {e}") from None
    from tunesmith.models.pooling import install_pooling, resolve_pooling

    pooling = resolve_pooling(pooling, Path(path))
    install_pooling(model, pooling, str(path))  # before the head is listed: a replaced pooler is no head
    new = set(info.get("missing_keys", ())) | {k[0] if isinstance(k, tuple) else k for k in info.get("mismatched_keys", ())}
    head = [n for n, _ in model.named_parameters() if n in new]
    if not head:  # e.g. re-tuning a saved classifier with the same labels: its head is still the head
        head = [n for n, _ in model.named_parameters() if n.split(".")[0] in ("classifier", "score")]
    if pooling != "cls":  # no pooler left to train
        if train_pooler:
            raise TunesmithError(f"model.train_pooler: true, but model.pooling is {pooling} ({path}), which has "
                                 "no [CLS] pooler to train; leave train_pooler unset")
        train_pooler = False
    if train_pooler is None:
        train_pooler = untrained_pooler(Path(path))
    if train_pooler:
        head += [n for n, _ in model.named_parameters() if ".pooler." in f".{n}" and n not in head]
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    model.to(dtype)  # the new head too (a checkpoint in another dtype is read in `dtype`)
    return LoadedModel(model=model, tokenizer=tokenizer, head_params=head, source=str(path))


def load_saved_classifier(model_dir: str | Path, device: str = "cpu") -> tuple[nn.Module, object]:
    """A classifier written to RUN_DIR/model by a run (plain HF format), in eval mode."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    _quiet_transformers()
    from tunesmith.models.registry import weights_problem

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").exists():
        raise TunesmithError(f"{model_dir} holds no saved model (config.json missing); did the run finish?")
    problem = weights_problem(str(model_dir))
    if problem:
        raise TunesmithError(problem)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    from tunesmith.models.pooling import install_pooling, pooling_of

    install_pooling(model, pooling_of(model), str(model_dir))  # as it was trained (config.json says)
    return model.to(device).eval(), tokenizer


def save_hf_model(model: nn.Module, tokenizer: object, out_dir: Path) -> None:
    """Plain Hugging Face format, written to a temp dir and renamed so a crash leaves no half model."""
    from tunesmith.atomic import atomic_dir

    _quiet_transformers()
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)  # safetensors (the default, and the only format in transformers 5)
        tokenizer.save_pretrained(tmp)


def load_causal_lm(name_or_path: str, init_seed: int, dtype: torch.dtype = torch.float32) -> LoadedModel:
    """A pretrained decoder-only language model (its own LM head: nothing is trained from scratch)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    path = resolve_model_dir(name_or_path)
    torch.manual_seed(init_seed)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise TunesmithError(f"cannot load a causal language model from {path}: {e}") from None
    if tokenizer.eos_token_id is None:
        raise TunesmithError(f"{path}: the tokenizer has no EOS token, so the model could never learn to stop")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # safe: the loss mask comes from labels, not from pad ids
    return LoadedModel(model=model, tokenizer=tokenizer, head_params=[], source=str(path))
