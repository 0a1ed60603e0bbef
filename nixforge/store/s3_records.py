"""Records as S3 objects: conditional writes with If-None-Match and If-Match on the ETag."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError
from zope.interface import implementer

from nixforge.store.interfaces import IRecordStore, StoredRecord
from nixforge.store.records import check_key
from nixforge.store.s3_client import S3Calls, S3Location, is_conflict, is_missing


@implementer(IRecordStore)
class S3RecordStore:
    """Record `key` is the object `<prefix>records/<key>`; its version is the object's ETag."""

    def __init__(self, calls: S3Calls, location: S3Location) -> None:
        self.calls = calls
        self.bucket = location.bucket
        self.base = f"{location.prefix}records/"

    def _object(self, key: str) -> str:
        return self.base + check_key(key)

    def get(self, key: str) -> StoredRecord | None:
        """Return the object's bytes and ETag, or None."""
        def fetch() -> tuple[bytes, str]:
            response = self.calls.client.get_object(Bucket=self.bucket, Key=self._object(key))
            with response["Body"] as body:
                return body.read(), response["ETag"]
        try:
            value, etag = self.calls.run("get_object", fetch)
        except ClientError as error:
            if is_missing(error):
                return None
            raise
        return StoredRecord(value, etag)

    def _put(self, key: str, value: bytes, **condition: Any) -> str | None:
        try:
            response = self.calls("put_object", Bucket=self.bucket, Key=self._object(key), Body=value,
                                  ContentType="application/json", **condition)
        except ClientError as error:
            if condition and (is_conflict(error) or is_missing(error)):
                return None
            raise
        return str(response["ETag"])

    def put(self, key: str, value: bytes) -> str:
        """Write unconditionally."""
        version = self._put(key, value)
        assert version is not None
        return version

    def swap(self, key: str, value: bytes, version: str | None) -> str | None:
        """Write with `If-Match: version` (`If-None-Match: *` for None); None when the condition failed."""
        if version is None:
            return self._put(key, value, IfNoneMatch="*")
        return self._put(key, value, IfMatch=version)

    def delete(self, key: str, version: str | None = None) -> bool:
        """Delete the object (with `If-Match` when `version` is given); whether it was there."""
        if self.get(key) is None:
            return False
        condition = {} if version is None else {"IfMatch": version}
        try:
            self.calls("delete_object", Bucket=self.bucket, Key=self._object(key), **condition)
        except ClientError as error:
            if is_conflict(error) or is_missing(error):
                return False
            raise
        return True

    def keys(self, prefix: str) -> list[str]:
        """Every key under `prefix`, sorted (one listing, paged)."""
        return sorted(self.versions(prefix))

    def versions(self, prefix: str) -> dict[str, str]:
        """Every key under `prefix` with its ETag (one listing, paged)."""
        def listing() -> dict[str, str]:
            found = {}
            paginator = self.calls.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.base + prefix):
                for item in page.get("Contents", []):
                    found[item["Key"][len(self.base):]] = str(item["ETag"])
            return found
        return dict(self.calls.run("list_objects_v2", listing))
