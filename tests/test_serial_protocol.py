"""The serial validation protocol (docs/serial-protocol.md): CRC vectors, frames, retries, and the
real round trip with QEMU's mps2-an500 UART0 on a pty (skipped without the toolchain/QEMU)."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bnncube.validation import emulator as em
from bnncube.validation import serial_protocol as sp

# --------------------------------------------------------------------------------------------
# CRC and frames
# --------------------------------------------------------------------------------------------

CRC_VECTORS = [
    (b"", 0x00000000),
    (b"a", 0xE8B7BE43),
    (b"123456789", 0xCBF43926),
    (b"The quick brown fox jumps over the lazy dog", 0x414FA339),
    (bytes(32), 0x190A55AD),
    (b"\xff" * 32, 0xFF6CAB0B),
]


@pytest.mark.parametrize(("data", "crc"), CRC_VECTORS)
def test_crc32_vectors(data: bytes, crc: int) -> None:
    assert sp.crc32(data) == crc == zlib.crc32(data)


def test_crc32_continues() -> None:
    data = np.random.default_rng(0).integers(0, 256, 1000, dtype=np.uint8).tobytes()
    assert sp.crc32(data[300:], sp.crc32(data[:300])) == zlib.crc32(data)


def test_frame_layout_and_round_trip() -> None:
    frame = sp.encode_frame(sp.Cmd.HELLO)
    assert frame == b"BN\x01\x00\x00\x00\x00" + struct.pack("<I", zlib.crc32(b"\x01\0\0\0\0"))
    payload = bytes(range(256)) * 3
    data = sp.encode_frame(sp.Cmd.RUN, payload)
    assert len(data) == 7 + len(payload) + 4
    got, used = sp.decode_frame(b"\x00garbageB" + data + b"BN")
    assert got == sp.Frame(sp.Cmd.RUN, payload) and used == 9 + len(data)


def test_frame_partial_and_corrupted() -> None:
    data = sp.encode_frame(sp.Cmd.RUN_ACK, b"\x01\x02\x03")
    for cut in range(len(data)):
        frame, _ = sp.decode_frame(data[:cut])
        assert frame is None
    for i in range(2, len(data)):  # any flipped bit after the magic
        bad = bytearray(data)
        bad[i] ^= 0x10
        with pytest.raises(sp.FrameError):
            got, _ = sp.decode_frame(bytes(bad))
            if got is None:  # a length made larger: incomplete, also not accepted
                raise sp.FrameError("incomplete")


def test_parse_device() -> None:
    assert sp.parse_device("serial:/dev/ttyACM0") == ("/dev/ttyACM0", 115200)
    assert sp.parse_device("serial:/dev/pts/3:921600") == ("/dev/pts/3", 921600)
    with pytest.raises(ValueError):
        sp.parse_device("serial:")


class _Silent:
    """A transport where nothing ever answers."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.sent.append(data)

    def read(self, n: int, timeout_s: float) -> bytes:
        return b""

    def flush_input(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_retries_are_bounded() -> None:
    transport = _Silent()
    client = sp.SerialClient(transport, timeout_s=0.05, retries=2)
    with pytest.raises(sp.SerialProtocolError, match="RUN failed after 3 attempts; last error: no"):
        client.run(b"\x00" * 4)
    assert len(transport.sent) == 3


class _Scripted(_Silent):
    """Answers each request with the next scripted frame."""

    def __init__(self, answers: list[bytes]) -> None:
        super().__init__()
        self.answers, self.pending = answers, b""

    def write(self, data: bytes) -> None:
        super().write(data)
        self.pending += self.answers.pop(0)

    def read(self, n: int, timeout_s: float) -> bytes:
        out, self.pending = self.pending[:n], self.pending[n:]
        return out


def test_device_errors() -> None:
    crc_error = sp.encode_frame(sp.Cmd.ERROR, bytes([1, 0, 0, 0]) + struct.pack("<I", 7))
    ok = sp.encode_frame(sp.Cmd.RUN_ACK, struct.pack("<II", 1, 1234) + b"out")
    client = sp.SerialClient(_Scripted([crc_error, ok]), timeout_s=0.5)
    result = client.run(b"in")
    assert result == sp.RunResult(b"out", 1234, 2)
    assert client.errors_seen == ["device error BAD_CRC (detail 0x00000007)"]
    run_error = sp.encode_frame(sp.Cmd.ERROR, bytes([6, 0, 0, 0]) + struct.pack("<I", 5))
    with pytest.raises(sp.DeviceError, match="RUN"):  # not retried
        sp.SerialClient(_Scripted([run_error]), timeout_s=0.5).run(b"in")


# --------------------------------------------------------------------------------------------
# the real round trip: QEMU mps2-an500, UART0 on a pty
# --------------------------------------------------------------------------------------------

needs_target = pytest.mark.skipif(
    shutil.which(em.ARM_GCC) is None or shutil.which(em.QEMU) is None,
    reason=f"{em.ARM_GCC} or {em.QEMU} is not installed (`make setup`)",
)


@pytest.fixture(scope="module")
def small_network(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    sys.path.insert(0, str(Path(__file__).parent))
    from test_reference_qkeras import random_qkeras

    from bnncube.converters.loader import load_model
    from bnncube.generate import GenerateOptions, generate_code, write_generated

    tmp = tmp_path_factory.mktemp("serial")
    model, _ = random_qkeras(1)
    h5 = tmp / "small.h5"
    model.save(h5)
    result = generate_code(load_model(str(h5), "keras"), GenerateOptions(c_name="small"), str(h5))
    folder = tmp / "small"
    write_generated(result, folder)
    elf = sp.build_serial_firmware(folder, "small", tmp / "build")
    return {"h5": h5, "graph": result.graph, "elf": elf, "tmp": tmp}


@pytest.fixture(scope="module")
def qemu_pty(small_network: dict[str, Any]) -> Iterator[str]:
    proc, pty = sp.start_qemu_pty(small_network["elf"])
    try:
        yield pty
    finally:
        proc.kill()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            pass


@needs_target
def test_qemu_hello_and_run(small_network: dict[str, Any], qemu_pty: str) -> None:
    from bnncube.converters.reference import run_graph
    from bnncube.validate import random_inputs

    graph = small_network["graph"]
    out_t = graph.tensors[graph.outputs[0]]
    with sp.SerialPort(qemu_pty, 115200) as port:
        client = sp.SerialClient(port, timeout_s=10.0)
        info = client.hello()
        assert info.name == "small" and info.version == sp.VERSION
        assert info.out_size == out_t.nbytes and not info.counts_cycles
        for x in random_inputs(graph, 3, 1, None):
            result = client.run(np.ascontiguousarray(x).tobytes())
            expected = run_graph(graph, [x[None]])[graph.outputs[0]][0]
            assert result.output == np.ascontiguousarray(expected).tobytes()
            assert result.attempts == 1 and result.cycles is None


@needs_target
def test_qemu_corrupted_frame_error_and_retry(small_network: dict[str, Any], qemu_pty: str) -> None:
    from bnncube.converters.reference import run_graph
    from bnncube.validate import random_inputs

    graph = small_network["graph"]
    x = random_inputs(graph, 1, 7, None)[0]
    data = np.ascontiguousarray(x).tobytes()
    with sp.SerialPort(qemu_pty, 115200) as port:
        client = sp.SerialClient(port, timeout_s=10.0, retries=2)
        # a frame with one payload bit flipped, after some noise: the device answers BAD_CRC
        bad = bytearray(sp.encode_frame(sp.Cmd.RUN, data))
        bad[100] ^= 0x01
        port.write(b"\x00\xffB" + bytes(bad))
        answer = client.read_frame(10.0)
        assert answer.cmd == sp.Cmd.ERROR and answer.payload[0] == sp.DeviceErrorCode.BAD_CRC
        # the client's own retry: the first request is corrupted, the second succeeds
        client.corrupt_next = 1
        result = client.run(data)
        assert result.attempts == 2 and client.errors_seen[0].startswith("device error BAD_CRC")
        expected = run_graph(graph, [x[None]])[graph.outputs[0]][0]
        assert result.output == np.ascontiguousarray(expected).tobytes()
        # a wrong length is refused (not retried)
        with pytest.raises(sp.DeviceError, match="BAD_LENGTH"):
            client.run(data[:-1])
        assert client.hello().name == "small"  # still in sync


@needs_target
def test_validate_cli_serial(small_network: dict[str, Any], qemu_pty: str) -> None:
    from bnncube.cli import main

    tmp = small_network["tmp"]
    out = tmp / "out"
    args = ["validate", "--mode", "target", "-m", str(small_network["h5"]), "-n", "small"]
    rc = main([*args, "-b", "3", "-o", str(out), "-w", str(tmp / "ws"), "-d", f"serial:{qemu_pty}"])
    assert rc == 0
    report = json.loads((out / "small_validate_report.json").read_text())
    assert report["bit_exact"] and report["device"] == f"serial:{qemu_pty}"
    assert report["target"]["serial"]["retries"] == 0
    assert report["target"]["instructions"] is None
    assert "serial: " in (out / "small_validate_report.txt").read_text()
