//! TLS of the forward source (rustls with aws-lc-rs, as the sink's client).
//!
//! Why reload on accept: certificates on a node are rotated by writing new
//! files (cert-manager, a renewal cron), and a restart would drop the
//! clients' unacked chunks for nothing. Each accepted connection compares
//! the files' modification times and sizes with those of the loaded set
//! (a `stat` per file, no read) and rebuilds the configuration when they
//! changed; open connections keep the one they started with. A new set that
//! does not load (a half-written file, a key that does not match) is warned
//! about once and the old one stays in use.
//!
//! Why `verify_client` needs `ca_file`: a client certificate is worth only
//! the CA that signed it; the system's roots would admit anyone with a
//! public certificate.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

/// `[sources.<id>.tls]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceTls {
    /// PEM: the server's certificate, then its chain.
    pub cert_file: PathBuf,
    /// PEM: the certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM: the CAs client certificates must be signed by.
    pub ca_file: Option<PathBuf>,
    /// Require a client certificate signed by `ca_file` (mutual TLS).
    #[serde(default)]
    pub verify_client: bool,
}

/// What identifies a version of the files: modification time and size.
type Stamp = Vec<Option<(SystemTime, u64)>>;

/// The server configuration, rebuilt when the files change.
pub struct Reloading {
    opts: SourceTls,
    state: Mutex<(Arc<rustls::ServerConfig>, Stamp)>,
}

impl Reloading {
    /// Loads the files now: an error names the file and what is wrong.
    pub fn new(opts: SourceTls) -> Result<Self, String> {
        let stamp = stamp(&opts);
        let config = Arc::new(build(&opts)?);
        Ok(Reloading {
            opts,
            state: Mutex::new((config, stamp)),
        })
    }

    /// The acceptor for a new connection, with the files as they are now.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let now = stamp(&self.opts);
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.1 != now {
            match build(&self.opts) {
                Ok(c) => {
                    tracing::info!(cert_file = %self.opts.cert_file.display(), "forward source TLS certificate reloaded");
                    st.0 = Arc::new(c);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "forward source TLS files changed but do not load; keeping the previous certificate");
                }
            }
            // Warned once per version of the files, not per connection.
            st.1 = now;
        }
        tokio_rustls::TlsAcceptor::from(st.0.clone())
    }
}

fn stamp(o: &SourceTls) -> Stamp {
    [Some(&o.cert_file), Some(&o.key_file), o.ca_file.as_ref()]
        .into_iter()
        .flatten()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

fn certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| format!("cannot read {what} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{what} {} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

fn build(o: &SourceTls) -> Result<rustls::ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let chain = certs(&o.cert_file, "cert_file")?;
    let key = PrivateKeyDer::from_pem_file(&o.key_file)
        .map_err(|e| format!("cannot read a private key from key_file {}: {e}", o.key_file.display()))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match (&o.ca_file, o.verify_client) {
        (Some(ca), true) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs(ca, "ca_file")? {
                roots
                    .add(c)
                    .map_err(|e| format!("bad certificate in ca_file {}: {e}", ca.display()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("ca_file {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    builder.with_single_cert(chain, key).map_err(|e| {
        format!(
            "cert_file {} and key_file {}: {e}",
            o.cert_file.display(),
            o.key_file.display()
        )
    })
}
