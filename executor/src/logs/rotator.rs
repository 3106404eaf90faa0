//! One stream's log files, named and rotated the way Nomad's logmon does it (Nomad v1.6
//! `client/logmon/logging/rotator.go`), so `nomad alloc logs` (`-f`, `-tail`, `-n`, `-stderr`)
//! and the UI read them unchanged:
//!
//! - files are `<dir>/<base>.<N>` (`base` = `<task>.stdout` / `<task>.stderr`), mode 0644;
//! - on start the highest existing index is continued (appended to), or index 0 is created,
//!   so the index only grows across restarts of the task;
//! - a file never grows past `file_size`: near its end the rotator cuts at a newline (a line
//!   is split only when it would not fit a whole file) and the next index is opened, skipping
//!   indexes whose file is already full;
//! - when more than `max_files` files up to the current index exist, the oldest are removed
//!   (entries above it are left alone: only another process can have put them there; one that
//!   cannot be removed, e.g. a non-empty directory another task put there, is passed over
//!   without failing the write).
//!
//! Unlike logmon, the shim runs as root while `alloc/logs` is writable by the task (and by
//! every task of the allocation). So the directory is held open once ([`LogDir`]) and every
//! file is created or opened relative to it with `O_NOFOLLOW`, and only a regular file with a
//! single link is ever written: a symlink, FIFO, device, directory or hard link planted under
//! a log file name is skipped (its index is passed over), never followed. Removal uses
//! `unlinkat`, which never follows either.

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{Mode, SFlag};
use nix::unistd::UnlinkatFlags;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// Near the end of a file, how far ahead to look for a newline to cut at (logmon's
/// `lineScanLimit`).
pub const LINE_SCAN_LIMIT: u64 = 32 * 1024;

/// Log files are readable by everyone, as logmon makes them.
const FILE_MODE: u32 = 0o644;

/// The highest index a log file can have (logmon parses indexes as Go `int`).
const MAX_INDEX: u64 = i64::MAX as u64;
/// The highest index an existing entry may have to be continued from (or counted at all):
/// 2^32 indexes below [`MAX_INDEX`]. Rotation counts up by one, so a real file never gets
/// near it; above it an entry can only be planted (e.g. `<base>.9223372036854775807` by a
/// task: continuing from there would exhaust the indexes and drop all output), and is
/// passed over like every other planted entry.
const MAX_FOUND_INDEX: u64 = MAX_INDEX - (1 << 32);
/// No index (above every [`MAX_INDEX`] one).
const NO_INDEX: u64 = u64::MAX;

/// The task's log directory, held open: every file operation is relative to this fd.
#[derive(Debug)]
pub struct LogDir {
    fd: OwnedFd,
}

