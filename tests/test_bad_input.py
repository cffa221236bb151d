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
        (b'{"LockDelay": Infinity}', "invalid character 'I' looking for beginning of value"),
        (b'{"LockDelay": 1e400}', "LockDelay: Infinity does not fit a duration"),
        (b'{"LockDelay": -1e300}', "LockDelay: -1e+300 does not fit a duration"),
        (b'{"LockDelay": "3000000h"}', "LockDelay: '3000000h' is not a duration"),
    ],
)
async def test_session_lock_delay_out_of_range(api, body: bytes, reason: str):
    """Was an OverflowError (500) converting the delay to nanoseconds."""
    r = await api.put("/v1/session/create", content=body)
    assert r.status_code == 400 and reason in r.text, r.text


@pytest.mark.parametrize(
    "interval,reason",
    [
        (b"NaN", "Request decode failed: invalid character 'N' looking for beginning of value"),
        (b"Infinity", "Request decode failed: invalid character 'I' looking for beginning of value"),
        (b"1e400", "check Interval: Infinity does not fit a duration"),
    ],
)
async def test_check_interval_not_a_number_is_refused(api, interval: bytes, reason: str):
    """A NaN interval was accepted (200); every anti-entropy sync then failed formatting it, so nothing synced again.

    JSON bodies are read as Go reads them: NaN and Infinity are not JSON; a number too large for a float is
    Infinity, which no duration fits.
    """
    body = b'{"Name": "nan", "Check": {"TTL": "10s", "Interval": %s}}' % interval
    r = await api.put("/v1/agent/service/register", content=body)
    assert r.status_code == 400 and reason in r.text, r.text
    assert "nan" not in (await api.get("/v1/agent/services")).json()


async def test_lone_surrogates_become_replacement_characters(api):
    """A lone UTF-16 surrogate escape was stored as is; no snapshot could be written afterwards (500 here,
    and Raft log compaction too), and a Meta key holding one was a 500 at once. Go's decoder writes U+FFFD."""
    r = await api.put("/v1/agent/service/register", content=b'{"Name": "sur", "Meta": {"k\\udfff": "v"}}')
    assert r.status_code == 400 and "Key contains invalid characters" in r.text, r.text
    r = await api.put("/v1/agent/service/register", content=b'{"Name": "sur\\ud800", "Meta": {"k": "\\udfff"}}')
    assert r.status_code == 200, r.text
    assert (await api.get("/v1/agent/service/sur\ufffd")).json()["Meta"] == {"k": "\ufffd"}
    r = await api.put("/v1/txn", content=b'[{"KV": {"Verb": "set", "Key": "sur/\\ud800", "Value": "eA=="}}]')
    assert r.status_code == 200, r.text
    assert (await api.get("/v1/kv/sur/", params={"keys": ""})).json() == ["sur/\ufffd"]
    r = await api.put("/v1/agent/service/register", content=b'{"Name": "pair", "Meta": {"smile": "\\ud83d\\ude00"}}')
    assert (await api.get("/v1/agent/service/pair")).json()["Meta"] == {"smile": "\U0001F600"}  # a real pair stays
    assert (await api.get("/v1/snapshot")).status_code == 200


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
