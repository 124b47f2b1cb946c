//! How the exporter proves who it is: the kinds of credential the Azure SDKs read from the
//! environment (and a tenant of --config.file from its keys), and the form fields each adds to
//! a token request.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use secrecy::{ExposeSecret, SecretString};

use super::certificate::{self, ClientCertificate};
use super::managed::ManagedEndpoint;
use crate::error::RefreshError;
use crate::files::read_text;

/// The `client_assertion_type` of certificate and federated (workload identity) assertions.
pub(crate) const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// A federated token is a JWT of a few KiB; the cap keeps a wrong path from eating memory.
const MAX_TOKEN_FILE: u64 = 64 * 1024;

/// Where an identity was configured, so that every message names the setting to change there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The AZURE_* variables and the --azure.* flags.
    Environment,
    /// A tenant of --config.file, by its keys.
    File,
}

impl Origin {
    /// What messages call the federated token file.
    pub fn token_file(self) -> &'static str {
        match self {
            Origin::Environment => "AZURE_FEDERATED_TOKEN_FILE",
            Origin::File => "federated_token_file",
        }
    }

    /// What messages call the certificate file and its password.
    pub fn certificate(self) -> certificate::Settings {
        match self {
            Origin::Environment => certificate::Settings::ENVIRONMENT,
            Origin::File => certificate::Settings::CONFIG_FILE,
        }
    }
}

/// Files are read when the configuration is loaded, and two credentials are equal when they
/// hold the same: a reload of --config.file sees a secret or certificate rotated in place (a
/// Kubernetes Secret update) and keeps a tenant whose files are unchanged.
#[derive(Clone)]
pub enum Credential {
    Secret {
        client_id: String,
        secret: SecretString,
    },
    Certificate {
        client_id: String,
        /// Shared with the tenant's entry of --config.file, which compares it on reload; behind
        /// a pointer also because the RSA key pair is large beside the other kinds.
        certificate: Arc<ClientCertificate>,
        /// Put the chain into the assertion's `x5c` header (subject name/issuer authentication).
        send_chain: bool,
    },
    WorkloadIdentity {
        client_id: String,
        /// Read again at every token request (the kubelet rotates it), so its path is what
        /// counts.
        token_file: PathBuf,
    },
    ManagedIdentity {
        /// Selects a user-assigned identity; None for the system-assigned one.
        client_id: Option<String>,
        endpoint: ManagedEndpoint,
    },
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct(self.kind());
        d.field("client_id", &self.client_id());
        match self {
            Credential::Secret { .. } => d.field("secret", &"[redacted]"),
            Credential::Certificate {
                certificate,
                send_chain,
                ..
            } => d
                .field("certificate", certificate)
                .field("send_chain", send_chain),
            Credential::WorkloadIdentity { token_file, .. } => d.field("token_file", token_file),
            Credential::ManagedIdentity { endpoint, .. } => d.field("endpoint", endpoint),
        };
        d.finish()
    }
}

impl PartialEq for Credential {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (
                Credential::Secret { client_id, secret },
                Credential::Secret {
                    client_id: c,
                    secret: s,
                },
            ) => client_id == c && secret.expose_secret() == s.expose_secret(),
            (
                Credential::Certificate {
                    client_id,
                    certificate,
                    send_chain,
                },
                Credential::Certificate {
                    client_id: c,
                    certificate: cert,
                    send_chain: chain,
                },
            ) => {
                // The same chain, and so the same key: a file rewritten in another order is
                // the same credential.
                client_id == c
                    && certificate.fingerprint() == cert.fingerprint()
                    && send_chain == chain
            }
            (
                Credential::WorkloadIdentity {
                    client_id,
                    token_file,
                },
                Credential::WorkloadIdentity {
                    client_id: c,
                    token_file: t,
                },
            ) => client_id == c && token_file == t,
            (
                Credential::ManagedIdentity {
                    client_id,
                    endpoint,
                },
                Credential::ManagedIdentity {
                    client_id: c,
                    endpoint: e,
                },
            ) => client_id == c && endpoint == e,
            _ => false,
        }
    }
}

