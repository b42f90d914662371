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
from tunesmith.ranges import option, ranged

__all__ = [
    "RunConfig", "ModelConfig", "MethodConfig", "StageConfig", "LoraConfig", "PromptConfig", "TrainConfig",
    "EarlyStopConfig", "DataConfig", "ObjectiveConfig", "SplitConfig", "OBJECTIVE_SECTIONS", "stage_methods",
]


@dataclass
class ObjectiveConfig:
    """The `objective:` section: what the model learns to do. `objective: NAME` is shorthand for
    `objective: {name: NAME}`; each objective's own options sit beside the name."""

    name: str = option("classify", "the objective (`tunesmith objectives` lists them)")


# objective name -> the class of its config section; filled by tunesmith.objectives when imported
OBJECTIVE_SECTIONS: dict[str, type[ObjectiveConfig]] = {}


@dataclass
class ModelConfig:
    """The `model:` section: the pretrained model to start from."""

    name: str = option("minilm-l6", "a built-in name (`tunesmith models`), a local Hugging Face model "
                       "directory, or `package.module:factory` for your own torch image model")
    max_length: int = ranged(128, "> 0", "tokens per text; longer texts are truncated (and counted)")
    train_pooler: bool | None = option(
        None, "text classifiers: train the [CLS] pooler as part of the new head. Unset: yes where the "
        "checkpoint pools otherwise (sentence-transformers, e.g. minilm-l6) and the run starts with LoRA, "
        "DoRA or prompt tuning; under full and freeze it trains with the body. With model.pooling other than "
        "cls there is no pooler: leave it unset")
    pooling: str = option(
        "cls", "text classifiers: auto | cls | mean | max | last, what the head reads. cls: the architecture's "
        "own ([CLS] through BERT's pooler); mean / max / last: the last hidden states pooled over the real "
        "tokens (padding excluded), as sentence-transformers embeds, then dropout + linear (no pooler); "
        "auto: what the checkpoint declares (a sentence-transformers 1_Pooling/config.json: mean for "
        "minilm-l6), else cls. A classifier saved by a run that pooled otherwise keeps its pooling")
    dtype: str = option("float32", "float32 | bfloat16 | float16: the dtype the weights are loaded, trained "
                        "and their AdamW state kept in (\"pure bf16\" halves their memory); train.precision "
                        "alone keeps fp32 weights and computes in lower precision")
    image_size: int | None = ranged(None, ">= 8", "image models: square input side in pixels; unset: the "
                                    "built-in model's own")
    mean: list[float] | None = option(None, "image models: per-channel mean of pixels scaled to [0, 1]; "
                                      "unset: the built-in model's own")
    std: list[float] | None = option(None, "image models: per-channel standard deviation, as `mean`")
    weights: str | None = option(None, "module:factory models: a .safetensors file, or a .pth read with "
                                 "weights_only (no code runs)")
    head: str | None = option(None, "module:factory models: attribute path of the classifier to replace, "
                              "e.g. fc")


@dataclass
class LoraConfig:
    """`method.lora`: options of the `lora` and `dora` methods (PEFT's LoraConfig, by the same meaning)."""

    r: int = ranged(8, "> 0", "rank of the update B·A")
    alpha: float = ranged(16.0, "> 0", "the update is scaled by alpha / r")
    dropout: float = ranged(0.0, "[0, 1)", "dropout on the adapter's input")
    target_modules: str | list[str] | None = option(
        None, "modules that get an adapter: names matched exactly or as a `.suffix`, a regex string "
        "(fullmatch on module paths), or \"all-linear\"; unset: the usual attention projections of the "
        "model type (query/value for BERT, q_proj/v_proj for Llama)")
    init: str = option("kaiming", "kaiming | gaussian: A's initialisation (B starts at zero)")
    bias: str = option("none", "none | all | lora_only: which biases also train")
    modules_to_save: list[str] = option(help="extra modules trained in full (the new head always is)",
                                        default_factory=list)
    use_rslora: bool = option(False, "rsLoRA: scale by alpha / sqrt(r) instead of alpha / r")
    use_dora: bool = option(False, "weight-decomposed LoRA (the `dora` method sets this)")


