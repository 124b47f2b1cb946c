//! `tls_server_config` to a rustls ServerConfig, with Go's names and Go's choices where rustls
//! can make them: cipher suites, curves, versions, client certificates and their SANs.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use rustls::crypto::{aws_lc_rs, CryptoProvider, SupportedKxGroup};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{CipherSuite, NamedGroup, ProtocolVersion, ServerConfig, SupportedCipherSuite};

use super::client_certs::ClientCerts;
use super::file::{TlsFile, MAX_FILE};
use super::p521::ECDH_P521;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum ClientAuth {
    #[default]
    NoClientCert,
    RequestClientCert,
    RequireAnyClientCert,
    VerifyClientCertIfGiven,
    RequireAndVerifyClientCert,
}

impl ClientAuth {
    fn name(self) -> &'static str {
        match self {
            ClientAuth::NoClientCert => "NoClientCert",
            ClientAuth::RequestClientCert => "RequestClientCert",
            ClientAuth::RequireAnyClientCert => "RequireAnyClientCert",
            ClientAuth::VerifyClientCertIfGiven => "VerifyClientCertIfGiven",
            ClientAuth::RequireAndVerifyClientCert => "RequireAndVerifyClientCert",
        }
    }

    /// A client without a certificate is refused.
    pub(super) fn mandatory(self) -> bool {
        matches!(
            self,
            ClientAuth::RequireAnyClientCert | ClientAuth::RequireAndVerifyClientCert
        )
    }

    /// A certificate given is verified against the client CA (or the system's roots).
    pub(super) fn verifies(self) -> bool {
        matches!(
            self,
            ClientAuth::VerifyClientCertIfGiven | ClientAuth::RequireAndVerifyClientCert
        )
    }
}

/// How a configuration checks client certificates, to tell a reload that loosens the checks
/// (which takes a restart) from one that tightens them (applied at once).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct ClientCertPolicy {
    auth: ClientAuth,
    /// Verified against client_ca_file or client_ca, not the system's roots.
    own_ca: bool,
    allowed_sans: Option<BTreeSet<String>>,
}

impl ClientCertPolicy {
    /// Why `new` checks client certificates less than `self` does, if it does. A new client
    /// CA is not counted as loosening: CAs get rotated, and a file cut short holds fewer.
    pub(super) fn loosened_by(&self, new: &ClientCertPolicy) -> Option<String> {
        let (old_auth, new_auth) = (self.auth.name(), new.auth.name());
        if self.auth.mandatory() && !new.auth.mandatory() {
            return Some(format!(
                "sets client_auth_type {new_auth}, which does not require a client certificate as {old_auth} did"
            ));
        }
        if self.auth.verifies() && !new.auth.verifies() {
            return Some(format!(
                "sets client_auth_type {new_auth}, which does not verify client certificates as {old_auth} did"
            ));
        }
        if self.auth.verifies() && self.own_ca && !new.own_ca {
            return Some(
                "has no client_ca_file or client_ca, so client certificates would be verified against the system's roots".into(),
            );
        }
        match (&self.allowed_sans, &new.allowed_sans) {
            (Some(_), None) => Some("has no client_allowed_sans".into()),
            (Some(old), Some(new)) if !new.is_subset(old) => {
                let added: Vec<&str> = new.difference(old).map(String::as_str).collect();
                Some(format!("adds {added:?} to client_allowed_sans"))
            }
            _ => None,
        }
    }
}

/// A TLS configuration and what it was made of.
pub(super) struct Built {
    pub config: ServerConfig,
    /// SHA-256 of every setting of tls_server_config and of the content of every file it
    /// names: equal for two loads exactly when they build the same TLS configuration.
    pub fingerprint: [u8; 32],
    pub client_certs: ClientCertPolicy,
}

/// Go's tls.CipherSuites() names, and the rustls suite for each where rustls has one (it has
/// no CBC suite and no suite without forward secrecy).
const GO_CIPHER_SUITES: [(&str, Option<CipherSuite>); 17] = [
    (
        "TLS_AES_128_GCM_SHA256",
        Some(CipherSuite::TLS13_AES_128_GCM_SHA256),
    ),
    (
        "TLS_AES_256_GCM_SHA384",
        Some(CipherSuite::TLS13_AES_256_GCM_SHA384),
    ),
    (
        "TLS_CHACHA20_POLY1305_SHA256",
        Some(CipherSuite::TLS13_CHACHA20_POLY1305_SHA256),
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        Some(CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256),
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        Some(CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384),
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        Some(CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256),
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        Some(CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384),
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        Some(CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256),
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        Some(CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256),
    ),
    ("TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA", None),
    ("TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA", None),
    ("TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA", None),
    ("TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA", None),
    ("TLS_RSA_WITH_AES_128_CBC_SHA", None),
    ("TLS_RSA_WITH_AES_256_CBC_SHA", None),
    ("TLS_RSA_WITH_AES_128_GCM_SHA256", None),
    ("TLS_RSA_WITH_AES_256_GCM_SHA384", None),
];

