//! The one loader of credentials: what the environment or a tenant of --config.file gives,
//! read and checked once (files read, certificate loaded, token file tried), with every problem
//! named after the setting that gave it, where it was given.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use secrecy::SecretString;

use super::certificate::{CertificateError, ClientCertificate};
use super::credential::{read_federated_token, Credential, Origin};
use super::managed::ManagedEndpoint;
use crate::files::{read_secret, SecretFileError};

/// A secret as given: its value, or a file that holds it.
pub(crate) enum SecretInput {
    Value(SecretString),
    File(PathBuf),
}

/// What a configuration gives for one kind of credential, before anything is read. An input
/// left out is None, and reported as missing.
pub(crate) enum CredentialInput {
    Secret {
        secret: Option<SecretInput>,
    },
    Certificate {
        path: Option<PathBuf>,
        password: Option<SecretInput>,
        send_chain: bool,
    },
    WorkloadIdentity {
        token_file: Option<PathBuf>,
    },
    /// The endpoint is chosen from the environment, for both origins.
    ManagedIdentity {
        endpoint: ManagedEndpoint,
    },
}

impl CredentialInput {
    /// The name `--azure.credential` gives this kind.
    fn kind(&self) -> &'static str {
        match self {
            CredentialInput::Secret { .. } => "secret",
            CredentialInput::Certificate { .. } => "certificate",
            CredentialInput::WorkloadIdentity { .. } => "workload-identity",
            CredentialInput::ManagedIdentity { .. } => "managed-identity",
        }
    }
}

/// A credential that cannot be used, in words for the place that configured it. Never holds
/// a secret.
#[derive(Debug)]
pub struct CredentialError {
    origin: Origin,
    problem: Problem,
}

#[derive(Debug)]
enum Problem {
    ClientIdMissing,
    ClientIdEmpty,
    /// An input the kind needs, by its setting.
    Missing {
        setting: Setting,
        kind: &'static str,
    },
    SecretFile {
        setting: Setting,
        path: PathBuf,
        error: SecretFileError,
    },
    Certificate(CertificateError),
    FederatedToken(String),
}

/// The inputs that have a name of their own in each origin.
#[derive(Debug, Clone, Copy)]
enum Setting {
    Secret,
    SecretFile,
    Certificate,
    PasswordFile,
    TokenFile,
}

impl Setting {
    fn name(self, origin: Origin) -> &'static str {
        match (self, origin) {
            (Setting::Secret, Origin::Environment) => "AZURE_CLIENT_SECRET",
            (Setting::Secret, Origin::File) => "client_secret",
            (Setting::SecretFile, Origin::Environment) => "--azure.client-secret-file",
            (Setting::SecretFile, Origin::File) => "client_secret_file",
            (Setting::Certificate, origin) => origin.certificate().path,
            (Setting::PasswordFile, Origin::Environment) => {
                "--azure.client-certificate-password-file"
            }
            (Setting::PasswordFile, Origin::File) => "client_certificate_password_file",
            (Setting::TokenFile, origin) => origin.token_file(),
        }
    }

    /// What the file of a secret should hold.
    fn holds(self) -> &'static str {
        match self {
            Setting::PasswordFile => "PKCS#12 password",
            _ => "client secret value",
        }
    }
}

