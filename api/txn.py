"""/v1/txn: Consul's transaction API (agent/txn_endpoint.go), KV operations."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from proconsul.api.common import CONSISTENT, DC, STALE, TOKEN, agent_of, json_response, opts_of
from proconsul.api.headers import leader_headers
from proconsul.api.lean import read_limited
from proconsul.api.common import query_of
from proconsul.api.decode import loads as decode_json, as_int, as_str, fold
from proconsul.api.params import token_from
from proconsul.server.commands import TXN_KV_WRITE_VERBS, TxnKVOp, TxnRequest
from proconsul.server.errors import BadRequest, TooLarge
from proconsul.server.structs import QueryMeta, QueryOptions, TxnApply

router = APIRouter(tags=["txn"])

MAX_TXN_OPS = 128
PARSE = "Failed to parse body"
_KV_FIELDS = {"verb": "verb", "key": "key", "value": "value", "flags": "flags", "index": "index", "session": "session"}
_UNSUPPORTED = ("node", "service", "check")


def parse_ops(body: bytes, max_value: int) -> list[TxnKVOp]:
    """The request body to KV ops, with Consul's 400/413 answers for what is wrong with it."""
    try:
        raw = decode_json(body)
    except ValueError as err:
        raise BadRequest(f"Failed to parse body: {err if body else 'EOF'}") from None
    if not isinstance(raw, list):
        raise BadRequest("Failed to parse body: expected a JSON array of operations")
    if len(raw) > MAX_TXN_OPS:
        raise TooLarge(f"Transaction contains too many operations ({len(raw)} > {MAX_TXN_OPS})")
    ops: list[TxnKVOp] = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise BadRequest(f"Failed to parse body: operation {i} is not an object")
        item = fold(item, f"operation {i}", PARSE)
        for name in item:
            if name in _UNSUPPORTED:
                raise BadRequest(f"Failed to parse body: operation {i}: {name.capitalize()} operations are not supported")
            if name != "kv":
                raise BadRequest(f'Failed to parse body: json: unknown field "{name}"')
        kv = item.get("kv")
        if kv is None:
            raise BadRequest(f"Failed to parse body: operation {i} has no KV member")
        if not isinstance(kv, dict):
            raise BadRequest(f"Failed to parse body: operation {i}: KV must be an object")
        kv = fold(kv, f"operation {i}", PARSE)
        for name in kv:
            if name not in _KV_FIELDS:
                raise BadRequest(f'Failed to parse body: json: unknown field "{name}"')
        key = as_str(kv.get("key"), f"operation {i}: Key", PARSE)
        value = kv.get("value")
        if value is not None:
            if not isinstance(value, str):
                raise BadRequest(f"Failed to parse body: operation {i}: Value must be a base64 string")
            try:
                value = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError) as err:
                raise BadRequest(f"Failed to parse body: operation {i}: Value is not valid base64: {err}") from None
            if len(value) > max_value:
                raise TooLarge(f'Value for key "{key}" is too large ({len(value)} > {max_value} bytes)')
        ops.append(
            TxnKVOp(
                verb=as_str(kv.get("verb"), f"operation {i}: Verb", PARSE),
                key=key,
                value=value,
                flags=as_int(kv.get("flags"), f"operation {i}: Flags", 0, 2**64 - 1, PARSE),
                index=as_int(kv.get("index"), f"operation {i}: Index", 0, 2**64 - 1, PARSE),
                session=as_str(kv.get("session"), f"operation {i}: Session", PARSE),
            )
        )
    return ops


@router.put(
    "/v1/txn",
    summary="Apply up to 128 KV operations atomically",
    openapi_extra={
        "parameters": [DC, TOKEN, STALE, CONSISTENT],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"type": "array", "items": {"type": "object"}}}},
        },
        "responses": {"409": {"description": "Rolled back: Errors names each failed operation"}},
    },
)
async def txn(request: Request) -> Response:
    agent = agent_of(request)
    cfg = agent.config
    max_len = max(cfg.txn_max_req_len, cfg.kv_max_value_size)
    url = "https://developer.hashicorp.com/docs/agent/config/config-files#txn_max_req_len"

    def too_large(size: int, declared: bool) -> str:
        # Consul's two wordings: Content-Length checked up front, or the body overflowing while read.
        if declared:
            return f"Request body({size} bytes) too large, max size: {max_len} bytes. See {url}."
        return f"Request body too large, max size: {max_len} bytes. See {url}."

    body = await read_limited(request.stream(), request.headers.get("content-length"), max_len, too_large)
    ops = parse_ops(body, cfg.kv_max_value_size)
    q = query_of(request)
    headers: list[tuple[bytes, bytes]] = []
    if any(op.verb in TXN_KV_WRITE_VERBS for op in ops):
        opts = QueryOptions(datacenter=q.get("dc", [""])[0], token=token_from(q, request.headers))
        result = await agent.rpc("Txn.Apply", TxnApply(TxnRequest(ops), opts))
    else:
        result = await agent.rpc("Txn.Read", TxnApply(TxnRequest(ops), opts_of(request)))
        meta = QueryMeta(last_contact_ms=result["LastContact"] // 1_000_000, known_leader=result["KnownLeader"])
        headers = leader_headers(meta)
    return json_response(request, result, 409 if result["Errors"] else 200, headers)
