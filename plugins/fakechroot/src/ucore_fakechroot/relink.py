"""Absolute symbolic links in the image, made relative so they resolve inside the root.

(And relative ones that climb above the root, which a chroot would stop at its root, made to
stop there too.)

libfakechroot rewrites the paths a program passes to the C library, but the kernel follows
the links it meets on the way, and an absolute target (Debian's ``/lib64/ld-linux-x86-64.so.2
-> /lib/x86_64-linux-gnu/…``, ``/etc/alternatives/awk -> /usr/bin/mawk``) sends it to the
*host's* file. Debian's build (measured: ``cat`` of a link to ``/opt/x`` fails with ENOENT)
resolves none of them. udocker rewrites such links to the container's absolute host path,
which breaks as soon as the container directory moves; ucore makes each relative instead
(``../../usr/bin/mawk``), which names the same file from anywhere the root is, in every engine,
and records the image's text so that leaving the F modes puts every link back as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import stat
from pathlib import Path

from ucore.storage import inroot

_RECORD = "relinked.json"


def relink(state: Path, root: Path) -> int:
    """Make every absolute link in ``root`` relative (once; links added later too); return
    how many were changed now."""
    record = load(state)
    changed = 0
    top = str(root)
    for folder, dirs, files in os.walk(top):
        inside = folder[len(top) :] or "/"
        for name in [*dirs, *files]:
            path = os.path.join(folder, name)
            try:
                if not stat.S_ISLNK(os.lstat(path).st_mode):
                    continue
                target = original = os.readlink(path)
            except OSError:
                continue
            if not target.startswith("/"):
                if not _climbs_out(inside, target):
                    continue
                # "../../../etc/shadow" from /etc: in a chroot ".." stops at the root, here
                # the kernel would climb out of it into the host's tree
                target = posixpath.normpath(posixpath.join(inside, target))
            elif inroot.under(target, top):  # made in an F mode: libfakechroot wrote the host path
                target = original = target[len(top) :] or "/"
            relative = posixpath.relpath(posixpath.normpath(target), inside)
            record[posixpath.join(inside, name)] = [original, relative]
            _replace_link(path, relative)
            changed += 1
    if changed:
        _save(state, record)
    return changed


def _climbs_out(folder: str, target: str) -> bool:
    """Whether a relative link in ``folder`` climbs above the root (read as written)."""
    depth = len([p for p in folder.split("/") if p])
    for part in target.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in ("", "."):
            depth += 1
    return False


def restore(state: Path, root: Path) -> int:
    """Put back the image's text of every link :func:`relink` changed and that is still as
    it left it; return how many."""
    record = load(state)
    done = 0
    for inside, (target, relative) in record.items():
        path = str(root) + inside
        try:
            current = os.readlink(path)
        except OSError:
            continue
        if current == relative:
            _replace_link(path, target)
            done += 1
    with contextlib.suppress(OSError):
        os.unlink(state / _RECORD)
    return done


def load(state: Path) -> dict[str, list[str]]:
    """Link path in the root -> [the image's target, the relative one written]."""
    try:
        data = json.loads((state / _RECORD).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): [str(v[0]), str(v[1])] for k, v in data.items() if len(v) == 2}


def _save(state: Path, record: dict[str, list[str]]) -> None:
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = state / f".{_RECORD}.{os.getpid()}"
    tmp.write_text(json.dumps(record, sort_keys=True))
    os.replace(tmp, state / _RECORD)


def _replace_link(path: str, target: str) -> None:
    """Swap the link atomically, so a concurrent reader sees the old or the new one."""
    tmp = f"{path}.ucore-{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, path)