/// Go's own order (with AES hardware): the server chooses, from this order, whatever the
/// client prefers. Go has ignored prefer_server_cipher_suites since 1.18.
const GO_PREFERENCE: [CipherSuite; 9] = [
    CipherSuite::TLS13_AES_128_GCM_SHA256,
    CipherSuite::TLS13_AES_256_GCM_SHA384,
    CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
    CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
];

/// Go's HTTP/2 server refuses a TLS 1.2 suite list without one of these (RFC 7540, 9.2.2).
const HTTP2_REQUIRED: [&str; 2] = [
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
];

/// exporter-toolkit's curve names.
const GO_CURVES: [(&str, NamedGroup); 4] = [
    ("CurveP256", NamedGroup::secp256r1),
    ("CurveP384", NamedGroup::secp384r1),
    ("CurveP521", NamedGroup::secp521r1),
    ("X25519", NamedGroup::X25519),
];

/// Builds the server's TLS configuration. `t` has been through `without_empty` and asks for
/// TLS. The checks come in the toolkit's order, so the same file gets the same first error.
pub(super) fn server_config(t: TlsFile, dir: &Path, http2: bool) -> Result<Built, String> {
    let mut fingerprint = ::aws_lc_rs::digest::Context::new(&::aws_lc_rs::digest::SHA256);
    // Fed into the digest only; the settings hold inline keys. Not `http2`: ALPN is settled
    // at startup, and a reload keeps it.
    let settings = serde_json::to_vec(&t).map_err(|e| format!("tls_server_config: {e}"))?;
    fingerprint.update(&settings);
    if t.cert.is_none() && t.cert_file.is_none() {
        return Err("tls_server_config: missing one of cert or cert_file".into());
    }
    if t.key.is_none() && t.key_file.is_none() {
        return Err("tls_server_config: missing one of key or key_file".into());
    }
    let versions = versions(t.min_version.as_deref(), t.max_version.as_deref())?;
    let provider = provider(
        t.cipher_suites.as_deref(),
        t.curve_preferences.as_deref(),
        &versions,
        http2,
    )?;
    let mut read = |what: &str, inline: Option<String>, file: Option<PathBuf>| match (inline, file)
    {
        (Some(_), Some(_)) => Err(format!(
            "tls_server_config: give {what} or {what}_file, not both"
        )),
        (Some(text), None) => Ok(Some(text.into_bytes())),
        (None, Some(file)) => {
            let file = dir.join(file);
            let bytes = crate::files::read_bounded(&file, MAX_FILE)
                .map_err(|e| format!("tls_server_config.{what}_file {file:?}: {e}"))?;
            // Length first, so that no two sets of files feed the digest the same bytes.
            fingerprint.update(&(bytes.len() as u64).to_be_bytes());
            fingerprint.update(&bytes);
            Ok(Some(bytes))
        }
        (None, None) => Ok(None),
    };
    let cert = read("cert", t.cert, t.cert_file)?.unwrap_or_default();
    let key = read("key", t.key, t.key_file)?.unwrap_or_default();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls_server_config: cert_file is not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err("tls_server_config: cert_file holds no PEM certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(&key)
        .map_err(|e| format!("tls_server_config: key_file is not a PEM private key: {e}"))?;
    let client_ca = read("client_ca", t.client_ca, t.client_ca_file)?;

    let auth = match t.client_auth_type.as_deref().unwrap_or("") {
        "" | "NoClientCert" => ClientAuth::NoClientCert,
        "RequestClientCert" => ClientAuth::RequestClientCert,
        // RequireClientCert: exporter-toolkit's older name for it.
        "RequireAnyClientCert" | "RequireClientCert" => ClientAuth::RequireAnyClientCert,
        "VerifyClientCertIfGiven" => ClientAuth::VerifyClientCertIfGiven,
        "RequireAndVerifyClientCert" => ClientAuth::RequireAndVerifyClientCert,
        other => {
            return Err(format!(
                "tls_server_config: invalid ClientAuth {other:?}: not one of NoClientCert, RequestClientCert, RequireAnyClientCert, VerifyClientCertIfGiven, RequireAndVerifyClientCert"
            ))
        }
    };
    if client_ca.is_some() && auth == ClientAuth::NoClientCert {
        return Err("tls_server_config: client CA's have been configured without a Client Auth Policy: set client_auth_type".into());
    }
    // As exporter-toolkit since its PR #436: where a client may send no certificate, or is
    // never asked for one, there is nothing to match the SANs against, and the client would
    // be let in unchecked.
    if t.client_allowed_sans.is_some() {
        match auth {
            ClientAuth::RequireAndVerifyClientCert => {}
            ClientAuth::RequireAnyClientCert => warn_once(
                "tls_server_config: client_allowed_sans with client_auth_type RequireAnyClientCert is matched on a client certificate nobody verified, so any client can make one that passes; use RequireAndVerifyClientCert".into(),
            ),
            _ => return Err(format!(
                "tls_server_config: client_allowed_sans requires client_auth_type to be one of RequireAnyClientCert or RequireAndVerifyClientCert, not {}",
                auth.name()
            )),
        }
    }
    let client_certs = ClientCertPolicy {
        auth,
        own_ca: client_ca.is_some(),
        allowed_sans: t
            .client_allowed_sans
            .as_ref()
            .map(|sans| sans.iter().cloned().collect()),
    };

    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&versions)
        .map_err(|e| format!("tls_server_config: {e}"))?;
    let builder = match auth {
        ClientAuth::NoClientCert => builder.with_no_client_auth(),
        _ => builder.with_client_cert_verifier(Arc::new(ClientCerts::new(
            auth,
            client_ca,
            t.client_allowed_sans,
            provider,
        )?)),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("tls_server_config: certificate and key: {e}"))?;
    config.alpn_protocols = alpn(http2);
    config.ignore_client_order = true;
    let mut digest = [0u8; 32];
    digest.copy_from_slice(fingerprint.finish().as_ref());
    Ok(Built {
        config,
        fingerprint: digest,
        client_certs,
    })
}

