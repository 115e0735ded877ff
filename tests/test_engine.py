"""The pure engine: every result code, replays, linked chains, two-phase transfers, expiry."""

from __future__ import annotations

from ledger.domain import (
    AMOUNT_MAX,
    BALANCE_MAX,
    ID_MAX,
    Account,
    AccountFlags,
    CloseAccount,
    PendingState,
    Result,
    Transfer,
    TransferFlags,
)
from ledger.engine import (
    OP_CLOSE_ACCOUNTS,
    OP_CREATE_ACCOUNTS,
    OP_CREATE_TRANSFERS,
    Engine,
    OpResult,
    Outcome,
    State,
)

CNY = 156
SECOND_NS = 1_000_000_000
DR_LIMIT = AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
CR_LIMIT = AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS
LINKED, PENDING = TransferFlags.LINKED, TransferFlags.PENDING
POST, VOID = TransferFlags.POST_PENDING, TransferFlags.VOID_PENDING


class Ledger:
    """An engine with a clock, for terse tests."""

    def __init__(self) -> None:
        self.engine = Engine(State())
        self.now = 1_000 * SECOND_NS

    def run(self, op: int, items: list, advance_ns: int = SECOND_NS) -> Outcome:
        self.now = max(self.now + advance_ns, self.engine.state.last_timestamp + 1)
        return self.engine.execute([(op, items, None)], self.now)

    def accounts(self, *accounts: Account) -> OpResult:
        return self.run(OP_CREATE_ACCOUNTS, list(accounts)).results[0]

    def transfers(self, *transfers: Transfer, advance_ns: int = SECOND_NS) -> list[int]:
        return self.run(OP_CREATE_TRANSFERS, list(transfers), advance_ns).results[0].codes

    def balances(self, account_id: int) -> tuple[int, int, int, int]:
        return self.engine.state.accounts[account_id].balances()


def tr(id: int, dr: int = 1, cr: int = 2, amount: int = 100, **kw: object) -> Transfer:
    kw.setdefault("code", 1)
    kw.setdefault("ledger", CNY)
    return Transfer(id, dr, cr, amount, **kw)  # type: ignore[arg-type]


def post(id: int, pending_id: int, amount: int = 0, **kw: object) -> Transfer:
    """Post a pending transfer; accounts, ledger and code left zero inherit from it."""
    return Transfer(id, 0, 0, amount, 0, 0, POST, pending_id, **kw)  # type: ignore[arg-type]


def void(id: int, pending_id: int, amount: int = 0, **kw: object) -> Transfer:
    return Transfer(id, 0, 0, amount, 0, 0, VOID, pending_id, **kw)  # type: ignore[arg-type]


def funded() -> Ledger:
    """Account 1 is an issuer (may go negative); 2 and 3 are wallets that may not overdraw."""
    ledger = Ledger()
    codes = ledger.accounts(
        Account(1, CNY, 1),
        Account(2, CNY, 2, DR_LIMIT),
        Account(3, CNY, 2, DR_LIMIT),
        Account(4, CNY, 3, CR_LIMIT),
    ).codes
    assert codes == [0, 0, 0, 0]
    assert ledger.transfers(tr(100, 1, 2, 10_000)) == [Result.OK]
    return ledger


def test_plain_transfer_moves_posted_balances() -> None:
    ledger = funded()
    assert ledger.transfers(tr(101, 2, 3, 2_500)) == [Result.OK]
    assert ledger.balances(2) == (0, 2_500, 0, 10_000)
    assert ledger.balances(3) == (0, 0, 0, 2_500)
    assert ledger.engine.state.totals == [0, 12_500, 0, 12_500]


