"""Settings, in one place. Read from the environment; the CLI's flags override them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from ledger.store.database import database_url, is_sqlite, sqlite_path

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


def default_key_file(url: str) -> Path:
    """The signing key lives beside a SQLite database (ledger.db -> ledger.db.key); for
    PostgreSQL, in the working directory, named after the database."""
    if is_sqlite(url):
        path = sqlite_path(url)
        return path.with_name(path.name + ".key")
    return Path(f"{make_url(url).database}.ledger.key")


def kyc_key_file_beside(key_file: Path) -> Path:
    """The operators' KYC encryption key lives beside the ledger's signing key."""
    return key_file.with_name(key_file.name.removesuffix(".key") + ".kyc-key")


@dataclass(frozen=True)
class Settings:
    database_url: str
    key_file: Path
    origin: str | None
    kyc_key_file: Path
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT

    @property
    def merchant_key_file(self) -> Path:
        """The merchant API's key for merchants' secrets, beside the ledger's signing key."""
        return self.key_file.with_name(self.key_file.name.removesuffix(".key") + ".merchant-key")

    @classmethod
    def from_env(
        cls,
        database: str | None = None,
        key_file: Path | None = None,
        host: str | None = None,
        port: int | None = None,
    ) -> Settings:
        url = database_url(database)
        key = key_file or (Path(p) if (p := os.environ.get("LEDGER_KEY_FILE")) else None)
        kyc = os.environ.get("LEDGER_KYC_KEY_FILE")
        key = key or default_key_file(url)
        return cls(
            database_url=url,
            key_file=key,
            origin=os.environ.get("LEDGER_ORIGIN"),
            kyc_key_file=Path(kyc) if kyc else kyc_key_file_beside(key),
            host=host or os.environ.get("LEDGER_HOST", DEFAULT_HOST),
            port=port or int(os.environ.get("LEDGER_PORT", DEFAULT_PORT)),
        )
