"""The one YAML loader for everything Corral reads from files: bounded, strict, with positions.

Contracts, policy test cases and OpenAPI imports are read by :func:`load_yaml`, which builds
on PyYAML's ``SafeLoader`` (no Python objects, only YAML 1.1 core types) and adds what a
parser of untrusted files needs:

- **Size.** A text over :data:`MAX_YAML_BYTES` (UTF-8) is refused before the scanner sees it.
- **Aliases.** Anchors and aliases are allowed for small reuse, but each document may use at
  most :data:`MAX_YAML_ALIASES` aliases, and together they may add at most
  :data:`MAX_YAML_ALIAS_NODES` nodes to the document (an alias adds the expanded size of the
  node it names). Both are counted while the document is composed, before any node is
  expanded or any object built, so a "billion laughs" document (each anchor aliasing the
  previous one several times) is refused after a few dozen events, whatever it would
  expand to. An alias to a node that contains it (a recursive alias) is refused too.
- **Depth.** Collections nest at most :data:`MAX_YAML_DEPTH` levels (the composer, the
  constructor and the validators are recursive).
- **Duplicate keys.** YAML 1.2 (section 3.2.1.3) requires mapping keys to be unique; PyYAML
  keeps the last. A repeated key (compared as the constructed values are, so ``1``, ``1.0``
  and ``true`` are one key, as they would be in the mapping) is refused with its line and the
  line of the first.
- **Values that cannot be built** (``2024-02-30``, ``!!int 0x``, an integer of more than 4,300
  digits) are refused as YAML errors with their line instead of escaping as ``ValueError``.

Every refusal is an :class:`~corral.errors.InvalidContract` whose issue names the file, the
document index, the field path and the one-based line. Lines are recorded while composing:
a path reached through an alias has the line of the alias.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.parser import Parser
from yaml.reader import Reader, ReaderError
from yaml.resolver import Resolver
from yaml.scanner import Scanner

from corral.contracts._positions import Lines, dotted
from corral.errors import ContractIssue, InvalidContract

__all__ = [
    "MAX_YAML_ALIASES",
    "MAX_YAML_ALIAS_NODES",
    "MAX_YAML_BYTES",
    "MAX_YAML_DEPTH",
    "YamlDocument",
    "load_yaml",
    "read_yaml_file",
]

MAX_YAML_BYTES = 1 << 20
"""Largest YAML text read, in bytes of UTF-8 (1 MiB); larger files are refused unread."""

MAX_YAML_ALIASES = 100
"""Most aliases (``*name``) one document may use."""

MAX_YAML_ALIAS_NODES = 10_000
"""Most nodes the aliases of one document may add to it once expanded (each alias adds the
expanded size of its anchor's node: a scalar is 1, a collection 1 plus its entries)."""

MAX_YAML_DEPTH = 100
"""Deepest nesting of collections (the root collection is level 1)."""

_Path = tuple[str | int, ...]
_MERGE_TAG = "tag:yaml.org,2002:merge"
# What PyYAML's safe constructors raise on a value they cannot build (``!!int ''`` indexes an
# empty string, ``!!timestamp x`` reads a failed regex match): the value is bad, not Corral.
_BUILD_ERRORS = (ValueError, TypeError, ArithmeticError, LookupError, AttributeError)


@dataclass(frozen=True)
class YamlDocument:
    """One document of a YAML stream.

    Attributes:
        index: Zero-based position of the document in the stream.
        data: What it holds (``None`` for an empty document).
        lines: One-based line of every field path written in the document.
    """

    index: int
    data: Any
    lines: Lines


class _Refused(Exception):
    """A limit or rule of :class:`_BoundedLoader` was broken (turned into a ContractIssue)."""

    def __init__(self, path: _Path, line: int | None, message: str) -> None:
        super().__init__(message)
        self.path, self.line, self.message = path, line, message


class _PythonEvents(Reader, Scanner, Parser):
    """PyYAML's pure-Python event parser (when PyYAML was built without libyaml)."""

    def __init__(self, text: str) -> None:
        Reader.__init__(self, text)
        Scanner.__init__(self)
        Parser.__init__(self)


def _events(text: str) -> Any:
    """An event parser over ``text``: libyaml's when PyYAML has it (about 4x faster)."""
    if yaml.__with_libyaml__:
        from yaml._yaml import CParser

        return CParser(text)
    return _PythonEvents(text)


class _BoundedLoader(Composer, SafeConstructor, Resolver):
    """``SafeLoader`` that counts while it composes: aliases, their expansion, depth, keys.

    Scanning and parsing into events is PyYAML's (in C with libyaml); composing events into
    nodes is PyYAML's Python ``Composer``, with the checks added here.
    """

    def __init__(self, text: str) -> None:
        _check_printable(text)
        self._parser = _events(text)
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)
        self.lines: Lines = {}
        self._path: list[str | int] = []
        self._sizes: dict[int, int] = {}  # id(node) -> expanded size, once composed
        self._aliases = 0
        self._alias_nodes = 0
        self._depth = 0
        self._keys = SafeConstructor()

    def check_event(self, *choices: Any) -> bool:
        return bool(self._parser.check_event(*choices))

    def peek_event(self) -> Any:
        return self._parser.peek_event()

    def get_event(self) -> Any:
        return self._parser.get_event()

    def dispose(self) -> None:
        self._parser.dispose()

    def compose_document(self) -> Any:
        self.lines, self._sizes = {}, {}
        self._aliases = self._alias_nodes = 0
        self._keys = SafeConstructor()
        return super().compose_document()

    def compose_node(self, parent: Any, index: Any) -> Any:
        event: Any = self.peek_event()
        entry = _entry(index)
        if entry is not None:
            self._path.append(entry)
        path = tuple(self._path)
        if entry is not None or parent is None:  # a key's own line is recorded for its value
            mark = index.start_mark if isinstance(index, yaml.Node) else event.start_mark
            self.lines[path] = mark.line + 1
        try:
            if isinstance(event, yaml.AliasEvent):
                self._count_alias(event, path)
                return super().compose_node(parent, index)
            self._depth += 1
            if self._depth > MAX_YAML_DEPTH and not isinstance(event, yaml.ScalarEvent):
                raise _Refused(
                    path[:10],
                    event.start_mark.line + 1,
                    f"nested more than {MAX_YAML_DEPTH} levels deep; flatten the document",
                )
            node: Any = super().compose_node(parent, index)
            self._depth -= 1
            self._sizes[id(node)] = _size(node, self._sizes)
            return node
        finally:
            if entry is not None:
                self._path.pop()

    def _count_alias(self, event: Any, path: _Path) -> None:
        target = self.anchors.get(event.anchor)
        if target is None:
            return  # PyYAML reports the undefined alias with its line
        line = event.start_mark.line + 1
        size = self._sizes.get(id(target))
        if size is None:
            raise _Refused(path, line, f"alias *{event.anchor} refers to a node that holds it")
        self._aliases += 1
        self._alias_nodes += size
        if self._aliases > MAX_YAML_ALIASES:
            raise _Refused(
                path,
                line,
                f"more than {MAX_YAML_ALIASES} aliases in one document; write the values out",
            )
        if self._alias_nodes > MAX_YAML_ALIAS_NODES:
            raise _Refused(
                path,
                line,
                f"aliases expand this document by more than {MAX_YAML_ALIAS_NODES} nodes "
                f"(*{event.anchor} alone adds {size}); write the values out instead",
            )

    def compose_mapping_node(self, anchor: Any) -> Any:
        node = super().compose_mapping_node(anchor)
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self._key(key_node)
            if key is None:
                continue
            line = key_node.start_mark.line + 1
            if key in seen:
                path = (*self._path, _entry(key_node) or "?")
                raise _Refused(
                    path,
                    line,
                    f"duplicate key {_shown(key_node)!r} (first at line {seen[key]}); YAML "
                    "keeps only the last, so remove one or merge them",
                )
            seen[key] = line
        return node

    def _key(self, key_node: yaml.Node) -> Any:
        """The key as the mapping would hold it, or ``None`` for keys that are not scalars."""
        if not isinstance(key_node, yaml.ScalarNode):
            return None
        if key_node.tag == _MERGE_TAG:
            return (_MERGE_TAG,)
        try:
            key = self._keys.construct_object(key_node, deep=True)
            hash(key)
        except (yaml.YAMLError, *_BUILD_ERRORS):
            return (key_node.tag, key_node.value)  # reported when the document is built
        return key

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except _BUILD_ERRORS as exc:
            raise ConstructorError(
                None,
                None,
                f"cannot read {_shown(node)[:80]!r} as {node.tag.rsplit(':', 1)[-1]}: {exc}",
                node.start_mark,
            ) from None


