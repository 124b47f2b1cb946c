//! --config.file: the tenants one process exports, read at startup and on every reload.
//!
//! The file is walked by hand rather than through serde derive so that each error can name the
//! tenant (its tenant_id, or its position when that is missing) and the key, on one line.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use secrecy::SecretString;
use serde_norway::{Mapping, Value};
use url::Url;

use super::cloud::{check_tenant_id, parse_base_url, Cloud};
use crate::auth::load::{load as load_credential, CredentialInput, SecretInput};
use crate::auth::managed::ManagedEndpoint;
use crate::auth::{Identity, Origin};
use crate::files::{parse_yaml, read_text, YamlError};
use crate::report::{Period, Periods};

/// A config file of some 300 bytes per tenant stays far below this; the cap keeps a wrong
/// path such as /dev/zero from eating memory.
const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

const KEYS: [&str; 14] = [
    "tenant_id",
    "client_id",
    "name",
    "client_secret",
    "client_secret_file",
    "client_certificate_path",
    "client_certificate_password_file",
    "send_certificate_chain",
    "federated_token_file",
    "managed_identity",
    "cloud",
    "authority_host",
    "graph_url",
    "periods",
];

/// The keys that each name a credential; a tenant has exactly one of them.
const CREDENTIAL_KEYS: [&str; 5] = [
    "client_secret",
    "client_secret_file",
    "client_certificate_path",
    "federated_token_file",
    "managed_identity",
];

/// Which tenants of --config.file this replica keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub count: u64,
    pub index: u64,
}

impl Default for Shard {
    fn default() -> Self {
        Shard { count: 1, index: 0 }
    }
}

/// What a tenant of --config.file takes from the flags and the environment when the file
/// leaves it out.
#[derive(Debug, Clone)]
pub struct TenantDefaults {
    pub cloud: Cloud,
    /// AZURE_AUTHORITY_HOST.
    pub authority_host: Option<Url>,
    /// --graph.url.
    pub graph_url: Option<Url>,
    pub periods: Periods,
    /// Where managed_identity tenants get tokens: chosen from the environment as for
    /// `--azure.credential managed-identity`. Err says why there is none, for the tenants
    /// that need one.
    pub managed_identity: Result<ManagedEndpoint, String>,
}

impl TenantDefaults {
    /// The identity platform for a tenant of `cloud` without an authority_host of its own.
    pub fn authority(&self, cloud: Cloud) -> Url {
        self.authority_host
            .clone()
            .unwrap_or_else(|| Url::parse(cloud.authority()).expect("preset URL is valid"))
    }

    /// Graph for a tenant of `cloud` without a graph_url of its own.
    pub fn graph(&self, cloud: Cloud) -> Url {
        self.graph_url
            .clone()
            .unwrap_or_else(|| Url::parse(cloud.graph()).expect("preset URL is valid"))
    }
}

/// One tenant, everything needed to start refreshing it: of --config.file (resolved against
/// the defaults), or the one of the environment or the demo. Two equal tenants on reload mean
/// the running one is kept as it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Tenant {
    /// The `name` label of sfb_tenant_info.
    pub name: Option<String>,
    pub identity: Identity,
    pub authority: Url,
    pub graph: Url,
    pub periods: Periods,
}

impl Tenant {
    /// The one tenant of the environment or of the demo: unnamed, with the --report.periods.
    pub fn single(identity: Identity, authority: Url, graph: Url, periods: Periods) -> Tenant {
        Tenant {
            name: None,
            identity,
            authority,
            graph,
            periods,
        }
    }

    /// Its tenant ID: the `tenant` label, and the key of its token endpoint.
    pub fn id(&self) -> &str {
        &self.identity.tenant_id
    }

    /// Whether `other` is this tenant with at most another name: the name only labels
    /// sfb_tenant_info, so a rename need not restart the tenant.
    pub fn same_but_name(&self, other: &Tenant) -> bool {
        // Destructured so that a new field cannot be forgotten here.
        let Tenant {
            name: _,
            identity,
            authority,
            graph,
            periods,
        } = self;
        *identity == other.identity
            && *authority == other.authority
            && *graph == other.graph
            && *periods == other.periods
    }
}

