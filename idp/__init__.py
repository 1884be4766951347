"""The identity provider room: authenticates people and answers agencies over SAML 2.0.

Web Browser SSO (HTTP-Redirect/POST in, HTTP-POST out), SP-initiated Single Logout, metadata.
"""
