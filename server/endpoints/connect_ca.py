"""ConnectCA.* endpoints: Consul's Connect CA (agent/consul/connect_ca_endpoint.go).

Roots and ConfigurationGet are reads (the leader answers unless ``?stale``;
both block on ``?index``). ConfigurationSet and Sign run on the leader, which
owns the CA's administrative lock and proposes the serial numbers; the work is
``srv.ca_manager``'s (server/ca_manager.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from proconsul.server.ca_manager import CONNECT_NOT_ENABLED, ConnectNotEnabled, config_json, roots_json
from proconsul.server.endpoints import endpoint
from proconsul.server.errors import BadRequest, ProconsulError
from proconsul.server.structs import DatacenterRequest, QueryReply


@dataclass
class CAConfigSet:
    """ConnectCA.ConfigurationSet: Consul's CARequest with the user's CAConfiguration."""

    provider: str
    config: dict[str, Any] = field(default_factory=dict)
    state: dict[str, str] | None = None
    force_without_cross_signing: bool = False
    datacenter: str = ""
    token: str = ""


@dataclass
class CASignRequest:
    """Consul's structs.CASignRequest, plus the service the caller asks for (the CSR must name it)."""

    csr: str
    service: str = ""
    datacenter: str = ""
    token: str = ""


def _enabled(srv: Any) -> None:
    if not srv.config.connect_enabled:
        raise ConnectNotEnabled(CONNECT_NOT_ENABLED)


@endpoint("ConnectCA.Roots", DatacenterRequest, QueryReply)
async def connect_ca_roots(srv: Any, args: DatacenterRequest, hops: int) -> QueryReply:
    """Consul's IndexedCARoots; blocks on the roots index."""
    done, result = await srv.forward_read("ConnectCA.Roots", args, args.opts, hops)
    if done:
        return result
    _enabled(srv)

    def read(ws: Any) -> tuple[int, Any]:
        index, roots, config = srv.state.ca_roots_and_config(ws)
        return index, (roots, config)

    return await srv.blocking_query(args.opts, read, lambda rc: roots_json(*rc))


@endpoint("ConnectCA.ConfigurationGet", DatacenterRequest, QueryReply)
async def connect_ca_configuration_get(srv: Any, args: DatacenterRequest, hops: int) -> QueryReply:
    """The CA configuration in Consul's JSON shape (ClusterID left out, as Consul's json:"-" does).

    operator:write, not read: the config may hold the CA's private key (Consul's fix for CVE-2020-28053).
    """
    _enabled(srv)
    done, result = await srv.forward_read("ConnectCA.ConfigurationGet", args, args.opts, hops)
    if done:
        return result
    caller = srv.acl.caller(args.opts.token)
    caller.require(caller.authorizer.operator_write(), "operator", "write")

    def shape(config: Any) -> Any:
        if config is None:
            raise ProconsulError("CA has not finished initializing")
        return config_json(config)

    return await srv.blocking_query(args.opts, lambda ws: srv.state.ca_config(ws), shape)


@endpoint("ConnectCA.ConfigurationSet", CAConfigSet)
async def connect_ca_configuration_set(srv: Any, args: CAConfigSet, hops: int) -> None:
    """Store a new CA configuration, rotating the root when the key settings changed; operator:write."""
    _enabled(srv)
    done, result = await srv.forward("ConnectCA.ConfigurationSet", args, args.datacenter, hops)
    if done:
        return result
    caller = srv.acl.caller(args.token)
    caller.require(caller.authorizer.operator_write(), "operator", "write")
    await srv.ca_manager.update_configuration(args.provider, args.config, args.state, args.force_without_cross_signing)
    return None


@endpoint("ConnectCA.Sign", CASignRequest)
async def connect_ca_sign(srv: Any, args: CASignRequest, hops: int) -> dict[str, Any]:
    """Sign a service's CSR on the leader: Consul's IssuedCert JSON, without PrivateKeyPEM (the agent adds it).

    The token must have service:write on the service the CSR's SPIFFE ID names, as Consul's Sign checks.
    """
    _enabled(srv)
    done, result = await srv.forward("ConnectCA.Sign", args, args.datacenter, hops)
    if done:
        return result
    caller = srv.acl.caller(args.token)
    if not caller.unrestricted:
        from proconsul.server import ca

        try:
            name = ca.check_csr(args.csr).spiffe.service
        except ca.CAError as err:
            raise BadRequest(str(err)) from None
        caller.require(caller.authorizer.service_write(name), "service", "write", name)
    return await srv.ca_manager.sign(args.csr, args.service)

