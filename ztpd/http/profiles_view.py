"""The profile set as the API and the page show it: an adapter over the serving catalog.

``describe`` lists each profile with its conditions as written (after defaults and extends),
and the problems that keep the files on disk from serving; ``explain`` asks the matcher what
it would decide for a node now, without recording anything.
"""

from __future__ import annotations

from typing import Any

from ztpd.matcher import Matcher
from ztpd.profiles import ProfileCatalog
from ztpd.store import Nodes, Store


class CatalogView:
    def __init__(self, catalog: ProfileCatalog, matcher: Matcher, store: Store) -> None:
        self.catalog = catalog
        self.matcher = matcher
        self.nodes = Nodes(store)

    def describe(self) -> dict[str, Any]:
        status = self.catalog.status()
        profiles = [
            {
                "name": p.name,
                "description": p.spec.description,
                "priority": p.spec.priority,
                "approve": p.spec.approve,
                "max_count": p.spec.max_count,
                "source": p.source,
                "conditions": [c.model_dump(mode="json", exclude_none=True) for c in p.spec.match],
                "os": p.spec.os.method if p.spec.os else None,
            }
            for p in self.catalog.current.profiles
        ]
        errors = [
            {"file": e.file, "line": e.line, "column": e.column, "message": e.message}
            for e in status.problems
        ]
        return {
            "profiles": profiles,
            "errors": errors,
            "loaded_at": status.loaded_at,
            "digest": status.digest,
        }

    def explain(self, node_id: int) -> dict[str, Any]:
        return self.matcher.explain(self.nodes.get(node_id)).to_json()
