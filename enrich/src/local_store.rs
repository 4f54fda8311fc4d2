//! A local store on disk for state that is a cache of a Kafka topic: the
//! global link table ([`crate::identity`]) and the join's cold customers
//! ([`crate::join`]), whose number grows with every identity and customer
//! seen, kept out of the heap.
//!
//! An LSM tree (`fjall`) in a directory of its own, made fresh under a
//! configured parent at every open and removed when the store is dropped:
//! what it holds is rebuilt from its topic at every start (the links topic,
//! a partition's changelog), so it needs no durability (no fsync, the
//! journal buffered), and the directories a killed process left are
//! removed by the next open. Its memory is bounded by its block cache and
//! its write buffers, which [`Table`] seals itself (see `Table::written`).
//!
//! What crosses the boundary: [`LocalStore::open`] (a directory prefix and
//! [`StoreSizes`]), and [`Table`]s of bytes keyed by bytes; a table made by
//! [`LocalStore::scratch_table`] is deleted when dropped (a join partition
//! revoked).

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

/// A store's memory: its block cache and its write buffer (entries not yet
/// written out to its files; up to four more, sealed, wait for their
/// flush).
#[derive(Debug, Clone, Copy)]
pub struct StoreSizes {
    pub cache_mib: u64,
    pub memtable_mib: u64,
}

/// A store could not be opened, or failed.
#[derive(Debug, thiserror::Error)]
pub enum LocalStoreError {
    #[error("creating the {what}'s directory under {dir} failed: {source}")]
    Directory {
        what: &'static str,
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the {what} failed: {source}")]
    Store {
        what: &'static str,
        #[source]
        source: fjall::Error,
    },
}

/// An open store: its database, and its directory (removed when the last
/// [`Table`] and the store itself are gone, after the database).
pub struct LocalStore {
    db: fjall::Database,
    sizes: StoreSizes,
    /// What it holds, for errors and logs ("link store").
    what: &'static str,
    /// Names the scratch tables.
    next_table: AtomicU64,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for LocalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalStore")
            .field("what", &self.what)
            .field("dir", &self._dir.path())
            .finish()
    }
}

impl LocalStore {
    /// A fresh store in a new directory named `prefix…` under `parent`
    /// (the system's temporary directory if none), after removing the
    /// stores with that prefix no process holds open.
    pub fn open(
        what: &'static str,
        prefix: &str,
        parent: Option<&Path>,
        sizes: StoreSizes,
    ) -> Result<Arc<LocalStore>, LocalStoreError> {
        let parent = parent.map_or_else(std::env::temp_dir, Path::to_owned);
        let directory = |source| LocalStoreError::Directory {
            what,
            dir: parent.clone(),
            source,
        };
        std::fs::create_dir_all(&parent).map_err(directory)?;
        remove_abandoned(&parent, prefix, what);
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(&parent)
            .map_err(directory)?;
        // No fsync and no write per insert (the journal is buffered): the
        // directory is rebuilt from its topic on every start.
        let db = fjall::Database::builder(dir.path())
            .cache_size(sizes.cache_mib * 1024 * 1024)
            .max_journaling_size(64 * 1024 * 1024)
            .manual_journal_persist(true)
            .worker_threads(1)
            .open()
            .map_err(|source| LocalStoreError::Store { what, source })?;
        Ok(Arc::new(LocalStore {
            db,
            sizes,
            what,
            next_table: AtomicU64::new(0),
            _dir: dir,
        }))
    }

    /// The table `name`.
    pub fn table(self: &Arc<Self>, name: &str) -> Result<Table, LocalStoreError> {
        self.open_table(name, false)
    }

    /// A table of its own, deleted when dropped.
    pub fn scratch_table(self: &Arc<Self>, name: &str) -> Result<Table, LocalStoreError> {
        let n = self.next_table.fetch_add(1, Ordering::Relaxed);
        self.open_table(&format!("{name}-{n}"), true)
    }

    fn open_table(self: &Arc<Self>, name: &str, scratch: bool) -> Result<Table, LocalStoreError> {
        let write_buffer = self.sizes.memtable_mib * 1024 * 1024;
        let keyspace = self
            .db
            .keyspace(name, || {
                fjall::KeyspaceCreateOptions::default()
                    .manual_journal_persist(true)
                    // Sealed by `Table::written` before this is reached.
                    .max_memtable_size(2 * write_buffer)
            })
            .map_err(|e| self.failed(e))?;
        Ok(Table {
            keyspace,
            unsealed: 0,
            write_buffer,
            scratch,
            store: self.clone(),
        })
    }