/// FNV-1a, 64 bits: stable across versions and platforms, and a few lines in any language, so
/// that an operator can tell which replica holds a tenant.
pub(crate) fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes
        .iter()
        .fold(OFFSET, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(PRIME))
}

/// The shard (0 to count-1) that holds `tenant_id`.
pub fn shard_of(tenant_id: &str, count: u64) -> u64 {
    fnv1a64(tenant_id.to_lowercase().as_bytes()) % count.max(1)
}

/// Reads and validates the whole file, then keeps this replica's shard. Duplicates and errors
/// are found across the whole file, so that every replica agrees on whether it loads.
pub(crate) fn load(
    path: &Path,
    defaults: &TenantDefaults,
    shard: Shard,
) -> Result<Vec<Tenant>, String> {
    let text = read_text(path, MAX_FILE_BYTES)
        .map_err(|e| format!("cannot read --config.file {}: {e}", path.display()))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tenants = parse(&text, dir, defaults)
        .map_err(|e| format!("--config.file {}: {e}", path.display()))?;
    Ok(tenants
        .into_iter()
        .filter(|t| shard_of(t.id(), shard.count) == shard.index)
        .collect())
}

/// The file's text to tenants; relative paths are resolved against `dir`.
pub fn parse(text: &str, dir: &Path, defaults: &TenantDefaults) -> Result<Vec<Tenant>, String> {
    // A tenants file nests [ ] and { } three deep at most (a list of tenants, each a mapping
    // with a list of periods).
    let root: Value = parse_yaml(text).map_err(|e| match e {
        YamlError::TooDeep => format!("not a tenants file: {e}"),
        YamlError::Invalid(e) => format!("not valid YAML: {}", one_line(&e)),
    })?;
    let root = match root {
        Value::Mapping(m) => m,
        Value::Null => Mapping::new(),
        _ => return Err("expected a mapping with the key tenants".into()),
    };
    for key in root.keys() {
        if key.as_str() != Some("tenants") {
            return Err(format!(
                "unknown key {}: the file has the one key tenants",
                key_name(key)
            ));
        }
    }
    let entries = match root.get("tenants") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Sequence(s)) => s.clone(),
        Some(_) => return Err("tenants: expected a list of tenants".into()),
    };
    // A file cut short by a write in progress is far likelier than a wish to export nothing,
    // and loading it would stop every tenant.
    if entries.is_empty() {
        return Err(
            "no tenants: list at least one under tenants (an empty list or file is refused)".into(),
        );
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut tenants = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let position = i + 1;
        let tenant = tenant(entry, position, dir, defaults)?;
        if let Some(first) = seen.insert(tenant.id().to_lowercase(), position) {
            return Err(format!(
                "tenant {}: tenant_id: duplicate of tenant #{first}",
                tenant.id()
            ));
        }
        tenants.push(tenant);
    }
    Ok(tenants)
}

