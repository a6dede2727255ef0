"""Scrapes /metrics after a known sequence of requests and parses it with
the reference Prometheus parsers (text format 0.0.4 and OpenMetrics)."""

import time
import urllib.request

import openai
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_prometheus

from conftest import create_key, start_custos, stop_custos


@pytest.fixture(scope="module")
def server():
    c = start_custos()
    yield c
    stop_custos(c)


def scrape(server, accept=None):
    req = urllib.request.Request(f"{server.admin}/metrics")
    if accept:
        req.add_header("Accept", accept)
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.headers.get("Content-Type"), resp.read().decode()


def samples(families):
    out = {}
    for family in families:
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(found, name, **labels):
    return found.get((name, tuple(sorted(labels.items()))))


def test_known_requests_produce_the_expected_series(server):
    key = create_key(server, "--name", "metrics", "--models", "mock-chat")["secret"]
    client = openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0)
    for _ in range(3):
        client.chat.completions.create(model="mock-chat", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.base_url, api_key="cst_live_nope", max_retries=0).chat.completions.create(
            model="mock-chat", messages=[{"role": "user", "content": "hi"}]
        )
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="mock-embed", messages=[{"role": "user", "content": "hi"}])

    content_type, text = scrape(server)
    assert content_type.startswith("text/plain; version=0.0.4")
    assert "# EOF" not in text
    found = samples(parse_prometheus(text))
    ok = value(
        found,
        "custos_requests_total",
        endpoint="chat.completions",
        model_requested="mock-chat",
        model_served="mock-chat",
        provider="mock",
        status_class="2xx",
    )
    assert ok == 3, sorted(k for k in found if k[0] == "custos_requests_total")
    assert value(found, "custos_rejections_total", status="401", code="malformed_api_key") == 1, [
        k for k in found if k[0] == "custos_rejections_total"
    ]
    assert value(found, "custos_rejections_total", status="403", code="model_not_allowed") == 1
    assert value(found, "custos_in_flight_requests") == 0
    assert value(found, "custos_request_duration_seconds_count", endpoint="chat.completions") == 5
    assert value(found, "custos_tokens_total", model="mock-chat", kind="prompt") > 0
    assert value(found, "custos_tokens_total", model="mock-chat", kind="completion") > 0
    assert value(found, "custos_ledger_healthy") == 1
    # Label sets stay bounded: no request IDs, no key IDs.
    for name, labels in found:
        keys = {k for k, _ in labels}
        assert not keys & {"request_id", "key_id", "key"}, (name, labels)

    content_type, text = scrape(server, accept="application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert text.endswith("# EOF\n")
    found = samples(parse_openmetrics(text))
    assert value(found, "custos_rejections_total", status="401", code="malformed_api_key") == 1


def test_per_key_series_only_when_the_operator_opts_in(tmp_path):
    import subprocess

    from conftest import BIN

    default = subprocess.run([BIN, "config", "default"], check=True, capture_output=True, text=True).stdout
    config = tmp_path / "custos.toml"
    config.write_text(default + "\n[metrics]\nper_key = true\n")
    server = start_custos(args=("--config", str(config)))
    try:
        created = create_key(server, "--name", "per-key", "--models", "mock-chat")
        client = openai.OpenAI(base_url=server.base_url, api_key=created["secret"], max_retries=0)
        for _ in range(2):
            client.chat.completions.create(model="mock-chat", messages=[{"role": "user", "content": "hi"}])
        _, text = scrape(server)
        found = samples(parse_prometheus(text))
        assert value(found, "custos_key_requests_total", key_id=created["id"], kind="2xx") == 2
        assert value(found, "custos_key_tokens_total", key_id=created["id"], kind="prompt") > 0
        # The secret never appears, only the ID.
        assert created["secret"] not in text
    finally:
        stop_custos(server)
