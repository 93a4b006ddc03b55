//! The Redis-stream matching protocol: request fields, the response JSON, error
//! codes, and the label-registry keys. Shared by matchers and clients so both sides agree.

pub mod exit;

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub mod build;
pub mod shard;

/// Consumer group every matcher joins on a label's stream.
pub const GROUP: &str = "kim-matchers";
/// Status code of a successful match.
pub const STATUS_OK: u16 = 201;
/// Largest `limit` a request may ask for.
pub const MAX_LIMIT: u32 = 1000;
/// Magic that starts a LUNA SDK-form descriptor: `dp\0\0`, then the version (u32 LE).
pub const SDK_MAGIC: &[u8; 4] = b"dp\0\0";
/// Why a request without `version` and with a bare descriptor is rejected (26301).
pub const VERSION_NEEDED: &str = "field \"version\" is missing: a bare descriptor needs it (the SDK form, dp\\0\\0 + version, carries it in its header)";
/// Where `link` in an error points: the error reference shipped in the repository.
pub const ERROR_DOC: &str = "docs/errors.md";

/// Errors a match can end with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    ValidationFailed = 26301,
    DecodeFailed = 26302,
    SearchFailed = 26303,
    IndexNotFound = 26304,
    VersionMismatch = 26305,
    IndexCorrupted = 26308,
    Timeout = 26309,
}

impl ErrorCode {
    pub fn code(self) -> u32 {
        self as u32
    }
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::ValidationFailed | ErrorCode::DecodeFailed | ErrorCode::VersionMismatch => 400,
            ErrorCode::IndexNotFound => 404,
            ErrorCode::SearchFailed | ErrorCode::IndexCorrupted => 500,
            ErrorCode::Timeout => 504,
        }
    }
    pub fn desc(self) -> &'static str {
        match self {
            ErrorCode::ValidationFailed => "Request validation failed",
            ErrorCode::DecodeFailed => "Descriptor cannot be decoded",
            ErrorCode::SearchFailed => "Search failed",
            ErrorCode::IndexNotFound => "Index for label not found",
            ErrorCode::VersionMismatch => "Descriptor version mismatch",
            ErrorCode::IndexCorrupted => "Index corrupted",
            ErrorCode::Timeout => "Matching timeout",
        }
    }
    pub fn link(self) -> String {
        format!("{ERROR_DOC}#{}", self.code())
    }
    pub fn error(self, detail: impl Into<String>) -> MatchError {
        MatchError { error_code: self.code(), desc: self.desc().to_string(), detail: detail.into(), link: self.link() }
    }
    pub fn all() -> [ErrorCode; 7] {
        use ErrorCode::*;
        [ValidationFailed, DecodeFailed, SearchFailed, IndexNotFound, VersionMismatch, IndexCorrupted, Timeout]
    }
}

/// The `error` object of a response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatchError {
    pub error_code: u32,
    pub desc: String,
    pub detail: String,
    pub link: String,
}

/// What a matcher publishes on the request's response channel.
///
/// On the wire `result` is `null` whenever `error` is set (as LUNA's client expects); here it
/// is then empty. A reply whose `result` is `null` reads as an empty list.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct MatchResponse {
    pub rid: String,
    pub luna_request_id: String,
    pub status_code: u16,
    /// `[id, similarity]` pairs, most similar first.
    #[serde(deserialize_with = "null_as_empty")]
    pub result: Vec<(String, f64)>,
    pub error: Option<MatchError>,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<(String, f64)>, D::Error> {
    Ok(Option::<Vec<(String, f64)>>::deserialize(d)?.unwrap_or_default())
}

impl Serialize for MatchResponse {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let result = if self.error.is_some() { None } else { Some(&self.result[..]) };
        ResponseRef {
            rid: &self.rid,
            luna_request_id: &self.luna_request_id,
            status_code: self.status_code,
            result,
            error: self.error.as_ref(),
        }
        .serialize(s)
    }
}

impl MatchResponse {
    pub fn ok(rid: &str, luna_request_id: &str, result: Vec<(String, f64)>) -> Self {
        MatchResponse {
            rid: rid.into(),
            luna_request_id: luna_request_id.into(),
            status_code: STATUS_OK,
            result,
            error: None,
        }
    }
    pub fn failed(rid: &str, luna_request_id: &str, code: ErrorCode, detail: impl Into<String>) -> Self {
        MatchResponse {
            rid: rid.into(),
            luna_request_id: luna_request_id.into(),
            status_code: code.status(),
            result: Vec::new(),
            error: Some(code.error(detail)),
        }
    }
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("response serialises")
    }
}

