"""The access-history room: append-only, tamper-evident logs of decisions and disclosures.

Not built yet (issue 3 and later).
"""
