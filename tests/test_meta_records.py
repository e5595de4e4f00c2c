"""Typed records with secondary indexes, validate/reindex and backup/restore (versionfs.meta.records)."""

from __future__ import annotations

import io
import threading

import lmdb
import pytest

from versionfs.meta.backup import (BackupCorruptError, BackupError,
                                   BackupFormatError, BackupTruncatedError,
                                   BackupWriter)
from versionfs.meta.records import backup as record_backup
from versionfs.meta.records import encoding as record_encoding
from versionfs.meta.records import types as record_types
from versionfs.meta.records.backup import validate_backup
from versionfs.meta.records.db import RecordDB
from versionfs.meta.records.errors import (KeyConflictError, NotPristineError,
                                           RecordNotFoundError, RecordStoreFullError,
                                           UnknownTypeError)
from versionfs.meta.records.types import Type, TypeKey, register_type

USER = Type("user", [TypeKey("email", ["email"], unique=True),
                     TypeKey("team", ["team"]),
                     TypeKey("home", ["host", "path"], unique=True),
                     TypeKey("uid", ["owner.uid"])], version=1)


@pytest.fixture(autouse=True)
def clean_registry():
    saved = dict(record_types._registry)
    register_type(USER)
    yield
    record_types._registry.clear()
    record_types._registry.update(saved)


@pytest.fixture
def db(tmp_path):
    with RecordDB(tmp_path / "db") as store:
        yield store


def user(email, team="core", host="a", path=None, uid=1000, **extra):
    return {"email": email, "team": team, "host": host, "path": path or f"/home/{email}",
            "owner": {"uid": uid}, **extra}


def ids(found):
    return sorted(r.id for r in found)


def test_set_get_raw_has_delete(db):
    db.set(b"u1", user("ann@x"), type="user")
    db.set("note", [1, 2, {"b": 1, "a": 2}])  # untyped, str id
    assert db.get(b"u1")["email"] == "ann@x"
    assert db.get_record(b"u1").type == "user"
    assert db.get_raw(b"note") == b'[1,2,{"a":2,"b":1}]'  # canonical JSON
    assert db.has(b"note") and len(db) == 2
    assert db.delete(b"note") is True and db.delete(b"note") is False
    with pytest.raises(RecordNotFoundError, match="note"):
        db.get(b"note")
    with pytest.raises(UnknownTypeError, match="nobody"):
        db.set(b"x", {}, type="nobody")
    with pytest.raises(TypeError, match="JSON"):
        db.set(b"x", {"s": {1, 2}})
    with pytest.raises(ValueError, match="empty"):
        db.set(b"", {})
    assert db.validate() == []


def test_search_by_unique_composite_nested_and_type(db):
    db.set(b"u1", user("ann@x", team="core", uid=1), type="user")
    db.set(b"u2", user("bob@x", team="core", uid=2), type="user")
    db.set(b"u3", user("cy@x", team="web", uid=2), type="user")
    assert ids(db.search("user", {"email": "bob@x"})) == [b"u2"]
    assert ids(db.search("user", {"team": "core"})) == [b"u1", b"u2"]
    assert ids(db.search("user", {"path": "/home/cy@x", "host": "a"})) == [b"u3"]
    assert ids(db.search("user", {"owner.uid": 2})) == [b"u2", b"u3"]
    assert ids(db.search("user", {})) == [b"u1", b"u2", b"u3"]
    assert db.search_first("user", {"email": "cy@x"}).value["team"] == "web"
    assert db.search_first("user", {"email": "nobody@x"}) is None
    with pytest.raises(ValueError, match="no key on fields.*email"):
        list(db.search("user", {"color": "red"}))
    with pytest.raises(UnknownTypeError):
        list(db.search("ghost", {}))


