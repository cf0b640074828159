"""The TFTP server: read-only, in its own thread, stoppable at once.

tftpy does the protocol of one transfer (option negotiation, DAT/ACK, tsize, retransmits,
``dyn_file_func`` for generated files). Its ``TftpServer.listen`` loop is not used: it binds a
single address, dies on an undecodable packet or a non-numeric option, writes uploads to disk,
handles packets from a wrong TID, and its ``stop()`` waits for the next select timeout. This
module's loop replaces it: one selector over a socket per configured address, a wake-up socket
for a prompt stop, every request checked before tftpy sees it, and every failure logged and
dropped so one client never stops the others.
"""

from __future__ import annotations

import contextlib
import io
import logging
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tftpy.TftpContexts import TftpContextServer
from tftpy.TftpPacketFactory import TftpPacketFactory
from tftpy.TftpPacketTypes import TftpPacketRRQ, TftpPacketWRQ
from tftpy.TftpShared import (
    MAX_BLKSIZE,
    MIN_BLKSIZE,
    TftpException,
    TftpTimeout,
    TftpTimeoutExpectACK,
)
from tftpy.TftpStates import TftpStateServerRecvRRQ

from ztpd.images import paths
from ztpd.images.paths import Refused

log = logging.getLogger("ztpd.tftp")

# TFTP error codes (RFC 1350 section 5).
NOT_DEFINED = 0
FILE_NOT_FOUND = 1
ACCESS_VIOLATION = 2
ILLEGAL_OPERATION = 4
UNKNOWN_TID = 5
CODES = {paths.FORBIDDEN: ACCESS_VIOLATION, paths.MISSING: FILE_NOT_FOUND}
MODES = frozenset({"octet", "netascii"})

# RFC 2348's largest block that fits a UDP datagram (tftpy would accept up to 65536).
MAX_RFC_BLKSIZE = 65464
# Errors tftpy's parser and states raise on bad input, besides its own TftpException.
BAD_INPUT = (TftpException, ValueError, struct.error, UnicodeDecodeError, OSError)

# (requested name, client address) → the file's bytes, or None when there is no such file.
DynamicFiles = Callable[[str, str], bytes | None]


@dataclass(frozen=True)
class Transfer:
    """One finished (or refused) read request, for whoever records boot activity."""

    client: str
    name: str
    outcome: str  # "sent", "refused", "aborted" (by the client), "failed"
    size: int
    seconds: float
    detail: str = ""


TransferObserver = Callable[[Transfer], None]


def error_packet(code: int, message: str) -> bytes:
    return struct.pack("!HH", 5, code) + message.encode("ascii", "replace")[:200] + b"\0"


class _ReadRequest(TftpStateServerRecvRRQ):  # type: ignore[misc]
    """tftpy's RRQ state with RFC 2349 ``timeout`` accepted, values checked, blksize capped."""

    def returnSupportedOptions(self, options: dict[str, str]) -> dict[str, int]:
        accepted: dict[str, int] = {}
        for key, value in options.items():
            try:
                number = int(value)
            except ValueError:
                continue  # RFC 2347: a server ignores an option it cannot honour
            if key == "blksize":
                accepted[key] = max(MIN_BLKSIZE, min(number, MAX_RFC_BLKSIZE, MAX_BLKSIZE))
            elif key == "tsize":
                accepted[key] = 0  # tftpy fills in the real size once the file is open
            elif key == "timeout" and 1 <= number <= 255:
                accepted[key] = number
                self.context.timeout = number
        return accepted


class _Session:
    __slots__ = ("ctx", "key", "name", "started")

    def __init__(self, ctx: Any, key: tuple[str, str, int], name: str) -> None:
        self.ctx = ctx
        self.key = key
        self.name = name
        self.started = time.monotonic()


