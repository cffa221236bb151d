"""The agent process: HTTP API and, on servers, the Raft server, all on one asyncio loop.

``rpc(method, args)`` is how the HTTP layer reaches the servers: a direct call
into the in-process server on a server agent (client agents, which forward over
server RPC, arrive with the agents issue).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from typing import Any

import uvicorn

from proconsul.agent.config import RuntimeConfig
from proconsul.api.app import build_app
from proconsul.server.server import Server

log = logging.getLogger("proconsul.agent")


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the agent owns shutdown."""

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[override]
        yield


class StartupError(Exception):
    """The agent cannot start; the message says why in one line."""


def _listen(host: str, port: int, what: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise StartupError(f"cannot listen for {what} on {host}:{port}: {err.strerror}") from None
    sock.listen(1024)
    sock.setblocking(False)
    return sock


class Agent:
    """See the module docstring."""

    def __init__(self, config: RuntimeConfig) -> None:
        self.config = config
        self.server: Server | None = Server(config.server_config()) if config.server else None
        self._http: _Uvicorn | None = None
        self._http_task: asyncio.Task | None = None
        self._stopped = asyncio.Event()

    async def rpc(self, method: str, args: Any) -> Any:
        """Call a server endpoint (in-process on a server agent)."""
        return await self.server.call(method, args)

    async def start(self) -> None:
        cfg = self.config
        http_sock = _listen(cfg.client_addr, cfg.ports.http, "HTTP") if cfg.ports.http > 0 else None
        if self.server is not None:
            try:
                await self.server.start()
            except OSError as err:
                raise StartupError(f"cannot listen for server RPC on {cfg.bind_addr}:{cfg.ports.server}: {err.strerror or err}") from None
        if http_sock is not None:
            config = uvicorn.Config(
                build_app(self),
                loop="none",
                http="httptools",
                lifespan="off",
                access_log=False,
                log_config=None,
                timeout_graceful_shutdown=1,
                timeout_keep_alive=30,
                server_header=False,
            )
            self._http = _Uvicorn(config)
            self._http_task = asyncio.create_task(self._http.serve(sockets=[http_sock]), name="http")
        log.info(
            "started: node %s, datacenter %s, http %s:%s, server rpc %s",
            cfg.node_name, cfg.datacenter, cfg.client_addr, cfg.ports.http,
            f"{cfg.bind_addr}:{cfg.ports.server}" if cfg.server else "off",
        )

    async def stop(self) -> None:
        if self._http is not None:
            self._http.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._http_task, 3)
        if self.server is not None:
            await self.server.stop()
        self._stopped.set()

    async def run(self) -> None:
        """Start, serve until SIGINT or SIGTERM, then stop gracefully (a second signal exits at once)."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal, stop)
        await self.start()
        await stop.wait()
        log.info("caught signal, shutting down")
        await self.stop()

    def _on_signal(self, stop: asyncio.Event) -> None:
        if stop.is_set():
            log.warning("second signal: exiting now")
            raise SystemExit(1)
        stop.set()
