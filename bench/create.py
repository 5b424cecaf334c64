#!/usr/bin/env python3
"""Create benchmark: ``ucore create`` against ``udocker create``, ``umoci unpack`` and a tar floor.

Every tool turns the same big image (about 500 MB of gzip layers in 10 layers, built once from
host files, see ``_image.py``) into a root filesystem, in turn (ucore udocker umoci tar, ucore
udocker umoci tar, ...), on tmpfs and on disk in the same run. The image is pulled into ucore's
and udocker's stores (and its OCI layout copied for umoci and tar) once per place, before any
timing and on the same filesystem as the results, and the registry is stopped before the first
timed command: what is timed is unpacking only. The tar column is the floor: each layer
extracted in order by ``tar -xf`` (which decompresses with ``gzip -d``), no whiteouts handled,
nothing checked.

Target (from the issue): ucore create within 1.3x the tar floor.

Run ``python3 bench/create.py --help``; ``bench/README.md`` explains the output.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import _common
import _image
from _common import Case, Invocation, RunResult, Sample, Stats

TOOLS = ("ucore", "udocker", "umoci", "tar")
DEFAULT_UCORE_CMD = "{python} -m ucore create --name {name} {address}/{image}"
TAR_RATIO_TARGET = 1.3
DEFAULT_DEST_DIRS = (Path("/dev/shm"), _image.CACHE_DIR / "stores")
# One shell, one ``tar`` process per layer (each spawns ``gzip -d``), layers in manifest order.
TAR_SCRIPT = 'dest=$1; shift; for layer do tar -xf "$layer" -C "$dest" {options}|| exit; done'


def layer_last_paths(image: _image.BigImage) -> list[str]:
    """The last path each layer added (from the config's history), relative to the root.

    A create that exits 0 must have put every layer's last entry in place, or it did not
    really unpack them all.
    """
    blobs = image.layout / "blobs" / "sha256"
    config = json.loads((blobs / image.config.digest.split(":", 1)[1]).read_text())
    paths = []
    for index, entry in enumerate(config.get("history", [])):
        created_by = entry.get("created_by", "")
        _, _, span = created_by.partition(": ")
        if " .. " in span:
            paths.append(span.split(" .. ", 1)[1].lstrip("/"))
        elif span == "random filler":
            paths.append(f"opt/filler/layer-{index}.bin")
    return paths


def missing_paths(root: Path, paths: Sequence[str]) -> Optional[str]:
    """An error naming the first expected path absent from ``root``, or None."""
    if not root.is_dir():
        return f"exit 0 but no root filesystem at {root}"
    for path in paths:
        if not os.path.lexists(root / path):
            return f"exit 0 but {path} is missing from {root}"
    return None


def last_word(text: str) -> str:
    """The last word a command printed: the container id ``create`` commands print."""
    words = text.split()
    return words[-1] if words else ""


@dataclass
class Place:
    """One destination filesystem: the pre-pulled stores, the layout copy, the run dirs."""

    dest: Path
    root: Path
    filesystem: str
    layout: Path
    ucore_store: Path
    udocker_store: Path
    samples: list[Sample] = field(default_factory=list)
    stats: list[Stats] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.filesystem} ({self.dest})"

    @property
    def runs(self) -> Path:
        return self.root / "runs"


class CreateCase(Case):
    """A create whose result is checked against the layers' last paths."""

    def __init__(self, place: Place, expected: Sequence[str]) -> None:
        self.place = place
        self.expected = expected
        self.count = 0

    def base_env(self, workdir: Path) -> dict[str, str]:
        """The caller's environment, with temporary files on the destination's filesystem."""
        tmp = workdir / "tmp"
        tmp.mkdir(exist_ok=True)
        return {**os.environ, "TMPDIR": str(tmp)}

    def root_of(self, workdir: Path, result: RunResult) -> Path:
        raise NotImplementedError

    def verify(self, workdir: Path, result: RunResult) -> Optional[str]:
        return missing_paths(self.root_of(workdir, result), self.expected)


class UcoreCase(CreateCase):
    """``ucore create --name bN`` of the image already in the store; ``ucore rm bN`` after.

    Template fields: {python}, {address} (registry host:port), {image} (bench/big:TAG),
    {name}, {store}. The image was pulled under the registry's address, so the full reference
    names it.
    """

    name = "ucore"

    def __init__(
        self,
        place: Place,
        expected: Sequence[str],
        *,
        template: str,
        address: str,
        image: _image.BigImage,
        extra_env: dict[str, str],
    ) -> None:
        super().__init__(place, expected)
        self.template = template
        self.address = address
        self.image = image
        self.extra_env = extra_env

    def env(self, workdir: Path) -> dict[str, str]:
        extra = {"UCORE_INSECURE": self.address, **self.extra_env}
        return _common.ucore_env(self.base_env(workdir), self.place.ucore_store, extra)

    def prepare(self, workdir: Path) -> Invocation:
        self.count += 1
        argv = shlex.split(
            self.template.format(
                python=sys.executable,
                address=self.address,
                image=self.image.reference,
                name=f"b{self.count}",
                store=self.place.ucore_store,
            )
        )
        return Invocation(argv, self.env(workdir))

    def root_of(self, workdir: Path, result: RunResult) -> Path:
        return self.place.ucore_store / "containers" / last_word(result.stdout) / "ROOT"

    def cleanup(self, workdir: Path, result: RunResult) -> None:
        container = last_word(result.stdout)
        if not container:
            return
        argv = [sys.executable, "-m", "ucore", "-q", "rm", "-f", container]
        try:
            _common.checked(argv, self.env(workdir), "ucore rm")
        except (RuntimeError, OSError) as exc:
            print(f"  warning: {exc}; removing the container directory instead")
            shutil.rmtree(self.place.ucore_store / "containers" / container, ignore_errors=True)


class UdockerCase(CreateCase):
    """``udocker create --name=bN`` of the image already in its store; ``udocker rm`` after."""

    name = "udocker"

    def __init__(
        self, place: Place, expected: Sequence[str], executable: Path, image: _image.BigImage
    ) -> None:
        super().__init__(place, expected)
        self.executable = executable
        self.image = image

    def env(self, workdir: Path) -> dict[str, str]:
        return _common.udocker_env(self.base_env(workdir), self.place.udocker_store)

    def prepare(self, workdir: Path) -> Invocation:
        self.count += 1
        argv = _common.udocker_argv(
            self.executable, "create", f"--name=b{self.count}", self.image.reference
        )
        return Invocation(argv, self.env(workdir))

    def root_of(self, workdir: Path, result: RunResult) -> Path:
        return self.place.udocker_store / "containers" / last_word(result.stdout) / "ROOT"

    def cleanup(self, workdir: Path, result: RunResult) -> None:
        container = last_word(result.stdout)
        if not container:
            return
        try:
            _common.checked(
                _common.udocker_argv(self.executable, "rm", container),
                self.env(workdir),
                "udocker rm",
            )
        except (RuntimeError, OSError) as exc:
            print(f"  warning: {exc}; removing the container directory instead")
        # udocker rm leaves the name link behind when it fails; either way start clean.
        shutil.rmtree(self.place.udocker_store / "containers" / container, ignore_errors=True)
        name_link = self.place.udocker_store / "containers" / f"b{self.count}"
        if name_link.is_symlink():
            name_link.unlink()


class UmociCase(CreateCase):
    """``umoci unpack --rootless --image LAYOUT:big BUNDLE`` (the layout copied to the place)."""

    name = "umoci"

    def prepare(self, workdir: Path) -> Invocation:
        argv = [
            "umoci",
            "unpack",
            "--rootless",
            "--image",
            f"{self.place.layout}:{_image.LAYOUT_REF}",
            str(workdir / "bundle"),
        ]
        return Invocation(argv, self.base_env(workdir))

    def root_of(self, workdir: Path, result: RunResult) -> Path:
        return workdir / "bundle" / "rootfs"


class TarCase(CreateCase):
    """The floor: ``tar -xf LAYER -C ROOT`` for each layer in order, from one ``sh`` loop.

    As root, ``--no-same-owner`` makes tar behave as it does for an ordinary user (no chown).
    """

    name = "tar"

    def __init__(self, place: Place, expected: Sequence[str], image: _image.BigImage) -> None:
        super().__init__(place, expected)
        self.layers = [
            str(place.layout / "blobs" / "sha256" / blob.digest.split(":", 1)[1])
            for blob in image.layers
        ]

    @staticmethod
    def script() -> str:
        return TAR_SCRIPT.format(options="--no-same-owner " if os.geteuid() == 0 else "")

    def prepare(self, workdir: Path) -> Invocation:
        root = workdir / "root"
        root.mkdir()
        argv = ["sh", "-c", self.script(), "sh", str(root), *self.layers]
        return Invocation(argv, self.base_env(workdir))

    def root_of(self, workdir: Path, result: RunResult) -> Path:
        return workdir / "root"


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = _common.bench_parser(
        "Time ucore create against udocker create, umoci unpack and a tar floor,"
        " on tmpfs and on disk.",
        runs=5,
        warmup=1,
        tools=TOOLS,
        tools_help="ucore, udocker, umoci, tar",
        ucore_cmd=DEFAULT_UCORE_CMD,
        ucore_fields="{python} {address} {image} {name} {store}",
    )
    parser.add_argument(
        "--dest-dir",
        type=Path,
        action="append",
        help="where stores and roots go, one place after another (repeatable; default"
        f" {' and '.join(str(path) for path in DEFAULT_DEST_DIRS)}: tmpfs, then disk)",
    )
    _common.add_big_image_options(parser, timeout=600)
    parser.add_argument(
        "--check", action="store_true", help="exit 1 unless ucore is within 1.3x tar everywhere"
    )
    args = _common.parse_checked(parser, argv, TOOLS)
    args.dest_dir = args.dest_dir or [path for path in DEFAULT_DEST_DIRS if path.parent.is_dir()]
    return args


def prepare_place(
    args: argparse.Namespace,
    dest: Path,
    image: _image.BigImage,
    *,
    address: str,
    url: str,
    udocker: Optional[Path],
) -> Place:
    """Makes a fresh directory under ``dest`` and fills it, untimed: the image pulled into
    ucore's and udocker's stores, and the OCI layout copied for umoci and tar."""
    dest.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="ucore-bench-create-", dir=dest))
    place = Place(
        dest=dest,
        root=root,
        filesystem=_common.filesystem_type(root),
        layout=root / "layout",
        ucore_store=root / "stores" / "ucore",
        udocker_store=root / "stores" / "udocker",
    )
    try:
        fill_place(args, place, image, address=address, url=url, udocker=udocker)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return place


