"""The run config's schema: one dataclass per section, with its defaults and ranges. Nothing here
reads a file or knows an objective or method: config.py reads YAML into these, validate.py checks
them across sections, and every other module only reads them. It sits at the bottom of the package,
so anything may import it.

The `objective:` section's class depends on the objective it names; each objective registers its
Config in OBJECTIVE_SECTIONS (objectives/__init__.py), which the parser reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tunesmith.data.config import DataConfig, SplitConfig
from tunesmith.ranges import ranged

__all__ = [
    "RunConfig", "ModelConfig", "MethodConfig", "StageConfig", "LoraConfig", "PromptConfig", "TrainConfig",
    "EarlyStopConfig", "DataConfig", "ObjectiveConfig", "SplitConfig", "OBJECTIVE_SECTIONS", "stage_methods",
]


@dataclass
class ObjectiveConfig:
    """The `objective:` section. `objective: NAME` is shorthand for `objective: {name: NAME}`; each
    objective's own options sit beside the name (see its Config)."""

    name: str = "classify"


# objective name -> the class of its config section; filled by tunesmith.objectives when imported
OBJECTIVE_SECTIONS: dict[str, type[ObjectiveConfig]] = {}


@dataclass
class ModelConfig:
    name: str = "minilm-l6"  # a built-in name (`tunesmith models`), a local HF model directory, or module:factory
    max_length: int = ranged(128, "> 0")  # tokens per text; longer texts are truncated (and counted)
    # text classifiers: the [CLS] pooler is part of the new head (its lr, trained under every method);
    # unset: where the checkpoint says it pools otherwise (sentence-transformers, e.g. minilm-l6) and the
    # run starts with LoRA, DoRA or prompt tuning (measured: benchmarks/pooler_defaults.py,
    # configs/compare-20ng-pooler.yaml); under full and freeze it trains with the body at train.lr
    train_pooler: bool | None = None
    # the dtype the weights are loaded (and trained, and their AdamW state kept) in: float32 | bfloat16 |
    # float16. Lower than float32 halves the memory of weights, gradients and optimizer state ("pure
    # bf16"); train.precision alone keeps fp32 weights and computes in lower precision
    dtype: str = "float32"
    # image models: None takes the built-in model's own value
    image_size: int | None = ranged(None, ">= 8")  # square input side in pixels
    mean: list[float] | None = None  # per-channel normalisation of pixels scaled to [0, 1]
    std: list[float] | None = None
    weights: str | None = None  # module:factory models: a .safetensors file, or a .pth read with weights_only
    head: str | None = None  # module:factory models: attribute path of the classifier to replace, e.g. fc


@dataclass
class LoraConfig:
    """method.lora: options of the `lora` and `dora` methods (PEFT's LoraConfig, by the same meaning)."""

    r: int = ranged(8, "> 0")
    alpha: float = ranged(16.0, "> 0")
    dropout: float = ranged(0.0, "[0, 1)")
    # names matched exactly or as a `.suffix`, a regex string (fullmatch on module paths), or "all-linear";
    # None: the usual attention projections of the model type (query/value for BERT, q_proj/v_proj for Llama)
    target_modules: str | list[str] | None = None
    init: str = "kaiming"  # kaiming | gaussian (A's init; B starts at zero)
    bias: str = "none"  # none | all | lora_only: which biases also train
    modules_to_save: list[str] = field(default_factory=list)  # extra modules trained in full; the head always is
    use_rslora: bool = False  # scale by alpha / sqrt(r) instead of alpha / r
    use_dora: bool = False  # weight-decomposed LoRA (the `dora` method sets this)


@dataclass
class PromptConfig:
    """method.prompt: options of the `prompt` method (prompt tuning)."""

    num_virtual_tokens: int = ranged(20, "> 0")
    init: str = "vocab"  # vocab: embeddings of random vocabulary tokens | text: embeddings of init_text
    init_text: str | None = None


@dataclass
class MethodConfig:
    """What learns. Options only some methods read are ignored by the others."""

    name: str = "full"  # full | freeze | linear_probe | bitfit | lora | dora | prompt  (`tunesmith methods`)
    freeze_embeddings: bool = True  # freeze: also freeze the embedding layer
    freeze_layers: int = ranged(0, ">= 0")  # freeze: the first N transformer blocks
    freeze_patterns: list[str] = field(default_factory=list)  # freeze: glob patterns on parameter names
    lora: LoraConfig = field(default_factory=LoraConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)


@dataclass
class EarlyStopConfig:
    # any metric logged at evaluation, e.g. val_loss, val_accuracy; unset: the objective's own default
    # (classify: val_accuracy, causal_lm: val_loss), filled in when the config is read
    metric: str | None = None
    mode: str = "auto"  # auto (min for *loss, else max) | min | max
    patience: int | None = ranged(None, ">= 1")  # evaluations without improvement; None: never stop early
    min_delta: float = ranged(0.0, ">= 0")
    # decides between evaluations whose metric ties the best exactly (a saturated accuracy): auto (the
    # loss of the same split, e.g. val_loss for val_accuracy; none for a loss) | none | a metric name
    tie_breaker: str = "auto"
    restore_best: bool = True  # end with the best evaluated weights, not the last


