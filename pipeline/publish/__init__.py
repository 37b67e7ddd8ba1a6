"""Publishing: immutable versions (store), their data card and report, diffs between versions and
the statistics those read from a version's own files."""
