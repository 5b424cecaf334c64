"""Registry credentials: login and logout (udocker's and Docker's option names)."""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import TYPE_CHECKING, Any

from ucore.values.errors import UsageError
from ucore.values.hub import DOCKER_HUB

if TYPE_CHECKING:
    from ucore.session import Session


def add_commands(sub: Any, common: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    p = sub.add_parser("login", parents=[common], help="store credentials for a registry")
    p.add_argument("server", metavar="SERVER", nargs="?", help="registry host (default Docker Hub)")
    p.add_argument("--registry", help="same as SERVER (udocker's spelling)")
    p.add_argument("-u", "--username")
    p.add_argument("-p", "--password", help="visible to other users in ps: prefer --password-stdin")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    p.set_defaults(handler=cmd_login)

    q = sub.add_parser("logout", parents=[common], help="forget credentials for a registry")
    q.add_argument("server", metavar="SERVER", nargs="?")
    q.add_argument("--registry")
    q.add_argument("-a", "--all", action="store_true", help="forget every stored credential")
    q.set_defaults(handler=cmd_logout)
    return {"login": p, "logout": q}


def _server(args: argparse.Namespace) -> str:
    from ucore.builtin.registry.credentials import normalize_server
    from ucore.values.oci import registry_problem

    if args.server and args.registry and args.server != args.registry:
        raise UsageError("give the registry either as SERVER or with --registry, not both")
    server = normalize_server(args.server or args.registry or DOCKER_HUB)
    problem = registry_problem(server)
    if problem:
        raise UsageError(f"invalid registry: {problem}")
    return server


def cmd_login(session: Session, args: argparse.Namespace) -> int:
    from ucore.builtin.registry.credentials import Credentials

    server = _server(args)
    if args.password is not None and args.password_stdin:
        raise UsageError("--password and --password-stdin are mutually exclusive")
    user = args.username
    if not user:
        if sys.stdin is None or not sys.stdin.isatty():  # None: descriptor 0 closed
            raise UsageError("--username is required when stdin is not a terminal")
        user = input("Username: ").strip()
    if args.password_stdin:
        password = _password_from_stdin()
    elif args.password is not None:
        password = args.password
    elif sys.stdin is not None and sys.stdin.isatty():
        password = getpass.getpass("Password: ")
    else:
        raise UsageError("no password: use --password-stdin in scripts")
    if not user or not password:
        raise UsageError("username and password must not be empty")
    if ":" in user:
        raise UsageError("the username must not contain ':' (Basic credentials would be ambiguous)")
    for what, text in (("username", user), ("password", password)):
        try:
            text.encode()
        except UnicodeEncodeError:  # bytes from argv that are not UTF-8
            raise UsageError(f"the {what} is not valid UTF-8") from None
    from ucore.builtin.registry.client import DistributionClient

    credentials = Credentials(session.store)
    credentials.check()
    DistributionClient(session).check_login(server, user, password)
    credentials.save(server, user, password)
    print(f"login succeeded: credentials for {server} saved")
    return 0


#: Registry passwords and tokens are at most a few KiB; ``yes | ucore login`` must end.
MAX_PASSWORD = 64 << 10


def _password_from_stdin() -> str:
    """All of stdin less one final line break (``\\n``, then ``\\r``), as ``docker login
    --password-stdin`` reads it, so that a password piped to both is the same password."""
    if sys.stdin is None:  # descriptor 0 closed
        raise UsageError("--password-stdin: no stdin")
    data = sys.stdin.buffer.read(MAX_PASSWORD + 1)
    if len(data) > MAX_PASSWORD:
        raise UsageError(f"the password on stdin is longer than {MAX_PASSWORD} bytes")
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise UsageError("the password on stdin is not valid UTF-8") from None
    return text.removesuffix("\n").removesuffix("\r")


def cmd_logout(session: Session, args: argparse.Namespace) -> int:
    from ucore.builtin.registry.credentials import Credentials

    creds = Credentials(session.store)
    if args.all:
        creds.remove_all()
        print("all stored credentials removed")
        return 0
    server = _server(args)
    if creds.remove(server):
        print(f"credentials for {server} removed")
    else:
        print(f"no stored credentials for {server}")
    return 0