def fill_place(
    args: argparse.Namespace,
    place: Place,
    image: _image.BigImage,
    *,
    address: str,
    url: str,
    udocker: Optional[Path],
) -> None:
    """The untimed setup of one place: pulls into both stores, the layout copy."""
    place.runs.mkdir()
    place.ucore_store.parent.mkdir()
    started = time.monotonic()
    env = {**os.environ, "TMPDIR": str(place.root)}
    if "ucore" in args.tools:
        argv = [sys.executable, "-m", "ucore", "-q", "pull", f"{address}/{image.reference}"]
        extra = {"UCORE_INSECURE": address, **_common.parse_env(args.ucore_env)}
        _common.checked(argv, _common.ucore_env(env, place.ucore_store, extra), "ucore pull")
    if udocker is not None:
        place.udocker_store.mkdir()
        argv = _common.udocker_argv(udocker, "pull", f"--registry={url}", image.reference)
        _common.checked(argv, _common.udocker_env(env, place.udocker_store), "udocker pull")
    if {"umoci", "tar"} & set(args.tools):
        shutil.copytree(image.layout, place.layout)
    print(f"  {place.label}: image pulled and copied in {time.monotonic() - started:.0f} s")


def make_cases(
    args: argparse.Namespace,
    place: Place,
    image: _image.BigImage,
    *,
    address: str,
    udocker: Optional[Path],
    expected: Sequence[str],
) -> list[Case]:
    cases: list[Case] = []
    for tool in args.tools:
        if tool == "ucore":
            extra = _common.parse_env(args.ucore_env)
            cases.append(
                UcoreCase(
                    place,
                    expected,
                    template=args.ucore_cmd,
                    address=address,
                    image=image,
                    extra_env=extra,
                )
            )
        elif tool == "udocker" and udocker is not None:
            cases.append(UdockerCase(place, expected, udocker, image))
        elif tool == "umoci":
            cases.append(UmociCase(place, expected))
        elif tool == "tar":
            cases.append(TarCase(place, expected, image))
    return cases


