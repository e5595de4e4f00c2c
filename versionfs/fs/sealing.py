"""Sealing: turning a file's frozen dirty layers into content-defined chunks.

Runs in a worker thread (the trio side, which freezes the layers and swaps
the result in, is `DataManager.seal`):

* Re-chunking of a changed region starts at the boundary of the first extent
  it touches and stops as soon as a CDC cut lands on the start of an untouched
  old extent: from there on FastCDC would cut exactly as before, because each
  cut depends only on the bytes after the previous cut. Inserting one byte at
  the start of a 64 MiB file therefore re-hashes a chunk or two beyond the
  insert; when an application rewrites the whole file the chunks that come out
  are the old ones again and content addressing stores nothing new for them.
* Appends cost what was appended: new bytes past the last extent are cut into
  new extents of their own (an extent may be any length); the partial last
  chunk before them is kept, never re-stored. Only a big append (at least
  CHUNK_MIN and half the length of that last chunk) re-chunks the last chunk
  with the new bytes, at most three times the bytes appended: a file written
  in big steps (or streamed out in slices) so gets the chunks of one big
  write, and dedups with them. The kernel writes back whole
  pages, so an append also rewrites the start of the page that held the old
  end of file: an extent whose only change is such a tail (at most
  `TAIL_COMPARE` bytes) is compared with what it holds and kept when equal
  (`_unchanged_tails`). A file appended and
  sealed many times so gathers runs of small extents; once the file is quiet
  (`merge_small`, scheduled by lifecycle.py) a run of at least
  `MERGE_MIN_EXTENTS` adjacent extents shorter than CHUNK_MIN is re-chunked
  as one, so reads and the extent list stay proportional to the content.
  Every appended byte is so stored once when sealed and about once more when
  its run is merged; a merge's last chunk may be short again and is merged
  with what follows it next time.
* Small rewrites cost what was rewritten: an extent of which a seal rewrites
  at most PARTIAL_MAX_TOUCHED (half) keeps its untouched parts as partial
  extents of its old chunk (`Extent.skip`: where in the chunk's plain content
  the extent starts; `split_extents`), and only the rewritten bytes are
  chunked (keyed, as all new bytes) and stored; chunking of them is cut at the
  split extent's ends and at each partial extent (hard stops), so it never
  runs on into untouched content. A 4 KiB rewrite in the middle of a 4 MiB
  chunk stores 4 KiB, in a 1 MiB file as in a 200 MiB one. The old chunk
  stays whole in the stores while any partial extent uses it (each has its own
  b"R" key, so reclamation sees it live) and is queued for reclamation when
  the last one goes. Rewrites of partial extents can leave a chunk mostly
  unused: once less than half of it is used (`wasted_partials`), the quiet
  merge re-chunks its partial extents, so the chunk goes too. A rewrite of
  more than half an extent re-chunks it as before, so rewriting a whole file
  still dedups with its old chunks.
* Re-chunking re-aligns with the old chunks only where they were cut by CDC:
  it is cut at the start of a clean extent shorter than CHUNK_MIN or partial,
  and at the end of a changed extent shorter than CHUNK_MIN
  (`no_realignment`), so rewriting a small extent re-stores that extent, not
  the rest of the file.
* Fragmentation stays bounded: partial extents and the new ones between them
  are short, and the quiet merge (below) treats them like small appends. After
  a merge no run of MERGE_MIN_EXTENTS extents shorter than CHUNK_MIN is left,
  so a file holds at most MERGE_MIN_EXTENTS extents per CHUNK_MIN bytes (plus
  a run of 7): a file rewritten in a thousand places gets fresh chunks once it
  is quiet, not thousands of extents.
* Chunks that are all zeros are not stored: they become holes.
* On an encrypted filesystem the cut points are keyed (chunking.py), so the
  chunk lengths of a known file cannot be predicted without the key.
* The CPU work (CDC, hashing, compression, encryption, store writes) runs in
  worker threads, so the trio thread keeps serving requests and both cores
  work.
"""

from __future__ import annotations

import bisect
import concurrent.futures
import threading
from dataclasses import dataclass

from .chunking import Chunker
from .extents import Extent, Intervals, extent_index
from .layers import Layer
from .reading import CHUNK_CACHE_BYTES, ChunkReader

