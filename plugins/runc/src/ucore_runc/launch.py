"""Running one container with runc or crun and staying with it until its command ends.

**State.** Each run has its own container id (``ucore-PID-RANDOM``), so any number of jobs can
run the same container at once, and its own bundle directory (``config.json``, the runtime's
log and pid file). Both live in a per-user directory private to the user (0700):
``$XDG_RUNTIME_DIR/ucore`` where the session has one, else ``tmp/run-HOST`` in the store (the
host name keeps nodes sharing a store apart), or, when the store cannot be written,
``ucore-UID/run-HOST`` in the system's temporary directory. A run removes what it made when it
ends, normally or through a signal; what a run killed outright (``SIGKILL``) left behind is
removed by the next run of the same engine (the id names the ucore process: a dead one's state
is stale).

**A command without a terminal** (batch jobs) runs *detached* (``run --detach``): the runtime
starts it and exits, and ucore, a child subreaper (``PR_SET_CHILD_SUBREAPER``), becomes its
parent. Its stdin, stdout and stderr are then ucore's own descriptors, not pipes the runtime
copies (and that runc would ``chown`` to the container's root, which fails when that root is an
``/etc/subuid`` id); ucore waits for it itself, so the exit status is the command's exactly
(``128 + N`` after signal ``N``); signals go straight to it; and, as Docker does when a
container's main process ends, ucore ends whatever it left behind (``SIGKILL``), since without
a PID namespace the kernel would not.

**A command on a terminal** runs detached too, the runtime sending the container's terminal to
ucore (``--console-socket``), which relays it (raw mode, window size) and, once the command and
what it left behind have ended, copies what is left in it: see :mod:`ucore_runc.console` for
why the runtime's own relay (``run`` in the foreground) is not used.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from ucore.running import spawn
from ucore.storage.leases import HOST, pid_alive
from ucore.storage.trees import remove_tree
from ucore.values.errors import PluginError, StoreError, UcoreError, store_error

if TYPE_CHECKING:
    from ucore.storage.store import Store
    from ucore_runc.discover import Runtime

_ID = re.compile(r"ucore-(?P<pid>\d+)-[0-9a-f]{8}")
#: ``si_code`` of a signal the kernel sent: the terminal's ^C and ^\ to the foreground group.
_SI_KERNEL = 0x80
_TTY_SIGNALS = (signal.SIGINT, signal.SIGQUIT)


def state_base(store: Store) -> Path:
    """The user's private directory for runtime state and bundles on this host."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isabs(xdg):
        with contextlib.suppress(OSError):
            st = os.stat(xdg)
            if st.st_uid == os.getuid() and os.path.isdir(xdg):
                return Path(xdg) / "ucore"
    return store.tmp / f"run-{HOST}"


def open_run(runtime: Runtime, store: Store, global_options: Sequence[str]) -> Run:
    """A new run, in :func:`state_base` once what killed runs left there is removed. A store
    that cannot be written (another user's, shared read-only; a read-only mount) still runs
    its containers: the state then goes to :func:`private_base`. Any other failure to make
    the directories (a full disk) is a StoreError."""
    import errno

    try:
        try:
            return _new_run(runtime, state_base(store), global_options)
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
        return _new_run(runtime, private_base(), global_options)
    except OSError as exc:
        raise store_error(exc, "preparing the runtime's state directory") from exc


def _new_run(runtime: Runtime, base: Path, global_options: Sequence[str]) -> Run:
    reap_stale(runtime, base, global_options)
    return Run(runtime, base, global_options)


def private_base() -> Path:
    """``ucore-UID/run-HOST`` in the system's temporary directory, for a store that cannot be
    written. The top directory is made 0700 and must be the user's own, never a symlink or a
    directory another user made there first (the name is predictable)."""
    import stat
    import tempfile

    top = Path(tempfile.gettempdir()) / f"ucore-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        top.mkdir(mode=0o700)
    st = os.lstat(top)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise StoreError(
            f"the store cannot be written, and {top} (for the runtime's state instead) is not"
            " a directory private to you"
        )
    return top / f"run-{HOST}"


