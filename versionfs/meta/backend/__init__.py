"""Batched LMDB backend (a Python rendering of etcd's ``mvcc/backend``, seed 000).

Writers queue puts and deletes into the *current batch* (``batch_tx()``); one
writer thread commits the batch as a single LMDB write transaction once it is
``batch_interval`` seconds old or holds ``batch_limit`` operations, whichever
comes first.  LMDB write transactions are bound to the thread that began them,
so every write transaction in this package runs on that one thread; other
threads hand it work (``batch_tx``, ``run``) and read on their own read-only
snapshots (``read_snapshot``), which LMDB's MVCC keeps consistent while writes
go on.

The handles callers hold first, the implementation behind them:

    batch.py     ``BatchTx``: the open batch a writer queues into
    snapshot.py  ``ReadSnapshot``: a consistent read-only view
    errors.py    quota, disk full, locked
    backend.py   ``Backend``: the LMDB environment, the writer thread, durability
    copies.py    whole-file copies: defrag, backup, restore
"""
