"""Log lines: JSON for log shippers, with the request id when there is one."""

from __future__ import annotations

import json
import logging

from embedq_common.logs import JsonFormatter, TextFormatter


def record(**extra: object) -> logging.LogRecord:
    rec = logging.LogRecord(
        "embedq.test", logging.INFO, __file__, 1, "batch model=%s n=%d", ("m", 3), None
    )
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


def test_json_lines_carry_stable_fields_and_the_request_id() -> None:
    line = json.loads(JsonFormatter().format(record(request_id="abc")))
    assert line["message"] == "batch model=m n=3"
    assert line["level"] == "info" and line["logger"] == "embedq.test"
    assert line["request_id"] == "abc"
    assert line["ts"].endswith("Z")
    assert "request_id" not in json.loads(JsonFormatter().format(record()))


def test_text_lines_end_with_the_request_id() -> None:
    assert (
        TextFormatter()
        .format(record(request_id="abc"))
        .endswith("batch model=m n=3 request_id=abc")
    )
