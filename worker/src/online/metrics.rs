//! Prometheus metrics shared by agent, gateway and vectorizer: requests by RPC and gRPC code,
//! latency by RPC; a component adds its own state through a collector.

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcCode {
    rpc: &'static str,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Rpc {
    rpc: &'static str,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RpcCode, Counter>,
    latency: Family<Rpc, Histogram, fn() -> Histogram>,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.00005, 2.0, 18))
}

impl Metrics {
    pub fn new(prefix: &str) -> Metrics {
        let mut registry = Registry::with_prefix(prefix);
        let requests = Family::<RpcCode, Counter>::default();
        let latency = Family::<Rpc, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        registry.register(
            "grpc_requests",
            "Requests (stream messages count one each) by RPC and gRPC code",
            requests.clone(),
        );
        registry.register("grpc_latency_seconds", "Handling time by RPC", latency.clone());
        Metrics { registry, requests, latency }
    }

    /// Adds metrics computed at scrape time.
    pub fn register_collector(&mut self, c: Box<dyn prometheus_client::collector::Collector>) {
        self.registry.register_collector(c);
    }

    /// Counts one answered request (or stream message).
    pub fn observe(&self, rpc: &'static str, code: tonic::Code, start: Instant) {
        self.requests.get_or_create(&RpcCode { rpc, code: format!("{code:?}") }).inc();
        self.latency.get_or_create(&Rpc { rpc }).observe(start.elapsed().as_secs_f64());
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("encoding to a String");
        out
    }
}

/// The gRPC code of a result, for [`Metrics::observe`].
pub fn code_of<T>(r: &Result<T, tonic::Status>) -> tonic::Code {
    r.as_ref().map_or_else(|s| s.code(), |_| tonic::Code::Ok)
}
