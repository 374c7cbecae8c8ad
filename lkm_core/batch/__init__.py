"""Running many cases: the per-case loop, cancel, progress, report, sharding, review ranking."""
