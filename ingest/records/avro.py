"""Avro binary encoding and decoding compiled from a schema into Python functions.

It earns its size (about 500 lines): the writer and the reader generators
share one code emitter and one set of supported types, and hold each other to
the same wire format; apart, each would repeat them.

Why not ``fastavro.schemaless_writer`` on the hot path: measured on this
project's Event schema (about 45 leaf fields, most of them nullable unions), it
costs 65-75 µs a record, because it picks each union branch by validating the
value against every candidate and re-walks the schema on every call. Encoding
is the edge's largest per-event cost and the edge aims at 50,000 events/s per
core, so the writer is generated once per schema at start-up as straight-line
code reading the record's attributes, the way ``dataclasses`` generates
``__init__``. Output is byte-for-byte what fastavro writes (a property test
holds it to that for every schema); fastavro still parses the schemas and
gives the canonical form.

The reader is generated the same way, for the same reason on the consuming
side: ``fastavro.schemaless_reader`` is the endpoint worker's largest cost per
record, and it builds dicts that then have to become records. The generated
one reads the bytes straight into our NamedTuples: measured side by side,
2-2.5x cheaper than ``schemaless_reader`` alone and about 3x cheaper than it
plus building the records. It is stricter than fastavro, never looser (a
property test holds it to fastavro's reading of any bytes it accepts): every
read is bounds-checked, and what fastavro would wrap around or let through
(a negative length or index, a varint beyond 64 bits, a boolean byte other
than 0 or 1) is an :class:`AvroDecodeError`.

Supported: the types our schemas use — null, boolean, int, long, float,
double, string, bytes, enum, array, map, record, and unions of null with one
other type. Anything else fails at compile time, not at run time.

Nested record values are remembered by identity: an event's endpoint context
is one object shared by every event of its batch, so it is encoded once; so
are the top-level fields a caller names as shared (a request's IDs).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from typing import Any

from ingest.errors import DecodeError

Encoder = Callable[[bytearray, Any], None]
# decode(data, pos) -> (record, position after it).
Decoder = Callable[[bytes, int], tuple[Any, int]]

_pack_double = struct.Struct("<d").pack
_pack_float = struct.Struct("<f").pack
_unpack_double = struct.Struct("<d").unpack_from
_unpack_float = struct.Struct("<f").unpack_from


def write_long(out: bytearray, n: int) -> None:
    """Zig-zag varint, as Avro encodes int and long."""
    n = (n << 1) ^ (n >> 63)
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


class _Source:
    """Python source built line by line, then defined once."""

    def __init__(self, names: dict[str, object]) -> None:
        self.lines: list[str] = []
        self.names = names
        self._counter = 0

    def fresh(self, stem: str) -> str:
        self._counter += 1
        return f"{stem}{self._counter}"

    def emit(self, depth: int, line: str) -> None:
        self.lines.append("    " * depth + line)

    def define(self, function: str, filename: str) -> Any:
        """Execute the source; → the function it defines."""
        namespace = dict(self.names)
        exec(compile("\n".join(self.lines) + "\n", filename, "exec"), namespace)  # noqa: S102
        return namespace[function]


class _Generator(_Source):
    """Emits the body of ``encode(out, record)``; ``buf`` names the bytearray
    the code appends to (a nested record remembered by identity has its own).
    A record whose class is in ``types`` is unpacked in one step, as a
    tuple, instead of read an attribute at a time (a NamedTuple's attributes
    are descriptors CPython 3.11 does not specialise: about 40 ns each)."""

    def __init__(self, types: Mapping[str, type[Any]], shared: frozenset[str]) -> None:
        super().__init__({"write_long": write_long, "pack_double": _pack_double, "pack_float": _pack_float})
        self.types = types
        self.shared = shared

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
        item, count = self.fresh("x"), self.fresh("n")
        self.emit(depth, f"if {value}:")
        self.emit(depth + 1, f"{count} = len({value})")
        self.emit(depth + 1, f"if {count} < 64: {buf}.append({count} << 1)")
        self.emit(depth + 1, f"else: write_long({buf}, {count})")
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
        names = [field["name"] for field in schema["fields"]]
        cls = self.types.get(str(schema["name"]).rpartition(".")[2])
        if cls is None:
            local = {name: f"{value}.{name}" for name in names}
        else:
            fields = getattr(cls, "_fields", None)
            if not issubclass(cls, tuple) or not isinstance(fields, tuple) or sorted(fields) != sorted(names):
                raise ValueError(f"{cls.__name__} is not a NamedTuple of the fields of {schema['name']}")
            local = {name: self.fresh("v") for name in fields}
            self.emit(depth, f"{''.join(f'{local[name]}, ' for name in fields)}= {value}")
        for name, field in zip(names, schema["fields"], strict=True):
            if cls is None:  # read once into a local: the code below may name it often
                attribute, local[name] = local[name], self.fresh("v")
                self.emit(depth, f"{local[name]} = {attribute}")
            if name in self.shared:
                self._shared(field["type"], local[name], depth, buf)
            else:
                self.write(field["type"], local[name], depth, buf)

    def _shared(self, schema: Any, value: str, depth: int, buf: str) -> None:
        """A field's encoding remembered for the same object, as nested
        records are: the members one request gives all its records (its
        app, endpoint and request IDs, its arrival time) are one object in
        each, and cost a comparison instead of an encoding. A shared member
        that is not one object costs a comparison and a copy of its bytes."""
        cache, start = self.fresh("last"), self.fresh("at")
        # Primed with an object no record holds: None is a value here.
        self.names[cache] = [object(), b""]
        self.emit(depth, f"if {value} is {cache}[0]: {buf} += {cache}[1]")
        self.emit(depth, "else:")
        self.emit(depth + 1, f"{start} = len({buf})")
        self.write(schema, value, depth + 1, buf)
        self.emit(depth + 1, f"{cache}[0] = {value}")
        self.emit(depth + 1, f"{cache}[1] = bytes({buf}[{start}:])")

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


def compile_encoder(
    schema: dict[str, Any],
    types: Mapping[str, type[Any]] | None = None,
    shared: frozenset[str] = frozenset(),
) -> Encoder:
    """Generate ``encode(out, record)`` for a record schema; ``record`` is any
    object with an attribute per field (our frozen records). A record whose
    short name is in ``types`` must be an instance of that NamedTuple (it is
    unpacked by position); ValueError here, once, for a class whose fields
    are not the record's. The top-level fields named in ``shared`` are
    encoded once per distinct object (the cache holds a reference, so an
    identical ``id`` cannot be reused)."""
    if schema.get("type") != "record":
        raise ValueError("compile_encoder takes a record schema")
    gen = _Generator(types or {}, shared)
    gen.emit(0, "def encode(out, record):")
    gen.record(schema, "record", 1, "out")
    encoder: Encoder = gen.define("encode", f"<avro encoder {schema.get('name')}>")
    return encoder


# --- decoding ----------------------------------------------------------------


class AvroDecodeError(DecodeError):
    """Bytes that are not a record of the decoder's schema. ``position`` is
    the offset into the data where the decoder found out."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(f"{message} (at byte {position})", position)


