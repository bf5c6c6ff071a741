"""Avro binary encoding compiled from a schema into one Python function.

Why not ``fastavro.schemaless_writer`` on the hot path: measured on this
project's Event schema (about 45 leaf fields, most of them nullable unions), it
costs 65-75 µs a record, because it picks each union branch by validating the
value against every candidate and re-walks the schema on every call. Encoding
is the edge's largest per-event cost and the edge aims at 50,000 events/s per
core, so the writer is generated once per schema at start-up as straight-line
code reading the record's attributes, the way ``dataclasses`` generates
``__init__``. Output is byte-for-byte what fastavro writes (a property test
holds it to that for every schema); fastavro still parses the schemas, gives
the canonical form, and decodes.

Supported: the types our schemas use — null, boolean, int, long, float,
double, string, bytes, enum, array, map, record, and unions of null with one
other type. Anything else fails at compile time, not at run time.

Nested record values are remembered by identity: an event's endpoint context
is one object shared by every event of its batch, so it is encoded once.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

Encoder = Callable[[bytearray, Any], None]

_pack_double = struct.Struct("<d").pack
_pack_float = struct.Struct("<f").pack


def write_long(out: bytearray, n: int) -> None:
    """Zig-zag varint, as Avro encodes int and long."""
    n = (n << 1) ^ (n >> 63)
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


class _Generator:
    """Emits the body of ``encode(out, record)``; ``buf`` names the bytearray
    the code appends to (a nested record remembered by identity has its own)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.names: dict[str, object] = {
            "write_long": write_long,
            "pack_double": _pack_double,
            "pack_float": _pack_float,
        }
        self._counter = 0

    def fresh(self, stem: str) -> str:
        self._counter += 1
        return f"{stem}{self._counter}"

    def emit(self, depth: int, line: str) -> None:
        self.lines.append("    " * depth + line)

    def write(self, schema: Any, value: str, depth: int, buf: str) -> None:
        """Emit code that appends the encoding of ``value`` (a local) to ``buf``."""
        if isinstance(schema, list):
            self._union(schema, value, depth, buf)
            return
        kind = schema if isinstance(schema, str) else schema["type"]
        if isinstance(kind, (dict, list)):
            self.write(kind, value, depth, buf)
        elif kind == "null":
            self.emit(depth, "pass")
        elif kind == "boolean":
            self.emit(depth, f"{buf}.append(1 if {value} else 0)")
        elif kind in ("int", "long"):
            self.emit(depth, f"write_long({buf}, {value})")
        elif kind == "double":
            self.emit(depth, f"{buf} += pack_double({value})")
        elif kind == "float":
            self.emit(depth, f"{buf} += pack_float({value})")
        elif kind in ("string", "bytes"):
            raw = self.fresh("b")
            size = self.fresh("n")
            self.emit(depth, f"{raw} = {value}.encode()" if kind == "string" else f"{raw} = {value}")
            self.emit(depth, f"{size} = len({raw})")
            # zig-zag(n) = 2n fits one varint byte below 64.
            self.emit(depth, f"if {size} < 64: {buf}.append({size} << 1)")
            self.emit(depth, f"else: write_long({buf}, {size})")
            self.emit(depth, f"{buf} += {raw}")
        elif kind == "enum":
            table = self.fresh("symbols")
            self.names[table] = {symbol: i for i, symbol in enumerate(schema["symbols"])}
            self.emit(depth, f"write_long({buf}, {table}[{value}])")
        elif kind in ("array", "map"):
            self._collection(schema, kind, value, depth, buf)
        elif kind == "record":
            self.record(schema, value, depth, buf)
        else:
            raise ValueError(f"unsupported Avro type {kind!r}")

    def _union(self, schema: list[Any], value: str, depth: int, buf: str) -> None:
        if len(schema) != 2 or "null" not in schema:
            raise ValueError(f"only unions of null and one type are supported, not {schema!r}")
        null_index = schema.index("null")
        other = schema[1 - null_index]
        self.emit(depth, f"if {value} is None:")
        self.emit(depth + 1, f"{buf}.append({null_index << 1})")
        self.emit(depth, "else:")
        self.emit(depth + 1, f"{buf}.append({(1 - null_index) << 1})")
        if isinstance(other, dict) and other.get("type") == "record":
            self._remembered(other, value, depth + 1, buf)
        else:
            self.write(other, value, depth + 1, buf)

    def _collection(self, schema: dict[str, Any], kind: str, value: str, depth: int, buf: str) -> None:
        item = self.fresh("x")
        self.emit(depth, f"if {value}:")
        self.emit(depth + 1, f"write_long({buf}, len({value}))")
        if kind == "array":
            self.emit(depth + 1, f"for {item} in {value}:")
            self.write(schema["items"], item, depth + 2, buf)
        else:
            key = self.fresh("k")
            self.emit(depth + 1, f"for {key}, {item} in {value}.items():")
            self.write("string", key, depth + 2, buf)
            self.write(schema["values"], item, depth + 2, buf)
        self.emit(depth, f"{buf}.append(0)")

    def record(self, schema: dict[str, Any], value: str, depth: int, buf: str) -> None:
        for field in schema["fields"]:
            local = self.fresh("v")
            self.emit(depth, f"{local} = {value}.{field['name']}")
            self.write(field["type"], local, depth, buf)

    def _remembered(self, schema: dict[str, Any], value: str, depth: int, buf: str) -> None:
        """A nullable nested record: encoded once per distinct object. The
        cache holds a reference, so an identical ``id`` cannot be reused."""
        cache = self.fresh("last")
        self.names[cache] = [None, b""]
        chunk = self.fresh("chunk")
        self.emit(depth, f"if {value} is not {cache}[0]:")
        self.emit(depth + 1, f"{chunk} = bytearray()")
        self.record(schema, value, depth + 1, chunk)
        self.emit(depth + 1, f"{cache}[0] = {value}")
        self.emit(depth + 1, f"{cache}[1] = bytes({chunk})")
        self.emit(depth, f"{buf} += {cache}[1]")


def compile_encoder(schema: dict[str, Any]) -> Encoder:
    """Generate ``encode(out, record)`` for a record schema; ``record`` is any
    object with an attribute per field (our frozen records)."""
    if schema.get("type") != "record":
        raise ValueError("compile_encoder takes a record schema")
    gen = _Generator()
    gen.emit(0, "def encode(out, record):")
    gen.record(schema, "record", 1, "out")
    namespace: dict[str, Any] = dict(gen.names)
    source = "\n".join(gen.lines) + "\n"
    exec(compile(source, f"<avro encoder {schema.get('name')}>", "exec"), namespace)  # noqa: S102
    encoder: Encoder = namespace["encode"]
    return encoder
