//! Wake-ups from the filesystem.
//!
//! **inotify wakes, rescans decide.** `notify` only shortens the wait; the
//! periodic rescan (`glob_interval`) is what finds files on volumes without
//! inotify (NFS, EFS).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;

use super::IDLE_WAIT;

/// Wake-ups from inotify: they shorten the idle wait and ask for a rescan.
pub(super) struct Waker {
    watcher: Option<notify::RecommendedWatcher>,
    rx: std_mpsc::Receiver<()>,
    /// Held so the channel stays connected even if the watcher's thread
    /// ends; a disconnected channel would make every idle wait return at once.
    _keepalive: std_mpsc::SyncSender<()>,
    pub(super) rescan: Arc<AtomicBool>,
    dirs: HashSet<PathBuf>,
}

impl Waker {
    pub(super) fn inotify() -> Self {
        let mut w = Waker::none();
        let (tx, rx) = std_mpsc::sync_channel(1);
        let flag = w.rescan.clone();
        w.watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(ev) = res {
                use notify::EventKind::*;
                if matches!(
                    ev.kind,
                    Create(_) | Remove(_) | Modify(notify::event::ModifyKind::Name(_))
                ) {
                    flag.store(true, Ordering::Release);
                }
                // A full channel means a wake-up is already pending.
                let _ = tx.try_send(());
            }
        })
        .map_err(|e| tracing::warn!(error = %e, "inotify unavailable; relying on rescans"))
        .ok();
        w.rx = rx;
        w
    }

    /// No watcher: only rescans find files (and the simulation steps by hand).
    pub(super) fn none() -> Self {
        let (tx, rx) = std_mpsc::sync_channel(1);
        Waker {
            watcher: None,
            rx,
            _keepalive: tx,
            rescan: Arc::new(AtomicBool::new(false)),
            dirs: HashSet::new(),
        }
    }

    pub(super) fn watch_dir_of(&mut self, pattern: &str) {
        let Some(watcher) = self.watcher.as_mut() else { return };
        // The longest directory prefix without glob characters.
        let mut dir = PathBuf::new();
        for comp in Path::new(pattern).components() {
            let s = comp.as_os_str().to_string_lossy();
            if s.contains(['*', '?', '[', '{']) {
                break;
            }
            dir.push(comp);
        }
        if dir.as_os_str().is_empty() || dir.is_file() {
            dir = dir.parent().map(Path::to_path_buf).unwrap_or_default();
        }
        if dir.as_os_str().is_empty() || self.dirs.contains(&dir) || !dir.is_dir() {
            return;
        }
        use notify::Watcher;
        let mode = if pattern.contains("**") {
            notify::RecursiveMode::Recursive
        } else {
            notify::RecursiveMode::NonRecursive
        };
        if watcher.watch(&dir, mode).is_ok() {
            self.dirs.insert(dir);
        }
    }

    /// Takes a pending watcher event without waiting.
    pub(super) fn woken(&self) -> bool {
        self.rx.try_recv().is_ok()
    }

    /// Waits for a watcher event or `IDLE_WAIT`. Never returns early for
    /// lack of a watcher (no inotify, or its thread ended when a watched
    /// directory went away): that would spin.
    pub(super) fn idle_wait(&self) {
        match self.rx.recv_timeout(IDLE_WAIT) {
            Ok(()) | Err(std_mpsc::RecvTimeoutError::Timeout) => {}
            Err(std_mpsc::RecvTimeoutError::Disconnected) => std::thread::sleep(IDLE_WAIT),
        }
    }
}
