#!/usr/bin/env python3
"""Generates the Python gRPC stubs from the repository's .proto files with grpcio-tools.

    python generate.py [--proto-dir ../../proto/proto] [--out build/stubs]

Writes `<name>_pb2.py` and `<name>_pb2_grpc.py` for every `*.proto` in the proto directory
into the output directory (clients/python/build/stubs by default, which .gitignore keeps
out of git), with a stamp of the protos and of the grpcio-tools version: `ensure_stubs`
(what publish.py calls) regenerates only when either changed. Nothing generated is
committed; no stub is written by hand.
"""

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_PROTO_DIR = HERE.parent.parent / "proto" / "proto"
DEFAULT_OUT = HERE / "build" / "stubs"
STAMP = "STAMP"


def _stamp(proto_dir: Path, protos: list) -> str:
    import grpc_tools

    digest = hashlib.sha256()
    version = getattr(grpc_tools, "__version__", None)
    if version is None:
        from importlib.metadata import version as dist_version

        version = dist_version("grpcio-tools")
    digest.update(f"grpcio-tools {version}\n".encode())
    for proto in protos:
        digest.update(proto.name.encode() + b"\0")
        digest.update(proto.read_bytes())
    return digest.hexdigest()


def generate(proto_dir: Path = DEFAULT_PROTO_DIR, out: Path = DEFAULT_OUT) -> Path:
    """Runs protoc (grpcio-tools' bundled one) on every .proto of proto_dir into out."""
    from grpc_tools import protoc

    proto_dir = proto_dir.resolve()
    protos = sorted(proto_dir.glob("*.proto"))
    if not protos:
        raise SystemExit(f"error: no .proto files in {proto_dir}")
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    # Into a fresh directory first, then moved into place: a half-written stub directory is
    # never seen, also when two runs generate at once.
    work = Path(tempfile.mkdtemp(prefix=".stubs-", dir=out.parent))
    try:
        well_known = Path(protoc.__file__).resolve().parent / "_proto"
        args = [
            "grpc_tools.protoc",
            f"--proto_path={proto_dir}",
            f"--proto_path={well_known}",
            f"--python_out={work}",
            f"--grpc_python_out={work}",
            *[str(p) for p in protos],
        ]
        code = protoc.main(args)
        if code != 0:
            raise SystemExit(f"error: protoc failed ({code}) on {proto_dir}")
        (work / STAMP).write_text(_stamp(proto_dir, protos) + "\n")
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=".old-", dir=out.parent))
            os.replace(out, old / "stubs")
        os.replace(work, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def ensure_stubs(proto_dir: Path = DEFAULT_PROTO_DIR, out: Path = DEFAULT_OUT) -> Path:
    """The stub directory, (re)generated when missing or made from other protos or tools;
    added to sys.path (the generated _grpc modules import their _pb2 by top-level name)."""
    proto_dir = proto_dir.resolve()
    protos = sorted(proto_dir.glob("*.proto"))
    stamp_file = out / STAMP
    if not protos or not stamp_file.exists() or stamp_file.read_text().strip() != _stamp(proto_dir, protos):
        generate(proto_dir, out)
    path = str(out.resolve())
    if path not in sys.path:
        sys.path.insert(0, path)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proto-dir", type=Path, default=DEFAULT_PROTO_DIR,
                        help="the .proto files (default: the repository's proto/proto)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="where the stubs go (default: clients/python/build/stubs)")
    args = parser.parse_args()
    out = generate(args.proto_dir, args.out)
    names = sorted(p.name for p in out.glob("*.py"))
    print(f"stubs: {out} ({', '.join(names)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
