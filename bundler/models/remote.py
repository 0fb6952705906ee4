"""A build cache shared by machines: entries in an S3-compatible store, behind the local one.

    s3://bucket/prefix/blobs/<sha256>               every file of every entry, by its bytes
    s3://bucket/prefix/entries/<fingerprint>        a model entry's index: file name → sha256
    s3://bucket/prefix/derived/<space>/<key>        the same for files derived from others by a
                                                    fixed step (a tfjs runtime, a compressed form)

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
import os
import re
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

log = logging.getLogger(__name__)

URL = re.compile(r"^s3://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(?P<prefix>.*))?$")
INDEX_FORMAT = 1
# What an index may name: a file in the entry's folder, never a path out of it.
FILE_NAME = re.compile(r"^(?!\.\.?$)[A-Za-z0-9._-]{1,255}$")
# Connections kept open to the store: an entry's blobs are fetched at once, and the web target
# fetches its compressed forms in threads.
POOL_CONNECTIONS = max(16, os.cpu_count() or 1)
# What S3-compatible stores answer for a key that is not there.
MISSING = ("NoSuchKey", "404", "NotFound")


class Unavailable(Exception):
    """The store cannot be reached or refuses us; the message says what it answered, and
    `writing` whether it happened while publishing (what was read here is not in doubt)."""

    def __init__(self, message: str, writing: bool = False) -> None:
        super().__init__(message)
        self.writing = writing


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
        self._lock = threading.Lock()  # the web target fetches compressed forms in threads
        # Blobs this build saw whole in the store (fetched and checked, or written): an entry
        # published again after verification uploads and asks after only its changed files.
        self._present: set[str] = set()

    def _s3(self) -> Any:
        with self._lock:
            if self._client is None:
                import boto3
                from botocore.config import Config

                config = Config(
                    retries={"max_attempts": 2},
                    connect_timeout=5,
                    read_timeout=60,
                    max_pool_connections=POOL_CONNECTIONS,
                )
                self._client = boto3.client("s3", config=config)
            return self._client

    def fetch(self, index: str) -> dict[str, bytes] | None:
        """The files (name → bytes) listed by the index object `index` (`entry(key)`,
        `derived(...)`); None when it is absent or any of them is damaged."""
        data = self._get(f"{self.prefix}{index}")
        if data is None:
            return None
        try:
            doc = json.loads(data)
            files = doc["files"]
            if not isinstance(files, dict) or not all(map(FILE_NAME.match, files)):
                raise TypeError("files is not an object of plain file names")
        except (ValueError, KeyError, TypeError):
            log.warning("the shared cache's %s is damaged; making it here", index)
            return None
        if doc.get("format") != INDEX_FORMAT:
            log.info("the shared cache's %s has another format; making it here", index)
            return None
        keys = [self._blob(digest) for digest in files.values()]
        if len(keys) > 1:
            # Fetched at once: a store far away answers each request late.
            with ThreadPoolExecutor(max_workers=min(len(keys), POOL_CONNECTIONS)) as pool:
                got = list(pool.map(self._get, keys))
        else:
            got = [self._get(key) for key in keys]
        blobs = dict(zip(files, got, strict=True))
        for name, digest in files.items():
            blob = blobs[name]
            if blob is None or hashlib.sha256(blob).hexdigest() != digest:
                log.warning(
                    "the shared cache's copy of %s (%s) is missing or damaged; making it here",
                    name,
                    index,
                )
                return None
            self._present.add(digest)
        return {name: blob for name, blob in blobs.items() if blob is not None}

    def publish(self, index: str, contents: Mapping[str, bytes]) -> None:
        """Upload files (name → bytes) as blobs, then the index object `index` that lists them."""
        files = {}
        for name, data in sorted(contents.items()):
            digest = hashlib.sha256(data).hexdigest()
            files[name] = digest
            if digest in self._present:
                continue
            blob = self._blob(digest)
            # A blob already there is kept only when its ETag (the MD5 of a plain upload) says
            # it holds these bytes: a damaged copy is written over, so the store heals.
            if self._etag(blob) != hashlib.md5(data, usedforsecurity=False).hexdigest():
                self._put(blob, data)
            self._present.add(digest)
        doc = {"format": INDEX_FORMAT, "files": files}
        self._put(f"{self.prefix}{index}", json.dumps(doc, sort_keys=True).encode())

    def _blob(self, digest: str) -> str:
        return f"{self.prefix}blobs/{digest}"

    def _get(self, key: str) -> bytes | None:
        body: bytes | None = self._request("get_object", False, Key=key)
        return body

    def _etag(self, key: str) -> str | None:
        head = self._request("head_object", True, Key=key)
        return None if head is None else str(head.get("ETag", "")).strip('"')

    def _put(self, key: str, data: bytes) -> None:
        self._request("put_object", True, Key=key, Body=data)

    def _request(self, operation: str, writing: bool, **params: Any) -> Any:
        """One request to the store: its answer (a GET's body), or None when the key is absent;
        Unavailable when the store cannot be reached or refuses (`writing`: while publishing)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            answer = getattr(self._s3(), operation)(Bucket=self.bucket, **params)
            return answer["Body"].read() if operation == "get_object" else answer
        except ClientError as err:
            if operation != "put_object" and _code(err) in MISSING:
                return None
            raise Unavailable(_said(err), writing) from err
        except (BotoCoreError, ValueError) as err:  # ValueError: boto3 on a malformed endpoint
            raise Unavailable(_said(err), writing) from err


def entry(key: str) -> str:
    """The index of model entry `key` (a fingerprint)."""
    return f"entries/{key}"


def derived(space: str, key: str) -> str:
    """The index of files derived by a fixed step, in `space`, from inputs hashed to `key`."""
    return f"derived/{space}/{key}"


def _code(err: Any) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


def _said(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0][:300]
