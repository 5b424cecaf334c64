#!/usr/bin/env python3
"""Pull benchmark: ``ucore pull`` against ``udocker pull``, ``skopeo copy`` and a curl floor.

All tools pull the same big image (about 500 MB of gzip layers in 10 layers, built once from
host files, see ``_image.py``) from a local registry into a fresh store per run, in turn
(ucore udocker skopeo curl, ucore udocker skopeo curl, ...). A local registry takes the network
out of the comparison, leaving what the tools themselves cost: HTTP handling, hashing, writing
the store. The curl column is the floor: the same blobs fetched to /dev/null by one curl
process, one after another over one connection (``--curl-parallel`` fetches them in parallel
in that one process instead).

Targets (from the issue): ucore at most 0.7x udocker's median while verifying digests (udocker
does not), faster than skopeo (which does), and a peak RSS under 100 MB.

Run ``python3 bench/pull.py --help``; ``bench/README.md`` explains the output.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import _common
import _image
from _common import Case, Invocation, RunResult, Stats

UDOCKER_VERSION = _common.UDOCKER_VERSION
UDOCKER_VENV = _common.UDOCKER_VENV
DEFAULT_UCORE_CMD = "{python} -m ucore pull {address}/{image}"
TOOLS = ("ucore", "udocker", "skopeo", "curl")
RSS_TARGET_MB = 100.0
UDOCKER_RATIO_TARGET = 0.7
# A pull that exits 0 must have stored (nearly) all the blob bytes, or it did not really pull.
STORED_FRACTION = 0.95


def stored_bytes(root: Path) -> int:
    """Bytes in regular files under ``root`` (symlinks not followed)."""
    total = 0
    for directory, _dirs, files in os.walk(root):
        for name in files:
            try:
                info = os.lstat(os.path.join(directory, name))
            except OSError:
                continue
            if stat.S_ISREG(info.st_mode):
                total += info.st_size
    return total


class StoreCase(Case):
    """A pull into ``workdir/store``; verified by the bytes that landed there."""

    def __init__(self, image: _image.BigImage) -> None:
        self.image = image

    def base_env(self, workdir: Path) -> dict[str, str]:
        """The caller's environment, with temporary files on the store's filesystem too."""
        tmp = workdir / "tmp"
        tmp.mkdir()
        return {**os.environ, "TMPDIR": str(tmp)}

    def verify(self, workdir: Path, result: RunResult) -> Optional[str]:
        stored = stored_bytes(workdir / "store")
        expected = self.image.compressed_bytes
        if stored < STORED_FRACTION * expected:
            return f"exit 0 but stored only {stored / 1e6:.1f} of {expected / 1e6:.1f} MB"
        return None


class UcoreCase(StoreCase):
    """``ucore pull`` through a configurable command template (the core is still being built).

    Template fields: {python}, {address} (host:port), {url}, {image} (bench/big:TAG),
    {store}.
    ``UCORE_DIR`` is the store and ``UCORE_INSECURE`` allows the local plain-HTTP registry;
    the source tree is on ``PYTHONPATH`` so an uninstalled checkout works.
    """

    name = "ucore"

    def __init__(
        self, image: _image.BigImage, template: str, address: str, url: str, env: dict[str, str]
    ) -> None:
        super().__init__(image)
        self.template = template
        self.address = address
        self.url = url
        self.extra_env = env

    def prepare(self, workdir: Path) -> Invocation:
        store = workdir / "store"
        argv = shlex.split(
            self.template.format(
                python=sys.executable,
                address=self.address,
                url=self.url,
                image=self.image.reference,
                store=store,
            )
        )
        env = _common.ucore_env(
            self.base_env(workdir), store, {"UCORE_INSECURE": self.address, **self.extra_env}
        )
        return Invocation(argv, env)


class UdockerCase(StoreCase):
    """``udocker pull`` from PyPI's udocker, with no tools tarball (none is needed to pull)."""

    name = "udocker"

    def __init__(self, image: _image.BigImage, executable: Path, url: str) -> None:
        super().__init__(image)
        self.executable = executable
        self.url = url

    def prepare(self, workdir: Path) -> Invocation:
        store = workdir / "store"
        store.mkdir()
        env = self.base_env(workdir)
        env.update({"UDOCKER_TARBALL": "", "UDOCKER_DIR": str(store)})
        argv = _common.udocker_argv(
            self.executable, "pull", f"--registry={self.url}", self.image.reference
        )
        return Invocation(argv, env)


