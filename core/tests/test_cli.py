"""The command line's contract: one-line errors, documented exit statuses, no tracebacks,
options before or after the command, settings from file, environment and flags."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import ucore as ucore_package
from ucore.config import Config
from ucore.values.errors import EXIT_CODES, NotFoundError, UsageError
from ucore.values.oci import Platform

#: The subprocess imports the ucore under test, not whichever one the interpreter has installed.
SRC = str(Path(ucore_package.__file__).resolve().parents[1])


def ucore(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": SRC,
        "HOME": str(tmp_path),
        "UCORE_DIR": str(tmp_path / "store"),
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "ucore", *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["pull"], 2, "ucore: pull: the following arguments are required: IMAGE"),
        (["frobnicate"], 2, "ucore: argument COMMAND: invalid choice: 'frobnicate'"),
        (["pull", "Ubuntu"], 2, "ucore: invalid reference 'Ubuntu'"),
        (["pull", "--platform", "linux", "busybox"], 2, "ucore: invalid platform 'linux'"),
        (["pull", "--jobs=0", "busybox"], 2, "ucore: jobs must be at least 1"),
        (["pull", "--jobs=100000000", "busybox"], 2, "ucore: jobs must be at most 64"),
        (
            ["pull", "--registry=http://example.invalid", "x"],
            2,
            "ucore: example.invalid is a plain-HTTP registry",
        ),
        (["inspect", "nothing"], 3, "ucore: image nothing not found locally"),
        (["rmi", "nothing"], 3, "ucore: image nothing not found locally"),
        (["verify", "a/b:c"], 3, "ucore: image a/b:c not found locally"),
        (["pull", "127.0.0.1:1/x"], 4, "ucore: cannot reach 127.0.0.1:1: connection refused"),
        (["-p", "bad", "images"], 2, "ucore: -p takes no:NAME to block a plugin"),
        (["login", "--password-stdin", "h.io"], 2, "ucore: --username is required"),
    ],
)
def test_errors_are_one_line_with_a_documented_status(
    tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    proc = ucore(tmp_path, *args)
    assert proc.returncode == code, proc.stderr
    assert code in EXIT_CODES
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(message)
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    if (tmp_path / "store").exists():  # nothing was written by a failed command
        assert not list((tmp_path / "store" / "refs").iterdir())
        assert not list((tmp_path / "store" / "blobs" / "sha256").iterdir())


@pytest.mark.parametrize("value", ["nan", "inf", "1e300", "0", "-1"])
def test_time_settings_must_be_usable_as_timeouts(tmp_path: Path, value: str) -> None:
    """``float`` reads all of these; no socket timeout or sleep takes them (1e300 overflows
    the C time types): a usage error before anything is fetched."""
    proc = ucore(tmp_path, "pull", "127.0.0.1:1/x", UCORE_TIMEOUT=value)
    assert (proc.returncode, proc.stderr) == (
        2,
        "ucore: timeout must be positive and at most 86400 seconds\n",
    )


def test_json_log_format_reports_the_error_as_json(tmp_path: Path) -> None:
    proc = ucore(tmp_path, "inspect", "--log-format=json", "nothing")
    assert proc.returncode == 3
    [line] = proc.stderr.splitlines()
    assert json.loads(line) == {
        "event": "error",
        "exit_code": 3,
        "message": "image nothing not found locally (see 'ucore images'; 'ucore pull' it)",
    }


def test_help_documents_every_exit_status(tmp_path: Path) -> None:
    proc = ucore(tmp_path, "--help")
    assert proc.returncode == 0
    for code, meaning in EXIT_CODES.items():
        assert f"{code:>3}  {meaning}" in proc.stdout


def test_options_are_accepted_before_and_after_the_command(tmp_path: Path) -> None:
    assert ucore(tmp_path, "-v", "images", "--json").stdout.strip() == "[]"
    assert ucore(tmp_path, "images", "-v", "--json").stdout.strip() == "[]"
    assert ucore(tmp_path, "images", "--log-format", "json", "--json").returncode == 0


def test_settings_layer_file_then_environment_then_flags(tmp_path: Path) -> None:
    conf = tmp_path / "ucore.conf"
    conf.write_text("[ucore]\njobs = 3\nplatform = linux/arm64\nregistry = r.example:5000\n")
    env = {"UCORE_CONFIG": str(conf), "UCORE_DIR": str(tmp_path / "s")}
    config = Config.load(env)
    assert (config.jobs, config.platform, config.registry) == (
        3,
        Platform("linux", "arm64"),
        "r.example:5000",
    )
    config = Config.load({**env, "UCORE_JOBS": "7", "UCORE_INSECURE": "a:1, b:2"})
    assert config.jobs == 7 and config.insecure_registries == ("a:1", "b:2")
    import argparse

    config = Config.load({**env, "UCORE_JOBS": "7"}, argparse.Namespace(jobs=9, platform=None))
    assert config.jobs == 9 and config.platform == Platform("linux", "arm64")
    assert config.dir == tmp_path / "s"


def test_pass_env_empty_in_the_environment_passes_none(tmp_path: Path) -> None:
    """``UCORE_PASS_ENV=`` (set, empty) is "pass no variable", unlike other settings, whose
    empty variable is unset; it is read from the environment given, not the process's own
    (an embedding program passes its own to :class:`ucore.api.Ucore`)."""
    env = {"UCORE_DIR": str(tmp_path / "s"), "UCORE_SYSTEM_CONFIG": str(tmp_path / "none")}
    assert Config.load(env).pass_env is None
    assert Config.load({**env, "UCORE_PASS_ENV": ""}).pass_env == ()
    assert Config.load({**env, "UCORE_PASS_ENV": "A_*, B"}).pass_env == ("A_*", "B")
    assert Config.load({**env, "UCORE_JOBS": ""}).jobs == Config.load(env).jobs


def test_the_administrators_file_comes_first_and_the_users_wins(tmp_path: Path) -> None:
    """A site sets its store of images, a mirror and a default store for everyone in
    /etc/ucore.conf; what the user's own file, variables and flags say wins over it, and the
    plugins' sections merge key by key."""
    system = tmp_path / "etc-ucore.conf"
    system.write_text(
        f"[ucore]\nsite_store = {tmp_path / 'site'}\nregistry = mirror.site:5000\n"
        f"dir = {tmp_path / 'default'}\njobs = 2\n[gpu]\nsource = cdi\ncdi_dirs = /etc/cdi\n"
    )
    config = Config.load({"UCORE_SYSTEM_CONFIG": str(system)})
    assert (config.site_store, config.registry, config.dir, config.jobs) == (
        tmp_path / "site",
        "mirror.site:5000",
        tmp_path / "default",
        2,
    )
    # the user's file is found in the store the administrator's file names
    (tmp_path / "default").mkdir()
    (tmp_path / "default" / "ucore.conf").write_text("[ucore]\njobs = 6\n[gpu]\nsource = scan\n")
    config = Config.load({"UCORE_SYSTEM_CONFIG": str(system)})
    assert (config.jobs, config.registry) == (6, "mirror.site:5000")
    assert dict(config.section("gpu")) == {"source": "scan", "cdi_dirs": "/etc/cdi"}
    mine = Config.load(
        {"UCORE_SYSTEM_CONFIG": str(system), "UCORE_DIR": str(tmp_path / "s"), "UCORE_JOBS": "8"}
    )
    assert (mine.dir, mine.jobs, mine.site_store) == (tmp_path / "s", 8, tmp_path / "site")
    system.write_text("[ucore]\nspeed = max\n")
    with pytest.raises(UsageError, match=f"unknown setting 'speed' in {system}"):
        Config.load({"UCORE_SYSTEM_CONFIG": str(system)})