/// Reads one tenant entry; errors name it by tenant_id, else by position.
fn tenant(
    entry: &Value,
    position: usize,
    dir: &Path,
    defaults: &TenantDefaults,
) -> Result<Tenant, String> {
    let Value::Mapping(map) = entry else {
        return Err(format!("tenant #{position}: expected a mapping of keys"));
    };
    let mut who = format!("tenant #{position}");
    let fields = Fields { map, who: &who };
    // Checked before it names the tenant in errors: it might hold anything, a newline
    // included.
    let tenant_id = fields.string("tenant_id").and_then(|id| match id {
        Some(id) => match check_tenant_id(&id) {
            Ok(()) => Ok(Some(id)),
            Err(problem) => Err(format!("{who}: tenant_id: {problem}")),
        },
        None => Ok(None),
    });
    if let Ok(Some(id)) = &tenant_id {
        who = format!("tenant {id}");
    }
    let fields = Fields { map, who: &who };
    for key in map.keys() {
        if !key.as_str().is_some_and(|k| KEYS.contains(&k)) {
            return Err(format!(
                "{who}: unknown key {}: allowed keys are {}",
                key_name(key),
                KEYS.join(", ")
            ));
        }
    }
    let tenant_id = tenant_id?.ok_or_else(|| format!("{who}: tenant_id: missing"))?;
    let given: Vec<&str> = CREDENTIAL_KEYS
        .into_iter()
        .filter(|k| map.contains_key(*k))
        .collect();
    let credential = match given.as_slice() {
        [] => {
            return Err(format!(
                "{who}: credential: missing; give exactly one of {}",
                CREDENTIAL_KEYS.join(", ")
            ))
        }
        [one] => *one,
        several => {
            return Err(format!(
                "{who}: {}: several credentials; give exactly one",
                several.join(", ")
            ))
        }
    };
    let path = |key: &str| -> Result<Option<PathBuf>, String> {
        Ok(fields.string(key)?.map(|p| dir.join(p)))
    };
    for key in ["client_certificate_password_file", "send_certificate_chain"] {
        if map.contains_key(key) && credential != "client_certificate_path" {
            return Err(format!(
                "{who}: {key}: only goes with client_certificate_path"
            ));
        }
    }
    let input = match credential {
        "client_secret" => CredentialInput::Secret {
            secret: Some(SecretInput::Value(SecretString::from(
                fields.required("client_secret")?,
            ))),
        },
        "client_secret_file" => CredentialInput::Secret {
            secret: Some(SecretInput::File(
                path("client_secret_file")?.unwrap_or_default(),
            )),
        },
        "client_certificate_path" => CredentialInput::Certificate {
            password: path("client_certificate_password_file")?.map(SecretInput::File),
            path: Some(path("client_certificate_path")?.unwrap_or_default()),
            send_chain: fields.boolean("send_certificate_chain")?.unwrap_or(false),
        },
        "federated_token_file" => CredentialInput::WorkloadIdentity {
            token_file: Some(path("federated_token_file")?.unwrap_or_default()),
        },
        _ => match fields.boolean("managed_identity")? {
            Some(true) => CredentialInput::ManagedIdentity {
                endpoint: defaults
                    .managed_identity
                    .clone()
                    .map_err(|e| format!("{who}: managed_identity: {e}"))?,
            },
            _ => {
                return Err(format!(
                    "{who}: managed_identity: only true is meaningful; remove the key otherwise"
                ))
            }
        },
    };
    // The first problem, named by the tenant and the key that gave it.
    let client_id = fields.string("client_id")?;
    let credential = load_credential(input, client_id.as_deref(), Origin::File)
        .map_err(|problems| format!("{who}: {}", problems[0]))?;
    let cloud = match fields.string("cloud")? {
        None => defaults.cloud,
        Some(c) => <Cloud as clap::ValueEnum>::from_str(&c, true).map_err(|_| {
            format!("{who}: cloud: unknown cloud {c:?}: allowed values are global, china, usgov, usgov-dod")
        })?,
    };
    let url = |key: &str| -> Result<Option<Url>, String> {
        fields
            .string(key)?
            .map(|u| parse_base_url(&u).map_err(|e| format!("{who}: {key}: {e}")))
            .transpose()
    };
    let authority = url("authority_host")?.unwrap_or_else(|| defaults.authority(cloud));
    let graph = url("graph_url")?.unwrap_or_else(|| defaults.graph(cloud));
    let periods = match map.get("periods") {
        None | Some(Value::Null) => defaults.periods.clone(),
        Some(Value::Sequence(list)) => {
            let periods = list
                .iter()
                .map(|p| match p {
                    Value::String(s) => Period::from_str(s),
                    other => Err(format!("unknown period {}", key_name(other))),
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("{who}: periods: {e}"))?;
            Periods::new(periods).ok_or_else(|| {
                format!("{who}: periods: empty; list some of D7, D30, D90, D180 or remove the key")
            })?
        }
        Some(_) => return Err(format!("{who}: periods: expected a list such as [D7, D30]")),
    };
    Ok(Tenant {
        name: fields.string("name")?,
        identity: Identity {
            tenant_id,
            credential,
            origin: Origin::File,
        },
        authority,
        graph,
        periods,
    })
}

struct Fields<'a> {
    map: &'a Mapping,
    who: &'a str,
}

