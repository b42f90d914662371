"""tunesmith: fine-tune pretrained models - full, partial, new heads, LoRA, language models, preferences,
weak supervision - correctly on modest hardware.

The Python API (docs/python-api.md): `train`, `load_run` (a Run: predict, evaluate, generate, score,
merge, export), `merge`, `export`, `compare`, `check`.
"""

import sys
import types

from tunesmith.api import Run, check, compare, export, load_run, merge, train

__version__ = "0.1.0"
__all__ = ["Run", "train", "load_run", "merge", "export", "compare", "check", "__version__"]


class _Package(types.ModuleType):
    """`tunesmith.train` is the API's function, and also the name of the training-loop subpackage.
    Importing a submodule (`from tunesmith.train.loop import ...`) makes Python set the package's
    attribute to the subpackage; this keeps the function there (the subpackage stays importable by
    its full name, as every `from tunesmith.train.X import Y` does)."""

    def __setattr__(self, name: str, value: object) -> None:
        if name in __all__ and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
