"""A single-writer lease with expiry, taken by compare-and-swap on any :class:`KVStore`.

Only one machine may mount a filesystem read-write at a time.  The lease is
one KV key holding ``{"holder", "expires", "generation"}`` as JSON; every
change to it is an ``atomic_put``/``atomic_delete`` against the pair last read,
so two machines racing for it cannot both win.

* ``acquire()`` creates the key, or takes it over when it has expired (or is
  already ours).  Otherwise :class:`LeaseHeldError` names the holder and expiry.
* ``renew()`` pushes the expiry forward; if anyone else touched the key since
  we last wrote it, :class:`LeaseLostError` — the caller must stop writing.
* ``release()`` deletes the key if it is still ours.
* ``steal()`` takes it whatever its state (the user said the other machine is
  gone for good).

``generation`` grows by one on every acquisition or steal, so it can serve as a
fencing token: a writer stamps it on what it publishes and a reader can refuse
anything stamped by an older holder.

Expiry compares wall clocks of different machines; keep ``ttl`` much larger
than any plausible clock skew (minutes, not seconds) and renew at a fraction of
it (``ttl / 3`` is customary).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Callable

from versionfs.meta.kv import (KeyExistsError, KeyModifiedError, KeyNotFoundError, KVPair,
                 KVStore)


class LeaseError(Exception):
    """Base class of lease errors."""


class LeaseHeldError(LeaseError):
    """Someone else holds an unexpired lease."""

    def __init__(self, name: str, info: "LeaseInfo"):
        self.name, self.info = name, info
        super().__init__(
            f"lease {name!r} is held by {info.holder!r} until "
            f"{time.strftime('%Y-%m-%d %H:%M:%S %Z', time.localtime(info.expires))} "
            f"(generation {info.generation})")


class LeaseLostError(LeaseError):
    """The lease we held was taken, deleted or changed behind our back."""


class CorruptLeaseError(LeaseError):
    """The lease key does not hold a lease record."""


@dataclass(frozen=True)
class LeaseInfo:
    """What the lease key says: who holds it, until when, which acquisition."""

    holder: str
    expires: float
    generation: int

    def encode(self) -> bytes:
        return json.dumps({"holder": self.holder, "expires": self.expires,
                           "generation": self.generation}, sort_keys=True).encode()

    @classmethod
    def decode(cls, name: str, raw: bytes) -> "LeaseInfo":
        try:
            doc = json.loads(raw)
            return cls(str(doc["holder"]), float(doc["expires"]), int(doc["generation"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptLeaseError(f"lease {name!r} holds no valid lease record: {raw[:80]!r}") from exc


class Lease:
    """The lease ``name`` in ``kv``, as seen by ``holder`` (unique per mount)."""

    def __init__(self, kv: KVStore, name: str, holder: str, ttl: float,
                 clock: Callable[[], float] = time.time):
        if ttl <= 0:
            raise ValueError(f"lease ttl must be positive, got {ttl}")
        self.kv, self.name, self.holder, self.ttl = kv, name, holder, ttl
        self.clock = clock
        self._pair: KVPair | None = None  # what we last wrote, while we hold it

    @property
    def held(self) -> bool:
        """True while we believe we hold it (until release, loss or expiry)."""
        return self._pair is not None and self.info is not None and self.info.expires > self.clock()

    @property
    def info(self) -> LeaseInfo | None:
        """Our lease record as last written, or None when we do not hold it."""
        return None if self._pair is None else LeaseInfo.decode(self.name, self._pair.value)

    def read(self) -> LeaseInfo | None:
        """The lease as it is in the store now (None when nobody holds it)."""
        try:
            return LeaseInfo.decode(self.name, self.kv.get(self.name).value)
        except KeyNotFoundError:
            return None

    def _record(self, generation: int) -> bytes:
        return LeaseInfo(self.holder, self.clock() + self.ttl, generation).encode()

    def acquire(self) -> LeaseInfo:
        """Take the lease if free, expired or already ours; else :class:`LeaseHeldError`."""
        while True:
            try:
                self._pair = self.kv.atomic_put(self.name, self._record(1), None)
                return self.info
            except KeyExistsError:
                pass
            try:
                current = self.kv.get(self.name)
            except KeyNotFoundError:
                continue  # released between our create and our read: try again
            info = LeaseInfo.decode(self.name, current.value)
            if info.holder != self.holder and info.expires > self.clock():
                raise LeaseHeldError(self.name, info)
            try:
                self._pair = self.kv.atomic_put(
                    self.name, self._record(info.generation + 1), current)
                return self.info
            except (KeyModifiedError, KeyNotFoundError):
                other = self.read()
                if other is not None:
                    raise LeaseHeldError(self.name, other) from None

    def renew(self) -> LeaseInfo:
        """Extend our lease by ``ttl`` from now; :class:`LeaseLostError` if it is not ours."""
        if self._pair is None:
            raise LeaseLostError(f"lease {self.name!r} is not held by {self.holder!r}; acquire it first")
        try:
            self._pair = self.kv.atomic_put(
                self.name, self._record(self.info.generation), self._pair)
        except (KeyModifiedError, KeyNotFoundError) as exc:
            self._pair = None
            now = self.read()
            who = f"now held by {now.holder!r}" if now else "deleted"
            raise LeaseLostError(f"lease {self.name!r} was lost by {self.holder!r}: {who}") from exc
        return self.info

    def release(self) -> bool:
        """Give the lease up; False if it was no longer ours (nothing is deleted then)."""
        if self._pair is None:
            return False
        pair, self._pair = self._pair, None
        try:
            self.kv.atomic_delete(self.name, pair)
        except (KeyModifiedError, KeyNotFoundError):
            return False
        return True

    def steal(self, only_from: str | None = None) -> LeaseInfo | None:
        """Take the lease whoever holds it; returns the record that was displaced.

        With ``only_from``, take it only while that holder still holds it
        (expired or not): a holder known to be dead whose lease cannot expire
        soon enough, such as the same state directory after its daemon
        crashed. The swap is conditional on the exact record read, so a lease
        someone else took meanwhile is left alone (LeaseHeldError).
        """
        while True:
            try:
                current = self.kv.get(self.name)
            except KeyNotFoundError:
                try:
                    self._pair = self.kv.atomic_put(self.name, self._record(1), None)
                    return None
                except KeyExistsError:
                    continue
            try:
                previous = LeaseInfo.decode(self.name, current.value)
            except CorruptLeaseError:
                if only_from is not None:
                    raise
                previous = LeaseInfo("<unreadable lease record>", 0.0, 0)
            if only_from is not None and previous.holder != only_from:
                raise LeaseHeldError(self.name, previous)
            try:
                self._pair = self.kv.atomic_put(
                    self.name, self._record(previous.generation + 1), current)
                return previous
            except (KeyModifiedError, KeyNotFoundError):
                continue

    def __enter__(self) -> "Lease":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
