"""/v1/kv/<key>: Consul's KV API (agent/kvs_endpoint.go), served by a lean handler (a hot path)."""

from __future__ import annotations

import base64
from json.encoder import encode_basestring_ascii
from typing import Any
from urllib.parse import urlencode

from proconsul.api.headers import JSON, meta_headers
from proconsul.api.lean import LeanRequest, LeanRoute, Reply, dump_json, json_reply
from proconsul.api.params import first, has, parse_uint, query_options
from proconsul.server.commands import KVSRequest
from proconsul.server.errors import BadRequest
from proconsul.server.structs import KeyListRequest, KeyRequest, KVSApply

PREFIX = "/v1/kv/"


def kv_route(agent: Any) -> LeanRoute:
    """The lean route for /v1/kv/, bound to an agent."""
    max_value = agent.config.kv_max_value_size
    pretty_always = agent.config.dev

    def too_large(size: int, declared: bool) -> str:
        return (
            f"Request body({size} bytes) too large, max size: {max_value} bytes. "
            "See https://developer.hashicorp.com/docs/agent/config/config-files#kv_max_value_size."
        )

    async def handle(req: LeanRequest) -> Reply:
        key = req.path[len(PREFIX) :]
        q = req.query
        opts = query_options(q, req.headers)
        pretty = pretty_always or "pretty" in q
        method = req.method
        if method == "GET":
            return await kv_get(key, q, opts, pretty)
        if method == "PUT":
            return await kv_put(req, key, q, opts, pretty)
        return await kv_delete(key, q, opts, pretty)

    async def kv_get(key: str, q: dict, opts: Any, pretty: bool) -> Reply:
        if has(q, "keys"):
            sep = first(q, "separator") if has(q, "separator") else first(q, "seperator")
            reply = await agent.rpc("KVS.ListKeys", KeyListRequest(key, sep, opts))
            if not reply.value and key:
                return Reply(404, b"", meta_headers(reply.meta))
            return json_reply(reply.value or [], pretty, headers=meta_headers(reply.meta))
        recurse = has(q, "recurse")
        if not recurse and not key:
            raise BadRequest("Missing key name")
        reply = await agent.rpc("KVS.List" if recurse else "KVS.Get", KeyRequest(key, opts))
        entries = reply.value
        if not entries:
            return Reply(404, b"", meta_headers(reply.meta))
        if not recurse and has(q, "raw"):
            value = entries[0]["Value"]
            body = base64.b64decode(value) if value else b""
            return Reply(
                200,
                body,
                [
                    (b"content-type", b"text/plain"),
                    (b"x-content-type-options", b"nosniff"),
                    (b"content-security-policy", b"sandbox"),
                    *meta_headers(reply.meta),
                ],
            )
        if pretty:
            return json_reply(entries, pretty, headers=meta_headers(reply.meta))
        return Reply(200, encode_entries(entries), [JSON, *meta_headers(reply.meta)])

    async def kv_put(req: LeanRequest, key: str, q: dict, opts: Any, pretty: bool) -> Reply:
        if not key:
            raise BadRequest("Missing key name")
        conflicting(q, "cas", "acquire", "release")
        op, index, session = "set", 0, ""
        flags = parse_uint(first(q, "flags"), "flags") if has(q, "flags") else 0
        if has(q, "cas"):
            op, index = "cas", parse_uint(first(q, "cas"), "cas")
        if has(q, "acquire"):
            op, session = "lock", first(q, "acquire")
        if has(q, "release"):
            op, session = "unlock", first(q, "release")
        body = await req.body(max_value, too_large)
        write = KVSRequest(op=op, key=key, value=body or None, flags=flags, index=index, session=session)
        result = await agent.rpc("KVS.Apply", KVSApply(write, opts.datacenter, opts.token))
        return bool_reply(True if op == "set" else result, pretty)

    async def kv_delete(key: str, q: dict, opts: Any, pretty: bool) -> Reply:
        conflicting(q, "recurse", "cas")
        op, index = "delete", 0
        if has(q, "recurse"):
            op = "delete-tree"
        elif not key:
            raise BadRequest("Missing key name")
        if has(q, "cas"):
            op, index = "delete-cas", parse_uint(first(q, "cas"), "cas")
        result = await agent.rpc("KVS.Apply", KVSApply(KVSRequest(op=op, key=key, index=index), opts.datacenter, opts.token))
        return bool_reply(result if op == "delete-cas" else True, pretty)

    return LeanRoute(PREFIX, ("GET", "PUT", "DELETE"), handle, "/v1/kv/{key}", OPENAPI)


_TRUE, _FALSE = dump_json(True, False), dump_json(False, False)