# A long is 64 bits: ten 7-bit groups at most.
_MAX_VARINT_BYTES = 10


def read_long(data: bytes, pos: int) -> tuple[int, int]:
    """Zig-zag varint at ``pos`` → (value, position after it). Over-long
    encodings of a value, within the ten bytes a long takes, are accepted, as
    fastavro and Avro's Java reader accept them."""
    start = pos
    try:
        b = data[pos]
        n = b & 0x7F
        shift = 7
        pos += 1
        # Bounded by the data; the length is checked once, after the loop.
        while b & 0x80:
            b = data[pos]
            pos += 1
            n |= (b & 0x7F) << shift
            shift += 7
    except IndexError:
        raise AvroDecodeError("a varint runs past the end of the data", start) from None
    if shift > 7 * _MAX_VARINT_BYTES:
        raise AvroDecodeError(f"a varint longer than {_MAX_VARINT_BYTES} bytes", start)
    if n >> 64:
        raise AvroDecodeError("a varint beyond 64 bits", start)
    return (n >> 1) ^ -(n & 1), pos


def _read_length(data: bytes, pos: int) -> tuple[int, int]:
    n, after = read_long(data, pos)
    if n < 0:
        raise AvroDecodeError(f"a negative length {n}", pos)
    return n, after


def _read_branch(data: bytes, pos: int) -> tuple[int, int]:
    """A union index not in the one-byte form → its zig-zag byte (0 or 2)."""
    index, after = read_long(data, pos)
    if index not in (0, 1):
        raise AvroDecodeError(f"a union index {index} of a two-branch union", pos)
    return index << 1, after


