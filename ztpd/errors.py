"""The one exception tree of ztpd.

    ZtpdError                      anything ztpd raises on purpose; carries a short machine code
    ├── ConfigError                config or other operator-written files are wrong (exit 2)
    │   └── SourceError            ... with the file, line and column of each problem
    ├── StoreError                 the database cannot be used
    │   └── SchemaTooNew           written by a newer ztpd; never touched
    ├── NotFound                   a node, profile, file ... that does not exist      (HTTP 404)
    ├── Conflict                   a request the current state does not allow         (HTTP 409)
    │   └── IllegalTransition      the lifecycle table has no such transition
    ├── BadRequest                 malformed or invalid input from a client           (HTTP 400)
    ├── Forbidden                  wrong, expired or insufficient credentials         (HTTP 403)
    │   └── Unauthorized           no credentials, or ones that match nothing         (HTTP 401)
    ├── Unsupported                a driver cannot do what was asked                  (HTTP 501)
    └── RenderError                a template could not be rendered completely        (HTTP 500)

The HTTP layer maps these to status codes in one middleware; the CLI maps ConfigError and
StoreError to exit status 2. Protocol loops (DHCP, TFTP) log and drop, never raise out.
"""

from __future__ import annotations

from dataclasses import dataclass


class ZtpdError(Exception):
    code = "error"
    http_status = 500

    def __init__(self, message: str, *, detail: object = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class ConfigError(ZtpdError):
    code = "config"


@dataclass(frozen=True)
class Problem:
    """One problem in an operator-written file, located to the character."""

    file: str
    line: int  # 1-based; 0 when the file itself is the problem
    column: int  # 1-based; 0 when unknown
    message: str

    def __str__(self) -> str:
        if self.line:
            return f"{self.file}:{self.line}:{self.column}: {self.message}"
        return f"{self.file}: {self.message}"


class SourceError(ConfigError):
    """One or more located problems; str() lists them all, one per line."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class StoreError(ZtpdError):
    code = "store"


class SchemaTooNew(StoreError):
    code = "schema-too-new"


class NotFound(ZtpdError):
    code = "not-found"
    http_status = 404


class Conflict(ZtpdError):
    code = "conflict"
    http_status = 409


class IllegalTransition(Conflict):
    code = "illegal-transition"


class BadRequest(ZtpdError):
    code = "bad-request"
    http_status = 400


class Forbidden(ZtpdError):
    code = "forbidden"
    http_status = 403


class Unauthorized(Forbidden):
    code = "unauthorized"
    http_status = 401


class Unsupported(ZtpdError):
    code = "unsupported"
    http_status = 501


class RenderError(ZtpdError):
    code = "render"
    http_status = 500
