"""Issue 11, the blob layer under faults: a damaged local copy never reaches the
bucket, a blob with no good copy never counts as uploaded, and the upload
journal neither loses records nor dies with its worker.

Real parts throughout: DiskStore and DirectoryStore on tmp_path, the SeaweedFS
server of the fixtures as the bucket, a daemon mounted through the CLI, and
RLIMIT_FSIZE in a child process for writes that really come back short.
"""

import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest

from history_util import cli_fs, free_port, scrape, wait_for  # noqa: F401  (fixture)
from versionfs.blob.blobstore import BlobStore
from versionfs.blob.codec import Codec
from versionfs.blob.directory import DirectoryStore
from versionfs.blob.disk import DiskStore
from versionfs.blob.keys import new_master_key
from versionfs.blob.paired import Paired
from versionfs.blob.pointer import Pointer
from versionfs.blob.s3 import S3Store

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def open_blobs(tmp_path, slow, codec, **kw):
    pair = Paired(DiskStore(tmp_path / "fast"), slow, tmp_path / "upload.journal", **kw)
    return pair, BlobStore(pair, codec)


def chunks(n=6, size=300_000):
    return [os.urandom(size) for _ in range(n)]


@pytest.mark.s3
@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_re_put_over_damaged_fast_copies_keeps_the_bucket_copies(tmp_path, s3_url, encrypted):
    """Finding 1 as the issue reproduced it: every fast-store blob of flushed
    data cut to 0 bytes, the same content written again: the bucket's copies
    stay as they were, and the fast store gets good copies back."""
    codec = Codec(new_master_key() if encrypted else None)
    data = chunks()
    pair, blobs = open_blobs(tmp_path, S3Store(s3_url), codec)
    pointers = blobs.put_many_deferred(data)
    blobs.barrier()
    pair.flush(timeout=60)
    pair.close()
    bucket = S3Store(s3_url)
    before = {p: bucket.get(p) for p in pointers}
    for p in pointers:
        os.truncate(pair.fast.path_for(p), 0)

    pair, blobs = open_blobs(tmp_path, S3Store(s3_url), codec)
    assert blobs.put_many_deferred(data) == pointers
    blobs.barrier()
    blobs.put(data[0])                              # a durable put of one of them again
    pair.flush(timeout=60)
    for p, plain in zip(pointers, data):
        assert bucket.get(p) == before[p], "a damaged fast copy was uploaded over the bucket's"
        assert codec.decode(p, bucket.get(p)) == plain
        assert codec.decode(p, pair.fast.get(p)) == plain
    assert pair.status()["damaged_fast_copies"] == len(pointers)
    pair.close()


