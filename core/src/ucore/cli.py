"""The ``ucore`` command: argument parsing, plugin start-up, errors and exit statuses.

Every failure a user can meet ends as one line on stderr (``ucore: …``) and a documented exit
status; a traceback is shown only for bugs, and only with ``-vv``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any, Callable, NoReturn, Optional

from ucore import __version__
from ucore.commands.parsing import Parser, RawFormatter
from ucore.values.errors import EXIT_CODES, UcoreError, UsageError

Handler = Callable[[Any, argparse.Namespace], int]

#: Which module defines each command (``add_commands(subparsers, common)``), so that one
#: invocation imports and builds only the parsers it can use: all of them cost ~30 ms, most of
#: ``ucore run``'s start-up budget. A test checks this table against the modules.
COMMANDS = {
    **dict.fromkeys(
        ("pull", "images", "inspect", "rmi", "prune", "tag", "verify", "manifest"),
        "ucore.commands.images",
    ),
    **dict.fromkeys(("load", "save"), "ucore.commands.archive"),
    **dict.fromkeys(
        (
            "create",
            "ps",
            "rm",
            "name",
            "rmname",
            "rename",
            "clone",
            "export",
            "import",
            "protect",
            "unprotect",
        ),
        "ucore.commands.containers",
    ),
    **dict.fromkeys(("run", "setup", "info"), "ucore.commands.run"),
    **dict.fromkeys(("login", "logout"), "ucore.commands.auth"),
    **dict.fromkeys(("version", "plugins"), "ucore.commands.info"),
}
COMMAND_MODULES = tuple(dict.fromkeys(COMMANDS.values()))


class Terminated(BaseException):
    """SIGTERM (a batch system's time limit): unwind, clean up, exit 143."""


def _epilog() -> str:
    lines = ["exit status:"]
    lines += [f"  {code:>3}  {meaning}" for code, meaning in EXIT_CODES.items()]
    return "\n".join(lines)


def _common_options() -> argparse.ArgumentParser:
    """Options accepted before or after the command name (``ucore -v pull`` = ``ucore pull -v``)."""
    common = Parser(add_help=False)
    common.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=argparse.SUPPRESS,
        help="more log output (-v info, -vv debug)",
    )
    common.add_argument(
        "--log-format",
        choices=("console", "json"),
        default=argparse.SUPPRESS,
        help="json: logs, events and the error as JSON lines on stderr (default console)",
    )
    common.add_argument(
        "-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress display"
    )
    return common


class _VersionAction(argparse.Action):
    """``--version``: ucore's version and every plugin's (what ``ucore version`` prints), since
    a site assembles ucore from separately installed wheels."""

    def __init__(self, option_strings: Sequence[str], dest: str, plugins: Any, help: str) -> None:
        super().__init__(option_strings, dest, nargs=0, help=help)
        self.plugins = plugins

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        from ucore.commands.info import version_lines

        sys.stdout.write("\n".join(version_lines(self.plugins.describe())) + "\n")
        parser.exit()


