"""Business process flows (業務プロセスフロー, seed 003): definitions owned by a process owner,
their lifecycle and conformance tests, the engine that runs them, and metering (課金)."""
