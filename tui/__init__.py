"""regcache's user interfaces: the ``regcache`` CLI and the Textual app.

Importing this package must stay cheap: the CLI lists rules without loading Textual or uvicorn.
"""
