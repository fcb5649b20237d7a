"""OpenTelemetry tracing (common/tracing.py): the span helpers in-process with the SDK's
in-memory exporter, the trace context through an OpenSession frame, and end to end: a real
gateway and worker exporting OTLP/HTTP to a receiver in this test while an aiortc client
publishes over WHIP."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from common import logformat, tracing
from gateway.http.tracing import tracing_middleware
from ipc import codec
from ipc import messages as m
from testkit.processes import REPO, GatewayProcess
from tests.support.clients import run_peer

SECRET_TOKEN = "tok-Very-Secret-0123456789"
SECRET_SDP = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=SECRET-SDP-BODY\r\n"


@pytest.fixture
def memory() -> Iterator[InMemorySpanExporter]:
    """Tracing on in this process, into memory; off again afterwards."""
    exporter = InMemorySpanExporter()
    tracing.install([SimpleSpanProcessor(exporter)], "sfu-gateway")
    yield exporter
    tracing.shutdown()


def _all_values(span: ReadableSpan) -> list[str]:
    values = [str(value) for value in (span.attributes or {}).values()]
    values += [span.name]
    for event in span.events:
        values.append(event.name)
        values += [str(value) for value in (event.attributes or {}).values()]
    if span.status.description:
        values.append(span.status.description)
    return values


async def test_server_span_has_route_status_room_and_kind_and_no_secret(
    memory: InMemorySpanExporter,
) -> None:
    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=201, text="answer")

    app = web.Application(middlewares=[tracing_middleware])
    app.router.add_route("*", "/api/whip/publish/{room}", handler)
    app.router.add_get("/healthz", handler)
    async with TestClient(TestServer(app)) as client:
        response = await client.post(
            f"/api/whip/publish/show?token={SECRET_TOKEN}",
            data=SECRET_SDP,
            headers={
                "Authorization": f"Bearer {SECRET_TOKEN}",
                "Content-Type": "application/sdp",
            },
        )
        assert response.status == 201
        assert (await client.get("/healthz")).status == 201  # not traced: not a WHIP POST
    [span] = memory.get_finished_spans()
    assert span.name == "POST /api/whip/publish/{room}"
    assert span.kind == SpanKind.SERVER
    assert dict(span.attributes or {}) == {
        "http.request.method": "POST",
        "http.route": "/api/whip/publish/{room}",
        "url.scheme": "http",
        "sfu.session.kind": "publisher",
        "sfu.room": "show",
        "http.response.status_code": 201,
    }
    for value in _all_values(span):
        assert SECRET_TOKEN not in value and "SECRET-SDP" not in value and "Bearer" not in value


async def test_server_span_fails_on_5xx_only(memory: InMemorySpanExporter) -> None:
    statuses = iter([404, 503])

    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=next(statuses))

    app = web.Application(middlewares=[tracing_middleware])
    app.router.add_route("*", "/api/whep/play/{room}", handler)
    async with TestClient(TestServer(app)) as client:
        await client.post("/api/whep/play/a")
        await client.post("/api/whep/play/a")
    not_found, unavailable = memory.get_finished_spans()
    assert not_found.attributes is not None and unavailable.attributes is not None
    assert not_found.attributes["sfu.session.kind"] == "subscriber"
    assert not_found.status.status_code.name == "UNSET"
    assert unavailable.status.status_code.name == "ERROR"
    assert unavailable.attributes["error.type"] == "503"


def test_trace_context_crosses_an_open_session_frame(memory: InMemorySpanExporter) -> None:
    with tracing.span("ipc OpenSession", kind="client") as client_span:
        carrier = tracing.inject()
        request = m.OpenSession("publisher", "show", "s" * 32, SECRET_SDP, trace=carrier)
    assert client_span.recording is False  # ended with the block
    assert set(carrier) >= {"traceparent"}
    frame = codec.decode(codec.encode(m.Frame(m.PROTOCOL_VERSION, m.REQUEST, 1, request)))
    assert isinstance(frame.body, m.OpenSession) and frame.body.trace == carrier
    with tracing.span("sfu.session.open", kind="server", parent=frame.body.trace):
        pass
    client, server = memory.get_finished_spans()
    assert server.context is not None and client.context is not None
    assert server.context.trace_id == client.context.trace_id
    assert server.parent is not None and server.parent.span_id == client.context.span_id


def test_open_session_without_trace_decodes_to_an_empty_dict() -> None:
    request = m.OpenSession("subscriber", "show", "s" * 32, "v=0")
    assert request.trace == {}
    frame = codec.decode(codec.encode(m.Frame(m.PROTOCOL_VERSION, m.REQUEST, 1, request)))
    assert isinstance(frame.body, m.OpenSession) and frame.body.trace == {}


def test_a_failing_block_is_marked_by_type_only(memory: InMemorySpanExporter) -> None:
    with pytest.raises(ValueError), tracing.span("work"):
        raise ValueError(SECRET_TOKEN)
    [span] = memory.get_finished_spans()
    assert span.status.status_code.name == "ERROR"
    assert span.attributes is not None and span.attributes["error.type"] == "ValueError"
    assert all(SECRET_TOKEN not in value for value in _all_values(span))


def test_helpers_are_no_ops_when_off() -> None:
    assert not tracing.enabled()
    assert tracing.inject() == {}
    with tracing.span("x", parent={"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}) as s:
        assert s is tracing.NO_SPAN
    assert tracing.start_span("y") is tracing.NO_SPAN
    tracing.NO_SPAN.set("a", 1)
    tracing.NO_SPAN.event("e")
    tracing.NO_SPAN.fail("f")
    tracing.NO_SPAN.end()
    tracing.shutdown()


@pytest.mark.parametrize(
    ("environ", "wanted"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_SAMPLER": "always_on"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_which_environments_turn_tracing_on(environ: dict[str, str], wanted: bool) -> None:
    assert tracing.requested(environ) is wanted


def _python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_without_otel_settings_no_provider_is_installed_and_nothing_loaded() -> None:
    code = (
        "import sys, gateway.http.app, gateway.placement.registry\n"
        "from common import tracing\n"
        "assert tracing.setup('sfu-gateway') is False\n"
        "assert not tracing.enabled()\n"
        "from opentelemetry import trace\n"  # the API alone, to ask for the global provider
        "assert type(trace.get_tracer_provider()).__name__ == 'ProxyTracerProvider'\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry.sdk')))\n"
    )
    done = _python(code, {})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_grpc_is_refused_with_one_log_line() -> None:
    code = (
        "import logging; logging.basicConfig(level=logging.INFO)\n"
        "from common import tracing\n"
        "print(tracing.setup('sfu-gateway'))\n"
    )
    done = _python(
        code,
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
    errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and "'grpc' is not supported" in errors[0], done.stderr


def test_local_workers_inherit_the_otel_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.placement.supervisor import worker_environment

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    env = worker_environment()
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://collector:4318"
    assert env["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio"


# --- end to end ------------------------------------------------------------------------------


@dataclass
class Received:
    service: str
    resource: dict[str, str]
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: int
    attributes: dict[str, Any]
    events: list[str]


def _value(value: AnyValue) -> Any:
    return getattr(value, value.WhichOneof("value") or "string_value")


@dataclass
class OtlpReceiver:
    """POST /v1/traces, OTLP/HTTP protobuf: what a collector would receive."""

    spans: list[Received] = field(default_factory=list)
    runner: web.AppRunner | None = None
    url: str = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _traces(self, request: web.Request) -> web.Response:
        export = ExportTraceServiceRequest()
        export.ParseFromString(await request.read())
        for resource_spans in export.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    self.spans.append(
                        Received(
                            service=resource.get("service.name", ""),
                            resource=resource,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex(),
                            name=span.name,
                            kind=span.kind,
                            attributes={a.key: _value(a.value) for a in span.attributes},
                            events=[event.name for event in span.events],
                        )
                    )
        body = ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=body, content_type="application/x-protobuf")

    def named(self, name: str) -> list[Received]:
        return [span for span in self.spans if span.name == name]

    async def wait_for(self, names: list[str], within: float) -> None:
        deadline = time.monotonic() + within
        while not all(self.named(name) for name in names):
            if time.monotonic() > deadline:
                seen = sorted({span.name for span in self.spans})
                raise AssertionError(f"spans {names} not all received in {within} s: {seen}")
            await asyncio.sleep(0.1)


async def test_a_whip_publish_is_one_trace_across_gateway_and_worker(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    receiver = OtlpReceiver()
    await receiver.start()
    try:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
        gateway = await asyncio.to_thread(
            gateway_factory,
            workers=1,
            env=env,
            args=["--room-tokens", f"traced:{SECRET_TOKEN}"],
        )
        result = await asyncio.to_thread(
            run_peer, "publish", gateway.url, "traced", "--seconds", "2", "--token", SECRET_TOKEN
        )
        assert result["ok"], result
        session_id = str(result["location"]).rsplit("/", 1)[-1]
        names = [
            "POST /api/whip/publish/{room}",
            "ipc OpenSession",
            "sfu.session.open",
            "sfu.session.connect",
            "sfu.session.first_packet",
        ]
        await receiver.wait_for(names, within=20)
    finally:
        await receiver.stop()

    [server] = receiver.named("POST /api/whip/publish/{room}")
    [ipc] = receiver.named("ipc OpenSession")
    [opened] = receiver.named("sfu.session.open")
    [connect] = receiver.named("sfu.session.connect")
    [first] = receiver.named("sfu.session.first_packet")
    assert server.service == ipc.service == "sfu-gateway"
    assert opened.service == connect.service == first.service == "sfu-worker"
    assert opened.resource["worker.id"] == ipc.attributes["sfu.worker.id"]
    assert len({span.trace_id for span in (server, ipc, opened, connect, first)}) == 1
    assert server.parent_id == ""
    assert ipc.parent_id == server.span_id
    assert opened.parent_id == ipc.span_id
    assert connect.parent_id == opened.span_id
    assert first.parent_id == connect.span_id
    assert server.attributes["http.response.status_code"] == 201
    assert server.attributes["sfu.room"] == "traced"
    assert server.attributes["sfu.session.kind"] == "publisher"
    assert opened.attributes["sfu.session.id_prefix"] == session_id[:8]
    assert {"ice.connected", "dtls.connected"} <= set(connect.events)
    assert first.events == ["first_packet"]
    for span in receiver.spans:
        for value in [*map(str, span.attributes.values()), span.name, *span.events]:
            assert SECRET_TOKEN not in value and session_id not in value, span
            assert "a=fingerprint" not in value and "Bearer" not in value, span


def test_json_log_records_carry_the_current_trace_id(memory: InMemorySpanExporter) -> None:
    formatter = logformat.JsonFormatter({"worker": "local-0"})
    record = logging.LogRecord("sfu.worker", logging.INFO, __file__, 1, "opening", None, None)
    assert "trace_id" not in json.loads(formatter.format(record))
    with tracing.span("sfu.session.open"):
        entry = json.loads(formatter.format(record))
        expected = trace.get_current_span().get_span_context().trace_id
    assert entry["trace_id"] == f"{expected:032x}"
    assert entry["worker"] == "local-0"
