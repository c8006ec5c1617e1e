"""Helpers of the object-storage tests: a fault-injecting proxy to put in front of the suite's S3
server (the `server` and `s3` fixtures in conftest.py: moto's server mode on 127.0.0.1)."""

from __future__ import annotations

import http.client
import http.server
import socket
import threading
from collections.abc import Callable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_line(e: BaseException) -> str:
    msg = str(e)
    assert "\n" not in msg and "Traceback" not in msg, msg
    return msg


class FlakyProxy:
    """A proxy in front of the server that answers the first `slowdowns` requests with 503
    SlowDown, drops the connection of the next `resets`, then forwards everything; of the GETs
    it forwards, the first `truncates` send their headers (the full Content-Length) and only
    half the body before the connection drops. Settable between requests.

    `cut(path)`, if given, picks which GETs (by request path, query included) may be cut short;
    `before_get(path)`, if given, runs before each GET is forwarded (to replace an object
    between a listing and a read)."""

    def __init__(self, upstream: str, slowdowns: int, resets: int, truncates: int = 0,
                 cut: Callable[[str], bool] | None = None, before_get: Callable[[str], None] | None = None):
        self.upstream = upstream.removeprefix("http://")
        self.slowdowns, self.resets, self.truncates, self.seen = slowdowns, resets, truncates, []
        self.cut, self.before_get = cut, before_get
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _any(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                n = len(proxy.seen)
                proxy.seen.append(self.command)
                if n < proxy.slowdowns:
                    msg = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
                    self.send_response(503)
                    self.send_header("Content-Length", str(len(msg)))
                    self.end_headers()
                    self.wfile.write(msg)
                    return
                if n < proxy.slowdowns + proxy.resets:
                    self.connection.shutdown(socket.SHUT_RDWR)  # a dropped connection
                    self.close_connection = True
                    return
                if self.command == "GET" and proxy.before_get is not None:
                    proxy.before_get(self.path)
                conn = http.client.HTTPConnection(proxy.upstream)
                headers = {k: v for k, v in self.headers.items()}
                conn.request(self.command, self.path, body=body, headers=headers)
                r = conn.getresponse()
                data = r.read()
                self.send_response(r.status)
                for k, v in r.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                # a HEAD's length is the object's, not of its (empty) body
                self.send_header("Content-Length", r.getheader("Content-Length", "0") if self.command == "HEAD"
                                 else str(len(data)))
                self.end_headers()
                if (self.command == "GET" and proxy.truncates > 0 and len(data) > 1
                        and (proxy.cut is None or proxy.cut(self.path))):
                    proxy.truncates -= 1
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
