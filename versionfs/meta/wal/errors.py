"""The WAL's errors."""

from __future__ import annotations

__all__ = [
    "WALError",
    "MetadataConflictError",
    "WALFileNotFoundError",
    "IndexNotFoundError",
    "CRCMismatchError",
    "WALModeError",
    "WALBrokenError",
]


class WALError(Exception):
    """Base class of WAL errors."""


class MetadataConflictError(WALError):
    """Segments of one WAL carry different metadata."""


class WALFileNotFoundError(WALError, FileNotFoundError):
    """The directory holds no WAL segment."""


class IndexNotFoundError(WALError):
    """The WAL does not hold the requested index (released, or never written)."""


class CRCMismatchError(WALError):
    """A record failed its checksum somewhere other than a torn tail."""


class WALModeError(WALError):
    """Append attempted before read_all() consumed the log, or after close()."""


class WALBrokenError(WALError):
    """An fsync or write failed in a way that leaves the file state unknown."""
