"""A WebSocket client on a plain socket, for tests of clients that misbehave at the socket level
(never read, reset mid-send): the handshake and masked client frames (RFC 6455)."""

import socket


def raw_websocket(url: str, receive_buffer: int | None = 4096) -> socket.socket:
    """A connected WebSocket client on a plain socket, which reads nothing unless told to;
    ``receive_buffer`` bytes of kernel buffer (None: the system's default, autotuned)."""
    import base64
    import os
    from urllib.parse import urlparse

    where = urlparse(url)
    sock = socket.socket()
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)  # before connect: a small window
    sock.connect((where.hostname, where.port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(f"GET {where.path} HTTP/1.1\r\nHost: {where.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    assert b" 101 " in sock.recv(1024)
    return sock


def ws_frame(payload: bytes, opcode: int) -> bytes:
    """One masked client frame (RFC 6455), mask of zeros."""
    size = len(payload)
    head = bytes([0x80 | opcode])
    if size < 126:
        head += bytes([0x80 | size])
    elif size < 65536:
        head += bytes([0x80 | 126]) + size.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + size.to_bytes(8, "big")
    return head + b"\x00\x00\x00\x00" + payload


def flooding_client(url: str) -> tuple[socket.socket, callable]:
    """A raw client (tiny receive buffer) that has started a 1-channel stream, and a function that
    sends it 0.5 s messages without reading until the server stops taking them (or drops it)."""
    import json

    import numpy as np

    sock = raw_websocket(url)
    sock.sendall(ws_frame(json.dumps({"type": "start", "sample_rate": 16000, "channels": 1}).encode(), 0x1))
    flood = ws_frame((0.1 * np.ones(8000, "<f4")).tobytes(), 0x2)

    def send_without_reading(timeout: float = 0.2, messages: int = 2000) -> None:
        sock.settimeout(timeout)
        try:
            for _ in range(messages):
                sock.sendall(flood)
        except OSError:  # timed out (the server stopped reading) or reset (it dropped us)
            pass

    return sock, send_without_reading
