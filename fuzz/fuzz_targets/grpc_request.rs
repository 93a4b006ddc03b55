//! The online path's gRPC request handling. Input: one selector byte (low 7 bits: the
//! request type; top bit: a linear search), then the bytes of a protobuf message decoded as
//! that type (exactly as tonic decodes a request body). Each decoded request runs through the
//! checks and handlers the agent and gateway run — `limits.rs`, the agent's `request.rs` and
//! its `Store` (the real modules, compiled in by path) — against a small agent store with a
//! built graph. Nothing may panic, hang or allocate from a request field; answers must
//! respect the plan (at most `num` results, closest first, `min_num` honoured).
#![no_main]

use std::sync::OnceLock;

use kim_proto::payload::v1::{filter, insert, object, remove, search, update};
use libfuzzer_sys::fuzz_target;
use prost::Message;

// The worker's modules, compiled in from their files. They are declared at the crate root (a
// `#[path]` inside an inline module resolves through a directory that does not exist here) and
// re-exported where the worker has them, so their `crate::online::...` and `super::...` paths
// resolve as there.
#[allow(dead_code)]
#[path = "../../worker/src/online/limits.rs"]
pub mod limits;
#[allow(dead_code)]
#[path = "../../worker/src/online/agent/request.rs"]
pub mod request;
#[allow(dead_code)]
#[path = "../../worker/src/online/agent/store.rs"]
pub mod store;
#[allow(dead_code)]
#[path = "../../worker/src/online/agent/wal.rs"]
pub mod wal;

pub mod online {
    pub use crate::limits;
    pub mod agent {
        pub use crate::{request, store, wal};
    }
}

use limits::{AllowList, Limits};
use request::{Mode, Rules};
use store::{Segment, Store};
use wal::Record;

const DIMS: usize = 4;
const ROWS: usize = 64;

fn rules() -> Rules {
    Rules { dimensions: DIMS, ef_search: 16, limits: Limits { max_num: 256 } }
}

/// An agent store: ROWS objects in a graph segment plus a few tail writes and tombstones.
fn store() -> &'static Store {
    static S: OnceLock<Store> = OnceLock::new();
    S.get_or_init(|| {
        let mut s = Store::new(DIMS, kim_index::Metric::Cosine, 16);
        let put = |s: &mut Store, i: usize| {
            let lsn = s.lsn + 1;
            let vector = (0..DIMS).map(|d| ((i * 7 + d * 3) % 11) as f32 - 5.0).collect();
            s.apply(Record::Put { lsn, id: format!("o{i}"), timestamp: i as i64 + 1, vector });
        };
        (0..ROWS).for_each(|i| put(&mut s, i));
        let live = s.live();
        let seg = Segment::new(s.spec, &live, kim_index::Graph::default(), s.lsn);
        let params = kim_index::HnswParams { m: 8, ef_construction: 32, ef_search: 16 };
        let graph = kim_index::build::build_graph(&seg.index.vectors, params, 1, &|_, _, _| {}).unwrap();
        s.install(Segment { index: kim_index::FlatIndex { graph, ..seg.index }, ..seg });
        (ROWS..ROWS + 8).for_each(|i| put(&mut s, i));
        let lsn = s.lsn + 1;
        s.apply(Record::Remove { lsn, id: "o3".into() });
        s
    })
}

fn allow() -> &'static AllowList {
    static A: OnceLock<AllowList> = OnceLock::new();
    A.get_or_init(|| AllowList::new(["127.0.0.1:8081", "filters:*"]))
}

/// The agent's Search/LinearSearch path.
fn agent_search(vector: &[f32], cfg: Option<&search::Config>, exact: bool) {
    let r = rules();
    let Ok(plan) = r.plan(vector, cfg) else { return };
    assert!(plan.num >= 1 && plan.num <= r.limits.max_num as usize);
    assert!(plan.ef(r.ef_search, r.limits.max_num) <= 4 * r.limits.max_num as usize);
    if let Ok(found) = r.search(store(), &plan, vector, exact) {
        assert!(found.len() <= plan.num && found.len() >= plan.min_num);
        assert!(found.windows(2).all(|w| w[0].distance <= w[1].distance), "{found:?}");
    }
}