impl fmt::Display for CredentialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let origin = self.origin;
        match (&self.problem, origin) {
            (Problem::ClientIdMissing, Origin::Environment) => f.write_str("AZURE_CLIENT_ID is not set: export it (see --help), or run with --demo to try the exporter without Azure credentials"),
            (Problem::ClientIdMissing, Origin::File) => f.write_str("client_id: missing"),
            (Problem::ClientIdEmpty, Origin::Environment) => {
                f.write_str("AZURE_CLIENT_ID is set but empty: give it a value")
            }
            (Problem::ClientIdEmpty, Origin::File) => f.write_str("client_id: empty"),
            (Problem::Missing { setting, kind }, Origin::Environment) => write!(
                f,
                "{} is not set, and --azure.credential {kind} needs it (see --help)",
                setting.name(origin)
            ),
            (Problem::Missing { setting, .. }, Origin::File) => {
                write!(f, "{}: missing", setting.name(origin))
            }
            (
                Problem::SecretFile {
                    setting,
                    path,
                    error,
                },
                Origin::Environment,
            ) => write!(
                f,
                "{} {path:?} {error}: it should hold the {}",
                setting.name(origin),
                setting.holds()
            ),
            (
                Problem::SecretFile {
                    setting,
                    path,
                    error,
                },
                Origin::File,
            ) => write!(f, "{}: {} {error}", setting.name(origin), path.display()),
            (Problem::Certificate(e), _) => e.fmt(f),
            (Problem::FederatedToken(e), _) => f.write_str(e),
        }
    }
}

impl std::error::Error for CredentialError {}

/// Reads and checks `input` as `origin` gave it. `client_id` is the value as given (None when
/// left out); a managed identity takes none for the system-assigned identity. Every problem is
/// returned, the client ID's first.
pub(crate) fn load(
    input: CredentialInput,
    client_id: Option<&str>,
    origin: Origin,
) -> Result<Credential, Vec<CredentialError>> {
    let fail = |problem| CredentialError { origin, problem };
    let client_id = client_id.map(str::trim);
    let required_client_id = || match client_id {
        None => Err(fail(Problem::ClientIdMissing)),
        Some("") => Err(fail(Problem::ClientIdEmpty)),
        Some(id) => Ok(id.to_string()),
    };
    let kind = input.kind();
    let missing = |setting| fail(Problem::Missing { setting, kind });
    match input {
        CredentialInput::Secret { secret } => {
            let secret = secret
                .ok_or_else(|| missing(Setting::Secret))
                .and_then(|secret| read(secret, Setting::SecretFile, origin));
            both(required_client_id(), secret)
                .map(|(client_id, secret)| Credential::Secret { client_id, secret })
        }
        CredentialInput::Certificate {
            path,
            password,
            send_chain,
        } => {
            let certificate = path
                .ok_or_else(|| missing(Setting::Certificate))
                .and_then(|path| {
                    let password = password
                        .map(|p| read(p, Setting::PasswordFile, origin))
                        .transpose()?;
                    ClientCertificate::load(&path, password.as_ref(), origin.certificate())
                        .map_err(|e| fail(Problem::Certificate(e)))
                });
            both(required_client_id(), certificate).map(|(client_id, certificate)| {
                Credential::Certificate {
                    client_id,
                    certificate: Arc::new(certificate),
                    send_chain,
                }
            })
        }
        CredentialInput::WorkloadIdentity { token_file } => {
            let token_file = token_file
                .ok_or_else(|| missing(Setting::TokenFile))
                .and_then(|file| {
                    // Read once now so that a missing mount fails the load, not the first
                    // refresh; it is read again at every token request.
                    read_federated_token(&file, origin.token_file())
                        .map_err(|e| fail(Problem::FederatedToken(e)))?;
                    Ok(file)
                });
            both(required_client_id(), token_file).map(|(client_id, token_file)| {
                Credential::WorkloadIdentity {
                    client_id,
                    token_file,
                }
            })
        }
        CredentialInput::ManagedIdentity { endpoint } => Ok(Credential::ManagedIdentity {
            client_id: client_id.filter(|c| !c.is_empty()).map(str::to_string),
            endpoint,
        }),
    }
}

/// The secret's value, read from its file when it was given as one.
fn read(
    secret: SecretInput,
    file: Setting,
    origin: Origin,
) -> Result<SecretString, CredentialError> {
    match secret {
        SecretInput::Value(value) => Ok(value),
        SecretInput::File(path) => match read_secret(&path) {
            Ok(value) => Ok(SecretString::from(value)),
            Err(error) => Err(CredentialError {
                origin,
                problem: Problem::SecretFile {
                    setting: file,
                    path,
                    error,
                },
            }),
        },
    }
}

