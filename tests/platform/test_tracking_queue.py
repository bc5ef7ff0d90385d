"""The tracking queue with a fake store: order kept through memory and disk, nothing lost
through an outage, the rest spilled in order when the run ends first and written first by
the next queue, refusals skipped, puts never waiting on the store."""

from __future__ import annotations

import threading
import time

import pytest

from detlab.platform.tracking_queue import TrackingQueue, read_spill


class Store:
    """Records what it was given; ``down`` makes every write fail (an outage), after
    ``hang`` seconds when set (a client's own retries); ``refuse`` names records it rejects
    as a store would (a bad request)."""

    def __init__(self, hang: float = 0.0):
        self.written: list[int] = []
        self.down = threading.Event()
        self.refuse: set[int] = set()
        self.calls = 0
        self.hang = hang

    def apply(self, records):
        self.calls += 1
        if self.down.is_set():
            time.sleep(self.hang)
            raise ConnectionError("connection refused")
        if any(r["i"] in self.refuse for r in records):
            raise ValueError("refused")
        self.written += [r["i"] for r in records]


def first_seen(xs: list[int]) -> list[int]:
    return list(dict.fromkeys(xs))


def wait_for(predicate, timeout=20.0):
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, "timed out"
        time.sleep(0.01)


def test_an_outage_loses_nothing_and_keeps_the_order_through_memory_and_disk(tmp_path, capsys):
    store = Store(hang=3.0)
    queue = TrackingQueue(store.apply, tmp_path / "run.jsonl", size=50)
    for i in range(30):
        queue.put({"op": "metrics", "i": i})
    wait_for(lambda: len(store.written) == 30)
    store.down.set()
    queue.put({"op": "metrics", "i": 30})
    wait_for(lambda: store.calls == 2)  # the writer is inside a call that hangs 3 s
    for i in range(31, 500):  # 450 past the memory bound go to disk
        queue.put({"op": "metrics", "i": i})
    assert store.calls == 2  # every put returned while that one call still hung
    assert queue.pending() == 470 and (tmp_path / "run.jsonl").exists()
    wait_for(lambda: store.calls >= 4)  # the writer keeps trying while the store is down
    store.down.clear()
    wait_for(lambda: queue.pending() == 0)
    assert queue.close(timeout=5) == 0
    assert first_seen(store.written) == list(range(500))
    assert not (tmp_path / "run.jsonl").exists()  # read back and removed
    err = capsys.readouterr().err
    assert err.count("store not answering") == 1 and err.count("caught up") == 1
    assert err.count("queue full") == 1


def test_the_rest_waits_on_disk_in_order_and_the_next_queue_writes_it_first(tmp_path):
    spill = tmp_path / "run.jsonl"
    store = Store()
    store.down.set()
    queue = TrackingQueue(store.apply, spill, size=10)
    for i in range(25):
        queue.put({"op": "metrics", "i": i})
    assert queue.close(timeout=0.5) == 25
    assert [r["i"] for r in read_spill(spill)] == list(range(25))
    with pytest.raises(RuntimeError, match="after close"):
        queue.put({"op": "metrics", "i": 99})

    with open(spill, "a") as f:  # a process killed while writing its last line
        f.write('{"op": "metrics", "i"')
    store.down.clear()
    again = TrackingQueue(store.apply, spill, size=10)
    for i in range(25, 40):
        again.put({"op": "metrics", "i": i})
    assert again.close(timeout=10) == 0
    assert first_seen(store.written) == list(range(40))
    assert not spill.exists()


def test_a_refused_record_is_skipped_and_said_the_others_are_written(tmp_path, capsys):
    store = Store()
    store.refuse = {3}
    queue = TrackingQueue(
        store.apply, tmp_path / "run.jsonl", refused=lambda e: isinstance(e, ValueError)
    )
    for i in range(6):
        queue.put({"op": "params", "i": i})
    assert queue.close(timeout=10) == 0
    assert first_seen(store.written) == [0, 1, 2, 4, 5] and queue.refusals == 1
    assert "refused a params record" in capsys.readouterr().err


def test_a_queue_size_below_one_is_refused(tmp_path):
    with pytest.raises(ValueError, match="queue_size"):
        TrackingQueue(Store().apply, tmp_path / "x.jsonl", size=0)


def test_a_write_that_hangs_is_said_once_while_training_puts(tmp_path, capsys):
    """A client retrying inside one call raises only when it gives up (MLflow's retries last
    minutes): the falling behind is said from the training side after ``behind_s``."""
    store = Store(hang=2.0)
    store.down.set()
    queue = TrackingQueue(store.apply, tmp_path / "run.jsonl", behind_s=0.3)
    queue.put({"op": "metrics", "i": 0})
    wait_for(lambda: store.calls == 1)
    time.sleep(0.5)
    for i in range(1, 20):
        queue.put({"op": "metrics", "i": i})
    assert store.calls == 1  # still the first call: the line came from a put
    assert capsys.readouterr().err.count("store not answering (no answer for") == 1
    store.down.clear()
    assert queue.close(timeout=10) == 0
    assert first_seen(store.written) == list(range(20))
    assert "caught up" in capsys.readouterr().err
