"""The error envelope and the middleware that makes every failure one, without a server."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.test_utils import make_mocked_request

from embedq_server.errors import ApiError, error_middleware, error_response, error_type


def envelope(resp: web.StreamResponse) -> dict[str, Any]:
    assert isinstance(resp, web.Response) and resp.body is not None
    assert resp.content_type == "application/json"
    body = json.loads(bytes(resp.body))  # type: ignore[arg-type]
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    error: dict[str, Any] = body["error"]
    return error


async def through_middleware(exc: BaseException, method: str = "GET", path: str = "/x") -> Any:
    async def handler(request: web.Request) -> web.StreamResponse:
        raise exc

    return await error_middleware(make_mocked_request(method, path), handler)


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (405, "invalid_request_error"),
        (409, "conflict_error"),
        (413, "invalid_request_error"),
        (415, "invalid_request_error"),
        (418, "invalid_request_error"),
        (429, "rate_limit_error"),
        (500, "server_error"),
        (502, "server_error"),
        (503, "server_error"),
    ],
)
def test_error_types_follow_openai(status: int, kind: str) -> None:
    assert error_type(status) == kind


def test_all_four_keys_always_present_and_headers_carried() -> None:
    resp = error_response(ApiError(429, "slow down", headers={"Retry-After": "5"}))
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "5"
    assert envelope(resp) == {
        "message": "slow down",
        "type": "rate_limit_error",
        "param": None,
        "code": None,
    }
    full = envelope(error_response(ApiError(400, "bad", param="input", code="input_too_long")))
    assert (full["param"], full["code"]) == ("input", "input_too_long")


def test_messages_with_any_text_stay_valid_json() -> None:
    resp = error_response(ApiError(404, 'no task "\x00\ud800\U0001f600<>'))
    assert envelope(resp)["message"] == 'no task "\x00\ud800\U0001f600<>'


async def test_api_errors_pass_through() -> None:
    resp = await through_middleware(ApiError(409, "lease lost", param="lease", code="lease_lost"))
    assert resp.status == 409
    assert envelope(resp)["code"] == "lease_lost"


async def test_unknown_route_is_a_404_envelope() -> None:
    resp = await through_middleware(web.HTTPNotFound(), "POST", "/v1/chat/completions")
    assert resp.status == 404
    error = envelope(resp)
    assert error["message"] == "no route POST /v1/chat/completions"
    assert error["type"] == "not_found_error"


async def test_wrong_method_is_a_405_envelope_with_allow() -> None:
    resp = await through_middleware(
        web.HTTPMethodNotAllowed("GET", ["POST"]), "GET", "/v1/embeddings"
    )
    assert resp.status == 405
    assert resp.headers["Allow"] == "POST"
    assert envelope(resp)["message"] == "GET is not allowed on /v1/embeddings; use POST"


async def test_too_large_is_a_413_envelope() -> None:
    exc = web.HTTPRequestEntityTooLarge(max_size=1000, actual_size=2000)
    resp = await through_middleware(exc, "POST")
    assert resp.status == 413
    error = envelope(resp)
    assert error["code"] == "request_too_large" and "1000" in error["message"]


async def test_broken_http_framing_is_a_400_envelope() -> None:
    resp = await through_middleware(BadHttpMessage("chunk size is not hex"), "POST")
    assert resp.status == 400
    assert "malformed request" in envelope(resp)["message"]


async def test_other_http_errors_keep_their_status() -> None:
    resp = await through_middleware(web.HTTPBadRequest())
    assert resp.status == 400
    assert envelope(resp)["message"] == "Bad Request"


async def test_redirects_are_not_errors() -> None:
    with pytest.raises(web.HTTPFound):
        await through_middleware(web.HTTPFound("/elsewhere"))


async def test_a_bug_is_a_500_that_reveals_nothing_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger="embedq.http"):
        resp = await through_middleware(KeyError("secret-internal-detail"), "POST", "/worker/claim")
    assert resp.status == 500
    error = envelope(resp)
    assert error == {
        "message": "internal server error",
        "type": "server_error",
        "param": None,
        "code": "internal_error",
    }
    assert "secret-internal-detail" not in json.dumps(error)
    assert "path=/worker/claim" in caplog.text and "secret-internal-detail" in caplog.text


async def test_successful_responses_are_untouched() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response({"ok": True}, status=202)

    resp = await error_middleware(make_mocked_request("GET", "/"), handler)
    assert resp.status == 202