/// Both results, or every error of the two.
fn both<A, B>(
    a: Result<A, CredentialError>,
    b: Result<B, CredentialError>,
) -> Result<(A, B), Vec<CredentialError>> {
    match (a, b) {
        (Ok(a), Ok(b)) => Ok((a, b)),
        (a, b) => Err(a.err().into_iter().chain(b.err()).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(input: impl Fn() -> CredentialInput, origin: Origin) -> Vec<String> {
        load(input(), None, origin)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn every_problem_names_the_setting_of_its_origin() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let secret = || CredentialInput::Secret {
            secret: Some(SecretInput::File(missing.clone())),
        };
        let environment = problems(secret, Origin::Environment);
        assert_eq!(environment.len(), 2, "{environment:?}");
        assert!(environment[0].starts_with("AZURE_CLIENT_ID is not set: export it"));
        assert!(
            environment[1].starts_with(&format!("--azure.client-secret-file {missing:?} "))
                && environment[1].ends_with(": it should hold the client secret value"),
            "{}",
            environment[1]
        );
        let file = problems(secret, Origin::File);
        assert_eq!(file[0], "client_id: missing");
        assert!(
            file[1].starts_with(&format!("client_secret_file: {} ", missing.display())),
            "{}",
            file[1]
        );

        let certificate = || CredentialInput::Certificate {
            path: Some(dir.path().join("c.p12")),
            password: Some(SecretInput::File(missing.clone())),
            send_chain: false,
        };
        let environment = problems(certificate, Origin::Environment);
        assert!(
            environment[1].starts_with("--azure.client-certificate-password-file ")
                && environment[1].ends_with(": it should hold the PKCS#12 password"),
            "{}",
            environment[1]
        );
        let file = problems(certificate, Origin::File);
        assert!(
            file[1].starts_with("client_certificate_password_file: "),
            "{}",
            file[1]
        );

        let token = || CredentialInput::WorkloadIdentity {
            token_file: Some(missing.clone()),
        };
        assert!(problems(token, Origin::Environment)[1]
            .starts_with("cannot read AZURE_FEDERATED_TOKEN_FILE "));
        assert!(problems(token, Origin::File)[1].starts_with("cannot read federated_token_file "));

        // An input the environment left out, for the kind --azure.credential asked for.
        let unset = || CredentialInput::WorkloadIdentity { token_file: None };
        assert_eq!(
            problems(unset, Origin::Environment)[1],
            "AZURE_FEDERATED_TOKEN_FILE is not set, and --azure.credential workload-identity needs it (see --help)"
        );
        for (origin, says) in [
            (
                Origin::Environment,
                "AZURE_CLIENT_ID is set but empty: give it a value",
            ),
            (Origin::File, "client_id: empty"),
        ] {
            let e = load(unset(), Some(" "), origin).unwrap_err();
            assert_eq!(e[0].to_string(), says);
        }
        // Nothing from the file names a variable of the environment.
        for input in [
            &secret as &dyn Fn() -> CredentialInput,
            &certificate,
            &token,
        ] {
            for problem in problems(input, Origin::File) {
                assert!(!problem.contains("AZURE_"), "{problem}");
            }
        }
    }

    #[test]
    fn credentials_compare_by_what_their_files_hold() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        let loaded = || {
            let input = CredentialInput::Secret {
                secret: Some(SecretInput::File(file.clone())),
            };
            load(input, Some("c"), Origin::File).unwrap()
        };
        std::fs::write(&file, "first\n").unwrap();
        let before = loaded();
        std::fs::write(&file, "first").unwrap();
        assert_eq!(loaded(), before, "the same secret, trimmed");
        // A Kubernetes Secret update swaps the file's content under the same path.
        std::fs::write(&file, "second").unwrap();
        assert_ne!(loaded(), before, "the rotated secret would never be used");
        assert!(!format!("{before:?}").contains("first"));
    }
}
