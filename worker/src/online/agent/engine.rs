//! The agent engine: one writer thread owns the WAL and is the only mutator of the [`Store`],
//! so existence checks, LSN assignment, logging and applying happen in one order. Writes that
//! arrive together share one fsync (group commit); a reply is sent only after the fsync.
//! Index builds run off that thread on a checkpoint: the writer rotates the WAL and hands
//! over the live rows at that LSN; the built segment is swapped in and saved, and WAL
//! segments it covers are deleted.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use kim_index::build::build_graph;
use kim_index::{FlatIndex, HnswParams, Metric};
use tokio::sync::{mpsc, oneshot, Notify};

use super::persist::{self, PersistError};
pub use super::request::{Mode, Write};
use super::store::{Held, Live, Obj, Segment, Store};
use super::wal::{self, Record, Wal, WalError};

#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    #[error("object {0} already exists")]
    AlreadyExists(String),
    #[error("object {0} not found")]
    NotFound(String),
    #[error("object {id} already has timestamp {stored}, not older than {given} (set force to overwrite)")]
    NotNewer { id: String, stored: i64, given: i64 },
    #[error("write-ahead log: {0}")]
    Durability(String),
    #[error("agent is shutting down")]
    Closed,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error(transparent)]
    Persist(#[from] PersistError),
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    #[error("WAL record {lsn} follows {prev}: LSNs must increase")]
    Order { lsn: u64, prev: u64 },
    #[error("index build failed: {0}")]
    Build(String),
    #[error(transparent)]
    Write(#[from] WriteError),
}

type Reply = oneshot::Sender<Vec<Result<(), WriteError>>>;

enum Cmd {
    Write(Vec<Write>, Reply),
    Flush(oneshot::Sender<Result<(), WriteError>>),
    /// Rotate the WAL and return the live rows with the LSN they are current at.
    Checkpoint(oneshot::Sender<Result<Live, WriteError>>),
}

/// Settings that do not change while running.
#[derive(Debug, Clone)]
pub struct Config {
    pub dir: PathBuf,
    pub dimensions: usize,
    pub metric: Metric,
    pub hnsw: HnswParams,
    pub build_threads: usize,
    /// A build is started once the backlog reaches this many rows.
    pub max_uncommitted: usize,
}

/// Counters the engine reports (the gRPC layer adds request metrics).
#[derive(Default)]
pub struct Stats {
    pub fsyncs: AtomicU64,
    pub fsync_micros: AtomicU64,
    pub builds: AtomicU64,
    pub last_build_millis: AtomicU64,
}

pub struct Engine {
    pub cfg: Config,
    pub state: RwLock<Store>,
    tx: mpsc::Sender<Cmd>,
    build_lock: tokio::sync::Mutex<()>,
    pub indexing: AtomicBool,
    pub saving: AtomicBool,
    saved_lsn: AtomicU64,
    /// Woken when the backlog outgrows `max_uncommitted`.
    pub build_wanted: Notify,
    pub stats: Stats,
    /// Torn WAL bytes discarded at startup (0 after a clean shutdown).
    pub discarded_bytes: u64,
}

impl Engine {
    /// Loads the newest snapshot, replays the WAL after it and starts the writer thread.
    pub fn open(cfg: Config) -> Result<Arc<Engine>, EngineError> {
        let t = Instant::now();
        std::fs::create_dir_all(&cfg.dir).map_err(|err| EngineError::Io { path: cfg.dir.clone(), err })?;
        let mut store = Store::new(cfg.dimensions, cfg.metric, cfg.hnsw.ef_search);
        let saved = persist::load_latest(&cfg.dir, store.spec)?;
        let saved_lsn = saved.as_ref().map_or(0, |s| s.lsn);
        if let Some(seg) = saved {
            for r in 0..seg.rows() {
                let obj = Obj { vector: Held::Row(r as u32), timestamp: seg.timestamps[r], lsn: seg.lsns[r] };
                store.objects.insert(seg.index.ids.get(r).to_string(), obj);
            }
            store.lsn = seg.lsn;
            store.install(seg);
        }
        let replay = wal::replay(&cfg.dir)?;
        let mut replayed = 0;
        for rec in replay.records {
            if rec.lsn() <= saved_lsn {
                continue;
            }
            if rec.lsn() <= store.lsn {
                return Err(EngineError::Order { lsn: rec.lsn(), prev: store.lsn });
            }
            store.apply(rec);
            replayed += 1;
        }
        let wal = Wal::create(&cfg.dir, store.lsn + 1)?;
        tracing::info!(dir = %cfg.dir.display(), objects = store.objects.len(), snapshot_lsn = saved_lsn, replayed, discarded_bytes = replay.discarded_bytes, secs = t.elapsed().as_secs_f64(), "agent state recovered");
        let (tx, rx) = mpsc::channel(1024);
        let engine = Arc::new(Engine {
            cfg,
            state: RwLock::new(store),
            tx,
            build_lock: Default::default(),
            indexing: AtomicBool::new(false),
            saving: AtomicBool::new(false),
            saved_lsn: AtomicU64::new(saved_lsn),
            build_wanted: Notify::new(),
            stats: Stats::default(),
            discarded_bytes: replay.discarded_bytes,
        });
        let e = engine.clone();
        std::thread::Builder::new()
            .name("kim-wal".into())
            .spawn(move || e.writer(wal, rx))
            .map_err(|err| EngineError::Io { path: PathBuf::from("kim-wal thread"), err })?;
        Ok(engine)
    }

    /// Logs (fsync'd) and applies the writes; one result per write, in order.
    pub async fn write(&self, writes: Vec<Write>) -> Vec<Result<(), WriteError>> {
        let n = writes.len();
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::Write(writes, tx)).await.is_err() {
            return vec![Err(WriteError::Closed); n];
        }
        rx.await.unwrap_or_else(|_| vec![Err(WriteError::Closed); n])
    }

    /// Removes every object (logged like any write).
    pub async fn flush(&self) -> Result<(), WriteError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Cmd::Flush(tx)).await.map_err(|_| WriteError::Closed)?;
        rx.await.map_err(|_| WriteError::Closed)?
    }

    /// Folds everything written so far into a new graph segment; with `save`, persists it and
    /// drops the WAL it covers. Builds are serialised.
    pub async fn create_index(self: &Arc<Self>, save: bool) -> Result<(), EngineError> {
        let _one = self.build_lock.lock().await;
        let changed = {
            let st = self.state.read().unwrap();
            st.lsn > st.segment.lsn
        };
        if changed {
            let (tx, rx) = oneshot::channel();
            self.tx.send(Cmd::Checkpoint(tx)).await.map_err(|_| WriteError::Closed)?;
            let live = rx.await.map_err(|_| WriteError::Closed)??;
            let lsn = live.lsn;
            self.indexing.store(true, Ordering::SeqCst);
            let t = Instant::now();
            let e = self.clone();
            let built = tokio::task::spawn_blocking(move || e.build(live)).await;
            self.indexing.store(false, Ordering::SeqCst);
            let seg = built.map_err(|e| EngineError::Build(e.to_string()))??;
            let n = seg.rows();
            self.state.write().unwrap().install(seg);
            self.stats.builds.fetch_add(1, Ordering::Relaxed);
            self.stats.last_build_millis.store(t.elapsed().as_millis() as u64, Ordering::Relaxed);
            tracing::info!(rows = n, lsn, secs = t.elapsed().as_secs_f64(), "index segment built");
        }
        if save {
            self.save_locked().await?;
        }
        Ok(())
    }

    /// Persists the current segment (Vald's SaveIndex).
    pub async fn save(&self) -> Result<(), EngineError> {
        let _one = self.build_lock.lock().await;
        self.save_locked().await
    }

    fn build(&self, live: Live) -> Result<Segment, EngineError> {
        let spec = self.state.read().unwrap().spec;
        let seg = Segment::new(spec, &live, Default::default(), live.lsn);
        drop(live);
        let graph = build_graph(&seg.index.vectors, self.cfg.hnsw, self.cfg.build_threads, &|_, _, _| {})
            .map_err(|e| EngineError::Build(e.to_string()))?;
        Ok(Segment { index: FlatIndex { graph, ef_search: self.cfg.hnsw.ef_search, ..seg.index }, ..seg })
    }

    /// Persists the current segment unless it is already on disk, then prunes the WAL.
    async fn save_locked(&self) -> Result<(), EngineError> {
        let seg = self.state.read().unwrap().segment.clone();
        if seg.lsn <= self.saved_lsn.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.saving.store(true, Ordering::SeqCst);
        let dir = self.cfg.dir.clone();
        let lsn = seg.lsn;
        let r = tokio::task::spawn_blocking(move || -> Result<usize, EngineError> {
            persist::save(&dir, &seg)?;
            Ok(wal::prune(&dir, lsn)?)
        })
        .await;
        self.saving.store(false, Ordering::SeqCst);
        let pruned = r.map_err(|e| EngineError::Build(e.to_string()))??;
        self.saved_lsn.store(lsn, Ordering::SeqCst);
        tracing::info!(lsn, pruned_wal_segments = pruned, "index saved");
        Ok(())
    }

    /// The writer thread: drains commands, group-commits consecutive writes.
    fn writer(&self, mut wal: Wal, mut rx: mpsc::Receiver<Cmd>) {
        while let Some(first) = rx.blocking_recv() {
            let mut group: Vec<(Vec<Write>, Reply)> = Vec::new();
            let mut next = Some(first);
            while let Some(cmd) = next.take() {
                match cmd {
                    Cmd::Write(w, reply) => group.push((w, reply)),
                    Cmd::Flush(reply) => {
                        self.commit(&mut wal, std::mem::take(&mut group));
                        let _ = reply.send(self.clear(&mut wal));
                    }
                    Cmd::Checkpoint(reply) => {
                        self.commit(&mut wal, std::mem::take(&mut group));
                        let st = self.state.read().unwrap();
                        let r = wal
                            .rotate(st.lsn + 1)
                            .map(|_| st.live())
                            .map_err(|e| WriteError::Durability(e.to_string()));
                        let _ = reply.send(r);
                    }
                }
                if group.len() < 256 {
                    next = rx.try_recv().ok();
                }
            }
            self.commit(&mut wal, group);
        }
    }

    fn commit(&self, wal: &mut Wal, group: Vec<(Vec<Write>, Reply)>) {
        if group.is_empty() {
            return;
        }
        let mut records: Vec<Record> = Vec::new();
        let mut results: Vec<Vec<Result<(), WriteError>>> = Vec::with_capacity(group.len());
        {
            let st = self.state.read().unwrap();
            let mut lsn = st.lsn;
            // The state as of the writes before this one in the group: an id's latest Put
            // record (its index), or None once removed.
            let mut latest: HashMap<&str, Option<usize>> = HashMap::new();
            for (writes, _) in &group {
                let mut res = Vec::with_capacity(writes.len());
                for w in writes {
                    let current = match latest.get(w.id.as_str()) {
                        Some(Some(i)) => match &records[*i] {
                            Record::Put { timestamp, .. } => Some(*timestamp),
                            _ => None,
                        },
                        Some(None) => None,
                        None => st.objects.get(&w.id).map(|o| o.timestamp),
                    };
                    let r = decide(w, current, lsn + 1).map(|rec| {
                        rec.map(|rec| match rec {
                            // A timestamp update re-logs the current vector.
                            Record::Put { lsn, id, timestamp, vector } if vector.is_empty() => {
                                let vector = match latest.get(w.id.as_str()) {
                                    Some(Some(i)) => match &records[*i] {
                                        Record::Put { vector, .. } => vector.clone(),
                                        _ => Vec::new(),
                                    },
                                    _ => st.vector_of(&w.id).map(<[f32]>::to_vec).unwrap_or_default(),
                                };
                                Record::Put { lsn, id, timestamp, vector }
                            }
                            rec => rec,
                        })
                    });
                    res.push(r.map(|rec| {
                        if let Some(rec) = rec {
                            lsn += 1;
                            let put = matches!(rec, Record::Put { .. });
                            latest.insert(w.id.as_str(), put.then_some(records.len()));
                            records.push(rec);
                        }
                    }));
                }
                results.push(res);
            }
        }
        if let Err(e) = self.log(wal, &records) {
            tracing::error!(error = %e, "WAL append failed; writes rejected");
            for r in results.iter_mut().flatten().filter(|r| r.is_ok()) {
                *r = Err(WriteError::Durability(e.to_string()));
            }
        } else {
            self.apply(records);
        }
        for ((_, reply), res) in group.into_iter().zip(results) {
            let _ = reply.send(res);
        }
    }

    fn clear(&self, wal: &mut Wal) -> Result<(), WriteError> {
        let rec = Record::Clear { lsn: self.state.read().unwrap().lsn + 1 };
        self.log(wal, std::slice::from_ref(&rec)).map_err(|e| WriteError::Durability(e.to_string()))?;
        self.apply(vec![rec]);
        Ok(())
    }

    fn log(&self, wal: &mut Wal, records: &[Record]) -> Result<(), WalError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        records.iter().for_each(|r| wal::frame(r, &mut buf));
        let t = Instant::now();
        wal.append(&buf)?;
        self.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.stats.fsync_micros.fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn apply(&self, records: Vec<Record>) {
        let mut st = self.state.write().unwrap();
        records.into_iter().for_each(|r| st.apply(r));
        if st.backlog() >= self.cfg.max_uncommitted {
            self.build_wanted.notify_one();
        }
    }

    /// Every `interval`, rebuilds and saves when the backlog (tail rows and retired segment
    /// rows) is at least 5 % of the segment's rows or the last build is older than
    /// `max_age`: a full rebuild is O(n log n), so a large shard with a trickle of writes is
    /// not rebuilt every interval. At once when the backlog outgrows `max_uncommitted`.
    /// Runs until the process ends.
    pub async fn maintain(self: Arc<Self>, interval: Duration, max_age: Duration) {
        let mut last = Instant::now();
        loop {
            let urgent = tokio::select! {
                _ = tokio::time::sleep(interval) => false,
                _ = self.build_wanted.notified() => true,
            };
            let (backlog, rows) = {
                let st = self.state.read().unwrap();
                (st.backlog(), st.segment.rows())
            };
            if backlog == 0 || !(urgent || backlog * 20 >= rows || last.elapsed() >= max_age) {
                continue;
            }
            if let Err(e) = self.create_index(true).await {
                tracing::error!(error = %e, "periodic index build failed");
            }
            last = Instant::now();
        }
    }
}

