"""The demo mesh's two services: ``api`` answers who it is; ``web`` also asks ``api`` through its sidecar.

    python app.py -name api -port 9090
    python app.py -name web -port 8080 -upstream http://127.0.0.1:9191   # web's sidecar upstream to api
    python app.py -check http://127.0.0.1:8080/health                    # a container healthcheck

GET /health answers "ok"; GET / answers JSON: the service's name and, with
-upstream, what the upstream answered (or why it could not be reached).
Standard library only, so it runs in the proconsul image as it is.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="app.py", description="proconsul's demo service")
    p.add_argument("-name", help="the service's name, shown in every answer")
    p.add_argument("-port", type=int, help="port to listen on")
    p.add_argument("-bind", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("-upstream", help="URL of an upstream to call on every GET /")
    p.add_argument("-check", metavar="URL", help="fetch URL and exit 0 if it answers 200, else 1")
    return p


def fetch(url: str, timeout: float = 3.0) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.status, resp.read()


def serve(name: str, bind: str, port: int, upstream: str | None) -> None:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/health":
                body, ctype = b"ok\n", "text/plain"
            else:
                answer: dict = {"service": name}
                if upstream:
                    try:
                        status, raw = fetch(upstream)
                        answer["upstream"] = json.loads(raw) if status == 200 else {"status": status}
                    except Exception as err:  # the demo shows what broke, whatever it was
                        answer["upstream_error"] = str(err)
                body, ctype = (json.dumps(answer) + "\n").encode(), "application/json"
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt: str, *args: object) -> None:
            sys.stderr.write(f"{name}: {fmt % args}\n")

    ThreadingHTTPServer((bind, port), Handler).serve_forever()


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.check:
        try:
            return 0 if fetch(args.check)[0] == 200 else 1
        except Exception:
            return 1
    if not args.name or not args.port:
        parser().error("-name and -port are required (or -check URL)")
    serve(args.name, args.bind, args.port, args.upstream)
    return 0


if __name__ == "__main__":
    sys.exit(main())
