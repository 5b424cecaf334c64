"""HTTP to one registry: authentication challenges, retries, redirects, timeouts.

Rules kept here (from ``safety-rules.md``): every request has connect and read timeouts, and
every body a minimum speed (small documents a deadline), since a server that drips a byte before
each read timeout never trips one; 429
honours ``Retry-After`` up to a cap; 5xx, resets and timeouts retry with jittered backoff a
bounded number of times, and within a stall budget (see :class:`StallBudget`); a 401 refreshes
the token once, never in a loop; redirects never carry
``Authorization`` to another host and never downgrade https to http; Basic credentials go over
plain HTTP only to registries marked insecure (loopback counts, as in Docker).
"""

from __future__ import annotations

import builtins
import email.utils
import http.client
import ipaddress
import random
import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Callable, Optional, Union
from urllib.parse import SplitResult, urlencode, urljoin, urlsplit

import requests
import requests.adapters
import requests.auth
import urllib3

from ucore import __version__
from ucore.log import get_logger
from ucore.storage.manifest import load_json
from ucore.values.errors import AuthError, IntegrityError, RegistryError
from ucore.values.events import Retrying

if TYPE_CHECKING:
    from ucore.builtin.registry.credentials import Credentials

log = get_logger(__name__)

RETRY_STATUS = (500, 502, 503, 504)
REDIRECT_STATUS = (301, 302, 303, 307, 308)
MAX_REDIRECTS = 10
TRANSIENT = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    # Python 3.9: a socket read timeout is socket.timeout, not yet TimeoutError, and an
    # answer whose headers came but whose body never does can raise it through requests
    socket.timeout,
)
#: Failures that another attempt a second later would not change.
PERMANENT = ("connection refused", "unknown host")
#: The least a body must average, in bytes a second, over each read-timeout window (curl's
#: ``--speed-limit``): far below any real link, far above a server dripping to hold a pull.
MIN_RATE = 1024
#: The most one read asks for: what arrives is written at once, so an interrupted download
#: keeps nearly all it received for a resume.
READ_SIZE = 256 << 10
#: A token response is a few kilobytes of JSON.
MAX_TOKEN_RESPONSE = 1 << 20


