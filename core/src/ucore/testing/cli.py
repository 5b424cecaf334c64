"""Run the ``ucore`` command as users do (a subprocess) against a private store, and check the
store afterwards against the layout contract.

Each test gets its own ``UCORE_DIR`` and ``HOME``: nothing from the developer's real Docker or
ucore configuration (credentials, proxies) can leak into a test, and tests cannot see each
other's stores.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import ucore

#: Where the ``ucore`` package under test lives; the subprocess must import the same one.
UCORE_SRC = str(Path(ucore.__file__).resolve().parents[1])

#: Environment that would change how ucore or requests behave, removed for isolation.
_SCRUB = re.compile(
    r"^(UCORE_.*|DOCKER_.*|REGISTRY_AUTH_FILE|XDG_.*|REQUESTS_CA_BUNDLE|CURL_CA_BUNDLE"
    r"|(?i:https?_proxy|all_proxy|no_proxy))$"
)
#: A loopback port nothing listens on (the discard service is never running in CI).
DEAD_PROXY = "http://127.0.0.1:9"
HEX64 = re.compile(r"^[0-9a-f]{64}$")


class Ucore:
    """``ucore`` as a subprocess with ``UCORE_DIR=store`` and ``HOME=home``."""

    def __init__(self, base: Path) -> None:
        self.store = base / "ucore"
        self.home = base / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not _SCRUB.match(k)}
        pythonpath = [UCORE_SRC, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        env.update(
            HOME=str(self.home),
            UCORE_DIR=str(self.store),
            PYTHONPATH=os.pathsep.join(pythonpath),
            PYTHONDONTWRITEBYTECODE="1",
            LC_ALL="C.UTF-8",
            # A guard, not a feature: anything not on loopback goes to a closed port and fails
            # at once, so a test can never reach Docker Hub even if a name resolves there.
            HTTP_PROXY=DEAD_PROXY,
            HTTPS_PROXY=DEAD_PROXY,
            NO_PROXY="127.0.0.1,127.0.0.2,localhost",
        )
        self.env = env

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "ucore", *args]

    def run(
        self,
        *args: str,
        input: Optional[str] = None,
        timeout: float = 120,
        env: Optional[dict[str, str]] = None,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args),
            check=False,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**self.env, **(env or {})},
            stdin=None if input is not None else subprocess.DEVNULL,
        )

    def popen(self, *args: str, env: Optional[dict[str, str]] = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.argv(*args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env={**self.env, **(env or {})},
        )

    def on_full_disk(
        self, free_kib: int, mount: Path, *args: str
    ) -> subprocess.CompletedProcess[str]:
        """Run with the store on a tmpfs (in a mount namespace, and for a user other than root
        a user namespace too) where only ``free_kib`` KiB are left once the store is copied
        there; the store is copied back afterwards, as the command left it. Skips the test
        where no tmpfs can be mounted."""
        import pytest

        unshare = ["unshare", "-m" if os.geteuid() == 0 else "-rm"]
        probe = [*unshare, "mount", "-t", "tmpfs", "tmpfs", str(mount)]
        if shutil.which("unshare") is None or subprocess.run(probe, capture_output=True).returncode:
            pytest.skip(f"cannot mount a tmpfs here ({' '.join(unshare)})")
        shell = [*unshare, "sh", "-c", _ON_FULL_TMPFS, "sh"]
        result = subprocess.run(
            [*shell, str(free_kib), str(mount), str(self.store), *self.argv(*args)],
            env={**self.env, "UCORE_DIR": str(mount / "store")},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode not in (98, 99), describe(result)
        return result

    def read_only(self, scratch: Path, *args: str) -> subprocess.CompletedProcess[str]:
        """Run with the store read-only, as another user's store shared with a group is, and
        ``TMPDIR=scratch``: a read-only bind mount in a mount namespace for root (whom modes do
        not stop), the write permissions taken away for anyone else."""
        env = {"TMPDIR": str(scratch)}
        if os.geteuid() == 0:
            remount = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
            return subprocess.run(
                ["unshare", "-m", "sh", "-c", remount, str(self.store), *self.argv(*args)],
                capture_output=True,
                text=True,
                timeout=120,
                env={**self.env, **env},
                stdin=subprocess.DEVNULL,
            )
        subprocess.run(["chmod", "-R", "a-w", str(self.store)], check=True)
        try:
            return self.run(*args, env=env)
        finally:
            subprocess.run(["chmod", "-R", "u+w", str(self.store)], check=True)

    def ok(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """Run and insist on exit status 0, showing the output otherwise."""
        result = self.run(*args, **kwargs)
        assert result.returncode == 0, describe(result)
        return result

    def fails(self, code: int, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """Run and insist on exit status ``code`` and on the error contract: exactly one line
        on stderr, starting with ``ucore: ``, and no traceback."""
        result = self.run(*args, **kwargs)
        assert result.returncode == code, describe(result)
        assert_error_line(result)
        return result

    # --- the store ---------------------------------------------------------------------------

    def blob_dir(self) -> Path:
        return self.store / "blobs" / "sha256"

    def blobs(self) -> set[str]:
        """Digests (``sha256:...``) of the published blobs."""
        if not self.blob_dir().is_dir():
            return set()
        return {"sha256:" + p.name for p in self.blob_dir().iterdir()}

    def check_store(self) -> None:
        check_store(self.store)

    def refs(self) -> list[Path]:
        refs = self.store / "refs"
        return sorted(p for p in refs.rglob("*") if p.is_file()) if refs.is_dir() else []


#: Mount a tmpfs on $2 with room for the store $3 (when there is one) and $1 KiB more, copy the
#: store there and fill the rest, run the command, and copy the store back before the mount
#: namespace (and the tmpfs with it) goes away.
_ON_FULL_TMPFS = """
free=$1 mnt=$2 store=$3; shift 3
used=0; [ -d "$store" ] && used=$(du -sk "$store" | cut -f1)
mount -t tmpfs -o "size=$((used + free + 1024))k" tmpfs "$mnt" || exit 99
if [ -d "$store" ]; then cp -a "$store" "$mnt/store" || exit 98; fi
avail=$(df -k --output=avail "$mnt" | tail -n 1)
fallocate -l "$(((avail - free) * 1024))" "$mnt/fill" || exit 98
"$@"; status=$?
rm -f "$mnt/fill"
if [ -d "$mnt/store" ]; then rm -rf "$store" && cp -a "$mnt/store" "$store" || exit 98; fi
exit $status
"""


def describe(result: subprocess.CompletedProcess[str]) -> str:
    return (
        f"command: {' '.join(map(str, result.args))}\nexit status: {result.returncode}\n"
        f"--- stdout ---\n{result.stdout[-4000:]}\n--- stderr ---\n{result.stderr[-4000:]}"
    )


def assert_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr, describe(result)
    assert len(lines) == 1, f"expected exactly one line on stderr\n{describe(result)}"
    assert lines[0].startswith("ucore: "), describe(result)
    return lines[0]


def check_store(store: Path) -> None:
    """Every published blob hashes to its name and is read-only; store directories are 0700;
    nothing but 64-hex names in ``blobs/sha256`` (no partial or temporary files)."""
    for path in [store, *(store / d for d in ("blobs", "tmp", "locks", "refs"))]:
        if path.exists():
            mode = stat.S_IMODE(path.lstat().st_mode)
            assert path.is_dir() and mode == 0o700, f"{path}: mode {mode:o}, expected 700"
    blob_dir = store / "blobs" / "sha256"
    if not blob_dir.exists():
        return
    for path in blob_dir.iterdir():
        assert HEX64.match(path.name), f"unexpected file in the blob store: {path}"
        st = path.lstat()
        assert stat.S_ISREG(st.st_mode), f"{path} is not a regular file"
        assert not st.st_mode & 0o222, f"{path} is writable (mode {stat.S_IMODE(st.st_mode):o})"
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        assert digest.hexdigest() == path.name, f"{path} does not hash to its name"


def installed_engines(cli: Ucore) -> dict[str, dict[str, Any]]:
    """``ucore info --json``'s engines, by name."""
    rows = json.loads(cli.ok("info", "--json").stdout)["engines"]
    return {row["name"]: row for row in rows}


