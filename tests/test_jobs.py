"""Import and export jobs end to end: `ingest run` (the jobs a child of
their own, `worker-jobs`) driven by boto3, reading and writing files under its
confined directories and S3 in moto's server mode (AssumeRole through
moto's STS), behind a proxy that only injects faults (a connection dropped,
a size faked in a listing, a slow transfer). Imported rows take
UpdateEndpoint's path (GetEndpoint shows them merged with what was there);
an export is every endpoint exactly once, and imports back into a new app
as the same endpoints; the jobs' process SIGKILLed mid-import and mid-export
resumes with exact counts; each fault ends as it should, saying why."""

from __future__ import annotations

import gzip
import http.client
import http.server
import os
import re
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from botocore.exceptions import ClientError

from ingest.kafka.broker import free_port
from ingest.kafka.publish import key_hash
from ingest.settings import EMBEDDED_PARTITIONS
from tests import aws
from tests.conftest import Pipeline, endpoint_or_none, eventually, kpi_events, start_pipeline

ROLE = f"arn:aws:iam::{aws.MOTO_ACCOUNT}:role/pinpoint-import"
WITHIN_S = 60.0
PARTITIONS = EMBEDDED_PARTITIONS  # INGEST_KAFKA_PARTITIONS' default with the embedded broker
TEN_GB = 10 * 1024**3
# Members of an endpoint the server sets, which a re-import does not carry over.
SERVER_SET = ("ApplicationId", "CohortId", "CreationDate", "RequestId")
# Bytes the slow proxy passes on at a time, and its pause between them.
SLOW_SLICE_BYTES = 32 * 1024
SLOW_PAUSE_S = 0.02
SLOW_PUT_S = 0.3


class FaultyS3(http.server.ThreadingHTTPServer):
    """A proxy in front of moto's S3 that forwards every request as it is,
    but for the faults a bucket's name asks for: ``unreachable-…`` drops the
    connection unanswered; ``slow-…`` passes bodies on in slices with
    pauses (and holds each PUT); a listing names a key containing ``huge``
    at 10 GB."""

    daemon_threads = True

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        super().__init__((aws.HOST, free_port(aws.HOST)), _Proxy)
        self._thread = threading.Thread(target=self.serve_forever, name="faulty-s3", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{aws.HOST}:{self.server_address[1]}"

    def __enter__(self) -> FaultyS3:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


class _Proxy(http.server.BaseHTTPRequestHandler):
    server: FaultyS3
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._forward()

    def do_PUT(self) -> None:
        self._forward()

    def do_HEAD(self) -> None:
        self._forward()

    def do_POST(self) -> None:
        self._forward()

    def do_DELETE(self) -> None:
        self._forward()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _forward(self) -> None:
        bucket = self.path.lstrip("/").split("/", 1)[0].split("?", 1)[0]
        if bucket.startswith("unreachable-"):
            self.close_connection = True
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        slow = bucket.startswith("slow-")
        if slow and self.command == "PUT":
            time.sleep(SLOW_PUT_S)
        conn = http.client.HTTPConnection(aws.HOST, self.server.upstream_port, timeout=30)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection",)}
            conn.request(self.command, self.path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            status, answer_headers = response.status, response.getheaders()
        finally:
            conn.close()
        if self.command == "GET" and "claims-10gb" in self.path:
            # The header says 10 GB; the body is what it is, then the
            # connection closes (a reader believing the header would wait).
            self.send_response(status)
            self.send_header("Content-Length", str(TEN_GB))
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            self.wfile.write(data)
            self.close_connection = True
            return
        if b"<ListBucketResult" in data[:500]:
            data = re.sub(
                rb"(<Key>[^<]*huge[^<]*</Key>.*?<Size>)\d+(</Size>)",
                rb"\g<1>" + str(TEN_GB).encode() + rb"\g<2>",
                data,
                flags=re.DOTALL,
            )
        self.send_response(status)
        for name, value in answer_headers:
            if name.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command == "HEAD":
            return
        if not slow:
            self.wfile.write(data)
            return
        for start in range(0, len(data), SLOW_SLICE_BYTES):
            self.wfile.write(data[start : start + SLOW_SLICE_BYTES])
            self.wfile.flush()
            time.sleep(SLOW_PAUSE_S)


@pytest.fixture(scope="module")
def s3(moto_server: aws.MotoServer) -> Iterator[FaultyS3]:
    with FaultyS3(moto_server.port) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("jobs")
    (base / "import").mkdir()
    (base / "export").mkdir()
    return base / "import", base / "export"


@pytest.fixture(scope="module")
def jobs(
    tmp_path_factory: pytest.TempPathFactory,
    s3: FaultyS3,
    moto_server: aws.MotoServer,
    dirs: tuple[Path, Path],
) -> Iterator[Pipeline]:
    """`ingest run` whose S3 is the proxy in front of moto (STS at moto),
    with dummy keys, short leases and few retries."""
    tmp = tmp_path_factory.mktemp("jobs-run")
    env = {
        **aws.loopback_env(tmp, "AKIATESTINGKEYID0003"),
        "AWS_ENDPOINT_URL_S3": s3.url,
        "AWS_ENDPOINT_URL_STS": moto_server.url,
        "INGEST_JOB_IMPORT_DIR": str(dirs[0]),
        "INGEST_JOB_EXPORT_DIR": str(dirs[1]),
        "INGEST_JOB_LEASE_S": "2",
        "INGEST_JOB_POLL_S": "0.1",
        "INGEST_JOB_RETRIES": "2",
        "INGEST_JOB_CHECKPOINT_ROWS": "500",
        "INGEST_JOB_EXPORT_PIECE_ENDPOINTS": "1000",
        "INGEST_JOB_MAX_RUNNING": "4",
        "INGEST_JOB_MAX_RUNNING_PER_APP": "2",
    }
    running = start_pipeline(tmp, **env)
    yield running
    assert running.stop() == 0, running.log()


def new_app(pipeline: Pipeline, name: str = "jobs") -> str:
    created = pipeline.client().create_app(CreateApplicationRequest={"Name": name})
    return str(created["ApplicationResponse"]["Id"])


def bucket(moto_server: aws.MotoServer, prefix: str = "data") -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:12]}"
    moto_server.client("s3").create_bucket(Bucket=name)
    return name


