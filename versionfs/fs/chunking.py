"""Content-defined cut points, keyed on encrypted filesystems.

Unkeyed FastCDC cuts where the content says, so anyone holding a file can
compute its chunk lengths; with each stored blob its chunk plus a constant,
a bucket listing confirms whether the bucket holds that file ("Breaking and
Fixing Content-Defined Chunking", Truong, Merz, Scarlata, Günther, Paterson,
RWC 2025; the same attack worked on borg, restic, tarsnap, bupstash and
duplicacy). Plain filesystems keep unkeyed chunking (their blob names are
content hashes anyway, and equal content should dedup everywhere); an
encrypted filesystem chunks under a key derived from its master key
(`Codec.chunking_seed`, its own HKDF context).

Why pyfastcdc's ``seed`` alone is not enough: it XORs one 64-bit value into
all 256 gear-table entries. The gear hash adds shifted entries, and carries
only move upwards, so hash bit j depends only on bits 0..j of the seed. Given
a known file and its cut points an attacker guesses the seed a few bits at a
time, checking each guess against the low mask bits: a divide and conquer far
below 2^64 work, the same weakness the paper exploits in borg's table that is
XORed with a 32-bit seed. A whole keyed table is what borg 2's FastCDC uses,
but pyfastcdc takes no table (its Cython config points at the built-in one
or at that XOR). So the chunker hashes the content after a keyed byte
substitution: FastCDC runs over ``translate(buf, perm)`` with a keyed seed,
which is the gear table ``T[b] = GEAR[perm[b]] ^ seed``, one of 256! * 2^63,
whose low bits no longer follow from a few guessed key bits. The cut points
are offsets, applied to the original bytes. The cost is one translate pass
(~280 MB/s here; encrypted filesystems only).

A keyed gear table is still not a PRF: the paper recovers keyed Gear and
Rabin parameters from chosen files when it sees exact chunk lengths. So an
encrypted blob's stored size is also padded to a Padmé class
(versionfs.blob.codec): the attacker sees each chunk's length only to within
~3% (16-32 KiB at 1 MiB chunks), which both hides chunk lengths from
fingerprinting and denies the key-recovery attacks the exact lengths they
need. Within one filesystem the key is fixed, so dedup works as before;
after an encrypted filesystem first gets keyed chunking, an edit to an old
file re-chunks to the file's end once, since the old cut points no longer
re-align.
"""

from __future__ import annotations

import hashlib

import pyfastcdc


def _keyed_parts(seed: int) -> tuple[int, bytes]:
    """(pyfastcdc seed, byte permutation) expanded from a 256-bit secret."""
    raw = hashlib.shake_256(b"versionfs/chunking/v1" + seed.to_bytes(32, "big")).digest(8 + 512)
    # pyfastcdc converts seed << 1 to uint64: 63 bits, and 0 means "unkeyed".
    gear_seed = (int.from_bytes(raw[:8], "big") >> 1) or 1
    perm = list(range(256))
    words = raw[8:]
    for i in range(255, 0, -1):          # Fisher-Yates with 16-bit draws (bias < 2^-8)
        j = int.from_bytes(words[2 * i:2 * i + 2], "big") % (i + 1)
        perm[i], perm[j] = perm[j], perm[i]
    return gear_seed, bytes(perm)


class Chunker:
    """FastCDC cut points over a buffer; keyed when `seed` is given.

    One instance per thread (pyfastcdc objects are not for concurrent use).
    """

    def __init__(self, avg: int, min_size: int, max_size: int, seed: int | None = None):
        gear_seed, self._perm = (0, None) if seed is None else _keyed_parts(seed)
        self._cdc = pyfastcdc.FastCDC(avg, min_size=min_size, max_size=max_size, seed=gear_seed)

    def cuts(self, buf: bytes) -> list[tuple[int, int]]:
        """(offset, length) of each chunk of `buf`; the last one ends with it."""
        if self._perm is not None:
            buf = buf.translate(self._perm)
        return [(ch.offset, ch.length) for ch in self._cdc.cut_buf(buf)]
