"""The fault suite: each test injects one fault (requeue, time-limit signal, kill -9 of a
job, a local run or a sweep worker, bad input) into a real run and asserts what survives.
Every test here carries the `faults` marker (`pytest -m faults -s` prints the figures)."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(item.fspath).parents:
            item.add_marker(pytest.mark.faults)


@pytest.fixture
def interruption():
    """history (MLflow metric history of `loss`) -> (steps redone, seconds without progress
    across the interruption: the widest gap between consecutive logged steps)."""

    def measure(history) -> tuple[int, float]:
        stamps = sorted(m.timestamp for m in history)
        gap = max((b - a for a, b in zip(stamps, stamps[1:], strict=False)), default=0)
        return len(history) - len({m.step for m in history}), gap / 1000

    return measure