class SkopeoCase(StoreCase):
    """``skopeo copy`` to an OCI layout: a Go tool that verifies digests, as ucore must."""

    name = "skopeo"

    def __init__(self, image: _image.BigImage, address: str) -> None:
        super().__init__(image)
        self.address = address

    def prepare(self, workdir: Path) -> Invocation:
        store = workdir / "store"
        argv = [
            "skopeo",
            "--insecure-policy",
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            f"docker://{self.address}/{self.image.reference}",
            f"oci:{store}:{_image.LAYOUT_REF}",
        ]
        return Invocation(argv, self.base_env(workdir))


class CurlCase(Case):
    """The transfer floor: every blob (config and layers) to /dev/null by one curl process.

    Serial by default (one connection, one blob after another); ``parallel`` uses curl's own
    ``--parallel``. Nothing is hashed or stored, so no pull can be faster than this.
    """

    def __init__(self, image: _image.BigImage, url: str, parallel: bool) -> None:
        self.image = image
        self.url = url
        self.parallel = parallel
        self.name = "curl-par" if parallel else "curl"

    def prepare(self, workdir: Path) -> Invocation:
        name = _image.REPOSITORY
        argv = ["curl", "--silent", "--show-error", "--fail", "--write-out", "%{size_download}\n"]
        if self.parallel:
            argv += ["--parallel", "--parallel-max", str(len(self.image.blobs))]
        for blob in self.image.blobs:
            argv += ["--output", "/dev/null", f"{self.url}/v2/{name}/blobs/{blob.digest}"]
        return Invocation(argv, dict(os.environ))

    def verify(self, workdir: Path, result: RunResult) -> Optional[str]:
        got = sum(int(float(line)) for line in result.stdout.split() if line.strip())
        if got != self.image.compressed_bytes:
            return f"downloaded {got} bytes, expected {self.image.compressed_bytes}"
        return None


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = _common.bench_parser(
        "Time ucore pull against udocker pull, skopeo copy and a curl floor.",
        runs=5,
        warmup=1,
        tools=TOOLS,
        tools_help="ucore, udocker, skopeo, curl, curl-par",
        ucore_cmd=DEFAULT_UCORE_CMD,
        ucore_fields="{python} {address} {url} {image} {store}",
    )
    parser.add_argument(
        "--store-dir",
        type=Path,
        default=Path("/dev/shm") if Path("/dev/shm").is_dir() else _image.CACHE_DIR / "stores",
        help="where the fresh stores go: tmpfs (/dev/shm) or a disk directory, e.g."
        " bench/.cache/stores",
    )
    _common.add_big_image_options(parser, timeout=300)
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 unless ucore meets the targets (<=0.7x udocker, < skopeo, <100 MB RSS)",
    )
    return _common.parse_checked(parser, argv, [*TOOLS, "curl-par"])


def make_cases(
    args: argparse.Namespace, image: _image.BigImage, address: str, url: str
) -> list[Case]:
    cases: list[Case] = []
    for tool in args.tools:
        if tool == "ucore":
            cases.append(
                UcoreCase(image, args.ucore_cmd, address, url, _common.parse_env(args.ucore_env))
            )
        elif tool == "udocker":
            cases.append(UdockerCase(image, _common.ensure_udocker(), url))
        elif tool == "skopeo":
            cases.append(SkopeoCase(image, address))
        elif tool in ("curl", "curl-par"):
            cases.append(CurlCase(image, url, parallel=tool == "curl-par"))
    return cases


