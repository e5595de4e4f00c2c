"""Helpers shared by the meta tests."""

import os


def abandon(store):
    """Drop an MVCCStore the way a crash would: queued LMDB batches are lost,
    only what reached the WAL file survives. (In-process stand-in for kill -9,
    used where a subprocess would make a property test too slow; the real
    SIGKILL test is tests/test_meta_crash.py.)"""
    b = store._backend
    with b._cond:
        b._pending.clear()
        b._pending_count = 0
        b._pending_index = None
        b._jobs.clear()
        b._closing = True
        b._closing_error = None
        b._cond.notify_all()
    b._thread.join()
    b._env.close()
    os.close(b._lockfd)
    b._closed = True
    wal = store._wal
    with wal._lock:
        os.close(wal._fd)
        wal._fd = None
        wal._mode = "closed"
    store._closed = True