/// What the server offers in ALPN.
pub(super) fn alpn(http2: bool) -> Vec<Vec<u8>> {
    if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    }
}

fn versions(
    min: Option<&str>,
    max: Option<&str>,
) -> Result<Vec<&'static rustls::SupportedProtocolVersion>, String> {
    // Go's names; rustls speaks neither TLS 1.0 nor 1.1, so those count as 1.2 from below and
    // as nothing from above.
    let parse = |key: &str, v: Option<&str>, default: u8| {
        match v {
        None | Some("") => Ok(default),
        Some("TLS10") => Ok(10),
        Some("TLS11") => Ok(11),
        Some("TLS12") => Ok(12),
        Some("TLS13") => Ok(13),
        Some(other) => Err(format!(
            "tls_server_config.{key}: unknown TLS version {other:?}: not one of TLS10, TLS11, TLS12, TLS13"
        )),
    }
    };
    let (min, max) = (
        parse("min_version", min, 12)?,
        parse("max_version", max, 13)?,
    );
    if min > max {
        return Err("tls_server_config: min_version is above max_version".into());
    }
    if min < 12 {
        warn_once(format!(
            "tls_server_config.min_version TLS{min}: sfb-exporter speaks TLS 1.2 and 1.3 only; TLS 1.0 and 1.1 clients are refused"
        ));
    }
    let versions: Vec<_> = [(12, &rustls::version::TLS12), (13, &rustls::version::TLS13)]
        .into_iter()
        .filter(|(v, _)| (min..=max).contains(v))
        .map(|(_, version)| version)
        .collect();
    if versions.is_empty() {
        return Err(
            "tls_server_config.max_version: sfb-exporter speaks TLS 1.2 and 1.3 only".into(),
        );
    }
    Ok(versions)
}

