"""Fixtures for the recording tests: a real S3-compatible server (moto's server mode, a
separate process speaking the S3 protocol over HTTP) and a gateway that records."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3
from minio import Minio

from testkit.processes import GatewayProcess, pick_free_port

ADMIN_TOKEN = "recording-admin-token-0123456789abcdef"
BUCKET = "recordings"
ACCESS_KEY = "test-access"
SECRET_KEY = "test-secret"
REGION = "us-east-1"


class MotoServer:
    """`python -m moto.server` on a fixed port, so that it can be stopped and started again
    at the same address (an S3 outage). moto keeps its state in memory: start() recreates
    the bucket."""

    def __init__(self, log_dir: Path) -> None:
        self.port = pick_free_port()
        self.log_path = log_dir / f"moto-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto exited: {self.log_path.read_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"http://{self.endpoint}/", timeout=1).close()
                break
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        else:
            raise RuntimeError("moto did not start")
        client = self.client()
        if not client.bucket_exists(BUCKET):
            client.make_bucket(BUCKET)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self.process = None

    def client(self) -> Minio:
        return Minio(
            self.endpoint,
            access_key=ACCESS_KEY,
            secret_key=SECRET_KEY,
            secure=False,
            region=REGION,
            http_client=urllib3.PoolManager(retries=urllib3.Retry(total=0)),
        )

    def gateway_env(self, record_dir: Path, **extra: str) -> dict[str, str]:
        return {
            "RECORD_ENABLED": "1",
            "RECORD_DIR": str(record_dir),
            "ADMIN_TOKEN": ADMIN_TOKEN,
            "UPLOAD_RECORDINGS": "1",
            "S3_ENDPOINT": self.endpoint,
            "S3_REGION": REGION,
            "S3_BUCKET": BUCKET,
            "S3_ACCESS_KEY": ACCESS_KEY,
            "S3_SECRET_KEY": SECRET_KEY,
            "S3_PREFIX": "/live/",
            "S3_USE_SSL": "0",
            "S3_PATH_STYLE": "1",
            **extra,
        }


@pytest.fixture
def moto(tmp_path: Path) -> Iterator[MotoServer]:
    """A moto S3 server that is NOT started yet: call .start() (and .stop() for an outage)."""
    server = MotoServer(tmp_path)
    yield server
    server.stop()


def record_env(record_dir: Path, **extra: str) -> dict[str, str]:
    return {
        "RECORD_ENABLED": "1",
        "RECORD_DIR": str(record_dir),
        "ADMIN_TOKEN": ADMIN_TOKEN,
        **extra,
    }


def admin_get(url: str, token: str | None = ADMIN_TOKEN) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError):
        return 0, b""  # not listening (yet)


def list_records(gateway: GatewayProcess) -> list[dict[str, Any]]:
    status, body = admin_get(gateway.url + "/api/records")
    assert status == 200, body
    items: list[dict[str, Any]] = json.loads(body)
    return items
