//! What the environment gives: the identity of the AZURE_* variables and the --azure.* flags,
//! and the defaults a tenant of --config.file takes from it.

use std::path::{Path, PathBuf};

use secrecy::SecretString;
use url::Url;

use super::cli::{Args, CredentialKind};
use super::cloud::{check_tenant_id, parse_base_url};
use super::tenants::TenantDefaults;
use super::{ConfigError, Source};
use crate::auth::load::{load, CredentialInput, SecretInput};
use crate::auth::managed::{ManagedEndpoint, IMDS_HOST};
use crate::auth::{Credential, Identity, Origin};

/// Identity variables that --config.file replaces.
const IGNORED_WITH_FILE: [&str; 7] = [
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_CLIENT_CERTIFICATE_PATH",
    "AZURE_CLIENT_CERTIFICATE_PASSWORD",
    "AZURE_CLIENT_SEND_CERTIFICATE_CHAIN",
    "AZURE_FEDERATED_TOKEN_FILE",
];

/// --config.file: the tenants come from the file, the environment's identity is ignored.
pub(super) fn file_source(
    path: &Path,
    args: &Args,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Source, ConfigError> {
    // The identity flags too: given with the file, they would otherwise do nothing silently.
    let flags = [
        (
            "--azure.credential",
            args.credential != CredentialKind::Auto,
        ),
        (
            "--azure.client-secret-file",
            args.client_secret_file.is_some(),
        ),
        (
            "--azure.client-certificate-password-file",
            args.client_certificate_password_file.is_some(),
        ),
    ];
    let ignored: Vec<&str> = IGNORED_WITH_FILE
        .into_iter()
        .filter(|name| env(name).is_some())
        .chain(
            flags
                .into_iter()
                .filter(|(_, given)| *given)
                .map(|(flag, _)| flag),
        )
        .collect();
    if !ignored.is_empty() {
        tracing::info!(
            ignored = ignored.join(","),
            "--config.file lists the tenants; the identity variables of the environment are ignored"
        );
    }
    let authority_host = match set(env, "AZURE_AUTHORITY_HOST") {
        Some(v) => Some(parse_base_url(&v).map_err(ConfigError::AuthorityHost)?),
        None => None,
    };
    let managed_identity = managed_endpoint(env).map_err(|problems| {
        let problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
        problems.join("; ")
    });
    Ok(Source::File {
        path: path.to_path_buf(),
        defaults: TenantDefaults {
            cloud: args.cloud,
            authority_host,
            graph_url: args.graph_url.clone(),
            periods: args.periods.clone(),
            managed_identity,
        },
    })
}

/// The Azure source, or every problem found on the way.
pub(super) fn azure_source(
    args: &Args,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Source, Vec<ConfigError>> {
    let mut problems = Vec::new();
    let tenant_id = required(env, "AZURE_TENANT_ID")
        .and_then(|id| {
            check_tenant_id(&id).map_err(ConfigError::TenantId)?;
            Ok(id)
        })
        .map_err(|e| problems.push(e))
        .ok();
    let authority = match set(env, "AZURE_AUTHORITY_HOST") {
        Some(v) => parse_base_url(&v)
            .map_err(|e| problems.push(ConfigError::AuthorityHost(e)))
            .ok(),
        None => Some(Url::parse(args.cloud.authority()).expect("preset URL is valid")),
    };
    let graph = args
        .graph_url
        .clone()
        .unwrap_or_else(|| Url::parse(args.cloud.graph()).expect("preset URL is valid"));
    let credential = credential(args, env, &mut problems);
    match (tenant_id, authority, credential) {
        (Some(tenant_id), Some(authority), Some(credential)) if problems.is_empty() => {
            Ok(Source::Azure {
                identity: Identity {
                    tenant_id,
                    credential,
                    origin: Origin::Environment,
                },
                authority,
                graph,
            })
        }
        _ => Err(problems),
    }
}

/// A variable's trimmed value; None when unset or blank.
fn set(env: &impl Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    env(name)
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

fn required(
    env: &impl Fn(&str) -> Option<String>,
    name: &'static str,
) -> Result<String, ConfigError> {
    match env(name) {
        None => Err(ConfigError::MissingVariable(name)),
        Some(v) if v.trim().is_empty() => Err(ConfigError::EmptyVariable(name)),
        Some(v) => Ok(v.trim().to_string()),
    }
}

/// The kind `auto` picks: the first one configured, in the Azure SDKs' order. IMDS is never
/// picked: on a host that is not an Azure VM, probing it hangs or reaches something else.
fn auto_kind(args: &Args, env: &impl Fn(&str) -> Option<String>) -> Option<CredentialKind> {
    if args.client_secret_file.is_some() || set(env, "AZURE_CLIENT_SECRET").is_some() {
        Some(CredentialKind::Secret)
    } else if set(env, "AZURE_CLIENT_CERTIFICATE_PATH").is_some() {
        Some(CredentialKind::Certificate)
    } else if set(env, "AZURE_FEDERATED_TOKEN_FILE").is_some() {
        Some(CredentialKind::WorkloadIdentity)
    } else if set(env, "IDENTITY_ENDPOINT").is_some() && set(env, "IDENTITY_HEADER").is_some() {
        Some(CredentialKind::ManagedIdentity)
    } else {
        None
    }
}

/// The environment's credential, through the one loader, or every problem found on the way.
fn credential(
    args: &Args,
    env: &impl Fn(&str) -> Option<String>,
    problems: &mut Vec<ConfigError>,
) -> Option<Credential> {
    let kind = match args.credential {
        CredentialKind::Auto => auto_kind(args, env),
        explicit => Some(explicit),
    };
    let Some(kind) = kind else {
        problems.push(ConfigError::NoCredential);
        return None;
    };
    let input = match kind {
        CredentialKind::Auto => unreachable!("auto resolves to a kind"),
        CredentialKind::Secret => CredentialInput::Secret {
            secret: match &args.client_secret_file {
                Some(path) => Some(SecretInput::File(path.clone())),
                None => set(env, "AZURE_CLIENT_SECRET").map(|s| SecretInput::Value(s.into())),
            },
        },
        CredentialKind::Certificate => CredentialInput::Certificate {
            path: set(env, "AZURE_CLIENT_CERTIFICATE_PATH").map(PathBuf::from),
            password: match &args.client_certificate_password_file {
                Some(path) => Some(SecretInput::File(path.clone())),
                // A password may legitimately start or end with spaces: taken as given.
                None => env("AZURE_CLIENT_CERTIFICATE_PASSWORD")
                    .filter(|p| !p.is_empty())
                    .map(|p| SecretInput::Value(p.into())),
            },
            send_chain: set(env, "AZURE_CLIENT_SEND_CERTIFICATE_CHAIN")
                .is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true")),
        },
        CredentialKind::WorkloadIdentity => CredentialInput::WorkloadIdentity {
            token_file: set(env, "AZURE_FEDERATED_TOKEN_FILE").map(PathBuf::from),
        },
        CredentialKind::ManagedIdentity => match managed_endpoint(env) {
            Ok(endpoint) => CredentialInput::ManagedIdentity { endpoint },
            Err(e) => {
                problems.extend(e);
                return None;
            }
        },
    };
    let client_id = env("AZURE_CLIENT_ID");
    load(input, client_id.as_deref(), Origin::Environment)
        .map_err(|e| problems.extend(e.into_iter().map(ConfigError::from)))
        .ok()
}

fn managed_endpoint(
    env: &impl Fn(&str) -> Option<String>,
) -> Result<ManagedEndpoint, Vec<ConfigError>> {
    let url = |name: &'static str, value: &str| {
        parse_base_url(value).map_err(|problem| vec![ConfigError::Endpoint { name, problem }])
    };
    match (set(env, "IDENTITY_ENDPOINT"), env("IDENTITY_HEADER")) {
        (Some(endpoint), Some(header)) if !header.trim().is_empty() => {
            let header = header.trim();
            // Checked here, or every token request would fail as an unclear builder error.
            if reqwest::header::HeaderValue::from_str(header).is_err() {
                return Err(vec![ConfigError::Endpoint {
                    name: "IDENTITY_HEADER",
                    problem: "holds characters an HTTP header cannot carry: check how it is set"
                        .into(),
                }]);
            }
            Ok(ManagedEndpoint::AppService {
                endpoint: url("IDENTITY_ENDPOINT", &endpoint)?,
                header: SecretString::from(header.to_string()),
            })
        }
        (Some(_), _) => Err(vec![ConfigError::MissingFor {
            name: "IDENTITY_HEADER",
            kind: "managed-identity with IDENTITY_ENDPOINT",
        }]),
        (None, _) => {
            let host = set(env, "AZURE_POD_IDENTITY_AUTHORITY_HOST");
            Ok(ManagedEndpoint::Imds {
                host: url(
                    "AZURE_POD_IDENTITY_AUTHORITY_HOST",
                    host.as_deref().unwrap_or(IMDS_HOST),
                )?,
            })
        }
    }
}
