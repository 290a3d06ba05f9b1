"""The ``irepa`` command line: one sub-command per job, each defined next to the code it runs.

Every command goes through :func:`run_command`, the one error path: the library's errors
(:mod:`irepa.errors`), bad values and the usual OS errors become one line
``irepa <command>: <what is wrong> — <how to fix it>`` on stderr and an exit code per kind of
problem (see ``docs/cli.md``). A traceback is printed only with ``--debug`` or ``IREPA_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import os
import sys
import traceback
from collections.abc import Callable

from irepa.errors import EXIT_FILESYSTEM, EXIT_INTERRUPTED, EXIT_OTHER, DataError, IrepaError

# command -> module with ``add_parser(subparsers)`` registering it (some modules register several)
COMMANDS = {
    "train": "irepa.train.cli",
    "sample": "irepa.sample.cli",
    "eval": "irepa.evaluate.cli",
    "encoders": "irepa.encoders.cli",
    "prepare-latents": "irepa.data.cli",
    "metrics": "irepa.metrics.cli",
    "viz": "irepa.metrics.viz_cli",
    "quickstart": "irepa.experiments.cli",
    "compare": "irepa.experiments.cli",
    "study": "irepa.experiments.cli",
    "diagnose": "irepa.experiments.cli",
    "import": "irepa.interop.cli",
}
COMMAND_MODULES = list(dict.fromkeys(COMMANDS.values()))
DEBUG_FLAG = "--debug"
DEBUG_ENV = "IREPA_DEBUG"


class ArgumentParser(argparse.ArgumentParser):
    """Usage errors as one line naming the argument and the (sub-)command's help, exit code 2 (like every
    configuration error). Options are never abbreviated: ``--train.ste`` is an error, not ``--train.steps``."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: {message} — see `{self.prog} --help`\n")

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        """As argparse, but arguments no command knows are reported by the sub-command that got them."""
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            getattr(parsed, USAGE_PARSER, self).error(f"unrecognized arguments: {' '.join(extra)}")
        return parsed


USAGE_PARSER = "_usage_parser"


def _own_usage_errors(parser: argparse.ArgumentParser) -> None:
    """Record on every sub-command which parser it is, so its usage errors point at its own ``--help``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                sub.set_defaults(**{USAGE_PARSER: sub})
                _own_usage_errors(sub)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``command`` only that command's module is imported (fast start-up)."""
    parser = ArgumentParser(
        prog="irepa",
        description="Representation alignment (REPA / iREPA) for diffusion and flow models.",
        epilog=f"Add {DEBUG_FLAG} (or set {DEBUG_ENV}=1) anywhere to see the traceback of an error. "
        "Exit codes: docs/cli.md.",
    )
    parser.add_argument(DEBUG_FLAG, action="store_true", help="print the traceback of an error")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)
    modules = [COMMANDS[command]] if command in COMMANDS else COMMAND_MODULES
    for module_name in modules:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name and module_name.startswith(err.name):  # that part is not in this build
                continue
            raise
        module.add_parser(subparsers)
    _own_usage_errors(parser)
    return parser