CHUNK_AVG = 1 << 20
CHUNK_MIN = 256 << 10
CHUNK_MAX = 4 << 20
# Bytes of content handed to FastCDC at a time while sealing.
CDC_WINDOW = 16 << 20
# Chunk uploads (hash + compress + encrypt + store) in flight per seal.
PUT_WORKERS = 2
PUTS_IN_FLIGHT = 2 * CDC_WINDOW // CHUNK_AVG
# Adjacent extents shorter than CHUNK_MIN, this many or more, are merged once
# the file is quiet (see the module docstring).
MERGE_MIN_EXTENTS = 8
# An extent of which a seal rewrites at most this fraction keeps its untouched
# parts as partial extents of its chunk; only the rewritten bytes are stored.
PARTIAL_MAX_TOUCHED = 0.5
# An extent whose touched bytes are only a tail this short is compared with
# its content before it is re-chunked (a page the kernel wrote back unchanged).
TAIL_COMPARE = 64 << 10


def small_runs(extents: list[Extent]) -> list[tuple[int, int]]:
    """Byte ranges of the runs of at least MERGE_MIN_EXTENTS adjacent extents
    each shorter than CHUNK_MIN: what a merge re-chunks."""
    runs: list[tuple[int, int]] = []
    first = count = 0
    end = -1
    for e in extents + [Extent(-1, CHUNK_MIN, b"")]:     # a sentinel closes the last run
        if e.length < CHUNK_MIN and e.offset == end:
            count += 1
        else:
            if count >= MERGE_MIN_EXTENTS:
                runs.append((first, end))
            first, count = e.offset, int(e.length < CHUNK_MIN)
        end = e.end
    return runs


def wasted_partials(extents: list[Extent]) -> list[tuple[int, int]]:
    """Byte ranges of the extents of each chunk this file uses less than
    PARTIAL_MAX_TOUCHED (half) of, as far as its extents show the chunk (it is
    at least as long as the furthest skip + length into it): partial extents
    left by rewrites that keep a mostly unused chunk alive in both stores.
    Merging re-stores their bytes, and the old chunk is then reclaimed."""
    usage: dict[bytes, list[int]] = {}         # pointer -> [bytes used, known chunk length]
    for e in extents:
        u = usage.setdefault(e.pointer, [0, 0])
        u[0] += e.length
        u[1] = max(u[1], e.skip + e.length)
    wasteful = {p for p, (used, known) in usage.items() if used < known * PARTIAL_MAX_TOUCHED}
    return [(e.offset, e.end) for e in extents if e.pointer in wasteful]


def merge_ranges(extents: list[Extent]) -> list[tuple[int, int]]:
    """What a quiet merge re-chunks: `small_runs` and `wasted_partials`."""
    ranges = Intervals()
    for a, b in small_runs(extents) + wasted_partials(extents):
        ranges.add(a, b)
    return list(ranges)


def split_extents(extents: list[Extent], touched: Intervals, same: set[Extent],
                  base_limit: int) -> tuple[list[Extent], list[int]]:
    """Partial extents: the untouched parts of each extent whose touched bytes
    are at most PARTIAL_MAX_TOUCHED of it (module docstring), as extents of the
    same chunk with their own skip; and the hard stops, sorted, where chunking
    of the rewritten bytes must cut (the split extents' ends and the partial
    extents' starts), so it stores the rewritten bytes only."""
    pieces: list[Extent] = []
    stops: set[int] = set()
    for e in extents:
        if e.end > base_limit:
            break
        if e in same or not touched.overlaps(e.offset, e.end):
            continue
        parts = list(touched.split(e.offset, e.end))
        if sum(b - a for a, b, inside in parts if inside) > e.length * PARTIAL_MAX_TOUCHED:
            continue
        pieces.extend(Extent(a, b - a, e.pointer, e.skip + a - e.offset)
                      for a, b, inside in parts if not inside)
        stops.update(a for a, _b, inside in parts if not inside)
        stops.update((e.offset, e.end))
    return pieces, sorted(stops)


def no_realignment(extents: list[Extent], clean: list[Extent], split_stops: list[int]) -> list[int]:
    """Sorted hard stops of re-chunking: `split_stops` plus the starts of clean
    extents it cannot re-align with (module docstring): a clean extent shorter
    than CHUNK_MIN or partial (skip), or one after a changed extent shorter than
    CHUNK_MIN (neither boundary was cut by CDC, so a cut would land on it by
    chance only, and re-chunking would run on to the end of the file)."""
    stops = set(split_stops)
    clean_set = set(clean)
    ends = {e.end: e for e in extents}
    for e in clean:
        before = ends.get(e.offset)
        if (e.length < CHUNK_MIN or e.skip
                or (before is not None and before not in clean_set and before.length < CHUNK_MIN)):
            stops.add(e.offset)
    return sorted(stops)