def test_updates_move_index_entries_and_delete_removes_them(db):
    db.set(b"u1", user("ann@x", team="core"), type="user")
    db.set(b"u1", user("ann@y", team="web"), type="user")
    assert ids(db.search("user", {"email": "ann@x"})) == []
    assert ids(db.search("user", {"team": "web"})) == [b"u1"]
    db.set(b"u2", user("ann@x"), type="user")  # the old unique value is free again
    db.delete(b"u1")
    assert ids(db.search("user", {"team": "web"})) == []
    assert ids(db.search("user", {})) == [b"u2"]
    assert db.validate() == []


def test_unique_conflict_writes_nothing(db):
    db.set(b"u1", user("ann@x"), type="user")
    db.set(b"u2", user("bob@x"), type="user")
    with pytest.raises(KeyConflictError, match="email.*u1"):
        db.set(b"u2", user("ann@x", team="web"), type="user")
    assert db.get(b"u2")["email"] == "bob@x"  # unchanged
    assert ids(db.search("user", {"team": "web"})) == []
    with pytest.raises(KeyConflictError, match="home"):
        db.set(b"u3", user("cy@x", host="a", path="/home/ann@x"), type="user")
    assert not db.has(b"u3")
    db.set(b"u1", user("ann@x", team="ops"), type="user")  # own value: no conflict
    # A record lacking the unique field is not indexed under it: no conflict.
    db.set(b"n1", {"team": "core"}, type="user")
    db.set(b"n2", {"team": "core"}, type="user")
    assert db.validate() == []


def test_long_values_are_hashed_but_match_exactly(db):
    long_a, long_b = "a" * 500, "a" * 499 + "b"
    db.set(b"u1", user(long_a), type="user")
    db.set(b"u2", user(long_b), type="user")
    assert ids(db.search("user", {"email": long_a})) == [b"u1"]
    with pytest.raises(KeyConflictError):
        db.set(b"u3", user(long_b), type="user")
    assert db.validate() == []


def test_threads_racing_for_one_unique_value_one_wins(db):
    barrier, won, lost = threading.Barrier(8), [], []

    def claim(i: int) -> None:
        barrier.wait()
        try:
            db.set(f"c{i}".encode(), user("same@x", team=str(i)), type="user")
            won.append(i)
        except KeyConflictError:
            lost.append(i)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(lost) == 7
    assert ids(db.search("user", {"email": "same@x"})) == [f"c{won[0]}".encode()]


def test_iterators(db):
    for name in [b"a1", b"a2", b"b1", b"b2", b"c"]:
        db.set(name, {"n": name.decode()})
    assert [r.id for r in db.iterate()] == [b"a1", b"a2", b"b1", b"b2", b"c"]
    assert [r.id for r in db.iterate(b"a2", b"b2")] == [b"a2", b"b1"]
    assert [r.id for r in db.iterate(b"zz")] == []
    assert [r.value["n"] for r in db.iterate_prefix(b"b")] == ["b1", "b2"]


def test_changed_definition_reindexes_on_next_write(db):
    db.set(b"u1", user("ann@x", team="core"), type="user")
    db.set(b"u2", user("bob@x", team="core"), type="user")
    register_type(Type("user", USER.keys + (TypeKey("host_team", ["host", "team"]),), version=2))
    db.set(b"u3", user("cy@x", team="core"), type="user")
    assert ids(db.search("user", {"team": "core", "host": "a"})) == [b"u1", b"u2", b"u3"]
    assert db.validate() == []


def _inject_broken_index(path, db_id_prefix=b"u1"):
    """Write LMDB directly: add an index entry for a record that does not exist
    and remove the email entry of u1."""
    env = lmdb.open(str(path), subdir=True, max_dbs=8)
    index = env.open_db(b"index")
    lp = record_encoding._lp
    with env.begin(write=True) as txn:
        ghost = lp(b"user") + lp(b"team") + lp(b'["core"]') + lp(b"ghost")
        txn.put(ghost, b"", db=index)
        real = lp(b"user") + lp(b"email") + lp(b'["ann@x"]') + lp(db_id_prefix)
        assert txn.delete(real, db=index)
        txn.put(b"\x00\x05junk", b"", db=index)
    env.close()


