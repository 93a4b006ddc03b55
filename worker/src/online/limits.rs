//! Request limits shared by the gateway and the agents: every request field that sizes work
//! or memory (`num`, `epsilon`, `ratio`, ids, vectors, filter targets) is checked here
//! before anything is allocated from it, so a hostile or mistaken request gets its gRPC
//! status and never an abort. Only `kim_proto`, `tonic` and std are used (the fuzz target
//! compiles this file by path).

use std::collections::HashSet;
use std::time::Duration;

use kim_proto::payload::v1::{filter, remove, search};
use tonic::Status;

/// Longest object id or request id, in bytes.
pub const MAX_ID_BYTES: usize = 512;
/// Results per search when a request asks for none.
pub const DEFAULT_NUM: u32 = 10;
/// Default cap on `Search.Config.num`.
pub const DEFAULT_MAX_NUM: u32 = 16_384;
/// Default largest gRPC message, in either direction.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 32 << 20;
/// Longest filter/vectorizer host name (a DNS name's limit).
pub const MAX_HOST_BYTES: usize = 253;
/// Most targets in one Filter.Config.
pub const MAX_FILTER_TARGETS: usize = 16;
/// Most conditions in one Remove.TimestampRequest.
pub const MAX_TIMESTAMP_CONDITIONS: usize = 16;

/// A search request's settings once checked.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchPlan {
    /// Results wanted, 1..=max_num.
    pub num: usize,
    /// Fewer results than this → NOT_FOUND (0: no minimum).
    pub min_num: usize,
    /// Results farther than this are dropped (None: no radius).
    pub radius: Option<f32>,
    /// Widens the HNSW beam: ef = max(ef_search, num) × (1 + epsilon).
    pub epsilon: f32,
    /// Results each agent returns to the gateway, 1..=num (`ratio` × num, rounded up).
    pub per_agent: usize,
    /// The request's deadline (None: the server's default).
    pub timeout: Option<Duration>,
}

impl SearchPlan {
    /// The HNSW beam width for a base `ef_search`: never below `num`, widened by epsilon,
    /// and never above `4 × max_num` (so epsilon cannot size an allocation).
    pub fn ef(&self, ef_search: usize, max_num: u32) -> usize {
        let base = ef_search.max(self.num);
        let cap = (4 * max_num as usize).max(base);
        let widened = (base as f64 * (1.0 + f64::from(self.epsilon))).ceil();
        if widened >= cap as f64 {
            cap
        } else {
            widened as usize
        }
    }

    /// NOT_FOUND when fewer than `min_num` results were found.
    pub fn check_found(&self, found: usize) -> Result<(), Status> {
        if found < self.min_num {
            return Err(Status::not_found(format!(
                "found {found} results, the request needs at least {}",
                self.min_num
            )));
        }
        Ok(())
    }
}

/// The configured limits of one server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_num: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_num: DEFAULT_MAX_NUM }
    }
}