def _read_count(data: bytes, pos: int) -> tuple[int, int]:
    """An array or map block count not in the one-byte positive form. A
    negative count is followed by the block's size in bytes, which a reader
    that reads every item needs not."""
    count, pos = read_long(data, pos)
    if count < 0:
        count = -count
        _, pos = read_long(data, pos)
    return count, pos


def _read_symbol(data: bytes, pos: int, symbols: tuple[str, ...]) -> tuple[str, int]:
    index, after = read_long(data, pos)
    if not 0 <= index < len(symbols):
        raise AvroDecodeError(f"an enum index {index} of {len(symbols)} symbols", pos)
    return symbols[index], after


def _min_bytes(schema: Any) -> int:
    """The fewest bytes a value of ``schema`` takes: bounds an array or map
    block's count by the bytes left, so a forged count fails at once rather
    than looping or allocating. (Items of no bytes, as in an array of nulls,
    leave the count unbounded; none of our schemas has them.)"""
    if isinstance(schema, list):
        return 1
    kind = schema if isinstance(schema, str) else schema["type"]
    if isinstance(kind, (dict, list)):
        return _min_bytes(kind)
    if kind == "record":
        return sum(_min_bytes(field["type"]) for field in schema["fields"])
    return {"null": 0, "float": 4, "double": 8}.get(kind, 1)


# Tails shorter than this are read, not looked up: a user ID alone reads
# as fast as its lookup would take. Longer than the most, they are read too:
# a memo entry's key is its tail, so this bounds the memo's memory (an
# endpoint context is a few hundred bytes; a record on the topic, whoever
# wrote it, can be a megabyte).
TAIL_MEMO_MIN_BYTES = 32
TAIL_MEMO_MAX_BYTES = 2048


