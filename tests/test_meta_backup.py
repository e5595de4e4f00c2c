"""The framed backup stream shared by the record store and MVCC checkpoints (versionfs.meta.backup)."""

from __future__ import annotations

import io
import shutil

import pytest

from versionfs.meta.backup import (MAGIC, BackupCorruptError, BackupError,
                                   BackupFormatError, BackupReader,
                                   BackupTruncatedError, BackupWriter,
                                   framed_copy, validate_stream,
                                   verified_stream)


def backup(payloads, kind="test", meta=None) -> bytes:
    buf = io.BytesIO()
    with BackupWriter(buf, kind, meta) as w:
        for p in payloads:
            w.write(p)
    return buf.getvalue()


def test_round_trip_meta_and_items():
    buf = io.BytesIO()
    with BackupWriter(buf, "mvcc", {"rev": 7}) as w:
        w.write_item({"k": b"\x00bin", "n": 1})
        w.write(b"")
        w.write(b"raw")
    reader = BackupReader(io.BytesIO(buf.getvalue()), kind="mvcc")
    assert reader.meta == {"kind": "mvcc", "rev": 7}
    items = list(reader)
    assert len(items) == 3 and items[1:] == [b"", b"raw"]
    info = reader.info()
    assert info.count == 3 and info.size == len(buf.getvalue())
    items = BackupReader(io.BytesIO(buf.getvalue())).items()
    assert next(items) == {"k": b"\x00bin", "n": 1}
    with pytest.raises(BackupCorruptError, match="frame 1 is not valid msgpack"):
        next(items)  # b"" was written raw, not with write_item


def test_empty_backup_is_valid_and_deterministic():
    assert validate_stream(io.BytesIO(backup([]))).count == 0
    assert backup([b"a", b"b"]) == backup([b"a", b"b"])


def test_reordered_dropped_and_spliced_frames_are_caught_by_the_chain():
    a = backup([b"AAAA", b"BBBB"])
    header_end = len(a) - 2 * (1 + 4 + 4 + 4) - (1 + 8 + 4 + 4)
    frames = a[header_end:header_end + 26]
    swapped = a[:header_end] + frames[13:] + frames[:13] + a[header_end + 26:]
    with pytest.raises(BackupCorruptError, match="chain"):
        validate_stream(io.BytesIO(swapped))
    other = backup([b"CCCC", b"BBBB"], kind="test", meta={"other": 1})
    other_first = other[len(other) - len(a) + header_end:][:13]
    spliced = a[:header_end] + other_first + frames[13:] + a[header_end + 26:]
    with pytest.raises(BackupCorruptError, match="chain"):
        validate_stream(io.BytesIO(spliced))


def test_an_interrupted_writer_leaves_a_detectably_incomplete_backup():
    buf = io.BytesIO()
    with pytest.raises(RuntimeError):
        with BackupWriter(buf, "test") as w:
            w.write(b"one")
            raise RuntimeError("disk went away")
    with pytest.raises(BackupTruncatedError, match="1 frames read"):
        validate_stream(io.BytesIO(buf.getvalue()))


def test_format_errors():
    with pytest.raises(BackupFormatError, match="not a versionfs backup"):
        validate_stream(io.BytesIO(b"PK\x03\x04" + b"\x00" * 40))
    data = bytearray(backup([b"x"]))
    data[len(MAGIC) + 1] = 9  # format version 9
    with pytest.raises(BackupFormatError, match="version 9"):
        validate_stream(io.BytesIO(bytes(data)))
    with pytest.raises(BackupFormatError, match="expected 'records'"):
        BackupReader(io.BytesIO(backup([])), kind="records")
    with pytest.raises(BackupTruncatedError):
        validate_stream(io.BytesIO(b""))


def test_oversized_frame_length_is_refused_without_allocating():
    data = backup([b"x" * 100])
    with pytest.raises(BackupCorruptError, match="over the 10-byte limit"):
        validate_stream(io.BytesIO(data), max_payload=10)


