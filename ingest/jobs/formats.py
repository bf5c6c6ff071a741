"""What import and export jobs read and write, as values: no I/O here.

An object is bytes in chunks, gzip or not (told by its magic bytes, not its
name), cut into lines of at most ``max_row_bytes``; it may decompress to at
most ``max_bytes`` (a gzip bomb fails its piece, it does not fill memory).
:class:`Lines` does both, a chunk at a time, holding one line at most.

A line is an endpoint definition: ``JSON`` is one endpoint object a line, as
Pinpoint exports them (the members the server sets, ``ApplicationId``,
``CohortId``, ``CreationDate``, ``RequestId``, are ignored; ``Id`` names the
endpoint); ``CSV`` is a header of Pinpoint's dotted member paths
(``ChannelType``, ``Address``, ``Id``, ``Attributes.name``,
``User.UserId``, ``User.UserAttributes.name``, ``Location.Country``,
``Demographic.Platform``, ``Metrics.name``, ``OptOut`` …) and a row an
endpoint, an empty cell leaving its member out. Either becomes the body
UpdateEndpoint takes, for :func:`ingest.records.validate.endpoint_upsert`.
A CSV row is one line: a quoted cell cannot hold a line break.

An export writes :func:`export_line` of each endpoint (GetEndpoint's
``EndpointResponse``, one a line), gzip, which an import reads back.
"""

from __future__ import annotations

import csv
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from ingest.errors import JobError
from ingest.folds.endpoints import EndpointState, endpoint_response

Format = Literal["CSV", "JSON"]
FORMATS: tuple[Format, ...] = ("CSV", "JSON")
GZIP_MAGIC = b"\x1f\x8b"
# Members of an exported endpoint the server sets, which an import ignores.
SERVER_SET = frozenset(("ApplicationId", "CohortId", "CreationDate", "RequestId", "Id"))
# CSV columns whose members hold a list of strings, and those that are numbers.
_LISTS = ("Attributes", "User.UserAttributes")
_NUMBERS = ("Metrics", "Location.Latitude", "Location.Longitude")
# Decompressed bytes asked of zlib at a time: what one step may allocate.
_INFLATE_STEP = 256 * 1024


@dataclass(frozen=True, slots=True)
class Line:
    """Line ``number`` (from 1) of an object; ``data`` None: it was longer
    than the bound, and was read past."""

    number: int
    data: bytes | None


class Lines:
    """Bytes in chunks → :class:`Line` values, gunzipped when the first
    bytes say gzip (concatenated members too). JobError (not retriable)
    once more than ``max_bytes`` have been decompressed or read."""

    def __init__(self, *, max_row_bytes: int, max_bytes: int, what: str) -> None:
        self._max_row = max_row_bytes
        self._max_bytes = max_bytes
        self._what = what
        self._started = False
        self._inflate: Any = None
        self._pending = bytearray()
        self._skipping = False
        self._number = 0
        self._total = 0

    def feed(self, chunk: bytes) -> Iterator[Line]:
        """The lines ``chunk`` completes."""
        if not self._started:
            if len(chunk) < len(GZIP_MAGIC) and not self._pending:
                # Too short to tell: held for the next chunk (or finish()).
                self._pending += chunk
                return
            chunk = bytes(self._pending) + chunk
            self._pending.clear()
            self._started = True
            if chunk.startswith(GZIP_MAGIC):
                self._inflate = zlib.decompressobj(wbits=31)
        if self._inflate is None:
            yield from self._split(chunk)
            return
        data = chunk
        while data:
            try:
                out = self._inflate.decompress(data, _INFLATE_STEP)
            except zlib.error as exc:
                raise JobError(f"{self._what} is not valid gzip: {exc}", retriable=False) from exc
            yield from self._split(out)
            if self._inflate.unconsumed_tail:
                data = self._inflate.unconsumed_tail
            elif self._inflate.eof and self._inflate.unused_data:
                # Another gzip member follows (what `cat a.gz b.gz` makes).
                data = self._inflate.unused_data
                self._inflate = zlib.decompressobj(wbits=31)
            else:
                data = b""

    def finish(self) -> Iterator[Line]:
        """The last line, if the object does not end with a newline."""
        if not self._started:
            self._started = True
            held = bytes(self._pending)
            self._pending.clear()
            yield from self._split(held)
        if self._inflate is not None and not self._inflate.eof:
            raise JobError(f"{self._what} is truncated gzip", retriable=False)
        if self._pending or self._skipping:
            self._number += 1
            yield Line(self._number, None if self._skipping else bytes(self._pending))
        self._pending.clear()
        self._skipping = False

    def _split(self, data: bytes) -> Iterator[Line]:
        self._total += len(data)
        if self._total > self._max_bytes:
            raise JobError(
                f"{self._what} is larger than {self._max_bytes} bytes (INGEST_JOB_MAX_OBJECT_BYTES)"
                + (" once decompressed" if self._inflate is not None else ""),
                retriable=False,
            )
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                break
            if self._skipping:
                self._skipping = False
                self._number += 1
                yield Line(self._number, None)
            elif len(self._pending) + end - start > self._max_row:
                self._pending.clear()
                self._number += 1
                yield Line(self._number, None)
            else:
                self._pending += data[start:end]
                self._number += 1
                yield Line(self._number, bytes(self._pending))
                self._pending.clear()
            start = end + 1
        rest = len(data) - start
        if self._skipping:
            return
        if len(self._pending) + rest > self._max_row:
            self._pending.clear()
            self._skipping = True
        else:
            self._pending += data[start:]