class Run:
    """One run: its id and directories, the runtime's command line, and cleaning up."""

    def __init__(self, runtime: Runtime, base: Path, global_options: Sequence[str]) -> None:
        self.runtime = runtime
        self.root = base / runtime.kind
        self.bundles = base / "bundles"
        for path in (base, self.root, self.bundles):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.id = f"ucore-{os.getpid()}-{os.urandom(4).hex()}"
        self.bundle = self.bundles / self.id
        self.bundle.mkdir(mode=0o700)
        self.log = self.bundle / "log.json"
        self.pid_file = self.bundle / "pid"
        self.base_command = base_command(runtime, base, global_options)
        self.options = [*self.base_command, *self._log_options()]

    def _log_options(self) -> list[str]:
        """Warnings to a file, not to the container's stderr (runc warns on every run without
        cgroups); the runtime still prints a fatal error on stderr itself."""
        if self.runtime.kind == "crun":
            return [f"--log=file:{self.log}", "--log-format=json"]
        return ["--log", str(self.log), "--log-format", "json"]

    def write_config(self, config: dict[str, Any]) -> None:
        import json

        path = self.bundle / "config.json"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(config, f)
        except OSError as exc:
            raise store_error(exc, f"writing {path}") from exc

    def command(self, detach: bool = True, console: Optional[Path] = None) -> list[str]:
        """``run``; detached, with the socket the container's terminal is sent to if it has
        one (in the foreground only the probe runs: the runtime then waits for its command)."""
        argv = [*self.options, "run", "--bundle", str(self.bundle), "--no-new-keyring"]
        argv += ["--pid-file", str(self.pid_file), *(["--detach"] if detach else [])]
        if console is not None:
            argv += ["--console-socket", str(console)]
        return [*argv, self.id]

    def error(self) -> Optional[str]:
        """The runtime's last error from its log, if it logged one."""
        import json

        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return None
        for line in reversed(lines):
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict) and entry.get("level") in ("error", "fatal"):
                    return str(entry.get("msg", "")).strip() or None
        return None

    def failed(self, status: int) -> PluginError:
        why = self.error() or f"exit status {status}"
        return PluginError(f"{self.runtime.kind} could not start the container: {why}")

    def main_pid(self) -> Optional[int]:
        with contextlib.suppress(OSError, ValueError):
            return int(self.pid_file.read_text().strip())
        return None

    def cleanup(self) -> None:
        """Remove this run's state and bundle."""
        remove_state(self.root, self.id, self.base_command)
        _discard(self.bundle)


def base_command(runtime: Runtime, base: Path, global_options: Sequence[str]) -> list[str]:
    """The runtime with the options every command of a run takes (its state directory)."""
    return [runtime.path, "--root", str(base / runtime.kind), *global_options]


def remove_state(root: Path, cid: str, command: Sequence[str], *, stale: bool = False) -> None:
    """The runtime's state of a container. A stopped one is a directory plus, where the runtime
    could make them (run by root), empty cgroups: both are removed directly, since a
    ``delete`` costs a runtime start (10-15 ms of every run). The runtime deletes what that
    cannot remove (a cgroup still busy), and a ``stale`` one (its ucore was killed), which may
    still run: its processes are killed first, which neither runtime does without a cgroup to
    find them in."""
    state = root / cid
    if not state.exists():
        return  # the foreground runtime deleted it already
    if stale:
        _kill_session(state)
    cgroups = _cgroup_dirs(state)
    if stale or cgroups is None or not _remove_empty(cgroups):
        import subprocess

        from ucore_runc.discover import runtime_env

        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(
                [*command, "delete", "--force", cid],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=runtime_env(),
                timeout=60,
                check=False,
            )
    _discard(state)


def _kill_session(state: Path) -> None:
    """Kill a stale container's main process and every process of its session (the runtime
    made the main process a session leader; its children stay in that session unless they
    leave it), if the main process is still the one the state names (same start time)."""
    import json

    for name, pid_key, start_key in (
        ("state.json", "init_process_pid", "init_process_start"),
        ("status", "pid", "process-start-time"),
    ):
        try:
            data = json.loads((state / name).read_text())
            main, started = int(data[pid_key]), int(data[start_key])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if main > 1 and _stat(main)[1] == started:
            for pid in os.listdir("/proc"):
                if pid.isdigit() and _stat(int(pid))[0] == main:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(int(pid), signal.SIGKILL)
        return


def _stat(pid: int) -> tuple[Optional[int], Optional[int]]:
    """(session id, start time in clock ticks) of a process, from ``/proc/PID/stat``."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return int(fields[3]), int(fields[19])
    except (OSError, IndexError, ValueError):
        return None, None


def _cgroup_dirs(state: Path) -> Optional[list[str]]:
    """The cgroup directories a stopped container's state names that exist (runc lists cgroup
    paths even where, rootless, it could create none; crun names its cgroup, "" when it has
    none); None when the state cannot tell, or names one outside ``/sys/fs/cgroup``."""
    import json

    for name, key in (("state.json", "cgroup_paths"), ("status", "cgroup-path")):
        try:
            data = json.loads((state / name).read_text())
        except (OSError, ValueError):
            continue
        found = data.get(key) if isinstance(data, dict) else None
        paths = [p for p in (found.values() if isinstance(found, dict) else [found]) if p]
        if not all(isinstance(p, str) for p in paths):
            return None
        dirs = [p if p.startswith("/") else f"/sys/fs/cgroup/{p}" for p in paths]
        if not all(os.path.normpath(d).startswith("/sys/fs/cgroup/") for d in dirs):
            return None
        return [d for d in dict.fromkeys(dirs) if os.path.isdir(d)]
    return None


def _remove_empty(dirs: Iterable[str]) -> bool:
    """Remove the (leaf) cgroups of a stopped container; False when one is still busy."""
    for directory in dirs:
        try:
            os.rmdir(directory)
        except FileNotFoundError:
            continue  # one hierarchy mounted under two names (cpu,cpuacct)
        except OSError:
            return False
    return True


def reap_stale(runtime: Runtime, base: Path, global_options: Sequence[str]) -> None:
    """Remove the state and bundles that runs killed outright left on this host: the state of
    this runtime's containers, and every dead run's bundle."""
    root = base / runtime.kind
    command = base_command(runtime, base, global_options)
    for directory in (root, base / "bundles"):
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        for name in names:
            found = _ID.fullmatch(name)
            if found is None or pid_alive(int(found["pid"])):
                continue
            if directory == root:
                remove_state(root, name, command, stale=True)
            else:
                _discard(directory / name)


def _discard(path: Path) -> None:
    """Remove a run's directory, whatever is in it; what cannot go is swept by a later run."""
    with contextlib.suppress(UcoreError):
        remove_tree(path)


