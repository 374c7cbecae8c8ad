"""Running a batch of cases: the per-case loop, sequential or pipelined (:mod:`.runner`)."""

from .runner import BatchSettings, run_batch, use_pipeline  # noqa: F401
