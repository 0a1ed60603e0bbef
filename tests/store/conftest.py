"""Fixtures of the store tests: the S3 backend's client and a fresh bucket prefix per test."""

from tests.store.backends import s3_calls, s3_location

__all__ = ["s3_calls", "s3_location"]
