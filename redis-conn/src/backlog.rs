//! The backlog of a consumer group, as both the matchers (metrics) and the operator (backlog
//! autoscaling) read it: `XINFO GROUPS <stream>`, the group's `lag` and `pending`.

use redis::aio::ConnectionLike;
use redis::Value;

/// Requests waiting for one consumer group of a stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Entries added to the stream that the group has not read yet (0 when Redis cannot tell,
    /// e.g. after entries were deleted from the middle of the stream).
    pub lag: i64,
    /// Entries the group's consumers read and have not acknowledged yet.
    pub pending: i64,
}

impl Backlog {
    pub fn total(&self) -> i64 {
        self.lag.max(0) + self.pending.max(0)
    }
}

/// The backlog of `group` on `stream`; an empty one when the stream or the group does not exist
/// yet (no consumer has started).
pub async fn backlog(conn: &mut impl ConnectionLike, stream: &str, group: &str) -> redis::RedisResult<Backlog> {
    let reply: Value = match redis::cmd("XINFO").arg("GROUPS").arg(stream).query_async(conn).await {
        Ok(g) => g,
        Err(e) if e.to_string().contains("no such key") => return Ok(Backlog::default()),
        Err(e) => return Err(e),
    };
    let Value::Array(groups) = reply else { return Ok(Backlog::default()) };
    Ok(groups.into_iter().find_map(|g| of_group(&fields(g), group)).unwrap_or_default())
}

/// One group's entry as (field, value) pairs, from a RESP2 flat array or a RESP3 map.
fn fields(entry: Value) -> Vec<(String, Value)> {
    let name = |k: Value| match k {
        Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
        Value::SimpleString(s) => s,
        _ => String::new(),
    };
    match entry {
        Value::Array(flat) => {
            let mut it = flat.into_iter();
            std::iter::from_fn(|| Some((name(it.next()?), it.next()?))).collect()
        }
        Value::Map(kv) => kv.into_iter().map(|(k, v)| (name(k), v)).collect(),
        _ => Vec::new(),
    }
}

/// The backlog in one group's `XINFO GROUPS` entry, if it is `group`'s.
fn of_group(fields: &[(String, Value)], group: &str) -> Option<Backlog> {
    let get = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, v)| v);
    let name = match get("name")? {
        Value::BulkString(b) => b.as_slice(),
        Value::SimpleString(s) => s.as_bytes(),
        _ => return None,
    };
    if name != group.as_bytes() {
        return None;
    }
    let number = |k: &str| match get(k) {
        Some(Value::Int(n)) => *n,
        _ => 0,
    };
    Some(Backlog { lag: number("lag"), pending: number("pending") })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, lag: Value, pending: i64) -> Vec<(String, Value)> {
        vec![
            ("name".into(), Value::BulkString(name.as_bytes().to_vec())),
            ("consumers".into(), Value::Int(2)),
            ("pending".into(), Value::Int(pending)),
            ("last-delivered-id".into(), Value::BulkString(b"0-0".to_vec())),
            ("lag".into(), lag),
        ]
    }

    #[test]
    fn reads_lag_and_pending_of_the_named_group_only() {
        let other = entry("other", Value::Int(99), 99);
        let ours = entry("kim-matchers", Value::Int(7), 3);
        assert_eq!(of_group(&other, "kim-matchers"), None);
        let b = of_group(&ours, "kim-matchers").unwrap();
        assert_eq!((b.lag, b.pending, b.total()), (7, 3, 10));
        // Redis answers a nil lag when it cannot compute it: pending still counts.
        let unknown = entry("kim-matchers", Value::Nil, 4);
        assert_eq!(of_group(&unknown, "kim-matchers"), Some(Backlog { lag: 0, pending: 4 }));
    }
}
