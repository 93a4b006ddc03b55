//! Bounded client load while a label moves to another snapshot.

use std::time::{Duration, Instant};

use kim_client::{Client, Match};

/// What [`load_until_serving`] saw.
pub struct Load {
    pub answered: usize,
    /// Requests sent after the registry named the target snapshot.
    pub after: usize,
    /// Every reply that was not a 201 success, as text.
    pub failed: Vec<String>,
}

/// Sends batches of 8 matches cycled over `rows` until `after` requests were sent once
/// `label`'s registry names `target`, or 20,000 were answered, or `within` passed.
pub fn load_until_serving(
    client: &Client,
    rows: Vec<Vec<u8>>,
    ask: fn(Vec<u8>) -> Match,
    (label, target): (&str, &str),
    after: usize,
    within: Duration,
) -> tokio::task::JoinHandle<Load> {
    let (c, label, target) = (client.clone(), label.to_string(), target.to_string());
    tokio::spawn(async move {
        let started = Instant::now();
        let mut load = Load { answered: 0, after: 0, failed: Vec::new() };
        while started.elapsed() < within && load.answered < 20_000 && load.after < after {
            let batch: Vec<_> =
                (0..8).map(|k| c.match_descriptor(ask(rows[(load.answered + k) % rows.len()].clone()))).collect();
            for r in futures::future::join_all(batch).await {
                match r {
                    Ok(r) if r.status_code == 201 => {}
                    other => load.failed.push(format!("{other:?}")),
                }
                load.answered += 1;
            }
            if c.label_info(&label).await.unwrap()[0].snapshot == target {
                load.after += 8;
            }
        }
        load
    })
}

impl Load {
    /// Asserts that nothing failed and that the load outlived the move by `after` requests.
    pub fn assert_clean(&self, after: usize) {
        let (answered, failed) = (self.answered, &self.failed);
        assert!(failed.is_empty(), "{} of {answered} failed, first {:?}", failed.len(), failed.first());
        assert!(self.after >= after, "{answered} answered, {} after the target was served", self.after);
    }
}
