//! gRPC TLS and mutual TLS on the online path: agents, vectorizer and gateway serving
//! mTLS only, the gateway dialling them with a client certificate, `index --source agents://`
//! over TLS, and every server refusing plaintext, certificate-less and foreign-CA clients.

mod common;
mod online_support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use kim_proto::payload::v1::{insert, object, search};
use kim_proto::vald::v1::filter_client::FilterClient;
use kim_proto::vald::v1::object_client::ObjectClient;
use online_support::Server;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

const DIMS: usize = 64;

/// PEM files of one test PKI.
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    vec_cert: PathBuf,
    vec_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    /// A client certificate from a CA the servers do not trust.
    rogue_cert: PathBuf,
    rogue_key: PathBuf,
}

fn ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    let pem = p.self_signed(&key).unwrap().pem();
    (pem, Issuer::new(p, key))
}

fn leaf(issuer: &Issuer<'static, KeyPair>, cn: &str, sans: &[&str]) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    (p.signed_by(&key, issuer).unwrap().pem(), key.serialize_pem())
}

fn pki(dir: &Path) -> Pki {
    let (ca_pem, issuer) = ca("kim test CA");
    // The servers' name is the headless Service's, not the dialled IP: the gateway checks it
    // with --tls-server-name.
    let (sc, sk) = leaf(&issuer, "kim-agents", &["kim-agents.test.svc", "localhost"]);
    // The vectorizer is checked against the address it is dialled by.
    let (vc, vk) = leaf(&issuer, "vectorizer", &["127.0.0.1"]);
    let (cc, ck) = leaf(&issuer, "kim-gateway", &["kim-gateway"]);
    let (_, rogue) = ca("someone else's CA");
    let (rc, rk) = leaf(&rogue, "intruder", &["intruder"]);
    let w = |name: &str, pem: &str| {
        let p = dir.join(name);
        std::fs::write(&p, pem).unwrap();
        p
    };
    Pki {
        ca: w("ca.crt", &ca_pem),
        server_cert: w("server.crt", &sc),
        server_key: w("server.key", &sk),
        vec_cert: w("vectorizer.crt", &vc),
        vec_key: w("vectorizer.key", &vk),
        client_cert: w("client.crt", &cc),
        client_key: w("client.key", &ck),
        rogue_cert: w("rogue.crt", &rc),
        rogue_key: w("rogue.key", &rk),
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

const AGENTS: &str = "kim-agents.test.svc";

/// A TLS channel to a server on loopback whose certificate is checked against `name`.
async fn tls_channel(port: u16, name: &str, ca: &Path, identity: Option<(&Path, &Path)>) -> Result<Channel, String> {
    let mut c =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap())).domain_name(name);
    if let Some((cert, key)) = identity {
        c = c.identity(Identity::from_pem(std::fs::read(cert).unwrap(), std::fs::read(key).unwrap()));
    }
    let ep = Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(c)
        .unwrap()
        .connect_timeout(Duration::from_secs(5));
    ep.connect().await.map_err(|e| format!("{e:?}"))
}

/// Whether a call on `ch` gets an answer from the service (any status the service itself
/// gives counts; a connection or handshake failure does not).
async fn served(ch: Result<Channel, String>) -> Result<(), String> {
    let ch = ch?;
    let req = tonic::Request::new(object::Id { id: "probe".into() });
    match tokio::time::timeout(Duration::from_secs(5), ObjectClient::new(ch).exists(req)).await {
        Err(_) => Err("timed out".into()),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(st)) if st.code() == tonic::Code::NotFound || st.code() == tonic::Code::Unimplemented => Ok(()),
        Ok(Err(st)) => Err(format!("{:?} {}", st.code(), st.message())),
    }
}