impl Limits {
    /// Checks a Search.Config (absent = defaults) and turns it into a plan.
    pub fn search(&self, cfg: Option<&search::Config>) -> Result<SearchPlan, Status> {
        let default = search::Config::default();
        let c = cfg.unwrap_or(&default);
        request_id(&c.request_id)?;
        let num = if c.num == 0 { DEFAULT_NUM.min(self.max_num) } else { c.num };
        if num > self.max_num {
            return Err(Status::invalid_argument(format!(
                "num {} is above this server's limit of {} results",
                c.num, self.max_num
            )));
        }
        if c.min_num > num {
            return Err(Status::invalid_argument(format!("min_num {} is above num {num}", c.min_num)));
        }
        if c.radius.is_nan() {
            return Err(Status::invalid_argument("radius is NaN"));
        }
        if !c.epsilon.is_finite() || c.epsilon < 0.0 {
            return Err(Status::invalid_argument(format!("epsilon {} must be finite and not negative", c.epsilon)));
        }
        let ratio = c.ratio.unwrap_or(0.0);
        if !ratio.is_finite() || ratio < 0.0 {
            return Err(Status::invalid_argument(format!("ratio {ratio} must be finite and not negative")));
        }
        if search::AggregationAlgorithm::try_from(c.aggregation_algorithm).is_err() {
            return Err(Status::invalid_argument(format!(
                "aggregation_algorithm {} is not one of Vald's",
                c.aggregation_algorithm
            )));
        }
        for f in [&c.ingress_filters, &c.egress_filters].into_iter().flatten() {
            filter_targets(f)?;
        }
        let num = num as usize;
        let per_agent = if ratio == 0.0 || ratio >= 1.0 {
            num
        } else {
            ((num as f64 * f64::from(ratio)).ceil() as usize).clamp(1, num)
        };
        Ok(SearchPlan {
            num,
            min_num: c.min_num as usize,
            radius: (c.radius > 0.0 && c.radius.is_finite()).then_some(c.radius),
            epsilon: c.epsilon,
            per_agent,
            timeout: (c.timeout > 0).then(|| Duration::from_nanos(c.timeout as u64)),
        })
    }
}

/// An object id: 1..=512 bytes.
pub fn id(id: &str) -> Result<(), Status> {
    if id.is_empty() {
        return Err(Status::invalid_argument("object id is empty"));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(Status::invalid_argument(format!(
            "object id is {} bytes long, the limit is {MAX_ID_BYTES}",
            id.len()
        )));
    }
    Ok(())
}

/// A request id (may be empty): at most 512 bytes.
pub fn request_id(rid: &str) -> Result<(), Status> {
    if rid.len() > MAX_ID_BYTES {
        return Err(Status::invalid_argument(format!(
            "request_id is {} bytes long, the limit is {MAX_ID_BYTES}",
            rid.len()
        )));
    }
    Ok(())
}

/// A vector: finite components and, where the server knows it, the right length.
pub fn vector(what: &str, v: &[f32], dimensions: Option<usize>) -> Result<(), Status> {
    match dimensions {
        Some(d) if v.len() != d => {
            return Err(Status::invalid_argument(format!("{what} has {} dimensions, this server holds {d}", v.len())))
        }
        None if v.is_empty() => return Err(Status::invalid_argument(format!("{what} is empty"))),
        _ => {}
    }
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(Status::invalid_argument(format!("{what} has a non-finite component at {i} ({})", v[i])));
    }
    Ok(())
}

/// HOST:PORT of a filter or vectorizer target: a host and a port in 1..=65535.
pub fn target(t: &filter::Target) -> Result<String, Status> {
    if t.host.is_empty() || t.port == 0 {
        return Err(Status::invalid_argument(format!("filter target {:?}:{} needs a host and a port", t.host, t.port)));
    }
    if t.port > u32::from(u16::MAX) {
        return Err(Status::invalid_argument(format!("filter target port {} is above 65535", t.port)));
    }
    if t.host.len() > MAX_HOST_BYTES || t.host.contains([':', '/', ' ']) && !t.host.starts_with('[') {
        return Err(Status::invalid_argument(format!("filter target host {:?} is not a host name or address", t.host)));
    }
    Ok(format!("{}:{}", t.host, t.port))
}

/// Every target of a Filter.Config, checked.
pub fn filter_targets(c: &filter::Config) -> Result<Vec<String>, Status> {
    if c.targets.len() > MAX_FILTER_TARGETS {
        return Err(Status::invalid_argument(format!(
            "{} filter targets, the limit is {MAX_FILTER_TARGETS}",
            c.targets.len()
        )));
    }
    c.targets.iter().map(target).collect()
}

