"""Tarball commands: load (docker-save or OCI layout, file or stdin) and save."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from ucore import images
from ucore.commands import write_beside
from ucore.errors import UsageError

if TYPE_CHECKING:
    from ucore.session import Session


def add_commands(sub: Any, common: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    p = sub.add_parser(
        "load", parents=[common], help="load images from a docker-save or OCI-layout tarball"
    )
    p.add_argument("-i", "--input", default="-", metavar="FILE", help="tarball (default stdin)")
    p.add_argument("--tag", metavar="NAME", help="name for an archive that names no image")
    p.set_defaults(handler=cmd_load)
    q = sub.add_parser("save", parents=[common], help="write images as a docker-save tarball")
    q.add_argument("-o", "--output", default="-", metavar="FILE", help="tarball (default stdout)")
    q.add_argument("image", metavar="IMAGE", nargs="+")
    q.set_defaults(handler=cmd_save)
    return {"load": p, "save": q}


def cmd_load(session: Session, args: argparse.Namespace) -> int:
    from ucore.archive import load

    if args.input == "-":
        if sys.stdin is None or sys.stdin.isatty():  # None: descriptor 0 closed
            raise UsageError("load: give -i FILE or pipe a tarball into stdin")
        stream = sys.stdin.buffer
        with session.stage("load", "stdin"):
            loaded = load(session.store, stream, args.tag)
    else:
        try:
            f = open(args.input, "rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise UsageError(f"load: cannot read {args.input}: {exc.strerror}") from None
        with f, session.stage("load", args.input):
            loaded = load(session.store, f, args.tag)
    for ref in loaded:
        print(f"loaded {ref.familiar}")
    return 0


def cmd_save(session: Session, args: argparse.Namespace) -> int:
    from ucore.archive import save

    store = session.store
    refs = [images.lookup(store, text, session.config.registry) for text in args.image]
    if args.output == "-":
        if sys.stdout is None:  # descriptor 1 closed
            raise UsageError("save: no stdout to write to; use -o FILE")
        if sys.stdout.isatty():
            raise UsageError("save: refusing to write a tarball to a terminal; use -o FILE")
        save(store, refs, sys.stdout.buffer)
        return 0
    write_beside(args.output, "save", lambda out: save(store, refs, out))
    return 0