def test_validate_finds_injected_damage_and_reindex_repairs_it(tmp_path):
    path = tmp_path / "db"
    with RecordDB(path) as db:
        db.set(b"u1", user("ann@x"), type="user")
        db.set(b"u2", user("bob@x"), type="user")
        assert db.validate() == []
    _inject_broken_index(path)
    with RecordDB(path) as db:
        problems = db.validate()
        kinds = sorted((p.kind, p.id, p.key) for p in problems)
        assert kinds == [("bad-entry", b"", ""), ("missing-entry", b"u1", "email"),
                         ("orphan-entry", b"ghost", "team")]
        assert any("does not exist" in p.detail for p in problems)
        assert ids(db.search("user", {"team": "core"})) == [b"u1", b"u2"]  # ghost skipped
        assert ids(db.search("user", {"email": "ann@x"})) == []  # the damage is visible
        db.reindex()
        assert db.validate() == []
        assert ids(db.search("user", {"email": "ann@x"})) == [b"u1"]


def test_reindex_with_conflicting_records_changes_nothing(tmp_path):
    with RecordDB(tmp_path / "db") as db:
        db.set(b"u1", user("ann@x", team="t1"), type="user")
        db.set(b"u2", user("bob@x", team="t2"), type="user")
        register_type(Type("user", [TypeKey("team", ["host"], unique=True)], version=3))
        with pytest.raises(KeyConflictError):
            db.reindex()
        register_type(USER)
        assert db.validate() == []


def _filled(db):
    for i in range(40):
        db.set(f"user/{i:03d}".encode(), user(f"u{i}@x", team=f"t{i % 3}", uid=i), type="user")
    db.set(b"config", {"snapshots": ["a", "b"], "unicode": "é☃"})
    return db


def test_backup_round_trip_is_byte_identical(tmp_path):
    with _filled(RecordDB(tmp_path / "a")) as a:
        first = io.BytesIO()
        info = a.backup_to(first)
        assert info.count == 42  # 1 type definition + 41 records
        originals = [(r.id, r.type, r.value) for r in a.iterate()]
    assert validate_backup(io.BytesIO(first.getvalue())).count == 42
    with RecordDB(tmp_path / "b") as b:
        b.restore_from(io.BytesIO(first.getvalue()))
        assert [(r.id, r.type, r.value) for r in b.iterate()] == originals
        assert b.validate() == []
        assert ids(b.search("user", {"email": "u7@x"})) == [b"user/007"]
        second = io.BytesIO()
        b.backup_to(second)
    assert second.getvalue() == first.getvalue()


def test_validate_backup_rejects_every_truncation_and_bit_flips(tmp_path):
    with RecordDB(tmp_path / "a") as a:
        a.set(b"u1", user("ann@x"), type="user")
        a.set(b"u2", user("bob@x"), type="user")
        buf = io.BytesIO()
        a.backup_to(buf)
    data = buf.getvalue()
    for cut in range(len(data)):
        with pytest.raises(BackupTruncatedError):
            validate_backup(io.BytesIO(data[:cut]))
    for pos in range(len(data)):
        for bit in (0, 3, 7):
            damaged = bytearray(data)
            damaged[pos] ^= 1 << bit
            with pytest.raises(BackupError):
                validate_backup(io.BytesIO(bytes(damaged)))
    with pytest.raises(BackupCorruptError, match="after the backup trailer"):
        validate_backup(io.BytesIO(data + b"\x00"))


def test_restore_refuses_a_non_pristine_database(tmp_path):
    with _filled(RecordDB(tmp_path / "a")) as a:
        buf = io.BytesIO()
        a.backup_to(buf)
        with pytest.raises(NotPristineError, match="empty database.*41 records"):
            a.restore_from(io.BytesIO(buf.getvalue()))
        assert len(a) == 41


