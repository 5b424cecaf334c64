"""What a containerised MPI rank needs from the launcher that started it (the hybrid model).

A host launcher (``mpirun``, ``srun --mpi=pmix``) starts ``ucore run`` once per rank, and the
MPI library inside the image must find its peers as a native rank would. The environment
passes already (:data:`ucore.running.runspec.PASS_ENV`), the engines share the host's network, PIDs,
IPC and ``/dev/shm``; what is left are the *rendezvous directories*: the launcher's PMIx server
keeps its shared-memory data store and lock files there, and Open MPI the job's session
directory. Every rank that cannot open them prints ``PMIX ERROR: ... gds_ds12_lock_pthread.c``
into the job's log, and falls back to asking the server for each value it needs (Open MPI 4.1
then still runs; other versions and servers may not). A rank that misses the environment
starts as a singleton, "rank 0 of 1".

So when the environment names such directories, the run binds exactly those, at the same
paths, and nothing else of ``/tmp``: the variables below name directories the launcher made
for this job (or job step). A variable naming a directory that is only a base under which
they are made (``/tmp``, ``$TMPDIR``, ``/dev/shm``, ``PMIX_SYSTEM_TMPDIR``'s usual value) is
not taken, nor one that does not exist on this host, nor one inside another taken one. The
``launcher_binds`` setting (``UCORE_LAUNCHER_BINDS=no``) turns this off.

Seen with Debian 12's Open MPI 4.1.4 and PMIx 4.2 under ``mpirun``::

    OMPI_MCA_orte_jobfam_session_dir=/tmp/ompi.HOST.UID/pid.PID
    PMIX_SERVER_TMPDIR=/tmp/ompi.HOST.UID/pid.PID
    PMIX_DSTORE_21_BASE_PATH=/tmp/ompi.HOST.UID/pid.PID/pmix_dstor_ds21_PID

and under Slurm 22.05's ``srun --mpi=pmix`` (the PMIx plugin's directory in slurmd's
``SlurmdSpoolDir``)::

    PMIX_SERVER_TMPDIR=SPOOL/pmix.JOB.STEP/
    PMIX_DSTORE_21_BASE_PATH=SPOOL/pmix.JOB.STEP//pmix_dstor_ds21_PID

Open MPI 5 (PRRTE) and other PMIx servers set ``PMIX_SERVER_TMPDIR`` and the data store
paths too. Slurm's PMI-2 (``--mpi=pmi2``) hands its ranks an inherited socket (``PMI_FD``),
and MPICH's and Intel MPI's Hydra a TCP port (``PMI_PORT``): nothing to bind for either.

Every run asks (a few dictionary look-ups outside a launcher): the module imports nothing
that ``ucore run`` has not loaded already.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping

from ucore.values.model import Mount

#: The variables that name a rendezvous directory, in the order they are bound.
RENDEZVOUS = (
    # Open MPI 3 and 4 (ORTE): the job family's session directory, under which the PMIx
    # server's data store and each rank's own session directory lie.
    "OMPI_MCA_orte_jobfam_session_dir",
    # Any PMIx server: its temporary directory (contact files, data store), and the data
    # store's files, which a server may keep elsewhere.
    "PMIX_SERVER_TMPDIR",
    "PMIX_DSTORE_21_BASE_PATH",
    "PMIX_DSTORE_ESH_BASE_PATH",
    # Open MPI's per-process output files (``--output-filename``), under the session directory.
    "OMPI_FILE_LOCATION",
)
#: Variables a PMIx server sets for each client process it starts.
PMIX_CLIENT = ("PMIX_RANK", "PMIX_NAMESPACE")
#: Directories that are bases for a launcher's directories, never one of them.
BASES = ("/", "/tmp", "/var/tmp", "/dev/shm", "/run", "/var/run")


def pmix_client(environ: Mapping[str, str]) -> bool:
    """Whether this run is a rank a PMIx server started (``mpirun``, ``srun --mpi=pmix``).

    Such a rank proves who it is to the server with its user id (PMIx's ``native`` security:
    the client's ``getuid()``, checked against the job's owner), so it must run as the invoking
    user, not as the container's root: a rank that is root in its user namespace (runc, crun)
    or emulated root (PRoot, Fakechroot) is refused, and ``MPI_Init`` fails with "OPAL ERROR:
    Unreachable". An explicit ``-u`` still wins.
    """
    return any(name in environ for name in PMIX_CLIENT)


def rendezvous(environ: Mapping[str, str]) -> list[str]:
    """The host directories the launcher's variables name for this job, canonical, each once,
    none inside another (the outer one carries it), in :data:`RENDEZVOUS` order."""
    if not any(environ.get(name) for name in RENDEZVOUS):
        return []
    bases = {*BASES, *(_real(environ[n]) for n in ("TMPDIR", "HOME") if environ.get(n))}
    found: list[str] = []
    for name in RENDEZVOUS:
        value = environ.get(name, "")
        if not value.startswith("/") or "\0" in value:
            continue
        path = _real(value)
        if path in bases or not os.path.isdir(path):
            continue
        if any(_inside(path, other) for other in found):
            continue
        found = [other for other in found if not _inside(other, path)]
        found.append(path)
    return found


def mounts(environ: Mapping[str, str]) -> list[Mount]:
    """The rendezvous directories as binds at the same paths, made for this run only (an
    engine that creates their mount points in the root removes them afterwards)."""
    return [Mount(path, path, transient=True) for path in rendezvous(environ)]


def _real(path: str) -> str:
    return posixpath.normpath(os.path.realpath(path))


def _inside(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")