def test_bad_config_file_is_a_usage_error(tmp_path: Path) -> None:
    conf = tmp_path / "ucore.conf"
    conf.write_text("[ucore]\nspeed = max\n")
    with pytest.raises(UsageError, match="unknown setting 'speed'"):
        Config.load({"UCORE_CONFIG": str(conf)})
    proc = ucore(tmp_path, "images", UCORE_CONFIG=str(conf))
    assert proc.returncode == 2 and proc.stderr.startswith("ucore: unknown setting 'speed'")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[ucore\njobs = 3\n", "cannot parse config file"),
        (b"[ucore]\nregistry = \xff\n", "cannot read config file"),
        (None, "cannot read config file"),  # a directory where the file should be
    ],
)
def test_config_file_that_cannot_be_used_is_one_line(
    tmp_path: Path, content: object, message: str
) -> None:
    """A config file that exists but cannot be read or parsed stops the command with one
    line naming it (exit 2): silently ignoring it would run with other settings than the
    user wrote. No file at all is simply the defaults."""
    conf = tmp_path / "ucore.conf"
    if content is None:
        conf.mkdir()
    elif isinstance(content, bytes):
        conf.write_bytes(content)
    else:
        conf.write_text(str(content))
    proc = ucore(tmp_path, "images", UCORE_CONFIG=str(conf))
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"ucore: {message} {conf}") and proc.stderr.count("\n") == 1
    assert Config.load({"UCORE_CONFIG": str(tmp_path / "missing.conf")}).jobs == 4


