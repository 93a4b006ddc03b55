//! The online (Vald-compatible) path: `agent` (one persistent shard), `gateway` (the
//! vald.v1.Filter front door), `vectorizer` (a text/bytes embedding behind
//! filter.ingress.v1), `source` (reading agents into a batch snapshot) and `rebalance`
//! (objects to their owners after the agent set changed).

pub mod agent;
pub mod args;
pub mod gateway;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod pool;
pub mod rebalance;
pub mod source;
pub mod tls;
pub mod vectorizer;

use std::future::Future;
use std::pin::Pin;

use futures::{FutureExt, Stream, StreamExt};
use kim_proto::google::rpc;
use prost::Message;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

/// Every object an agent holds, read through Object.StreamListObject with `client` (its
/// message size limits set by the caller); an in-band status ends the listing as an error.
pub async fn list_objects(
    mut client: kim_proto::vald::v1::object_client::ObjectClient<tonic::transport::Channel>,
) -> Result<Vec<kim_proto::payload::v1::object::Vector>, Status> {
    use kim_proto::payload::v1::object::list;
    let mut s = client.stream_list_object(list::Request {}).await?.into_inner();
    let mut out = Vec::new();
    while let Some(item) = s.next().await {
        match item?.payload {
            Some(list::response::Payload::Vector(v)) => out.push(v),
            Some(list::response::Payload::Status(st)) => {
                return Err(Status::new(tonic::Code::from(st.code), st.message))
            }
            None => {}
        }
    }
    Ok(out)
}

/// A server-streaming reply.
pub type Out<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// A tonic status as the google.rpc.Status Vald puts in-band in stream replies.
pub fn rpc_status(s: &Status) -> rpc::Status {
    rpc::Status { code: s.code() as i32, message: s.message().to_string(), details: Vec::new() }
}

/// Answers each message of a bidirectional stream with `f`, up to `concurrency` at a time,
/// in request order. `f` reports failures in its reply, so the stream goes on; only a broken
/// inbound stream ends it.
pub fn per_message<Req, Resp, F, Fut>(input: Streaming<Req>, concurrency: usize, f: F) -> Out<Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
    F: Fn(Req) -> Fut + Send + 'static,
    Fut: Future<Output = Resp> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(concurrency.max(1) * 2);
    let mut replies = input
        .map(move |m| match m {
            Ok(m) => f(m).map(Ok).boxed(),
            Err(e) => futures::future::ready(Err(e)).boxed(),
        })
        .buffered(concurrency.max(1));
    tokio::spawn(async move {
        while let Some(r) = replies.next().await {
            let end = r.is_err();
            if tx.send(r).await.is_err() || end {
                break;
            }
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

/// One error for a Multi* call some of whose items failed: the first failure's code, a
/// message naming every failed item, and each item's status in the binary details (a
/// google.rpc.Status whose details are the per-item google.rpc.Status values). Items not
/// listed succeeded and stay applied.
pub fn multi_error(total: usize, failures: &[(usize, String, Status)]) -> Status {
    let code = failures.first().map_or(tonic::Code::Internal, |f| f.2.code());
    let list: Vec<String> =
        failures.iter().map(|(i, id, s)| format!("#{i} {id:?}: {:?} {}", s.code(), s.message())).collect();
    let message = format!("{} of {total} items failed: {}", failures.len(), list.join("; "));
    let details = failures
        .iter()
        .map(|(i, id, s)| prost_types::Any {
            type_url: "type.googleapis.com/google.rpc.Status".into(),
            value: rpc::Status {
                code: s.code() as i32,
                message: format!("#{i} {id}: {}", s.message()),
                details: Vec::new(),
            }
            .encode_to_vec(),
        })
        .collect();
    let body = rpc::Status { code: code as i32, message: message.clone(), details }.encode_to_vec();
    Status::with_details(code, message, body.into())
}

/// Unix time in nanoseconds, Vald's timestamp unit.
pub fn now_nanos() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}

/// Accepted gRPC connections with Nagle off: small request/reply messages would otherwise
/// wait out delayed ACKs (~40 ms per call).
pub fn incoming(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}
