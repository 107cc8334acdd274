"""The store: the ledger (what we own), passes, the fingerprint key, and the locks that let
several replicas share it. I/O (SQLite, PostgreSQL)."""