/// aws-lc-rs (for P-521, which ring lacks), narrowed to the configured suites and curves.
fn provider(
    suites: Option<&[String]>,
    curves: Option<&[String]>,
    versions: &[&'static rustls::SupportedProtocolVersion],
    http2: bool,
) -> Result<Arc<CryptoProvider>, String> {
    let mut provider = aws_lc_rs::default_provider();
    let allows = |v: ProtocolVersion| versions.iter().any(|s| s.version == v);
    if let Some(names) = suites {
        let mut tls12 = Vec::new();
        for name in names {
            match GO_CIPHER_SUITES.iter().find(|(n, _)| n == name) {
                None => {
                    return Err(format!(
                        "tls_server_config.cipher_suites: unknown cipher {name:?}"
                    ))
                }
                Some((_, None)) => warn_once(format!(
                    "tls_server_config.cipher_suites: {name} is not offered by sfb-exporter (rustls has no CBC or non-forward-secret suites); ignoring it"
                )),
                Some((_, Some(id))) => tls12.extend(
                    provider
                        .cipher_suites
                        .iter()
                        .filter(|s| s.suite() == *id && s.tls13().is_none()),
                ),
            }
        }
        // As in Go, the list picks TLS 1.2 suites; TLS 1.3 suites are not configurable.
        if http2
            && allows(ProtocolVersion::TLSv1_2)
            && !names.iter().any(|n| HTTP2_REQUIRED.contains(&n.as_str()))
        {
            return Err(format!(
                "tls_server_config.cipher_suites: TLSConfig.CipherSuites is missing an HTTP/2-required AES_128_GCM_SHA256 cipher (need at least one of {}); add one or set http_server_config.http2: false",
                HTTP2_REQUIRED.join(", ")
            ));
        }
        let tls13: Vec<SupportedCipherSuite> = provider
            .cipher_suites
            .iter()
            .filter(|s| s.tls13().is_some() && allows(ProtocolVersion::TLSv1_3))
            .copied()
            .collect();
        let tls12: Vec<SupportedCipherSuite> = if allows(ProtocolVersion::TLSv1_2) {
            tls12
        } else {
            Vec::new()
        };
        if tls13.is_empty() && tls12.is_empty() {
            return Err("tls_server_config.cipher_suites: none of the listed suites is offered by sfb-exporter for the allowed TLS versions".into());
        }
        provider.cipher_suites = tls13.into_iter().chain(tls12).collect();
    }
    if let Some(names) = curves {
        let mut groups: Vec<&'static dyn SupportedKxGroup> = Vec::new();
        for name in names {
            let Some((_, group)) = GO_CURVES.iter().find(|(n, _)| n == name) else {
                return Err(format!(
                    "tls_server_config.curve_preferences: unknown curve {name:?}"
                ));
            };
            let offered = provider.kx_groups.iter().copied().chain([ECDH_P521]);
            match offered.into_iter().find(|g| g.name() == *group) {
                Some(g) => groups.push(g),
                None => warn_once(format!(
                    "tls_server_config.curve_preferences: {name} is not offered by sfb-exporter; ignoring it"
                )),
            }
        }
        if groups.is_empty() {
            return Err(
                "tls_server_config.curve_preferences: none of the listed curves is offered by sfb-exporter".into(),
            );
        }
        provider.kx_groups = groups;
    }
    provider.cipher_suites.sort_by_key(|s| {
        GO_PREFERENCE
            .iter()
            .position(|p| *p == s.suite())
            .unwrap_or(GO_PREFERENCE.len())
    });
    Ok(Arc::new(provider))
}

/// Each such warning once per process, not again on every reload.
pub(super) fn warn_once(message: String) {
    static WARNED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    if WARNED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(message.clone())
    {
        tracing::warn!("{message}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(auth: ClientAuth, own_ca: bool, sans: Option<&[&str]>) -> ClientCertPolicy {
        ClientCertPolicy {
            auth,
            own_ca,
            allowed_sans: sans.map(|s| s.iter().map(|s| s.to_string()).collect()),
        }
    }

    #[test]
    fn loosening_client_certificate_checks_is_told_from_tightening() {
        use ClientAuth::*;
        let strict = policy(RequireAndVerifyClientCert, true, Some(&["a", "b"]));
        let loosened = [
            (
                policy(RequireAnyClientCert, true, Some(&["a", "b"])),
                "does not verify client certificates as RequireAndVerifyClientCert did",
            ),
            (
                policy(VerifyClientCertIfGiven, true, None),
                "does not require a client certificate",
            ),
            (
                policy(NoClientCert, false, None),
                "sets client_auth_type NoClientCert",
            ),
            (
                policy(RequireAndVerifyClientCert, false, Some(&["a", "b"])),
                "has no client_ca_file or client_ca",
            ),
            (
                policy(RequireAndVerifyClientCert, true, None),
                "has no client_allowed_sans",
            ),
            (
                policy(RequireAndVerifyClientCert, true, Some(&["a", "c"])),
                "adds [\"c\"] to client_allowed_sans",
            ),
        ];
        for (new, needle) in loosened {
            let why = strict
                .loosened_by(&new)
                .unwrap_or_else(|| panic!("{new:?} not loosening"));
            assert!(why.contains(needle), "{new:?}: {why}");
        }
        for new in [
            strict.clone(),
            policy(RequireAndVerifyClientCert, true, Some(&["a"])),
            policy(RequireAndVerifyClientCert, true, Some(&[])),
        ] {
            assert_eq!(strict.loosened_by(&new), None, "{new:?}");
        }
        // Tightening from none at all, step by step.
        let steps = [
            policy(NoClientCert, false, None),
            policy(RequestClientCert, false, None),
            policy(VerifyClientCertIfGiven, false, None),
            policy(VerifyClientCertIfGiven, true, None),
            policy(RequireAndVerifyClientCert, true, None),
            strict.clone(),
        ];
        for pair in steps.windows(2) {
            assert_eq!(pair[0].loosened_by(&pair[1]), None, "{pair:?}");
        }
        // And each step back loosens, but the first: RequestClientCert checks nothing that
        // NoClientCert does not.
        assert_eq!(steps[1].loosened_by(&steps[0]), None);
        for pair in steps[1..].windows(2) {
            assert!(pair[1].loosened_by(&pair[0]).is_some(), "{pair:?}");
        }
        let any = policy(RequireAnyClientCert, false, None);
        assert!(any
            .loosened_by(&policy(VerifyClientCertIfGiven, true, None))
            .is_some());
        assert!(any
            .loosened_by(&policy(RequireAndVerifyClientCert, false, None))
            .is_none());
    }

    #[test]
    fn versions_follow_min_and_max() {
        assert_eq!(versions(None, None).unwrap().len(), 2);
        assert_eq!(
            versions(Some("TLS13"), None).unwrap(),
            vec![&rustls::version::TLS13]
        );
        assert_eq!(
            versions(None, Some("TLS12")).unwrap(),
            vec![&rustls::version::TLS12]
        );
        assert_eq!(versions(Some("TLS10"), None).unwrap().len(), 2);
        assert!(versions(Some("TLS10"), Some("TLS11"))
            .unwrap_err()
            .contains("TLS 1.2 and 1.3"));
        assert!(versions(Some("TLS13"), Some("TLS12"))
            .unwrap_err()
            .contains("above"));
        assert!(versions(Some("TLS111"), None)
            .unwrap_err()
            .contains("unknown TLS version"));
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn cipher_suites_by_go_name() {
        let both = versions(None, None).unwrap();
        let only12 = versions(None, Some("TLS12")).unwrap();
        let p = provider(
            Some(&names(&[
                "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
                "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
            ])),
            None,
            &only12,
            false,
        )
        .unwrap();
        let ids: Vec<_> = p.cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(
            ids,
            vec![CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384]
        );
        // TLS 1.3 suites stay, as Go does not let them be configured.
        let p = provider(
            Some(&names(&["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"])),
            None,
            &both,
            true,
        )
        .unwrap();
        assert_eq!(
            p.cipher_suites
                .iter()
                .filter(|s| s.tls13().is_some())
                .count(),
            3
        );
        let err = provider(
            Some(&names(&["TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA"])),
            None,
            &only12,
            false,
        )
        .unwrap_err();
        assert!(err.contains("none of the listed suites"), "{err}");
        let err = provider(Some(&names(&["TLS_NOPE"])), None, &both, false).unwrap_err();
        assert!(err.contains("unknown cipher"), "{err}");
        let err = provider(
            Some(&names(&["TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"])),
            None,
            &only12,
            true,
        )
        .unwrap_err();
        assert!(err.contains("HTTP/2-required"), "{err}");
    }

    #[test]
    fn curves_by_go_name() {
        let both = versions(None, None).unwrap();
        let p = provider(None, Some(&names(&["CurveP521", "X25519"])), &both, true).unwrap();
        let groups: Vec<_> = p.kx_groups.iter().map(|g| g.name()).collect();
        assert_eq!(groups, vec![NamedGroup::secp521r1, NamedGroup::X25519]);
        let err = provider(None, Some(&names(&["CurveP257"])), &both, true).unwrap_err();
        assert!(err.contains("unknown curve"), "{err}");
    }
}