def bool_reply(value: bool, pretty: bool) -> Reply:
    """A write's true/false answer (the compact bodies made once)."""
    if pretty:
        return json_reply(value, pretty)
    return Reply(200, _TRUE if value else _FALSE, [JSON])


_str = encode_basestring_ascii  # what json.dumps uses for str, so the bytes are the same


def encode_entries(entries: list[dict[str, Any]]) -> bytes:
    """KV entries (``entry_json`` dicts) as compact JSON, byte for byte json.dumps', without its per-call
    setup: a GET of one key spends more in the generic encoder than in the read itself."""
    parts = []
    for e in entries:
        value = e["Value"]
        session = f',"Session":{_str(e["Session"])}' if "Session" in e else ""
        parts.append(
            f'{{"LockIndex":{e["LockIndex"]},"Key":{_str(e["Key"])},"Flags":{e["Flags"]},'
            f'"Value":{"null" if value is None else _str(value)}{session},'
            f'"CreateIndex":{e["CreateIndex"]},"ModifyIndex":{e["ModifyIndex"]}}}'
        )
    return ("[" + ",".join(parts) + "]").encode()


def conflicting(q: dict, *names: str) -> None:
    """Consul's conflictingFlags: at most one of ``names`` may be given."""
    if sum(1 for n in names if n in q) > 1:
        params = urlencode(sorted((k, v) for k, vs in q.items() for v in vs))
        raise BadRequest(f"Conflicting flags: {params}")


def _param(name: str, schema: dict, description: str) -> dict:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


_KEY = {"name": "key", "in": "path", "required": True, "schema": {"type": "string"}, "description": "Key (may contain /)"}
_COMMON = [
    _param("dc", {"type": "string"}, "Datacenter (only the agent's own)"),
    _param("token", {"type": "string"}, "ACL token"),
]
_READ = [
    _param("index", {"type": "integer", "minimum": 0}, "Blocking query: wait for an index greater than this"),
    _param("wait", {"type": "string"}, "Blocking query: maximum wait, a Go duration (default 5m, max 10m)"),
    _param("stale", {"type": "boolean"}, "Any server may answer"),
    _param("consistent", {"type": "boolean"}, "The leader answers after a Raft barrier"),
    _param("recurse", {"type": "boolean"}, "Every key under the prefix"),
    _param("raw", {"type": "boolean"}, "The value itself, not JSON"),
    _param("keys", {"type": "boolean"}, "Only key names"),
    _param("separator", {"type": "string"}, "With keys: roll up at this separator"),
]
_ENTRY = {
    "type": "object",
    "properties": {
        "LockIndex": {"type": "integer"},
        "Key": {"type": "string"},
        "Flags": {"type": "integer"},
        "Value": {"type": ["string", "null"], "description": "base64"},
        "Session": {"type": "string"},
        "CreateIndex": {"type": "integer"},
        "ModifyIndex": {"type": "integer"},
    },
}
_BOOL = {"200": {"description": "true or false", "content": {"application/json": {"schema": {"type": "boolean"}}}}}
_ERRORS = {"400": {"description": "Malformed request"}, "413": {"description": "Value too large"}}
OPENAPI: dict[str, Any] = {
    "get": {
        "summary": "Read a key, a prefix, or key names",
        "operationId": "kv_get",
        "parameters": [_KEY, *_COMMON, *_READ],
        "responses": {
            "200": {"description": "Entries", "content": {"application/json": {"schema": {"type": "array", "items": _ENTRY}}}},
            "404": {"description": "No such key"},
            **_ERRORS,
        },
    },
    "put": {
        "summary": "Write a key (set, cas, acquire, release)",
        "operationId": "kv_put",
        "parameters": [
            _KEY,
            *_COMMON,
            _param("flags", {"type": "integer", "minimum": 0}, "Opaque uint64 stored with the key"),
            _param("cas", {"type": "integer", "minimum": 0}, "Check-and-set on ModifyIndex (0: create only)"),
            _param("acquire", {"type": "string"}, "Acquire the lock with this session"),
            _param("release", {"type": "string"}, "Release the lock held by this session"),
        ],
        "requestBody": {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
        "responses": {**_BOOL, **_ERRORS},
    },
    "delete": {
        "summary": "Delete a key or a prefix",
        "operationId": "kv_delete",
        "parameters": [
            _KEY,
            *_COMMON,
            _param("recurse", {"type": "boolean"}, "Delete every key under the prefix"),
            _param("cas", {"type": "integer", "minimum": 0}, "Delete only at this ModifyIndex"),
        ],
        "responses": {**_BOOL, **_ERRORS},
    },
}
