//! Client certificates as Go's crypto/tls checks them, for `client_auth_type`,
//! `client_ca_file` and `client_allowed_sans`.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
};

use super::tls::{warn_once, ClientAuth};

/// Go's client certificate handling: Request/RequireAny take any certificate (the handshake
/// still proves the key); VerifyIfGiven/RequireAndVerify verify against client_ca_file, or the
/// system's roots without one. A certificate found in the client CA pool itself is trusted as
/// Go trusts it, even when marked as a CA (webpki refuses that as CaUsedAsEndEntity). Then
/// client_allowed_sans, if given, must name one of the certificate's SANs.
#[derive(Debug)]
pub(super) struct ClientCerts {
    mandatory: bool,
    /// None: take any certificate.
    verify: Option<Verify>,
    allowed_sans: Option<Vec<String>>,
    provider: Arc<CryptoProvider>,
}

#[derive(Debug)]
struct Verify {
    pool: Vec<CertificateDer<'static>>,
    /// None when there is nothing to verify against (no system roots): only certificates in
    /// the pool pass, as with Go's empty pool.
    webpki: Option<Arc<dyn ClientCertVerifier>>,
}

impl ClientCerts {
    pub(super) fn new(
        auth: ClientAuth,
        client_ca: Option<Vec<u8>>,
        allowed_sans: Option<Vec<String>>,
        provider: Arc<CryptoProvider>,
    ) -> Result<ClientCerts, String> {
        let mandatory = auth.mandatory();
        let verify = if auth.verifies() {
            let (pool, roots) = match client_ca {
                Some(pem) => {
                    let pool: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
                        .collect::<Result<_, _>>()
                        .map_err(|e| {
                            format!("tls_server_config: client_ca_file is not PEM: {e}")
                        })?;
                    let mut roots = RootCertStore::empty();
                    let (_, unusable) = roots.add_parsable_certificates(pool.iter().cloned());
                    if unusable > 0 {
                        return Err(format!(
                            "tls_server_config: client_ca_file: {unusable} certificate(s) cannot be parsed"
                        ));
                    }
                    if roots.is_empty() {
                        return Err("tls_server_config: client_ca_file holds no certificate".into());
                    }
                    (pool, roots)
                }
                None => (Vec::new(), system_roots()?),
            };
            let webpki = if roots.is_empty() {
                None
            } else {
                let verifier = WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    Arc::clone(&provider),
                )
                .allow_unauthenticated()
                .build()
                .map_err(|e| format!("tls_server_config: {e}"))?;
                Some(verifier)
            };
            Some(Verify { pool, webpki })
        } else {
            None
        };
        Ok(ClientCerts {
            mandatory,
            verify,
            allowed_sans,
            provider,
        })
    }

    fn allowed_by_sans(&self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let Some(allowed) = &self.allowed_sans else {
            return Ok(());
        };
        let sans = subject_alt_names(end_entity).ok_or(rustls::Error::InvalidCertificate(
            CertificateError::BadEncoding,
        ))?;
        if sans.iter().any(|san| allowed.contains(san)) {
            Ok(())
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            ))
        }
    }
}

/// As Go: without client_ca_file, clients are verified against the system's trusted roots.
fn system_roots() -> Result<RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        warn_once("tls_server_config: no client_ca_file and no trusted roots found on this system: every client certificate will be refused; set client_ca_file".into());
    }
    Ok(roots)
}

/// The SANs as Go's x509 lists them: DNS names, emails, IP addresses, URIs.
fn subject_alt_names(cert: &CertificateDer<'_>) -> Option<Vec<String>> {
    use x509_parser::extensions::GeneralName;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let Some(sans) = parsed.subject_alternative_name().ok()? else {
        return Some(Vec::new());
    };
    Some(
        sans.value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::DNSName(s) | GeneralName::RFC822Name(s) | GeneralName::URI(s) => {
                    Some(s.to_string())
                }
                GeneralName::IPAddress(bytes) => match bytes.len() {
                    4 => Some(
                        std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*bytes).ok()?).to_string(),
                    ),
                    16 => Some(
                        std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*bytes).ok()?).to_string(),
                    ),
                    _ => None,
                },
                _ => None,
            })
            .collect(),
    )
}

/// A certificate taken from the pool as it is: within its validity period and, if it limits
/// its use, usable for client authentication (what Go checks of a leaf found in its pool).
fn usable_as_pool_leaf(cert: &CertificateDer<'_>, now: UnixTime) -> bool {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert) else {
        return false;
    };
    let Ok(now) = x509_parser::time::ASN1Time::from_timestamp(now.as_secs() as i64) else {
        return false;
    };
    let purpose = match parsed.extended_key_usage() {
        Ok(None) => true,
        Ok(Some(eku)) => eku.value.any || eku.value.client_auth,
        Err(_) => false,
    };
    parsed.validity().is_valid_at(now) && purpose
}

impl ClientCertVerifier for ClientCerts {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        match self.verify.as_ref().and_then(|v| v.webpki.as_ref()) {
            Some(webpki) => webpki.root_hint_subjects(),
            None => &[],
        }
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if let Some(v) = &self.verify {
            let in_pool = v.pool.iter().any(|c| c.as_ref() == end_entity.as_ref());
            if !(in_pool && usable_as_pool_leaf(end_entity, now)) {
                match &v.webpki {
                    Some(webpki) => {
                        webpki.verify_client_cert(end_entity, intermediates, now)?;
                    }
                    None => {
                        return Err(rustls::Error::InvalidCertificate(
                            CertificateError::UnknownIssuer,
                        ))
                    }
                }
            }
        }
        self.allowed_by_sans(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
