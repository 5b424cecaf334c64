"""Starting an engine's process and staying with it until the container's command ends.

Shared by every engine so that they all behave alike where batch jobs care; an engine plugin
starts its program with :func:`run` and gets all of this:

* **signals**: ``SIGTERM`` (a batch system's time limit, ``scancel``), ``SIGINT``, ``SIGHUP``,
  ``SIGQUIT`` and ``SIGUSR1/2`` sent to ``ucore`` are passed on to the container's main process,
  because some engines (PRoot, bubblewrap) do not pass them on themselves. A ``SIGINT``/``SIGQUIT``
  typed on the terminal already reached the whole foreground process group, container included,
  so it is not sent a second time.
* **exit status**: the command's; ``128 + N`` when it was killed by signal ``N``.
* **set-up in the child**: CPU affinity (``--cpuset-cpus``) and an engine's own steps (a
  seccomp filter, a mount namespace) run between ``fork`` and ``exec``; a failure there comes
  back to the parent as a one-line error instead of a half-started container.
* **leftovers**: around :func:`run`, :func:`leftovers_ended` ends what the command leaves
  running when it exits, for an engine without a PID namespace to do it.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Callable, NamedTuple, Optional

from ucore.values.errors import PluginError, UcoreError

FORWARDED = (
    signal.SIGHUP,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGTERM,
    signal.SIGUSR1,
    signal.SIGUSR2,
)
#: ``si_code`` of a signal the kernel sent: the terminal's ^C and ^\ to the foreground group.
_SI_KERNEL = 0x80
_TTY_SIGNALS = (signal.SIGINT, signal.SIGQUIT)
_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37
#: How long to wait for the main process to appear before a signal for it is retried.
_RETRY = 0.05

Step = Callable[[], None]


class Exit(NamedTuple):
    """How the engine's process ended."""

    #: As a shell reports it: the exit code, or ``128 + N`` after signal ``N``.
    status: int
    #: The last signal the container got through ucore (or through ucore's terminal), if any.
    forwarded: Optional[int]


def run(
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    steps: Iterable[Step] = (),
    cpuset: Optional[str] = None,
    targets: Optional[Callable[[int], list[int]]] = None,
    started: Optional[Callable[[int], None]] = None,
) -> Exit:
    """Run ``argv`` (an absolute path first) with exactly ``env``; stdin, stdout and stderr are
    inherited.

    :param steps: run in the child just before ``exec``.
    :param cpuset: the run spec's ``cpuset`` (``--cpuset-cpus``, ``0-3,6``): the CPUs the
        engine's process, and so the container, may run on.
    :param targets: ``targets(pid)`` names the processes a forwarded signal goes to; by default
        the engine's process itself. An engine whose program starts the command as its child
        and passes no signal on (bubblewrap) gives :func:`children`; a signal that finds no
        target yet (the child is not started) is sent again until one is there.
    :param started: called with the engine's pid once its process runs.
    """
    cpus = _cpus(cpuset) if cpuset else None
    mask: set[int] = {*FORWARDED, signal.SIGCHLD}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, mask)
    try:
        pid = _spawn(list(argv), dict(env), [*_affinity(cpus), *steps], old)
        if started is not None:
            started(pid)
        return _supervise(pid, mask, targets or (lambda p: [p]))
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextlib.contextmanager
def leftovers_ended() -> Iterator[None]:
    """What the command leaves running ends with it, as a container's processes do when its
    init exits: for the block, ucore is the subreaper of the processes it starts, and kills
    those left once the main process has ended. Where the kernel refuses a subreaper, orphans
    go to init and the run goes on."""
    try:
        reaper = become_subreaper()
    except OSError:
        yield
        return
    try:
        yield
    finally:
        end_leftovers(reaper)


class Reaper(NamedTuple):
    """What :func:`become_subreaper` found, for :func:`end_leftovers` to put back."""

    #: Children this process had already (an embedding program's own, such as a server):
    #: never ended nor waited for.
    spared: frozenset[int]
    #: Whether this process was a subreaper before (the ``ucore`` command never is).
    was_subreaper: bool


