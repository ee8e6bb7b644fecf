"""Corral's OpenAI-compatible endpoint: ``POST /v1/chat/completions`` and ``GET /v1/models``.

Agents built with any framework point an OpenAI client at Corral
(``AsyncOpenAI(base_url="http://corral:8000/v1", api_key=<agent key>)``) and every model call
goes through the governed path of :class:`corral.gateway.models.InboundChat`: ``model.call``
policy, budgets, quotas, audit, a ``chat`` span. Bodies are the OpenAI wire format, passed to
an OpenAI-compatible upstream as sent (the caller's tools included; Corral never executes
them) and answered as the upstream answered (JSON, or SSE chunks as they arrive).

Authentication is ``/mcp``'s: ``Authorization: Bearer <API key or token>``
(:meth:`corral.tenancy.Identity.authenticate`, cached), and the principal needs permission
``models.call`` (agent keys, builders, operators). Errors use OpenAI's shape,
``{"error": {"message", "type", "code", "param"}}``, with the status of Corral's one error
mapping (:func:`corral.api._errors.status_for`): 401, 403 (permission, contract, policy), 404
(unknown model, naming the known ones), 429 (quota or budget, with the figures and
``Retry-After``), 502 (upstream).

These routes are plain Starlette routes, outside the OpenAPI document (like ``/mcp``): their
wire format is OpenAI's, documented by OpenAI.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from corral.api._errors import status_for
from corral.costs import InboundCosts
from corral.errors import CorralError, Forbidden, NotFound, QuotaExceeded, Unauthorized
from corral.gateway.models import InboundChat
from corral.platform import Platform
from corral.tenancy import Principal

__all__ = ["CHAT_COMPLETIONS_PATH", "MODELS_PATH", "EventStreamResponse", "OpenAICompatEndpoint"]

CHAT_COMPLETIONS_PATH = "/v1/chat/completions"
MODELS_PATH = "/v1/models"

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    429: "rate_limit_error",
}


def openai_error(error: CorralError) -> JSONResponse:
    """``error`` as OpenAI's error JSON, with Corral's status for it and its figures."""
    status = status_for(error)
    body: dict[str, Any] = {
        "message": error.message,
        "type": _TYPES.get(status, "api_error"),
        "code": error.code,
        "param": "model" if isinstance(error, NotFound) else None,
    }
    headers: dict[str, str] = {}
    extra = error.to_dict()
    extra.pop("code", None)
    extra.pop("message", None)
    body.update(extra)  # known models (404), quota figures (429), the budget's limit
    if isinstance(error, Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="corral"'
    if isinstance(error, QuotaExceeded):
        headers["Retry-After"] = str(max(1, error.retry_after_seconds))
    if status >= 500 and status != 502:
        body["message"] = f"Internal error ({error.code}); the server log has the details."
    return JSONResponse({"error": body}, status_code=status, headers=headers)


class EventStreamResponse(StreamingResponse):
    """Starlette's ``StreamingResponse``, stopped on disconnect by one plain asyncio task.

    Under ASGI spec versions before 2.4 (uvicorn says 2.3), Starlette streams in an anyio task
    group with a second task listening for ``http.disconnect``; that group costs about 0.2-0.3
    ms of CPU per stream (``benchmarks/model_gateway.py``, Wave 4). Here the stream is sent
    in the request's own task and one listener task cancels it when the client goes away,
    which is what the task group does: the body iterator is interrupted at its current
    ``await`` (the inbound call still records itself, see ``InboundChat``). Spec 2.4 servers
    (a send to a gone client raises ``OSError``) take Starlette's own path.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the stream; a client disconnect ends it early."""
        spec = scope.get("asgi", {}).get("spec_version", "2.0")
        if scope["type"] != "http" or tuple(map(int, spec.split("."))) >= (2, 4):
            await super().__call__(scope, receive, send)
            return
        streaming = asyncio.current_task()
        assert streaming is not None
        state = {"finished": False, "disconnected": False}

        async def listen() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            # uvicorn also answers ``http.disconnect`` once the response is complete.
            if not state["finished"]:
                state["disconnected"] = True
                streaming.cancel()

        listener = asyncio.get_running_loop().create_task(listen())
        try:
            await self.stream_response(send)
            state["finished"] = True
        except asyncio.CancelledError:
            # Our own cancellation (the client went away) ends the response quietly; any
            # other (server shutdown) propagates.
            if not state["disconnected"] or streaming.uncancel() > 0:
                raise
        finally:
            state["finished"] = True
            listener.cancel()
        if self.background is not None:
            await self.background()


class OpenAICompatEndpoint:
    """The two routes for one :class:`Platform`; close with :meth:`aclose`.

    Args:
        platform: Identity, model gateway, policy, quotas, store and tracing. Decisions are
            judged in ``mcp_endpoint.stage`` (the stage of every inbound call).
    """

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.chat = InboundChat(
            platform.store,
            platform.models,
            platform.governance,
            platform.tracing,
            quotas=platform.quotas,
            stage=platform.settings.mcp_endpoint.stage,
            costs=InboundCosts(platform.store, platform.quotas),
            defer_records=platform.settings.models.inbound_records == "after_answer",
        )

    @property
    def routes(self) -> list[Route]:
        """``POST /v1/chat/completions`` and ``GET /v1/models``."""
        return [
            Route(
                CHAT_COMPLETIONS_PATH,
                self.chat_completions,
                methods=["POST"],
                include_in_schema=False,
            ),
            Route(MODELS_PATH, self.list_models, methods=["GET"], include_in_schema=False),
        ]

    async def aclose(self) -> None:
        """Finish recording open streams; close the upstream connection pools."""
        await self.chat.aclose()

    async def _principal(self, request: Request) -> Principal:
        headers = request.headers
        principal = await self.platform.identity.authenticate(
            headers.get("authorization"), tenant=headers.get("x-corral-tenant")
        )
        if not principal.can("models.call"):
            raise Forbidden(
                f"{principal.id} may not call models through Corral: it needs permission "
                "'models.call' (agent keys, roles builder and operator carry it).",
                code="permission_denied",
            )
        return principal

    async def chat_completions(self, request: Request) -> Response:
        """One governed chat completion, JSON or streamed."""
        try:
            principal = await self._principal(request)
            reply = await self.chat.complete(principal, await request.body())
        except CorralError as exc:
            return openai_error(exc)
        headers = {"X-Corral-Trace-Id": reply.trace_id}
        if reply.stream is not None:
            headers["Cache-Control"] = "no-cache"
            return EventStreamResponse(
                reply.stream, media_type="text/event-stream", headers=headers
            )
        return Response(reply.content, media_type="application/json", headers=headers)

    async def list_models(self, request: Request) -> Response:
        """The models the caller may use, as OpenAI's model list."""
        try:
            principal = await self._principal(request)
            names = await self.chat.models_for(principal)
        except CorralError as exc:
            return openai_error(exc)
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "corral"} for name in names
        ]
        return JSONResponse({"object": "list", "data": data})
