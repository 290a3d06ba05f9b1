"""The ``irepa`` command line: one sub-command per job, each defined next to the code it runs."""

from __future__ import annotations

import argparse
import importlib
import sys

# (module, attribute) pairs; each module has ``add_parser(subparsers)`` registering its commands.
COMMAND_MODULES = [
    "irepa.train.cli",
    "irepa.sample.cli",
    "irepa.evaluate.cli",
    "irepa.encoders.cli",
    "irepa.data.cli",
    "irepa.metrics.cli",
    "irepa.viz.cli",
    "irepa.experiments.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="irepa",
        description="Representation alignment (REPA / iREPA) for diffusion and flow models.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name and module_name.startswith(err.name):  # that part is not in this build
                continue
            raise
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    result = args.func(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
