"""Consent receipts say only what is true: the channel a policy change really came through, and
no page that does not exist (the citizen portal is not built yet)."""
from __future__ import annotations

import inspect
import json

import pytest
from click.testing import CliRunner

from consent import service
from renkei.cli import main
from tests.conftest import cli_home


@pytest.fixture
def home(tmp_path, monkeypatch):
    with cli_home(tmp_path, monkeypatch, "receipts", RENKEI_BASE_URL="http://127.0.0.1:9998",
                  RENKEI_PRIVACY_POLICY_URL="https://operator.example.jp/privacy") as env:
        yield env


def run(*args, stdin=None):
    result = CliRunner().invoke(main, list(args), input=stdin)
    assert result.exit_code == 0, result.output
    return result.output


def receipt_claims(receipt_id: str) -> tuple[dict, str]:
    """The verified claims `renkei policy receipt` prints, and the whole printed text."""
    out = run("policy", "receipt", receipt_id)
    return json.loads(out.strip().rsplit("\n", 1)[0]), out


def test_operator_cli_changes_say_operator_cli_and_name_no_portal(home):
    run("init")
    run("person", "add", "--username", "chan", "--password-stdin", stdin="long enough pw\n")
    added = run("policy", "add", "--username", "chan", "--effect", "allow", "--info-type", "KOSEKI")
    claims, text = receipt_claims(added.rsplit("consent receipt ", 1)[1].strip())
    assert claims["collectionMethod"] == "operator-cli"
    assert claims["policyUrl"] == "https://operator.example.jp/privacy"
    assert "portal" not in text.lower() and "ポータル" not in text
    rule_id = run("policy", "show", "--username", "chan").split("rule ", 1)[1].split(":", 1)[0]
    removed = run("policy", "remove", "--username", "chan", "--rule", rule_id)
    claims, text = receipt_claims(removed.rsplit("consent receipt ", 1)[1].strip())
    assert claims["collectionMethod"] == "operator-cli" and "portal" not in text.lower()


def test_every_caller_must_name_its_channel():
    """No default channel to be silently wrong by."""
    for change in (service.set_policy, service.add_rule, service.remove_rule):
        parameter = inspect.signature(change).parameters["collection_method"]
        assert parameter.default is inspect.Parameter.empty, change.__name__