def test_stateless_validation_codes() -> None:
    ledger = funded()
    cases = [
        (tr(0), Result.ID_MUST_NOT_BE_ZERO),
        (tr(ID_MAX), Result.ID_MUST_NOT_BE_INT_MAX),
        (tr(201, flags=PENDING | POST, pending_id=100), Result.FLAGS_ARE_MUTUALLY_EXCLUSIVE),
        (tr(202, flags=1 << 9), Result.FLAGS_ARE_MUTUALLY_EXCLUSIVE),
        (tr(203, 0, 2), Result.DEBIT_ACCOUNT_ID_MUST_NOT_BE_ZERO),
        (tr(204, 1, 0), Result.CREDIT_ACCOUNT_ID_MUST_NOT_BE_ZERO),
        (tr(205, 2, 2), Result.ACCOUNTS_MUST_BE_DIFFERENT),
        (tr(206, pending_id=100), Result.PENDING_ID_MUST_BE_ZERO),
        (tr(207, flags=POST), Result.PENDING_ID_MUST_NOT_BE_ZERO),
        (tr(208, flags=POST, pending_id=208), Result.PENDING_ID_MUST_BE_DIFFERENT),
        (tr(209, timeout_s=5), Result.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER),
        (tr(210, ledger=0), Result.LEDGER_MUST_NOT_BE_ZERO),
        (tr(211, code=0), Result.CODE_MUST_NOT_BE_ZERO),
        (tr(212, amount=0), Result.AMOUNT_MUST_NOT_BE_ZERO),
        (tr(213, amount=AMOUNT_MAX + 1), Result.AMOUNT_EXCEEDS_MAX),
        (tr(214, metadata=b"x" * 600), Result.METADATA_EXCEEDS_MAX),
    ]
    for transfer, code in cases:
        assert ledger.transfers(transfer) == [code], transfer
    assert ledger.balances(1) == (0, 10_000, 0, 0), "no rejected transfer moved money"


def test_state_dependent_codes() -> None:
    ledger = funded()
    assert ledger.transfers(tr(301, 9, 2)) == [Result.DEBIT_ACCOUNT_NOT_FOUND]
    assert ledger.transfers(tr(302, 1, 9)) == [Result.CREDIT_ACCOUNT_NOT_FOUND]
    assert ledger.transfers(tr(303, ledger=840)) == [
        Result.TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS
    ]
    assert ledger.transfers(tr(304, 2, 3, 10_001)) == [Result.EXCEEDS_CREDITS]
    assert ledger.transfers(tr(305, 1, 4, 1)) == [Result.EXCEEDS_DEBITS]
    assert ledger.transfers(tr(306, 1, 3, BALANCE_MAX)) == [Result.AMOUNT_EXCEEDS_MAX]


def test_exceeds_credits_boundary_exactly() -> None:
    ledger = funded()
    assert ledger.transfers(tr(401, 2, 3, 10_001)) == [Result.EXCEEDS_CREDITS]
    assert ledger.transfers(tr(402, 2, 3, 10_000)) == [Result.OK]
    assert ledger.transfers(tr(403, 2, 3, 1)) == [Result.EXCEEDS_CREDITS]
    assert ledger.balances(2) == (0, 10_000, 0, 10_000)


def test_overflow_is_a_result_not_an_exception() -> None:
    ledger = Ledger()
    ledger.accounts(Account(1, CNY, 1), Account(2, CNY, 1))
    half = AMOUNT_MAX
    n = 0
    while ledger.balances(1)[1] + half <= BALANCE_MAX:
        n += 1
        assert ledger.transfers(tr(1000 + n, 1, 2, half), advance_ns=1) == [Result.OK]
    assert ledger.transfers(tr(999, 1, 2, half)) == [Result.OVERFLOWS_DEBITS]


def test_identical_replay_returns_original_result_and_seq() -> None:
    ledger = funded()
    first = ledger.run(OP_CREATE_TRANSFERS, [tr(501, 2, 3, 700)])
    again = tr(501, 2, 3, 700)
    second = ledger.run(OP_CREATE_TRANSFERS, [again])
    assert first.results[0].codes == [Result.OK] and second.results[0].codes == [Result.OK]
    assert second.results[0].replayed == {0}
    assert second.entries == [], "a replay adds nothing to the journal"
    assert again.seq == first.entries[0][1].seq  # type: ignore[union-attr]
    assert ledger.balances(3) == (0, 0, 0, 700), "applied exactly once"