def print_header(args: argparse.Namespace, image: _image.BigImage, places: Sequence[Place]) -> None:
    print(
        f"image     {image.reference}: {len(image.layers)} layers,"
        f" {image.compressed_bytes / 1e6:.1f} MB gzip"
    )
    print(f"places    {', '.join(place.label for place in places)}")
    print(
        f"rounds    {args.warmup} warm-up + {args.runs} counted per place, in turn:"
        f" {' '.join(args.tools)}{'' if args.no_sync else '; sync before each run'}"
    )
    print(
        f"machine   {os.cpu_count()} CPUs, {_common.python_info()}, load {_common.load_average()}"
    )
    tar = _common.command_version(["tar", "--version"])
    versions = {
        "ucore": f"{args.ucore_cmd}  (UCORE_DIR=pre-pulled store; `ucore rm` after, untimed)",
        "udocker": f"udocker {_common.UDOCKER_VERSION} from PyPI: udocker create --name=bN"
        " bench/big:latest (pre-pulled store; `udocker rm` after, untimed)",
        "umoci": f"{_common.command_version(['umoci', '--version'])}:"
        f" umoci unpack --rootless --image LAYOUT:{_image.LAYOUT_REF} BUNDLE",
        "tar": f"{tar}: sh -c '{TarCase.script()}'",
    }
    for tool in args.tools:
        print(f"  {tool:<9} {versions[tool]}")