async fn plaintext(port: u16) -> Result<Channel, String> {
    Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_only_online_path_serves_and_refuses_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let k = pki(dir.path());
    let mtls = ["--tls-cert", s(&k.server_cert), "--tls-key", s(&k.server_key), "--tls-client-ca", s(&k.ca)];
    let agents: Vec<Server> =
        (1..=2).map(|i| Server::agent(&format!("agent{i}"), dir.path(), DIMS, "cosine", &mtls)).collect();
    let vargs = [
        "vectorize",
        "--dimensions",
        "64",
        "--tls-cert",
        s(&k.vec_cert),
        "--tls-key",
        s(&k.vec_key),
        "--tls-client-ca",
        s(&k.ca),
    ];
    let vec = Server::start("vectorizer", dir.path(), &vargs);
    let list = agents.iter().map(|a| a.addr()).collect::<Vec<_>>().join(",");
    let mut gargs = vec!["filter", "--agents", &list, "--replicas", "2"];
    let vaddr = vec.addr();
    gargs.extend(["--vectorizer", &vaddr]);
    gargs.extend(mtls);
    gargs.extend([
        "--tls-ca",
        s(&k.ca),
        "--tls-client-cert",
        s(&k.client_cert),
        "--tls-client-key",
        s(&k.client_key),
        "--tls-server-name",
        AGENTS,
    ]);
    let gw = Server::start("gateway", dir.path(), &gargs);

    // The whole path over mTLS: client → gateway → vectorizer and agents.
    let ch =
        tls_channel(gw.port, AGENTS, &k.ca, Some((&k.client_cert, &k.client_key))).await.expect("mTLS client connects");
    for i in 0..20 {
        let req = insert::ObjectRequest {
            object: Some(object::Blob {
                id: format!("doc{i}"),
                object: format!("document {i} about subject {}", i % 4).into_bytes(),
            }),
            config: None,
            vectorizer: None,
        };
        let loc = FilterClient::new(ch.clone())
            .insert_object(req)
            .await
            .unwrap_or_else(|e| panic!("insert over mTLS: {e:?}\n{}", gw.log()));
        assert_eq!(loc.into_inner().ips.len(), 2);
    }
    let req = search::ObjectRequest {
        object: b"document 7 about subject 3".to_vec(),
        config: Some(search::Config { num: 3, ..Default::default() }),
        vectorizer: None,
    };
    let r = FilterClient::new(ch.clone()).search_object(req).await.unwrap().into_inner();
    assert_eq!(r.results[0].id, "doc7", "{r:?}");
    assert!(gw.log().contains("grpc=\"mtls\""), "{}", gw.log());

    // Every server refuses plaintext, TLS without a client certificate, and a certificate
    // from a CA it does not trust.
    for (name, port, cn) in
        [("gateway", gw.port, AGENTS), ("agent", agents[0].port, AGENTS), ("vectorizer", vec.port, "127.0.0.1")]
    {
        for (what, ch) in [
            ("plaintext", plaintext(port).await),
            ("a client without a certificate", tls_channel(port, cn, &k.ca, None).await),
            ("a foreign certificate", tls_channel(port, cn, &k.ca, Some((&k.rogue_cert, &k.rogue_key))).await),
        ] {
            let err = served(ch).await.expect_err(&format!("{name} answered {what}"));
            eprintln!("{name} refuses {what}: {err}");
        }
        served(tls_channel(port, cn, &k.ca, Some((&k.client_cert, &k.client_key))).await)
            .await
            .unwrap_or_else(|e| panic!("{name} refused a good client: {e}"));
    }

    // A gateway whose backend TLS is missing cannot reach mTLS agents: the write fails with
    // a clear UNAVAILABLE instead of hanging or going through in plaintext.
    let plain_gw = Server::start(
        "gateway-plain-backends",
        dir.path(),
        &["filter", "--agents", &list, "--vectorizer", &vaddr, "--call-timeout", "3s"],
    );
    let pch = plain_gw.channel().await;
    let req = insert::ObjectRequest {
        object: Some(object::Blob { id: "x".into(), object: b"x y z".to_vec() }),
        config: None,
        vectorizer: None,
    };
    let err = FilterClient::new(pch).insert_object(req).await.unwrap_err();
    assert!(
        matches!(err.code(), tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Internal),
        "{err:?}"
    );

    // `index --source agents://` over mTLS reads every object; without TLS it fails clearly.
    let storage = dir.path().join("storage");
    let source = format!("agents://{list}");
    let base = [
        "index",
        "--label",
        "tls",
        "--storage",
        s(&storage),
        "--source",
        &source,
        "--version",
        "1",
        "--dimensions",
        "64",
        "--encoding",
        "f32",
        "--threads",
        "1",
    ];
    let mut with_tls = base.to_vec();
    with_tls.extend([
        "--tls-ca",
        s(&k.ca),
        "--tls-client-cert",
        s(&k.client_cert),
        "--tls-client-key",
        s(&k.client_key),
        "--tls-server-name",
        AGENTS,
    ]);
    let out = worker(&with_tls);
    let summary: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(summary["vectors"], 20, "{summary}");
    let err = worker_fails(&base);
    assert!(err.contains("agent 127.0.0.1:"), "{err}");

    // A server given a certificate file that is missing exits with the path in the error.
    let bad = worker_fails(&[
        "vectorize",
        "--listen",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
        "--tls-cert",
        "/nonexistent/tls.crt",
        "--tls-key",
        s(&k.server_key),
    ]);
    assert!(bad.contains("/nonexistent/tls.crt"), "{bad}");
}
