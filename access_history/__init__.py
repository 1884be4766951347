"""The access-history room (アクセス履歴): append-only, hash-chained logs of every decision and
disclosure, one per owning agency (and the hub), with signed checkpoints and auditor exports."""
