"""S3 mocked inside the test process (moto's `mock_aws`, no HTTP): for unit tests of the gateway
that need a bucket's real answers, not a server's wire behaviour."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from moto import mock_aws

from chunkd.s3.client import S3Target, make_client


@contextlib.contextmanager
def mocked_bucket(bucket: str) -> Iterator[Any]:
    """A client made as chunkd makes it, on an in-process S3 holding `bucket`, empty; everything
    stored is gone when the block ends."""
    with mock_aws():
        client = make_client(S3Target(region="us-east-1", access_key="testing", secret_key="testing"))
        client.create_bucket(Bucket=bucket)
        yield client