@dataclass(slots=True)
class SealResult:
    """What a seal changed: the store gets `removed` deleted and `added` put."""

    size: int
    extents: list[Extent]
    removed: list[Extent]
    added: list[Extent]
    new_chunks: int
    # The dirty journal's last index when the layers were frozen: the seal covers
    # every journal record of the file up to it (journal.py).
    covered: int = -1


class Sealer(ChunkReader):
    """Reads frozen layers over their extents and stores what changed as chunks
    (blocking; called from a worker thread). Chunks it stores go into the read
    cache too. `chunking_seed` (`Codec.chunking_seed()`) keys the cut points;
    None chunks unkeyed."""

    def __init__(self, blobs, chunking_seed: int | None = None,
                 cache_bytes: int = CHUNK_CACHE_BYTES):
        super().__init__(blobs, cache_bytes)
        self._chunking_seed = chunking_seed
        self._pool = concurrent.futures.ThreadPoolExecutor(PUT_WORKERS, thread_name_prefix="vfs-put")
        self._cdc = threading.local()
        self.bytes_sealed = 0      # content bytes read to be chunked (counter for tests/metrics)
        self.extents_merged = 0    # small extents re-chunked by merges (counter for tests/metrics)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        super().close()

    def seal_small_layers(self, frozen) -> list[SealResult]:
        """Seal (file, extents, layers) triples of files of at most one chunk
        with one `put_many`."""
        contents = []
        for _, extents, layers in frozen:
            size = layers[-1].size
            data = self._read_sync(extents, layers, 0, size) if size else b""
            self.bytes_sealed += len(data)
            contents.append(None if not data or data == bytes(len(data)) else data)
        pointers = iter(self._put_many([c for c in contents if c is not None]))
        self._barrier()
        results = []
        for (_, extents, layers), data in zip(frozen, contents):
            new = [] if data is None else [Extent(0, len(data), next(pointers).bytes)]
            if data is not None:
                self.cache.put(new[0].pointer, data)
            old = set(extents)
            results.append(SealResult(layers[-1].size, new, [e for e in extents if e not in set(new)],
                                      [e for e in new if e not in old],
                                      len({e.pointer for e in new} - {e.pointer for e in extents})))
        return results

    def seal_layers(self, extents: list[Extent], layers: list[Layer], size: int,
                    merge_small: bool = False) -> SealResult:
        """Re-chunk what `layers` changed over `extents` (a file of `size` bytes);
        with `merge_small` the runs of small extents and the partial extents of
        mostly unused chunks (`merge_ranges`) too. The chunks are durable when
        this returns."""
        # Where base content is still visible: below every truncation point.
        tmin = min((l.trunc for l in layers if l.trunc is not None), default=None)
        visible = Intervals()
        base_limit = size if tmin is None else min(tmin, size)
        for e in extents:
            if e.offset >= base_limit:
                break
            visible.add(e.offset, min(e.end, base_limit))
        touched = Intervals()       # positions whose content may differ from base
        if merge_small:
            for a, b in merge_ranges(extents):
                touched.add(a, min(b, base_limit))
                self.extents_merged += sum(1 for e in extents if a <= e.offset < b)
        for i, layer in enumerate(layers):
            limit = min((l.trunc for l in layers[i + 1:] if l.trunc is not None), default=size)
            for a, b in layer.dirty:
                b = min(b, limit, size)
                if a < b:
                    visible.add(a, b)
                    touched.add(a, b)
        same = self._unchanged_tails(extents, layers, touched, base_limit)
        clean = [e for e in extents
                 if e.end <= base_limit and (e in same or not touched.overlaps(e.offset, e.end))]
        clean_ends = {e.end: e for e in clean}
        partial, split_stops = split_extents(extents, touched, same, base_limit)
        hard_stops = no_realignment(extents, clean, split_stops)
        clean = sorted(clean + partial, key=lambda e: e.offset)
        clean_starts = {e.offset: e for e in clean}
        base_starts = {e.offset for e in extents}
        dropped: set[Extent] = set()
        rechunked = Intervals()     # ranges the new chunks cover
        futures: list[tuple[int, int, concurrent.futures.Future]] = []
        cdc = self._chunker()

        def read(a, b):
            self.bytes_sealed += b - a
            return self._read_sync(extents, layers, a, b)

        for ra, rb in visible:
            pos = ra
            while pos < rb:
                ext = clean_starts.get(pos)
                if ext is not None:         # untouched chunk: keep it
                    pos = ext.end
                    continue
                start = pos
                # A last chunk was cut by end-of-data, not by content: a big
                # append re-chunks it with the new bytes (module docstring).
                prev = clean_ends.get(start)
                if (prev is not None and start not in base_starts and prev.offset >= ra
                        and rb - start >= max(CHUNK_MIN, prev.length // 2)):
                    dropped.add(prev)
                    start = prev.offset
                i = bisect.bisect_right(hard_stops, pos)
                stop = min(rb, hard_stops[i]) if i < len(hard_stops) else rb
                pos = self._rechunk(cdc, read, start, stop, clean_starts, futures)
                rechunked.add(start, pos)
        added: list[Extent] = []
        for off, length, fut in futures:
            ptr = fut.result()
            if ptr is not None:             # all-zero chunks become holes
                added.append(Extent(off, length, ptr))
        self._barrier()                     # chunks durable before the caller persists
        old_set = set(extents)
        # Re-chunking stops early only where a cut lands on a clean extent's
        # start; a clean extent it ran over is replaced by the new chunks.
        kept = [e for e in clean if e not in dropped and not rechunked.overlaps(e.offset, e.end)]
        result_exts = sorted(kept + added, key=lambda e: e.offset)
        result_set = set(result_exts)
        removed = [e for e in extents if e not in result_set]
        added = [e for e in result_exts if e not in old_set]     # partial extents too
        old_ptrs = {e.pointer for e in extents}
        new_chunks = len({e.pointer for e in added} - old_ptrs)
        return SealResult(size, result_exts, removed, added, new_chunks)

    def _unchanged_tails(self, extents: list[Extent], layers: list[Layer], touched: Intervals,
                         base_limit: int) -> set[Extent]:
        """Extents whose only touched bytes are a tail of at most TAIL_COMPARE
        bytes that the layers hold unchanged (see the module docstring). The
        extent was sealed recently, so its chunk is usually in the read cache."""
        same: set[Extent] = set()
        for a, b in touched:
            i = extent_index(extents, a)
            if i == len(extents):
                break
            e = extents[i]
            if (e.offset < a < e.end <= min(b, base_limit) and e.end - a <= TAIL_COMPARE
                    and not touched.overlaps(e.offset, a)
                    and self._read_sync(extents, layers, a, e.end)
                    == self._read_sync(extents, [], a, e.end)):
                same.add(e)
        return same

    def _chunker(self) -> Chunker:
        cdc = getattr(self._cdc, "cdc", None)
        if cdc is None:
            cdc = self._cdc.cdc = Chunker(CHUNK_AVG, CHUNK_MIN, CHUNK_MAX, self._chunking_seed)
        return cdc

    def _rechunk(self, cdc, read, start: int, stop: int, clean_starts: dict, futures: list) -> int:
        """Chunk [start, ...) until a cut re-aligns with a clean extent or `stop`.

        Returns the position where chunking stopped.
        """
        pos = start
        pending: list[concurrent.futures.Future] = []
        while pos < stop:
            wend = min(stop, pos + CDC_WINDOW)
            buf = read(pos, wend)
            chunks = cdc.cuts(buf)
            if wend < stop and len(chunks) > 1:
                chunks.pop()          # the last cut was forced by the window end
            for offset, length in chunks:
                data = buf[offset:offset + length]
                off = pos + offset
                fut = self._pool.submit(self._store_chunk, data)
                futures.append((off, length, fut))
                pending.append(fut)
                end = off + length
                if end in clean_starts:
                    return end
            pos = pos + chunks[-1][0] + chunks[-1][1]
            del buf       # its chunks are copies: not kept while the next window is read
            # Bound memory (about two windows of chunks in flight) without draining
            # the queue: the put workers keep working while the next window is read.
            pending = [fu for fu in pending if not fu.done()]
            if len(pending) > PUTS_IN_FLIGHT:
                concurrent.futures.wait(pending[:len(pending) - PUTS_IN_FLIGHT // 2])
        return stop

    def _store_chunk(self, data: bytes) -> bytes | None:
        """Store one chunk; its pointer bytes, or None for an all-zero chunk."""
        if (data[:1] == b"\0" and data[-1:] == b"\0") and data == bytes(len(data)):
            return None
        put = getattr(self.blobs, "put_deferred", None) or self.blobs.put
        raw = put(data).bytes
        self.cache.put(raw, data)
        return raw

    # Chunks are stored without waiting for them to be durable; one barrier per
    # seal (a batch of fsyncs side by side) makes them durable before the seal
    # returns, so the metadata that refers to them is written after they are safe.
    def _put_many(self, contents: list[bytes]) -> list:
        put = getattr(self.blobs, "put_many_deferred", None) or self.blobs.put_many
        return put(contents)

    def _barrier(self) -> None:
        barrier = getattr(self.blobs, "barrier", None)
        if barrier is not None:
            barrier()
