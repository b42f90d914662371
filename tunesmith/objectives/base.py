"""What every objective is: an object with its own config section, state, loss terms and metrics.

An objective owns everything about *what is learned* from a batch: how its rows are read and batched,
its loss (as terms, each with its own denominator), what evaluation computes, its default early-stopping
metric, what it supports (frozen-prefix caching, metrics from generation), and how its finished run is
opened for predict / eval / generate. Generic code (run, config, infer, cli) asks the objective and
never tests its name. Adding one is a file with a subclass plus a line in objectives/__init__.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from tunesmith.schema import ObjectiveConfig

if TYPE_CHECKING:
    from tunesmith.models.hf import LoadedModel
    from tunesmith.schema import RunConfig
    from tunesmith.train.parallel import Strategy


@dataclass
class Loss:
    """One micro-batch's loss.

    `terms`: name -> the *sum* of that term over this micro-batch. The loop divides each by the whole
    optimizer step's total of the count of the same name (Objective.counts, summed over micro-batches
    and processes), so accumulation and DDP give exactly the large-batch loss even when terms are
    averaged over different things (tokens for one, pairs for another).
    `logs`: extra quantities to log, name -> (sum, name of the count to average it over).
    """

    terms: dict[str, torch.Tensor]
    logs: dict[str, tuple[torch.Tensor | float, str]] = field(default_factory=dict)


@dataclass
class StageStart:
    """What an objective may need before a training stage: e.g. preference objectives find their
    reference model here (the method's `reference()`, or log-probabilities computed now and kept with
    the run)."""

    model: nn.Module
    method: Any  # methods.Method
    stage: str  # its name ("main" for a run without stages)
    encoded: dict[str, list]  # every split's items
    pad_id: int | None
    strategy: Strategy
    run_dir: Path
    batch_size: int
    say: Any  # Callable[[str], None]
    # the stage before this one: {"name", "steps", "best"} (best: early stopping's pick, "restored" when
    # its weights were put back); None for the first stage
    previous: dict[str, Any] | None = None
    # opens a finished run for use (tunesmith.infer.open_saved), for objectives that score with one
    # (online RL's run rewards); passed in, since infer sits above the objectives
    open_run: Any = None


@dataclass
class SavedRun:
    """A finished run opened for use: the model in eval mode, its tokenizer (or image preprocessing)
    and its class names (None for a language model)."""

    model: nn.Module
    tokenizer: Any
    label_names: list[str] | None
    prompt_format: str | None = None  # how the run rendered its prompts: chat | plain (None: not recorded)


class Objective:
    """Base class; the defaults suit an objective that only trains and evaluates a loss."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Config: ClassVar[type[ObjectiveConfig]] = ObjectiveConfig
    # what `evaluate` reports, before the split's prefix (val_, test_, an eval set's name + _)
    metric_names: ClassVar[tuple[str, ...]] = ("loss",)
    default_metric: ClassVar[str] = "val_loss"  # train.early_stopping.metric when none is given
    model_kind: ClassVar[str] = ""  # text-classifier | causal-lm | image-classifier | diffusion-unet: which methods apply
    checks_text_model: ClassVar[bool] = True  # model.name is a text model (its length limit, pickled weights)
    has_labels: ClassVar[bool] = False  # its runs answer `predict` and `eval`
    generates: ClassVar[bool] = False  # its runs answer `generate`
    command: ClassVar[str] = "predict"  # the command that uses its finished runs (predict | generate | score | sample)
    eval_file: ClassVar[str] = ""  # what `tunesmith eval --data FILE` reads for its runs ("": eval does not apply)

    def __init__(self, run: RunConfig | None = None) -> None:
        self.run = run
        self.cfg = run.objective if run is not None else self.Config()
        self.outputs: dict[str, list[dict]] = {}  # files for the run dir (JSON lines), e.g. generated answers
        self.warnings: list[str] = []  # what looks wrong with how the run went, for summary.json (already said)
        self.run_dir: Path | None = None  # where the run writes; None outside a run (stats, predict, eval)

    # -- config time: before any data or model is loaded -------------------------------------------
    @classmethod
    def locate(cls, cfg: ObjectiveConfig, base_dir: Path) -> None:
        """Resolve the section's paths that are relative to the config file's folder `base_dir` (the
        resolved config is what the run records, so a resumed run finds them again)."""

    def check(self, run: RunConfig, where) -> None:
        """Raise ConfigError for settings this objective cannot honour; `where(key)` names file:line."""

    # -- data and model ----------------------------------------------------------------------------
    def load_data(self, run: RunConfig):
        raise NotImplementedError

    def load_model(self, run: RunConfig, data) -> LoadedModel:
        raise NotImplementedError

    def prepare_model(self, model: nn.Module) -> str | None:
        """Exact speed-ups installed once the method is applied; a line to report, or None."""
        return None

    def encode(self, examples: Sequence, tokenizer, max_length: int) -> tuple[list, dict[str, int]]:
        raise NotImplementedError

    def item_length(self, item: Any) -> int | None:
        """For length-grouped batches; None where items have no length (images)."""
        ids = getattr(item, "input_ids", None)
        return None if ids is None else len(ids)

    def collate(self, items: Sequence, pad_id: int | None, train: bool = False) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    # -- training ----------------------------------------------------------------------------------
    def counts(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """The denominators of the loss terms (and logs), known before the forward."""
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> Loss:
        raise NotImplementedError

    def loss_sum(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """All terms of one batch added up: what a speed-up's self-check compares."""
        return sum(self.loss(model, batch).terms.values())

    def begin_stage(self, start: StageStart) -> None:
        """Called before each training stage, once its method is applied."""

    def train_items(self, stage: str, items: list) -> list:
        """The training items a stage learns from (e.g. weak supervision: only the texts a labeling
        function covers, until self-training takes them all)."""
        return items

    def callbacks(self, stage: str) -> list:
        """Loop callbacks (train/callbacks.py) a stage runs with, e.g. relabeling every T steps."""
        return []

    def evaluates_start(self, stage: str) -> bool:
        """Whether a stage evaluates the model it starts from, so that restoring its best weights never
        ends below where it began (self-training can only lose what it started with)."""
        return False

    def training_step(self, stage: str) -> Any:
        """The step a stage trains with: a callable (TrainerView) -> StepOutput with state_dict /
        load_state_dict (train/step.py); None: the plain SupervisedStep. A recipe that generates, runs
        inner epochs or updates twice per step builds its own from step.py's parts."""
        return None

    def prefix_cache_mb(self, run: RunConfig) -> float | None:
        """The frozen-prefix cache's budget where this objective's inputs make it exact; None: off."""
        return None

    # -- evaluation --------------------------------------------------------------------------------
    def eval_sums(self, model: nn.Module, items: Sequence, batch_size: int, pad_id: int | None,
                  device: torch.device, num_labels: int) -> dict[str, torch.Tensor]:
        """Tensors that add up across processes."""
        raise NotImplementedError

    def metrics(self, sums: dict[str, torch.Tensor]) -> dict[str, float]:
        raise NotImplementedError

    def details(self, sums: dict[str, torch.Tensor], label_names: list[str] | None) -> dict:
        return {}

    def plots(self, details_by_split: dict[str, dict], label_names: list[str] | None, plot_dir: Path) -> None:
        return None

    def prompt_format(self, data) -> str | None:
        """How the run renders prompts, recorded in summary.json so that generate / score / pairs render
        them the same way: chat (the tokenizer's chat template) | plain (as the rows give them) | None
        (nothing is prompted)."""
        return None

    def final_metrics(self, model: nn.Module, tokenizer, data, strategy: Strategy) -> dict[str, float]:
        """Metrics computed once at the end of a run beyond `evaluate` (e.g. from generated answers);
        what a user would want to read example by example goes in `self.outputs`."""
        return {}

    # -- a finished run ----------------------------------------------------------------------------
    def load_saved(self, model_dir: Path, run: RunConfig) -> SavedRun:
        """RUN_DIR/model as written by a run of this objective."""
        raise NotImplementedError

    def load_labelled(self, path: str | Path, label_names: list[str], input_field: str | None,
                      label_field: str | None, run: RunConfig, skip_bad_rows: bool = False):
        """(examples, report) of a labelled file (`eval_file` says what it holds) to evaluate a finished
        run on."""
        raise NotImplementedError

    def begin_eval(self, saved: SavedRun, items: list, run: RunConfig) -> None:
        """Before `eval_sums` on a file's items outside training (e.g. DPO: the reference log-probs)."""

    def eval_rows(self, saved: SavedRun, examples: list, items: list, run: RunConfig) -> list[dict]:
        """`eval --out`: one row per example of an evaluated file (its prediction, or its scores)."""
        raise NotImplementedError

    def input_field(self, run: RunConfig) -> str:
        """The column `predict --file rows.jsonl` reads its inputs from."""
        return run.data.text_field or "text"

    def resolve_input(self, value: str, file: Path) -> str:
        """An input read from a file (an image path is relative to the file's folder)."""
        return value

    def example_input(self, example) -> str:
        """What `predict` takes for one labelled example (`eval --out`)."""
        return example.text

    def predict(self, saved: SavedRun, inputs: list[str], run: RunConfig, top_k: int = 3) -> list[dict]:
        raise NotImplementedError

    def describe_prediction(self, row: dict) -> str:
        return str(row)

    # the library its saved models are loaded with outside tunesmith, where not transformers / peft
    library: ClassVar[str | None] = None

    def usage_code(self, saved_dir: Path, base: str | None, adapter: bool) -> tuple[str, str] | None:
        """(the libraries, Python code) that loads a saved model (or adapter on `base`) outside tunesmith,
        for its model card; None: the card's transformers / peft code for the model kind."""
        return None

    # -- state that checkpoints carry ------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None
