"""A real S3-compatible server for the tests: moto in server mode on 127.0.0.1.

The client under test is the real boto3 client talking HTTP to it, configured the
standard way (``AWS_ENDPOINT_URL``, keys, region in the environment), never mocked.
``s3_server`` starts one per test process; ``s3_bucket`` makes a fresh bucket per test.
"""

from __future__ import annotations

import logging
import uuid

import pytest

#: A distinctive secret: no error message may ever contain it.
SECRET = "s3cr3t-" + uuid.uuid4().hex
ACCESS_KEY = "AKIATESTBACKUPKIT000"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """The endpoint URL of a moto server, with the environment pointing boto3 at it."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    empty = tmp_path_factory.mktemp("aws") / "none"  # no config or credentials file of this host
    with pytest.MonkeyPatch.context() as mp:
        for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE"):
            mp.delenv(var, raising=False)
        mp.setenv("AWS_ENDPOINT_URL", endpoint)
        mp.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        mp.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
        mp.setenv("AWS_REGION", "us-east-1")
        mp.setenv("AWS_CONFIG_FILE", str(empty))
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
        try:
            yield endpoint
        finally:
            server.stop()


@pytest.fixture
def s3_client(s3_server):
    """A plain boto3 client of the test server (to look at what is stored)."""
    import boto3

    return boto3.client("s3")


@pytest.fixture
def s3_bucket(s3_client):
    """A new, empty bucket for one test."""
    name = f"bk-{uuid.uuid4().hex[:16]}"
    s3_client.create_bucket(Bucket=name)
    return name
