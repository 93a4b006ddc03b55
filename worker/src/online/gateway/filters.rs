//! The gateway's calls to vectorizers and filters: GenVector, the ingress FilterVector chain
//! and the egress FilterDistance chain. Request-named targets are checked and must be on the
//! allowlist.

use futures::future::join_all;
use kim_proto::filter::egress::v1::filter_client::FilterClient as EgressClient;
use kim_proto::filter::ingress::v1::filter_client::FilterClient as IngressClient;
use kim_proto::payload::v1::{filter, object};
use tonic::Status;

use super::{backend_error, sized, sort, with_timeout, Gateway};
use crate::online::limits;

impl Gateway {
    /// HOST:PORT of a request's filter targets, each checked and allowed.
    fn request_targets(&self, cfg: Option<&filter::Config>) -> Result<Vec<String>, Status> {
        let Some(cfg) = cfg else { return Ok(Vec::new()) };
        let addrs = limits::filter_targets(cfg)?;
        addrs.iter().try_for_each(|a| self.allow.check(a))?;
        Ok(addrs)
    }

    /// The vectorizer a request names (a target with a port), else the gateway's default.
    pub(super) fn vectorizer_for(&self, target: Option<&filter::Target>) -> Result<String, Status> {
        match target.filter(|t| t.port != 0) {
            Some(t) => {
                let addr = limits::target(t)?;
                self.allow.check(&addr)?;
                Ok(addr)
            }
            None => self.vectorizer.clone().ok_or_else(|| {
                Status::invalid_argument(
                    "no vectorizer: the request names none (Filter.Target with a port) and the gateway has no default",
                )
            }),
        }
    }

    /// Object → vector on the vectorizer at `addr`.
    pub(super) async fn vectorize(&self, addr: &str, id: &str, object: Vec<u8>) -> Result<Vec<f32>, Status> {
        let mut c = sized!(IngressClient::new(self.pool.channel(addr)?), self.max_message);
        let v = c
            .gen_vector(with_timeout(object::Blob { id: id.to_string(), object }, self.call_timeout))
            .await
            .map_err(|s| backend_error("vectorizer", addr, s))?
            .into_inner();
        limits::vector("the vector", &v.vector, None)
            .map_err(|s| Status::internal(format!("vectorizer {addr}: {}", s.message())))?;
        Ok(v.vector)
    }

    /// The ingress FilterVector chain: the gateway's filters, then the request's.
    pub(super) async fn ingress(
        &self,
        extra: Option<&filter::Config>,
        mut v: object::Vector,
    ) -> Result<object::Vector, Status> {
        for addr in self.ingress.iter().cloned().chain(self.request_targets(extra)?) {
            let mut c = sized!(IngressClient::new(self.pool.channel(&addr)?), self.max_message);
            v = c
                .filter_vector(with_timeout(v, self.call_timeout))
                .await
                .map_err(|s| backend_error("ingress filter", &addr, s))?
                .into_inner();
        }
        Ok(v)
    }

    /// Checks a request's egress targets before any work is done for it.
    pub(super) fn check_egress(&self, extra: Option<&filter::Config>) -> Result<(), Status> {
        self.request_targets(extra).map(drop)
    }

    /// The egress FilterDistance chain, run on all results concurrently.
    pub(super) async fn egress(
        &self,
        extra: Option<&filter::Config>,
        results: Vec<object::Distance>,
    ) -> Result<Vec<object::Distance>, Status> {
        let chain: Vec<String> = self.egress.iter().cloned().chain(self.request_targets(extra)?).collect();
        if chain.is_empty() {
            return Ok(results);
        }
        let chain = &chain;
        let filtered = join_all(results.into_iter().map(|mut d| async move {
            for addr in chain {
                let mut c = sized!(EgressClient::new(self.pool.channel(addr)?), self.max_message);
                d = c
                    .filter_distance(with_timeout(d, self.call_timeout))
                    .await
                    .map_err(|s| backend_error("egress filter", addr, s))?
                    .into_inner();
            }
            Ok::<_, Status>(d)
        }))
        .await;
        let mut out = filtered.into_iter().collect::<Result<Vec<_>, _>>()?;
        sort(&mut out);
        Ok(out)
    }
}
