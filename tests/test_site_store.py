"""A site-wide, read-only image store, and stores on filesystems where file locks fail.

The site store is an ordinary store its administrator fills (``UCORE_DIR=SITE ucore pull``
with ``site_store`` set to SITE, as it is for everyone); every user reads images from it and
pulls nothing for them, while containers, credentials and locks stay in the user's own
store. The reader is the user running the tests (as any user but root, the site store is
then made read-only with ``chmod``; root, whom modes do not stop, must leave the tree as it
was, and once more on a read-only bind mount) and, in the ``hpc`` environment, run as root,
the unprivileged user ``ucore-test`` reading a root-owned 0755 site store, as on a cluster.
Either way ucore must write nothing there.

Without NFS, a filesystem whose locks fail cannot be had for real here: the tests that need
one preload a small shim, compiled by the test, that makes ``flock`` fail with ENOLCK, as on
NFS mounted without a lock manager. Their names say that they simulate it.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.cli import Ucore, check_store, describe
from support.faultproxy import FaultProxy

UNPRIVILEGED = "ucore-test"
WARNING = "file locks do not work in the store"


def tree(root: Path) -> dict[str, tuple[int, int, float]]:
    """Every path under ``root`` with its mode, size and modification time: a write anywhere
    in the site store changes it."""
    found = {}
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        found[str(path.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime)
    return found


class AsUser(Ucore):
    """``ucore`` as another user (``setpriv``, which keeps the environment as it is)."""

    def __init__(self, base: Path, user: pwd.struct_passwd) -> None:
        super().__init__(base)
        self.user = user
        os.chown(base, user.pw_uid, user.pw_gid)
        os.chown(self.home, user.pw_uid, user.pw_gid)

    def argv(self, *args: str) -> list[str]:
        ids = [f"--reuid={self.user.pw_uid}", f"--regid={self.user.pw_gid}", "--clear-groups"]
        return ["setpriv", *ids, "--", *super().argv(*args)]


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory another user can reach (pytest's own are private to the user)."""
    path = Path(tempfile.mkdtemp(prefix="ucore-site-"))
    path.chmod(0o755)
    yield path
    subprocess.run(["chmod", "-R", "u+w", str(path)], check=False)
    shutil.rmtree(path)


@pytest.fixture
def admin(shared_dir: Path) -> Ucore:
    """The administrator: ``UCORE_DIR`` is the site store, and ``site_store`` names it too."""
    cli = Ucore(shared_dir / "admin")
    cli.store = shared_dir / "site"
    cli.env.update(UCORE_DIR=str(cli.store), UCORE_SITE_STORE=str(cli.store))
    return cli


#: Who reads the site store: the user running the tests, or, as root, ``ucore-test`` (the
#: cluster's case: a root-owned 0755 site store). ``ucore-test`` must be able to run this
#: interpreter: the pyenv interpreters of the root environments live under ``/root`` (0700),
#: so that variant runs in the ``hpc`` environment, whose interpreter is Debian's, in ``/tmp``.
READERS = [
    pytest.param("self", id="same-user"),
    pytest.param(UNPRIVILEGED, id="other-user", marks=pytest.mark.hpc),
]


def reader(base: Path, site: Path, who: str) -> Ucore:
    """A user of the site store with a store of their own."""
    if who != "self":
        if os.geteuid() != 0:
            pytest.fail("only root can read the site store as another user")
        cli: Ucore = AsUser(base, pwd.getpwnam(who))
    else:
        cli = Ucore(base)
    cli.env["UCORE_SITE_STORE"] = str(site)
    return cli


