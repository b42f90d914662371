"""Online RL with generation in the loop: GRPO (Shao et al., 2024) and RLOO (Ahmadian et al., 2024).

Each optimizer step takes `train.batch_size` prompts, samples `num_generations` completions of each
with the policy (KV-cached, batched, in inference mode, seeded by the step so a resumed run draws the
same tokens), scores them with the rewards (tunesmith/rewards.py), turns the scores into advantages
within each prompt's group (objectives/advantages.py) and takes one update on the clipped surrogate
(objectives/policy_loss.py). Option names are TRL's. KL to the reference model (`beta` > 0): the model
with the adapter's changes off (LoRA, DoRA), or, for methods that train the base weights, a frozen copy
(`reference_copy: true`, since it doubles the model's memory). Dropout is off, as the ratio of new to
old probabilities assumes one deterministic forward.

Validation generates greedily for the held-out prompts and reports their mean reward (`val_reward`, the
early-stopping metric) and completion length, from step 0 (the starting policy) on, beside two guards
against reward hacking: distinct-1/2 (repetition) and, where a reference model is at hand (LoRA's
adapters off, or `reference_copy`), the completions' perplexity under it. Each evaluation's first
completions are kept in RUN_DIR/samples.jsonl and samples.html.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch

from tunesmith.errors import ConfigError, TrainingError
from tunesmith.objectives.advantages import EPS, group_relative, leave_one_out
from tunesmith.objectives.base import Loss, ObjectiveConfig, StageStart
from tunesmith.objectives.causal_lm import IGNORE, CausalLM, collate, target_logits
from tunesmith.objectives.policy_loss import LOSS_TYPES, grpo_loss, rloo_loss, sequence_kl
from tunesmith.ranges import choice, option, ranged
from tunesmith.user_code import resolve_code_dir

SCALES = ("group", "batch", "none")


@dataclass
class OnlineRLConfig(ObjectiveConfig):
    """What every objective that samples during training (grpo, rloo, ppo) is configured by."""

    name: str = option("grpo", "the objective")
    reward_funcs: list[str | dict] = option(
        help="what scores a completion: module:function (TRL's signature: (prompts, completions, **kwargs) -> "
             "list of floats), {run: REWARD_RUN}, or {run: CLASSIFIER_RUN, label: NAME} (that class's probability)",
        default_factory=list)
    reward_weights: list[float] | None = option(None, "one weight per reward (default: 1 each); the reward is "
                                                      "their weighted sum")
    num_generations: int = ranged(4, ">= 2", "completions sampled per prompt (the group its advantages compare)")
    max_completion_length: int = ranged(32, ">= 1", "new tokens per completion at most")
    temperature: float = ranged(1.0, "> 0", "sampling temperature of the completions")
    top_p: float = ranged(1.0, "(0, 1]", "nucleus sampling of the completions")
    beta: float = ranged(0.0, ">= 0", "weight of the KL penalty to the reference model (0: none, TRL's default)")
    epsilon: float = ranged(0.2, "> 0", "clip range of the probability ratio")
    epsilon_high: float | None = ranged(None, "> 0", "upper clip range (DAPO); unset: epsilon")
    reference_copy: bool = option(False, "with beta > 0 and a method that trains the base weights: keep a frozen "
                                         "copy of the starting model as the reference (twice the memory)")
    code_dir: str | None = option(None, "where a reward function's module is looked for first; unset: the "
                                        "folder of the config file, then the working directory and PYTHONPATH")


@dataclass
class GRPOConfig(OnlineRLConfig):
    """grpo's and rloo's: the shared options, how advantages are scaled and how the loss averages."""

    scale_rewards: str = option("group", "grpo: divide advantages by the std of the group | batch | none")
    loss_type: str = option("grpo", "grpo (mean over each completion's tokens, then completions) | bnpo (over "
                                    "all tokens) | dr_grpo (sum / (completions x max_completion_length))")


def completion_logps(model, batch: dict[str, torch.Tensor], temperature: float = 1.0
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probabilities of the completion tokens, the policy's entropy there (detached)), each (B, L - 1)
    and 0 off the completion; the output layer runs on completion positions only."""
    return token_logps(*target_logits(model, batch), temperature)


