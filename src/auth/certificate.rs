//! Certificate credentials: the certificate and its RSA key, from PEM or PKCS#12, and the JWT
//! client assertion signed with that key for every token request.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest::{self, SHA256};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::signature::{KeyPair, RsaKeyPair, RSA_PSS_SHA256};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use secrecy::{ExposeSecret, SecretString};
use x509_parser::asn1_rs::{FromDer, Integer, OctetString, Oid, Sequence};
use x509_parser::oid_registry::OID_PKCS1_RSAENCRYPTION;

use crate::error::RefreshError;
use crate::files::read_bounded;

/// Entra ID accepts assertions valid for at most 10 minutes.
const ASSERTION_LIFETIME: Duration = Duration::from_secs(600);
/// Certificate files are a few KiB; the cap keeps a wrong path from eating memory.
const MAX_FILE: u64 = 1024 * 1024;

/// A loaded certificate credential. The key never leaves this struct: Debug shows the file,
/// the subject and notAfter only.
pub struct ClientCertificate {
    path: PathBuf,
    key: RsaKeyPair,
    /// DER certificates, the one matching the key first.
    chain: Vec<Vec<u8>>,
    /// base64url SHA-256 of the leaf's DER: the `x5t#S256` header.
    thumbprint: String,
    subject: String,
    not_after: SystemTime,
}

impl fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCertificate")
            .field("path", &self.path)
            .field("subject", &self.subject)
            .field("not_after", &rfc3339(self.not_after))
            .field("key", &"[redacted]")
            .finish()
    }
}

/// What errors call the certificate's settings: the environment's variables, or the keys of
/// --config.file, so that the operator is sent to the place that gave them.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub path: &'static str,
    pub password: &'static str,
}

impl Settings {
    pub const ENVIRONMENT: Settings = Settings {
        path: "AZURE_CLIENT_CERTIFICATE_PATH",
        password: "AZURE_CLIENT_CERTIFICATE_PASSWORD or --azure.client-certificate-password-file",
    };
    pub const CONFIG_FILE: Settings = Settings {
        path: "client_certificate_path",
        password: "client_certificate_password_file",
    };
}

/// A certificate that cannot be used, naming the setting and the file and never the password.
#[derive(Debug, thiserror::Error)]
#[error("{setting} {}: {problem}", .path.display())]
pub struct CertificateError {
    setting: &'static str,
    path: PathBuf,
    problem: String,
}

impl ClientCertificate {
    /// Loads PEM (certificate and unencrypted RSA key, either order, PKCS#8 or PKCS#1) or
    /// PKCS#12, told apart by content.
    pub fn load(
        path: &Path,
        password: Option<&SecretString>,
        settings: Settings,
    ) -> Result<ClientCertificate, CertificateError> {
        let fail = |problem: String| CertificateError {
            setting: settings.path,
            path: path.to_path_buf(),
            problem,
        };
        let bytes =
            read_bounded(path, MAX_FILE).map_err(|e| fail(format!("cannot read the file: {e}")))?;
        let (certs, key) = if is_pem(&bytes) {
            pem_parts(&bytes, settings)
        } else {
            pkcs12_parts(&bytes, password, settings)
        }
        .map_err(fail)?;
        Self::from_parts(path, certs, key).map_err(fail)
    }

