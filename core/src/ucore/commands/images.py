"""Image commands: pull, images, inspect, rmi, prune, tag, verify, manifest inspect."""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from typing import TYPE_CHECKING, Any

from ucore.commands import add_registry_options
from ucore.config import MAX_JOBS, positive_int
from ucore.storage import images
from ucore.storage.manifest import read_config
from ucore.values.errors import IntegrityError, NotFoundError, UsageError

if TYPE_CHECKING:
    from ucore.session import Session


def add_commands(sub: Any, common: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    parsers = {}

    p = sub.add_parser("pull", parents=[common], help="fetch an image into the local store")
    add_registry_options(p)
    p.add_argument(
        "--jobs",
        type=positive_int("jobs", MAX_JOBS),
        metavar="N",
        help="parallel blob downloads (default 4)",
    )
    p.add_argument(
        "--allow-foreign-layers",
        dest="allow_foreign",
        action="store_true",
        help="download foreign (non-distributable) layers from their own URLs",
    )
    p.add_argument("image", metavar="IMAGE")
    p.set_defaults(handler=cmd_pull)
    parsers["pull"] = p

    p = sub.add_parser("images", parents=[common], help="list local images")
    p.add_argument("-l", "--long", action="store_true", help="show layers and sizes")
    p.add_argument(
        "-p",
        "--platform",
        dest="show_platform",
        action="store_true",
        help="show each image's platform",
    )
    p.add_argument("--json", action="store_true", help="JSON on stdout")
    p.set_defaults(handler=cmd_images)
    parsers["images"] = p

    p = sub.add_parser(
        "inspect",
        parents=[common],
        help="show a container's record or an image's config and manifest (JSON)",
    )
    p.add_argument("--json", action="store_true", help="JSON on stdout (the default)")
    p.add_argument(
        "-p",
        "--path",
        dest="print_path",
        action="store_true",
        help="print only the container's root directory (udocker's inspect -p)",
    )
    p.add_argument("image", metavar="CONTAINER|IMAGE")
    p.set_defaults(handler=cmd_inspect)
    parsers["inspect"] = p

    p = sub.add_parser("rmi", parents=[common], help="remove images (blobs only when unused)")
    p.add_argument(
        "-f",
        "--force",
        action="store_true",
        help="remove protected images too; ignore images that do not exist",
    )
    p.add_argument("image", metavar="IMAGE", nargs="+")
    p.set_defaults(handler=cmd_rmi)
    parsers["rmi"] = p

    p = sub.add_parser(
        "prune",
        parents=[common],
        help="remove blobs no image uses (left by an interrupted pull, import or load)",
    )
    p.add_argument("--json", action="store_true", help="JSON on stdout")
    p.set_defaults(handler=cmd_prune)
    parsers["prune"] = p

    p = sub.add_parser("tag", parents=[common], help="give a local image another name")
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("target", metavar="TARGET")
    p.set_defaults(handler=cmd_tag)
    parsers["tag"] = p

    p = sub.add_parser(
        "verify",
        parents=[common],
        help="re-hash every blob of images, check layers against diff_ids",
    )
    p.add_argument("image", metavar="IMAGE", nargs="+")
    p.set_defaults(handler=cmd_verify)
    parsers["verify"] = p

    p = sub.add_parser("manifest", parents=[common], help="registry manifests")
    msub = p.add_subparsers(
        dest="manifest_command", metavar="SUBCOMMAND", required=True, parser_class=type(p)
    )
    mi = msub.add_parser(
        "inspect", parents=[common], help="print the manifest or index a registry serves"
    )
    add_registry_options(mi, platform=False)
    mi.add_argument("image", metavar="IMAGE")
    mi.set_defaults(handler=cmd_manifest_inspect)
    parsers["manifest"] = p
    return parsers


def _ref(session: Session, text: str) -> Any:
    return images.parse_ref(text, session.config.registry)


def _print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def cmd_pull(session: Session, args: argparse.Namespace) -> int:
    ref = _ref(session, args.image)
    image = session.pull(ref)
    if not sys.stderr.isatty() or getattr(args, "quiet", False):
        return 0
    site = session.store.site if session.store.in_site(ref) else None
    where = f" (in the site store {site.root}: nothing pulled)" if site else ""
    print(f"{image.ref.familiar} {image.manifest_digest}{where}")
    return 0


def _size(image: Any) -> int:
    return sum(d.size for d in image.layers)


def _created(record: dict[str, Any]) -> str:
    when = record.get("pulled")
    if not isinstance(when, (int, float)):
        return "-"
    return datetime.datetime.fromtimestamp(when).strftime("%Y-%m-%d %H:%M")


def cmd_images(session: Session, args: argparse.Namespace) -> int:
    store = session.store
    rows: list[dict[str, Any]] = []
    for ref, record, site in store.all_refs():
        try:
            image = images.load(store, ref, record)
        except Exception as exc:  # noqa: BLE001 - list what we can, flag the rest
            rows.append({"ref": str(ref), "name": ref.familiar, "site": site, "error": str(exc)})
            continue
        rows.append(
            {
                "ref": str(ref),
                "name": ref.familiar,
                "site": site,
                "id": image.id,
                "digest": str(image.manifest_digest),
                "platform": str(image.platform) if image.platform else None,
                "size": _size(image),
                "pulled": (record or {}).get("pulled"),
                "layers": [
                    {"digest": str(d.digest), "size": d.size, "mediaType": d.media_type}
                    for d in image.layers
                ],
            }
        )
    if args.json:
        _print_json(rows)
        return 0
    from ucore.builtin.progress import human

    print(
        f"{'REPOSITORY:TAG':<50} {'IMAGE ID':<12} {'STORED':<16} {'SIZE':>9}"
        + ("  PLATFORM" if args.show_platform else "")
    )
    for row in rows:
        if "error" in row:
            print(f"{row['name']:<50} ({row['error']})")
            continue
        line = (
            f"{row['name']:<50} {row['id'].split(':')[1][:12]:<12} "
            f"{_created(row):<16} {human(row['size']):>9}"
        )
        if args.show_platform:
            line += f"  {row['platform'] or '-'}"
        if row["site"]:
            line += "  (site)"
        print(line)
        if args.long:
            for layer in row["layers"]:
                print(f"    {layer['digest']}  {human(layer['size']):>9}")
    return 0


def cmd_inspect(session: Session, args: argparse.Namespace) -> int:
    """A container name or id first, then an image, as udocker resolves the argument."""
    from ucore.commands.containers import describe
    from ucore.storage import containers

    store = session.store
    container = containers.find(store, args.image)
    if container is not None:
        if args.print_path:
            print(container.root)
        else:
            _print_json(describe(session, container))
        return 0
    ref = images.lookup(store, args.image, session.config.registry)
    if args.print_path:
        raise UsageError(f"inspect -p: {args.image} is an image; -p needs a container")
    image = images.load(store, ref)
    _print_json(
        {
            "ref": str(ref),
            "id": image.id,
            "digest": str(image.manifest_digest),
            "index": str(image.index_digest) if image.index_digest else None,
            "platform": str(image.platform) if image.platform else None,
            "manifest": images.read_manifest(store, image),
            "config": read_config(store, image),
        }
    )
    return 0


def cmd_rmi(session: Session, args: argparse.Namespace) -> int:
    store = session.store
    for text in args.image:
        try:
            ref = images.lookup(store, text, session.config.registry)
        except NotFoundError:
            if args.force:
                continue
            raise
        removed = images.remove(store, ref, force=args.force)
        print(f"removed {ref.familiar} ({len(removed)} blobs freed)")
    return 0


def cmd_prune(session: Session, args: argparse.Namespace) -> int:
    from ucore.builtin.progress import human

    removed = images.prune(session.store)
    freed = sum(size for _digest, size in removed)
    if args.json:
        blobs = [{"digest": str(digest), "size": size} for digest, size in removed]
        print(json.dumps({"removed": blobs, "freed": freed}))
    else:
        print(f"{len(removed)} unused blobs removed, {human(freed)} freed")
    return 0


def cmd_tag(session: Session, args: argparse.Namespace) -> int:
    store = session.store
    source = images.lookup(store, args.source, session.config.registry)
    target = _ref(session, args.target)
    images.tag(store, source, target)
    return 0


def cmd_verify(session: Session, args: argparse.Namespace) -> int:
    store = session.store
    bad = 0
    for text in args.image:
        ref = images.lookup(store, text, session.config.registry)
        problems = images.verify(store, images.load(store, ref))
        for problem in problems:
            print(f"{ref.familiar}: {problem}")
        if problems:
            bad += 1
        else:
            print(f"{ref.familiar}: ok")
    if bad:
        raise IntegrityError(f"{bad} image(s) failed verification")
    return 0


def cmd_manifest_inspect(session: Session, args: argparse.Namespace) -> int:
    from ucore.builtin.registry.client import remote_manifest

    raw = remote_manifest(session, _ref(session, args.image))
    _print_json(json.loads(raw))
    return 0
