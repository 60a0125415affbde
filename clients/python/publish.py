#!/usr/bin/env python3
"""Publishes to Firetower through the distributor gRPC API (docs/protocol.md §6).

    python publish.py --distributor 127.0.0.1:6667 --ca-file DIR/tls/ca.crt \\
        --api-key-file DIR/auth/api.key --topic chat/lobby --data '{"text":"hi"}'

One --data: a Publish call, printing `epoch=E seq=S` as `firetower publish` does. Several
--data: one PublishBatch call (all or nothing), one `epoch=E seq=S` line per message, in
order. --stream: every line `topic<TAB>json` of standard input over one PublishStream,
printing `line=N epoch=E seq=S` or `line=N error=CODE: message` as answers come.

The connection is TLS 1.3 trusting --ca-file (the cluster CA; `firetower dev` prints it as
`ca file:`, it is DIR/tls/ca.crt of dev's data directory). Distributor certificates carry the
DNS name `distributor.firetower`, whatever their address, so that is the name checked
(--server-name). Firetower's own CAs (dev, `firetower certs`) issue Ed25519 keys, which
grpcio's TLS (BoringSSL) cannot check; for those, Python's ssl module makes the TLS
connection and grpcio talks through it (tls_bridge.py; --tls picks, auto by the CA's key).
The API key (first line of --api-key-file; dev's is DIR/auth/api.key) goes
as `authorization: Bearer <key>` metadata on every call.

Exit status: 0 when everything was published; 64 for INVALID_ARGUMENT or a bad flag, 69 for
UNAVAILABLE (as the firetower CLI), 1 for any other failure; the gRPC status is printed on
standard error as `error: CODE: message`.

The stubs are generated from proto/proto/*.proto by generate.py (grpcio-tools) on first use
into clients/python/build/stubs, and again whenever the protos change.
"""

import argparse
import os
import ssl
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import generate  # noqa: E402  (clients/python/generate.py)
import tls_bridge  # noqa: E402  (clients/python/tls_bridge.py)

EXIT_USAGE = 64
EXIT_UNAVAILABLE = 69
SERVER_NAME = "distributor.firetower"


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Publish to Firetower through the distributor gRPC API (TLS, API key).")
    p.add_argument("--distributor", default="127.0.0.1:6667",
                   help="a distributor's gRPC address HOST:PORT (any distributor: it forwards "
                        "to the topic's owner; default 127.0.0.1:6667, dev's first)")
    p.add_argument("--ca-file", default=os.environ.get("FIRETOWER_CA_FILE"),
                   help="PEM file of the cluster CA to trust (default $FIRETOWER_CA_FILE)")
    p.add_argument("--api-key-file", required=True,
                   help="file whose first line is the API key (a key with the publish scope)")
    p.add_argument("--server-name", default=SERVER_NAME,
                   help=f"the name checked on the distributor's certificate (default {SERVER_NAME})")
    p.add_argument("--tls", choices=["auto", "grpc", "bridge"], default="auto",
                   help="who does TLS: grpc (grpcio's own), bridge (Python's ssl, for Ed25519 "
                        "certificates, which grpcio cannot check: tls_bridge.py), auto (bridge "
                        "when the CA file is Ed25519, as Firetower's own CAs are; the default)")
    p.add_argument("--topic", help="the topic")
    p.add_argument("--data", action="append",
                   help="the message: one JSON value; give it several times for one PublishBatch")
    p.add_argument("--stream", action="store_true",
                   help="publish every `topic<TAB>json` line of standard input over one PublishStream")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="deadline of a Publish or PublishBatch call, in seconds (default 30)")
    p.add_argument("--proto-dir", type=Path, default=generate.DEFAULT_PROTO_DIR,
                   help="the .proto files the stubs are generated from")
    p.add_argument("--stubs-dir", type=Path, default=generate.DEFAULT_OUT,
                   help="where the generated stubs are kept (default clients/python/build/stubs)")
    args = p.parse_args(argv)
    if args.stream:
        if args.topic is not None or args.data:
            p.error("--stream takes topic and data from standard input, not --topic/--data")
    elif args.topic is None or not args.data:
        p.error("--topic and --data are required (or --stream)")
    if not args.ca_file:
        p.error("--ca-file is required (or FIRETOWER_CA_FILE): every distributor port is TLS")
    return args


def fail(code, message, exit_code):
    print(f"error: {code}: {message}", file=sys.stderr)
    return exit_code


def exit_code_of(status_code):
    import grpc

    if status_code == grpc.StatusCode.INVALID_ARGUMENT:
        return EXIT_USAGE
    if status_code == grpc.StatusCode.UNAVAILABLE:
        return EXIT_UNAVAILABLE
    return 1


