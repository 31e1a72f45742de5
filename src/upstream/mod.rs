//! The cloud side: which clouds Tether has seen ([`clouds`]), dialling a cloud WebSocket
//! ([`connect`]) and forwarding the SDK's HTTP calls to a cloud ([`http`]).

pub mod clouds;
pub mod connect;
pub mod http;
pub mod origins;

use std::sync::Arc;

/// Builds the TLS client configuration used for every connection to a cloud: Mozilla roots
/// compiled in, HTTP/1.1 only (a WebSocket upgrade needs HTTP/1.1).
pub fn tls_config() -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
