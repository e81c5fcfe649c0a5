"""Helpers shared by test modules: walking paginated lists, running requests concurrently."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from flask.testing import FlaskClient

from tests.conftest import ApiUser

T = TypeVar("T")


PROBLEM = "application/problem+json"

_real_getaddrinfo = socket.getaddrinfo


def fake_getaddrinfo(table: dict[str, list[str]]) -> Callable[..., list[Any]]:
    """A `socket.getaddrinfo` answering the names of `table` with its addresses (names ending
    in `.invalid` do not resolve; others resolve for real), so no test needs DNS."""

    def getaddrinfo(
        host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0
    ) -> list[Any]:
        name = host.decode() if isinstance(host, bytes) else host
        if isinstance(name, str) and name.endswith(".invalid"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        if name not in table:
            return _real_getaddrinfo(host, port, family, type, proto, flags)
        infos: list[Any] = []
        for address in table[name]:
            if ":" in address:
                infos.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, port, 0, 0)))
            else:
                infos.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port)))
        return infos

    return getaddrinfo


def problem(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    """The problem+json body of `response`, after checking its status (and `code`)."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == PROBLEM
    body = dict(response.json)
    assert body["status"] == status
    if code is not None:
        assert body["code"] == code
    return body


def all_pages(client: FlaskClient, user: ApiUser, path: str, limit: int = 200) -> list[dict]:
    """Every item of a paginated listing, following `next_cursor` to the end."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    separator = "&" if "?" in path else "?"
    for _ in range(1000):
        url = f"{path}{separator}limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        response = client.get(url, headers=user.headers)
        assert response.status_code == 200, response.get_data(as_text=True)
        items.extend(response.json["items"])
        cursor = response.json["next_cursor"]
        if cursor is None:
            return items
    raise AssertionError("pagination did not end")


def run_concurrently(count: int, task: Callable[[int], T], timeout: float = 120) -> list[T]:
    """Run `task(0)` … `task(count - 1)` in threads released together; return their results.

    An exception in any thread fails the caller; a thread still running after `timeout`
    seconds fails it too (a hang must not block the suite).
    """
    barrier = threading.Barrier(count)
    results: dict[int, T] = {}
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            barrier.wait(timeout=60)
            results[index] = task(index)
        except BaseException as error:  # reported by the calling thread
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout)
    assert not any(thread.is_alive() for thread in threads), "a request never finished"
    assert errors == [], errors
    return [results[i] for i in range(count)]