class RowError(ValueError):
    """A line that is no endpoint definition; the message says why."""


def json_endpoint(line: bytes) -> tuple[str, dict[str, Any]]:
    """A JSON line → (endpoint ID, UpdateEndpoint body). RowError for a line
    that is not a JSON object with a string ``Id``."""
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise RowError(f"not JSON ({exc})") from exc
    if type(value) is not dict:
        raise RowError("not a JSON object (an endpoint definition)")
    return _identified(value)


def _identified(value: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    endpoint_id = value.get("Id")
    if type(endpoint_id) is not str or not endpoint_id:
        raise RowError("Id is required: the endpoint's ID, a string")
    return endpoint_id, {k: v for k, v in value.items() if k not in SERVER_SET}


def looks_like(line: bytes, fmt: Format) -> bool:
    """Whether an object's first line can be ``fmt`` at all: a JSON object,
    or a CSV header naming an Id column. (Its rows may still be bad.)"""
    if fmt == "JSON":
        return line.lstrip().startswith(b"{")
    return "Id" in csv_header(line)


def csv_header(line: bytes) -> list[str]:
    """A CSV header line → its column names (a UTF-8 BOM dropped)."""
    text = line.decode("utf-8", errors="replace").removeprefix("\ufeff").rstrip("\r")
    return [name.strip() for name in next(csv.reader([text]), [])]


def csv_endpoint(header: list[str], line: bytes) -> tuple[str, dict[str, Any]]:
    """A CSV row under ``header`` → (endpoint ID, UpdateEndpoint body).
    RowError for a row of the wrong width or without an Id."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RowError(f"not UTF-8 ({exc})") from exc
    cells = next(csv.reader([text.rstrip("\r")]), [])
    if len(cells) != len(header):
        raise RowError(f"{len(cells)} cells under a header of {len(header)} columns")
    body: dict[str, Any] = {}
    for path, cell in zip(header, cells, strict=True):
        if cell == "":
            continue
        _place(body, path, cell)
    return _identified(body)


def _place(body: dict[str, Any], path: str, cell: str) -> None:
    """``cell`` at the dotted ``path`` of ``body``, typed as the member is."""
    names = path.split(".")
    value: Any = cell
    parent = ".".join(names[:-1])
    if parent in _LISTS:
        value = [cell]
    elif parent in _NUMBERS or path in _NUMBERS:
        try:
            value = float(cell)
        except ValueError:
            value = cell  # validation names the member that is not a number
    elif path == "Attributes" or path == "User.UserAttributes":
        raise RowError(f"column {path} needs a name: {path}.name")
    target = body
    for name in names[:-1]:
        child = target.setdefault(name, {})
        if type(child) is not dict:
            raise RowError(f"column {path} under {name}, which another column set")
        target = child
    target[names[-1]] = value


def export_line(state: EndpointState) -> bytes:
    """An endpoint as an export writes it: GetEndpoint's EndpointResponse, a line."""
    return orjson.dumps(endpoint_response(state)) + b"\n"


class Gzip:
    """Lines in, one gzip member out (an export's piece), built in memory."""

    def __init__(self) -> None:
        self._deflate = zlib.compressobj(6, zlib.DEFLATED, 31)
        self._out = bytearray()

    def write(self, data: bytes) -> None:
        self._out += self._deflate.compress(data)

    def finish(self) -> bytes:
        self._out += self._deflate.flush()
        return bytes(self._out)
