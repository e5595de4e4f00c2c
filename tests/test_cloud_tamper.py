"""Tampering with an encrypted bucket on the real SeaweedFS (issue 12), as whoever
can read, replace, delete and replay any object: blobs, checkpoints, WAL
objects, the head, the lease and ``versionfs.toml``.  Every change is an error
naming the object, and nothing wrong reaches a reader: a restore either
gives the published metadata exactly or fails (and leaves nothing behind).

What is already covered elsewhere: blob tampering at the codec
(test_blob_pointer_codec), a replayed head (test_cloud_faults, finding 7), a
torn head (test_cloud_publish)."""

from __future__ import annotations

import errno
import os
import re

import msgpack
import pytest
import tomli_w
import zstandard

from cli_util import assert_user_error, ok, run_cli
from cloud_util import bucket_objects, machines  # noqa: F401  (fixture)
from test_cloud_publish import Rig, _dump, _restore

from versionfs.blob import keys
from versionfs.blob.blobstore import BlobStore
from versionfs.blob.codec import Codec
from versionfs.blob.errors import BlobError, CorruptBlobError
from versionfs.blob.s3 import S3Store
from versionfs.bucket import publish
from versionfs.bucket.lease import CorruptLeaseError, Lease, LeaseHeldError
from versionfs.common import identity as identitymod
from versionfs.meta.kv import S3KV

NAME = re.compile(r"meta/(?:heads/|wal/|checkpoints/[0-9a-f]{32}/part-)")


@pytest.fixture
def rig(tmp_path, s3_url):
    """An encrypted filesystem's metadata published twice: a checkpoint, then WAL objects."""
    r = Rig(tmp_path, S3Store(s3_url), Codec(keys.new_master_key()))
    try:
        r.write_file(b"a", b"first")
        assert r.pub.publish(timeout=60)
        for i in range(3):
            r.write_file(b"b%d" % i, b"second %d" % i)
            assert r.pub.publish(timeout=60)
        yield r
    finally:
        r.close()


def _head(rig) -> publish.HeadRecord:
    return publish.read_head(publish.bucket_kv(rig.slow.bucket), rig.codec)[1]


def _body(rig, name: str) -> bytes:
    return rig.slow.bucket.get(name)[0]


def _restore_fails(rig, where, *names: str) -> str:
    """restore_meta refuses, naming every one of ``names`` (clone then removes its
    half-built state dir: test_cloud_recovery)."""
    with pytest.raises((publish.PublishError, BlobError)) as err:
        _restore(rig, where)
    for name in names:
        assert name in str(err.value), err.value
    return str(err.value)


def _objects(rig) -> tuple[list[str], list[str]]:
    head = _head(rig)
    parts = [n for n in head.objects() if "/part-" in n]
    return parts, [w["name"] for w in head.wal]


def test_names_under_meta_are_random_and_carry_no_index(rig):
    names = list(rig.slow.bucket.list("meta/"))
    assert {publish.HEAD_KEY}.issubset(names)
    for name in names:
        if name != publish.HEAD_KEY:
            rest = NAME.sub("", name)
            assert name != rest and re.fullmatch(r"[0-9a-f]{32}|\d{6}", rest), name
    assert len(list(rig.slow.bucket.list(publish.HEAD_COPY_PREFIX))) == publish.HEAD_COPIES_KEPT


