"""The citizen portal (マイナポータル-like): consent settings, history, data locations.

Not built yet.
"""
