"""The TFTP service against real clients (tftp-hpa, atftp, curl) and hand-made packets, on
127.0.0.1 with a free high port."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from ztpd.config import TftpConfig
from ztpd.tftp import TftpService, Transfer
from ztpd.tftp import server as names

LOADERS = ("undionly.kpxe", "ipxe.efi", "snponly.efi")
SYSTEM_IPXE = Path("/usr/lib/ipxe")
CHECKOUT_IMAGES = Path(__file__).resolve().parents[2] / "images"
DEADLINE = 60.0


async def eventually(check: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"needs {tool}: apt-get install {tool}")
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """The three loaders (from `make images`, else Debian's installed ipxe package), a file in
    a subdirectory, and symlinks in and out of the root."""
    root = tmp_path / "images"
    (root / "efi").mkdir(parents=True)
    for name in LOADERS:
        src = CHECKOUT_IMAGES / name
        if not src.is_file():
            src = SYSTEM_IPXE / name
        if not src.is_file():
            pytest.skip(f"needs the iPXE loaders: run `make images` or install ipxe ({name})")
        shutil.copyfile(src, root / name)
    (root / "efi" / "small.bin").write_bytes(os.urandom(1000))
    (tmp_path / "secret").write_text("not for clients\n")
    os.symlink(tmp_path / "secret", root / "escape")
    os.symlink("../../secret", root / "efi" / "escape2")
    os.symlink(root / "undionly.kpxe", root / "alias.kpxe")
    return root


class Recorder:
    def __init__(self) -> None:
        self.transfers: list[Transfer] = []

    def __call__(self, transfer: Transfer) -> None:
        self.transfers.append(transfer)


def autoexec(name: str, client: str) -> bytes | None:
    if name != "autoexec.ipxe":
        return None
    return f"#!ipxe\necho generated for {client}\n".encode()


@pytest.fixture
async def tftp(root: Path) -> AsyncIterator[tuple[TftpService, int, Recorder]]:
    port = free_udp_port()
    recorder = Recorder()
    config = TftpConfig(enabled=True, listen=["127.0.0.1"], port=port, timeout=0.5, retries=3)
    async with TftpService(config, root, dynamic=autoexec, observer=recorder) as service:
        yield service, port, recorder


async def run(*argv: str, cwd: Path) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), DEADLINE)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode(errors="replace")


def hpa(port: int, name: str, local: Path) -> list[str]:
    return [need("tftp"), "-m", "binary", "127.0.0.1", str(port), "-c", "get", name, str(local)]


def atftp(port: int, name: str, local: Path, options: dict[str, str]) -> list[str]:
    argv = [need("atftp")]
    for key, value in options.items():
        argv += ["--option", f"{key} {value}"]
    return [*argv, "-g", "-r", name, "-l", str(local), "127.0.0.1", str(port)]


def curl(port: int, name: str, local: Path, blksize: int | None) -> list[str]:
    argv = [need("curl"), "-sS", "--max-time", "30", "-o", str(local)]
    argv += ["--tftp-blksize", str(blksize)] if blksize else ["--tftp-no-options"]
    return [*argv, f"tftp://127.0.0.1:{port}/{name}"]


CLIENTS = [
    pytest.param(lambda p, n, o: hpa(p, n, o), id="tftp-hpa"),
    pytest.param(lambda p, n, o: atftp(p, n, o, {}), id="atftp-plain"),
    pytest.param(lambda p, n, o: atftp(p, n, o, {"tsize": "0"}), id="atftp-tsize"),
    pytest.param(lambda p, n, o: atftp(p, n, o, {"blksize": "1428"}), id="atftp-blksize"),
    pytest.param(
        lambda p, n, o: atftp(p, n, o, {"blksize": "1432", "tsize": "0", "timeout": "3"}),
        id="atftp-all-options",
    ),
    pytest.param(lambda p, n, o: curl(p, n, o, None), id="curl-plain"),
    pytest.param(lambda p, n, o: curl(p, n, o, 1468), id="curl-blksize-tsize"),
]


@pytest.mark.parametrize("client", CLIENTS)
async def test_each_loader_byte_identical(
    tftp: tuple[TftpService, int, Recorder], root: Path, tmp_path: Path, client: object
) -> None:
    _, port, recorder = tftp
    for name in LOADERS:
        out = tmp_path / f"got-{name}"
        rc, text = await run(*client(port, name, out), cwd=tmp_path)  # type: ignore[operator]
        assert rc == 0, text
        assert out.read_bytes() == (root / name).read_bytes(), name
    # The server records a transfer when the last ACK arrives, maybe after the client exited.
    await eventually(lambda: sorted(t.name for t in recorder.transfers) == sorted(LOADERS))
    assert {t.outcome for t in recorder.transfers} == {"sent"}


async def test_subdirectory_internal_symlink_and_generated_file(
    tftp: tuple[TftpService, int, Recorder], root: Path, tmp_path: Path
) -> None:
    _, port, _ = tftp
    for name, expected in [
        ("efi/small.bin", (root / "efi" / "small.bin").read_bytes()),
        ("alias.kpxe", (root / "undionly.kpxe").read_bytes()),
        ("autoexec.ipxe", b"#!ipxe\necho generated for 127.0.0.1\n"),
    ]:
        out = tmp_path / "out"
        rc, text = await run(*atftp(port, name, out, {"tsize": "0"}), cwd=tmp_path)
        assert rc == 0, text
        assert out.read_bytes() == expected
    assert not (root / "autoexec.ipxe").exists()  # generated, never written to disk


async def test_fifty_concurrent_downloads(
    tftp: tuple[TftpService, int, Recorder], root: Path, tmp_path: Path
) -> None:
    _, port, recorder = tftp
    jobs = []
    for i in range(50):
        out = tmp_path / f"c{i}"
        argv = (
            hpa(port, "undionly.kpxe", out)
            if i % 2
            else atftp(port, "undionly.kpxe", out, {"blksize": "1428", "tsize": "0"})
        )
        jobs.append(run(*argv, cwd=tmp_path))
    results = await asyncio.gather(*jobs)
    assert [rc for rc, _ in results] == [0] * 50, [t for rc, t in results if rc]
    expected = (root / "undionly.kpxe").read_bytes()
    for i in range(50):
        assert (tmp_path / f"c{i}").read_bytes() == expected
    await eventually(lambda: sum(t.outcome == "sent" for t in recorder.transfers) == 50)


# --- hand-made packets: exact error codes ---------------------------------------------------


def rrq(name: bytes, mode: bytes = b"octet", options: dict[bytes, bytes] | None = None) -> bytes:
    opts = b"".join(k + b"\0" + v + b"\0" for k, v in (options or {}).items())
    return b"\0\1" + name + b"\0" + mode + b"\0" + opts


def exchange(port: int, packet: bytes) -> tuple[bytes, tuple[str, int]]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(packet, ("127.0.0.1", port))
        return s.recvfrom(70000)


def error_code(reply: bytes) -> int:
    opcode, code = struct.unpack("!HH", reply[:4])
    assert opcode == 5, reply[:40]
    return int(code)


@pytest.mark.parametrize(
    ("packet", "code"),
    [
        (rrq(b"../secret"), names.ACCESS_VIOLATION),
        (rrq(b"efi/../../secret"), names.ACCESS_VIOLATION),
        (rrq(b"..\\secret"), names.ACCESS_VIOLATION),
        (rrq(b"/etc/passwd"), names.ACCESS_VIOLATION),
        (rrq(b"escape"), names.ACCESS_VIOLATION),
        (rrq(b"efi/escape2"), names.ACCESS_VIOLATION),
        (rrq(b"efi"), names.ACCESS_VIOLATION),
        (rrq(b"x" * 300), names.ACCESS_VIOLATION),
        (rrq(b"undionly.kpxe\x01"), names.ACCESS_VIOLATION),
        # A NUL ends the name early; what follows is read as the mode and refused.
        (b"\0\1undionly.kpxe\0../../secret\0octet\0", names.ILLEGAL_OPERATION),
        (rrq(b"undionly.kpxe", mode=b"mail"), names.ILLEGAL_OPERATION),
        (rrq("caf\u00e9".encode()), names.ILLEGAL_OPERATION),
        (b"\0\2upload.bin\0octet\0", names.ACCESS_VIOLATION),
        (rrq(b"no-such-file"), names.FILE_NOT_FOUND),
    ],
)
async def test_refusals_get_a_tftp_error(
    tftp: tuple[TftpService, int, Recorder], packet: bytes, code: int, tmp_path: Path
) -> None:
    _, port, recorder = tftp
    reply, _ = await asyncio.to_thread(exchange, port, packet)
    assert error_code(reply) == code
    await eventually(lambda: any(t.outcome == "refused" for t in recorder.transfers))
    assert not (tmp_path / "images" / "upload.bin").exists()


async def test_real_client_cannot_escape_or_write(
    tftp: tuple[TftpService, int, Recorder], tmp_path: Path
) -> None:
    _, port, _ = tftp
    for name in ("../secret", "escape", "/etc/passwd"):
        out = tmp_path / "leak"
        rc, _ = await run(*atftp(port, name, out, {}), cwd=tmp_path)
        assert rc != 0
        assert not out.exists() or b"not for clients" not in out.read_bytes()
    (tmp_path / "up").write_bytes(b"data")
    rc, _ = await run(
        need("atftp"), "-p", "-l", "up", "-r", "up", "127.0.0.1", str(port), cwd=tmp_path
    )
    assert rc != 0
    assert not (tmp_path / "images" / "up").exists()


async def test_options_negotiated_and_garbage_survived(
    tftp: tuple[TftpService, int, Recorder], root: Path
) -> None:
    _, port, _ = tftp
    size = (root / "undionly.kpxe").stat().st_size
    # Garbage first: the server keeps serving.
    for junk in (b"", b"\0", b"\xff\xff\xff", b"\0\1no-nul-terminator", b"\0\3\0\1data"):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(junk, ("127.0.0.1", port))
    options = {b"blksize": b"70000", b"tsize": b"0", b"timeout": b"3", b"bogus": b"1"}
    reply, _ = await asyncio.to_thread(exchange, port, rrq(b"undionly.kpxe", options=options))
    assert reply[:2] == b"\0\6"  # OACK
    fields = reply[2:].split(b"\0")[:-1]
    got = dict(zip(fields[::2], fields[1::2], strict=True))
    assert got == {b"blksize": b"65464", b"tsize": str(size).encode(), b"timeout": b"3"}
    # A non-numeric blksize is not honoured (RFC 2347): the default comes back, no crash.
    reply, _ = await asyncio.to_thread(
        exchange, port, rrq(b"undionly.kpxe", options={b"blksize": b"abc"})
    )
    assert reply == b"\0\6blksize\x00512\x00"


async def test_retransmits_then_gives_up_and_answers_wrong_tid(
    tftp: tuple[TftpService, int, Recorder], root: Path
) -> None:
    _, port, recorder = tftp
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(rrq(b"efi/small.bin"), ("127.0.0.1", port))
        first, tid = s.recvfrom(70000)
        again, tid2 = s.recvfrom(70000)  # no ACK sent: the block comes again after ~0.5 s
        assert first == again and first[:4] == b"\0\3\0\1" and tid == tid2
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
            stranger.settimeout(5)
            stranger.sendto(b"\0\4\0\1", tid)
            assert error_code(stranger.recvfrom(100)[0]) == names.UNKNOWN_TID
    await eventually(lambda: any(t.outcome == "failed" for t in recorder.transfers))


async def test_stop_is_prompt_with_a_stalled_transfer(root: Path) -> None:
    port = free_udp_port()
    config = TftpConfig(enabled=True, listen=["127.0.0.1"], port=port, timeout=30)
    service = TftpService(config, root)
    await service.__aenter__()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(rrq(b"ipxe.efi"), ("127.0.0.1", port))
        s.recvfrom(70000)  # the transfer is open and will never be ACKed
        started = time.monotonic()
        await service.__aexit__(None, None, None)
        assert time.monotonic() - started < 1.0
    # The port is free again: a new service binds it at once.
    async with TftpService(config, root) as again:
        assert again.bound == [("127.0.0.1", port)]


async def test_bind_failure_names_the_key(root: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        config = TftpConfig(enabled=True, listen=["127.0.0.1"], port=busy.getsockname()[1])
        from ztpd.errors import ConfigError

        with pytest.raises(ConfigError, match=r"tftp\.listen"):
            async with TftpService(config, root):
                pass
