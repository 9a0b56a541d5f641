"""The protos shipped for clients besides tiermesh's own (protos/grpc, protos/google)
compile, and describe the same messages and methods as the Python packages the servers
use, so a client built from them speaks to tiermesh exactly."""

from __future__ import annotations

from pathlib import Path

import grpc_tools
from google.protobuf import descriptor_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2
from grpc_tools import protoc

PROTOS = Path("protos")
SHIPPED = ["grpc/health/v1/health.proto", "google/rpc/status.proto", "google/rpc/error_details.proto"]


def compiled(tmp_path: Path) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    out = tmp_path / "set.binpb"
    includes = Path(grpc_tools.__file__).parent / "_proto"
    code = protoc.main(["protoc", f"-I{PROTOS}", f"-I{includes}", f"--descriptor_set_out={out}", *SHIPPED])
    assert code == 0, "the shipped protos do not compile"
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    return {f.name: f for f in files}


def shape(file: descriptor_pb2.FileDescriptorProto) -> object:
    messages = {
        m.name: sorted((f.name, f.number, f.type, f.type_name.lstrip(".")) for f in m.field)
        for m in file.message_type
    }
    services = {
        s.name: sorted(
            (m.name, m.input_type.lstrip("."), m.output_type.lstrip("."), m.server_streaming)
            for m in s.method
        )
        for s in file.service
    }
    return file.package, messages, services


def test_shipped_protos_match_what_the_servers_speak(tmp_path: Path) -> None:
    files = compiled(tmp_path)
    for shipped, module in zip(SHIPPED, (health_pb2, status_pb2, error_details_pb2), strict=True):
        installed = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(installed)
        assert shape(files[shipped]) == shape(installed), shipped
