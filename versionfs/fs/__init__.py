"""The mounted filesystem: pyfuse3 Operations on trio, control directory, snapshot views."""