def test_short_reads_from_a_pipe_like_stream_are_fine():
    class Trickle(io.RawIOBase):
        def __init__(self, data):
            self.data, self.pos = data, 0

        def readable(self):
            return True

        def read(self, n=-1):
            chunk = self.data[self.pos:self.pos + min(n, 3)]
            self.pos += len(chunk)
            return chunk

    data = backup([b"a" * 50, b"b" * 7])
    assert validate_stream(Trickle(data)).count == 2


def test_write_after_finish_is_an_error():
    w = BackupWriter(io.BytesIO(), "t")
    w.finish()
    with pytest.raises(BackupError, match="finished"):
        w.write(b"x")


def _lmdb_with(path, n):
    import lmdb
    env = lmdb.open(str(path), max_dbs=2)
    with env.begin(write=True) as txn:
        for i in range(n):
            txn.put(b"key%06d" % i, b"value-%d" % i * 10)
    return env


def test_opaque_stream_framed_and_read_back_verified(tmp_path):
    """An LMDB compact copy (what Backend.backup_to writes) through the framing."""
    env = _lmdb_with(tmp_path / "src", 3000)
    copy_path = tmp_path / "copy.mdb"
    with open(copy_path, "wb") as f:
        env.copyfd(f.fileno(), compact=True)
    env.close()
    original = copy_path.read_bytes()
    out = io.BytesIO()
    with BackupWriter(out, "versionfs.mvcc", {"applied_index": 42}) as w:
        sink = framed_copy(w, frame_size=64 << 10)
        sink.write(original)  # never flushed or closed by the producer
    info = validate_stream(io.BytesIO(out.getvalue()), kind="versionfs.mvcc")
    assert info.count == -(-len(original) // (64 << 10)) and info.meta["applied_index"] == 42
    back = verified_stream(BackupReader(io.BytesIO(out.getvalue()), "versionfs.mvcc"))
    restored = b"".join(iter(lambda: back.read(10_000), b""))
    assert restored == original
    damaged = bytearray(out.getvalue())
    damaged[len(damaged) // 2] ^= 1
    bad = verified_stream(BackupReader(io.BytesIO(bytes(damaged))))
    with pytest.raises(BackupCorruptError):
        while bad.read(1 << 20):
            pass
    truncated = verified_stream(BackupReader(io.BytesIO(out.getvalue()[:-3])))
    with pytest.raises(BackupTruncatedError):
        shutil.copyfileobj(truncated, io.BytesIO())


def test_backend_checkpoint_through_the_framing(tmp_path):
    """The MVCC backend's own compact copy, framed, validated and restored."""
    from versionfs.meta.backend.backend import Backend

    src = Backend(str(tmp_path / "a"), buckets=(b"kv",))
    with src.batch_tx() as tx:
        for i in range(2000):
            tx.put(b"kv", b"k%05d" % i, b"v%d" % i)
    src.commit()
    out = io.BytesIO()
    with BackupWriter(out, "versionfs.mvcc", {"applied_index": src.applied_index}) as w:
        src.backup_to(framed_copy(w))
    expected = src.hash()
    src.close()
    assert validate_stream(io.BytesIO(out.getvalue()), "versionfs.mvcc").count >= 1
    with pytest.raises(BackupTruncatedError):
        Backend.restore(verified_stream(BackupReader(io.BytesIO(out.getvalue()[:-1]))),
                        str(tmp_path / "bad"))
    assert not (tmp_path / "bad" / "data.mdb").exists()
    Backend.restore(verified_stream(BackupReader(io.BytesIO(out.getvalue()), "versionfs.mvcc")),
                    str(tmp_path / "b"))
    dst = Backend(str(tmp_path / "b"), buckets=(b"kv",))
    try:
        assert dst.hash() == expected
        with dst.read_snapshot() as snap:
            assert snap.get(b"kv", b"k01999") == b"v1999"
    finally:
        dst.close()
