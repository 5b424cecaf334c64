"""The store's promises: nothing unverified visible, atomic publication, resumable partial
downloads, clean-up of what dead processes left, private permissions, a clear disk-full error."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ucore.errors import IntegrityError, StoreError
from ucore.oci import Digest, ImageRef
from ucore.store import HOST, Store


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
        "from ucore.store import Store\n"
        "from ucore.oci import Digest\n"
        "from ucore.errors import StoreError\n"
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
        "from ucore.probecache import ProbeCache\n"
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
    from ucore.probecache import ProbeCache

    path = tmp_path / "runc.json"
    path.write_bytes(b"[" * 100_000 + b"]" * 100_000)
    assert ProbeCache(path).load() == {}