def test_replay_with_different_fields_names_the_field() -> None:
    ledger = funded()
    original = dict(dr=2, cr=3, amount=700)
    assert ledger.transfers(tr(601, **original)) == [Result.OK]  # type: ignore[arg-type]
    assert ledger.transfers(tr(601, 2, 3, 701)) == [Result.EXISTS_WITH_DIFFERENT_AMOUNT]
    assert ledger.transfers(tr(601, 1, 3, 700)) == [Result.EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID]
    assert ledger.transfers(tr(601, 2, 1, 700)) == [Result.EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID]
    assert ledger.transfers(tr(601, 2, 3, 700, code=9)) == [Result.EXISTS_WITH_DIFFERENT_CODE]
    assert ledger.transfers(tr(601, 2, 3, 700, metadata=b'{"a":"b"}')) == [
        Result.EXISTS_WITH_DIFFERENT_METADATA
    ]
    assert ledger.transfers(tr(601, 2, 3, 700, flags=PENDING)) == [
        Result.EXISTS_WITH_DIFFERENT_FLAGS
    ]
    assert ledger.balances(3) == (0, 0, 0, 700)


def test_state_dependent_rejection_is_recorded_so_replay_returns_it() -> None:
    ledger = funded()
    assert ledger.transfers(tr(701, 3, 2, 50)) == [Result.EXCEEDS_CREDITS]
    assert ledger.transfers(tr(702, 1, 3, 50)) == [Result.OK]  # now 3 could pay
    out = ledger.run(OP_CREATE_TRANSFERS, [tr(701, 3, 2, 50)]).results[0]
    assert out.codes == [Result.EXCEEDS_CREDITS] and out.replayed == {0}
    assert ledger.balances(3) == (0, 0, 0, 50), "the retried id did not execute"


def test_stateless_rejection_does_not_consume_the_id() -> None:
    ledger = funded()
    assert ledger.transfers(tr(801, 2, 2, 50)) == [Result.ACCOUNTS_MUST_BE_DIFFERENT]
    assert ledger.transfers(tr(801, 2, 3, 50)) == [Result.OK]


def test_duplicate_id_within_one_batch_is_applied_once() -> None:
    ledger = funded()
    out = ledger.run(OP_CREATE_TRANSFERS, [tr(901, 2, 3, 10), tr(901, 2, 3, 10)]).results[0]
    assert out.codes == [Result.OK, Result.OK] and out.replayed == {1}
    assert ledger.balances(3) == (0, 0, 0, 10)


def test_linked_chain_succeeds_together() -> None:
    ledger = funded()
    codes = ledger.transfers(
        tr(1001, 2, 3, 100, flags=LINKED), tr(1002, 3, 2, 40, flags=LINKED), tr(1003, 2, 3, 1)
    )
    assert codes == [Result.OK] * 3
    assert ledger.balances(3) == (0, 40, 0, 101)


def test_linked_chain_fails_together_and_rolls_back() -> None:
    ledger = funded()
    before = (ledger.balances(2), ledger.balances(3))
    size_before = ledger.engine.state.next_seq
    out = ledger.run(
        OP_CREATE_TRANSFERS,
        [
            tr(1101, 2, 3, 100, flags=LINKED),
            tr(1102, 3, 2, 500, flags=LINKED),  # 3 has only 100: fails
            tr(1103, 2, 3, 1),
            tr(1104, 2, 3, 5),  # not part of the chain
        ],
    )
    assert out.results[0].codes == [
        Result.LINKED_EVENT_FAILED,
        Result.EXCEEDS_CREDITS,
        Result.LINKED_EVENT_FAILED,
        Result.OK,
    ]
    assert ledger.balances(2)[1] == before[0][1] + 5
    assert ledger.balances(3) == (0, 0, 0, 5)
    assert ledger.engine.state.next_seq == size_before + 1, "only 1104 reached the journal"
    assert [e[1].id for e in out.entries] == [1104]  # type: ignore[union-attr]
    # the failed chain's ids are spent: replaying the chain returns the same results
    replay = ledger.transfers(
        tr(1101, 2, 3, 100, flags=LINKED), tr(1102, 3, 2, 500, flags=LINKED), tr(1103, 2, 3, 1)
    )
    assert replay == [
        Result.LINKED_EVENT_FAILED,
        Result.EXCEEDS_CREDITS,
        Result.LINKED_EVENT_FAILED,
    ]


