"""`detlab <command> [hydra overrides]`: the one command-line entry point.

Commands are thin: they compose the config (errors name the key) and hand typed
sub-configs to the code that does the work. Heavy imports happen inside each command.
The platform's own commands are below; a layer above adds its own (``detlab sweep``) as a
``Command`` named by an entry point of the group ``detlab.commands`` (pyproject.toml), so
that the platform never imports the layers that use it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points

from detlab.platform.compose import ConfigError, compose, group_options

COMMANDS = {
    "pretrain": "pretrain a registered method (local or SLURM, per cluster=...)",
    "eval": "evaluate a checkpoint or MLflow run with eval=<knn|linear|seg|det>",
    "export": "write a torchvision-compatible backbone state_dict from checkpoint=<path>",
    "import-weights": "convert format=<detcon|soco|...> src=<file> to a torchvision out=<file.pt>",
    "jobs": "list detlab's SLURM jobs (state, MLflow run, log); end runs left RUNNING by dead jobs",
    "config": "print the composed config for the given overrides",
}


GROUPS = ("method", "masks", "backbone", "optim", "eval", "data", "cluster", "sweep")


@dataclass(frozen=True)
class Command:
    """A command added from a layer above: ``run(cfg, sub, overrides, wait) -> exit code``,
    ``sub`` being one of ``subcommands`` when the first override names one, else None."""

    help: str
    run: Callable[..., int]
    subcommands: tuple[str, ...] = ()


@cache
def plugins() -> dict[str, Command]:
    """The ``detlab.commands`` entry points, loaded."""
    return {ep.name: ep.load() for ep in entry_points(group="detlab.commands")}


def _epilog() -> str:
    helps = {**COMMANDS, **{k: c.help for k, c in plugins().items()}}
    lines = ["commands:", *(f"  {k:<14} {v}" for k, v in helps.items()), "",
             "config groups (choose one with group=option; keys with key=value):"]  # fmt: skip
    lines += [f"  {g:<9} {', '.join(group_options(g))}" for g in GROUPS]
    lines += ["", "`detlab config <overrides>` prints every key with its value.",
              "Errors print one line; --verbose (or HYDRA_FULL_ERROR=1) adds the traceback."]  # fmt: skip
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="detlab",
        description="Object-level self-supervised pretraining sweeps.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_epilog(),
    )
    p.add_argument("command", choices=sorted([*COMMANDS, *plugins()]), metavar="command")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. method=detcon_b")
    p.add_argument("--wait", action="store_true", help="follow a submitted job or sweep")
    p.add_argument("--verbose", action="store_true", help="print tracebacks of errors")
    return p


def one_line(exc: BaseException) -> str:
    """``Type: first line`` of an error (the name alone when it has no message)."""
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    args, extra = _parser().parse_known_args(argv)
    overrides = [*args.overrides, *extra]
    if args.command == "import-weights":  # its own key=value arguments, no config
        from detlab.methods.weights.convert import import_weights_command

        return import_weights_command(overrides)
    sub, plugin = None, plugins().get(args.command)
    if plugin and overrides and overrides[0] in plugin.subcommands:
        sub, overrides = overrides[0], overrides[1:]
    try:
        cfg = compose(overrides)
    except ConfigError as exc:
        print(f"detlab {args.command}: config error: {exc}", file=sys.stderr)
        return 2
    try:
        return run_command(args, cfg, sub, overrides)
    except KeyboardInterrupt:
        print(f"detlab {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line for people; the traceback on request
        if args.verbose or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"detlab {args.command}: error: {one_line(exc)} (--verbose for the traceback)",
              file=sys.stderr)  # fmt: skip
        return 2 if is_input_error(exc) else 1


def is_input_error(exc: BaseException) -> bool:
    """Bad input (a missing or corrupt file, a mask/dataset mismatch, an impossible request):
    detlab's own ValueErrors, all raised before compute. Exit code 2, like a config error."""
    return isinstance(exc, ValueError) and type(exc).__module__.startswith("detlab.")


def run_command(args: argparse.Namespace, cfg, sub: str | None, overrides: list[str]) -> int:
    # Each command imports what it runs when it runs: `config`, `jobs` and `--help` must not
    # pay for torch (tests/platform/test_config.py checks their import lists).
    if args.command == "config":
        from detlab.platform.compose import to_yaml

        print(to_yaml(cfg))
        return 0
    if args.command == "pretrain":
        from detlab.platform.launch import pretrain_command

        return pretrain_command(cfg, wait=args.wait)
    if args.command == "export":
        from detlab.platform.checkpoint import export_command

        return export_command(cfg)
    if args.command == "eval":
        from detlab.platform.evaluate import eval_command

        return eval_command(cfg)
    if args.command == "jobs":
        from detlab.platform.launch import jobs_command

        return jobs_command(cfg)
    return plugins()[args.command].run(cfg, sub, overrides, args.wait)


if __name__ == "__main__":
    sys.exit(main())
