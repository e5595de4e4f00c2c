"""Issue 11, the blob layer under faults: a damaged local copy never reaches the
bucket, a blob with no good copy never counts as uploaded, and the upload
journal neither loses records nor dies with its worker.

Real parts throughout: DiskStore and DirectoryStore on tmp_path, the SeaweedFS
server of the fixtures as the bucket, a daemon mounted through the CLI, and
RLIMIT_FSIZE in a child process for writes that really come back short.
"""

import json
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


SHORT_WRITE = textwrap.dedent("""
    import json, resource, signal, sys
    sys.path.insert(0, {root!r})
    from versionfs.blob.journal import RECORD_SIZE, UploadJournal
    from versionfs.blob.pointer import Pointer
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)      # EFBIG instead of a signal
    path = sys.argv[1]
    keys = [Pointer.random() for _ in range(4)]
    journal = UploadJournal(path)
    journal.replay()
    journal.add([(keys[0], 1), (keys[1], 2)])
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (2 * RECORD_SIZE + 20, hard))
    acked, refused = keys[:2], []
    try:
        journal.add([(keys[2], 3)])                    # only 20 of its bytes fit
        acked.append(keys[2])
    except OSError as exc:
        refused.append(exc.errno)
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    journal.add([(keys[3], 4)])
    acked.append(keys[3])
    journal.close()
    journal = UploadJournal(path)
    pending = journal.replay()
    print(json.dumps({{"acked": [k.hex() for k in acked], "refused": refused,
                      "pending": [k.hex() for k in pending], "damaged": journal.damaged}}))
""")


def test_journal_short_write_is_completed_or_refused_never_half_kept(tmp_path):
    """Finding 6: os.write may write part of a record (here RLIMIT_FSIZE cuts it
    for real). An add that returned is replayed, one that failed leaves no torn
    record behind that would misalign every record after it."""
    script = tmp_path / "short.py"
    script.write_text(SHORT_WRITE.format(root=ROOT))
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "journal")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert set(result["acked"]) <= set(result["pending"]), result
    assert result["damaged"] == 0, result
    assert result["refused"], "a record that did not fit was reported as written"
