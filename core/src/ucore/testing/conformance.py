"""Engine conformance: what every execution engine must do, checked through ``ucore run``.

One set of behaviours (exit status, environment, working directory, user, read-only volumes,
host accounts, entrypoint and command, signals, stdin, files left in the root) that every
engine passes, the six of this repository and any other. An engine proves itself with a test
class (the ``ucore.testing`` plugin loaded: see :mod:`ucore.testing`)::

    from ucore.testing.conformance import EngineConformance

    class TestMyEngine(EngineConformance):
        engine = "mine"
        image = "glibc"  # only for an engine that needs the image's glibc loader

An engine that is not installed fails every test; one whose probe says it cannot run on this
host skips them, with the probe's reason in the report. Each class has a store of its own,
pulls its image once and makes one container, named ``conformance-ENGINE``.

The image (the fixture ``ucore_IMAGE_image`` gives its reference) must hold what the checks
run, as :func:`ucore.testing.images.busybox_image` and :func:`ucore.testing.hostimage.glibc_image`
do: ``Cmd ["sh"]``, ``WorkingDir /``, an ``Env`` with ``PATH`` and ``UCORE_TEST_IMAGE``, an
``/etc/passwd`` with ``root`` and ``nobody`` (65534), and a shell with ``env``, ``id``, ``cat``,
``sleep``, ``grep``, ``stat``, ``touch``, ``ln``, ``mkdir`` and ``rm``.
"""

from __future__ import annotations

import json
import os
import pwd
import select
import signal
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Optional

import pytest

from ucore.testing.cli import (
    Ucore,
    assert_error_line,
    describe,
    engine_container,
    installed_engines,
    on_terminal,
    usable_engine,
)

#: The behaviours an engine may declare it cannot have (:attr:`EngineConformance.limits`); a
#: check meeting one ends there as an expected failure that says why.
LIMITS = (
    #: A volume placed inside another volume (the host's directory).
    "nested volumes",
    #: A link the container makes with an absolute target stays inside the root.
    "links made at run time",
    #: ``-u NAME`` or ``-u UID:GID`` for a user other than the invoking one or root.
    "other users",
    #: An image's ``/etc/resolv.conf`` (or ``host.conf``) that is a directory stays one.
    "name files that are directories",
)


def _class_fixture(function: Callable[..., Any], autouse: bool = False) -> Any:
    """A class-scoped fixture defined in :class:`EngineConformance`, whose first argument is
    the test class. pytest 9 wants such a fixture to be a classmethod, and warns of removal
    otherwise; on Python 3.9 a classmethod has no ``__name__``, which pytest 8 (the last to
    support 3.9) needs, and takes a plain method, whose first argument is then an instance
    (the class attributes read through it are the same)."""
    target: Any = classmethod(function) if sys.version_info >= (3, 10) else function
    return pytest.fixture(scope="class", autouse=autouse)(target)


def _class_fixture_autouse(function: Callable[..., Any]) -> Any:
    """:func:`_class_fixture`, used by every test of the class."""
    return _class_fixture(function, autouse=True)


