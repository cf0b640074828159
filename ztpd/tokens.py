"""Per-node, per-purpose, expiring tokens for the node-facing endpoints (agent, install, callbacks).

Only a SHA-256 digest is stored: a copy of the database does not hand out working tokens. A token
is returned once, to be put into a boot script or install config, and never logged.
"""

from __future__ import annotations

import hashlib
import secrets

from ztpd.errors import Forbidden
from ztpd.store import Store


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Tokens:
    def __init__(self, store: Store) -> None:
        self.store = store

    def issue(self, node_id: int, purpose: str, ttl: float) -> str:
        token = secrets.token_urlsafe(32)
        now = self.store.clock()
        with self.store.transaction() as conn:
            conn.execute(
                "INSERT INTO tokens (digest, node_id, purpose, expires, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (_digest(token), node_id, purpose, now + ttl, now),
            )
        return token

    def verify(
        self, token: str | None, purpose: str, node_id: int | None = None, renew: float = 0
    ) -> int:
        """The node the token belongs to; Forbidden if it is missing, unknown, for another
        purpose or node, or expired (the message never echoes the token).

        ``renew`` > 0: a valid token then lives at least that many seconds from now, so a
        client that keeps using it (an installer reporting progress) keeps it alive while one
        that went silent still loses it.
        """
        if not token:
            raise Forbidden("missing token")
        digest = _digest(token)
        row = self.store.query_one(
            "SELECT node_id, purpose, expires FROM tokens WHERE digest = ?", (digest,)
        )
        if row is None or row["purpose"] != purpose:
            raise Forbidden(f"invalid token for {purpose}")
        if node_id is not None and row["node_id"] != node_id:
            raise Forbidden(f"token belongs to another node ({purpose})")
        now = self.store.clock()
        if row["expires"] <= now:
            raise Forbidden(f"expired token for {purpose}")
        if renew > 0 and row["expires"] < now + renew:
            with self.store.transaction() as conn:
                conn.execute(
                    "UPDATE tokens SET expires = MAX(expires, ?) WHERE digest = ?",
                    (now + renew, digest),
                )
        return int(row["node_id"])

    def revoke(self, node_id: int, purpose: str) -> None:
        with self.store.transaction() as conn:
            conn.execute("DELETE FROM tokens WHERE node_id = ? AND purpose = ?", (node_id, purpose))