def fill_site(admin: Ucore, image: str) -> None:
    """Pull ``image`` into the site store with the tightest umask, which must not make the
    site store unreadable to others."""
    umask = subprocess.run(
        ["sh", "-c", 'umask 077 && exec "$@"', "sh", *admin.argv("pull", image)],
        env=admin.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert umask.returncode == 0, describe(umask)


@pytest.mark.parametrize("who", READERS)
def test_users_run_images_from_the_site_store_and_write_nothing_there(
    admin: Ucore, shared_dir: Path, proxy: FaultProxy, who: str
) -> None:
    """Whoever reads it, ucore writes nothing into the site store (as root, whom modes do
    not stop, the tree's comparison catches any write)."""
    image = f"{proxy.address}/busybox:latest"
    fill_site(admin, image)
    site = admin.store
    public = [site, site / "blobs", site / "blobs" / "sha256", site / "refs"]
    assert [oct(stat.S_IMODE(p.stat().st_mode)) for p in public] == [oct(0o755)] * 4
    private = [site / "tmp", site / "locks", site / "containers"]
    assert [oct(stat.S_IMODE(p.stat().st_mode)) for p in private] == [oct(0o700)] * 3
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in (site / "refs").iterdir()} == {"0o644"}
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in admin.blob_dir().iterdir()} == {"0o444"}
    if os.geteuid() != 0:
        subprocess.run(["chmod", "-R", "a-w", str(site)], check=True)
    before = tree(site)
    proxy.reset_state()

    user = reader(shared_dir / "user", site, who)
    pulled = user.ok("pull", image)
    assert pulled.stderr == ""
    assert not user.store.exists(), "a pull of a site image made the user's store"
    assert proxy.requests("GET", r".") == [], "a pull of a site image reached the registry"
    rows = json.loads(user.ok("images", "--json").stdout)
    assert [(row["ref"], row["site"]) for row in rows] == [(image, True)]
    assert "(site)" in user.ok("images").stdout
    assert user.ok("run", image, "echo", "from the site").stdout == "from the site\n"
    user.ok("create", "--name", "mine", image)
    if who != "self":  # the reader really is another user than the site's owner
        assert user.store.stat().st_uid == pwd.getpwnam(who).pw_uid
    assert user.ok("run", "mine", "cat", "/etc/hostname").returncode == 0
    assert "ok" in user.ok("verify", image).stdout
    assert "read-only" in user.fails(2, "rmi", image).stderr
    assert "read-only" in user.fails(2, "rmi", "-f", image).stderr
    assert "read-only" in user.fails(2, "protect", image).stderr
    assert proxy.requests("GET", r".") == []

    assert tree(site) == before, "ucore wrote into the site store"
    assert user.blobs() == set(), "the user's store holds a copy of the site's blobs"
    assert len([row for row in json.loads(user.ok("ps", "--json").stdout)]) == 2
    check_store(user.store)


