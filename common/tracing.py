"""OpenTelemetry tracing for both programs, configured by the standard OTEL_* variables only.

Tracing is off unless OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or
OTEL_TRACES_EXPORTER is set (OTEL_TRACES_EXPORTER=none and OTEL_SDK_DISABLED=true turn it off
again). Off, nothing of OpenTelemetry is even imported: every helper below returns at once
and `NO_SPAN` takes every call. On, `setup` installs an SDK TracerProvider with a batch
processor, the sampler of OTEL_TRACES_SAMPLER (parent-based always-on by default) and the
exporters of OTEL_TRACES_EXPORTER (`otlp`, the default, over HTTP/protobuf; `console`). The
SDK reads every other OTEL_* variable itself (OTEL_BSP_*, OTEL_EXPORTER_OTLP_HEADERS,
_TIMEOUT, _COMPRESSION, _CERTIFICATE, OTEL_RESOURCE_ATTRIBUTES, OTEL_PROPAGATORS).

The trace context crosses the IPC as a plain dict of W3C headers (`inject`, and `span`'s
`parent`): ipc/ carries it without knowing OpenTelemetry.

Attributes never carry tokens, Authorization headers, SDP or whole session ids (a session
id is a capability: `short_id` gives the 8-character prefix that the logs show too).
Exceptions are recorded by type only: their messages can quote client text.

OpenTelemetry is imported inside the functions, never at module level, so that common/
keeps loading nothing but msgspec (tests/test_layering.py).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, SpanKind, Tracer

log = logging.getLogger(__name__)

AttributeValue = str | bool | int | float
Attributes = Mapping[str, AttributeValue]
SpanKindName = Literal["server", "client", "internal"]

# Any of these turns tracing on (OTEL_TRACES_EXPORTER=none turns it off again).
SWITCHES = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_TRACES_EXPORTER",
)
SUPPORTED_PROTOCOL = "http/protobuf"
SESSION_ID_PREFIX = 8

_provider: TracerProvider | None = None
_tracer: Tracer | None = None


class TraceSpan:
    """One span, or nothing (`NO_SPAN`, tracing off or not sampled): then every method is a
    no-op. `end` may be called more than once; the first call ends the span."""

    __slots__ = ("_span", "_ended", "_failed")

    def __init__(self, span: Span | None = None) -> None:
        self._span = span
        self._ended = span is None
        self._failed = False

    @property
    def recording(self) -> bool:
        """Whether anything set on this span is kept (False when off or not sampled)."""
        return not self._ended and self._span is not None and self._span.is_recording()

    def set(self, key: str, value: AttributeValue) -> None:
        if self._span is not None and not self._ended:
            self._span.set_attribute(key, value)

    def event(self, name: str, attributes: Attributes | None = None) -> None:
        if self._span is not None and not self._ended:
            self._span.add_event(name, dict(attributes) if attributes else None)

    def fail(self, error_type: str) -> None:
        """Mark the span failed; `error_type` is a short code, never client text. The first
        call wins (the most specific cause: a worker's failure code before the exception's
        type name)."""
        if self._span is None or self._ended or self._failed:
            return
        self._failed = True
        from opentelemetry.trace import Status, StatusCode

        self._span.set_attribute("error.type", error_type)
        self._span.set_status(Status(StatusCode.ERROR, error_type))

    def end(self) -> None:
        if self._span is not None and not self._ended:
            self._ended = True
            self._span.end()


NO_SPAN = TraceSpan()


def enabled() -> bool:
    return _tracer is not None


def current_trace_id() -> str | None:
    """The trace id of the span running now (32 hex digits), for log records; None when
    tracing is off or no span is current."""
    if _tracer is None:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    return f"{context.trace_id:032x}" if context.is_valid else None


def requested(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the environment asks for tracing (before any protocol check)."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if not any(env.get(name, "").strip() for name in SWITCHES):
        return False
    return _exporter_names(env) != []


def _exporter_names(env: Mapping[str, str]) -> list[str]:
    names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "otlp").split(",")]
    names = [name for name in names if name]
    return [] if "none" in names or not names else names


def setup(default_service_name: str, attributes: Attributes | None = None) -> bool:
    """Install the tracer provider when the OTEL_* environment asks for tracing; True if on.

    The service name is OTEL_SERVICE_NAME's, or service.name of OTEL_RESOURCE_ATTRIBUTES,
    or `default_service_name`; `attributes` join the resource (worker.id)."""
    if _tracer is not None or not requested():
        return _tracer is not None
    exporters = _exporters(os.environ)
    if not exporters:
        return False
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    processors: list[SpanProcessor] = [BatchSpanProcessor(exporter) for exporter in exporters]
    install(processors, default_service_name, attributes)
    log.info(
        "tracing on: %s exporting to %s",
        _service_name(),
        ", ".join(type(exporter).__name__ for exporter in exporters),
    )
    return True


def _exporters(env: Mapping[str, str]) -> list[SpanExporter]:
    chosen: list[SpanExporter] = []
    for name in _exporter_names(env):
        if name == "otlp":
            protocol = (
                env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or SUPPORTED_PROTOCOL
            ).strip()
            if protocol != SUPPORTED_PROTOCOL:
                log.error(
                    "tracing: OTLP protocol %r is not supported, only %s (port 4318); "
                    "traces are not exported over OTLP",
                    protocol,
                    SUPPORTED_PROTOCOL,
                )
                continue
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            chosen.append(OTLPSpanExporter())
        elif name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            chosen.append(ConsoleSpanExporter())
        else:
            log.error("tracing: OTEL_TRACES_EXPORTER %r is not supported (otlp, console)", name)
    return chosen


def install(
    processors: list[SpanProcessor],
    default_service_name: str,
    attributes: Attributes | None = None,
) -> TracerProvider:
    """Make a provider with these span processors the one the helpers use (setup's last
    step; tests install an in-memory exporter with it). The sampler is OTEL_TRACES_SAMPLER's."""
    global _provider, _tracer
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider

    resource = Resource.create(dict(attributes or {}))
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: default_service_name}))
    provider = TracerProvider(resource=resource)
    for processor in processors:
        provider.add_span_processor(processor)
    _provider = provider
    _tracer = provider.get_tracer("live-sfu")
    return provider


