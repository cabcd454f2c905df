"""A client that is still sending a body when it is refused, on a raw socket (httpx cannot
hold a body half-sent): what reaches it, and whether the connection ended cleanly."""

from __future__ import annotations

import socket


def refused_mid_body(
    port: int, path: str, headers: dict[str, str], declared: int, sent: int
) -> tuple[bytes, bytes]:
    """POST ``path`` declaring ``declared`` body bytes, send ``sent`` of them, then read to the
    end: the answer's head and body. A reset connection (the server closed with those bytes
    unread) raises ConnectionResetError, or leaves the answer short."""
    head = "".join(f"{k}: {v}\r\n" for k, v in {**headers, "Content-Length": declared}.items())
    with socket.create_connection(("127.0.0.1", port), timeout=30) as c:
        c.sendall(f"POST {path} HTTP/1.1\r\nHost: test\r\n{head}\r\n".encode())
        c.sendall(b"\0" * sent)
        answer = b""
        while chunk := c.recv(65536):
            answer += chunk
    status_and_headers, _, body = answer.partition(b"\r\n\r\n")
    return status_and_headers, body