@pytest.mark.parametrize("how", ["replaced", "truncated", "deleted"])
def test_a_changed_checkpoint_part_or_wal_object_is_refused_by_name(rig, tmp_path, how):
    parts, wal = _objects(rig)
    for victim in (parts[0], wal[-1]):
        body = _body(rig, victim)
        if how == "replaced":
            rig.slow.bucket.put(victim, os.urandom(len(body)))
        elif how == "truncated":
            rig.slow.bucket.put(victim, body[:len(body) // 2])
        else:
            rig.slow.bucket.delete(victim)
        _restore_fails(rig, tmp_path / f"r-{how}-{victim[-6:]}", victim)
        rig.slow.bucket.put(victim, body)
    assert _dump(_restore(rig, tmp_path / "good")) == _dump(rig.meta)


def test_swapped_and_replayed_objects_fail_their_seal(rig, tmp_path):
    parts, wal = _objects(rig)
    a, b = wal[0], wal[1]
    body_a, body_b = _body(rig, a), _body(rig, b)
    rig.slow.bucket.put(a, body_b)                  # swapped WAL objects
    rig.slow.bucket.put(b, body_a)
    _restore_fails(rig, tmp_path / "swap", a)
    rig.slow.bucket.put(a, body_a)
    rig.slow.bucket.put(b, body_b)
    rig.slow.bucket.put(parts[0], body_a)           # a WAL object replayed as a checkpoint part
    _restore_fails(rig, tmp_path / "replay", parts[0])


def test_a_decompression_bomb_is_refused_before_memory_is_spent(rig, tmp_path):
    """Only the writer's key can seal a bomb, so this one is sealed with it: what a
    buggy or hostile writer could do.  The limit is the size the head records."""
    _parts, wal = _objects(rig)
    bomb = zstandard.ZstdCompressor().compress(b"\0" * (64 << 20))
    rig.slow.bucket.put(wal[0], rig.codec.seal(bomb, wal[0].encode()))
    msg = _restore_fails(rig, tmp_path / "bomb", wal[0])
    assert "decompression bomb" in msg


def test_wal_object_not_holding_what_the_head_names_is_refused(rig, tmp_path):
    """An object sealed with the key (a buggy writer) whose entries are not those
    the head lists: the index range inside is checked against the head."""
    _parts, wal = _objects(rig)
    head = _head(rig)
    w = head.wal[0]
    shifted = msgpack.packb([[w["first"] + 1, b"x"]])
    shifted += b"\0" * (w["bytes"] - len(shifted))          # same size as recorded
    body = zstandard.ZstdCompressor().compress(shifted[:w["bytes"]])
    rig.slow.bucket.put(wal[0], rig.codec.seal(body, wal[0].encode()))
    _restore_fails(rig, tmp_path / "shifted", wal[0])


def test_a_forged_or_replaced_head_is_refused_and_copies_do_not_roll_back(rig, tmp_path):
    kv = publish.bucket_kv(rig.slow.bucket)
    good = _head(rig)
    other = Codec(keys.new_master_key())
    forged = publish.HeadRecord(fs="fs1", writer="attacker", checkpoint=good.checkpoint,
                                wal=[], last_index=good.last_index + 100, time=good.time + 1)
    for body in (other.seal(forged.encode(), publish.HEAD_KEY.encode()),   # wrong key
                 forged.encode(),                                         # plaintext
                 _body(rig, publish.HEAD_KEY)[:20]):                      # truncated
        rig.slow.bucket.put(publish.HEAD_KEY, body)
        # The damaged head falls back to the newest sealed copy: the real head, never the forgery.
        assert publish.read_head(kv, rig.codec)[1] == good
    copies = list(rig.slow.bucket.list(publish.HEAD_COPY_PREFIX))
    rig.slow.bucket.put(publish.HEAD_KEY, _body(rig, copies[0]))   # a copy swapped in
    assert publish.read_head(kv, rig.codec)[1] == good
    for name in copies:
        rig.slow.bucket.put(name, b"junk")
    with pytest.raises(publish.PublishError, match=f"{publish.HEAD_KEY} is damaged"):
        publish.read_head(kv, rig.codec)
    rig.slow.bucket.delete(publish.HEAD_KEY)
    assert publish.read_head(kv, rig.codec) is None     # deleted: "nothing published yet"


def test_a_deleted_head_is_named_and_written_again_by_the_writer(rig, tmp_path):
    rig.slow.bucket.delete(publish.HEAD_KEY)
    for name in list(rig.slow.bucket.list("meta/")):
        rig.slow.bucket.delete(name)                     # and everything it named
    rig.write_file(b"c", b"after the deletion")
    with pytest.raises(publish.PublishError, match=f"{publish.HEAD_KEY} was deleted"):
        rig.pub.publish(timeout=60)
    assert publish.read_head(publish.bucket_kv(rig.slow.bucket), rig.codec) is None
    assert rig.pub.publish(timeout=60)
    assert _dump(_restore(rig, tmp_path / "again")) == _dump(rig.meta)


def test_blobs_replaced_swapped_truncated_or_deleted_are_never_returned(tmp_path, s3_url):
    codec = Codec(keys.new_master_key())
    slow = S3Store(s3_url)
    blobs = BlobStore(slow, codec)
    p1, p2 = blobs.put(os.urandom(3000)), blobs.put(os.urandom(5000))
    s1, s2 = slow.get(p1), slow.get(p2)
    for body in (s2, s1[:len(s1) // 2], os.urandom(len(s1))):   # swapped, truncated, replaced
        slow.put(p1, body)
        with pytest.raises(CorruptBlobError, match=p1.hex()):
            blobs.get(p1)
    slow.delete(p1)
    with pytest.raises(BlobError, match=p1.hex()):
        blobs.get(p1)
    slow.put(p1, s1)
    assert codec.decode(p1, slow.get(p1)) == blobs.get(p1)
    slow.close()


# ------------------------------------------------------------------ lease

@pytest.fixture
def lease_kv(s3_url):
    kv = S3KV(S3Store(s3_url).bucket)
    yield kv
    kv.close()


def test_the_sealed_lease_reveals_nothing_and_reads_with_the_key(lease_kv):
    codec = Codec(keys.new_master_key())
    a = Lease(lease_kv, publish.LEASE_KEY, "laptop-secrethost pid 1", 600, codec=codec)
    a.acquire()
    raw = lease_kv.get(publish.LEASE_KEY).value
    assert b"secrethost" not in raw and b"holder" not in raw
    b = Lease(lease_kv, publish.LEASE_KEY, "desktop", 600, codec=codec)
    with pytest.raises(LeaseHeldError, match=r"held by 'laptop-secrethost pid 1' until"):
        b.acquire()
    with pytest.raises(CorruptLeaseError, match="does not authenticate"):
        Lease(lease_kv, publish.LEASE_KEY, "x", 600, codec=Codec(keys.new_master_key())).read()


@pytest.mark.parametrize("forgery", ["plaintext", "other key", "truncated"])
def test_a_forged_lease_is_named_and_locks_nobody_out(lease_kv, caplog, forgery):
    codec = Codec(keys.new_master_key())
    holder = Lease(lease_kv, publish.LEASE_KEY, "laptop", 600, codec=codec)
    holder.acquire()
    record = b'{"expires": 9999999999, "generation": 99, "holder": "attacker"}'
    body = {"plaintext": record,
            "other key": Codec(keys.new_master_key()).seal(record, publish.LEASE_KEY.encode()),
            "truncated": lease_kv.get(publish.LEASE_KEY).value[:30]}[forgery]
    lease_kv.put(publish.LEASE_KEY, body)
    b = Lease(lease_kv, publish.LEASE_KEY, "desktop", 600, codec=codec)
    assert b.acquire().holder == "desktop"
    assert "meta/lease" in b.overridden and "taken over" in caplog.text
    with pytest.raises(Exception, match="lost"):
        holder.renew()                       # the displaced holder stops, visibly


def test_a_replayed_lease_older_than_what_was_seen_is_named_and_taken_over(lease_kv, caplog):
    codec = Codec(keys.new_master_key())
    clock = [1_700_000_000.0]
    a = Lease(lease_kv, publish.LEASE_KEY, "laptop", 600, lambda: clock[0], codec=codec)
    a.acquire()
    old = lease_kv.get(publish.LEASE_KEY).value            # the attacker keeps a copy
    a.release()
    b = Lease(lease_kv, publish.LEASE_KEY, "desktop", 600, lambda: clock[0], codec=codec)
    assert b.acquire().generation == 2
    b.release()
    lease_kv.put(publish.LEASE_KEY, old)                    # replayed, still unexpired
    c = Lease(lease_kv, publish.LEASE_KEY, "desktop", 600, lambda: clock[0], codec=codec,
              floor=lambda: 2)
    assert c.acquire().generation == 3
    assert "replayed old record (generation 1" in c.overridden and "replayed" in caplog.text
    # A machine that has seen nothing newer is told who and until when; the replay
    # can hold it off no longer than the expiry its holder once wrote.
    lease_kv.put(publish.LEASE_KEY, old)
    fresh = Lease(lease_kv, publish.LEASE_KEY, "server", 600, lambda: clock[0], codec=codec)
    with pytest.raises(LeaseHeldError, match="laptop.*until"):
        fresh.acquire()
    clock[0] += 601
    assert fresh.acquire().holder == "server"


# ------------------------------------------------------------ versionfs.toml

def test_versionfs_toml_keeps_only_what_a_new_machine_needs_in_the_clear(tmp_path, s3_url):
    pw = tmp_path / "pw"
    pw.write_text("a long enough passphrase\n")
    ok(run_cli("init", tmp_path / "a", "--slow", s3_url, "--encrypt", "--passphrase-file", pw))
    slow = S3Store(s3_url)
    try:
        raw = slow.bucket.get(identitymod.FILESYSTEM_OBJECT)[0]
        public = identitymod.parse(raw, s3_url)
        assert set(public) == set(identitymod.PUBLIC_FIELDS) | {"sealed"}
        assert b"created" not in raw
        tampered = {**public, "cipher": "chacha20-poly1305" if public["cipher"] == "aes-256-gcm"
                    else "aes-256-gcm"}
        cases = {
            "tampered with: its cipher": tampered,
            "tampered with: its id": {**public, "id": "0" * 32},
            "no sealed copy": {k: v for k, v in public.items() if k != "sealed"},
            "does not authenticate": {**public, "sealed": public["sealed"][:40]},
        }
        for n, (message, doc) in enumerate(cases.items()):
            slow.bucket.put(identitymod.FILESYSTEM_OBJECT, tomli_w.dumps(doc).encode())
            r = run_cli("clone", s3_url, tmp_path / f"b{n}", "--passphrase-file", pw)
            assert r.returncode != 0 and identitymod.FILESYSTEM_OBJECT in r.stderr, r.stderr
            assert message in r.stderr, r.stderr
            assert not (tmp_path / f"b{n}").exists()
        slow.bucket.delete(identitymod.FILESYSTEM_OBJECT)
        r = run_cli("clone", s3_url, tmp_path / "gone", "--passphrase-file", pw)
        assert r.returncode != 0 and "no versionfs.toml" in r.stderr, r.stderr
        slow.bucket.put(identitymod.FILESYSTEM_OBJECT, raw)
        r = run_cli("clone", s3_url, tmp_path / "good", "--passphrase-file", pw)
        assert "no published metadata yet" in r.stderr, r.stderr    # past the identity check
    finally:
        slow.close()


# ------------------------------------------------------------ through mounts

def test_mounts_name_a_forged_lease_and_identity_and_readers_never_get_wrong_data(
        machines, s3_server, s3_bucket, s3_url, tmp_path):
    """A read-write mount takes over a forged lease and writes back a tampered
    versionfs.toml, each an ERROR naming the object; a clone whose blobs were
    swapped around lists its files but reads none of them (EIO), never other data."""
    pw = tmp_path / "pw"
    pw.write_text("a long enough passphrase\n")
    client = s3_server.client()
    a = machines("laptop")
    ok(run_cli("init", a.state, "--slow", s3_url, "--encrypt", "--passphrase-file", pw))
    a.mount_ok("--passphrase-file", pw)
    for i in range(3):
        (a.mnt / f"file{i}.bin").write_bytes(os.urandom(200_000))
    a.ctl("flush")
    a.umount()
    # keys/master opens only with the passphrase: a replaced one is told from a
    # passphrase changed elsewhere only by the error, which names both.
    master = client.get_object(Bucket=s3_bucket, Key="vfs/keys/master")["Body"].read()
    client.put_object(Bucket=s3_bucket, Key="vfs/keys/master",
                      Body=keys.wrap_key(keys.new_master_key(), "the attacker's passphrase"))
    assert_user_error(a.mount("--passphrase-file", pw), "keys/master was replaced")
    client.put_object(Bucket=s3_bucket, Key="vfs/keys/master", Body=master)
    client.put_object(Bucket=s3_bucket, Key="vfs/meta/lease",
                      Body=b'{"expires": 9999999999, "generation": 99, "holder": "attacker"}')
    ident = client.get_object(Bucket=s3_bucket, Key="vfs/versionfs.toml")["Body"].read()
    public = identitymod.parse(ident, s3_url)
    client.put_object(Bucket=s3_bucket, Key="vfs/versionfs.toml",
                      Body=tomli_w.dumps({**public, "id": "0" * 32}).encode())
    a.mount_ok("--passphrase-file", pw)
    a.umount()
    log = (a.state / "versionfs.log").read_text()
    assert re.search(r"ERROR .*lease 'meta/lease' does not authenticate.*taken over", log), log
    assert re.search(r"ERROR .*versionfs.toml was tampered with: its id.*written back", log), log
    # Every blob replaced by another one's body (swapped around).
    blobs = sorted(k for k in bucket_objects(s3_server, s3_bucket) if "/blobs/" in k)
    assert len(blobs) >= 3
    bodies = [client.get_object(Bucket=s3_bucket, Key=k)["Body"].read() for k in blobs]
    for key, body in zip(blobs, bodies[1:] + bodies[:1]):
        client.put_object(Bucket=s3_bucket, Key=key, Body=body)
    b = machines("desktop")
    ok(run_cli("clone", s3_url, b.state, "--passphrase-file", pw))     # identity written back
    b.mount_ok("--passphrase-file", pw)
    assert sorted(p.name for p in b.mnt.iterdir() if p.name != ".versionfs") == \
        [f"file{i}.bin" for i in range(3)]
    for i in range(3):
        with pytest.raises(OSError) as err:
            (b.mnt / f"file{i}.bin").read_bytes()
        assert err.value.errno == errno.EIO
    b.umount()
