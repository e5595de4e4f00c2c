"""Blob-layer throughput: codec, fast store, slow store (SeaweedFS) and the pair.

    .venv/bin/python bench/blob.py [--quick]

Prints MB/s (10^6 bytes per second). The slow store is a SeaweedFS started
here on 127.0.0.1 (tests/s3server.py); everything it wrote is removed at exit.
Data is incompressible (os.urandom) unless a line says otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from versionfs.blob.codec import Codec  # noqa: E402
from versionfs.blob.disk import DiskStore  # noqa: E402
from versionfs.blob.keys import new_master_key  # noqa: E402
from versionfs.blob.paired import Paired  # noqa: E402
from versionfs.blob.pointer import Pointer  # noqa: E402
from versionfs.blob.s3 import S3Store  # noqa: E402

KIB, MIB = 1024, 1024 * 1024


def load_s3server():
    spec = importlib.util.spec_from_file_location("s3server", ROOT / "tests" / "s3server.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def report(label: str, nbytes: int, seconds: float) -> None:
    print(f"  {label:<46} {nbytes / seconds / 1e6:9.0f} MB/s")


def timed(fn, *args) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def in_threads(threads: int, work, items) -> float:
    """Seconds to run work(item) over items with ``threads`` threads."""
    if threads == 1:
        return timed(lambda: [work(i) for i in items])
    with ThreadPoolExecutor(threads) as pool:
        t = time.perf_counter()
        list(pool.map(work, items))
        return time.perf_counter() - t


def bench_codec(total: int) -> None:
    print("codec, 1 MiB blobs")
    block = os.urandom(MIB)
    n = total // MIB
    text = (b"".join(b"line %d of a rather repetitive log file\n" % i for i in range(30000)))[:MIB]
    plain, enc = Codec(None), Codec(new_master_key())
    chacha = Codec(new_master_key(), cipher="chacha20-poly1305")
    for threads in (1, 2):
        items = [block] * n
        report(f"sha256 hash, {threads} thread(s)", n * MIB,
               in_threads(threads, lambda b: hashlib.sha256(b).digest(), items))
        report(f"zstd-3 attempt on incompressible, {threads} thr", n * MIB,
               in_threads(threads, lambda b: plain._maybe_compress(b), items))
        report(f"zstd-3 on text, {threads} thr", n * MIB,
               in_threads(threads, lambda b: plain._maybe_compress(b), [text] * n))
        report(f"encode plain (hash+compress), {threads} thr", n * MIB,
               in_threads(threads, plain.encode, items))
        report(f"encode AES-GCM (hmac+compress+encrypt), {threads} thr", n * MIB,
               in_threads(threads, enc.encode, items))
        report(f"encode ChaCha20-Poly1305, {threads} thr", n * MIB,
               in_threads(threads, chacha.encode, items))
        p, stored = enc.encode(block)
        report(f"decode AES-GCM (verify+decrypt), {threads} thr", n * MIB,
               in_threads(threads, lambda s: enc.decode(p, s), [stored] * n))
        p2, stored2 = plain.encode(block)
        report(f"decode plain (verify sha256), {threads} thr", n * MIB,
               in_threads(threads, lambda s: plain.decode(p2, s), [stored2] * n))


def blobs(size: int, total: int) -> list[tuple[Pointer, bytes]]:
    base = os.urandom(size)
    # Distinct keys, shared bytes: the benchmark measures the store, not urandom.
    return [(Pointer.random(), base) for _ in range(max(total // size, 4))]


def bench_store(name: str, store, total: int, threads: int) -> None:
    print(f"{name} ({threads} threads)")
    for size in (64 * KIB, 4 * MIB):
        items = blobs(size, total)
        nbytes = len(items) * size
        report(f"put {size // KIB} KiB", nbytes, in_threads(threads, lambda kv: store.put(*kv), items))
        report(f"get {size // KIB} KiB", nbytes, in_threads(threads, lambda kv: store.get(kv[0]), items))
        if hasattr(store, "put_many") and name.startswith("fast"):
            batch = blobs(size, total)
            groups = [batch[i:i + 16] for i in range(0, len(batch), 16)]
            report(f"put_many {size // KIB} KiB, 16 per batch", len(batch) * size,
                   in_threads(threads, store.put_many, groups))


def bench_pair(pair: Paired, total: int, threads: int) -> None:
    print(f"pair: DiskStore + SeaweedFS, 4 upload threads ({threads} writer threads)")
    pair.start()
    for size in (64 * KIB, 4 * MIB):
        items = blobs(size, total)
        nbytes = len(items) * size
        t = time.perf_counter()
        put_s = in_threads(threads, lambda kv: pair.put(*kv), items)
        pair.flush()
        both = time.perf_counter() - t
        report(f"put {size // KIB} KiB (returns when journaled)", nbytes, put_s)
        report(f"put {size // KIB} KiB + flush (on S3)", nbytes, both)
        report(f"get {size // KIB} KiB (hot, from fast)", nbytes,
               in_threads(threads, lambda kv: pair.get(kv[0]), items))
        for key, _ in items:
            pair.fast.delete(key)
        report(f"get {size // KIB} KiB (cold: S3, copied back)", nbytes,
               in_threads(threads, lambda kv: pair.get(kv[0]), items))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="less data, rougher figures")
    args = parser.parse_args()
    scale = 1 if args.quick else 4
    print(f"{os.cpu_count()} CPUs, python {sys.version.split()[0]}")
    bench_codec(64 * MIB * scale)
    work = Path(tempfile.mkdtemp(prefix="vfs-bench-"))
    s3server = load_s3server()
    server = s3server.S3Server(work / "seaweedfs")
    try:
        fast = DiskStore(work / "fast")
        bench_store("fast store: DiskStore (fsync per blob)", fast, 64 * MIB * scale, 2)
        server.start()
        os.environ.update(server.env())
        bucket = server.new_bucket()
        slow = S3Store(f"s3://{bucket}/bench")
        bench_store("slow store: S3Store on SeaweedFS", slow, 32 * MIB * scale, 4)
        pair = Paired(DiskStore(work / "pair-fast"), S3Store(f"s3://{bucket}/pair"),
                      work / "journal")
        bench_pair(pair, 32 * MIB * scale, 2)
        pair.close()
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    sys.exit(main())
