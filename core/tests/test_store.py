"""The store's promises: nothing unverified visible, atomic publication, resumable partial
downloads, clean-up of what dead processes left, private permissions, a clear disk-full error."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ucore.log import configure_logging
from ucore.storage.store import HOST, Store
from ucore.values.errors import IntegrityError, StoreError
from ucore.values.oci import Digest, ImageRef


def digest_of(data: bytes) -> Digest:
    return Digest(hashlib.sha256(data).hexdigest())


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store").ensure()


def test_store_directories_are_private(store: Store) -> None:
    for path in (store.root, store.blobs, store.tmp, store.locks, store.refs):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path


def test_verified_blob_is_published_read_only(store: Store) -> None:
    data = b"hello" * 1000
    writer = store.writer(digest_of(data), len(data)).open()
    writer.write(data[:10])
    writer.write(memoryview(data)[10:])
    assert not store.has_blob(digest_of(data))  # invisible until published
    assert writer.publish() == digest_of(data)
    assert store.blob_path(digest_of(data)).read_bytes() == data
    assert stat.S_IMODE(store.blob_path(digest_of(data)).stat().st_mode) == 0o444
    assert os.listdir(store.tmp) == []


@pytest.mark.parametrize("bad", [b"hellO" * 1000, b"hello" * 999, b"hello" * 1001])
def test_mismatching_blob_never_becomes_visible(store: Store, bad: bytes) -> None:
    good = b"hello" * 1000
    writer = store.writer(digest_of(good), len(good)).open()
    with pytest.raises(IntegrityError):
        writer.write(bad)
        writer.publish()
    assert os.listdir(store.blobs) == []
    assert os.listdir(store.tmp) == []


def test_partial_download_of_a_dead_process_is_resumed_and_rehashed(store: Store) -> None:
    data = os.urandom(300_000)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    part = store.tmp / f"{digest_of(data).hex}.{HOST}.{dead.pid}.part"
    part.write_bytes(data[:100_000])
    writer = store.writer(digest_of(data), len(data)).open(resume=True)
    assert writer.written == 100_000
    assert not part.exists()
    writer.write(data[100_000:])
    assert writer.publish() == digest_of(data)


def test_partial_of_a_live_process_is_left_alone(store: Store) -> None:
    data = b"x" * 1000
    part = store.tmp / f"{digest_of(data).hex}.{HOST}.1.part"  # pid 1 is always alive
    part.write_bytes(data[:10])
    writer = store.writer(digest_of(data), len(data)).open(resume=True)
    assert writer.written == 0 and part.exists()
    writer.discard()
    store.cleanup_tmp()
    assert part.exists()


def test_cleanup_removes_temporaries_of_dead_processes(store: Store) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = store.tmp / f"refname.{HOST}.{dead.pid}.0123abcd.tmp"
    stale.write_text("{}")
    ingest = store.tmp / f"ingest-0011223344556677.{HOST}.{dead.pid}.part"
    ingest.write_text("x")
    resumable = store.tmp / f"{'c' * 64}.{HOST}.{dead.pid}.part"
    resumable.write_text("x")
    store.cleanup_tmp()
    assert not stale.exists() and not ingest.exists()
    assert resumable.exists()  # kept so that the next pull resumes it


def test_refs_are_written_atomically_and_listed(store: Store) -> None:
    ref = ImageRef.parse("127.0.0.1:5000/a/b:1")
    store.set_ref(ref, {"manifest": "sha256:" + "d" * 64})
    assert store.get_ref(ref)["manifest"] == "sha256:" + "d" * 64
    (store.refs / "garbage%").write_text("not a ref")
    assert [r for r, _ in store.list_refs()] == [ref]
    assert os.listdir(store.tmp) == []
    assert store.delete_ref(ref) and not store.delete_ref(ref)


def test_lock_serialises_and_tells_who_holds_it(store: Store) -> None:
    told: list[str] = []
    entered = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with store.lock("blobx", "blob x", told.append):
            entered.set()
            release.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    entered.wait(5)
    threading.Timer(2.5, release.set).start()
    with store.lock("blobx", "blob x", told.append):
        assert release.is_set()
    thread.join()
    assert len(told) == 1 and f"locked by {HOST} pid {os.getpid()}" in told[0]


def test_lock_file_symlink_is_not_followed(store: Store, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (store.locks / "evil.lock").symlink_to(victim)
    with pytest.raises(StoreError), store.lock("evil", "x", print):
        pass
    assert victim.read_text() == "precious"


@pytest.mark.skipif(
    shutil.which("unshare") is None, reason="util-linux unshare is installed by tests/setup-host.sh"
)
def test_disk_full_is_a_clear_error_and_leaves_the_store_consistent(tmp_path: Path) -> None:
    """A real ENOSPC: a 256 KiB tmpfs mounted in a private user and mount namespace."""
    root = tmp_path / "small"
    root.mkdir()
    script = (
        "import sys, hashlib, os\n"
        "from pathlib import Path\n"
        "from ucore.storage.store import Store\n"
        "from ucore.values.oci import Digest\n"
        "from ucore.values.errors import StoreError\n"
        "s = Store(Path(sys.argv[1]) / 's').ensure()\n"
        "data = os.urandom(1 << 20)\n"
        "w = s.writer(Digest(hashlib.sha256(data).hexdigest()), len(data)).open()\n"
        "try:\n"
        "    w.write(data); w.publish()\n"
        "except StoreError as e:\n"
        "    print('ERR', e)\n"
        "print(sorted(os.listdir(s.blobs)), sorted(os.listdir(s.tmp)))\n"
    )
    proc = subprocess.run(
        [
            "unshare",
            "--user",
            "--map-root-user",
            "--mount",
            "sh",
            "-c",
            'mount -t tmpfs -o size=256k tmpfs "$1" && exec "$2" -c "$3" "$1"',
            "sh",
            str(root),
            sys.executable,
            script,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    if "Operation not permitted" in proc.stderr and "unshare" in proc.stderr:
        pytest.skip("user namespaces are disabled on this host")
    assert proc.returncode == 0, proc.stderr
    assert "ERR disk full or quota exceeded while writing blob sha256:" in proc.stdout
    assert proc.stdout.strip().endswith("[] []")


def test_probe_cache_on_a_full_disk_leaves_no_partial_file(tmp_path: Path) -> None:
    """The file size limit stands in for a quota: the write fails half way (EFBIG)."""
    script = (
        "import resource, signal, sys\n"
        "from pathlib import Path\n"
        "from ucore.plugins.probecache import ProbeCache\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
        "cache = ProbeCache(Path(sys.argv[1]) / 'runc.json')\n"
        "cache.put('small', 1)\n"
        "cache.put('big', 'x' * 10000)\n"
        "print(cache.load())\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "{'small': 1}\n"
    assert os.listdir(tmp_path) == ["runc.json"]


def test_probe_cache_nested_past_the_recursion_limit_is_empty(tmp_path: Path) -> None:
    """A damaged cache is an empty one, also when json gives up with RecursionError."""
    from ucore.plugins.probecache import ProbeCache

    path = tmp_path / "runc.json"
    path.write_bytes(b"[" * 100_000 + b"]" * 100_000)
    assert ProbeCache(path).load() == {}


# --- the site store ---------------------------------------------------------------------------


def test_the_site_store_is_read_beneath_the_users_and_never_written(tmp_path: Path) -> None:
    site = Store.open(tmp_path / "site", tmp_path / "site").ensure()
    shared, private, mine = b"in both", b"the site's", b"the user's"
    for data in (shared, private):
        site.put_bytes(data)
    ref = ImageRef.parse("127.0.0.1:5000/tool:1")
    site.set_ref(ref, {"manifest": str(digest_of(private))})
    before = sorted(p.name for p in site.root.rglob("*"))

    user = Store.open(tmp_path / "user", tmp_path / "site").ensure()
    assert user.site is not None and user.site.root == site.root
    assert user.has_blob(digest_of(private)) and user.has_ref(ref) and user.in_site(ref)
    assert user.blob_path(digest_of(private)) == site.blob_path(digest_of(private))
    assert user.read_blob(digest_of(private), 100) == private
    assert user.get_ref(ref) == site.get_ref(ref)
    assert user.put_bytes(shared) == digest_of(shared)  # readable there: not copied
    user.put_bytes(mine)
    assert [d for d, _ in user.list_blobs()] == [digest_of(mine)]
    user.remove_blob(digest_of(private))
    assert user.list_refs() == [] and user.all_refs() == [(ref, site.get_ref(ref), True)]

    user.set_ref(ref, {"manifest": str(digest_of(mine))})  # the user's own name wins
    assert not user.in_site(ref) and user.get_ref(ref)["manifest"] == str(digest_of(mine))
    assert [(r, in_site) for r, _, in_site in user.all_refs()] == [(ref, False)]
    assert user.delete_ref(ref) and user.in_site(ref)
    assert sorted(p.name for p in site.root.rglob("*")) == before


def test_the_site_stores_own_store_is_readable_by_all_whatever_the_umask(tmp_path: Path) -> None:
    """Its administrator fills it with ``dir`` set to it: what users read is 0755/0644 even
    under umask 077, and a reference written while it was a private store is opened up."""
    root = tmp_path / "site"
    private = Store(root).ensure()
    old = ImageRef.parse("127.0.0.1:5000/old:1")
    private.set_ref(old, {"manifest": "sha256:" + "a" * 64})
    umask = os.umask(0o077)
    try:
        site = Store.open(root, Path(str(root) + "/."))
        assert site.shared and site.site is None
        site.ensure()
        new = ImageRef.parse("127.0.0.1:5000/new:1")
        site.set_ref(new, {"manifest": "sha256:" + "b" * 64})
    finally:
        os.umask(umask)
    modes = {p: stat.S_IMODE(p.stat().st_mode) for p in (root, site.blobs, site.refs)}
    assert set(modes.values()) == {0o755}, modes
    for path in (site.tmp, site.locks, site.containers):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in site.refs.iterdir()} == {0o644}
    # its administrator forgot to set site_store: it stays readable by all all the same
    again = Store.open(root, None)
    assert again.shared
    again.ensure()
    assert stat.S_IMODE(root.stat().st_mode) == 0o755
    (root / "site-store").unlink()  # no longer a site store: private again
    assert stat.S_IMODE(Store.open(root, None).ensure().root.stat().st_mode) == 0o700


def test_a_site_store_that_is_not_there_is_empty_and_one_anyone_can_write_is_refused(
    tmp_path: Path,
) -> None:
    user = Store.open(tmp_path / "user", tmp_path / "absent")
    assert user.site is None and not user.has_ref(ImageRef.parse("127.0.0.1:5000/a:1"))
    (tmp_path / "open").mkdir(mode=0o777)
    (tmp_path / "open").chmod(0o777)
    with pytest.raises(StoreError, match="can be written by anyone"):
        _ = Store.open(tmp_path / "user", tmp_path / "open").site


# --- filesystems where file locks fail --------------------------------------------------------


def test_failing_locks_are_recorded_once_and_warned_once(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two processes' stores (two instances) meet ENOLCK: the first warns, the second does
    not (at the default level); an error that says nothing about lock support records nothing."""
    configure_logging(0)
    Store(store.root).locks_fail(OSError(errno.EIO, "Input/output error"))
    assert not (store.locks / "unsupported").exists()
    for _ in range(2):
        Store(store.root).locks_fail(OSError(errno.ENOLCK, "No locks available"))
    err = capsys.readouterr().err
    configure_logging(0)  # structlog is bound to capsys's stderr: rebind at the next call
    assert err.count("file locks do not work") == 1, err
    assert "No locks available" in (store.locks / "unsupported").read_text()


