"""A tiny Docker token server (the ``Bearer realm=...`` side of registry auth) for tests.

docker-registry 2.8 with ``auth: token:`` sends clients here; we answer ``GET /token`` (and the
OAuth2 ``POST /token`` form that containerd uses) with an RS256 JWT whose ``x5c`` header holds a
self-signed certificate. The registry trusts that certificate through ``rootcertbundle``, checks
``iss`` and ``aud``, and grants what the ``access`` claim lists.

Signing uses the ``cryptography`` package when it is installed and the ``openssl`` command
otherwise, so the tests need neither a Docker installation nor a JWT library.
"""

from __future__ import annotations

import base64
import json
import secrets
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Optional
from urllib.parse import parse_qs, urlsplit

ISSUER = "ucore-test-issuer"
SERVICE = "ucore-test-registry"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class _Signer:
    """An RSA key and its self-signed certificate; signs JWTs with RS256."""

    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.key_path = workdir / "token-key.pem"
        self.cert_path = workdir / "token-cert.pem"
        try:
            self._init_cryptography()
        except ImportError:
            self._init_openssl()

    def _init_cryptography(self) -> None:
        import datetime

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import padding, rsa
        from cryptography.x509.oid import NameOID

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ucore test token signer")])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        self.cert_der = cert.public_bytes(serialization.Encoding.DER)
        self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

        def sign(data: bytes) -> bytes:
            return bytes(key.sign(data, padding.PKCS1v15(), hashes.SHA256()))

        self.sign = sign

    def _init_openssl(self) -> None:
        openssl = shutil.which("openssl")
        if openssl is None:
            raise RuntimeError("the token server needs the 'cryptography' package or openssl")
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
             "-subj", "/CN=ucore test token signer",
             "-keyout", str(self.key_path), "-out", str(self.cert_path)],
            check=True, capture_output=True,
        )  # fmt: skip
        self.cert_der = subprocess.run(
            [openssl, "x509", "-in", str(self.cert_path), "-outform", "DER"],
            check=True,
            capture_output=True,
        ).stdout

        def sign(data: bytes) -> bytes:
            return subprocess.run(
                [openssl, "dgst", "-sha256", "-sign", str(self.key_path)],
                input=data,
                check=True,
                capture_output=True,
            ).stdout

        self.sign = sign


@dataclass
class TokenRequest:
    """One request to the token endpoint, as the test sees it afterwards."""

    method: str
    path: str
    headers: dict[str, str]
    user: Optional[str]
    scopes: list[str]
    status: int = 0
    granted: list[dict[str, Any]] = field(default_factory=list)
    token: Optional[str] = None


