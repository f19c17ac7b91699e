"""Regenerate the gRPC code from ``proto/topology.proto``: ``python -m migrator.topology.generate``.

Needs grpcio-tools (a dev dependency). The generated ``topology_pb2_grpc.py`` imports its sibling
package-relatively, so it works as ``migrator.topology.proto.topology_pb2_grpc``. Commit the output.
"""

from __future__ import annotations

import importlib.resources
import re
import sys
from pathlib import Path

PROTO_DIR = Path(__file__).parent / "proto"
PROTO = PROTO_DIR / "topology.proto"
# The folder holding the ``migrator`` package: the proto is registered as
# ``migrator/topology/proto/topology.proto``, a name no other proto file will take.
SOURCE_ROOT = Path(__file__).parents[2]


def generate() -> list[Path]:
    try:
        # deferred: grpc_tools is a dev dependency, needed only to regenerate
        from grpc_tools import protoc
    except ImportError:
        raise SystemExit("grpcio-tools is not installed: pip install -e '.[dev]'") from None

    include = str(importlib.resources.files("grpc_tools") / "_proto")
    args = ["grpc_tools.protoc", f"-I{SOURCE_ROOT}", f"-I{include}", f"--python_out={SOURCE_ROOT}",
            f"--grpc_python_out={SOURCE_ROOT}", str(PROTO)]
    if protoc.main(args) != 0:
        raise SystemExit(f"protoc failed on {PROTO}")
    grpc_file = PROTO_DIR / "topology_pb2_grpc.py"
    code = grpc_file.read_text()
    code = re.sub(r"^from migrator\.topology\.proto import topology_pb2 as ", "from . import topology_pb2 as ", code,
                  flags=re.MULTILINE)
    grpc_file.write_text(code)
    return [PROTO_DIR / "topology_pb2.py", grpc_file]


def main() -> None:
    for path in generate():
        sys.stdout.write(f"wrote {path}\n")


if __name__ == "__main__":
    main()