def test_linked_chain_left_open_at_the_end_of_a_batch() -> None:
    ledger = funded()
    codes = ledger.transfers(tr(1201, 2, 3, 1, flags=LINKED), tr(1202, 2, 3, 1, flags=LINKED))
    assert codes == [Result.LINKED_EVENT_FAILED, Result.LINKED_EVENT_CHAIN_OPEN]
    assert ledger.balances(3) == (0, 0, 0, 0)


def test_pending_then_full_post() -> None:
    ledger = funded()
    assert ledger.transfers(tr(1301, 2, 3, 600, flags=PENDING)) == [Result.OK]
    assert ledger.balances(2) == (600, 0, 0, 10_000)
    assert ledger.transfers(tr(1301 + 1, 2, 3, 9_500)) == [Result.EXCEEDS_CREDITS], "held funds"
    assert ledger.transfers(post(1303, 1301)) == [Result.OK]
    assert ledger.balances(2) == (0, 600, 0, 10_000)
    assert ledger.balances(3) == (0, 0, 0, 600)
    assert ledger.engine.state.find_transfer(1301).state == PendingState.POSTED  # type: ignore[union-attr]
    assert ledger.transfers(void(1304, 1301)) == [Result.PENDING_TRANSFER_ALREADY_POSTED]


def test_partial_post_releases_the_rest() -> None:
    ledger = funded()
    ledger.transfers(tr(1401, 2, 3, 600, flags=PENDING))
    assert ledger.transfers(tr(1402, 2, 3, 601, flags=POST, pending_id=1401)) == [
        Result.EXCEEDS_PENDING_TRANSFER_AMOUNT
    ]
    assert ledger.transfers(tr(1403, 2, 3, 250, flags=POST, pending_id=1401)) == [Result.OK]
    assert ledger.balances(2) == (0, 250, 0, 10_000)
    assert ledger.balances(3) == (0, 0, 0, 250)


def test_void_and_its_checks() -> None:
    ledger = funded()
    ledger.transfers(tr(1501, 2, 3, 600, flags=PENDING, code=7))
    assert ledger.transfers(void(1502, 1501, 599)) == [Result.PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT]
    assert ledger.transfers(tr(1503, 1, 3, 0, flags=VOID, pending_id=1501)) == [
        Result.PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID
    ]
    assert ledger.transfers(tr(1504, 2, 1, 0, flags=VOID, pending_id=1501)) == [
        Result.PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID
    ]
    assert ledger.transfers(Transfer(1505, 0, 0, 0, 0, 8, VOID, 1501)) == [
        Result.PENDING_TRANSFER_HAS_DIFFERENT_CODE
    ]
    assert ledger.transfers(void(1506, 1501)) == [Result.OK]
    assert ledger.balances(2) == (0, 0, 0, 10_000)
    assert ledger.transfers(post(1507, 1501)) == [Result.PENDING_TRANSFER_ALREADY_VOIDED]


def test_post_of_missing_or_non_pending_transfer() -> None:
    ledger = funded()
    assert ledger.transfers(post(1601, 999_999)) == [Result.PENDING_TRANSFER_NOT_FOUND]
    assert ledger.transfers(post(1602, 100)) == [Result.PENDING_TRANSFER_NOT_PENDING]


def test_pending_expires_at_its_timeout() -> None:
    ledger = funded()
    ledger.transfers(tr(1701, 2, 3, 600, flags=PENDING, timeout_s=30))
    out = ledger.run(OP_CREATE_TRANSFERS, [tr(1702, 2, 3, 1)], advance_ns=10 * SECOND_NS)
    assert out.entries[0][0] == 2 and ledger.balances(2)[0] == 600, "not yet expired"
    out = ledger.run(OP_CREATE_TRANSFERS, [tr(1703, 2, 3, 1)], advance_ns=25 * SECOND_NS)
    assert [kind for kind, _, _ in out.entries] == [3, 2], "expiry entry first, then the transfer"
    assert ledger.balances(2) == (0, 2, 0, 10_000)
    assert ledger.transfers(post(1704, 1701)) == [Result.PENDING_TRANSFER_EXPIRED]


