"""Who is on the page, for PX: Django's user plus the account of their email domain."""

from __future__ import annotations

from django.http import HttpRequest

from px_middleware import Account, Identity
from px_middleware.django import user_of

# A real app has an Account model; the example derives it from the email domain.
ACCOUNTS = {
    "acme.test": Account("acme", name="Acme Corporation", plan="Enterprise",
                         industry="Manufacturing"),
    "globex.test": Account("globex", name="Globex", plan="Starter", industry="Energy"),
}


def identify(request: HttpRequest) -> Identity | None:
    """``PX_IDENTIFY``: called once per HTML page, when the response comes back."""
    user = user_of(request.user)  # pk, email, names, date_joined as signUpDate
    if user is None:
        return None
    account = ACCOUNTS.get((user.email or "").rpartition("@")[2])
    return Identity(user, account)
