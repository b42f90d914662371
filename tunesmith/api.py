"""The Python API: what the command line does, as functions (docs/python-api.md walks through it).

    import tunesmith
    run = tunesmith.train("my.yaml", out="runs/first", train={"epochs": 1})
    run.predict(["a gorgeous, witty film"])
    run.evaluate("new.csv")

Heavy modules (torch models, transformers) load when a function needs them, so `import tunesmith` is
quick and changes nothing in the process (no environment variables, no logging settings).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.errors import ConfigError, TunesmithError

if TYPE_CHECKING:
    from tunesmith.infer import OpenedRun
    from tunesmith.schema import RunConfig

__all__ = ["Run", "train", "load_run", "merge", "export", "compare", "check"]


def _overrides(overrides: dict[str, Any]) -> list[str]:
    """Keyword overrides as `--set` items: `train={"epochs": 1}` (a section's fields), `train__epochs=1`
    or `**{"train.epochs": 1}`; values are written as YAML, so lists and nulls work."""
    from tunesmith.parsing import yaml_value

    items = []
    for key, value in overrides.items():
        key = key.replace("__", ".")
        if isinstance(value, dict):
            items += _overrides({f"{key}.{k}": v for k, v in value.items()})
            continue
        items.append(f"{key}={yaml_value(value)}")
    return items


def _config(config: str | Path | dict[str, Any] | RunConfig, overrides: dict[str, Any]) -> tuple[RunConfig, str]:
    """(the checked RunConfig, a name for the default run dir)."""
    from tunesmith.config import apply_overrides, config_from_dict, load_config
    from tunesmith.schema import RunConfig
    from tunesmith.shipped import resolve_config_path

    if isinstance(config, RunConfig):
        if overrides:
            raise ConfigError("train: overrides apply to a config file or dict; change the RunConfig's fields instead")
        return config, "run"
    if isinstance(config, dict):
        return config_from_dict(apply_overrides(config, _overrides(overrides)), source="<dict>"), "run"
    path = resolve_config_path(config)
    return load_config(path, _overrides(overrides)), path.stem


def check(config: str | Path | dict[str, Any], **overrides: Any) -> RunConfig:
    """Read and check a config (every config-time check; no data or model is loaded)."""
    return _config(config, overrides)[0]


def train(config: str | Path | dict[str, Any] | RunConfig | None = None, out: str | Path | None = None, *,
          resume: bool = False, overwrite: bool = False, **overrides: Any) -> Run:
    """Train a run and return it, finished.

    `config` is a YAML file, a shipped config's name (`tunesmith configs`), a dict of sections or a
    RunConfig; `overrides` change fields: `train={"epochs": 1}`, `data__train="my.csv"`. The run writes to
    `out` (default runs/<config name>), exactly as `tunesmith train` does; `resume` continues a killed or
    paused run there (config may then be None: the run's own is used)."""
    from tunesmith.run import run as run_training

    if resume and out is None:
        raise ConfigError("train: resume=True needs out=RUN_DIR, the run to continue")
    if config is None and not resume:
        raise ConfigError("train: give a config (a YAML file, a shipped config's name, a dict or a RunConfig)")
    cfg, name = _config(config, overrides) if config is not None else (None, "run")
    run_dir = Path(out or f"runs/{name}")
    summary = run_training(cfg, run_dir, resume=resume, overwrite=overwrite)
    result = Run(run_dir)
    result._summary = summary
    return result


def load_run(run_dir: str | Path) -> Run:
    """A finished (or paused) run directory, to use: predict, evaluate, generate, score, merge, export."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise TunesmithError(f"{run_dir}: not a run directory (no config.yaml); give the folder `tunesmith train` "
                             "wrote")
    return Run(run_dir)


@dataclass
class Run:
    """A run directory. Its model is opened once, on first use, and kept for later calls."""

    dir: Path
    _summary: dict[str, Any] | None = field(default=None, repr=False)
    _opened: OpenedRun | None = field(default=None, repr=False)

    @property
    def summary(self) -> dict[str, Any]:
        """summary.json: final metrics, sizes, timings, warnings."""
        if self._summary is None:
            path = self.dir / "summary.json"
            if not path.exists():
                raise TunesmithError(f"{self.dir}: no summary.json; the run has not finished")
            self._summary = json.loads(path.read_text())
        return self._summary

    @property
    def metrics(self) -> dict[str, float]:
        """The final metrics (test and validation), as `tunesmith train` prints them."""
        return self.summary["final"]

    @property
    def config(self) -> RunConfig:
        from tunesmith.rundir import read_run_config

        return read_run_config(self.dir, for_training=False)

    def _open(self) -> OpenedRun:
        if self._opened is None:
            from tunesmith.infer import open_saved

            self._opened = open_saved(self.dir)
        return self._opened

    def _needs(self, what: bool, command: str) -> OpenedRun:
        opened = self._open()
        if not what:
            raise TunesmithError(f"{self.dir} is a {opened.objective.name} run, which does not {command}; use "
                                 f"Run.{opened.objective.command}")
        return opened

    def predict(self, inputs: list[str], top_k: int = 3) -> list[dict[str, Any]]:
        """One prediction per text (image runs: image file): label, its probability, all probabilities."""
        opened = self._needs(self._open().objective.has_labels, "predict")
        return opened.objective.predict(opened.saved, list(inputs), opened.cfg, top_k)

    def evaluate(self, data: str | Path, text_field: str | None = None, label_field: str | None = None,
                 out: str | Path | None = None, skip_bad_rows: bool = False) -> dict[str, Any]:
        """Metrics on a labelled file (reward and preference runs: a file of pairs), as `tunesmith eval`."""
        from tunesmith.infer import evaluate_file

        return evaluate_file(self.dir, data, text_field, label_field, skip_bad_rows=skip_bad_rows, out=out)

    def generate(self, prompts: list[str], max_new_tokens: int = 64, temperature: float = 0.0, top_p: float = 1.0,
                 seed: int = 0, chat: bool | None = None, system: str | None = None) -> list[str]:
        """Completions of prompts (language-model runs), rendered as the run was trained unless `chat` says."""
        from tunesmith.generate import GenerationConfig, chat_for, generate

        opened = self._needs(self._open().objective.generates, "generate")
        use_chat, _ = chat_for(opened.prompt_format, opened.tokenizer, chat)
        cfg = GenerationConfig(max_new_tokens, temperature, top_p, seed)
        return generate(opened.model, opened.tokenizer, list(prompts), cfg, chat=use_chat, system=system)

    def score(self, texts: list[str], prompt: str | None = None) -> list[float]:
        """A reward run's score of each text (each a completion of `prompt`, when given)."""
        opened = self._needs(hasattr(self._open().objective, "score"), "score")
        return opened.objective.score(opened.saved, list(texts), prompt, opened.cfg)

    def sample(self, out: str | Path, classes: list[str] | None = None, num: int = 8, seed: int = 0,
               steps: int = 50, condition_from: list[str] | None = None, prompts: list[str] | None = None,
               guidance_scale: float = 1.0) -> list[Path]:
        """Images from a diffusion run, as `tunesmith sample`: `num` per class (or per conditioning image,
        or per prompt of a caption-conditioned run), written to `out` as PNGs and grid.png; returns the files."""
        from tunesmith.sampling import draw_to_folder

        opened = self._needs(self._open().objective.command == "sample", "sample")
        return draw_to_folder(opened.model, opened.tokenizer, str(self.dir), out, classes, num, seed, steps, "ddim",
                              condition_from, prompts, guidance_scale)

    def merge(self, out: str | Path, overwrite: bool = False) -> Path:
        """A LoRA run's adapter folded into its base: a plain Hugging Face model folder."""
        return merge(self.dir, out, overwrite)

    def export(self, out: str | Path, format: str = "gguf", dtype: str | None = None, overwrite: bool = False) -> Path:
        """The run as a GGUF file (causal LMs, for llama.cpp / Ollama / LM Studio) or a plain HF folder."""
        return export(self.dir, out, format, dtype, overwrite)


def merge(run_dir: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """`tunesmith merge`: a LoRA run's adapter folded into its base, written to `out`."""
    from tunesmith.infer import merge_run

    return merge_run(run_dir, out, overwrite=overwrite)


def export(run_dir: str | Path, out: str | Path, format: str = "gguf", dtype: str | None = None,
           overwrite: bool = False) -> Path:
    """`tunesmith export`: a run as GGUF (dtype f32 | f16, the default | q8_0) or a plain HF folder
    (`format="hf"`, the weights as the run holds them)."""
    from tunesmith.export import export_run

    return export_run(run_dir, out, format=format, dtype=dtype, overwrite=overwrite)


def compare(config: str | Path, out: str | Path | None = None, seeds: int | None = None, vary: str | None = None,
            strategies: list[str] | None = None, early_discard: float | None = None, keep: int = 1) -> dict[str, Any]:
    """`tunesmith compare`: strategies x seeds on the same data; returns the report's numbers (the report
    itself is written to `out`/report.md and report.html)."""
    import sys

    from tunesmith.compare import compare as run_compare
    from tunesmith.compare import load_compare_config
    from tunesmith.shipped import resolve_config_path

    path = resolve_config_path(config)
    cfg = load_compare_config(path, seeds, vary)
    return run_compare(cfg, Path(out or f"runs/compare-{path.stem}"), early_discard, keep, strategies,
                       log=lambda m: print(m, file=sys.stderr, flush=True))