/// The record a write makes given the id's current timestamp (None: absent), or its error;
/// Ok(None) when there is nothing to log. A timestamp update's record carries no vector yet.
fn decide(w: &Write, current: Option<i64>, lsn: u64) -> Result<Option<Record>, WriteError> {
    let id = || w.id.clone();
    let put = |vector: Vec<f32>| Ok(Some(Record::Put { lsn, id: id(), timestamp: w.timestamp, vector }));
    match (w.mode, current) {
        (Mode::Insert, Some(_)) if !w.skip_exist_check => Err(WriteError::AlreadyExists(id())),
        (Mode::Update | Mode::Touch { .. }, None) if !w.skip_exist_check => Err(WriteError::NotFound(id())),
        (Mode::Touch { .. }, None) => Ok(None),
        (Mode::Touch { force: false }, Some(t)) if w.timestamp <= t => {
            Err(WriteError::NotNewer { id: id(), stored: t, given: w.timestamp })
        }
        (Mode::Touch { .. }, Some(_)) => put(Vec::new()),
        // A conditional removal (RemoveByTimestamp) applies only to the version it saw.
        (Mode::Remove, Some(t)) if w.timestamp > 0 && t != w.timestamp => Err(WriteError::NotFound(id())),
        (Mode::Remove, None) if !w.skip_exist_check => Err(WriteError::NotFound(id())),
        (Mode::Remove, None) => Ok(None),
        (Mode::Remove, Some(_)) => Ok(Some(Record::Remove { lsn, id: id() })),
        _ => put(w.vector.clone()),
    }
}
