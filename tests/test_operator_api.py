"""The operator API over HTTP: bearer-token protected registry of service types, offerings and
the whitelist, with clear 4xx answers and nothing written on bad input."""
from __future__ import annotations

import httpx
import pytest

from renkei.operator_api import operator_token


@pytest.fixture(scope="module")
def api(hub):
    client = httpx.Client(base_url=hub.base_url, headers={"Authorization": f"Bearer {operator_token()}"}, timeout=20)
    yield client
    client.close()


def test_operator_token_required(hub):
    assert httpx.get(f"{hub.base_url}/api/operator/service-types").status_code == 401
    r = httpx.get(f"{hub.base_url}/api/operator/service-types", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401


def test_service_types_and_offerings(api):
    r = api.post("/api/operator/service-types", json={"urn": "urn:renkei:op:tax", "name": "課税", "info_types": ["KAZEI"]})
    assert r.status_code == 201
    assert api.post("/api/operator/service-types", json={"urn": "urn:renkei:op:tax", "info_types": ["K"]}).status_code == 400
    assert api.post("/api/operator/service-types", json={"urn": "x", "info_types": []}).status_code == 400
    assert any(s["urn"] == "urn:renkei:op:tax" for s in api.get("/api/operator/service-types").json())
    r = api.post("/api/operator/offerings", json={"provider": "https://p.example/sp", "service_type": "urn:renkei:op:tax",
                                                  "endpoint": "ftp://nope"})
    assert r.status_code == 400 and "http" in r.json()["detail"]
    r = api.post("/api/operator/offerings", json={"provider": "https://p.example/sp", "service_type": "urn:renkei:op:tax",
                                                  "endpoint": "https://p.example/provide"})
    assert r.status_code == 201
    assert api.get("/api/operator/offerings", params={"service_type": "urn:renkei:op:tax"}).json()[0]["endpoint"] \
        == "https://p.example/provide"
    assert api.delete("/api/operator/offerings", params={"provider": "https://p.example/sp",
                                                         "service_type": "urn:renkei:op:tax"}).status_code == 204
    assert api.delete("/api/operator/service-types", params={"urn": "urn:renkei:op:tax"}).status_code == 204
    assert api.delete("/api/operator/service-types", params={"urn": "urn:renkei:op:tax"}).status_code == 404


def test_whitelist_import_is_all_or_nothing(api):
    good = {"requester": "class:municipality", "provider": "https://p.example/sp", "task_code": "OPT",
            "task_name": "テスト事務", "info_type_code": "OPI", "info_type_name": "テスト情報",
            "legal_basis": "test", "consent": "required"}
    bad = dict(good, info_type_code="OPI2", consent="maybe")
    before = api.get("/api/operator/whitelist").json()
    r = api.put("/api/operator/whitelist", json=[good, bad])
    assert r.status_code == 400 and any("entry 2" in p for p in r.json()["detail"])
    assert api.get("/api/operator/whitelist").json() == before
    assert api.put("/api/operator/whitelist", json=[good]).json()["created"] == 1
    assert any(e["task_code"] == "OPT" for e in api.get("/api/operator/whitelist").json())
