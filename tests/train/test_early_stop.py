"""Which evaluation is best: ties on a saturated metric go to the loss, a restored step far before the
end with the loss still improving is a warning, and a loss that ends far above its start is one too."""

import json

import pytest
import torch
from tiny import tiny_config

from tunesmith.config import EarlyStopConfig, TrainConfig, config_from_dict
from tunesmith.errors import ConfigError
from tunesmith.objectives import Loss, Objective
from tunesmith.run import run
from tunesmith.train.distributed import DistInfo
from tunesmith.train.early_stop import EarlyStopper, default_tie_breaker
from tunesmith.train.loop import TrainTask, train
from tunesmith.train.parallel import Strategy


def test_the_tie_breaker_is_the_loss_of_the_same_split():
    assert default_tie_breaker("val_accuracy") == "val_loss"
    assert default_tie_breaker("val_macro_f1") == "val_loss"
    assert default_tie_breaker("ood-subpop_accuracy") == "ood-subpop_loss"
    assert default_tie_breaker("val_loss") is None
    assert EarlyStopper.from_config(EarlyStopConfig(), "val_accuracy").tie_metric == "val_loss"
    assert EarlyStopper.from_config(EarlyStopConfig(tie_breaker="none"), "val_accuracy").tie_metric is None
    assert EarlyStopper.from_config(EarlyStopConfig(), "val_loss").tie_metric is None


def test_a_tie_goes_to_the_lower_loss_and_resets_patience():
    stop = EarlyStopper.from_config(EarlyStopConfig(patience=2), "val_accuracy")
    assert stop.update(1.0, 7, 0.658)
    assert stop.update(1.0, 14, 0.40)  # same accuracy, lower loss: the later model is better trained
    assert not stop.update(1.0, 21, 0.45)  # same accuracy, higher loss
    assert stop.bad_evals == 1 and stop.best_step == 14
    assert stop.update(1.0, 28, 0.089)
    assert (stop.best_step, stop.best_tie, stop.bad_evals) == (28, 0.089, 0)
    assert not stop.update(0.95, 35, 0.01)  # a lower accuracy is never better, whatever its loss
    untied = EarlyStopper.from_config(EarlyStopConfig(tie_breaker="none"), "val_accuracy")
    for step, loss in ((7, 0.658), (14, 0.4), (28, 0.089)):
        untied.update(1.0, step, loss)
    assert untied.best_step == 7  # what every run did before ties were broken


def test_a_tie_breaker_must_be_computed():
    cfg = {"objective": "classify", "train": {"early_stopping": {"tie_breaker": "val_los"}}, "data": {"train": "x.csv"}}
    with pytest.raises(ConfigError, match="tie_breaker: 'val_los' is not computed.*choose auto, none or one of"):
        config_from_dict(cfg)


class Scripted(Objective):
    """A linear model whose evaluations are scripted (metric values per evaluation)."""

    default_metric = "val_accuracy"

    def __init__(self, losses, scale: float = 1.0):
        super().__init__()
        self.losses, self.scale = losses, scale

    def collate(self, items, pad_id, train=False):
        return {"x": torch.tensor([[float(i + 1), 1.0] for i in items])}

    def counts(self, batch):
        return {"loss": float(batch["x"].shape[0])}

    def loss(self, model, batch):
        return Loss({"loss": (model(batch["x"]).sum() * self.scale) ** 2})


def scripted_train(tmp_path, accuracy, val_loss, **cfg):
    evaluations = iter(zip(accuracy, val_loss, strict=True))

    def evaluate(model):
        acc, loss = next(evaluations)
        return {"val_loss": loss, "val_accuracy": acc}

    objective = Scripted(val_loss)
    task = TrainTask(items=list(range(4)), collate=lambda items: objective.collate(items, None, train=True),
                     objective=objective, evaluate=evaluate)
    config = TrainConfig(epochs=len(accuracy), batch_size=4, progress=False, lr=1e-3, **cfg)
    return train(torch.nn.Linear(2, 1), task, config, tmp_path, Strategy(DistInfo()))


def test_a_saturated_accuracy_keeps_the_model_whose_loss_kept_falling(tmp_path):
    # the reported case: accuracy 1.0 from the first evaluation, the loss falling to the end
    result = scripted_train(tmp_path / "a", [1.0] * 6, [0.658, 0.5, 0.4, 0.3, 0.2, 0.089])
    assert result.best["step"] == 6 and not result.best.get("restored")  # the last is the best: nothing to restore
    assert result.warnings == []


def test_an_early_best_the_loss_disagrees_with_is_a_warning(tmp_path, capsys):
    # accuracy peaks at step 2 of 8 and never again, while the loss keeps falling
    result = scripted_train(tmp_path / "a", [0.9, 1.0, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95],
                            [0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.15, 0.1])
    assert result.best["step"] == 2 and result.best["restored"]
    (warning,) = result.warnings
    assert warning.startswith("the restored weights are from step 2 of 8 (val_accuracy 1.0000), but val_loss went "
                              "on improving after it (0.6000 there, 0.1000 at step 8)")
    assert "set train.early_stopping.metric: val_loss, or restore_best: false" in warning
    assert f"warning: {warning}" in capsys.readouterr().err
    untied = scripted_train(tmp_path / "u", [0.9, 1.0, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95],
                            [0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.15, 0.1], early_stopping=EarlyStopConfig(tie_breaker="none"))
    assert untied.warnings == result.warnings  # the warning watches the loss whether or not it breaks ties
    # a late best, or an early one the loss agrees with (over-fitting), is early stopping doing its job
    late = scripted_train(tmp_path / "b", [0.9, 0.9, 0.95, 0.95, 0.97, 1.0, 0.95, 0.95],
                          [0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.15, 0.1])
    overfit = scripted_train(tmp_path / "c", [0.9, 1.0, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95],
                             [0.7, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    assert late.warnings == [] and overfit.warnings == []


def test_a_diverged_run_says_so_on_the_console_and_in_the_summary(tiny_bert, tmp_path, capsys):
    cfg = tiny_config(tiny_bert, tmp_path / "d", epochs=1, lr=1e4, max_steps=2, max_grad_norm=None,
                      log_every=10, eval_every=2)
    summary = run(config_from_dict(cfg), tmp_path / "r")
    (warning,) = [w for w in summary["warnings"] if w.startswith("training diverged")]
    assert "the training loss ended far above where it started" in warning
    assert "lower train.lr (now 10000) or set train.max_grad_norm" in warning
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["warnings"] == summary["warnings"]
    err = capsys.readouterr().err
    assert f"warning: {warning}" in err and "1 warning above (also in summary.json)" in err
    calm = run(config_from_dict(tiny_config(tiny_bert, tmp_path / "d", epochs=1)), tmp_path / "calm")
    assert calm["warnings"] == []