@dataclass
class PromptConfig:
    """`method.prompt`: options of the `prompt` method (prompt tuning)."""

    num_virtual_tokens: int = ranged(20, "> 0", "learned embeddings put before every input")
    init: str = option("vocab", "vocab: embeddings of random vocabulary tokens | text: embeddings of "
                       "init_text")
    init_text: str | None = option(None, "init: text, the words whose embeddings start the prompt")


@dataclass
class MethodConfig:
    """The `method:` section: what learns. Options only some methods read are ignored by the others."""

    name: str = option("full", "full | freeze | linear_probe | bitfit | lora | dora | prompt "
                       "(`tunesmith methods`)")
    freeze_embeddings: bool = option(True, "freeze: also freeze the embedding layer")
    freeze_layers: int = ranged(0, ">= 0", "freeze: the first N transformer blocks (image models: stages)")
    freeze_patterns: list[str] = option(help="freeze: glob patterns of parameter names to freeze",
                                        default_factory=list)
    lora: LoraConfig = field(default_factory=LoraConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)


@dataclass
class EarlyStopConfig:
    """`train.early_stopping`: which evaluation counts as best, when to stop, and what to keep."""

    metric: str | None = option(None, "any metric logged at evaluation, e.g. val_loss, val_accuracy; unset: "
                                "the objective's own (classify: val_accuracy, causal_lm and reward: val_loss)")
    mode: str = option("auto", "auto (min for *loss, else max) | min | max")
    patience: int | None = ranged(None, ">= 1", "evaluations without improvement before stopping; unset: "
                                  "never stop early")
    min_delta: float = ranged(0.0, ">= 0", "the smallest change that counts as an improvement")
    tie_breaker: str = option("auto", "decides between evaluations whose metric ties the best exactly (a "
                              "saturated accuracy): auto (the loss of the same split) | none | a metric name")
    restore_best: bool = option(True, "end with the best evaluated weights, not the last")