def become_subreaper() -> Reaper:
    """Make the orphans of the processes ucore starts come to ucore, not to the host's init
    (``PR_SET_CHILD_SUBREAPER``), so that what a command leaves running can be ended with it
    (:func:`end_leftovers`). OSError when the kernel refuses."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    flag = ctypes.c_int(0)
    libc.prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(flag), 0, 0, 0)
    reaper = Reaper(frozenset(children(os.getpid())), bool(flag.value))
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(err)}")
    return reaper


def end_leftovers(reaper: Reaper) -> None:
    """Kill and reap every child the run left: after the main process, only what it left
    behind is still ucore's (orphans come to ucore, the subreaper, as each parent dies).
    Children that were there before the run are spared, and a process that embeds ucore
    (:mod:`ucore.api`) stops being a subreaper again, so its other children are its own."""
    me = os.getpid()
    while True:
        left = [pid for pid in children(me) if pid not in reaper.spared]
        if not left:
            break
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        for pid in left:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
    if not reaper.was_subreaper:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def find_program(name: str, search: str) -> Optional[str]:
    """The first executable ``name`` in the ``os.pathsep``-separated ``search`` (what
    ``shutil.which`` does for engines locating their binary: importing shutil would cost
    every ``ucore run`` 2 ms)."""
    for folder in search.split(os.pathsep):
        candidate = os.path.join(folder or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def _cpus(cpuset: str) -> frozenset[int]:
    from ucore.running.runspec import parse_cpuset  # here: a probe using run() parses no CPU list

    return parse_cpuset(cpuset)


def _affinity(cpus: Optional[frozenset[int]]) -> list[Step]:
    if not cpus:
        return []
    return [lambda: os.sched_setaffinity(0, cpus)]


def _spawn(argv: list[str], env: dict[str, str], steps: list[Step], mask: Iterable[int]) -> int:
    """fork + exec, reporting a failure before ``exec`` through a close-on-exec pipe."""
    rfd, wfd = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child; its effects are what the tests check
        code, message = 1, "exec failed"
        try:
            os.close(rfd)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            for step in steps:
                step()
            os.execve(argv[0], argv, env)
        except UcoreError as exc:
            code, message = exc.exit_code, str(exc)
        except OSError as exc:
            message = f"cannot start {argv[0]}: {exc.strerror or exc}"
        except BaseException as exc:  # noqa: BLE001 - anything at all must reach the parent
            message = f"cannot start {argv[0]}: {type(exc).__name__}: {exc}"
        with contextlib.suppress(BaseException):
            os.write(wfd, f"{code}\n{message}".encode(errors="replace")[:4000])
        os._exit(127)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as pipe:
        report = pipe.read()
    if report:
        os.waitpid(pid, 0)
        status, _, message = report.decode(errors="replace").partition("\n")
        error = PluginError(message.splitlines()[0] if message else "the engine failed to start")
        error.exit_code = int(status) if status.isdigit() else 1
        raise error
    return pid


def _supervise(pid: int, mask: set[int], targets: Callable[[int], list[int]]) -> Exit:
    forwarded: Optional[int] = None
    pending: Optional[int] = None
    while True:
        info = (
            signal.sigtimedwait(mask, _RETRY) if pending is not None else signal.sigwaitinfo(mask)
        )
        if info is None or info.si_signo == signal.SIGCHLD:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                code = os.waitstatus_to_exitcode(status)
                return Exit(code if code >= 0 else 128 - code, forwarded)
            if pending is None:
                continue
            signum = pending
        else:
            signum = info.si_signo
            if info.si_code == _SI_KERNEL and signum in _TTY_SIGNALS:
                forwarded = signum  # the terminal signalled the container too
                continue
        pending = None if _send(targets(pid), signum) else signum
        forwarded = signum


def _send(pids: list[int], signum: int) -> bool:
    sent = False
    for target in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(target, signum)
            sent = True
    return sent


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (``/proc/PID/task/*/children``, else a scan of ``/proc``)."""
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found.extend(int(x) for x in f.read().split())
        return found
    except (FileNotFoundError, ProcessLookupError):
        return _scan(lambda status: status.get("PPid") == str(pid))


def traced_by(pid: int) -> list[int]:
    """Every process ``pid`` traces (all of a PRoot container's processes)."""
    return _scan(lambda status: status.get("TracerPid") == str(pid))


def _scan(match: Callable[[dict[str, str]], bool]) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                fields = dict(
                    (k, v.strip()) for k, _, v in (line.partition(":") for line in f) if v
                )
        except OSError:
            continue
        if match(fields):
            found.append(int(entry))
    return found
