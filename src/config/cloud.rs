//! The Microsoft clouds and what names places in them: identity platform and Graph hosts,
//! base URLs, tenant IDs.

use clap::ValueEnum;
use url::Url;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Cloud {
    Global,
    China,
    /// US Government L4 (GCC High).
    Usgov,
    /// US Government L5 (DoD).
    UsgovDod,
}

impl Cloud {
    pub fn authority(self) -> &'static str {
        match self {
            Cloud::Global => "https://login.microsoftonline.com",
            Cloud::China => "https://login.chinacloudapi.cn",
            Cloud::Usgov | Cloud::UsgovDod => "https://login.microsoftonline.us",
        }
    }

    pub fn graph(self) -> &'static str {
        match self {
            Cloud::Global => "https://graph.microsoft.com",
            Cloud::China => "https://microsoftgraph.chinacloudapi.cn",
            Cloud::Usgov => "https://graph.microsoft.us",
            Cloud::UsgovDod => "https://dod-graph.microsoft.us",
        }
    }
}
pub(crate) fn parse_base_url(s: &str) -> Result<Url, String> {
    let url = Url::parse(s).map_err(|e| format!("invalid URL {s:?}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!("invalid URL {s:?}: expected http(s)://host[:port]"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "invalid URL {s:?}: a base URL takes no query or fragment"
        ));
    }
    Ok(url)
}

/// The longest domain name DNS carries, and so the longest tenant ID.
const MAX_DOMAIN_NAME: usize = 253;
const MAX_DOMAIN_LABEL: usize = 63;

/// The sign-in aliases of the identity platform: they name no tenant, and a token for the
/// client credentials grant needs one.
const TENANT_ALIASES: [&str; 3] = ["common", "organizations", "consumers"];

/// Checks a tenant ID, from AZURE_TENANT_ID or a `tenant_id` of --config.file, before it goes
/// into the token URL's path, the `tenant` label and log lines as it is. The identity
/// platform takes a directory ID (a GUID, which is itself one DNS label) or a domain name of
/// the tenant, so anything that is not a DNS name is refused: a dot segment (`..`) would
/// resolve out of the URL, and `?`, `#`, `/` or a newline would change what it names.
/// The problem is returned without the value: a value in the wrong variable may be a secret.
pub(crate) fn check_tenant_id(id: &str) -> Result<(), &'static str> {
    const EXPECTED: &str = "expected a directory ID (GUID) or a domain name such as contoso.onmicrosoft.com (letters, digits and hyphens in dot-separated labels)";
    if id.len() > MAX_DOMAIN_NAME {
        return Err("longer than the 253 characters of a domain name: expected a directory ID (GUID) or a domain name such as contoso.onmicrosoft.com");
    }
    let label = |l: &str| {
        (1..=MAX_DOMAIN_LABEL).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if !id.split('.').all(label) {
        return Err(EXPECTED);
    }
    // 10.0.0.1 has the shape of a domain name, but no top-level domain is all digits.
    let top = id.rsplit('.').next().unwrap_or_default();
    if top.bytes().all(|b| b.is_ascii_digit()) {
        return Err(EXPECTED);
    }
    if TENANT_ALIASES
        .iter()
        .any(|alias| id.eq_ignore_ascii_case(alias))
    {
        return Err("common, organizations and consumers name no tenant, and client credentials need one: give the directory ID (GUID) or a domain name of the tenant");
    }
    Ok(())
}
