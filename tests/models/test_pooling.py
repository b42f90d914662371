"""`model.pooling`: a text classifier's head reads the last hidden states pooled over the real tokens
(mean / max / last), as sentence-transformers embeds, instead of BERT's [CLS] pooler."""

import copy
import json
import math
import shutil

import pytest
import torch
from tiny import tiny_config

from tunesmith.config import config_from_dict
from tunesmith.errors import ConfigError, TunesmithError
from tunesmith.infer import evaluate_file, predict
from tunesmith.models import MODELS, load_saved_classifier, load_text_classifier
from tunesmith.models.pooling import pool, pooling_of, resolve_pooling
from tunesmith.run import run

TEXTS = ["a gripping, beautifully acted film", "dull.", "It is neither good nor bad, but it is long and it has songs"]


def st_checkpoint(tiny_bert, tmp_path_factory, **modes):
    path = tmp_path_factory.mktemp("st") / "model"
    shutil.copytree(tiny_bert, path)
    (path / "1_Pooling").mkdir()
    (path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": False, **modes}))
    return path


@pytest.mark.slow
def test_mean_pooled_minilm_reads_the_sentence_transformers_embedding():
    from transformers import AutoModel, AutoTokenizer

    path = MODELS["minilm-l6"].locate()
    loaded = load_text_classifier("minilm-l6", ["a", "b", "c"], 0, pooling="auto")
    assert pooling_of(loaded.model) == "mean"
    assert not any(".pooler." in n for n, _ in loaded.model.named_parameters())
    model = loaded.model.eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any()  # padding must be excluded
    # sentence-transformers' recipe (all-MiniLM-L6-v2's model card), before normalisation
    encoder = AutoModel.from_pretrained(path).eval()
    with torch.no_grad():
        hidden = encoder(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        expected = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        features = model.bert(**batch).pooler_output
        logits = model(**batch).logits
    torch.testing.assert_close(features, expected, rtol=0, atol=1e-5)
    # so the head is a linear probe on those embeddings
    head = model.classifier
    torch.testing.assert_close(logits, expected @ head.weight.T + head.bias, rtol=0, atol=1e-5)


def test_pool_modes_exclude_padding():
    hidden = torch.tensor([[[1.0, 5.0], [3.0, -1.0], [5.0, -4.0]]]).repeat(2, 1, 1)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert pool(hidden, mask, "mean").tolist() == [[2.0, 2.0], [3.0, 0.0]]
    assert pool(hidden, mask, "max").tolist() == [[3.0, 5.0], [5.0, 5.0]]
    assert pool(hidden, mask, "last").tolist() == [[3.0, -1.0], [5.0, -4.0]]


def test_auto_is_what_the_checkpoint_declares(tiny_bert, tmp_path_factory):
    assert resolve_pooling("auto", MODELS["minilm-l6"].locate()) == "mean"
    assert resolve_pooling("auto", tiny_bert) == "cls"  # no 1_Pooling: BERT's own head
    assert resolve_pooling("auto", st_checkpoint(tiny_bert, tmp_path_factory, pooling_mode_max_tokens=True)) == "max"
    assert resolve_pooling("cls", MODELS["minilm-l6"].locate()) == "cls"  # asked for: kept
    loaded = load_text_classifier(str(tiny_bert), ["a", "b"], 0, pooling="auto")
    assert pooling_of(loaded.model) == "cls" and "bert.pooler.dense.weight" in dict(loaded.model.named_parameters())


def test_the_pooling_follows_a_copy_and_the_mask_of_each_call(tiny_bert):
    model = load_text_classifier(str(tiny_bert), ["a", "b"], 0, pooling="mean").model.eval()
    twin = copy.deepcopy(model)
    hook = next(iter(twin.bert._forward_pre_hooks.values()))
    assert hook.__self__ is twin.bert.pooler  # not the original's pooler
    ids = torch.tensor([[2, 7, 8, 3, 0], [2, 9, 3, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        padded = model(input_ids=ids, attention_mask=mask).logits
        alone = model(input_ids=ids[1:, :3], attention_mask=mask[1:, :3]).logits
    torch.testing.assert_close(padded[1:], alone, rtol=0, atol=1e-5)
    torch.testing.assert_close(twin(input_ids=ids, attention_mask=mask).logits, padded)


@pytest.mark.parametrize("method", ["linear_probe", "lora"])
def test_mean_pooled_run_saves_and_predicts_as_it_evaluated(tiny_bert, tmp_path, method):
    cfg = tiny_config(tiny_bert, tmp_path / "data", n_train=48, epochs=2, lr=1e-2)
    cfg["model"]["pooling"] = "mean"
    cfg["method"] = {"name": method}
    summary = run(config_from_dict(cfg), tmp_path / "run")
    run_dir = tmp_path / "run"
    assert "pooling: mean" in (run_dir / "config.yaml").read_text()
    rows = [json.loads(line) for line in open(cfg["data"]["test"])]
    predicted, _ = predict(run_dir, [r["text"] for r in rows])
    loss = -sum(math.log(p["probabilities"][r["label"]]) for p, r in zip(predicted, rows, strict=True)) / len(rows)
    assert loss == pytest.approx(summary["final"]["test_loss"], abs=1e-5)
    assert evaluate_file(run_dir, cfg["data"]["test"])["loss"] == pytest.approx(summary["final"]["test_loss"], abs=1e-5)
    # the model card's plain transformers (and peft) code pools as the run did
    from tunesmith.card import EXAMPLE_TEXT

    code = (run_dir / ("model" if method == "linear_probe" else "adapter") / "README.md").read_text()
    code = code.split("```python\n")[1].split("```")[0]
    assert "mean-pooled" in code
    scope: dict = {}
    exec(code.replace("print(", "(lambda *a: None)("), scope)
    expected = predict(run_dir, [EXAMPLE_TEXT])[0][0]["probabilities"]
    assert scope["logits"].softmax(-1)[0].tolist() == pytest.approx([expected[k] for k in summary["label_names"]],
                                                                     abs=1e-5)
    if method == "linear_probe":  # a whole model: config.json says how it pools; no pooler weights
        saved = json.loads((run_dir / "model" / "config.json").read_text())
        assert saved["tunesmith_pooling"] == "mean"
        # trained on from it, it keeps its pooling even under the default (it has no [CLS] pooler weights)
        again = load_text_classifier(str(run_dir / "model"), summary["label_names"], 0, pooling="cls")
        assert pooling_of(again.model) == "mean" and again.head_params == ["classifier.weight", "classifier.bias"]
    else:  # the adapter goes back on a base loaded with the run's pooling; merged, it keeps it
        from tunesmith.infer import merge_run

        assert (run_dir / "adapter" / "adapter_config.json").exists()
        merge_run(run_dir, tmp_path / "merged")
        assert json.loads((tmp_path / "merged" / "config.json").read_text())["tunesmith_pooling"] == "mean"
        model, tokenizer = load_saved_classifier(tmp_path / "merged")
        with torch.no_grad():
            probs = model(**tokenizer([EXAMPLE_TEXT], return_tensors="pt")).logits.softmax(-1)[0].tolist()
        assert probs == pytest.approx([expected[k] for k in summary["label_names"]], abs=1e-5)


def check(tmp_path, model, objective="classify", **fields):
    cfg = tiny_config(model, tmp_path / "data")
    cfg["model"] |= fields
    cfg["objective"] = objective
    config_from_dict(cfg)


def test_config_errors(tiny_bert, tiny_llama, tmp_path, tmp_path_factory):
    with pytest.raises(ConfigError, match=r"model\.pooling.*'avg' is not one of auto, cls, mean, max, last"):
        check(tmp_path, tiny_bert, pooling="avg")
    with pytest.raises(ConfigError, match=r"model\.train_pooler.*pooling is mean"):
        check(tmp_path, tiny_bert, pooling="mean", train_pooler=True)
    mean_pooled = st_checkpoint(tiny_bert, tmp_path_factory, pooling_mode_mean_tokens=True)
    with pytest.raises(ConfigError, match=r"model\.train_pooler.*pooling is mean \(auto\)"):
        check(tmp_path, mean_pooled, pooling="auto", train_pooler=True)
    check(tmp_path, mean_pooled, pooling="auto", train_pooler=False)  # nothing to train: fine
    check(tmp_path, tiny_bert, pooling="auto", train_pooler=True)  # auto is cls here: a pooler to train
    with pytest.raises(ConfigError, match=r"model\.pooling.*text classifiers.*not causal_lm"):
        check(tmp_path, tiny_llama, objective="causal_lm", pooling="mean")
    with pytest.raises(TunesmithError, match=r"model\.train_pooler"):  # the loader too, for the Python API
        load_text_classifier(str(tiny_bert), ["a", "b"], 0, train_pooler=True, pooling="max")