/// The reply JSON, borrowed: the field order and names of the wire format, so
/// [`write_response_json`] produces exactly the bytes of [`MatchResponse::to_json`].
#[derive(Serialize)]
struct ResponseRef<'a, R: Serialize + ?Sized> {
    rid: &'a str,
    luna_request_id: &'a str,
    status_code: u16,
    result: Option<&'a R>,
    error: Option<&'a MatchError>,
}

/// Appends a reply to `out` without building a [`MatchResponse`]: `result` serialises as a
/// sequence of `[id, similarity]` pairs (e.g. `&[(&str, f64)]`, or a type that serialises
/// hits straight from an index), or `null` when `None` (error replies). Byte-for-byte what
/// `to_json` writes for the same values.
pub fn write_response_json<R: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    rid: &str,
    luna_request_id: &str,
    status_code: u16,
    result: Option<&R>,
    error: Option<&MatchError>,
) {
    serde_json::to_writer(out, &ResponseRef { rid, luna_request_id, status_code, result, error })
        .expect("response serialises");
}

/// One match request as carried in a stream entry: LUNA LIM's message (no `version`: the
/// SDK-form descriptor's header carries it) plus kim's optional fields.
#[derive(Debug, Clone, PartialEq)]
pub struct MatchRequest {
    pub descriptor: Vec<u8>,
    /// The descriptor version; `None` only when the descriptor is in the SDK form.
    pub version: Option<u32>,
    pub label: String,
    pub limit: u32,
    pub response_channel: String,
    pub luna_request_id: String,
    pub rid: String,
    /// Unix milliseconds after which the request is answered with a timeout, unsearched.
    pub deadline: Option<u64>,
    /// Minimum similarity (0..=1) of the candidates returned.
    pub threshold: Option<f64>,
}

impl MatchRequest {
    /// Stream entry fields, in the order the protocol lists them.
    pub fn fields(&self) -> Vec<(&'static str, Vec<u8>)> {
        let mut f = vec![("descriptor", self.descriptor.clone())];
        if let Some(v) = self.version {
            f.push(("version", v.to_string().into_bytes()));
        }
        f.extend([
            ("label", self.label.clone().into_bytes()),
            ("limit", self.limit.to_string().into_bytes()),
            ("response_channel", self.response_channel.clone().into_bytes()),
            ("luna_request_id", self.luna_request_id.clone().into_bytes()),
            ("rid", self.rid.clone().into_bytes()),
        ]);
        if let Some(d) = self.deadline {
            f.push(("deadline", d.to_string().into_bytes()));
        }
        if let Some(t) = self.threshold {
            f.push(("threshold", t.to_string().into_bytes()));
        }
        f
    }

    /// Parses a stream entry. On failure, returns what is known of where to reply.
    pub fn parse(fields: &HashMap<String, Vec<u8>>) -> Result<MatchRequest, Rejected> {
        MatchRequest::parse_with(|k| fields.get(k).map(Vec::as_slice))
    }

