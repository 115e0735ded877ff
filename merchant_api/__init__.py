"""What a merchant integrates: payment orders with QR codes, refunds, webhooks, statements.

Not built yet: it arrives with the merchant issue (#4), on top of the ledger core."""
