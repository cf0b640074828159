"""The OpenAPI 3.1 description of /api/v1 and /metrics, served at /api/v1/openapi.json.

Written by hand next to the handlers in ``api.py``; tests/api checks that every route there is
described here and that every response the tests receive validates against its schema.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from ztpd import __version__
from ztpd.http.queries import ACTIONS, BOOT_KINDS, MAX_LIMIT, NODE_SORTS
from ztpd.lifecycle import State

Schema = dict[str, Any]

STR: Schema = {"type": "string"}
INT: Schema = {"type": "integer"}
NUM: Schema = {"type": "number"}
BOOL: Schema = {"type": "boolean"}
ANY_OBJ: Schema = {"type": "object"}
STATE: Schema = {"type": "string", "enum": [s.value for s in State]}


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def null(s: Schema) -> Schema:
    return {"anyOf": [s, {"type": "null"}]}


def arr(s: Schema) -> Schema:
    return {"type": "array", "items": s}


def obj(props: dict[str, Schema], *, closed: bool = True) -> Schema:
    """An object whose listed properties are all present."""
    out: Schema = {"type": "object", "properties": props, "required": sorted(props)}
    if closed:
        out["additionalProperties"] = False
    return out


def page(item: Schema) -> Schema:
    return obj({"items": arr(item), "total": INT, "limit": INT, "offset": INT})


EVENT_FIELDS: dict[str, Schema] = {
    "id": INT,
    "ts": NUM,
    "node_id": null(INT),
    "kind": STR,
    "from_state": null(STR),
    "to_state": null(STR),
    "cause": STR,
    "detail": ANY_OBJ,
    "text": STR,
}
NODE_FIELDS: dict[str, Schema] = {
    "id": INT,
    "name": STR,
    "state": STATE,
    "macs": arr(STR),
    "hostname": null(STR),
    "uuid": null(STR),
    "serial": null(STR),
    "profile": null(STR),
    "ip": null(STR),
    "arch": null(STR),
    "failed_from": null(STR),
    "reason": null(STR),
    "deadline": null(NUM),
    "facts": ANY_OBJ,
    "created_at": NUM,
    "updated_at": NUM,
    "state_since": NUM,
    "last_event": null(ref("Event")),
    "progress": null(ref("Progress")),
    "actions": arr({"type": "string", "enum": list(ACTIONS)}),
}
LEASE = obj(
    {
        "ip": STR,
        "mac": STR,
        "client_id": null(STR),
        "subnet": STR,
        "state": STR,
        "expires": NUM,
        "hostname": null(STR),
        "node_id": null(INT),
        "updated_at": NUM,
    }
)
INVENTORY_META = obj({"version": INT, "ts": NUM, "source": STR})

SCHEMAS: dict[str, Schema] = {
    "Error": obj(
        {
            "error": obj(
                {
                    "code": STR,
                    "message": STR,
                    "detail": {"description": "more about the error, any JSON or null"},
                }
            )
        }
    ),
    "Event": obj(EVENT_FIELDS),
    # The data of one SSE message: an Event plus its node's table row.
    "StreamEvent": obj({**EVENT_FIELDS, "node": null(ref("Node"))}),
    "Progress": obj(
        {
            "unit": null({"type": "string", "enum": ["bytes", "tasks", "steps"]}),
            "done": null(NUM),
            "total": null(NUM),
            "fraction": null(NUM),
            "stage": null(STR),
        }
    ),
    "Node": obj(NODE_FIELDS),
    "NodeDetail": obj(
        {
            **NODE_FIELDS,
            "runs": arr(
                obj(
                    {
                        "id": INT,
                        "node_id": INT,
                        "kind": STR,
                        "started_at": NUM,
                        "finished_at": null(NUM),
                        "status": STR,
                        "detail": ANY_OBJ,
                    }
                )
            ),
            "leases": arr(LEASE),
            "inventory": null(INVENTORY_META),
        }
    ),
    "NodeList": page(ref("Node")),
    "EventList": obj(
        {
            "items": arr(ref("Event")),
            "limit": INT,
            "next_before": null(INT),
            "next_after": null(INT),
        }
    ),
    "BootActivity": obj({"items": arr(ref("Event")), "limit": INT, "next_before": null(INT)}),
    "Inventory": obj(
        {
            "version": INT,
            "ts": NUM,
            "source": STR,
            "data": {**ANY_OBJ, "description": "an inventory (docs/inventory.md)"},
        }
    ),
    "InventoryHistory": page(INVENTORY_META),
    "InventoryDiff": obj(
        {
            "from": null(INT),
            "to": INT,
            "changes": arr(
                obj(
                    {
                        "path": STR,
                        "op": {"type": "string", "enum": ["added", "removed", "changed"]},
                        "old": {},
                        "new": {},
                    }
                )
            ),
        }
    ),
    "Summary": obj(
        {
            "states": obj({s.value: INT for s in State}),
            "total": INT,
            "in_progress": arr(ref("Node")),
            "failed": arr(ref("Node")),
            "activity": obj({k: INT for k in BOOT_KINDS}),
            "traffic": obj(
                {"dhcp_packets": NUM, "tftp_requests": NUM, "http_requests": NUM, "boots": NUM}
            ),
            "profile_errors": null(INT),
            "last_event_id": INT,
        }
    ),
    "Profiles": obj(
        {
            "available": BOOL,
            "message": null(STR),
            "profiles": arr(
                {
                    "type": "object",
                    "required": ["name", "nodes"],
                    "properties": {"name": STR, "nodes": INT},
                }
            ),
            "errors": arr(
                {
                    "type": "object",
                    "required": ["message"],
                    "properties": {"file": STR, "line": INT, "column": INT, "message": STR},
                }
            ),
            "nodes_by_profile": {"type": "object", "additionalProperties": INT},
        }
    ),
    "Leases": page(LEASE),
    "Images": obj(
        {
            "directory": null(STR),
            "manifest": null(ANY_OBJ),
            "items": arr(obj({"name": STR, "size": INT, "mtime": NUM, "sha256": null(STR)})),
        }
    ),
    "Whoami": obj(
        {
            "name": STR,
            "role": {"type": "string", "enum": ["viewer", "admin"]},
            "via": {"type": "string", "enum": ["token", "session", "anonymous"]},
        }
    ),
    "ActionBody": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "reason": {**null(STR), "description": "recorded with the event (max 500 chars)"},
            "wipe": {
                "description": "retire only: metadata or full has the node's agent erase its "
                "disks first (state retiring); none retires at once; unset applies the node's "
                "profile's os.wipe.on_retire",
                "anyOf": [
                    {"type": "string", "enum": ["none", "metadata", "full"]},
                    {"type": "null"},
                ],
            },
        },
    },
    "ActionResult": obj(
        {"node": ref("Node"), "from_state": STATE, "to_state": STATE, "event_id": INT}
    ),
    "MatchExplanation": {**ANY_OBJ, "description": "the profile service's match explanation"},
}

ERRORS = {
    "400": "bad request: unknown or invalid parameter, malformed body",
    "401": "no credentials, or a token that matches nothing",
    "403": "the role does not allow this, or a missing CSRF token on a session",
    "404": "no such node, inventory or action",
    "409": "the lifecycle does not allow this action in the node's state",
    "501": "the service behind this is not running",
}


def _param(name: str, where: str, schema: Schema, desc: str, required: bool = False) -> Schema:
    return {
        "name": name,
        "in": where,
        "required": required or where == "path",
        "schema": schema,
        "description": desc,
    }


NODE = _param("node", "path", STR, "node id, MAC, UUID, serial or hostname")
LIMIT = _param(
    "limit", "query", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}, "page size"
)
OFFSET = _param("offset", "query", {"type": "integer", "minimum": 0}, "rows to skip")
EVENT_NODE = _param("node", "query", STR, "only this node's events (id, MAC, ...)")
KINDS = _param("kind", "query", arr(STR), "only these event kinds (repeatable)")


def _op(
    summary: str,
    schema: Schema | None,
    errors: str,
    params: list[Schema] | None = None,
    *,
    media: str = "application/json",
    public: bool = False,
    role: str = "viewer",
) -> Schema:
    responses: dict[str, Any] = {
        "200": {
            "description": "ok",
            "content": {media: {"schema": schema} if schema is not None else {}},
        }
    }
    codes = [*errors.split(), *([] if public else ["401", "403"])]
    for code in sorted(set(codes)):
        responses[code] = {"$ref": f"#/components/responses/E{code}"}
    op: Schema = {
        "summary": summary,
        "parameters": params or [],
        "responses": responses,
    }
    if public:
        op["security"] = []
    else:
        op["description"] = f"Needs the {role} role."
    return op


def paths() -> dict[str, Any]:
    p = "/api/v1"
    return {
        f"{p}/openapi.json": {"get": _op("This document", ANY_OBJ, "", public=True)},
        f"{p}/whoami": {"get": _op("Who the credentials name", ref("Whoami"), "400")},
        f"{p}/summary": {
            "get": _op("Dashboard: counts per state, busy and failed nodes", ref("Summary"), "400")
        },
        f"{p}/nodes": {
            "get": _op(
                "List nodes",
                ref("NodeList"),
                "400",
                [
                    _param("state", "query", arr(STATE), "only these states (repeatable)"),
                    _param("profile", "query", STR, "only nodes with this profile"),
                    _param("q", "query", STR, "text in hostname, serial, UUID, IP or a MAC"),
                    _param("sort", "query", {"type": "string", "enum": list(NODE_SORTS)}, "key"),
                    _param("order", "query", {"type": "string", "enum": ["asc", "desc"]}, "order"),
                    LIMIT,
                    OFFSET,
                ],
            )
        },
        f"{p}/nodes/{{node}}": {"get": _op("One node", ref("NodeDetail"), "400 404", [NODE])},
        f"{p}/nodes/{{node}}/inventory": {
            "get": _op("The node's latest inventory", ref("Inventory"), "400 404", [NODE])
        },
        f"{p}/nodes/{{node}}/inventories": {
            "get": _op(
                "Inventory versions, newest first",
                ref("InventoryHistory"),
                "400 404",
                [NODE, LIMIT, OFFSET],
            )
        },
        f"{p}/nodes/{{node}}/inventories/diff": {
            "get": _op(
                "What changed between two inventory versions",
                ref("InventoryDiff"),
                "400 404",
                [
                    NODE,
                    _param("from", "query", INT, "older version (default: the one before to)"),
                    _param("to", "query", INT, "newer version (default: the latest)"),
                ],
            )
        },
        f"{p}/nodes/{{node}}/inventories/{{version}}": {
            "get": _op(
                "One inventory version",
                ref("Inventory"),
                "400 404",
                [NODE, _param("version", "path", STR, "inventory version number")],
            )
        },
        f"{p}/nodes/{{node}}/match": {
            "get": _op(
                "Why the node matches each profile or not",
                ref("MatchExplanation"),
                "400 404 501",
                [NODE],
            )
        },
        f"{p}/nodes/{{node}}/actions/{{action}}": {
            "post": {
                **_op(
                    "Apply a lifecycle action; returns the resulting state",
                    ref("ActionResult"),
                    "400 404 409",
                    [
                        NODE,
                        _param("action", "path", {"type": "string", "enum": list(ACTIONS)}, "do"),
                    ],
                    role="admin",
                ),
                "requestBody": {
                    "required": False,
                    "content": {"application/json": {"schema": ref("ActionBody")}},
                },
            }
        },
        f"{p}/events": {
            "get": _op(
                "Events, paged by id",
                ref("EventList"),
                "400 404",
                [
                    EVENT_NODE,
                    KINDS,
                    _param("after", "query", INT, "only events with a larger id"),
                    _param("before", "query", INT, "only events with a smaller id"),
                    _param("order", "query", {"type": "string", "enum": ["asc", "desc"]}, "by id"),
                    LIMIT,
                ],
            )
        },
        f"{p}/events/stream": {
            "get": _op(
                "Live events as Server-Sent Events (id = event id, data = "
                "StreamEvent JSON); Last-Event-ID or after= replays what was missed",
                {"type": "string", "description": "text/event-stream of StreamEvent"},
                "400 404",
                [
                    EVENT_NODE,
                    KINDS,
                    _param("after", "query", INT, "replay events after this id first"),
                    _param("Last-Event-ID", "header", STR, "set by browsers on reconnect"),
                ],
                media="text/event-stream",
            )
        },
        f"{p}/profiles": {"get": _op("Loaded profiles and errors", ref("Profiles"), "400")},
        f"{p}/leases": {
            "get": _op(
                "DHCP leases",
                ref("Leases"),
                "400",
                [
                    _param("state", "query", STR, "offered, bound, declined, released, expired"),
                    _param("mac", "query", STR, "only this client"),
                    LIMIT,
                    OFFSET,
                ],
            )
        },
        f"{p}/boot-activity": {
            "get": _op(
                f"Boot traffic events ({', '.join(BOOT_KINDS)}), newest first",
                ref("BootActivity"),
                "400 404",
                [EVENT_NODE, _param("before", "query", INT, "older than this id"), LIMIT],
            )
        },
        f"{p}/images": {"get": _op("Boot files on disk", ref("Images"), "400")},
        "/metrics": {
            "get": _op(
                "Prometheus metrics (text format 0.0.4); public unless "
                "http.auth.anonymous_metrics is false",
                STR,
                "",
                media="text/plain",
                public=True,
            )
        },
    }


@cache
def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ztpd API",
            "version": __version__,
            "description": "Nodes, inventories, events and actions of a ztpd appliance. "
            'Errors always have the body {"error": {"code", "message", "detail"}}.',
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}, {"session": []}],
        "paths": paths(),
        "components": {
            "schemas": SCHEMAS,
            "responses": {
                f"E{code}": {
                    "description": text,
                    "content": {"application/json": {"schema": ref("Error")}},
                }
                for code, text in ERRORS.items()
            },
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "session": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": "ztpd_session",
                    "description": "a page login; unsafe methods also need X-CSRF-Token",
                },
            },
        },
    }
