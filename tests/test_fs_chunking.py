"""Keyed content-defined chunking (versionfs.fs.chunking): cut points depend on
the key, stay stable under one key (dedup, re-alignment after an insert) and
honour the size bounds."""

import random

import trio

from versionfs.blob.blobstore import BlobStore
from versionfs.blob.codec import Codec
from versionfs.blob.disk import DiskStore
from versionfs.blob.keys import new_master_key
from versionfs.fs.chunking import Chunker
from versionfs.fs.data import DataManager
from versionfs.fs.layers import FileData

AVG, MIN, MAX = 64 << 10, 16 << 10, 256 << 10
DATA = random.Random(7).randbytes(4 << 20)


def _cuts(seed, data=DATA):
    return Chunker(AVG, MIN, MAX, seed).cuts(data)


def test_cuts_cover_the_buffer_within_the_size_bounds():
    for seed in (None, 1, 2**255 + 12345):
        cuts = _cuts(seed)
        assert cuts[0][0] == 0 and sum(n for _, n in cuts) == len(DATA)
        assert all(a + n == b for (a, n), (b, _) in zip(cuts, cuts[1:]))
        assert all(MIN <= n <= MAX for _, n in cuts[:-1])


def test_keyed_cuts_differ_from_unkeyed_and_between_keys_but_repeat_under_one_key():
    unkeyed, one, two = _cuts(None), _cuts(2**200 + 1), _cuts(2**200 + 2)
    assert one == _cuts(2**200 + 1)
    lengths = [{n for _, n in c} for c in (unkeyed, one, two)]
    assert len(lengths[0] & lengths[1]) <= 2 and len(lengths[1] & lengths[2]) <= 2


def test_keyed_cuts_realign_after_an_insert():
    seed = 987654321 << 100
    before = _cuts(seed)
    after = _cuts(seed, b"x" + DATA)
    ends_before = {a + n for a, n in before}
    ends_after = {a + n - 1 for a, n in after}
    # All but the first chunk or two come out the same.
    assert len(ends_before & ends_after) >= len(before) - 2


def test_an_encrypted_data_path_seals_keyed_chunks_and_an_insert_stores_few_new_ones(tmp_path):
    codec = Codec(new_master_key())
    dm = DataManager(BlobStore(DiskStore(tmp_path / "blobs"), codec), str(tmp_path / "dirty"),
                     chunking_seed=codec.chunking_seed())
    data = random.Random(3).randbytes(12 << 20)

    async def run():
        f = FileData(1, [], 0)
        dm.write(f, 0, data)
        await dm.seal(f, lambda f, r: None)
        keyed = [e.length for e in f.extents]
        assert sum(keyed) == len(data) and len(keyed) >= 5
        unkeyed = [n for _, n in Chunker(1 << 20, 256 << 10, 4 << 20).cuts(data)]
        assert keyed != unkeyed
        dm.write(f, 0, b"y")                       # overwrite one byte at the start
        stored = []
        await dm.seal(f, lambda f, r: stored.append(r.new_chunks))
        assert stored[0] <= 2
        assert await dm.read(f, 0, len(data)) == b"y" + data[1:]

    try:
        trio.run(run)
    finally:
        dm.close()


def test_an_encrypted_file_appended_in_small_seals_is_merged_into_keyed_chunks(tmp_path):
    """Appends sealed one by one become small extents of their own; merging them
    (sealing.py, once the file is quiet) cuts the run under the key, exactly as
    one keyed write of the same bytes, and the content reads back the same."""
    from versionfs.fs.sealing import CHUNK_AVG, CHUNK_MAX, CHUNK_MIN, small_runs
    codec = Codec(new_master_key())
    dm = DataManager(BlobStore(DiskStore(tmp_path / "blobs"), codec), str(tmp_path / "dirty"),
                     chunking_seed=codec.chunking_seed())
    data = random.Random(5).randbytes(12 * 100_000)

    async def run():
        f = FileData(1, [], 0)
        for i in range(0, len(data), 100_000):
            dm.write(f, i, data[i:i + 100_000])
            await dm.seal(f, lambda f, r: None)
        assert [e.length for e in f.extents] == [100_000] * 12
        assert small_runs(f.extents) == [(0, len(data))]
        assert await dm.seal(f, lambda f, r: None, merge_small=True)
        assert dm.extents_merged == 12
        keyed = Chunker(CHUNK_AVG, CHUNK_MIN, CHUNK_MAX, codec.chunking_seed()).cuts(data)
        assert [(e.offset, e.length) for e in f.extents] == keyed
        assert keyed != Chunker(CHUNK_AVG, CHUNK_MIN, CHUNK_MAX).cuts(data)
        assert await dm.read(f, 0, len(data)) == data

    trio.run(run)
    dm.close()
