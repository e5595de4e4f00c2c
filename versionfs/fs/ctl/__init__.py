"""The control file's commands, one module per group; `registry` holds the table."""
