"""The checkout profile: shoppers only, paying at tills (QR orders the till prints, friends),
checking balances and receipts. The payment path under the most load, without merchants'
back-office traffic.

    locust -f loadtests/checkout.py --host http://127.0.0.1:8000 --headless --shape double11 \\
        --cb-key "$LEDGER_CB_KEY" --ledger-database sqlite:///ledger.db --report-dir reports/d11
"""

from __future__ import annotations

from loadtests.common import PilotShape
from loadtests.pilot import ShopperUser

__all__ = ["PilotShape", "ShopperUser"]
