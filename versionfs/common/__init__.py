"""What the commands and the daemon share: ``config`` (config.toml's schema),
``units`` (sizes and durations as people write them), ``state`` (the state
directory: layout, lock, passphrase, opening the stores of the layers below),
``keys`` (passphrase changes, recovery keys), ``privacy`` (private files by
default), ``logs``, ``metrics`` (and ``metrics_endpoint``, the Prometheus side, imported only when enabled), ``memory`` (the daemon's memory budget) and ``marks`` (collecting the functions a
module marks as commands). Above ``blob`` and ``meta``, which it assembles;
below everything that runs a filesystem."""