def test_post_racing_an_unprocessed_expiry_expires_it_first() -> None:
    """The timeout passed between batches: the post in the next batch must not succeed."""
    ledger = funded()
    ledger.transfers(tr(1801, 2, 3, 600, flags=PENDING, timeout_s=1))
    engine = ledger.engine
    ts = engine.state.expiries[0][0] - 1  # batch starts just before the timeout...
    engine.state.last_timestamp = ts - 1
    out = engine.execute(
        [(OP_CREATE_TRANSFERS, [tr(1802, 2, 3, 1), post(1803, 1801)], None)], ts
    )  # ...so the post's own timestamp is past it
    assert out.results[0].codes == [Result.OK, Result.PENDING_TRANSFER_EXPIRED]
    assert [kind for kind, _, _ in out.entries] == [2, 3]
    assert ledger.balances(2) == (0, 1, 0, 10_000)


def test_accounts_create_replay_and_conflicts() -> None:
    ledger = Ledger()
    assert ledger.accounts(Account(10, CNY, 1, owner="w1")).codes == [Result.OK]
    again = ledger.accounts(Account(10, CNY, 1, owner="w1"))
    assert again.codes == [Result.OK] and again.replayed == {0}
    assert ledger.accounts(Account(10, CNY, 2, owner="w1")).codes == [
        Result.EXISTS_WITH_DIFFERENT_CODE
    ]
    assert ledger.accounts(Account(10, CNY, 1, owner="w2")).codes == [
        Result.EXISTS_WITH_DIFFERENT_OWNER
    ]
    assert ledger.accounts(Account(11, CNY, 1, DR_LIMIT | CR_LIMIT)).codes == [
        Result.FLAGS_ARE_MUTUALLY_EXCLUSIVE
    ]
    assert ledger.accounts(Account(12, 840, 1)).codes == [Result.LEDGER_NOT_SUPPORTED]
    assert ledger.accounts(Account(13, CNY, 0)).codes == [Result.CODE_MUST_NOT_BE_ZERO]
    assert ledger.accounts(Account(0, CNY, 1)).codes == [Result.ID_MUST_NOT_BE_ZERO]
    assert ledger.accounts(Account(14, CNY, 1, owner="x" * 65)).codes == [Result.OWNER_EXCEEDS_MAX]


def test_closed_accounts_refuse_transfers() -> None:
    ledger = funded()
    ledger.transfers(tr(1901, 2, 3, 5, flags=PENDING))
    close = ledger.run(OP_CLOSE_ACCOUNTS, [CloseAccount(3)]).results[0]
    assert close.codes == [Result.ACCOUNT_HAS_PENDING_TRANSFERS]
    ledger.transfers(void(1902, 1901))
    assert ledger.run(OP_CLOSE_ACCOUNTS, [CloseAccount(3)]).results[0].codes == [Result.OK]
    again = ledger.run(OP_CLOSE_ACCOUNTS, [CloseAccount(3)]).results[0]
    assert again.codes == [Result.OK] and again.replayed == {0}
    assert ledger.transfers(tr(1903, 2, 3, 1)) == [Result.CREDIT_ACCOUNT_ALREADY_CLOSED]
    assert ledger.transfers(tr(1904, 3, 2, 1)) == [Result.DEBIT_ACCOUNT_ALREADY_CLOSED]
    assert ledger.run(OP_CLOSE_ACCOUNTS, [CloseAccount(77)]).results[0].codes == [
        Result.ACCOUNT_NOT_FOUND
    ]


def test_an_operator_may_only_debit_accounts_it_operates() -> None:
    ledger = Ledger()
    ledger.accounts(
        Account(1, CNY, 1, operator="op_a"),
        Account(2, CNY, 1, operator="op_a"),
        Account(3, CNY, 1, operator="op_b"),
    )
    engine = ledger.engine

    def as_operator(operator: str | None, *transfers: Transfer) -> list[int]:
        ledger.now = engine.state.last_timestamp + 1
        out = engine.execute([(OP_CREATE_TRANSFERS, list(transfers), operator)], ledger.now)
        return out.results[0].codes

    assert as_operator("op_a", tr(1, 1, 3, 5), tr(2, 3, 1, 5)) == [
        Result.OK,
        Result.DEBIT_ACCOUNT_NOT_PERMITTED,
    ]
    assert as_operator("op_b", tr(3, 3, 1, 5, flags=PENDING)) == [Result.OK]
    assert as_operator("op_a", void(4, 3), post(5, 3)) == [Result.DEBIT_ACCOUNT_NOT_PERMITTED] * 2
    assert as_operator("op_b", post(6, 3)) == [Result.OK]
    assert as_operator(None, tr(7, 3, 2, 1)) == [Result.OK], "the central bank may debit any"
    # not recorded: the id stays free for its rightful operator
    assert as_operator("op_a", tr(8, 3, 1, 1)) == [Result.DEBIT_ACCOUNT_NOT_PERMITTED]
    assert as_operator("op_b", tr(8, 3, 1, 1)) == [Result.OK]
    # and a replay of B's transfer by A reveals nothing about its outcome
    assert as_operator("op_a", tr(8, 3, 1, 1)) == [Result.DEBIT_ACCOUNT_NOT_PERMITTED]