def build_parser(plugins: Any, command: Optional[str] = None) -> argparse.ArgumentParser:
    """The whole command line, or only the parsers of ``command``'s module when it is known."""
    import importlib

    common = _common_options()
    parser = Parser(
        prog="ucore",
        description="Pull Docker/OCI images and run them as an ordinary user.",
        epilog=_epilog(),
        formatter_class=RawFormatter,
        parents=[common],
    )
    parser.add_argument(
        "--version",
        action=_VersionAction,
        plugins=plugins,
        help="show the versions of ucore and of every plugin, and exit",
    )
    parser.add_argument(
        "-p",
        dest="plugin_flags",
        action="append",
        default=[],
        metavar="no:NAME",
        help="block a plugin by name (repeatable); also UCORE_DISABLE_PLUGINS",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    subcommands: dict[str, argparse.ArgumentParser] = {}
    modules = (COMMANDS[command],) if command in COMMANDS else COMMAND_MODULES
    for name in modules:
        subcommands.update(importlib.import_module(name).add_commands(sub, common))
    plugins.pm.hook.ucore_addoption.call_historic(
        kwargs={"parser": parser, "subcommands": subcommands, "commands": sub}
    )
    return parser


def read_ahead(argv: Sequence[str]) -> tuple[tuple[str, ...], Optional[str]]:
    """The plugins blocked with ``-p no:NAME`` and the command name, read ahead of the real
    parse: plugins must be blocked before they load (they add options), and the command
    decides which parsers are built."""
    names: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        value = None
        if arg == "--log-format":
            i += 2
            continue
        if arg == "-p" and i + 1 < len(args):
            value, i = args[i + 1], i + 1
        elif arg.startswith("-p") and len(arg) > 2:
            value = arg[2:].lstrip("=")
        elif not arg.startswith("-"):
            return tuple(names), arg
        if value is not None:
            if not value.startswith("no:") or len(value) < 4:
                raise UsageError(f"-p takes no:NAME to block a plugin, not {value!r}")
            names.append(value[3:])
        i += 1
    return tuple(names), None


def _on_sigterm(_signum: int, _frame: Any) -> None:
    raise Terminated()


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    verbose = 0
    json_errors = False
    try:
        from ucore.config import Config
        from ucore.log import configure_logging
        from ucore.plugins.loading import get_plugin_manager

        env_disabled = tuple(
            p.strip() for p in os.environ.get("UCORE_DISABLE_PLUGINS", "").split(",") if p.strip()
        )
        configure_logging(0, "console")
        blocked, command = read_ahead(argv)
        plugins = get_plugin_manager(env_disabled + blocked)
        parser = build_parser(plugins, command)
        args = parser.parse_args(argv)
        verbose = getattr(args, "verbose", 0)
        log_format = getattr(args, "log_format", "console")
        json_errors = log_format == "json"
        configure_logging(verbose, log_format)
        if not getattr(args, "command", None):
            parser.print_help()
            return 0
        config = Config.load(options=args)
        plugins.pm.hook.ucore_configure.call_historic(kwargs={"config": config})
        from ucore.session import Session

        session = Session(config, plugins)
        _attach_displays(session, args, log_format)
        handler: Handler = args.handler
        return handler(session, args)
    except UcoreError as exc:
        _report(str(exc), exc.exit_code, json_errors)
        return exc.exit_code
    except KeyboardInterrupt:
        _report("interrupted", 130, json_errors)
        return 130
    except Terminated:
        _report("terminated", 143, json_errors)
        return 143
    except BrokenPipeError:
        # stdout closed early (``ucore images | head``): not an error worth a message.
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), sys.stdout.fileno())
        return 0
    except Exception as exc:  # noqa: BLE001 - the last line of defence: report the bug
        if verbose >= 2:
            import traceback

            traceback.print_exc()
        detail = f"{type(exc).__name__}: {exc}".splitlines()[0]
        _report(f"internal error: {detail} (a bug; -vv shows the traceback)", 1, json_errors)
        return 1


def entry() -> NoReturn:
    """The ``ucore`` console script and ``python -m ucore``: :func:`main`, then exit.

    An orderly interpreter shutdown (freeing every module and object, a last collection) costs
    every command about 4 ms after its work is done, a tenth of ``ucore run``'s whole overhead
    over the engine it starts. When nothing needs that shutdown, the standard streams are
    flushed and the process ends at once, as a C program would. Something does need it when an
    atexit callback is registered (logging's handlers, ``weakref.finalize`` for temporary
    directories, coverage), when another non-daemon thread runs (the interpreter would wait for
    it), or when a profiler or tracer is attached (it reports at exit); then the exit is the
    ordinary one. Tests call :func:`main` instead and keep their interpreter.
    """
    import atexit

    status = main()
    threads = sys.modules.get("threading")
    if (
        getattr(atexit, "_ncallbacks", lambda: 1)() == 0
        and sys.getprofile() is None
        and sys.gettrace() is None
        and (
            threads is None
            or all(t.daemon or t is threads.main_thread() for t in threads.enumerate())
        )
    ):
        try:
            for stream in (sys.stdout, sys.stderr):
                if stream is not None:  # None: the descriptor was closed when Python started
                    stream.flush()
        except (OSError, ValueError):
            sys.exit(status)  # the ordinary exit says what went wrong with the stream
        os._exit(status)
    sys.exit(status)


def _attach_displays(session: Any, args: argparse.Namespace, log_format: str) -> None:
    """The JSON-lines sink for ``--log-format json``; the progress display on a terminal."""
    if log_format == "json":
        from ucore.builtin import jsonlines

        session.plugins.register(
            jsonlines.JsonLinesSink(sys.stderr), "jsonlines", "ucore (builtin)", __version__
        )
    elif sys.stderr.isatty() and not getattr(args, "quiet", False):
        from ucore.builtin import progress

        session.plugins.register(
            progress.TerminalProgress(sys.stderr), "progress", "ucore (builtin)", __version__
        )


def _report(message: str, code: int, as_json: bool) -> None:
    message = " ".join(message.split())
    if as_json:
        import json

        sys.stderr.write(json.dumps({"event": "error", "message": message, "exit_code": code}))
        sys.stderr.write("\n")
    else:
        sys.stderr.write(f"ucore: {message}\n")
    sys.stderr.flush()