impl Fields<'_> {
    /// A non-empty string, trimmed; numbers are refused rather than guessed at.
    fn string(&self, key: &str) -> Result<Option<String>, String> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.trim().to_string())),
            Some(Value::String(_)) => Err(format!("{}: {key}: empty", self.who)),
            Some(_) => Err(format!("{}: {key}: expected a string (quote it)", self.who)),
        }
    }

    fn required(&self, key: &str) -> Result<String, String> {
        self.string(key)?
            .ok_or_else(|| format!("{}: {key}: empty", self.who))
    }

    fn boolean(&self, key: &str) -> Result<Option<bool>, String> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(format!("{}: {key}: expected true or false", self.who)),
        }
    }
}

fn key_name(value: &Value) -> String {
    match value {
        Value::String(s) => one_line(&format!("{s:?}")),
        // A mapping or a list as a key renders on several lines.
        other => serde_norway::to_string(other)
            .map(|s| one_line(&s))
            .unwrap_or_else(|_| "?".into()),
    }
}

fn one_line(e: &impl std::fmt::Display) -> String {
    crate::text::one_line(&e.to_string(), 300)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Credential;

    fn defaults() -> TenantDefaults {
        TenantDefaults {
            cloud: Cloud::Global,
            authority_host: None,
            graph_url: None,
            periods: Periods::new([Period::D7, Period::D30]).unwrap(),
            managed_identity: Ok(ManagedEndpoint::Imds {
                host: Url::parse("http://127.0.0.1:9").unwrap(),
            }),
        }
    }

    fn parse_ok(text: &str) -> Vec<Tenant> {
        parse(text, Path::new("/etc/sfb"), &defaults()).unwrap()
    }

    fn parse_err(text: &str) -> String {
        let e = parse(text, Path::new("/etc/sfb"), &defaults()).unwrap_err();
        assert_eq!(e.lines().count(), 1, "{e}");
        e
    }

    #[test]
    fn full_entry_and_defaults() {
        let specs = parse_ok(
            "tenants:
  - tenant_id: aaaa
    client_id: c1
    name: Contoso
    client_secret: s1
    cloud: china
    periods: [d90, D7]
  - tenant_id: bbbb
    client_id: c2
    client_secret: s2
    graph_url: http://127.0.0.1:1
",
        );
        assert_eq!(specs.len(), 2);
        let a = &specs[0];
        assert_eq!(a.name.as_deref(), Some("Contoso"));
        assert_eq!(a.authority.host_str(), Some("login.chinacloudapi.cn"));
        assert_eq!(a.graph.host_str(), Some("microsoftgraph.chinacloudapi.cn"));
        assert_eq!(
            a.periods.iter().collect::<Vec<_>>(),
            [Period::D7, Period::D90]
        );
        assert!(!format!("{a:?}").contains("s1\""), "{a:?}");
        let b = &specs[1];
        assert_eq!(b.periods, defaults().periods);
        assert_eq!(b.graph.as_str(), "http://127.0.0.1:1/");
    }

    #[test]
    fn a_file_without_tenants_is_refused() {
        for text in [
            "",
            "\n# cut short\n",
            "tenants:",
            "tenants: []",
            "tenants: ~\n",
        ] {
            let e = parse_err(text);
            assert!(
                e.starts_with("no tenants: list at least one"),
                "{text:?}: {e}"
            );
        }
    }

    #[test]
    fn errors_name_tenant_and_key() {
        let cases = [
            (
                "tenants:\n  - tenant_id: t1\n    client_id: c\n    client_secret: s\n    colour: red\n",
                &["tenant t1", "unknown key \"colour\""][..],
            ),
            (
                "tenants:\n  - {tenant_id: t1, client_id: c, client_secret: s}\n  - {tenant_id: T1, client_id: c, client_secret: s}\n",
                &["tenant T1", "tenant_id: duplicate of tenant #1"],
            ),
            (
                "tenants:\n  - {tenant_id: t1, client_id: c}\n",
                &["tenant t1", "credential: missing"],
            ),
            (
                "tenants:\n  - {tenant_id: t1, client_id: c, client_secret: s, managed_identity: true}\n",
                &["tenant t1", "client_secret, managed_identity: several credentials"],
            ),
            (
                "tenants:\n  - {tenant_id: t1, client_secret: s}\n",
                &["tenant t1", "client_id: missing"],
            ),
            (
                "tenants:\n  - {tenant_id: t1, client_id: c, client_secret: s, periods: [D7, D14]}\n",
                &["tenant t1", "periods:", "D14"],
            ),
            (
                "tenants:\n  - {client_id: c, client_secret: s}\n",
                &["tenant #1", "tenant_id: missing"],
            ),
            (
                "tenants:\n  - {tenant_id: t1, client_id: c, client_secret_file: nope/missing}\n",
                &["tenant t1", "client_secret_file", "/etc/sfb/nope/missing"],
            ),
            (
                "tenants:\n  - {tenant_id: t1, client_id: c, client_certificate_path: certs/missing.pem}\n",
                &["tenant t1", "client_certificate_path", "/etc/sfb/certs/missing.pem"],
            ),
            (
                "tenants:\n  - {tenant_id: t1, client_id: c, client_secret: s, send_certificate_chain: true}\n",
                &["tenant t1", "send_certificate_chain: only goes with client_certificate_path"],
            ),
            (
                "tenants:\n  - {tenant_id: t1, client_id: c, client_secret: s, cloud: mars}\n",
                &["tenant t1", "cloud:", "mars"],
            ),
            ("tenant: []\n", &["unknown key \"tenant\""]),
            ("tenants: [\n", &["not valid YAML"]),
        ];
        for (text, needles) in cases {
            let e = parse_err(text);
            for needle in needles {
                assert!(e.contains(needle), "{needle:?} not in {e:?}");
            }
            assert!(!e.contains(": s,") && !e.contains("\"s\""), "{e}");
        }
    }

    #[test]
    fn credential_file_errors_name_the_key_and_path_not_the_environment() {
        let cases = [
            (
                "tenants:\n  - {tenant_id: t1, client_id: c, client_certificate_path: certs/missing.pem}\n",
                "tenant t1: client_certificate_path /etc/sfb/certs/missing.pem: cannot read the file: ",
            ),
            (
                "tenants:\n  - {tenant_id: t1, client_id: c, federated_token_file: token/missing}\n",
                "tenant t1: cannot read federated_token_file /etc/sfb/token/missing: ",
            ),
        ];
        for (text, start) in cases {
            let e = parse_err(text);
            assert!(e.starts_with(start), "{e}");
            assert!(!e.contains("AZURE_"), "{e}");
        }
        // A PKCS#12 file without its password points at the file's key for it.
        let dir = tempfile::tempdir().unwrap();
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/identity");
        std::fs::copy(fixtures.join("aes.p12"), dir.path().join("c.p12")).unwrap();
        let text = "tenants:\n  - {tenant_id: t1, client_id: c, client_certificate_path: c.p12}\n";
        let e = parse(text, dir.path(), &defaults()).unwrap_err();
        assert!(
            e.ends_with("needs a password: set client_certificate_password_file"),
            "{e}"
        );
    }

    /// A certificate file (the fixture's key `key`, self-signed as `subject`) in PEM.
    fn certificate_pem(key: &str, subject: &str) -> String {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/identity");
        let key_pem = std::fs::read_to_string(dir.join(key)).unwrap();
        let key = rcgen::KeyPair::from_pem(&key_pem).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, subject);
        format!("{}{key_pem}", params.self_signed(&key).unwrap().pem())
    }

    #[test]
    fn a_certificate_rotated_in_place_changes_the_tenant() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tenant.pem");
        let text =
            "tenants:\n  - {tenant_id: t1, client_id: c, client_certificate_path: tenant.pem}\n";
        let load = || parse(text, dir.path(), &defaults()).unwrap();
        let first = certificate_pem("rsa-a.pkcs8.pem", "first");
        std::fs::write(&file, &first).unwrap();
        let before = load();
        // The same certificate and key rewritten in another order: nothing to restart.
        let (cert, key) = first.split_at(first.find("-----BEGIN PRIVATE KEY").unwrap());
        std::fs::write(&file, format!("{key}{cert}")).unwrap();
        assert_eq!(load(), before);
        // A Kubernetes Secret update swaps the file's content under the same path.
        std::fs::write(&file, certificate_pem("rsa-b.pkcs8.pem", "second")).unwrap();
        assert_ne!(
            load(),
            before,
            "the rotated certificate would never be used"
        );
    }

    #[test]
    fn fifos_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        crate::files::make_fifo(&fifo);
        let config = fifo.clone();
        let e = crate::files::without_blocking(move || {
            load(&config, &defaults(), Shard::default()).unwrap_err()
        });
        assert!(
            e.contains("--config.file") && e.contains("not a regular file"),
            "{e}"
        );
        let text = "tenants:\n  - {tenant_id: t1, client_id: c, client_secret_file: fifo}\n";
        let dir = dir.path().to_path_buf();
        let e = crate::files::without_blocking(move || parse(text, &dir, &defaults()).unwrap_err());
        assert!(
            e.contains("client_secret_file") && e.contains("not a regular file"),
            "{e}"
        );
    }

    #[test]
    fn hostile_files_fail_fast_on_one_line() {
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let p = i - 1;
            let refs = vec![format!("*a{p}"); 10].join(", ");
            bomb.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        bomb.push_str("tenants: *a11\n");
        // Parsed as it is, this one takes minutes.
        let deep = format!("tenants: {}{}", "[".repeat(100_000), "]".repeat(100_000));
        let cases = [
            (bomb.as_str(), "not valid YAML"),
            (&deep, "nested more than 32 deep"),
            (
                "tenants:\n  - {tenant_id: t1, client_id: c, client_id: d, client_secret: s}\n",
                "duplicate entry with key \"client_id\"",
            ),
            ("tenants: []\ntenants: []\n", "duplicate entry"),
            (
                "tenants:\n  - {tenant_id: \"a\\\"b\\nc\", client_id: c, client_secret: s}\n",
                "tenant #1: tenant_id: expected a directory ID",
            ),
            (
                &format!(
                    "tenants:\n  - {{tenant_id: {}, client_secret: s}}\n",
                    "a".repeat(254)
                ),
                "tenant #1: tenant_id: longer than the 253 characters",
            ),
            ("tenants:\n  - {? [a, b] : 1}\n", "unknown key - a - b"),
        ];
        for (text, needle) in cases {
            let e = parse_err(text);
            assert!(e.contains(needle), "{needle:?} not in {e:?}");
        }
    }

    #[test]
    fn tenant_ids_are_checked_as_the_environment_checks_them() {
        for bad in crate::config::tests::BAD_TENANT_IDS {
            // A JSON string is a YAML double-quoted scalar, escapes included.
            let quoted = serde_json::to_string(bad).unwrap();
            let e = parse_err(&format!(
                "tenants:\n  - {{tenant_id: {quoted}, client_id: c, client_secret: s}}\n"
            ));
            assert!(e.starts_with("tenant #1: tenant_id: "), "{bad:?}: {e}");
        }
        let specs = parse_ok(
            "tenants:
  - {tenant_id: contoso.onmicrosoft.com, client_id: c, client_secret: s}
  - {tenant_id: 00000000-0000-0000-0000-000000000000, client_id: c, client_secret: s}
",
        );
        assert_eq!(specs[0].id(), "contoso.onmicrosoft.com");
        assert_eq!(specs[1].id(), "00000000-0000-0000-0000-000000000000");
    }

    /// The managed identity endpoint a managed_identity tenant of --config.file gets.
    fn file_managed_endpoint(vars: &[(&str, &str)]) -> Result<String, String> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tenants.yml");
        std::fs::write(
            &file,
            "tenants:\n  - {tenant_id: t1, managed_identity: true}\n",
        )
        .unwrap();
        let args = |a: &[&str]| {
            <crate::config::Args as clap::Parser>::try_parse_from(
                std::iter::once("sfb-exporter").chain(a.iter().copied()),
            )
        };
        let env = |vars: &[(&str, &str)]| {
            let vars: Vec<(String, String)> = vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            move |name: &str| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        };
        let config = crate::config::Config::check(
            args(&["--config.file", file.to_str().unwrap()]).unwrap(),
            env(vars),
        )
        .map_err(|p| p[0].to_string())?;
        let crate::config::Source::File { path, defaults } = &config.source else {
            panic!("expected the file source")
        };
        let specs = load(path, defaults, Shard::default())?;
        match &specs[0].identity.credential {
            Credential::ManagedIdentity { endpoint, .. } => Ok(endpoint.describe()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn file_tenants_choose_the_managed_identity_endpoint_as_the_environment_does() {
        let app_service = [
            ("IDENTITY_ENDPOINT", "http://127.0.0.1:6/msi/token"),
            ("IDENTITY_HEADER", "h"),
        ];
        assert_eq!(
            file_managed_endpoint(&app_service).unwrap(),
            "App Service IDENTITY_ENDPOINT http://127.0.0.1:6/msi/token"
        );
        let pod_identity = [("AZURE_POD_IDENTITY_AUTHORITY_HOST", "http://127.0.0.1:5")];
        assert_eq!(
            file_managed_endpoint(&pod_identity).unwrap(),
            "IMDS http://127.0.0.1:5/metadata/identity/oauth2/token"
        );
        // An endpoint without its header fails the tenant that needs it, naming both.
        let e = file_managed_endpoint(&app_service[..1]).unwrap_err();
        assert!(
            e.contains("tenant t1: managed_identity:") && e.contains("IDENTITY_HEADER"),
            "{e}"
        );
        assert_eq!(e.lines().count(), 1, "{e}");
    }

    #[test]
    fn managed_identity_needs_no_client_id() {
        let specs = parse_ok("tenants:\n  - {tenant_id: t1, managed_identity: true}\n");
        assert!(
            matches!(
                specs[0].identity.credential,
                Credential::ManagedIdentity {
                    client_id: None,
                    ..
                }
            ),
            "{specs:?}"
        );
    }

    /// The identity platform refuses the secret as a secret ID: the tenant is sent to its key
    /// in the file, not to the environment's variable.
    #[tokio::test]
    async fn a_refused_secret_names_the_tenants_key_in_the_file() {
        let platform = wiremock::MockServer::start().await;
        wiremock::Mock::given(wiremock::matchers::method("POST"))
            .respond_with(
                wiremock::ResponseTemplate::new(401).set_body_json(serde_json::json!({
                    "error": "invalid_client",
                    "error_description": "AADSTS7000215: Invalid client secret provided.",
                    "error_codes": [7000215],
                })),
            )
            .mount(&platform)
            .await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), "the-secret-id\n").unwrap();
        let text = "tenants:\n  - {tenant_id: t1, client_id: c, client_secret_file: secret}\n";
        let mut tenants = parse(text, dir.path(), &defaults()).unwrap();
        let tenant = tenants.remove(0);
        let url = Url::parse(&platform.uri()).unwrap();
        let limits = crate::http::Limits {
            timeout: std::time::Duration::from_secs(30),
            max_body_bytes: 1024,
            in_flight: None,
            requests: Default::default(),
        };
        let tokens = crate::auth::TokenSource::new(
            crate::http::test_client(),
            &url,
            &url,
            tenant.identity,
            limits,
        );
        let e = tokens.token().await.unwrap_err().to_string();
        assert!(
            e.contains("invalid client secret: set client_secret (or the content of client_secret_file) of tenant t1 in --config.file to the secret's value, not its ID"),
            "{e}"
        );
        assert!(!e.contains("AZURE_"), "{e}");
    }

    #[test]
    fn fnv1a64_reference_values() {
        // Published test vectors of FNV-1a 64.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(
            shard_of("ABC-def", 7),
            shard_of("abc-DEF", 7),
            "case does not matter"
        );
    }

    #[test]
    fn shards_partition_the_tenants() {
        let ids: Vec<String> = (0..200).map(|i| format!("tenant-{i}")).collect();
        let mut counts = [0; 3];
        for id in &ids {
            counts[shard_of(id, 3) as usize] += 1;
        }
        assert_eq!(counts.iter().sum::<i32>(), 200);
        assert!(counts.iter().all(|&c| c > 40), "{counts:?}");
    }
}
