"""The data formats users already have: JSON arrays, Alpaca, ShareGPT, column mapping, chat_template,
train_on_inputs and weighted mixes of training files; each read into the right examples, the LM ones
trained end to end on a tiny Llama, and every mistake caught at config time where it can be."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tiny import sentiment_rows, write_jsonl

from tunesmith.config import config_from_dict
from tunesmith.data.chat import TEMPLATES
from tunesmith.data.config import DataConfig, SplitConfig
from tunesmith.data.lm import LMExample, load_lm_data
from tunesmith.data.prefs import load_pref_data
from tunesmith.data.sources import read_rows
from tunesmith.data.text import load_text_classification
from tunesmith.errors import ConfigError, DataError
from tunesmith.objectives import causal_lm as lm

NO_SPLIT = SplitConfig(validation=0.0, test=0.0)


def write_json(path: Path, rows: list[dict]) -> Path:
    """A pretty-printed JSON array: each object starts on its own line and spans several."""
    path.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return path


def alpaca_rows(n: int, seed: int) -> list[dict]:
    return [{"instruction": "review", "input": r["text"], "output": "fresh" if r["label"] == "pos" else "rotten"}
            for r in sentiment_rows(n, seed)]


def sharegpt_rows(n: int, seed: int) -> list[dict]:
    return [{"conversations": [{"from": "human", "value": "review " + r["text"]},
                               {"from": "gpt", "value": "fresh" if r["label"] == "pos" else "rotten"}]}
            for r in sentiment_rows(n, seed)]


def lm_config(model: Path, train: Path, data: dict | None = None, method: dict | None = None,
              objective: dict | None = None, **train_opts) -> dict:
    return {"model": {"name": str(model), "max_length": 48},
            "method": method or {"name": "full"},
            "objective": {"name": "causal_lm", "exact_match": False} | (objective or {}),
            "data": {"train": str(train), "split": {"validation": 0.25, "test": 0.0}} | (data or {}),
            "train": {"epochs": 8, "batch_size": 16, "lr": 1e-2, "progress": False, "warmup_ratio": 0.0,
                      "checkpoint_minutes": None} | train_opts}


# -- reading files ---------------------------------------------------------------------------------


def test_a_json_array_gives_one_row_per_object_at_the_line_it_starts(tmp_path):
    path = write_json(tmp_path / "d.json", [{"text": "a fine film", "label": "pos"}, {"text": "dull", "label": "neg"}])
    rows = read_rows(path)
    assert [r.values for r in rows] == [{"text": "a fine film", "label": "pos"}, {"text": "dull", "label": "neg"}]
    assert [r.where for r in rows] == [f"{path}:2", f"{path}:6"]
    lines = tmp_path / "l.json"  # JSON Lines in a .json file still work
    lines.write_text('{"text": "a"}\n{"text": "b"}\n')
    assert [r.line for r in read_rows(lines)] == [1, 2]


def test_json_array_problems_name_file_and_line(tmp_path):
    broken = tmp_path / "b.json"
    broken.write_text('[\n  {"text": "a"},\n  {"text": "b",}\n]')
    with pytest.raises(DataError, match=rf"{broken}:3: malformed JSON"):
        read_rows(broken)
    odd = tmp_path / "o.json"
    odd.write_text('[\n  {"text": "a"},\n  "just a string"\n]')
    with pytest.raises(DataError, match=rf"{odd}:3: expected a JSON object"):
        read_rows(odd)
    skipped: list[str] = []
    assert len(read_rows(odd, skip_bad=skipped)) == 1 and len(skipped) == 1
    jsonl = tmp_path / "a.jsonl"  # .jsonl stays JSON Lines: an array there is named as one
    jsonl.write_text('[{"text": "a"}]\n')
    with pytest.raises(DataError, match=rf"{jsonl}:1: .*looks like one JSON array: name it .json"):
        read_rows(jsonl)


def test_classification_from_a_json_array_and_a_csv_with_mapped_columns(tmp_path):
    rows = sentiment_rows(20, 1)
    data = load_text_classification(DataConfig(train=str(write_json(tmp_path / "t.json", rows)), split=NO_SPLIT))
    assert len(data.train) == 20 and data.label_names == ["neg", "pos"]
    csv = tmp_path / "t.csv"
    csv.write_text("review,sentiment\n" + "".join(f"{r['text']},{r['label']}\n" for r in rows))
    mapped = load_text_classification(DataConfig(train=str(csv), split=NO_SPLIT,
                                                 columns={"text": "review", "label": "sentiment"}))
    assert [e.text for e in mapped.train] == [e.text for e in data.train]
    with pytest.raises(DataError, match="data.columns.chosen: classification rows have no 'chosen'"):
        load_text_classification(DataConfig(train=str(csv), columns={"chosen": "review"}))


# -- row formats -----------------------------------------------------------------------------------


def lm_examples(tmp_path: Path, rows: list[dict], **cfg) -> list[LMExample]:
    return load_lm_data(DataConfig(train=str(write_json(tmp_path / "d.json", rows)), split=NO_SPLIT, **cfg)).train


def test_each_lm_format_gives_the_right_examples(tmp_path):
    rows = [
        {"prompt": "p", "completion": "c"},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
        {"instruction": "Sort", "input": "b a", "output": "a b"},
        {"instruction": "Say hi", "input": "", "output": "hi", "system": "Be brief."},
        {"conversations": [{"from": "system", "value": "s"}, {"from": "human", "value": "q"},
                           {"from": "gpt", "value": "a"}]},
        {"conversations": [{"from": "user", "value": "q"}, {"from": "assistant", "value": "a"}], "system": "s"},
        {"text": "plain text"},
    ]
    got = lm_examples(tmp_path, rows, allow_mixed=True)
    assert [(e.kind, e.prompt, e.completion) for e in got[:4]] == [
        ("prompt", "p", "c"), ("chat", None, None), ("prompt", "Sort\n\nb a", "a b"),
        ("prompt", "Be brief.\n\nSay hi", "hi")]
    sharegpt = ({"role": "system", "content": "s"}, {"role": "user", "content": "q"},
                {"role": "assistant", "content": "a"})
    assert got[4].messages == got[5].messages == sharegpt
    assert (got[6].kind, got[6].text) == ("text", "plain text")
    assert got[2].where.endswith("d.json:18")  # the line the object starts on


def test_bad_alpaca_and_sharegpt_rows_are_named(tmp_path):
    rows = [{"instruction": "x", "input": ""},  # no output
            {"conversations": [{"from": "human", "value": "q"}, {"from": "function_call", "value": "{}"}]},
            {"conversations": [{"from": "human", "value": "q"}]}]
    with pytest.raises(DataError) as e:
        lm_examples(tmp_path, rows)
    message = str(e.value)
    assert "3 bad rows" in message
    assert "d.json:2: field 'output' is missing or empty" in message
    assert "conversations[1]" in message and "function_call" in message
    assert "no assistant turn" in message


def test_columns_map_every_lm_format(tmp_path):
    rows = [{"question": "q", "answer": "a"}]
    got = lm_examples(tmp_path, rows, columns={"prompt": "question", "completion": "answer"})
    assert (got[0].prompt, got[0].completion) == ("q", "a")
    dialog = [{"dialog": [{"speaker": "human", "said": "q"}, {"speaker": "gpt", "said": "a"}]}]
    got = lm_examples(tmp_path, dialog, columns={"messages": "dialog", "role": "speaker", "content": "said"})
    assert got[0].messages == ({"role": "user", "content": "q"}, {"role": "assistant", "content": "a"})
    body = lm_examples(tmp_path, [{"body": "words"}], columns={"text": "body"})
    assert body[0].text == "words"


def test_a_mapped_column_missing_from_rows_names_the_rows(tmp_path):
    rows = [{"question": "q", "answer": "a"}, {"question": "q2", "reply": "a2"}]
    with pytest.raises(DataError, match=r"d\.json:6: no column 'answer' \(data\.columns\.completion\)"):
        lm_examples(tmp_path, rows, columns={"prompt": "question", "completion": "answer"})
    with pytest.raises(DataError, match="data.columns.chosen: language-model rows have no 'chosen'"):
        lm_examples(tmp_path, rows, columns={"chosen": "answer"})


def test_preference_pairs_with_mapped_columns_and_sharegpt_turns(tmp_path):
    plain = write_jsonl(tmp_path / "p.jsonl", [{"q": "2+2?", "good": "4", "bad": "5"}])
    data = load_pref_data(DataConfig(train=str(plain), split=NO_SPLIT,
                                     columns={"prompt": "q", "chosen": "good", "rejected": "bad"}))
    assert (data.train[0].prompt, data.train[0].chosen, data.train[0].rejected) == ("2+2?", "4", "5")
    chat = write_jsonl(tmp_path / "c.jsonl", [{"prompt": [{"from": "human", "value": "2+2?"}],
                                               "chosen": [{"from": "gpt", "value": "4"}],
                                               "rejected": [{"from": "gpt", "value": "5"}]}])
    pair = load_pref_data(DataConfig(train=str(chat), split=NO_SPLIT)).train[0]
    assert pair.prompt == ({"role": "user", "content": "2+2?"},) and pair.chosen[0]["content"] == "4"
    kto = write_jsonl(tmp_path / "k.jsonl", [{"prompt": "p", "answer": "a", "ok": True},
                                             {"prompt": "p", "answer": "b", "ok": False}])
    judged = load_pref_data(DataConfig(train=str(kto), split=NO_SPLIT, columns={"completion": "answer", "label": "ok"}),
                            paired=False).train
    assert [(e.completion, e.label) for e in judged] == [("a", True), ("b", False)]


# -- tokens ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(tiny_llama):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama)


def test_train_on_inputs_puts_the_loss_on_the_prompt_too(tokenizer):
    prompt = LMExample("prompt", "x:1", prompt="review a good film", completion="fresh")
    chat = LMExample("chat", "x:2", messages=({"role": "user", "content": "review a dull film"},
                                              {"role": "assistant", "content": "rotten"}))
    for example in (prompt, chat):
        ids, labels = lm.tokenize_example(example, tokenizer)
        all_ids, all_labels = lm.tokenize_example(example, tokenizer, train_on_inputs=True)
        assert all_ids == ids and all_labels == ids  # every token a target
        assert lm.IGNORE in labels and labels[-2:] == ids[-2:]  # by default: the answer and EOS only
    text = LMExample("text", "x:3", text="the film")
    assert lm.tokenize_example(text, tokenizer, True) == lm.tokenize_example(text, tokenizer)
    items, _ = lm.encode([prompt], tokenizer, 64, train_on_inputs=True)
    assert items[0].labels == items[0].input_ids


def test_train_on_inputs_is_read_from_the_objective_config(tiny_llama, tmp_path):
    cfg = config_from_dict(lm_config(tiny_llama, tmp_path / "x.jsonl", objective={"train_on_inputs": True}))
    assert cfg.objective.train_on_inputs is True
    from tunesmith.objectives import build_objective

    objective = build_objective(cfg)
    from transformers import AutoTokenizer

    items, _ = objective.encode([LMExample("prompt", "x:1", prompt="review good", completion="fresh")],
                                AutoTokenizer.from_pretrained(tiny_llama), 48)
    assert items[0].labels == items[0].input_ids


def test_chat_template_override_is_what_training_tokens_use(tokenizer):
    from tunesmith.data.chat import use_chat_template

    chat = LMExample("chat", "x:1", messages=({"role": "user", "content": "review good"},
                                              {"role": "assistant", "content": "fresh"}))
    before, _ = lm.tokenize_example(chat, tokenizer)
    original = tokenizer.chat_template
    try:
        use_chat_template(tokenizer, "zephyr")
        after, labels = lm.tokenize_example(chat, tokenizer)
    finally:
        tokenizer.chat_template = original
    assert after != before
    rendered = tokenizer.apply_chat_template(list(chat.messages), tokenize=False, chat_template=TEMPLATES["zephyr"])
    assert rendered.startswith("<|user|>\nreview good")
    assert [t for t in labels if t != lm.IGNORE][0] == tokenizer.convert_tokens_to_ids("fresh")


# -- weighted mixes --------------------------------------------------------------------------------


def test_weighted_training_files_count_each_row_by_its_weight(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"prompt": f"a{i}", "completion": "x"} for i in range(10)])
    b = write_json(tmp_path / "b.json", [{"prompt": f"b{i}", "completion": "y"} for i in range(8)])
    cfg = DataConfig(train=[str(a), str(b)], train_weights=[2, 0.5], split=NO_SPLIT)
    data = load_lm_data(cfg)
    prompts = [e.prompt for e in data.train]
    assert len(prompts) == 2 * 10 + 4
    assert all(prompts.count(f"a{i}") == 2 for i in range(10))
    assert len({p for p in prompts if p.startswith("b")}) == 4 and prompts == [e.prompt for e in load_lm_data(cfg).train]
    lines = data.report.lines()
    assert f"{a} (weight 2) + {b} (weight 0.5)" in lines[0]
    assert any(f"{b} weight 0.5: 8 training rows count as 4" in line for line in lines)
    unweighted = load_lm_data(DataConfig(train=[str(a), str(b)], split=NO_SPLIT))
    assert len(unweighted.train) == 18


def test_weights_apply_after_splitting_so_no_held_out_row_trains(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"prompt": f"a{i}", "completion": "x"} for i in range(40)])
    b = write_jsonl(tmp_path / "b.jsonl", [{"prompt": f"b{i}", "completion": "y"} for i in range(20)])
    data = load_lm_data(DataConfig(train=[str(a), str(b)], train_weights=[3, 1],
                                   split=SplitConfig(validation=0.25, test=0.0)))
    held_out = {e.prompt for e in data.validation}
    assert len(held_out) == 15 and not held_out & {e.prompt for e in data.train}
    assert len(data.train) == 3 * sum(p.startswith("a") for p in {e.prompt for e in data.train}) + sum(
        p.startswith("b") for p in {e.prompt for e in data.train})


def test_several_training_files_for_classification_and_preferences(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", sentiment_rows(12, 1))
    b = write_json(tmp_path / "b.json", sentiment_rows(6, 2))
    text = load_text_classification(DataConfig(train=[str(a), str(b)], train_weights=[1, 2], split=NO_SPLIT))
    assert len(text.train) == 24
    pairs = [{"prompt": f"p{i}", "chosen": "good", "rejected": "bad"} for i in range(5)]
    prefs = load_pref_data(DataConfig(train=[str(write_jsonl(tmp_path / "p.jsonl", pairs))] * 2, split=NO_SPLIT))
    assert len(prefs.train) == 10


# -- config-time errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(("data", "says"), [
    ({"chat_template": "chatml2"}, r"data\.chat_template: 'chatml2' is not a template name \(chatml, llama3, zephyr\)"),
    ({"chat_template": "missing.jinja"}, r"data\.chat_template: template file missing\.jinja not found"),
    ({"train": ["a.jsonl", "b.jsonl"], "train_weights": [1]}, r"data\.train_weights: 1 weight for 2 data\.train files"),
    ({"train": ["a.jsonl", "b.jsonl"], "train_weights": [1, -1]}, r"data\.train_weights: the weight of b\.jsonl is -1"),
    ({"train": ["a.jsonl"], "train_weights": [0]}, r"data\.train_weights: every weight is 0"),
    ({"train": []}, r"data\.train: an empty list"),
    ({"columns": {"question": "q"}}, r"data\.columns\.question: unknown name; data\.columns maps these: text"),
    ({"columns": {"prompt": "q", "completion": "q"}}, r"data\.columns\.completion: column 'q' is already"),
    ({"text_field": "body", "columns": {"text": "review"}}, r"data\.text_field: 'body', but data\.columns\.text"),
    ({"format": "xml"}, r"data\.format: 'xml' is not one of auto, jsonl, csv, tsv, parquet, json"),
])
def test_config_errors_come_before_any_file_is_read(tmp_path, data, says):
    cfg = {"model": {"name": "tiny"}, "objective": "causal_lm", "data": {"train": "nowhere.jsonl"} | data}
    with pytest.raises(ConfigError, match=says):
        config_from_dict(cfg)


def test_a_template_file_may_be_gone_when_a_finished_run_is_opened(tmp_path):
    cfg = {"model": {"name": "tiny"}, "objective": "causal_lm",
           "data": {"train": "nowhere.jsonl", "chat_template": str(tmp_path / "gone.jinja")}}
    config_from_dict(cfg, for_training=False)  # its saved tokenizer holds the template


# -- end to end ------------------------------------------------------------------------------------


def base_model(tiny_llama: Path, tmp_path: Path) -> Path:
    """The tiny Llama without a chat template: a base model."""
    path = tmp_path / "base"
    shutil.copytree(tiny_llama, path)
    (path / "chat_template.jinja").unlink()
    return path


@pytest.mark.slow
def test_alpaca_json_array_trains_end_to_end_and_keeps_a_named_template(tiny_llama, tmp_path):
    from tunesmith.infer import open_generator
    from tunesmith.run import run

    train = write_json(tmp_path / "alpaca.json", alpaca_rows(64, 1))
    cfg = lm_config(base_model(tiny_llama, tmp_path), train, {"chat_template": "zephyr"}, lr=2e-2)
    summary = run(config_from_dict(cfg), tmp_path / "r")
    assert summary["final"]["val_loss"] < 1.0  # learned to answer fresh / rotten after the input
    _, tok, prompt_format = open_generator(tmp_path / "r")
    assert prompt_format == "plain" and tok.chat_template == TEMPLATES["zephyr"]  # the saved model keeps it


@pytest.mark.slow
def test_sharegpt_on_a_base_model_needs_a_template_and_the_run_keeps_it(tiny_llama, tmp_path, monkeypatch):
    from tunesmith.data.chat import template_ids
    from tunesmith.generate import prompt_ids
    from tunesmith.infer import open_generator
    from tunesmith.run import run

    monkeypatch.chdir(tmp_path)
    base = base_model(tiny_llama, tmp_path)
    train = write_json(tmp_path / "sharegpt.json", sharegpt_rows(64, 1))
    lora = {"name": "lora", "lora": {"r": 4, "alpha": 8, "target_modules": "all-linear"}}
    with pytest.raises(DataError, match=r"sharegpt\.json:\d+: conversations .* set data\.chat_template: chatml"):
        run(config_from_dict(lm_config(base, train, method=lora)), tmp_path / "no-template")

    Path("templates").mkdir()
    Path("templates/chatml.jinja").write_text(TEMPLATES["chatml"])
    cfg = lm_config(base, train, {"chat_template": "templates/chatml.jinja"}, method=lora, lr=2e-2)
    summary = run(config_from_dict(cfg), tmp_path / "r")
    assert summary["final"]["val_loss"] < 1.5
    shutil.rmtree("templates")  # the adapter run reopens from its saved tokenizer, not the file
    model, tok, prompt_format = open_generator(tmp_path / "r")
    assert prompt_format == "chat" and tok.chat_template == TEMPLATES["chatml"]
    expected = tok.apply_chat_template([{"role": "user", "content": "review good"}], add_generation_prompt=True,
                                       tokenize=True, chat_template=TEMPLATES["chatml"])
    assert prompt_ids(tok, "review good") == template_ids(expected)  # generate renders prompts as training did