class _Reader(_Source):
    """Emits the body of ``decode(data, pos)``: each value is read into a
    fresh local; ``pos`` is the read position, ``size`` is ``len(data)``, and
    ``b``, ``n``, ``end`` are scratch consumed on the line after they are set.
    A short read of ``data[pos]`` or of a float is IndexError or struct.error,
    which the function's one ``try`` turns into AvroDecodeError; a slice does
    not fail short, so every length is checked against ``size`` before it."""

    def __init__(self, types: Mapping[str, type[Any]], tail_memo: int = 0) -> None:
        super().__init__(
            {
                "AvroDecodeError": AvroDecodeError,
                "read_long": read_long,
                "read_length": _read_length,
                "read_branch": _read_branch,
                "read_count": _read_count,
                "read_symbol": _read_symbol,
                "unpack_double": _unpack_double,
                "unpack_float": _unpack_float,
                "new": tuple.__new__,
                "struct_error": struct.error,
            }
        )
        self.types = types
        # How many tails of the top record's last field to remember (0: none);
        # the top record is set by _define_decoder.
        self.tail_memo = tail_memo
        self.top: dict[str, Any] | None = None

    def read(self, schema: Any, target: str, depth: int) -> None:
        """Emit code that reads a value of ``schema`` into the local ``target``."""
        if isinstance(schema, list):
            self._union(schema, target, depth)
            return
        if isinstance(schema, dict) and "logicalType" in schema:
            # fastavro would give a datetime, Decimal or UUID; we would not.
            raise ValueError(f"logical types are not supported: {schema['logicalType']!r}")
        kind = schema if isinstance(schema, str) else schema["type"]
        if isinstance(kind, (dict, list)):
            self.read(kind, target, depth)
        elif kind == "null":
            self.emit(depth, f"{target} = None")
        elif kind == "boolean":
            self.emit(depth, "b = data[pos]")
            self.emit(depth, "if b > 1: raise AvroDecodeError(f'a boolean byte {b}', pos)")
            self.emit(depth, f"{target} = b == 1")
            self.emit(depth, "pos += 1")
        elif kind in ("int", "long"):
            self.emit(depth, "b = data[pos]")
            # One byte holds -64..63: most counts, indexes and small numbers.
            self.emit(depth, f"if b < 0x80: {target} = (b >> 1) ^ -(b & 1); pos += 1")
            self.emit(depth, f"else: {target}, pos = read_long(data, pos)")
            if kind == "int":
                self.emit(depth, f"if not -0x80000000 <= {target} <= 0x7FFFFFFF:")
                self.emit(depth + 1, f"raise AvroDecodeError(f'an int {{{target}}} beyond 32 bits', pos)")
        elif kind == "double":
            self.emit(depth, f"{target} = unpack_double(data, pos)[0]")
            self.emit(depth, "pos += 8")
        elif kind == "float":
            self.emit(depth, f"{target} = unpack_float(data, pos)[0]")
            self.emit(depth, "pos += 4")
        elif kind in ("string", "bytes"):
            self.emit(depth, "b = data[pos]")
            # A non-negative length below 64 is one even byte.
            self.emit(depth, "if b & 0x81: n, pos = read_length(data, pos); end = pos + n")
            self.emit(depth, "else: pos += 1; end = pos + (b >> 1)")
            self.emit(
                depth, "if end > size: raise AvroDecodeError(f'a length {end - pos} past the end', pos)"
            )
            self.emit(depth, f"{target} = data[pos:end]" + (".decode()" if kind == "string" else ""))
            self.emit(depth, "pos = end")
        elif kind == "enum":
            symbols = tuple(schema["symbols"])
            table, names = self.fresh("by_byte"), self.fresh("symbols")
            self.names[table] = {i << 1: symbol for i, symbol in enumerate(symbols[:64])}
            self.names[names] = symbols
            self.emit(depth, f"{target} = {table}.get(data[pos])")
            self.emit(depth, f"if {target} is None: {target}, pos = read_symbol(data, pos, {names})")
            self.emit(depth, "else: pos += 1")
        elif kind in ("array", "map"):
            self._collection(schema, kind, target, depth)
        elif kind == "record":
            self.record(schema, target, depth)
        else:
            raise ValueError(f"unsupported Avro type {kind!r}")

    def _union(self, schema: list[Any], target: str, depth: int) -> None:
        null_byte, other = self.branch(schema, depth)
        self.emit(depth, f"if b == {null_byte}: {target} = None")
        self.emit(depth, "else:")
        self.read(other, target, depth + 1)

    def branch(self, schema: list[Any], depth: int) -> tuple[int, Any]:
        """Emit code that reads a union's index into ``b`` as its zig-zag
        byte; → (the null branch's byte, the other branch's schema)."""
        if len(schema) != 2 or "null" not in schema:
            raise ValueError(f"only unions of null and one type are supported, not {schema!r}")
        null_index = schema.index("null")
        self.emit(depth, "b = data[pos]")
        # Anything but the bytes 0 and 2 (indexes 0 and 1) is an over-long
        # encoding or no branch of ours: the helper tells which.
        self.emit(depth, "if b & 0xFD: b, pos = read_branch(data, pos)")
        self.emit(depth, "else: pos += 1")
        return null_index << 1, schema[1 - null_index]

    def _collection(self, schema: dict[str, Any], kind: str, target: str, depth: int) -> None:
        """Blocks of items until a block of none."""
        self.emit(depth, f"{target} = {{}}" if kind == "map" else f"{target} = []")
        item_bytes = (1 + _min_bytes(schema["values"])) if kind == "map" else _min_bytes(schema["items"])
        block, inner = self.blocks(item_bytes, depth)
        item = self.fresh("x")
        if kind == "array":
            self.read(schema["items"], item, inner + 1)
            self.emit(inner + 1, f"{target}.append({item})")
        else:
            key = self.fresh("k")
            self.read("string", key, inner + 1)
            self.read(schema["values"], item, inner + 1)
            self.emit(inner + 1, f"{target}[{key}] = {item}")
        self.emit(inner, f"{block} = data[pos]")
        self.emit(inner, "pos += 1")

    def blocks(self, item_bytes: int, depth: int) -> tuple[str, int]:
        """Emit the loop over an array's or map's blocks, down to ``for _ in
        range(count):``; → (the block local, the loop body's depth minus
        one), where the caller emits each item, then reads the next block."""
        block, count = self.fresh("block"), self.fresh("count")
        self.emit(depth, f"{block} = data[pos]")
        self.emit(depth, "pos += 1")
        self.emit(depth, f"while {block}:")
        inner = depth + 1
        self.emit(inner, f"if {block} & 0x81: {count}, pos = read_count(data, pos - 1)")
        self.emit(inner, f"else: {count} = {block} >> 1")
        if item_bytes:
            self.emit(inner, f"if {count} * {item_bytes} > size - pos:")
            self.emit(inner + 1, f"raise AvroDecodeError(f'a block of {{{count}}} items past the end', pos)")
        self.emit(inner, f"for _ in range({count}):")
        return block, inner

    def record(self, schema: dict[str, Any], target: str, depth: int) -> None:
        """Read the fields in the schema's order; build the record in its
        class's field order."""
        cls = self.record_class(schema)
        local = {}
        for field in schema["fields"]:
            local[field["name"]] = self.fresh("v")
            self.field(schema, field, local[field["name"]], depth)
        self.build(cls, local, target, depth)

    def field(self, schema: dict[str, Any], field: dict[str, Any], target: str, depth: int) -> None:
        """Read a field of record ``schema``: through the tail memo when it is
        the one :meth:`memoizes`, else as its type is read."""
        if self.memoizes(schema, field):
            self.memoized(field["type"], target, depth)
        else:
            self.read(field["type"], target, depth)

    def memoizes(self, schema: dict[str, Any], field: dict[str, Any]) -> bool:
        """Whether ``field`` is read through the tail memo: the top record's
        last field, when it holds a record and nothing mutable (a value
        found in the memo is shared by every record that has it)."""
        return (
            self.tail_memo > 0
            and schema is self.top
            and field is schema["fields"][-1]
            and "record" in (kinds := _kinds(field["type"]))
            and not kinds & {"array", "map"}
        )

    def memoized(self, schema: Any, target: str, depth: int) -> None:
        """Read ``schema`` into ``target`` behind a lookup of the bytes left.
        The top record's last field is all that is left of the data (the
        caller refuses stray bytes after it by the end position), so equal
        tails are equal values, of the same length: a device's events carry
        one endpoint context, encoded the same each time. Only bytes are
        looked up; what fails to decode is never remembered."""
        memo = self.fresh("memo")
        self.names[memo] = {}
        sized = f"{TAIL_MEMO_MIN_BYTES} <= size - pos <= {TAIL_MEMO_MAX_BYTES}"
        self.emit(depth, f"tail = data[pos:] if {sized} and type(data) is bytes else None")
        self.emit(depth, f"hit = None if tail is None else {memo}.get(tail)")
        self.emit(depth, "if hit is not None:")
        self.emit(depth + 1, f"{target}, n = hit")
        self.emit(depth + 1, "pos += n")
        self.emit(depth, "else:")
        self.emit(depth + 1, "start = pos")
        self.read(schema, target, depth + 1)
        self.emit(depth + 1, "if tail is not None:")
        self.emit(depth + 2, f"if len({memo}) >= {self.tail_memo}: {memo}.clear()")
        self.emit(depth + 2, f"{memo}[tail] = ({target}, pos - start)")

    def record_class(self, schema: dict[str, Any]) -> type[Any]:
        """The NamedTuple a record builds, checked against the schema."""
        short = str(schema["name"]).rpartition(".")[2]
        cls = self.types.get(short)
        if cls is None:
            raise ValueError(f"no class given for record {short}")
        fields = getattr(cls, "_fields", None)
        if not issubclass(cls, tuple) or not isinstance(fields, tuple):
            raise TypeError(f"{cls.__name__} for record {short} is not a NamedTuple")
        names = [field["name"] for field in schema["fields"]]
        if sorted(names) != sorted(fields):
            raise ValueError(
                f"record {short} has fields {sorted(names)}, {cls.__name__} has {sorted(fields)}"
            )
        return cls

    def build(self, cls: type[Any], local: Mapping[str, str], target: str, depth: int) -> None:
        """Emit ``target = cls(...)`` of the locals (or names) in ``local``."""
        built = self.fresh("cls")
        self.names[built] = cls
        # tuple.__new__ is what a NamedTuple's generated __new__ ends in,
        # without its Python frame; every field is given, so no defaults apply.
        values = "".join(f"{local[name]}, " for name in cls._fields)
        self.emit(depth, f"{target} = new({built}, ({values}))")


