//! `kim-worker index --source agents://HOST:PORT,...`: every object of the online agents
//! (via Object.StreamListObject) becomes the batch source, so vectors written online turn
//! into a snapshot the matchers serve. Replicas are merged by id, newest timestamp wins.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use kim_index::Matrix;
use kim_proto::payload::v1::object;
use kim_proto::vald::v1::object_client::ObjectClient;

use super::tls::Dialer;

const SCHEME: &str = "agents://";
/// Upper bound on reading one agent, so a stuck agent fails the build instead of hanging it.
const PER_AGENT: Duration = Duration::from_secs(1800);

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("agent {agent}: {message}")]
    Agent { agent: String, message: String },
    #[error("agent {agent}: object {id} has {got} dimensions, others have {want}")]
    Dimensions { agent: String, id: String, got: usize, want: usize },
    #[error("the agents hold no objects")]
    Empty,
    #[error("{0}")]
    Runtime(#[from] std::io::Error),
}

/// The agent addresses if `source` is an `agents://` source.
pub fn agents(source: &Path) -> Option<Vec<String>> {
    let s = source.to_str()?.strip_prefix(SCHEME)?;
    Some(s.split(',').map(str::trim).filter(|a| !a.is_empty()).map(String::from).collect())
}

/// Reads all agents: (bytes to digest, rows as f32, ids), rows sorted by id.
pub fn read(addrs: &[String], dialer: &Dialer) -> Result<(Vec<u8>, Matrix, Vec<String>), SourceError> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let merged = rt.block_on(async {
        let mut merged: HashMap<String, (i64, Vec<f32>)> = HashMap::new();
        for addr in addrs {
            let fail = |message: String| SourceError::Agent { agent: addr.clone(), message };
            let read = async {
                let channel = dialer
                    .agent_endpoint(addr)
                    .map_err(|e| fail(e.to_string()))?
                    .connect()
                    .await
                    .map_err(|e| fail(connect_error(&e)))?;
                let mut c = ObjectClient::new(channel).max_decoding_message_size(64 << 20);
                let mut stream = c
                    .stream_list_object(object::list::Request {})
                    .await
                    .map_err(|s| fail(s.message().to_string()))?
                    .into_inner();
                let mut n = 0usize;
                while let Some(item) = stream.next().await {
                    match item.map_err(|s| fail(s.message().to_string()))?.payload {
                        Some(object::list::response::Payload::Vector(v)) => {
                            n += 1;
                            let newer = merged.get(&v.id).is_none_or(|(ts, _)| v.timestamp > *ts);
                            if newer {
                                merged.insert(v.id, (v.timestamp, v.vector));
                            }
                        }
                        Some(object::list::response::Payload::Status(s)) => return Err(fail(s.message)),
                        None => {}
                    }
                }
                tracing::info!(agent = %addr, objects = n, "read agent");
                Ok(())
            };
            tokio::time::timeout(PER_AGENT, read)
                .await
                .map_err(|_| fail(format!("listing took longer than {PER_AGENT:?}")))??;
        }
        Ok::<_, SourceError>(merged)
    })?;
    let mut rows: Vec<(String, Vec<f32>)> = merged.into_iter().map(|(id, (_, v))| (id, v)).collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    let dims = rows.first().ok_or(SourceError::Empty)?.1.len();
    if let Some((id, v)) = rows.iter().find(|(_, v)| v.len() != dims) {
        return Err(SourceError::Dimensions { agent: addrs.join(","), id: id.clone(), got: v.len(), want: dims });
    }
    let flat: Vec<f32> = rows.iter().flat_map(|(_, v)| v.iter().copied()).collect();
    let matrix = Matrix::from_f32(rows.len(), dims, &flat);
    let digest = flat.iter().flat_map(|x| x.to_le_bytes()).collect();
    Ok((digest, matrix, rows.into_iter().map(|(id, _)| id).collect()))
}

/// A connect error with its causes (tonic's own message is only "transport error").
pub fn connect_error(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(c) = cur {
        parts.push(c.to_string());
        cur = c.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_scheme_is_recognised() {
        assert_eq!(agents(Path::new("agents://a:1, b:2,")), Some(vec!["a:1".to_string(), "b:2".to_string()]));
        assert_eq!(agents(Path::new("/data/base.npy")), None);
    }
}
