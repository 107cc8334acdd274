"""The store: the ledger (what we own), passes, and the fingerprint key. I/O (SQLite)."""
