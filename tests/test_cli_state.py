"""The state dir API (versionfs.common.state): layout, lock, passphrase sources, key in the slow store."""

from __future__ import annotations

import pytest

from versionfs.common import state as statemod
from versionfs.blob.pointer import Pointer


def test_init_open_roundtrip_and_single_opener(tmp_path):
    root = statemod.init_state(tmp_path / "s")
    layout = statemod.Layout(root)
    for path in (layout.marker, layout.config, layout.fast, layout.meta, layout.dirty, layout.slow):
        assert path.exists(), path
    with statemod.open_state(root) as st:
        assert not st.encrypted and st.slow_url == layout.slow.resolve().as_uri()
        ptr = st.blobs.put(b"hello")
        with st.meta.write() as batch:
            batch.put(b"k", b"v")
        st.meta.sync()
        assert statemod.read_pid(root) is not None
        with pytest.raises(statemod.StateInUseError, match="already in use"):
            statemod.open_state(root)
        st.paired.flush(30)
    assert statemod.read_pid(root) is None
    with statemod.open_state(root, read_only=True) as st:
        assert st.blobs.get(ptr) == b"hello"
        assert st.meta.get(b"k") == b"v"
    assert isinstance(ptr, Pointer)


def test_encrypted_key_is_in_state_and_slow_store(tmp_path):
    root = statemod.init_state(tmp_path / "s", encrypt=True, passphrase="pw",
                               cipher="chacha20-poly1305")
    layout = statemod.Layout(root)
    assert (layout.slow / "keys" / "master").read_bytes() == layout.key.read_bytes()
    asked = []

    def ask():
        asked.append(1)
        return "pw"

    with statemod.open_state(root, ask) as st:
        assert st.codec.encrypted and st.codec.cipher == "chacha20-poly1305"
        ptr = st.blobs.put(b"secret")
    assert asked == [1]
    with pytest.raises(statemod.PassphraseError, match="wrong passphrase"):
        statemod.open_state(root, "nope")
    with pytest.raises(statemod.PassphraseError, match="encrypted"):
        statemod.open_state(root, None)
    assert statemod.read_pid(root) is None, "a failed open must release the lock"
    with statemod.open_state(root, "pw") as st:
        assert st.blobs.get(ptr) == b"secret"


def test_passphrase_sources(tmp_path):
    f = tmp_path / "p"
    f.write_text("from file\n")
    assert statemod.get_passphrase(f, env={}) == "from file"
    assert statemod.get_passphrase(None, env={"VERSIONFS_PASSPHRASE": "from env"}) == "from env"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(statemod.PassphraseError, match="empty"):
        statemod.get_passphrase(tmp_path / "empty", env={})


def test_failed_init_leaves_existing_empty_dir_empty(tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    with pytest.raises(statemod.StateError, match="slow store"):
        statemod.init_state(target, "http://127.0.0.1:9")    # remote store without a token
    assert list(target.iterdir()) == []


@pytest.mark.s3
def test_s3_init_claims_the_prefix_and_stores_the_wrapped_key(tmp_path, s3_server, s3_url):
    root = statemod.init_state(tmp_path / "a", s3_url, encrypt=True, passphrase="pw")
    bucket, prefix = s3_url[len("s3://"):].split("/", 1)
    client = s3_server.client()
    key = client.get_object(Bucket=bucket, Key=f"{prefix}/{statemod.MASTER_KEY_OBJECT}")["Body"].read()
    assert key == statemod.Layout(root).key.read_bytes()
    with pytest.raises(statemod.StateError, match="already holds"):
        statemod.init_state(tmp_path / "b", s3_url)
    assert not (tmp_path / "b").exists()