impl LogDir {
    /// Opens `path`. Its parent is trusted (Nomad's alloc dir, owned by root); its last
    /// component (`logs`, in the 0777 shared `alloc` dir) is not followed if it is a symlink.
    pub fn open(path: &Path) -> io::Result<LogDir> {
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a directory path",
            ));
        };
        let dir_flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let parent = own(nix::fcntl::open(parent, dir_flags, Mode::empty())?);
        let fd = nix::fcntl::openat(
            Some(parent.as_raw_fd()),
            name,
            dir_flags | OFlag::O_NOFOLLOW,
            Mode::empty(),
        )
        .map_err(|e| match e {
            // O_NOFOLLOW on a symlink: ELOOP; O_DIRECTORY on a symlink: ENOTDIR.
            Errno::ELOOP | Errno::ENOTDIR => io::Error::new(
                io::ErrorKind::InvalidInput,
                "it is not a directory (a symlink or file was put in its place); refusing to follow it",
            ),
            e => e.into(),
        })?;
        Ok(LogDir { fd: own(fd) })
    }

    /// Indexes of every entry named `<base>.<digits>` (any kind, like logmon's purge), and
    /// separately the highest one that is not a directory (logmon's `lastFile`).
    fn indexes(&self, base: &str) -> io::Result<(Vec<u64>, Option<u64>)> {
        let dir = nix::dir::Dir::openat(
            Some(self.fd.as_raw_fd()),
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let mut all = Vec::new();
        let mut last_file = None;
        for entry in dir.into_iter() {
            let entry = entry?;
            let Some(idx) = entry
                .file_name()
                .to_str()
                .ok()
                .and_then(|n| parse_index(n, base))
            else {
                continue;
            };
            all.push(idx);
            if entry.file_type() != Some(nix::dir::Type::Directory) {
                last_file = last_file.max(Some(idx));
            }
        }
        all.sort_unstable();
        Ok((all, last_file))
    }

    /// Removes `name` (a file, a symlink itself, or an empty directory); never follows.
    fn remove(&self, name: &str) -> io::Result<()> {
        let fd = Some(self.fd.as_raw_fd());
        match nix::unistd::unlinkat(fd, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(Errno::EISDIR) => nix::unistd::unlinkat(fd, name, UnlinkatFlags::RemoveDir)
                .or_else(|e| if e == Errno::ENOENT { Ok(()) } else { Err(e) })
                .map_err(Into::into),
            Err(e) => Err(e.into()),
        }
    }

    /// Opens `name` for appending, creating it (mode 0644) if missing. `Ok(None)`: something
    /// that must not be written is there (symlink, directory, FIFO, device, hard link).
    fn open_log(&self, name: &str) -> io::Result<Option<File>> {
        let dirfd = Some(self.fd.as_raw_fd());
        // O_NONBLOCK: opening a planted FIFO must not block (it fails with ENXIO or opens,
        // and is then refused); it changes nothing for regular files.
        let flags = OFlag::O_WRONLY
            | OFlag::O_APPEND
            | OFlag::O_NOFOLLOW
            | OFlag::O_NOCTTY
            | OFlag::O_NONBLOCK
            | OFlag::O_CLOEXEC;
        let created = nix::fcntl::openat(
            dirfd,
            name,
            flags | OFlag::O_CREAT | OFlag::O_EXCL,
            Mode::from_bits_truncate(FILE_MODE),
        );
        let (fd, fresh) = match created {
            Ok(fd) => (own(fd), true),
            Err(Errno::EEXIST) => match nix::fcntl::openat(dirfd, name, flags, Mode::empty()) {
                Ok(fd) => (own(fd), false),
                Err(Errno::ELOOP | Errno::EISDIR | Errno::ENXIO | Errno::ENOENT) => {
                    return Ok(None)
                }
                Err(e) => return Err(e.into()),
            },
            Err(e) => return Err(e.into()),
        };
        let st = nix::sys::stat::fstat(fd.as_raw_fd())?;
        let regular = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG;
        if !regular || st.st_nlink != 1 {
            return Ok(None);
        }
        if fresh {
            // The shim's umask is 077; logmon's files are 0644.
            nix::sys::stat::fchmod(fd.as_raw_fd(), Mode::from_bits_truncate(FILE_MODE))?;
        }
        Ok(Some(File::from(fd)))
    }
}

/// The lowest of the sorted `indexes` that is not above `index` (else `index` itself): where
/// the purge count starts, never above the file being written.
fn oldest_up_to(indexes: &[u64], index: u64) -> u64 {
    indexes
        .first()
        .copied()
        .filter(|i| *i <= index)
        .unwrap_or(index)
}

