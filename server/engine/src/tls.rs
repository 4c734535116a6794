//! Outgoing TLS to databases (rustls), with libpq's meanings of `sslmode`,
//! `sslrootcert`, `sslcert` and `sslkey`: one [`PgTls`] per target, used by its
//! pool, health checks, cancel requests and the control store.

use std::sync::Arc;

use rustls::DigitallySignedStruct;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_postgres::config::SslMode as DriverSslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::conninfo::{ConnInfo, ConnInfoError, RootCert, SslMode, TlsSettings};

/// The connector type every outgoing connection uses (TLS or not).
pub type Connector = MakeRustlsConnect;

/// The stream of a connection made with [`Connector`].
pub type TlsStream =
    <Connector as tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>>::Stream;

/// A connection's driver, as [`PgTls::connect`] returns it.
pub type PgConnection = tokio_postgres::Connection<tokio_postgres::Socket, TlsStream>;

/// How a target's connections are made: the TLS mode and the connector.
#[derive(Clone)]
pub struct PgTls {
    /// The mode asked for.
    pub mode: SslMode,
    /// The rustls connector (used whatever the mode: with `disable` it never
    /// starts TLS).
    pub connector: Connector,
}

impl std::fmt::Debug for PgTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTls")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

/// A file option that cannot be used: the option is named, its path is not shown.
fn unreadable(option: &str, why: impl std::fmt::Display) -> ConnInfoError {
    ConnInfoError::from_reason(format!("`{option}`: the file cannot be used ({why})"))
}

impl PgTls {
    /// Builds the TLS side of `info`, reading the files it names now (so that a
    /// missing one is an error at CreatePool, naming the option).
    pub fn for_target(info: &ConnInfo) -> Result<Self, ConnInfoError> {
        let settings = TlsSettings::of(info)?;
        Ok(Self {
            mode: settings.mode,
            connector: MakeRustlsConnect::new(client_config(&settings)?),
        })
    }

    /// For a tokio-postgres config built by the caller: TLS as its `ssl_mode`
    /// says, without verifying the server (libpq's `prefer` and `require`).
    pub fn unverified() -> Self {
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(LibpqVerifier::unverified()))
            .with_no_client_auth();
        Self {
            mode: SslMode::Prefer,
            connector: MakeRustlsConnect::new(config),
        }
    }

    /// Connects `pg` (whose `ssl_mode` was set from this mode): `allow` tries
    /// plaintext first and TLS when the server refuses it.
    pub async fn connect(
        &self,
        pg: &tokio_postgres::Config,
    ) -> Result<(tokio_postgres::Client, PgConnection), tokio_postgres::Error> {
        match pg.connect(self.connector.clone()).await {
            Err(error) if self.mode == SslMode::Allow && error.as_db_error().is_some() => {
                let mut tls = pg.clone();
                tls.ssl_mode(DriverSslMode::Require);
                tls.connect(self.connector.clone()).await
            }
            result => result,
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(root: &RootCert) -> Result<rustls::RootCertStore, ConnInfoError> {
    let mut store = rustls::RootCertStore::empty();
    match root {
        RootCert::File(path) => {
            let mut any = false;
            for cert in
                CertificateDer::pem_file_iter(path).map_err(|e| unreadable("sslrootcert", e))?
            {
                let cert = cert.map_err(|e| unreadable("sslrootcert", e))?;
                store.add(cert).map_err(|e| unreadable("sslrootcert", e))?;
                any = true;
            }
            if !any {
                return Err(unreadable("sslrootcert", "no certificate in it"));
            }
        }
        RootCert::System => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(ConnInfoError::from_reason(
                    "`sslrootcert=system`: the platform has no usable root certificates",
                ));
            }
        }
    }
    Ok(store)
}

fn client_config(settings: &TlsSettings) -> Result<rustls::ClientConfig, ConnInfoError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConnInfoError::from_reason(format!("TLS: {e}")))?;
    let verify_chain = match (settings.mode, &settings.root_cert) {
        (SslMode::VerifyFull, Some(root)) => Some((roots(root)?, true)),
        // libpq: `require` with a root certificate verifies like verify-ca.
        (SslMode::VerifyCa | SslMode::Require, Some(root)) => Some((roots(root)?, false)),
        _ => None,
    };
    let verifier: Arc<dyn ServerCertVerifier> = match verify_chain {
        Some((store, check_name)) => {
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider())
                .build()
                .map_err(|e| ConnInfoError::from_reason(format!("`sslrootcert`: {e}")))?;
            if check_name {
                webpki
            } else {
                Arc::new(LibpqVerifier {
                    chain: Some(webpki),
                    provider: provider(),
                })
            }
        }
        None => Arc::new(LibpqVerifier::unverified()),
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    match &settings.client_cert {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .map_err(|e| unreadable("sslcert", e))?
                .collect::<Result<_, _>>()
                .map_err(|e| unreadable("sslcert", e))?;
            if chain.is_empty() {
                return Err(unreadable("sslcert", "no certificate in it"));
            }
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| unreadable("sslkey", e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| unreadable("sslkey", e))
        }
    }
}

/// The server verifiers poolplane adds to rustls' own (verify-full):
/// - verify-ca (`chain`: the roots' verifier): the chain must lead to a trusted
///   root; the name is not checked;
/// - prefer and require without a root certificate (`chain: None`): encryption
///   without authentication of the server, as in libpq.
///
/// Either way the handshake's signatures are checked against the certificate
/// presented, with the provider's algorithms.
#[derive(Debug)]
struct LibpqVerifier {
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl LibpqVerifier {
    /// No authentication of the server (prefer, require without a root).
    fn unverified() -> Self {
        Self {
            chain: None,
            provider: provider(),
        }
    }
}

impl ServerCertVerifier for LibpqVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str) -> Result<TlsSettings, String> {
        let info = ConnInfo::parse(url).map_err(|e| e.to_string())?;
        TlsSettings::of(&info).map_err(|e| e.to_string())
    }

    #[test]
    fn libpq_modes_and_defaults() {
        assert_eq!(
            settings("postgres://h/d").map(|s| s.mode),
            Ok(SslMode::Prefer)
        );
        for (mode, expect) in [
            ("disable", SslMode::Disable),
            ("allow", SslMode::Allow),
            ("require", SslMode::Require),
        ] {
            assert_eq!(
                settings(&format!("postgres://h/d?sslmode={mode}")).map(|s| s.mode),
                Ok(expect)
            );
        }
        let error = settings("postgres://h/d?sslmode=verify-full").unwrap_err();
        assert!(error.contains("sslrootcert"), "{error}");
        let error = ConnInfo::parse("postgres://h/d?sslmode=sometimes").unwrap_err();
        assert!(error.to_string().contains("sslmode"), "{error}");
        let error = settings("host=h sslcert=/a.pem").unwrap_err();
        assert!(error.contains("sslkey"), "{error}");
    }

    #[test]
    fn missing_files_name_the_option_not_the_path() {
        let info = ConnInfo::parse(
            "postgres://h/d?sslmode=verify-full&sslrootcert=/nonexistent/secret-dir/ca.pem",
        )
        .expect("parses");
        let error = PgTls::for_target(&info).unwrap_err().to_string();
        assert!(error.contains("`sslrootcert`"), "{error}");
        assert!(!error.contains("secret-dir"), "{error}");
    }
}