def compile_decoder(schema: dict[str, Any], types: Mapping[str, type[Any]], *, tail_memo: int = 0) -> Decoder:
    """Generate ``decode(data, pos) -> (record, end)`` for a record schema
    (parsed by fastavro): the record encoded at ``data[pos:]`` (``data`` is
    bytes) and the position just after it, which the caller compares with
    ``len(data)`` if the record should be all of it.

    ``types`` maps each record's short name (``Demographic``) to the
    NamedTuple to build, positionally in its ``_fields`` order; enums decode
    to their symbol, arrays to lists, maps to dicts. Raises here, once:
    ValueError for a schema this module cannot read, a missing class, or a
    class whose fields are not the record's; TypeError for a class that is
    not a NamedTuple. The decoder raises only :class:`AvroDecodeError`, for
    bytes that are not a record of the schema: cut short, a length past the
    end, a negative length, a union or enum index out of range, invalid
    UTF-8, a varint beyond 64 bits, a boolean byte other than 0 or 1.

    With ``tail_memo`` above 0, the top record's last field, when it holds a
    record and nothing mutable, is remembered by the bytes left where it
    starts (they are all of it, and whatever stray bytes follow, which the
    caller's end check refuses either way): a later ``data`` of type bytes
    whose tail is the same bytes gets the same object and the same end, not
    a second read. At most ``tail_memo`` tails are held, each of
    ``TAIL_MEMO_MIN_BYTES`` to ``TAIL_MEMO_MAX_BYTES``, all forgotten when
    that many are; bytes that fail to decode are never held.
    """
    if schema.get("type") != "record":
        raise ValueError("compile_decoder takes a record schema")
    return _define_decoder(_Reader(types, tail_memo), schema, "decoder")


