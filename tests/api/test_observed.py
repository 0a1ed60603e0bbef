"""The request observer (access log + HTTP metrics) and /metrics, over an in-memory connection."""

from __future__ import annotations

import io
import json
import re

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, formatEvent

import nixforge.api.access_log as access_log_module
from nixforge.api import RegistryApi
from nixforge.api.access_log import ObservedResource
from nixforge.api.edge import EdgeSite
from nixforge.api.metrics import BuildMetrics, RegistryMetrics
from nixforge.images.build_events import BuildStart
from nixforge.logs import BatchedLines

from .fake_images import FakeImageService, StubClient


class State:
    builds_running = 1
    builds_queued = 2
    manifest_cache_hits = 3
    manifest_cache_misses = 4


class Collector:
    max_size = 9


class Gc:
    collector = Collector()
    runs = 5
    bytes_freed = 6
    store_bytes = 7
    store_blobs = 8


def parse(text: bytes) -> dict:
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text.decode()) for sample in family.samples}


def observed(images: FakeImageService, clock: Clock, events: list[dict], access_log: bool = True
             ) -> tuple[StubClient, RegistryMetrics]:
    metrics = RegistryMetrics(State(), Gc())
    api = RegistryApi(images, clock, metrics=metrics)
    return StubClient(ObservedResource(api.resource(), clock, metrics, access_log), clock), metrics


def test_requests_are_counted_by_route_template(images: FakeImageService, clock: Clock, monkeypatch) -> None:
    events: list[dict] = []
    monkeypatch.setattr(access_log_module, "log", Logger(observer=events.append))
    manifests = images.add_image("team/app", "v1", [b"0123456789"])
    client, _ = observed(images, clock, events)
    assert client.request("GET", "/v2/team/app/manifests/v1")[0].code == 200
    assert client.request("GET", "/v2/other/manifests/v1")[0].code == 404
    digest = json.loads(manifests.oci.body)["layers"][0]["digest"]
    assert client.request("GET", f"/v2/team/app/blobs/{digest}")[0].code == 200
    assert client.request("GET", "/v2/UPPER/tags/list")[0].code == 400
    assert client.request("BREW", "/nowhere")[0].code == 405
    response, body = client.request("GET", "/metrics")
    assert response.code == 200
    found = parse(body)

    def requests(method: str, route: str, code: str) -> float:
        return found.get(("nixforge_http_requests_total",
                          (("code", code), ("method", method), ("route", route))), 0.0)

    assert requests("GET", "/v2/{name}/manifests/{reference}", "200") == 1
    assert requests("GET", "/v2/{name}/manifests/{reference}", "404") == 1
    assert requests("GET", "/v2/{name}/tags/list", "400") == 1
    assert requests("OTHER", "unmatched", "405") == 1
    assert found[("nixforge_blob_sent_bytes_total", ())] == 10
    assert found[("nixforge_builds_running", ())] == 1 and found[("nixforge_builds_queued", ())] == 2
    assert found[("nixforge_manifest_cache_hits_total", ())] == 3
    assert found[("nixforge_manifest_cache_misses_total", ())] == 4
    assert (found[("nixforge_gc_runs_total", ())], found[("nixforge_gc_freed_bytes_total", ())]) == (5, 6)
    assert (found[("nixforge_store_bytes", ())], found[("nixforge_store_blobs", ())]) == (7, 8)
    assert found[("nixforge_store_cap_bytes", ())] == 9
    assert not any("team/app" in str(key) or "other" in str(key) for key in found)
    lines = [event for event in events if event.get("log_format", "").startswith("{method}")]
    assert [(e["method"], e["path"], e["status"]) for e in lines][:2] == [
        ("GET", "/v2/team/app/manifests/v1", 200), ("GET", "/v2/other/manifests/v1", 404)]
    assert lines[2]["bytes"] == 10


def test_build_events_become_series() -> None:
    metrics = RegistryMetrics(State())
    builds = BuildMetrics(metrics)
    builds.build_started(BuildStart("b", "hello", "latest", "path:x", None, 100.0, 2.0))
    builds.build_phase("b", "build", 103.0)
    builds.build_finished("b", "timeout", 110.0, "timed out")
    found = parse(metrics.exposition())
    assert found[("nixforge_builds_total", (("outcome", "timeout"),))] == 1
    assert found[("nixforge_builds_total", (("outcome", "success"),))] == 0
    for phase, seconds in (("plan", 2.0), ("queued", 3.0), ("build", 7.0)):
        assert found[("nixforge_build_duration_seconds_sum", (("phase", phase),))] == seconds


