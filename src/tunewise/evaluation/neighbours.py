"""Out-of-scope neighbours: how much closer a message is to the in-scope training rows than to the
out-of-scope ones, in a sentence encoder's space.

A classifier trained with a few out-of-scope rows among thousands of in-scope ones learns that
class weakly: on BANKING77 with a quarter of the intents held out (10 training rows each), the
trained candidates' own out-of-scope class caught 45-61% of the held-out messages, and a cut on
their in-scope margin took that to 53-81% for a 1-point in-scope cost. The out-of-scope rows are
still there to compare with: a message much nearer one of them than its nearest in-scope rows is
likely out of scope whatever the classifier says. The neighbour margin here is

    mean cosine similarity to the ``k`` nearest in-scope training rows
    - cosine similarity to the nearest out-of-scope training row,

the k-nearest-neighbour score of out-of-distribution detection (Sun et al., ICML 2022) with the
labelled out-of-scope rows as the other side. The evaluation combines it with each candidate's own
score (:func:`tunewise.evaluation.thresholds.choose_oos_cuts`) and the server applies the same two
cuts. Written here rather than with a nearest-neighbour library: a few thousand rows by a few
thousand are one matrix product per chunk, and the embeddings must be saved without pickle.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tunewise.core.artifacts import atomic_path

NEIGHBOURS_FILE = "oos_neighbours.npz"
DEFAULT_K = 5
_CHUNK = 1024  # query rows per matrix product: 1,024 x 7,000 float32 is 29 MB


class OutOfScopeNeighbours:
    """The training rows' embeddings, split into in-scope and out-of-scope, and their margin."""

    def __init__(self, in_scope: np.ndarray, out_of_scope: np.ndarray, encoder: str, k: int = DEFAULT_K) -> None:
        if len(in_scope) == 0 or len(out_of_scope) == 0:
            raise ValueError("out-of-scope neighbours need in-scope and out-of-scope training rows")
        self.in_scope = np.ascontiguousarray(in_scope, np.float32)
        self.out_of_scope = np.ascontiguousarray(out_of_scope, np.float32)
        self.encoder = encoder
        self.k = max(1, min(int(k), len(self.in_scope)))

    @classmethod
    def fit(
        cls,
        texts: Sequence[str],
        labels: Sequence[str],
        out_of_scope_label: str,
        encoder: str,
        k: int = DEFAULT_K,
    ) -> OutOfScopeNeighbours | None:
        """From the training rows; None when they have no out-of-scope row (nothing to compare with)."""
        is_oos = np.asarray([str(label) == out_of_scope_label for label in labels], bool)
        if not is_oos.any() or is_oos.all():
            return None
        from tunewise.models.loading import embed  # on use: loads sentence-transformers

        vectors = embed([str(t) for t in texts], encoder)
        return cls(vectors[~is_oos], vectors[is_oos], encoder, k)

    def margin_of(self, vectors: np.ndarray) -> np.ndarray:
        """The neighbour margin of unit-length embeddings (higher: more surely in scope)."""
        vectors = np.asarray(vectors, np.float32)
        out = np.empty(len(vectors), np.float64)
        for start in range(0, len(vectors), _CHUNK):
            block = vectors[start : start + _CHUNK]
            near_in = np.partition(-(block @ self.in_scope.T), self.k - 1, axis=1)[:, : self.k]
            out[start : start + len(block)] = -near_in.mean(axis=1) - (block @ self.out_of_scope.T).max(axis=1)
        return out

    def margin(self, texts: Sequence[str]) -> np.ndarray:
        from tunewise.models.loading import embed  # on use: loads sentence-transformers

        if len(texts) == 0:
            return np.empty(0, np.float64)
        return self.margin_of(embed([str(t) for t in texts], self.encoder))

    def save(self, path: str | Path) -> Path:
        """An .npz of plain arrays (loaded without pickle), written atomically."""
        path = Path(path)
        meta = json.dumps({"encoder": self.encoder, "k": self.k})
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, in_scope=self.in_scope, out_of_scope=self.out_of_scope, meta=np.array(meta))
        return path

    @classmethod
    def load(cls, path: str | Path) -> OutOfScopeNeighbours:
        with np.load(Path(path), allow_pickle=False) as saved:
            meta = json.loads(str(saved["meta"]))
            return cls(saved["in_scope"], saved["out_of_scope"], meta["encoder"], meta["k"])