def _kinds(schema: Any) -> set[str]:
    """The Avro types a value of ``schema`` is made of, at any depth."""
    if isinstance(schema, list):
        return set().union(*map(_kinds, schema))
    kind = schema if isinstance(schema, str) else schema["type"]
    if isinstance(kind, (dict, list)):
        return _kinds(kind)
    if kind == "record":
        return {kind}.union(*(_kinds(field["type"]) for field in schema["fields"]))
    if kind in ("array", "map"):
        return {kind} | _kinds(schema["items"] if kind == "array" else schema["values"])
    return {kind}


def _define_decoder(gen: _Reader, schema: dict[str, Any], what: str) -> Decoder:
    """``decode(data, pos)`` of a record schema, emitted by ``gen``."""
    gen.top = schema
    gen.emit(0, "def decode(data, pos):")
    gen.emit(1, "size = len(data)")
    gen.emit(1, "try:")
    gen.record(schema, "record", 2)
    gen.emit(1, "except (IndexError, struct_error):")
    gen.emit(2, "raise AvroDecodeError('the data ends inside the record', pos) from None")
    gen.emit(1, "except UnicodeDecodeError as exc:")
    gen.emit(2, "raise AvroDecodeError(f'a string is not UTF-8: {exc.reason}', pos) from exc")
    # A skipped fixed-width value at the end may step past it (projections).
    gen.emit(1, "if pos > size: raise AvroDecodeError('the data ends inside the record', size)")
    gen.emit(1, "return record, pos")
    decoder: Decoder = gen.define("decode", f"<avro {what} {schema.get('name')}>")
    return decoder


# --- projection: reading only the fields a consumer needs ----------------------


