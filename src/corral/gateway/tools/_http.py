"""The executor of ``http`` tools, and its SSRF guard.

A call maps the tool's arguments onto its request (``spec.http.parameters``: path, query,
header, JSON body), injects credentials (``${secret:NAME}`` in the configured headers and
query, rendered by the credential broker only now, never from the model's arguments), sends
the request with ``httpx`` and turns the response into tool output: a status line, the
content type and the body. HTTP 4xx and 5xx are tool errors.

The SSRF guard runs where connections are made: every connection (the first request and
every redirect) resolves the host, refuses it when any address is private, loopback,
link-local, unspecified, multicast, reserved or otherwise not globally routable (IPv4-mapped,
6to4, Teredo and NAT64 IPv6 addresses are judged by the IPv4 address they carry) unless the
tool's ``allow_hosts`` names the host or a network holding the address, and then connects to
exactly the address it checked, so a DNS answer cannot change between check and use
(OWASP SSRF Prevention Cheat Sheet).
"""

from __future__ import annotations

import functools
import ipaddress
import json
import socket
from collections.abc import Iterable, Mapping
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import anyio
import httpcore

from corral.contracts import HttpToolSpec, Tool
from corral.errors import DestinationRefused, ToolFailed, UpstreamFailed
from corral.gateway.tools._base import ToolCallContext
from corral.secrets import SecretBroker

if TYPE_CHECKING:  # httpx (about 2 MB) is imported when the first http tool runs
    import httpx

__all__ = ["HostAllowlist", "HttpExecutor", "non_public_reason", "resolve", "upstream_of"]

_IP = ipaddress.IPv4Address | ipaddress.IPv6Address
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_MAX_REDIRECTS = 5
_ERROR_BODY_CHARS = 2000
_TEXT_TYPES = ("json", "xml", "yaml", "javascript", "x-www-form-urlencoded", "csv", "html")
_NO_BODY_METHODS = ("GET", "HEAD", "OPTIONS", "DELETE")
_SECRET_MARK = "${secret:"


def non_public_reason(address: _IP) -> str | None:
    """Why ``address`` is not a public destination (``"loopback"``...), or ``None`` if it is.

    IPv6 addresses carrying an IPv4 address (IPv4-mapped, 6to4, Teredo, NAT64 ``64:ff9b::/96``)
    are judged by that address too.
    """
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if address.teredo is not None:
            embedded = address.teredo[1]
        if address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None and (reason := non_public_reason(embedded)):
            return reason
    for attribute, reason in (
        ("is_loopback", "loopback"),
        ("is_link_local", "link-local"),
        ("is_unspecified", "unspecified"),
        ("is_multicast", "multicast"),
        ("is_private", "private"),
        ("is_reserved", "reserved"),
    ):
        if getattr(address, attribute):
            return reason
    return None if address.is_global else "not globally routable"


class HostAllowlist:
    """The non-public destinations one tool may reach (``spec.http.allow_hosts``).

    Args:
        entries: Host names (``localhost``; ``*.corp.example`` for subdomains), addresses or
            networks (``10.0.0.0/8``, ``::1``).
    """

    def __init__(self, entries: Iterable[str]) -> None:
        self.entries = tuple(sorted(set(entries)))
        self.names: set[str] = set()
        self.suffixes: list[str] = []
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in self.entries:
            try:
                self.networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                name = entry.lower().rstrip(".")
                if name.startswith("*."):
                    self.suffixes.append(name[1:])
                else:
                    self.names.add(name)

    def names_host(self, host: str) -> bool:
        """Whether ``host`` (a name) is allowed whatever it resolves to."""
        name = host.lower().rstrip(".")
        return name in self.names or any(name.endswith(s) for s in self.suffixes)

    def holds(self, address: _IP) -> bool:
        """Whether a listed address or network holds ``address``."""
        return any(address.version == n.version and address in n for n in self.networks)

    def check(self, host: str, addresses: Iterable[_IP]) -> None:
        """Refuse ``host`` when one of its addresses is not public and not allowed.

        Raises:
            DestinationRefused: naming the host, the address, why, and the fix.
        """
        if self.names_host(host):
            return
        for address in addresses:
            reason = non_public_reason(address)
            if reason is not None and not self.holds(address):
                shown = host if host == str(address) else f"{host} ({address})"
                raise DestinationRefused(
                    f"refusing to connect to {shown}: a {reason} address. If this tool is "
                    f"meant to reach it, add {host!r} (or a network holding {address}) to "
                    "the tool's http.allow_hosts."
                )