def _entry(index: Any) -> str | int | None:
    """The path element a child adds: its key (mapping value) or position (sequence item)."""
    if isinstance(index, int):
        return index
    if isinstance(index, yaml.ScalarNode):
        return str(index.value)
    if isinstance(index, yaml.Node):
        return f"<{_kind(index)} key>"
    return None  # a mapping key, or the root


def _shown(node: yaml.Node) -> str:
    return str(node.value) if isinstance(node, yaml.ScalarNode) else f"<{_kind(node)}>"


def _kind(node: yaml.Node) -> str:
    return "mapping" if isinstance(node, yaml.MappingNode) else "sequence"


def _size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """Expanded size of a just-composed node from its children's (aliases count in full)."""
    if isinstance(node, yaml.SequenceNode):
        return 1 + sum(sizes.get(id(child), 1) for child in node.value)
    if isinstance(node, yaml.MappingNode):
        return 1 + sum(sizes.get(id(k), 1) + sizes.get(id(v), 1) for k, v in node.value)
    return 1


def load_yaml(
    text: str,
    *,
    source: str = "<string>",
    single: bool = False,
    render_path: Callable[[_Path], str] = dotted,
) -> list[YamlDocument]:
    """Parse a YAML stream within Corral's limits (see the module docstring).

    Args:
        text: The YAML text (one or many documents separated by ``---``).
        source: Name in error messages (a file path).
        single: Refuse a stream of more than one document.
        render_path: How issues show a field path (dotted by default; OpenAPI uses JSON
            pointers).

    Returns:
        Every document in order, empty ones included (their ``data`` is ``None``).

    Raises:
        InvalidContract: one issue naming the file, document, field path and line: the text
            is over :data:`MAX_YAML_BYTES`, is not valid YAML, uses too many aliases or
            aliases that expand too far, nests too deeply, repeats a mapping key, or holds a
            value that cannot be built.
    """
    _check_size(len(text) if len(text) > MAX_YAML_BYTES else _utf8_length(text), source)
    documents: list[YamlDocument] = []

    def issue(path: _Path, line: int | None, message: str) -> InvalidContract:
        index = len(documents)
        return InvalidContract(
            [ContractIssue(source, index, render_path(path) if path else "", line, message)]
        )

    loader: _BoundedLoader | None = None
    try:
        loader = _BoundedLoader(text)  # checks every character is printable
        while loader.check_node():
            if single and documents:
                event: Any = loader.peek_event()
                line = event.start_mark.line + 1
                raise issue((), line, "expected one YAML document, found a second one")
            node = loader.get_node()
            data = loader.construct_document(node) if node is not None else None
            documents.append(YamlDocument(len(documents), data, loader.lines))
    except _Refused as exc:
        raise issue(exc.path, exc.line, exc.message) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = " ".join(p for p in (exc.context, exc.problem) if p)
        raise issue((), mark.line + 1 if mark else None, f"invalid YAML: {problem}") from None
    except ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        character = f"#x{exc.character:04x}" if isinstance(exc.character, int) else "a byte"
        raise issue((), line, f"invalid YAML: {exc.reason} ({character})") from None
    except (yaml.YAMLError, *_BUILD_ERRORS, RecursionError) as exc:
        raise issue((), None, f"invalid YAML: {exc}") from None
    finally:
        if loader is not None:
            loader.dispose()
    return documents


