"""kim's proto/ against the descriptors vald-client-python 1.8.0 embeds: every message kim
defines must have the same fields (number, name, type, cardinality, oneof) as Vald's, and
every RPC kim defines the same request/response types and streaming as Vald's."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from conftest import REPO_ROOT
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_tools import protoc

PROTO = REPO_ROOT / "proto"
VALD_MODULES = [
    "vald.v1.payload.payload_pb2",
    "vald.v1.vald.filter_pb2",
    "vald.v1.vald.insert_pb2",
    "vald.v1.vald.search_pb2",
    "vald.v1.vald.update_pb2",
    "vald.v1.vald.upsert_pb2",
    "vald.v1.vald.remove_pb2",
    "vald.v1.vald.object_pb2",
    "vald.v1.vald.index_pb2",
    "vald.v1.vald.flush_pb2",
    "vald.v1.agent.core.agent_pb2",
    "vald.v1.filter.ingress.ingress_filter_pb2",
    "vald.v1.filter.egress.egress_filter_pb2",
    "google.rpc.status_pb2",
]


@pytest.fixture(scope="module")
def kim(tmp_path_factory) -> descriptor_pb2.FileDescriptorSet:
    out = tmp_path_factory.mktemp("fds") / "kim.pb"
    files = sorted(str(p.relative_to(PROTO)) for p in PROTO.rglob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    assert protoc.main(["protoc", f"-I{PROTO}", f"-I{include}", f"--descriptor_set_out={out}", *files]) == 0
    return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


@pytest.fixture(scope="module")
def vald() -> descriptor_pool.DescriptorPool:
    for m in VALD_MODULES:
        importlib.import_module(m)
    return descriptor_pool.Default()


def messages(prefix: str, msgs):
    for m in msgs:
        name = f"{prefix}.{m.name}"
        if not m.options.map_entry:
            yield name, m
            yield from messages(name, m.nested_type)


def test_every_kim_message_matches_vald(kim, vald):
    checked = 0
    for f in kim.file:
        for full, m in messages(f.package, f.message_type):
            theirs = vald.FindMessageTypeByName(full)
            for fld in m.field:
                t = theirs.fields_by_number.get(fld.number)
                assert t is not None, f"{full}: field {fld.number} ({fld.name}) is not in Vald"
                assert (t.name, t.type, t.is_repeated) == (fld.name, fld.type, fld.label == fld.LABEL_REPEATED), (
                    f"{full}.{fld.name}"
                )
                if fld.type_name:
                    assert ("." + (t.message_type or t.enum_type).full_name) == fld.type_name, (
                        f"{full}.{fld.name}: {fld.type_name}"
                    )
                oneof = m.oneof_decl[fld.oneof_index].name if fld.HasField("oneof_index") else None
                assert (t.containing_oneof.name if t.containing_oneof else None) == oneof, f"{full}.{fld.name} oneof"
                checked += 1
    assert checked > 80


def test_every_kim_rpc_matches_vald(kim, vald):
    rpcs = 0
    for f in kim.file:
        for s in f.service:
            theirs = vald.FindServiceByName(f"{f.package}.{s.name}")
            for m in s.method:
                t = theirs.methods_by_name[m.name]
                assert ("." + t.input_type.full_name, "." + t.output_type.full_name) == (m.input_type, m.output_type), (
                    f"{s.name}.{m.name}"
                )
                assert (t.client_streaming, t.server_streaming) == (m.client_streaming, m.server_streaming), (
                    f"{s.name}.{m.name}"
                )
                rpcs += 1
    assert (
        rpcs == 12 + 3 + 4 + 3 + 4 + 12 + 5 + 5 + 1 + 3 + 2 + 2
    )  # Filter; Insert/Update/Upsert/Remove; Search; Object; Index; Flush; Agent; ingress; egress