    /// Bytes written to the store's tables and not yet flushed to its
    /// files.
    pub fn write_buffer_bytes(&self) -> u64 {
        self.db.write_buffer_size()
    }

    /// `source`, as a failure of this store (named by what it holds).
    pub fn failed(&self, source: fjall::Error) -> LocalStoreError {
        LocalStoreError::Store {
            what: self.what,
            source,
        }
    }
}

/// Bytes keyed by bytes, in a [`LocalStore`].
pub struct Table {
    keyspace: fjall::Keyspace,
    /// Bytes written since the write buffer was last sealed, counted as the
    /// store counts them or more (see [`Table::written`]), and the bound.
    unsealed: u64,
    write_buffer: u64,
    /// Deleted when dropped.
    scratch: bool,
    /// Last: the directory outlives the keyspace.
    store: Arc<LocalStore>,
}

impl Table {
    pub fn get(&self, key: &[u8]) -> Result<Option<fjall::Slice>, fjall::Error> {
        self.keyspace.get(key)
    }

    pub fn insert(&mut self, key: &[u8], value: &[u8]) -> Result<(), fjall::Error> {
        self.keyspace.insert(key, value)?;
        self.written(key.len() + value.len())
    }

    pub fn remove(&mut self, key: &[u8]) -> Result<(), fjall::Error> {
        self.keyspace.remove(key)?;
        self.written(key.len())
    }

    /// Every (key, value), in key order.
    pub fn iter(&self) -> impl Iterator<Item = Result<(fjall::Slice, fjall::Slice), fjall::Error>> {
        self.keyspace.iter().map(|kv| kv.into_inner())
    }

    /// The store the table is in: its write buffer, and the name its
    /// errors carry.
    pub fn store(&self) -> &LocalStore {
        &self.store
    }

    /// Seals the write buffer (and has it flushed) once `write_buffer`
    /// bytes were written into it. The store would seal it itself, but it
    /// asks its one background worker to, once per write while the buffer
    /// is over its size, on a queue that worker also posts its own flush
    /// to: under a steady stream of new entries the requests fill the
    /// queue while the worker is busy, the worker blocks posting its flush,
    /// and nothing is flushed again — the buffer then grows with every
    /// entry (fjall 3.1, seen with the link table at twice the peak: 16 MiB
    /// to 235 MiB in three minutes; fjall-rs/fjall#323). Sealing it here,
    /// before the store's own bound (twice this one) is reached, never asks
    /// the worker. Each entry is counted at more than the store counts it
    /// (key, value and a 64-byte entry header), so its bound is never the
    /// first reached.
    fn written(&mut self, bytes: usize) -> Result<(), fjall::Error> {
        self.unsealed += bytes as u64 + 128;
        if self.unsealed >= self.write_buffer {
            self.unsealed = 0;
            self.keyspace.rotate_memtable()?;
        }
        Ok(())
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        if self.scratch
            && let Err(e) = self.store.db.delete_keyspace(self.keyspace.clone())
        {
            // Its files go with the store's directory at the latest.
            tracing::warn!(store = self.store.what, error = %e, "a table was not deleted");
        }
    }
}

/// Removes the stores named `prefix…` under `parent` that no process has
/// open: left by a process that was killed (a store is locked while open;
/// its lock file is the store's own, `fjall`'s `lock`). One that has no
/// lock file yet is left alone unless it is an hour old: it may be
/// opening.
fn remove_abandoned(parent: &Path, prefix: &str, what: &str) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(prefix) {
            continue;
        }
        let dir = entry.path();
        let abandoned = match std::fs::File::open(dir.join("lock")) {
            Ok(lock) => lock.try_lock().is_ok(),
            Err(_) => entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > std::time::Duration::from_secs(3600)),
        };
        if abandoned {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {
                    tracing::info!(dir = %dir.display(), store = what, "removed an abandoned store")
                }
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), store = what, error = %e, "an abandoned store could not be removed")
                }
            }
        }
    }
}
