"""The serial validation protocol, host side (docs/serial-protocol.md).

Frame: ``b"BN"`` | cmd (1 byte) | length (uint32 LE) | payload | CRC-32 (uint32 LE) over cmd,
length and payload; the CRC is the standard reflected CRC-32 (0xEDB88320, ``zlib.crc32``).

:class:`SerialPort` opens a tty/pty with :mod:`termios` (raw mode, a baud rate; no pyserial),
:class:`SerialClient` speaks HELLO and RUN over any :class:`Transport` with timeouts and bounded
retries. :func:`build_serial_firmware` builds the QEMU ``mps2_an500`` validation firmware
(``runtime_c/target/bnn_serial.c`` + ``validate_main.c``); :func:`start_qemu_pty` runs it with
UART0 on a pseudo-terminal.
"""

from __future__ import annotations

import os
import re
import select
import struct
import subprocess
import termios
import time
import tty
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Protocol

MAGIC = b"BN"
HEADER = struct.Struct("<2sBI")  # magic, cmd, length
VERSION = 1
DEFAULT_BAUD = 115200
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_RETRIES = 3
MAX_PAYLOAD = 64 << 20  # host-side sanity limit on an answer's length


class Cmd(IntEnum):
    HELLO = 0x01
    RUN = 0x02
    HELLO_ACK = 0x81
    RUN_ACK = 0x82
    ERROR = 0x7F


class DeviceErrorCode(IntEnum):
    BAD_CRC = 1
    BAD_LENGTH = 2
    UNKNOWN_CMD = 3
    TIMEOUT = 4
    INIT = 5
    RUN = 6


RETRYABLE = {DeviceErrorCode.BAD_CRC, DeviceErrorCode.TIMEOUT}
FORMATS = {0: "none", 1: "float32", 2: "uint8", 3: "int8", 4: "int32", 5: "binary"}


class SerialProtocolError(RuntimeError):
    """A transport, framing or device error that ends the exchange."""


class FrameError(ValueError):
    """A received frame is malformed (bad CRC)."""


class DeviceError(SerialProtocolError):
    def __init__(self, code: int, detail: int) -> None:
        try:
            name = DeviceErrorCode(code).name
        except ValueError:
            name = f"code {code}"
        super().__init__(f"device error {name} (detail 0x{detail:08x})")
        self.code, self.detail = code, detail


# --------------------------------------------------------------------------------------------
# CRC and frames
# --------------------------------------------------------------------------------------------


def _crc_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ (0xEDB88320 if c & 1 else 0)
        table.append(c)
    return table


_TABLE = _crc_table()


def crc32(data: bytes, crc: int = 0) -> int:
    """Reflected CRC-32 (poly 0xEDB88320, init/final XOR 0xFFFFFFFF); ``crc`` continues one."""
    c = crc ^ 0xFFFFFFFF
    for b in data:
        c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


@dataclass(frozen=True)
class Frame:
    cmd: int
    payload: bytes


def encode_frame(cmd: int, payload: bytes = b"") -> bytes:
    head = HEADER.pack(MAGIC, cmd, len(payload))
    return head + payload + struct.pack("<I", crc32(head[2:] + payload))


def decode_frame(data: bytes) -> tuple[Frame | None, int]:
    """Decode the first frame of ``data``: ``(frame, bytes consumed)``; ``(None, n)`` when more
    bytes are needed (``n`` bytes before the magic can be dropped). Bytes before the magic are
    skipped; a bad CRC raises :class:`FrameError`."""
    start = data.find(MAGIC)
    if start < 0:
        return None, max(0, len(data) - 1)  # keep a trailing 'B'
    if len(data) - start < HEADER.size:
        return None, start
    _, cmd, length = HEADER.unpack_from(data, start)
    if length > MAX_PAYLOAD:
        raise FrameError(f"frame length {length} is implausible")
    end = start + HEADER.size + length + 4
    if len(data) < end:
        return None, start
    body = data[start + 2 : end - 4]
    (crc,) = struct.unpack_from("<I", data, end - 4)
    if crc32(body) != crc:
        raise FrameError(f"bad CRC on a frame (cmd 0x{cmd:02x}, length {length})")
    return Frame(cmd, bytes(body[5:])), end


# --------------------------------------------------------------------------------------------
# transports
# --------------------------------------------------------------------------------------------


