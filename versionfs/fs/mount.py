"""Run one versionfs mount: pyfuse3 on trio, until unmounted or signalled.

Shutdown paths, both ending with every dirty file sealed and the metadata
synced:

* someone unmounts (`fusermount3 -u`, `versionfs umount`): the kernel writes
  back its dirty pages while the loop still runs, the FUSE session ends,
  `pyfuse3.main` returns, we seal and sync;
* SIGTERM/SIGINT (when serving from the main thread): we ask the kernel for
  its dirty pages (`VersionFS._kernel_writeback`), seal and sync, end the
  session and unmount. A kernel writeback call that never returned is not
  waited for: we abort our FUSE connection so it ends and umount completes.

The caller owns `meta`, `blobs` and `paired` (opening, starting uploads and
closing them); `serve` never closes them.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import threading
from typing import Callable, Iterable

import pyfuse3
import trio

from .operations import VersionFS
from .reading import CACHE_IDLE_SECONDS, CHUNK_CACHE_BYTES

log = logging.getLogger(__name__)


def _options(fuse_options: Iterable[str], read_only: bool) -> set[str]:
    opts = set(pyfuse3.default_options)          # default_permissions
    given = list(fuse_options)
    keys = {o.split("=", 1)[0] for o in given}
    if "fsname" not in keys:
        opts.add("fsname=versionfs")
    if "subtype" not in keys:
        opts.add("subtype=versionfs")
    if read_only:
        opts.add("ro")
    opts.update(given)
    return opts


async def serve(meta, blobs, paired, mountpoint, *, dirty_dir, read_only: bool = False,
                fuse_options: Iterable[str] = (), ready: Callable[[], None] | None = None,
                idle_seal_seconds: float = 5.0, seal_max_age_seconds: float = 60.0,
                merge_quiet_seconds: float = 60.0, metadata_sync_seconds: float = 5.0,
                cloud=None,
                read_cache_bytes: int = CHUNK_CACHE_BYTES,
                read_cache_idle_seconds: float = CACHE_IDLE_SECONDS,
                services: Iterable[Callable[[VersionFS, trio.Nursery], None]] = ()) -> None:
    """Mount at `mountpoint` and serve requests until unmounted or signalled.

    Each of `services` is called once with the operations object and the
    mount's nursery, to start what runs beside it (automatic snapshots, the
    metrics endpoint); their tasks end with the mount. `cloud` is the bucket
    session the ctl commands publish through (None: no bucket).
    """
    mountpoint = os.path.abspath(os.fspath(mountpoint))
    ops = VersionFS(meta, blobs, paired, os.fspath(dirty_dir), mountpoint=mountpoint,
                    read_only=read_only, idle_seal_seconds=idle_seal_seconds,
                    seal_max_age_seconds=seal_max_age_seconds,
                    merge_quiet_seconds=merge_quiet_seconds,
                    metadata_sync_seconds=metadata_sync_seconds, cloud=cloud,
                    read_cache_bytes=read_cache_bytes,
                    read_cache_idle_seconds=read_cache_idle_seconds)
    pyfuse3.init(ops, mountpoint, _options(fuse_options, read_only))
    unmount = False
    try:
        async with trio.open_nursery() as nursery:
            ops.start(nursery)
            for start_service in services:
                start_service(ops, nursery)
            nursery.start_soon(_when_answering, mountpoint, ready)
            stop = trio.Event()
            if threading.current_thread() is threading.main_thread():
                nursery.start_soon(_watch_signals, stop)
            nursery.start_soon(_stop_on_event, ops, stop)
            await pyfuse3.main()
            unmount = stop.is_set()
            with trio.CancelScope(shield=True):
                await ops.shutdown()
            nursery.cancel_scope.cancel()
    finally:
        ops.data.close()
        if ops.writeback_stuck:
            # An abandoned kernel writeback call still waits in the kernel for
            # WRITEs nobody will serve now, holding locks umount needs: end
            # every request of this connection so it returns and we can unmount.
            _abort_connection(mountpoint)
        try:
            pyfuse3.close(unmount=unmount)
        except Exception:                # noqa: BLE001 - already gone is fine
            log.exception("closing the FUSE session failed")
        log.info("versionfs at %s stopped", mountpoint)


# The kernel's read-ahead window for a FUSE mount defaults to 128 KiB, which
# also caps the size of its read requests. A window of 1 MiB (FUSE's largest
# request, and our average chunk) makes a sequential read cost an eighth of the
# requests, but the kernel then keeps about one in flight and the daemon idles
# between them; 4 MiB keeps several 1 MiB requests in flight, to be answered
# from the chunks the daemon fetched ahead (16, reading.py). Measured in one
# run, cold 1 GiB read, loaded machine: 221-239 MiB/s at 1 MiB, 261-307 at 4 MiB.
READ_AHEAD_KB = 4096


async def _raise_readahead(mountpoint: str) -> None:
    """Best effort (needs root): set this mount's read_ahead_kb in sysfs.

    Only once the mount answers: the kernel lowers the window to what the
    FUSE INIT reply allows (128 KiB) when it handles that reply.
    """
    def tune() -> None:
        st = os.stat(mountpoint)        # served by our own loop, hence the thread
        with open(f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/read_ahead_kb",
                  "w") as f:
            f.write(str(READ_AHEAD_KB))
    try:
        await trio.to_thread.run_sync(tune)
    except OSError as exc:
        log.debug("cannot raise read-ahead of %s: %s", mountpoint, exc)


async def _when_answering(mountpoint: str, ready: Callable[[], None] | None) -> None:
    """Tune read-ahead, then announce readiness: a caller told "ready" gets the
    mount with its final settings, not the kernel's defaults for a moment."""
    # stat() of the root goes through the kernel to our own handlers, so once
    # it returns, the mount answers (and the INIT reply has been handled).
    await trio.to_thread.run_sync(os.stat, mountpoint)
    await _raise_readahead(mountpoint)
    if ready is not None:
        ready()


async def _watch_signals(stop: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("signal %d: sealing, syncing and unmounting", signum)
            stop.set()
            return


def _abort_connection(mountpoint: str) -> None:
    """Abort our own FUSE connection through fusectl (needs root; best effort).

    The device number comes from /proc/self/mountinfo, not stat(), which would
    be a request to ourselves."""
    target = mountpoint.replace("\\", "\\134").replace(" ", "\\040")
    try:
        with open("/proc/self/mountinfo") as f:
            devs = [line.split()[2] for line in f if line.split()[4] == target]
        if not devs:
            return
        minor = int(devs[-1].split(":")[1])
        with open(f"/sys/fs/fuse/connections/{minor}/abort", "w") as f:
            f.write("1")
        log.warning("aborted the FUSE connection of %s (a kernel writeback call was stuck)",
                    mountpoint)
    except (OSError, ValueError, IndexError) as exc:
        log.error("cannot abort the FUSE connection of %s: %s", mountpoint, exc)


async def _stop_on_event(ops: VersionFS, stop: trio.Event) -> None:
    await stop.wait()
    with trio.CancelScope(shield=True):
        await ops._kernel_writeback()
        await ops.shutdown()
    pyfuse3.terminate()


def run(meta, blobs, paired, mountpoint, **kwargs) -> None:
    """Blocking `serve` (for the CLI): one trio run per mount."""
    trio.run(functools.partial(serve, meta, blobs, paired, mountpoint, **kwargs))
