"""Write-ahead log (a Python rendering of etcd's ``wal`` package, seed 004).

A WAL is a directory of segment files named ``%016x-%016x.wal`` (sequence
number, index of the first entry the segment may hold).  Every segment starts
with a CRC record (the running checksum carried over from the previous
segment), the WAL's metadata record and the latest state record, then entry and
state records are appended.

Like etcd's WAL, a WAL is in read mode after ``open_at_index`` and in append
mode after ``create`` or after ``read_all`` has consumed every record.

One module per step of a record's life:

    record.py    the frame on disk and its chained CRC; encoding; ``Entry``
    decode.py    reading a segment's frames back; ``read_entries`` beside a writer
    repair.py    why and how a torn tail of the last segment is cut off
    segments.py  segment names, listing them in order
    wal.py       the ``WAL``: open, read_all, append, sync, cut, release
    errors.py    what can go wrong
"""