def _literal(host: str) -> _IP | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


async def resolve(host: str, port: int) -> list[_IP]:
    """Every address ``host`` resolves to (an IP literal resolves to itself).

    Raises:
        httpcore.ConnectError: the name does not resolve.
    """
    literal = _literal(host)
    if literal is not None:
        return [literal]
    try:
        infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise httpcore.ConnectError(f"cannot resolve {host!r}: {exc}") from exc
    found: list[_IP] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in found:
            found.append(address)
    return found


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves, checks and connects to exactly the checked address."""

    def __init__(self, allowlist: HostAllowlist) -> None:
        self.allowlist = allowlist
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await resolve(host, port)
        self.allowlist.check(host, addresses)
        error: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    str(address),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        raise error or httpcore.ConnectError(f"{host!r} resolved to no address")

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise DestinationRefused("http tools do not connect to Unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def _client(allowlist: HostAllowlist) -> httpx.AsyncClient:
    import httpx

    transport = httpx.AsyncHTTPTransport(trust_env=False)
    # httpx does not take a network backend; its pool is rebuilt around the guarded one.
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(trust_env=False),
        max_connections=100,
        max_keepalive_connections=20,
        keepalive_expiry=5.0,
        network_backend=_GuardedBackend(allowlist),
    )
    return httpx.AsyncClient(
        transport=transport,
        trust_env=False,
        follow_redirects=False,
        # Cookies set by one call must never reach another (tools and tenants share clients).
        cookies=httpx.Cookies(CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))),
    )


def upstream_of(spec: HttpToolSpec) -> str:
    """The breaker key of an ``http`` tool's API: ``scheme://host:port`` of its URL."""
    return _upstream_of_url(spec.url)


@functools.lru_cache(maxsize=1024)
def _upstream_of_url(url: str) -> str:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = parts.hostname or ""
    return f"{parts.scheme}://{f'[{host}]' if ':' in host else host}:{port}"


