"""aiohttp.web fakes of the vendor APIs, faithful to vendors.md, with fault knobs and request logs.

Used by `reconciler demo`, `reconciler simulate` and the tests; the product never imports them.
"""