class Transport(Protocol):
    def write(self, data: bytes) -> None: ...
    def read(self, n: int, timeout_s: float) -> bytes: ...
    def flush_input(self) -> None: ...
    def close(self) -> None: ...


def _baud_constant(baud: int) -> int:
    value = getattr(termios, f"B{baud}", None)
    if value is None:
        raise SerialProtocolError(f"baud rate {baud} is not supported by termios")
    return int(value)


class SerialPort:
    """A tty or pty in raw mode (8N1, no flow control), non-blocking with select timeouts."""

    def __init__(self, path: str, baud: int = DEFAULT_BAUD) -> None:
        self.path = path
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError as e:
            raise SerialProtocolError(f"cannot open serial port {path}: {e.strerror}") from None
        try:
            tty.setraw(self.fd)
            attrs = termios.tcgetattr(self.fd)
            speed = _baud_constant(baud)
            attrs[4] = attrs[5] = speed  # ispeed, ospeed
            attrs[2] &= ~(termios.CSTOPB | termios.PARENB | getattr(termios, "CRTSCTS", 0))
            attrs[2] |= termios.CLOCAL | termios.CREAD | termios.CS8
            attrs[0] &= ~(termios.IXON | termios.IXOFF | termios.IXANY)
            termios.tcsetattr(self.fd, termios.TCSANOW, attrs)
        except (termios.error, SerialProtocolError):
            os.close(self.fd)
            raise

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        deadline = time.monotonic() + DEFAULT_TIMEOUT_S
        while view:
            try:
                n = os.write(self.fd, view)
                view = view[n:]
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SerialProtocolError(f"{self.path}: write timed out") from None
                select.select([], [self.fd], [], left)

    def read(self, n: int, timeout_s: float) -> bytes:
        """Up to ``n`` bytes: what is there, else what comes within ``timeout_s`` (b"" if none)."""
        ready, _, _ = select.select([self.fd], [], [], max(0.0, timeout_s))
        if not ready:
            return b""
        try:
            return os.read(self.fd, n)
        except BlockingIOError:
            return b""
        except OSError as e:  # EIO: the other end of a pty went away
            raise SerialProtocolError(f"{self.path}: read failed: {e.strerror}") from None

    def flush_input(self) -> None:
        termios.tcflush(self.fd, termios.TCIFLUSH)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> SerialPort:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def parse_device(device: str) -> tuple[str, int]:
    """``serial:PORT[:BAUD]`` -> (PORT, BAUD)."""
    if not device.startswith("serial:") or len(device) <= len("serial:"):
        raise ValueError(f"not a serial device: {device!r} (serial:PORT[:BAUD])")
    rest = device[len("serial:") :]
    port, sep, baud = rest.rpartition(":")
    if sep and baud.isdigit() and port:
        return port, int(baud)
    return rest, DEFAULT_BAUD


# --------------------------------------------------------------------------------------------
# the client
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceInfo:
    version: int
    name: str
    in_size: int
    out_size: int
    in_format: str
    out_format: str
    counts_cycles: bool


@dataclass(frozen=True)
class RunResult:
    output: bytes
    cycles: int | None
    attempts: int


