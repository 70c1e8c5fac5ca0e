"""A first end-to-end pass through the ledger on both backends."""

from domain import commands as c
from domain.context import RequestContext
from domain.ledger import Ledger


def test_opened_account_is_read_back_from_the_store(ledger: Ledger, ctx: RequestContext) -> None:
    # given / when
    ledger.open_account(c.OpenAccount(name="acme"), ctx)
    # then
    account = ledger.get_account("acme")
    assert account.name == "acme"
    assert account.kind == "customer"
    assert account.version == 1
