//! When the router stops: graceful drain, and following the application out.
//!
//! A sidecar that outlives its application keeps an ECS task or a Kubernetes
//! Job from completing (the "zombie sidecar"), and one that exits at the first
//! SIGTERM loses the application's last lines, which are usually the ones
//! that explain why it stopped. So a stop is a drain, not an exit: reading
//! goes on until the inputs have been quiet for `drain_quiet` (the app has
//! written its last words), then the sinks flush, checkpoints are saved and
//! the process exits 0, all within `drain_timeout`, which defaults to less
//! than the 30 s ECS (`stopTimeout`) and Kubernetes
//! (`terminationGracePeriodSeconds`) allow before SIGKILL.
//!
//! The same drain starts on SIGTERM/SIGINT or when an `exit_when` condition
//! holds: the named ECS container is `STOPPED` (task metadata v4), a process
//! that was seen is gone (a pod with `shareProcessNamespace`), or a marker
//! file exists. Conditions are polled: each is a cheap local read, and the
//! drain's quiet period dwarfs the poll interval anyway.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::confdiag::{Ctx, Seg};
use crate::topology::EnvFn;
use crate::transforms::enrich::metadata::{ECS_METADATA_URI_ENV, ecs_container_status};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LifecycleConfig {
    /// After a stop request, reading ends once no input grew for this long.
    #[serde(default = "default_drain_quiet", with = "humantime_serde")]
    pub drain_quiet: Duration,
    /// The whole drain (reading, flushing, checkpoints) ends within this.
    #[serde(default = "default_drain_timeout", with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// How often `exit_when` conditions are checked.
    #[serde(default = "default_check_interval", with = "humantime_serde")]
    pub check_interval: Duration,
    #[serde(default)]
    pub exit_when: ExitWhen,
}

/// Any condition that is set and holds starts the drain.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExitWhen {
    /// Name of an ECS container of this task; holds when it is `STOPPED`.
    pub ecs_container_stopped: Option<String>,
    /// Process name (as in `/proc/<pid>/comm` or the base name of argv[0]);
    /// holds once such a process has been seen and none is left.
    pub process_gone: Option<String>,
    /// Holds when this path exists.
    pub file_exists: Option<PathBuf>,
}

impl ExitWhen {
    pub fn is_empty(&self) -> bool {
        self.ecs_container_stopped.is_none() && self.process_gone.is_none() && self.file_exists.is_none()
    }
}

fn default_drain_quiet() -> Duration {
    Duration::from_secs(2)
}

fn default_drain_timeout() -> Duration {
    Duration::from_secs(25)
}

fn default_check_interval() -> Duration {
    Duration::from_secs(1)
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        LifecycleConfig {
            drain_quiet: default_drain_quiet(),
            drain_timeout: default_drain_timeout(),
            check_interval: default_check_interval(),
            exit_when: ExitWhen::default(),
        }
    }
}

impl LifecycleConfig {
    pub fn validate(&self, ctx: &mut Ctx<'_>, base: &[Seg]) -> bool {
        let at = |k: &str| crate::confdiag::key(base, k);
        let mut ok = true;
        if self.drain_timeout < Duration::from_secs(1) {
            ctx.error(&at("drain_timeout"), "must be at least 1s");
            ok = false;
        }
        if self.drain_quiet >= self.drain_timeout {
            ctx.error(&at("drain_quiet"), "must be shorter than drain_timeout");
            ok = false;
        }
        if self.check_interval < Duration::from_millis(100) {
            ctx.error(&at("check_interval"), "must be at least 100ms");
            ok = false;
        }
        if let Some(name) = &self.exit_when.process_gone
            && (name.is_empty() || name.contains('/'))
        {
            let mut p = at("exit_when");
            p.push(Seg::Key("process_gone".into()));
            ctx.error(&p, "must be a process name, not a path");
            ok = false;
        }
        ok
    }

    /// When reading must stop at the latest, counted from the stop request:
    /// the rest of `drain_timeout` is left for the sinks to flush.
    pub fn read_budget(&self) -> Duration {
        let reserve = (self.drain_timeout / 5).min(Duration::from_secs(5));
        self.drain_timeout - reserve
    }

    pub fn describe(&self) -> String {
        let mut conds = Vec::new();
        if let Some(c) = &self.exit_when.ecs_container_stopped {
            conds.push(format!("ECS container {c:?} STOPPED"));
        }
        if let Some(p) = &self.exit_when.process_gone {
            conds.push(format!("process {p:?} gone"));
        }
        if let Some(f) = &self.exit_when.file_exists {
            conds.push(format!("file {} exists", f.display()));
        }
        format!(
            "lifecycle: drain_quiet {}, drain_timeout {}{}",
            humantime::format_duration(self.drain_quiet),
            humantime::format_duration(self.drain_timeout),
            if conds.is_empty() {
                String::new()
            } else {
                format!(", exit when {}", conds.join(" or "))
            }
        )
    }
}