def code_name(number):
    import grpc

    for code in grpc.StatusCode:
        if code.value[0] == number:
            return code.name
    return str(number)


def stream_requests(pb, lines, bad):
    """PublishStreamRequests from `topic<TAB>json` lines, numbered by line; a line without a
    tab is reported and skipped (as `firetower publish --stream` does)."""
    for number, line in enumerate(lines, start=1):
        line = line.rstrip("\r\n")
        topic, tab, data = line.partition("\t")
        if not tab:
            if line.strip():
                print(f"line={number} error=bad_line: expected topic<TAB>json", flush=True)
                bad.append(number)
            continue
        yield pb.PublishStreamRequest(id=number, topic=topic, data=data.encode())


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        ca = Path(args.ca_file).read_bytes()
    except OSError as e:
        return fail("usage", f"--ca-file {args.ca_file}: {e.strerror}", EXIT_USAGE)
    try:
        key = (Path(args.api_key_file).read_text().splitlines() or [""])[0].strip()
    except OSError as e:
        return fail("usage", f"--api-key-file {args.api_key_file}: {e.strerror}", EXIT_USAGE)
    if not key:
        return fail("usage", f"--api-key-file {args.api_key_file}: the file holds no key", EXIT_USAGE)

    generate.ensure_stubs(args.proto_dir, args.stubs_dir)
    # gRPC core logs a failed handshake at INFO on standard error; the error printed below
    # says the same once.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    import grpc
    import distributor_pb2 as pb
    import distributor_pb2_grpc as pb_grpc

    use_bridge = args.tls == "bridge" or (args.tls == "auto" and tls_bridge.ca_is_ed25519(ca))
    metadata = [("authorization", f"Bearer {key}")]
    # The certificate names the role, not the host: that name is checked, not the address.
    options = [("grpc.default_authority", args.server_name)]
    if use_bridge:
        try:
            bridge = tls_bridge.TlsBridge(args.distributor, args.ca_file, args.server_name)
        except (ValueError, ssl.SSLError, OSError) as e:
            return fail("usage", f"--distributor/--ca-file: {e}", EXIT_USAGE)
        with bridge:
            with grpc.insecure_channel(bridge.target, options=options) as channel:
                return call(args, pb, pb_grpc.DistributorStub(channel), metadata, bridge)
    credentials = grpc.ssl_channel_credentials(root_certificates=ca)
    options.append(("grpc.ssl_target_name_override", args.server_name))
    with grpc.secure_channel(args.distributor, credentials, options=options) as channel:
        return call(args, pb, pb_grpc.DistributorStub(channel), metadata, None)


def call(args, pb, stub, metadata, bridge):
    """Makes the call(s) the flags ask for; the exit status."""
    import grpc

    try:
        if args.stream:
            bad = []
            published = failed = 0
            replies = stub.PublishStream(stream_requests(pb, sys.stdin, bad), metadata=metadata)
            for reply in replies:
                if reply.WhichOneof("result") == "position":
                    published += 1
                    print(f"line={reply.id} epoch={reply.position.epoch} seq={reply.position.seq}",
                          flush=True)
                else:
                    failed += 1
                    print(f"line={reply.id} error={code_name(reply.error.code)}: {reply.error.message}",
                          flush=True)
            print(f"published {published}, failed {failed}, bad lines {len(bad)}", file=sys.stderr)
            if failed or bad:
                total = published + failed + len(bad)
                return fail("stream", f"{failed + len(bad)} of {total} lines were not published", 1)
        elif len(args.data) == 1:
            reply = stub.Publish(pb.PublishRequest(topic=args.topic, data=args.data[0].encode()),
                                 metadata=metadata, timeout=args.timeout)
            print(f"epoch={reply.epoch} seq={reply.seq}")
        else:
            request = pb.PublishBatchRequest(
                messages=[pb.PublishRequest(topic=args.topic, data=d.encode()) for d in args.data])
            reply = stub.PublishBatch(request, metadata=metadata, timeout=args.timeout)
            for result in reply.results:
                print(f"epoch={result.epoch} seq={result.seq}")
    except grpc.RpcError as e:
        details = e.details()
        if bridge is not None and bridge.last_error and e.code() == grpc.StatusCode.UNAVAILABLE:
            details = f"{details} ({bridge.last_error})"
        elif bridge is None and "HANDSHAKE_FAILURE" in (details or ""):
            details += (" (if the distributor's certificate is Ed25519, as Firetower's own are,"
                        " grpcio's TLS cannot check it: use --tls bridge)")
        return fail(e.code().name, details, exit_code_of(e.code()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