@dataclass
class TrainConfig:
    epochs: float = ranged(3.0, "> 0")
    max_steps: int | None = ranged(None, "> 0")  # optimizer steps; overrides epochs when set
    batch_size: int = ranged(32, "> 0")  # examples per optimizer step, across all processes and accumulation
    grad_accum: int = ranged(1, "> 0")  # micro-batches per optimizer step (per process)
    group_by_length: bool = True  # batch items of similar length together: less padding, faster
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% slower
    fused_optimizer: bool = True  # AdamW's fused kernel (one pass over each tensor) where torch has it
    # torch.compile each repeated block that trains (see tunesmith/train/compile.py). Off by default:
    # compiling costs minutes and on a 2-core CPU paid back only after ~2,000 MiniLM steps
    compile: bool = False
    lr: float = ranged(5e-5, "> 0")
    head_lr: float | None = ranged(None, "> 0")  # learning rate of the newly initialised head (default: lr)
    weight_decay: float = ranged(0.01, ">= 0")  # not applied to biases and normalisation weights
    schedule: str = "linear"  # linear | cosine | constant
    warmup_ratio: float = ranged(0.06, "[0, 1)")
    warmup_steps: int | None = ranged(None, ">= 0")  # overrides warmup_ratio
    max_grad_norm: float | None = ranged(1.0, "> 0")  # None: no clipping
    init_seed: int = ranged(0, ">= 0")  # new head weights (and dropout)
    data_seed: int = ranged(0, ">= 0")  # order of training examples
    eval_every: str | int = ranged("epoch", "> 0")  # "epoch" or every N optimizer steps
    eval_batch_size: int = ranged(64, "> 0")
    log_every: int = ranged(10, "> 0")  # optimizer steps between metrics.jsonl lines
    checkpoint_every: int | None = ranged(None, "> 0")  # optimizer steps; a checkpoint is always written at the end
    # minutes of training between checkpoints (besides checkpoint_every), so a killed run loses little
    checkpoint_minutes: float | None = ranged(10.0, "> 0")
    keep_checkpoints: int = ranged(2, ">= 1")
    # a finished run keeps its last checkpoint (and its best) without optimizer state, unless this is set
    keep_optimizer_state: bool = False
    early_stopping: EarlyStopConfig = field(default_factory=EarlyStopConfig)
    device: str = "auto"  # auto | cpu | cuda
    # fp32 | bf16 | fp16: the forward and backward under autocast in that precision, weights and AdamW
    # state as model.dtype loads them (fp32 by default); fp16 adds a gradient scaler
    precision: str = "fp32"
    parallelism: str = "auto"  # auto (ddp under torchrun, else none) | none | ddp | fsdp (FSDP2, under torchrun)
    fsdp_cpu_offload: bool = False  # fsdp: keep the sharded weights, gradients and AdamW state in CPU memory
    threads: int | None = ranged(None, ">= 1")  # torch intra-op threads; None: torch's default
    progress: bool = True  # tqdm progress bar
    # stop (checkpoint, evaluate, write paused.json) after this fraction of all training steps; resume
    # continues from there. `tunesmith compare --early-discard` uses it to triage seeds.
    pause_at_fraction: float | None = ranged(None, "(0, 1)")
    eval_sets_during_training: bool = False  # also evaluate data.eval_sets (OOD sets) at every evaluation


@dataclass
class StageConfig:
    """One stage of a multi-stage run (e.g. LP-FT: a linear probe, then fine-tuning from its head).
    Each stage applies its own method to the model the previous stage left; unset fields take train.*"""

    name: str = "stage"
    method: MethodConfig = field(default_factory=MethodConfig)
    epochs: float | None = ranged(None, "> 0")
    max_steps: int | None = ranged(None, "> 0")
    lr: float | None = ranged(None, "> 0")
    head_lr: float | None = ranged(None, "> 0")
    weight_decay: float | None = ranged(None, ">= 0")
    warmup_ratio: float | None = ranged(None, "[0, 1)")
    schedule: str | None = None


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)  # ignored when stages are given
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=lambda: _default_objective())  # or `objective: NAME`
    train: TrainConfig = field(default_factory=TrainConfig)
    stages: list[StageConfig] = field(default_factory=list)  # empty: one stage, `method` with `train`



def _default_objective() -> ObjectiveConfig:
    return OBJECTIVE_SECTIONS.get(ObjectiveConfig.name, ObjectiveConfig)()


def stage_methods(cfg: RunConfig) -> list[tuple[str, MethodConfig]]:
    """(config section, method config) of every stage: `method`, or each `stages.N.method`."""
    if not cfg.stages:
        return [("method", cfg.method)]
    return [(f"stages.{i}.method", stage.method) for i, stage in enumerate(cfg.stages)]