def put_object(moto_server: aws.MotoServer, name: str, key: str, data: bytes) -> None:
    moto_server.client("s3").put_object(Bucket=name, Key=key, Body=data)


def ndjson(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(row) + b"\n" for row in rows)


def rows(first: int, count: int, **extra: Any) -> list[dict[str, Any]]:
    return [
        {
            "Id": f"ep-{n:06d}",
            "ChannelType": "GCM",
            "Address": f"token-{n:06d}",
            "Attributes": {"plan": ["pro" if n % 2 else "free"]},
            "User": {"UserId": f"user-{n:06d}"},
            **extra,
        }
        for n in range(first, first + count)
    ]


def import_job(pipeline: Pipeline, app_id: str, url: str, fmt: str = "JSON", **extra: Any) -> dict[str, Any]:
    created = pipeline.client().create_import_job(
        ApplicationId=app_id, ImportJobRequest={"S3Url": url, "Format": fmt, "RoleArn": ROLE, **extra}
    )
    return dict(created["ImportJobResponse"])


def export_job(pipeline: Pipeline, app_id: str, prefix: str) -> dict[str, Any]:
    created = pipeline.client().create_export_job(
        ApplicationId=app_id, ExportJobRequest={"S3UrlPrefix": prefix, "RoleArn": ROLE}
    )
    return dict(created["ExportJobResponse"])


def job_of(pipeline: Pipeline, app_id: str, job_id: str, kind: str) -> dict[str, Any]:
    client = pipeline.client()
    if kind == "IMPORT":
        return dict(client.get_import_job(ApplicationId=app_id, JobId=job_id)["ImportJobResponse"])
    return dict(client.get_export_job(ApplicationId=app_id, JobId=job_id)["ExportJobResponse"])


def finished(pipeline: Pipeline, job: dict[str, Any], within_s: float = WITHIN_S) -> dict[str, Any]:
    return eventually(
        lambda: job_of(pipeline, job["ApplicationId"], job["Id"], job["Type"]),
        lambda j: j["JobStatus"] in ("COMPLETED", "FAILED"),
        f"job {job['Id']} finished",
        within_s=within_s,
    )


def applied(pipeline: Pipeline, app_id: str, endpoint_ids: list[str]) -> None:
    """Wait until the endpoint worker has applied every one of ``endpoint_ids``:
    the last of them on each partition is in the store (a partition applies
    in order)."""
    last: dict[int, str] = {}
    for endpoint_id in endpoint_ids:
        last[(key_hash(f"{app_id}:{endpoint_id}".encode()) & 0x7FFFFFFF) % PARTITIONS] = endpoint_id
    client = pipeline.client()
    for endpoint_id in last.values():
        eventually(
            lambda e=endpoint_id: endpoint_or_none(client, app_id, e),  # type: ignore[misc]
            lambda found: found is not None,
            f"endpoint {endpoint_id} applied",
            within_s=WITHIN_S,
        )


