//! Passwords never reach logs: URLs are shown with their userinfo masked.

/// `scheme://user:secret@host/...` → `scheme://user:***@host/...`; anything before the last
/// `@` counts as userinfo, so an unescaped `@` or `/` in a password still never leaks.
pub fn redact(url: &str) -> String {
    let Some(at) = url.rfind('@') else { return url.to_string() };
    let (scheme, info) = match url.find("://") {
        Some(i) if i < at => (&url[..i + 3], &url[i + 3..at]),
        _ => ("", &url[..at]),
    };
    let shown = match info.split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None => "***".to_string(),
    };
    format!("{scheme}{shown}{}", &url[at..])
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn userinfo_is_masked() {
        assert_eq!(redact("redis://127.0.0.1:6379/0"), "redis://127.0.0.1:6379/0");
        assert_eq!(redact("rediss://kim:s3cret@redis:6380/1"), "rediss://kim:***@redis:6380/1");
        assert_eq!(redact("redis://:s3cret@redis"), "redis://:***@redis");
        assert_eq!(redact("redis://s3cret@redis"), "redis://***@redis");
        assert_eq!(redact("redis+sentinel://u:p@a:1,b:2/mymaster/0"), "redis+sentinel://u:***@a:1,b:2/mymaster/0");
        // Unescaped '@' and '/' in the password: still nothing of it survives.
        let shown = redact("redis://u:pa/ss@wo@rd@host:1/0");
        assert_eq!(shown, "redis://u:***@host:1/0");
        assert!(!shown.contains("pa/ss") && !shown.contains("wo"));
        assert_eq!(redact("u:secret@host:1"), "u:***@host:1");
    }
}
