//! TLS for `nbds://` and `nbds+unix://`: the client configuration, built
//! before connecting so that a bad certificate directory is a clear error.
//!
//! As libnbd and nbdkit do, `tls-certificates=DIR` names a directory with
//! `ca-cert.pem` (the CAs trusted to sign the server's certificate; without
//! it, the system's roots) and optionally `client-cert.pem` +
//! `client-key.pem` (a client certificate, for servers that verify peers).
//! The server's certificate is always verified, including its name:
//! `tls-hostname=NAME`, else the TCP host, else (Unix sockets) `localhost`.
use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls::{
    self,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName},
    ClientConfig, RootCertStore,
};

use super::uri::{NbdAddr, NbdTarget, TlsParams};
use crate::{BlockError, Result};

/// CA certificates in the certificate directory.
pub const CA_CERT: &str = "ca-cert.pem";
/// Client certificate chain in the certificate directory.
pub const CLIENT_CERT: &str = "client-cert.pem";
/// Client private key in the certificate directory.
pub const CLIENT_KEY: &str = "client-key.pem";

/// What a connection needs to run TLS.
#[derive(Clone)]
pub(crate) struct TlsSetup {
    pub(crate) config: Arc<ClientConfig>,
    pub(crate) server_name: ServerName<'static>,
}

impl std::fmt::Debug for TlsSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSetup")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

fn invalid(target: &NbdTarget, why: String) -> BlockError {
    BlockError::Invalid(format!("{target}: TLS: {why}"))
}

fn read_certs(target: &NbdTarget, path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| invalid(target, format!("reading {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(invalid(
            target,
            format!("{} holds no PEM certificate", path.display()),
        ));
    }
    Ok(certs)
}

/// Build the TLS client configuration for `target`.
pub(crate) fn setup(target: &NbdTarget, p: &TlsParams) -> Result<TlsSetup> {
    let dir = p.certificates.as_deref();
    if let Some(d) = dir {
        if !d.is_dir() {
            return Err(invalid(
                target,
                format!("tls-certificates={} is not a directory", d.display()),
            ));
        }
    }
    let mut roots = RootCertStore::empty();
    match dir.map(|d| d.join(CA_CERT)).filter(|f| f.exists()) {
        Some(ca) => {
            for c in read_certs(target, &ca)? {
                roots
                    .add(c)
                    .map_err(|e| invalid(target, format!("{}: {e}", ca.display())))?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for e in &native.errors {
                tracing::debug!(error = %e, "skipping a system CA certificate");
            }
            roots.add_parsable_certificates(native.certs);
        }
    }
    if roots.is_empty() {
        return Err(invalid(
            target,
            format!(
                "no trusted CA certificate: give tls-certificates=DIR with {CA_CERT} in it \
                 (no system roots were found)"
            ),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(target, e.to_string()))?
        .with_root_certificates(roots);
    let (cert, key) = match dir {
        Some(d) => (d.join(CLIENT_CERT), d.join(CLIENT_KEY)),
        None => Default::default(),
    };
    let config = match (
        dir.is_some() && cert.exists(),
        dir.is_some() && key.exists(),
    ) {
        (true, true) => {
            let chain = read_certs(target, &cert)?;
            let k = PrivateKeyDer::from_pem_file(&key)
                .map_err(|e| invalid(target, format!("reading {}: {e}", key.display())))?;
            builder
                .with_client_auth_cert(chain, k)
                .map_err(|e| invalid(target, format!("client certificate: {e}")))?
        }
        (false, false) => builder.with_no_client_auth(),
        (true, false) => {
            return Err(invalid(
                target,
                format!("{} without {}", cert.display(), key.display()),
            ))
        }
        (false, true) => {
            return Err(invalid(
                target,
                format!("{} without {}", key.display(), cert.display()),
            ))
        }
    };
    let name = match (&p.hostname, &target.addr) {
        (Some(h), _) => h.clone(),
        (None, NbdAddr::Tcp { host, .. }) => host.clone(),
        (None, NbdAddr::Unix(_)) => "localhost".to_string(),
    };
    let server_name = ServerName::try_from(name.clone())
        .map_err(|e| invalid(target, format!("bad TLS host name {name:?}: {e}")))?;
    Ok(TlsSetup {
        config: Arc::new(config),
        server_name,
    })
}
