"""Numbered schema migrations, applied in order at start-up (``PRAGMA user_version``: last one).

Never edit a migration that has shipped: add the next one. Each runs in its own transaction.
"""

from __future__ import annotations

MIGRATIONS: list[str] = [
    # 1: the appliance core.
    """
    CREATE TABLE nodes (
        id            INTEGER PRIMARY KEY,
        state         TEXT NOT NULL,
        hostname      TEXT,
        uuid          TEXT UNIQUE,
        serial        TEXT,
        profile       TEXT,
        ip            TEXT,
        arch          TEXT,
        failed_from   TEXT,           -- the state a failed node failed in (retry re-enters it)
        reason        TEXT,           -- why it is where it is (failures, holds)
        deadline      REAL,           -- when an in-progress state times out (unix time)
        merged_into   INTEGER REFERENCES nodes(id),
        facts         TEXT NOT NULL DEFAULT '{}',   -- JSON: DHCP/boot facts (vendor class ...)
        created_at    REAL NOT NULL,
        updated_at    REAL NOT NULL,
        state_since   REAL NOT NULL
    );
    CREATE INDEX nodes_state ON nodes(state);
    CREATE INDEX nodes_serial ON nodes(serial);
    CREATE INDEX nodes_deadline ON nodes(deadline) WHERE deadline IS NOT NULL;

    CREATE TABLE node_macs (
        mac         TEXT PRIMARY KEY,   -- lower-case, colon separated
        node_id     INTEGER NOT NULL REFERENCES nodes(id),
        first_seen  REAL NOT NULL,
        last_seen   REAL NOT NULL
    );
    CREATE INDEX node_macs_node ON node_macs(node_id);

    CREATE TABLE events (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        ts          REAL NOT NULL,
        node_id     INTEGER REFERENCES nodes(id),
        kind        TEXT NOT NULL,      -- transition, identity, boot, dhcp, ...
        from_state  TEXT,
        to_state    TEXT,
        cause       TEXT NOT NULL,
        detail      TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX events_node ON events(node_id, id);
    CREATE TRIGGER events_no_update BEFORE UPDATE ON events
        BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
    CREATE TRIGGER events_no_delete BEFORE DELETE ON events
        BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;

    CREATE TABLE leases (
        ip          TEXT PRIMARY KEY,
        mac         TEXT NOT NULL,
        client_id   TEXT,
        subnet      TEXT NOT NULL,
        state       TEXT NOT NULL,      -- offered, bound, declined, released, expired
        expires     REAL NOT NULL,
        hostname    TEXT,
        node_id     INTEGER REFERENCES nodes(id),
        updated_at  REAL NOT NULL
    );
    CREATE INDEX leases_mac ON leases(mac);

    CREATE TABLE inventories (
        id          INTEGER PRIMARY KEY,
        node_id     INTEGER NOT NULL REFERENCES nodes(id),
        version     INTEGER NOT NULL,
        ts          REAL NOT NULL,
        source      TEXT NOT NULL,      -- agent, ipmi, redfish
        data        TEXT NOT NULL,
        UNIQUE (node_id, version)
    );

    CREATE TABLE tokens (
        digest      TEXT PRIMARY KEY,   -- sha256 of the token; the token itself is never stored
        node_id     INTEGER NOT NULL REFERENCES nodes(id),
        purpose     TEXT NOT NULL,
        expires     REAL NOT NULL,
        created_at  REAL NOT NULL
    );
    CREATE INDEX tokens_node ON tokens(node_id, purpose);

    CREATE TABLE runs (
        id          INTEGER PRIMARY KEY,
        node_id     INTEGER NOT NULL REFERENCES nodes(id),
        kind        TEXT NOT NULL,      -- image-write, installer, platform, ...
        started_at  REAL NOT NULL,
        finished_at REAL,
        status      TEXT NOT NULL,      -- running, ok, failed
        detail      TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX runs_node ON runs(node_id);
    """,
    # 2: the discovery agent. A deadline may carry its own failure reason ("agent silent in
    # inspecting" when heartbeats moved it); the agent's console log, in chunks by boot; and the
    # agent's last word (heartbeat) and the action waiting for it.
    """
    ALTER TABLE nodes ADD COLUMN deadline_reason TEXT;

    CREATE TABLE agent_logs (
        id          INTEGER PRIMARY KEY,
        node_id     INTEGER NOT NULL REFERENCES nodes(id),
        boot        TEXT NOT NULL,      -- the ramdisk's boot id: one log per boot
        offset      INTEGER NOT NULL,   -- byte offset of this chunk in that boot's log
        ts          REAL NOT NULL,
        text        TEXT NOT NULL
    );
    CREATE INDEX agent_logs_node ON agent_logs(node_id, boot, offset);

    CREATE TABLE agents (
        node_id     INTEGER PRIMARY KEY REFERENCES nodes(id),
        boot        TEXT,
        stage       TEXT,               -- what the agent said it is doing
        address     TEXT,               -- where its last request came from
        last_seen   REAL NOT NULL,
        action      TEXT                -- ordered for it (reboot, poweroff ...); NULL: wait
    );
    """,
]
