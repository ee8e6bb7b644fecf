"""Import operations of an OpenAPI 3.0/3.1 document as ``http`` Tool documents.

Each operation becomes one tool: its name from ``operationId`` (``getPetById`` ->
``get_pet_by_id``, after an optional prefix), its description from ``summary`` and
``description``, its ``input_schema`` from the parameters (path, query, header) and the JSON
request body, with local ``$ref`` references resolved (component schemas become ``$defs``,
so recursive schemas stay valid), and its ``side_effect`` from the method (RFC 9110
section 9.2: ``GET``, ``HEAD`` and ``OPTIONS`` read; ``DELETE`` is destructive; the others
write; ``PUT`` and ``DELETE`` are idempotent). A JSON object body's properties become
arguments of their own unless a name clashes with a parameter; otherwise the body is one
argument, ``body``.

Every problem is reported with its place: the file, the JSON pointer into the document
(``/paths/~1pets~1{petId}/get/parameters/0``) and the line.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from corral.contracts import API_VERSION, MAX_YAML_DEPTH, Lines, Tool, line_of, load_yaml
from corral.errors import ContractIssue, InvalidContract

__all__ = ["OpenApiOperation", "import_openapi", "list_operations", "tool_name_for"]

_METHODS = ("get", "put", "post", "delete", "options", "head", "patch")
_SKIPPED_HEADERS = {"accept", "content-type", "authorization"}  # OpenAPI 3.x: ignored
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_PLACEHOLDER_NAME = re.compile(r"[A-Za-z_][-.A-Za-z0-9_]*")
_Path = tuple[str | int, ...]
_INVALID_YAML = "invalid YAML:"


@dataclass(frozen=True)
class OpenApiOperation:
    """One operation of the document.

    Attributes:
        operation_id: ``operationId``, or ``<method>_<path>`` when the document has none.
        method: Upper-case HTTP method.
        path: The path template (``/pets/{petId}``).
        summary: First line of what it does (may be empty).
    """

    operation_id: str
    method: str
    path: str
    summary: str


@dataclass
class _Document:
    data: dict[str, Any]
    source: str
    lines: Lines
    issues: list[ContractIssue] = field(default_factory=list)

    def issue(self, where: _Path, message: str) -> None:
        self.issues.append(
            ContractIssue(self.source, 0, _pointer(where), line_of(self.lines, where), message)
        )

    def fail(self) -> None:
        if self.issues:
            raise InvalidContract(self.issues)


def _pointer(path: _Path) -> str:
    """RFC 6901 JSON pointer of ``path`` (``("paths", "/pets")`` -> ``/paths/~1pets``)."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path) or "/"


def _parse(text: str, source: str) -> _Document:
    try:
        parsed = load_yaml(text, source=source, single=True, render_path=_pointer)
    except InvalidContract as exc:
        if not exc.issues[0].message.startswith(_INVALID_YAML):
            raise  # over a limit, or a duplicate key: JSON would not be read differently
        data, lines = _parse_json(text, source, exc.issues[0]), {}
    else:
        data, lines = (parsed[0].data, parsed[0].lines) if parsed else (None, {})
    document = _Document(data if isinstance(data, dict) else {}, source, lines)
    if not isinstance(data, dict):
        document.issue((), "an OpenAPI document must be a mapping (YAML or JSON object)")
    document.fail()
    return document


def _parse_json(text: str, source: str, yaml_issue: ContractIssue) -> Any:
    """JSON that YAML 1.1 rejects (tabs); else the YAML error with its line.

    Held to the YAML loader's rules: no duplicate keys, at most ``MAX_YAML_DEPTH`` levels.
    """

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for key, value in pairs:
            if key in data:
                message = f"duplicate key {key!r} in a JSON object; remove one or merge them"
                raise InvalidContract([ContractIssue(source, 0, "", None, message)])
            data[key] = value
        return data

    too_deep = f"nested more than {MAX_YAML_DEPTH} levels deep; flatten the document"
    try:
        data = json.loads(text, object_pairs_hook=unique)
    except RecursionError:
        raise InvalidContract([ContractIssue(source, 0, "", None, too_deep)]) from None
    except ValueError:
        problem = yaml_issue.message.removeprefix(_INVALID_YAML).strip()
        raise InvalidContract(
            [ContractIssue(source, 0, "", yaml_issue.line, f"invalid YAML/JSON: {problem}")]
        ) from None
    if _depth(data) > MAX_YAML_DEPTH:
        raise InvalidContract([ContractIssue(source, 0, "", None, too_deep)])
    return data


