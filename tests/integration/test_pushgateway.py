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


@pytest.mark.parametrize(("ci", "outcome"), [(None, "1 skipped"), ("", "1 skipped"), ("true", "1 error")])
def test_missing_pushgateway_skips_outside_ci_and_fails_in_ci(tmp_path, ci, outcome):
    """`make test` on a laptop without the binary skips the Pushgateway test; CI must not."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PATH"] = str(tmp_path)  # an empty folder: no prometheus-pushgateway on PATH
    if ci is not None:
        env["CI"] = ci
    root = Path(__file__).resolve().parents[2]
    test = "tests/integration/test_pushgateway.py::test_success_then_failure_keeps_last_success"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert outcome in result.stdout, result.stdout[-2000:]
    assert "prometheus-pushgateway is not installed" in result.stdout
