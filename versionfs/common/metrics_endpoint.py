"""Prometheus metrics of a mount (`[metrics] listen = "127.0.0.1:9108"`).

Imported only when metrics are enabled (prometheus_client costs start-up
time): the FUSE handlers and the bucket session report to the light
versionfs.common.metrics, whose `request_done` returns at once until
`MetricsServer` hands it `_observe_request`. Gauges (upload backlog, snapshots, revision) are read from
the live objects at scrape time by a collector, from the HTTP server's thread,
so it only touches thread-safe things (the MVCC store, the Paired store, the
scheduler's counters).

Exported (all prefixed `versionfs_`):
  fuse_requests_total{op,result}    requests by FUSE operation, ok or error
  fuse_request_seconds{op}          latency histogram by operation
  bytes_read_total, bytes_written_total   file data through read()/write()
  chunk_cache_hits_total, chunk_cache_misses_total   decoded-chunk cache
  slow_store_fetches_total          blobs read from the slow store (fast-store misses)
  upload_backlog_blobs, upload_backlog_bytes, uploads_total
  damaged_fast_copies_total         fast-store copies that failed verification (treated as absent)
  upload_blocked_blobs              blobs waiting for upload with no good copy in either store
  upload_errors_total               upload-worker errors no retry covers (each also an ERROR line)
  snapshots, head_revision, auto_snapshots_taken_total, auto_snapshots_skipped_total
  background_errors_total{task}     failures of a background task (publish, lease, ...);
                                    each is also an ERROR/WARNING log line and a status line
  unpublished_changes, publishing_stopped   the bucket session (1 = stopped for good,
                                    the mount refuses writes; `status` says why)
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from versionfs.common import metrics

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)

REQUESTS = Counter("versionfs_fuse_requests", "FUSE requests by operation and result",
                   ["op", "result"], registry=REGISTRY)
LATENCY = Histogram("versionfs_fuse_request_seconds", "FUSE request latency by operation", ["op"],
                    buckets=(.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5,
                             1, 2.5, 5, 10), registry=REGISTRY)
BYTES_READ = Counter("versionfs_bytes_read", "file bytes returned by read()", registry=REGISTRY)
BYTES_WRITTEN = Counter("versionfs_bytes_written", "file bytes accepted by write()", registry=REGISTRY)
CACHE_HITS = Counter("versionfs_chunk_cache_hits", "reads served by the decoded-chunk cache",
                     registry=REGISTRY)
CACHE_MISSES = Counter("versionfs_chunk_cache_misses", "chunk reads that went to the blob store",
                       registry=REGISTRY)
SLOW_FETCHES = Counter("versionfs_slow_store_fetches",
                       "blobs fetched from the slow store because the fast store lacked them",
                       registry=REGISTRY)


def _observe_request(op: str, seconds: float, ok: bool, result: Any = None) -> None:
    REQUESTS.labels(op, "ok" if ok else "error").inc()
    LATENCY.labels(op).observe(seconds)
    if ok:
        if op == "read" and isinstance(result, (bytes, bytearray, memoryview)):
            BYTES_READ.inc(len(result))
        elif op == "write" and isinstance(result, int):
            BYTES_WRITTEN.inc(result)


class _MountCollector:
    """Gauges read from the mount's objects when Prometheus scrapes."""

    def __init__(self, fs, scheduler=None):
        self.fs = fs
        self.scheduler = scheduler

    def collect(self):
        meta, paired = self.fs.meta, self.fs.paired
        try:
            revs = meta.revisions()
            head = meta.head
        except Exception:                     # noqa: BLE001 - the store is closing
            return
        background = CounterMetricFamily("versionfs_background_errors",
                                         "failures of a background task, by task (each one is "
                                         "retried or shown in status)", labels=["task"])
        for task, count in metrics.background_errors().items():
            background.add_metric([task], count)
        yield background
        yield GaugeMetricFamily("versionfs_snapshots", "retained snapshots", value=len(revs))
        yield GaugeMetricFamily("versionfs_head_revision", "the live tree's revision", value=head)
        if paired is not None:
            st = paired.status()
            yield GaugeMetricFamily("versionfs_upload_backlog_blobs", "blobs waiting for upload",
                                    value=st.get("pending_count") or 0)
            yield GaugeMetricFamily("versionfs_upload_backlog_bytes", "bytes waiting for upload",
                                    value=st.get("pending_bytes") or 0)
            yield CounterMetricFamily("versionfs_uploads", "blobs uploaded to the slow store",
                                      value=st.get("uploaded_count") or 0)
            yield CounterMetricFamily("versionfs_damaged_fast_copies",
                                      "fast-store copies that failed verification",
                                      value=st.get("damaged_fast_copies") or 0)
            yield GaugeMetricFamily("versionfs_upload_blocked_blobs",
                                    "blobs waiting for upload with no good copy anywhere",
                                    value=st.get("unuploadable") or 0)
            yield CounterMetricFamily("versionfs_upload_errors",
                                      "upload-worker errors that no retry covers",
                                      value=st.get("upload_errors") or 0)
            if st.get("fast_bytes") is not None:
                yield GaugeMetricFamily("versionfs_fast_store_bytes", "bytes in the fast store",
                                        value=st["fast_bytes"])
        yield GaugeMetricFamily("versionfs_seal_failing_files",
                                "files whose last seal failed (data kept, retried with backoff)",
                                value=len(getattr(self.fs, "seal_failures", {})))
        journal = getattr(self.fs, "journal", None)
        if journal is not None:
            yield GaugeMetricFamily("versionfs_journal_files",
                                    "files with fsynced writes not yet sealed",
                                    value=journal.held_files())
        for name, text, value in getattr(self.fs, "reclaim_gauges", list)():
            yield GaugeMetricFamily(f"versionfs_{name}", text, value=value)
        cloud = getattr(self.fs, "cloud", None)
        if cloud is not None:
            for name, text, value in cloud.gauges():
                yield GaugeMetricFamily(f"versionfs_{name}", text, value=value)
        if self.scheduler is not None:
            yield CounterMetricFamily("versionfs_auto_snapshots_taken", "automatic snapshots taken",
                                      value=self.scheduler.taken)
            yield CounterMetricFamily("versionfs_auto_snapshots_skipped",
                                      "automatic snapshots skipped because nothing changed",
                                      value=self.scheduler.skipped)


