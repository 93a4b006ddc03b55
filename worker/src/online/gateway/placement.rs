//! Which agents hold an id: rendezvous (highest random weight) hashing over the agent set,
//! so every gateway agrees without coordination, and adding or losing one agent moves only
//! the ids it owned. The agent set is a fixed list or the addresses of a DNS name.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use xxhash_rust::xxh3::xxh3_64;

/// The current agent addresses (HOST:PORT), sorted.
pub struct Agents {
    list: ArcSwap<Vec<String>>,
}

impl Agents {
    pub fn fixed(mut addrs: Vec<String>) -> Agents {
        addrs.sort();
        addrs.dedup();
        Agents { list: ArcSwap::from_pointee(addrs) }
    }

    pub fn all(&self) -> Arc<Vec<String>> {
        self.list.load_full()
    }

    /// The `replicas` agents that own `id`, best first.
    pub fn owners(&self, id: &str, replicas: usize) -> Vec<String> {
        owners(&self.all(), id, replicas)
    }

    /// Keeps the set equal to the addresses `name` (HOST:PORT) resolves to. A failed lookup
    /// keeps the previous set. Runs until the process ends.
    pub async fn follow_dns(self: Arc<Self>, name: String, every: Duration) {
        loop {
            match tokio::net::lookup_host(name.as_str()).await {
                Ok(addrs) => {
                    let mut v: Vec<String> = addrs.map(|a| a.to_string()).collect();
                    v.sort();
                    v.dedup();
                    if *self.list.load_full() != v {
                        tracing::info!(%name, agents = ?v, "agent set changed");
                        self.list.store(Arc::new(v));
                    }
                }
                Err(e) => tracing::warn!(%name, error = %e, "resolving agents failed; keeping the previous set"),
            }
            tokio::time::sleep(every).await;
        }
    }
}

fn weight(agent: &str, id: &str) -> u64 {
    let mut key = Vec::with_capacity(agent.len() + id.len() + 1);
    key.extend_from_slice(agent.as_bytes());
    key.push(0);
    key.extend_from_slice(id.as_bytes());
    xxh3_64(&key)
}

pub fn owners(agents: &[String], id: &str, replicas: usize) -> Vec<String> {
    let mut scored: Vec<(u64, &String)> = agents.iter().map(|a| (weight(a, id), a)).collect();
    scored.sort_by(|a, b| b.cmp(a));
    scored.into_iter().take(replicas.max(1)).map(|(_, a)| a.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_is_stable_balanced_and_moves_little() {
        let three: Vec<String> = (1..=3).map(|i| format!("10.0.0.{i}:8081")).collect();
        let four: Vec<String> = (1..=4).map(|i| format!("10.0.0.{i}:8081")).collect();
        let mut load = [0usize; 3];
        let mut moved = 0;
        for i in 0..3000 {
            let id = format!("obj-{i}");
            let o = owners(&three, &id, 2);
            assert_eq!(o.len(), 2);
            assert_ne!(o[0], o[1]);
            assert_eq!(o, owners(&three, &id, 2), "deterministic");
            o.iter().for_each(|a| load[three.iter().position(|x| x == a).unwrap()] += 1);
            let o4 = owners(&four, &id, 2);
            moved += o.iter().filter(|a| !o4.contains(a)).count();
        }
        assert!(load.iter().all(|&l| (1800..2200).contains(&l)), "{load:?}");
        // A 4th agent joins the top 2 of about half the ids (≈ 1500 moved replicas), never all.
        assert!(moved < 2000, "{moved}");
        assert_eq!(owners(&three, "x", 5).len(), 3);
    }
}
