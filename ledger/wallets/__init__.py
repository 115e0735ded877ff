"""The e-CNY model on the ledger core: two-tier issuance, KYC-tiered wallets, signed payments."""