fn own(fd: std::os::fd::RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful open/openat and is owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// `<base>.<digits>` → the index (digits only, at most [`MAX_FOUND_INDEX`]: a higher one is
/// planted and ignored).
fn parse_index(name: &str, base: &str) -> Option<u64> {
    let digits = name.strip_prefix(base)?.strip_prefix('.')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok().filter(|n| *n <= MAX_FOUND_INDEX)
}

/// A failed write: how much of the data did reach the file before `error`.
#[derive(Debug)]
pub struct WriteError {
    pub written: usize,
    pub error: io::Error,
}

/// The rotated files of one stream.
#[derive(Debug)]
pub struct Rotator {
    base: String,
    max_files: u64,
    file_size: u64,
    /// Index of the current (or, after a failure, the next to try) file.
    index: u64,
    /// Lowest index known to exist (purging starts when `index - oldest >= max_files`).
    oldest: u64,
    file: Option<File>,
    /// Bytes in the current file.
    size: u64,
    /// Whether the starting index was found yet (the first open continues the last file).
    started: bool,
    /// The index of the last old entry the purge could not remove (reported once), or
    /// [`NO_INDEX`]. (Not an `Option`: the shim keeps two rotators in a small enum.)
    unremovable: u64,
}

impl Rotator {
    pub fn new(base: &str, max_files: u32, file_size: u64) -> Rotator {
        Rotator {
            base: base.to_owned(),
            max_files: u64::from(max_files.max(1)),
            file_size: file_size.max(1),
            index: 0,
            oldest: 0,
            file: None,
            size: 0,
            started: false,
            unremovable: NO_INDEX,
        }
    }

    /// `<base>.<index>` of the current file.
    pub fn current_name(&self) -> String {
        format!("{}.{}", self.base, self.index)
    }

    #[cfg(test)]
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Opens the file to write: on the first call the highest existing index (or 0), after
    /// that the current one; an unusable entry or a full file moves on to the next index.
    pub fn open(&mut self, dir: &LogDir) -> io::Result<()> {
        if self.file.is_some() {
            return Ok(());
        }
        if !self.started {
            let (all, last) = dir.indexes(&self.base)?;
            self.index = last.unwrap_or(0);
            self.oldest = oldest_up_to(&all, self.index);
            self.started = true;
        }
        match dir.open_log(&self.current_name())? {
            Some(f) => {
                self.size = f.metadata()?.len();
                self.file = Some(f);
                Ok(())
            }
            None => self.next_file(dir),
        }
    }

    /// Closes the current file (the shim is done with the stream).
    pub fn close(&mut self) {
        self.file = None;
    }

    /// Writes all of `data`, rotating as logmon does. On an error the data that did not
    /// reach a file is lost (the caller counts it) and the next write tries again.
    pub fn write(&mut self, dir: &LogDir, data: &[u8]) -> Result<(), WriteError> {
        let mut done = 0;
        let fail = |written, error| Err(WriteError { written, error });
        if let Err(e) = self.open(dir) {
            return fail(0, e);
        }
        let mut force_rotate = false;
        while done < data.len() {
            if force_rotate || self.size >= self.file_size {
                force_rotate = false;
                if let Err(e) = self.next_file(dir) {
                    return fail(done, e);
                }
            }
            let rest = &data[done..];
            let room = self.file_size - self.size;
            let len = rest.len() as u64;
            let take = if room < LINE_SCAN_LIMIT.saturating_add(len) {
                // Near the end of the file: keep lines whole where possible.
                match rest.iter().position(|b| *b == b'\n') {
                    Some(nl) if (nl as u64) < room => nl + 1,
                    // A line that does not fit: start the next file, unless this one is
                    // still empty (the line is longer than a whole file: split it).
                    Some(_) if self.size > 0 => {
                        force_rotate = true;
                        continue;
                    }
                    None if len <= self.file_size && self.size > 0 => {
                        force_rotate = true;
                        continue;
                    }
                    _ => room.min(len) as usize,
                }
            } else {
                rest.len()
            };
            let Some(file) = self.file.as_mut() else {
                return fail(done, io::Error::other("no log file open"));
            };
            let (written, result) = write_counting(file, &rest[..take]);
            self.size += written as u64;
            done += written;
            if let Err(e) = result {
                if e.kind() != io::ErrorKind::Interrupted {
                    return fail(done, e);
                }
            }
        }
        Ok(())
    }

    /// Opens the next index whose file is not full (skipping entries that must not be
    /// written), then removes the oldest files beyond `max_files`.
    fn next_file(&mut self, dir: &LogDir) -> io::Result<()> {
        self.file = None;
        let mut next = self.index;
        loop {
            next = next
                .checked_add(1)
                .filter(|n| *n <= MAX_INDEX)
                .ok_or_else(|| io::Error::other("log file index exhausted"))?;
            match dir.open_log(&format!("{}.{next}", self.base))? {
                Some(f) => {
                    let size = f.metadata()?.len();
                    if size >= self.file_size {
                        continue;
                    }
                    self.index = next;
                    self.size = size;
                    self.file = Some(f);
                    break;
                }
                None => continue,
            }
        }
        if self.index - self.oldest >= self.max_files {
            self.purge(dir);
        }
        Ok(())
    }

    /// Keeps the `max_files` highest indexes and removes the others (logmon's purge). An
    /// entry that cannot be removed (another task of the allocation may have put a non-empty
    /// directory there) is passed over, as logmon does: the new file is open, so a failed
    /// purge must not make the write fail (losing output, and making a task event of each
    /// rotation), nor stop the removal of the entries after it.
    fn purge(&mut self, dir: &LogDir) {
        let all = match dir.indexes(&self.base) {
            Ok((all, _)) => all,
            Err(e) => {
                tracing::warn!(base = %self.base, error = %e, "cannot list the old log files to remove");
                return;
            }
        };
        // Entries above the current index are no older files (only another process can
        // have made them): left alone, and never counted, so `oldest <= index` holds.
        let all: Vec<u64> = all.into_iter().filter(|i| *i <= self.index).collect();
        let keep = self.max_files as usize;
        if all.len() > keep {
            let (old, kept) = all.split_at(all.len() - keep);
            for idx in old {
                if *idx != self.index {
                    let name = format!("{}.{idx}", self.base);
                    match dir.remove(&name) {
                        // Said once, not at every rotation (the shim's own log is not rotated).
                        Err(e) if self.unremovable != *idx => {
                            tracing::warn!(file = %name, error = %e, "cannot remove an old log file; left in place");
                            self.unremovable = *idx;
                        }
                        _ => {}
                    }
                }
            }
            self.oldest = kept.first().copied().unwrap_or(self.index);
        } else {
            self.oldest = all.first().copied().unwrap_or(self.index);
        }
    }
}

/// `write_all` that also says how much was written before an error.
fn write_counting(file: &mut File, mut data: &[u8]) -> (usize, io::Result<()>) {
    let mut written = 0;
    while !data.is_empty() {
        match file.write(data) {
            Ok(0) => return (written, Err(io::ErrorKind::WriteZero.into())),
            Ok(n) => {
                written += n;
                data = &data[n..];
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (written, Err(e)),
        }
    }
    (written, Ok(()))
}

/// A small or read-only disk for the tests (shared with the integration tests).
#[cfg(test)]
#[path = "../../tests/support/tmpfs.rs"]
mod test_tmpfs;

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::PathBuf;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort_by_key(|n| {
            let (b, i) = n.rsplit_once('.').unwrap_or((n, "0"));
            (b.to_owned(), i.parse::<u64>().unwrap_or(u64::MAX))
        });
        v
    }

    fn read(dir: &Path, name: &str) -> String {
        std::fs::read_to_string(dir.join(name)).unwrap()
    }

    fn setup() -> (tempfile::TempDir, PathBuf, LogDir) {
        let t = tempfile::tempdir().unwrap();
        let logs = t.path().join("logs");
        std::fs::create_dir(&logs).unwrap();
        let dir = LogDir::open(&logs).unwrap();
        (t, logs, dir)
    }

    #[test]
    fn the_first_file_is_index_0_mode_0644_and_continued_across_restarts() {
        let (_t, logs, dir) = setup();
        let mut r = Rotator::new("web.stdout", 10, 1 << 20);
        r.open(&dir).unwrap();
        assert_eq!(names(&logs), ["web.stdout.0"]);
        let mode = std::fs::metadata(logs.join("web.stdout.0"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
        r.write(&dir, b"one\n").unwrap();
        drop(r);
        // A restarted task (a new rotator) appends to the highest index.
        std::fs::write(logs.join("web.stdout.3"), "three\n").unwrap();
        std::fs::write(logs.join("web.stdout.x"), "not an index").unwrap();
        std::fs::write(logs.join("web.stderr.7"), "other stream").unwrap();
        std::fs::create_dir(logs.join("web.stdout.9")).unwrap();
        let mut r = Rotator::new("web.stdout", 10, 1 << 20);
        r.write(&dir, b"more\n").unwrap();
        assert_eq!(r.index(), 3, "the highest index that is not a directory");
        assert_eq!(read(&logs, "web.stdout.3"), "three\nmore\n");
        assert_eq!(read(&logs, "web.stdout.0"), "one\n");
    }

    #[test]
    fn files_rotate_at_the_size_whole_lines_and_skip_full_files() {
        let (_t, logs, dir) = setup();
        // 40 KiB files: the line scan (32 KiB) applies to almost every write.
        let size = 40 * 1024;
        let mut r = Rotator::new("t.stdout", 100, size);
        let line = |i: usize| format!("line {i:06} {}\n", "x".repeat(90));
        let mut all = String::new();
        for i in 0..2000 {
            let l = line(i);
            r.write(&dir, l.as_bytes()).unwrap();
            all.push_str(&l);
        }
        let files = names(&logs);
        assert!(files.len() > 4, "{files:?}");
        let mut joined = String::new();
        for f in &files {
            let body = read(&logs, f);
            assert!(body.len() as u64 <= size, "{f}: {}", body.len());
            assert!(body.ends_with('\n'), "{f} ends mid-line");
            joined.push_str(&body);
        }
        assert_eq!(joined, all, "every byte, in order");

        // A pre-existing full file at the next index is skipped, as logmon does.
        let next = r.index() + 1;
        std::fs::write(
            logs.join(format!("t.stdout.{next}")),
            "x".repeat(size as usize),
        )
        .unwrap();
        let before = r.index();
        while r.index() == before {
            r.write(&dir, line(0).as_bytes()).unwrap();
        }
        assert_eq!(r.index(), next + 1);
    }

    #[test]
    fn one_write_larger_than_a_file_is_split_and_nothing_exceeds_the_size() {
        let (_t, logs, dir) = setup();
        let mut r = Rotator::new("t.stderr", 100, 64 * 1024);
        let blob = vec![b'a'; 200 * 1024];
        r.write(&dir, &blob).unwrap();
        r.write(&dir, b"\nend\n").unwrap();
        let total: u64 = names(&logs)
            .iter()
            .map(|f| {
                let n = std::fs::metadata(logs.join(f)).unwrap().len();
                assert!(n <= 64 * 1024, "{f}: {n}");
                n
            })
            .sum();
        assert_eq!(total, 200 * 1024 + 5);
    }

    #[test]
    fn beyond_max_files_the_oldest_are_removed() {
        let (_t, logs, dir) = setup();
        let mut r = Rotator::new("t.stdout", 3, 64 * 1024);
        let line = format!("{}\n", "y".repeat(1023));
        for _ in 0..(64 * 7) {
            r.write(&dir, line.as_bytes()).unwrap();
        }
        let files = names(&logs);
        assert_eq!(files.len(), 3, "{files:?}");
        let last = r.index();
        assert!(last >= 6, "{last}");
        let want: Vec<String> = (last - 2..=last).map(|i| format!("t.stdout.{i}")).collect();
        assert_eq!(files, want);
    }

    #[test]
    fn planted_symlinks_fifos_dirs_and_hard_links_are_never_written_through() {
        let (t, logs, dir) = setup();
        let outside = t.path().join("secret");
        std::fs::write(&outside, "secret\n").unwrap();
        let victim = t.path().join("victim");
        std::fs::write(&victim, "victim\n").unwrap();
        std::os::unix::fs::symlink(&outside, logs.join("t.stdout.0")).unwrap();
        nix::unistd::mkfifo(&logs.join("t.stdout.1"), Mode::from_bits_truncate(0o666)).unwrap();
        std::os::unix::fs::symlink("/dev/null", logs.join("t.stdout.2")).unwrap();
        std::fs::hard_link(&victim, logs.join("t.stdout.3")).unwrap();
        let mut r = Rotator::new("t.stdout", 10, 1 << 20);
        r.write(&dir, b"hello\n").unwrap();
        assert_eq!(r.index(), 4);
        assert_eq!(read(&logs, "t.stdout.4"), "hello\n");
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "secret\n");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "victim\n");
        assert_eq!(std::fs::metadata(&victim).unwrap().nlink(), 2);

        // Purging removes the links themselves, never their targets.
        let mut r = Rotator::new("t.stdout", 1, 64 * 1024);
        let line = format!("{}\n", "z".repeat(1023));
        for _ in 0..200 {
            r.write(&dir, line.as_bytes()).unwrap();
        }
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "secret\n");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "victim\n");
        assert_eq!(names(&logs).len(), 1, "{:?}", names(&logs));
    }

    /// `alloc/logs` is writable by every task of the allocation: an old index that cannot be
    /// removed (here a non-empty directory) must neither lose output nor stop the purge, or
    /// each rotation would drop data (and make two task events) and `max_files` would no
    /// longer bound the logs.
    #[test]
    fn an_entry_that_cannot_be_removed_neither_fails_writes_nor_stops_the_purge() {
        let (_t, logs, dir) = setup();
        std::fs::create_dir_all(logs.join("t.stdout.0/planted")).unwrap();
        let mut r = Rotator::new("t.stdout", 3, 64 * 1024);
        let line = format!("{}\n", "y".repeat(1023));
        for i in 0..(64 * 10) {
            if let Err(e) = r.write(&dir, line.as_bytes()) {
                panic!(
                    "write {i} failed ({} bytes written): {}",
                    e.written, e.error
                );
            }
        }
        let last = r.index();
        let mut want = vec!["t.stdout.0".to_owned()];
        want.extend((last - 2..=last).map(|i| format!("t.stdout.{i}")));
        assert_eq!(names(&logs), want);
    }

    /// Entries above the current index (planted by a task, or present as directories when
    /// the shim starts) are not older files: the purge keeps `max_files` files up to the
    /// current one and never computes `index - oldest` below zero.
    #[test]
    fn entries_planted_above_the_current_index_do_not_upset_the_purge() {
        let (_t, logs, dir) = setup();
        // Only a directory when the shim starts: writing begins at index 0, below it.
        std::fs::create_dir(logs.join("t.stdout.900")).unwrap();
        let mut r = Rotator::new("t.stdout", 2, 64 * 1024);
        let line = format!("{}\n", "w".repeat(1023));
        let rotate = |r: &mut Rotator| {
            let before = r.index();
            while r.index() == before {
                r.write(&dir, line.as_bytes()).unwrap();
            }
        };
        rotate(&mut r);
        rotate(&mut r);
        // Planted while the task runs, above the current index.
        std::fs::write(logs.join("t.stdout.950"), "").unwrap();
        std::fs::write(logs.join("t.stdout.951"), "").unwrap();
        for _ in 0..4 {
            rotate(&mut r);
        }
        let last = r.index();
        assert_eq!(last, 6);
        assert_eq!(
            names(&logs),
            [
                "t.stdout.5",
                "t.stdout.6",
                "t.stdout.900",
                "t.stdout.950",
                "t.stdout.951"
            ],
            "the last max_files files up to the current one are kept"
        );
    }

    #[test]
    fn a_symlinked_log_dir_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let real = t.path().join("elsewhere");
        std::fs::create_dir(&real).unwrap();
        let link = t.path().join("logs");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let e = LogDir::open(&link).unwrap_err().to_string();
        assert!(e.contains("refusing to follow"), "{e}");
        assert!(LogDir::open(&t.path().join("missing")).is_err());
    }

    #[test]
    fn a_file_swapped_for_a_symlink_after_rotation_is_skipped() {
        let (t, logs, dir) = setup();
        let outside = t.path().join("target");
        std::fs::write(&outside, "").unwrap();
        let mut r = Rotator::new("t.stdout", 10, 64 * 1024);
        r.write(&dir, b"a\n").unwrap();
        // The task plants the next index as a symlink before the rotator gets there.
        std::os::unix::fs::symlink(&outside, logs.join("t.stdout.1")).unwrap();
        let line = format!("{}\n", "q".repeat(1023));
        for _ in 0..70 {
            r.write(&dir, line.as_bytes()).unwrap();
        }
        assert_eq!(r.index(), 2);
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "");
    }

    use super::test_tmpfs::Tmpfs;

    #[test]
    fn a_full_disk_loses_only_what_did_not_fit_and_writing_resumes() {
        let t = tempfile::tempdir().unwrap();
        let logs = t.path().join("logs");
        std::fs::create_dir(&logs).unwrap();
        let Some(_fs) = Tmpfs::mount(&logs, "size=256k") else {
            return;
        };
        let dir = LogDir::open(&logs).unwrap();
        // Most of the space taken by something else.
        std::fs::write(logs.join("filler"), vec![0u8; 200 * 1024]).unwrap();
        let mut r = Rotator::new("t.stdout", 10, 1 << 20);
        let chunk = vec![b'x'; 16 * 1024];
        let mut written = 0usize;
        let err = loop {
            match r.write(&dir, &chunk) {
                Ok(()) => written += chunk.len(),
                Err(e) => break e,
            }
            assert!(written < 1 << 20, "the disk never filled");
        };
        assert_eq!(
            err.error.raw_os_error(),
            Some(libc::ENOSPC),
            "{:?}",
            err.error
        );
        assert!(err.written < chunk.len());
        written += err.written;
        // Still failing, nothing written.
        assert_eq!(r.write(&dir, &chunk).unwrap_err().written, 0);
        // Space again: the same file goes on.
        std::fs::remove_file(logs.join("filler")).unwrap();
        r.write(&dir, b"after\n").unwrap();
        let body = std::fs::read(logs.join("t.stdout.0")).unwrap();
        assert_eq!(body.len(), written + 6);
        assert!(body.ends_with(b"after\n"));
    }

    #[test]
    fn a_read_only_log_dir_fails_each_write_without_panicking() {
        let t = tempfile::tempdir().unwrap();
        let logs = t.path().join("logs");
        std::fs::create_dir(&logs).unwrap();
        let Some(_fs) = Tmpfs::mount(&logs, "size=64k") else {
            return;
        };
        nix::mount::mount(
            None::<&str>,
            &logs,
            None::<&str>,
            nix::mount::MsFlags::MS_REMOUNT | nix::mount::MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .expect("remount read-only");
        let dir = LogDir::open(&logs).unwrap();
        let mut r = Rotator::new("t.stdout", 10, 1 << 20);
        assert_eq!(r.open(&dir).unwrap_err().raw_os_error(), Some(libc::EROFS));
        let e = r.write(&dir, b"line\n").unwrap_err();
        assert_eq!((e.written, e.error.raw_os_error()), (0, Some(libc::EROFS)));
    }

    #[test]
    fn index_names_parse_like_logmon() {
        assert_eq!(parse_index("web.stdout.12", "web.stdout"), Some(12));
        assert_eq!(parse_index("web.stdout.", "web.stdout"), None);
        assert_eq!(parse_index("web.stdout.1x", "web.stdout"), None);
        assert_eq!(parse_index("web.stdout.+1", "web.stdout"), None);
        assert_eq!(parse_index("web.stdoutx.1", "web.stdout"), None);
        assert_eq!(parse_index(".web.stdout.fifo", "web.stdout"), None);
        assert_eq!(
            parse_index("web.stdout.99999999999999999999", "web.stdout"),
            None
        );
        assert_eq!(
            parse_index("web.stdout.9223372036854775807", "web.stdout"),
            None
        );
        assert_eq!(
            parse_index(&format!("web.stdout.{MAX_FOUND_INDEX}"), "web.stdout"),
            Some(MAX_FOUND_INDEX)
        );
    }

    /// Issue #18 (14): an entry planted at the highest index (a symlink, or a file of the
    /// task's) made the rotator start there, skip it, find no next index and drop every
    /// write with "log file index exhausted". Such entries are passed over like any other
    /// planted one: output goes on at the real indexes.
    #[test]
    fn an_entry_planted_at_the_highest_index_is_passed_over() {
        let (t, logs, dir) = setup();
        let outside = t.path().join("outside");
        std::fs::write(&outside, "").unwrap();
        std::os::unix::fs::symlink(&outside, logs.join(format!("t.stdout.{MAX_INDEX}"))).unwrap();
        std::fs::write(logs.join(format!("t.stderr.{MAX_INDEX}")), "planted\n").unwrap();
        std::fs::write(logs.join("t.stderr.2"), "earlier\n").unwrap();
        let mut out = Rotator::new("t.stdout", 3, 64 * 1024);
        out.write(&dir, b"hello\n").unwrap();
        assert_eq!(out.index(), 0);
        assert_eq!(read(&logs, "t.stdout.0"), "hello\n");
        let mut err = Rotator::new("t.stderr", 3, 64 * 1024);
        err.write(&dir, b"oops\n").unwrap();
        assert_eq!(err.index(), 2, "the last real file is continued");
        assert_eq!(read(&logs, "t.stderr.2"), "earlier\noops\n");
        // Rotation and the purge go on as usual and leave the planted entries alone.
        let line = format!("{}\n", "p".repeat(1023));
        for _ in 0..(64 * 5) {
            out.write(&dir, line.as_bytes()).unwrap();
        }
        assert!(out.index() >= 4, "{}", out.index());
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "");
        assert!(logs.join(format!("t.stdout.{MAX_INDEX}")).is_symlink());
        // One planted just within reach still leaves 2^32 indexes after it.
        let (_t, logs, dir) = setup();
        std::os::unix::fs::symlink(&outside, logs.join(format!("t.stdout.{MAX_FOUND_INDEX}")))
            .unwrap();
        let mut r = Rotator::new("t.stdout", 3, 64 * 1024);
        r.write(&dir, b"x\n").unwrap();
        assert_eq!(r.index(), MAX_FOUND_INDEX + 1);
    }
}