class EngineConformance:
    """The conformance suite; a subclass named ``Test*`` sets :attr:`engine` and runs it."""

    #: The engine under test, as ``ucore setup --engine`` takes it.
    engine: ClassVar[str]
    #: The image kind: the fixture ``ucore_{image}_image`` gives the reference to pull.
    image: ClassVar[str] = "busybox"
    #: What this engine cannot do, by a name of :data:`LIMITS`, and why (for the report).
    limits: ClassVar[Mapping[str, str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        unknown = sorted(set(cls.limits) - set(LIMITS))
        if unknown:
            raise TypeError(f"{cls.__name__}.limits: unknown {unknown}; known: {list(LIMITS)}")

    def limited(self, limit: str) -> None:
        """End the test as an expected failure if the engine declared ``limit``."""
        if limit in self.limits:
            pytest.xfail(f"{self.engine}: {self.limits[limit]}")

    # --- fixtures -------------------------------------------------------------------------------

    @_class_fixture
    def cli(cls, tmp_path_factory: pytest.TempPathFactory) -> Ucore:
        """The class's store: its image is pulled once and its container made once."""
        return Ucore(tmp_path_factory.mktemp("conformance"))

    @_class_fixture
    def installed(cls, cli: Ucore) -> dict[str, dict[str, Any]]:
        """``ucore info --json``'s engines: whether each can run here, and its details."""
        return installed_engines(cli)

    @_class_fixture_autouse
    def usable(cls, installed: dict[str, dict[str, Any]]) -> None:
        """Fails every test when the engine is not installed, skips them when it cannot run
        on this host."""
        if not getattr(cls, "engine", None):
            owner = cls if isinstance(cls, type) else type(cls)
            pytest.fail(f"{owner.__name__} names no engine: set engine = NAME")
        usable_engine(installed, cls.engine)

    @_class_fixture
    def image_ref(cls, request: pytest.FixtureRequest, cli: Ucore) -> str:
        """The engine's image, pulled into the class's store; looked up by name, so that a
        session whose engines need no glibc image never builds one."""
        ref: str = request.getfixturevalue(f"ucore_{cls.image}_image")
        cli.ok("pull", ref)
        return ref

    @_class_fixture
    def image_env(cls, cli: Ucore, image_ref: str) -> dict[str, str]:
        """The image's own ``Env``, for the checks that the engine applies it."""
        config = json.loads(cli.ok("inspect", image_ref).stdout)["config"]
        env = dict(entry.split("=", 1) for entry in config["config"]["Env"])
        assert {"PATH", "UCORE_TEST_IMAGE"} <= set(env), f"{image_ref}: Env {env}"
        return env

    @_class_fixture
    def container(cls, cli: Ucore, image_ref: str) -> str:
        return engine_container(cli, image_ref, cls.engine, "conformance")

    # --- exit status, output, stdin ---------------------------------------------------------

    @pytest.mark.parametrize("code", [0, 1, 7, 255])
    def test_exit_status_is_the_commands(self, cli: Ucore, container: str, code: int) -> None:
        result = cli.run("run", container, "sh", "-c", f"exit {code}")
        assert result.returncode == code, describe(result)

    def test_exit_status_of_the_main_process_not_of_a_leftover(
        self, cli: Ucore, container: str
    ) -> None:
        started = time.monotonic()
        # The main process lives a moment: an engine may follow it only once it has started
        # (PRoot's watcher can miss one that ends within milliseconds on a loaded machine).
        result = cli.run("run", container, "sh", "-c", "sleep 30 & sleep 0.5; exit 3")
        assert result.returncode == 3, describe(result)
        assert time.monotonic() - started < 20, "a leftover process kept the run alive"

    def test_killed_by_a_signal_is_128_plus_n(
        self, cli: Ucore, container: str, installed: dict[str, dict[str, Any]]
    ) -> None:
        """After a child exited normally, so that an engine reporting the last exit gets it
        wrong."""
        limit = installed[self.engine]["details"].get("exit status after a signal", "exact")
        if limit != "exact":
            pytest.xfail(f"{self.engine}: {limit}")
        result = cli.run("run", container, "sh", "-c", "sleep 0.1; kill -TERM $$")
        assert result.returncode == 128 + signal.SIGTERM, describe(result)

    def test_stdout_and_stderr(self, cli: Ucore, container: str) -> None:
        result = cli.run("run", container, "sh", "-c", "echo out; echo err >&2")
        assert (result.stdout, result.stderr) == ("out\n", "err\n"), describe(result)

    def test_stdin_passes_through(self, cli: Ucore, container: str) -> None:
        data = "line one\nline two\n" * 1000
        assert cli.ok("run", container, "cat", input=data).stdout == data

    def test_image_cmd_reads_stdin(self, cli: Ucore, container: str) -> None:
        """The image's Cmd is ``sh``: with no command, the shell reads the script from stdin."""
        assert cli.ok("run", container, input="echo from-stdin\n").stdout == "from-stdin\n"

    def test_command_not_found_127_not_executable_126(self, cli: Ucore, container: str) -> None:
        missing = cli.fails(127, "run", container, "no-such-command")
        assert "no-such-command" in missing.stderr
        cli.fails(126, "run", container, "/etc/passwd")
        assert "empty" in assert_error_line(cli.fails(127, "run", container, ""))  # as docker

    # --- signals ----------------------------------------------------------------------------

    @pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
    def test_signal_to_ucore_reaches_the_container(
        self, cli: Ucore, container: str, signum: int
    ) -> None:
        """What a batch system's time limit does: the container's trap must run."""
        name = signal.Signals(signum).name[3:]
        script = f'trap "echo trapped-{name}; exit 42" {name}; echo ready; sleep 60 & wait'
        proc = cli.popen("run", container, "sh", "-c", script)
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline() == "ready\n"
            time.sleep(0.3)  # let ``wait`` start
            os.kill(proc.pid, signum)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert out == f"trapped-{name}\n", err
        assert proc.returncode == 42, err

    def test_sigterm_ends_a_command_that_does_not_trap(self, cli: Ucore, container: str) -> None:
        proc = cli.popen("run", container, "sh", "-c", "echo ready; exec sleep 60")
        try:
            assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
            time.sleep(0.3)
            os.kill(proc.pid, signal.SIGTERM)
            proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == 128 + signal.SIGTERM

    # --- environment ------------------------------------------------------------------------

    def test_environment_is_the_images_not_the_hosts(
        self, cli: Ucore, container: str, image_env: dict[str, str]
    ) -> None:
        env = _env_of(cli, container, environ={"UCORE_LEAK_CHECK": "leaked"})
        for name, value in {**image_env, "HOME": "/root"}.items():  # the image's, root's HOME
            assert env.get(name) == value, name
        assert "UCORE_LEAK_CHECK" not in env

    def test_environment_order_image_file_flag(
        self, cli: Ucore, container: str, tmp_path: Path
    ) -> None:
        env_file = tmp_path / "env"
        env_file.write_text("# comment\nFROM_FILE=file\nBOTH=file\nUCORE_TEST_IMAGE=file\nHOSTED\n")
        env = _env_of(
            cli,
            container,
            "--env-file",
            str(env_file),
            "-e",
            "BOTH=flag",
            "-e",
            "FROM_HOST",
            "-e",
            "EMPTY=",
            environ={"FROM_HOST": "host value", "HOSTED": "from host too"},
        )
        assert env["FROM_FILE"] == "file"
        assert env["BOTH"] == "flag"
        assert env["UCORE_TEST_IMAGE"] == "file"  # the file overrides the image
        assert env["FROM_HOST"] == "host value"
        assert env["HOSTED"] == "from host too"
        assert env["EMPTY"] == ""

    def test_launcher_variables_pass_without_hostenv(self, cli: Ucore, container: str) -> None:
        """What srun and mpirun hand a job step (SLURM_*, PMIX_*, OMPI_*, ...) reaches the
        container, or its ranks cannot find each other; ``UCORE_PASS_ENV`` replaces the list."""
        host = {
            "SLURM_JOB_ID": "42",
            "PMIX_RANK": "1",
            "OMPI_COMM_WORLD_SIZE": "2",
            "MYJOB_X": "x",
        }
        env = _env_of(cli, container, environ=host)
        assert {k: env.get(k) for k in host} == {**host, "MYJOB_X": None}
        env = _env_of(cli, container, environ={**host, "UCORE_PASS_ENV": "MYJOB_*"})
        assert {k: env.get(k) for k in host} == {**dict.fromkeys(host), "MYJOB_X": "x"}
        env = _env_of(cli, container, environ={**host, "UCORE_PASS_ENV": ""})
        assert not set(host) & set(env)

    def test_hostenv_passes_the_host_environment(
        self, cli: Ucore, container: str, image_env: dict[str, str]
    ) -> None:
        env = _env_of(cli, container, "--hostenv", environ={"UCORE_PASSED": "yes"})
        assert env["UCORE_PASSED"] == "yes"
        assert env["UCORE_TEST_IMAGE"] == image_env["UCORE_TEST_IMAGE"]  # still applies

    # --- working directory and command ------------------------------------------------------

    def test_workdir(self, cli: Ucore, container: str) -> None:
        assert cli.ok("run", container, "pwd").stdout == "/\n"  # the image's WorkingDir
        assert cli.ok("run", "-w", "/tmp", container, "pwd").stdout == "/tmp\n"
        assert cli.ok("run", "-w", "/made/for/me", container, "pwd").stdout == "/made/for/me\n"

    def test_workdir_under_proc_is_refused(self, cli: Ucore, container: str) -> None:
        cli.fails(2, "run", "-w", "/proc/self/fd/3", container, "pwd")

    def test_entrypoint_rules(self, cli: Ucore, container: str) -> None:
        assert cli.ok("run", "--entrypoint", "echo", container, "a", "b").stdout == "a b\n"
        assert cli.ok("run", "--entrypoint", "echo", container).stdout == "\n"  # Cmd dropped
        assert cli.ok("run", "--entrypoint", "", container, "echo", "c").stdout == "c\n"

    # --- user and accounts ------------------------------------------------------------------

    def test_default_user_is_root(self, cli: Ucore, container: str) -> None:
        assert cli.ok("run", container, "id", "-u").stdout == "0\n"
        assert cli.ok("run", container, "id", "-un").stdout == "root\n"

    def test_user_by_name_and_by_id(self, cli: Ucore, container: str) -> None:
        cli.fails(2, "run", "-u", "no-such-user", container, "true")
        self.limited("other users")
        assert cli.ok("run", "-u", "nobody", container, "id", "-u").stdout == "65534\n"
        assert cli.ok("run", "-u", "1234:5", container, "id").stdout.startswith("uid=1234 gid=5")

    def test_invoking_user_by_uid_with_hostauth(self, cli: Ucore, container: str) -> None:
        uid = os.getuid()
        me = pwd.getpwuid(uid).pw_name
        out = cli.ok("run", "-u", str(uid), container, "sh", "-c", "id -u; id -un").stdout
        assert out == f"{uid}\n{me}\n"

    def test_hostauth_never_touches_the_images_files(self, cli: Ucore, container: str) -> None:
        root = _root_of(cli, container)
        before = (root / "etc" / "passwd").read_bytes()
        cli.ok("run", "-u", str(os.getuid()), container, "id")
        assert (root / "etc" / "passwd").read_bytes() == before
        if os.getuid() != 0:
            out = cli.run("run", "--containerauth", "-u", str(os.getuid()), container, "id", "-un")
            assert pwd.getpwuid(os.getuid()).pw_name not in out.stdout

    def test_a_store_shared_read_only_still_runs(self, image_ref: str, tmp_path: Path) -> None:
        """As where a group shares one user's store read-only: the container runs, its runtime
        state in the temporary directory (and removed), without the account copies naming the
        user (a warning says so). The container was run once before it was shared, as OCI
        runtimes need the mount points they cannot make in a read-only root."""
        shared = Ucore(tmp_path)
        shared.ok("pull", image_ref)
        name = engine_container(shared, image_ref, self.engine, "shared")
        shared.ok("run", "--containerauth", name, "true")
        scratch = tmp_path / "scratch"
        scratch.mkdir()
        result = shared.read_only(scratch, "run", name, "sh", "-c", "echo ran")
        assert (result.returncode, result.stdout) == (0, "ran\n"), describe(result)
        assert "ucore:" not in result.stderr, describe(result)
        assert not [p for p in scratch.rglob("*") if not p.is_dir()]

    # --- volumes and the root filesystem ----------------------------------------------------

    def test_volumes_ro_and_rw(self, cli: Ucore, container: str, tmp_path: Path) -> None:
        (tmp_path / "in.txt").write_text("from the host\n")
        script = (
            "cat /ro/in.txt; if touch /ro/new 2>/dev/null; then echo WROTE; fi; echo x > /rw/out"
        )
        out = _sh(cli, container, script, "-v", f"{tmp_path}:/ro:ro", "-v", f"{tmp_path}:/rw")
        assert out == "from the host\n"
        assert not (tmp_path / "new").exists()
        assert (tmp_path / "out").read_text() == "x\n"

    def test_volume_target_symlink_resolves_inside_the_root(
        self, cli: Ucore, container: str, tmp_path: Path
    ) -> None:
        self.limited("links made at run time")
        root = _root_of(cli, container)
        _sh(cli, container, "mkdir -p /opt/real && ln -sfn /opt/real /linked")
        (tmp_path / "marker").write_text("m\n")
        out = _sh(cli, container, "cat /opt/real/marker", "-v", f"{tmp_path}:/linked")
        assert out == "m\n"
        assert (root / "linked").is_symlink()  # the image's link is left as it was

    def test_a_volume_of_the_wrong_kind_is_one_line_in_every_engine(
        self, cli: Ucore, container: str, tmp_path: Path
    ) -> None:
        """A file over an image directory, or a directory over an image file, cannot be bind
        mounted: every engine refuses it before starting, in one line, exit 2 (runc and crun
        used to add their own line; PRoot hid the image's directory behind the file). Inside
        another volume, the other volume decides what is there."""
        (tmp_path / "file").write_text("f\n")
        (tmp_path / "x").write_text("x\n")
        _sh(cli, container, "mkdir -p /data/dir/x && echo i > /data/file")
        for volume in (f"{tmp_path}/file:/data/dir", f"{tmp_path}:/data/file"):
            result = cli.fails(2, "run", "-v", volume, container, "true")
            assert "/data/" in assert_error_line(result)
        self.limited("nested volumes")
        outer, inner = f"{tmp_path}:/data/dir", f"{tmp_path}/file:/data/dir/x"
        assert _sh(cli, container, "cat /data/dir/x", "-v", outer, "-v", inner) == "f\n"
        assert (tmp_path / "x").read_text() == "x\n"

    def test_name_resolution_files_are_private_copies(self, cli: Ucore, container: str) -> None:
        """The container sees the host's /etc/resolv.conf and /etc/host.conf as copies (as
        Docker does): what it writes there never reaches the host's files, which for root are
        writable. Checked by inode first, so that a regression fails without writing to the
        host's file."""
        host = Path("/etc/resolv.conf")
        before = host.read_bytes()
        script = "stat -L -c %i /etc/resolv.conf; cat /etc/resolv.conf"
        inode, _, seen = _sh(cli, container, script).partition("\n")
        assert int(inode) != host.stat().st_ino, "the host's own file is bound"
        assert seen.encode() == before
        overwrite = "echo 'nameserver 192.0.2.1' > /etc/resolv.conf; rm -f /etc/host.conf; true"
        _sh(cli, container, overwrite)
        assert host.read_bytes() == before
        assert Path("/etc/host.conf").exists()

    def test_an_image_name_file_that_is_a_directory_is_left_alone(
        self, cli: Ucore, container: str
    ) -> None:
        """An image whose /etc/resolv.conf is a directory keeps it: no file is bound over it."""
        self.limited("name files that are directories")
        resolv = _root_of(cli, container) / "etc" / "resolv.conf"
        saved = resolv.read_bytes() if resolv.is_file() else None
        resolv.unlink(missing_ok=True)
        resolv.mkdir()
        try:
            assert _sh(cli, container, "test -d /etc/resolv.conf && echo dir") == "dir\n"
        finally:
            resolv.rmdir()
            if saved is not None:
                resolv.write_bytes(saved)

    def test_file_written_in_the_container_is_in_its_root(self, cli: Ucore, container: str) -> None:
        _sh(cli, container, "echo kept > /tmp/conformance-file")
        assert (_root_of(cli, container) / "tmp" / "conformance-file").read_text() == "kept\n"

    def test_default_sysdirs_and_nosysdirs(
        self, cli: Ucore, container: str, installed: dict[str, dict[str, Any]]
    ) -> None:
        """``--nosysdirs`` leaves out the host's /proc and /sys, but for what an engine says it
        must keep (runc needs a /proc in the container)."""
        script = "test -e /proc/self/status && test -e /sys/kernel && echo yes"
        assert _sh(cli, container, script) == "yes\n"
        kept = installed[self.engine]["details"].get("/proc with --nosysdirs")
        out = cli.run("run", "--nosysdirs", container, "sh", "-c", "test -e /proc/self/status")
        assert out.returncode == (0 if kept else 1), describe(out)
        out = cli.run("run", "--nosysdirs", container, "sh", "-c", "test -e /sys/kernel")
        assert out.returncode == 1, describe(out)

    def test_cpuset(self, cli: Ucore, container: str) -> None:
        cpu = min(os.sched_getaffinity(0))
        script = "grep Cpus_allowed_list /proc/self/status"
        out = _sh(cli, container, script, "--cpuset-cpus", str(cpu))
        assert out.split()[-1] == str(cpu)

    def test_interactive_shell_on_a_terminal(self, cli: Ucore, container: str) -> None:
        """A shell on a terminal: prompt, commands, ^C interrupting a command but not the
        shell, and the shell's exit status."""
        pid, fd = on_terminal(cli.argv("run", container, "sh"), cli.env)
        try:
            output = _converse(fd, [b"echo $((6 * 7))\n", b"sleep 60\n", b"\x03", b"exit 5\n"])
            _, status = os.waitpid(pid, 0)
        finally:
            os.close(fd)
        assert b"42" in output
        assert os.waitstatus_to_exitcode(status) == 5, output


def _sh(cli: Ucore, container: str, script: str, *opts: str) -> str:
    return cli.ok("run", *opts, container, "sh", "-c", script).stdout


def _env_of(
    cli: Ucore, container: str, *opts: str, environ: Optional[dict[str, str]] = None
) -> dict[str, str]:
    out = cli.ok("run", *opts, container, "env", env=environ).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def _root_of(cli: Ucore, container: str) -> Path:
    return Path(cli.ok("inspect", "-p", container).stdout.strip())


def _converse(fd: int, lines: list[bytes]) -> bytes:
    output = _drain(fd, 2.0)
    for line in lines:
        os.write(fd, line)
        output += _drain(fd, 1.0)
    return output + _drain(fd, 3.0)


def _drain(fd: int, seconds: float) -> bytes:
    out = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.05)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the terminal closed: the shell is gone
                break
            if not chunk:
                break
            out += chunk
    return out
