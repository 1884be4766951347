"""The citizen portal (マイ連携ポータル): where my data is, who asked for it and why, and where it
may go. A SAML service provider of the hub's own IdP; it reads the rooms below it only through
their service functions."""
