//! Name resolution for the HTTP client: the hosts file first, then DNS.
//!
//! hickory's resolver, as reqwest sets it up, asks for A and AAAA at once and takes the hosts
//! file's answer for each record type on its own: a name that /etc/hosts maps to an IPv4
//! address alone still waits for its AAAA query, which with no reachable DNS server takes
//! about 30 s to time out. Here an answer from the hosts file is final, as it is for the
//! system resolver (glibc's `files` source), and DNS is asked only for names it does not know.

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use hickory_resolver::config::{LookupIpStrategy, ResolveHosts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::op::Query;
use hickory_resolver::proto::rr::RecordType;
use hickory_resolver::{Hosts, ResolveError, ResolverBuilder, TokioResolver};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

type BuildDns =
    Box<dyn Fn() -> Result<ResolverBuilder<TokioConnectionProvider>, ResolveError> + Send + Sync>;

/// A [`reqwest::dns::Resolve`] that answers from a hosts file, else from DNS.
#[derive(Clone)]
pub(crate) struct Resolver(Arc<Inner>);

struct Inner {
    hosts: Hosts,
    /// Built at the first name the hosts file does not know, as reqwest's own resolver is:
    /// a missing /etc/resolv.conf then fails those lookups, not the start of the exporter.
    dns: OnceLock<TokioResolver>,
    build_dns: BuildDns,
}

impl Resolver {
    /// The system's: /etc/hosts, read now (a missing file is an empty one), and the DNS
    /// servers of /etc/resolv.conf.
    pub(crate) fn system() -> Resolver {
        let hosts = Hosts::from_system().unwrap_or_else(|e| {
            tracing::debug!("no hosts file to resolve names from: {e}");
            Hosts::default()
        });
        Resolver::new(hosts, Box::new(TokioResolver::builder_tokio))
    }

    /// `hosts`, then the DNS resolver `build_dns` makes, its options set here.
    fn new(hosts: Hosts, build_dns: BuildDns) -> Resolver {
        Resolver(Arc::new(Inner {
            hosts,
            dns: OnceLock::new(),
            build_dns,
        }))
    }
}

impl Inner {
    /// Every address the hosts file has for `name`, of both families; None when it has none.
    fn hosts_answer(&self, name: &str) -> Option<Vec<SocketAddr>> {
        let name = hickory_resolver::Name::from_str(&name.to_ascii_lowercase()).ok()?;
        let addrs: Vec<SocketAddr> = [RecordType::A, RecordType::AAAA]
            .into_iter()
            .filter_map(|kind| {
                self.hosts
                    .lookup_static_host(&Query::query(name.clone(), kind))
            })
            .flat_map(|lookup| {
                lookup
                    .iter()
                    .filter_map(|data| data.ip_addr())
                    .collect::<Vec<_>>()
            })
            .map(|ip| SocketAddr::new(ip, 0))
            .collect();
        (!addrs.is_empty()).then_some(addrs)
    }

    fn dns(&self) -> Result<&TokioResolver, ResolveError> {
        if let Some(dns) = self.dns.get() {
            return Ok(dns);
        }
        let mut builder = (self.build_dns)()?;
        let options = builder.options_mut();
        // The hosts file has been asked already.
        options.use_hosts_file = ResolveHosts::Never;
        // Both families, for the connector's happy eyeballs, as reqwest sets it.
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        // Of two first lookups at once, one resolver is kept; the other is dropped unused.
        Ok(self.dns.get_or_init(|| builder.build()))
    }
}

impl Resolve for Resolver {
    fn resolve(&self, name: Name) -> Resolving {
        let inner = Arc::clone(&self.0);
        Box::pin(async move {
            if let Some(addrs) = inner.hosts_answer(name.as_str()) {
                return Ok(Box::new(addrs.into_iter()) as Addrs);
            }
            let lookup = inner.dns()?.lookup_ip(name.as_str()).await?;
            let addrs: Vec<SocketAddr> = lookup.iter().map(|ip| SocketAddr::new(ip, 0)).collect();
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_resolver::config::{NameServerConfig, ResolverConfig};
    use hickory_resolver::proto::xfer::Protocol;
    use std::time::Duration;
    use tokio::time::Instant;

    /// A DNS server on loopback that never answers; what it is asked arrives on the channel.
    fn silent_nameserver() -> (SocketAddr, std::sync::mpsc::Receiver<Vec<u8>>) {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while let Ok((n, _)) = socket.recv_from(&mut buf) {
                if tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        (addr, rx)
    }

    async fn resolve(resolver: &Resolver, name: &str) -> Result<Vec<SocketAddr>, String> {
        let name = Name::from_str(name).unwrap();
        match resolver.resolve(name).await {
            Ok(addrs) => Ok(addrs.collect()),
            Err(e) => Err(e.to_string()),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_name_in_the_hosts_file_is_answered_without_waiting_for_dns() {
        let (nameserver, asked) = silent_nameserver();
        let mut hosts = Hosts::default();
        hosts
            .read_hosts_conf(
                "127.0.0.1 graph.test login.test\n::1 v6.test\n10.0.0.9 both.test\n::2 both.test\n"
                    .as_bytes(),
            )
            .unwrap();
        let resolver = Resolver::new(
            hosts,
            Box::new(move || {
                let config = ResolverConfig::from_parts(
                    None,
                    vec![],
                    vec![NameServerConfig::new(nameserver, Protocol::Udp)],
                );
                Ok(TokioResolver::builder_with_config(
                    config,
                    TokioConnectionProvider::default(),
                ))
            }),
        );
        let start = Instant::now();
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            resolve(&resolver, "graph.test").await,
            Ok(vec![addr("127.0.0.1:0")])
        );
        assert_eq!(
            resolve(&resolver, "LOGIN.test").await,
            Ok(vec![addr("127.0.0.1:0")])
        );
        assert_eq!(
            resolve(&resolver, "v6.test").await,
            Ok(vec![addr("[::1]:0")])
        );
        assert_eq!(
            resolve(&resolver, "both.test").await,
            Ok(vec![addr("10.0.0.9:0"), addr("[::2]:0")])
        );
        // On the paused clock: not one DNS timeout was waited for.
        assert_eq!(Instant::now(), start);

        // A name the hosts file does not know goes to DNS and times out there; the first
        // query the server saw is for it, so none went out for the names above.
        assert!(resolve(&resolver, "other.test").await.is_err());
        assert!(Instant::now() - start >= Duration::from_secs(1));
        let first = asked.recv_timeout(Duration::from_secs(30)).unwrap();
        assert!(
            first.windows(11).any(|w| w == b"\x05other\x04test"),
            "{first:?}"
        );
    }
}
