"""The counter (窓口) of a municipality as a trigger of a business process flow (docs/processes.md):
the resident signed in here files an application (e.g. 転入届, the move), and the agency asks the
hub to start the process for them, authenticated as for discovery (client assertion) and naming
the person by the bootstrap token of their sign-in. The hub answers with each step's outcome."""
from __future__ import annotations

import uuid
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric import rsa

from agency_demo.config import AgencyConfig
from agency_demo.lookups import HTTP_TIMEOUT, LookupFailed, _json
from kernel.jose import sign_client_assertion

ADDRESS_MAX = 200


def start_url(config: AgencyConfig) -> str:
    return config.hub_base_url.rstrip("/") + "/api/process/start"


async def start_process(config: AgencyConfig, sp_key: rsa.RSAPrivateKey, *, bootstrap_token: str,
                        process_id: str, application: dict[str, str],
                        client: httpx.AsyncClient | None = None) -> dict[str, Any]:
    """Start the process at the hub; the run as the hub reports it (steps and what we received)."""
    url = start_url(config)
    assertion = sign_client_assertion(sp_key, issuer=config.entity_id, audience=url, jti=uuid.uuid4().hex)
    own_client = client is None
    client = client or httpx.AsyncClient(timeout=HTTP_TIMEOUT * 4)
    try:
        try:
            answer = await client.post(url, json={"process": process_id, "channel": "counter",
                                                  "person": {"bootstrap_token": bootstrap_token},
                                                  "application": application},
                                       headers={"Authorization": f"Bearer {assertion}", "Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise LookupFailed("HUB_UNREACHABLE", f"the hub could not be reached: {exc}") from None
        data = _json(answer)
        if answer.status_code != 200 or not isinstance(data.get("steps"), list):
            raise LookupFailed(str(data.get("error") or f"HTTP_{answer.status_code}"),
                               str(data.get("message") or "the hub refused to start the process"),
                               status=answer.status_code if 400 <= answer.status_code < 500 else 502)
        return data
    finally:
        if own_client:
            await client.aclose()