def report_place(place: Place) -> bool:
    """Prints one place's table and ratios; returns whether ucore met the target there."""
    by_name = {item.name: item for item in place.stats}
    print(f"\n== {place.label}")
    _common.print_table(place.stats)
    print()
    ucore, tar = by_name.get("ucore"), by_name.get("tar")
    met = False
    if ucore is not None:
        if tar is not None:
            _common.print_ratio(ucore, tar, TAR_RATIO_TARGET)
            value = _common.ratio(ucore, tar)
            met = value is not None and value <= TAR_RATIO_TARGET
        for other in ("udocker", "umoci"):
            if other in by_name:
                _common.print_ratio(ucore, by_name[other])
    for other in ("udocker", "umoci"):
        if other in by_name and tar is not None:
            _common.print_ratio(by_name[other], tar)
    return met


def print_summary(places: Sequence[Place], tools: Sequence[str]) -> None:
    """Medians of every tool in every place side by side, with ucore's ratios."""
    print("\n== summary (median seconds)")
    print(f"{'place':<10}" + "".join(f"{tool:>9}" for tool in tools) + "  ucore/tar  ucore/udocker")
    for place in places:
        by_name = {item.name: item for item in place.stats}
        cells = []
        for tool in tools:
            item = by_name.get(tool)
            median = item.median if item is not None and item.ok else None
            cells.append(f"{median:9.2f}" if median is not None else f"{'n/a':>9}")
        ratios = []
        for other in ("tar", "udocker"):
            value = (
                _common.ratio(by_name["ucore"], by_name[other])
                if "ucore" in by_name and other in by_name
                else None
            )
            ratios.append(f"{value:.2f}x" if value is not None else "n/a")
        print(f"{place.filesystem:<10}" + "".join(cells) + f"  {ratios[0]:>9}  {ratios[1]:>13}")


def write_json(
    path: Path, args: argparse.Namespace, image: _image.BigImage, places: list[Place]
) -> None:
    data = {
        "meta": {
            "image": image.reference,
            "compressed_bytes": image.compressed_bytes,
            "layers": len(image.layers),
            "ucore_cmd": args.ucore_cmd,
            "cpus": os.cpu_count(),
        },
        "places": [
            {
                "dest": str(place.dest),
                "filesystem": place.filesystem,
                "samples": [asdict(sample) for sample in place.samples],
                "stats": [asdict(item) for item in place.stats],
            }
            for place in places
        ],
    }
    path.write_text(json.dumps(data, indent=1))


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    needed = {
        _common.GNU_TIME: "time",
        "docker-registry": "docker-registry",
        "skopeo": "skopeo",
        "tar": "tar",
        "gzip": "gzip",
    }
    if "umoci" in args.tools:
        needed["umoci"] = "umoci"
    missing = [package for binary, package in needed.items() if shutil.which(binary) is None]
    if missing:
        raise SystemExit(f"missing tools: apt-get install {' '.join(missing)}")
    _common.compile_sources(sys.executable)
    image = _image.ensure_image(args.layers, args.size_mb, rebuild=args.rebuild)
    expected = layer_last_paths(image)
    udocker = _common.ensure_udocker() if "udocker" in args.tools else None
    places: list[Place] = []
    registry = _image.start_registry()
    try:
        _image.ensure_pushed(image, registry.address, registry.url)
        address = registry.address
        print("setting up (untimed):")
        for dest in args.dest_dir:
            places.append(
                prepare_place(args, dest, image, address=address, url=registry.url, udocker=udocker)
            )
    except BaseException:
        for place in places:
            shutil.rmtree(place.root, ignore_errors=True)
        raise
    finally:
        # Stopped before any timing: no create may fetch anything.
        registry.stop()
    met_all = True
    try:
        print()
        print_header(args, image, places)
        for place in places:
            print(f"\n-- {place.label}")
            cases = make_cases(
                args, place, image, address=address, udocker=udocker, expected=expected
            )
            place.samples = _common.alternate(
                cases,
                rounds=args.runs,
                warmup=args.warmup,
                workroot=place.runs,
                timeout=args.timeout,
                between=None if args.no_sync else os.sync,
            )
            place.stats = [_common.summarize(place.samples, case.name) for case in cases]
    finally:
        for place in places:
            shutil.rmtree(place.root, ignore_errors=True)
    for place in places:
        met_all = report_place(place) and met_all
    print_summary(places, args.tools)
    if args.json:
        write_json(args.json, args, image, places)
    print(f"\nload {_common.load_average()}; bench took {time.monotonic() - started:.0f} s")
    return 1 if args.check and not met_all else 0


if __name__ == "__main__":
    sys.exit(main())
