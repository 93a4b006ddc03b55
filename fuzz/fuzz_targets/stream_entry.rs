//! Redis stream entry → MatchRequest. Input: fields separated by 0xFF, each `name=value`
//! (the name is taken as bytes up to the first `=`), so the fuzzer reaches every field's
//! validation; a valid request must survive a round trip through its own fields.
#![no_main]

use std::collections::HashMap;

use kim_api::MatchRequest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut fields = HashMap::new();
    for part in data.split(|&b| b == 0xff) {
        let (name, value) = match part.iter().position(|&b| b == b'=') {
            Some(i) => (&part[..i], &part[i + 1..]),
            None => (part, &[][..]),
        };
        fields.insert(String::from_utf8_lossy(name).into_owned(), value.to_vec());
    }
    match MatchRequest::parse(&fields) {
        Ok(req) => {
            let again: HashMap<String, Vec<u8>> = req.fields().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            assert_eq!(MatchRequest::parse(&again).as_ref(), Ok(&req), "a parsed request re-parses to itself");
        }
        Err(rej) => assert!(!rej.reason.is_empty(), "a rejection says why"),
    }
});