def _count_cache(fs) -> None:
    """Count hits of the decoded-chunk cache and slow-store fetches by wrapping
    the two lookups on this mount's objects (no change to the data path)."""
    cache = getattr(getattr(fs, "data", None), "cache", None)
    if cache is not None and not getattr(cache, "_counted", False):
        lookup = cache.get

        def counted_get(key):
            data = lookup(key)
            (CACHE_HITS if data is not None else CACHE_MISSES).inc()
            return data
        cache.get = counted_get
        cache._counted = True
    paired = fs.paired
    slow_get = getattr(paired, "_slow_get", None)
    if slow_get is not None and not getattr(paired, "_counted", False):
        def counted_slow_get(key):
            SLOW_FETCHES.inc()
            return slow_get(key)
        paired._slow_get = counted_slow_get
        paired._counted = True


def parse_listen(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


class MetricsServer:
    """The HTTP endpoint for one mount; `close()` stops it."""

    def __init__(self, fs, listen: str, scheduler=None):
        from prometheus_client import start_http_server
        host, port = parse_listen(listen)
        self.collector = _MountCollector(fs, scheduler)
        REGISTRY.register(self.collector)
        try:
            self.server, self.thread = start_http_server(port, host, registry=REGISTRY)
        except OSError as e:
            REGISTRY.unregister(self.collector)
            raise OSError(e.errno, f"metrics endpoint {listen}: {e.strerror}") from None
        _count_cache(fs)
        metrics.observe_requests(_observe_request)
        self.address = f"{host}:{self.server.server_port}"
        log.info("Prometheus metrics at http://%s/metrics", self.address)

    def close(self) -> None:
        metrics.observe_requests(None)
        self.server.shutdown()
        self.server.server_close()
        REGISTRY.unregister(self.collector)
