//! What to connect to and with which secrets: URL, TLS files, credentials.

use std::path::PathBuf;

use redis::{ClientTlsConfig, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, TlsCertificates};

use crate::{redact, Error};

/// Redis flags of every kim binary (env fallbacks so a Pod spec needs no command-line secrets).
#[derive(Debug, Clone, clap::Args)]
pub struct RedisArgs {
    /// Redis URL: redis://host:port/db, rediss://host:port/db (TLS) or
    /// redis+sentinel://host:port,host:port/master/db. Credentials go in KIM_REDIS_USERNAME,
    /// KIM_REDIS_PASSWORD or KIM_REDIS_PASSWORD_FILE, not here.
    #[arg(long = "redis", env = "KIM_REDIS_URL")]
    pub url: String,
    /// PEM CA bundle that signs the Redis server certificate (rediss:// only).
    #[arg(long = "redis-ca", env = "KIM_REDIS_CA")]
    pub ca: Option<PathBuf>,
    /// PEM client certificate for mutual TLS (with --redis-key).
    #[arg(long = "redis-cert", env = "KIM_REDIS_CERT")]
    pub cert: Option<PathBuf>,
    /// PEM private key of --redis-cert.
    #[arg(long = "redis-key", env = "KIM_REDIS_KEY")]
    pub key: Option<PathBuf>,
    /// Refuse plaintext redis:// URLs.
    #[arg(long = "redis-require-tls", env = "KIM_REDIS_REQUIRE_TLS")]
    pub require_tls: bool,
}

impl RedisArgs {
    /// A URL with TLS settings from the environment (for library users without clap).
    pub fn from_env(url: &str) -> RedisArgs {
        let path = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        let require_tls =
            std::env::var("KIM_REDIS_REQUIRE_TLS").is_ok_and(|v| matches!(v.trim(), "1" | "true" | "yes" | "on"));
        RedisArgs {
            url: url.to_string(),
            ca: path("KIM_REDIS_CA"),
            cert: path("KIM_REDIS_CERT"),
            key: path("KIM_REDIS_KEY"),
            require_tls,
        }
    }
}

/// An ACL user name and password, each from `<P>_USERNAME` / `<P>_PASSWORD` or the file named
/// by `<P>_USERNAME_FILE` / `<P>_PASSWORD_FILE` (a mounted Secret; one trailing newline dropped).
#[derive(Clone, Default, PartialEq)]
pub struct Credentials {
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

impl Credentials {
    pub fn load(prefix: &str, env: impl Fn(&str) -> Option<String>) -> Result<Credentials, Error> {
        let one = |what: &str| -> Result<Option<String>, Error> {
            let direct = env(&format!("{prefix}_{what}")).filter(|v| !v.is_empty());
            let file = env(&format!("{prefix}_{what}_FILE")).filter(|v| !v.is_empty());
            match (direct, file) {
                (Some(_), Some(_)) => {
                    Err(Error::Config(format!("set only one of {prefix}_{what} and {prefix}_{what}_FILE")))
                }
                (Some(v), None) => Ok(Some(v)),
                (None, Some(path)) => {
                    let text = std::fs::read_to_string(&path).map_err(|source| Error::File {
                        what: "credentials file",
                        path: path.clone(),
                        source,
                    })?;
                    let text = text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text);
                    Ok(Some(text.to_string()))
                }
                (None, None) => Ok(None),
            }
        };
        Ok(Credentials { username: one("USERNAME")?, password: one("PASSWORD")? })
    }

    fn or(self, other: Credentials) -> Credentials {
        Credentials { username: self.username.or(other.username), password: self.password.or(other.password) }
    }
}

/// Where Redis is.
#[derive(Clone, Debug)]
pub(crate) enum Addr {
    Direct(ConnectionInfo),
    Sentinel { sentinels: Vec<(String, u16)>, master: String, db: i64 },
}

/// A fully resolved configuration: address, TLS material, credentials.
#[derive(Clone)]
pub struct Target {
    pub(crate) addr: Addr,
    pub(crate) tls: bool,
    pub(crate) certs: Option<TlsCertificates>,
    pub(crate) creds: Credentials,
    pub(crate) sentinel_creds: Credentials,
    shown: String,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Target({})", self.shown)
    }
}

