"""F3/F4: the container's executables name the private loader, and every ELF file its library
directories, so programs start directly, without ``FAKECHROOT_ELFLOADER``.

Each file is rewritten by ``patchelf --output`` into a new file that replaces it; the image's
file keeps its inode under ``fakechroot/orig/`` (a hard link, no copy), so going back to F1
(or leaving the F modes) puts back exactly the image's bytes, mode and owner.

What udocker bakes in breaks when the container directory moves. Here library paths are
relative to each file (``$ORIGIN/../lib/x86_64-linux-gnu``), which hold wherever the root is.
The interpreter cannot be relative (the kernel resolves it against the working directory), so
the record keeps the loader path it wrote; a run that finds the root or the loader elsewhere
(the directory moved or was renamed, the container was cloned) points the interpreters at the
loader where it now is before it starts.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import posixpath
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Optional

from ucore_fakechroot import elfinfo

_RECORD = "patched.json"
_WHERE = "patched-for.json"
_ORIG = "orig"
#: Parallel patchelf processes: the work is process start-up and small writes.
_WORKERS = 4
#: Where an image's files are not: the host's views and the container's own scratch.
_SKIP = ("/proc", "/sys", "/dev")


class Record:
    """What F3 changed: file path in the root -> [backup name, whether it got an interpreter],
    and the root and loader the interpreters name."""

    def __init__(self, state: Path) -> None:
        self.state = state
        try:
            data = json.loads((state / _RECORD).read_text())
        except (OSError, ValueError):
            data = {}
        self.root: Optional[str] = data.get("root")
        self.loader: Optional[str] = data.get("loader")
        self.stamp: float = float(data.get("stamp", 0.0))
        self.files: dict[str, list[Any]] = dict(data.get("files", {}))

    def save(self) -> None:
        self.state.mkdir(mode=0o700, parents=True, exist_ok=True)
        data = {"root": self.root, "loader": self.loader, "stamp": self.stamp, "files": self.files}
        _write_json(self.state / _RECORD, data)
        # what every run checks, small enough to read at each start
        _write_json(self.state / _WHERE, {"root": self.root, "loader": self.loader})


def _write_json(path: Path, data: object) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def patch(
    state: Path,
    root: Path,
    *,
    loader: str,
    lib_dirs: Iterable[str],
    patchelf: str,
    image_loader: str,
    newer_than: float = 0.0,
) -> int:
    """Patch every ELF file of ``root`` not patched yet (only those changed after
    ``newer_than``, when given); return how many."""
    record = Record(state)
    dirs = list(lib_dirs)
    todo = [
        (inside, interp)
        for inside, interp in _elf_files(root, newer_than)
        if inside not in record.files and inside != image_loader
    ]
    (state / _ORIG).mkdir(mode=0o700, parents=True, exist_ok=True)
    import time
    from concurrent.futures import ThreadPoolExecutor

    started = time.time()

    def one(item: tuple[str, bool]) -> Optional[str]:
        inside, interp = item
        here = posixpath.dirname(inside)
        rpath = ":".join("$ORIGIN/" + posixpath.relpath(d, here) for d in dirs)
        args = [*(["--set-interpreter", loader] if interp else []), "--add-rpath", rpath]
        return _patch_one(state, str(root) + inside, args, patchelf)

    with ThreadPoolExecutor(_WORKERS) as pool:
        results = list(pool.map(one, todo))
    for (inside, interp), backup in zip(todo, results):
        if backup is not None:
            record.files[inside] = [backup, interp]
    record.root, record.loader, record.stamp = str(root), loader, started
    record.save()
    return sum(1 for r in results if r is not None)


def repoint(state: Path, root: Path, loader: str, patchelf: str) -> int:
    """After a move or a clone: every patched executable names ``loader`` again."""
    record = Record(state)
    from concurrent.futures import ThreadPoolExecutor

    names = [inside for inside, (_, interp) in record.files.items() if interp]

    def one(inside: str) -> bool:
        return _run(patchelf, ["--set-interpreter", loader, str(root) + inside]) is None

    with ThreadPoolExecutor(_WORKERS) as pool:
        done = sum(pool.map(one, names))
    record.root, record.loader = str(root), loader
    record.save()
    return done


def restore(state: Path, root: Path) -> int:
    """Every patched file back to the image's (the inode kept under ``orig/``)."""
    record = Record(state)
    if not record.files:
        return 0
    done = 0
    for inside, (backup, _) in record.files.items():
        with contextlib.suppress(OSError):
            _put_back(state / _ORIG / backup, str(root) + inside)
            done += 1
    for name in (_RECORD, _WHERE):
        with contextlib.suppress(OSError):
            os.unlink(state / name)
    return done