def test_metrics_off_is_a_json_404(images: FakeImageService, clock: Clock) -> None:
    client = StubClient(RegistryApi(images, clock).resource(), clock)
    response, _ = client.request("GET", "/metrics")
    assert response.code == 404


def test_the_access_log_can_be_off(images: FakeImageService, clock: Clock, monkeypatch) -> None:
    events: list[dict] = []
    monkeypatch.setattr(access_log_module, "log", Logger(observer=events.append))
    client, _ = observed(images, clock, events, access_log=False)
    client.request("GET", "/v2/")
    assert events == []


def test_the_site_writes_no_combined_log_line() -> None:
    written: list[str] = []
    site = EdgeSite(ObservedResource(object(), Clock(), None), header_timeout=20, send_timeout=60)  # type: ignore[arg-type]
    site._logFile = type("File", (), {"write": written.append})()  # type: ignore[assignment]
    site.log(object())  # type: ignore[arg-type]
    assert written == []


def test_a_request_that_started_a_build_names_it_in_the_access_log(
    images: FakeImageService, clock: Clock, monkeypatch
) -> None:
    events: list[dict] = []
    monkeypatch.setattr(access_log_module, "log", Logger(observer=events.append))
    images.add_image("hello", "latest")
    client, _ = observed(images, clock, events)
    assert client.request("GET", "/v2/hello/manifests/latest")[0].code == 200  # served: no build
    images.build_id = "0123456789ab"  # the next pull starts this build
    assert client.request("GET", "/v2/hello/manifests/latest")[0].code == 200
    lines = [formatEvent(event) for event in events if event.get("log_format", "").startswith("{method}")]
    assert len(lines) == 2
    assert "build=" not in lines[0]
    assert lines[1].endswith(" build=0123456789ab")


def test_batched_access_lines_have_the_same_fields(images: FakeImageService, clock: Clock) -> None:
    stream = io.StringIO()
    lines = BatchedLines(clock, "nixforge.api.access_log", stream=lambda: stream, level=lambda: LogLevel.info)
    images.add_image("team/app", "v1", [b"0123456789"])
    client = StubClient(ObservedResource(RegistryApi(images, clock).resource(), clock, None, lines=lines), clock)
    client.request("GET", "/v2/team/app/manifests/v1", headers={"User-Agent": ['say "hi"']})
    client.request("GET", "/v2/other/manifests/v1")
    assert stream.getvalue() == ""
    clock.advance(1)
    written = [line.partition("[nixforge.api.access_log#info] ")[2] for line in stream.getvalue().splitlines()]
    assert len(written) == 2
    assert re.fullmatch(r"GET /v2/team/app/manifests/v1 200 \d+ \d+\.\d{3}s \"say 'hi'\"", written[0])
    assert written[1].startswith("GET /v2/other/manifests/v1 404 ")


def test_a_body_still_counted_by_a_copy_thread_delays_the_line_until_it_is(clock: Clock) -> None:
    """The client got every byte and left before the copy thread's count reached the reactor."""
    from twisted.internet.defer import Deferred
    from twisted.web.resource import Resource
    from twisted.web.server import NOT_DONE_YET

    from nixforge.api.access_log import note_body_pending

    counted: Deferred[None] = Deferred()
    requests: list = []

    class Copying(Resource):
        isLeaf = True

        def render_GET(self, request):  # type: ignore[no-untyped-def]
            note_body_pending(request, counted)
            request.setHeader(b"Content-Length", b"5")
            request.write(b"hello")
            requests.append(request)
            request.finish()
            return NOT_DONE_YET

    stream = io.StringIO()
    lines = BatchedLines(clock, "nixforge.api.access_log", stream=lambda: stream, level=lambda: LogLevel.info)
    metrics = RegistryMetrics(State(), Gc())
    client = StubClient(ObservedResource(Copying(), clock, metrics, lines=lines), clock)
    client.request("GET", "/v2/x/blobs/sha256:" + "a" * 64)
    clock.advance(1)
    assert stream.getvalue() == ""  # the request is finished, but its bytes are not counted yet
    requests[0].sentLength += 1000  # what count_sent does when the copy thread reports back
    counted.callback(None)
    clock.advance(1)
    assert " 200 1005 " in stream.getvalue()