def test_config_sections_reach_plugins(tmp_path: Path) -> None:
    conf = tmp_path / "ucore.conf"
    conf.write_text("[ucore]\njobs = 2\n[proot]\npath = /opt/proot\n")
    config = Config.load({"UCORE_CONFIG": str(conf)})
    assert config.section("proot") == {"path": "/opt/proot"}
    assert config.section("runc") == {} and "ucore" not in config.sections


def test_logout_of_an_unknown_registry_is_harmless(tmp_path: Path) -> None:
    proc = ucore(tmp_path, "logout", "nowhere.example")
    assert proc.returncode == 0
    assert proc.stdout == "no stored credentials for nowhere.example\n"


def test_command_table_matches_what_the_modules_define() -> None:
    """The start-up shortcut builds one module's parsers: its table must not drift."""
    import importlib

    from ucore.cli import COMMAND_MODULES, COMMANDS, _common_options
    from ucore.commands.parsing import Parser

    found = {}
    for module in COMMAND_MODULES:
        parser = Parser(prog="ucore")
        sub = parser.add_subparsers(dest="command", parser_class=Parser)
        importlib.import_module(module).add_commands(sub, _common_options())
        found.update(dict.fromkeys(sub.choices, module))
    assert found == COMMANDS


def test_quick_exit_flushes_piped_output(tmp_path: Path) -> None:
    """The console script ends without an interpreter shutdown (:func:`ucore.cli.entry`); what
    was written to a pipe, which Python buffers, must all arrive, and the status must stay."""
    whole = ucore(tmp_path, "plugins")
    assert whole.returncode == 0, whole.stderr
    assert "ucore-proot" in whole.stdout
    missing = ucore(tmp_path, "inspect", "nothing/here:1")
    assert (missing.returncode, missing.stderr.count("\n")) == (NotFoundError.exit_code, 1)
    closed = subprocess.run(
        ["sh", "-c", 'exec "$@" >&-', "sh", sys.executable, "-m", "ucore", "plugins"],
        env={**os.environ, "UCORE_DIR": str(tmp_path / "store")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (closed.returncode, closed.stderr) == (0, "")


def test_quick_exit_gives_way_to_atexit_callbacks(tmp_path: Path) -> None:
    """A plugin or library that registers an atexit callback (logging, coverage, temporary
    directories) gets the ordinary shutdown, callback included."""
    script = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('callback ran'))\n"
        "from ucore.cli import entry\n"
        "sys.argv[1:] = ['version']\n"
        "entry()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "UCORE_DIR": str(tmp_path / "store")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "callback ran"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[ucore]\ndir =\n", "ucore: dir must not be empty"),
        ("[ucore]\ndir = a\0b\n", "ucore: dir must not contain a NUL byte"),
        ("[ucore]\njobs = %(x)s\n", "ucore: jobs must be a whole number, not '%(x)s'"),
    ],
)
def test_hostile_config_values_are_one_line_and_write_nothing(
    tmp_path: Path, content: str, message: str
) -> None:
    """An empty ``dir`` once made the current directory the store (made private and filled
    with blobs/, refs/...); a NUL byte or a ``%`` that configparser's interpolation chokes on
    was an internal error."""
    conf = tmp_path / "ucore.conf"
    conf.write_text(content)
    work = tmp_path / "work"
    work.mkdir(mode=0o755)
    proc = subprocess.run(
        [sys.executable, "-m", "ucore", "pull", "127.0.0.1:1/x"],
        env={
            "PATH": os.environ.get("PATH", ""),
            "PYTHONPATH": SRC,
            "HOME": str(tmp_path),
            "UCORE_CONFIG": str(conf),
        },
        cwd=work,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert (proc.returncode, proc.stderr) == (2, message + "\n")
    assert list(work.iterdir()) == [] and (work.stat().st_mode & 0o777) == 0o755


def test_config_values_are_taken_verbatim(tmp_path: Path) -> None:
    """No ``%`` interpolation: a percent sign (a URL-encoded path) is just a character."""
    conf = tmp_path / "ucore.conf"
    conf.write_text("[ucore]\njobs = 2\n[proot]\npath = /opt/100%/proot\nx = %(path)s\n")
    config = Config.load({"UCORE_CONFIG": str(conf)})
    assert config.section("proot") == {"path": "/opt/100%/proot", "x": "%(path)s"}


def test_config_file_that_never_ends_is_refused(tmp_path: Path) -> None:
    proc = ucore(tmp_path, "images", UCORE_CONFIG="/dev/zero")
    assert proc.returncode == 2
    assert proc.stderr.startswith("ucore: cannot read config file /dev/zero: larger than")
    assert proc.stderr.count("\n") == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["load"], "ucore: load: give -i FILE or pipe a tarball into stdin"),
        (["import", "-", "x:1"], "ucore: import: give a FILE or pipe a tarball into stdin ('-')"),
        (
            ["import", "--tocontainer", "-"],
            "ucore: import: give a FILE or pipe a tarball into stdin ('-')",
        ),
        (["login", "-u", "a", "--password-stdin", "h.io"], "ucore: --password-stdin: no stdin"),
        (["login", "h.io"], "ucore: --username is required when stdin is not a terminal"),
    ],
)
def test_closed_stdin_is_a_usage_error(tmp_path: Path, args: list[str], message: str) -> None:
    """With descriptor 0 closed Python has no ``sys.stdin`` at all: was an internal error."""
    closed = subprocess.run(
        ["sh", "-c", 'exec "$@" <&-', "sh", sys.executable, "-m", "ucore", *args],
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": SRC, "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (closed.returncode, closed.stderr) == (2, message + "\n")


def test_absurd_jobs_in_the_environment_is_refused_at_once(tmp_path: Path) -> None:
    """The connection pool is sized by ``jobs`` and filled up front: UCORE_JOBS=100000000
    kept a core busy for minutes before the first request."""
    proc = ucore(tmp_path, "pull", "127.0.0.1:1/x", UCORE_JOBS="100000000")
    assert (proc.returncode, proc.stderr) == (2, "ucore: jobs must be at most 64\n")


def test_version_option_lists_every_plugin_distribution(tmp_path: Path) -> None:
    """A site assembles ucore from separate wheels: ``--version`` names each one's version."""
    result = ucore(tmp_path, "--version")
    assert result.returncode == 0 and result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"ucore {ucore_package.__version__} (Python ")
    assert f"  ucore-proot {ucore_package.__version__}" in lines[1:]
    assert len(lines[1:]) == len(set(lines[1:]))  # each distribution once
    blocked = ucore(tmp_path, "--version", UCORE_DISABLE_PLUGINS="proot,proot-noseccomp")
    assert "  ucore-proot" not in blocked.stdout
