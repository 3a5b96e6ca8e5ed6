//! The TLS client of the forward sink (rustls with aws-lc-rs, the provider
//! the AWS SDK already links, named explicitly so no process-wide default is
//! needed).
//!
//! Trust: the certificates of `ca_file` alone when given (a private CA, a
//! self-signed server), else the system's roots. `verify = false` accepts any
//! certificate; it exists for tests and is logged loudly.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::config::TlsOptions;

/// Builds the connector; the error says what is wrong with the options or
/// files.
pub fn connector(opts: &TlsOptions) -> Result<tokio_rustls::TlsConnector, String> {
    let client = opts.cert_file.as_deref().zip(opts.key_file.as_deref());
    let config = client_config_with_cert(opts.ca_file.as_deref(), opts.verify, "forward server", client)?;
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// The rustls client configuration both TLS sinks (forward, http) use:
/// `ca_file` alone when given, else the system's roots; `verify = false`
/// accepts any certificate. `peer` names the server in the warning.
pub fn client_config(ca_file: Option<&Path>, verify: bool, peer: &str) -> Result<rustls::ClientConfig, String> {
    client_config_with_cert(ca_file, verify, peer, None)
}

/// `client_config`, presenting the certificate and key of `client` (PEM
/// files) when the server asks for one (mutual TLS).
pub fn client_config_with_cert(
    ca_file: Option<&Path>,
    verify: bool,
    peer: &str,
    client: Option<(&Path, &Path)>,
) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let config = if !verify {
        tracing::warn!("tls.verify = false: the {peer}'s certificate is not checked");
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCert(provider.signature_verification_algorithms)))
    } else {
        let mut roots = rustls::RootCertStore::empty();
        match ca_file {
            Some(path) => {
                let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                    .and_then(|it| it.collect::<Result<_, _>>())
                    .map_err(|e| format!("cannot read ca_file {}: {e}", path.display()))?;
                if certs.is_empty() {
                    return Err(format!("ca_file {} holds no PEM certificate", path.display()));
                }
                for c in certs {
                    roots
                        .add(c)
                        .map_err(|e| format!("bad certificate in ca_file {}: {e}", path.display()))?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                for e in &found.errors {
                    tracing::warn!(error = %e, "while loading the system's root certificates");
                }
                let (added, _) = roots.add_parsable_certificates(found.certs);
                if added == 0 {
                    return Err("no system root certificates found; set tls.ca_file".into());
                }
            }
        }
        builder.with_root_certificates(roots)
    };
    match client {
        None => Ok(config.with_no_client_auth()),
        Some((cert, key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .and_then(|it| it.collect::<Result<_, _>>())
                .map_err(|e| format!("cannot read cert_file {}: {e}", cert.display()))?;
            if chain.is_empty() {
                return Err(format!("cert_file {} holds no PEM certificate", cert.display()));
            }
            let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("cannot read a private key from key_file {}: {e}", key.display()))?;
            config
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client certificate {}: {e}", cert.display()))
        }
    }
}

/// Accepts any server certificate, still checking the handshake signatures.
#[derive(Debug)]
struct AnyCert(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}