class SerialClient:
    """HELLO and RUN with a per-answer timeout and ``retries`` retries on a lost or damaged
    exchange (no answer, a bad CRC either way, a device TIMEOUT error)."""

    def __init__(
        self,
        transport: Transport,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
    ) -> None:
        self.transport = transport
        self.timeout_s = timeout_s
        self.retries = retries
        self.corrupt_next = 0  # tests: damage the CRC of the next N requests
        self.errors_seen: list[str] = []  # what caused each retry
        self._buffer = b""

    def read_frame(self, timeout_s: float) -> Frame:
        deadline = time.monotonic() + timeout_s
        while True:
            frame, used = decode_frame(self._buffer)  # FrameError propagates
            if frame is not None:
                self._buffer = self._buffer[used:]
                return frame
            self._buffer = self._buffer[used:]
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no complete answer within {timeout_s:g} s")
            self._buffer += self.transport.read(65536, min(left, 0.5))

    def _request(self, cmd: int, payload: bytes) -> bytes:
        data = encode_frame(cmd, payload)
        if self.corrupt_next > 0:
            self.corrupt_next -= 1
            data = data[:-1] + bytes([data[-1] ^ 0x5A])
        return data

    def transact(self, cmd: Cmd, payload: bytes, answer: Cmd) -> tuple[Frame, int]:
        last = ""
        for attempt in range(1, self.retries + 2):
            self.transport.write(self._request(cmd, payload))
            try:
                frame = self.read_frame(self.timeout_s)
            except (TimeoutError, FrameError) as e:
                last = str(e)
            else:
                if frame.cmd == answer:
                    return frame, attempt
                if frame.cmd == Cmd.ERROR and len(frame.payload) >= 8:
                    code = frame.payload[0]
                    (detail,) = struct.unpack_from("<I", frame.payload, 4)
                    err = DeviceError(code, detail)
                    if code not in RETRYABLE:
                        raise err
                    last = str(err)
                else:
                    last = f"unexpected answer 0x{frame.cmd:02x} to command {cmd.name}"
            self.errors_seen.append(last)
            self._resync()
        raise SerialProtocolError(
            f"{cmd.name} failed after {self.retries + 1} attempts; last error: {last}"
        )

    def _resync(self) -> None:
        """Drop whatever is in flight before retrying (a late answer, half a frame)."""
        time.sleep(0.05)
        while self.transport.read(65536, 0.05):
            pass
        self.transport.flush_input()
        self._buffer = b""

    def hello(self) -> DeviceInfo:
        frame, _ = self.transact(Cmd.HELLO, b"", Cmd.HELLO_ACK)
        p = frame.payload
        if len(p) < 12:
            raise SerialProtocolError(f"HELLO answer too short ({len(p)} bytes)")
        version, in_fmt, out_fmt, flags, in_size, out_size = struct.unpack_from("<BBBBII", p)
        return DeviceInfo(
            version,
            p[12:].decode("utf-8", "replace"),
            in_size,
            out_size,
            FORMATS.get(in_fmt, f"format {in_fmt}"),
            FORMATS.get(out_fmt, f"format {out_fmt}"),
            bool(flags & 1),
        )

    def run(self, data: bytes) -> RunResult:
        frame, attempts = self.transact(Cmd.RUN, data, Cmd.RUN_ACK)
        if len(frame.payload) < 8:
            raise SerialProtocolError(f"RUN answer too short ({len(frame.payload)} bytes)")
        flags, cycles = struct.unpack_from("<II", frame.payload)
        return RunResult(frame.payload[8:], cycles if flags & 1 else None, attempts)


# --------------------------------------------------------------------------------------------
# the QEMU validation firmware
# --------------------------------------------------------------------------------------------


def build_serial_firmware(folder: Path, c_name: str, build_dir: Path, baud: int = 115200) -> Path:
    """The ``mps2_an500`` validation firmware of a generated folder, serving the protocol on
    UART0 (``bnn_serial_main``)."""
    from bnncube.validation import emulator as em

    target = em.TARGET_DIR
    sources = [target / "validate_main.c", target / "bnn_serial.c", *sorted(folder.glob("*.c"))]
    return em.cross_compile(
        sources,
        [folder],
        build_dir / "validate_serial.elf",
        board="mps2_an500",
        entry="bnn_serial_main",
        defines=[
            f"NETWORK_NAME={c_name}",
            f"NETWORK_NAME_UPPER={c_name.upper()}",
            f'NETWORK_HEADER="{c_name}.h"',
            "BNN_SERIAL_VALIDATE",
            f"BNN_SERIAL_BAUD={baud}u",
        ],
    )


_PTY_RE = re.compile(r"char device redirected to (/dev/pts/\d+)")


def start_qemu_pty(elf: Path, timeout_s: float = 20.0) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``qemu-system-arm -M mps2-an500`` with UART0 on a new pty; return (process, path).
    The caller kills the process."""
    from bnncube.validation import emulator as em

    cmd = em.QemuRunner().command(elf)
    cmd[cmd.index("-serial") + 1] = "pty"
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    seen = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            seen += chunk
            m = _PTY_RE.search(seen.decode("utf-8", "replace"))
            if m is not None:
                return proc, m.group(1)
    proc.kill()
    proc.wait(5)
    raise SerialProtocolError(f"QEMU did not report its pty: {seen.decode(errors='replace')}")