class HttpExecutor:
    """Executes ``http`` tools; one connection pool per allowlist.

    Args:
        max_response_bytes: Bytes of a response body read at most.
        secrets: The credential broker rendering ``${secret:NAME}`` in configured headers and
            query (its ``secret.use`` check and redaction come from the gateway's secret
            scope); ``None``: tools referencing secrets fail with a clear error.
    """

    def __init__(self, *, max_response_bytes: int, secrets: SecretBroker | None = None) -> None:
        self.max_response_bytes = max_response_bytes
        self.secrets = secrets
        self._clients: dict[tuple[str, ...], httpx.AsyncClient] = {}

    def client_for(self, allow_hosts: Iterable[str]) -> httpx.AsyncClient:
        """The pooled client whose connections are guarded by this allowlist."""
        key = tuple(sorted(set(allow_hosts)))
        client = self._clients.get(key)
        if client is None:
            client = self._clients[key] = _client(HostAllowlist(key))
        return client

    async def aclose(self) -> None:
        """Close every pooled connection."""
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()

    async def run(self, ctx: ToolCallContext, tool: Tool, arguments: Mapping[str, Any]) -> str:
        """Send the tool's request for ``arguments``; return the response as tool output.

        Returns:
            ``HTTP <status> <reason>``, ``content-type: ...``, a blank line, then the body
            (text as received; binary bodies are described, not shown).

        Raises:
            DestinationRefused: the SSRF guard refused a destination or scheme.
            UpstreamFailed: connect error, timeout, HTTP 5xx or 429 (naming the upstream).
            ToolFailed: HTTP 4xx, a missing path argument, an unresolvable secret.
        """
        import httpx

        spec = tool.spec.http
        if spec is None:
            raise ToolFailed(f"tool {tool.metadata.name!r} has no 'http' section")
        request = await self._build(ctx, tool, spec, arguments)
        client = self.client_for(spec.allow_hosts)
        response = await self._send(client, request, spec, upstream_of(spec))
        try:
            body, complete = await self._read(response)
        except httpx.HTTPError as exc:
            raise _transport_error(exc, response.request, upstream_of(spec)) from None
        finally:
            await response.aclose()
        return _output(request, response, body, complete, upstream_of(spec))

    async def _build(
        self, ctx: ToolCallContext, tool: Tool, spec: HttpToolSpec, arguments: Mapping[str, Any]
    ) -> httpx.Request:
        import httpx

        parts = _split_arguments(spec, arguments)
        try:
            url = httpx.URL(_fill_url(spec, parts.path))
        except httpx.InvalidURL as exc:
            raise ToolFailed(f"cannot build the URL of {tool.metadata.name!r}: {exc}") from None
        # The URL's own query first, then the configured one, then the arguments.
        query: list[tuple[str, str | int | float | bool | None]] = []
        query += [(k, await self._render(ctx, v)) for k, v in spec.query.items()]
        query += parts.query
        if query and url.query:
            query = list(url.params.multi_items()) + query
            url = url.copy_with(query=None)
        headers = {k: await self._render(ctx, v) for k, v in spec.headers.items()}
        headers.update(parts.headers)
        if tool.spec.side_effect != "read" and (ctx.run_id or ctx.call_id) is not None:
            # draft-ietf-httpapi-idempotency-key-header: lets the API drop a repeated call.
            headers.setdefault("Idempotency-Key", ctx.idempotency_key)
        content = None if parts.body is _NO_BODY else json.dumps(parts.body).encode()
        if content is not None:
            headers.setdefault("Content-Type", "application/json")
        try:
            return httpx.Request(
                spec.method,
                url,
                params=httpx.QueryParams(query) if query else None,
                headers=headers,
                content=content,
                extensions={"timeout": httpx.Timeout(tool.spec.timeout_seconds).as_dict()},
            )
        except (httpx.InvalidURL, ValueError, UnicodeEncodeError) as exc:
            raise ToolFailed(f"cannot build the request of {tool.metadata.name!r}: {exc}") from None

    async def _render(self, ctx: ToolCallContext, template: str) -> str:
        if _SECRET_MARK not in template:
            return template
        if self.secrets is None:
            raise ToolFailed(
                "this tool's headers or query reference a secret, but no credential broker is "
                "configured in this process"
            )
        rendered, _values = await self.secrets.render(ctx.tenant_id, template)
        return rendered

    async def _send(
        self, client: httpx.AsyncClient, request: httpx.Request, spec: HttpToolSpec, upstream: str
    ) -> httpx.Response:
        origin = _origin(request.url)
        configured = {name.lower() for name in spec.headers}
        for _hop in range(_MAX_REDIRECTS + 1):
            if request.url.scheme not in ("http", "https"):
                raise DestinationRefused(
                    f"refusing a request to {_safe_url(request.url)}: only http and https are "
                    "allowed"
                )
            response = await _send_once(client, request, upstream)
            next_request = response.next_request
            if not spec.follow_redirects or next_request is None:
                return response
            await response.aclose()
            if _origin(next_request.url) != origin:
                for name in list(next_request.headers):
                    if name.lower() in configured or name.lower() == "authorization":
                        del next_request.headers[name]
            request = next_request
        raise UpstreamFailed(
            f"{upstream} redirected more than {_MAX_REDIRECTS} times", upstream=upstream
        )

    async def _read(self, response: httpx.Response) -> tuple[bytes, bool]:
        """The body, up to ``max_response_bytes``; ``(bytes, whole body read?)``."""
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            chunks.append(chunk)
            size += len(chunk)
            if size > self.max_response_bytes:
                return b"".join(chunks)[: self.max_response_bytes], False
        return b"".join(chunks), True


async def _send_once(
    client: httpx.AsyncClient, request: httpx.Request, upstream: str
) -> httpx.Response:
    import httpx

    try:
        return await client.send(request, stream=True)
    except httpx.HTTPError as exc:
        raise _transport_error(exc, request, upstream) from None


def _transport_error(exc: httpx.HTTPError, request: httpx.Request, upstream: str) -> ToolFailed:
    import httpx

    where = f"{request.method} {_safe_url(request.url)}"
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return UpstreamFailed(
            f"{where}: cannot connect to {upstream}: {exc}",
            upstream=upstream,
            retryable=True,
            code="upstream_unreachable",
        )
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamFailed(
            f"{where}: {upstream} did not answer in time",
            upstream=upstream,
            retryable=True,
            code="upstream_timeout",
        )
    if isinstance(exc, httpx.UnsupportedProtocol):
        return DestinationRefused(f"{where}: {exc}")
    if isinstance(exc, httpx.LocalProtocolError):
        return ToolFailed(f"{where}: the request is invalid: {exc}", code="invalid_request")
    return UpstreamFailed(
        f"{where}: {upstream} broke the exchange: {exc}",
        upstream=upstream,
        retryable=isinstance(exc, httpx.TransportError),
        code="upstream_transport_error",
    )


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return (url.scheme, url.host, url.port)


