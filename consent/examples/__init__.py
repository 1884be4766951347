"""Example data shipped with the consent room (the demo federation's whitelist)."""