class _Projector(_Reader):
    """A :class:`_Reader` that, of the records named in ``fields``, reads
    only the listed fields and steps over the others: their bytes are
    bounds-checked and skipped, never decoded, and the record gets a
    placeholder in their place."""

    def __init__(
        self, types: Mapping[str, type[Any]], fields: Mapping[str, frozenset[str]], tail_memo: int = 0
    ) -> None:
        super().__init__(types, tail_memo)
        self.fields = fields

    def record(self, schema: dict[str, Any], target: str, depth: int) -> None:
        short = str(schema["name"]).rpartition(".")[2]
        kept = self.fields.get(short)
        if kept is None:
            super().record(schema, target, depth)
            return
        cls = self.record_class(schema)
        if unknown := kept - set(cls._fields):
            raise ValueError(f"record {short} has no fields {sorted(unknown)}")
        local = {}
        for field in schema["fields"]:
            name = field["name"]
            if name in kept:
                local[name] = self.fresh("v")
                self.field(schema, field, local[name], depth)
            else:
                local[name] = self.fresh("placeholder")
                self.names[local[name]] = _placeholder(cls, name, field["type"])
                self.skip(field["type"], depth)
        self.build(cls, local, target, depth)

    def skip(self, schema: Any, depth: int) -> None:
        """Emit code that steps ``pos`` over a value of ``schema``. Lengths
        and counts are checked against ``size``; a fixed-width value last in
        the data is checked by the decoder's final ``pos > size``."""
        if isinstance(schema, list):
            null_byte, other = self.branch(schema, depth)
            self.emit(depth, f"if b != {null_byte}:")
            self.skip(other, depth + 1)
            return
        kind = schema if isinstance(schema, str) else schema["type"]
        if isinstance(kind, (dict, list)):
            self.skip(kind, depth)
        elif kind == "null":
            self.emit(depth, "pass")
        elif kind in ("boolean", "double", "float"):
            self.emit(depth, f"pos += {_WIDTHS[kind]}")
        elif kind in ("int", "long", "enum"):
            # A varint: bytes with the high bit set, then one without.
            self.emit(depth, "while data[pos] & 0x80: pos += 1")
            self.emit(depth, "pos += 1")
        elif kind in ("string", "bytes"):
            self.emit(depth, "b = data[pos]")
            self.emit(depth, "if b & 0x81: n, pos = read_length(data, pos); pos += n")
            self.emit(depth, "else: pos += 1 + (b >> 1)")
            self.emit(depth, "if pos > size: raise AvroDecodeError('a length past the end', pos)")
        elif kind in ("array", "map"):
            self._skip_collection(schema, kind, depth)
        elif kind == "record":
            for field in schema["fields"]:
                self.skip(field["type"], depth)
        else:
            raise ValueError(f"unsupported Avro type {kind!r}")

    def _skip_collection(self, schema: dict[str, Any], kind: str, depth: int) -> None:
        # Every item of our schemas takes a byte at least: a forged count fails at once.
        block, inner = self.blocks(1, depth)
        if kind == "map":
            self.skip("string", inner + 1)
        self.skip(schema["values"] if kind == "map" else schema["items"], inner + 1)
        self.emit(inner, f"{block} = data[pos]")
        self.emit(inner, "pos += 1")


_WIDTHS = {"boolean": 1, "float": 4, "double": 8}
# The placeholder of a skipped field that has no default, by Avro type.
_ZEROS: dict[str, object] = {
    "string": "",
    "bytes": b"",
    "int": 0,
    "long": 0,
    "float": 0.0,
    "double": 0.0,
    "boolean": False,
}


def _placeholder(cls: type[Any], name: str, schema: Any) -> object:
    """The class's default for a skipped field, else its type's zero."""
    defaults: dict[str, object] = getattr(cls, "_field_defaults", {})
    if name in defaults:
        return defaults[name]
    kind = schema if isinstance(schema, str) else schema["type"]
    if not isinstance(kind, str) or kind not in _ZEROS:
        raise ValueError(f"{cls.__name__}.{name} is skipped but has no default and its type no zero")
    return _ZEROS[kind]


def compile_projection(
    schema: dict[str, Any],
    types: Mapping[str, type[Any]],
    fields: Mapping[str, frozenset[str]],
    *,
    tail_memo: int = 0,
) -> Decoder:
    """As :func:`compile_decoder`, but of each record whose short name is in
    ``fields`` only the fields named there are read; the others are stepped
    over and stand in as their class's default, else their type's zero
    (``""``, ``b""``, ``0``, ``0.0``, ``False``). A record not in ``fields``
    is read whole. The result is the full reader's record with the skipped
    fields replaced so; the end position is the same.

    It accepts whatever the full reader accepts, and is looser only in the
    bytes it skips: those are bounds-checked, not validated (UTF-8, a
    varint's width, an int's range, an enum index, a boolean byte), so bytes
    the full reader refuses for a skipped value alone decode here. Raises
    ValueError, once, as compile_decoder does, and for a field name its
    record has not, or a skipped field with no default and no zero.
    ``tail_memo`` remembers the last field as there (of its projected value)."""
    if schema.get("type") != "record":
        raise ValueError("compile_projection takes a record schema")
    return _define_decoder(_Projector(types, fields, tail_memo), schema, "projection")