impl Credential {
    /// The name `--azure.credential` gives this kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Credential::Secret { .. } => "secret",
            Credential::Certificate { .. } => "certificate",
            Credential::WorkloadIdentity { .. } => "workload-identity",
            Credential::ManagedIdentity { .. } => "managed-identity",
        }
    }

    pub fn client_id(&self) -> Option<&str> {
        match self {
            Credential::Secret { client_id, .. }
            | Credential::Certificate { client_id, .. }
            | Credential::WorkloadIdentity { client_id, .. } => Some(client_id),
            Credential::ManagedIdentity { client_id, .. } => client_id.as_deref(),
        }
    }

    pub fn certificate(&self) -> Option<&ClientCertificate> {
        match self {
            Credential::Certificate { certificate, .. } => Some(certificate),
            _ => None,
        }
    }

    /// The form fields that authenticate the client at `token_url`: the secret, or a fresh
    /// assertion. Managed identity has none: its endpoint takes no client authentication.
    /// `timeout` bounds the read of a federated token file; `origin` names it in errors.
    pub(super) async fn client_proof(
        &self,
        token_url: &str,
        timeout: Duration,
        origin: Origin,
    ) -> Result<Vec<(&'static str, SecretString)>, RefreshError> {
        let assertion = match self {
            Credential::Secret { secret, .. } => {
                return Ok(vec![("client_secret", secret.clone())]);
            }
            Credential::Certificate {
                client_id,
                certificate,
                send_chain,
            } => certificate.assertion(client_id, token_url, *send_chain, SystemTime::now())?,
            Credential::WorkloadIdentity { token_file, .. } => {
                read_federated_token_within(token_file, origin.token_file(), timeout).await?
            }
            Credential::ManagedIdentity { .. } => return Ok(Vec::new()),
        };
        Ok(vec![
            ("client_assertion_type", SecretString::from(JWT_BEARER)),
            ("client_assertion", assertion),
        ])
    }
}

/// [`read_federated_token`] on a blocking thread, given up after `timeout`: a file on a slow or
/// hung network filesystem must stall neither a runtime worker nor the refresh.
async fn read_federated_token_within(
    path: &Path,
    setting: &'static str,
    timeout: Duration,
) -> Result<SecretString, RefreshError> {
    let owned = path.to_path_buf();
    let read = tokio::task::spawn_blocking(move || read_federated_token(&owned, setting));
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok(token)) => token.map_err(RefreshError::Credential),
        Ok(Err(_)) => Err(RefreshError::Credential(format!(
            "reading {setting} {} failed",
            path.display()
        ))),
        Err(_) => Err(RefreshError::Credential(format!(
            "{setting} {} could not be read within {}: is its filesystem hung?",
            path.display(),
            humantime::format_duration(timeout)
        ))),
    }
}

/// The federated token the kubelet (or another issuer) wrote to `path`. Read at every token
/// request, because the file is rotated while the exporter runs. Errors call the file
/// `setting`: the variable or the key that gave it.
pub(crate) fn read_federated_token(path: &Path, setting: &str) -> Result<SecretString, String> {
    let raw = read_text(path, MAX_TOKEN_FILE)
        .map_err(|e| format!("cannot read {setting} {}: {e}", path.display()))?;
    let token = raw.trim();
    if token.is_empty() {
        return Err(format!(
            "{setting} {} is empty: is the projected service account token mounted?",
            path.display()
        ));
    }
    Ok(SecretString::from(token))
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    const ENV: &str = "AZURE_FEDERATED_TOKEN_FILE";

    #[tokio::test]
    async fn federated_token_file_is_read_fresh_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "first\n").unwrap();
        let credential = Credential::WorkloadIdentity {
            client_id: "c".into(),
            token_file: path.clone(),
        };
        async fn proof(c: &Credential) -> Vec<String> {
            c.client_proof(
                "https://login.example.test/t/oauth2/v2.0/token",
                Duration::from_secs(30),
                Origin::Environment,
            )
            .await
            .unwrap()
            .into_iter()
            .map(|(k, v)| format!("{k}={}", v.expose_secret()))
            .collect()
        }
        assert_eq!(
            proof(&credential).await,
            [
                format!("client_assertion_type={JWT_BEARER}"),
                "client_assertion=first".into()
            ]
        );
        std::fs::write(&path, "second").unwrap();
        assert_eq!(proof(&credential).await[1], "client_assertion=second");
        assert!(!format!("{credential:?}").contains("second"));

        std::fs::write(&path, " \n").unwrap();
        let err = read_federated_token(&path, ENV).unwrap_err();
        assert_eq!(
            err,
            format!(
                "AZURE_FEDERATED_TOKEN_FILE {} is empty: is the projected service account token mounted?",
                path.display()
            )
        );
        let missing = dir.path().join("missing");
        let err = read_federated_token(&missing, "federated_token_file").unwrap_err();
        assert!(
            err.starts_with(&format!(
                "cannot read federated_token_file {}: ",
                missing.display()
            )) && !err.contains("AZURE_"),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");

        // A FIFO would block the reader until something writes to it: refused at once.
        let fifo = dir.path().join("fifo");
        crate::files::make_fifo(&fifo);
        let err =
            crate::files::without_blocking(move || read_federated_token(&fifo, ENV).unwrap_err());
        assert!(err.contains("fifo: not a regular file"), "{err}");
    }

    #[test]
    fn secret_is_redacted_from_debug() {
        let credential = Credential::Secret {
            client_id: "c".into(),
            secret: SecretString::from("hunter2"),
        };
        let debug = format!("{credential:?}");
        assert!(
            !debug.contains("hunter2") && debug.contains("[redacted]"),
            "{debug}"
        );
    }
}
