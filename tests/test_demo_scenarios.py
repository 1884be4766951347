"""`renkei demo --run-scenarios`: the demo's lookups without a browser, through the real hub and
agency apps, each decision printed; exit 0 only when all decide as config/demo.yaml expects."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import demo_on_free_ports


def test_run_scenarios_prints_each_decision_and_exits_0(tmp_path):
    config_path, config, env = demo_on_free_ports(tmp_path)
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("renkei")), "demo", "--config", str(config_path), "--run-scenarios"],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for scenario in config["scenarios"]:
        assert f"✓ {scenario['title']}" in proc.stdout
        assert scenario["expect"] in proc.stdout
    assert "record:" in proc.stdout  # the permitted lookups fetched the provider's record
    assert "all scenarios decided as expected" in proc.stdout
    # the moving one-stop service: conformance-tested, operating, each run's steps printed
    assert "conformance of 転出元 市役所" in proc.stdout and ": operating" in proc.stdout
    for run in config["process_runs"]:
        assert f"✓ {run['title']}" in proc.stdout
    assert "(notice of the move to the electricity company, relayed): done (PERMITTED_BY_CONSENT)" in proc.stdout
    assert "(family-register annex, in parallel): refused (DENIED_BY_PERSON)" in proc.stdout
    assert "all process runs ended as expected" in proc.stdout


def test_a_scenario_that_decides_otherwise_fails_the_run(tmp_path):
    import yaml

    config_path, config, env = demo_on_free_ports(tmp_path)
    config["scenarios"][0]["expect"] = "NO_WHITELIST_ENTRY"  # it is in fact permitted
    config_path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("renkei")), "demo", "--config", str(config_path), "--run-scenarios"],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 1
    assert "✗" in proc.stdout and "some scenarios did not decide as expected" in proc.stdout
