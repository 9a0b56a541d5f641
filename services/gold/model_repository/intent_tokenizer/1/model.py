"""Triton python backend: WordPiece tokenization for the intent encoder (production only;
the local Gold tokenizes in services/gold/encoder.py with the same tokenizer.json). Kept
out of the project's type check and tests: it needs Triton's python backend stub."""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils  # provided by Triton's python backend
from tokenizers import Tokenizer

MAX_TOKENS = 128  # what all-MiniLM-L6-v2 was trained on; longer situations are truncated


class TritonPythonModel:
    def initialize(self, args):
        folder = Path(json.loads(args["model_config"]).get("parameters", {}).get(
            "tokenizer_dir", {}).get("string_value", Path(__file__).parent))
        self.tokenizer = Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.enable_padding()

    def execute(self, requests):
        responses = []
        for request in requests:
            texts = pb_utils.get_input_tensor_by_name(request, "text").as_numpy().reshape(-1)
            encoded = self.tokenizer.encode_batch([t.decode("utf-8", "replace") for t in texts])
            ids = np.array([e.ids for e in encoded], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("input_ids", ids), pb_utils.Tensor("attention_mask", mask)]))
        return responses