impl Target {
    /// From flags plus `KIM_REDIS_*` credentials in the process environment.
    pub fn new(args: &RedisArgs) -> Result<Target, Error> {
        Target::with_env(args, |k| std::env::var(k).ok())
    }

    /// A URL with every other setting from the environment.
    pub fn from_env(url: &str) -> Result<Target, Error> {
        Target::new(&RedisArgs::from_env(url))
    }

    pub fn with_env(args: &RedisArgs, env: impl Fn(&str) -> Option<String>) -> Result<Target, Error> {
        let shown = redact(&args.url);
        let bad = |why: String| Error::Url { url: shown.clone(), why };
        let (scheme, rest) = args.url.split_once("://").ok_or_else(|| bad("expected scheme://".into()))?;
        let tls = match scheme {
            "redis" | "redis+sentinel" => false,
            "rediss" | "rediss+sentinel" => true,
            other => {
                return Err(bad(format!(
                    "unknown scheme {other:?}; use redis://, rediss://, redis+sentinel:// or rediss+sentinel://"
                )))
            }
        };
        if args.require_tls && !tls {
            return Err(Error::PlaintextRefused(shown));
        }
        let creds = Credentials::load("KIM_REDIS", &env)?;
        let sentinel_creds = Credentials::load("KIM_REDIS_SENTINEL", &env)?;
        let (addr, url_creds) = if scheme.ends_with("+sentinel") {
            parse_sentinel(rest).map_err(bad)?
        } else {
            let info = args.url.as_str().into_connection_info().map_err(|e| bad(e.to_string()))?;
            let c = Credentials { username: info.redis.username.clone(), password: info.redis.password.clone() };
            (Addr::Direct(info), c)
        };
        let certs = load_certs(args, tls)?;
        Ok(Target { addr, tls, certs, creds: creds.or(url_creds), sentinel_creds, shown })
    }

    /// For callers holding the secrets in memory (the operator reads Kubernetes Secrets):
    /// credentials override the URL's, PEM bytes stand in for the TLS files.
    pub fn from_parts(
        url: &str,
        creds: Credentials,
        ca: Option<Vec<u8>>,
        client: Option<(Vec<u8>, Vec<u8>)>,
    ) -> Result<Target, Error> {
        let mut t = Target::with_env(
            &RedisArgs { url: url.into(), ca: None, cert: None, key: None, require_tls: false },
            |_| None,
        )?;
        t.creds = creds.or(t.creds);
        if ca.is_some() || client.is_some() {
            if !t.tls {
                return Err(Error::Config(format!("TLS settings need a rediss:// URL, got {}", t.shown)));
            }
            let client_tls = client.map(|(client_cert, client_key)| ClientTlsConfig { client_cert, client_key });
            t.certs = Some(TlsCertificates { client_tls, root_cert: ca });
        }
        Ok(t)
    }

    pub fn is_tls(&self) -> bool {
        self.tls
    }

    pub fn is_sentinel(&self) -> bool {
        matches!(self.addr, Addr::Sentinel { .. })
    }

    /// `host:port` of a direct TCP target, the form other tools (KEDA's scalers) take; None for
    /// Sentinel and Unix-socket targets.
    pub fn host_port(&self) -> Option<String> {
        let Addr::Direct(info) = &self.addr else { return None };
        match &info.addr {
            redis::ConnectionAddr::Tcp(host, port) | redis::ConnectionAddr::TcpTls { host, port, .. } => {
                Some(format!("{host}:{port}"))
            }
            _ => None,
        }
    }

    /// A client for one host, with this target's TLS material and the given credentials.
    pub(crate) fn client_for(
        &self,
        host: &str,
        port: u16,
        db: i64,
        creds: &Credentials,
    ) -> redis::RedisResult<redis::Client> {
        let addr = if self.tls {
            ConnectionAddr::TcpTls { host: host.into(), port, insecure: false, tls_params: None }
        } else {
            ConnectionAddr::Tcp(host.into(), port)
        };
        let mut info = ConnectionInfo { addr, redis: Default::default() };
        info.redis.db = db;
        info.redis.username = creds.username.clone();
        info.redis.password = creds.password.clone();
        self.build(info)
    }

