"""A thin, typed wrapper over boto3's S3 client for the one registry bucket.

Every failure leaves here as one of three things: `KeyMissing` (no such object), `PreconditionFailed`
(a conditional write lost) or `common.errors.StorageUnavailable` (the store is down, slow, misconfigured
or answered 5xx). Callers never see botocore exceptions.
"""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from common.errors import IntegrityError, StorageUnavailable
from registry import layout
from registry.errors import KeyMissing, PreconditionFailed
from registry.settings import RegistrySettings

# Store reads that a caller runs side by side (a version's files, a listing beside an alias read): one pool per
# process, boto3 clients being thread-safe. Never submit to it from one of its own tasks and wait.
PARALLEL_READS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="store-read")

# 409 ConditionalRequestConflict is what AWS answers when two conditional writes race.
_PRECONDITION_CODES = {"PreconditionFailed", "412", "ConditionalRequestConflict"}
_RETRY_AFTER_S = 2.0


@dataclass(frozen=True)
class ObjectInfo:
    """What HEAD says about an object."""

    key: str
    etag: str
    size: int


class ObjectStore:
    """The registry's bucket. Synchronous: async callers run it in a thread.

    Args:
        settings: endpoint, bucket, region, timeouts and retries.
    """

    def __init__(self, settings: RegistrySettings):
        self.settings = settings
        self.bucket = settings.s3_bucket
        self.bumped: tuple[str, float] | None = None  # (ETag, monotonic time) of this process's last bump
        config = Config(
            connect_timeout=settings.s3_connect_timeout_s,
            read_timeout=settings.s3_read_timeout_s,
            retries={"mode": "standard", "max_attempts": settings.s3_max_attempts},
            s3={"addressing_style": "path"},  # no per-bucket DNS names on a loopback endpoint
            max_pool_connections=64,
        )
        # A session of our own reads the AWS_* credentials now; boto3's default session would keep
        # whatever it found first in this process.
        self.client = boto3.session.Session().client("s3", endpoint_url=settings.s3_endpoint,
                                                     region_name=settings.s3_region, config=config)

    def ensure_bucket(self) -> None:
        """Create the bucket unless it exists already."""
        try:
            self.client.create_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if _code(exc) not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                raise self._translate(exc, "") from exc
        except BotoCoreError as exc:
            raise self._translate(exc, "") from exc

    def ping(self) -> None:
        """Raise StorageUnavailable unless the bucket answers."""
        self._call("", self.client.head_bucket, Bucket=self.bucket)

    def put(self, key: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None) -> str:
        """Write `data` under `key` and return the new ETag.

        The SHA-256 of `data` travels with the request, so the store refuses bytes damaged on the way.

        Args:
            key: object key.
            data: the whole object.
            if_none_match: write only if no object exists under `key` (conditional create).
            if_match: write only if the current object's ETag is this one (compare-and-swap).

        Raises:
            PreconditionFailed: the condition did not hold.
        """
        extra: dict = {}
        if if_none_match:
            extra["IfNoneMatch"] = "*"
        if if_match is not None:
            extra["IfMatch"] = if_match
        digest = base64.b64encode(hashlib.sha256(data).digest()).decode()
        response = self._call(key, self.client.put_object, Bucket=self.bucket, Key=key, Body=data,
                              ChecksumSHA256=digest, **extra)
        if layout.watched(key):
            self.bump_generation()
        return response["ETag"]

    def bump_generation(self) -> None:
        """Give the generation object a new ETag: the answers remembered from before may have changed. The new
        ETag is kept (`bumped`): this process knows the generation after its own writes without reading it."""
        response = self._call(layout.GENERATION_KEY, self.client.put_object, Bucket=self.bucket,
                              Key=layout.GENERATION_KEY, Body=uuid.uuid4().hex.encode())
        self.bumped = (response["ETag"], time.monotonic())

    def generation(self) -> str | None:
        """The generation object's ETag (None: no watched object was written since the bucket began)."""
        try:
            return self.head(layout.GENERATION_KEY).etag
        except KeyMissing:
            return None

    def get(self, key: str) -> tuple[bytes, str]:
        """Return the object's bytes and ETag; KeyMissing if there is none."""
        response = self._call(key, self.client.get_object, Bucket=self.bucket, Key=key)
        try:
            return response["Body"].read(), response["ETag"]
        except BotoCoreError as exc:  # the connection broke mid-body
            raise self._translate(exc, key) from exc

    def get_chunks(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """The object's bytes as they arrive, in chunks (a reader hashes and writes while the rest downloads);
        KeyMissing before the first chunk if there is none."""
        response = self._call(key, self.client.get_object, Bucket=self.bucket, Key=key)
        body = response["Body"]
        try:
            while chunk := body.read(chunk_size):
                yield chunk
        except BotoCoreError as exc:  # the connection broke mid-body
            raise self._translate(exc, key) from exc
        finally:
            body.close()

    def head(self, key: str) -> ObjectInfo:
        """Return the object's ETag and size; KeyMissing if there is none."""
        response = self._call(key, self.client.head_object, Bucket=self.bucket, Key=key)
        return ObjectInfo(key=key, etag=response["ETag"], size=response["ContentLength"])

    def list(self, prefix: str) -> list[str]:
        """Return every key starting with `prefix`, sorted."""
        return sorted(self.list_sizes(prefix))

    def list_sizes(self, prefix: str) -> dict[str, int]:
        """Return every key starting with `prefix` with its size in bytes (the same listing calls)."""
        return {key: info.size for key, info in self.list_info(prefix).items()}

    def list_info(self, prefix: str) -> dict[str, ObjectInfo]:
        """Every key starting with `prefix` with its ETag and size (the same listing calls)."""
        found: dict[str, ObjectInfo] = {}
        token: dict = {}
        while True:
            page = self._call(prefix, self.client.list_objects_v2, Bucket=self.bucket, Prefix=prefix, **token)
            found.update((item["Key"], ObjectInfo(item["Key"], item.get("ETag", ""), item["Size"]))
                         for item in page.get("Contents", []))
            if not page.get("IsTruncated"):
                return found
            token = {"ContinuationToken": page["NextContinuationToken"]}

    def delete(self, key: str) -> None:
        """Delete `key`; deleting a missing key is not an error (S3 semantics)."""
        self._call(key, self.client.delete_object, Bucket=self.bucket, Key=key)
        if layout.watched(key):
            self.bump_generation()

    def _call(self, key: str, method, **kwargs) -> dict:
        try:
            return method(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise self._translate(exc, key) from exc

    def _translate(self, exc: Exception, key: str) -> Exception:
        """Map a botocore failure to KeyMissing, PreconditionFailed or a typed loraplex error."""
        where = f"S3 {self.settings.s3_endpoint} bucket {self.bucket!r}"
        if isinstance(exc, NoCredentialsError):
            return StorageUnavailable(f"{where}: no AWS credentials found: set AWS_ACCESS_KEY_ID and "
                                      "AWS_SECRET_ACCESS_KEY", retry_after=_RETRY_AFTER_S)
        if not isinstance(exc, ClientError):  # connection refused, timeouts, broken connections
            return StorageUnavailable(f"{where} unreachable ({type(exc).__name__}): check that the object "
                                      "store is running and LORAPLEX_S3_ENDPOINT is right", retry_after=_RETRY_AFTER_S)
        code, status = _code(exc), exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        # A bare 404 means "no such key" only for HEAD (no body to carry a code); on GET it is some
        # other server at the endpoint, and must not pass for a missing key.
        if code == "NoSuchKey" or (code in {"404", "NotFound"} and exc.operation_name == "HeadObject"):
            return KeyMissing(key)
        if code in _PRECONDITION_CODES:
            return PreconditionFailed(f"conditional write on {key!r} lost to a concurrent writer")
        if code == "BadDigest":
            return IntegrityError(f"{where} refused {key!r}: bytes damaged in transit (SHA-256 mismatch); retry")
        if code == "NoSuchBucket" or (code == "404" and exc.operation_name == "HeadBucket"):
            return StorageUnavailable(f"{where} does not exist: create it (make up) or set LORAPLEX_S3_BUCKET",
                                      retry_after=_RETRY_AFTER_S)
        if code in {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"}:  # HEAD has no body
            return StorageUnavailable(f"{where} refused our credentials ({code}): check AWS_ACCESS_KEY_ID and "
                                      "AWS_SECRET_ACCESS_KEY", retry_after=_RETRY_AFTER_S)
        return StorageUnavailable(f"{where} failed on {key!r} with {code or status}: retry later, and check that "
                                  "LORAPLEX_S3_ENDPOINT is an S3 endpoint", retry_after=_RETRY_AFTER_S)


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
