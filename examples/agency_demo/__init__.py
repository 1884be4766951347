"""Demo agency: a SAML service provider that signs people in through Renkei's IdP.

`create_agency_app(config)` builds the web app; `sp_metadata(config)` gives the metadata the
hub registers (no HTTP needed, so `renkei demo` can enrol the agencies directly).
"""

from agency_demo.app import create_agency_app
from agency_demo.config import AgencyConfig
from agency_demo.saml import sp_metadata

__all__ = ["AgencyConfig", "create_agency_app", "sp_metadata"]
