"""Tracking off the training path: a bounded queue that one background thread drains.

A :class:`~detlab.platform.tracking.RunLogger` puts each record here (params, tags, metrics
with their step and the moment they were logged, a text or file artifact, the run's end) and
returns at once; the writer thread hands them, in order, to ``apply`` (which talks to the
store). When the store does not answer, training goes on: records wait in memory up to
``size``, then on disk in the spill file, and the writer retries with a growing pause. One
line on stderr says tracking fell behind, one that it caught up.

``close(timeout)`` waits for everything to be written; what is still waiting then (the
store is down for longer than the run) stays in the spill file, which ``read_spill`` gives
back for a later replay into the same run (``detlab jobs``, or the run's next start).

Order is kept across memory and disk: once a record has gone to disk, later ones follow it
there until the writer has read the file back, so the queue is always (the batch being
written, memory, the unread rest of the file). A record that may already have landed (the
batch in flight when time ran out) is kept rather than dropped: the store applies records
idempotently (an identical metric is stored once, params are write-once, tags and statuses
are overwritten with the same value).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

BATCH = 200  # records handed to ``apply`` at a time
MAX_PAUSE_S = 10.0  # the longest wait between two tries while the store is down
BEHIND_S = 10.0  # a write unanswered this long: tracking has fallen behind (said once)


class TrackingQueue:
    """Records for one run, written by a daemon thread through ``apply(records)``.

    ``refused(exc)`` tells an error that retrying cannot cure (the store refused the
    request) from an outage: refused records are reported and skipped, one at a time."""

    def __init__(
        self,
        apply: Callable[[list[dict]], None],
        spill: Path,
        size: int = 10_000,
        what: str = "tracking",
        refused: Callable[[BaseException], bool] = lambda exc: False,
        behind_s: float = BEHIND_S,
    ):
        if size < 1:
            raise ValueError(f"tracking.queue_size must be >= 1, got {size}")
        self._apply, self._spill, self._size = apply, Path(spill), size
        self._what, self._refused, self._behind_s = what, refused, behind_s
        self._cond = threading.Condition()
        self._memory: deque[dict] = deque()
        self._batch: list[dict] = []  # taken by the writer, not yet confirmed written
        # records in the spill file after byte ``_read_at``: a file left by an earlier
        # process for this run is written first (the run's next start replays it)
        self._on_disk, self._read_at = _lines(self._spill), 0
        self._closing = self._abandoned = False
        self._busy_since: float | None = None  # when the write in flight began
        self.behind_since: float | None = None  # when the store stopped answering
        self.written = self.spilled = self.refusals = self.outages = 0
        self._thread = threading.Thread(target=self._run, name="detlab-tracking", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- the training side

    def put(self, record: dict) -> None:
        """Queue one record; never waits on the store."""
        with self._cond:
            if self._closing:
                raise RuntimeError(f"{self._what}: record after close: {record.get('op')}")
            if self._on_disk or len(self._memory) >= self._size:
                if not self._on_disk and not self.spilled:
                    self._say(f"queue full ({self._size} records): later ones wait in "
                              f"{self._spill}")  # fmt: skip
                self._append([record])
                self._on_disk += 1
                self.spilled += 1
            else:
                self._memory.append(record)
            self._cond.notify()
            # a client retrying inside one call raises only when it gives up: say it here
            busy = self._busy_since
            if busy is not None and time.time() - busy > self._behind_s:
                self._fell_behind(busy, f"no answer for {time.time() - busy:.0f} s")

    @property
    def spill(self) -> Path:
        return self._spill

    def pending(self) -> int:
        with self._cond:
            return len(self._batch) + len(self._memory) + self._on_disk

    def close(self, timeout: float) -> int:
        """Wait up to ``timeout`` s for every record to be written; leave the rest in the
        spill file (in order) and return how many were left there (0: all written)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(max(timeout, 0.0))
        with self._cond:
            self._abandoned = True  # a writer still inside a store call stops after it
            self._cond.notify_all()
            left = [*self._batch, *self._memory]
            rest = self._unread()
            self._batch, self._memory, self._on_disk = [], deque(), 0
            if not left and not rest:
                return 0
            self._spill.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._spill.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in left) + rest)
            tmp.replace(self._spill)
            self._read_at = 0
            return len(left) + rest.count("\n")

    # ------------------------------------------------------------------- the writer

    def _run(self) -> None:
        pause = 0.5
        while True:
            with self._cond:
                while not (self._batch or self._memory or self._on_disk or self._closing):
                    self._cond.wait()
                if self._abandoned:
                    return
                if not self._batch:
                    self._batch = self._take()
                if not self._batch:  # closing and drained
                    return
                batch = list(self._batch)
                self._busy_since = time.time()
            try:
                self._write(batch)
            except Exception as exc:  # the store is unreachable: wait, then try again
                with self._cond:
                    self._busy_since = None
                    self._fell_behind(time.time(), f"{type(exc).__name__}: {str(exc)[:160]}")
                    self._cond.wait(pause)
                pause = min(pause * 2, MAX_PAUSE_S)
                continue
            pause = 0.5
            with self._cond:
                self._busy_since = None
                if self._abandoned:
                    return
                self._batch = []
                self.written += len(batch)
                if self.behind_since is not None and not (self._memory or self._on_disk):
                    self._say(f"caught up after {time.time() - self.behind_since:.0f} s "
                              f"({self.written} records written)")  # fmt: skip
                    self.behind_since = None

    def _fell_behind(self, since: float, why: str) -> None:
        """Said once per outage (lock held)."""
        if self.behind_since is None:
            self.behind_since, self.outages = since, self.outages + 1
            self._say(f"store not answering ({why}); training goes on, {self.pending()} "
                      f"records wait here and in {self._spill}")  # fmt: skip

    def _write(self, batch: list[dict]) -> None:
        """The whole batch, or record by record once the store refused part of it."""
        try:
            self._apply(batch)
            return
        except Exception as exc:
            if not self._refused(exc):
                raise
        for record in batch:
            try:
                self._apply([record])
            except Exception as exc:
                if not self._refused(exc):
                    raise
                self.refusals += 1
                self._say(f"the store refused a {record.get('op')} record, skipped: "
                          f"{str(exc)[:200]}")  # fmt: skip

    def _take(self) -> list[dict]:
        """The next records in order (lock held): from memory, else from the spill file."""
        if self._memory:
            return [self._memory.popleft() for _ in range(min(BATCH, len(self._memory)))]
        if not self._on_disk:
            return []
        with open(self._spill, "rb") as f:
            f.seek(self._read_at)
            lines = [f.readline() for _ in range(min(BATCH, self._on_disk))]
            self._read_at = f.tell()
        self._on_disk -= len(lines)
        if not self._on_disk:  # all read back: new records go to memory again
            self._spill.unlink()
            self._read_at = 0
        return _parse(lines)

    def _append(self, records: list[dict]) -> None:
        self._spill.parent.mkdir(parents=True, exist_ok=True)
        with open(self._spill, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)

    def _unread(self) -> str:
        if not self._on_disk:
            return ""
        with open(self._spill) as f:
            f.seek(self._read_at)
            return f.read()

    def _say(self, text: str) -> None:
        print(f"detlab {self._what}: {text}", file=sys.stderr, flush=True)


def read_spill(path: Path) -> list[dict]:
    """The records a closed queue left in ``path``, in order (a torn last line, from a
    process killed while writing it, is dropped)."""
    return _parse(Path(path).read_bytes().splitlines(keepends=True))


def _lines(path: Path) -> int:
    """How many records ``path`` holds (0 when absent); a torn last line is ended."""
    if not path.exists():
        return 0
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "ab") as f:
            f.write(b"\n")
        return data.count(b"\n") + 1
    return data.count(b"\n")


def _parse(lines: list[bytes]) -> list[dict]:
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a torn line
            continue
    return records
