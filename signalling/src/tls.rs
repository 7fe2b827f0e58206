//! What the server and the client share of TLS: reading PEM files and the
//! crypto provider both build their configurations with.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::CertificateDer;
#[cfg(feature = "server")]
use rustls::pki_types::PrivateKeyDer;

/// Why a PEM file gave nothing usable. Each side maps it onto its own
/// error, which names the file and what it was for.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PemError {
    #[error("cannot read the file")]
    Read(#[source] std::io::Error),
    #[error("not valid PEM")]
    Pem(#[source] pem::Error),
    /// Valid PEM, but none of the blocks asked for.
    #[error("no block of the expected kind")]
    Missing,
}

/// Every certificate in the PEM file at `path`, in order; at least one.
pub(crate) fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let bytes = std::fs::read(path).map_err(PemError::Read)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(PemError::Pem)?;
    if certs.is_empty() {
        return Err(PemError::Missing);
    }
    Ok(certs)
}

#[cfg(feature = "server")]
/// The first private key (PKCS#8, PKCS#1 or SEC1) in the PEM file at `path`.
pub(crate) fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, PemError> {
    let bytes = std::fs::read(path).map_err(PemError::Read)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => PemError::Missing,
        other => PemError::Pem(other),
    })
}

/// The provider is named rather than taken from the process default: which
/// providers rustls has compiled in depends on the rest of the build, and
/// with two of them the default is ambiguous.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
