//! Matcher and Rust client against TLS-only Redis with an ACL user (password from a file),
//! mutual TLS, and refusal of plaintext or wrong settings with errors that say what to fix.
//! Real redis-server processes; certificates made by the openssl CLI per test.

mod common;
mod redis_support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use kim_client::{Client, Match, Options};
use kim_redis::{RedisArgs, Target};
use redis_support::*;

fn probe(f: &Fixture, i: usize) -> Match {
    let probes = f.matrix("mated.npy");
    Match {
        descriptor: probes.row(i % probes.rows).to_vec(),
        version: 59,
        label: "faces".into(),
        limit: 3,
        threshold: None,
        luna_request_id: None,
        timeout: Duration::from_secs(10),
    }
}

/// A target built the way the binaries build theirs, from flags and a private environment.
fn target(url: &str, ca: Option<String>, cert: Option<(String, String)>, env: &[(&str, String)]) -> Target {
    let args = RedisArgs {
        url: url.into(),
        ca: ca.map(Into::into),
        cert: cert.as_ref().map(|c| c.0.clone().into()),
        key: cert.map(|c| c.1.into()),
        require_tls: false,
    };
    let env: HashMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    Target::with_env(&args, |k| env.get(k).cloned()).unwrap()
}

fn password_file(dir: &std::path::Path) -> String {
    let p = dir.join("redis-password");
    std::fs::write(&p, format!("{PASSWORD}\n")).unwrap();
    p.to_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_only_redis_with_acl_user() {
    let f = Fixture::new(500);
    let certs = Certs::new(f.path());
    let redis = Server::start(f.path(), Mode::TlsAcl { mutual: false }, Some(&certs), &[]);
    let url = format!("rediss://127.0.0.1:{}", redis.port);
    let creds = vec![("KIM_REDIS_USERNAME", USER.to_string()), ("KIM_REDIS_PASSWORD_FILE", password_file(f.path()))];
    let mut env = creds.clone();
    env.push(("KIM_REDIS_CA", certs.path("ca.crt")));
    env.push(("KIM_REDIS_REQUIRE_TLS", "true".into()));

    let m = start_matcher("m1", f.path(), &f.storage, &url, &env, &[]);
    m.wait_ready();
    let client = Client::connect_target(target(&url, Some(certs.path("ca.crt")), None, &creds), Options::default())
        .await
        .unwrap();
    for i in 0..20 {
        let r = client.match_descriptor(probe(&f, i)).await.unwrap();
        assert_eq!(r.status_code, 201, "{r:?}");
        assert_eq!(r.result.len(), 3);
    }
    assert_eq!(client.read_matching_labels().await.unwrap(), vec!["faces".to_string()]);
    let log = m.proc.log_text();
    assert!(log.contains("tls=true") || log.contains("\"tls\":true"), "matcher reports TLS: {log}");
    assert!(!log.contains(PASSWORD), "password in the matcher log");

    // Plaintext against the TLS port: refused at startup with a hint, not retried forever.
    let plain = format!("redis://127.0.0.1:{}", redis.port);
    let out = matcher_refuses("plain", f.path(), &f.storage, &plain, &creds, &[]);
    assert!(out.contains("rediss://"), "plaintext refusal names the fix: {out}");
    // With TLS required, a plaintext URL is refused before any connection is made.
    let out = matcher_refuses("required", f.path(), &f.storage, &plain, &creds, &["--redis-require-tls"]);
    assert!(out.contains("refusing plaintext Redis URL") && out.contains("rediss://"), "{out}");
    // Wrong password, password in the URL: refused, and the password is not printed.
    let wrong = format!("rediss://{USER}:not-the-password@127.0.0.1:{}", redis.port);
    let out = matcher_refuses("wrongpw", f.path(), &f.storage, &wrong, &[("KIM_REDIS_CA", certs.path("ca.crt"))], &[]);
    assert!(!out.contains("not-the-password"), "password leaked: {out}");
    assert!(out.contains(&format!("rediss://{USER}:***@127.0.0.1")), "redacted URL in the error: {out}");
    assert!(out.to_lowercase().contains("auth") || out.contains("WRONGPASS"), "says authentication failed: {out}");
    // No CA: the self-made server certificate is not trusted.
    let out = matcher_refuses("noca", f.path(), &f.storage, &url, &creds, &[]);
    assert!(out.to_lowercase().contains("certificate"), "names the certificate problem: {out}");
    // No credentials: the default user is disabled.
    let out = matcher_refuses("nocreds", f.path(), &f.storage, &url, &[("KIM_REDIS_CA", certs.path("ca.crt"))], &[]);
    assert!(out.contains("NOAUTH") || out.to_lowercase().contains("auth"), "{out}");
    // The client refuses the same way.
    let e = Client::connect_target(target(&plain, None, None, &creds), Options::default())
        .await
        .err()
        .expect("plaintext client refused");
    assert!(e.to_string().contains("rediss://"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls() {
    let f = Fixture::new(500);
    let certs = Certs::new(f.path());
    let redis = Server::start(f.path(), Mode::TlsAcl { mutual: true }, Some(&certs), &[]);
    let url = format!("rediss://127.0.0.1:{}/0", redis.port);
    let creds = vec![("KIM_REDIS_USERNAME", USER.to_string()), ("KIM_REDIS_PASSWORD", PASSWORD.to_string())];
    let mut env = creds.clone();
    env.extend([("KIM_REDIS_CA", certs.path("ca.crt"))]);
    // Without a client certificate the server ends the handshake.
    let out = matcher_refuses("nocert", f.path(), &f.storage, &url, &env, &[]);
    assert!(out.contains("Redis at rediss://127.0.0.1"), "{out}");
    let no_cert =
        Client::connect_target(target(&url, Some(certs.path("ca.crt")), None, &creds), Options::default()).await;
    assert!(no_cert.is_err(), "client without certificate accepted");

    let m = start_matcher(
        "m1",
        f.path(),
        &f.storage,
        &url,
        &env,
        &["--redis-cert", &certs.path("client.crt"), "--redis-key", &certs.path("client.key")],
    );
    m.wait_ready();
    let t =
        target(&url, Some(certs.path("ca.crt")), Some((certs.path("client.crt"), certs.path("client.key"))), &creds);
    let client = Client::connect_target(t, Options::default()).await.unwrap();
    for i in 0..10 {
        let r = client.match_descriptor(probe(&f, i)).await.unwrap();
        assert_eq!(r.status_code, 201, "{r:?}");
    }
    // The connection really is TLS with a client certificate: Redis lists it as such.
    let t = Arc::new(target(
        &url,
        Some(certs.path("ca.crt")),
        Some((certs.path("client.crt"), certs.path("client.key"))),
        &creds,
    ));
    let mut c = kim_redis::connect_checked(t, Duration::from_secs(5), Duration::ZERO).await.unwrap();
    let who: String = redis::cmd("ACL").arg("WHOAMI").query_async(&mut c).await.unwrap();
    assert_eq!(who, USER);
}
