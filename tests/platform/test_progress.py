"""Progress a person can follow: a bar on a TTY, periodic one-line reports in a log."""

from __future__ import annotations

import io
import re

from detlab.platform.progress import Progress, clock


def test_clock_formats():
    assert clock(5) == "5s" and clock(62) == "1m02s" and clock(3725) == "1h02m"


def test_log_mode_writes_a_line_per_interval_with_rate_and_eta():
    out = io.StringIO()
    bar = Progress(10, "byol-global-r64-s0", enabled=True, every_s=0.0, stream=out, tty=False,
                   rate_unit=("img", 32))  # fmt: skip
    bar.set(loss=1.25)
    bar.update(4)
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2  # the update (interval 0) and the close
    assert re.fullmatch(
        r"byol-global-r64-s0: step 4/10 \(40%\), loss 1\.2500, \d+ img/s, elapsed \d+s, ETA \d+s",
        lines[0],
    )
    assert "\r" not in out.getvalue()  # no bar redraws in a log


def test_log_mode_is_quiet_between_intervals_and_disabled_mode_is_silent():
    out = io.StringIO()
    bar = Progress(100, "run", every_s=3600.0, stream=out, tty=False)
    for _ in range(100):
        bar.update(1)
    assert out.getvalue() == ""  # nothing before the interval has passed ...
    bar.close()
    assert out.getvalue().startswith("run: step 100/100 (100%)")  # ... then the final line
    silent = io.StringIO()
    off = Progress(5, "x", enabled=False, every_s=0.0, stream=silent, tty=False)
    off.update(5)
    off.close()
    assert silent.getvalue() == ""


def test_goto_sets_the_count_and_total_outright():
    out = io.StringIO()
    bar = Progress(3, "sweep s", unit="trial", every_s=0.0, stream=out, tty=False)
    bar.goto(2, total=5)
    assert out.getvalue().startswith("sweep s: trial 2/5 (40%)")


def test_tty_mode_draws_a_bar():
    out = io.StringIO()
    bar = Progress(4, "run", stream=out, tty=True)
    bar.update(4)
    bar.close()
    assert "4/4" in out.getvalue() and "\r" in out.getvalue()