    /// [`MatchRequest::parse`] over any field lookup (`field(name)` = the value of the entry's
    /// field `name`, if present), so a reader need not build a map per entry.
    pub fn parse_with<'a>(field: impl Fn(&str) -> Option<&'a [u8]>) -> Result<MatchRequest, Rejected> {
        let text = |k: &str| field(k).and_then(|v| std::str::from_utf8(v).ok());
        let mut rej = Rejected {
            response_channel: text("response_channel").filter(|c| !c.is_empty()).map(str::to_string),
            rid: text("rid").unwrap_or_default().to_string(),
            luna_request_id: text("luna_request_id").unwrap_or_default().to_string(),
            reason: String::new(),
        };
        let fail = |mut r: Rejected, reason: String| {
            r.reason = reason;
            Err(r)
        };
        let Some(descriptor) = field("descriptor") else {
            return fail(rej, "field \"descriptor\" is missing".into());
        };
        for k in ["label", "limit", "response_channel", "rid"] {
            if field(k).is_none() {
                return fail(rej, format!("field {k:?} is missing"));
            }
        }
        let number = |k: &str| text(k).and_then(|s| s.trim().parse::<u64>().ok());
        let version = match field("version") {
            Some(_) => match number("version").and_then(|v| u32::try_from(v).ok()) {
                Some(v) => Some(v),
                None => return fail(rej, "field \"version\" must be a non-negative decimal integer".into()),
            },
            None if descriptor.len() >= 8 && descriptor.starts_with(SDK_MAGIC) => None,
            None => return fail(rej, VERSION_NEEDED.into()),
        };
        let limit = match number("limit") {
            Some(l) if (1..=MAX_LIMIT as u64).contains(&l) => l as u32,
            _ => return fail(rej, format!("field \"limit\" must be an integer in 1..={MAX_LIMIT}")),
        };
        let deadline = match field("deadline") {
            None => None,
            Some(_) => match number("deadline") {
                Some(d) => Some(d),
                None => return fail(rej, "field \"deadline\" must be unix milliseconds".into()),
            },
        };
        let threshold = match field("threshold") {
            None => None,
            Some(_) => match text("threshold").and_then(|s| s.trim().parse::<f64>().ok()) {
                Some(t) if (0.0..=1.0).contains(&t) => Some(t),
                _ => return fail(rej, "field \"threshold\" must be a similarity in [0, 1]".into()),
            },
        };
        let Some(label) = text("label").filter(|l| !l.is_empty()) else {
            return fail(rej, "field \"label\" must be non-empty UTF-8".into());
        };
        let Some(response_channel) = rej.response_channel.take() else {
            return fail(rej, "field \"response_channel\" must be non-empty UTF-8".into());
        };
        if rej.rid.is_empty() {
            rej.response_channel = Some(response_channel);
            return fail(rej, "field \"rid\" must be non-empty UTF-8".into());
        }
        Ok(MatchRequest {
            descriptor: descriptor.to_vec(),
            version,
            label: label.to_string(),
            limit,
            response_channel,
            luna_request_id: rej.luna_request_id,
            rid: rej.rid,
            deadline,
            threshold,
        })
    }
}

/// A stream entry that is not a valid request.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    /// Where to send the 26301 reply, if the entry says.
    pub response_channel: Option<String>,
    pub rid: String,
    pub luna_request_id: String,
    pub reason: String,
}

/// Stream key of a label.
pub fn stream_key(prefix: &str, label: &str) -> String {
    format!("{prefix}{label}")
}

/// Registry key a matcher keeps alive for each label it serves.
pub fn registry_key(prefix: &str, label: &str, matcher_id: &str) -> String {
    format!("{prefix}matching_label__{label}__{matcher_id}")
}

/// SCAN pattern matching every matcher's registry key of `label` (glob characters escaped).
pub fn registry_pattern(prefix: &str, label: &str) -> String {
    format!("{}matching_label__{}__*", glob_escape(prefix), glob_escape(label))
}

/// The hash of what every matcher of `label` serves: field = matcher id, value = [`Served`]
/// JSON, refreshed with the registry key. One key per label, so the operator reads a label's
/// matchers with one HGETALL rather than a SCAN of the keyspace.
pub fn served_key(prefix: &str, label: &str) -> String {
    format!("{prefix}kim:served:{{{label}}}")
}

/// The set of labels a matcher pool serves (`kim-worker match --pool <name>`): the operator
/// adds a label that opted into the pool once it has a snapshot and removes it when the label
/// leaves; the pool's matchers load the members and drop the rest.
pub fn pool_key(prefix: &str, pool: &str) -> String {
    format!("{prefix}kim:pool:{{{pool}}}")
}

/// A matcher's entry in [`served_key`]: its registry value and when the entry goes stale (a
/// matcher that stopped refreshing it, e.g. one that crashed, is not serving any more).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Served {
    #[serde(flatten)]
    pub info: LabelInfo,
    /// Unix ms after which the entry no longer counts.
    pub until: u64,
}

/// SCAN pattern for all registry keys.
pub fn registry_pattern_all(prefix: &str) -> String {
    format!("{}matching_label__*", glob_escape(prefix))
}

/// The label of a registry key: the part between `matching_label__` and the last `__`.
pub fn label_of_registry_key<'a>(prefix: &str, key: &'a str) -> Option<&'a str> {
    let rest = key.strip_prefix(prefix)?.strip_prefix("matching_label__")?;
    rest.rfind("__").map(|i| &rest[..i])
}

fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Value of a registry key: what the matcher serves for the label.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelInfo {
    pub version: u32,
    pub dimensions: usize,
    pub encoding: String,
    pub metric: String,
    /// Vectors a search covers: the snapshot's, plus the tail, minus tombstones.
    pub vectors: usize,
    pub snapshot: String,
    /// Set when the snapshot CURRENT names failed verification on this matcher, which serves
    /// the older `snapshot` instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<String>,
    /// Deltas applied on top of the snapshot.
    #[serde(default)]
    pub deltas: u64,
    /// Rows added by deltas, scanned exactly beside the graph.
    #[serde(default)]
    pub tail: usize,
    /// Rows removed by deltas (filtered out of every search).
    #[serde(default)]
    pub tombstones: usize,
    /// The shard this matcher serves, when the label is split (absent when it is not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<u32>,
    /// How many shards the label is split into (absent when it is not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<u32>,
}

