"""`renkei audit checkpoint|export|verify` on the test hub: the auditor's commands, their files
and their exit codes (0 sound, 1 not sound, 2 unreadable)."""
from __future__ import annotations

import csv
import json

import httpx
from click.testing import CliRunner

from consent.models import PolicyRuleIn
from renkei.cli import main
from tests.federation import RESIDENT, set_rules
from tests.test_discovery_api import query


def renkei(*args: str):
    return CliRunner().invoke(main, list(args))


def test_export_then_verify_and_tampering(hub, fed, bootstrap, tmp_path):
    set_rules(fed, PolicyRuleIn(effect="allow"))
    query(hub, fed, bootstrap, RESIDENT, "JUKI")
    saved = tmp_path / "saved.checkpoint"
    assert renkei("audit", "checkpoint", "--out", str(saved)).exit_code == 0
    query(hub, fed, bootstrap, RESIDENT, "JUKI")  # the log grows after the auditor saved it

    out = tmp_path / "history.jsonl"
    result = renkei("audit", "export", "--since", str(saved), "--format", "jsonl", "--out", str(out))
    assert result.exit_code == 0, result.output
    vkey = httpx.get(f"{hub.base_url}/history/checkpoint.vkey").text.strip()
    ok = renkei("audit", "verify", str(out), "--since", str(saved), "--key", vkey)
    assert ok.exit_code == 0 and "sound" in ok.output, ok.output

    lines = out.read_text(encoding="utf-8").splitlines()
    at = next(i for i, line in enumerate(lines) if json.loads(line)["type"] == "entry")
    entry = json.loads(lines[at])
    entry["task_code"] = entry["task_code"] + "X"
    lines[at] = json.dumps(entry, ensure_ascii=False)
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_text("\n".join(lines) + "\n", encoding="utf-8")
    bad = renkei("audit", "verify", str(tampered), "--key", vkey)
    assert bad.exit_code == 1 and "altered" in bad.output, bad.output

    assert renkei("audit", "verify", str(tmp_path / "missing.jsonl")).exit_code == 2

    table = tmp_path / "history.csv"
    assert renkei("audit", "export", "--format", "csv", "--outcome", "PERMITTED_BY_CONSENT",
                  "--out", str(table)).exit_code == 0
    rows = list(csv.DictReader(table.open(encoding="utf-8")))
    assert rows and {r["outcome"] for r in rows} == {"PERMITTED_BY_CONSENT"}
    assert all("person_key" not in r and r["person_ref"] for r in rows)


def test_export_is_logged_in_the_operations_log(hub, tmp_path):
    out = tmp_path / "ops.jsonl"
    assert renkei("audit", "export", "--out", str(tmp_path / "a.jsonl")).exit_code == 0
    assert renkei("audit", "export", "--log", "operations", "--out", str(out)).exit_code == 0
    actions = [json.loads(line).get("action") for line in out.read_text(encoding="utf-8").splitlines()]
    assert "audit.export" in actions


def test_bad_dates_are_refused_without_writing(hub, tmp_path):
    out = tmp_path / "never.jsonl"
    result = renkei("audit", "export", "--from", "yesterday", "--out", str(out))
    assert result.exit_code != 0 and "--from" in result.output and not out.exists()
