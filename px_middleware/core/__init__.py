"""The sans-IO core: every decision about a request and its page, with no I/O.

Nothing here opens a socket or a file, starts a thread, or imports a web framework
or httpx (an import-linter contract in ``make test`` holds it to that). The drivers
(``wsgi.py``, ``asgi.py``) feed it request facts and body bytes; it answers with
headers, bytes and the events to capture.
"""
