"""The pure core of jobs: an object's lines are the same however it is cut
into chunks and whether or not it is gzip (one member or several); a line
over the bound is read past, not held; a gzip bomb stops at the bound; a
JSON line and a CSV row become UpdateEndpoint bodies with the server-set
members dropped; an export line is GetEndpoint's shape; and file:// URLs
stay in their directory (no '..', no symlink, nothing outside)."""

from __future__ import annotations

import asyncio
import gzip
import itertools
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest.errors import JobError
from ingest.jobs import formats
from ingest.jobs.formats import Line, Lines, RowError
from ingest.jobs.sources import Objects, parse_url
from ingest.streams.aws import AwsDelivery


def lines_of(chunks: list[bytes], *, max_row: int = 1024, max_bytes: int = 1 << 30) -> list[Line]:
    reader = Lines(max_row_bytes=max_row, max_bytes=max_bytes, what="test://object")
    out = [line for chunk in chunks for line in reader.feed(chunk)]
    return out + list(reader.finish())


def cut(data: bytes, points: list[int]) -> list[bytes]:
    marks = sorted({p % (len(data) + 1) for p in points})
    edges = [0, *marks, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


@given(
    st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=30),
    st.lists(st.integers(min_value=0), max_size=10),
    st.booleans(),
    st.booleans(),
)
def test_lines_do_not_depend_on_chunking_or_gzip(
    rows: list[bytes], points: list[int], compressed: bool, trailing: bool
) -> None:
    data = b"\n".join(rows) + (b"\n" if trailing and rows else b"")
    if data and not data.startswith(formats.GZIP_MAGIC):
        expected = lines_of([data])
        split = data.split(b"\n")
        assert [line.data for line in expected] == (split[:-1] if data.endswith(b"\n") else split)
        body = gzip.compress(data) if compressed else data
        assert lines_of(cut(body, points)) == expected


def test_an_object_shorter_than_the_gzip_magic_is_its_one_line() -> None:
    # Held while it cannot tell gzip from text, then read as text at the end.
    assert lines_of([b"a"]) == [Line(1, b"a")]
    assert lines_of([b"\x1f", b""]) == [Line(1, b"\x1f")]


def test_concatenated_gzip_members_read_as_one_object() -> None:
    body = gzip.compress(b"a\nb\n") + gzip.compress(b"c\n")
    assert [line.data for line in lines_of(cut(body, [3, 25, 26]))] == [b"a", b"b", b"c"]


def test_a_line_over_the_bound_is_read_past_and_numbered() -> None:
    body = b"short\n" + b"x" * 5000 + b"\nafter\n" + b"y" * 3000
    found = lines_of(cut(body, [100, 2000, 4000, 7000]), max_row=1024)
    assert found == [Line(1, b"short"), Line(2, None), Line(3, b"after"), Line(4, None)]


def test_a_gzip_bomb_stops_at_the_bound() -> None:
    bomb = gzip.compress(b"x" * (8 * 1024 * 1024), compresslevel=1)
    with pytest.raises(JobError, match=r"larger than 1048576 bytes .* once decompressed") as caught:
        lines_of([bomb], max_bytes=1024 * 1024)
    assert not caught.value.retriable


def test_truncated_gzip_is_said_to_be() -> None:
    with pytest.raises(JobError, match="truncated gzip"):
        lines_of([gzip.compress(b"a\n" * 1000)[:-20]])


def test_a_json_line_drops_what_the_server_sets() -> None:
    endpoint_id, body = formats.json_endpoint(
        b'{"Id": "e1", "ApplicationId": "a", "CohortId": "3", "CreationDate": "x", "RequestId": "r", '
        b'"Address": "t", "EffectiveDate": "2026-01-01T00:00:00.000Z"}'
    )
    assert (endpoint_id, body) == ("e1", {"Address": "t", "EffectiveDate": "2026-01-01T00:00:00.000Z"})
    for bad, why in [(b"{no", "not JSON"), (b"[1]", "not a JSON object"), (b'{"Id": 3}', "Id is required")]:
        with pytest.raises(RowError, match=why):
            formats.json_endpoint(bad)


def test_a_csv_row_follows_pinpoints_header_conventions() -> None:
    header = formats.csv_header(
        "\ufeffChannelType,Address,Id,Attributes.team,User.UserId,User.UserAttributes.plan,"
        "Location.Country,Location.Latitude,Demographic.Platform,Metrics.score,OptOut,EndpointStatus\r".encode()
    )
    endpoint_id, body = formats.csv_endpoint(
        header, b'SMS,+4912345,e1,"a,b",u1,pro,DE,52.5,android,7.5,NONE,\r'
    )
    assert endpoint_id == "e1"
    assert body == {
        "ChannelType": "SMS",
        "Address": "+4912345",
        "Attributes": {"team": ["a,b"]},
        "User": {"UserId": "u1", "UserAttributes": {"plan": ["pro"]}},
        "Location": {"Country": "DE", "Latitude": 52.5},
        "Demographic": {"Platform": "android"},
        "Metrics": {"score": 7.5},
        "OptOut": "NONE",
    }
    with pytest.raises(RowError, match="2 cells under a header of 12 columns"):
        formats.csv_endpoint(header, b"a,b")
    assert formats.looks_like(b"Id,Address", "CSV") and not formats.looks_like(b'{"Id": "x"}', "CSV")
    assert formats.looks_like(b'  {"Id": "x"}', "JSON") and not formats.looks_like(b"Id,Address", "JSON")


def test_file_urls_are_confined_to_their_directory(tmp_path: Path) -> None:
    root = tmp_path / "import"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.json").write_bytes(b'{"Id": "e"}\n')
    outside = tmp_path / "secret.json"
    outside.write_bytes(b'{"Id": "s"}\n')
    (root / "link.json").symlink_to(outside)
    (root / "linked-dir").symlink_to(tmp_path)

    def parse(url: str) -> str:
        return parse_url(url, member="S3Url", root=root, setting="INGEST_JOB_IMPORT_DIR").url

    assert parse(f"file://{root}/sub/a.json") == f"file://{root}/sub/a.json"
    assert parse("s3://bucket/a/b.json") == "s3://bucket/a/b.json"
    for url, why in [
        (f"file://{outside}", "is outside INGEST_JOB_IMPORT_DIR"),
        (f"file://{root}/../secret.json", "without '..'"),
        (f"file://{root}/./sub/a.json", "without '..'"),
        ("file://host/x", "names no host"),
        ("s3:///key", "must name a bucket"),
        ("ftp://x/y", "must be s3://bucket/key or file:///path"),
    ]:
        with pytest.raises(JobError, match=why):
            parse(url)

    async def listing(url: str) -> list[tuple[str, int]]:
        async with AwsDelivery(assume_role=False) as aws:
            objects = Objects(
                aws, region="us-east-1", role_arn="", external_id=None, root=root, max_object_bytes=1 << 20
            )
            location = parse_url(url, member="S3Url", root=root, setting="INGEST_JOB_IMPORT_DIR")
            return await objects.listing(location)

    assert asyncio.run(listing(f"file://{root}/sub")) == [(f"file://{root}/sub/a.json", 12)]
    for url in (f"file://{root}/link.json", f"file://{root}/linked-dir/secret.json", f"file://{root}"):
        with pytest.raises(JobError, match="is a symlink: symlinks are refused"):
            asyncio.run(listing(url))
    os.remove(root / "link.json")
    with pytest.raises(JobError, match="no such file or directory"):
        asyncio.run(listing(f"file://{root}/missing.json"))