def exported(moto_server: aws.MotoServer, name: str, prefix: str) -> dict[str, list[dict[str, Any]]]:
    """Every piece under ``prefix`` of the bucket, by key: its endpoints."""
    client = moto_server.client("s3")
    listed = client.list_objects_v2(Bucket=name, Prefix=prefix).get("Contents", [])
    return {
        item["Key"]: [
            orjson.loads(line)
            for line in gzip.decompress(
                client.get_object(Bucket=name, Key=item["Key"])["Body"].read()
            ).splitlines()
        ]
        for item in listed
    }


JOBS_PROCESS = "worker-jobs"


def jobs_pid(pipeline: Pipeline) -> int:
    return next(c.pid for c in pipeline.launched.reread_status().children if c.name == JOBS_PROCESS)


def kill_jobs_child(pipeline: Pipeline) -> None:
    """SIGKILL the child running the jobs; return once the supervisor restarted it."""
    pid = jobs_pid(pipeline)
    os.kill(pid, signal.SIGKILL)
    eventually(lambda: jobs_pid(pipeline), lambda now: now not in (0, pid), "jobs restarted", WITHIN_S)


def without_server_set(endpoint: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in endpoint.items() if k not in SERVER_SET}


def failure_of(job: dict[str, Any]) -> str:
    return "\n".join(job["Failures"])


# --- imports ------------------------------------------------------------------


def test_a_json_and_a_csv_file_import_through_update_endpoints_merge_rules(
    jobs: Pipeline, dirs: tuple[Path, Path]
) -> None:
    client = jobs.client()
    app_id = new_app(jobs)
    # There already, with members the import does not send: they are kept.
    client.update_endpoint(
        ApplicationId=app_id,
        EndpointId="ep-000000",
        EndpointRequest={"Address": "old", "ChannelType": "GCM", "Attributes": {"kept": ["yes"]}},
    )
    eventually(lambda: endpoint_or_none(client, app_id, "ep-000000"), bool, "the first write applied")
    folder = dirs[0] / app_id
    folder.mkdir()
    exported_by_pinpoint = {
        **rows(0, 1)[0],
        "ApplicationId": "pinpoint-app",
        "CohortId": "42",
        "CreationDate": "2020-01-01T00:00:00.000Z",
        "RequestId": "r-1",
        "Attributes": {"plan": ["pro"]},
    }
    (folder / "endpoints.json").write_bytes(ndjson([exported_by_pinpoint, *rows(1, 2)]))
    (folder / "endpoints.csv").write_text(
        "ChannelType,Address,Id,Attributes.interest,User.UserId,User.UserAttributes.tier,"
        "Location.Country,Demographic.Platform,Metrics.visits,OptOut\n"
        "APNS,apns-token,ep-csv-1,science,u-csv,gold,DE,ios,3,NONE\n"
        "EMAIL,a@example.com,ep-csv-2,,,,FR,,,ALL\n"
    )
    started = import_job(jobs, app_id, f"file://{folder}/endpoints.json")
    assert started["JobStatus"] == "CREATED" and started["Type"] == "IMPORT"
    assert started["Definition"] == {
        "S3Url": f"file://{folder}/endpoints.json",
        "Format": "JSON",
        "RoleArn": ROLE,
    }
    done = finished(jobs, started)
    assert done["JobStatus"] == "COMPLETED", done
    assert (done["TotalProcessed"], done["TotalFailures"], done["CompletedPieces"], done["TotalPieces"]) == (
        3,
        0,
        1,
        1,
    )
    assert done["CompletionDate"] >= done["CreationDate"]
    csv_job = finished(jobs, import_job(jobs, app_id, f"file://{folder}/endpoints.csv", "CSV"))
    assert csv_job["JobStatus"] == "COMPLETED" and csv_job["TotalProcessed"] == 2, csv_job

    applied(jobs, app_id, ["ep-000000", "ep-000001", "ep-000002", "ep-csv-1", "ep-csv-2"])
    merged = eventually(
        lambda: endpoint_or_none(client, app_id, "ep-000000"),
        lambda e: e is not None and e["Address"] == "token-000000",
        "the imported row merged",
    )
    assert merged is not None
    assert merged["Attributes"] == {"kept": ["yes"], "plan": ["pro"]}
    assert merged["User"] == {"UserId": "user-000000"}
    assert merged["ApplicationId"] == app_id and merged["CohortId"] != "42"
    from_csv = endpoint_or_none(client, app_id, "ep-csv-1")
    assert from_csv is not None
    assert from_csv["ChannelType"] == "APNS" and from_csv["Address"] == "apns-token"
    assert from_csv["Attributes"] == {"interest": ["science"]}
    assert from_csv["User"] == {"UserId": "u-csv", "UserAttributes": {"tier": ["gold"]}}
    assert from_csv["Location"]["Country"] == "DE" and from_csv["Demographic"]["Platform"] == "ios"
    assert from_csv["Metrics"] == {"visits": 3.0} and from_csv["OptOut"] == "NONE"
    second = endpoint_or_none(client, app_id, "ep-csv-2")
    assert second is not None and second["OptOut"] == "ALL" and "Attributes" not in second

    scraped = jobs.request("GET", "/metrics", sign=False)[2].decode()
    finished_here = re.findall(
        r'ingest_jobs_finished_total\{[^}]*process="worker-jobs"[^}]*\} (\S+)', scraped
    )
    assert finished_here and float(finished_here[0]) >= 1, scraped[-2000:]
    assert 'ingest_job_rows_total{outcome="imported",process="worker-jobs",type="IMPORT"}' in scraped

    listed = client.get_import_jobs(ApplicationId=app_id, PageSize="1")["ImportJobsResponse"]
    assert [job["Id"] for job in listed["Item"]] == [csv_job["Id"]]
    rest = client.get_import_jobs(ApplicationId=app_id, PageSize="1", Token=listed["NextToken"])
    assert [job["Id"] for job in rest["ImportJobsResponse"]["Item"]] == [done["Id"]]
    assert "NextToken" not in rest["ImportJobsResponse"]
    assert client.get_export_jobs(ApplicationId=app_id)["ExportJobsResponse"]["Item"] == []
    with pytest.raises(ClientError) as caught:
        client.get_segment_import_jobs(ApplicationId=app_id, SegmentId="no-such-segment")
    assert caught.value.response["Error"]["Code"] == "NotFoundException"