@pytest.mark.skipif(
    os.geteuid() != 0, reason="as another user, the test above makes the site store read-only"
)
def test_root_reads_a_site_store_mounted_read_only(
    admin: Ucore, shared_dir: Path, proxy: FaultProxy
) -> None:
    """Root, whom modes do not stop, on a site store bind-mounted read-only (in a mount
    namespace of its own): any write ucore tried would fail with EROFS."""
    image = f"{proxy.address}/busybox:latest"
    fill_site(admin, image)
    user = Ucore(shared_dir / "root")
    user.env["UCORE_SITE_STORE"] = str(admin.store)
    script = (
        'img=$1; shift; mount --bind "$0" "$0" && mount -o remount,bind,ro "$0"'
        ' && "$@" pull "$img" && "$@" run --name ro "$img" echo read-only && "$@" verify "$img"'
    )
    argv = ["unshare", "-m", "sh", "-c", script, str(admin.store), image, *user.argv()]
    result = subprocess.run(argv, env=user.env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, describe(result)
    assert "read-only\n" in result.stdout and result.stderr == ""
    assert user.blobs() == set()


def test_the_users_own_image_of_a_name_wins_and_rmi_uncovers_the_sites(
    admin: Ucore, shared_dir: Path, proxy: FaultProxy
) -> None:
    """A name the user has is the user's, whatever the site adds later: the containers
    already made from it keep meaning what they meant. Removing it shows the site's again."""
    busybox, other = f"{proxy.address}/busybox:latest", f"{proxy.address}/multilayer:latest"
    fill_site(admin, busybox)
    site_id = json.loads(admin.ok("images", "--json").stdout)[0]["id"]
    user = Ucore(shared_dir / "own")
    config = shared_dir / "ucore.conf"  # the setting, as a site's config file sets it
    config.write_text(f"[ucore]\nsite_store = {admin.store}\n")
    user.env["UCORE_CONFIG"] = str(config)
    assert json.loads(user.ok("info", "--json").stdout)["site_store"] == str(admin.store)
    user.ok("pull", other)
    user.ok("tag", other, busybox)
    rows = {row["ref"]: row for row in json.loads(user.ok("images", "--json").stdout)}
    assert rows[busybox]["site"] is False and rows[busybox]["id"] != site_id
    assert rows[busybox]["id"] == rows[other]["id"]
    user.ok("rmi", busybox)
    rows = {row["ref"]: row for row in json.loads(user.ok("images", "--json").stdout)}
    assert (rows[busybox]["site"], rows[busybox]["id"]) == (True, site_id)
    assert user.ok("run", busybox, "echo", "site").stdout == "site\n"


def test_a_site_store_anyone_can_write_to_is_refused(
    admin: Ucore, shared_dir: Path, proxy: FaultProxy
) -> None:
    image = f"{proxy.address}/busybox:latest"
    fill_site(admin, image)
    admin.store.chmod(0o777)
    user = Ucore(shared_dir / "user")
    user.env["UCORE_SITE_STORE"] = str(admin.store)
    line = user.fails(7, "run", image, "true").stderr
    assert "can be written by anyone" in line


def test_a_site_store_missing_on_this_node_is_an_empty_one(
    ucore_cli: Ucore, tmp_path: Path, proxy: FaultProxy
) -> None:
    ucore_cli.env["UCORE_SITE_STORE"] = str(tmp_path / "not-mounted")
    image = f"{proxy.address}/busybox:latest"
    assert ucore_cli.ok("run", image, "echo", "pulled").stdout == "pulled\n"
    assert ucore_cli.blobs(), "the image was not pulled into the user's store"


# --- stores where file locks fail -----------------------------------------------------------

#: Makes ``flock`` fail as on NFS without a lock manager.
NOLOCK_SHIM = r"""
#include <errno.h>
#include <sys/file.h>
int flock(int fd, int operation) { (void)fd; (void)operation; errno = ENOLCK; return -1; }
"""


@pytest.fixture(scope="module")
def nolock_shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shim, built with the C compiler tests/setup-host.sh installs."""
    build = tmp_path_factory.mktemp("nolock")
    (build / "nolock.c").write_text(NOLOCK_SHIM)
    lib = build / "nolock.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(lib), str(build / "nolock.c")], check=True)
    probe = subprocess.run(
        [sys.executable, "-c", "import fcntl, os; fcntl.flock(os.open('/', os.O_RDONLY), 1)"],
        env={**os.environ, "LD_PRELOAD": str(lib)},
        capture_output=True,
        text=True,
    )
    assert "No locks available" in probe.stderr, probe.stderr
    return lib


def test_a_job_array_on_a_store_without_working_locks_simulated(
    ucore_cli: Ucore, proxy: FaultProxy, nolock_shim: Path
) -> None:
    """16 tasks of a job array start ``run --pull=reuse --name`` on one store whose
    filesystem cannot lock (simulated with the ``flock`` shim): all succeed, each blob is
    fetched once (lock files stand in for ``flock``), one container is made, verify passes,
    and the 16 job logs hold one warning about the locks in all."""
    image = f"{proxy.address}/busybox:latest"
    env = {"LD_PRELOAD": str(nolock_shim)}
    tasks = [
        ucore_cli.popen(
            "run", "--pull=reuse", "--name", "array", image, "sh", "-c", f"echo {i}", env=env
        )
        for i in range(16)
    ]
    results = [(task.wait(timeout=600), *task.communicate()) for task in tasks]
    assert [(code, out) for code, out, _ in results] == [(0, f"{i}\n") for i in range(16)], results
    logs = [err for _, _, err in results]
    assert sum(WARNING in err for err in logs) == 1, logs
    assert [err for err in logs if WARNING not in err] == [""] * 15
    assert len(json.loads(ucore_cli.ok("ps", "--json", env=env).stdout)) == 1
    blobs = proxy.requests("GET", r"/blobs/")
    assert len(blobs) == len({r.path for r in blobs}), "a blob was fetched twice"
    locks = os.listdir(ucore_cli.store / "locks")
    assert [name for name in locks if not name.endswith(".lock")] == ["unsupported"], locks
    ucore_cli.ok("verify", image, env=env)
    ucore_cli.check_store()
    later = ucore_cli.ok("pull", image, env=env)
    assert WARNING not in later.stderr, "a later job warned again"
    assert WARNING in ucore_cli.ok("-v", "pull", image, env=env).stderr  # at info level


def test_rm_refuses_a_container_a_run_is_using_without_working_locks_simulated(
    ucore_cli: Ucore, proxy: FaultProxy, nolock_shim: Path
) -> None:
    """Where ``flock`` fails (simulated with the shim), a run and an rm hold leases instead:
    rm still refuses a container a run is using, a run's ``--rm`` keeps it with a warning,
    and the last run's ``--rm`` removes it. ``prune`` still works too."""
    env = {"LD_PRELOAD": str(nolock_shim)}
    ucore_cli.ok("create", "--name", "busy", f"{proxy.address}/busybox:latest", env=env)
    proc = subprocess.Popen(
        ucore_cli.argv("run", "busy", "sh", "-c", "echo ready; read x; echo result > /out"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**ucore_cli.env, **env},
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        assert "in use" in ucore_cli.fails(2, "rm", "-f", "busy", env=env).stderr
        other = ucore_cli.run("run", "--rm", "busy", "true", env=env)
        assert other.returncode == 0, describe(other)
        assert "in use" in other.stderr and "kept" in other.stderr
        ucore_cli.ok("clone", "--name", "copy", "busy", env=env)
        ucore_cli.ok("rm", "copy", env=env)  # the busy run's lease was not copied
        assert len(json.loads(ucore_cli.ok("ps", "--json", env=env).stdout)) == 1
    finally:
        proc.communicate(input="go\n", timeout=60)
    assert proc.returncode == 0
    assert ucore_cli.ok("run", "--rm", "busy", "cat", "/out", env=env).stdout == "result\n"
    assert json.loads(ucore_cli.ok("ps", "--json", env=env).stdout) == []
    assert (ucore_cli.store / "locks" / "unsupported").is_file()
    ucore_cli.ok("rmi", f"{proxy.address}/busybox:latest", env=env)
    assert "0 unused blobs removed" in ucore_cli.ok("prune", env=env).stdout
    assert ucore_cli.blobs() == set(), "rmi kept the image's blobs"
    left = [name for name in os.listdir(ucore_cli.store / "locks") if ".lock" not in name]
    assert left == ["unsupported"], "a lease was left behind"


@pytest.mark.parametrize("who", READERS)
def test_a_job_array_runs_from_the_site_store_without_a_pull(
    admin: Ucore, shared_dir: Path, proxy: FaultProxy, who: str
) -> None:
    """16 tasks of an array, ``run --pull=reuse --name`` on a site image: one container in
    the user's store, no request to the registry, the site store untouched."""
    image = f"{proxy.address}/busybox:latest"
    fill_site(admin, image)
    before = tree(admin.store)
    proxy.reset_state()
    user = reader(shared_dir / "array", admin.store, who)
    tasks = [
        user.popen("run", "--pull=reuse", "--name", "array", image, "sh", "-c", f"echo {i}")
        for i in range(16)
    ]
    results = [(task.wait(timeout=600), *task.communicate()) for task in tasks]
    assert [(code, out, err) for code, out, err in results] == [
        (0, f"{i}\n", "") for i in range(16)
    ], results
    assert [row["names"] for row in json.loads(user.ok("ps", "--json").stdout)] == [["array"]]
    assert proxy.requests("GET", r".") == []
    assert tree(admin.store) == before
    user.ok("verify", image)


def test_a_pull_for_another_platform_than_the_sites_is_the_users_own(
    admin: Ucore, shared_dir: Path, proxy: FaultProxy
) -> None:
    """The site has the host's platform of a name; a user who asks for another one pulls it
    into their own store (where it then wins), and the site store is left alone."""
    image = f"{proxy.address}/multiplatform:latest"
    fill_site(admin, image)
    before = tree(admin.store)
    user = Ucore(shared_dir / "arm")
    user.env["UCORE_SITE_STORE"] = str(admin.store)
    foreign = "linux/arm/v7" if os.uname().machine == "aarch64" else "linux/arm64/v8"
    proxy.reset_state()
    user.ok("pull", "--platform", foreign, image)
    assert proxy.requests("GET", r"/blobs/"), "nothing was pulled"
    [row] = json.loads(user.ok("images", "--json", "--platform").stdout)
    assert (row["site"], row["platform"]) == (False, foreign)
    assert tree(admin.store) == before
