"""Weak supervision: classify from labeling functions instead of labels, then (optionally) COSINE.

The training texts carry no labels (a label column is ignored). Labeling functions (data/weak.py) vote
on them; a label model (data/label_model.py) turns the votes into soft labels. Stages:
- any stage but the self-training one fine-tunes on the soft labels of the texts some LF covers
  (soft cross-entropy), early-stopped on the small labelled dev set (the validation split);
- the stage named `self_training_stage` (default "cosine") self-trains on every training text,
  covered or not, with COSINE (objectives/cosine.py), relabeling every `update_period` steps.

Its runs are ordinary classifiers: predict, eval, merge and export work as for `classify`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tunesmith.data.weak import LFConfig
from tunesmith.errors import ConfigError, DataError
from tunesmith.fastpath import no_autograd
from tunesmith.objectives.base import Loss, ObjectiveConfig
from tunesmith.objectives.classify import Classify, collate, encode
from tunesmith.objectives.cosine import (
    CLASS_FREQUENCY,
    CONFIDENCE_FROM,
    DISTANCES,
    FEATURES,
    PAIRS,
    Relabel,
    capture_input,
    confidence,
    confidence_sum,
    contrastive_sum,
    feature_module,
    pair_count,
    pseudo_label_accuracy,
    pseudo_labels,
    self_training_sum,
)
from tunesmith.ranges import choice, option, ranged
from tunesmith.user_code import resolve_code_dir

LABEL_MODEL_NAMES = ("auto", "dawid_skene", "majority", "gold")
TERMS = ("self_training", "confidence", "contrastive")  # COSINE's loss terms, in Weak.loss's order
_LF_DIR = Path(__file__).resolve().parent.parent / "data" / "lfs"


@dataclass
class WeakConfig(ObjectiveConfig):
    name: str = option("weak", "the objective")
    labels: list[str] = option(
        help="the label set; default: the labelled splits' labels", default_factory=list)
    lfs: list[LFConfig] = option(
        help="labeling functions: each {name, label, keywords | regex} or {name, function: module:function}", default_factory=list)
    lf_file: str | None = option(
        None, "a YAML file listing labeling functions instead of `lfs`; neither: the built-in data set's own")
    code_dir: str | None = option(
        None, "where a function LF's module is looked for first; unset: the folder of the config file (a "
        "relative path is read from there too), then the working directory and PYTHONPATH")
    label_model: str = option(
        "auto", "auto (whichever of dawid_skene and majority is more accurate on the dev set's covered texts) | "
        "dawid_skene | majority | gold (the training rows' own labels: the fully supervised ceiling)")
    dev_size: int | None = ranged(300, ">= 1", "at most this many labelled validation (dev) examples")
    self_training_stage: str | None = option("cosine", "the stage that self-trains (none: no stage does)")
    update_period: int = ranged(
        250, ">= 1", "COSINE's T: steps between relabelings (COSINE's options keep the names and defaults of "
        "its official code)")
    eps: float = ranged(0.6, "[0, 1)", "confidence threshold for a text to be selected")
    power: float = ranged(2.0, ">= 1", "sharpening exponent")
    contrastive_weight: float = ranged(1.0, ">= 0", "lambda of the contrastive regulariser")
    confreg: float = ranged(0.1, ">= 0", "weight of the confidence regulariser")
    margin: float = ranged(1.0, "> 0", "contrastive margin for pairs with different pseudo-labels")
    distmetric: str = option("cos", "cos | l2: the contrastive regulariser's distance")
    confidence_from: str = option(
        "pseudo_label", "whose confidence selects a text: pseudo_label (the sharpened label, the paper's Eq. 6) | "
        "prediction (before sharpening, the official code's order; with the paper's log C it starves "
        "selection)")
    contrastive_features: str = option(
        "student", "what the contrastive regulariser compares: student (the classifier's input features of the "
        "model being trained, with gradients) | teacher (those of the model as it was at the last relabeling, "
        "the official code's choice: no gradient flows through them, so the term is logged but does not train)")
    contrastive_pairs: str = option(
        "all", "which pairs of selected texts in a batch the contrastive regulariser sums over: all | random (each "
        "text with one drawn at random, as the official code and WRENCH do; averaged over the texts)")
    class_frequency: str = option(
        "all", "the sharpening's class frequency f_j: all (summed over every training text at each relabeling, "
        "the paper's) | batch (over the texts of each training batch, the official code's; the selection "
        "then depends on the batch)")


@dataclass(frozen=True)
class WeakItem:
    input_ids: list[int]
    label: int  # validation / test: the gold label; training: -1 (or a hidden gold label, never trained on)
    index: int  # position in its split: where its soft label and pseudo-label are kept


class Weak(Classify):
    name = "weak"
    description = "classify from labeling functions: a label model's soft labels, then COSINE self-training"
    Config = WeakConfig

    def __init__(self, run=None) -> None:
        super().__init__(run)
        self.lf_configs: list = []
        self.lfs: list = []
        self.label_names: list[str] = []
        self.matrix: np.ndarray | None = None  # train texts x LFs
        self.soft: np.ndarray | None = None  # the label model's soft labels (NaN rows: uncovered)
        self.test_prediction: dict[str, float] = {}
        self.stats: dict[str, Any] = {}
        self.stage: str | None = None
        self.targets: torch.Tensor | None = None  # (N, C) what the stage trains towards, by item index
        self.weights: torch.Tensor | None = None  # (N,)
        self.pseudo: dict[str, Any] | None = None  # self-training: relabel count and seconds
        self.probs: torch.Tensor | None = None  # (N, C) the last relabeling's predictions (class_frequency: batch)
        self.features: torch.Tensor | None = None  # (N, H) the teacher's features (contrastive_features: teacher)
        self.loss_sums = torch.zeros(3, dtype=torch.float64)  # per term, since the last relabeling
        self.loss_totals = torch.zeros(3, dtype=torch.float64)  # per term, over the stage
        self.relabel_metrics: dict[str, float] = {}  # the last relabeling's diagnostics
        self._context: Any = None
        self._reported = False
        self.matrix_cache: Path | None = None

    # -- config time -------------------------------------------------------------------------------
    @classmethod
    def locate(cls, cfg: WeakConfig, base_dir: Path) -> None:
        cfg.code_dir = resolve_code_dir(cfg.code_dir, base_dir)

    def check(self, run, where) -> None:
        super().check(run, where)
        cfg = run.objective
        for key, allowed in (("label_model", LABEL_MODEL_NAMES), ("distmetric", DISTANCES),
                             ("confidence_from", CONFIDENCE_FROM), ("contrastive_features", FEATURES),
                             ("contrastive_pairs", PAIRS), ("class_frequency", CLASS_FREQUENCY)):
            choice(getattr(cfg, key), tuple(allowed), where(f"objective.{key}"))
        self.lf_configs = lf_configs(run, where)
        from tunesmith.data.weak import compile_lfs

        declared = getattr(cfg, "_lf_where", None)  # file:line of each LF, kept from when the config was read
        if declared is None:
            source = _lf_source(run)
            declared = [where(f"objective.lfs.{i}") if cfg.lfs else source(i) for i in range(len(self.lf_configs))]
            cfg._lf_where = declared  # not a field: the lines belong to the file this config was read from
        self.lfs = compile_lfs(self.lf_configs, lambda i: declared[i] if i < len(declared) else "objective.lfs",
                               cfg.code_dir)
        names = [stage.name for stage in run.stages]
        st = cfg.self_training_stage
        if st and names and st not in names:
            raise ConfigError(f"{where('objective.self_training_stage')}: {st!r} is not one of the stages "
                              f"({', '.join(names)}); name the self-training stage so, or set it to null")
        if st and (names[:1] == [st] or (not names and st == "main")):
            import warnings

            warnings.warn(f"{where('objective.self_training_stage')}: self-training ({st!r}) is the first stage, so "
                          f"COSINE starts from model.name as it is; that is right when {run.model.name} is already "
                          "fine-tuned on these weak labels, and otherwise its pseudo-labels come from an untrained "
                          "head: put a stage that fine-tunes on the weak labels first", stacklevel=2)

    # -- data --------------------------------------------------------------------------------------
    def load_data(self, run):
        from tunesmith.data import load_text_classification

        if not self.lfs:
            self.check(run, lambda key: key)
        cfg = self.cfg
        data = load_text_classification(run.data, unlabelled_train=True, label_names=list(cfg.labels) or None,
                                        validation_limit=cfg.dev_size)
        self.label_names = data.label_names
        for lf in self.lfs:
            outside = [label for label in lf.labels if label not in data.label_names]
            if outside:
                raise DataError(f"{lf.where} {lf.name!r}: votes {outside[0]!r}, which is not one of the labels "
                                f"({', '.join(data.label_names)}); fix its label, or name the labels in "
                                "objective.labels")
        self.weak_labels(data, cache_dir=None if self.run_dir is None else self.run_dir / "weak")
        return data

    def weak_labels(self, data, cache_dir: Path | None) -> None:
        """The label matrix of the training texts (read from the run when these LFs already labelled
        these texts), the label model's soft labels, its predictions on the test split, and the stats."""
        from tunesmith.data.label_model import fit_label_model
        from tunesmith.data.weak import label_matrix, lf_stats, matrix_cache

        k = len(data.label_names)
        texts = [e.text for e in data.train]
        self.matrix_cache = None if cache_dir is None else matrix_cache(cache_dir, self.lf_configs, texts,
                                                                        data.label_names)
        if self.matrix_cache is not None and self.matrix_cache.exists():
            self.matrix = np.load(self.matrix_cache)
        else:
            self.matrix = label_matrix(self.lfs, texts, [e.where for e in data.train], data.label_names)
        gold_train = np.array([e.label for e in data.train])
        if not (self.matrix != -1).any():
            raise DataError(f"no labeling function voted on any of the {len(texts):,} training texts; check their "
                            "keywords and patterns against the text (run tunesmith weak-stats CONFIG)")
        if self.cfg.label_model == "gold":
            if (gold_train < 0).any():
                first = data.train[int(np.flatnonzero(gold_train < 0)[0])].where
                raise DataError(f"{first}: objective.label_model gold trains on the rows' own labels, and this row "
                                "has none among the labels")
        dev = data.validation
        dev_matrix = label_matrix(self.lfs, [e.text for e in dev], [e.where for e in dev], data.label_names)
        dev_gold = np.array([e.label for e in dev])
        dev_covered = (dev_matrix != -1).any(axis=1)
        chosen = {"name": self.cfg.label_model}
        if self.cfg.label_model == "gold":
            self.soft = np.eye(k)[gold_train]
            model = None
        else:
            names = ("majority", "dawid_skene") if self.cfg.label_model == "auto" else (self.cfg.label_model,)
            fitted = {name: fit_label_model(name, self.matrix, k) for name in names}
            if dev_covered.any():
                chosen["dev_accuracy"] = {name: float((m.predict(dev_matrix)[dev_covered] == dev_gold[dev_covered])
                                                      .mean()) for name, m in fitted.items()}
            if len(names) > 1 and not dev_covered.any():
                raise DataError("objective.label_model auto picks the label model on the dev set, but no labeling "
                                "function votes on any dev text; name the label model (majority or dawid_skene)")
            # ties go to majority, the simpler model, listed first
            chosen["name"] = max(names, key=lambda name: chosen.get("dev_accuracy", {}).get(name, 0.0))
            model = fitted[chosen["name"]]
            self.soft = model.soft_labels(self.matrix)
        self.stats = {"train": lf_stats(self.matrix, [lf.name for lf in self.lfs], k,
                                        gold_train if (gold_train >= 0).all() else None),
                      "dev": lf_stats(dev_matrix, [lf.name for lf in self.lfs], k, dev_gold),
                      "label_model": chosen}
        covered = ~np.isnan(self.soft).any(axis=1)
        if model is not None and (gold_train >= 0).all():
            self.stats["train"]["total"]["label_model_accuracy"] = float(
                (model.predict(self.matrix)[covered] == gold_train[covered]).mean())
        self.test_prediction = {}
        if data.test and model is not None:
            test_matrix = label_matrix(self.lfs, [e.text for e in data.test], [e.where for e in data.test],
                                       data.label_names)
            gold = np.array([e.label for e in data.test])
            self.test_prediction = {"label_model_accuracy": float((model.predict(test_matrix) == gold).mean()),
                                    "lf_coverage": float((test_matrix != -1).any(axis=1).mean())}
        self._reported = False

    def encode(self, examples, tokenizer, max_length):
        items, stats = encode(examples, tokenizer, max_length)
        return [WeakItem(it.input_ids, it.label, i) for i, it in enumerate(items)], stats

    def prefix_cache_mb(self, run) -> float | None:
        return None  # training batches carry soft targets the cache's self-check does not know (no option)

    # -- stages ------------------------------------------------------------------------------------
    def self_training(self, stage: str | None = None) -> bool:
        return bool(self.cfg.self_training_stage) and (stage or self.stage) == self.cfg.self_training_stage

    def train_items(self, stage: str, items: list) -> list:
        if self.self_training(stage):
            return items
        covered = ~np.isnan(self.soft).any(axis=1)
        return [it for it in items if covered[it.index]]

    def callbacks(self, stage: str) -> list:
        return [Relabel(self, self.cfg.update_period)] if self.self_training(stage) else []

    def evaluates_start(self, stage: str) -> bool:
        return self.self_training(stage)

    def begin_stage(self, start) -> None:
        self.stage = start.stage
        self.pseudo = None
        self.probs = self.features = None
        self.loss_sums, self.loss_totals = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
        self.relabel_metrics = {}
        n, k = len(start.encoded["train"]), len(self.label_names)
        if not self._reported:
            self._report(start)
        if self.self_training():
            self._context = start
            self.targets, self.weights = torch.zeros(n, k), torch.zeros(n)
            self._head = feature_module(start.model, k)
            covered = ~np.isnan(self.soft).any(axis=1)
            start.say(f"COSINE self-training on all {n:,} training texts ({int(covered.sum()):,} covered by the LFs, "
                      f"{n - int(covered.sum()):,} not); relabeling every {self.cfg.update_period} steps")
        else:
            soft = np.nan_to_num(self.soft, nan=0.0)
            self.targets = torch.tensor(soft, dtype=torch.float32)
            self.weights = torch.ones(n)

    def _report(self, start) -> None:
        """The LF table in the log; stats and the label matrix kept in RUN_DIR/weak."""
        self._reported = True
        for line in format_stats(self.stats):
            start.say(line)
        if not start.strategy.is_main:
            return
        from tunesmith.atomic import write_json_atomic
        from tunesmith.data.weak import write_matrix

        out = start.run_dir / "weak"
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "lf_stats.json", self.stats | {"test": self.test_prediction})
        plot_lf_stats(self.stats, out / "lf_stats.png")
        if self.matrix_cache is not None and not self.matrix_cache.exists():
            write_matrix(self.matrix_cache, self.matrix)  # a resumed run reads it instead of re-running the LFs

    # -- training ----------------------------------------------------------------------------------
    def collate(self, items, pad_id, train=False):
        batch = collate(items, pad_id)
        if train:
            index = torch.tensor([it.index for it in items])
            if self.probs is not None and self.cfg.class_frequency == "batch":
                # the official code's order: f_j from this batch's predictions, so sharpen (and select) here
                batch["targets"], batch["weights"] = pseudo_labels(self.probs[index], self.cfg.power, self.cfg.eps,
                                                                   self.cfg.confidence_from)
            else:
                batch["targets"] = self.targets[index]
                batch["weights"] = self.weights[index]
            if self.features is not None and self.self_training():
                batch["teacher_features"] = self.features[index]
        return batch

    def counts(self, batch):
        n = float(batch["input_ids"].shape[0])
        if not self.self_training():
            return {"loss": n}
        pairs = pair_count(batch["weights"] > 0, self.cfg.contrastive_pairs) if "weights" in batch else 0
        return {"self_training": n, "confidence": n, "contrastive": float(pairs)}

    def loss(self, model, batch):
        if not self.self_training():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            return Loss({"loss": -(batch["targets"] * F.log_softmax(logits.float(), -1)).sum()})
        cfg = self.cfg
        with capture_input(self._head) as features:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        if "teacher_features" in batch:
            features = [batch["teacher_features"]]  # fixed at the last relabeling: the term has no gradient
        log_probs = F.log_softmax(logits.float(), -1)
        selected = batch["weights"] > 0
        terms = {"self_training": self_training_sum(log_probs, batch["targets"], batch["weights"]),
                 "confidence": cfg.confreg * confidence_sum(log_probs, selected),
                 "contrastive": cfg.contrastive_weight * contrastive_sum(
                     features[0], batch["targets"].argmax(-1), selected, cfg.margin, cfg.distmetric,
                     cfg.contrastive_pairs)}
        sums = torch.stack([t.detach().double() for t in terms.values()])
        self.loss_sums = self.loss_sums.to(sums.device) + sums  # no sync with the device until the relabeling
        return Loss(terms, logs={"selected": (float(selected.sum()), "self_training")})

    @no_autograd
    def relabel(self, model) -> str:
        """Predict every training text with the current model (sharded over processes), sharpen, select."""
        start = self._context
        items, strategy = start.encoded["train"], start.strategy
        probs = torch.zeros(len(items), len(self.label_names), dtype=torch.float64)
        teacher = self.cfg.contrastive_features == "teacher"
        features = None
        order = sorted(range(len(items)), key=lambda i: len(items[i].input_ids))  # less padding
        batches = [order[at : at + start.batch_size] for at in range(0, len(order), start.batch_size)]
        for ids, real in strategy.my_batches(batches):  # round-robin; in lockstep where forwards are collective
            batch = {k: v.to(strategy.device) for k, v in collate([items[i] for i in ids], start.pad_id).items()}
            with capture_input(self._head) as held:
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            if teacher and features is None:
                features = torch.zeros(len(items), held[0].shape[-1], dtype=torch.float32)
            if real:
                probs[ids] = logits.float().softmax(-1).double().cpu()
                if teacher:
                    features[ids] = held[0].float().cpu()
        probs = strategy.all_reduce_sum(probs.to(strategy.device)).cpu().float()
        if teacher:  # every text's features as this model (the teacher until the next relabeling) sees them
            self.features = strategy.all_reduce_sum(features.to(strategy.device)).cpu()
        self.probs = probs if self.cfg.class_frequency == "batch" else None
        previous = None if self.pseudo is None else self.targets.argmax(-1)
        # with class_frequency: batch, training sharpens per batch; these (over all texts) are for the report
        self.targets, self.weights = pseudo_labels(probs, self.cfg.power, self.cfg.eps, self.cfg.confidence_from)
        self.relabel_metrics = self._diagnostics(items, strategy)
        if self.pseudo is None:
            self.pseudo = {"relabels": 0, "seconds": 0.0, "selected": []}
        self.pseudo["relabels"] += 1
        changed = "" if previous is None else \
            f"; {int((self.targets.argmax(-1) != previous).sum()):,} pseudo-labels changed"
        selected = int((self.weights > 0).sum())
        self.pseudo.setdefault("selected", []).append(selected)
        hint = ""
        if selected == 0:
            top = float(confidence(self.targets if self.cfg.confidence_from == "pseudo_label" else probs).max())
            hint = (f"; none is confident enough to learn from (the most confident text: {top:.3f}, eps "
                    f"{self.cfg.eps:g}){self._starting_point()}: lower objective.eps, or train the stage before longer")
        return (f"COSINE relabel {self.pseudo['relabels']}: {len(items):,} texts, {selected:,} selected "
                f"({100 * self.selected_fraction():.1f}%, confidence > {self.cfg.eps:g}){changed}{hint}")

    def _diagnostics(self, items, strategy) -> dict[str, float]:
        """The pseudo-labels' accuracy where the training file has gold labels (never trained on: they
        are read here and nowhere in the loss), and each loss term's sum since the last relabeling."""
        out: dict[str, float] = {}
        gold = torch.tensor([it.label for it in items], dtype=torch.long)
        covered = torch.from_numpy(~np.isnan(self.soft).any(axis=1))
        out.update(pseudo_label_accuracy(self.targets.argmax(-1), gold, covered, self.weights > 0))
        if self.pseudo is not None:  # from the second relabeling on: the period before it trained
            sums = strategy.all_reduce_sum(self.loss_sums.to(strategy.device)).cpu()
            self.loss_totals = self.loss_totals + sums
            out.update({f"period_{name}_sum": round(float(v), 6) for name, v in zip(TERMS, sums, strict=True)})
        self.loss_sums = torch.zeros(3, dtype=torch.float64)
        return out

    def _starting_point(self) -> str:
        """What the self-training stage started from, when the stage before it ended on early weights."""
        previous = self._context.previous if self._context is not None else None
        best = (previous or {}).get("best") or {}
        if not best.get("restored"):
            return ""
        return (f"; it started from the {previous['name']} stage's weights of step {best['step']} of "
                f"{previous['steps']}, which early stopping restored ({best['metric']} {best['value']:.4f})")

    def selected_fraction(self) -> float:
        return float((self.weights > 0).float().mean()) if self.weights is not None else 0.0

    def final_metrics(self, model, tokenizer, data, strategy) -> dict[str, float]:
        out = {f"test_{k}": v for k, v in self.test_prediction.items()}
        out["train_lf_coverage"] = self.stats["train"]["total"]["coverage"]
        if "label_model_accuracy" in self.stats["train"]["total"]:
            out["train_label_model_accuracy"] = self.stats["train"]["total"]["label_model_accuracy"]
        if self.pseudo is not None:
            out["cosine_relabels"] = float(self.pseudo["relabels"])
            out["cosine_relabel_seconds"] = round(self.pseudo["seconds"], 2)
            chosen = self.pseudo.get("selected") or []
            n = len(self._context.encoded["train"]) if self._context is not None else 0
            if chosen and n:
                out["cosine_selected_fraction"] = round(sum(chosen) / (len(chosen) * n), 4)
            out |= {f"cosine_{k}": round(v, 4) for k, v in self.relabel_metrics.items() if k.startswith("pseudo_")}
            # the stage's sums: every period the relabelings closed, and the one since the last
            totals = self.loss_totals + strategy.all_reduce_sum(self.loss_sums.to(strategy.device)).cpu()
            out |= {f"cosine_{name}_sum": round(float(v), 6) for name, v in zip(TERMS, totals, strict=True)}
            if chosen and not any(chosen):
                message = (f"COSINE selected no text at any of its {len(chosen)} relabelings, so the self-training "
                           f"stage learned nothing from its loss (only weight decay moved the weights)"
                           f"{self._starting_point()}; lower objective.eps, or train the stage before longer")
                self.warnings.append(message)
                if strategy.is_main:
                    print(f"warning: {message}", file=sys.stderr, flush=True)
        return out

    # -- state that checkpoints carry ------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if self.pseudo is None:
            return {}
        state = {"stage": self.stage, "targets": self.targets.clone(), "weights": self.weights.clone(),
                 "relabels": self.pseudo["relabels"], "seconds": self.pseudo["seconds"],
                 "selected": list(self.pseudo.get("selected", [])),
                 "loss_sums": self.loss_sums.cpu().clone(), "loss_totals": self.loss_totals.clone(),
                 "relabel_metrics": dict(self.relabel_metrics)}
        if self.probs is not None:
            state["probs"] = self.probs.clone()
        if self.features is not None:
            state["features"] = self.features.clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("stage") is not None and state["stage"] == self.stage:
            self.targets, self.weights = state["targets"], state["weights"]
            self.pseudo = {"relabels": state["relabels"], "seconds": state["seconds"],
                           "selected": list(state.get("selected", []))}
            self.probs, self.features = state.get("probs"), state.get("features")
            zeros = torch.zeros(3, dtype=torch.float64)
            self.loss_sums = state.get("loss_sums", zeros)
            self.loss_totals = state.get("loss_totals", zeros)
            self.relabel_metrics = dict(state.get("relabel_metrics", {}))