def test_an_s3_prefix_imports_its_subfolders_and_gzip_objects_as_the_jobs_role(
    jobs: Pipeline, moto_server: aws.MotoServer
) -> None:
    app_id = new_app(jobs)
    name = bucket(moto_server)
    put_object(moto_server, name, "audience/a.json", ndjson(rows(0, 10)))
    put_object(moto_server, name, "audience/2026/b.json.gz", gzip.compress(ndjson(rows(10, 10))))
    # Named .json, gzip all the same: told by its first bytes.
    put_object(moto_server, name, "audience/2026/12/c.json", gzip.compress(ndjson(rows(20, 5))))
    put_object(moto_server, name, "elsewhere/d.json", ndjson(rows(100, 5)))
    done = finished(jobs, import_job(jobs, app_id, f"s3://{name}/audience/"))
    assert done["JobStatus"] == "COMPLETED", done
    assert (done["TotalPieces"], done["CompletedPieces"], done["TotalProcessed"]) == (3, 3, 25)
    applied(jobs, app_id, [f"ep-{n:06d}" for n in range(25)])
    assert endpoint_or_none(jobs.client(), app_id, "ep-000100") is None
    assert any(
        role["role_arn"] == ROLE and role["session_name"] == "ingest-job"
        for role in moto_server.assumed_roles()
    )


# --- exports ------------------------------------------------------------------


def test_an_export_reimports_into_a_new_app_as_the_same_endpoints(
    jobs: Pipeline, moto_server: aws.MotoServer, dirs: tuple[Path, Path]
) -> None:
    client = jobs.client()
    source = new_app(jobs, "source")
    name = bucket(moto_server)
    put_object(
        moto_server, name, "in/all.json", ndjson(rows(0, 1500, Location={"Country": "DE", "City": "Köln"}))
    )
    assert finished(jobs, import_job(jobs, source, f"s3://{name}/in/"))["JobStatus"] == "COMPLETED"
    ids = [f"ep-{n:06d}" for n in range(1500)]
    applied(jobs, source, ids)
    client.delete_endpoint(ApplicationId=source, EndpointId="ep-000007")  # a deleted one is not exported
    eventually(
        lambda: endpoint_or_none(client, source, "ep-000007"), lambda e: e is None, "the delete applied"
    )

    started = export_job(jobs, source, f"s3://{name}/out/")
    assert started["Type"] == "EXPORT" and started["Definition"] == {
        "S3UrlPrefix": f"s3://{name}/out/",
        "RoleArn": ROLE,
    }
    done = finished(jobs, started)
    assert done["JobStatus"] == "COMPLETED", done
    assert (done["TotalProcessed"], done["CompletedPieces"], done["TotalPieces"]) == (1499, 2, 2)
    pieces = exported(moto_server, name, "out/")
    assert sorted(pieces) == [f"out/{done['Id']}/part-00000.json.gz", f"out/{done['Id']}/part-00001.json.gz"]
    endpoints = [endpoint for piece in pieces.values() for endpoint in piece]
    assert sorted(e["Id"] for e in endpoints) == [i for i in ids if i != "ep-000007"]
    # The same export to a file.
    to_file = finished(jobs, export_job(jobs, source, f"file://{dirs[1]}/{source}"))
    assert to_file["JobStatus"] == "COMPLETED" and to_file["TotalProcessed"] == 1499, to_file
    files = sorted((dirs[1] / source / to_file["Id"]).iterdir())
    assert [f.name for f in files] == ["part-00000.json.gz", "part-00001.json.gz"]

    target = new_app(jobs, "target")
    again = finished(jobs, import_job(jobs, target, f"s3://{name}/out/{done['Id']}/"))
    assert again["JobStatus"] == "COMPLETED" and again["TotalProcessed"] == 1499, again
    applied(jobs, target, [e["Id"] for e in endpoints])
    for endpoint in endpoints[::97]:
        copy = endpoint_or_none(client, target, endpoint["Id"])
        assert copy is not None and copy["ApplicationId"] == target
        assert without_server_set(copy) == without_server_set(endpoint)


