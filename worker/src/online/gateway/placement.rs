//! Which agents hold an id: rendezvous (highest random weight) hashing over the agent set,
//! so every gateway agrees without coordination, and adding or losing one agent moves only
//! the ids it owned. The agent set is a fixed list or the addresses of a DNS name. A fixed
//! set may name agents that are read but never written (`--read-agents`): ones joining,
//! until the operator makes them owners, and ones leaving, until a rebalance has drained
//! them. Every read covers every place a write may have gone.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use xxhash_rust::xxh3::xxh3_64;

/// The current agent addresses (HOST:PORT), sorted: the owners (written to) and every
/// agent read (the owners and the read-only ones).
pub struct Agents {
    list: ArcSwap<Vec<String>>,
    read_only: Vec<String>,
}

impl Agents {
    /// Owners `addrs`, plus `read_only` agents searched and asked for ids but never written.
    pub fn with_read_only(addrs: Vec<String>, read_only: Vec<String>) -> Agents {
        let clean = |mut v: Vec<String>| {
            v.retain(|s| !s.is_empty());
            v.sort();
            v.dedup();
            v
        };
        let addrs = clean(addrs);
        let read_only = clean(read_only).into_iter().filter(|a| !addrs.contains(a)).collect();
        Agents { list: ArcSwap::from_pointee(addrs), read_only }
    }

    /// Every agent read: the owners' set and the read-only agents.
    pub fn all(&self) -> Arc<Vec<String>> {
        let owners = self.list.load_full();
        if self.read_only.is_empty() {
            return owners;
        }
        let mut v: Vec<String> = owners.iter().chain(&self.read_only).cloned().collect();
        v.sort();
        Arc::new(v)
    }

    /// The read-only agents (never owners).
    pub fn read_only(&self) -> &[String] {
        &self.read_only
    }

    /// The `replicas` agents that own `id`, best first (never a read-only one).
    pub fn owners(&self, id: &str, replicas: usize) -> Vec<String> {
        owners(&self.list.load_full(), id, replicas)
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
    fn read_only_agents_are_read_but_never_own() {
        let a = Agents::with_read_only(vec!["b:1".into(), "a:1".into()], vec!["c:1".into(), "a:1".into()]);
        assert_eq!(*a.all(), vec!["a:1".to_string(), "b:1".into(), "c:1".into()]);
        assert_eq!(a.read_only(), ["c:1".to_string()]);
        for i in 0..200 {
            let o = a.owners(&format!("id-{i}"), 3);
            assert_eq!(o.len(), 2, "only the two owners can own");
            assert!(!o.contains(&"c:1".to_string()));
        }
    }

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