    pub(crate) fn build(&self, info: ConnectionInfo) -> redis::RedisResult<redis::Client> {
        install_crypto();
        match &self.certs {
            Some(c) => redis::Client::build_with_tls(info, c.clone()),
            None => redis::Client::open(info),
        }
    }

    /// The direct address with credentials applied (None for Sentinel targets).
    pub(crate) fn direct(&self) -> Option<ConnectionInfo> {
        let Addr::Direct(info) = &self.addr else { return None };
        let mut info = info.clone();
        info.redis.username = self.creds.username.clone();
        info.redis.password = self.creds.password.clone();
        Some(info)
    }
}

/// rustls needs one process-wide crypto provider; ring is the one the workspace already builds.
fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// `[user:pass@]host:port,host:port/master[/db]` (port defaults to 26379).
fn parse_sentinel(rest: &str) -> Result<(Addr, Credentials), String> {
    let (userinfo, rest) = match rest.rfind('@') {
        Some(i) => (Some(&rest[..i]), &rest[i + 1..]),
        None => (None, rest),
    };
    let creds = match userinfo {
        None => Credentials::default(),
        Some(u) => match u.split_once(':') {
            Some((user, pass)) => Credentials {
                username: Some(percent_decode(user)?).filter(|u| !u.is_empty()),
                password: Some(percent_decode(pass)?),
            },
            None => Credentials { username: None, password: Some(percent_decode(u)?) },
        },
    };
    let (hosts, path) = rest.split_once('/').ok_or("expected host:port,.../<master name>[/db]")?;
    let mut parts = path.split('/');
    let master =
        parts.next().filter(|m| !m.is_empty()).ok_or("the master name is missing after the hosts")?.to_string();
    let db = match parts.next().filter(|d| !d.is_empty()) {
        Some(d) => d.parse::<i64>().map_err(|_| format!("database {d:?} is not a number"))?,
        None => 0,
    };
    if parts.next().is_some() {
        return Err("expected .../<master name>[/db], found more path segments".into());
    }
    let mut sentinels = Vec::new();
    for h in hosts.split(',') {
        let (host, port) = match h.rsplit_once(':') {
            Some((host, port)) => (host, port.parse::<u16>().map_err(|_| format!("bad port in {h:?}"))?),
            None => (h, 26379),
        };
        if host.is_empty() {
            return Err(format!("empty host in {hosts:?}"));
        }
        sentinels.push((host.trim_start_matches('[').trim_end_matches(']').to_string(), port));
    }
    Ok((Addr::Sentinel { sentinels, master, db }, creds))
}

fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("bad %-escape in the userinfo")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "userinfo is not UTF-8".into())
}

