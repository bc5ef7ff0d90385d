"""The states a run or a job can be in, as string enums.

Each member is a ``str`` equal to the string it replaces (``TrainStatus.STOPPED ==
"stopped"``, hashed alike, written as its value in f-strings, JSON and MLflow), so the
stores, records and SLURM's output need no translation and callers adopt these gradually.

- ``TrainStatus``: how ``train()`` ended (``TrainResult.status``).
- ``RunStatus``: an MLflow run's status (mlflow's own ``RunStatus`` names).
- ``RunState``: the ``detlab.state`` tag (``STATE_TAG``) of a run that is not running but
  not over either.
- ``JobState``: a SLURM job's state as ``sacct``/``squeue`` print it; ``FINAL`` are its ends.

Torch- and mlflow-free: the commands that only ask how things stand import it.
"""

from __future__ import annotations

import sys
from enum import Enum

if sys.version_info >= (3, 11):
    from enum import StrEnum
else:  # pragma: no cover - Python 3.10

    class StrEnum(str, Enum):
        __str__ = str.__str__
        __format__ = str.__format__
        __hash__ = str.__hash__


class TrainStatus(StrEnum):
    """How ``train()`` ended."""

    COMPLETED = "completed"  # every step ran; the final checkpoint is written
    STOPPED = "stopped"  # a stop request (preemption, time limit): checkpointed, to resume
    HALTED = "halted"  # ended early on purpose (a pruned sweep trial): the run ends KILLED


class RunStatus(StrEnum):
    """An MLflow run's status."""

    RUNNING = "RUNNING"
    SCHEDULED = "SCHEDULED"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    KILLED = "KILLED"


ENDED = frozenset({RunStatus.FINISHED, RunStatus.FAILED, RunStatus.KILLED})

STATE_TAG = "detlab.state"  # the tag holding a RunState while the run is paused


class RunState(StrEnum):
    """The ``detlab.state`` tag: a run paused between two of its jobs."""

    REQUEUED = "requeued"  # stopped and checkpointed; its job runs again and reopens it


class JobState(StrEnum):
    """A SLURM job's state (the ones detlab acts on; SLURM may print others)."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    REQUEUED = "REQUEUED"
    PREEMPTED = "PREEMPTED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    NODE_FAIL = "NODE_FAIL"
    BOOT_FAIL = "BOOT_FAIL"
    DEADLINE = "DEADLINE"
    UNKNOWN = "UNKNOWN"  # no record of the job (yet, or any more)


FINAL = frozenset(
    {
        JobState.COMPLETED,
        JobState.FAILED,
        JobState.CANCELLED,
        JobState.TIMEOUT,
        JobState.OUT_OF_MEMORY,
        JobState.NODE_FAIL,
        JobState.BOOT_FAIL,
        JobState.DEADLINE,
    }
)  # a job's end (a PREEMPTED or REQUEUED one runs again)
