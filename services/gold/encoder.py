"""Gold's intent encoder on CPU: the exported all-MiniLM-L6-v2 (encoder_export.py) under
ONNX Runtime, with its WordPiece tokenizer. Production serves the same ONNX file with
Triton's onnxruntime or TensorRT backend (model_repository/intent_encoder)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

ENCODER_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
# all-MiniLM-L6-v2 was trained on inputs up to 128 word pieces; a situation is shorter.
MAX_TOKENS = 128
DIMENSIONS = 384


class IntentEncoder:
    def __init__(self, folder: str | Path, threads: int = 1) -> None:
        import onnxruntime
        from tokenizers import Tokenizer

        folder = Path(folder)
        if not (folder / ENCODER_FILE).is_file():
            raise FileNotFoundError(f"{folder / ENCODER_FILE} is missing: run `make model`")
        self._tokenizer = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
        self._tokenizer.enable_truncation(MAX_TOKENS)
        self._tokenizer.enable_padding()
        options = onnxruntime.SessionOptions()
        # The cores are shared with llama.cpp's instances: one thread, no spinning.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = onnxruntime.InferenceSession(
            str(folder / ENCODER_FILE), options, providers=["CPUExecutionProvider"]
        )

    def encode(self, texts: list[str]) -> np.ndarray[Any, np.dtype[np.float32]]:
        """Unit-length sentence embeddings, one row per text."""
        encoded = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encoded], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
        [embedding] = self._session.run(["embedding"], {"input_ids": ids, "attention_mask": mask})
        return np.asarray(embedding, dtype=np.float32)