@pytest.fixture
def no_flock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulates a filesystem without locks: every ``flock`` fails with ENOLCK."""

    def flock(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", flock)


@pytest.mark.usefixtures("no_flock")
def test_leases_stand_in_for_the_gc_lock_without_flock_simulated(store: Store) -> None:
    """A reader (a pull) keeps a writer (prune) out; a writer makes a reader wait."""
    with store.shared_lock("gc") as reading:
        assert reading
        with store.shared_lock("gc", exclusive=True) as writing:
            assert not writing
    events: list[str] = []
    with store.shared_lock("gc", exclusive=True) as writing:
        assert writing
        reader = threading.Thread(target=lambda: events.append(_read_gc(store)))
        reader.start()
        while not [name for name in os.listdir(store.locks) if name.startswith("gc.reader.")]:
            time.sleep(0.01)  # the reader has its lease, so it has seen or will see ours
        assert events == [] and reader.is_alive()
        events.append("writer done")
    reader.join(10)
    assert events == ["writer done", "reader in"]
    assert [name for name in os.listdir(store.locks) if ".lock" not in name] == ["unsupported"]


def _read_gc(store: Store) -> str:
    with store.shared_lock("gc") as reading:
        assert reading
        return "reader in"


@pytest.mark.usefixtures("no_flock")
def test_lock_files_stand_in_for_flock_simulated(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without ``flock``, a lock file: one a dead process left is taken over, one of a live
    process is waited for, and none is left behind."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = store.locks / "blobx.held"
    left.write_text(f"{HOST} {dead.pid} 0123abcd")
    with store.lock("blobx", "blob x", print):
        assert left.read_text().startswith(f"{HOST} {os.getpid()} ")
    assert not left.exists()

    events: list[str] = []
    found_held = threading.Event()
    owner = store._lock_owner

    def spy(path: Path) -> object:
        found_held.set()  # the waiter found the file held: it is waiting
        return owner(path)

    monkeypatch.setattr(store, "_lock_owner", spy)
    with store.lock("blobx", "blob x", print):
        waiter = threading.Thread(target=lambda: events.append(_take_blobx(store)))
        waiter.start()
        assert found_held.wait(60)
        assert events == []
        events.append("holder done")
    waiter.join(10)
    assert events == ["holder done", "waiter in"]
    assert [name for name in os.listdir(store.locks) if not name.endswith(".lock")] == [
        "unsupported"
    ]


def _take_blobx(store: Store) -> str:
    with store.lock("blobx", "blob x", print):
        return "waiter in"
