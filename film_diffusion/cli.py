"""The ``film-diffusion`` command. Each subcommand is a small function here that defers to the module
that does the work; user errors are printed as one line, never as a traceback."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from film_diffusion.errors import UserError


def _smoke(args: argparse.Namespace) -> None:
    from film_diffusion.smoke import run_smoke

    run_smoke(steps=args.steps)


def _add_smoke(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=2, help="training steps per model (default 2)")


# name -> (one-line help, add its arguments, run it)
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], None]]] = {
    "smoke": (
        "Build every conditioning method on both backbones and run a few forward/backward steps on the CPU.",
        _add_smoke,
        _smoke,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="film-diffusion", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_arguments, run) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(command)
        command.set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except UserError as err:
        print(f"film-diffusion {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