@pytest.mark.s3
def test_torn_cache_fill_is_refetched_on_read_and_replaced_on_re_put(tmp_path, s3_url, caplog):
    """Finding 1, cache fills: a copy fetched from the bucket (as after clone)
    is written without fsync, so a power cut may leave it short. It is verified
    on use: a read refetches it (WARNING, counted), a re-put replaces it, and
    the bucket's copy is never overwritten."""
    codec = Codec(new_master_key())
    data = chunks(3)
    writer, blobs = open_blobs(tmp_path / "writer", S3Store(s3_url), codec)
    pointers = blobs.put_many(data)
    writer.flush(timeout=60)
    writer.close()
    bucket = S3Store(s3_url)
    before = {p: bucket.get(p) for p in pointers}

    clone, blobs = open_blobs(tmp_path / "clone", S3Store(s3_url), codec)
    assert [blobs.get(p) for p in pointers] == data          # cache fills
    for p in pointers:
        path = clone.fast.path_for(p)
        os.truncate(path, os.path.getsize(path) // 2)       # what a power cut leaves
    with caplog.at_level(logging.WARNING, logger="versionfs.blob"):
        assert blobs.get(pointers[0]) == data[0]
    assert any(pointers[0].hex() in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records)
    assert codec.decode(pointers[0], clone.fast.get(pointers[0])) == data[0]
    assert blobs.put_many(data) == pointers
    clone.flush(timeout=60)
    for p, plain in zip(pointers, data):
        assert bucket.get(p) == before[p]
        assert codec.decode(p, clone.fast.get(p)) == plain
    assert clone.status()["damaged_fast_copies"] == len(pointers)
    clone.close()


@pytest.mark.parametrize("damage", ["corrupt", "missing"])
def test_blob_without_a_good_copy_stays_pending_and_is_reported(tmp_path, caplog, damage):
    """Findings 1 and 6: a journaled blob whose fast copy is damaged or gone,
    and that the slow store lacks, is neither uploaded nor marked done: it stays
    pending (also across a reopen), with an ERROR, ``last_error`` and a count,
    until the same content is written again."""
    codec = Codec(None)
    slow = DirectoryStore(tmp_path / "slow")
    pair, blobs = open_blobs(tmp_path, slow, codec, retry_max_wait=0.2)
    plain = os.urandom(50_000)
    p = blobs.put(plain)
    path = pair.fast.path_for(p)
    if damage == "missing":
        os.unlink(path)
    else:
        with open(path, "r+b") as f:
            f.seek(1000)
            f.write(b"\xff" * 8)
    with caplog.at_level(logging.ERROR, logger="versionfs.blob"):
        pair.start()
        wait_for(lambda: slow.contains(p) or not pair.is_pending(p)
                 or pair.status().get("unuploadable"), 30, "the upload worker")
        assert not slow.contains(p), "a damaged copy was uploaded"
        assert pair.is_pending(p), "a blob that exists nowhere was marked done"
        st = pair.status()
        assert st["unuploadable"] == 1 and p.hex() in st["last_error"]
        assert any(p.hex() in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    pair.close()

    pair, blobs = open_blobs(tmp_path, slow, codec, retry_max_wait=0.2)
    assert pair.is_pending(p)
    assert blobs.put(plain) == p                    # the same content again repairs it
    pair.flush(timeout=30)
    assert codec.decode(p, slow.get(p)) == plain
    assert pair.status()["unuploadable"] == 0
    pair.close()


SHORT_WRITE = textwrap.dedent("""
    import json, resource, signal, sys
    sys.path.insert(0, {root!r})
    from versionfs.blob.journal import RECORD_SIZE, UploadJournal
    from versionfs.blob.pointer import Pointer
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)      # EFBIG instead of a signal
    path = sys.argv[1]
    keys = [Pointer.random() for _ in range(4)]
    journal = UploadJournal(path)
    journal.replay()
    journal.add([(keys[0], 1), (keys[1], 2)])
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (2 * RECORD_SIZE + 20, hard))
    acked, refused = keys[:2], []
    try:
        journal.add([(keys[2], 3)])                    # only 20 of its bytes fit
        acked.append(keys[2])
    except OSError as exc:
        refused.append(exc.errno)
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    journal.add([(keys[3], 4)])
    acked.append(keys[3])
    journal.close()
    journal = UploadJournal(path)
    pending = journal.replay()
    print(json.dumps({{"acked": [k.hex() for k in acked], "refused": refused,
                      "pending": [k.hex() for k in pending], "damaged": journal.damaged}}))
""")


def test_journal_short_write_is_completed_or_refused_never_half_kept(tmp_path):
    """Finding 6: os.write may write part of a record (here RLIMIT_FSIZE cuts it
    for real). An add that returned is replayed, one that failed leaves no torn
    record behind that would misalign every record after it."""
    script = tmp_path / "short.py"
    script.write_text(SHORT_WRITE.format(root=ROOT))
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "journal")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert set(result["acked"]) <= set(result["pending"]), result
    assert result["damaged"] == 0, result
    assert result["refused"], "a record that did not fit was reported as written"


JOURNAL_FAULT = textwrap.dedent("""
    import json, logging, os, resource, signal, sys, time
    sys.path.insert(0, {root!r})
    logging.basicConfig(format="%(levelname)s %(name)s %(message)s")
    from versionfs.blob.directory import DirectoryStore
    from versionfs.blob.disk import DiskStore
    from versionfs.blob.journal import RECORD_SIZE
    from versionfs.blob.paired import Paired
    from versionfs.blob.pointer import Pointer
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    base = sys.argv[1]
    pair = Paired(DiskStore(base + "/fast"), DirectoryStore(base + "/slow"),
                  base + "/upload.journal", upload_threads=1, retry_max_wait=0.2)
    items = [(Pointer.random(), os.urandom(40)) for _ in range(3)]
    pair.put_many(items)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    # 40-byte blobs still fit; the journal (3 records) cannot grow by one more.
    resource.setrlimit(resource.RLIMIT_FSIZE, (3 * RECORD_SIZE, hard))
    pair.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not pair.status()["last_error"]:
        time.sleep(0.05)
    during = pair.status()
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    late = (Pointer.random(), os.urandom(40))
    pair.put(*late)
    try:
        pair.flush(timeout=20)
        flushed = True
    except TimeoutError:
        flushed = False
    slow = DirectoryStore(base + "/slow")
    print(json.dumps({{"during": during, "flushed": flushed,
                      "uploaded": all(slow.contains(k) for k, _ in items + [late])}}))
    os._exit(0)
""")


def test_journal_error_in_the_upload_worker_is_reported_and_survived(tmp_path):
    """Finding 4 (uploads): a journal write failing in the upload worker used to
    end the thread with nothing in ``status``; now it is an ERROR, ``last_error``
    and a count, and the worker goes on uploading."""
    script = tmp_path / "fault.py"
    script.write_text(JOURNAL_FAULT.format(root=ROOT))
    out = subprocess.run([sys.executable, str(script), str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    during = result["during"]
    assert during["last_error"] and "journal" in during["last_error"], result
    assert during["upload_errors"] >= 1, result
    assert "ERROR" in out.stderr and "journal" in out.stderr
    assert result["flushed"] and result["uploaded"], result


def slow_blobs(state) -> dict[str, bytes]:
    found = {}
    for dirpath, _, files in os.walk(state / "slow" / "blobs"):
        for name in files:
            if len(name) == 64:
                found[name] = open(os.path.join(dirpath, name), "rb").read()
    return found


@pytest.mark.fuse
def test_mount_rewriting_a_file_over_zeroed_fast_blobs_keeps_the_bucket(cli_fs):
    """Finding 1 through a daemon mounted with the CLI: a 5 MB file flushed,
    its fast-store blobs cut to 0 bytes while unmounted, the same content
    written again: no blob in the slow store changes, and the damage is counted
    in the Prometheus metrics."""
    port = free_port()
    fs = cli_fs.init(metrics__listen=f"127.0.0.1:{port}").mount()
    data = os.urandom(5 << 20)
    with open(fs.path("big"), "wb") as f:
        f.write(data)
        os.fsync(f.fileno())
    fs.cli("flush", fs.mnt)
    fs.umount()
    before = slow_blobs(fs.state)
    cut = 0
    for dirpath, _, files in os.walk(fs.state / "fast"):
        for name in files:
            if name in before:
                os.truncate(os.path.join(dirpath, name), 0)
                cut += 1
    assert cut == len(before) >= 2
    fs.mount()
    with open(fs.path("big"), "wb") as f:
        f.write(data)
        os.fsync(f.fileno())
    fs.cli("flush", fs.mnt)
    metrics = scrape(port)
    fs.umount()
    after = slow_blobs(fs.state)
    changed = [name for name in before if after.get(name) != before[name]]
    assert not changed, f"{len(changed)} of {len(before)} bucket blobs changed"
    assert metrics["versionfs_damaged_fast_copies_total"] >= cut
    codec = Codec(None)
    fast = DiskStore(fs.state / "fast")
    for name in before:
        codec.decode(Pointer.from_hex(name), fast.get(Pointer.from_hex(name)))
