"""Who is asking: bearer tokens (viewer/admin) from the config, and page logins as cookie sessions.

A request is authenticated by ``Authorization: Bearer <token>``, else by the session cookie the
login page set, else (when ``anonymous_read`` is on) as an anonymous viewer. Tokens are compared
as SHA-256 digests with ``hmac.compare_digest`` against every configured token, so neither the
time taken nor an early exit tells which token came close. A session carries a CSRF token: a
state-changing request authenticated by the cookie must echo it (``X-CSRF-Token`` header or a
``csrf`` form field) and, when the browser sends ``Origin``, come from this same host. Bearer
requests need no CSRF token since browsers never attach them on their own. No token or session
id is ever logged.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from aiohttp import web

from ztpd.config import AuthConfig
from ztpd.errors import Forbidden, Unauthorized

log = logging.getLogger("ztpd.http.auth")

Role = Literal["viewer", "admin"]
_RANK = {"viewer": 1, "admin": 2}
COOKIE = "ztpd_session"
CSRF_HEADER = "X-CSRF-Token"
MAX_SESSIONS = 1000
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).digest()


@dataclass(frozen=True)
class Principal:
    name: str
    role: Role
    via: Literal["token", "session", "anonymous"]
    csrf: str | None = None  # set for sessions only

    def can(self, role: Role) -> bool:
        return _RANK[self.role] >= _RANK[role]


@dataclass(frozen=True)
class Session:
    principal: Principal
    expires: float


class Auth:
    def __init__(self, config: AuthConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        # secret() reads token files now, so an unreadable one stops start-up, naming it.
        self._tokens = [(t.name, t.role, _digest(t.secret())) for t in config.tokens]
        self._sessions: dict[bytes, Session] = {}  # keyed by digest of the session id

    def _match(self, token: str) -> tuple[str, Role] | None:
        given = _digest(token)
        found: tuple[str, Role] | None = None
        for name, role, digest in self._tokens:  # no early exit: every token is compared
            if hmac.compare_digest(given, digest) and found is None:
                found = (name, role)
        return found

    # --- sessions -------------------------------------------------------------------------

    def login(self, token: str) -> tuple[str, Principal]:
        """A new session for a valid token: (session id for the cookie, its principal)."""
        hit = self._match(token) if token else None
        if hit is None:
            log.info("login rejected reason=unknown-token")
            raise Unauthorized("unknown token")
        now = self.clock()
        self._sessions = {k: s for k, s in self._sessions.items() if s.expires > now}
        if len(self._sessions) >= MAX_SESSIONS:  # drop the oldest rather than grow unbounded
            oldest = min(self._sessions, key=lambda k: self._sessions[k].expires)
            del self._sessions[oldest]
        sid = secrets.token_urlsafe(32)
        principal = Principal(hit[0], hit[1], "session", secrets.token_urlsafe(24))
        self._sessions[_digest(sid)] = Session(principal, now + self.config.session_ttl)
        log.info("login name=%s role=%s", principal.name, principal.role)
        return sid, principal

    def logout(self, request: web.Request) -> None:
        sid = request.cookies.get(COOKIE)
        if sid:
            self._sessions.pop(_digest(sid), None)

    def _session(self, sid: str) -> Principal | None:
        s = self._sessions.get(_digest(sid))
        if s is None:
            return None
        if s.expires <= self.clock():
            self._sessions.pop(_digest(sid), None)
            return None
        return s.principal

    # --- requests -------------------------------------------------------------------------

    def identify(self, request: web.Request) -> Principal | None:
        """Who sent ``request``; None if nobody (Unauthorized for wrong credentials)."""
        header = request.headers.get("Authorization")
        if header is not None:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthorized("the Authorization header must be 'Bearer <token>'")
            hit = self._match(token.strip())
            if hit is None:
                raise Unauthorized("unknown token")
            return Principal(hit[0], hit[1], "token")
        sid = request.cookies.get(COOKIE)
        if sid:
            principal = self._session(sid)
            if principal is not None:
                return principal
        if self.config.anonymous_read:
            return Principal("anonymous", "viewer", "anonymous")
        return None

    def require(self, request: web.Request, role: Role, csrf_form: str | None = None) -> Principal:
        """The principal if it may act as ``role``; raises Unauthorized (401) or Forbidden."""
        principal = self.identify(request)
        if principal is None:
            raise Unauthorized("this needs a bearer token or a login")
        if not principal.can(role):
            raise Forbidden(f"this needs the {role} role; {principal.name} is {principal.role}")
        if principal.via == "session" and request.method in UNSAFE:
            check_origin(request)
            given = request.headers.get(CSRF_HEADER) or csrf_form or ""
            assert principal.csrf is not None
            if not hmac.compare_digest(given.encode(), principal.csrf.encode()):
                raise Forbidden("missing or wrong CSRF token")
        return principal


def check_origin(request: web.Request) -> None:
    """A browser's cross-site POST carries its Origin; refuse any that is not this host."""
    origin = request.headers.get("Origin")
    if origin is None:
        if request.headers.get("Sec-Fetch-Site") not in (None, "same-origin", "none"):
            raise Forbidden("cross-site request refused")
        return
    if urlsplit(origin).netloc != request.host:
        raise Forbidden("cross-site request refused")
