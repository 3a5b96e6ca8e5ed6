//! The `logferry` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};

use logferry::api::{self, Health};
use logferry::config::{self, Config, ConfigErrors};
use logferry::config_s3::S3Url;
use logferry::metrics::Metrics;
use logferry::topology::{self, EnvFn, RunOptions};

/// Like `eprintln!`/`println!`, but a closed stream is not a panic: a router
/// whose log pipe went away must keep routing.
macro_rules! err_line {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}
macro_rules! out_line {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// stderr for `tracing` that swallows write errors. `tracing-subscriber`
/// reports a failed write with `eprintln!`, which panics when stderr is a
/// broken pipe, taking down whichever task was logging.
struct QuietStderr;

impl std::io::Write for QuietStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// Exit code for a configuration error (sysexits EX_CONFIG).
const EXIT_CONFIG: u8 = 78;

#[derive(Parser)]
#[command(name = "logferry", version, about = "A lean log router for containers on AWS")]
struct Cli {
    /// Internal log format on stderr. Level from LOGFERRY_LOG (default info).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pipeline.
    Run {
        /// Config file (TOML) or s3://bucket/key. Without it: LOGFERRY_CONFIG_S3 (s3://bucket/key),
        /// LOGFERRY_CONFIG (inline TOML), else the embedded local example.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// A FireLens router's Fluent Bit config (classic format), a file or s3://bucket/key, instead of --config.
        #[arg(long, value_name = "FILE", conflicts_with = "config")]
        fluent_bit_config: Option<PathBuf>,
        /// Read every input to its end, deliver everything, save checkpoints and exit 0.
        #[arg(long)]
        exit_on_eof: bool,
    },
    /// Check a config and print the resolved pipeline.
    Validate {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// A FireLens router's Fluent Bit config (classic format), a file or s3://bucket/key, instead of --config.
        #[arg(long, value_name = "FILE", conflicts_with = "config")]
        fluent_bit_config: Option<PathBuf>,
    },
    /// Reach every sink (bucket writable, directory writable) and report; for readiness probes.
    Check {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// GET the health endpoint once (2 s timeout): exit 0 on 2xx, else 1. For container health checks.
    Healthcheck {
        #[arg(long, default_value = logferry::healthcheck::DEFAULT_URL)]
        url: String,
    },
    /// Search the archive in S3 through the indexer's index.
    Query(Box<logferry::query::QueryArgs>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Healthcheck { url } => logferry::healthcheck::main(&url),
        Command::Validate {
            config,
            fluent_bit_config: Some(fb),
        } => match load_fluent_bit(&fb, config.is_some()) {
            Ok(c) => {
                print!("{}", c.config.describe());
                for row in &c.mapping {
                    out_line!("fluent-bit: {row}");
                }
                for note in &c.notes {
                    out_line!("fluent-bit: note: {note}");
                }
                out_line!("config OK");
                ExitCode::SUCCESS
            }
            Err(e) => config_failure(&e),
        },
        Command::Validate { config, .. } => match load(config.as_deref()) {
            Ok(c) => {
                print!("{}", c.describe());
                out_line!("config OK");
                ExitCode::SUCCESS
            }
            Err(e) => config_failure(&e),
        },
        Command::Check { config } => match load(config.as_deref()) {
            Ok(c) => check(&c),
            Err(e) => config_failure(&e),
        },
        Command::Query(args) => logferry::query::main(*args),
        Command::Run {
            config,
            fluent_bit_config,
            exit_on_eof,
        } => {
            let loaded = match &fluent_bit_config {
                Some(fb) => load_fluent_bit(fb, config.is_some()).map(|c| {
                    for note in &c.notes {
                        tracing::info!("fluent-bit: {note}");
                    }
                    c.config
                }),
                None => load(config.as_deref()),
            };
            let config = match loaded {
                Ok(c) => c,
                Err(e) => return config_failure(&e),
            };
            match run(config, RunOptions { exit_on_eof }) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    err_line!("logferry: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn check(config: &Config) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            err_line!("logferry: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = rt.block_on(logferry::check::check(config));
    let mut ok = true;
    for c in &report {
        match &c.result {
            Ok(()) => out_line!("ok    {} ({})", c.id, c.target),
            Err(e) => {
                ok = false;
                out_line!("FAIL  {} ({}): {e}", c.id, c.target);
            }
        }
    }
    if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

fn config_failure(e: &ConfigErrors) -> ExitCode {
    err_line!("logferry: invalid configuration:");
    for err in &e.0 {
        err_line!("  {err}");
    }
    ExitCode::from(EXIT_CONFIG)
}

fn env_lookup(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn load(path: Option<&std::path::Path>) -> Result<Config, ConfigErrors> {
    if let Some(p) = path {
        return match p.to_str().and_then(S3Url::parse) {
            Some(url) => load_s3(url),
            None => config::load_file(p, &env_lookup),
        };
    }
    let inline = std::env::var("LOGFERRY_CONFIG").ok().filter(|s| !s.trim().is_empty());
    if let Some(s3) = std::env::var("LOGFERRY_CONFIG_S3")
        .ok()
        .filter(|s| !s.trim().is_empty())
    {
        if inline.is_some() {
            return Err(one_error(
                "LOGFERRY_CONFIG and LOGFERRY_CONFIG_S3 are both set: keep one".into(),
            ));
        }
        return match S3Url::parse(s3.trim()) {
            Some(url) => load_s3(url),
            None => Err(one_error(format!("LOGFERRY_CONFIG_S3 `{s3}` is not s3://bucket/key"))),
        };
    }
    if let Some(inline) = inline {
        return config::load_str(&inline, "LOGFERRY_CONFIG", &env_lookup);
    }
    tracing::info!("no --config and no LOGFERRY_CONFIG: using the embedded local example");
    config::load_str(config::EMBEDDED_DEFAULT, "<embedded>", &env_lookup)
}

/// A config read from S3 (see `config_s3.rs`); its errors name the object.
fn load_s3(url: Result<S3Url, String>) -> Result<Config, ConfigErrors> {
    let url = url.map_err(one_error)?;
    let text = logferry::config_s3::fetch(&url).map_err(one_error)?;
    tracing::info!(config = %url, bytes = text.len(), "config read from S3");
    config::load_str(&text, &url.to_string(), &env_lookup)
}

fn one_error(message: String) -> ConfigErrors {
    ConfigErrors(vec![config::ConfigError {
        path: String::new(),
        message,
        location: None,
    }])
}

/// `--fluent-bit-config`: exclusive with `--config` (clap checks that too)
/// and with `LOGFERRY_CONFIG` and `LOGFERRY_CONFIG_S3`, so two configs never
/// silently compete.
fn load_fluent_bit(path: &std::path::Path, has_config: bool) -> Result<config::FluentBitConfig, ConfigErrors> {
    let set = |v: &str| std::env::var(v).ok().is_some_and(|s| !s.trim().is_empty());
    if has_config || set("LOGFERRY_CONFIG") {
        return Err(one_error(
            "--fluent-bit-config cannot be combined with --config or LOGFERRY_CONFIG".into(),
        ));
    }
    if set("LOGFERRY_CONFIG_S3") {
        return Err(one_error(
            "--fluent-bit-config cannot be combined with LOGFERRY_CONFIG_S3".into(),
        ));
    }
    let Some(url) = path.to_str().and_then(S3Url::parse) else {
        return config::load_fluent_bit(path, &env_lookup);
    };
    // From S3: the object and what it includes, read into a private folder
    // first; messages name the objects, never that folder.
    let url = url.map_err(one_error)?;
    let tree = logferry::config_s3::fetch_fluent_bit(&url).map_err(one_error)?;
    tracing::info!(config = %url, "Fluent Bit config read from S3");
    match config::load_fluent_bit(&tree.main, &env_lookup) {
        Ok(mut c) => {
            c.config.origin = tree.shown(&c.config.origin);
            for s in c.mapping.iter_mut().chain(c.notes.iter_mut()) {
                *s = tree.shown(s);
            }
            Ok(c)
        }
        Err(ConfigErrors(errs)) => Err(ConfigErrors(
            errs.into_iter()
                .map(|mut e| {
                    e.message = tree.shown(&e.message);
                    if let Some((file, _, _)) = &mut e.location {
                        *file = tree.shown(file);
                    }
                    e
                })
                .collect(),
        )),
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LOGFERRY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| QuietStderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn run(config: Config, opts: RunOptions) -> anyhow::Result<()> {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 4);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("logferry-worker")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = rt.block_on(pipeline(config, opts));
    if let Err(e) = &result
        && let Some(topology::StopError::SourcesStuck(_)) = e.downcast_ref()
    {
        // No teardown: dropping the sinks' batches would report them
        // delivered to a source that may still save a checkpoint.
        tracing::error!("{e:#}");
        err_line!("logferry: {e:#}");
        std::process::exit(1);
    }
    // Dropping the runtime would wait for every blocking task (a write or
    // fsync in flight, a compressor mid-batch) however long it takes; the
    // drain deadline is a promise, so what is left is left behind.
    rt.shutdown_timeout(topology::RUNTIME_SHUTDOWN);
    result
}

/// Starts the pipeline and waits for its end: the inputs' end with
/// `--exit-on-eof`, else a signal or an `exit_when` condition and the drain.
async fn pipeline(config: Config, opts: RunOptions) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    let api_stop = tokio_util::sync::CancellationToken::new();
    if let Some(api_cfg) = &config.api {
        let addr = api::serve(api_cfg.address, metrics.clone(), health.clone(), api_stop.clone())
            .await
            .with_context(|| format!("cannot listen on {} (api.address)", api_cfg.address))?;
        tracing::info!(%addr, "api listening");
        if let Some(tcp) = api_cfg.health_tcp {
            let addr = api::serve_health_tcp(tcp, api_stop.clone())
                .await
                .with_context(|| format!("cannot listen on {tcp} (api.health_tcp)"))?;
            tracing::info!(%addr, "health check tcp port listening");
        }
    }
    let env: EnvFn = Arc::new(env_lookup);
    let running = topology::start(&config, opts, metrics.clone(), health.clone(), env)?;
    health.ready.store(true, std::sync::atomic::Ordering::Release);
    tracing::info!(
        sources = config.sources.len(),
        transforms = config.transforms.len(),
        sinks = config.sinks.len(),
        exit_on_eof = opts.exit_on_eof,
        "logferry started"
    );
    let shutdown = running.shutdown.clone();
    let force = running.force.clone();
    let (quiet, timeout) = (config.lifecycle.drain_quiet, config.lifecycle.drain_timeout);
    let signals = tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            return;
        };
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        shutdown.begin();
        tracing::info!(
            drain_quiet = %humantime::format_duration(quiet),
            drain_timeout = %humantime::format_duration(timeout),
            "stop requested: reading until the inputs are quiet, then flushing sinks and saving checkpoints (signal again to stop at once)"
        );
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        force.cancel();
        tracing::warn!("second signal: saving checkpoints and exiting without waiting for sinks");
    });
    let result = running.wait().await;
    signals.abort();
    api_stop.cancel();
    health.ready.store(false, std::sync::atomic::Ordering::Release);
    for (component, kind, received, sent) in metrics.totals() {
        tracing::info!(%component, %kind, received, sent, "component totals");
    }
    result?;
    tracing::info!("logferry stopped");
    Ok(())
}
