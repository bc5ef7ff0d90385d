"""``detlab sweep``: the sweep layer's command, added to the platform's CLI through the
``detlab.commands`` entry point (pyproject.toml)."""

from __future__ import annotations

from detlab.platform.cli import Command


def run(cfg, sub: str | None, overrides: list[str], wait: bool) -> int:
    # lazy: the CLI loads this entry point for every command (its help lists it); optuna
    # and mlflow load for `detlab sweep` only
    from detlab.sweeps.driver import sweep_command

    return sweep_command(cfg, sub=sub or "run", wait=wait, overrides=overrides)


COMMAND = Command(
    help="create/resume an Optuna sweep (sweep=<name>); `sweep status` reports it",
    run=run,
    subcommands=("status", "run", "worker"),
)
