"""JSON log lines, and the event catalogue kept in step with the code and docs/events.md."""

from __future__ import annotations

import ast
import io
import json
from pathlib import Path

from twisted.logger import Logger, LogLevel

from janustls.core.reasons import Reason, Refusal
from janustls.events import CATALOGUE
from janustls.ops.logs import catalogue_markdown, event_as_json, json_lines_observer

ROOT = Path(__file__).parents[1]


def test_docs_events_md_is_generated_from_the_catalogue():
    assert (ROOT / "docs" / "events.md").read_text() == catalogue_markdown(), (
        "run: python -m janustls.ops.logs > docs/events.md"
    )
    for event_id in CATALOGUE:
        assert f"`{event_id}`" in catalogue_markdown()


def test_every_emitted_identifier_is_catalogued():
    missing = []
    for path in (ROOT / "janustls").rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", getattr(node.func, "attr", None)) == "emit"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
                and node.args[0].value not in CATALOGUE
            ):
                missing.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.args[0].value}")
    assert not missing, missing


def test_json_line_per_event():
    out = io.StringIO()
    observer = json_lines_observer(out)
    log = Logger(namespace="janustls", observer=observer)
    refusal = Refusal(Reason.REVOKED, 0, "CN=revoked", "certificate revoked")
    log.emit(LogLevel.warn, "port {port}: refused {peer}: {refusal}", event_id=Reason.REVOKED.event_id,
             port="SECURE", peer="127.0.0.1:5000", refusal=refusal, reason="revoked", depth=0, subject="CN=revoked")  # fmt: skip
    log.emit(LogLevel.info, "plain {n}", n=3, nested={"a": [1, (2, 3)]}, obj=object())
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert first["event_id"] == "janustls.refused.revoked"
    assert first["level"] == "warn" and first["reason"] == "revoked" and first["depth"] == 0
    assert (
        first["message"] == "port SECURE: refused 127.0.0.1:5000: revoked at depth 0 (CN=revoked): certificate revoked"
    )
    assert first["time"].endswith("+00:00")
    assert "log_format" not in first and "log_logger" not in first
    second = json.loads(lines[1])
    assert second["event_id"] is None and second["nested"] == {"a": [1, [2, 3]]} and second["obj"].startswith("<object")


def test_json_line_with_failure():
    try:
        1 / 0  # noqa: B018  (raises on purpose)
    except ZeroDivisionError:
        from twisted.python.failure import Failure

        f = Failure()
    line = json.loads(event_as_json({"log_format": "boom", "log_failure": f, "log_level": LogLevel.error,
                                     "log_time": 0.0, "event_id": "janustls.handler.error"}))  # fmt: skip
    assert "ZeroDivisionError" in line["traceback"] and line["time"].startswith("1970-01-01T00:00:00")
