"""Malformed HTTP that only a real server's parser sees: a clear 4xx, never a crash. (Bad
requests at the ASGI level, and a full disk, are in tests/inprocess/test_bad_http.py.)"""

from __future__ import annotations

import socket

import httpx2 as httpx

from .conftest import ServerFactory


def send_raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(60)  # only turns a hang into a failure
        sock.sendall(data)
        return sock.recv(1024)


def test_enormous_headers_and_garbage_are_refused_not_crashing(
    make_server: ServerFactory,
) -> None:
    server = make_server()
    big = b"GET /v1/files HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n"
    answer = send_raw(server.port, big)
    assert answer.startswith(b"HTTP/1.1 4"), answer[:100]
    answer = send_raw(server.port, b"NOT AN HTTP REQUEST\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400"), answer[:100]
    assert httpx.get(server.url + "/health").status_code == 200
