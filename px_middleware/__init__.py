"""Zero-code Gainsight PX for Python web apps.

Wrap a WSGI or ASGI app and every HTML page carries the PX tag with a verified
``identify`` call for the logged-in user and account.
"""

from typing import TYPE_CHECKING

from px_middleware.config import PXConfig
from px_middleware.core.model import Account, Identity, User
from px_middleware.core.signing import user_hash

if TYPE_CHECKING:  # real types for checkers; at run time the adapters load lazily
    from px_middleware.asgi import PXAsgiMiddleware
    from px_middleware.wsgi import PXWsgiMiddleware

__all__ = ["Account", "Identity", "PXAsgiMiddleware", "PXConfig", "PXWsgiMiddleware", "User",
           "user_hash"]
__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # The adapters import werkzeug/starlette; load them only when asked for.
    if name == "PXWsgiMiddleware":
        from px_middleware.wsgi import PXWsgiMiddleware

        return PXWsgiMiddleware
    if name == "PXAsgiMiddleware":
        from px_middleware.asgi import PXAsgiMiddleware

        return PXAsgiMiddleware
    raise AttributeError(f"module 'px_middleware' has no attribute {name!r}")