class StallBudget:
    """The time one transfer (a request with its retries, or a blob with its resumes) may
    spend in all waiting on a peer that sends nothing.

    The read timeout bounds one wait, but the retries multiply it: 60 seconds times 5 attempts
    held a batch allocation five minutes for a registry that had stopped answering. So the
    waits add up here, from the last sign of life (a body byte, or a complete answer such as a
    503) to each failure, and each attempt's timeouts are cut to what is left. Progress stops
    the clock but refunds nothing, so a peer that sends a little and then falls silent on
    every attempt runs out too. One budget is used by one thread.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.spent = 0.0
        self._since = time.monotonic()

    def heard(self) -> None:
        """The peer sent something: the wait until now was not a stall."""
        self._since = time.monotonic()

    def failed(self) -> None:
        """An attempt ended with nothing: the wait since the last sign of life was a stall
        (and so is the pause before the next attempt, until something arrives)."""
        now = time.monotonic()
        self.spent += now - self._since
        self._since = now

    def left(self) -> float:
        """Seconds of waiting left, counting the wait in progress."""
        return self.seconds - self.spent - (time.monotonic() - self._since)

    def exhausted(self, peer: str, what: str = "") -> RegistryError:
        """The one-line error that ends the transfer (a partial blob stays for a resume);
        ``peer`` names who fell silent, ``what`` the transfer when that helps."""
        during = f" ({what})" if what else ""
        return RegistryError(
            f"{peer} stopped answering{during}: nothing received in {self.seconds:g} seconds"
            " of waiting; the stall_timeout setting allows longer"
        )


class TooSlow(TimeoutError):
    """A body arrived slower than :data:`MIN_RATE`, or a small document not within the read
    timeout."""


#: What a body read raises when the connection breaks, stalls or crawls mid-transfer.
BROKEN = (
    requests.RequestException,
    urllib3.exceptions.HTTPError,
    builtins.ConnectionError,
    TimeoutError,
    socket.timeout,  # Python 3.9 (an alias of TimeoutError from 3.10)
    http.client.HTTPException,
)
#: A token goes verbatim into an ``Authorization`` header: visible ASCII only (a line break
#: would make requests refuse the header, quoting the token in its error).
_TOKEN = re.compile(r"[!-~]+")
_CHALLENGE = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="…",service="…"`` → ("bearer", {"realm": …, "service": …})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {m[1].lower(): (m[2] if m[2] is not None else m[3]) for m in _CHALLENGE.finditer(rest)}
    return scheme.lower(), params


def is_loopback(host: str) -> bool:
    """Whether ``host[:port]`` is this machine by name or address (so plain HTTP to it is
    allowed, as Docker allows it): ``127.0.0.1.example.com`` is not."""
    split = split_url(f"//{host}")
    name = split.hostname if split is not None else None
    if name == "localhost":
        return True
    try:
        return name is not None and ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def split_url(url: str) -> Optional[SplitResult]:
    """``urlsplit``, or None for a malformed URL: ``urlsplit`` raises ``ValueError`` for some
    (``http://[x``) and only ``.port`` does for others (port 99999), and a registry's
    ``Location`` header or token realm can be any of them."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError when out of range or not a number
    except ValueError:
        return None
    return parts


def short_reason(exc: BaseException) -> str:
    if isinstance(exc, TooSlow):
        return f"too slow ({exc})"
    if isinstance(exc, requests.exceptions.InvalidHeader):
        return "malformed response headers"
    if isinstance(exc, ValueError):  # requests' InvalidURL and InvalidSchema are ValueErrors
        return "invalid URL"
    text = str(exc)
    for pattern, reason in (
        (r"Connection refused", "connection refused"),
        (r"Name or service not known|nodename nor servname|failure in name", "unknown host"),
        (r"timed out|Timeout", "timed out"),
        (r"reset by peer|RemoteDisconnected|Connection aborted", "connection reset"),
        (r"IncompleteRead|ended prematurely|Connection broken", "connection broken mid-transfer"),
        (r"SSL|TLS|certificate", "TLS error"),
    ):
        if re.search(pattern, text):
            return reason
    return type(exc).__name__


class _NoImplicitAuth(requests.auth.AuthBase):
    """The session's auth, adding nothing: without one, requests sends a ``~/.netrc`` password
    (or a URL's ``user:password``) to any host the URL names, such as the one a registry
    redirects a blob download to, or a foreign layer's."""

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        return r


class Transport:
    """Requests to one registry host, shared by the download threads of one pull."""

    def __init__(
        self,
        host: str,
        scheme: str,
        insecure: bool,
        credentials: Optional[Credentials],
        *,
        timeout: tuple[float, float],
        retries: int,
        max_retry_after: float,
        pool: int,
        emit: Callable[[Any], None],
        stall_timeout: float = 90.0,
    ) -> None:
        self.host = host
        self.scheme = scheme
        self.insecure = insecure
        self.credentials = credentials
        self.timeout = timeout
        self.retries = retries
        self.max_retry_after = max_retry_after
        self.stall_timeout = stall_timeout
        self.emit = emit
        self.http = requests.Session()
        self.http.auth = _NoImplicitAuth()
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=pool + 2)
        self.http.mount("https://", adapter)
        self.http.mount("http://", adapter)
        self.http.headers.update(
            {"User-Agent": f"ucore/{__version__}", "Accept-Encoding": "identity"}
        )
        self._tokens: dict[str, str] = {}
        self._basic = False
        self._lock = threading.Lock()
        self._scheme_checked = scheme == "http"

    @property
    def base(self) -> str:
        return f"{self.scheme}://{self.host}"

    def close(self) -> None:
        self.http.close()

    def budget(self) -> StallBudget:
        """A fresh stall budget for one transfer (see :class:`StallBudget`)."""
        return StallBudget(self.stall_timeout)

    def _timeouts(self, budget: StallBudget, peer: str) -> tuple[float, float]:
        """Connect and read timeouts for the next attempt, cut to what ``budget`` has left so
        that the last attempt ends when the budget does; raises when nothing is left."""
        left = budget.left()
        if left <= 0:
            raise budget.exhausted(peer)
        return min(self.timeout[0], left), min(self.timeout[1], left)

    # --- authentication ---------------------------------------------------------------------

    def _auth_header(self, scope: str) -> Optional[str]:
        token = self._tokens.get(scope)
        if token:
            return f"Bearer {token}"
        if self._basic and self.credentials:
            creds = self.credentials.lookup(self.host)
            if creds:
                return _basic(*creds)
        return None

    def _authenticate(self, resp: requests.Response, scope: str, had_auth: bool) -> None:
        header = resp.headers.get("WWW-Authenticate", "")
        scheme, params = parse_challenge(header)
        creds = self.credentials.lookup(self.host) if self.credentials else None
        if scheme == "basic":
            if not creds:
                raise AuthError(f"{self.host} requires a login: run 'ucore login {self.host}'")
            if had_auth:
                raise AuthError(f"{self.host} refused the credentials for {_who(creds)}")
            if self.scheme != "https" and not self.insecure:
                raise AuthError(f"refusing to send a password to {self.host} over plain HTTP")
            self._basic = True
            return
        if scheme != "bearer" or not params.get("realm"):
            raise AuthError(f"{self.host} asked for unsupported authentication {header[:60]!r}")
        realm = params["realm"]
        parts = split_url(realm)
        if parts is None or parts.scheme not in ("https", "http") or not parts.hostname:
            raise AuthError(f"{self.host} named an invalid token server {realm!r}")
        if creds and parts.scheme == "http" and not (self.insecure or is_loopback(parts.netloc)):
            raise AuthError(f"refusing to send a password to token server {realm} over HTTP")
        query = {"service": params.get("service", ""), "scope": params.get("scope") or scope}
        query = {k: v for k, v in query.items() if v}
        url = realm + ("&" if "?" in realm else "?") + urlencode(query)
        headers = {"Authorization": _basic(*creds)} if creds else {}
        # Token servers rate-limit and fail like registries: the same retries.
        server = f"token server {parts.netloc}"
        budget = self.budget()
        attempt = 0
        while True:
            timeout = self._timeouts(budget, server)
            try:
                tresp = self._send(
                    "GET", url, headers, stream=True, timeout=timeout, auth_host=parts.netloc
                )
            except TRANSIENT as exc:
                budget.failed()
                attempt = self._failed(url, attempt, exc, server, server, budget=budget)
                continue
            if tresp.status_code != 429 and tresp.status_code not in RETRY_STATUS:
                break
            attempt = self._failed(url, attempt, tresp, server, server)
            budget.heard()
        with tresp:
            if tresp.status_code in (401, 403):
                if creds:
                    raise AuthError(f"{self.host} refused the credentials for {_who(creds)}")
                raise AuthError(f"{self.host} requires a login: run 'ucore login {self.host}'")
            if tresp.status_code != 200:
                raise RegistryError(f"token server {parts.netloc} answered {tresp.status_code}")
            raw = self.read_document(tresp, MAX_TOKEN_RESPONSE, f"token server {parts.netloc}")
        try:
            body = load_json(raw, "token response")
        except IntegrityError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        token = body.get("token") or body.get("access_token")
        if not isinstance(token, str) or not _TOKEN.fullmatch(token):
            raise RegistryError(f"token server {parts.netloc} returned no usable token")
        with self._lock:
            self._tokens[scope] = token

    # --- bodies -----------------------------------------------------------------------------

    def body(self, resp: requests.Response) -> Iterator[bytes]:
        """The body as sent (never content-decoded: digests are of these bytes), what one
        system call brings at a time (``read1``: a plain read waits to fill its buffer, one
        read timeout per dripped byte), so that a crawling server is noticed between reads.

        Raises :class:`TooSlow` when less than :data:`MIN_RATE` bytes a second arrived over a
        read-timeout window.
        """
        fp = resp.raw._fp  # the http.client response, as urllib3 1.26 and 2 keep it
        assert fp is not None, "a response opened with stream=True has its body unread"
        read1 = fp.read1
        window = self.timeout[1]
        start, received = time.monotonic(), 0
        while chunk := read1(READ_SIZE):
            yield chunk
            received += len(chunk)
            elapsed = time.monotonic() - start
            if elapsed >= window:
                if received < MIN_RATE * elapsed:
                    raise TooSlow(f"under {MIN_RATE} bytes a second")
                start, received = time.monotonic(), 0

    def read_document(self, resp: requests.Response, limit: int, what: str) -> bytes:
        """A small document (manifest, token response) whole: one over ``limit`` bytes is
        refused, and so is one still arriving after the read timeout or cut short. ``what``
        names it in messages."""
        length = resp.headers.get("Content-Length", "")
        expected = int(length) if length.isascii() and length.isdigit() else None
        if expected is not None and expected > limit:
            raise IntegrityError(f"{what} is larger than the limit")
        deadline = time.monotonic() + self.timeout[1]
        data = bytearray()
        try:
            for chunk in self.body(resp):
                data += chunk
                if len(data) > limit:
                    raise IntegrityError(f"{what} is larger than the limit")
                if time.monotonic() > deadline:
                    raise TooSlow(f"not complete after {self.timeout[1]:g} seconds")
            if expected is not None and len(data) < expected:
                raise http.client.IncompleteRead(bytes(data), expected - len(data))
        except BROKEN as exc:
            raise RegistryError(f"{what}: {short_reason(exc)}") from None
        return bytes(data)

    # --- sending ----------------------------------------------------------------------------

    def _send(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        stream: bool,
        *,
        timeout: tuple[float, float],
        auth_host: Optional[str] = None,
    ) -> requests.Response:
        """One request, following redirects by hand so credentials stay with their host;
        ``timeout`` is (connect, read), as :meth:`_timeouts` cuts it."""
        origin = auth_host or self.host
        for _ in range(MAX_REDIRECTS + 1):
            try:
                resp = self.http.request(
                    method,
                    url,
                    headers=headers,
                    stream=stream,
                    timeout=timeout,
                    allow_redirects=False,
                )
            except TRANSIENT:
                raise
            except (requests.RequestException, ValueError) as exc:
                # ValueError: requests parses a malformed Location even with redirects off.
                raise RegistryError(f"{self.host}: {short_reason(exc)}") from None
            if resp.status_code not in REDIRECT_STATUS or "Location" not in resp.headers:
                return resp
            location = resp.headers["Location"]
            resp.close()
            try:
                target = urljoin(url, location)
            except ValueError:
                target = ""
            old, new = urlsplit(url), split_url(target)
            if new is None:
                raise RegistryError(f"{self.host} sent an invalid redirect")
            if old.scheme == "https" and new.scheme != "https":
                raise RegistryError(f"refusing redirect from https to {new.scheme}: {target}")
            if new.scheme not in ("http", "https") or not new.hostname:
                raise RegistryError(f"refusing redirect to {target}")
            if new.netloc != origin:
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            url = target
        raise RegistryError(f"too many redirects from {self.host}")

    def request(
        self,
        method: str,
        path: str,
        scope: str,
        headers: Optional[dict[str, str]] = None,
        stream: bool = False,
        *,
        budget: Optional[StallBudget] = None,
    ) -> requests.Response:
        """Send with authentication and retries; returns any final response (caller checks).

        ``path`` is relative to the registry, or an absolute https URL (a foreign layer),
        which is fetched without credentials. ``budget`` is the transfer's stall budget when
        the caller retries too (a blob's resumes); by default the request has its own. The
        caller reads the body and tells the budget of the bytes: headers alone are no answer,
        since a peer that sends them and then nothing is the stall this guards against.
        """
        external = path.startswith("https://")
        budget = budget or self.budget()
        attempt = 0
        refreshed = False
        while True:
            hdrs = dict(headers or {})
            auth = None if external else self._auth_header(scope)
            if auth:
                hdrs["Authorization"] = auth
            url = path if external else self.base + path
            netloc = urlsplit(url).netloc
            timeout = self._timeouts(budget, netloc)
            try:
                resp = self._send(method, url, hdrs, stream, timeout=timeout, auth_host=netloc)
            except requests.exceptions.SSLError as exc:
                budget.failed()
                if not self._scheme_checked and self.insecure:
                    log.info("registry does not speak TLS, using plain HTTP", host=self.host)
                    self.scheme, self._scheme_checked = "http", True
                    continue
                raise RegistryError(f"TLS error talking to {self.host}: {_first(exc)}") from None
            except TRANSIENT as exc:
                budget.failed()
                if not self._scheme_checked and self.insecure and self.scheme == "https":
                    self.scheme, self._scheme_checked = "http", True
                    continue
                attempt = self._failed(
                    url, attempt, exc, self.host, f"cannot reach {self.host}", budget=budget
                )
                continue
            self._scheme_checked = True
            if resp.status_code == 401 and external:
                resp.close()
                raise AuthError(f"{urlsplit(url).netloc} wants credentials for a foreign layer")
            if resp.status_code == 401 and not refreshed:
                resp.close()
                refreshed = True
                self._authenticate(resp, scope, had_auth=auth is not None)
                continue
            if resp.status_code == 401:
                resp.close()
                creds = self.credentials.lookup(self.host) if self.credentials else None
                if creds:
                    raise AuthError(f"{self.host} refused the credentials for {_who(creds)}")
                raise AuthError(f"{self.host} requires a login: run 'ucore login {self.host}'")
            if resp.status_code == 429 or resp.status_code in RETRY_STATUS:
                attempt = self._failed(url, attempt, resp, self.host, f"cannot reach {self.host}")
                budget.heard()  # an answer, however unwelcome: the registry is not silent
                continue
            return resp

    def _failed(
        self,
        url: str,
        attempt: int,
        failure: Union[BaseException, requests.Response],
        name: str,
        unreachable: str,
        *,
        budget: Optional[StallBudget] = None,
    ) -> int:
        """One more failed attempt at ``url``: a transient error, or a 429 or 5xx answer
        (closed here). Raises when the attempts are spent (or the error will not pass, such
        as an unknown host), or for an error when ``budget`` is; otherwise waits (no longer
        than the budget has left) and returns the count. ``name`` says who kept answering,
        ``unreachable`` starts the message for an error."""
        attempt += 1
        if isinstance(failure, requests.Response):
            failure.close()
            if attempt >= self.retries:
                raise RegistryError(
                    f"{name} kept answering {failure.status_code} after {attempt} attempts"
                )
            self._pause(url, f"HTTP {failure.status_code}", attempt, failure)
            return attempt
        reason = short_reason(failure)
        if reason in PERMANENT:
            raise RegistryError(f"{unreachable}: {reason}") from None
        if budget is not None and budget.left() <= 0:
            raise budget.exhausted(name) from None
        if attempt >= self.retries:
            raise RegistryError(f"{unreachable}: {reason}") from None
        self._pause(url, reason, attempt, None, budget.left() if budget is not None else None)
        return attempt

    def _pause(
        self,
        url: str,
        reason: str,
        attempt: int,
        resp: Optional[requests.Response],
        most: Optional[float] = None,
    ) -> None:
        """Wait before retrying ``url`` (the full URL: a foreign layer or a token server is
        not under :attr:`base`), at most ``most`` seconds (what a stall budget has left)."""
        delay = min(0.25 * 2 ** (attempt - 1), 8.0) * random.uniform(0.5, 1.0)
        if resp is not None and resp.status_code == 429:
            after = _retry_after(resp.headers.get("Retry-After"))
            if after is not None:
                delay = min(after, self.max_retry_after)
        if most is not None:
            delay = max(0.0, min(delay, most))
        log.info("retrying", url=url, reason=reason, delay=round(delay, 2))
        self.emit(Retrying(url=url, reason=reason, attempt=attempt, delay=delay))
        time.sleep(delay)


def _retry_after(value: Optional[str]) -> Optional[float]:
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # "²".isdigit() too, and float() refuses it
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: a year past 2**31
        return None
    return max(0.0, when.timestamp() - time.time())


def _basic(user: str, password: str) -> str:
    import base64

    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _who(creds: tuple[str, str]) -> str:
    return f"user {creds[0]!r}"


def _first(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