class TftpServer:
    """Binds in ``bind()`` (so the caller sees address errors), serves in ``serve()``."""

    def __init__(
        self,
        root: Path,
        addresses: list[str],
        port: int,
        *,
        timeout: float,
        retries: int,
        max_transfers: int,
        dynamic: DynamicFiles | None = None,
        observer: TransferObserver | None = None,
    ) -> None:
        self.root = root
        self.addresses = addresses
        self.port = port
        self.timeout = timeout
        self.retries = retries
        self.max_transfers = max_transfers
        self.dynamic = dynamic
        self.observer = observer
        self.bound: list[tuple[str, int]] = []
        self._listeners: list[socket.socket] = []
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._stopping = threading.Event()
        self._sessions: dict[socket.socket, _Session] = {}
        self._by_peer: dict[tuple[str, str, int], _Session] = {}
        self._factory = TftpPacketFactory()

    def bind(self) -> None:
        try:
            for address in self.addresses:
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                self._listeners.append(sock)
                sock.bind((address, self.port))
                sock.setblocking(False)
                self.bound.append(sock.getsockname())
                self._sel.register(sock, selectors.EVENT_READ, address)
        except OSError:
            self.close()
            raise
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)

    def stop(self) -> None:
        """Ends ``serve()`` promptly, from any thread; open transfers are dropped."""
        self._stopping.set()
        with contextlib.suppress(OSError):  # already closed: serve() has ended
            self._wake_w.send(b"x")

    def serve(self) -> None:
        try:
            while not self._stopping.is_set():
                for key, _ in self._sel.select(self._wait()):
                    if key.data is None:
                        continue  # the wake-up: the loop condition decides
                    sock: socket.socket = key.fileobj  # type: ignore[assignment]
                    if sock in self._sessions:
                        self._step(self._sessions[sock])
                    else:
                        self._request(sock, key.data)
                self._retransmit(time.time())
        finally:
            for session in list(self._sessions.values()):
                self._finish(session, "failed", "server stopping")
            self.close()

    def close(self) -> None:
        for sock in (*self._listeners, self._wake_r, self._wake_w):
            sock.close()
        self._sel.close()

    # --- the loop's parts ------------------------------------------------------------------

    def _wait(self) -> float | None:
        """Seconds until the next retransmit is due (None: nothing to wait for)."""
        if not self._sessions:
            return None
        now = time.time()
        due: float = min(s.ctx.last_update + s.ctx.timeout for s in self._sessions.values())
        return max(0.0, min(due - now, 1.0))

    def _refuse(
        self, sock: socket.socket, peer: tuple[str, int], name: str, code: int, reason: str
    ) -> None:
        log.warning(
            "tftp refused client=%s:%s file=%r code=%s reason=%s",
            peer[0],
            peer[1],
            name,
            code,
            reason,
        )
        try:
            sock.sendto(error_packet(code, reason), peer)
        except OSError as e:
            log.info("tftp error not sent client=%s reason=%s", peer[0], e)
        self._observe(Transfer(peer[0], name, "refused", 0, 0.0, reason))

    def _request(self, sock: socket.socket, local: str) -> None:
        try:
            data, peer = sock.recvfrom(MAX_BLKSIZE + 4)
        except OSError:
            return
        try:
            packet = self._factory.parse(data)
        except BAD_INPUT as e:
            opcode = int.from_bytes(data[:2], "big") if len(data) >= 2 else 0
            log.warning(
                "tftp dropped client=%s:%s bytes=%d reason=%r", peer[0], peer[1], len(data), str(e)
            )
            if opcode in (1, 2):  # a request we cannot read: tell the client why
                self._refuse(sock, peer, "?", ILLEGAL_OPERATION, "malformed request")
            return
        if isinstance(packet, TftpPacketWRQ):
            self._refuse(sock, peer, packet.filename, ACCESS_VIOLATION, "read-only server")
            return
        if not isinstance(packet, TftpPacketRRQ):
            log.info("tftp dropped client=%s:%s reason=not-a-request", peer[0], peer[1])
            return
        key = (local, peer[0], peer[1])
        if key in self._by_peer:
            return  # a retransmitted request: the transfer already answered it
        if packet.mode not in MODES:
            reason = f"unsupported mode {packet.mode[:20]!r}"
            self._refuse(sock, peer, packet.filename, ILLEGAL_OPERATION, reason)
            return
        try:
            name = paths.clean(packet.filename)
            paths.locate(self.root, name)
        except Refused as r:
            self._refuse(sock, peer, packet.filename, CODES[r.kind], r.reason)
            return
        if len(self._sessions) >= self.max_transfers:
            self._refuse(sock, peer, name, NOT_DEFINED, "server busy, try again")
            return
        self._start(key, packet, name)

    def _start(self, key: tuple[str, str, int], packet: Any, name: str) -> None:
        local, peer = key[0], (key[1], key[2])
        ctx = TftpContextServer(
            peer[0],
            peer[1],
            self.timeout,
            str(self.root),
            self._open_dynamic,
            None,
            retries=self.retries,
            flock=False,
        )
        try:
            if local != "0.0.0.0":
                ctx.sock.bind((local, 0))  # answer from the address the client talked to
            packet.filename = name
            ctx.metrics.start_time = ctx.last_update = time.time()
            ctx.state = _ReadRequest(ctx).handle(packet, peer[0], peer[1])
        except BAD_INPUT as e:
            ctx.end()
            reason = str(e).replace(str(self.root) + "/", "")  # tftpy names the full path
            log.info(
                "tftp not served client=%s:%s file=%s reason=%r", peer[0], peer[1], name, reason
            )
            self._observe(Transfer(peer[0], name, "refused", 0, 0.0, reason))
            return
        session = _Session(ctx, key, name)
        self._sessions[ctx.sock] = session
        self._by_peer[key] = session
        self._sel.register(ctx.sock, selectors.EVENT_READ, local)
        log.debug("tftp start client=%s:%s file=%s options=%s", peer[0], peer[1], name, ctx.options)

    def _open_dynamic(self, name: str, raddress: str, rport: int) -> io.BytesIO | None:
        if self.dynamic is None:
            return None
        data = self.dynamic(name, raddress)
        return None if data is None else io.BytesIO(data)

    def _step(self, session: _Session) -> None:
        ctx = session.ctx
        try:
            head, peer = ctx.sock.recvfrom(4, socket.MSG_PEEK)
            if peer != (ctx.host, ctx.tidport):
                # tftpy would act on it; RFC 1350 says answer "unknown TID" and carry on.
                ctx.sock.recvfrom(MAX_BLKSIZE + 4)
                ctx.sock.sendto(error_packet(UNKNOWN_TID, "unknown transfer id"), peer)
                return
            if head[:2] == b"\0\5":
                # Clients abort on purpose, e.g. PXE ROMs after a tsize-only request.
                ctx.sock.recvfrom(MAX_BLKSIZE + 4)
                self._finish(session, "aborted", "client sent an error")
                return
            ctx.timeout_expectACK = False
            ctx.cycle()
        except TftpTimeoutExpectACK:
            ctx.timeout_expectACK = True
            return
        except BAD_INPUT as e:
            self._finish(session, "failed", str(e))
            return
        if ctx.state is None:
            self._finish(session, "sent")

    def _retransmit(self, now: float) -> None:
        for session in list(self._sessions.values()):
            ctx = session.ctx
            try:
                ctx.checkTimeout(now)
            except TftpTimeout:
                ctx.retry_count += 1
                if ctx.retry_count >= ctx.retries:
                    self._finish(session, "failed", f"no answer after {ctx.retries} tries")
                    continue
                try:
                    ctx.state.resendLast()
                except BAD_INPUT as e:
                    self._finish(session, "failed", str(e))
                    continue
                # tftpy's own loop leaves these, which resends on every pass once late.
                ctx.last_update = now
                ctx.timeout_expectACK = False

    def _finish(self, session: _Session, outcome: str, detail: str = "") -> None:
        ctx = session.ctx
        self._sessions.pop(ctx.sock, None)
        self._by_peer.pop(session.key, None)
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(ctx.sock)
        size = ctx.metrics.bytes
        ctx.end()
        seconds = time.monotonic() - session.started
        level = logging.WARNING if outcome == "failed" else logging.INFO
        log.log(
            level,
            "tftp %s client=%s:%s file=%s bytes=%d seconds=%.2f%s",
            outcome,
            ctx.host,
            ctx.port,
            session.name,
            size,
            seconds,
            f" reason={detail!r}" if detail else "",
        )
        self._observe(Transfer(ctx.host, session.name, outcome, size, seconds, detail))

    def _observe(self, transfer: Transfer) -> None:
        if self.observer is None:
            return
        try:
            self.observer(transfer)
        except Exception:  # recording is best effort: a bug there must not stop TFTP
            log.exception("tftp observer failed client=%s file=%s", transfer.client, transfer.name)
