"""Conversations as token ids through a tokenizer's chat template (shared by training, preference
pairs and generation)."""

from __future__ import annotations

from collections.abc import Sequence


def template_ids(result) -> list[int]:
    """apply_chat_template returns a list or (transformers 5) a BatchEncoding."""
    if hasattr(result, "keys") and "input_ids" in result:
        result = result["input_ids"]
    return list(result)


def chat_prefix(tokenizer, messages: Sequence[dict]) -> list[int]:
    """Tokens of the conversation so far plus the assistant header: the prompt a model answers."""
    return template_ids(tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True))
