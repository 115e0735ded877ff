"""e-CNY is conserved: whatever sequence of issuance, redemption, top-ups, payments, waterfalls,
loans and their repayments runs, the e-CNY in circulation equals what the central bank issued
minus what it redeemed, and the ledger stays zero-sum. A loan is never repaid beyond what it
owes, and a wallet has a mandate exactly while it owes. Driven through the real wallet service on
SQLite; ``ledger verify`` re-checks everything (signatures and mandates included) at the end."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from ledger import entry, signing
from ledger.credit.loans import LenderAccounts
from ledger.domain import Account, AccountFlags, Disbursement, Transfer
from ledger.engine import OP_CREATE_ACCOUNTS, OP_CREATE_TRANSFERS, OP_DISBURSE_LOANS
from ledger.ids import new_id
from ledger.service import LedgerService
from ledger.verify import verify
from ledger.wallets import codes
from ledger.wallets.kyc import KycStore
from ledger.wallets.service import CNY, SignedPayment, Wallets

OPERATORS = ("op_a", "op_b")
amounts = st.integers(1, 1_500_000)  # class 4 caps at 1,000,000 fen: caps and sweeps happen
steps = st.lists(
    st.one_of(
        st.tuples(st.just("issue"), st.sampled_from(OPERATORS), amounts),
        st.tuples(st.just("cb_redeem"), st.sampled_from(OPERATORS), amounts),
        st.tuples(st.just("top_up"), st.integers(0, 3), amounts),
        st.tuples(st.just("redeem"), st.integers(0, 3), amounts),
        st.tuples(st.just("pay"), st.integers(0, 3), st.integers(0, 3), amounts),
        st.tuples(
            st.just("lend"),
            st.integers(0, 3),
            amounts,
            st.integers(0, 50_000),
            st.sampled_from([0, 1_000, 5_000, 10_000]),
        ),
        st.tuples(st.just("repay"), st.integers(0, 3), amounts),
    ),
    max_size=25,
)


class Pilot:
    """Two operators, four class-4 wallets: two sweep to the bank above their cap, one tops up
    from the bank when short (reverse waterfall), one does neither."""

    def __init__(self, service: LedgerService, tmp: Path) -> None:
        self.service = service
        self.wallets = Wallets(service, KycStore(service.store.engine, b"k" * 32))
        self.issued = self.redeemed = 0
        self.loans: dict[int, int] = {}  # receivable -> principal + fee
        for op in OPERATORS:
            assert self.wallets.onboard_operator(op).result().codes == [0, 0, 0]
            assert self.wallets.deposit_reserves(new_id(), op, 10**12).result().codes == [0]
            self._issue(op, 10**9)
        self.keys: list[SigningKey] = []
        self.ids: list[int] = []
        for i in range(4):
            op = OPERATORS[i % 2]
            bank = new_id()
            assert self.wallets.open_bank_account(op, bank, f"c{i}").result().codes == [0]
            assert self.wallets.cash_deposit(op, new_id(), bank, 10**9).result().codes == [0]
            key, wallet_id = SigningKey.generate(), new_id()
            linked = bank if i != 3 else 0
            opened = self.wallets.open_wallets(op, [self.wallets.wallet_to_open(
                op, wallet_id, kind="personal", klass=4, public_key=bytes(key.verify_key),
                kyc={"phone": "1"}, linked_bank=linked, reverse_waterfall=(i == 2),
            )])  # fmt: skip
            assert opened.result().codes == [0]
            self.keys.append(key)
            self.ids.append(wallet_id)
        # one of each on purpose, so the random part starts from a ledger that has them
        self.wallets.top_up("op_a", new_id(), self.ids[0], 900_000).result()
        self.wallets.top_up("op_b", new_id(), self.ids[1], 500_000).result()
        assert self.pay(1, 0, 200_000) == 0  # wallet 0 goes over its cap: swept to its bank
        assert self.pay(2, 3, 50_000) == 0  # wallet 2 is empty: topped up from its bank
        assert self.lend(1, 100_000, 1_000, 1_000) == 0  # wallet 1 borrows
        assert self.repay(1, 5_000) == 0  # repays a part
        assert self.pay(0, 1, 10_000) == 0  # and a tenth of what it receives

    def pay(self, a: int, b: int, amount: int) -> int:
        _, result = asyncio.run(self.wallets.pay([self.signed(a, self.ids[b], amount)]))
        return result.codes[0]

    def _issue(self, op: str, amount: int) -> None:
        if self.wallets.issue(new_id(), op, amount).result().codes == [0]:
            self.issued += amount

    def step(self, step: tuple) -> None:
        kind = step[0]
        if kind == "issue":
            self._issue(step[1], step[2])
        elif kind == "cb_redeem":
            if self.wallets.redeem_at_central_bank(new_id(), step[1], step[2]).result().codes == [
                0
            ]:
                self.redeemed += step[2]
        elif kind == "top_up" and step[1] != 3:  # wallet 3 has no bank account to top up from
            self.wallets.top_up(OPERATORS[step[1] % 2], new_id(), self.ids[step[1]], step[2])
        elif kind == "redeem":
            wallet = self.wallets.wallet(self.ids[step[1]])
            assert wallet is not None
            if wallet.linked_bank:
                self.wallets.redeem(self.signed(step[1], wallet.float_account, step[2])).result()
        elif kind == "pay":
            _, a, b, amount = step
            if a != b:
                self.pay(a, b, amount)
        elif kind == "lend":
            self.lend(*step[1:])
        elif kind == "repay":
            self.repay(step[1], step[2])

    def repay(self, i: int, amount: int) -> int:
        """A collection under the wallet's mandate, as ``Loans.collect`` makes one."""
        wallet = self.wallets.wallet(self.ids[i])
        assert wallet is not None
        t = Transfer(new_id(), wallet.id, wallet.float_account, amount, CNY, codes.LOAN_REPAYMENT)
        return self.service.submit(OP_CREATE_TRANSFERS, [t], wallet.operator).result().codes[0]

    def lend(self, i: int, principal: int, fee: int, share_bp: int) -> int:
        """A loan under a signed acceptance, as ``ledger.credit.loans`` makes one."""
        op, loan = OPERATORS[i % 2], new_id()
        lender = LenderAccounts.of(op)
        accounts = [
            Account(lender.book, CNY, codes.LOAN_BOOK, 0, "book", op),
            Account(lender.income, CNY, codes.LOAN_INCOME, 0, "income", op),
            Account(
                loan,
                CNY,
                codes.LOAN_RECEIVABLE,
                AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS,
                "loan",
                op,
            ),
        ]
        assert self.service.submit(OP_CREATE_ACCOUNTS, accounts, op).result().codes == [0, 0, 0]
        application = str(uuid.UUID(int=new_id()))
        body = json.dumps({"application_id": application, "amount": principal})
        message = signing.read_message("POST", "/loans", 1, body.encode())
        acceptance = {
            "method": "POST",
            "path": "/loans",
            "timestamp_ms": 1,
            "body": body,
            "signature": base64.b64encode(self.keys[i].sign(message).signature).decode(),
        }
        terms: dict[str, object] = {"application": application, "acceptance": acceptance}
        d = Disbursement(loan, self.ids[i], lender.book, lender.income, principal, fee, share_bp,
                         terms)  # fmt: skip
        code = self.service.submit(OP_DISBURSE_LOANS, [d], op).result().codes[0]
        if code == 0:
            self.loans[loan] = principal + fee
        return code

    def signed(self, payer: int, payee: int, amount: int) -> SignedPayment:
        pid, expires = new_id(), time.time_ns() // 1_000_000 + 60_000
        auth = signing.sign_payment(
            self.keys[payer], 1, pid, self.ids[payer], payee, amount, "CNY", expires
        )
        return SignedPayment(pid, self.ids[payer], payee, amount, expires, 1, auth.signature)

    def check(self) -> None:
        state = self.service.sequencer.engine.state
        circulation = sum(
            a.credits_posted - a.debits_posted
            for a in state.accounts.values()
            if a.code in codes.E_CNY_ACCOUNTS
        )
        assert circulation == self.issued - self.redeemed
        assert state.totals[1] == state.totals[3] and state.totals[0] == state.totals[2]
        for account in state.accounts.values():
            if account.wallet is not None:
                assert account.credits_posted - account.debits_posted >= 0
                loan = account.wallet.loan_account
                if loan:  # a mandate only while something is owed
                    owed = state.accounts[loan].debits_posted - state.accounts[loan].credits_posted
                    assert owed > 0
        for loan, lent in self.loans.items():
            receivable = state.accounts[loan]
            assert receivable.debits_posted == lent, "only the disbursement debits it here"
            assert 0 <= receivable.credits_posted <= lent, "never repaid beyond what it owes"
            if receivable.credits_posted == lent:
                assert all(a.wallet is None or a.wallet.loan_account != loan
                           for a in state.accounts.values())  # fmt: skip


def test_e_cny_is_conserved_through_any_sequence(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    service = LedgerService.open(url, tmp_path / "ledger.key", "test/conservation")
    try:
        pilot = Pilot(service, tmp_path)

        @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(steps)
        def run(sequence: list[tuple]) -> None:
            for step in sequence:
                pilot.step(step)
                pilot.check()

        run()
        report = verify(service.store.engine)
        assert report.ok, report.problem
        assert report.circulation_fen == pilot.issued - pilot.redeemed
        assert report.signatures > 0
        with service.store.engine.connect() as conn:
            from sqlalchemy import text

            bodies = [bytes(r[0]) for r in conn.execute(text("SELECT body FROM journal_entries"))]
        legs = {e.code for b in bodies if isinstance(e := entry.decode(b), entry.TransferEntry)}
        assert {codes.WATERFALL_ECNY, codes.REVERSE_WATERFALL_ECNY} <= legs
        assert {codes.LOAN_DISBURSE, codes.LOAN_REVENUE_SHARE, codes.LOAN_REPAYMENT} <= legs
    finally:
        pilot.wallets.close()
        service.close()