def token_logps(logits: torch.Tensor, targets: torch.Tensor, wanted: torch.Tensor, temperature: float = 1.0
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """target_logits' output as (log-probabilities of the targets, entropy (detached)), each scattered to
    (B, L - 1) with 0 elsewhere. The logits are divided by the sampling temperature (as TRL does), so the
    probabilities are those the completions were drawn from."""
    logp_all = torch.log_softmax(logits / temperature, dim=-1)
    picked = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.detach().exp() * logp_all.detach()).sum(-1)
    zeros = torch.zeros(wanted.shape, dtype=picked.dtype, device=wanted.device)
    return zeros.masked_scatter(wanted, picked), zeros.detach().masked_scatter(wanted, entropy)


@dataclass(frozen=True)
class PromptItem:
    input_ids: list[int]
    example: Any  # data.prompts.PromptExample: its prompt as the rewards see it, and its other columns


class GRPO(CausalLM):
    name = "grpo"
    description = "online RL: sample completions, score them with rewards, GRPO update (group-relative advantages)"
    Config = GRPOConfig
    metric_names = ("reward", "completion_length", "distinct_1", "distinct_2")
    default_metric = "val_reward"
    eval_file = ""

    def __init__(self, run=None) -> None:
        super().__init__(run)
        self.rewards: list = []
        self.weights: list[float] = []
        self.tokenizer: Any = None
        self._reference: Any = None  # () -> context manager giving the reference model
        self.step_seen = 0
        self.strategy: Any = None  # the run's processes (generation in lockstep where forwards are collective)

    # -- config time -------------------------------------------------------------------------------
    @classmethod
    def locate(cls, cfg: GRPOConfig, base_dir) -> None:
        cfg.code_dir = resolve_code_dir(cfg.code_dir, base_dir)

    def check(self, run, where) -> None:
        super().check(run, where)
        self.check_sampling(run, where)
        choice(run.objective.loss_type, LOSS_TYPES, where("objective.loss_type"))
        choice(run.objective.scale_rewards, SCALES, where("objective.scale_rewards"))

    def check_sampling(self, run, where) -> None:
        """The checks every online RL objective shares: lengths, rewards, the reference, parallelism."""
        from tunesmith.methods import METHODS
        from tunesmith.rewards import check_rewards, check_weights
        from tunesmith.schema import stage_methods

        cfg = run.objective
        if run.model.max_length <= cfg.max_completion_length:
            raise ConfigError(f"{where('objective.max_completion_length')}: {cfg.max_completion_length} leaves no room "
                              f"for the prompt in model.max_length {run.model.max_length}")
        check_rewards(cfg.reward_funcs, where("objective.reward_funcs"), cfg.code_dir)
        check_weights(cfg.reward_weights, len(cfg.reward_funcs), where("objective.reward_weights"))
        if cfg.beta > 0 and not cfg.reference_copy:
            for at, method in stage_methods(run):
                if not METHODS[method.name].free_reference:
                    raise ConfigError(f"{where('objective.beta')}: {cfg.beta:g}, but {at} {method.name} changes the "
                                      "base weights, so the reference model is gone; set objective.reference_copy: "
                                      "true (a frozen copy: twice the memory) or use lora")
        if run.train.parallelism == "fsdp" and cfg.reference_copy:
            raise ConfigError(f"{where('objective.reference_copy')}: a frozen copy of a sharded model is not supported "
                              "under fsdp; use lora (its reference is the base model, free) or ddp")
        if run.train.grad_accum > run.train.batch_size * cfg.num_generations:
            raise ConfigError(f"{where('train.grad_accum')}: more micro-batches than completions per step")

    # -- data and model ----------------------------------------------------------------------------
    def load_data(self, run):
        from tunesmith.data.prompts import load_prompt_data

        return load_prompt_data(run.data)

    def load_model(self, run, data):
        loaded = super().load_model(run, data)
        self.tokenizer = loaded.tokenizer
        return loaded

    def prepare_model(self, model):
        from tunesmith.objectives.pairs import turn_off_dropout

        return turn_off_dropout(model, self.name)

    def encode(self, examples, tokenizer, max_length):
        """Prompt token ids; a prompt that leaves fewer than max_completion_length tokens is left out and
        counted (the data report says how many)."""
        from tunesmith.data.chat import chat_prefix

        room = max_length - self.cfg.max_completion_length
        items, too_long = [], 0
        for example in examples:
            if example.kind == "chat":
                ids = chat_prefix(tokenizer, list(example.messages))
            else:
                ids = tokenizer(example.prompt, add_special_tokens=True)["input_ids"]
            if len(ids) > room:
                too_long += 1
                continue
            items.append(PromptItem(list(ids), example))
        if examples and not items:
            raise ConfigError(f"every prompt is longer than model.max_length - objective.max_completion_length "
                              f"= {room} tokens; raise model.max_length or shorten the prompts")
        return items, {"left_out_prompt_too_long": too_long}

    def collate(self, items, pad_id, train=False):
        width = max(len(it.input_ids) for it in items)
        ids = torch.full((len(items), width), pad_id, dtype=torch.long)
        for i, it in enumerate(items):
            ids[i, : len(it.input_ids)] = torch.tensor(it.input_ids)
        return {"input_ids": ids}

    def counts(self, batch):
        return {"loss": float(batch["input_ids"].shape[0])}

    def loss(self, model, batch) -> Loss:
        raise TrainingError(f"{self.name} trains with its own step (sampling, rewards, update), not a batch loss")

    def prompt_format(self, data) -> str | None:
        return "chat" if any(e.kind == "chat" for e in data.train) else "plain"

    # -- a stage -----------------------------------------------------------------------------------
    def begin_stage(self, start: StageStart) -> None:
        from tunesmith.rewards import check_weights, load_rewards

        self.strategy = start.strategy
        if not self.rewards:
            self.rewards = load_rewards(self.cfg.reward_funcs, "objective.reward_funcs", self.cfg.code_dir,
                                        start.open_run)
            self.weights = check_weights(self.cfg.reward_weights, len(self.rewards), "objective.reward_weights")
            start.say(f"{self.name}: rewards {', '.join(r.name for r in self.rewards)}"
                      + (f" (weights {', '.join(f'{w:g}' for w in self.weights)})" if self.cfg.reward_weights else ""))
        # the reference also scores held-out completions (their perplexity under it), where it costs nothing
        # (adapters off) or the run asked for a copy
        if self._reference is None and (start.method.free_reference or self.cfg.reference_copy):
            if start.method.free_reference:
                self._reference = lambda: start.method.reference(start.model)
                start.say(f"{self.name}: the reference model is the model with {start.method.name}'s changes off")
            else:
                frozen = copy.deepcopy(start.model).eval().requires_grad_(False)
                self._reference = lambda: _Same(frozen)
                start.say(f"{self.name}: the reference model is a frozen copy of the starting model")

    def training_step(self, stage: str):
        return PolicyStep(self)

    def evaluates_start(self, stage: str) -> bool:
        return True  # the starting policy's reward: what training is measured against

    def reference_logps(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The reference model's log-probabilities of the completion tokens (at the sampling temperature);
        a training step calls it under the run's precision, as the policy's own forward."""
        with torch.no_grad(), self._reference() as reference:
            return completion_logps(reference, batch, self.cfg.temperature)[0]

    def advantages(self, rewards: torch.Tensor, kl: torch.Tensor | None, batch_std: float | None = None
                   ) -> torch.Tensor:
        """`batch_std`: the std of the whole step's rewards (all processes), for scale_rewards: batch."""
        if self.cfg.scale_rewards == "batch" and batch_std is not None:
            centred = group_relative(rewards, self.cfg.num_generations, "none")
            return centred / (batch_std + EPS)
        return group_relative(rewards, self.cfg.num_generations, self.cfg.scale_rewards)

    def policy_loss(self, logps, advantages, mask, ref_logps):
        return grpo_loss(logps, logps.detach(), advantages, mask, ref_logps=ref_logps, beta=self.cfg.beta,
                         epsilon=self.cfg.epsilon, epsilon_high=self.cfg.epsilon_high, loss_type=self.cfg.loss_type,
                         max_completion_length=self.cfg.max_completion_length)

    def share(self, mask: torch.Tensor, total_tokens: float, total_completions: float) -> float:
        """This micro-batch's weight in the step's loss (each term is a mean over its micro-batch), the
        totals being the whole step's, over all processes."""
        if self.cfg.loss_type == "bnpo":
            return float(mask.sum()) / max(total_tokens, 1.0)
        return mask.shape[0] / total_completions

    # -- sampling and scoring ----------------------------------------------------------------------
    def rollout(self, model, items: list[PromptItem], seed: int, device, temperature: float | None = None,
                generations: int | None = None, first_index: int = 0, strategy: Any = None) -> dict[str, Any]:
        """Completions of every item's prompt (`generations` each), scored: the token ids, their texts,
        the total and per-reward scores, and whether each ran into the length limit."""
        from tunesmith import rewards as scoring
        from tunesmith.generate import GenerationConfig, eos_ids, evaluating, generate_many

        k = generations or self.cfg.num_generations
        rows = [it for it in items for _ in range(k)]
        gen = GenerationConfig(max_new_tokens=self.cfg.max_completion_length,
                               temperature=self.cfg.temperature if temperature is None else temperature,
                               top_p=self.cfg.top_p, seed=seed)
        stops = eos_ids(model, self.tokenizer)
        with evaluating(model):
            new = generate_many(model, [it.input_ids for it in rows], stops, gen, device, batch_size=max(len(rows), 1),
                                strategy=strategy, first_index=first_index * k)
        cut = [len(t) >= self.cfg.max_completion_length for t in new]
        eos = self.tokenizer.eos_token_id
        tokens = [t if c else t + [eos] for t, c in zip(new, cut, strict=True)]  # the stop is learned too
        texts = [self.tokenizer.decode(t, skip_special_tokens=True) for t in new]
        prompts = [it.example.for_rewards for it in rows]
        completions = [[{"role": "assistant", "content": t}] if it.example.kind == "chat" else t
                       for it, t in zip(rows, texts, strict=True)]
        columns = sorted({key for it in rows for key in it.example.extra})
        extra = {key: [it.example.extra.get(key) for it in rows] for key in columns if key != "step"}
        total, per = scoring.score(self.rewards, self.weights, prompts, completions, self.step_seen, **extra)
        return {"rows": rows, "tokens": tokens, "texts": texts, "total": total, "per": per,
                "cut": torch.tensor(cut, dtype=torch.float32)}

    # -- evaluation --------------------------------------------------------------------------------
    def eval_sums(self, model, items, batch_size, pad_id, device, num_labels):
        sums = {name: torch.zeros((), dtype=torch.float64)
                for name in ("reward", "n", "length", "completions", "distinct_1", "distinct_2", "ref_nll", "ref_tokens")}
        if not items:
            return sums
        out = self.rollout(model, list(items), seed=0, device=device, temperature=0.0, generations=1,
                           strategy=self.strategy)
        scored = ~out["total"].isnan()
        lengths = torch.tensor([len(t) for t in out["tokens"]], dtype=torch.float64)
        sums["reward"] += out["total"][scored].double().sum()
        sums["n"] += float(scored.sum())
        sums["length"] += lengths[scored].sum()
        # what reward hacking looks like: repeated words (distinct-n) and text the starting model finds unlikely
        sums["completions"] += float(len(out["tokens"]))
        generated = [t if cut else t[:-1] for t, cut in zip(out["tokens"], out["cut"].bool().tolist(), strict=True)]
        for k in (1, 2):
            sums[f"distinct_{k}"] += sum(distinct(t, k) for t in generated)
        if self._reference is not None:
            batch = collate([_Sequence(it.input_ids + t, [IGNORE] * len(it.input_ids) + t)
                             for it, t in zip(out["rows"], out["tokens"], strict=True)], pad_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            mask = batch["labels"][:, 1:] != IGNORE
            sums["ref_nll"] -= float(self.reference_logps(batch)[mask].double().sum())
            sums["ref_tokens"] += float(mask.sum())
        samples = [{"step": self.step_seen, "where": it.example.where, "prompt": it.example.for_rewards,
                    "completion": text, "reward": None if math.isnan(r) else r}
                   for it, text, r in zip(out["rows"], out["texts"], out["total"].tolist(), strict=True)]
        self.outputs["samples.jsonl"] = self.outputs.get("samples.jsonl", []) + samples[:SAMPLES_PER_EVAL]
        if self.run_dir is not None and (self.strategy is None or self.strategy.is_main):  # main: its share
            write_samples_page(self.run_dir / "samples.html", self.outputs["samples.jsonl"])
        return sums

    def metrics(self, sums):
        n, completions, tokens = sums["n"].item(), sums["completions"].item(), sums["ref_tokens"].item()
        out = {"reward": sums["reward"].item() / n, "completion_length": sums["length"].item() / n} if n else {}
        if completions:
            out |= {f"distinct_{k}": sums[f"distinct_{k}"].item() / completions for k in (1, 2)}
        if tokens:
            out["ref_perplexity"] = math.exp(sums["ref_nll"].item() / tokens)
        return out

    def details(self, sums, label_names):
        return {"prompts_scored": int(sums["n"].item())}

    def final_metrics(self, model, tokenizer, data, strategy) -> dict[str, float]:
        return {}


SAMPLES_PER_EVAL = 8  # completions kept per evaluation, in samples.jsonl and samples.html


def distinct(tokens: list[int], n: int) -> float:
    """distinct-n of one completion (Li et al., 2016): its different n-grams over its n-grams (1.0 when it
    is too short to have any); a policy that learned to repeat a rewarded word drives it down."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


def write_samples_page(path, samples: list[dict]) -> None:
    """samples.html: what the policy wrote for the first held-out prompts at each evaluation."""
    from html import escape

    from tunesmith.atomic import write_text_atomic

    def text(value) -> str:
        if isinstance(value, list):
            return "<br>".join(f"<b>{escape(m['role'])}</b>: {escape(m['content'])}" for m in value)
        return escape(str(value))

    def reward(value) -> str:
        return "-" if value is None else f"{value:.3f}"

    rows = "".join(f"<tr><td>{s['step']}</td><td>{text(s['prompt'])}</td><td>{text(s['completion'])}</td>"
                   f"<td>{reward(s['reward'])}</td></tr>" for s in samples)
    write_text_atomic(path, "<!doctype html><meta charset=utf-8><title>samples</title><style>body{font-family:"
                      "sans-serif}td{vertical-align:top;padding:4px 8px;border-bottom:1px solid #ddd}</style>"
                      "<h1>What the policy wrote at each evaluation</h1><table><tr><th>step</th><th>prompt</th>"
                      f"<th>completion</th><th>reward</th></tr>{rows}</table>\n")


class RLOO(GRPO):
    name = "rloo"
    description = "online RL: sample completions, score them with rewards, RLOO update (leave-one-out baseline)"

    def advantages(self, rewards: torch.Tensor, kl: torch.Tensor | None, batch_std: float | None = None
                   ) -> torch.Tensor:
        if kl is not None:  # RLOO's KL is a penalty on the reward, before the baseline
            rewards = rewards - self.cfg.beta * kl
        return leave_one_out(rewards, self.cfg.num_generations)

    def policy_loss(self, logps, advantages, mask, ref_logps):
        return rloo_loss(logps, logps.detach(), advantages, mask, epsilon=self.cfg.epsilon,
                         epsilon_high=self.cfg.epsilon_high)

    def share(self, mask, total_tokens, total_completions):
        return mask.shape[0] / total_completions


class _Same:
    """A context manager yielding a fixed model (the frozen reference copy)."""

    def __init__(self, model) -> None:
        self.model = model

    def __enter__(self):
        return self.model

    def __exit__(self, *exc) -> None:
        return None


@dataclass
class Rollout:
    """One step's sampled completions on this process, scored, with the whole step's totals."""

    out: dict[str, Any]  # GRPO.rollout's
    batch: dict[str, torch.Tensor]  # prompt + completion, labels on the completion, on the device
    mask: torch.Tensor  # (B, L - 1): 1 on completion tokens
    rewards: torch.Tensor  # (B,), 0 where no reward scored it
    unscored: torch.Tensor  # (B,) bool
    completions: float  # over all processes: completions, completion tokens, scored ones, their reward sum
    tokens: float
    count: float
    total: float
    std: float  # the std of all processes' rewards
    offset: int  # the global index of this process's first completion


def sample(trainer, obj: GRPO) -> Rollout:
    """This process's share of the step's prompts, `num_generations` completions each, scored (seeds by the
    global row, so the draws do not depend on the number of processes, up to float rounding), as a
    training batch."""
    from tunesmith.train.step import chunks

    strategy = trainer.strategy
    obj.step_seen = trainer.step + 1
    indices = trainer.step_indices(trainer.step)
    shares = chunks(list(range(len(indices))), strategy.world_size)
    if any(not share for share in shares):
        raise TrainingError(f"step {trainer.step + 1}: {len(indices)} prompts for {strategy.world_size} "
                            "processes; raise train.batch_size to at least the number of processes")
    mine = shares[strategy.rank]
    items = [trainer.task.items[indices[i]] for i in mine]
    seed = trainer.cfg.data_seed * 1_000_003 + trainer.step  # a resumed run samples the same tokens
    out = obj.rollout(trainer.model, items, seed, strategy.device, first_index=mine[0], strategy=strategy)
    prompt_ids = [it.input_ids for it in out["rows"]]
    batch = collate([_Sequence(p + t, [IGNORE] * len(p) + t) for p, t in zip(prompt_ids, out["tokens"], strict=True)],
                    trainer.task.pad_id)
    batch = {k: v.to(strategy.device) for k, v in batch.items()}
    mask = (batch["labels"][:, 1:] != IGNORE).float()
    unscored = out["total"].isnan()
    rewards = torch.where(unscored, torch.zeros_like(out["total"]), out["total"]).float()
    scored = rewards[~unscored].double()
    totals = strategy.all_reduce_sum(torch.tensor(
        [float(len(prompt_ids)), float(mask.sum()), float(scored.numel()), float(scored.sum()),
         float((scored ** 2).sum())], dtype=torch.float64, device=strategy.device)).cpu().tolist()
    completions, tokens, count, total, squares = totals
    std = math.sqrt(max(squares - total * total / count, 0.0) / (count - 1)) if count > 1 else 0.0
    return Rollout(out, batch, mask, rewards, unscored, completions, tokens, count, total, std,
                   mine[0] * obj.cfg.num_generations)


def rollout_logs(obj: GRPO, strategy, r: Rollout) -> dict[str, tuple[float, float]]:
    """What every online RL step logs of its samples (TRL's names): reward mean and std, per reward too,
    completion length and the fraction cut at the limit. Sums are this process's share."""
    world = float(strategy.world_size)
    logs = {"reward": (r.total / world, r.count),  # the loop sums every process's share of a log's sum
            "reward_std": (r.std / world, 1.0),
            "completion_length": (float(sum(len(t) for t in r.out["tokens"])), r.completions),
            "clipped_ratio": (float(r.out["cut"].sum()), r.completions)}
    per = r.out["per"]
    seen = strategy.all_reduce_sum(torch.tensor([float((~per[:, j].isnan()).sum()) for j in range(per.shape[1])],
                                                dtype=torch.float64, device=strategy.device)).cpu().tolist()
    for j, reward in enumerate(obj.rewards):
        column = per[:, j][~per[:, j].isnan()]
        logs[f"rewards/{reward.name}/mean"] = (float(column.sum()), seen[j])
    return logs


class PolicyStep:
    """One step: sample, score, advantages, one clipped update (train/step.py's parts for the update).

    Under torchrun each process samples for its share of the step's prompts and every process runs
    train.grad_accum micro-batches (an empty one with weight 0), so DDP's gradient averaging meets in
    lockstep; each micro-batch's weight uses the whole step's totals, so the update equals one process's."""

    def __init__(self, objective: GRPO) -> None:
        self.objective = objective

    def __call__(self, trainer):
        from tunesmith.train.step import StepOutput, apply_update, chunks

        obj, strategy = self.objective, trainer.strategy
        r = sample(trainer, obj)
        batch, mask, n = r.batch, r.mask, r.mask.shape[0]
        ref = None
        if obj.cfg.beta > 0:
            with trainer.precision.autocast():
                ref = obj.reference_logps(batch)
        kl = None
        if ref is not None and isinstance(obj, RLOO):
            with torch.no_grad(), trainer.precision.autocast():
                kl = sequence_kl(completion_logps(trainer.wrapped, batch, obj.cfg.temperature)[0], ref, mask).cpu()
        advantages = obj.advantages(r.rewards, kl, r.std)
        advantages = torch.where(r.unscored, torch.zeros_like(advantages), advantages).to(strategy.device)
        # DDP averages the processes' gradients: a micro-batch's weight is its share of the whole step, times
        # the number of processes
        world = float(strategy.world_size)
        parts = chunks(list(range(n)), trainer.cfg.grad_accum)
        loss_value, kl_sum, clip_sum, entropy_sum = 0.0, 0.0, 0.0, 0.0
        for j, part in enumerate(parts):
            weight = 0.0 if not part else obj.share(mask[part], r.tokens, r.completions) * world
            part = part or [0]  # a process with nothing left still takes part in the synchronised backward
            sub = {k: v[part] for k, v in batch.items()}
            with strategy.sync_gradients(trainer.wrapped, sync=j == len(parts) - 1):
                with trainer.precision.autocast():
                    logps, entropy = completion_logps(trainer.wrapped, sub, obj.cfg.temperature)
                    result = obj.policy_loss(logps, advantages[part], mask[part], None if ref is None else ref[part])
                    check_finite(result.loss, trainer)
                trainer.precision.backward(result.loss * weight)
            if weight:
                loss_value += result.loss.item() * weight / world
                # KL and clipping are means over the micro-batch's tokens (RLOO's clipping: its completions)
                part_tokens = float(mask[part].sum())
                kl_sum += result.kl * part_tokens
                clip_sum += result.clip_ratio * (len(part) if isinstance(obj, RLOO) else part_tokens)
                entropy_sum += float((entropy * mask[part]).sum())
        apply_update(trainer)
        tokens = max(r.tokens, 1.0)
        logs = rollout_logs(obj, strategy, r) | {
            "clip_ratio": (clip_sum, r.completions if isinstance(obj, RLOO) else tokens),
            "entropy": (entropy_sum, tokens)}
        if ref is not None:  # RLOO's went into the reward: its per-token mean, as TRL logs it
            logs["kl"] = (float(kl.sum()) if kl is not None else kl_sum, tokens)
        return StepOutput({"loss": loss_value}, {"loss": 1.0}, logs, samples=int(r.completions))

    def state_dict(self) -> dict[str, Any]:
        return {}  # sampling seeds come from the step, the rewards hold no state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


def check_finite(loss: torch.Tensor, trainer) -> None:
    if not math.isfinite(loss.item()):
        raise TrainingError(f"the loss became {loss.item()} at step {trainer.step + 1}; lower train.lr or set "
                            "train.max_grad_norm")


@dataclass(frozen=True)
class _Sequence:
    input_ids: list[int]
    labels: list[int]
