"""Walking a container's tree on the host side, for ``export`` and ``clone``.

Depth first and sorted, through directory descriptors: a symlink is never followed (a program
in the container that planted a link to ``/etc/shadow`` gets a link, never the host file), one
descriptor is held at a time (an image can nest deeper than the open-file limit and Python's
recursion limit), and going up opens ``..``, safe because every directory on the way was opened
below the root without following a symlink. Something the owner cannot read because a program
in the container took the permission away is opened up for the moment of opening, through a
descriptor checked to be the entry that was looked at (never a path a rival could swap), and
closed again.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Optional

from ucore.storage.rootfs import DIR_FLAGS
from ucore.values.errors import StoreError

FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0)
_O_PATH = getattr(os, "O_PATH", 0)
#: Why copying an extended attribute may fail without failing the copy: the filesystem has
#: none, or the user may not set it (``security.*`` unprivileged).
_XATTR_UNSUPPORTED = (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.E2BIG, errno.ERANGE)
#: Why ``copy_file_range`` may refuse, where reading and writing still work.
_NO_COPY_RANGE = (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL)


class Granted:
    """Permission granted for a moment, and the O_PATH descriptor to take it back through."""

    def __init__(self, path_fd: int, mode: int) -> None:
        self.path_fd = path_fd
        self.mode = mode

    def restore(self) -> None:
        try:
            os.chmod(f"/proc/self/fd/{self.path_fd}", self.mode)
        finally:
            os.close(self.path_fd)


def same(now: os.stat_result, then: os.stat_result, name: str) -> None:
    if (now.st_dev, now.st_ino) != (then.st_dev, then.st_ino) or stat.S_IFMT(
        now.st_mode
    ) != stat.S_IFMT(then.st_mode):
        raise StoreError(f"{name!r} changed while it was being read")


class Walker:
    """Calls :meth:`entry` for everything below a root and :meth:`left` after each directory."""

    def __init__(self) -> None:
        self.euid = os.geteuid()
        #: Directories on the current path that were opened up, by their path.
        self.opened: dict[str, Granted] = {}

    def entry(self, dir_fd: int, name: str, path: str, st: os.stat_result) -> Optional[int]:
        """Handle one entry (``path`` relative to the root, ``st`` its lstat); for a
        directory, return its descriptor (:meth:`open_dir`) to walk into, or None to skip it."""
        raise NotImplementedError

    def left(self, path: str) -> None:
        """Called when the walk is done with directory ``path`` and back in its parent."""

    def open(
        self, dir_fd: int, name: str, st: os.stat_result, flags: int, bits: int
    ) -> tuple[int, Optional[Granted]]:
        """Open an entry we stat'ed; if the owner lacks ``bits`` (and we are the owner), grant
        them first through an O_PATH descriptor checked to be that entry, so a rival swapping
        the name for a symlink cannot redirect the chmod, and open that same inode."""
        granted = None
        target: str = name
        at: Optional[int] = dir_fd
        if self.euid != 0 and st.st_uid == self.euid and (st.st_mode & bits) != bits:
            pfd = os.open(name, _O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            granted = Granted(pfd, stat.S_IMODE(st.st_mode))
            try:
                same(os.fstat(pfd), st, name)
                os.chmod(f"/proc/self/fd/{pfd}", stat.S_IMODE(st.st_mode) | bits)
            except BaseException:
                granted.restore()
                raise
            target, at, flags = f"/proc/self/fd/{pfd}", None, flags & ~os.O_NOFOLLOW
        try:
            fd = os.open(target, flags, dir_fd=at)
            try:
                same(os.fstat(fd), st, name)
            except BaseException:
                os.close(fd)
                raise
        except BaseException:
            if granted is not None:
                granted.restore()
            raise
        return fd, granted

    def open_file(self, dir_fd: int, name: str, st: os.stat_result) -> int:
        """A regular file, for reading (reading an open descriptor needs no permission, so
        any permission granted is taken back at once)."""
        fd, granted = self.open(dir_fd, name, st, FILE_FLAGS, stat.S_IRUSR)
        if granted is not None:
            granted.restore()
        return fd

    def open_dir(self, dir_fd: int, name: str, path: str, st: os.stat_result) -> int:
        """A directory to walk into; what is granted is taken back when the walk leaves it."""
        fd, granted = self.open(dir_fd, name, st, DIR_FLAGS, stat.S_IRUSR | stat.S_IXUSR)
        if granted is not None:
            self.opened[path] = granted
        return fd

    def _leave(self, path: str) -> None:
        granted = self.opened.pop(path, None)
        if granted is not None:
            granted.restore()
        self.left(path)

    def walk(self, root: Path) -> None:
        fd = os.open(root, DIR_FLAGS)
        stack: list[tuple[str, list[str]]] = [("", sorted(os.listdir(fd), reverse=True))]
        try:
            while stack:
                dpath, pending = stack[-1]
                if pending:
                    name = pending.pop()
                    path = f"{dpath}/{name}" if dpath else name
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    child = self.entry(fd, name, path, st)
                    if child is not None:
                        os.close(fd)
                        fd = child
                        stack.append((path, sorted(os.listdir(fd), reverse=True)))
                    continue
                stack.pop()
                if stack:
                    parent = os.open("..", DIR_FLAGS, dir_fd=fd)
                    os.close(fd)
                    fd = parent
                    self._leave(dpath)
        finally:
            os.close(fd)
            for path in sorted(self.opened, reverse=True):
                self.opened.pop(path).restore()


# --- copying --------------------------------------------------------------------------------


def copy_tree(source: Path, dest: Path) -> None:
    """Copy what is below ``source`` into the new directory ``dest`` (mode 0700), as it is:
    types, modes, times, extended attributes, symlinks as symlinks, hardlinks as hardlinks,
    FIFOs, sockets and device nodes made anew (never opened), holes of sparse files as holes
    (a file of a terabyte costs nothing to make in a container, and must not fill the disk
    when copied). Owners are kept as root; unprivileged, everything is the user's anyway."""
    os.mkdir(dest, 0o700)
    copier = _Copier(os.open(dest, DIR_FLAGS))
    try:
        copier.walk(source)
        copier.shut_late()
    finally:
        copier.close()


