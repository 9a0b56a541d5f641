"""Gold's intent encoder on CPU: the exported all-MiniLM-L6-v2 (encoder_export.py) under
ONNX Runtime, with its WordPiece tokenizer. Production serves the fp32 ONNX file with
Triton's onnxruntime or TensorRT backend (model_repository/intent_onnx)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from services.gold.settings import Precision

ENCODER_FILE = "model.onnx"
INT8_FILE = "model-int8.onnx"  # the same with int8 weights, for CPUs
TOKENIZER_FILE = "tokenizer.json"
# all-MiniLM-L6-v2 was trained on inputs up to 128 word pieces; a situation is shorter.
MAX_TOKENS = 128
DIMENSIONS = 384

FILES: dict[Precision, str] = {"int8": INT8_FILE, "fp32": ENCODER_FILE}


class IntentEncoder:
    def __init__(self, folder: str | Path, threads: int = 1, precision: Precision = "int8") -> None:
        import onnxruntime
        from tokenizers import Tokenizer

        folder = Path(folder)
        model = folder / FILES[precision]
        if not model.is_file():
            raise FileNotFoundError(f"{model} is missing: run `make model`")
        self._tokenizer = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
        self._tokenizer.enable_truncation(MAX_TOKENS)
        # The tokenizer file pads to 128 pieces; each text runs alone, at its own length.
        self._tokenizer.no_padding()
        options = onnxruntime.SessionOptions()
        # One thread per run, no spinning: the cores are shared with llama.cpp's instances,
        # and a 20-piece situation is too small to split across threads.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = onnxruntime.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        # The texts of a batch run on up to `threads` threads at once (a session may run
        # concurrently; ONNX Runtime releases the GIL), so a batch uses every core given.
        self._rows = ThreadPoolExecutor(threads, "intent-encoder") if threads > 1 else None

    def encode(self, texts: list[str]) -> np.ndarray[Any, np.dtype[np.float32]]:
        """Unit-length sentence embeddings, one row per text.

        Each text runs on its own. The int8 graph quantises its activations with one scale
        per run, so in a batch a situation's embedding (and sometimes its intent) would
        depend on what it queued with; and on CPU, padding ate what a batch saved
        (docs/history.md)."""
        encoded = self._tokenizer.encode_batch(texts)
        if self._rows is not None and len(encoded) > 1:
            rows = list(self._rows.map(self._run, encoded))
        else:
            rows = [self._run(e) for e in encoded]
        # A row of each, in order; an empty batch is (0, DIMENSIONS).
        return np.concatenate([np.zeros((0, DIMENSIONS), dtype=np.float32), *rows])

    def _run(self, encoded: Any) -> np.ndarray[Any, np.dtype[np.float32]]:
        ids = np.array([encoded.ids], dtype=np.int64)
        mask = np.array([encoded.attention_mask], dtype=np.int64)
        [embedding] = self._session.run(["embedding"], {"input_ids": ids, "attention_mask": mask})
        return np.asarray(embedding, dtype=np.float32)
