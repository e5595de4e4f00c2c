"""The bucket: what makes a filesystem recoverable from object storage alone.
``publish`` (metadata checkpoints, WAL segments and the head record, updated
by compare-and-swap), ``lease`` (one writer at a time), ``session`` (the mount
daemon's link to its bucket: taking the lease, catching up with a newer head,
lease renewal and publishing in the background), ``catchup`` (replacing local
metadata with a newer head, never an older one), ``seen`` (what a state dir
remembers of its bucket: the newest head, the lease it held), ``clone`` (a new
machine from the bucket and the key)."""
