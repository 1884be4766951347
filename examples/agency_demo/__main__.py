"""Run one demo agency on its own: `python -m agency_demo --port 8101 --name "転出元 市役所"`."""

from __future__ import annotations

import argparse
from pathlib import Path

import uvicorn

from agency_demo.app import create_agency_app
from agency_demo.config import AgencyConfig


def main() -> None:
    parser = argparse.ArgumentParser(description="Renkei demo agency (SAML service provider)")
    parser.add_argument("--name", default="転出元 市役所 (Demo City A)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8101)
    parser.add_argument("--hub", default="http://127.0.0.1:8000", help="the Renkei hub's base URL")
    parser.add_argument("--entity-id", help="default: {base URL}/metadata")
    parser.add_argument("--key-dir", type=Path, help="default: .renkei/agency-{port}")
    parser.add_argument("--idp-metadata", type=Path, help="pinned IdP metadata file (optional)")
    parser.add_argument("--unsigned-requests", action="store_true")
    args = parser.parse_args()

    base_url = f"http://{args.host}:{args.port}"
    config = AgencyConfig(
        entity_id=args.entity_id or f"{base_url}/metadata",
        name=args.name,
        base_url=base_url,
        hub_base_url=args.hub,
        key_dir=args.key_dir or Path(".renkei") / f"agency-{args.port}",
        idp_metadata_xml=args.idp_metadata.read_text() if args.idp_metadata else None,
        sign_requests=not args.unsigned_requests,
    )
    uvicorn.run(create_agency_app(config), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
