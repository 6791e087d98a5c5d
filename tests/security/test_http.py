"""HTTP hardening of ``tpp serve``: body timeout (408, connection closed), the token on /openapi.json,
and the bearer scheme read case-insensitively with the token still compared in constant time.

The app is the real one (:func:`tpp.serve.server.create_app`) over a stub worker and a one-pointer store, driven
in-process through ASGI (no model is built); one test runs it under uvicorn on loopback."""
import asyncio
import hmac
import io
import json
import socket

import pytest
from helpers import HANG_S
from PIL import Image
from serving_fixtures import call, stub_app, uvicorn_on_loopback

from tpp.serve.server import BodyLimit

# -- body timeout -----------------------------------------------------------------------------------

def test_a_body_that_stalls_gets_408_and_a_closed_connection():
    reached = []

    async def app(scope, receive, send):
        reached.append(scope)

    async def stalled():
        sent = []
        pieces = [{"type": "http.request", "body": b"--b\r\n", "more_body": True}]

        async def receive():
            if pieces:
                return pieces.pop(0)
            await asyncio.Event().wait()  # the client never sends the rest

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "headers": [(b"content-length", b"1000")]}
        await BodyLimit(app, 2000, timeout_s=0.2)(scope, receive, send)
        return sent

    sent = asyncio.run(stalled())
    assert sent[0]["status"] == 408 and (b"connection", b"close") in sent[0]["headers"]
    assert "not complete within 0.2 s" in json.loads(sent[1]["body"])["detail"]
    assert not reached  # the app never saw a partial body


def test_under_uvicorn_slow_body_connections_are_answered_408_and_closed(tmp_path):
    app, _ = stub_app(tmp_path, body_timeout_s=0.5)
    clients = []
    with uvicorn_on_loopback(app, log_level="warning") as address:
        try:
            for _ in range(3):
                client = socket.create_connection(address, timeout=HANG_S)
                client.sendall(b"POST /v1/sites/s/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
                               b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n")
                clients.append(client)
            for client in clients:
                received = b""
                while chunk := client.recv(65536):  # until the server closes the connection
                    received += chunk
                assert received.startswith(b"HTTP/1.1 408") and b"body-timeout" in received
        finally:
            for client in clients:
                client.close()


def test_a_complete_body_passes_the_timeout(tmp_path):
    buffer = io.BytesIO()
    Image.new("L", (8, 8), 3).save(buffer, format="PNG")
    app, worker = stub_app(tmp_path, body_timeout_s=5)
    status, out, _ = call(app, "POST", "/v1/sites/s/predict", files=[("a.png", buffer.getvalue())])
    assert status == 200 and out["predictions"][0]["label"] == "a" and worker.batches == [[(8, 8)]]


# -- token ------------------------------------------------------------------------------------------

def test_openapi_needs_the_token_when_one_is_set(tmp_path):
    app, _ = stub_app(tmp_path, token="s3cret")
    assert call(app, "GET", "/openapi.json")[0] == 401
    assert call(app, "GET", "/openapi.json", headers={"authorization": "Bearer wrong"})[0] == 401
    status, schema, _ = call(app, "GET", "/openapi.json", headers={"authorization": "Bearer s3cret"})
    assert status == 200 and "/v1/sites/{site}/predict" in schema["paths"]
    assert call(app, "GET", "/healthz")[0] == 200  # health checks stay open
    open_app, _ = stub_app(tmp_path / "open")
    assert call(open_app, "GET", "/openapi.json")[0] == 200  # no token configured: nothing to protect


@pytest.mark.parametrize("value, ok", [
    ("Bearer s3cret", True), ("bearer s3cret", True), ("BEARER s3cret", True), ("bEaReR  s3cret", True),
    ("Bearer s3cre", False), ("Bearer s3cretX", False), ("Basic s3cret", False), ("Bearers3cret", False),
    ("Bearer", False), ("", False), ("s3cret", False)])
def test_bearer_scheme_is_case_insensitive_and_the_token_compared_in_constant_time(tmp_path, monkeypatch,
                                                                                  value, ok):
    compared = []
    real = hmac.compare_digest

    def spy(a, b):
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    app, _ = stub_app(tmp_path, token="s3cret")
    headers = {"authorization": value} if value else {}
    status, out, response_headers = call(app, "GET", "/openapi.json", headers=headers)
    assert status == (200 if ok else 401)
    if not ok:
        assert out["detail"] == "missing or wrong bearer token" and response_headers[b"www-authenticate"] == b"Bearer"
    buffer = io.BytesIO()
    Image.new("L", (8, 8)).save(buffer, format="PNG")
    assert call(app, "POST", "/v1/sites/s/predict", headers=headers, files=[("a.png", buffer.getvalue())])[0] == (
        200 if ok else 401)
    assert compared and all(b == b"s3cret" for _, b in compared)  # always through hmac.compare_digest


def test_decoded_pixels_in_flight_are_bounded_across_requests():
    """Requests wait for their share of the in-flight pixel budget: never more than one request's worth
    decoded at once, and a wait that outlasts the request timeout is a 503."""
    import asyncio

    from fastapi import HTTPException

    from tpp.serve.server import PixelsInFlight

    async def scenario():
        budget, peak, order = PixelsInFlight(100), [], []

        async def request(name, pixels, hold_s):
            async with budget.hold(pixels, timeout_s=HANG_S):
                peak.append(budget.used)
                order.append(name)
                await asyncio.sleep(hold_s)

        await asyncio.gather(request("a", 80, 0.05), request("b", 80, 0), request("c", 20, 0))
        assert max(peak) <= 100 and order.index("b") > order.index("a") and budget.used == 0
        async with budget.hold(100, timeout_s=HANG_S):
            try:
                async with budget.hold(1, timeout_s=0.01):
                    raise AssertionError("a share beyond the budget was granted")
            except HTTPException as exc:
                assert exc.status_code == 503
        assert budget.used == 0

    asyncio.run(scenario())
