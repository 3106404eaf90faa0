"""Our proto/ compiled at test time with grpcio-tools, for the tests in tests/compat."""

from __future__ import annotations

import os

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
PROTO_DIR = os.path.join(REPO, "proto")

# Nomad's plugin wire contract as re-typed in proto/ (paths and packages as in Nomad's tree).
NOMAD_PROTOS = [
    "plugins/shared/hclspec/hcl_spec.proto",
    "plugins/shared/structs/proto/attribute.proto",
    "plugins/shared/structs/proto/recoverable_error.proto",
    "plugins/base/proto/base.proto",
    "plugins/drivers/proto/driver.proto",
]


def protoc(*args: str, includes: tuple[str, ...] = ()) -> None:
    """grpc_tools.protoc with proto/ and the well-known types (duration, timestamp) on the
    include path; fails the test with protoc's exit code when it refuses the input."""
    import grpc_tools
    from grpc_tools import protoc as grpc_protoc

    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    argv = ["protoc", f"-I{PROTO_DIR}", *(f"-I{i}" for i in includes), f"-I{well_known}", *args]
    rc = grpc_protoc.main(argv)
    assert rc == 0, f"grpc_tools.protoc failed (exit {rc}) on proto/: {' '.join(argv[1:])}"
