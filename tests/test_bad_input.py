"""Regressions for what the HTTP fuzzer (tests/test_fuzz_http.py) found: each was a 500 or worse."""

from __future__ import annotations

import pytest

from proconsul.server.durations import parse_duration

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("body", [b"-252737", b"[]", b"true", b'"passing"', b"null"])
async def test_check_update_with_a_body_that_is_not_an_object(api, body: bytes):
    """Was a TypeError (500): the field check iterated the body before knowing it was an object."""
    await api.put("/v1/agent/check/register", json={"ID": "upd", "Name": "upd", "TTL": "30s"})
    r = await api.put("/v1/agent/check/update/upd", content=body)
    assert r.status_code == 400, r.text
    assert r.text.startswith("Request decode failed: update: expected an object, got "), r.text


@pytest.mark.parametrize(
    "body,reason",
    [
        (b'{"LockDelay": Infinity}', "LockDelay: Infinity does not fit a duration"),
        (b'{"LockDelay": 1e400}', "LockDelay: Infinity does not fit a duration"),
        (b'{"LockDelay": -1e300}', "LockDelay: -1e+300 does not fit a duration"),
        (b'{"LockDelay": "3000000h"}', "LockDelay: '3000000h' is not a duration"),
    ],
)
async def test_session_lock_delay_out_of_range(api, body: bytes, reason: str):
    """Was an OverflowError (500) converting the delay to nanoseconds."""
    r = await api.put("/v1/session/create", content=body)
    assert r.status_code == 400 and reason in r.text, r.text


async def test_check_interval_nan_is_refused_and_cannot_wedge_anti_entropy(api):
    """Was accepted (200); every anti-entropy sync then failed formatting NaN, so nothing synced again."""
    body = b'{"Name": "nan", "Check": {"TTL": "10s", "Interval": NaN}}'
    r = await api.put("/v1/agent/service/register", content=body)
    assert r.status_code == 400 and "check Interval: NaN does not fit a duration" in r.text, r.text
    assert "nan" not in (await api.get("/v1/agent/services")).json()


def test_durations_stop_where_go_durations_do():
    """Go's time.Duration is int64 nanoseconds: about 2,562,047 hours; past that ParseDuration fails."""
    assert parse_duration("2562047h") == 2562047 * 3600.0
    assert parse_duration("-2562047h") == -2562047 * 3600.0
    for text in ("2562048h", "9999999999999h", "1" + "0" * 400 + "s"):
        with pytest.raises(ValueError, match="invalid duration"):
            parse_duration(text)


# Operations Consul serves without looking at a token.
NO_TOKEN = {"/v1/status/leader", "/v1/status/peers", "/v1/catalog/datacenters", "/v1/acl/bootstrap", "/v1/internal/debug/state-checksum"}


async def test_the_schema_declares_the_parameters_routes_read(api):
    """The fuzzer only sends what the schema declares: the agent endpoints' ?token= and /v1/agent/metrics' ?format= were missing."""
    paths = (await api.get("/openapi.json")).json()["paths"]
    missing = []
    for path, ops in paths.items():
        for method, op in ops.items():
            names = {p["name"] for p in op.get("parameters", []) if p["in"] == "query"}
            if path not in NO_TOKEN and "token" not in names:
                missing.append(f"{method.upper()} {path}")
    assert missing == []
    assert "format" in {p["name"] for p in paths["/v1/agent/metrics"]["get"]["parameters"]}
