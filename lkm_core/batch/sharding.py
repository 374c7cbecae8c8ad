"""Splitting a batch over many processes or machines: which part of the cases this one runs.

Sources:

1. ``--num-parts N --part-id K`` given on the command line (overrides everything else);
2. a SLURM job array: ``SLURM_ARRAY_TASK_ID`` with ``SLURM_ARRAY_TASK_MIN`` and
   ``SLURM_ARRAY_TASK_STEP`` (default 1) and either ``SLURM_ARRAY_TASK_COUNT`` or
   ``SLURM_ARRAY_TASK_MAX``. Arrays need not start at 0 (``--array=1-8``, ``--array=0-30:10``):
   the part is the task's position in the array. Irregular index lists (``--array=1,4,9``)
   cannot be mapped onto parts and are refused;
3. the processes of one launch inside it: torchrun (and launchers following it) with
   ``WORLD_SIZE`` > 1 and ``RANK``, or else the tasks of a SLURM job step (``srun -n N``):
   ``SLURM_PROCID`` of ``SLURM_STEP_NUM_TASKS`` (or ``SLURM_NTASKS``), only inside a step
   (``SLURM_STEP_ID`` set: a batch script's own ``SLURM_NTASKS`` splits nothing, as the script
   runs once). A multi-node torchrun's world already spans the srun tasks that started it.

A launch inside an array task splits that task's part further: array part A of P, process R of
W is part A * W + R of P * W. ``WORLD_SIZE=1`` (or one srun task) splits nothing, so it never
hides the array.

Part K of N runs cases K, K+N, K+2N, ... of the sorted case list, so parts never overlap and
together cover every case.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import LKMError


class ShardError(LKMError):
    kind = "usage"


@dataclass(frozen=True)
class Shard:
    parts: int = 1
    part: int = 0
    source: str = "none"     # "options", "none", or the environment's: "slurm", "torchrun",
                             # "srun", "slurm+torchrun", "slurm+srun"
    detail: str = ""         # the values it came from, for the log line

    def select(self, cases: list) -> list:
        return cases[self.part::self.parts]

    @property
    def label(self) -> str:
        """``part-2-of-5`` (file-name safe), or "" when the batch is not split."""
        return f"part-{self.part}-of-{self.parts}" if self.source != "none" else ""

    def describe(self, selected: int, total: int) -> str:
        if self.source == "none":
            return f"running all {total} case(s) (no sharding)"
        return (f"running part {self.part} of {self.parts} ({selected} of {total} case(s)), "
                f"from {self.detail}")


def _int(environ, name: str) -> int:
    value = environ.get(name, "")
    try:
        return int(value)
    except ValueError:
        raise ShardError(f"The environment variable {name}={value!r} is not an integer.") from None


def resolve_shard(num_parts=None, part_id=None, environ=None) -> Shard:
    """The part this process runs (see the module docstring for the precedence)."""
    env = os.environ if environ is None else environ
    if num_parts is not None or part_id is not None:
        if num_parts is None or part_id is None or num_parts < 1 or not 0 <= part_id < num_parts:
            raise ShardError("--num-parts N and --part-id K go together, with 0 <= K < N.")
        return Shard(num_parts, part_id, "options", f"--num-parts {num_parts} --part-id {part_id}")
    outer = _slurm(env) if "SLURM_ARRAY_TASK_ID" in env else None
    inner = _torchrun(env) or _srun(env)
    if outer and inner:
        return Shard(outer.parts * inner.parts, outer.part * inner.parts + inner.part,
                     f"{outer.source}+{inner.source}", f"{outer.detail}, {inner.detail}")
    return outer or inner or Shard()


def _torchrun(env) -> Shard | None:
    if "WORLD_SIZE" not in env or "RANK" not in env:
        return None
    parts, part = _int(env, "WORLD_SIZE"), _int(env, "RANK")
    if parts < 1 or not 0 <= part < parts:
        raise ShardError(f"torchrun's RANK={part} does not fit WORLD_SIZE={parts}.")
    if parts == 1:
        return None
    return Shard(parts, part, "torchrun", f"torchrun RANK={part} WORLD_SIZE={parts}")


def _srun(env) -> Shard | None:
    if "SLURM_PROCID" not in env or not ("SLURM_STEP_ID" in env or "SLURM_STEPID" in env):
        return None
    name = "SLURM_STEP_NUM_TASKS" if "SLURM_STEP_NUM_TASKS" in env else "SLURM_NTASKS"
    if name not in env:
        return None
    parts, part = _int(env, name), _int(env, "SLURM_PROCID")
    if parts < 1 or not 0 <= part < parts:
        raise ShardError(f"SLURM_PROCID={part} does not fit {name}={parts}.")
    if parts == 1:
        return None
    return Shard(parts, part, "srun", f"srun task SLURM_PROCID={part} of {name}={parts}")


def _slurm(env) -> Shard:
    task = _int(env, "SLURM_ARRAY_TASK_ID")
    lo = _int(env, "SLURM_ARRAY_TASK_MIN") if "SLURM_ARRAY_TASK_MIN" in env else None
    step = _int(env, "SLURM_ARRAY_TASK_STEP") if "SLURM_ARRAY_TASK_STEP" in env else 1
    if lo is None or step < 1:
        raise ShardError("SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_MIN is not (or the "
                         "step is not positive); pass --num-parts/--part-id instead.")
    if "SLURM_ARRAY_TASK_MAX" in env:
        hi = _int(env, "SLURM_ARRAY_TASK_MAX")
        parts = (hi - lo) // step + 1
    elif "SLURM_ARRAY_TASK_COUNT" in env:
        parts = _int(env, "SLURM_ARRAY_TASK_COUNT")
        hi = lo + (parts - 1) * step
    else:
        raise ShardError("SLURM_ARRAY_TASK_ID is set but neither SLURM_ARRAY_TASK_MAX nor "
                         "SLURM_ARRAY_TASK_COUNT is; pass --num-parts/--part-id instead.")
    count = _int(env, "SLURM_ARRAY_TASK_COUNT") if "SLURM_ARRAY_TASK_COUNT" in env else parts
    detail = (f"SLURM_ARRAY_TASK_ID={task} (array {lo}-{hi}"
              + (f":{step}" if step != 1 else "") + f", {count} tasks)")
    if count != parts or not lo <= task <= hi or (task - lo) % step:
        raise ShardError(f"The SLURM job array ({detail}) is not a regular range "
                         "(--array=A-B or A-B:S), so its tasks cannot be numbered as parts; "
                         "use a range, or pass --num-parts/--part-id.")
    return Shard(parts, (task - lo) // step, "slurm", detail)
