"""Progress that a person can follow on a terminal and in a log file alike.

On a TTY: a tqdm bar. Redirected (a SLURM log, `dvc repro > log`, CI): one line every
``every_s`` seconds and one at the end, e.g.

    gt-s0: step 120/200 (60%), loss 3.9120, 212 img/s, elapsed 1m02s, ETA 41s

so a log never stays silent for minutes, nor fills with a line per bar refresh.
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm


def clock(seconds: float) -> str:
    seconds = int(round(max(seconds, 0.0)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Progress:
    """``update(n)``, ``set(**values)`` (shown beside the count), ``close()``.

    ``enabled=False`` shows nothing; ``tty=None`` asks ``stream.isatty()``."""

    def __init__(self, total: int, desc: str, initial: int = 0, unit: str = "step",
                 enabled: bool = True, every_s: float = 30.0, stream=None,
                 tty: bool | None = None, rate_unit: tuple[str, int] | None = None):  # fmt: skip
        self.total, self.desc, self.n, self.unit = total, desc, initial, unit
        self.enabled, self.every_s = enabled, every_s
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.rate_unit = rate_unit  # ("img", images per unit) adds an img/s figure
        self.values: dict[str, str] = {}
        self.t0 = self.t_line = time.monotonic()
        self.start = initial
        self.bar = None
        if enabled and self.tty:
            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit,
                            dynamic_ncols=True, file=self.stream)  # fmt: skip

    def set(self, **values) -> None:
        self.values.update({k: f"{v:.4f}" if isinstance(v, float) else str(v)
                            for k, v in values.items()})  # fmt: skip
        if self.bar is not None:
            self.bar.set_postfix(self.values, refresh=False)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.bar is not None:
            if n:
                self.bar.update(n)
        elif self.enabled and time.monotonic() - self.t_line >= self.every_s:
            self.write_line()

    def goto(self, n: int, total: int | None = None) -> None:
        """Set the count (and total) outright, for progress read from elsewhere (a job's
        MLflow run, a sweep's storage)."""
        if total is not None:
            self.total = total
            if self.bar is not None:
                self.bar.total = total
        if self.bar is not None:
            self.bar.n = n
            self.bar.refresh()
        self.update(n - self.n)

    def line(self) -> str:
        elapsed = time.monotonic() - self.t0
        done = self.n - self.start
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        parts = [f"{self.desc}: {self.unit} {self.n}/{self.total}{pct}"]
        parts += [f"{k} {v}" for k, v in self.values.items()]
        if done > 0 and elapsed > 0:
            if self.rate_unit:
                name, per = self.rate_unit
                parts.append(f"{done * per / elapsed:.0f} {name}/s")
            parts.append(f"elapsed {clock(elapsed)}")
            if self.total and self.n < self.total:
                parts.append(f"ETA {clock(elapsed / done * (self.total - self.n))}")
        return ", ".join(parts)

    def write_line(self) -> None:
        print(self.line(), file=self.stream, flush=True)
        self.t_line = time.monotonic()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.enabled and self.n > self.start:
            self.write_line()
        self.enabled = False