def usable_engine(installed: dict[str, dict[str, Any]], name: str) -> str:
    """``name``, for a test that needs it; a listed engine that is not installed fails the
    test, one whose probe says it cannot run here skips it with the probe's reason."""
    import pytest

    if name not in installed:
        pytest.fail(f"engine {name} is listed but not installed")
    if not installed[name]["usable"]:
        pytest.skip(f"engine {name} cannot run on this host: {installed[name]['reason']}")
    return name


def engine_container(cli: Ucore, image: str, engine: str, prefix: str) -> str:
    """A container of ``image`` named ``PREFIX-ENGINE``, set up to run with ``engine``."""
    name = f"{prefix}-{engine}"
    cli.ok("create", "--name", name, image)
    cli.ok("setup", "--engine", engine, name)
    return name


def on_terminal(argv: list[str], env: dict[str, str]) -> tuple[int, int]:
    """Start ``argv`` on a new pseudo-terminal as its controlling terminal (so that ^C typed
    there reaches its foreground job); (pid, the terminal's controller descriptor).

    The child does nothing but ``execve`` with what was prepared before the fork, which is
    safe in a threaded test process (the registry fixtures run threads); Python 3.12+ warns
    about any fork there, so that warning is silenced here and only here.
    """
    import pty
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "This process .* is multi-threaded", DeprecationWarning)
        pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        os.execve(argv[0], argv, env)
    return pid, fd
