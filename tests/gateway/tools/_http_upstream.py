"""A real HTTP API for the http tool tests: a FastAPI app served by uvicorn in a thread."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse

from corral.contracts import Tool
from corral.gateway.tools import ResolvedTool
from corral.testing import serve_in_thread

PETSTORE = """\
openapi: 3.0.3
info: {title: Petstore, version: "1.0"}
servers:
  - url: http://{host}/v1
    variables:
      host: {default: "127.0.0.1"}
paths:
  /pets:
    get:
      operationId: listPets
      summary: List pets
      description: Pets in the store, optionally filtered by tag.
      parameters:
        - name: limit
          in: query
          description: How many at most.
          schema: {type: integer, minimum: 1, maximum: 100}
        - {name: tag, in: query, schema: {type: array, items: {type: string}}}
      responses: {"200": {description: ok}}
    post:
      operationId: createPet
      summary: Create a pet
      requestBody:
        required: true
        content:
          application/json:
            schema: {$ref: "#/components/schemas/NewPet"}
      responses: {"201": {description: created}}
  /pets/{petId}:
    parameters:
      - $ref: "#/components/parameters/PetId"
    get:
      operationId: getPetById
      description: Info for a specific pet
      parameters:
        - {name: X-Trace, in: header, schema: {type: string}}
        - {name: Authorization, in: header, schema: {type: string}}
      responses: {"200": {description: ok}}
    put:
      operationId: replacePet
      requestBody:
        content:
          application/json:
            schema: {type: array, items: {type: string}}
      responses: {"200": {description: ok}}
    delete:
      operationId: deletePet
      responses: {"204": {description: gone}}
components:
  parameters:
    PetId: {name: petId, in: path, required: true, schema: {type: string}}
  schemas:
    NewPet:
      type: object
      required: [name]
      properties:
        name: {type: string, minLength: 1}
        tag: {type: string, nullable: true}
        parent: {$ref: "#/components/schemas/Pet"}
    Pet:
      type: object
      properties:
        id: {type: integer}
        children: {type: array, items: {$ref: "#/components/schemas/Pet"}}
"""
"""An OpenAPI 3.0 document of :func:`upstream_app` (servers[0] is 127.0.0.1 on port 80;
tests pass ``base_url`` with the live port)."""


class Upstream:
    """The live API: its base URL and what it saw."""

    def __init__(self, app: FastAPI, url: str) -> None:
        self.url = url
        self.hits: Counter[str] = app.state.hits
        self.seen: list[dict[str, Any]] = app.state.seen
        self.state: dict[str, Any] = app.state.switches

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])


def upstream_app() -> FastAPI:
    """Pets plus endpoints that fail, stall, redirect and send large bodies on demand."""
    app = FastAPI()
    app.state.hits = Counter()
    app.state.seen = []
    app.state.switches = {"healthy": True}

    @app.middleware("http")
    async def record(request: Request, call_next: Any) -> Response:
        app.state.hits[request.url.path] += 1
        app.state.seen.append(
            {
                "method": request.method,
                "path": request.url.path,
                "query": str(request.url.query),
                "headers": dict(request.headers),
            }
        )
        response: Response = await call_next(request)
        return response

    @app.get("/v1/pets")
    async def list_pets(request: Request) -> dict[str, Any]:
        params = request.query_params
        return {"pets": ["rex", "tom"], "limit": params.get("limit"), "tags": params.getlist("tag")}

    @app.post("/v1/pets", status_code=201)
    async def create_pet(request: Request) -> dict[str, Any]:
        return {"created": await request.json(), "key": request.headers.get("idempotency-key")}

    @app.get("/v1/pets/{pet_id:path}")
    async def get_pet(pet_id: str, request: Request) -> dict[str, Any]:
        return {
            "id": pet_id,
            "trace": request.headers.get("x-trace"),
            "key_ok": _key_ok(app, request),
            "echo_key": request.headers.get("x-api-key")
            if "echo" in request.query_params
            else None,
        }

    @app.put("/v1/pets/{pet_id}")
    async def replace_pet(pet_id: str, request: Request) -> dict[str, Any]:
        return {"id": pet_id, "body": await request.json()}

    @app.delete("/v1/pets/{pet_id}", status_code=204)
    async def delete_pet(pet_id: str) -> Response:
        return Response(status_code=204)

    _add_failing_routes(app)
    _add_misc_routes(app)
    return app


def _key_ok(app: FastAPI, request: Request) -> bool:
    expected = app.state.switches.get("api_key")
    return expected is not None and request.headers.get("x-api-key") == expected


def _add_failing_routes(app: FastAPI) -> None:
    @app.get("/flaky/{key}")
    async def flaky(key: str, failures: int = 2, status: int = 503) -> Response:
        if app.state.hits[f"/flaky/{key}"] <= failures:
            return PlainTextResponse("try later", status_code=status, headers={"Retry-After": "0"})
        return JSONResponse({"ok": key})

    @app.get("/switch")
    async def switch() -> Response:
        if not app.state.switches["healthy"]:
            return PlainTextResponse("broken", status_code=500)
        return JSONResponse({"ok": True})

    @app.get("/missing")
    async def missing() -> Response:
        return JSONResponse({"detail": "no such pet"}, status_code=404)

    @app.get("/slow")
    async def slow(seconds: float = 2.0) -> dict[str, bool]:
        await asyncio.sleep(seconds)
        return {"ok": True}


def _add_misc_routes(app: FastAPI) -> None:
    @app.get("/big")
    async def big(size: int = 100_000) -> Response:
        return PlainTextResponse("x" * size)

    @app.get("/binary")
    async def binary() -> Response:
        return Response(b"\x89PNG\r\n\x1a\n" + b"\0" * 64, media_type="image/png")

    @app.get("/redirect")
    async def redirect(to: str) -> Response:
        return RedirectResponse(to, status_code=302)

    @app.get("/headers")
    async def headers(request: Request) -> dict[str, Any]:
        return {"headers": dict(request.headers)}

    @app.get("/cookie")
    async def cookie(request: Request) -> Response:
        response = JSONResponse({"cookie": request.headers.get("cookie")})
        response.set_cookie("session", "from-upstream")
        return response


def serve_upstream() -> Iterator[Upstream]:
    """Serve :func:`upstream_app` until the generator is closed (for fixtures)."""
    app = upstream_app()
    with serve_in_thread(app) as url:
        yield Upstream(app, url)


def http_tool(
    name: str,
    url: str,
    *,
    method: str = "GET",
    properties: dict[str, Any] | None = None,
    required: list[str] | None = None,
    side_effect: str = "read",
    **spec: Any,
) -> ResolvedTool:
    """An ``http`` tool by hand; ``spec`` holds Tool spec fields and ``http.*`` fields."""
    http_fields = {"parameters", "headers", "query", "allow_hosts", "retries", "follow_redirects"}
    http = {"method": method, "url": url} | {k: v for k, v in spec.items() if k in http_fields}
    document = {
        "apiVersion": "corral.dev/v1",
        "kind": "Tool",
        "metadata": {"name": name, "version": "1.0.0"},
        "spec": {
            "description": f"Test tool {name}.",
            "type": "http",
            "side_effect": side_effect,
            "input_schema": {
                "type": "object",
                "properties": properties or {},
                "required": required or [],
            },
            "http": http,
        }
        | {k: v for k, v in spec.items() if k not in http_fields},
    }
    return ResolvedTool.from_document(Tool.model_validate(document).model_dump(by_alias=True))
