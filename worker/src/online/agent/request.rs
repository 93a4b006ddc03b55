//! The agent's request handling that needs no I/O: checking write requests into engine
//! [`Write`]s and answering searches from a [`Store`]. The gRPC services and the fuzz target
//! (which compiles this file by path) run the same code.

use kim_proto::payload::v1::{object, remove, search};
use tonic::Status;

use super::store::Store;
use crate::online::limits::{self, Limits, SearchPlan};

/// What a write asks for; decides the existence check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Insert,
    Update,
    Upsert,
    Remove,
    /// Vald's UpdateTimestamp: the stored vector with a new timestamp; without `force`
    /// only a newer timestamp is applied.
    Touch {
        force: bool,
    },
}

#[derive(Debug, Clone)]
pub struct Write {
    pub mode: Mode,
    pub id: String,
    /// Empty for removals and timestamp updates.
    pub vector: Vec<f32>,
    /// For a removal: 0, or remove only while the object still has this timestamp.
    pub timestamp: i64,
    /// Vald's skip_strict_exist_check: insert overwrites, update/remove of a missing id is
    /// not an error.
    pub skip_exist_check: bool,
}

/// What an agent checks requests against.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub dimensions: usize,
    pub ef_search: usize,
    pub limits: Limits,
}

impl Rules {
    /// An Insert/Update/Upsert request's vector and config as a write. The timestamp is the
    /// config's, else the vector's, else `now`.
    pub fn put(
        &self,
        mode: Mode,
        vector: Option<object::Vector>,
        cfg_timestamp: i64,
        skip: bool,
        now: i64,
    ) -> Result<Write, Status> {
        let v = vector.ok_or_else(|| Status::invalid_argument("request has no vector"))?;
        limits::id(&v.id)?;
        limits::vector(&format!("vector {}", v.id), &v.vector, Some(self.dimensions))?;
        let timestamp = [cfg_timestamp, v.timestamp].into_iter().find(|&t| t > 0).unwrap_or(now);
        Ok(Write { mode, id: v.id, vector: v.vector, timestamp, skip_exist_check: skip })
    }

    pub fn remove(&self, r: remove::Request) -> Result<Write, Status> {
        let id = r.id.map(|i| i.id).unwrap_or_default();
        limits::id(&id)?;
        let skip = r.config.is_some_and(|c| c.skip_strict_exist_check);
        Ok(Write { mode: Mode::Remove, id, vector: Vec::new(), timestamp: 0, skip_exist_check: skip })
    }

    /// Vald's UpdateTimestamp{id, timestamp, force}: a positive timestamp.
    pub fn touch(&self, id: String, timestamp: i64, force: bool) -> Result<Write, Status> {
        limits::id(&id)?;
        if timestamp <= 0 {
            return Err(Status::invalid_argument(format!("timestamp {timestamp} must be positive")));
        }
        Ok(Write { mode: Mode::Touch { force }, id, vector: Vec::new(), timestamp, skip_exist_check: false })
    }

    /// Checks a search before the store is touched.
    pub fn plan(&self, vector: &[f32], cfg: Option<&search::Config>) -> Result<SearchPlan, Status> {
        let plan = self.limits.search(cfg)?;
        limits::vector("query", vector, Some(self.dimensions))?;
        Ok(plan)
    }

    /// The planned search on `store`: results within the radius, closest first; NOT_FOUND
    /// below `min_num`.
    pub fn search(
        &self,
        store: &Store,
        plan: &SearchPlan,
        vector: &[f32],
        exact: bool,
    ) -> Result<Vec<object::Distance>, Status> {
        let ef = plan.ef(self.ef_search, self.limits.max_num);
        let results: Vec<object::Distance> = store
            .search(vector, plan.num, ef, exact)
            .into_iter()
            .filter(|f| plan.radius.is_none_or(|r| f.distance <= r))
            .map(|f| object::Distance { id: f.id, distance: f.distance })
            .collect();
        plan.check_found(results.len())?;
        Ok(results)
    }
}
