"""The pseudonym room: the person↔agency identifier space (仮ID).

Pairwise pseudonyms per (person, agency), agencies' local record IDs, rotation.
"""
