//! `kim-worker vectorize`: a filter.ingress.v1.Filter whose GenVector turns an object into a
//! unit vector by signed feature hashing, so the online path runs end to end without a model.
//!
//! UTF-8 objects are text: lower-cased words (weight 1) and the character trigrams of each
//! word padded with `<` `>` (weight ½, so spelling variants stay close). Other objects use
//! byte 4-grams. Each feature is hashed (xxh3, seeded per kind) to a dimension and a sign;
//! the sum is L2-normalised. Equal objects give equal vectors (cosine distance 0), and
//! objects sharing words or fragments are near. FilterVector L2-normalises a vector.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use kim_proto::filter::ingress::v1::filter_server::{Filter, FilterServer};
use kim_proto::payload::v1::object;
use tonic::{Request, Response, Status};
use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::args::VectorizeArgs;
use super::metrics::{code_of, Metrics};

const WORD: u64 = 1;
const TRIGRAM: u64 = 2;
const BYTES: u64 = 3;

/// The embedding of `object` in `dims` dimensions; None for an empty object.
pub fn embed(object: &[u8], dims: usize) -> Option<Vec<f32>> {
    let mut v = vec![0f32; dims];
    let mut add = |kind: u64, feature: &[u8], weight: f32| {
        let h = xxh3_64_with_seed(feature, kind);
        let sign = if h >> 63 == 1 { -1.0 } else { 1.0 };
        v[(h % dims as u64) as usize] += sign * weight;
    };
    let mut any = false;
    if let Ok(text) = std::str::from_utf8(object) {
        let lower = text.to_lowercase();
        for word in lower.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
            any = true;
            add(WORD, word.as_bytes(), 1.0);
            let padded: Vec<char> = std::iter::once('<').chain(word.chars()).chain(std::iter::once('>')).collect();
            for g in padded.windows(3) {
                add(TRIGRAM, g.iter().collect::<String>().as_bytes(), 0.5);
            }
        }
    }
    if !any {
        if object.is_empty() {
            return None;
        }
        for g in object.windows(4.min(object.len())) {
            add(BYTES, g, 1.0);
        }
    }
    normalize(&mut v);
    Some(v)
}

fn normalize(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

struct Vectorizer {
    dims: usize,
    metrics: Arc<Metrics>,
}

#[tonic::async_trait]
impl Filter for Vectorizer {
    async fn gen_vector(&self, req: Request<object::Blob>) -> Result<Response<object::Vector>, Status> {
        let t = Instant::now();
        let blob = req.into_inner();
        let r = embed(&blob.object, self.dims)
            .map(|vector| object::Vector { id: blob.id, vector, timestamp: 0 })
            .ok_or_else(|| Status::invalid_argument("object is empty"));
        self.metrics.observe("GenVector", code_of(&r), t);
        r.map(Response::new)
    }

    async fn filter_vector(&self, req: Request<object::Vector>) -> Result<Response<object::Vector>, Status> {
        let t = Instant::now();
        let mut v = req.into_inner();
        normalize(&mut v.vector);
        self.metrics.observe("FilterVector", tonic::Code::Ok, t);
        Ok(Response::new(v))
    }
}

pub fn run(a: VectorizeArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.dimensions > 0, "--dimensions must be positive");
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?.block_on(serve(a))
}

async fn serve(a: VectorizeArgs) -> anyhow::Result<()> {
    let (listen, http, dims) = (a.listen, a.http, a.dimensions);
    let metrics = Arc::new(Metrics::new("kim_vectorizer"));
    let ready = Arc::new(AtomicBool::new(true));
    let http_l = tokio::net::TcpListener::bind(http).await.with_context(|| format!("binding {http}"))?;
    let m = metrics.clone();
    tokio::spawn(super::http::serve(http_l, ready.clone(), Arc::new(move || m.encode()), axum::Router::new()));
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    let mut server = a.tls.builder().context("vectorizer TLS")?;
    tracing::info!(%listen, dims, grpc = a.tls.mode(), "vectorizer serving");
    server
        .add_service(FilterServer::new(Vectorizer { dims, metrics }))
        .serve_with_incoming_shutdown(super::incoming(listener), kim_runtime::shutdown_signal())
        .await?;
    ready.store(false, Ordering::SeqCst);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cos(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn equal_objects_equal_unit_vectors_and_shared_words_are_closer() {
        let a = embed(b"The quick brown fox", 256).unwrap();
        assert_eq!(a, embed(b"the QUICK brown fox!", 256).unwrap());
        assert!((cos(&a, &a) - 1.0).abs() < 1e-5);
        let near = embed(b"a quick brown dog", 256).unwrap();
        let far = embed(b"tax law of maritime shipping", 256).unwrap();
        assert!(cos(&a, &near) > cos(&a, &far) + 0.2, "{} vs {}", cos(&a, &near), cos(&a, &far));
        let bin = embed(&[0xff, 0xfe, 0x00, 0x01, 0x02], 64).unwrap();
        assert!((cos(&bin, &bin) - 1.0).abs() < 1e-5);
        assert!(embed(&[0xff], 8).is_some());
        assert!(embed(b"", 8).is_none());
    }
}