def lf_configs(run, where) -> list:
    """The run's labeling functions: objective.lfs, else objective.lf_file, else the built-in data set's."""
    from tunesmith.data.builtin import get_dataset
    from tunesmith.data.weak import load_lf_file

    cfg = run.objective
    if cfg.lfs and cfg.lf_file:
        raise ConfigError(f"{where('objective.lf_file')}: give labeling functions in objective.lfs or in "
                          "objective.lf_file, not both")
    if cfg.lfs:
        return list(cfg.lfs)
    if cfg.lf_file:
        path = Path(cfg.lf_file)
        if not path.is_file():
            raise ConfigError(f"{where('objective.lf_file')}: {path} is not a file")
        return load_lf_file(path)
    entry = get_dataset(run.data.builtin) if run.data.builtin else None
    if entry is None or entry.labeling_functions is None:
        raise ConfigError(f"{where('objective')}: weak supervision needs labeling functions: objective.lfs, "
                          "objective.lf_file, or a built-in data set that has them (rotten-tomatoes-weak, "
                          "20newsgroups-weak)")
    return load_lf_file(_LF_DIR / entry.labeling_functions)


def _lf_source(run):
    """Where each LF of the run's lf_file (or built-in set) is declared (i -> file:line)."""
    from tunesmith.data.builtin import get_dataset
    from tunesmith.data.weak import lf_file_lines

    cfg = run.objective
    if cfg.lfs:
        return lambda i: "objective.lfs"
    path = cfg.lf_file or str(_LF_DIR / get_dataset(run.data.builtin).labeling_functions)
    lines = lf_file_lines(path)
    return lambda i: f"{path}:{lines[i]}:" if i < len(lines) else f"{path}:"


