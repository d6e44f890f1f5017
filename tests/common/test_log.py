"""Logging setup: one line per record, JSON or text, the request id on every line."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest

from common.log import bind_request_id, setup_logging


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def test_json_lines_carry_role_request_id_and_extras(restore_root: None) -> None:
    out = io.StringIO()
    setup_logging(True, "info", "gateway", stream=out)
    log = logging.getLogger("genfleet.test")
    log.info("no request")
    with bind_request_id("req-123"):
        log.warning("inside %s", "request", extra={"tokens": 7, "color_message": "\x1b[36minside"})
    log.info("explicit", extra={"request_id": "req-9"})
    log.debug("filtered out by level")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["msg"] for line in lines] == ["no request", "inside request", "explicit", "failed"]
    assert [line["request_id"] for line in lines] == ["-", "req-123", "req-9", "-"]
    assert all(line["role"] == "gateway" and line["logger"] == "genfleet.test" for line in lines)
    assert lines[1]["level"] == "warning" and lines[1]["tokens"] == 7 and "color_message" not in lines[1]
    assert "RuntimeError: boom" in lines[3]["exc"]
    assert lines[0]["ts"].endswith("Z")


def test_text_lines_and_uvicorn_goes_through_the_same_handler(restore_root: None) -> None:
    out = io.StringIO()
    logging.getLogger("uvicorn.error").addHandler(logging.StreamHandler(io.StringIO()))
    setup_logging(False, "debug", "worker", stream=out)
    with bind_request_id("abc"):
        logging.getLogger("uvicorn.error").debug("started")
    (line,) = out.getvalue().splitlines()
    assert " DEBUG worker uvicorn.error [abc] started" in line


async def test_request_ids_do_not_leak_between_concurrent_tasks(restore_root: None) -> None:
    out = io.StringIO()
    setup_logging(True, "info", "gateway", stream=out)
    log = logging.getLogger("genfleet.test")

    async def handle(rid: str) -> None:
        with bind_request_id(rid):
            for _ in range(3):
                log.info(rid)
                await asyncio.sleep(0)

    await asyncio.gather(*(handle(f"r{i}") for i in range(5)))
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 15 and all(line["msg"] == line["request_id"] for line in lines)
