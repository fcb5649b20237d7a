"""HTTPS with a certificate generated here, and /metrics on its own METRICS_ADDR listener."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client.parser import text_string_to_metric_families

from testkit.processes import GatewayProcess, pick_free_port, start_gateway, wait_sync


def write_self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "live-sfu test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class TlsGateway:
    def __init__(self, process: GatewayProcess, cert: Path, metrics_port: int) -> None:
        self.process = process
        self.url = process.url.replace("http://", "https://")
        self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        self.ssl = ssl.create_default_context(cafile=str(cert))


@pytest.fixture(scope="module")
def tls_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsGateway]:
    directory = tmp_path_factory.mktemp("tls")
    cert, key = write_self_signed(directory)
    metrics_port = pick_free_port()
    env = {
        "TLS_CERT_FILE": str(cert),
        "TLS_KEY_FILE": str(key),
        "METRICS_ADDR": f"127.0.0.1:{metrics_port}",
    }
    process = start_gateway(directory, workers=0, env=env, wait=None)
    gateway = TlsGateway(process, cert, metrics_port)

    def up() -> bool:
        if process.process.poll() is not None:
            raise AssertionError(f"gateway exited early:\n{process.log()}")
        return "listening on https://" in process.log() and "metrics on" in process.log()

    try:
        wait_sync(up, 20, "the HTTPS gateway to listen")
    except BaseException:
        process.stop()
        raise
    yield gateway
    process.stop()


async def test_https_with_a_generated_certificate(tls_gateway: TlsGateway) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(tls_gateway.url + "/healthz", ssl=tls_gateway.ssl) as response:
            assert response.status == 200
            assert await response.text() == "ok"
        async with http.get(tls_gateway.url + "/api/rooms", ssl=tls_gateway.ssl) as response:
            assert response.status == 200
            assert await response.json() == []
        # Without trusting the certificate the handshake fails: it really is that certificate.
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            async with http.get(tls_gateway.url + "/healthz") as response:
                pass
        # Plain HTTP on the TLS port gets no HTTP answer.
        with pytest.raises(aiohttp.ClientError):
            async with http.get(tls_gateway.process.url + "/healthz") as response:
                await response.read()


async def test_metrics_on_their_own_listener(tls_gateway: TlsGateway) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(tls_gateway.metrics_url) as response:
            assert response.status == 200
            assert response.content_type == "text/plain"
            families = {f.name for f in text_string_to_metric_families(await response.text())}
        assert {"live_rooms", "live_workers", "live_rtp_packets", "process_cpu_seconds"} <= families
        # ...and no longer on the public port.
        async with http.get(tls_gateway.url + "/metrics", ssl=tls_gateway.ssl) as response:
            assert response.status == 404
