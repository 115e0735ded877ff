"""The wallet tests' ``world`` (a ledger with two operators, behind the API) for credit tests."""

from tests.test_wallets import world  # noqa: F401