/// The conditions of a Remove.TimestampRequest: 1..=16 of them, known operators.
pub fn timestamp_conditions(r: &remove::TimestampRequest) -> Result<Vec<(remove::timestamp::Operator, i64)>, Status> {
    if r.timestamps.is_empty() {
        return Err(Status::invalid_argument(
            "RemoveByTimestamp needs at least one condition (Flush removes everything)",
        ));
    }
    if r.timestamps.len() > MAX_TIMESTAMP_CONDITIONS {
        return Err(Status::invalid_argument(format!(
            "{} timestamp conditions, the limit is {MAX_TIMESTAMP_CONDITIONS}",
            r.timestamps.len()
        )));
    }
    r.timestamps
        .iter()
        .map(|t| {
            remove::timestamp::Operator::try_from(t.operator).map(|op| (op, t.timestamp)).map_err(|_| {
                Status::invalid_argument(format!("timestamp operator {} is not one of Vald's", t.operator))
            })
        })
        .collect()
}

/// Whether a timestamp meets every condition.
pub fn timestamp_matches(conds: &[(remove::timestamp::Operator, i64)], ts: i64) -> bool {
    use remove::timestamp::Operator as Op;
    conds.iter().all(|&(op, t)| match op {
        Op::Eq => ts == t,
        Op::Ne => ts != t,
        Op::Ge => ts >= t,
        Op::Gt => ts > t,
        Op::Le => ts <= t,
        Op::Lt => ts < t,
    })
}

/// The request-supplied filter and vectorizer targets a gateway may call: its configured
/// ones plus `--allow-target` entries, each `HOST:PORT` or `HOST:*` (any port of HOST).
#[derive(Debug, Clone, Default)]
pub struct AllowList {
    exact: HashSet<String>,
    any_port: HashSet<String>,
}