def _depth(data: Any) -> int:
    """Deepest nesting of lists and objects in parsed JSON (iterative: any depth is safe)."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        value, level = stack.pop()
        children = value.values() if isinstance(value, dict) else value
        if isinstance(value, dict | list):
            deepest = max(deepest, level)
            if level <= MAX_YAML_DEPTH:
                stack.extend((child, level + 1) for child in children)
    return deepest


def _check_version(document: _Document) -> None:
    version = document.data.get("openapi")
    if not isinstance(version, str) or not re.match(r"3\.[01](\.|$)", version):
        found = (
            f"'swagger: {document.data['swagger']}'"
            if "swagger" in document.data
            else (f"openapi {version!r}")
        )
        document.issue(
            ("openapi",),
            f"not an OpenAPI 3.0 or 3.1 document ({found}); convert Swagger 2.0 documents first",
        )
    if not isinstance(document.data.get("paths"), dict):
        document.issue(("paths",), "'paths' must be a mapping of path templates to operations")
    document.fail()


def _operations(document: _Document) -> dict[str, tuple[_Path, OpenApiOperation]]:
    found: dict[str, tuple[_Path, OpenApiOperation]] = {}
    for path, item in document.data["paths"].items():
        if not isinstance(item, dict):
            document.issue(("paths", path), "a path item must be a mapping")
            continue
        for method in _METHODS:
            operation = item.get(method)
            if not isinstance(operation, dict):
                continue
            where: _Path = ("paths", path, method)
            op_id = operation.get("operationId") or f"{method}_{path}"
            if op_id in found:
                document.issue((*where, "operationId"), f"operationId {op_id!r} is not unique")
            summary = str(operation.get("summary") or operation.get("description") or "")
            found[op_id] = (where, OpenApiOperation(op_id, method.upper(), path, summary))
    document.fail()
    return found


def list_operations(text: str, *, source: str = "<openapi>") -> list[OpenApiOperation]:
    """Every operation of an OpenAPI 3.x document, in document order.

    Raises:
        InvalidContract: not YAML/JSON, not OpenAPI 3.0/3.1, or malformed ``paths``.
    """
    document = _parse(text, source)
    _check_version(document)
    return [operation for _, operation in _operations(document).values()]


def tool_name_for(operation_id: str, prefix: str = "") -> str:
    """``getPetById`` -> ``get_pet_by_id``; other characters become ``_``; ``prefix`` first."""
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", operation_id)
    snake = re.sub(r"[^a-z0-9]+", "_", snake.lower()).strip("_")
    return f"{prefix}{snake}"[:63].rstrip("_-.")


def import_openapi(
    text: str,
    *,
    source: str = "<openapi>",
    operations: Sequence[str] | None = None,
    base_url: str | None = None,
    name_prefix: str = "",
    allow_hosts: Sequence[str] = (),
    headers: Mapping[str, str] | None = None,
    timeout_seconds: float | None = None,
) -> list[Tool]:
    """Build one ``http`` Tool document per selected operation.

    Args:
        text: The OpenAPI 3.0/3.1 document, YAML or JSON.
        source: File name for error messages.
        operations: ``operationId`` values to import (in this order); ``None``: all of them.
        base_url: Server URL the paths are appended to; ``None``: the operation's, path
            item's or document's first ``servers`` entry (its variables at their defaults).
        name_prefix: Put before every tool name (``petstore.``).
        allow_hosts: The tools' SSRF allowlist (``spec.http.allow_hosts``).
        headers: Headers every tool sends, e.g. ``{"Authorization": "Bearer ${secret:TOKEN}"}``.
        timeout_seconds: The tools' timeout; ``None``: the contract's default.

    Returns:
        The Tool documents, validated, without versions (the registry assigns them).

    Raises:
        InvalidContract: a malformed document, an unknown operation, an unsupported feature
            (external ``$ref``, a required non-JSON body or cookie), or a tool that would not
            validate; every problem with file, JSON pointer and line.
    """
    document = _parse(text, source)
    _check_version(document)
    found = _operations(document)
    selected = list(operations) if operations is not None else list(found)
    unknown = [name for name in selected if name not in found]
    if unknown:
        document.issue(
            ("paths",),
            f"no operation {', '.join(map(repr, unknown))} in {source}; operations: "
            f"{', '.join(sorted(found)) or '(none)'}",
        )
        document.fail()
    options = _Options(base_url, name_prefix, tuple(allow_hosts), dict(headers or {}))
    tools = [
        _tool(document, found[name][0], found[name][1], options, timeout_seconds)
        for name in selected
    ]
    document.fail()
    return [tool for tool in tools if tool is not None]


@dataclass(frozen=True)
class _Options:
    base_url: str | None
    name_prefix: str
    allow_hosts: tuple[str, ...]
    headers: dict[str, str]


def _tool(
    document: _Document,
    where: _Path,
    operation: OpenApiOperation,
    options: _Options,
    timeout_seconds: float | None,
) -> Tool | None:
    raw = document.data["paths"][operation.path][operation.method.lower()]
    schemas = _Schemas(document)
    arguments = _Arguments(document, schemas)
    arguments.add_parameters(where, operation.path, raw)
    arguments.add_body(where, raw)
    base = _base_url(document, where, options.base_url)
    if base is None:
        return None
    http: dict[str, Any] = {
        "method": operation.method,
        "url": base.rstrip("/") + operation.path,
        "parameters": arguments.mapping,
    }
    if options.headers:
        http["headers"] = options.headers
    if options.allow_hosts:
        http["allow_hosts"] = list(options.allow_hosts)
    input_schema: dict[str, Any] = {
        "type": "object",
        "properties": arguments.properties,
        "required": arguments.required,
        "additionalProperties": False,
    }
    if schemas.defs:
        input_schema["$defs"] = schemas.defs
    spec: dict[str, Any] = {
        "type": "http",
        "description": _description(operation, raw),
        "side_effect": _side_effect(operation.method),
        "idempotent": operation.method in ("PUT", "DELETE"),
        "input_schema": input_schema,
        "http": http,
    }
    if timeout_seconds is not None:
        spec["timeout_seconds"] = timeout_seconds
    return _validated(document, where, operation, options.name_prefix, spec)


def _validated(
    document: _Document,
    where: _Path,
    operation: OpenApiOperation,
    prefix: str,
    spec: dict[str, Any],
) -> Tool | None:
    name = tool_name_for(operation.operation_id, prefix)
    body = {
        "apiVersion": API_VERSION,
        "kind": "Tool",
        "metadata": {
            "name": name,
            "labels": {"corral.dev/openapi-operation": operation.operation_id[:200]},
        },
        "spec": spec,
    }
    try:
        return Tool.model_validate(body)
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            field_path = ".".join(str(p) for p in error["loc"])
            document.issue(
                where,
                f"operation {operation.operation_id!r} as tool {name!r}: {field_path}: "
                f"{error['msg']}",
            )
        return None


def _description(operation: OpenApiOperation, raw: dict[str, Any]) -> str:
    parts = [str(raw[k]).strip() for k in ("summary", "description") if raw.get(k)]
    text = "\n\n".join(dict.fromkeys(p for p in parts if p))
    if raw.get("deprecated"):
        text = f"(deprecated) {text}"
    return (text or f"{operation.method} {operation.path}")[:4000]


def _side_effect(method: str) -> str:
    if method in ("GET", "HEAD", "OPTIONS"):
        return "read"
    return "destructive" if method == "DELETE" else "write"


def _base_url(document: _Document, where: _Path, given: str | None) -> str | None:
    if given:
        return given
    path_item = document.data["paths"][where[1]]
    operation = path_item[where[2]]
    for holder, at in (
        (operation, where),
        (path_item, where[:2]),
        (document.data, ()),
    ):
        servers = holder.get("servers")
        if isinstance(servers, list) and servers and isinstance(servers[0], dict):
            url = _server_url(servers[0])
            if re.match(r"https?://", url):
                return url
            document.issue(
                (*at, "servers", 0, "url"),
                f"server URL {url!r} is not absolute; pass --base-url (base_url=...)",
            )
            return None
    document.issue(where, "the document names no server; pass --base-url (base_url=...)")
    return None


def _server_url(server: dict[str, Any]) -> str:
    url = str(server.get("url", ""))
    variables = server.get("variables") or {}
    for name, variable in variables.items():
        if isinstance(variable, dict) and "default" in variable:
            url = url.replace(f"{{{name}}}", str(variable["default"]))
    return url


class _Schemas:
    """Converts OpenAPI schemas to JSON Schema 2020-12, collecting components in ``$defs``."""

    def __init__(self, document: _Document) -> None:
        self.document = document
        self.defs: dict[str, Any] = {}

    def resolve(self, value: Any, where: _Path) -> tuple[Any, _Path]:
        """Follow ``$ref`` chains of a non-schema object (parameter, request body)."""
        for _ in range(32):
            if not (isinstance(value, dict) and isinstance(value.get("$ref"), str)):
                return value, where
            target = self._target(value["$ref"], (*where, "$ref"))
            if target is None:
                return None, where
            value, where = target
        self.document.issue(where, "a $ref chain is longer than 32 links (a cycle?)")
        return None, where

    def _target(self, ref: str, where: _Path) -> tuple[Any, _Path] | None:
        if not ref.startswith("#/"):
            self.document.issue(where, f"only local $refs (#/...) are supported, not {ref!r}")
            return None
        path: _Path = tuple(p.replace("~1", "/").replace("~0", "~") for p in ref[2:].split("/"))
        value: Any = self.document.data
        for part in path:
            if not isinstance(value, dict) or part not in value:
                self.document.issue(where, f"$ref {ref!r} points at nothing")
                return None
            value = value[part]
        return value, path

    def convert(self, schema: Any, where: _Path) -> Any:
        """The schema with component references moved to ``$defs``, OpenAPI 3.0 idioms mapped."""
        if isinstance(schema, list):
            return [self.convert(item, (*where, i)) for i, item in enumerate(schema)]
        if not isinstance(schema, dict):
            return schema
        ref = schema.get("$ref")
        if isinstance(ref, str):
            return self._ref(ref, (*where, "$ref"))
        converted = {k: self.convert(v, (*where, k)) for k, v in schema.items()}
        return _openapi30_idioms(converted)

    def _ref(self, ref: str, where: _Path) -> dict[str, Any]:
        prefix = "#/components/schemas/"
        if ref.startswith(prefix) and "/" not in ref[len(prefix) :]:
            name = ref[len(prefix) :]
            if name not in self.defs:
                self.defs[name] = {}  # placeholder: a recursive reference stops here
                target = self._target(ref, where)
                self.defs[name] = {} if target is None else self.convert(*target)
            return {"$ref": f"#/$defs/{name}"}
        target = self._target(ref, where)
        return {} if target is None else dict(self.convert(*target))

    def lookup(self, schema: Any) -> Any:
        """The schema a top-level ``$ref`` stands for (to see a body's properties)."""
        if isinstance(schema, dict) and isinstance(schema.get("$ref"), str):
            name = schema["$ref"].removeprefix("#/$defs/")
            return self.defs.get(name, schema)
        return schema


def _openapi30_idioms(schema: dict[str, Any]) -> dict[str, Any]:
    """``nullable: true`` -> a ``null`` type; boolean ``exclusiveMinimum/Maximum`` -> numbers."""
    if schema.pop("nullable", False) is True:
        if isinstance(schema.get("type"), str):
            schema["type"] = [schema["type"], "null"]
        if isinstance(schema.get("enum"), list) and None not in schema["enum"]:
            schema["enum"] = [*schema["enum"], None]
    for exclusive, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(schema.get(exclusive), bool):
            if schema.pop(exclusive) and bound in schema:
                schema[exclusive] = schema.pop(bound)
    return schema


class _Arguments:
    """The tool's arguments: JSON Schema properties and where each goes in the request."""

    def __init__(self, document: _Document, schemas: _Schemas) -> None:
        self.document = document
        self.schemas = schemas
        self.properties: dict[str, Any] = {}
        self.required: list[str] = []
        self.mapping: dict[str, dict[str, str]] = {}

    def _add(self, name: str, location: str, wire: str, schema: Any, required: bool) -> None:
        argument = name if name not in self.properties else f"{location}_{name}"
        self.properties[argument] = schema
        self.mapping[argument] = {"in": location} | ({"name": wire} if wire != argument else {})
        if required:
            self.required.append(argument)

    def add_parameters(self, where: _Path, path: str, raw: dict[str, Any]) -> None:
        merged: dict[tuple[str, str], tuple[Any, _Path]] = {}
        path_item = self.document.data["paths"][path]
        for holder, at in ((path_item, where[:2]), (raw, where)):
            for index, parameter in enumerate(holder.get("parameters") or []):
                value, place = self.schemas.resolve(parameter, (*at, "parameters", index))
                if isinstance(value, dict) and "name" in value and "in" in value:
                    merged[(str(value["in"]), str(value["name"]))] = (value, place)
                elif value is not None:
                    self.document.issue(place, "a parameter needs 'name' and 'in'")
        for placeholder in _PLACEHOLDER.findall(path):
            if ("path", placeholder) not in merged:
                self.document.issue(where, f"path parameter {{{placeholder}}} is not declared")
        for (location, name), (parameter, place) in merged.items():
            self._parameter(location, name, parameter, place)

    def _parameter(self, location: str, name: str, parameter: dict[str, Any], at: _Path) -> None:
        required = bool(parameter.get("required")) or location == "path"
        if location == "cookie" or (location == "header" and name.lower() in _SKIPPED_HEADERS):
            if required and location == "cookie":
                self.document.issue(at, f"required cookie parameter {name!r} is not supported")
            return
        if location == "path" and not _PLACEHOLDER_NAME.fullmatch(name):
            self.document.issue(at, f"path parameter name {name!r} cannot be a URL placeholder")
            return
        if location not in ("path", "query", "header"):
            self.document.issue(
                at, f"parameter location {location!r} is not one of path, query, header, cookie"
            )
            return
        schema = parameter.get("schema")
        if schema is None and isinstance(parameter.get("content"), dict):
            media: Any = next(iter(parameter["content"].values()), {})
            schema = media.get("schema") if isinstance(media, dict) else None
        converted = self.schemas.convert(schema if schema is not None else {}, (*at, "schema"))
        if parameter.get("description") and isinstance(converted, dict):
            converted = {"description": str(parameter["description"])} | converted
        self._add(name, location, name, converted, required)

    def add_body(self, where: _Path, raw: dict[str, Any]) -> None:
        if "requestBody" not in raw:
            return
        body, at = self.schemas.resolve(raw["requestBody"], (*where, "requestBody"))
        if not isinstance(body, dict):
            return
        required = bool(body.get("required"))
        content: dict[str, Any] = body["content"] if isinstance(body.get("content"), dict) else {}
        media = next((m for m in content if _is_json(m)), None)
        if media is None:
            if required:
                self.document.issue(
                    (*at, "content"),
                    f"only JSON request bodies are supported, not {', '.join(content) or 'none'}",
                )
            return
        schema = (content[media] or {}).get("schema", {})
        converted = self.schemas.convert(schema, (*at, "content", media, "schema"))
        self._body(converted, required, body.get("description"))

    def _body(self, schema: Any, required: bool, description: Any) -> None:
        shape = self.schemas.lookup(schema)
        fields = shape.get("properties") if isinstance(shape, dict) else None
        flat = (
            isinstance(fields, dict)
            and fields
            and shape.get("type", "object") == "object"
            and not set(fields) & set(self.properties)
            and not any(k in shape for k in ("allOf", "anyOf", "oneOf"))
        )
        if flat:
            assert isinstance(fields, dict) and isinstance(shape, dict)
            needed = set(shape.get("required") or []) if required else set()
            for name, field_schema in fields.items():
                self._add(name, "body", name, field_schema, name in needed)
            return
        if description and isinstance(schema, dict):
            schema = {"description": str(description)} | schema
        self._add("body", "body_root", "body", schema, required)


def _is_json(media_type: str) -> bool:
    kind = media_type.split(";", 1)[0].strip().lower()
    return kind in ("application/json", "*/*", "application/*") or kind.endswith("+json")