def read_yaml_file(path: Path, *, source: str | None = None) -> str:
    """Read a YAML file as UTF-8 text, refusing it unread when over :data:`MAX_YAML_BYTES`.

    Args:
        path: The file.
        source: Name in error messages (default: the path).

    Raises:
        InvalidContract: the file is too large or not UTF-8.
        OSError: the file cannot be read.
    """
    name = str(path) if source is None else source
    _check_size(path.stat().st_size, name)
    with path.open("rb") as handle:
        raw = handle.read(MAX_YAML_BYTES + 1)  # a file that grew since stat is still bounded
    _check_size(len(raw), name)
    try:
        return str(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise InvalidContract(
            [ContractIssue(name, 0, "", line, f"not UTF-8 text: {exc.reason} at byte {exc.start}")]
        ) from None


def _check_printable(text: str) -> None:
    """YAML 1.1's printable characters only (section 5.1; PyYAML's rule, whichever parser runs).

    Raises:
        ReaderError: at the first other character (a control character, a lone surrogate).
    """
    found = Reader.NON_PRINTABLE.search(text)
    if found is not None:
        character = found.group()
        raise ReaderError(
            "<text>", found.start(), ord(character), "unicode", "special characters are not allowed"
        )


def _utf8_length(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _check_size(size: int, source: str) -> None:
    if size > MAX_YAML_BYTES:
        raise InvalidContract(
            [
                ContractIssue(
                    source,
                    0,
                    "",
                    None,
                    f"{size} bytes is over the {MAX_YAML_BYTES}-byte limit for one YAML file; "
                    "split it into several files",
                )
            ]
        )
