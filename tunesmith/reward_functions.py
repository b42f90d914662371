"""Reward functions that ship with tunesmith, with TRL's signature (prompts, completions, **kwargs).

`sentiment_words` is a lexicon reward for the built-in `rotten-tomatoes-openings` prompts: +1 for each
praising and -1 for each panning keyword of the built-in rotten-tomatoes labeling functions
(tunesmith/data/lfs/rotten-tomatoes.yaml) in a completion. It makes a starter config that runs as
written; a classifier trained on the reviews (`{run: RUN_DIR, label: fresh}`) is the reward to use for
real work, since a word list is easy to game by repeating words.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from tunesmith.rewards import text_of


@cache
def _lexicon() -> tuple[re.Pattern, re.Pattern]:
    from pathlib import Path

    from tunesmith.data.weak import load_lf_file

    lfs = load_lf_file(Path(__file__).parent / "data" / "lfs" / "rotten-tomatoes.yaml")

    def pattern(label: str) -> re.Pattern:
        words = sorted({w for lf in lfs if lf.label == label for w in lf.keywords or ()}, key=len, reverse=True)
        return re.compile(r"\b(" + "|".join(map(re.escape, words)) + r")\b", re.IGNORECASE)

    return pattern("fresh"), pattern("rotten")


def sentiment_words(prompts: list, completions: list, **kwargs: Any) -> list[float]:
    praise, pan = _lexicon()
    return [float(len(praise.findall(text_of(c))) - len(pan.findall(text_of(c)))) for c in completions]