def test_timestamps_strictly_increase_and_expiries_come_first() -> None:
    ledger = funded()
    ledger.transfers(tr(2001, 2, 3, 1, flags=PENDING, timeout_s=1))
    out = ledger.run(OP_CREATE_TRANSFERS, [tr(2002, 2, 3, 1), tr(2003, 2, 3, 1)])
    stamps = []
    for kind, obj, _captured in out.entries:
        stamps.append(obj[1] if kind == 3 else obj.timestamp)  # type: ignore[index,union-attr]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    assert out.last_timestamp >= stamps[-1]


def test_tombstones_cancel_an_unused_id_for_good() -> None:
    from ledger.domain import CancelTransferId
    from ledger.engine import OP_CANCEL_IDS

    ledger = funded()
    out = ledger.run(OP_CANCEL_IDS, [CancelTransferId(2101, "canceled")]).results[0]
    assert out.codes == [Result.OK] and not out.replayed
    again = ledger.run(OP_CANCEL_IDS, [CancelTransferId(2101, "canceled")]).results[0]
    assert again.codes == [Result.OK] and again.replayed == {0}
    assert ledger.transfers(tr(2101, 2, 3, 10)) == [Result.TRANSFER_ID_CANCELED]
    assert ledger.balances(3) == (0, 0, 0, 0), "nothing may use a cancelled id"
    assert ledger.transfers(tr(2102, 2, 3, 10)) == [Result.OK]
    used = ledger.run(OP_CANCEL_IDS, [CancelTransferId(2102, "canceled")]).results[0]
    assert used.codes == [Result.TRANSFER_ID_USED], "a paid id cannot be cancelled"


def test_an_attempt_that_fails_leaves_its_id_free() -> None:
    ledger = funded()
    attempt = TransferFlags.ATTEMPT
    assert ledger.transfers(tr(2201, 3, 2, 50, flags=attempt)) == [Result.EXCEEDS_CREDITS]
    assert ledger.transfers(tr(2201, 2, 3, 50, flags=attempt)) == [Result.OK], "someone else"
    assert ledger.transfers(tr(2201, 3, 2, 50, flags=attempt)) == [
        Result.EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID
    ], "but only once"
    assert ledger.balances(3) == (0, 0, 0, 50)


def test_a_payment_code_pays_once_and_no_more_than_its_maximum() -> None:
    from nacl.signing import SigningKey

    from ledger import signing
    from ledger.domain import LimitSet, Wallet

    ledger = funded()
    key = SigningKey.generate()
    payer = ledger.engine.state.accounts[2]
    payer.wallet = Wallet(2, "", "personal", 1, bytes(key.verify_key), 1, 1)
    ledger.engine.state.limits = {1: LimitSet(0, 0, 0, 0)}
    code = signing.sign_payment_code(key, 1, 9_001, 2, 500, "CNY", 10**13)
    auth = code.authorization()
    assert ledger.transfers(tr(2301, 2, 3, 501, authorization=auth)) == [
        Result.EXCEEDS_PAYMENT_CODE_AMOUNT
    ]
    assert ledger.transfers(tr(2302, 2, 3, 500, authorization=auth)) == [Result.OK]
    assert ledger.transfers(tr(2303, 2, 3, 100, authorization=auth)) == [Result.PAYMENT_CODE_USED]
    assert signing.PaymentCode.decode(code.encode()) == code
    assert ledger.balances(3) == (0, 0, 0, 500)
