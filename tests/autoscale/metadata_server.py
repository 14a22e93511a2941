"""A loopback stand-in for the EC2 instance metadata service (IMDSv2), for the drain tests.

Several fake instances share one server: instance ``name`` lives under ``/<name>`` (so its
worker's ``FUSED_CELERY_DRAIN_METADATA_URL`` is ``<server.url>/<name>``). A request without the
session token is refused (401), as IMDSv2 does.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOKEN = "test-token"


class MetadataServer:
    """Start with ``start()``, stop with ``stop()``. ``spot[name]`` / ``lifecycle[name]`` set an
    instance's notice; ``requests`` lists the paths asked."""

    def __init__(self) -> None:
        self.spot: dict[str, dict] = {}
        self.lifecycle: dict[str, str] = {}
        self.requests: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _send(self, code: int, body: str = "") -> None:
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_PUT(self) -> None:
                outer.requests.append(f"PUT {self.path}")
                if self.path.endswith("/latest/api/token") and self.headers.get(
                    "X-aws-ec2-metadata-token-ttl-seconds"
                ):
                    self._send(200, TOKEN)
                else:
                    self._send(400)

            def do_GET(self) -> None:
                outer.requests.append(f"GET {self.path}")
                if self.headers.get("X-aws-ec2-metadata-token") != TOKEN:
                    self._send(401)
                    return
                name, _, rest = self.path.lstrip("/").partition("/")
                rest = "/" + rest
                if rest == "/latest/meta-data/spot/instance-action":
                    notice = outer.spot.get(name)
                    self._send(200, json.dumps(notice)) if notice else self._send(404)
                elif rest == "/latest/meta-data/autoscaling/target-lifecycle-state":
                    self._send(200, outer.lifecycle.get(name, "InService"))
                elif rest == "/latest/meta-data/instance-id":
                    self._send(200, f"i-{name}")
                else:
                    self._send(404)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def start(self) -> MetadataServer:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
