"""Real Open MPI ranks in containers, started by the host's launcher (the hybrid model).

The image (``support/mpi.py``) carries Debian's Open MPI runtime and ``mpi-ring``, a program
that does point-to-point (a small and a 4 MiB message round the ring) and collective
(``MPI_Allreduce``, ``MPI_Bcast``) communication. The host's ``mpirun`` and Slurm's
``srun --mpi=pmix`` start one ``ucore run`` per rank, as the unprivileged user ``ucore-test``,
in each engine (PRoot, runc, crun, F1, F3); both ranks must report one job of two ranks, the
right values, and nothing on stderr that says ERROR. A rank that runs as the container's root
fails in ``MPI_Init`` (PMIx checks who its clients are); one that misses the launcher's
rendezvous directories complains ("PMIX ERROR") and falls back; one that misses the
launcher's environment starts as a singleton ("rank 0 of 1").

One store and one container per engine serve the whole module (pulled and created once).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import pytest
from support import debian, mpi
from support.slurm import Slurm

from ucore.testing.push import Pusher
from ucore.testing.registry import RegistryServer

pytestmark = pytest.mark.hpc

#: The engines named by their modes: PRoot, runc, crun, and Fakechroot's F1 and F3 (F3 patches
#: the image's ELF files on its first run: here both ranks' first run at once).
ENGINES = ("P1", "runc", "crun", "F1", "F3")
RANKS = 2
LINE = re.compile(
    r"^rank (\d+) of (\d+): got (-?\d+) from (\d+), big (\d+), sum (\d+), token (\d+)$", re.M
)
#: Every int of the 4 MiB message arrived as sent.
BIG = 1 << 20


class MpiStore:
    """A store owned by ucore-test with one container of the MPI image per engine."""

    def __init__(self, slurm: Slurm, image: str) -> None:
        self.slurm = slurm
        self.directory = slurm.user_dir("mpi")
        self.env = {"UCORE_DIR": str(self.directory / "store"), "HOME": str(self.directory)}
        self.ok("pull", image)
        for engine in ENGINES:
            self.ok("create", "--name", name(engine), image)
            self.ok("setup", "--engine", engine, name(engine))

    def ok(self, *args: str) -> str:
        result = self.slurm.as_user([str(self.slurm.ucore), *args], self.directory, self.env)
        assert result.returncode == 0, f"ucore {' '.join(args)}: {result.stderr}"
        return result.stdout

    def launch(self, *launcher: str, env: Mapping[str, str] = {}, **kwargs: Any) -> Any:
        """``LAUNCHER... ucore run CONTAINER PROGRAM`` as ucore-test in the store's directory."""
        return self.slurm.as_user(
            [*launcher, str(self.slurm.ucore), *kwargs.pop("run", ())],
            self.directory,
            {**self.env, **env},
            timeout=kwargs.pop("timeout", 120),
        )


def name(engine: str) -> str:
    return f"mpi-{engine.lower()}"


@pytest.fixture(scope="module")
def mpi_store(slurm: Slurm, registry: RegistryServer) -> MpiStore:
    try:
        tar = mpi.mpi_rootfs_tar()
    except debian.CacheMissing as missing:
        pytest.fail(str(missing))
    Pusher(registry.url).push("mpi:bookworm", mpi.mpi_image(tar))
    return MpiStore(slurm, f"{registry.address}/mpi:bookworm")


def check_job(result: Any) -> None:
    """Both ranks of one two-rank job, each with what its neighbour sent and the job's sums."""
    output = f"exit status {result.returncode}\n--- stdout ---\n{result.stdout}"
    output += f"\n--- stderr ---\n{result.stderr[-3000:]}"
    assert result.returncode == 0, output
    assert "ERROR" not in result.stderr, output  # PMIx's complaints, Open MPI's, ucore's
    ranks = {int(m[0]): m for m in LINE.findall(result.stdout)}
    assert sorted(ranks) == list(range(RANKS)), output
    for rank, (_, size, got, prev, big, total, token) in ranks.items():
        assert int(size) == RANKS, output
        assert int(prev) == (rank - 1) % RANKS, output
        assert int(got) == (int(prev) + 1) * 10, output
        assert int(big) == BIG, output
        assert int(total) == sum(range(1, RANKS + 1)), output
        assert int(token) == 4242, output


@pytest.mark.parametrize("engine", ENGINES)
def test_mpirun_starts_one_job_of_containerised_ranks(mpi_store: MpiStore, engine: str) -> None:
    result = mpi_store.launch(
        "mpirun", "-np", str(RANKS), "--oversubscribe", run=("run", name(engine), mpi.PROGRAM)
    )
    check_job(result)


@pytest.mark.parametrize("engine", ENGINES)
def test_srun_pmix_starts_one_job_of_containerised_ranks(
    mpi_store: MpiStore, slurm: Slurm, engine: str
) -> None:
    assert "pmix" in slurm.mpi_types, slurm.mpi_types
    result = mpi_store.launch(
        "srun",
        "--partition=test",
        "-n",
        str(RANKS),
        "--mpi=pmix",
        run=("run", name(engine), mpi.PROGRAM),
    )
    check_job(result)


def test_without_the_launchers_directories_pmix_complains(mpi_store: MpiStore) -> None:
    """What the binds are for: with ``launcher_binds`` off, the ranks cannot open the PMIx
    server's shared data store. Open MPI 4.1 then falls back to asking the server for every
    value (the job still runs, slower) and says so on stderr, once per rank."""
    result = mpi_store.launch(
        "mpirun",
        "-np",
        str(RANKS),
        "--oversubscribe",
        env={"UCORE_LAUNCHER_BINDS": "no"},
        run=("run", name("crun"), mpi.PROGRAM),
    )
    assert result.stderr.count("PMIX ERROR") >= RANKS, result.stderr[-3000:]


@pytest.mark.parametrize("engine", ENGINES)
def test_ranks_talk_through_shared_memory_as_debian_configures_open_mpi(
    mpi_store: MpiStore, engine: str
) -> None:
    """Debian's /etc/openmpi/openmpi-mca-params.conf turns UCX off (``pml = ^ucx``), so ranks
    on one node talk through Open MPI's own shared-memory transport (vader), whose single
    copy (CMA) the kernel refuses between user namespaces: under an unprivileged runc or crun
    every rank has its own, and the job hung. The same settings, given as the host's
    variables, must give one working job in every engine (the 4 MiB message takes the
    single-copy path where it can)."""
    result = mpi_store.launch(
        "mpirun",
        "-np",
        str(RANKS),
        "--oversubscribe",
        env={"OMPI_MCA_pml": "ob1", "OMPI_MCA_btl": "self,vader"},
        run=("run", name(engine), mpi.PROGRAM),
        timeout=90,
    )
    check_job(result)


@pytest.mark.parametrize("engine", ["P1", "runc", "crun"])
def test_ranks_run_on_the_hosts_mpi_with_mpi_host(mpi_store: MpiStore, engine: str) -> None:
    """``run --mpi=host`` as the unprivileged user: the host's libmpi and its components
    (and the host's /etc/openmpi, which turns UCX off: the shared-memory transport between
    two user namespaces under runc and crun) serve the image's program, one job of two ranks."""
    result = mpi_store.launch(
        "mpirun",
        "-np",
        str(RANKS),
        "--oversubscribe",
        run=("run", "--mpi=host", name(engine), mpi.PROGRAM),
        timeout=90,
    )
    check_job(result)
