//! Finding files: the glob rescan, and opening a new file where its
//! identity says to start (its checkpoint, the continuation of a former
//! content, or the configured `read_from`).

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use super::identity::{Continue, FINGERPRINT_BYTES, Former, fingerprint_of, holds, read_head, tail_at};
use super::parse::Parser;
use super::rotation::Verdict;
use super::tail::LineSplitter;
use super::world::{Stat, World};
use super::{FileSource, KubernetesMetadata, Link, ReadFrom, UNREADABLE, Watched, kube_api, kubernetes};
use crate::checkpoint::{AckTracker, Checkpoint, Position};
use crate::metrics::FileLabels;

impl<W: World> FileSource<W> {
    /// Finds files matching the globs; notices renamed and deleted ones.
    pub(super) fn discover(&mut self, initial: bool) {
        let mut seen: HashSet<(u64, u64)> = HashSet::new();
        let mut found: Vec<(PathBuf, Stat)> = Vec::new();
        let patterns = self.cfg.include.clone();
        for pattern in &patterns {
            self.waker.watch_dir_of(pattern);
            let mut matched = false;
            for path in self.world.glob(pattern) {
                if self.exclude.is_match(&path) {
                    continue;
                }
                let Some(st) = self.world.stat(&path) else { continue };
                matched |= st.is_file;
                if st.is_file && seen.insert((st.dev, st.ino)) {
                    found.push((path, st));
                }
            }
            if initial && !matched {
                // Often a typo; also normal for a log the app has not created yet.
                tracing::warn!(pattern = %pattern, "no file matches this include pattern yet; files that appear later are read");
            }
        }
        let mut new = Vec::new();
        for (path, st) in found {
            let key = (st.dev, st.ino);
            match self.by_key.get(&key).and_then(|s| self.files.get_mut(s)) {
                Some(w) => {
                    if w.path != path {
                        tracing::debug!(from = %w.path.display(), to = %path.display(), "file renamed");
                        w.path = path;
                    }
                    w.gone = false;
                }
                None => new.push((path, st)),
            }
        }
        // Files with a saved checkpoint first: one that no longer holds
        // leaves the former content its copy (another new file) continues.
        new.sort_by_key(|(_, st)| !self.saved.contains_key(&(st.dev, st.ino)));
        for (path, st) in new {
            self.open(path, st, initial);
        }
        for w in self.files.values_mut() {
            if !seen.contains(&(w.dev, w.ino)) && !w.gone {
                tracing::debug!(file = %w.path.display(), "file rotated away or deleted; reading it to its end");
                w.gone = true;
            }
        }
        // Forget saved checkpoints of files that no longer exist under the globs.
        let before = self.saved.len();
        self.saved.retain(|k, _| seen.contains(k));
        self.deferred.retain(|k, _| seen.contains(k));
        if self.saved.len() != before {
            self.checkpoints_dirty = true;
        }
        self.counters.m.files_open.set(self.files.len() as i64);
    }

