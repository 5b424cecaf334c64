"""ucore under a real Slurm (``support/slurm.py``): srun, sbatch, a job array on one store, and
jobs that their time limit kills in the middle of a run, a pull and a create.

Every job runs as the unprivileged user ``ucore-test`` with a store of its own, the images come
from the session's local registry, and the ``ucore`` the jobs run is this interpreter's. The
time-limited jobs are submitted together and waited for once (a time limit is at least a minute,
and Slurm checks it every 30 s), so the whole module takes about two minutes.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pytest
from support.cli import check_store
from support.faultproxy import FaultProxy
from support.slurm import Slurm, Task

from ucore.testing.images import (
    LayerBuilder,
    TestImages,
    build_image,
    busybox_layer_tar,
    make_layer,
)
from ucore.testing.push import Pusher
from ucore.testing.registry import RegistryServer

pytestmark = pytest.mark.hpc

#: In every time-limited job's command line: any process still showing it afterwards is a
#: container (or engine) process that outlived its job.
MARKER = "ucore-slurm-leftover-probe"
#: The container's sleep: a duration nothing else on the machine sleeps, as its marker.
MARKER_SLEEP = "7777777"
#: A container command that ignores SIGTERM, so that only the SIGKILL after KillWait ends it.
#: (One long sleep, not a loop of short ones: a process forked while Slurm is ending the job
#: can escape its kill, a race of Slurm's process tracking, not a leftover of ucore's.)
STUBBORN = f"trap '' TERM; echo running; exec sleep {MARKER_SLEEP} # {MARKER}"
#: A container command that ends on SIGTERM, as most do. (Its shell waits for each short
#: sleep, then runs the trap, whichever of the two Slurm signals first; a long sleep in the
#: background could die first and end the shell without the trap.)
POLITE = f'trap "echo stopping; exit 0" TERM; echo running; while :; do sleep 1; done # {MARKER}'
#: The batch script around it: its shell outlives SIGTERM (a trap), so the log says how ucore
#: ended (by itself, before KillWait's SIGKILL).
POLITE_JOB = f"trap : TERM\nucore run c sh -c '{POLITE}'\nstatus=$?\necho \"ucore exit $status\"\n"
ENGINES = ("proot", "runc", "crun", "fakechroot")
#: Files in the big image's second layer: creating a container of it takes about 2 s here,
#: a wide window in which to catch the create in progress.
BIG_FILES = 50000


@dataclass
class UserStore:
    """A store and a HOME owned by ucore-test, and ucore run there as that user."""

    slurm: Slurm
    directory: Path

    @property
    def store(self) -> Path:
        return self.directory / "store"

    @property
    def env(self) -> dict[str, str]:
        return {"UCORE_DIR": str(self.store), "HOME": str(self.directory)}

    def ucore(self, *args: str) -> Any:
        return self.slurm.as_user([str(self.slurm.ucore), *args], self.directory, self.env)

    def ok(self, *args: str) -> str:
        result = self.ucore(*args)
        assert result.returncode == 0, f"ucore {' '.join(args)}: {result.stderr}"
        return str(result.stdout)

    def ps(self) -> list[dict[str, Any]]:
        rows = json.loads(self.ok("ps", "--json"))
        assert isinstance(rows, list)
        return rows

    def images(self) -> list[dict[str, Any]]:
        rows = json.loads(self.ok("images", "--json"))
        assert isinstance(rows, list)
        return rows

    def sbatch(self, script: str, *options: str, env: Optional[dict[str, str]] = None) -> str:
        return self.slurm.sbatch(
            "#!/bin/sh\n" + script, self.directory, *options, env={**self.env, **(env or {})}
        )

    def verify_and_check(self) -> None:
        """``ucore verify`` passes on every image and the store's layout holds (no partial or
        temporary blobs)."""
        for row in self.images():
            self.ok("verify", row["ref"])
        check_store(self.store)


def user_store(slurm: Slurm, name: str) -> UserStore:
    return UserStore(slurm, slurm.user_dir(name))


def describe(task: Task) -> str:
    return f"{task}\n--- log ---\n{task.output()[-3000:]}"


def leftovers(store: Path) -> list[str]:
    """Command lines of processes that name :data:`MARKER`, :data:`MARKER_SLEEP` or the store
    (engines name the container's root there): what a killed job must not leave running."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if MARKER in cmdline or MARKER_SLEEP in cmdline or str(store) in cmdline:
            found.append(f"{entry.name}: {cmdline}")
    return found


# --- srun, sbatch, arrays -------------------------------------------------------------------


def test_srun_tasks_see_their_rank_without_hostenv(slurm: Slurm, busybox_image: str) -> None:
    """``srun -n 2 ucore run``: both tasks share one container (``--pull=reuse --name``) and
    each sees its own SLURM_PROCID, which passes into the container without ``--hostenv``."""
    user = user_store(slurm, "srun")
    result = slurm.srun(
        "-n",
        "2",
        str(slurm.ucore),
        "run",
        "--pull=reuse",
        "--name",
        "ranks",
        busybox_image,
        "sh",
        "-c",
        'echo "rank $SLURM_PROCID of $SLURM_NTASKS"',
        cwd=user.directory,
        env=user.env,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == ["rank 0 of 2", "rank 1 of 2"]
    assert result.stderr == ""
    assert [row["names"] for row in user.ps()] == [["ranks"]]


def test_sbatch_log_holds_only_the_output(slurm: Slurm, busybox_image: str) -> None:
    """A batch job that pulls, creates, runs and removes a container: its log holds what the
    container printed and nothing else (no progress, no notices)."""
    user = user_store(slurm, "sbatch")
    job = user.sbatch(
        f"exec ucore run --rm {busybox_image}"
        " sh -c 'echo \"job $SLURM_JOB_ID on $SLURM_JOB_NODELIST\"'\n"
    )
    [task] = slurm.wait(job)
    assert task.succeeded, describe(task)
    assert task.output() == f"job {job} on {slurm.node}\n"
    assert user.ps() == []


def test_job_array_pulls_once_and_creates_once(slurm: Slurm, proxy: FaultProxy) -> None:
    """The pull-once-run-many pattern: 16 array tasks on one store, each ``ucore run
    --pull=reuse --name``. One pull (every blob fetched once), one container, each task's log
    holds its own output only (waiting for the creator is not worth a word), verify passes."""
    user = user_store(slurm, "array")
    image = f"{proxy.address}/busybox:latest"
    job = user.sbatch(
        f"exec ucore run --pull=reuse --name shared {image}"
        " sh -c 'echo \"task $SLURM_ARRAY_TASK_ID\"'\n",
        "--array=0-15",
    )
    tasks = slurm.wait(job)
    assert len(tasks) == 16
    for task in tasks:
        assert task.succeeded, describe(task)
        assert task.output() == f"task {task.array_task}\n", describe(task)
    counts = proxy.download_counts()
    assert counts and set(counts.values()) == {1}, counts
    assert [row["names"] for row in user.ps()] == [["shared"]]
    user.verify_and_check()


# --- time limits ------------------------------------------------------------------------------


@dataclass
class Limited:
    """A job submitted with a one-minute time limit, and what it ran on."""

    user: UserStore
    job: str
    image: str
    task: Optional[Task] = None
    #: The pull reached the stalled blob; the create was caught (and frozen) in progress.
    caught: bool = False


def big_image(registry: RegistryServer) -> str:
    """busybox and a layer of :data:`BIG_FILES` small files (uncompressed), pushed once."""
    many = LayerBuilder()
    for i in range(BIG_FILES):
        many.file(f"data/{i % 100:02d}/{i}", f"file {i}\n")
    image = build_image(
        [make_layer(busybox_layer_tar(), "gzip"), make_layer(many.tar(), "none")],
        config={"Env": ["PATH=/bin"], "Cmd": ["sh"]},
    )
    Pusher(registry.url).push("bigtree:latest", image)
    return f"{registry.address}/bigtree:latest"


def stop_when_creating(store: Path, deadline: float) -> bool:
    """SIGSTOP the ucore process that is creating a container in ``store`` (its staging
    directory names its pid) as soon as it is seen, so that the time limit finds it in the
    middle of the create whatever the machine's speed. False if the create was not seen."""
    containers = store / "containers"
    while time.monotonic() < deadline:
        try:
            names = [e.name for e in os.scandir(containers)]
        except FileNotFoundError:
            names = []
        for name in names:
            match = re.fullmatch(r"\.staging-[0-9a-f]+\..+\.(\d+)", name)
            if match:
                os.kill(int(match.group(1)), signal.SIGSTOP)
                return True
        if any(not n.startswith(".") for n in names):
            return False  # published: the create was over before it could be caught
        time.sleep(0.005)
    return False


@pytest.fixture(scope="module")
def time_limited(
    slurm: Slurm,
    registry: RegistryServer,
    test_images: TestImages,
    busybox_image: str,
    debian_image: str,
) -> Iterator[dict[str, Limited]]:
    """Every time-limited job, submitted at once and waited for together: two runs in each
    engine (``run-``: the container ignores SIGTERM; ``term-``: it ends on it), a pull from a
    registry that stalls mid-blob, and the create of a big image (caught and frozen
    mid-create, so that the limit lands there)."""
    jobs: dict[str, Limited] = {}
    limit = "--time=1"
    for engine in ENGINES:
        image = debian_image if engine == "fakechroot" else busybox_image
        for kind, script in [
            ("run", f'exec ucore run c sh -c "{STUBBORN}"\n'),
            ("term", POLITE_JOB),
        ]:
            user = user_store(slurm, f"limit-{kind}-{engine}")
            user.ok("create", "--name", "c", image)
            user.ok("setup", "--engine", engine, "c")
            jobs[f"{kind}-{engine}"] = Limited(user, user.sbatch(script, limit), image)

    big = big_image(registry)
    with FaultProxy(registry.url) as stalling:
        layer = test_images.busybox.layers[0].blob
        stalling.stall(after=layer.size // 2, match=re.escape(f"/blobs/{layer.digest}"))
        user = user_store(slurm, "limit-pull")
        image = f"{stalling.address}/busybox:latest"
        # Nothing but the time limit may end this pull: no stall timeout of ucore's own.
        slow = {"UCORE_STALL_TIMEOUT": "3600", "UCORE_TIMEOUT": "3600"}
        job = user.sbatch(f"exec ucore pull {image}\n", limit, env=slow)
        jobs["pull"] = Limited(user, job, image)

        user = user_store(slurm, "limit-create")
        user.ok("pull", big)
        job = user.sbatch(f"exec ucore create --name big {big}\n", limit)
        jobs["create"] = Limited(user, job, big)
        deadline = time.monotonic() + 120
        jobs["create"].caught = stop_when_creating(user.store, deadline)

        for limited in jobs.values():
            [limited.task] = slurm.wait(limited.job, timeout=300)
        jobs["pull"].caught = stalling.stalled.is_set()
        # The registry answers again for the jobs that follow (the same reference).
        stalling.reset_state()
        yield jobs


RECOVERY = {
    "run": "exec ucore run c echo again\n",
    "term": "exec ucore run c echo again\n",
    "pull": "ucore pull {image} && exec ucore run --rm {image} echo again\n",
    "create": "ucore create --name big {image} >/dev/null && exec ucore run big echo again\n",
}


@pytest.mark.parametrize(
    "case", [*(f"{k}-{e}" for k in ("run", "term") for e in ENGINES), "pull", "create"]
)
def test_a_job_killed_by_its_time_limit_leaves_nothing_behind(
    case: str, slurm: Slurm, time_limited: dict[str, Limited]
) -> None:
    """Slurm's time limit (SIGTERM, SIGKILL after KillWait) in the middle of a run, a pull
    or a create: a container that ends on SIGTERM ends, and ucore with it; no container
    process outlives the job, nothing partial is visible, the store verifies, and the next
    job in the same store succeeds."""
    limited = time_limited[case]
    task, user = limited.task, limited.user
    assert task is not None
    assert task.state == "TIMEOUT", describe(task)
    assert "DUE TO TIME LIMIT" in task.output(), describe(task)
    assert leftovers(user.store) == []
    if case.startswith(("run-", "term-")):
        assert "running" in task.output(), describe(task)
        assert [row["names"] for row in user.ps()] == [["c"]]
        if case.startswith("term-"):
            # the container got SIGTERM and ended, and ucore ended by itself before the
            # SIGKILL: with the container's status, or 143 where its own SIGTERM came after
            # the container had ended (Slurm signals the job's processes one by one)
            assert "stopping" in task.output(), describe(task)
            assert re.search(r"^ucore exit (0|143)$", task.output(), re.M), describe(task)
    elif case == "pull":
        assert limited.caught, f"the pull never reached the stalled blob\n{describe(task)}"
        assert user.images() == [], "a pull cut short shows an image"
    else:
        assert limited.caught, f"the create was never caught in progress\n{describe(task)}"
        assert user.ps() == [], "a create cut short shows a container"
    script = RECOVERY[case.split("-", maxsplit=1)[0]].format(image=limited.image)
    user.verify_and_check()
    [after] = slurm.wait(user.sbatch(script))
    assert after.succeeded, describe(after)
    assert after.output() == "again\n", describe(after)
    user.verify_and_check()