impl AllowList {
    pub fn new<'a>(entries: impl IntoIterator<Item = &'a str>) -> AllowList {
        let mut a = AllowList::default();
        for e in entries.into_iter().map(str::trim).filter(|e| !e.is_empty()) {
            match e.strip_suffix(":*") {
                Some(host) => a.any_port.insert(host.to_string()),
                None => a.exact.insert(e.to_string()),
            };
        }
        a
    }

    /// PERMISSION_DENIED unless `addr` (HOST:PORT, as [`target`] makes it) is allowed.
    pub fn check(&self, addr: &str) -> Result<(), Status> {
        let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
        if self.exact.contains(addr) || self.any_port.contains(host) {
            return Ok(());
        }
        Err(Status::permission_denied(format!("target {addr} is not allowed on this gateway (see --allow-target)")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn cfg(f: impl FnOnce(&mut search::Config)) -> search::Config {
        let mut c = search::Config::default();
        f(&mut c);
        c
    }

    #[test]
    fn num_is_capped_and_defaults() {
        let l = Limits { max_num: 100 };
        assert_eq!(l.search(None).unwrap().num, 10);
        assert_eq!(l.search(Some(&cfg(|c| c.num = 100))).unwrap().num, 100);
        for num in [101, u32::MAX] {
            assert_eq!(l.search(Some(&cfg(|c| c.num = num))).unwrap_err().code(), Code::InvalidArgument);
        }
        assert_eq!(Limits { max_num: 3 }.search(None).unwrap().num, 3);
    }

    #[test]
    fn min_num_ratio_epsilon_and_aggregation() {
        let l = Limits::default();
        let p = l
            .search(Some(&cfg(|c| {
                c.num = 10;
                c.min_num = 4;
                c.ratio = Some(0.25);
                c.epsilon = 0.5;
                c.aggregation_algorithm = search::AggregationAlgorithm::PairingHeap as i32;
            })))
            .unwrap();
        assert_eq!((p.num, p.min_num, p.per_agent), (10, 4, 3));
        assert_eq!(p.ef(96, 16_384), 144);
        assert!(p.check_found(4).is_ok());
        assert_eq!(p.check_found(3).unwrap_err().code(), Code::NotFound);
        let huge = l.search(Some(&cfg(|c| c.epsilon = 1e30))).unwrap();
        assert_eq!(huge.ef(96, 100), 400, "epsilon cannot size the beam past 4 × max_num");
        for bad in [
            cfg(|c| c.min_num = 11),
            cfg(|c| c.epsilon = f32::NAN),
            cfg(|c| c.epsilon = -1.0),
            cfg(|c| c.ratio = Some(f32::INFINITY)),
            cfg(|c| c.ratio = Some(-0.5)),
            cfg(|c| c.radius = f32::NAN),
            cfg(|c| c.aggregation_algorithm = 99),
            cfg(|c| c.request_id = "r".repeat(513)),
        ] {
            assert_eq!(l.search(Some(&bad)).unwrap_err().code(), Code::InvalidArgument, "{bad:?}");
        }
        assert_eq!(l.search(Some(&cfg(|c| c.radius = -1.0))).unwrap().radius, None);
        assert_eq!(l.search(Some(&cfg(|c| c.ratio = Some(3.0)))).unwrap().per_agent, 10);
    }

    #[test]
    fn ids_vectors_and_targets() {
        assert!(id(&"x".repeat(512)).is_ok());
        assert_eq!(id(&"x".repeat(513)).unwrap_err().code(), Code::InvalidArgument);
        assert_eq!(id("").unwrap_err().code(), Code::InvalidArgument);
        assert!(vector("v", &[1.0, 2.0], Some(2)).is_ok());
        for (v, d) in
            [(&[1.0][..], Some(2)), (&[1.0, f32::NAN][..], Some(2)), (&[f32::NEG_INFINITY][..], None), (&[][..], None)]
        {
            assert_eq!(vector("v", v, d).unwrap_err().code(), Code::InvalidArgument, "{v:?}");
        }
        let t = |host: &str, port| filter::Target { host: host.into(), port };
        assert_eq!(target(&t("h", 65535)).unwrap(), "h:65535");
        for bad in [t("h", 65536), t("h", u32::MAX), t("", 80), t("h", 0), t("a:b", 80), t(&"h".repeat(254), 80)] {
            assert_eq!(target(&bad).unwrap_err().code(), Code::InvalidArgument, "{bad:?}");
        }
        let many = filter::Config { targets: vec![t("h", 1); 17] };
        assert_eq!(filter_targets(&many).unwrap_err().code(), Code::InvalidArgument);
    }

    #[test]
    fn allow_list_exact_and_any_port() {
        let a = AllowList::new(["10.0.0.1:8080", "filters.ns.svc:*", " "]);
        assert!(a.check("10.0.0.1:8080").is_ok());
        assert!(a.check("filters.ns.svc:9000").is_ok());
        assert_eq!(a.check("10.0.0.1:8081").unwrap_err().code(), Code::PermissionDenied);
        assert_eq!(a.check("169.254.169.254:80").unwrap_err().code(), Code::PermissionDenied);
    }

    #[test]
    fn timestamp_conditions_and_matching() {
        use remove::timestamp::Operator as Op;
        let req = |ts: Vec<(i32, i64)>| remove::TimestampRequest {
            timestamps: ts.into_iter().map(|(operator, timestamp)| remove::Timestamp { timestamp, operator }).collect(),
        };
        let c = timestamp_conditions(&req(vec![(Op::Ge as i32, 10), (Op::Lt as i32, 20)])).unwrap();
        assert!(timestamp_matches(&c, 10) && timestamp_matches(&c, 19));
        assert!(!timestamp_matches(&c, 9) && !timestamp_matches(&c, 20));
        assert_eq!(timestamp_conditions(&req(vec![])).unwrap_err().code(), Code::InvalidArgument);
        assert_eq!(timestamp_conditions(&req(vec![(42, 1)])).unwrap_err().code(), Code::InvalidArgument);
        assert_eq!(timestamp_conditions(&req(vec![(0, 1); 17])).unwrap_err().code(), Code::InvalidArgument);
    }
}
