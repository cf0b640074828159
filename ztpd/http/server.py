"""The HTTP server, embedded in ztpd's event loop (aiohttp AppRunner + one TCPSite per address).

Route modules add themselves to the application through ``add_*_routes(app, ...)`` functions;
what they need from the rest of ztpd is handed to them as arguments or typed ``web.AppKey``s,
never imported from the store. One middleware maps ztpd's exception tree to status codes and
one error body shape: ``{"error": {"code", "message", "detail"}}``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from types import TracebackType

from aiohttp import web

from ztpd import __version__
from ztpd.config import HttpConfig
from ztpd.errors import ZtpdError

log = logging.getLogger("ztpd.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(status: int, code: str, message: str, detail: object = None) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message, "detail": detail}}, status=status
    )


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ZtpdError as e:
        if e.http_status >= 500:
            log.error("http error path=%s code=%s message=%s", request.path, e.code, e.message)
        else:
            log.info(
                "http rejected path=%s status=%s code=%s message=%s",
                request.path,
                e.http_status,
                e.code,
                e.message,
            )
        return error_response(e.http_status, e.code, e.message, e.detail)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        log.info("http rejected path=%s status=%s reason=%s", request.path, e.status, e.reason)
        return error_response(e.status, e.reason.lower().replace(" ", "-"), e.text or e.reason)
    except Exception:
        log.exception("http internal error path=%s", request.path)
        return error_response(500, "internal", "internal error")


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "version": __version__})


def make_app(config: HttpConfig) -> web.Application:
    app = web.Application(
        middlewares=[errors_middleware],
        client_max_size=config.max_body_bytes,
        handler_args={"max_field_size": 8190, "max_line_size": 8190},
    )
    app.router.add_get("/healthz", healthz)
    return app


class HttpService:
    """Serves ``app`` on every configured address until the context exits."""

    def __init__(self, config: HttpConfig, app: web.Application) -> None:
        self.config = config
        self.app = app
        self._runner: web.AppRunner | None = None
        self.ports: list[int] = []

    async def __aenter__(self) -> HttpService:
        # aiohttp arms its keep-alive timer when a connection opens and closes the connection
        # when it fires while no whole request has arrived: that is the header-read deadline
        # too (a client trickling header bytes never completes a request). A running handler,
        # such as an SSE stream, is not affected.
        self._runner = web.AppRunner(
            self.app,
            access_log=None,
            shutdown_timeout=5.0,
            handle_signals=False,
            keepalive_timeout=self.config.request_timeout,
        )
        await self._runner.setup()
        for address in self.config.listen:
            site = web.TCPSite(self._runner, address, self.config.port, reuse_address=True)
            await site.start()
        for server in self._runner.addresses:
            self.ports.append(int(server[1]))
        log.info(
            "http listening addresses=%s port=%s url=%s",
            ",".join(self.config.listen),
            self.config.port,
            self.config.base_url,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
