"""Stage metrics pushed to a real Pushgateway (Debian's prometheus-pushgateway on 127.0.0.1)."""

import urllib.request

import pytest

from reidflow.obs.metrics import StageMetrics

pytestmark = pytest.mark.integration


def scrape(url: str) -> str:
    return urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()


def value(text: str, name: str, instance: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{") and f'instance="{instance}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


def test_success_then_failure_keeps_last_success(pushgateway, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "pushgatewaySecretMustNotLeak42")
    monkeypatch.setenv("REIDFLOW_PUSHGATEWAY_URL", pushgateway)
    ok = StageMetrics(stage="pretrain", instance="run-a")
    ok.observe_step(losses={"ce": 2.5, "triplet": 0.3}, lrs={"base": 0.01}, seconds=0.2, samples=64)
    ok.observe_eval("target_city", "osnet", 0.42, 0.6)
    ok.finish(success=True)
    text = scrape(pushgateway)
    first = value(text, "reidflow_last_success_timestamp_seconds", "run-a")
    assert first is not None and first > 0
    assert value(text, "reidflow_samples_processed_total", "run-a") == 64
    assert "reidflow_loss{" in text and 'term="triplet"' in text
    assert value(text, "reidflow_eval_map_ratio", "run-a") == pytest.approx(0.42)
    assert "reidflow_build_info" in text

    failed = StageMetrics(stage="pretrain", instance="run-a")
    failed.finish(success=False)
    text = scrape(pushgateway)
    assert value(text, "reidflow_last_success_timestamp_seconds", "run-a") == first
    assert value(text, "reidflow_last_failure_timestamp_seconds", "run-a") is not None
    assert "pushgatewaySecretMustNotLeak42" not in text


def test_unreachable_gateway_does_not_fail_the_stage():
    m = StageMetrics(stage="evaluate")
    m.finish(success=True, gateway="http://127.0.0.1:9")