def print_header(args: argparse.Namespace, image: _image.BigImage, store_dir: Path) -> None:
    print(
        f"image     {image.reference}: {len(image.layers)} layers,"
        f" {image.compressed_bytes / 1e6:.1f} MB gzip (config + layers)"
    )
    print(
        f"stores    {store_dir} ({_common.filesystem_type(store_dir)})"
        f"{'' if args.no_sync else ', sync before each run'}"
    )
    print(f"rounds    {args.warmup} warm-up + {args.runs} counted, in turn: {' '.join(args.tools)}")
    print(f"machine   {os.cpu_count()} CPUs, {_common.python_info()}")
    curl = " ".join(_common.command_version(["curl", "--version"]).split()[:2])
    blobs = len(image.blobs)
    versions = {
        "ucore": f"{args.ucore_cmd}  (UCORE_DIR=store, UCORE_INSECURE=registry)",
        "udocker": f"udocker {UDOCKER_VERSION} from PyPI, {UDOCKER_VENV}",
        "skopeo": f"{_common.command_version(['skopeo', '--version'])}, copy to oci:store",
        "curl": f"{curl}: the {blobs} blobs to /dev/null, one process, one after another",
        "curl-par": f"{curl}: the {blobs} blobs to /dev/null, one process, --parallel",
    }
    for tool in args.tools:
        print(f"  {tool:<9} {versions[tool]}")


def report(args: argparse.Namespace, image: _image.BigImage, stats: list[Stats]) -> bool:
    """Prints the table, the ratios and the targets; returns whether ucore met them all."""
    by_name = {item.name: item for item in stats}
    print()
    _common.print_table(stats, megabytes=image.compressed_bytes / 1e6)
    print()
    ucore = by_name.get("ucore")
    met = ucore is not None and ucore.ok
    if ucore is not None:
        # (other tool, the largest ucore/other ratio that meets the target)
        for other, target in (("udocker", UDOCKER_RATIO_TARGET), ("skopeo", 1.0)):
            if other in by_name:
                _common.print_ratio(ucore, by_name[other], target)
                value = _common.ratio(ucore, by_name[other])
                met = met and value is not None and value <= target
        for floor in ("curl", "curl-par"):
            if floor in by_name:
                _common.print_ratio(ucore, by_name[floor])
        rss_mb = ucore.peak_rss_kb / 1024 if ucore.ok and ucore.peak_rss_kb else None
        if rss_mb is None:
            print(f"{'ucore peak RSS':<18} n/a")
        else:
            verdict = "PASS" if rss_mb < RSS_TARGET_MB else "FAIL"
            print(
                f"{'ucore peak RSS':<18} {rss_mb:6.1f} MB   target < {RSS_TARGET_MB:.0f} MB:"
                f" {verdict}"
            )
        met = met and rss_mb is not None and rss_mb < RSS_TARGET_MB
    # The alternatives against each other and the floor: context for the ucore ratios.
    for name in ("udocker", "skopeo"):
        for floor in ("curl", "curl-par"):
            if name in by_name and floor in by_name:
                _common.print_ratio(by_name[name], by_name[floor])
    return met


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    needed = {
        _common.GNU_TIME: "time",
        "docker-registry": "docker-registry",
        "skopeo": "skopeo",
        "curl": "curl",
    }
    missing = [package for binary, package in needed.items() if shutil.which(binary) is None]
    if missing:
        raise SystemExit(f"missing tools: apt-get install {' '.join(missing)}")
    _common.compile_sources(sys.executable)
    image = _image.ensure_image(args.layers, args.size_mb, rebuild=args.rebuild)
    registry = _image.start_registry()
    try:
        _image.ensure_pushed(image, registry.address, registry.url)
        cases = make_cases(args, image, registry.address, registry.url)
        args.store_dir.mkdir(parents=True, exist_ok=True)
        workroot = Path(tempfile.mkdtemp(prefix="ucore-bench-", dir=args.store_dir))
        try:
            print()
            print_header(args, image, workroot)
            print()
            samples = _common.alternate(
                cases,
                rounds=args.runs,
                warmup=args.warmup,
                workroot=workroot,
                timeout=args.timeout,
                between=None if args.no_sync else os.sync,
            )
        finally:
            shutil.rmtree(workroot, ignore_errors=True)
    finally:
        registry.stop()
    stats = [_common.summarize(samples, case.name) for case in cases]
    met = report(args, image, stats)
    if args.json:
        meta = {
            "image": image.reference,
            "compressed_bytes": image.compressed_bytes,
            "layers": len(image.layers),
            "store_dir": str(args.store_dir),
            "filesystem": _common.filesystem_type(args.store_dir),
            "ucore_cmd": args.ucore_cmd,
            "cpus": os.cpu_count(),
        }
        _common.write_json(args.json, meta, samples, stats)
    print(f"\nbench took {time.monotonic() - started:.0f} s")
    return 1 if args.check and not met else 0


if __name__ == "__main__":
    sys.exit(main())
