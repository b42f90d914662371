"""Conversations as token ids through a tokenizer's chat template (shared by training, preference
pairs and generation), and data.chat_template: a template that replaces the tokenizer's own.

The override is set on the tokenizer once, right after it is loaded; every later use (training tokens,
preference pairs, generation at evaluation) reads `tokenizer.chat_template`, and the saved tokenizer
(save_pretrained) carries it, so `tunesmith generate RUN` renders prompts as training did.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from tunesmith.errors import DataError

# Named templates, verbatim from the tokenizer_config.json they come from.
TEMPLATES = {
    # ChatML, as teknium/OpenHermes-2.5-Mistral-7B writes it (and the Hugging Face chat-template docs)
    "chatml": ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
               "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
               "{% endif %}"),
    # meta-llama/Meta-Llama-3-8B-Instruct
    "llama3": ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
               "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
               "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
               "{{ content }}{% endfor %}{% if add_generation_prompt %}"
               "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"),
    # HuggingFaceH4/zephyr-7b-beta
    "zephyr": ("{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + "
               "message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + "
               "message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + "
               "message['content'] + eos_token }}\n{% endif %}\n{% if loop.last and add_generation_prompt %}\n"
               "{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"),
}
TEMPLATE_FILES = (".jinja", ".jinja2", ".txt")


def template_ids(result) -> list[int]:
    """apply_chat_template returns a list or (transformers 5) a BatchEncoding."""
    if hasattr(result, "keys") and "input_ids" in result:
        result = result["input_ids"]
    return list(result)


def chat_prefix(tokenizer, messages: Sequence[dict]) -> list[int]:
    """Tokens of the conversation so far plus the assistant header: the prompt a model answers."""
    return template_ids(tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True))


def _is_inline(value: str) -> bool:
    return "{{" in value or "{%" in value


def template_problem(value: object, check_file: bool = True) -> str | None:
    """What is wrong with a data.chat_template value (None: nothing), before any model is loaded."""
    if not isinstance(value, str) or not value.strip():
        return f"give a template name ({', '.join(TEMPLATES)}), a .jinja/.txt file or the Jinja text, got {value!r:.60}"
    if value in TEMPLATES or _is_inline(value):
        return None
    if not value.lower().endswith(TEMPLATE_FILES):
        return (f"{value!r} is not a template name ({', '.join(TEMPLATES)}) nor a template file (.jinja or .txt, "
                "relative to the working directory)")
    if not check_file:
        return None
    path = Path(value).expanduser()
    if not path.is_file():
        where = "" if path.is_absolute() else f" (relative paths start at the working directory {Path.cwd()})"
        return f"template file {value} not found{where}"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        return f"cannot read the template file {value} ({e})"
    if not text.strip():
        return f"the template file {value} is empty"
    return None


def template_text(value: str) -> str:
    """The Jinja text a data.chat_template value names."""
    if value in TEMPLATES:
        return TEMPLATES[value]
    if _is_inline(value):
        return value
    problem = template_problem(value)
    if problem:
        raise DataError(f"data.chat_template: {problem}")
    return Path(value).expanduser().read_text(encoding="utf-8")


def use_chat_template(tokenizer, value: str | None, required: bool = True) -> None:
    """Put data.chat_template on the tokenizer (once, right after loading). `required` false (a finished
    run opened for use): a template file that is gone is left to the run's saved tokenizer."""
    if value is None:
        return
    if not required and not (value in TEMPLATES or _is_inline(value)) and not Path(value).expanduser().is_file():
        return
    tokenizer.chat_template = template_text(value)


def saved_template(folder: Path) -> str | None:
    """The chat template a saved tokenizer holds (chat_template.jinja, or tokenizer_config.json's
    chat_template as older transformers write it); None when it has none."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    try:
        value = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8")).get("chat_template")
    except (OSError, ValueError, AttributeError):
        return None
    if isinstance(value, list):  # named templates: the default one
        value = next((t.get("template") for t in value if isinstance(t, dict) and t.get("name") == "default"), None)
    return value if isinstance(value, str) and value else None


def no_template_error(where: str, rows: str = "chat rows") -> DataError:
    """A base model without a chat template, given conversations."""
    return DataError(f"{where}: {rows} are rendered with a chat template, and this model's tokenizer has none; set "
                     f"data.chat_template: chatml (or llama3, zephyr, a .jinja file), or use prompt/completion rows")