class _Copier(Walker):
    def __init__(self, top: int) -> None:
        super().__init__()
        #: The copy's top directory, which hardlinks are made relative to.
        self.top = top
        #: The directory of the copy being filled, which follows the walk.
        self.dest = os.dup(top)
        #: The source directories on the current path, whose mode and times are set last.
        self.dirs: list[os.stat_result] = []
        #: The first path copied of each inode with more than one link.
        self.links: dict[tuple[int, int], str] = {}
        #: Copied directories the owner may not search, by path, in the order left: their
        #: mode is set last, since a later hardlink may be made from a path through them.
        self.late: list[tuple[str, int]] = []

    def close(self) -> None:
        os.close(self.dest)
        os.close(self.top)

    def entry(self, dir_fd: int, name: str, path: str, st: os.stat_result) -> Optional[int]:
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            fd = self.open_dir(dir_fd, name, path, st)
            os.mkdir(name, 0o700, dir_fd=self.dest)
            self.dest = _swap(self.dest, os.open(name, DIR_FLAGS, dir_fd=self.dest))
            self._owner(self.dest, st)
            _copy_xattrs(fd, self.dest)
            self.dirs.append(st)
            return fd
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in self.links:
            os.link(
                self.links[key],
                name,
                src_dir_fd=self.top,
                dst_dir_fd=self.dest,
                follow_symlinks=False,
            )
            return None
        if stat.S_ISREG(mode):
            self._file(dir_fd, name, st)
        elif stat.S_ISLNK(mode):
            os.symlink(os.readlink(name, dir_fd=dir_fd), name, dir_fd=self.dest)
            self._owner(name, st)
            os.utime(name, ns=_times(st), dir_fd=self.dest, follow_symlinks=False)
        else:
            os.mknod(name, mode, st.st_rdev, dir_fd=self.dest)
            self._owner(name, st)
            os.chmod(name, stat.S_IMODE(mode), dir_fd=self.dest, follow_symlinks=False)
            os.utime(name, ns=_times(st), dir_fd=self.dest, follow_symlinks=False)
        if st.st_nlink > 1:
            self.links[key] = path
        return None

    def _file(self, dir_fd: int, name: str, st: os.stat_result) -> None:
        src = self.open_file(dir_fd, name, st)
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            dst = os.open(name, flags, 0o600, dir_fd=self.dest)
            try:
                _copy_data(src, dst, st.st_size)
                self._owner(dst, st)  # before the chmod: chown clears set-id bits
                os.chmod(dst, stat.S_IMODE(st.st_mode))
                _copy_xattrs(src, dst)  # after the chown, which drops file capabilities
                os.utime(dst, ns=_times(st))
            finally:
                os.close(dst)
        finally:
            os.close(src)

    def _owner(self, target: int | str, st: os.stat_result) -> None:
        if self.euid == 0:
            if isinstance(target, int):
                os.chown(target, st.st_uid, st.st_gid)
            else:
                os.chown(target, st.st_uid, st.st_gid, dir_fd=self.dest, follow_symlinks=False)

    def left(self, path: str) -> None:
        """The directory is full: its mode (which may forbid writing, or even going up
        through it) and times, then back to its parent."""
        st = self.dirs.pop()
        parent = os.open("..", DIR_FLAGS, dir_fd=self.dest)
        mode = stat.S_IMODE(st.st_mode)
        if self.euid != 0 and not mode & stat.S_IXUSR:
            self.late.append((path, mode))
        else:
            os.chmod(self.dest, mode)
        os.utime(self.dest, ns=_times(st))
        self.dest = _swap(self.dest, parent)

    def shut_late(self) -> None:
        """Set the modes :meth:`left` put off. In the order the directories were left, a
        directory comes before those above it, which are still open to the walk down."""
        for path, mode in self.late:
            fd = os.open(path, _O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=self.top)
            try:
                os.chmod(f"/proc/self/fd/{fd}", mode)
            finally:
                os.close(fd)


def _swap(old: int, new: int) -> int:
    os.close(old)
    return new


def _times(st: os.stat_result) -> tuple[int, int]:
    return st.st_atime_ns, st.st_mtime_ns


def _copy_xattrs(src: int, dst: int) -> None:
    for key in os.listxattr(src):
        try:
            os.setxattr(dst, key, os.getxattr(src, key))
        except OSError as exc:
            if exc.errno not in _XATTR_UNSUPPORTED:
                raise


def _copy_data(src: int, dst: int, size: int) -> None:
    """The data of ``src`` to ``dst``, extent by extent, leaving holes as holes."""
    offset = 0
    while offset < size:
        try:
            start = os.lseek(src, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
            break  # only a hole is left
        end = min(os.lseek(src, start, os.SEEK_HOLE), size)
        while start < end:
            try:
                done = os.copy_file_range(src, dst, end - start, start, start)
            except OSError as exc:
                if exc.errno not in _NO_COPY_RANGE:
                    raise
                done = os.pwrite(dst, os.pread(src, min(end - start, 1 << 20), start), start)
            if not done:
                break  # the file shrank meanwhile
            start += done
        offset = max(end, offset + 1)
    os.ftruncate(dst, size)
