"""The Prometheus endpoint of a mount (`[metrics] listen`), logging setup, and
the operator fields of `status`."""

from __future__ import annotations

import io
import logging
import os
import re

import pytest

from history_util import cli_fs, free_port, scrape  # noqa: F401  (fixture)
from versionfs.common import logs as logsetup

pytestmark = pytest.mark.fuse


def test_metrics_endpoint_answers_and_counters_move(cli_fs):
    port = free_port()
    fs = cli_fs.init(metrics__listen=f"127.0.0.1:{port}").mount()
    before = scrape(port)
    assert before["versionfs_snapshots"] == 0
    data = os.urandom(300_000)
    fs.path("big.bin").write_bytes(data)
    os.sync()
    assert fs.path("big.bin").read_bytes() == data
    fs.cli("snapshot", fs.mnt, "m1")
    after = scrape(port)
    ok_writes = 'versionfs_fuse_requests_total{op="write",result="ok"}'
    assert after[ok_writes] > before.get(ok_writes, 0)
    assert after['versionfs_fuse_requests_total{op="create",result="ok"}'] >= 1
    assert after["versionfs_bytes_written_total"] >= len(data)
    assert after['versionfs_fuse_request_seconds_count{op="write"}'] == after[ok_writes]
    assert after["versionfs_snapshots"] == 1
    assert after["versionfs_head_revision"] == 2
    assert "versionfs_upload_backlog_blobs" in after and "versionfs_upload_backlog_bytes" in after
    # Reads that miss the kernel page cache reach us and are counted, with cache hits or misses.
    with open(fs.path("big.bin"), "rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("1")
    fs.path("big.bin").read_bytes()
    again = scrape(port)
    assert again["versionfs_bytes_read_total"] > after.get("versionfs_bytes_read_total", 0)
    assert (again["versionfs_chunk_cache_hits_total"] + again["versionfs_chunk_cache_misses_total"]) > 0
    assert again['versionfs_fuse_requests_total{op="lookup",result="ok"}'] >= 1
    st = fs.status()
    assert st["metrics"] == f"http://127.0.0.1:{port}/metrics"
    assert st["last_snapshot"].endswith("-m1") and st["pid"] > 0 and st["uptime_seconds"] >= 0
    fs.umount()
    with pytest.raises(OSError):            # the endpoint goes away with the mount
        scrape(port)


def test_status_human_form_lists_operator_fields(cli_fs):
    fs = cli_fs.init().mount()
    text = fs.cli("status", fs.mnt)
    for field in ("revision:", "snapshots:", "pending uploads:", "mountpoint:", "uptime seconds:",
                  "last snapshot:", "auto snapshot interval:", "metrics:"):
        assert field in text, field
    fs.umount()


def test_log_lines_go_to_the_journal_format_under_systemd(tmp_path, monkeypatch):
    stream = open(tmp_path / "journal", "w+")
    st = os.fstat(stream.fileno())
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    monkeypatch.setattr("sys.stderr", stream)
    monkeypatch.delenv("VERSIONFS_LOG_LEVEL", raising=False)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        assert logsetup.stderr_is_journal()
        handler = logsetup.setup_logging("warning")
        if not isinstance(handler, logging.StreamHandler):
            pytest.skip("python-systemd's JournalHandler is installed; it writes to the journal")
        logging.getLogger("versionfs.test").warning("disk %s", "full")
        logging.getLogger("versionfs.test").info("not shown at level warning")
        handler.flush()
        stream.seek(0)
        assert stream.read() == "<4>versionfs.test: disk full\n"   # priority, no timestamp
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")
    assert not logsetup.stderr_is_journal(io.StringIO())
    try:
        fmt = logsetup.setup_logging("info").formatter
        assert re.match(r"\d{4}-\d\d-\d\d ", fmt.format(logging.makeLogRecord({"msg": "x"})))
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
