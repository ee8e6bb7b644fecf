"""Raw OpenAI-wire chat completions: a request body in, the upstream's JSON or SSE chunks out.

The inbound endpoint (``/v1/chat/completions``) forwards a bring-your-own agent's request to an
OpenAI-compatible upstream (the ``openai`` provider, or the embedded ``local`` model, which is
llama.cpp's OpenAI-compatible server) without translating it into Corral's provider-neutral
shapes: the agent's own tools, ``tool_choice`` and every other field reach the upstream as sent,
and its ``tool_calls`` come back unchanged. :class:`WireChat` is that call, over one reused
``aiohttp.ClientSession`` per upstream (no per-call TLS or CA bundle setup, no SDK model
parsing; aiohttp's C HTTP parser costs about a third of httpx's CPU per call).

Streaming (`Server-sent events
<https://platform.openai.com/docs/api-reference/chat-streaming>`_): every request is sent with
``stream_options.include_usage`` so that the upstream's last chunk carries the usage;
:class:`WireStream` yields each ``data:`` event as it arrives and keeps that usage
(:func:`usage_of`). A stream that ends without usage, or holds an event that is not JSON, is
flagged (:attr:`WireStream.usage_missing`): the caller bills it from its reservation.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

import pydantic_core

from corral.errors import ModelAPIError
from corral.gateway.models._base import Usage

if TYPE_CHECKING:  # imported with the first upstream: `corral worker` and the CLI never need it
    import aiohttp
    from yarl import URL

__all__ = ["WireChat", "WireStream", "usage_of"]

DRAIN_SECONDS = 1.0
"""After ``data: [DONE]``, how long a stream's body may take to end, in seconds."""

_MAX_ERROR_CHARS = 500
"""Upstream error bodies are cut to this many characters in ``ModelAPIError`` messages."""


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def usage_of(usage: Any) -> Usage | None:
    """An OpenAI ``usage`` object as :class:`Usage`; ``None`` when it is absent or not one.

    ``prompt_tokens`` (cache reads included) and ``completion_tokens`` (reasoning included);
    ``prompt_tokens_details.cached_tokens`` -> ``cache_read_tokens``;
    ``completion_tokens_details.reasoning_tokens`` -> ``reasoning_tokens``. OpenAI reports no
    cache writes. Counts that are missing, negative or not integers count 0.
    """
    if not isinstance(usage, Mapping):
        return None
    prompt = usage.get("prompt_tokens_details")
    completion = usage.get("completion_tokens_details")
    return Usage(
        input_tokens=_int(usage.get("prompt_tokens")),
        output_tokens=_int(usage.get("completion_tokens")),
        cache_read_tokens=_int(prompt.get("cached_tokens")) if isinstance(prompt, Mapping) else 0,
        reasoning_tokens=(
            _int(completion.get("reasoning_tokens")) if isinstance(completion, Mapping) else 0
        ),
    )


