"""The ``versionfs`` command line and the ctl-file client; `main` lists the groups."""
