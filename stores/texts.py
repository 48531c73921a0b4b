"""Strings as one column: how series texts travel from the exposition parser to a store's `register` without a Python
object per series, and without Arrow in the collector's process (27 MB it would load for this alone)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class Texts:
    """Item i is the UTF-8 bytes data[offsets[i]:offsets[i + 1]]. `offsets` (int64, one more than the items) need not
    start at 0: a slice shares its parent's data."""

    offsets: np.ndarray
    data: np.ndarray  # uint8

    @classmethod
    def of(cls, texts: list[str]) -> Texts:
        """Python strings as a column."""
        encoded = [t.encode() for t in texts]
        offsets = np.zeros(len(texts) + 1, np.int64)
        np.cumsum([len(b) for b in encoded], out=offsets[1:])
        return cls(offsets, np.frombuffer(b"".join(encoded), np.uint8))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, rows: slice) -> Texts:
        """Items `rows` (a slice with step 1), sharing this column's data."""
        start, stop, step = rows.indices(len(self))
        if step != 1:
            raise ValueError("Texts slices take every item")
        return Texts(self.offsets[start:max(start, stop) + 1], self.data)

    def lengths(self) -> np.ndarray:
        """Bytes of each item."""
        return np.diff(self.offsets)

    def bytes(self) -> np.ndarray:
        """The items' bytes, one after the other (a view)."""
        return self.data[self.offsets[0]:self.offsets[-1]]

    def to_pylist(self) -> list[str]:
        data = self.bytes().tobytes()  # this column's bytes only: a slice does not copy its parent's
        bounds = (self.offsets - self.offsets[0]).tolist()
        return [data[a:b].decode() for a, b in itertools.pairwise(bounds)]
