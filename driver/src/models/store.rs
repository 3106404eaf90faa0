//! The node-wide model cache on disk (blocking file-system code; the async side is
//! [`super::fetch`]). Layout under the plugin's `model_cache_dir` (root-owned, 0700; no
//! task ever sees it — each model reaches its tasks as a read-only bind of one file):
//!
//! ```text
//! blobs/<sha256>          complete, verified models (0444), named by their digest;
//!                         mtime = last use (the LRU order)
//! partial/<sha256>.<pid>  downloads in progress; renamed into blobs/ only when verified
//! locks/<sha256>.lock     one flock per digest (fs2): one download per digest across
//!                         plugin processes and restarts; eviction takes it too
//! refs/<sha256>/<task>    one file per task using the model (its content: the task dir);
//!                         a model with a live ref is never evicted
//! ```
//!
//! A ref is live while its file exists and the task dir it names does; DestroyTask removes
//! a task's refs, and a ref whose task dir Nomad garbage-collected is stale.

use fs2::FileExt;
use sha2::{Digest, Sha256};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Why the cache cannot be used; each names the path.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("model cache {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("model cache {path} is not safe to use: {why}; it must be a directory owned by root, not writable by others (fix or remove it, or set model_cache_dir in the plugin config)")]
    Unsafe { path: PathBuf, why: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One model in the cache, as `list` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub sha256: String,
    pub size: u64,
    pub last_used: SystemTime,
    /// Task dirs of the live refs.
    pub users: Vec<PathBuf>,
}

/// The cache directory, checked and made (root-only) on open.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

const SUBDIRS: [&str; 4] = ["blobs", "partial", "locks", "refs"];

impl Store {
    /// Opens (making when missing) the cache dir and its subdirs. Refuses a dir (or subdir)
    /// that is a symlink, not owned by the plugin's user, or writable by group/others: a task
    /// or another user could otherwise plant a "verified" model.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        make_private_dir(root, true)?;
        for sub in SUBDIRS {
            make_private_dir(&root.join(sub), false)?;
        }
        Ok(Store {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob(&self, sha256: &str) -> PathBuf {
        self.root.join("blobs").join(sha256)
    }

    fn lock_path(&self, sha256: &str) -> PathBuf {
        self.root.join("locks").join(format!("{sha256}.lock"))
    }

    fn refs_dir(&self, sha256: &str) -> PathBuf {
        self.root.join("refs").join(sha256)
    }

    /// A fresh partial file for a download of `sha256` (0600, created exclusively).
    pub fn create_partial(&self, sha256: &str) -> Result<(PathBuf, File), StoreError> {
        let path = self
            .root
            .join("partial")
            .join(format!("{sha256}.{}", std::process::id()));
        // A leftover of this very pid (a plugin that crashed and got the same pid) goes.
        let _ = fs::remove_file(&path);
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(io_err(&path))?;
        Ok((path, f))
    }

    /// Removes what killed downloads of `sha256` left (called with its lock held, so no
    /// download of it is running).
    pub fn clear_partials(&self, sha256: &str) -> Result<(), StoreError> {
        let dir = self.root.join("partial");
        for e in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let e = e.map_err(io_err(&dir))?;
            let name = e.file_name();
            if name
                .to_str()
                .is_some_and(|n| n.starts_with(&format!("{sha256}.")))
            {
                let _ = fs::remove_file(e.path());
            }
        }
        Ok(())
    }

    /// A verified partial file becomes the model: read-only, renamed into `blobs/` (atomic:
    /// a reader sees no file or the whole model), the directory synced.
    pub fn commit(&self, partial: &Path, file: File, sha256: &str) -> Result<PathBuf, StoreError> {
        file.set_permissions(fs::Permissions::from_mode(0o444))
            .map_err(io_err(partial))?;
        file.sync_all().map_err(io_err(partial))?;
        drop(file);
        let blob = self.blob(sha256);
        fs::rename(partial, &blob).map_err(io_err(&blob))?;
        let blobs = self.root.join("blobs");
        File::open(&blobs)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&blobs))?;
        Ok(blob)
    }

    /// The model's size when it is in the cache (a regular file, not a symlink).
    pub fn present(&self, sha256: &str) -> Option<u64> {
        fs::symlink_metadata(self.blob(sha256))
            .ok()
            .filter(|m| m.file_type().is_file())
            .map(|m| m.len())
    }

    /// Marks the model as just used (its mtime orders eviction).
    pub fn touch(&self, sha256: &str) {
        let blob = self.blob(sha256);
        if let Ok(f) = File::open(&blob) {
            let _ = f.set_modified(SystemTime::now());
        }
    }

    /// Takes the digest's lock, waiting for whoever holds it (blocking).
    pub fn lock(&self, sha256: &str) -> Result<File, StoreError> {
        let f = self.open_lock(sha256)?;
        f.lock_exclusive()
            .map_err(io_err(&self.lock_path(sha256)))?;
        Ok(f)
    }

    /// Takes the digest's lock if no one holds it.
    pub fn try_lock(&self, sha256: &str) -> Result<Option<File>, StoreError> {
        let f = self.open_lock(sha256)?;
        match f.try_lock_exclusive() {
            Ok(()) => Ok(Some(f)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) if e.raw_os_error() == fs2::lock_contended_error().raw_os_error() => Ok(None),
            Err(e) => Err(io_err(&self.lock_path(sha256))(e)),
        }
    }

    fn open_lock(&self, sha256: &str) -> Result<File, StoreError> {
        let path = self.lock_path(sha256);
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(io_err(&path))
    }

    /// Records that the task (`task_id`, whose dir is `task_dir`) uses the model.
    pub fn add_ref(&self, sha256: &str, task_id: &str, task_dir: &Path) -> Result<(), StoreError> {
        let dir = self.refs_dir(sha256);
        make_private_dir(&dir, false)?;
        let path = dir.join(ref_name(task_id));
        fs::write(&path, task_dir.as_os_str().as_encoded_bytes()).map_err(io_err(&path))
    }

    /// Drops every ref of the task (DestroyTask, or a start that failed).
    pub fn release(&self, task_id: &str) -> Result<(), StoreError> {
        let refs = self.root.join("refs");
        let name = ref_name(task_id);
        for e in fs::read_dir(&refs).map_err(io_err(&refs))? {
            let e = e.map_err(io_err(&refs))?;
            let _ = fs::remove_file(e.path().join(&name));
            // Empty ref dirs go (fails harmlessly when another task still uses the model).
            let _ = fs::remove_dir(e.path());
        }
        Ok(())
    }

    /// Task dirs of the model's live refs; stale refs are removed on the way.
    pub fn users(&self, sha256: &str) -> Vec<PathBuf> {
        let dir = self.refs_dir(sha256);
        let Ok(rd) = fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut users = Vec::new();
        for e in rd.flatten() {
            let task_dir = fs::read(e.path())
                .ok()
                .map(|b| PathBuf::from(String::from_utf8_lossy(&b).into_owned()));
            match task_dir {
                Some(d) if d.is_absolute() && d.is_dir() => users.push(d),
                _ => {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        users.sort();
        users
    }

    /// Every model in the cache, least recently used first.
    pub fn list(&self) -> Result<Vec<Entry>, StoreError> {
        let dir = self.root.join("blobs");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let e = e.map_err(io_err(&dir))?;
            let Some(sha256) = e.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let Ok(m) = fs::symlink_metadata(e.path()) else {
                continue;
            };
            if !m.file_type().is_file() || !crate::model_ref::is_sha256(&sha256) {
                continue;
            }
            out.push(Entry {
                users: self.users(&sha256),
                sha256,
                size: m.len(),
                last_used: m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            });
        }
        out.sort_by(|a, b| a.last_used.cmp(&b.last_used).then(a.sha256.cmp(&b.sha256)));
        Ok(out)
    }

    /// Removes one unreferenced model, under its lock (a start that is about to use it holds
    /// a ref first, then the lock). False when it is in use or being downloaded.
    pub fn remove_if_unused(&self, sha256: &str) -> Result<bool, StoreError> {
        let Some(_lock) = self.try_lock(sha256)? else {
            return Ok(false);
        };
        if !self.users(sha256).is_empty() {
            return Ok(false);
        }
        let blob = self.blob(sha256);
        match fs::remove_file(&blob) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err(&blob)(e)),
        }
    }

    /// Evicts unreferenced models, least recently used first, until the cache holds at most
    /// `max_bytes`. Returns the digests removed.
    pub fn evict(&self, max_bytes: u64) -> Result<Vec<String>, StoreError> {
        let entries = self.list()?;
        let mut total: u64 = entries.iter().map(|e| e.size).sum();
        let mut removed = Vec::new();
        for e in entries {
            if total <= max_bytes {
                break;
            }
            if e.users.is_empty() && self.remove_if_unused(&e.sha256)? {
                total = total.saturating_sub(e.size);
                removed.push(e.sha256);
            }
        }
        Ok(removed)
    }

    /// Partial files of downloads no process is running (their digest's lock is free).
    pub fn prune_partials(&self) -> Result<usize, StoreError> {
        let dir = self.root.join("partial");
        let mut n = 0;
        for e in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let e = e.map_err(io_err(&dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let Some((sha256, _)) = name.split_once('.') else {
                continue;
            };
            if let Some(_lock) = self.try_lock(sha256)? {
                if fs::remove_file(e.path()).is_ok() {
                    n += 1;
                }
            }
        }
        Ok(n)
    }
}

/// A ref file's name: a task id holds `/`, so its digest (short) names the file.
fn ref_name(task_id: &str) -> String {
    let d = Sha256::digest(task_id.as_bytes());
    d.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// Makes `dir` (0700) when missing and checks it: a real directory (not a symlink), owned by
/// us, not writable by group or others.
fn make_private_dir(dir: &Path, recursive: bool) -> Result<(), StoreError> {
    let mut b = fs::DirBuilder::new();
    b.mode(0o700).recursive(recursive);
    match b.create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err(dir)(e)),
    }
    let m = fs::symlink_metadata(dir).map_err(io_err(dir))?;
    let unsafe_ = |why: String| StoreError::Unsafe {
        path: dir.to_path_buf(),
        why,
    };
    if !m.file_type().is_dir() {
        return Err(unsafe_("not a directory (or a symlink)".into()));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if m.uid() != euid {
        return Err(unsafe_(format!("owned by uid {}, not {euid}", m.uid())));
    }
    if m.mode() & 0o022 != 0 {
        return Err(unsafe_(format!(
            "mode {:o} lets group or others write",
            m.mode() & 0o7777
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn put(s: &Store, sha: &str, len: usize, age_s: u64) {
        let (p, mut f) = s.create_partial(sha).unwrap();
        f.write_all(&vec![0u8; len]).unwrap();
        s.commit(&p, f, sha).unwrap();
        let f = File::open(s.blob(sha)).unwrap();
        f.set_modified(SystemTime::now() - std::time::Duration::from_secs(age_s))
            .unwrap();
    }

    #[test]
    fn committed_models_are_read_only_and_partials_never_show() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(&t.path().join("c")).unwrap();
        let (p, mut f) = s.create_partial(A).unwrap();
        f.write_all(b"half").unwrap();
        assert_eq!(s.present(A), None);
        assert!(s.list().unwrap().is_empty());
        s.commit(&p, f, A).unwrap();
        assert_eq!(s.present(A), Some(4));
        let m = fs::metadata(s.blob(A)).unwrap();
        assert_eq!(m.mode() & 0o777, 0o444);
        assert_eq!(
            fs::metadata(s.root()).unwrap().mode() & 0o777,
            0o700,
            "the cache dir is root-only"
        );
    }

    #[test]
    fn a_cache_dir_others_can_write_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("c");
        fs::create_dir(&d).unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o777)).unwrap();
        let e = Store::open(&d).unwrap_err();
        assert!(matches!(e, StoreError::Unsafe { .. }), "{e}");
        let l = t.path().join("link");
        std::os::unix::fs::symlink(t.path(), &l).unwrap();
        assert!(matches!(
            Store::open(&l).unwrap_err(),
            StoreError::Unsafe { .. }
        ));
    }

    #[test]
    fn eviction_is_lru_and_spares_models_in_use() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(&t.path().join("c")).unwrap();
        let task_dir = t.path().join("task");
        fs::create_dir(&task_dir).unwrap();
        put(&s, A, 100, 100); // oldest, but in use
        put(&s, B, 100, 50);
        s.add_ref(A, "alloc/t/1", &task_dir).unwrap();
        assert_eq!(s.evict(150).unwrap(), vec![B.to_owned()]);
        assert_eq!(s.present(A), Some(100));
        // Still over the cap, but A is referenced: it stays.
        assert!(s.evict(10).unwrap().is_empty());
        s.release("alloc/t/1").unwrap();
        assert_eq!(s.evict(10).unwrap(), vec![A.to_owned()]);
    }

    #[test]
    fn a_ref_whose_task_dir_is_gone_is_stale() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(&t.path().join("c")).unwrap();
        put(&s, A, 10, 0);
        s.add_ref(A, "x/y/z", &t.path().join("gone")).unwrap();
        assert!(s.users(A).is_empty());
        assert!(s.remove_if_unused(A).unwrap());
    }

    #[test]
    fn a_locked_digest_is_neither_evicted_nor_its_partials_pruned() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(&t.path().join("c")).unwrap();
        put(&s, A, 10, 0);
        let (_p, _f) = s.create_partial(B).unwrap();
        let la = s.lock(A).unwrap();
        let lb = s.lock(B).unwrap();
        assert!(!s.remove_if_unused(A).unwrap());
        assert_eq!(s.prune_partials().unwrap(), 0);
        drop((la, lb));
        assert_eq!(s.prune_partials().unwrap(), 1);
        assert!(s.remove_if_unused(A).unwrap());
    }
}
