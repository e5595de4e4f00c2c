"""The filesystem tree as it is kept in metadata: ``schema`` (how inodes,
directory entries, extents and xattrs are keyed in the MVCC store),
``at_revision`` (the tree at a revision), ``diff`` (what changed, log),
``restore`` (restore planning and progress) and ``names`` (snapshot
directory names). Read by the mount, maintenance and the bucket alike."""