def format_stats(stats: dict[str, Any]) -> list[str]:
    """The LF table: per LF its label(s), coverage / overlap / conflict on the training texts and its
    accuracy on the dev set; then the totals."""
    train, dev = stats["train"], stats.get("dev")
    lines = [f"{'labeling function':<24} {'coverage':>8} {'overlap':>8} {'conflict':>8} {'dev acc':>8} {'dev n':>6}"]
    for name, row in train["lfs"].items():
        judged = dev["lfs"][name] if dev else {}
        acc = judged.get("accuracy")
        lines.append(f"{name:<24} {row['coverage']:>8.3f} {row['overlap']:>8.3f} {row['conflict']:>8.3f} "
                     f"{'-' if acc is None else f'{acc:.3f}':>8} {judged.get('judged', 0):>6}")
    total = train["total"]
    summary = (f"training texts {total['examples']:,}: covered {total['coverage']:.3f}, with conflicting votes "
               f"{total['conflicting']:.3f}")
    if total.get("label_model_accuracy") is not None:
        summary += f"; label model accuracy on covered texts {total['label_model_accuracy']:.3f}"
    lines.append(summary)
    if dev and dev["total"].get("majority_vote_accuracy") is not None:
        lines.append(f"dev ({dev['total']['examples']:,} labelled): covered {dev['total']['coverage']:.3f}, "
                     f"majority-vote accuracy on covered {dev['total']['majority_vote_accuracy']:.3f}")
    chosen = stats.get("label_model", {})
    if chosen.get("dev_accuracy"):
        accuracies = ", ".join(f"{name} {acc:.3f}" for name, acc in chosen["dev_accuracy"].items())
        lines.append(f"label model: {chosen['name']} (accuracy on the covered dev texts: {accuracies})")
    for name, row in train["lfs"].items():
        if row["coverage"] == 0:
            lines.append(f"warning: labeling function {name!r} votes on none of the training texts")
    return lines


