"""The demo users and accounts, shared by the Starlette and FastAPI examples.

The same people as the Flask example (password = first name in lower case):
alice@acme.test and carol@acme.test (account Acme Corporation), bob@globex.test
(account Globex). An in-memory dict is enough for a demo.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hmac

from starlette.authentication import BaseUser

from px_middleware import Account, Identity, User


@dataclasses.dataclass(frozen=True)
class DemoAccount:
    id: str
    name: str
    plan: str
    industry: str
    seats: int
    contract_end: dt.date


@dataclasses.dataclass(frozen=True)
class DemoUser(BaseUser):
    """An app's own user model; ``px_identity`` is all PX needs to know about it."""

    id: str
    email: str
    password: str = dataclasses.field(repr=False)
    first_name: str
    last_name: str
    role: str
    sign_up_date: dt.date
    account: DemoAccount

    # starlette's BaseUser interface (AuthenticationMiddleware puts us in scope["user"]).
    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def display_name(self) -> str:
        return f"{self.first_name} {self.last_name}"

    @property
    def identity(self) -> str:
        return self.id

    def px_identity(self) -> Identity:
        """Found by ``px_middleware.starlette.default_identify`` on ``scope["user"]``."""
        account = self.account
        return Identity(
            User(
                id=self.id,
                email=self.email,
                first_name=self.first_name,
                last_name=self.last_name,
                role=self.role,
                sign_up_date=self.sign_up_date,
                account_id=account.id,
            ),
            Account(
                id=account.id,
                name=account.name,
                plan=account.plan,
                industry=account.industry,
                custom={"contractEnd": account.contract_end, "seats": account.seats},
            ),
        )


# The rows of examples/flask_app/db.py (ids as SQLite numbers them), so the same
# person is the same PX user and account whichever example served the page.
ACME = DemoAccount("acme", "Acme Corporation", "Enterprise", "Manufacturing", 50,
                   dt.date(2027, 3, 31))
GLOBEX = DemoAccount("globex", "Globex", "Growth", "Energy", 12, dt.date(2026, 12, 31))

USERS: dict[str, DemoUser] = {
    user.id: user
    for user in (
        DemoUser("1", "alice@acme.test", "alice", "Alice", "Anders", "Admin",
                 dt.date(2024, 2, 12), ACME),
        DemoUser("2", "carol@acme.test", "carol", "Carol", "Chen", "Analyst",
                 dt.date(2025, 6, 1), ACME),
        DemoUser("3", "bob@globex.test", "bob", "Bob", "Brown", "Owner",
                 dt.date(2025, 1, 20), GLOBEX),
    )
}


def authenticate(email: str, password: str) -> DemoUser | None:
    """The user with this email and password, or None."""
    for user in USERS.values():
        if user.email == email.strip().lower():
            # Constant-time compare even in a demo: it is the pattern people copy.
            if hmac.compare_digest(user.password.encode(), password.encode()):
                return user
            return None
    return None
