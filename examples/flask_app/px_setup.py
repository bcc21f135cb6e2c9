"""Who is on the page, for PX: the logged-in user and their account."""

from __future__ import annotations

from flask_login import current_user

from examples.flask_app.db import AppUser
from px_middleware import Account, Identity, User
from px_middleware.flask import PX

px = PX()


@px.identify
def who() -> Identity | None:
    """Called once per HTML page, when the response starts."""
    user = current_user._get_current_object()  # the user once, not a proxy per field
    if not user.is_authenticated:
        return None
    return identity_of(user)


def identity_of(user: AppUser) -> Identity:
    account = user.account
    return Identity(
        User(
            str(user.id),
            email=user.email,
            first_name=user.first_name,
            last_name=user.last_name,
            role=user.role,
            sign_up_date=user.signed_up,  # a date: PX gets epoch milliseconds
            account_id=account.id,
        ),
        Account(
            account.id,
            name=account.name,
            plan=account.plan,
            industry=account.industry,
            # Custom attributes, as defined in PX under Administration > Attributes.
            custom={"seats": account.seats, "contractEnd": account.contract_end},
        ),
    )
