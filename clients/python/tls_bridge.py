"""TLS to a distributor done by Python's ssl module (OpenSSL), for grpcio to talk through.

Why: Firetower's certificates (`firetower dev`, `firetower certs`: net/src/tls.rs DevPki) have
Ed25519 keys. grpcio's TLS is BoringSSL, whose client does not offer Ed25519 in its
signature_algorithms, so the distributor (rustls) finds no signature scheme in common and
refuses the handshake (the client sees `SSLV3_ALERT_HANDSHAKE_FAILURE`). gRPC's C core has
no setting for the signature algorithms. The same is true of every C-core gRPC (C++, Ruby,
PHP, ...); grpc-go, grpc-java and @grpc/grpc-js are not affected.

So, for such a cluster, publish.py gives grpcio an insecure channel to a Unix socket in a
private temporary directory (mode 0700) that this bridge serves; each connection made there
is carried over a TLS 1.3 connection to the distributor, opened here with the same checks:
the CA file as the only trust anchor, the server name `distributor.firetower` checked on the
certificate, ALPN `h2`. The HTTP/2, gRPC and the API key metadata are still grpcio's; only
the bytes go through this process's own socket, never off the machine unencrypted.

All I/O runs on one asyncio loop in a daemon thread (an SSL object is never used from two
threads at once).
"""

import asyncio
import os
import shutil
import ssl
import tempfile
import threading


class TlsBridge:
    def __init__(self, target, ca_file, server_name):
        host, sep, port = target.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"{target!r}: expected HOST:PORT")
        self.host = host.strip("[]")
        self.port = int(port)
        self.server_name = server_name
        self.context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_3
        self.context.set_alpn_protocols(["h2"])
        # The last failure to reach the distributor, for the error message (grpcio only sees
        # the bridge's socket close).
        self.last_error = None
        self._dir = tempfile.mkdtemp(prefix="firetower-py-")
        os.chmod(self._dir, 0o700)
        self.path = os.path.join(self._dir, "distributor.sock")
        self._loop = asyncio.new_event_loop()
        self._server = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tls-bridge", daemon=True)

    @property
    def target(self):
        """The address to give grpc.insecure_channel."""
        return f"unix:{self.path}"

    def __enter__(self):
        self._thread.start()
        self._started.wait()
        if self._server is None:
            raise RuntimeError(f"cannot serve {self.path}: {self.last_error}")
        return self

    def __exit__(self, *exc):
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=5)
        except Exception:  # noqa: BLE001 (a bridge that does not stop cleanly still goes)
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        shutil.rmtree(self._dir, ignore_errors=True)
        return False

    def _run(self):
        asyncio.set_event_loop(self._loop)
        try:
            self._server = self._loop.run_until_complete(
                asyncio.start_unix_server(self._serve, path=self.path))
        except OSError as e:
            self.last_error = str(e)
        self._started.set()
        if self._server is not None:
            self._loop.run_forever()
        self._loop.close()

    async def _shutdown(self):
        """Stops accepting and ends every connection still carried."""
        self._server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _serve(self, local_reader, local_writer):
        try:
            remote_reader, remote_writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, ssl=self.context,
                                        server_hostname=self.server_name),
                timeout=10)
        except (OSError, asyncio.TimeoutError, ssl.SSLError) as e:
            self.last_error = f"TLS to {self.host}:{self.port} as {self.server_name}: {_describe(e)}"
            local_writer.close()
            return
        chosen = remote_writer.get_extra_info("ssl_object").selected_alpn_protocol()
        if chosen != "h2":
            self.last_error = f"{self.host}:{self.port} did not agree to ALPN h2 (got {chosen!r})"
            remote_writer.close()
            local_writer.close()
            return
        try:
            await asyncio.gather(_pump(local_reader, remote_writer),
                                 _pump(remote_reader, local_writer), return_exceptions=True)
        except asyncio.CancelledError:
            # The bridge's own shutdown: end quietly (on 3.11 asyncio's start_unix_server
            # callback raises when its handler task ends cancelled).
            pass
        for w in (local_writer, remote_writer):
            w.close()


async def _pump(reader, writer):
    try:
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                break
            writer.write(chunk)
            await writer.drain()
    finally:
        # Either side ending ends the connection (gRPC never half-closes a connection).
        writer.close()


def _describe(e):
    if isinstance(e, asyncio.TimeoutError):
        return "timed out"
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"certificate check failed: {e.verify_message}"
    return str(e) or type(e).__name__


# DER of the Ed25519 algorithm identifier's OID 1.3.101.112.
_ED25519_OID = bytes.fromhex("06032b6570")


def ca_is_ed25519(ca_pem: bytes) -> bool:
    """Whether a certificate of the PEM file uses Ed25519 (key or signature): then grpcio's
    own TLS cannot talk to servers it issued (Firetower's CAs issue Ed25519 keys)."""
    import base64
    import re

    for block in re.findall(rb"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----",
                            ca_pem, re.S):
        try:
            der = base64.b64decode(b"".join(block.split()))
        except ValueError:
            continue
        if _ED25519_OID in der:
            return True
    return False