    pub(super) fn open(&mut self, path: PathBuf, st: Stat, initial: bool) {
        let key = (st.dev, st.ino);
        let file = match self.world.open(&path) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot open file");
                return;
            }
        };
        // The path was stat'ed during the scan, opened only now: a rotation
        // in between (rename, new file under the old name) hands us another
        // file than `key` names. Tracked under `key`, it would be read in
        // place of the renamed file, which then was never read (and its
        // copy continued as if it had been). Leave it to the next scan.
        let st = match self.world.fstat(&file) {
            Ok(now) if (now.dev, now.ino) == key => now,
            _ => {
                tracing::debug!(file = %path.display(), "file replaced between scan and open; looking again");
                self.waker.rescan.store(true, std::sync::atomic::Ordering::Release);
                return;
            }
        };
        let size = st.len;
        let head = read_head(&self.world, &file, size);
        let fp = fingerprint_of(&head);
        // Our own checkpoint of this very file comes first, if it still holds.
        let saved = self.saved.remove(&key);
        let had_checkpoint = saved.is_some();
        let held = saved
            .as_ref()
            .map(Checkpoint::position)
            .filter(|at| holds(&self.world, &file, size, at));
        let start = match held {
            Some(at) if at.offset > 0 => Some(Continue::at(at)),
            // A checkpoint at 0 says nothing was delivered from this file,
            // not that its content is new: a copy opened before it could be
            // told apart saves one (`identity_pending`), and a kill -9
            // before the decision is saved must not make it read the whole
            // copy again. It is classified like a new file.
            _ => match self.classify(key, &file, &head, size) {
                Some(Verdict::Wait) => {
                    // Keep its checkpoint until it is decided.
                    if let Some(cp) = saved {
                        self.saved.insert(key, cp);
                    }
                    return;
                }
                Some(Verdict::Continue(c)) => Some(c),
                None => held.map(Continue::at),
            },
        };
        if let Some(cp) = saved.filter(|_| start.is_none()) {
            // Same inode, other content: reused, or truncated while we were
            // down. A copy of the content it had continues where it was.
            tracing::info!(file = %path.display(), offset = cp.offset, "file no longer holds its checkpoint (truncated or replaced); reading it from the start");
            self.remember(Former {
                head: cp.fingerprint,
                head_bytes: None,
                points: vec![(cp.position(), None)],
                durable: cp.position(),
            });
        }
        let from_end = initial && !had_checkpoint && self.cfg.read_from == ReadFrom::End;
        let start = start.unwrap_or_else(|| {
            let offset = if from_end { size } else { 0 };
            Continue::at(Position {
                offset,
                head: fp,
                tail: tail_at(&self.world, &file, offset).unwrap_or(UNREADABLE),
            })
        });
        // Too few bytes to tell a new file from a copy that is being
        // written: decide when it has grown (see `read_file_inner`).
        let identity_pending = !initial && start.read_from().offset == 0 && (size as usize) < FINGERPRINT_BYTES;
        self.deferred.remove(&key);
        let parser = match Parser::new(&self.cfg.parser_options()) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "parser configuration rejected");
                return;
            }
        };
        let stream = self.next_stream;
        self.next_stream += 1;
        let labels = FileLabels {
            component: self.cx.id.clone(),
            file: path.display().to_string(),
        };
        let mut k8s = None;
        let fields = match self.cfg.kubernetes_metadata {
            KubernetesMetadata::None => None,
            KubernetesMetadata::Api => {
                match path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(kubernetes::parse_name)
                {
                    Some(c) => k8s = Some(kube_api::FileMeta::new(&c)),
                    None => {
                        self.counters.kubernetes_name.inc();
                        tracing::debug!(file = %path.display(), "not a kubelet container log name; no kubernetes fields");
                    }
                }
                None
            }
            KubernetesMetadata::Path => {
                let f = kubernetes::fields_for(&path);
                if f.is_none() {
                    // Counted once per file, not per line.
                    self.counters.kubernetes_name.inc();
                    tracing::debug!(file = %path.display(), "not a kubelet container log name; no kubernetes fields");
                }
                f
            }
        };
        tracing::debug!(file = %path.display(), offset = start.read_from().offset, "tailing file");
        let now = self.world.now();
        let mut w = Watched {
            stream,
            path,
            file,
            dev: key.0,
            ino: key.1,
            fp,
            head,
            read_pos: 0,
            consumed: 0,
            mark: start.durable,
            recent: std::collections::VecDeque::new(),
            behind: Vec::new(),
            behind_end: 0,
            read_tail: None,
            lines_to: 0,
            splitter: LineSplitter::new(self.cfg.max_line_size.as_u64() as usize),
            parser,
            tracker: AckTracker::new(start.durable),
            idle_since: None,
            settled_at: now,
            gone: false,
            size,
            labels,
            identity_pending,
            fields,
            k8s,
        };
        self.start_at(&mut w, start);
        self.by_key.insert(key, stream);
        self.files.insert(stream, w);
        self.checkpoints_dirty = true;
    }

    /// Positions `w` at `c`: reading resumes where `c` says, the checkpoint
    /// at `c.durable`, moving through `c.pending` as the original's batches
    /// are released.
    pub(super) fn start_at(&mut self, w: &mut Watched<W::File>, c: Continue) {
        let from = c.read_from().offset;
        w.read_pos = from;
        w.consumed = from;
        w.lines_to = from;
        w.tracker = AckTracker::new(c.durable);
        w.mark = c.durable;
        w.recent.clear();
        w.forget_read();
        for (at, from) in c.pending {
            let seq = w.push_mark(at);
            self.links.push(Link {
                from,
                to: (w.stream, seq),
            });
        }
    }

    /// Starts or continues waiting on a file; true while it should wait.
    /// A backfill (`--exit-on-eof`) never waits: nothing is being rotated.
    pub(super) fn defer(&mut self, key: (u64, u64), max: Duration) -> bool {
        if self.cx.exit_on_eof {
            return false;
        }
        let now = self.world.now();
        let since = *self.deferred.entry(key).or_insert(now);
        now.saturating_duration_since(since) < max
    }
}
