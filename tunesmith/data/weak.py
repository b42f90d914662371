"""Weak supervision: labeling functions (LFs) turn unlabeled text into noisy votes.

An LF votes one label for a text or abstains. Three kinds, declared in the run config (or a YAML file of
them, or the built-in data set's own):
- keywords: any of the words or phrases occurs (case-insensitive, whole words) -> its label;
- regex: the pattern matches (case-insensitive) -> its label;
- function: `package.module:function`, called with the text, returns a label name or None (abstain).
  The module is looked for first in the folder of the config file that declares it (`objective.code_dir`),
  then where Python looks (the working directory, PYTHONPATH, installed packages).

Applied to every text they give the label matrix L (examples x LFs; -1 where an LF abstains), computed
once and kept in the run dir. `lf_stats` gives what a user iterates on while writing LFs: per LF
coverage, overlap, conflict and (on labelled rows) empirical accuracy, and the totals.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.data.label_model import ABSTAIN, fit_label_model
from tunesmith.errors import ConfigError, DataError
from tunesmith.user_code import import_object


@dataclass
class LFConfig:
    """One labeling function: `keywords` or `regex` (both vote `label`), or `function`."""

    name: str = ""
    label: str | None = None
    keywords: list[str] = field(default_factory=list)
    regex: str | None = None
    function: str | None = None  # package.module:function, text -> label name or None


@dataclass(frozen=True)
class LabelingFunction:
    name: str
    vote: Callable[[str], str | None]
    labels: tuple[str, ...]  # the labels it can vote (empty: any, a function's)
    where: str = ""  # where it is declared (file:line), for errors about it


def compile_lfs(configs: Sequence[LFConfig], where: str | Callable[[int], str],
                code_dir: str | Path | None = None) -> list[LabelingFunction]:
    """Check and compile LF declarations; each error names the LF (and, with `where(i)`, its line).
    A function LF's module is looked for in `code_dir` first (the config's folder)."""
    if not configs:
        raise ConfigError(f"{where if isinstance(where, str) else where(0)}: no labeling functions; declare some "
                          "(keywords, regex or function)")
    seen, out = set(), []
    for i, lf in enumerate(configs):
        name = lf.name or f"lf{i}"
        declared = where if isinstance(where, str) else where(i)
        at = f"{declared} {name!r}"
        if name in seen:
            raise ConfigError(f"{at}: two labeling functions share this name")
        seen.add(name)
        kinds = [k for k in ("keywords", "regex", "function") if getattr(lf, k)]
        if len(kinds) != 1:
            raise ConfigError(f"{at}: give exactly one of keywords, regex or function (it has "
                              f"{', '.join(kinds) or 'none'})")
        if kinds[0] != "function" and not lf.label:
            raise ConfigError(f"{at}: a {kinds[0]} labeling function needs the label it votes")
        if lf.keywords:
            words = [w.strip() for w in lf.keywords if isinstance(w, str) and w.strip()]
            pattern = re.compile(r"(?<!\w)(?:" + "|".join(re.escape(w) for w in words) + r")(?!\w)", re.IGNORECASE)
            out.append(LabelingFunction(name, _matcher(pattern, lf.label), (lf.label,), declared))
        elif lf.regex:
            try:
                pattern = re.compile(lf.regex, re.IGNORECASE)
            except re.error as e:
                raise ConfigError(f"{at}: regex {lf.regex!r} does not compile ({e})") from None
            out.append(LabelingFunction(name, _matcher(pattern, lf.label), (lf.label,), declared))
        else:
            out.append(LabelingFunction(name, _import(lf.function, at, code_dir), (), declared))
    return out


def _matcher(pattern: re.Pattern, label: str) -> Callable[[str], str | None]:
    return lambda text: label if pattern.search(text) else None


def _import(path: str, at: str, code_dir: str | Path | None = None) -> Callable[[str], Any]:
    fn = import_object(path, at, code_dir, "package.module:function", "my_rules:stars")
    if not callable(fn):
        raise ConfigError(f"{at}: {path} is not callable")
    return fn


def load_lf_file(path: str | Path) -> list[LFConfig]:
    """LFs from a YAML file: a list of {name, label, keywords | regex | function}."""
    import yaml

    from tunesmith.parsing import build_section  # one schema and its checks, for files as for configs

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read the labeling functions ({e})") from None
    if not isinstance(data, list):
        raise ConfigError(f"{path}: expected a list of labeling functions")
    lines = {str(i): line for i, line in enumerate(lf_file_lines(path))}
    return [build_section(LFConfig, item, f"{i}.", str(path), lines) for i, item in enumerate(data)]


def lf_file_lines(path: str | Path) -> list[int]:
    """The line (1-based) where each LF of a YAML list starts, for errors that point into the file."""
    import yaml

    try:
        node = yaml.compose(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return []
    return [item.start_mark.line + 1 for item in node.value] if isinstance(node, yaml.SequenceNode) else []


def label_matrix(lfs: Sequence[LabelingFunction], texts: Sequence[str], wheres: Sequence[str],
                 label_names: Sequence[str]) -> np.ndarray:
    """(examples x LFs) label indices, ABSTAIN where an LF abstains; an LF that raises, or votes a label
    outside `label_names`, is an error naming it and the row."""
    from tqdm.auto import tqdm

    index = {name: i for i, name in enumerate(label_names)}
    out = np.full((len(texts), len(lfs)), ABSTAIN, dtype=np.int64)
    for j, lf in enumerate(lfs):
        for i, (text, where) in enumerate(tqdm(list(zip(texts, wheres, strict=True)), desc=f"LF {lf.name}",
                                              unit="text", leave=False, disable=len(texts) < 20000)):
            try:
                vote = lf.vote(text)
            except Exception as e:  # a user's LF: any failure is theirs to see, with where it happened
                raise DataError(f"{where}: labeling function {lf.name!r} raised {type(e).__name__}: {e}") from None
            if vote is None:
                continue
            if vote not in index:
                raise DataError(f"{where}: labeling function {lf.name!r} voted {vote!r}, which is not one of the "
                                f"labels {', '.join(label_names)}")
            out[i, j] = index[vote]
    return out


def cache_key(configs: Sequence[LFConfig], texts: Sequence[str], label_names: Sequence[str]) -> str:
    digest = hashlib.sha256(json.dumps([asdict(c) for c in configs], sort_keys=True).encode())
    digest.update(json.dumps(list(label_names)).encode())
    for text in texts:
        digest.update(text.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:24]


def matrix_cache(cache_dir: Path, configs, texts: Sequence[str], label_names: Sequence[str]) -> Path:
    """Where the label matrix of these LFs on these texts is kept (functions are keyed by their name:
    rename one when you change its code)."""
    return cache_dir / f"label_matrix-{cache_key(configs, texts, label_names)}.npy"


def write_matrix(path: Path, matrix: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.npy")
    np.save(tmp, matrix)
    tmp.replace(path)


def lf_stats(L: np.ndarray, names: Sequence[str], num_labels: int, gold: np.ndarray | None = None) -> dict[str, Any]:
    """Per LF: coverage, overlap (another LF also votes), conflict (another LF votes otherwise) and, on
    rows with a gold label, empirical accuracy; totals: coverage and majority-vote accuracy."""
    votes = L != ABSTAIN
    n = max(len(L), 1)
    per = {}
    for j, name in enumerate(names):
        mine = votes[:, j]
        others = np.delete(votes, j, axis=1).any(axis=1) if L.shape[1] > 1 else np.zeros(len(L), bool)
        differ = (np.delete(L, j, axis=1) != L[:, [j]]) & np.delete(votes, j, axis=1) if L.shape[1] > 1 else \
            np.zeros((len(L), 0), bool)
        row = {"coverage": float(mine.mean()) if len(L) else 0.0,
               "overlap": float((mine & others).sum() / n), "conflict": float((mine & differ.any(axis=1)).sum() / n)}
        if gold is not None:
            judged = mine & (gold >= 0)
            row["accuracy"] = float((L[judged, j] == gold[judged]).mean()) if judged.any() else None
            row["judged"] = int(judged.sum())
        per[name] = row
    total = {"examples": int(len(L)), "coverage": float(votes.any(axis=1).mean()) if len(L) else 0.0,
             "conflicting": float(sum(len(set(r[r != ABSTAIN])) > 1 for r in L) / n)}
    if gold is not None:
        covered = votes.any(axis=1) & (gold >= 0)
        predicted = fit_label_model("majority", L, num_labels).predict(L)  # ties broken as the label model does
        total["majority_vote_accuracy"] = float((predicted[covered] == gold[covered]).mean()) if covered.any() else None
    return {"lfs": per, "total": total}
