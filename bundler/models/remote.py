"""A build cache shared by machines: entries in an S3-compatible store, behind the local one.

    s3://bucket/prefix/blobs/<sha256>           every file of every entry, by its bytes
    s3://bucket/prefix/entries/<fingerprint>    the entry's index: file name → sha256

An entry is published blobs first and its index last, so a reader sees it whole or not at all;
equal bytes go to equal keys, so builders writing the same entry at once write the same
objects. A fetched blob is checked against its sha256: a damaged or missing one makes the
entry a miss, converted again, never trusted. Endpoint, region and credentials come from the
standard AWS settings (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, profiles...), through boto3.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

URL = re.compile(r"^s3://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(?P<prefix>.*))?$")
INDEX_FORMAT = 1


class Unavailable(Exception):
    """The store cannot be reached or refuses us; the message says what it answered."""


def parse(url: str) -> tuple[str, str] | None:
    """(bucket, prefix) of an s3:// URL, or None when it is not one."""
    found = URL.match(url)
    if found is None:
        return None
    return found["bucket"], (found["prefix"] or "").strip("/")


class RemoteCache:
    """The shared store at an s3:// URL."""

    def __init__(self, url: str) -> None:
        parsed = parse(url)
        if parsed is None:
            raise ValueError(f"not an s3:// URL: {url}")
        self.url = url
        self.bucket, prefix = parsed
        self.prefix = f"{prefix}/" if prefix else ""
        self._client: Any = None

    def _s3(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            config = Config(retries={"max_attempts": 2}, connect_timeout=5, read_timeout=60)
            self._client = boto3.client("s3", config=config)
        return self._client

    def fetch(self, key: str, into: Path) -> bool:
        """Write entry `key`'s files into the folder `into`; False when absent or damaged."""
        index = self._get(f"{self.prefix}entries/{key}")
        if index is None:
            return False
        try:
            files = json.loads(index)["files"]
        except (ValueError, KeyError, TypeError):
            log.warning("the shared cache's index for %s is damaged; converting again", key)
            return False
        into.mkdir(parents=True, exist_ok=True)
        for name, digest in files.items():
            data = self._get(f"{self.prefix}blobs/{digest}")
            if data is None or hashlib.sha256(data).hexdigest() != digest:
                log.warning(
                    "the shared cache's copy of %s/%s is damaged; converting again", key, name
                )
                return False
            (into / name).write_bytes(data)
        return True

    def publish(self, key: str, folder: Path) -> None:
        """Upload the entry in `folder`: its files as blobs, then its index."""
        files = {}
        for path in sorted(p for p in folder.iterdir() if p.is_file()):
            data = path.read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            files[path.name] = digest
            blob = f"{self.prefix}blobs/{digest}"
            # A blob already there is kept only when its ETag (the MD5 of a plain upload) says
            # it holds these bytes: a damaged copy is written over, so the store heals.
            if self._etag(blob) != hashlib.md5(data, usedforsecurity=False).hexdigest():
                self._put(blob, data)
        index = {"format": INDEX_FORMAT, "files": files}
        self._put(f"{self.prefix}entries/{key}", json.dumps(index, sort_keys=True).encode())

    def _get(self, key: str) -> bytes | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            body: bytes = self._s3().get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise Unavailable(_said(err)) from err
        except BotoCoreError as err:
            raise Unavailable(_said(err)) from err
        return body

    def _etag(self, key: str) -> str | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            head = self._s3().head_object(Bucket=self.bucket, Key=key)
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return None
            raise Unavailable(_said(err)) from err
        except BotoCoreError as err:
            raise Unavailable(_said(err)) from err
        return str(head.get("ETag", "")).strip('"')

    def _put(self, key: str, data: bytes) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._s3().put_object(Bucket=self.bucket, Key=key, Body=data)
        except (BotoCoreError, ClientError) as err:
            raise Unavailable(_said(err)) from err


def _said(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0][:300]