/// The gateway's checks of a request's vectorizer and filters.
fn gateway_targets(vectorizer: Option<&filter::Target>, filters: &[Option<&filter::Config>]) {
    if let Some(t) = vectorizer.filter(|t| t.port != 0) {
        if let Ok(addr) = limits::target(t) {
            assert!(t.port <= 65535 && !t.host.is_empty());
            let _ = allow().check(&addr);
        }
    }
    for f in filters.iter().flatten() {
        if let Ok(addrs) = limits::filter_targets(f) {
            addrs.iter().for_each(|a| drop(allow().check(a)));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else { return };
    let r = rules();
    match (kind & 0x7f) % 9 {
        0 => {
            if let Ok(q) = search::Request::decode(body) {
                agent_search(&q.vector, q.config.as_ref(), kind & 0x80 != 0);
            }
        }
        1 => {
            if let Ok(q) = search::MultiRequest::decode(body) {
                q.requests.iter().for_each(|q| agent_search(&q.vector, q.config.as_ref(), false));
            }
        }
        2 => {
            if let Ok(q) = search::IdRequest::decode(body) {
                if limits::id(&q.id).is_ok() {
                    if let Some(v) = store().vector_of(&q.id).map(<[f32]>::to_vec) {
                        agent_search(&v, q.config.as_ref(), kind & 0x80 != 0);
                    }
                }
            }
        }
        3 => {
            if let Ok(q) = insert::MultiRequest::decode(body) {
                let mut s = Store::new(DIMS, kim_index::Metric::L2, 16);
                for q in q.requests {
                    let c = q.config.unwrap_or_default();
                    if let Ok(w) = r.put(Mode::Insert, q.vector, c.timestamp, c.skip_strict_exist_check, 1) {
                        assert!(w.id.len() <= limits::MAX_ID_BYTES && w.vector.len() == DIMS);
                        let lsn = s.lsn + 1;
                        s.apply(Record::Put { lsn, id: w.id, timestamp: w.timestamp, vector: w.vector });
                    }
                }
                let _ = s.search(&[1.0; DIMS], 3, 0, false);
            }
        }
        4 => {
            if let Ok(q) = remove::TimestampRequest::decode(body) {
                if let Ok(conds) = limits::timestamp_conditions(&q) {
                    let _ = store().objects.values().filter(|o| limits::timestamp_matches(&conds, o.timestamp)).count();
                }
            }
        }
        5 => {
            if let Ok(q) = update::TimestampRequest::decode(body) {
                if let Ok(w) = r.touch(q.id, q.timestamp, q.force) {
                    assert!(w.timestamp > 0);
                }
            }
        }
        6 => {
            if let Ok(q) = search::ObjectRequest::decode(body) {
                if r.limits.search(q.config.as_ref()).is_ok() {
                    let c = q.config.unwrap_or_default();
                    gateway_targets(q.vectorizer.as_ref(), &[c.ingress_filters.as_ref(), c.egress_filters.as_ref()]);
                }
            }
        }
        7 => {
            if let Ok(q) = insert::ObjectRequest::decode(body) {
                if q.object.as_ref().is_some_and(|b| limits::id(&b.id).is_ok()) {
                    let c = q.config.unwrap_or_default();
                    gateway_targets(q.vectorizer.as_ref(), &[c.filters.as_ref()]);
                }
            }
        }
        _ => {
            if let Ok(q) = object::VectorRequest::decode(body) {
                let id = q.id.map(|i| i.id).unwrap_or_default();
                if limits::id(&id).is_ok() {
                    let _ = store().vector_of(&id);
                }
            }
        }
    }
});
