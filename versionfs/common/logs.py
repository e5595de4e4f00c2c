"""Daemon logging: levels through `logging`, to the journal when under systemd.

systemd tells a service its stderr is the journal by setting JOURNAL_STREAM to
"<device>:<inode>" of that stream. Then we log without timestamps (the journal
adds its own) and with a "<N>" syslog priority prefix, which journald turns
into the entry's priority (`journalctl -p warning` works). With the optional
python-systemd package installed, its JournalHandler is used instead, which
also records the logger name and source location as journal fields.
Elsewhere (a terminal, STATE_DIR/versionfs.log) lines carry a timestamp.
"""

from __future__ import annotations

import logging
import os
import sys

ENV_LEVEL = "VERSIONFS_LOG_LEVEL"
_SYSLOG_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4,
                    logging.INFO: 6, logging.DEBUG: 7}


def stderr_is_journal(stream=None) -> bool:
    stream = sys.stderr if stream is None else stream
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return st.st_dev == int(dev) and st.st_ino == int(ino)


class JournalPrefixFormatter(logging.Formatter):
    """`<priority>name: message`, each line of a traceback prefixed too."""

    def format(self, record: logging.LogRecord) -> str:
        prio = _SYSLOG_PRIORITY.get(record.levelno, 6 if record.levelno < logging.WARNING else 3)
        text = super().format(record)
        return "\n".join(f"<{prio}>{line}" for line in text.splitlines() or [""])


def _journal_handler() -> logging.Handler:
    try:
        from systemd.journal import JournalHandler      # type: ignore[import-not-found]
        return JournalHandler(SYSLOG_IDENTIFIER="versionfs")
    except ImportError:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JournalPrefixFormatter("%(name)s: %(message)s"))
        return handler


def setup_logging(level: str | None = None) -> logging.Handler:
    """Route the root logger to the journal or stderr; returns the handler."""
    if stderr_is_journal():
        handler = _journal_handler()
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    set_level(level)
    return handler


def set_level(level: str | None) -> None:
    """The environment (VERSIONFS_LOG_LEVEL) wins over the config's mount.log_level."""
    chosen = (os.environ.get(ENV_LEVEL) or level or "info").upper()
    if chosen not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        chosen = "INFO"
    logging.getLogger().setLevel(chosen)
