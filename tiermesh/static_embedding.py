"""A situation's embedding in microseconds: the intent encoder distilled to one vector per
word piece (model2vec's method), for the router's near-duplicate intent cache.

The encoder's own embedding of a situation is the whole cost of an intent miss, so a cache
keyed on it would save nothing. Instead each word piece of the encoder's vocabulary is run
through the tuned encoder once, alone (`[CLS] piece [SEP]`), when the model is built; a
situation is then the mean of its pieces' vectors: a tokenizer pass and a sum, no attention.
Such an embedding ignores word order and context, so it tells near-duplicates (another
distance, another count, a changed article) from different situations only at a high
similarity; the threshold is the cache's setting and its default is measured in
bench/results/gold.md.

The vectors are centred on the vocabulary's mean before they are scaled to unit length:
every piece's encoding shares one large common direction, which otherwise puts any two
situations at a cosine near 0.98.

Shared by Gold's model build (services/gold/encoder_export.py), which writes the table,
and the router, which reads it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

TABLE_FILE = "static-embeddings.npy"
TOKENIZER_FILE = "tokenizer.json"
# The encoder reads a situation's first 128 word pieces, its two markers included
# (services/gold/encoder.py), and chooses on them alone: two situations that agree there
# get the same intent from it.
MAX_PIECES = 126
# A bound on the text the tokenizer reads (a situation may be up to the router's prompt
# limit): 126 word pieces of prose are far shorter.
MAX_CHARS = 4096

Vector = np.ndarray[Any, np.dtype[np.float32]]


def table(piece_vectors: np.ndarray[Any, Any]) -> np.ndarray[Any, np.dtype[np.float16]]:
    """The stored table from each piece's encoding (one row per vocabulary id): centred,
    unit rows, in float16 (the rows' rounding moves a cosine by well under 0.001)."""
    rows = np.asarray(piece_vectors, dtype=np.float64)
    rows = rows - rows.mean(axis=0)
    rows /= np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
    return np.asarray(rows, dtype=np.float16)


class StaticEmbedder:
    """Text to a unit vector with the distilled table; a text with no word piece (empty,
    or only characters the vocabulary lacks and the tokenizer drops) gets None."""

    def __init__(self, folder: str | Path) -> None:
        from tokenizers import Tokenizer

        folder = Path(folder)
        path = folder / TABLE_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: run `make model`")
        # Kept in float16 (23 MB for the 30,522 pieces); a situation's rows are summed in float32.
        self._table: np.ndarray[Any, np.dtype[np.float16]] = np.load(path)
        self._tokenizer = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(MAX_PIECES)

    @property
    def dimensions(self) -> int:
        return int(self._table.shape[1])

    def embed(self, text: str) -> Vector | None:
        ids = self._tokenizer.encode(text[:MAX_CHARS], add_special_tokens=False).ids
        if not ids:
            return None
        total = self._table[ids].sum(axis=0, dtype=np.float32)
        norm = float(np.linalg.norm(total))
        if norm < 1e-6:
            return None
        return np.asarray(total / norm, dtype=np.float32)
