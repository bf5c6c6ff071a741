"""Where jobs read and write: ``s3://bucket/key`` through botocore's S3
client (any S3-compatible store; ``AWS_ENDPOINT_URL_S3`` names one, which
botocore honours itself), or ``file:///path`` under the one directory the
settings name for imports (``INGEST_JOB_IMPORT_DIR``) or exports
(``INGEST_JOB_EXPORT_DIR``).

A ``file://`` path is confined to its directory: written with ``..`` it is
refused outright, and every component below the directory is looked at
without following links, so a symlink (to anywhere) is refused too; files
open with ``O_NOFOLLOW``. S3 calls go through
:class:`ingest.streams.aws.AwsDelivery` (a bounded thread pool, the job's
RoleArn assumed through STS unless ``INGEST_JOB_ASSUME_ROLE`` is off, one
attempt a call). Every failure is a :class:`~ingest.errors.JobError`
saying which URL and why; ``retriable`` when trying again may help, for the
caller's bounded retries.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote, urlsplit

from ingest.errors import DeliveryError, JobError

if TYPE_CHECKING:  # the edge parses job URLs with this module, without botocore
    from ingest.streams.aws import AwsDelivery

Scheme = Literal["s3", "file"]
# Objects an import reads under one URL: its list is kept in the job row.
MAX_OBJECTS = 10_000
# Bytes read from an object at a time (a thread hop each).
CHUNK_BYTES = 1024 * 1024
ROLE_SESSION_NAME = "ingest-job"


@dataclass(frozen=True, slots=True)
class Location:
    """A parsed URL: an S3 bucket and key (or prefix), or an absolute path."""

    scheme: Scheme
    bucket: str
    key: str

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.key}" if self.scheme == "s3" else f"file://{self.key}"

    def child(self, name: str) -> Location:
        """The object ``name`` under this prefix (a "/" between them)."""
        joined = self.key if self.key.endswith("/") or not self.key else self.key + "/"
        return Location(self.scheme, self.bucket, joined + name)


def parse_url(url: str, *, member: str, root: Path, setting: str) -> Location:
    """``url`` → Location; JobError (not retriable) naming ``member`` for
    anything but ``s3://bucket[/key]`` or ``file:///path`` under ``root``
    (whose ``setting`` the message names)."""
    parts = urlsplit(url)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise JobError(f"{member} must name a bucket: s3://bucket/key, not {url[:300]}", retriable=False)
        return Location("s3", parts.netloc, url[len("s3://") + len(parts.netloc) + 1 :])
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise JobError(
                f"{member}: a file:// URL names no host: file:///path, not {url[:300]}", retriable=False
            )
        path = unquote(parts.path)
        confined(path, root, member=member, setting=setting)
        return Location("file", "", path)
    raise JobError(
        f"{member} must be s3://bucket/key or file:///path (under {setting}), not {url[:300]}",
        retriable=False,
    )


def confined(path: str, root: Path, *, member: str, setting: str) -> PurePosixPath:
    """``path`` as a path below ``root``, written plainly: absolute, without
    ``..`` or ``.``; JobError (not retriable) otherwise."""
    pure = PurePosixPath(path)
    if not pure.is_absolute() or any(part in ("..", ".") for part in path.split("/")):
        raise JobError(
            f"{member}: {path[:300]} must be an absolute path without '..' or '.'", retriable=False
        )
    base = PurePosixPath(os.path.abspath(root))
    if not pure.is_relative_to(base):
        raise JobError(f"{member}: {path[:300]} is outside {setting} ({base})", retriable=False)
    return pure


def _no_links(path: PurePosixPath, root: Path) -> None:
    """JobError (not retriable) if any component of ``path`` below ``root``
    is a symlink; FileNotFoundError if one is missing. (In a thread.)"""
    base = PurePosixPath(os.path.abspath(root))
    current = Path(base)
    for part in path.relative_to(base).parts:
        current = current / part
        if stat.S_ISLNK(os.lstat(current).st_mode):
            raise JobError(f"file://{current} is a symlink: symlinks are refused", retriable=False)


def _make_dirs(path: PurePosixPath, root: Path) -> None:
    """The directories of ``path`` below ``root``, made where missing; a
    symlink among them is refused (never followed out). (In a thread.)"""
    base = PurePosixPath(os.path.abspath(root))
    current = Path(base)
    current.mkdir(parents=True, exist_ok=True)
    for part in path.relative_to(base).parts:
        current = current / part
        try:
            os.mkdir(current)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(current).st_mode):
                raise JobError(
                    f"file://{current} is a symlink or a file, not a directory: refused", retriable=False
                ) from None


class Objects:
    """One job's objects: list, read and write, under its RoleArn (S3) or
    its confined directory (files)."""

    def __init__(
        self,
        aws: AwsDelivery,
        *,
        region: str,
        role_arn: str,
        external_id: str | None,
        root: Path,
        max_object_bytes: int,
    ) -> None:
        self._aws = aws
        self._region = region
        self._role_arn = role_arn
        self._external_id = external_id
        self._root = root
        self._max_bytes = max_object_bytes

    @property
    def root(self) -> Path:
        """The directory ``file://`` URLs of this job are confined to."""
        return self._root

    async def listing(self, location: Location) -> list[tuple[str, int]]:
        """The objects at ``location`` (one, or every one under the prefix,
        subfolders included), by URL: (URL, size in bytes)."""
        if location.scheme == "file":
            return await asyncio.to_thread(self._list_files, location.key)
        found: list[tuple[str, int]] = []
        params: dict[str, Any] = {"Bucket": location.bucket, "Prefix": location.key}
        while True:
            page = await self._s3("list_objects_v2", params, f"listing {location.url}")
            for item in page.get("Contents", []):
                key, size = str(item["Key"]), int(item.get("Size", 0))
                if key.endswith("/") and size == 0:
                    continue  # a console's "folder" marker
                found.append((Location("s3", location.bucket, key).url, size))
                self._check_count(len(found), location)
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                break
            params = {**params, "ContinuationToken": token}
        if not found:
            raise JobError(f"no object at {location.url}", retriable=False)
        return sorted(found)

    def _check_count(self, count: int, location: Location) -> None:
        if count > MAX_OBJECTS:
            raise JobError(
                f"more than {MAX_OBJECTS} objects at {location.url}: import a narrower prefix",
                retriable=False,
            )

    def _list_files(self, path: str) -> list[tuple[str, int]]:
        pure = PurePosixPath(path)
        try:
            _no_links(pure, self._root)
            top = os.lstat(path)
            if stat.S_ISREG(top.st_mode):
                return [(f"file://{path}", top.st_size)]
            found: list[tuple[str, int]] = []
            stack = [Path(path)]
            while stack:
                directory = stack.pop()
                with os.scandir(directory) as entries:
                    for entry in entries:
                        if entry.is_symlink():
                            raise JobError(
                                f"file://{entry.path} is a symlink: symlinks are refused", retriable=False
                            )
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(Path(entry.path))
                        elif entry.is_file(follow_symlinks=False):
                            found.append((f"file://{entry.path}", entry.stat(follow_symlinks=False).st_size))
                            self._check_count(len(found), Location("file", "", path))
        except FileNotFoundError as exc:
            raise JobError(f"no such file or directory: file://{path}", retriable=False) from exc
        except OSError as exc:
            raise JobError(f"cannot list file://{path}: {exc.strerror}", retriable=False) from exc
        if not found:
            raise JobError(f"no file under file://{path}", retriable=False)
        return sorted(found)

    async def read(self, url: str) -> AsyncGenerator[bytes, None]:
        """The object's bytes, a chunk at a time. JobError before the first
        chunk when it claims more than the object bound."""
        location = parse_url(url, member="S3Url", root=self._root, setting="INGEST_JOB_IMPORT_DIR")
        if location.scheme == "file":
            async for chunk in self._read_file(location.key):
                yield chunk
            return
        response = await self._s3(
            "get_object", {"Bucket": location.bucket, "Key": location.key}, f"reading {url}"
        )
        body = response["Body"]
        try:
            self._check_size(url, int(response.get("ContentLength") or 0))
            while chunk := await self._blocking(lambda: body.read(CHUNK_BYTES), f"reading {url}"):
                yield chunk
        finally:
            body.close()

    def _check_size(self, url: str, size: int) -> None:
        if size > self._max_bytes:
            raise JobError(
                f"{url} is {size} bytes, over the {self._max_bytes}-byte limit (INGEST_JOB_MAX_OBJECT_BYTES)",
                retriable=False,
            )

    def _check_file(self, path: str, info: os.stat_result) -> None:
        if not stat.S_ISREG(info.st_mode):
            raise JobError(f"file://{path} is not a regular file", retriable=False)
        self._check_size(f"file://{path}", info.st_size)

    async def _read_file(self, path: str) -> AsyncIterator[bytes]:
        def open_file() -> int:
            _no_links(PurePosixPath(path), self._root)
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                self._check_file(path, os.fstat(fd))
            except BaseException:
                os.close(fd)
                raise
            return fd

        try:
            fd = await asyncio.to_thread(open_file)
        except FileNotFoundError as exc:
            raise JobError(f"no such file: file://{path}", retriable=False) from exc
        except OSError as exc:
            raise JobError(f"cannot open file://{path}: {exc.strerror}", retriable=False) from exc
        try:
            while chunk := await asyncio.to_thread(os.read, fd, CHUNK_BYTES):
                yield chunk
        finally:
            os.close(fd)

    async def write(self, location: Location, data: bytes) -> None:
        """Put ``data`` at ``location``, replacing what is there (a file
        atomically, by rename)."""
        if location.scheme == "file":
            await asyncio.to_thread(self._write_file, location.key, data)
            return
        params = {
            "Bucket": location.bucket,
            "Key": location.key,
            "Body": data,
            "ContentType": "application/gzip",
        }
        await self._s3("put_object", params, f"writing {location.url}")

    def _write_file(self, path: str, data: bytes) -> None:
        pure = PurePosixPath(path)
        try:
            _make_dirs(pure.parent, self._root)
            partial = f"{path}.{os.getpid()}.partial"
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(partial, path)
        except OSError as exc:
            raise JobError(f"cannot write file://{path}: {exc.strerror}", retriable=True) from exc

    async def _s3(self, operation: str, params: dict[str, Any], what: str) -> dict[str, Any]:
        try:
            return await self._aws.call(
                "s3", operation, params, self._region, self._role_arn, self._external_id, what
            )
        except DeliveryError as exc:
            raise JobError(str(exc), retriable=exc.retriable) from exc

    async def _blocking(self, call: Any, what: str) -> bytes:
        try:
            chunk: bytes = await self._aws.blocking(call, what)
        except DeliveryError as exc:
            raise JobError(str(exc), retriable=exc.retriable) from exc
        return chunk
