"""The everyday ctl commands: snapshot, snapshots, flush, status.

When the mount has a bucket session (``fs.cloud``), ``flush`` also publishes
the metadata and waits for it, ``snapshot`` starts publishing, and ``status``
adds what is published and who holds the lease.
"""

from __future__ import annotations

import errno
import json
import re

import trio

from versionfs.blob.errors import BlobError
from versionfs.bucket import publish
from versionfs.tree.names import DIRNAME_RE, iso_utc, snapshot_dirname

from .. import services
from .command import CommandError, command, no_args, seconds_arg

NAME_RE = re.compile(r"^[A-Za-z0-9_@+:][A-Za-z0-9._@+:-]{0,99}$")


def check_snapshot_name(name: str) -> None:
    if not NAME_RE.match(name) or DIRNAME_RE.match(name) or name.isdigit():
        raise CommandError(
            f"bad snapshot name {name!r}: use 1-100 characters of letters, digits and ._@+:- "
            "not starting with '.' or '-', and not of the form r<rev>-<time>")


@command("snapshot", "snapshot [NAME]", "freeze the tree as a new read-only revision")
async def _snapshot(fs, args):
    if len(args) > 1:
        raise CommandError("usage: snapshot [NAME]")
    name = args[0] if args else None
    if name is not None:
        check_snapshot_name(name)
        if any(r.name == name for r in fs.meta.revisions()):
            raise CommandError(f"a snapshot named {name!r} already exists")
    info = await fs.take_snapshot(name)
    if fs.cloud is not None:
        fs.cloud.publish_soon()
    return snapshot_dirname(info)


@command("snapshots", "snapshots", "list revisions: dirname, rev, time, name")
async def _snapshots(fs, args):
    no_args(args, "snapshots")
    lines = [f"{snapshot_dirname(r)}\t{r.rev}\t{iso_utc(r.time)}\t{r.name or '-'}"
             for r in fs.meta.revisions()]
    return "\n".join(lines)


@command("flush", "flush [SECONDS]",
         "wait until everything is durable on the slow store and the metadata published")
async def _flush(fs, args):
    timeout = seconds_arg(args, "flush", "flush [SECONDS]")
    await fs.flush_all(timeout)
    cloud = fs.cloud
    if cloud is not None and cloud.publisher is not None:
        try:
            await trio.to_thread.run_sync(lambda: cloud.publish(timeout=timeout))
        except publish.BlobsNotDurableError as exc:
            raise CommandError(str(exc), errno.ETIMEDOUT) from None
        except (publish.PublishError, BlobError, OSError) as exc:
            raise CommandError(f"publishing metadata failed: {exc}", errno.EIO) from None
    return "flushed"


@command("status", "status [--json]",
         "revision, snapshots, dirty files, uploads, cache use, publishing and lease")
async def _status(fs, args):
    if args not in ([], ["--json"]):
        raise CommandError("usage: status [--json]")
    st = fs.status()
    st.update(services.status_extras(fs))
    if fs.cloud is not None:
        st.update({k.replace(" ", "_"): v for k, v in fs.cloud.status().items()})
    if args:
        return json.dumps(st, sort_keys=False)
    return "\n".join(f"{k.replace('_', ' ')}: {'-' if v is None else v}" for k, v in st.items())
