"""A reverse proxy in front of a real registry that misbehaves on request, and remembers.

Real registries and the CDNs behind them truncate bodies, reset connections, rate-limit,
redirect blob downloads to another host, and occasionally serve corrupt bytes. The client must
survive all of it, and tests must see what it did in return (how often it fetched each blob,
whether it resumed with ``Range``, whether an ``Authorization`` header followed a redirect).
So every request is recorded, and each fault fires a bounded number of times on requests whose
method and path match.

The proxy speaks HTTP/1.1 with keep-alive to the client and opens a fresh upstream connection
per request; it forwards ``Host`` unchanged, so ``Location`` headers and token realms keep
pointing where the client expects.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional
from urllib.parse import urlsplit

BLOB_PATH = r"/v2/.+/blobs/sha256:[0-9a-f]{64}"
MANIFEST_PATH = r"/v2/.+/manifests/"
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
}
CHUNK = 16 * 1024


def raw_response(status: int, headers: list[tuple[str, str]], body: bytes = b"") -> bytes:
    """The bytes of a response for :meth:`FaultProxy.raw`: headers go out as given, repeated
    names and all, with no ``Content-Length`` added."""
    head = "".join(f"{name}: {value}\r\n" for name, value in headers)
    return f"HTTP/1.1 {status} Hostile\r\n{head}\r\n".encode("latin-1") + body


@dataclass
class Recorded:
    """One request as the proxy saw it; ``headers`` keys are lower case."""

    method: str
    path: str
    headers: dict[str, str]
    started: float
    status: int = 0
    bytes_sent: int = 0
    fault: Optional[str] = None
    finished: Optional[float] = None

    @property
    def digest(self) -> Optional[str]:
        """The ``sha256:...`` a blob or by-digest manifest request names, if any."""
        match = re.search(r"(sha256:[0-9a-f]{64})", self.path)
        return match.group(1) if match else None


@dataclass
class Fault:
    """Fires on requests whose method is in ``methods`` and whose path matches ``match``,
    ``times`` times (None: forever). ``kind`` picks the behaviour; ``options`` tunes it."""

    kind: str
    match: str = BLOB_PATH
    times: Optional[int] = 1
    methods: tuple[str, ...] = ("GET",)
    options: dict[str, Any] = field(default_factory=dict)
    fired: int = 0

    def applies(self, method: str, path: str) -> bool:
        return (
            method in self.methods
            and re.search(self.match, path) is not None
            and (self.times is None or self.fired < self.times)
        )


class FaultProxy:
    """Reverse proxy from ``http://HOST:PORT`` to ``upstream`` (a registry base URL).

    Faults (each returns the :class:`Fault`, whose ``fired`` counts how often it hit):

    - :meth:`fail` answer a status (429 with ``Retry-After``, 503, …) without forwarding;
    - :meth:`reset` reset the TCP connection instead of answering;
    - :meth:`truncate` send the headers and ``after`` bytes of the body, then close;
    - :meth:`corrupt` flip one byte of the body (same length, wrong digest);
    - :meth:`throttle` pace the body at ``bytes_per_second``;
    - :meth:`stall` send ``after`` bytes, then wait until :meth:`release` (for kill tests);
    - :meth:`redirect` answer 307 to the same path on another server (object storage);
    - :meth:`serve` answer with canned status, headers and body (hostile manifests);
    - :meth:`raw` write a response byte for byte, optionally dripped (broken framing).
    """

    def __init__(self, upstream: str, host: str = "127.0.0.1", port: int = 0) -> None:
        split = urlsplit(upstream)
        if split.scheme != "http" or not split.hostname:
            raise ValueError(f"upstream must be an http:// URL, not {upstream!r}")
        self.upstream_host = split.hostname
        self.upstream_port = split.port or 80
        self.log: list[Recorded] = []
        self.faults: list[Fault] = []
        self._lock = threading.Lock()
        self._released = threading.Event()
        self.stalled = threading.Event()
        self._httpd = ThreadingHTTPServer((host, port), _handler_for(self))
        self._httpd.daemon_threads = True
        self._httpd.request_queue_size = 128
        self._thread: Optional[threading.Thread] = None

    # --- addresses -------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return str(self._httpd.server_address[0])

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def address(self) -> str:
        """``host:port``, the registry part of an image reference."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name=f"faultproxy-{self.port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release()
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reset_state(self) -> None:
        """Forget faults and the request log (between tests sharing one proxy)."""
        self.release()
        with self._lock:
            self.faults.clear()
            self.log.clear()
        self._released.clear()
        self.stalled.clear()

    # --- faults ----------------------------------------------------------------------------

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def fail(
        self,
        status: int,
        *,
        times: Optional[int] = 1,
        match: str = BLOB_PATH,
        retry_after: Optional[str] = None,
        methods: tuple[str, ...] = ("GET", "HEAD"),
        headers: Optional[dict[str, str]] = None,
    ) -> Fault:
        """Answer ``status`` instead of forwarding; ``headers`` adds e.g. a ``WWW-Authenticate``
        challenge to a 401 that simulates a token expiring mid-pull."""
        opts = {"status": status, "retry_after": retry_after, "headers": headers or {}}
        return self.add(Fault("status", match, times, methods, opts))

    def reset(self, times: Optional[int] = 1, match: str = BLOB_PATH) -> Fault:
        return self.add(Fault("reset", match, times))

    def truncate(self, after: int, times: Optional[int] = 1, match: str = BLOB_PATH) -> Fault:
        return self.add(Fault("truncate", match, times, options={"after": after}))

    def corrupt(
        self, times: Optional[int] = None, match: str = BLOB_PATH, offset: Optional[int] = None
    ) -> Fault:
        """Flip the byte at ``offset`` of the body (default: the middle)."""
        return self.add(Fault("corrupt", match, times, options={"offset": offset}))

    def throttle(
        self, bytes_per_second: int, times: Optional[int] = None, match: str = BLOB_PATH
    ) -> Fault:
        return self.add(Fault("throttle", match, times, options={"rate": bytes_per_second}))

    def stall(self, after: int, times: Optional[int] = 1, match: str = BLOB_PATH) -> Fault:
        """After ``after`` body bytes, set :attr:`stalled` and hold until :meth:`release`."""
        self._released.clear()
        self.stalled.clear()
        return self.add(Fault("stall", match, times, options={"after": after}))

    def inject_headers(
        self, headers: dict[str, str], times: Optional[int] = None, match: str = BLOB_PATH
    ) -> Fault:
        """Add or replace response headers, e.g. ``Content-Encoding: gzip`` on a gzip blob, as
        object stores configured for browsers do (a client must hash the bytes as sent)."""
        return self.add(Fault("headers", match, times, options={"headers": headers}))

    def mangle_range(
        self, mode: str = "ignore", by: int = 1000, times: Optional[int] = 1, match: str = BLOB_PATH
    ) -> Fault:
        """On requests that carry ``Range``: ``ignore`` drops it (the server answers 200 with
        the whole body), ``shift`` asks upstream for ``by`` bytes earlier (a 206 whose
        ``Content-Range`` does not start where the client asked)."""
        if mode not in ("ignore", "shift"):
            raise ValueError(mode)
        return self.add(Fault("range", match, times, options={"mode": mode, "by": by}))

    def release(self) -> None:
        self._released.set()

    def redirect(
        self, target: str, times: Optional[int] = None, match: str = BLOB_PATH, status: int = 307
    ) -> Fault:
        """Send blob GETs to ``target`` (a base URL), with a query string as presigned URLs have."""
        return self.add(
            Fault(
                "redirect", match, times, options={"target": target.rstrip("/"), "status": status}
            )
        )

    def serve(
        self,
        path: str,
        *,
        body: bytes,
        status: int = 200,
        headers: Optional[dict[str, str]] = None,
        times: Optional[int] = None,
        methods: tuple[str, ...] = ("GET", "HEAD"),
    ) -> Fault:
        """Answer requests for exactly ``path`` (query ignored) with canned content."""
        return self.add(
            Fault(
                "serve",
                "^" + re.escape(path) + r"(\?|$)",
                times,
                methods,
                {"status": status, "body": body, "headers": headers or {}},
            )
        )

    def raw(
        self,
        data: bytes,
        *,
        match: str = BLOB_PATH,
        piece: int = 0,
        interval: float = 0.0,
        times: Optional[int] = None,
        methods: tuple[str, ...] = ("GET", "HEAD"),
    ) -> Fault:
        """Write ``data`` verbatim (status line, headers, body), then close the connection:
        what :meth:`serve` cannot produce, such as a missing or lying ``Content-Length``, broken
        chunked encoding, or, with ``piece`` bytes every ``interval`` seconds, a body that
        trickles in just fast enough to beat any read timeout."""
        opts = {"data": data, "piece": piece or len(data), "interval": interval}
        return self.add(Fault("raw", match, times, methods, opts))

    # --- what tests read -------------------------------------------------------------------

    def requests(self, method: Optional[str] = None, match: Optional[str] = None) -> list[Recorded]:
        with self._lock:
            return [
                r
                for r in self.log
                if (method is None or r.method == method)
                and (match is None or re.search(match, r.path))
            ]

    def blob_downloads(self, digest: Optional[str] = None) -> list[Recorded]:
        """Blob GETs answered with content (200 or 206), optionally only those for ``digest``."""
        return [
            r
            for r in self.requests("GET", BLOB_PATH)
            if r.status in (200, 206) and (digest is None or r.digest == digest)
        ]

    def download_counts(self) -> dict[str, int]:
        """How many times each blob was served with content (a resumed ``Range`` GET counts)."""
        counts: dict[str, int] = {}
        for r in self.blob_downloads():
            if r.digest:
                counts[r.digest] = counts.get(r.digest, 0) + 1
        return counts

    # --- internals -------------------------------------------------------------------------

    def _take(
        self, method: str, path: str, kinds: tuple[str, ...], ranged: bool = False
    ) -> Optional[Fault]:
        with self._lock:
            for fault in self.faults:
                if fault.kind == "range" and not ranged:
                    continue
                if fault.kind in kinds and fault.applies(method, path):
                    fault.fired += 1
                    return fault
        return None


def _handler_for(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self._proxy()

        do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

        # -- helpers --

        def _send_simple(
            self, rec: Recorded, status: int, body: bytes, headers: dict[str, str]
        ) -> None:
            rec.status = status
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
                rec.bytes_sent = len(body)

        def _send_raw(self, rec: Recorded, data: bytes, piece: int, interval: float) -> None:
            match = re.match(rb"HTTP/1\.[01] (\d{3})", data)
            rec.status = int(match.group(1)) if match else 0
            self.close_connection = True
            for start in range(0, len(data), piece):
                if start and interval:
                    time.sleep(interval)
                self.wfile.write(data[start : start + piece])
                self.wfile.flush()
                rec.bytes_sent += len(data[start : start + piece])

        def _reset(self) -> None:
            """SO_LINGER 0 makes close() send RST instead of FIN."""
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()

        def _proxy(self) -> None:
            rec = Recorded(
                method=self.command,
                path=self.path,
                headers={k.lower(): v for k, v in self.headers.items()},
                started=time.monotonic(),
            )
            with proxy._lock:
                proxy.log.append(rec)
            length = int(self.headers.get("Content-Length") or 0)
            request_body = self.rfile.read(length) if length else None
            try:
                self._dispatch(rec, request_body)
            except (OSError, http.client.HTTPException):
                # The client went away (killed, gave up) or upstream died mid-body.
                self.close_connection = True
            finally:
                rec.finished = time.monotonic()

        def _dispatch(self, rec: Recorded, request_body: Optional[bytes]) -> None:
            method, path = self.command, self.path
            fault = proxy._take(method, path, ("serve", "status", "reset", "redirect", "raw"))
            if fault is not None:
                rec.fault = fault.kind
                opts = fault.options
                if fault.kind == "serve":
                    self._send_simple(rec, opts["status"], opts["body"], opts["headers"])
                elif fault.kind == "status":
                    headers = {"Content-Type": "application/json", **opts["headers"]}
                    if opts["retry_after"] is not None:
                        headers["Retry-After"] = str(opts["retry_after"])
                    body = json.dumps(
                        {
                            "errors": [
                                {
                                    "code": "TOOMANYREQUESTS"
                                    if opts["status"] == 429
                                    else "UNAVAILABLE",
                                    "message": "injected fault",
                                }
                            ]
                        }
                    ).encode()
                    self._send_simple(rec, opts["status"], body, headers)
                elif fault.kind == "reset":
                    self._reset()
                elif fault.kind == "raw":
                    self._send_raw(rec, opts["data"], opts["piece"], opts["interval"])
                else:
                    sep = "&" if "?" in path else "?"
                    location = f"{opts['target']}{path}{sep}X-Amz-Signature=ucore-test"
                    self._send_simple(rec, opts["status"], b"", {"Location": location})
                return
            body_fault = proxy._take(method, path, ("truncate", "corrupt", "throttle", "stall"))
            if body_fault is not None:
                rec.fault = body_fault.kind
            header_fault = proxy._take(method, path, ("headers",))
            range_fault = proxy._take(method, path, ("range",), ranged="Range" in self.headers)
            if range_fault is not None:
                rec.fault = ",".join(filter(None, (rec.fault, "range")))
            self._forward(rec, request_body, body_fault, header_fault, range_fault)

        def _forward(
            self,
            rec: Recorded,
            request_body: Optional[bytes],
            fault: Optional[Fault],
            header_fault: Optional[Fault],
            range_fault: Optional[Fault],
        ) -> None:
            conn = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=60)
            try:
                conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for key, value in self.headers.items():
                    lower = key.lower()
                    if lower in HOP_BY_HOP or lower == "content-length":
                        continue
                    if lower == "range" and range_fault is not None:
                        if range_fault.options["mode"] == "ignore":
                            continue
                        start = int(re.findall(r"\d+", value)[0])
                        shifted = max(0, start - int(range_fault.options["by"]))
                        value = re.sub(r"\d+", str(shifted), value, count=1)  # noqa: PLW2901
                    conn.putheader(key, value)
                if "host" not in {k.lower() for k in self.headers}:
                    conn.putheader("Host", f"{proxy.upstream_host}:{proxy.upstream_port}")
                if request_body is not None:
                    conn.putheader("Content-Length", str(len(request_body)))
                conn.endheaders(request_body)
                upstream = conn.getresponse()
                extra = header_fault.options["headers"] if header_fault else {}
                self._relay(rec, upstream, fault, extra)
            except (ConnectionRefusedError, http.client.HTTPException, OSError) as err:
                if rec.status:  # the client already has headers: nothing sensible to add
                    raise
                self._send_simple(
                    rec, 502, f"upstream: {err}".encode(), {"Content-Type": "text/plain"}
                )
            finally:
                conn.close()

        def _relay(
            self,
            rec: Recorded,
            upstream: http.client.HTTPResponse,
            fault: Optional[Fault],
            extra_headers: dict[str, str],
        ) -> None:
            replaced = {k.lower() for k in extra_headers} | HOP_BY_HOP
            headers = [(k, v) for k, v in upstream.getheaders() if k.lower() not in replaced]
            headers += list(extra_headers.items())
            declared = upstream.getheader("Content-Length")
            no_body = (
                self.command == "HEAD"
                or upstream.status in (204, 304)
                or 100 <= upstream.status < 200
            )
            if declared is None and not no_body:
                data = upstream.read()
                headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
                headers.append(("Content-Length", str(len(data))))
                chunks: Any = iter([data])
            else:
                chunks = iter(lambda: upstream.read(CHUNK), b"")
            rec.status = upstream.status
            self.send_response(upstream.status)
            for key, value in headers:
                self.send_header(key, value)
            self.end_headers()
            if no_body:
                return
            total = int(declared) if declared is not None else None
            opts = fault.options if fault else {}
            kind = fault.kind if fault else None
            offset = opts.get("offset")
            flip_at: int = (total or 0) // 2 if offset is None else int(offset)
            start = time.monotonic()
            for raw in chunks:
                chunk, sent = raw, rec.bytes_sent
                if kind == "corrupt" and sent <= flip_at < sent + len(chunk):
                    i = flip_at - sent
                    chunk = chunk[:i] + bytes([chunk[i] ^ 0xFF]) + chunk[i + 1 :]
                if kind in ("truncate", "stall") and sent + len(chunk) >= opts["after"]:
                    head = chunk[: opts["after"] - sent]
                    self.wfile.write(head)
                    rec.bytes_sent += len(head)
                    if kind == "truncate":
                        self.wfile.flush()
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    proxy.stalled.set()
                    proxy._released.wait(120)
                    chunk = chunk[len(head) :]
                    kind = None
                self.wfile.write(chunk)
                rec.bytes_sent += len(chunk)
                if kind == "throttle":
                    ahead = rec.bytes_sent / opts["rate"] - (time.monotonic() - start)
                    if ahead > 0:
                        time.sleep(ahead)

    return Handler
