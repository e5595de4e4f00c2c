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
anything stamped by an older holder.  ``release()`` therefore leaves a
released record (expiry 0) with the generation rather than deleting the key,
so generations never go back.

In a bucket the lease is ``Codec.seal``-ed with its name as context (``codec``):
on an encrypted filesystem nobody without the key can read who holds it or
write a record that authenticates; another machine with the key still reads
"held by … until …".  What whoever can write the bucket can still do:

* forge or damage the record: it does not authenticate (``CorruptLeaseError``
  names it); it holds nothing, so ``acquire`` takes it over by CAS and says so
  (``overridden``, an ERROR log line) instead of locking anyone out;
* replay an old record: one older than the newest generation this machine has
  seen (``floor``, e.g. from its own lease record and the head records it
  read) is named as replayed and taken over the same way; a replay of the
  current generation is a real record, and locks out at most until the expiry
  its holder wrote (at most ``ttl`` after it was written), naming that holder;
* delete it: a denial of service (the holder loses the lease at its next
  renewal and stops publishing, the head's CAS keeps the bucket consistent),
  never a forgery.

Expiry compares wall clocks of different machines; keep ``ttl`` much larger
than any plausible clock skew (minutes, not seconds) and renew at a fraction of
it (``ttl / 3`` is customary).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Callable

from versionfs.blob.errors import BlobError
from versionfs.meta.kv import (ForeignObjectError, KeyExistsError, KeyModifiedError,
                 KeyNotFoundError, KVPair, KVStore)

log = logging.getLogger(__name__)


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
    """The lease key does not hold a lease record (or one that does not authenticate)."""


@dataclass(frozen=True)
class LeaseInfo:
    """What the lease key says: who holds it, until when, which acquisition."""

    holder: str
    expires: float
    generation: int

    @property
    def released(self) -> bool:
        return self.expires == 0.0

    def encode(self, name: str, codec=None) -> bytes:
        raw = json.dumps({"holder": self.holder, "expires": self.expires,
                          "generation": self.generation}, sort_keys=True).encode()
        return raw if codec is None else codec.seal(raw, name.encode())

    @classmethod
    def decode(cls, name: str, raw: bytes, codec=None) -> "LeaseInfo":
        if codec is not None:
            try:
                raw = codec.open(raw, name.encode())
            except BlobError as exc:
                raise CorruptLeaseError(f"lease {name!r} does not authenticate: forged, or "
                                        f"damaged ({exc})") from None
        try:
            doc = json.loads(raw)
            return cls(str(doc["holder"]), float(doc["expires"]), int(doc["generation"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptLeaseError(f"lease {name!r} holds no valid lease record: {raw[:80]!r}") from exc


class Lease:
    """The lease ``name`` in ``kv``, as seen by ``holder`` (unique per mount).

    ``codec`` seals the record (module doc); ``floor()`` is the newest
    generation this machine has seen, below which a record is a replay.
    """

    def __init__(self, kv: KVStore, name: str, holder: str, ttl: float,
                 clock: Callable[[], float] = time.time, *, codec=None,
                 floor: Callable[[], int] = lambda: 0):
        if ttl <= 0:
            raise ValueError(f"lease ttl must be positive, got {ttl}")
        self.kv, self.name, self.holder, self.ttl = kv, name, holder, ttl
        self.clock, self.codec, self.floor = clock, codec, floor
        self.overridden: str | None = None  # the forged or replayed record last taken over
        self._pair: KVPair | None = None  # what we last wrote, while we hold it

    @property
    def held(self) -> bool:
        """True while we believe we hold it (until release, loss or expiry)."""
        return self._pair is not None and self.info is not None and self.info.expires > self.clock()

    @property
    def info(self) -> LeaseInfo | None:
        """Our lease record as last written, or None when we do not hold it."""
        return None if self._pair is None else LeaseInfo.decode(self.name, self._pair.value,
                                                                 self.codec)

    def _get(self) -> KVPair:
        """The key as stored, even an object the KV store did not write (a forgery)."""
        try:
            return self.kv.get(self.name)
        except ForeignObjectError as exc:
            return exc.pair

    def read(self) -> LeaseInfo | None:
        """The lease as it is in the store now (None when nobody holds it)."""
        try:
            info = LeaseInfo.decode(self.name, self._get().value, self.codec)
        except KeyNotFoundError:
            return None
        return None if info.released else info

    def _record(self, generation: int, expires: float | None = None) -> bytes:
        expires = self.clock() + self.ttl if expires is None else expires
        return LeaseInfo(self.holder, expires, generation).encode(self.name, self.codec)

    def _judge(self, raw: bytes) -> tuple[LeaseInfo, str | None]:
        """The record, and why it holds nothing (forged, damaged, replayed), if so."""
        try:
            info = LeaseInfo.decode(self.name, raw, self.codec)
        except CorruptLeaseError as exc:
            return LeaseInfo("<unreadable lease record>", 0.0, 0), str(exc)
        floor = self.floor()
        if info.generation < floor:
            return info, (f"lease {self.name!r} is a replayed old record (generation "
                          f"{info.generation} by {info.holder!r}; this machine has seen "
                          f"generation {floor})")
        return info, None

    def _next_generation(self, info: LeaseInfo | None) -> int:
        return max(info.generation if info else 0, self.floor()) + 1

    def acquire(self) -> LeaseInfo:
        """Take the lease if free, expired, already ours, forged or replayed (then
        ``overridden`` and an ERROR line say so); else :class:`LeaseHeldError`."""
        while True:
            try:
                self._pair = self.kv.atomic_put(self.name, self._record(self._next_generation(None)),
                                                None)
                return self.info
            except KeyExistsError:
                pass
            try:
                current = self._get()
            except KeyNotFoundError:
                continue  # deleted between our create and our read: try again
            info, problem = self._judge(current.value)
            if problem is None and info.holder != self.holder and info.expires > self.clock():
                raise LeaseHeldError(self.name, info)
            try:
                self._pair = self.kv.atomic_put(
                    self.name, self._record(self._next_generation(info)), current)
            except (KeyModifiedError, KeyNotFoundError):
                continue  # someone else wrote it meanwhile: judge their record
            if problem is not None:
                self.overridden = problem
                log.error("%s; it holds nothing, so it was taken over", problem)
            return self.info

    def renew(self) -> LeaseInfo:
        """Extend our lease by ``ttl`` from now; :class:`LeaseLostError` if it is not ours."""
        if self._pair is None:
            raise LeaseLostError(f"lease {self.name!r} is not held by {self.holder!r}; acquire it first")
        try:
            self._pair = self.kv.atomic_put(
                self.name, self._record(self.info.generation), self._pair)
        except (KeyModifiedError, KeyNotFoundError) as exc:
            self._pair = None
            try:
                now = self.read()
                who = f"now held by {now.holder!r}" if now else "deleted"
            except CorruptLeaseError as bad:
                who = f"replaced: {bad}"
            raise LeaseLostError(f"lease {self.name!r} was lost by {self.holder!r}: {who}") from exc
        return self.info

    def release(self) -> bool:
        """Give the lease up (a released record keeps the generation, module doc);
        False if it was no longer ours (nothing is written then)."""
        if self._pair is None:
            return False
        pair, self._pair = self._pair, None
        generation = LeaseInfo.decode(self.name, pair.value, self.codec).generation
        try:
            self.kv.atomic_put(self.name, self._record(generation, expires=0.0), pair)
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
                current = self._get()
            except KeyNotFoundError:
                try:
                    self._pair = self.kv.atomic_put(self.name,
                                                    self._record(self._next_generation(None)), None)
                    return None
                except KeyExistsError:
                    continue
            previous, problem = self._judge(current.value)
            if only_from is not None and (problem is not None or previous.holder != only_from):
                raise LeaseHeldError(self.name, previous)
            try:
                self._pair = self.kv.atomic_put(
                    self.name, self._record(self._next_generation(previous)), current)
                return None if previous.released and problem is None else previous
            except (KeyModifiedError, KeyNotFoundError):
                continue

    def __enter__(self) -> "Lease":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