# --- faults -------------------------------------------------------------------


def test_bad_rows_are_counted_and_the_job_completes_with_the_first_hundred(
    jobs: Pipeline, dirs: tuple[Path, Path]
) -> None:
    app_id = new_app(jobs)
    good = ndjson(rows(0, 20))
    bad = [b"{not json", b'["a list"]', b'{"Address": "no id"}', b'{"Id": "x", "ChannelType": "PIGEON"}']
    body = good + b"\n".join(bad * 40) + b"\n" + b'{"Id": "long", "Address": "' + b"x" * 300_000 + b'"}\n'
    path = dirs[0] / f"{app_id}-bad.json"
    path.write_bytes(body)
    done = finished(jobs, import_job(jobs, app_id, f"file://{path}"))
    assert done["JobStatus"] == "COMPLETED", done
    assert (done["TotalProcessed"], done["TotalFailures"]) == (20 + 160 + 1, 161)
    assert len(done["Failures"]) == 100
    assert done["Failures"][0].startswith(f"file://{path} line 21: not JSON")
    assert "line 22: not a JSON object" in done["Failures"][1]
    assert "line 23: Id is required" in done["Failures"][2]
    assert "line 24: " in done["Failures"][3] and "ChannelType" in done["Failures"][3]


def test_each_fault_fails_the_job_saying_why(
    jobs: Pipeline, moto_server: aws.MotoServer, dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    app_id = new_app(jobs)
    name = bucket(moto_server)
    # A CSV file imported as JSON, and a JSON one as CSV.
    put_object(moto_server, name, "wrong.csv", b"ChannelType,Address,Id\nGCM,t,e1\n")
    put_object(moto_server, name, "plain.json", ndjson(rows(0, 2)))
    put_object(moto_server, name, "huge.json", ndjson(rows(0, 2)))
    put_object(moto_server, name, "claims-10gb.json", ndjson(rows(0, 2)))
    outside = tmp_path / "outside.json"
    outside.write_bytes(ndjson(rows(0, 2)))
    link = dirs[0] / f"{app_id}-link.json"
    link.symlink_to(outside)
    started = {
        "wrong format": import_job(jobs, app_id, f"s3://{name}/wrong.csv"),
        "wrong format (CSV)": import_job(jobs, app_id, f"s3://{name}/plain.json", "CSV"),
        "10 GB": import_job(jobs, app_id, f"s3://{name}/huge.json"),
        "10 GB GET": import_job(jobs, app_id, f"s3://{name}/claims-10gb.json"),
        "symlink": import_job(jobs, app_id, f"file://{link}"),
        "unreachable": import_job(jobs, app_id, f"s3://unreachable-{uuid.uuid4().hex[:8]}/a.json"),
    }
    ended = {what: finished(jobs, job) for what, job in started.items()}
    assert {what: job["JobStatus"] for what, job in ended.items()} == dict.fromkeys(started, "FAILED")
    assert "is not newline-delimited JSON endpoint definitions (Format JSON)" in failure_of(
        ended["wrong format"]
    )
    assert "is not CSV with a header naming an Id column" in failure_of(ended["wrong format (CSV)"])
    assert f"{TEN_GB} bytes, over the 1073741824-byte limit" in failure_of(ended["10 GB"])
    assert f"claims-10gb.json is {TEN_GB} bytes, over the 1073741824-byte limit" in failure_of(
        ended["10 GB GET"]
    )
    assert "is a symlink: symlinks are refused" in failure_of(ended["symlink"])
    unreachable = failure_of(ended["unreachable"])
    assert "failed 3 times" in unreachable and "listing s3://unreachable-" in unreachable, unreachable
    for job in ended.values():
        assert job["FailedPieces"] + job["TotalPieces"] >= 0 and job["TotalProcessed"] == 0

    # Refused outright: outside the import directory, another scheme, a bad Format.
    client = jobs.client()
    refused: list[tuple[dict[str, Any], str]] = [
        ({"S3Url": f"file://{outside}", "Format": "JSON"}, "is outside INGEST_JOB_IMPORT_DIR"),
        ({"S3Url": f"file://{dirs[0]}/../x.json", "Format": "JSON"}, "without '..'"),
        (
            {"S3Url": "https://example.com/x.json", "Format": "JSON"},
            "must be s3://bucket/key or file:///path",
        ),
        ({"S3Url": f"s3://{name}/a.json", "Format": "XML"}, "Format is required: CSV or JSON"),
        (
            {"S3Url": f"s3://{name}/a.json", "Format": "JSON", "DefineSegment": True},
            "SegmentName is required",
        ),
    ]
    for request, message in refused:
        with pytest.raises(ClientError) as caught:
            client.create_import_job(ApplicationId=app_id, ImportJobRequest={"RoleArn": ROLE, **request})
        assert caught.value.response["Error"]["Code"] == "BadRequestException"
        assert message in caught.value.response["Error"]["Message"], caught.value.response
    with pytest.raises(ClientError) as caught:
        client.create_export_job(
            ApplicationId=app_id, ExportJobRequest={"S3UrlPrefix": f"file://{dirs[0]}", "RoleArn": ROLE}
        )
    assert "is outside INGEST_JOB_EXPORT_DIR" in caught.value.response["Error"]["Message"]
    missing: list[Callable[[], Any]] = [
        lambda: client.create_import_job(
            ApplicationId="no-such-app",
            ImportJobRequest={"S3Url": f"s3://{name}/a", "Format": "JSON", "RoleArn": ROLE},
        ),
        lambda: client.get_import_job(ApplicationId=app_id, JobId="f" * 32),
        lambda: client.get_export_job(ApplicationId=app_id, JobId=ended["symlink"]["Id"]),
        lambda: client.get_export_jobs(ApplicationId="no-such-app"),
    ]
    for call in missing:
        with pytest.raises(ClientError) as caught:
            call()
        assert caught.value.response["Error"]["Code"] == "NotFoundException"
    with pytest.raises(ClientError) as caught:
        client.get_import_jobs(ApplicationId=app_id, PageSize="0")
    assert caught.value.response["Error"]["Code"] == "BadRequestException"


# --- SIGKILL ------------------------------------------------------------------


def test_the_jobs_process_sigkilled_mid_import_and_mid_export_resumes_with_exact_counts(
    jobs: Pipeline, moto_server: aws.MotoServer
) -> None:
    app_id = new_app(jobs)
    slow = bucket(moto_server, "slow")
    total = 20_000
    bad_lines = (3_000, 11_000, 19_000)
    lines = [orjson.dumps(row) for row in rows(0, total)]
    for at in bad_lines:
        lines.insert(at, b"{broken")
    put_object(moto_server, slow, "big/all.json", b"\n".join(lines) + b"\n")

    started = import_job(jobs, app_id, f"s3://{slow}/big/all.json")
    eventually(
        lambda: job_of(jobs, app_id, started["Id"], "IMPORT"),
        lambda j: j["JobStatus"] == "PROCESSING" and 0 < j["TotalProcessed"] < total // 2,
        "the import under way",
        WITHIN_S,
    )
    kill_jobs_child(jobs)
    done = finished(jobs, started)
    assert done["JobStatus"] == "COMPLETED", done
    assert (done["TotalProcessed"], done["TotalFailures"]) == (total + len(bad_lines), len(bad_lines))
    assert [f.split(" line ")[1].split(":")[0] for f in done["Failures"]] == [str(at + 1) for at in bad_lines]
    ids = [f"ep-{n:06d}" for n in range(total)]
    applied(jobs, app_id, ids)

    exporting = export_job(jobs, app_id, f"s3://{slow}/out")
    eventually(
        lambda: job_of(jobs, app_id, exporting["Id"], "EXPORT"),
        lambda j: j["JobStatus"] == "PROCESSING" and 2 <= j["CompletedPieces"] < 15,
        "the export under way",
        WITHIN_S,
    )
    kill_jobs_child(jobs)
    exported_job = finished(jobs, exporting)
    assert exported_job["JobStatus"] == "COMPLETED", exported_job
    assert (exported_job["TotalProcessed"], exported_job["CompletedPieces"]) == (total, total // 1000)
    pieces = exported(moto_server, slow, "out/")
    assert len(pieces) == total // 1000
    every = [endpoint["Id"] for piece in pieces.values() for endpoint in piece]
    assert len(every) == total and sorted(every) == ids, "every endpoint exactly once"


# --- static segments ----------------------------------------------------------


def test_an_import_defines_a_static_segment_and_adds_versions_to_it_which_export(
    jobs: Pipeline, moto_server: aws.MotoServer, dirs: tuple[Path, Path]
) -> None:
    client = jobs.client()
    app_id = new_app(jobs)
    for n in range(5):  # endpoints of the app outside the segment
        client.update_endpoint(
            ApplicationId=app_id, EndpointId=f"other-{n}", EndpointRequest={"Address": "x"}
        )
    path = dirs[0] / f"{app_id}-segment.json"
    path.write_bytes(ndjson(rows(0, 30)[:20] + [{**row, "ChannelType": "EMAIL"} for row in rows(20, 10)]))
    defined = import_job(jobs, app_id, f"file://{path}", DefineSegment=True, SegmentName="imported")
    done = finished(jobs, defined)
    assert done["JobStatus"] == "COMPLETED", done
    segment_id = done["Id"]
    segment = client.get_segment(ApplicationId=app_id, SegmentId=segment_id)["SegmentResponse"]
    assert (segment["Name"], segment["SegmentType"], segment["Version"]) == ("imported", "IMPORT", 2)
    assert segment["ImportDefinition"] == {
        "Format": "JSON",
        "S3Url": f"file://{path}",
        "RoleArn": ROLE,
        "Size": 30,
        "ChannelCounts": {"GCM": 20, "EMAIL": 10},
    }
    listed = client.get_segment_import_jobs(ApplicationId=app_id, SegmentId=segment_id)["ImportJobsResponse"]
    assert [job["Id"] for job in listed["Item"]] == [segment_id]
    # RegisterEndpoints false: a segment of the IDs, and no endpoint written.
    unregistered = dirs[0] / f"{app_id}-unregistered.json"
    unregistered.write_bytes(
        ndjson([*rows(0, 3, Attributes={"plan": ["gold"]}), {"Id": "fresh", "Address": "f"}])
    )
    known = finished(
        jobs,
        import_job(
            jobs,
            app_id,
            f"file://{unregistered}",
            DefineSegment=True,
            SegmentName="known",
            RegisterEndpoints=False,
        ),
    )
    assert (known["JobStatus"], known["TotalProcessed"]) == ("COMPLETED", 4), known
    assert known["Definition"]["RegisterEndpoints"] is False
    size = client.get_segment(ApplicationId=app_id, SegmentId=known["Id"])["SegmentResponse"][
        "ImportDefinition"
    ]
    assert size["Size"] == 4
    # A write after the job, on ep-000000's partition: once it is applied, so
    # is anything the job had published for ep-000000 (a partition applies in order).
    client.update_endpoint(
        ApplicationId=app_id, EndpointId="ep-000000", EndpointRequest={"Attributes": {"seen": ["yes"]}}
    )
    after = eventually(
        lambda: endpoint_or_none(client, app_id, "ep-000000"),
        lambda e: e is not None and "seen" in e.get("Attributes", {}),
        "the write after the job applied",
        WITHIN_S,
    )
    assert after is not None and after["Attributes"]["plan"] == ["free"], "not registered: no gold plan"
    assert endpoint_or_none(client, app_id, "fresh") is None

    name = bucket(moto_server)
    put_object(moto_server, name, "more.json", ndjson(rows(30, 10)))
    more = finished(jobs, import_job(jobs, app_id, f"s3://{name}/more.json", SegmentId=segment_id))
    assert more["JobStatus"] == "COMPLETED", more
    latest = client.get_segment(ApplicationId=app_id, SegmentId=segment_id)["SegmentResponse"]
    assert latest["Version"] == 3 and latest["ImportDefinition"]["Size"] == 10
    first = client.get_segment_version(ApplicationId=app_id, SegmentId=segment_id, Version="1")
    assert first["SegmentResponse"]["ImportDefinition"]["Size"] == 0, "before the import"
    applied(jobs, app_id, [f"ep-{n:06d}" for n in range(40)] + [f"other-{n}" for n in range(5)])

    def export_ids(**segment: Any) -> list[str]:
        created = client.create_export_job(
            ApplicationId=app_id,
            ExportJobRequest={"S3UrlPrefix": f"s3://{name}/segment/", "RoleArn": ROLE, **segment},
        )["ExportJobResponse"]
        done = finished(jobs, created)
        assert done["JobStatus"] == "COMPLETED", done
        pieces = exported(moto_server, name, f"segment/{done['Id']}/")
        return sorted(endpoint["Id"] for piece in pieces.values() for endpoint in piece)

    assert export_ids(SegmentId=segment_id) == [f"ep-{n:06d}" for n in range(40)]
    assert export_ids(SegmentId=segment_id, SegmentVersion=2) == [f"ep-{n:06d}" for n in range(30)]
    # A dimensional segment over the imported endpoints: the EMAIL ones.
    dimensional = client.create_segment(
        ApplicationId=app_id,
        WriteSegmentRequest={
            "Name": "email",
            "Dimensions": {"Demographic": {"Channel": {"DimensionType": "INCLUSIVE", "Values": ["EMAIL"]}}},
        },
    )["SegmentResponse"]["Id"]
    assert export_ids(SegmentId=dimensional) == [f"ep-{n:06d}" for n in range(20, 30)]
    # Recency, driven by PutEvents: of the EMAIL ones, those with an event now.
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    active = [f"ep-{n:06d}" for n in range(20, 23)]
    batch = {
        e: {"Endpoint": {}, "Events": {str(uuid.uuid4()): {"EventType": "play", "Timestamp": now}}}
        for e in active
    }
    client.put_events(ApplicationId=app_id, EventsRequest={"BatchItem": batch})
    # The KPI batch that counts the events keeps their endpoints' last activity.
    eventually(lambda: kpi_events(jobs, app_id), lambda n: n == len(active), "events counted", WITHIN_S)
    recent = client.create_segment(
        ApplicationId=app_id,
        WriteSegmentRequest={
            "Name": "email, active this week",
            "Dimensions": {
                "Demographic": {"Channel": {"DimensionType": "INCLUSIVE", "Values": ["EMAIL"]}},
                "Behavior": {"Recency": {"Duration": "DAY_7", "RecencyType": "ACTIVE"}},
            },
        },
    )["SegmentResponse"]["Id"]
    assert export_ids(SegmentId=recent) == active
    # A read key gets and lists the jobs; creating one is an admin's.
    reader = jobs.client(jobs.create_key("read", app_id))
    assert (
        reader.get_import_job(ApplicationId=app_id, JobId=segment_id)["ImportJobResponse"]["Id"] == segment_id
    )
    assert reader.get_import_jobs(ApplicationId=app_id)["ImportJobsResponse"]["Item"]
    assert len(reader.get_export_jobs(ApplicationId=app_id)["ExportJobsResponse"]["Item"]) == 4
    reader.get_segment_export_jobs(ApplicationId=app_id, SegmentId=segment_id)
    writes: list[Callable[[], Any]] = [
        lambda: reader.create_import_job(
            ApplicationId=app_id,
            ImportJobRequest={"S3Url": f"s3://{name}/more.json", "Format": "JSON", "RoleArn": ROLE},
        ),
        lambda: reader.create_export_job(
            ApplicationId=app_id, ExportJobRequest={"S3UrlPrefix": f"s3://{name}/x/", "RoleArn": ROLE}
        ),
    ]
    for write in writes:
        with pytest.raises(ClientError) as caught:
            write()
        assert caught.value.response["Error"]["Code"] == "AccessDeniedException", caught.value.response
    with pytest.raises(ClientError) as caught:  # imports add to IMPORT segments only
        import_job(jobs, app_id, f"s3://{name}/more.json", SegmentId=dimensional)
    assert caught.value.response["Error"]["Code"] == "BadRequestException"
    exports = client.get_segment_export_jobs(ApplicationId=app_id, SegmentId=segment_id)["ExportJobsResponse"]
    assert len(exports["Item"]) == 2 and all(
        job["Definition"]["SegmentId"] == segment_id for job in exports["Item"]
    )
    refused: list[tuple[Callable[[], Any], str]] = [
        (
            lambda: import_job(jobs, app_id, f"s3://{name}/more.json", SegmentId="no-such-segment"),
            "NotFoundException",
        ),
        (
            lambda: import_job(jobs, app_id, f"s3://{name}/more.json", DefineSegment=True),
            "BadRequestException",
        ),
        (
            lambda: export_job_of(jobs, app_id, name, SegmentId=segment_id, SegmentVersion=9),
            "NotFoundException",
        ),
        (lambda: client.get_segment_import_jobs(ApplicationId=app_id, SegmentId="nope"), "NotFoundException"),
    ]
    for call, code in refused:
        with pytest.raises(ClientError) as caught:
            call()
        assert caught.value.response["Error"]["Code"] == code, caught.value.response


def export_job_of(pipeline: Pipeline, app_id: str, name: str, **segment: Any) -> Any:
    return pipeline.client().create_export_job(
        ApplicationId=app_id, ExportJobRequest={"S3UrlPrefix": f"s3://{name}/x/", "RoleArn": ROLE, **segment}
    )