class TokenServer:
    """Issues registry tokens on ``http://127.0.0.1:PORT/token``.

    :param users: ``{username: password}`` accepted as Basic credentials (or in the POST form).
    :param allow_anonymous_pull: whether a request without credentials gets ``pull`` rights.
        Either way it gets a token (as Docker Hub does for a private repository), but a token
        with no rights makes the registry answer 401 again: the client must give up, not loop.
    :param expires_in: token lifetime in seconds; small values let tests force a refresh.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        users: Optional[dict[str, str]] = None,
        allow_anonymous_pull: bool = True,
        expires_in: int = 300,
        issuer: str = ISSUER,
        service: str = SERVICE,
        host: str = "127.0.0.1",
    ) -> None:
        self.workdir = workdir
        self.users = dict(users or {})
        self.allow_anonymous_pull = allow_anonymous_pull
        self.expires_in = expires_in
        self.issuer = issuer
        self.service = service
        self.signer = _Signer(workdir)
        self.requests: list[TokenRequest] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer((host, 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread: Optional[threading.Thread] = None

    # --- what tests read -------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def realm(self) -> str:
        return f"{self.url}/token"

    @property
    def rootcertbundle(self) -> Path:
        return self.signer.cert_path

    @property
    def tokens_issued(self) -> int:
        with self._lock:
            return sum(1 for r in self.requests if r.token)

    def issued_tokens(self) -> list[str]:
        with self._lock:
            return [r.token for r in self.requests if r.token]

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    def challenge(self, scope: str, error: Optional[str] = None) -> str:
        """A ``WWW-Authenticate`` value as the registry sends it, for proxies faking a 401."""
        value = f'Bearer realm="{self.realm}",service="{self.service}",scope="{scope}"'
        return value + (f',error="{error}"' if error else "")

    def registry_auth(self) -> dict[str, Any]:
        """The ``auth`` section for :class:`ucore.testing.registry.RegistryServer`."""
        return {
            "token": {
                "realm": self.realm,
                "service": self.service,
                "issuer": self.issuer,
                "rootcertbundle": str(self.rootcertbundle),
            }
        }

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> TokenServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="tokenserver", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> TokenServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the token itself ------------------------------------------------------------------

    def make_token(self, subject: str, access: list[dict[str, Any]]) -> str:
        now = int(time.time())
        header = {
            "typ": "JWT",
            "alg": "RS256",
            "x5c": [base64.b64encode(self.signer.cert_der).decode()],
        }
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "exp": now + self.expires_in,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        signing_input = (
            f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
        )
        return f"{signing_input}.{b64url(self.signer.sign(signing_input.encode()))}"

    def grant(self, user: Optional[str], scopes: list[str]) -> list[dict[str, Any]]:
        """Authenticated users get what they ask for; anonymous ones at most ``pull``."""
        access = []
        for scope in scopes:
            for item in scope.split(" "):
                parts = item.split(":")
                if len(parts) < 3:
                    continue
                kind, name, actions = parts[0], ":".join(parts[1:-1]), parts[-1].split(",")
                if user is None:
                    actions = [a for a in actions if a == "pull" and self.allow_anonymous_pull]
                access.append({"type": kind, "name": name, "actions": actions})
        return access

    def check_credentials(self, username: Optional[str], password: Optional[str]) -> bool:
        return username is not None and self.users.get(username) == password


def _parse_basic(header: Optional[str]) -> Optional[tuple[str, str]]:
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        user, _, password = base64.b64decode(header[6:].strip()).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return ("", "")
    return user, password


def _handler_for(server: TokenServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _reply(self, record: TokenRequest, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            record.status = status
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if status == 401:
                self.send_header("WWW-Authenticate", 'Basic realm="ucore-test-token"')
            self.end_headers()
            self.wfile.write(data)

        def _handle(self, params: dict[str, list[str]]) -> None:
            creds = _parse_basic(self.headers.get("Authorization"))
            if creds is None and "username" in params:
                creds = (params["username"][0], params.get("password", [""])[0])
            scopes = params.get("scope", [])
            record = TokenRequest(
                method=self.command,
                path=self.path,
                headers={k.lower(): v for k, v in self.headers.items()},
                user=creds[0] if creds else None,
                scopes=scopes,
            )
            with server._lock:
                server.requests.append(record)
            if urlsplit(self.path).path != "/token":
                self._reply(record, 404, {"errors": [{"code": "NOT_FOUND"}]})
                return
            if params.get("service", [server.service])[0] != server.service:
                self._reply(
                    record, 400, {"errors": [{"code": "UNSUPPORTED", "message": "service"}]}
                )
                return
            if creds is not None and not server.check_credentials(*creds):
                self._reply(
                    record,
                    401,
                    {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]},
                )
                return
            user = creds[0] if creds else None
            record.granted = server.grant(user, scopes)
            token = server.make_token(user or "", record.granted)
            record.token = token
            self._reply(
                record,
                200,
                {
                    "token": token,
                    "access_token": token,
                    "expires_in": server.expires_in,
                    "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                },
            )

        def do_GET(self) -> None:
            self._handle(parse_qs(urlsplit(self.path).query))

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            form = parse_qs(self.rfile.read(length).decode(errors="replace"))
            if form.get("grant_type", ["password"])[0] != "password":
                # No refresh tokens are issued, so only the password grant makes sense.
                record = TokenRequest(self.command, self.path, {}, None, [])
                with server._lock:
                    server.requests.append(record)
                self._reply(record, 400, {"error": "unsupported_grant_type"})
                return
            self._handle(form)

    return Handler