/// A LUNA-style request id: `"<unix seconds>,<uuid4>"`.
pub fn new_luna_request_id() -> String {
    format!("{},{}", unix_ms() / 1000, uuid::Uuid::new_v4())
}

pub fn new_rid() -> String {
    uuid::Uuid::new_v4().to_string()
}

pub fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> MatchRequest {
        MatchRequest {
            descriptor: vec![1, 2, 3],
            version: Some(59),
            label: "watch*list".into(),
            limit: 3,
            response_channel: "ch".into(),
            luna_request_id: new_luna_request_id(),
            rid: new_rid(),
            deadline: Some(123),
            threshold: Some(0.75),
        }
    }

    fn as_map(r: &MatchRequest) -> HashMap<String, Vec<u8>> {
        r.fields().into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    #[test]
    fn request_round_trip() {
        let r = req();
        assert_eq!(MatchRequest::parse(&as_map(&r)).unwrap(), r);
        let mut no_deadline = r.clone();
        no_deadline.deadline = None;
        no_deadline.threshold = None;
        assert_eq!(MatchRequest::parse(&as_map(&no_deadline)).unwrap(), no_deadline);
        assert_eq!(no_deadline.fields().len(), 7);
    }

    /// LUNA LIM's documented message: no `version`, the SDK header carries it.
    #[test]
    fn lim_message_without_version() {
        let mut m: HashMap<String, Vec<u8>> = [
            ("descriptor", [&SDK_MAGIC[..], &59u32.to_le_bytes(), &[7; 4]].concat()),
            ("label", b"faces".to_vec()),
            ("limit", b"5".to_vec()),
            ("response_channel", b"ch".to_vec()),
            ("luna_request_id", b"1700000000,x".to_vec()),
            ("rid", b"r".to_vec()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let r = MatchRequest::parse(&m).unwrap();
        assert_eq!((r.version, r.limit, r.deadline, r.threshold), (None, 5, None, None));
        assert!(r.fields().iter().all(|(k, _)| *k != "version"));
        assert_eq!(MatchRequest::parse(&as_map(&r)).unwrap(), r);
        // A bare payload needs the version.
        m.insert("descriptor".into(), vec![7; 512]);
        let e = MatchRequest::parse(&m).unwrap_err();
        assert_eq!(
            (e.reason.as_str(), e.rid.as_str(), e.response_channel.as_deref()),
            (VERSION_NEEDED, "r", Some("ch"))
        );
        m.insert("descriptor".into(), SDK_MAGIC.to_vec());
        assert_eq!(MatchRequest::parse(&m).unwrap_err().reason, VERSION_NEEDED, "the magic alone is no header");
        m.insert("version".into(), b"59".to_vec());
        assert_eq!(MatchRequest::parse(&m).unwrap().version, Some(59));
    }

    #[test]
    fn threshold_is_a_similarity() {
        let r = req();
        for ok in ["0", "1", "0.5", " 0.25 ", "1e-3"] {
            let mut m = as_map(&r);
            m.insert("threshold".into(), ok.as_bytes().to_vec());
            let t = MatchRequest::parse(&m).unwrap().threshold.unwrap();
            assert_eq!(t, ok.trim().parse::<f64>().unwrap(), "{ok}");
        }
        for bad in ["-0.1", "1.01", "NaN", "inf", "", "x", "0,5"] {
            let mut m = as_map(&r);
            m.insert("threshold".into(), bad.as_bytes().to_vec());
            assert!(MatchRequest::parse(&m).unwrap_err().reason.contains("threshold"), "{bad}");
        }
    }

    #[test]
    fn malformed_entries_keep_the_reply_channel() {
        let r = req();
        for (k, v) in
            [("limit", "0"), ("limit", "x"), ("version", "-1"), ("deadline", "soon"), ("label", ""), ("threshold", "2")]
        {
            let mut m = as_map(&r);
            m.insert(k.into(), v.as_bytes().to_vec());
            let e = MatchRequest::parse(&m).unwrap_err();
            assert_eq!(e.response_channel.as_deref(), Some("ch"), "{k}");
            assert_eq!(e.rid, r.rid);
            assert!(e.reason.contains(k), "{}", e.reason);
        }
        let mut m = as_map(&r);
        m.remove("response_channel");
        assert_eq!(MatchRequest::parse(&m).unwrap_err().response_channel, None);
    }

    #[test]
    fn response_json_shape() {
        let ok = MatchResponse::ok("r", "l", vec![("a".into(), 0.5)]);
        let v: serde_json::Value = serde_json::from_str(&ok.to_json()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"rid":"r","luna_request_id":"l","status_code":201,"result":[["a",0.5]],"error":null})
        );
        let e = MatchResponse::failed("r", "l", ErrorCode::VersionMismatch, "d");
        let v: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(v["result"], serde_json::Value::Null, "error replies carry result null");
        assert_eq!(serde_json::from_str::<MatchResponse>(&e.to_json()).unwrap(), e);
        let with_list = e.to_json().replace("\"result\":null", "\"result\":[]");
        assert_eq!(serde_json::from_str::<MatchResponse>(&with_list).unwrap(), e, "an empty list reads the same");
        assert_eq!(e.status_code, 400);
        assert_eq!(e.error.as_ref().unwrap().error_code, 26305);
        assert!(e.error.unwrap().link.ends_with("#26305"));
    }

    #[test]
    fn borrowed_reply_json_is_byte_identical() {
        let hits = vec![
            ("face-1\"\\x".to_string(), 0.851_123_456_789),
            ("é,ü".into(), 1.0),
            ("0".into(), 0.0),
            ("n".into(), 1e-7),
        ];
        let ok = MatchResponse::ok("r\n", "1763800000,abc", hits.clone());
        let borrowed: Vec<(&str, f64)> = hits.iter().map(|(i, s)| (i.as_str(), *s)).collect();
        let mut out = b"prefix".to_vec();
        write_response_json(&mut out, "r\n", "1763800000,abc", STATUS_OK, Some(&borrowed[..]), None);
        assert_eq!(&out[6..], ok.to_json().as_bytes());
        for code in ErrorCode::all() {
            let e = MatchResponse::failed("r", "", code, "detail \"quoted\"");
            let mut out = Vec::new();
            write_response_json(&mut out, "r", "", code.status(), None::<&[(&str, f64)]>, e.error.as_ref());
            assert_eq!(out, e.to_json().into_bytes());
        }
    }

    #[test]
    fn parse_with_matches_parse() {
        let r = req();
        let mut m = as_map(&r);
        assert_eq!(MatchRequest::parse_with(|k| m.get(k).map(Vec::as_slice)), MatchRequest::parse(&m));
        m.insert("rid".into(), Vec::new());
        let e = MatchRequest::parse(&m).unwrap_err();
        assert_eq!((e.response_channel.as_deref(), e.rid.as_str()), (Some("ch"), ""));
        m.remove("descriptor");
        assert!(MatchRequest::parse(&m).unwrap_err().reason.contains("\"descriptor\" is missing"));
    }

    #[test]
    fn registry_keys_and_patterns() {
        let k = registry_key("p:", "a__b", "m1");
        assert_eq!(k, "p:matching_label__a__b__m1");
        assert_eq!(label_of_registry_key("p:", &k), Some("a__b"));
        assert_eq!(registry_pattern("", "x*y"), "matching_label__x\\*y__*");
        let id = new_luna_request_id();
        let (secs, uuid) = id.split_once(',').unwrap();
        assert!(secs.parse::<u64>().unwrap() > 1_600_000_000);
        assert_eq!(uuid.len(), 36);
    }

    #[test]
    fn served_entries_carry_the_registry_value_flat() {
        assert_eq!(served_key("p:", "faces"), "p:kim:served:{faces}");
        assert_eq!(pool_key("p:", "ix"), "p:kim:pool:{ix}");
        let json = r#"{"version":59,"dimensions":8,"encoding":"u8","metric":"cosine","vectors":3,"snapshot":"a","rejected":"b","until":7}"#;
        let s: Served = serde_json::from_str(json).unwrap();
        assert_eq!((s.info.snapshot.as_str(), s.info.rejected.as_deref(), s.until), ("a", Some("b"), 7));
        let back: serde_json::Value = serde_json::to_value(&s).unwrap();
        assert_eq!((back["until"].as_u64(), back["vectors"].as_u64()), (Some(7), Some(3)), "{back}");
        assert!(serde_json::from_str::<Served>(&json.replace(r#","until":7"#, "")).is_err(), "until is required");
    }
}