def needs_repoint(state: Path, root: Path, loader: str) -> bool:
    """Whether the patched interpreters name another root or loader than this run's."""
    try:
        where = json.loads((state / _WHERE).read_text())
    except (OSError, ValueError):
        return bool(Record(state).files)
    return bool(where.get("root") != str(root) or where.get("loader") != loader)


def last_stamp(state: Path) -> float:
    return Record(state).stamp


def _elf_files(root: Path, newer_than: float) -> list[tuple[str, bool]]:
    """(path in the root, has an interpreter) of every dynamically linked ELF file."""
    out = []
    top = str(root)
    for folder, dirs, files in os.walk(top):
        inside = folder[len(top) :] or "/"
        if inside == "/":
            dirs[:] = [d for d in dirs if "/" + d not in _SKIP]
        for name in files:
            path = os.path.join(folder, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode) or st.st_size < 64:
                continue
            if newer_than and max(st.st_mtime, st.st_ctime) < newer_than:
                continue
            if not elfinfo.is_elf(elfinfo.header(path)):
                continue
            if not _dynamic(path):
                continue
            out.append((posixpath.join(inside, name), elfinfo.interpreter(path) is not None))
    return out


def _dynamic(path: str) -> bool:
    head = elfinfo.header(path) or b""
    # e_type: 2 executable, 3 shared object (or position-independent executable)
    return len(head) > 17 and head[16] in (2, 3)


def _patch_one(state: Path, path: str, args: list[str], patchelf: str) -> Optional[str]:
    """Patch ``path`` into a new file that replaces it; the image's inode is kept in
    ``orig/``. None when patchelf cannot rewrite it."""
    tmp = f"{path}.ucore-patch"
    if _run(patchelf, [*args, "--output", tmp, path]) is not None:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        return None  # not one patchelf can rewrite (odd sections): it keeps working via F1's way
    try:
        st = os.lstat(path)
        os.chmod(tmp, stat.S_IMODE(st.st_mode))
        if os.getuid() == 0:
            os.lchown(tmp, st.st_uid, st.st_gid)
        os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
        backup = f"{st.st_ino}-{os.urandom(4).hex()}"
        _keep(path, state / _ORIG / backup)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        return None
    return backup


def _keep(path: str, backup: Path) -> None:
    """The image's file under ``backup``: its own inode where it can (a hard link), a copy
    where the root is on another filesystem than the container directory (``--location``)."""
    try:
        os.link(path, backup)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        import shutil

        shutil.copy2(path, backup)


def _put_back(backup: Path, path: str) -> None:
    try:
        os.replace(backup, path)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        import shutil

        tmp = f"{path}.ucore-restore"
        shutil.copy2(backup, tmp)
        if os.getuid() == 0:
            st = os.stat(backup)
            os.chown(tmp, st.st_uid, st.st_gid)
        os.replace(tmp, path)
        os.unlink(backup)


def _run(patchelf: str, args: list[str]) -> Optional[str]:
    import subprocess

    try:
        done = subprocess.run(
            [patchelf, *args], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return None if done.returncode == 0 else (done.stderr.strip() or "failed")