def plot_lf_stats(stats: dict[str, Any], path: Path) -> Path:
    """One row per LF: training coverage, and dev accuracy beside it."""
    from tunesmith.report.plots import plt

    names = list(stats["train"]["lfs"])
    coverage = [stats["train"]["lfs"][n]["coverage"] for n in names]
    dev = stats.get("dev", {}).get("lfs", {})
    accuracy = [dev.get(n, {}).get("accuracy") or 0.0 for n in names]
    fig, axes = plt.subplots(1, 2, figsize=(9, 0.32 * len(names) + 1.4), sharey=True)
    axes[0].barh(names, coverage, color="C0")
    axes[0].set_xlabel("coverage (training texts)")
    axes[1].barh(names, accuracy, color="C2")
    axes[1].set_xlabel("accuracy (dev set)")
    axes[1].set_xlim(0, 1)
    for ax in axes:
        ax.grid(axis="x", alpha=0.3)
    axes[0].invert_yaxis()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def weak_stats(run, out: Path) -> tuple[list[str], list[Path]]:
    """`tunesmith weak-stats`: the LFs applied to the config's data (no model is loaded): the table's
    lines, and lf_stats.json + lf_stats.png written to `out`."""
    from tunesmith.atomic import write_json_atomic

    if run.objective.name != "weak":
        raise ConfigError(f"weak-stats reads a weak-supervision config (objective: weak); this one's objective is "
                          f"{run.objective.name!r}")
    objective = Weak(run)
    data = objective.load_data(run)
    lines = [*data.report.lines(), *format_stats(objective.stats)]
    if objective.test_prediction:
        lines.append(f"label model ({objective.stats['label_model']['name']}) alone on the test split: accuracy "
                     f"{objective.test_prediction['label_model_accuracy']:.3f} (texts no LF covers get the most "
                     f"frequent class), LF coverage {objective.test_prediction['lf_coverage']:.3f}")
    out.mkdir(parents=True, exist_ok=True)
    stats = objective.stats | {"test": objective.test_prediction}
    write_json_atomic(out / "lf_stats.json", stats)
    return lines, [out / "lf_stats.json", plot_lf_stats(objective.stats, out / "lf_stats.png")]