class WireChat:
    """``POST {base_url}/chat/completions`` on one OpenAI-compatible upstream, body as given.

    Not retried here (the model gateway owns retries and breakers). Close with :meth:`aclose`.

    Args:
        provider: Provider name, for error messages (``openai``, ``local``).
        base_url: The endpoint including ``/v1`` (``http://127.0.0.1:8421/v1``).
        api_key: Sent as ``Authorization: Bearer``; ``None`` sends none.
        timeout_seconds: Connect and read timeout per request, in seconds (for a stream: between
            two chunks).
    """

    def __init__(
        self, provider: str, base_url: str, api_key: str | None, *, timeout_seconds: float
    ) -> None:
        self.provider = provider
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/chat/completions"
        self.timeout_seconds = timeout_seconds
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._session: aiohttp.ClientSession | None = None
        self._proxy: URL | None = None
        self._proxy_auth: aiohttp.BasicAuth | None = None

    @property
    def _client(self) -> aiohttp.ClientSession:
        """The connection pool, made on first use (aiohttp binds it to the running loop)."""
        if self._session is None:
            import aiohttp
            from aiohttp.helpers import get_env_proxy_for_url
            from yarl import URL

            # HTTP(S)_PROXY and NO_PROXY, as the openai SDK honours them, read once per pool as
            # its httpx client does: aiohttp's trust_env re-reads them (and ~/.netrc) in a
            # worker thread on every request, two thread hops per call.
            try:
                self._proxy, self._proxy_auth = get_env_proxy_for_url(URL(self.url))
            except LookupError:
                self._proxy, self._proxy_auth = None, None
            timeout = self.timeout_seconds
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                # Connecting (a free pooled connection included) and each read: as httpx's
                # Timeout(t), for a stream the wait between two chunks.
                timeout=aiohttp.ClientTimeout(
                    total=None, connect=timeout, sock_connect=timeout, sock_read=timeout
                ),
                connector=aiohttp.TCPConnector(limit=200, limit_per_host=0),
            )
        return self._session

    async def aclose(self) -> None:
        """Close the connection pool."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def create(self, body: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        """One non-streaming call.

        Args:
            body: The chat completions request (``stream`` false or absent).

        Returns:
            ``(parsed JSON, the upstream's bytes)``: the caller answers with the bytes as they
            came, and reads usage from the parsed object.

        Raises:
            ModelAPIError: the upstream could not be reached, timed out, answered an error
                status (``status_code`` set), or a body that is not a JSON object.
        """
        import aiohttp

        try:
            client = self._client
            async with client.post(
                self.url,
                data=pydantic_core.to_json(body),
                proxy=self._proxy,
                proxy_auth=self._proxy_auth,
            ) as response:
                status = response.status
                content = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._transport_error(exc) from exc
        if status >= 400:
            raise self._status_error(status, content)
        try:
            parsed = pydantic_core.from_json(content)
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            raise ModelAPIError(
                f"Model provider {self.provider!r} at {self.base_url} answered HTTP "
                f"{status} with a body that is not a JSON object: "
                f"{content[:_MAX_ERROR_CHARS]!r}",
                provider=self.provider,
                status_code=status,
            )
        return parsed, content

    async def stream(self, body: dict[str, Any], *, forward_usage: bool) -> WireStream:
        """Open one streaming call; the upstream's status is known when this returns.

        Args:
            body: The chat completions request; ``stream`` and ``stream_options.include_usage``
                are set here.
            forward_usage: Pass the usage-only last chunk on (the client asked for it).

        Returns:
            The open stream: iterate :meth:`WireStream.events`, then read its usage.

        Raises:
            ModelAPIError: as for :meth:`create` (the body of an error status is read).
        """
        import aiohttp

        options = body.get("stream_options")
        body = {
            **body,
            "stream": True,
            "stream_options": {
                **(options if isinstance(options, dict) else {}),
                "include_usage": True,
            },
        }
        try:
            client = self._client
            response = await client.post(
                self.url,
                data=pydantic_core.to_json(body),
                proxy=self._proxy,
                proxy_auth=self._proxy_auth,
                headers={"Accept": "text/event-stream"},
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._transport_error(exc) from exc
        if response.status >= 400:
            try:
                content = await response.read()
            except (aiohttp.ClientError, TimeoutError):
                content = b""
            finally:
                response.release()
            raise self._status_error(response.status, content)
        return WireStream(self, response, forward_usage=forward_usage)

    def _status_error(self, status: int, content: bytes) -> ModelAPIError:
        detail = content[:_MAX_ERROR_CHARS].decode("utf-8", "replace")
        return ModelAPIError(
            f"Model provider {self.provider!r} at {self.base_url} returned HTTP {status}: {detail}",
            provider=self.provider,
            status_code=status,
            # The model gateway's rule: 5xx, 429 and 408 may succeed elsewhere or later.
            retryable=status >= 500 or status in (408, 429),
        )

    def _transport_error(self, exc: BaseException) -> ModelAPIError:
        where = f"Model provider {self.provider!r} at {self.base_url}"
        if isinstance(exc, TimeoutError):
            message = f"{where} did not answer within {self.timeout_seconds} s (no HTTP status)."
        else:
            message = f"{where} could not be reached (no HTTP status): {exc!r}. Is it running?"
        return ModelAPIError(message, provider=self.provider, retryable=True)


class WireStream:
    """One open upstream SSE stream (from :meth:`WireChat.stream`).

    Attributes:
        usage: The usage of the last chunk that carried one, once :meth:`events` has run.
        usage_missing: The stream ended without usage, or held an event that is not JSON.
        error: Why the stream failed part-way (transport error, timeout), if it did.
        model: The model the upstream reported in its chunks, if any.
        finished: ``data: [DONE]`` arrived.
    """

    def __init__(
        self, wire: WireChat, response: aiohttp.ClientResponse, *, forward_usage: bool
    ) -> None:
        self._wire = wire
        self._response = response
        self._forward_usage = forward_usage
        self.usage: Usage | None = None
        self.malformed = False
        self.error: str | None = None
        self.model: str | None = None
        self.finished = False

    @property
    def usage_missing(self) -> bool:
        """No usage arrived, or an event could not be read (billed from the reservation)."""
        return self.usage is None or self.malformed

    async def events(self) -> AsyncIterator[bytes]:
        r"""The stream's events as the client should get them (``data: ...\n\n``), as they come.

        The usage-only last chunk (no choices) is dropped unless the client asked for usage;
        ``data: [DONE]`` is always sent last, also after an upstream failure part-way (whose
        reason is in :attr:`error`). The upstream response is closed when this ends, however
        it ends.
        """
        import aiohttp

        lines = _lines(self._response.content.iter_any())
        try:
            async for line in lines:
                if not line.startswith("data:"):
                    continue  # comments (keep-alives), event names, blank separators
                payload = line[5:].strip()
                if payload == "[DONE]":
                    self.finished = True
                    break
                if self._keep(payload):
                    yield b"data: " + payload.encode() + b"\n\n"
            if self.finished:
                await self._drain(lines)
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.error = repr(exc)
            self.malformed = True
        finally:
            self._response.release()
        yield b"data: [DONE]\n\n"

    async def _drain(self, lines: AsyncIterator[str]) -> None:
        """Read the body's end after ``[DONE]`` (at most :data:`DRAIN_SECONDS`).

        A response closed before its body ended also closes its connection; read to the end,
        the connection goes back to the pool and the next call skips a TCP connect.
        """
        try:
            async with asyncio.timeout(DRAIN_SECONDS):
                async for _ in lines:
                    pass
        except TimeoutError:
            pass  # an upstream that keeps the body open: its connection is closed

    def _keep(self, payload: str) -> bool:
        """Read one chunk's usage and model; whether to pass the chunk on."""
        try:
            chunk = pydantic_core.from_json(payload)
        except ValueError:
            self.malformed = True
            return True
        if not isinstance(chunk, dict):
            self.malformed = True
            return True
        if self.model is None and isinstance(chunk.get("model"), str):
            self.model = chunk["model"]
        usage = usage_of(chunk.get("usage"))
        if usage is None:
            return True
        self.usage = usage
        return self._forward_usage or bool(chunk.get("choices"))


async def _lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[str]:
    r"""The body's lines as they arrive, without their ``\n``, ``\r\n`` or ``\r`` ends.

    Lines of any length (aiohttp's own ``readline`` refuses those over 128 KiB).
    """
    pending = b""
    async for chunk in chunks:
        pending += chunk
        if b"\n" not in pending and b"\r" not in pending:
            continue
        *complete, pending = pending.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        for line in complete:
            yield line.decode("utf-8", "replace")
    if pending:
        yield pending.decode("utf-8", "replace")