def _safe_url(url: httpx.URL) -> str:
    """The URL without its query (which may carry credentials) for messages."""
    return str(url.copy_with(query=None, fragment=None))


_NO_BODY = object()


class _Parts:
    def __init__(self) -> None:
        self.path: dict[str, str] = {}
        self.query: list[tuple[str, str]] = []
        self.headers: dict[str, str] = {}
        self.body: Any = _NO_BODY


def _split_arguments(spec: HttpToolSpec, arguments: Mapping[str, Any]) -> _Parts:
    placeholders = set(spec.placeholders())
    parts = _Parts()
    fields: dict[str, Any] = {}
    for argument, value in arguments.items():
        mapped = spec.parameters.get(argument)
        wire = (mapped.name if mapped else None) or argument
        if mapped is not None:
            location = mapped.location
        elif argument in placeholders:
            location = "path"
        else:
            location = "query" if spec.method in _NO_BODY_METHODS else "body"
        if value is None and location != "body_root":
            continue
        if location == "path":
            parts.path[wire] = _scalar(value, ",")
        elif location == "query":
            values = value if isinstance(value, list) else [value]
            parts.query += [(wire, _scalar(v, ",")) for v in values]
        elif location == "header":
            parts.headers[wire] = _header_value(argument, _scalar(value, ","))
        elif location == "body":
            fields[wire] = value
        else:
            parts.body = value
    if fields:
        parts.body = fields
    return parts


def _header_value(argument: str, value: str) -> str:
    if any(c in value for c in "\r\n\0"):
        raise ToolFailed(f"argument {argument!r} is sent as a header and may not hold line breaks")
    return value


def _scalar(value: Any, separator: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return separator.join(_scalar(v, separator) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _fill_url(spec: HttpToolSpec, values: Mapping[str, str]) -> str:
    url = spec.url
    for placeholder in spec.placeholders():
        if placeholder not in values:
            raise ToolFailed(
                f"missing argument for the URL placeholder {{{placeholder}}} of {spec.url}"
            )
        # Every character that could change the path's structure is encoded ("/", "..").
        encoded = quote(values[placeholder], safe="")
        if encoded in (".", ".."):
            encoded = encoded.replace(".", "%2E")
        url = url.replace(f"{{{placeholder}}}", encoded)
    return url


def _output(
    request: httpx.Request, response: httpx.Response, body: bytes, complete: bool, upstream: str
) -> str:
    content_type = response.headers.get("content-type", "")
    status = f"HTTP {response.status_code} {response.reason_phrase}".rstrip()
    text = _body_text(body, content_type, response.encoding or "utf-8")
    if not complete:
        length = response.headers.get("content-length")
        text += (
            f"\n[response body cut by the gateway after {len(body)} bytes"
            f"{f' of {length}' if length else ''}]"
        )
    if response.status_code < 400:
        return f"{status}\ncontent-type: {content_type or '(none)'}\n\n{text}"
    where = f"{request.method} {_safe_url(request.url)}"
    if response.status_code >= 500 or response.status_code == 429:
        retry_after = _retry_after_seconds(response.headers.get("retry-after"))
        raise UpstreamFailed(
            f"{where} failed at {upstream}: {status}: {text[:_ERROR_BODY_CHARS]}",
            upstream=upstream,
            retryable=response.status_code in (429, 502, 503, 504),
            status_code=response.status_code,
            retry_after_seconds=retry_after,
            code="upstream_rate_limited" if response.status_code == 429 else "upstream_error",
        )
    raise ToolFailed(f"{where} returned {status}: {text[:_ERROR_BODY_CHARS]}", code="http_error")


def _body_text(body: bytes, content_type: str, encoding: str) -> str:
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind and not kind.startswith("text/") and not any(t in kind for t in _TEXT_TYPES):
        return f"[{len(body)} bytes of {kind} not shown: not text]"
    try:
        return body.decode(encoding, errors="replace")
    except LookupError:
        return body.decode("utf-8", errors="replace")


def _retry_after_seconds(value: str | None) -> float | None:
    """``Retry-After`` in seconds (RFC 9110 section 10.2.3); HTTP dates are not honoured."""
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        return None