def _service_name() -> str:
    if _provider is None:
        return ""
    return str(_provider.resource.attributes.get("service.name", ""))


def shutdown(timeout_s: float = 5.0) -> None:
    """Export what is buffered (at most `timeout_s`), then stop; a no-op when off."""
    global _provider, _tracer
    provider = _provider
    if provider is None:
        return
    _provider = _tracer = None
    try:
        provider.force_flush(int(timeout_s * 1000))
        provider.shutdown()
    except Exception:  # an exporter failing at exit must not change the exit status
        log.warning("tracing: flushing spans at exit failed", exc_info=True)


def short_id(session_id: str) -> str:
    """A session id is a capability: spans carry its prefix only, like the logs."""
    return session_id[:SESSION_ID_PREFIX]


def _kind(kind: SpanKindName) -> SpanKind:
    from opentelemetry.trace import SpanKind

    return {
        "server": SpanKind.SERVER,
        "client": SpanKind.CLIENT,
        "internal": SpanKind.INTERNAL,
    }[kind]


def start_span(
    name: str,
    *,
    kind: SpanKindName = "internal",
    attributes: Attributes | None = None,
    parent: TraceSpan | Mapping[str, str] | None = None,
) -> TraceSpan:
    """A span that is not made current (for what outlives the code that starts it); its
    parent is `parent` (a span, or W3C headers from `inject`), else the current span.
    The caller ends it."""
    tracer = _tracer
    if tracer is None:
        return NO_SPAN
    from opentelemetry import propagate, trace

    if isinstance(parent, TraceSpan):
        if parent._span is None:
            return NO_SPAN
        context = trace.set_span_in_context(parent._span)
    elif parent is not None:
        context = propagate.extract(parent)
    else:
        context = None
    span = tracer.start_span(
        name,
        context=context,
        kind=_kind(kind),
        attributes=dict(attributes) if attributes else None,
        record_exception=False,
        set_status_on_exception=False,
    )
    return TraceSpan(span)


@contextmanager
def span(
    name: str,
    *,
    kind: SpanKindName = "internal",
    attributes: Attributes | None = None,
    parent: Mapping[str, str] | None = None,
) -> Iterator[TraceSpan]:
    """A span around a block, current inside it (so `inject` and child spans see it). An
    exception leaving the block marks it failed with the exception's type name only."""
    if _tracer is None:
        yield NO_SPAN
        return
    from opentelemetry import context as otel_context
    from opentelemetry import trace

    traced = start_span(name, kind=kind, attributes=attributes, parent=parent)
    assert traced._span is not None
    token = otel_context.attach(trace.set_span_in_context(traced._span))
    try:
        yield traced
    except BaseException as exc:
        traced.fail(type(exc).__name__)
        raise
    finally:
        otel_context.detach(token)
        traced.end()


def inject() -> dict[str, str]:
    """The current trace context as W3C headers (traceparent, tracestate), {} when off."""
    if _tracer is None:
        return {}
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier
