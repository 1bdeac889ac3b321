"""Running the answering service for tests: a real uvicorn server in a thread, a real JWKS issuer."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import uvicorn
from cryptography.hazmat.primitives.asymmetric import rsa


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerThread:
    """A uvicorn server (lifespan on, like `pipelines serve`) on a free loopback port."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn-test", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 120
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the answering service did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@dataclass
class Issuer:
    """An OIDC issuer stand-in: an RSA key, its JWKS served over HTTP, and a token minter."""

    issuer: str
    audience: str
    jwks_url: str
    key: rsa.RSAPrivateKey
    kid: str
    server: ThreadingHTTPServer

    def token(self, sub: str = "alice", groups: Sequence[str] | Any = (), **overrides: Any) -> str:
        """A token signed with the issuer's key; `overrides` replace claims (None removes one)."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": sub,
            "iat": now,
            "exp": now + 300,
            "groups": list(groups) if isinstance(groups, (list, tuple)) else groups,
        }
        claims.update(overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.kid})

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_issuer(audience: str = "rag-api") -> Issuer:
    """Generate an RSA key and serve its public half as a JWKS on a free loopback port."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    kid = uuid.uuid4().hex[:8]
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    body = json.dumps({"keys": [{**jwk, "kid": kid, "use": "sig", "alg": "RS256"}]}).encode()

    class Jwks(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Jwks)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    return Issuer("https://issuer.test/realms/corp", audience, f"http://127.0.0.1:{port}/jwks.json", key, kid, server)
