"""Account and transfer codes of the e-CNY model (the ledger core leaves codes to its users).

Two kinds of money live on one ledger: e-CNY (central-bank money held in operators' floats and
in wallets) and bank money (customers' deposits at an operator). Only issuance and redemption at
the central bank cross between them, so the e-CNY in circulation always equals what the central
bank issued minus what it redeemed; ``ledger verify`` checks exactly that.
"""

from __future__ import annotations

from typing import Final

# accounts
CB_RESERVE_SOURCE: Final = 100  # the central bank's side of operators' reserve deposits
CB_RESERVES: Final = 101  # an operator's reserves at the central bank (may not go negative)
OPERATOR_FLOAT: Final = 200  # e-CNY an operator holds for distribution (may not go negative)
BANK_DEPOSIT: Final = 201  # a customer's bank deposit at an operator (bank money)
BANK_SETTLEMENT: Final = 202  # an operator's own side of its customers' deposits
ORDER_REFUND_ALLOWANCE: Final = 203  # what may still be refunded of a paid order (not negative)
REFUND_ALLOWANCE_SOURCE: Final = 204  # an operator's counterpart of its orders' allowances
LOAN_BOOK: Final = 205  # an operator's loan book: credited by loans out, debited by repayments
LOAN_RECEIVABLE: Final = 206  # one loan: what the borrower owes (credits may not exceed debits)
LOAN_INCOME: Final = 207  # an operator's fees and interest on loans
WALLET_PERSONAL: Final = 300
WALLET_MERCHANT: Final = 301
SUB_WALLET: Final = 302

E_CNY_ACCOUNTS: Final = frozenset({OPERATOR_FLOAT, WALLET_PERSONAL, WALLET_MERCHANT, SUB_WALLET})
WALLET_ACCOUNTS: Final = frozenset({WALLET_PERSONAL, WALLET_MERCHANT, SUB_WALLET})
WALLET_KIND_CODES: Final = {
    "personal": WALLET_PERSONAL,
    "merchant": WALLET_MERCHANT,
    "sub": SUB_WALLET,
}

# transfers
RESERVE_DEPOSIT: Final = 1001  # central bank credits an operator's reserves
ISSUE: Final = 1002  # reserves -> float: e-CNY comes into being
CB_REDEEM: Final = 1003  # float -> reserves: e-CNY goes out of being
CASH_DEPOSIT: Final = 1010  # an operator credits a customer's bank deposit
TOP_UP_BANK: Final = 1011  # deposit -> settlement  } a top-up: bank money for e-CNY
TOP_UP_ECNY: Final = 1012  # float -> wallet        }
REDEEM_ECNY: Final = 1013  # wallet -> float        } a redemption: e-CNY for bank money
REDEEM_BANK: Final = 1014  # settlement -> deposit  }
PAYMENT: Final = 1020  # wallet -> wallet; the only code that counts towards spending limits
WATERFALL_ECNY: Final = 1021  # wallet -> float         } the excess over a balance cap
WATERFALL_BANK: Final = 1022  # settlement -> deposit   } swept to the linked bank account
REVERSE_WATERFALL_BANK: Final = 1023  # deposit -> settlement } a shortfall topped up
REVERSE_WATERFALL_ECNY: Final = 1024  # float -> wallet        } from the linked bank account
SUB_WALLET_FUND: Final = 1030  # parent -> sub-wallet
SUB_WALLET_RETURN: Final = 1031  # sub-wallet -> parent, when it is closed
REFUND: Final = 1040  # merchant wallet -> payer wallet, signed by the merchant
REFUND_ALLOWANCE: Final = 1041  # allowance bookkeeping: funded when paid, drawn by refunds

LOAN_DISBURSE: Final = 1050  # float -> wallet: the loan's e-CNY        } a disbursement,
LOAN_PRINCIPAL: Final = 1051  # receivable -> loan book: what is owed   } one step
LOAN_CHARGE: Final = 1052  # receivable -> income: a fee, or interest falling due
LOAN_REPAYMENT: Final = 1053  # wallet -> float, under the loan's mandate     } a repayment,
LOAN_REPAYMENT_BOOK: Final = 1054  # loan book -> receivable (an engine leg)  } one step
LOAN_REVENUE_SHARE: Final = 1055  # wallet -> float: a share of an incoming payment (a leg)

SWEEPING: Final = frozenset({PAYMENT, REFUND})
"""Credits that may take a wallet over its cap, the excess going to its linked bank account;
other credits (top-ups, funding) over the cap are refused."""

CROSSING: Final = frozenset({ISSUE, CB_REDEEM})
"""The only transfers allowed between an e-CNY account and any other account."""
ENGINE_LEGS: Final = frozenset(
    {WATERFALL_ECNY, WATERFALL_BANK, REVERSE_WATERFALL_BANK, REVERSE_WATERFALL_ECNY}
)
"""Transfers the writer makes itself, atomically with the payment that needs them: they debit a
wallet without its signature, under rules the wallet's owner chose."""
