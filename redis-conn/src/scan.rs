//! `SCAN … MATCH`, cursor to the end: the keys of a pattern, for the client's label listing and
//! the operator's removal of a label's keys.

use redis::aio::ConnectionLike;

/// The keys matching `pattern`; with `first_only`, stops at the first batch that found any.
pub async fn scan<C: ConnectionLike + Send>(
    conn: &mut C,
    pattern: &str,
    first_only: bool,
) -> redis::RedisResult<Vec<String>> {
    let mut cursor = 0u64;
    let mut found = Vec::new();
    loop {
        let (next, keys): (u64, Vec<String>) =
            redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(1000).query_async(conn).await?;
        found.extend(keys);
        if next == 0 || (first_only && !found.is_empty()) {
            return Ok(found);
        }
        cursor = next;
    }
}
