//! TLS for the online path's gRPC, from PEM files (the operator mounts them from Secrets).
//! A server given a certificate serves TLS only; given a client CA too, it also requires a
//! client certificate that CA signed (mutual TLS). A client given a CA dials `https://` and
//! verifies the backend against that CA only (no system roots: every backend is ours).

use std::path::{Path, PathBuf};

use clap::Args;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {what} {path}: {source}")]
    Read { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Config(String),
}

/// Server side of `agent`, `filter` and `vectorize`.
#[derive(Debug, Clone, Default, Args)]
pub struct ServerTls {
    /// PEM certificate chain of the gRPC server; with --tls-key the port speaks TLS only.
    #[arg(long, env = "KIM_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "KIM_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle: clients must present a certificate it signed (mutual TLS).
    #[arg(long, env = "KIM_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
}

/// Client side: the gateway's calls to agents, vectorizers and filters, and `index
/// --source agents://`.
#[derive(Debug, Clone, Default, Args)]
pub struct ClientTls {
    /// PEM CA bundle the backends' certificates must chain to; set, backends are dialled
    /// with TLS only.
    #[arg(long, env = "KIM_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate presented to backends that require mutual TLS.
    #[arg(long, env = "KIM_TLS_CLIENT_CERT", requires = "tls_client_key", requires = "tls_ca")]
    pub tls_client_cert: Option<PathBuf>,
    /// PEM private key of --tls-client-cert.
    #[arg(long, env = "KIM_TLS_CLIENT_KEY", requires = "tls_client_cert")]
    pub tls_client_key: Option<PathBuf>,
    /// Name the agents' certificates are checked against instead of the dialled host (agents
    /// found by IP through a headless Service share one DNS name). Vectorizers and filters
    /// are checked against the host they are dialled by.
    #[arg(long, env = "KIM_TLS_SERVER_NAME", requires = "tls_ca")]
    pub tls_server_name: Option<String>,
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { what, path: path.to_path_buf(), source })
}

impl ServerTls {
    /// The server's TLS settings, None for plaintext. Files are read once, at startup.
    pub fn config(&self) -> Result<Option<ServerTlsConfig>, TlsError> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        let mut c = ServerTlsConfig::new().identity(Identity::from_pem(read("certificate", cert)?, read("key", key)?));
        if let Some(ca) = &self.tls_client_ca {
            c = c.client_ca_root(Certificate::from_pem(read("client CA", ca)?));
        }
        Ok(Some(c))
    }

    /// "plaintext", "tls" or "mtls", for the startup log.
    pub fn mode(&self) -> &'static str {
        match (&self.tls_cert, &self.tls_client_ca) {
            (None, _) => "plaintext",
            (Some(_), None) => "tls",
            (Some(_), Some(_)) => "mtls",
        }
    }

    /// A tonic server builder with these settings applied.
    pub fn builder(&self) -> anyhow::Result<tonic::transport::Server> {
        let b = tonic::transport::Server::builder();
        Ok(match self.config()? {
            Some(c) => b.tls_config(c)?,
            None => b,
        })
    }
}

/// A loaded [`ClientTls`]: the files are read once and every channel shares them.
#[derive(Debug, Clone, Default)]
pub struct Dialer {
    tls: Option<ClientTlsConfig>,
    /// `tls` with the agents' server name.
    agent_tls: Option<ClientTlsConfig>,
}

impl ClientTls {
    pub fn dialer(&self) -> Result<Dialer, TlsError> {
        let Some(ca) = &self.tls_ca else {
            return Ok(Dialer::default());
        };
        let mut c = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read("CA", ca)?));
        if let (Some(cert), Some(key)) = (&self.tls_client_cert, &self.tls_client_key) {
            c = c.identity(Identity::from_pem(read("client certificate", cert)?, read("client key", key)?));
        }
        let agent = match &self.tls_server_name {
            Some(name) => c.clone().domain_name(name.clone()),
            None => c.clone(),
        };
        Ok(Dialer { tls: Some(c), agent_tls: Some(agent) })
    }
}

impl Dialer {
    /// An endpoint for a vectorizer or filter at `addr` (HOST:PORT): `https://` with TLS,
    /// `http://` without.
    pub fn endpoint(&self, addr: &str) -> Result<Endpoint, TlsError> {
        endpoint(addr, &self.tls)
    }

    /// Like [`Dialer::endpoint`], for an agent (checked against --tls-server-name).
    pub fn agent_endpoint(&self, addr: &str) -> Result<Endpoint, TlsError> {
        endpoint(addr, &self.agent_tls)
    }
}

fn endpoint(addr: &str, tls: &Option<ClientTlsConfig>) -> Result<Endpoint, TlsError> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let ep = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|e| TlsError::Config(format!("bad address {addr:?}: {e}")))?;
    match tls {
        Some(c) => ep.tls_config(c.clone()).map_err(|e| TlsError::Config(format!("TLS settings for {addr}: {e}"))),
        None => Ok(ep),
    }
}
