"""API keys: random bearer tokens, stored only as their sha256; created and revoked by an admin."""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid

from sqlalchemy import select

from core.errors import UserInputError
from service.db import Database
from service.models import ApiKey

TOKEN_PREFIX = "nsk_"


def hash_token(token: str) -> str:
    """sha256 hex of a token. Tokens carry 256 random bits, so a fast hash is enough (no dictionary)."""
    return hashlib.sha256(token.encode()).hexdigest()


def create_key(db: Database, name: str) -> tuple[ApiKey, str]:
    """A new key named `name`; returns (row, token). The token is shown once and never stored."""
    name = name.strip()
    if not name or len(name) > 200:
        raise UserInputError("bad_key_name", f"key name {name!r} must be 1-200 characters")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with db.session() as s:
        if s.scalar(select(ApiKey).where(ApiKey.name == name)) is not None:
            raise UserInputError("key_exists", f"a key named {name!r} already exists",
                                 "pick another name, or revoke the old key first")
        row = ApiKey(id=str(uuid.uuid4()), name=name, key_hash=hash_token(token), prefix=token[:10],
                     created_at=time.time())
        s.add(row)
    return row, token


def revoke_key(db: Database, name_or_id: str) -> ApiKey:
    with db.session() as s:
        row = s.scalar(select(ApiKey).where((ApiKey.name == name_or_id) | (ApiKey.id == name_or_id)))
        if row is None:
            raise UserInputError("no_such_key", f"no key named {name_or_id!r}", "see `nerfserve keys list`")
        if row.revoked_at is None:
            row.revoked_at = time.time()
        return row


def list_keys(db: Database) -> list[ApiKey]:
    with db.session() as s:
        return list(s.scalars(select(ApiKey).order_by(ApiKey.created_at)))


def authenticate(db: Database, token: str) -> ApiKey | None:
    """The live key for a bearer token, or None."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    with db.session() as s:
        row = s.scalar(select(ApiKey).where(ApiKey.key_hash == hash_token(token)))
        if row is None or row.revoked_at is not None:
            return None
        return row
