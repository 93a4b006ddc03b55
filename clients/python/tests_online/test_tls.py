"""vald-client-python against an mTLS-only gateway (agents and vectorizer mTLS-only too):
`grpc.secure_channel` with the CA and a client certificate works; a plaintext channel and a TLS
channel without a client certificate get no answer. Certificates come from the openssl CLI
(installed by scripts/deps.sh), a fresh CA per run."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from conftest import Procs
from vald.v1.payload import payload_pb2 as pb
from vald.v1.vald import filter_pb2_grpc

DIMS = 64
AGENTS = "kim-agents.test.svc"


def _openssl(*args: str, cwd: Path) -> None:
    out = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr


def _pki(d: Path) -> dict[str, Path]:
    """CA, one server certificate (the agents' service name, localhost, 127.0.0.1) and one
    client certificate, P-256 keys, valid for a day."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    _openssl(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "1", "-subj", "/CN=kim test CA", cwd=d
    )
    for name, san in [("server", f"DNS:{AGENTS},DNS:localhost,IP:127.0.0.1"), ("client", "DNS:kim-client")]:
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
        (d / f"{name}.ext").write_text(f"subjectAltName={san}\n")
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.crt",
            "-days",
            "1",
            "-extfile",
            f"{name}.ext",
            cwd=d,
        )
    return {n: d / n for n in ["ca.crt", "server.crt", "server.key", "client.crt", "client.key"]}


@pytest.fixture(scope="module")
def tls_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    d = tmp_path_factory.mktemp("tls")
    k = _pki(d)
    mtls = ["--tls-cert", str(k["server.crt"]), "--tls-key", str(k["server.key"]), "--tls-client-ca", str(k["ca.crt"])]
    client = [
        "--tls-ca",
        str(k["ca.crt"]),
        "--tls-client-cert",
        str(k["client.crt"]),
        "--tls-client-key",
        str(k["client.key"]),
    ]
    procs = Procs(d)
    try:
        agents = [
            procs.start(f"agent{i}", "agent", "--data", str(d / f"agent{i}"), "--dimensions", str(DIMS), *mtls)
            for i in range(2)
        ]
        vec = procs.start("vectorizer", "vectorize", "--dimensions", str(DIMS), *mtls)
        gw = procs.start(
            "gateway",
            "filter",
            "--agents",
            ",".join(a.addr for a in agents),
            "--replicas",
            "2",
            "--vectorizer",
            vec.addr,
            *mtls,
            *client,
            "--tls-server-name",
            AGENTS,
        )
        yield gw, k
    finally:
        procs.stop_all()


def _creds(k: dict[str, Path], with_client_cert: bool) -> grpc.ChannelCredentials:
    if not with_client_cert:
        return grpc.ssl_channel_credentials(root_certificates=k["ca.crt"].read_bytes())
    return grpc.ssl_channel_credentials(
        root_certificates=k["ca.crt"].read_bytes(),
        private_key=k["client.key"].read_bytes(),
        certificate_chain=k["client.crt"].read_bytes(),
    )


def _insert(ch: grpc.Channel, id: str, text: str) -> pb.Object.Location:
    req = pb.Insert.ObjectRequest(object=pb.Object.Blob(id=id, object=text.encode()), config=pb.Insert.Config())
    return filter_pb2_grpc.FilterStub(ch).InsertObject(req, timeout=10)


def test_vald_client_over_mtls(tls_gateway):
    gw, k = tls_gateway
    with grpc.secure_channel(gw.addr, _creds(k, True), options=[("grpc.ssl_target_name_override", AGENTS)]) as ch:
        loc = _insert(ch, "tls-1", "encrypted all the way to the agents")
        assert loc.uuid == "tls-1" and len(loc.ips) == 2
        _insert(ch, "tls-2", "something else entirely about rivers")
        req = pb.Search.ObjectRequest(object=b"encrypted all the way to the agents", config=pb.Search.Config(num=2))
        res = filter_pb2_grpc.FilterStub(ch).SearchObject(req, timeout=10)
        assert res.results[0].id == "tls-1"
        assert res.results[0].distance == pytest.approx(0.0, abs=1e-5)


def test_plaintext_and_certificate_less_clients_get_no_answer(tls_gateway):
    gw, k = tls_gateway
    with grpc.insecure_channel(gw.addr) as ch:
        with pytest.raises(grpc.RpcError) as e:
            _insert(ch, "plain", "should never be stored")
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    with grpc.secure_channel(gw.addr, _creds(k, False), options=[("grpc.ssl_target_name_override", AGENTS)]) as ch:
        with pytest.raises(grpc.RpcError) as e:
            _insert(ch, "no-cert", "should never be stored")
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
