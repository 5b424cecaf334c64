"""A real single-node Slurm from Debian's packages, for the tests marked ``hpc``.

Batch systems are where ucore's users start hundreds of containers at once, and where a time
limit kills them in the middle of whatever they were doing; mocking Slurm would test nothing of
that. So the session starts the real daemons (``munged``, ``slurmctld``, ``slurmd``) as root,
each session with its own configuration, ports, munge socket and spool in a directory of its
own under :data:`ROOT`, and submits real jobs as the unprivileged user :data:`USER`.

The configuration is the one that works on a 2-core Debian 12 machine without systemd
(Slurm 22.05): ``proctrack/linuxproc`` (no cgroups), ``OverSubscribe=FORCE`` so that a
16-task array and 2-rank jobs fit on 2 cores, ``KillWait=5`` so that a time limit's SIGTERM is
followed by SIGKILL after five seconds. Finished jobs stay in ``slurmctld``'s memory for
``MinJobAge`` (300 s) so that :meth:`Slurm.wait` can read their states and exit codes without
accounting.

Daemons left by a session that was killed (a developer's ^C twice, a CI timeout) are ended by
the next session: each session directory names its owner's pid, and a directory whose owner is
gone has its daemons (by the pids recorded there, checked against ``/proc``) killed and is
removed, with the jobs' working directories. Sessions running at the same time do not disturb
each other.

API for tests (``from support.slurm import Slurm``; the ``slurm`` fixture in ``conftest.py``):

- :func:`start` and :func:`stop` (the ``slurm`` fixture calls them);
- :attr:`Slurm.env` the variables that point Slurm's commands at this cluster (``SLURM_CONF``);
- :attr:`Slurm.ucore` the ``ucore`` executable jobs run (this interpreter's, readable by USER);
- :attr:`Slurm.mpi_types` what ``srun --mpi=list`` offers (``pmix``, ``pmi2``, ...);
- :meth:`Slurm.user_dir` a fresh directory USER owns (working files, stores, logs);
- :meth:`Slurm.user_env` a clean environment for USER (HOME, PATH with ucore, SLURM_CONF, the
  no-network proxy guard of ``support.cli``, plus what is given);
- :meth:`Slurm.as_user` run a command as USER with such an environment;
- :meth:`Slurm.srun` ``srun ARGS`` as USER;
- :meth:`Slurm.sbatch` submit a batch script as USER, returning the job id;
- :meth:`Slurm.wait` wait until a job (every task of an array) has ended: its :class:`Task`\\ s,
  with state, exit code and log.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ucore.storage.store import pid_alive

from . import process

#: Where the sessions' daemons keep their configuration, state, sockets and logs (root only
#: writes there; every user reads the configuration).
ROOT = Path(os.environ.get("UCORE_TEST_SLURM_ROOT", "/run/ucore-test-slurm"))
#: The unprivileged user the jobs run as (``tests/setup-host.sh`` creates it).
USER = "ucore-test"
PARTITION = "test"
#: Seconds between a time limit's (or scancel's) SIGTERM and its SIGKILL.
KILL_WAIT = 5
#: Jobs (array tasks) one core takes at once.
OVERSUBSCRIBE = 32
DAEMONS = ("munged", "slurmctld", "slurmd")
#: States a job ends in (``scontrol show job``'s ``JobState``).
ENDED = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "TIMEOUT",
    }
)
#: The no-network guard of ``support.cli.Ucore``: anything off loopback fails at once.
_PROXY_GUARD = {
    "HTTP_PROXY": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "NO_PROXY": "127.0.0.1,127.0.0.2,localhost",
}


class SlurmError(RuntimeError):
    """The cluster could not be started or a command failed; the message says which and why."""


@dataclass(frozen=True)
class Task:
    """One job, or one task of an array, once ended."""

    job_id: str
    array_task: Optional[int]
    state: str
    #: ``ExitCode=STATUS:SIGNAL`` as ``scontrol`` shows it.
    exit_code: str
    log: Path

    @property
    def succeeded(self) -> bool:
        return self.state == "COMPLETED" and self.exit_code == "0:0"

    def output(self) -> str:
        """What the job wrote to its log (stdout and stderr together, as users see it)."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Slurm:
    """A running single-node cluster; see the module docstring for the API."""

    def __init__(self, directory: Path, node: str, ucore: Path) -> None:
        self.directory = directory
        self.node = node
        self.conf = directory / "slurm.conf"
        self.env = {"SLURM_CONF": str(self.conf)}
        self.ucore = ucore
        self.mpi_types: list[str] = []
        self._user_base = Path(tempfile.mkdtemp(prefix="ucore-slurm-", dir="/tmp"))
        _chown_user(self._user_base)
        self._user_base.chmod(0o755)
        (directory / "user-base").write_text(str(self._user_base))
        self._procs: list[subprocess.Popen[bytes]] = []
        self._conf_before: Optional[str] = None

    # --- for tests ---------------------------------------------------------------------------

    def user_dir(self, name: str) -> Path:
        """A new, empty directory owned by USER, ``name`` plus a unique suffix."""
        path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self._user_base))
        _chown_user(path)
        path.chmod(0o755)
        return path

    def user_env(self, extra: Optional[Mapping[str, str]] = None) -> dict[str, str]:
        """USER's environment for a command or a job: nothing of the test process's but what
        is named here, so a job sees what a user's login would give it."""
        home = pwd.getpwnam(USER).pw_dir
        env = {
            "HOME": home,
            "USER": USER,
            "LOGNAME": USER,
            "PATH": f"{self.ucore.parent}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "LANG": "C.UTF-8",
            **self.env,
            **_PROXY_GUARD,
        }
        env.update(extra or {})
        return env

    def as_user(
        self,
        argv: Sequence[str],
        cwd: Optional[Path] = None,
        env: Optional[Mapping[str, str]] = None,
        timeout: float = 300,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` as USER with :meth:`user_env` (plus ``env``), output captured. On
        timeout its whole process group is killed (its own session): a hung ``mpirun``'s
        ranks would otherwise outlive the test and load the rest of the suite."""
        assignments = [f"{k}={v}" for k, v in self.user_env(env).items()]
        return process.run_group(
            ["runuser", "-u", USER, "--", "env", "-i", *assignments, *argv], timeout, cwd=cwd
        )

    def srun(
        self,
        *args: str,
        cwd: Optional[Path] = None,
        env: Optional[Mapping[str, str]] = None,
        timeout: float = 300,
    ) -> subprocess.CompletedProcess[str]:
        """``srun ARGS`` as USER, in the test partition."""
        return self.as_user(["srun", f"--partition={PARTITION}", *args], cwd, env, timeout)

    def sbatch(
        self,
        script: str,
        cwd: Path,
        *options: str,
        env: Optional[Mapping[str, str]] = None,
        name: str = "job",
    ) -> str:
        """Submit ``script`` (its text, ``#!`` line included) as USER from ``cwd``; the job id.

        The log goes to ``cwd/NAME-JOBID.out`` (``NAME-ARRAYJOB_TASK.out`` for an array),
        stdout and stderr together, as Slurm writes it by default. The job's environment is
        :meth:`user_env` plus ``env`` (sbatch exports the submitter's).
        """
        path = cwd / f"{name}.sh"
        path.write_text(script)
        path.chmod(0o755)
        _chown_user(path)
        array = any(o.startswith(("--array", "-a")) for o in options)
        log = cwd / (f"{name}-%A_%a.out" if array else f"{name}-%j.out")
        result = self.as_user(
            [
                "sbatch",
                "--parsable",
                f"--partition={PARTITION}",
                f"--chdir={cwd}",
                f"--output={log}",
                f"--job-name={name}",
                *options,
                str(path),
            ],
            cwd,
            env,
            timeout=60,
        )
        if result.returncode != 0:
            raise SlurmError(f"sbatch failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout.strip().split(";")[0]

    def wait(self, job_id: str, timeout: float = 300) -> list[Task]:
        """Wait until every task of the job has ended and Slurm has finished cleaning up after
        it (no task ``COMPLETING``): its tasks, in array order."""
        deadline = time.monotonic() + timeout
        while True:
            records = self._job_records(job_id)
            if records and all(_ended(r) for r in records):
                return sorted((self._task(r) for r in records), key=lambda t: t.array_task or 0)
            if time.monotonic() > deadline:
                states = sorted({r.get("JobState", "?") for r in records})
                raise SlurmError(f"job {job_id} has not ended after {timeout} s: {states}")
            time.sleep(0.5)

    def cancel_all(self) -> None:
        """End every job of this cluster (SIGTERM, then SIGKILL after KillWait)."""
        subprocess.run(
            ["scancel", "--full", f"--partition={PARTITION}"], env=self._env(), check=False
        )

    # --- inside ------------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        return {**os.environ, **self.env}

    def _job_records(self, job_id: str) -> list[dict[str, str]]:
        result = subprocess.run(
            ["scontrol", "-o", "show", "job", job_id],
            env=self._env(),
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise SlurmError(f"scontrol show job {job_id}: {result.stderr.strip()}")
        records = []
        for line in result.stdout.splitlines():
            if not line.strip():
                continue
            fields = dict(re.findall(r"(\w+)=(\S*)", line))
            # An array's pending remainder ("ArrayTaskId=3-15") becomes tasks later.
            if re.fullmatch(r"\d*", fields.get("ArrayTaskId", "")):
                records.append(fields)
            else:
                records.append({**fields, "JobState": "PENDING"})
        return records

    def _task(self, record: dict[str, str]) -> Task:
        task = record.get("ArrayTaskId")
        return Task(
            job_id=record["JobId"],
            array_task=int(task) if task else None,
            state=record["JobState"],
            exit_code=record.get("ExitCode", "?"),
            log=Path(record["StdOut"]),
        )


def _ended(record: dict[str, str]) -> bool:
    # A job whose processes are still being ended shows its final state and "COMPLETING"
    # among its flags (or as the state); it has ended once that is gone.
    return (
        record.get("JobState") in ENDED
        and "COMPLETING" not in record.get("Reason", "")
        and ("COMPLETING" not in record.get("JobState", ""))
    )


def _chown_user(path: Path) -> None:
    entry = pwd.getpwnam(USER)
    os.chown(path, entry.pw_uid, entry.pw_gid)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _memory_mb() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024 - 512
    return 1024


def slurm_conf(directory: Path, node: str, socket_path: Path) -> str:
    """The cluster's ``slurm.conf``: one node, this host, everything in ``directory``."""
    cpus = os.cpu_count() or 1
    return f"""\
ClusterName=ucoretest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={socket_path}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
PlugStackConfig={directory / "plugstack.conf"}
StateSaveLocation={directory / "state"}
SlurmdSpoolDir={directory / "spool"}
SlurmctldPidFile={directory / "slurmctld.pid"}
SlurmdPidFile={directory / "slurmd.pid"}
SlurmctldLogFile={directory / "slurmctld.log"}
SlurmdLogFile={directory / "slurmd.log"}
ReturnToService=2
KillWait={KILL_WAIT}
MinJobAge=300
InactiveLimit=0
MaxArraySize=1001
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={_memory_mb()} State=UNKNOWN
PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP \
OverSubscribe=FORCE:{OVERSUBSCRIBE}
"""


# --- lifecycle ----------------------------------------------------------------------------


def end_stale_sessions(root: Path = ROOT) -> None:
    """Kill the daemons of sessions whose owner process is gone, and remove their directories."""
    if not root.is_dir():
        return
    for directory in root.iterdir():
        owner = re.fullmatch(r"session-(\d+)-.*", directory.name)
        if owner is None or pid_alive(int(owner.group(1))):
            continue
        for pid in _recorded_pids(directory):
            _kill_daemon(pid)
        user_base = directory / "user-base"
        if user_base.is_file():
            subprocess.run(["rm", "-rf", "--one-file-system", user_base.read_text()], check=False)
        shutil.rmtree(directory, ignore_errors=True)


def _read_int(path: Path) -> Optional[int]:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _recorded_pids(directory: Path) -> list[int]:
    pids = [_read_int(directory / f"{d}.pid") for d in ("slurmctld", "slurmd")]
    pids.append(_read_int(directory / "munge" / "munged.pid"))
    return [p for p in pids if p is not None]


def _kill_daemon(pid: int) -> None:
    """SIGKILL ``pid`` if it is one of :data:`DAEMONS` (a recycled pid is left alone)."""
    try:
        name = Path(os.readlink(f"/proc/{pid}/exe")).name
    except OSError:
        return
    if name.split("-")[0] in DAEMONS:  # Debian's are slurmctld-wlm and slurmd-wlm
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _start_munge(directory: Path) -> Path:
    """munged on a socket of its own, with a fresh key: the cluster's authentication. Its
    directory is munge's, readable by everyone (clients connect to the socket)."""
    munge = directory / "munge"
    munge.mkdir(mode=0o755)
    entry = pwd.getpwnam("munge")
    os.chown(munge, entry.pw_uid, entry.pw_gid)
    key = munge / "munge.key"
    key.write_bytes(secrets.token_bytes(1024))
    os.chown(key, entry.pw_uid, entry.pw_gid)
    key.chmod(0o400)
    socket_path = munge / "munge.socket"
    subprocess.run(
        [
            "runuser",
            "-u",
            "munge",
            "--",
            "/usr/sbin/munged",
            "--force",
            f"--key-file={key}",
            f"--socket={socket_path}",
            f"--pid-file={munge / 'munged.pid'}",
            f"--log-file={munge / 'munged.log'}",
            f"--seed-file={munge / 'munged.seed'}",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return socket_path


def _wait_idle(env: Mapping[str, str], directory: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        result = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%T"], env=env, capture_output=True, text=True, check=False
        )
        state = (result.stdout or result.stderr).strip()
        if state == "idle":
            return
        time.sleep(0.5)
    logs = "".join(
        f"\n--- {name} ---\n{(directory / name).read_text(errors='replace')[-2000:]}"
        for name in ("slurmctld.log", "slurmd.log")
        if (directory / name).exists()
    )
    raise SlurmError(f"the node is not idle after {timeout} s (sinfo: {state!r}){logs}")


def _check_ucore(ucore: Path) -> None:
    """The jobs run ``ucore`` as USER: a virtual environment under /root is out of its reach."""
    result = subprocess.run(
        ["runuser", "-u", USER, "--", str(ucore), "version"],
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        raise SlurmError(
            f"{USER} cannot run {ucore} ({result.stderr.strip()[-300:]}): run the hpc tests"
            " with `tox -e hpc`, or from a virtual environment made with /usr/bin/python3"
            " outside any private directory"
        )


def start(ucore: Optional[Path] = None) -> Slurm:
    """Start munged, slurmctld and slurmd for this session and wait until the node is idle;
    until :func:`stop`, ``SLURM_CONF`` in this process points Slurm's commands at it."""
    if os.geteuid() != 0:
        raise SlurmError("starting Slurm's daemons needs root (the jobs run as ucore-test)")
    for tool in ("slurmctld", "slurmd", "sinfo", "srun", "sbatch", "scontrol", "runuser"):
        if shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None:
            raise SlurmError(f"{tool} not found: tests/setup-host.sh installs slurm-wlm and munge")
    ucore = ucore or Path(sys.executable).parent / "ucore"
    _check_ucore(ucore)
    end_stale_sessions()
    ROOT.mkdir(mode=0o755, parents=True, exist_ok=True)
    # the owner's pid in the name, there from the start: another session starting at the
    # same moment never takes this one for a dead one's
    directory = Path(tempfile.mkdtemp(prefix=f"session-{os.getpid()}-", dir=ROOT))
    directory.chmod(0o755)
    for sub in ("state", "spool"):
        (directory / sub).mkdir(mode=0o700)
    (directory / "plugstack.conf").write_text("")
    node = socket.gethostname().split(".")[0]
    slurm = Slurm(directory, node, ucore)
    try:
        socket_path = _start_munge(directory)
        slurm.conf.write_text(slurm_conf(directory, node, socket_path))
        env = slurm._env()
        for daemon in ("slurmctld", "slurmd"):
            with open(directory / f"{daemon}.out", "wb") as log:
                proc = subprocess.Popen(
                    [f"/usr/sbin/{daemon}", "-D", "-f", str(slurm.conf)],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            (directory / f"{daemon}.pid").write_text(f"{proc.pid}\n")
            slurm._procs.append(proc)
        _wait_idle(env, directory)
        listed = subprocess.run(
            ["srun", "--mpi=list"], env=env, capture_output=True, text=True, check=False
        )
        slurm.mpi_types = re.findall(r"^\s*(\S+)\s*$", listed.stdout + listed.stderr, re.M)
    except BaseException:
        stop(slurm)
        raise
    slurm._conf_before = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(slurm.conf)
    return slurm


def stop(slurm: Slurm) -> None:
    """End the jobs, the daemons and munged; remove the session's directories."""
    if os.environ.get("SLURM_CONF") == str(slurm.conf):
        if slurm._conf_before is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = slurm._conf_before
    if all(p.poll() is None for p in slurm._procs) and slurm._procs:
        slurm.cancel_all()
    for proc in slurm._procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in slurm._procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    munged = _read_int(slurm.directory / "munge" / "munged.pid")
    if munged is not None:
        _kill_daemon(munged)
    shutil.rmtree(slurm.directory, ignore_errors=True)
    subprocess.run(["rm", "-rf", "--one-file-system", str(slurm._user_base)], check=False)