/// Polls the `exit_when` conditions and cancels `stop` when one holds.
/// Returns at once when no condition is configured.
pub async fn watch(cfg: LifecycleConfig, env: EnvFn, stop: CancellationToken) {
    if cfg.exit_when.is_empty() {
        return;
    }
    let mut seen_process = false;
    let mut warned_no_ecs = false;
    let mut last_ecs_error: Option<String> = None;
    let mut tick = tokio::time::interval(cfg.check_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Some(path) = &cfg.exit_when.file_exists
            && tokio::fs::try_exists(path).await.unwrap_or(false)
        {
            tracing::info!(file = %path.display(), "exit condition: marker file exists; draining");
            stop.cancel();
            return;
        }
        if let Some(name) = &cfg.exit_when.process_gone {
            let scan = name.clone();
            let running = tokio::task::spawn_blocking(move || process_running(&scan))
                .await
                .unwrap_or(true);
            if running && !seen_process {
                seen_process = true;
                tracing::info!(process = %name, "watching the application's process");
            } else if !running && seen_process {
                tracing::info!(process = %name, "exit condition: the application's process is gone; draining");
                stop.cancel();
                return;
            }
        }
        if let Some(container) = &cfg.exit_when.ecs_container_stopped {
            match env(ECS_METADATA_URI_ENV) {
                None => {
                    if !warned_no_ecs {
                        warned_no_ecs = true;
                        tracing::warn!(
                            "lifecycle.exit_when.ecs_container_stopped is set but {ECS_METADATA_URI_ENV} is not; not in ECS?"
                        );
                    }
                }
                Some(base) => match ecs_container_status(&base, container, Duration::from_secs(2)).await {
                    Ok(Some(status)) if status.eq_ignore_ascii_case("STOPPED") => {
                        tracing::info!(%container, "exit condition: the ECS container is STOPPED; draining");
                        stop.cancel();
                        return;
                    }
                    Ok(Some(_)) => last_ecs_error = None,
                    Ok(None) => {
                        let e = format!("container {container:?} is not in the task");
                        if last_ecs_error.as_deref() != Some(&e) {
                            tracing::warn!("lifecycle: {e}");
                            last_ecs_error = Some(e);
                        }
                    }
                    Err(e) => {
                        // Once per distinct error, not once per poll.
                        if last_ecs_error.as_deref() != Some(&e) {
                            tracing::warn!(error = %e, "lifecycle: cannot read the ECS task metadata");
                            last_ecs_error = Some(e);
                        }
                    }
                },
            }
        }
    }
}

/// Is a process called `name` running? Compares `/proc/<pid>/comm` (the
/// kernel truncates it to 15 bytes) and the base name of argv[0].
pub fn process_running(name: &str) -> bool {
    let me = std::process::id().to_string();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    let short: String = name.chars().take(15).collect();
    for entry in dir.flatten() {
        let file_name = entry.file_name();
        let Some(pid) = file_name.to_str() else { continue };
        if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == me {
            continue;
        }
        let p = entry.path();
        if let Ok(comm) = std::fs::read_to_string(p.join("comm"))
            && comm.trim_end_matches('\n') == short
        {
            return true;
        }
        if let Ok(cmdline) = std::fs::read(p.join("cmdline")) {
            let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
            let base = argv0.rsplit(|b| *b == b'/').next().unwrap_or_default();
            if base == name.as_bytes() {
                return true;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_budget_leaves_time_to_flush() {
        let c = LifecycleConfig::default();
        assert_eq!(c.read_budget(), Duration::from_secs(20));
        let c = LifecycleConfig {
            drain_timeout: Duration::from_secs(5),
            ..LifecycleConfig::default()
        };
        assert_eq!(c.read_budget(), Duration::from_secs(4));
    }

    #[test]
    fn finds_a_running_process_by_name() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        assert!(process_running("sleep"));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!process_running("no-such-process-logferry"));
    }

    #[tokio::test]
    async fn marker_file_stops() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("done");
        let cfg = LifecycleConfig {
            check_interval: Duration::from_millis(100),
            exit_when: ExitWhen {
                file_exists: Some(marker.clone()),
                ..ExitWhen::default()
            },
            ..LifecycleConfig::default()
        };
        let stop = CancellationToken::new();
        let env: EnvFn = std::sync::Arc::new(|_: &str| None);
        let h = tokio::spawn(watch(cfg, env, stop.clone()));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!stop.is_cancelled());
        std::fs::write(&marker, b"").unwrap();
        tokio::time::timeout(Duration::from_secs(10), h).await.unwrap().unwrap();
        assert!(stop.is_cancelled());
    }

    #[tokio::test]
    async fn process_gone_needs_the_process_seen_first() {
        let cfg = LifecycleConfig {
            check_interval: Duration::from_millis(100),
            exit_when: ExitWhen {
                process_gone: Some("logferry-nope".into()),
                ..ExitWhen::default()
            },
            ..LifecycleConfig::default()
        };
        let stop = CancellationToken::new();
        let env: EnvFn = std::sync::Arc::new(|_: &str| None);
        let h = tokio::spawn(watch(cfg, env, stop.clone()));
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!stop.is_cancelled(), "a process never seen is not gone");
        stop.cancel();
        h.await.unwrap();
    }
}
