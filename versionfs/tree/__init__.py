"""The filesystem tree as it is kept in metadata: ``schema`` (how inodes,
directory entries, extents and xattrs are keyed in the MVCC store), ``history``
(the tree at a revision, diff, log, restore planning) and ``names`` (snapshot
directory names). Read by the mount, maintenance and the bucket alike."""
