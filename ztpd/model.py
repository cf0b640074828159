"""The typed records that move between the store and everything else."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Node:
    id: int
    state: str
    macs: tuple[str, ...] = ()
    hostname: str | None = None
    uuid: str | None = None
    serial: str | None = None
    profile: str | None = None
    ip: str | None = None
    arch: str | None = None
    failed_from: str | None = None
    reason: str | None = None
    deadline: float | None = None
    facts: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0
    updated_at: float = 0.0
    state_since: float = 0.0

    @classmethod
    def from_row(cls, row: dict[str, Any], macs: tuple[str, ...]) -> Node:
        return cls(
            id=row["id"],
            state=row["state"],
            macs=macs,
            hostname=row["hostname"],
            uuid=row["uuid"],
            serial=row["serial"],
            profile=row["profile"],
            ip=row["ip"],
            arch=row["arch"],
            failed_from=row["failed_from"],
            reason=row["reason"],
            deadline=row["deadline"],
            facts=json.loads(row["facts"] or "{}"),
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            state_since=row["state_since"],
        )

    @property
    def name(self) -> str:
        """What a person calls the node: its hostname, else its first MAC, else its id."""
        return self.hostname or (self.macs[0] if self.macs else f"node-{self.id}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "state": self.state,
            "macs": list(self.macs),
            "hostname": self.hostname,
            "uuid": self.uuid,
            "serial": self.serial,
            "profile": self.profile,
            "ip": self.ip,
            "arch": self.arch,
            "failed_from": self.failed_from,
            "reason": self.reason,
            "deadline": self.deadline,
            "facts": self.facts,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "state_since": self.state_since,
        }


@dataclass(frozen=True)
class Event:
    id: int
    ts: float
    node_id: int | None
    kind: str
    from_state: str | None
    to_state: str | None
    cause: str
    detail: dict[str, Any]

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Event:
        return cls(
            id=row["id"],
            ts=row["ts"],
            node_id=row["node_id"],
            kind=row["kind"],
            from_state=row["from_state"],
            to_state=row["to_state"],
            cause=row["cause"],
            detail=json.loads(row["detail"] or "{}"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "ts": self.ts,
            "node_id": self.node_id,
            "kind": self.kind,
            "from_state": self.from_state,
            "to_state": self.to_state,
            "cause": self.cause,
            "detail": self.detail,
        }