fn load_certs(args: &RedisArgs, tls: bool) -> Result<Option<TlsCertificates>, Error> {
    if args.ca.is_none() && args.cert.is_none() && args.key.is_none() {
        return Ok(None);
    }
    if !tls {
        return Err(Error::Config(
            "--redis-ca, --redis-cert and --redis-key (KIM_REDIS_CA/_CERT/_KEY) need a rediss:// URL".into(),
        ));
    }
    let read = |what: &'static str, p: &PathBuf| {
        std::fs::read(p).map_err(|source| Error::File { what, path: p.display().to_string(), source })
    };
    let client_tls = match (&args.cert, &args.key) {
        (Some(c), Some(k)) => {
            Some(ClientTlsConfig { client_cert: read("client certificate", c)?, client_key: read("client key", k)? })
        }
        (None, None) => None,
        _ => return Err(Error::Config("--redis-cert and --redis-key go together".into())),
    };
    let root_cert = args.ca.as_ref().map(|p| read("CA bundle", p)).transpose()?;
    Ok(Some(TlsCertificates { client_tls, root_cert }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn args(url: &str) -> RedisArgs {
        RedisArgs { url: url.into(), ca: None, cert: None, key: None, require_tls: false }
    }

    fn target(url: &str, env: &[(&str, &str)]) -> Result<Target, Error> {
        let env: HashMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Target::with_env(&args(url), |k| env.get(k).cloned())
    }

    #[test]
    fn credentials_from_env_and_files_override_the_url() {
        let t = target("redis://u:urlpass@h:1/2", &[]).unwrap();
        assert_eq!(t.direct().unwrap().redis.password.as_deref(), Some("urlpass"));
        assert_eq!(t.to_string(), "redis://u:***@h:1/2");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "from-file\n").unwrap();
        let t =
            target("redis://h:1/2", &[("KIM_REDIS_USERNAME", "kim"), ("KIM_REDIS_PASSWORD_FILE", f.to_str().unwrap())])
                .unwrap();
        let info = t.direct().unwrap();
        assert_eq!(
            (info.redis.username.as_deref(), info.redis.password.as_deref(), info.redis.db),
            (Some("kim"), Some("from-file"), 2)
        );
        let e = target("redis://h:1", &[("KIM_REDIS_PASSWORD", "a"), ("KIM_REDIS_PASSWORD_FILE", "/x")]).unwrap_err();
        assert!(e.to_string().contains("only one of"), "{e}");
        let e = target("redis://h:1", &[("KIM_REDIS_PASSWORD_FILE", "/nonexistent/pw")]).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/pw"), "{e}");
        assert!(!format!("{:?}", t.creds).contains("from-file"));
    }

    #[test]
    fn sentinel_urls() {
        let t = target("redis+sentinel://:p%40ss@a:26380,b,[::1]:5/mymaster/3", &[]).unwrap();
        let Addr::Sentinel { sentinels, master, db } = &t.addr else { panic!() };
        assert_eq!(sentinels, &[("a".to_string(), 26380), ("b".to_string(), 26379), ("::1".to_string(), 5)]);
        assert_eq!((master.as_str(), *db), ("mymaster", 3));
        assert_eq!(t.creds.password.as_deref(), Some("p@ss"));
        assert!(!t.is_tls() && t.is_sentinel());
        assert!(target("rediss+sentinel://a:1/m", &[]).unwrap().is_tls());
        for bad in [
            "redis+sentinel://a:1",
            "redis+sentinel://a:1/",
            "redis+sentinel://a:x/m",
            "redis+sentinel://a:1/m/zero",
            "redis+sentinel://,a:1/m",
        ] {
            assert!(matches!(target(bad, &[]), Err(Error::Url { .. })), "{bad}");
        }
    }

    #[test]
    fn errors_never_show_passwords() {
        for url in ["http://u:hunter2@h", "redis://u:hunter2@h:notaport", "redis+sentinel://u:hunter2@h:1"] {
            let e = target(url, &[]).unwrap_err().to_string();
            assert!(!e.contains("hunter2") && e.contains("***"), "{e}");
        }
    }

    #[test]
    fn parts_from_memory() {
        let creds = Credentials { username: Some("kim".into()), password: Some("pw".into()) };
        let t = Target::from_parts("redis://:old@h:1/4", creds.clone(), None, None).unwrap();
        assert_eq!(t.direct().unwrap().redis.password.as_deref(), Some("pw"));
        assert_eq!(t.direct().unwrap().redis.db, 4);
        let e = Target::from_parts("redis://h:1", creds.clone(), Some(b"pem".to_vec()), None).unwrap_err();
        assert!(e.to_string().contains("rediss://"), "{e}");
        assert!(Target::from_parts("rediss://h:1", creds, Some(b"pem".to_vec()), None).unwrap().certs.is_some());
    }

    #[test]
    fn tls_rules() {
        let mut a = args("redis://h:1");
        a.require_tls = true;
        let e = Target::with_env(&a, |_| None).unwrap_err();
        assert!(matches!(e, Error::PlaintextRefused(_)) && e.to_string().contains("rediss://"), "{e}");
        a.require_tls = false;
        a.ca = Some("/nonexistent/ca.pem".into());
        assert!(Target::with_env(&a, |_| None).unwrap_err().to_string().contains("need a rediss:// URL"));
        a.url = "rediss://h:1".into();
        assert!(Target::with_env(&a, |_| None).unwrap_err().to_string().contains("/nonexistent/ca.pem"));
        a.ca = None;
        a.cert = Some("/c".into());
        assert!(Target::with_env(&a, |_| None).unwrap_err().to_string().contains("go together"));
    }
}