def _command_of(argv: list[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def _debug_requested(argv: list[str]) -> bool:
    return DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def command_name(args: argparse.Namespace) -> str:
    """``irepa train``, ``irepa metrics spatial``...: how the user called it."""
    parts = ["irepa", getattr(args, "command", None) or ""]
    parts += [v for k, v in sorted(vars(args).items()) if k.endswith("_command") and isinstance(v, str)]
    return " ".join(p for p in parts if p)


def one_line(text: str) -> str:
    """Messages with several lines (e.g. a list of differing fields) joined into one."""
    return "; ".join(line.strip() for line in str(text).splitlines() if line.strip())


def _os_error_message(err: OSError) -> str:
    where = f"{err.filename}" if err.filename else ""
    code = err.errno
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return (f"no space left on the device writing {where or 'a file'} — free space or write elsewhere "
                "(--out), then rerun; files written before are intact")
    if isinstance(err, FileNotFoundError):
        return f"{where or 'a file'} does not exist — check the path"
    if isinstance(err, PermissionError):
        return f"permission denied: {where or 'a file'} — choose a folder you can write to, or fix its permissions"
    if isinstance(err, IsADirectoryError):
        return f"{where} is a folder — give a file path"
    if isinstance(err, NotADirectoryError):
        return f"{where} is not a folder — give a folder path"
    if isinstance(err, FileExistsError):
        return f"{where} already exists — choose another path"
    if code == errno.EROFS:
        return f"read-only file system: {where} — write somewhere else (--out)"
    reason = err.strerror or str(err)
    return f"{reason}{': ' + where if where else ''} — check the file system and rerun"


def describe_error(err: BaseException) -> tuple[int, str]:
    """Exit code and one-line message (without the ``irepa <command>:`` prefix) for an error."""
    if isinstance(err, IrepaError):
        return err.exit_code, one_line(str(err))
    if isinstance(err, OSError) and err.errno is not None:
        return EXIT_FILESYSTEM, _os_error_message(err)
    if isinstance(err, (FileNotFoundError, NotADirectoryError)):  # raised by irepa itself about an input
        return DataError.exit_code, one_line(str(err))
    if isinstance(err, KeyError):  # registries raise KeyError("unknown ...; valid: ...")
        return 2, one_line(err.args[0] if err.args else repr(err))
    if isinstance(err, ValueError):  # bad values the library checks and explains
        return 2, one_line(str(err))
    if isinstance(err, ModuleNotFoundError):
        return EXIT_OTHER, f"the optional package {err.name!r} is not installed — pip install {err.name}"
    name = type(err).__name__
    if name == "OutOfMemoryError":
        return EXIT_OTHER, ("out of GPU memory — lower the batch size (or use train.grad_accum), or enable "
                            "mixed precision")
    if isinstance(err, OSError):
        return EXIT_FILESYSTEM, one_line(str(err))
    detail = one_line(str(err)) or "(no message)"
    return EXIT_OTHER, f"{name}: {detail} — rerun with {DEBUG_FLAG} for the traceback"


def _interrupt_message(args: argparse.Namespace) -> str:
    hint: str | Callable[[], str] | None = getattr(args, "on_interrupt", None)
    text = hint() if callable(hint) else hint
    return "interrupted — every file written so far is complete; " + (
        text or "rerun the same command to continue where it stopped"
    )


def _close_progress_bars() -> None:
    """Finish any progress bar an error cut short, so the message starts on a line of its own."""
    tqdm_std = sys.modules.get("tqdm.std")
    for bar in list(getattr(getattr(tqdm_std, "tqdm", None), "_instances", [])):
        with contextlib.suppress(Exception):
            bar.close()


def run_command(args: argparse.Namespace, debug: bool = False) -> int:
    """Run ``args.func(args)`` with the one error policy; returns the exit code."""
    prefix = command_name(args)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        _close_progress_bars()
        if debug:
            traceback.print_exc()
        print(f"{prefix}: {_interrupt_message(args)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SystemExit as err:  # a command that stops itself with a message or a code
        if err.code is None or isinstance(err.code, int):
            return int(err.code or 0)
        print(f"{prefix}: {one_line(str(err.code))}", file=sys.stderr)
        return 2
    except Exception as err:
        _close_progress_bars()
        if debug:
            traceback.print_exc()
        code, message = describe_error(err)
        if code == 2 and " — " not in message:  # a bad value whose message says what is accepted
            message += f" — see `{prefix} --help`"
        print(f"{prefix}: {message}", file=sys.stderr)
        return code


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_requested(argv)
    argv = [a for a in argv if a != DEBUG_FLAG]
    try:
        parser = build_parser(_command_of(argv))
    except Exception as err:  # a command module that cannot even be imported
        if debug:
            traceback.print_exc()
        print(f"irepa: {describe_error(err)[1]}", file=sys.stderr)
        return EXIT_OTHER
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return run_command(args, debug)


if __name__ == "__main__":
    sys.exit(main())