    fn from_parts(path: &Path, certs: Vec<Vec<u8>>, key: Key) -> Result<Self, String> {
        if certs.is_empty() {
            return Err(
                "no certificate in the file: it needs the certificate and its private key".into(),
            );
        }
        let key = rsa_key(key)?;
        let public = key.public_key().as_ref();
        let mut parsed = Vec::new();
        for der in &certs {
            let (_, cert) = x509_parser::parse_x509_certificate(der)
                .map_err(|e| format!("not a valid X.509 certificate ({e})"))?;
            let matches = cert.public_key().subject_public_key.data.as_ref() == public;
            parsed.push((
                matches,
                cert.subject().to_string(),
                cert.validity().not_after.timestamp(),
            ));
        }
        let Some(leaf) = parsed.iter().position(|(matches, ..)| *matches) else {
            return Err(format!(
                "the private key does not match the certificate (subject {})",
                parsed[0].1
            ));
        };
        let (_, subject, not_after) = parsed.swap_remove(leaf);
        let mut chain = certs;
        let leaf_der = chain.remove(leaf);
        chain.insert(0, leaf_der);
        Ok(ClientCertificate {
            path: path.to_path_buf(),
            key,
            thumbprint: URL_SAFE_NO_PAD.encode(digest::digest(&SHA256, &chain[0])),
            chain,
            subject,
            not_after: unix_time(not_after),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn subject(&self) -> &str {
        &self.subject
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// notAfter as RFC 3339, for logs and `--config.check`.
    pub fn not_after_text(&self) -> String {
        rfc3339(self.not_after)
    }

    /// base64url SHA-256 of the certificate: the thumbprint Entra ID looks the key up by.
    pub fn thumbprint(&self) -> &str {
        &self.thumbprint
    }

    /// SHA-256 over the chain's DER, leaf first. The key is checked to match the leaf, so equal
    /// fingerprints mean the same credential however the file encodes it: a reload tells a
    /// rotated certificate from a file that was merely rewritten.
    pub fn fingerprint(&self) -> [u8; 32] {
        let mut hash = digest::Context::new(&SHA256);
        for der in &self.chain {
            hash.update(&(der.len() as u64).to_be_bytes());
            hash.update(der);
        }
        let mut fingerprint = [0; 32];
        fingerprint.copy_from_slice(hash.finish().as_ref());
        fingerprint
    }

    /// Whether the certificate has expired at `now`.
    pub fn expired(&self, now: SystemTime) -> bool {
        self.not_after <= now
    }

    /// A warning when the certificate has expired at `now` or expires within
    /// [`EXPIRY_WARNING`]. At startup an expired certificate is a warning only: the identity
    /// platform will most likely refuse it, but trying costs nothing and says so in a clearer
    /// way. `--config.check` refuses it.
    pub fn expiry_warning(&self, now: SystemTime) -> Option<String> {
        let subject = format!(
            "the client certificate in {} (subject {})",
            self.path.display(),
            self.subject
        );
        if self.expired(now) {
            return Some(format!(
                "{subject} expired at {}: upload a new one to the app registration",
                self.not_after_text()
            ));
        }
        let left = self.not_after.duration_since(now).unwrap_or_default();
        let days = match left.as_secs() / 86_400 {
            0 => "less than a day".to_string(),
            1 => "1 day".to_string(),
            n => format!("{n} days"),
        };
        (left < EXPIRY_WARNING).then(|| {
            format!(
                "{subject} expires at {}, in {days}: upload a new one to the app registration before then",
                self.not_after_text(),
            )
        })
    }

    /// A signed JWT client assertion for the token endpoint `audience`, valid from `now` for
    /// ten minutes, with a unique `jti`: a new one for every token request.
    pub fn assertion(
        &self,
        client_id: &str,
        audience: &str,
        send_chain: bool,
        now: SystemTime,
    ) -> Result<SecretString, RefreshError> {
        let rng = SystemRandom::new();
        let failed =
            |what: &str| RefreshError::Credential(format!("cannot {what} the client assertion"));
        let mut jti = [0u8; 16];
        rng.fill(&mut jti).map_err(|_| failed("make"))?;
        let mut header = serde_json::json!({
            "alg": "PS256",
            "typ": "JWT",
            "x5t#S256": self.thumbprint,
        });
        if send_chain {
            let x5c: Vec<String> = self.chain.iter().map(|der| STANDARD.encode(der)).collect();
            header["x5c"] = x5c.into();
        }
        let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let claims = serde_json::json!({
            "aud": audience,
            "iss": client_id,
            "sub": client_id,
            "jti": uuid_text(jti),
            "nbf": now,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME.as_secs(),
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut signature = vec![0; self.key.public_modulus_len()];
        self.key
            .sign(
                &RSA_PSS_SHA256,
                &rng,
                signing_input.as_bytes(),
                &mut signature,
            )
            .map_err(|_| failed("sign"))?;
        Ok(SecretString::from(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        )))
    }
}

enum Key {
    Pkcs8(Vec<u8>),
    Pkcs1(Vec<u8>),
    NotRsa,
    Missing,
}

fn not_rsa() -> String {
    "the private key is not RSA: certificate credentials need an RSA key".into()
}

/// The signing key, or why it cannot be one. The reasons come from the key's own fields (the
/// PKCS#8 algorithm, the modulus), not from the wording of the crypto library's errors.
fn rsa_key(key: Key) -> Result<RsaKeyPair, String> {
    let unusable = |why: &dyn fmt::Display| format!("the private key cannot be used ({why})");
    let pkcs1 = match key {
        Key::Pkcs1(der) => der,
        Key::Pkcs8(der) => match pkcs8_parts(&der) {
            Some((algorithm, pkcs1)) if algorithm == OID_PKCS1_RSAENCRYPTION => pkcs1,
            Some(_) => return Err(not_rsa()),
            None => return Err(unusable(&"not a valid PKCS#8 key")),
        },
        Key::NotRsa => return Err(not_rsa()),
        Key::Missing => return Err(
            "no private key in the file: it needs the certificate and its unencrypted private key"
                .into(),
        ),
    };
    match modulus_bits(&pkcs1) {
        None => Err(unusable(&"not a valid RSA key")),
        Some(bits) if bits < 2048 => {
            Err("the RSA key is shorter than 2048 bits: create a new certificate".into())
        }
        Some(_) => RsaKeyPair::from_der(&pkcs1).map_err(|e| unusable(&e)),
    }
}

/// A PKCS#8 PrivateKeyInfo's algorithm and the key it wraps (for RSA, PKCS#1 RSAPrivateKey).
fn pkcs8_parts(der: &[u8]) -> Option<(Oid<'static>, Vec<u8>)> {
    let (_, info) = Sequence::from_der(der).ok()?;
    let (_, (algorithm, key)) = info
        .parse(|i| {
            let (i, _version) = Integer::from_der(i)?;
            let (i, algorithm) = Sequence::from_der(i)?;
            let (i, key) = OctetString::from_der(i)?;
            Ok::<_, x509_parser::nom::Err<x509_parser::asn1_rs::Error>>((i, (algorithm, key)))
        })
        .ok()?;
    let (_, oid) = Oid::from_der(&algorithm.content).ok()?;
    Some((oid.to_owned(), key.as_ref().to_vec()))
}

/// The size of a PKCS#1 RSAPrivateKey's modulus, in bits (None for a negative one).
fn modulus_bits(pkcs1: &[u8]) -> Option<usize> {
    let (_, key) = Sequence::from_der(pkcs1).ok()?;
    let (_, modulus) = key
        .parse(|i| {
            let (i, _version) = Integer::from_der(i)?;
            Integer::from_der(i)
        })
        .ok()?;
    // Big-endian two's complement: a positive value's leading zero bytes carry no bits.
    let bytes = modulus.as_ref();
    let first = bytes.iter().position(|b| *b != 0)?;
    if first == 0 && bytes[0] & 0x80 != 0 {
        return None;
    }
    Some((bytes.len() - first) * 8 - bytes[first].leading_zeros() as usize)
}

fn is_pem(bytes: &[u8]) -> bool {
    bytes.windows(11).any(|w| w == b"-----BEGIN ")
}

fn pem_parts(bytes: &[u8], settings: Settings) -> Result<(Vec<Vec<u8>>, Key), String> {
    let text = String::from_utf8_lossy(bytes);
    if text.contains("ENCRYPTED PRIVATE KEY") || text.contains("Proc-Type: 4,ENCRYPTED") {
        return Err(format!("the private key is encrypted: store it unencrypted (openssl pkey -in key.pem -out plain.pem), or use PKCS#12 with {}", settings.password));
    }
    let certs = CertificateDer::pem_slice_iter(bytes)
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a valid PEM file ({e})"))?;
    let key = match PrivateKeyDer::from_pem_slice(bytes) {
        Ok(PrivateKeyDer::Pkcs8(k)) => Key::Pkcs8(k.secret_pkcs8_der().to_vec()),
        Ok(PrivateKeyDer::Pkcs1(k)) => Key::Pkcs1(k.secret_pkcs1_der().to_vec()),
        Ok(_) => Key::NotRsa,
        Err(rustls_pki_types::pem::Error::NoItemsFound) => Key::Missing,
        Err(e) => return Err(format!("not a valid PEM file ({e})")),
    };
    Ok((certs, key))
}

fn pkcs12_parts(
    bytes: &[u8],
    password: Option<&SecretString>,
    settings: Settings,
) -> Result<(Vec<Vec<u8>>, Key), String> {
    use p12_keystore::error::Error as P12;
    let archive =
        p12_keystore::Pkcs12Archive::from_pkcs12(bytes, password.map_or("", |p| p.expose_secret()))
            .map_err(|e| {
                match e {
        P12::DerError(_) | P12::InvalidVersion | P12::UnsupportedContentType => {
            "not a certificate: expected PEM (certificate and private key) or PKCS#12 (.pfx/.p12)"
                .to_string()
        }
        // Without a MAC a wrong password shows up as undecryptable bags.
        P12::MacError(_) | P12::UnpadError | P12::Pkcs5Error(_) | P12::InvalidData
            if password.is_none() =>
        {
            format!(
                "the PKCS#12 file needs a password: set {}",
                settings.password
            )
        }
        P12::MacError(_) | P12::UnpadError | P12::Pkcs5Error(_) | P12::InvalidData => {
            "wrong PKCS#12 password".to_string()
        }
        other => format!("cannot read the PKCS#12 file ({other})"),
    }
            })?;
    let certs = archive
        .certs
        .iter()
        .map(|c| c.cert.as_der().to_vec())
        .collect();
    let key = archive
        .keys
        .first()
        .map_or(Key::Missing, |k| Key::Pkcs8(k.key.as_der().to_vec()));
    Ok((certs, key))
}

fn uuid_text(b: [u8; 16]) -> String {
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

fn unix_time(seconds: i64) -> SystemTime {
    match u64::try_from(seconds) {
        Ok(s) => UNIX_EPOCH + Duration::from_secs(s),
        Err(_) => UNIX_EPOCH - Duration::from_secs(seconds.unsigned_abs()),
    }
}

/// How long before its notAfter a client certificate is warned about.
pub(crate) const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 86_400);

fn rfc3339(t: SystemTime) -> String {
    let seconds = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    };
    time::OffsetDateTime::from_unix_timestamp(seconds)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("@{seconds}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWORD: &str = "test-p12-password";

    fn fixture(name: &str) -> Vec<u8> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/identity");
        std::fs::read(dir.join(name)).unwrap()
    }

    /// Writes the concatenation of `parts` (fixture names) to a file and loads it.
    fn load(
        parts: &[&str],
        password: Option<&str>,
    ) -> (
        tempfile::TempDir,
        Result<ClientCertificate, CertificateError>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credential");
        std::fs::write(
            &path,
            parts.iter().flat_map(|p| fixture(p)).collect::<Vec<u8>>(),
        )
        .unwrap();
        let password = password.map(SecretString::from);
        let loaded = ClientCertificate::load(&path, password.as_ref(), Settings::ENVIRONMENT);
        (dir, loaded)
    }

    fn expected_thumbprint() -> String {
        let der = CertificateDer::from_pem_slice(&fixture("cert-a.pem")).unwrap();
        URL_SAFE_NO_PAD.encode(digest::digest(&SHA256, der.as_ref()))
    }

    #[test]
    fn pem_in_either_order_and_pkcs12_in_both_encodings() {
        let cases: &[(&[&str], Option<&str>)] = &[
            (&["cert-a.pem", "rsa-a.pkcs8.pem"], None),
            (&["rsa-a.pkcs8.pem", "cert-a.pem"], None),
            (&["cert-a.pem", "rsa-a.pkcs1.pem"], None),
            (&["rsa-a.pkcs1.pem", "cert-a.pem"], None),
            (&["aes.p12"], Some(PASSWORD)),
            (&["legacy.p12"], Some(PASSWORD)),
        ];
        for (parts, password) in cases {
            let (_dir, loaded) = load(parts, *password);
            let cert = loaded.unwrap_or_else(|e| panic!("{parts:?}: {e}"));
            assert_eq!(cert.subject(), "CN=sfb-exporter test", "{parts:?}");
            assert_eq!(cert.thumbprint(), expected_thumbprint(), "{parts:?}");
            assert!(cert.not_after() > SystemTime::now());
            let debug = format!("{cert:?}");
            assert!(debug.contains("[redacted]") && !debug.contains("PRIVATE"));
        }
    }

    #[test]
    fn unusable_files_are_named_and_passwords_never() {
        let cases: &[(&[&str], Option<&str>, &str)] = &[
            (&["README.md"], None, "not a certificate"),
            (&["cert-a.pem"], None, "no private key"),
            (&["rsa-a.pkcs8.pem"], None, "no certificate"),
            (&["cert-a.pem", "rsa-b.pkcs8.pem"], None, "does not match"),
            (&["cert-a.pem", "ec.pkcs8.pem"], None, "not RSA"),
            (&["cert-a.pem", "rsa-a.encrypted.pem"], None, "encrypted"),
            (
                &["cert-a.pem", "rsa-1024.pkcs8.pem"],
                None,
                "shorter than 2048 bits",
            ),
            (
                &["rsa-1024.pkcs1.pem", "cert-a.pem"],
                None,
                "shorter than 2048 bits",
            ),
            (
                &["aes.p12"],
                Some("wrong-password-77"),
                "wrong PKCS#12 password",
            ),
            (
                &["legacy.p12"],
                Some("wrong-password-77"),
                "wrong PKCS#12 password",
            ),
            (&["aes.p12"], None, "AZURE_CLIENT_CERTIFICATE_PASSWORD"),
        ];
        for (parts, password, needle) in cases {
            let (dir, loaded) = load(parts, *password);
            let message = loaded.unwrap_err().to_string();
            assert!(message.contains(needle), "{parts:?}: {message}");
            assert!(message.contains(&dir.path().join("credential").display().to_string()));
            assert!(!message.contains("wrong-password-77"), "{message}");
            assert_eq!(message.lines().count(), 1, "{message}");
        }
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("cert.pem");
        crate::files::make_fifo(&fifo);
        let message = crate::files::without_blocking(move || {
            ClientCertificate::load(&fifo, None, Settings::ENVIRONMENT)
                .unwrap_err()
                .to_string()
        });
        assert!(
            message.contains("cert.pem: cannot read the file: not a regular file"),
            "{message}"
        );
        let missing = Path::new("/nonexistent/cert.pem");
        let message = ClientCertificate::load(missing, None, Settings::ENVIRONMENT)
            .unwrap_err()
            .to_string();
        assert!(
            message.starts_with("AZURE_CLIENT_CERTIFICATE_PATH /nonexistent/cert.pem: cannot read"),
            "{message}"
        );
    }

    #[test]
    fn key_sizes_are_read_from_the_key() {
        let bits = |name| {
            let pem = fixture(name);
            let der = match PrivateKeyDer::from_pem_slice(&pem).unwrap() {
                PrivateKeyDer::Pkcs1(k) => k.secret_pkcs1_der().to_vec(),
                PrivateKeyDer::Pkcs8(k) => {
                    let (algorithm, inner) = pkcs8_parts(k.secret_pkcs8_der()).unwrap();
                    assert_eq!(algorithm, OID_PKCS1_RSAENCRYPTION, "{name}");
                    inner
                }
                _ => unreachable!(),
            };
            modulus_bits(&der)
        };
        assert_eq!(bits("rsa-a.pkcs8.pem"), Some(2048));
        assert_eq!(bits("rsa-a.pkcs1.pem"), Some(2048));
        assert_eq!(bits("rsa-1024.pkcs8.pem"), Some(1024));
        assert_eq!(bits("rsa-1024.pkcs1.pem"), Some(1024));
        // A negative modulus, and bytes that are no RSAPrivateKey at all.
        assert_eq!(
            modulus_bits(&[0x30, 0x06, 0x02, 0x01, 0x00, 0x02, 0x01, 0x80]),
            None
        );
        assert_eq!(modulus_bits(b"not DER"), None);
    }

    #[test]
    fn errors_name_the_setting_the_caller_gives() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credential.p12");
        std::fs::write(&path, fixture("aes.p12")).unwrap();
        let message = |settings| {
            ClientCertificate::load(&path, None, settings)
                .unwrap_err()
                .to_string()
        };
        let file = message(Settings::CONFIG_FILE);
        assert_eq!(
            file,
            format!(
                "client_certificate_path {}: the PKCS#12 file needs a password: set client_certificate_password_file",
                path.display()
            )
        );
        let environment = message(Settings::ENVIRONMENT);
        assert!(
            environment.starts_with("AZURE_CLIENT_CERTIFICATE_PATH ")
                && environment.ends_with(
                    "set AZURE_CLIENT_CERTIFICATE_PASSWORD or --azure.client-certificate-password-file"
                ),
            "{environment}"
        );
    }
}
