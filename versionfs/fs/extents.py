"""Byte ranges of a file: its stored chunks (`Extent`) and sets of ranges (`Intervals`).

A regular file's sealed content is a sorted list of non-overlapping extents;
gaps between them are holes and read as zeros. `Intervals` is the arithmetic
the dirty layers and sealing need: which ranges were written, which are still
visible, which a re-chunk covered.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Iterable, Iterator


@dataclass(frozen=True, slots=True)
class Extent:
    """One stored chunk, or part of one: file bytes [offset, offset+length)
    are the plain content of the blob at pointer from byte `skip` on (a partial
    extent: what a small rewrite left of an old chunk, sealing.py)."""

    offset: int
    length: int
    pointer: bytes
    skip: int = 0

    @property
    def end(self) -> int:
        return self.offset + self.length


def extent_index(extents: list[Extent], pos: int) -> int:
    """Index of the first extent whose end is beyond pos."""
    lo, hi = 0, len(extents)
    while lo < hi:
        mid = (lo + hi) // 2
        if extents[mid].end <= pos:
            lo = mid + 1
        else:
            hi = mid
    return lo


class Intervals:
    """Sorted, disjoint, half-open byte ranges; adjacent ranges are merged."""

    __slots__ = ("starts", "ends")

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()):
        self.starts: list[int] = []
        self.ends: list[int] = []
        for a, b in ranges:
            self.add(a, b)

    def __bool__(self) -> bool:
        return bool(self.starts)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return zip(self.starts, self.ends)

    def copy(self) -> "Intervals":
        c = Intervals()
        c.starts, c.ends = list(self.starts), list(self.ends)
        return c

    def total(self) -> int:
        return sum(b - a for a, b in self)

    def add(self, a: int, b: int) -> None:
        if a >= b:
            return
        # First range whose end >= a (touching ranges merge).
        i = bisect.bisect_left(self.ends, a)
        j = i
        while j < len(self.starts) and self.starts[j] <= b:
            a = min(a, self.starts[j])
            b = max(b, self.ends[j])
            j += 1
        self.starts[i:j] = [a]
        self.ends[i:j] = [b]

    def clip(self, limit: int) -> None:
        """Forget everything at or beyond `limit`."""
        i = bisect.bisect_left(self.ends, limit + 1)
        del self.starts[i + 1:], self.ends[i + 1:]
        if i < len(self.starts):
            if self.starts[i] >= limit:
                del self.starts[i], self.ends[i]
            else:
                self.ends[i] = limit

    def split(self, a: int, b: int) -> Iterator[tuple[int, int, bool]]:
        """Cover [a, b) with pieces (start, end, inside-a-range)."""
        i = bisect.bisect_right(self.ends, a)
        pos = a
        while pos < b:
            if i < len(self.starts) and self.starts[i] <= pos:
                end = min(b, self.ends[i])
                yield pos, end, True
                i += 1
            else:
                end = min(b, self.starts[i]) if i < len(self.starts) else b
                yield pos, end, False
            pos = end

    def overlaps(self, a: int, b: int) -> bool:
        i = bisect.bisect_right(self.ends, a)
        return i < len(self.starts) and self.starts[i] < b
