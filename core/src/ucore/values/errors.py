"""Errors that reach the user as one line and a documented exit status.

Every failure a user can cause or meet (bad input, a refusing registry, a corrupt blob, a full
disk) is raised as a :class:`UcoreError` subclass; the CLI prints its message and exits with its
``exit_code``. Anything else escaping is a bug and is reported as such.
"""

from __future__ import annotations

import errno


class UcoreError(Exception):
    """Base class: ``str(err)`` is the one-line message shown to the user."""

    exit_code = 1


class UsageError(UcoreError):
    """Invalid command-line input: a malformed reference, option or argument."""

    exit_code = 2


class NotFoundError(UcoreError):
    """The image, tag, blob or platform asked for does not exist (locally or remotely)."""

    exit_code = 3


class RegistryError(UcoreError):
    """The registry is unreachable, keeps failing, or speaks a protocol we refuse."""

    exit_code = 4


class AuthError(UcoreError):
    """Credentials were missing, wrong or refused."""

    exit_code = 5


class IntegrityError(UcoreError):
    """Content is not what it claims to be: digest or size mismatch, malformed or unsupported
    manifest, a tarball that lies about its contents."""

    exit_code = 6


class StoreError(UcoreError):
    """The local store cannot be written or read: disk full, quota, permissions."""

    exit_code = 7


def store_error(exc: OSError, what: str) -> StoreError:
    """Turn an OSError into the one-line message a user can act on."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreError(f"disk full or quota exceeded while {what}")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StoreError(f"permission denied while {what}: {exc.filename or ''}".rstrip(": "))
    return StoreError(f"store error while {what}: {exc.strerror or exc}")


class PluginError(UcoreError):
    """A plugin is misconfigured in a way that makes the command impossible (e.g. duplicate
    engine names)."""

    exit_code = 8


class DeviceError(UcoreError):
    """A requested device (GPU, HCA) is not on this host, or what describes it (a CDI spec,
    the driver's files) is unusable, or the image needs a newer driver, or the host's MPI
    libraries asked for (``run --mpi=host``) cannot serve the image's: nothing was started."""

    exit_code = 9


class CommandNotExecutableError(UcoreError):
    """The container's command exists but cannot be run (a directory, no execute bit), as a
    shell and Docker report it."""

    exit_code = 126


class CommandNotFoundError(UcoreError):
    """The container's command is not in the container (nor in a volume), as a shell and
    Docker report it."""

    exit_code = 127


#: Exit statuses, documented in README.md and ``ucore --help``.
EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "unexpected internal error (a bug: please report it)",
    UsageError.exit_code: "invalid command line or reference",
    NotFoundError.exit_code: "image, tag, blob or platform not found",
    RegistryError.exit_code: "registry unreachable, failing or unsupported",
    AuthError.exit_code: "authentication or authorization failed",
    IntegrityError.exit_code: "content failed verification or is malformed",
    StoreError.exit_code: "local store error (disk full, quota, permissions)",
    PluginError.exit_code: "plugin configuration error, or no usable execution engine",
    DeviceError.exit_code: (
        "requested device missing, its description unusable, or driver too old;"
        " or the host's MPI cannot serve the image (mpi check, run --mpi=host)"
    ),
    CommandNotExecutableError.exit_code: "the container's command cannot be executed",
    CommandNotFoundError.exit_code: "the container's command was not found in the container",
    130: "interrupted (SIGINT)",
    143: "terminated (SIGTERM)",
}
