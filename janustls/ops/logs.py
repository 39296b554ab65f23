"""Log output for machines: one JSON object per line, and the event catalogue as documentation.

`--log-format json` (twistd janustls, janustls demo) writes every log event as a JSON
line with its stable `event_id` (`janustls.events.CATALOGUE`), the rendered message
and its fields, so log processors select events without parsing text.
`docs/events.md` is generated from the catalogue (`python -m janustls.ops.logs`); a test
keeps the two in step.
"""

from __future__ import annotations

import datetime
import json
import sys
from typing import IO, Any

from twisted.logger import FileLogObserver, ILogObserver, formatEvent, textFileLogObserver

from janustls.events import CATALOGUE

__all__ = ["event_as_json", "json_lines_observer", "log_observer", "catalogue_markdown", "LOG_FORMATS"]

LOG_FORMATS = ("text", "json")

#: twisted.logger's own keys that are not fields of the event.
_INTERNAL = frozenset({"log_logger", "log_source", "log_format", "log_level", "log_namespace", "log_time",
                       "log_failure", "log_io", "log_text", "log_trace", "log_flattened", "log_system",
                       "log_legacy", "format", "message", "isError", "printed", "system", "time", "why"})  # fmt: skip


def _plain(value: Any) -> Any:
    """A JSON-safe form of a field: numbers, strings, lists and dicts as they are; the rest as text."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


def event_as_json(event: dict[str, Any]) -> str:
    """One event as one JSON line (no newline): time, level, event_id, message, then its fields."""
    when = event.get("log_time")
    level = event.get("log_level")
    record: dict[str, Any] = {
        "time": datetime.datetime.fromtimestamp(when, datetime.UTC).isoformat(timespec="milliseconds")
        if isinstance(when, (int, float))
        else None,
        "level": getattr(level, "name", None),
        "event_id": event.get("event_id"),
        "message": formatEvent(event),
    }
    for key, value in event.items():
        if key not in _INTERNAL and key not in record:
            record[key] = _plain(value)
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False)


def json_lines_observer(out: IO[str]) -> ILogObserver:
    """A twisted.logger observer writing each event as a JSON line to `out`."""
    return FileLogObserver(out, lambda event: event_as_json(event) + "\n")


def log_observer(fmt: str, out: IO[str] | None = None) -> ILogObserver:
    """The observer for a `--log-format` value."""
    out = out or sys.stdout
    if fmt == "json":
        return json_lines_observer(out)
    return textFileLogObserver(out)


def catalogue_markdown() -> str:
    """docs/events.md: every stable event identifier and what it means."""
    lines = [
        "# Log events",
        "",
        "Every log event janustls emits carries a stable `event_id`. Identifiers are part of the",
        "interface: they are added, never renamed. With `--log-format json` each event is one JSON",
        "line with `time`, `level`, `event_id`, `message` and the fields named below.",
        "The `janustls_events_total{event_id=...}` metric counts them.",
        "",
        "This file is generated from `janustls.events.CATALOGUE` by `python -m janustls.ops.logs > docs/events.md`.",
        "",
        "| event_id | meaning |",
        "|---|---|",
    ]
    for event_id in sorted(CATALOGUE):
        text = CATALOGUE[event_id].replace("|", "\\|")
        lines.append(f"| `{event_id}` | {text} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(catalogue_markdown())