def run_detached(
    run: Run, env: dict[str, str], steps: Iterable[spawn.Step], cpuset: Optional[str]
) -> int:
    """Start the container detached and wait for its main process as its (adoptive) parent."""
    mask: set[int] = {*spawn.FORWARDED, signal.SIGCHLD}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, mask)
    try:
        reaper = _become_subreaper()
        try:
            # Signals that come while the runtime starts are held (no target), then given to
            # the command.
            started = spawn.run(run.command(), env, steps=steps, cpuset=cpuset, targets=_none)
            main = run.main_pid()
            if started.status != 0 or main is None:
                raise run.failed(started.status)
            return _wait(main, mask, started.forwarded)
        finally:
            spawn.end_leftovers(reaper)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _none(_pid: int) -> list[int]:
    return []


def _become_subreaper() -> spawn.Reaper:
    try:
        return spawn.become_subreaper()
    except OSError as exc:
        raise PluginError(f"cannot wait for a detached container: {exc.strerror}") from None


def _wait(
    main: int,
    mask: set[int],
    pending: Optional[int],
    resized: Optional[Callable[[], None]] = None,
) -> int:
    """The main process's exit status, shell-style; signals that reach ucore are passed on,
    but for SIGWINCH, which ``resized`` handles (a relayed terminal's new size)."""
    if pending is not None:
        _forward(main, pending, from_terminal=False)
    while True:
        status = _reap(main)
        if status is not None:
            return status
        info = signal.sigwaitinfo(mask)
        if info.si_signo == signal.SIGWINCH:
            if resized is not None:
                resized()
        elif info.si_signo != signal.SIGCHLD:
            from_terminal = info.si_code == _SI_KERNEL and info.si_signo in _TTY_SIGNALS
            _forward(main, info.si_signo, from_terminal)


def _reap(main: int) -> Optional[int]:
    """Reap every exited child; the main process's status once it is among them."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            raise PluginError(
                f"the container's main process ({main}) is not a child of ucore"
            ) from None
        if pid == 0:
            return None
        if pid == main:
            code = os.waitstatus_to_exitcode(status)
            return code if code >= 0 else 128 - code


def _forward(main: int, signum: int, from_terminal: bool) -> None:
    """To the main process; a terminal's ^C or ^\\ to its whole process group, as the
    terminal would have done had the runtime not put the container in a session of its own
    (unless it is still in ucore's group, which the terminal reached already)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if not from_terminal:
            os.kill(main, signum)
            return
        group = os.getpgid(main)
        if group != os.getpgrp():
            os.killpg(group, signum)


# --- on a terminal: ucore relays it -----------------------------------------------------------


def run_on_terminal(
    run: Run, env: dict[str, str], steps: Iterable[spawn.Step], cpuset: Optional[str]
) -> int:
    """Detached as without a terminal, the runtime handing ucore the container's terminal
    (:mod:`ucore_runc.console`): ucore waits for the command, ends what it left, and copies
    the terminal's output to its end."""
    from ucore_runc import console

    mask: set[int] = {*spawn.FORWARDED, signal.SIGCHLD, signal.SIGWINCH}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, mask)
    listener = console.Listener(run.bundle)
    try:
        reaper = _become_subreaper()
        try:
            started = spawn.run(
                run.command(console=listener.path),
                env,
                steps=steps,
                cpuset=cpuset,
                targets=_none,
            )
            main = run.main_pid()
            if started.status != 0 or main is None:
                raise run.failed(started.status)
            with console.Relay(listener.receive()) as relay:
                status = _wait(main, mask, started.forwarded, relay.resize)
                spawn.end_leftovers(reaper)
            return status
        finally:
            spawn.end_leftovers(reaper)
    finally:
        listener.close()
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
