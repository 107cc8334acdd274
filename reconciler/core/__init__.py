"""The functional core: desired, observed and ledger in, plans out.

Pure: no asyncio, no network, no files, no logging (import-linter enforces it).
"""