@dataclass
class TrainConfig:
    """The `train:` section: the optimisation, evaluation, checkpoints and hardware."""

    epochs: float = ranged(3.0, "> 0", "passes over the training split")
    max_steps: int | None = ranged(None, "> 0", "optimizer steps; overrides epochs when set")
    batch_size: int = ranged(32, "> 0", "examples per optimizer step, across all processes and accumulation")
    grad_accum: int = ranged(1, "> 0", "micro-batches per optimizer step (per process)")
    group_by_length: bool = option(True, "batch items of similar length together: less padding, faster")
    gradient_checkpointing: bool = option(False, "recompute activations in backward: less memory, ~30% slower")
    fused_optimizer: bool = option(True, "AdamW's fused kernel (one pass over each tensor) where torch has it")
    compile: bool = option(False, "torch.compile each repeated block that trains; compiling costs minutes "
                           "and on a 2-core CPU paid back only after ~2,000 MiniLM steps")
    lr: float = ranged(5e-5, "> 0", "peak learning rate (AdamW)")
    head_lr: float | None = ranged(None, "> 0", "learning rate of the newly initialised head; unset: lr")
    weight_decay: float = ranged(0.01, ">= 0", "AdamW's decoupled weight decay; not applied to biases and "
                                 "normalisation weights")
    schedule: str = option("linear", "linear | cosine | constant: the learning rate after warm-up")
    warmup_ratio: float = ranged(0.06, "[0, 1)", "fraction of the steps spent warming the learning rate up")
    warmup_steps: int | None = ranged(None, ">= 0", "warm-up steps; overrides warmup_ratio")
    max_grad_norm: float | None = ranged(1.0, "> 0", "clip the gradient norm to this; null: no clipping")
    init_seed: int = ranged(0, ">= 0", "seeds new weights (heads, adapters) and dropout")
    data_seed: int = ranged(0, ">= 0", "seeds the order of training examples")
    eval_every: str | int = ranged("epoch", "> 0", "\"epoch\", or every N optimizer steps")
    eval_batch_size: int = ranged(64, "> 0", "examples per evaluation batch")
    log_every: int = ranged(10, "> 0", "optimizer steps between metrics.jsonl lines")
    checkpoint_every: int | None = ranged(None, "> 0", "optimizer steps between checkpoints; one is always "
                                          "written at the end")
    checkpoint_minutes: float | None = ranged(10.0, "> 0", "minutes of training between checkpoints "
                                              "(besides checkpoint_every), so a killed run loses little")
    keep_checkpoints: int = ranged(2, ">= 1", "checkpoints kept (besides the best)")
    keep_optimizer_state: bool = option(False, "keep the optimizer state in the checkpoints of a finished run "
                                        "(by default dropped: it is twice the model's size)")
    early_stopping: EarlyStopConfig = field(default_factory=EarlyStopConfig)
    device: str = option("auto", "auto | cpu | cuda")
    precision: str = option("fp32", "fp32 | bf16 | fp16: forward and backward under autocast in that "
                            "precision; weights and AdamW state stay as model.dtype loads them; fp16 adds a "
                            "gradient scaler")
    parallelism: str = option("auto", "auto (ddp under torchrun, else none) | none | ddp | fsdp (FSDP2, under "
                              "torchrun)")
    fsdp_cpu_offload: bool = option(False, "fsdp: keep the sharded weights, gradients and AdamW state in CPU "
                                    "memory")
    threads: int | None = ranged(None, ">= 1", "torch intra-op threads; unset: torch's default")
    progress: bool = option(True, "show progress bars")
    pause_at_fraction: float | None = ranged(None, "(0, 1)", "stop (checkpoint, evaluate, write paused.json) "
                                             "after this fraction of all training steps; --resume continues")
    eval_sets_during_training: bool = option(False, "also evaluate data.eval_sets (e.g. out-of-distribution "
                                             "sets) at every evaluation, not only at the end")
    report_to: list[str] = option(help="where metrics also go besides metrics.jsonl: tensorboard | wandb | mlflow "
                                  "(each its pip extra, e.g. pip install 'tunesmith[wandb]'); main process only",
                                  default_factory=list)
    callbacks: list[str] = option(help="your own Callback subclasses (or functions returning one), as module:Class; "
                                  "the module is looked for in the config's folder first; their state_dict is "
                                  "checkpointed and restored on resume", default_factory=list)


@dataclass
class StageConfig:
    """One item of `stages:` (e.g. LP-FT: a linear probe, then fine-tuning from its head). Each stage
    applies its own method to the model the previous stage left; unset fields take train's."""

    name: str = option("stage", "the stage's name in logs and metrics")
    method: MethodConfig = field(default_factory=MethodConfig)
    epochs: float | None = ranged(None, "> 0", "as train.epochs, for this stage")
    max_steps: int | None = ranged(None, "> 0", "as train.max_steps, for this stage")
    lr: float | None = ranged(None, "> 0", "as train.lr, for this stage")
    head_lr: float | None = ranged(None, "> 0", "as train.head_lr, for this stage")
    weight_decay: float | None = ranged(None, ">= 0", "as train.weight_decay, for this stage")
    warmup_ratio: float | None = ranged(None, "[0, 1)", "as train.warmup_ratio, for this stage")
    schedule: str | None = option(None, "as train.schedule, for this stage")


@dataclass
class RunConfig:
    """A run config: one YAML file with these sections."""

    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)  # ignored when stages are given
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=lambda: _default_objective())  # or `objective: NAME`
    train: TrainConfig = field(default_factory=TrainConfig)
    stages: list[StageConfig] = option(help="several stages run one after the other (each with its own "
                                       "method); empty: one stage, `method` with `train`", default_factory=list)


def _default_objective() -> ObjectiveConfig:
    return OBJECTIVE_SECTIONS.get(ObjectiveConfig.name, ObjectiveConfig)()


def stage_methods(cfg: RunConfig) -> list[tuple[str, MethodConfig]]:
    """(config section, method config) of every stage: `method`, or each `stages.N.method`."""
    if not cfg.stages:
        return [("method", cfg.method)]
    return [(f"stages.{i}.method", stage.method) for i, stage in enumerate(cfg.stages)]
