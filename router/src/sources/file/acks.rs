//! Acks in, checkpoints out.
//!
//! **Checkpoints move on acks only** (see `checkpoint.rs`), **and follow
//! them closely**: what a kill -9 repeats is what was delivered since the
//! last save, so the idle wait ends on an ack and a long round saves
//! between its files (at most every `checkpoint_interval`). A sink that
//! commits a second of backlog at once would otherwise have all of it
//! repeated by a kill in the few hundred milliseconds before the save.

use super::FileSource;
use super::world::World;
use crate::checkpoint::{Checkpoint, Saved};
use crate::event::Ack;

/// A copy's checkpoint waits for a batch of its original: when `from` (a
/// stream and one of its batches) is released, `to`'s placeholder batch is
/// acknowledged with the same outcome.
#[derive(Debug, Clone, Copy)]
pub(super) struct Link {
    pub(super) from: (u64, u64),
    pub(super) to: (u64, u64),
}

impl<W: World> FileSource<W> {
    /// Saves the checkpoints when they moved and the last save is
    /// `checkpoint_interval` old. Called after every round and between the
    /// files of a round, so a checkpoint follows its acks closely even while
    /// a backlog keeps the round long: what a kill -9 repeats is what was
    /// delivered since the last save.
    pub(super) fn save_if_due(&mut self) {
        let now = self.world.now();
        if self.checkpoints_dirty && now.saturating_duration_since(self.last_checkpoint) >= self.cfg.checkpoint_interval
        {
            self.save_checkpoints();
            self.last_checkpoint = now;
        }
    }

    pub(super) fn drain_acks(&mut self) {
        while let Ok(ack) = self.ack_rx.try_recv() {
            self.apply_ack(ack);
        }
    }

    pub(super) fn apply_ack(&mut self, ack: Ack) {
        let m = &self.counters.m;
        m.unacked_events.dec_by(i64::from(ack.records));
        if ack.delivered {
            m.acked_events.inc_by(u64::from(ack.records));
        } else {
            m.failed_events.inc_by(u64::from(ack.records));
        }
        if let Some(w) = self.files.get_mut(&ack.stream) {
            if !ack.delivered {
                tracing::warn!(file = %w.path.display(), "a batch was not delivered; this file's checkpoint stays before it");
            }
            self.settle(ack.stream, ack.seq, ack.delivered);
        }
        self.settle_links();
    }

    /// Records the outcome of a batch of `stream` with its tracker.
    pub(super) fn settle(&mut self, stream: u64, seq: u64, delivered: bool) {
        let Some(w) = self.files.get_mut(&stream) else { return };
        if w.tracker.ack(seq, delivered) {
            self.checkpoints_dirty = true;
            let m = &self.cx.metrics;
            let acked = w.tracker.acked().offset;
            m.file_checkpoint_offset.get_or_create(&w.labels).set(acked as i64);
            m.file_checkpoint_lag
                .get_or_create(&w.labels)
                .set(w.size.saturating_sub(acked) as i64);
        }
    }

    /// Acknowledges the placeholders of copies whose original's batch is
    /// settled: delivered when it was released, failed when it failed.
    pub(super) fn settle_links(&mut self) {
        if self.links.is_empty() {
            return;
        }
        let links = std::mem::take(&mut self.links);
        for link in links {
            match self.hold_state(link.from) {
                Some(delivered) => self.settle(link.to.0, link.to.1, delivered),
                None => self.links.push(link),
            }
        }
    }

    /// Whether batch `seq` of `stream` was delivered (`Some(true)`, also
    /// when the file is closed: it closes only with every batch delivered),
    /// failed (`Some(false)`), or is still in flight (`None`).
    pub(super) fn hold_state(&self, (stream, seq): (u64, u64)) -> Option<bool> {
        match self.files.get(&stream) {
            None => Some(true),
            Some(w) if w.tracker.released(seq) => Some(true),
            Some(w) if w.tracker.failed_through(seq) => Some(false),
            Some(_) => None,
        }
    }

    pub(super) fn save_checkpoints(&mut self) {
        let mut all: Vec<Checkpoint> = self.saved.values().cloned().collect();
        let formers = self
            .formers
            .iter()
            .filter_map(|f| f.to_saved(|h| self.hold_state(h) == Some(true)))
            .collect();
        for w in self.files.values() {
            let at = w.tracker.acked();
            all.push(Checkpoint {
                dev: w.dev,
                ino: w.ino,
                fingerprint: at.head,
                offset: at.offset,
                tail: at.tail,
                path: w.path.display().to_string(),
            });
        }
        let saved = self.world.save_checkpoints(&Saved { files: all, formers });
        // Logged, counted and reported there; retried while dirty.
        self.checkpoint_health.record(&saved);
        if saved.is_ok() {
            self.checkpoints_dirty = false;
        }
    }
}