def test_restore_of_a_damaged_backup_leaves_the_target_empty(tmp_path):
    with _filled(RecordDB(tmp_path / "a")) as a:
        buf = io.BytesIO()
        a.backup_to(buf)
    data = buf.getvalue()
    with RecordDB(tmp_path / "b") as b:
        with pytest.raises(BackupTruncatedError):
            b.restore_from(io.BytesIO(data[:-7]))
        assert b.is_pristine()
        flipped = bytearray(data)
        flipped[len(data) // 2] ^= 0x10
        with pytest.raises(BackupCorruptError):
            b.restore_from(io.BytesIO(bytes(flipped)))
        assert b.is_pristine()
        b.restore_from(io.BytesIO(data))
        assert len(b) == 41


def test_restore_rejects_other_kinds_and_malformed_frames(tmp_path):
    other = io.BytesIO()
    with BackupWriter(other, "versionfs.mvcc") as w:
        w.write(b"x")
    with RecordDB(tmp_path / "b") as b:
        with pytest.raises(BackupFormatError, match="versionfs.mvcc"):
            b.restore_from(io.BytesIO(other.getvalue()))
        odd = io.BytesIO()
        with BackupWriter(odd, record_backup.BACKUP_KIND) as w:
            w.write_item(["record", b"id", "", b"{not json"])
        with pytest.raises(BackupCorruptError, match="frame 0"):
            validate_backup(io.BytesIO(odd.getvalue()))
        with pytest.raises(BackupCorruptError, match="frame 0"):
            b.restore_from(io.BytesIO(odd.getvalue()))
        assert b.is_pristine()


def test_full_store_is_a_clear_error_and_keeps_data(tmp_path):
    with RecordDB(tmp_path / "db", map_size=256 << 10) as db:
        db.set(b"keep", {"v": 1}, type="user")
        with pytest.raises(RecordStoreFullError, match="full"):
            for i in range(10_000):
                db.set(f"big{i}".encode(), user(f"{i}@x", pad="x" * 3000), type="user")
        assert db.get(b"keep") == {"v": 1}
        assert db.validate() == []
    with RecordDB(tmp_path / "db", map_size=256 << 10) as db:
        assert db.get(b"keep") == {"v": 1}


from hypothesis import HealthCheck, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.stateful import (RuleBasedStateMachine, invariant,  # noqa: E402
                                 rule)


class RecordsAgainstModel(RuleBasedStateMachine):
    """Random sets/deletes against a dict model: searches, conflicts and
    validate() must always agree with what the model says."""

    def __init__(self):
        super().__init__()
        import tempfile
        self.dir = tempfile.TemporaryDirectory()
        register_type(USER)
        self.db = RecordDB(self.dir.name)
        self.model: dict[bytes, dict] = {}

    @rule(id=st.sampled_from([b"a", b"b", b"c", b"d"]),
          email=st.sampled_from(["p@x", "q@x", "r@x", None]),
          team=st.sampled_from(["t1", "t2"]))
    def set(self, id, email, team):
        value = {"team": team} if email is None else {"email": email, "team": team}
        taken = email is not None and any(
            v.get("email") == email for k, v in self.model.items() if k != id)
        if taken:
            with pytest.raises(KeyConflictError):
                self.db.set(id, value, type="user")
        else:
            self.db.set(id, value, type="user")
            self.model[id] = value

    @rule(id=st.sampled_from([b"a", b"b", b"c", b"d"]))
    def delete(self, id):
        assert self.db.delete(id) == (self.model.pop(id, None) is not None)

    @invariant()
    def agrees(self):
        for team in ("t1", "t2"):
            assert ids(self.db.search("user", {"team": team})) == sorted(
                k for k, v in self.model.items() if v["team"] == team)
        for email in ("p@x", "q@x", "r@x"):
            assert ids(self.db.search("user", {"email": email})) == sorted(
                k for k, v in self.model.items() if v.get("email") == email)
        assert {r.id: r.value for r in self.db.iterate()} == self.model
        assert self.db.validate() == []

    def teardown(self):
        self.db.close()
        self.dir.cleanup()


RecordsAgainstModel.TestCase.settings = settings(
    max_examples=40, stateful_step_count=25, deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture])
test_records_against_model = RecordsAgainstModel.TestCase
