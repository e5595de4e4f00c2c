"""What the commands and the daemon share: ``config`` (config.toml's schema),
``units`` (sizes and durations as people write them), ``state`` (the state
directory: layout, lock, passphrase, opening the stores of the layers below),
``logs`` and ``metrics``. Above ``blob`` and ``meta``, which it assembles;
below everything that runs a filesystem."""
