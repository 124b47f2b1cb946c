//! The exporter's own process_* series, as client_golang and node_exporter expose them: read
//! from /proc/self at scrape time, at most once a second, and appended to the pre-rendered
//! body. The gzip body is not compressed again: the series are compressed alone and joined to
//! the publisher's deflate stream as part of its one gzip member (see [`crate::exposition::gzip`]); a
//! second gzip member would be cheaper to build, but curl --compressed and zlib users read
//! only the first member and would never see the process series. Each encoding is built when
//! first asked for, at most once per snapshot and second, so that Prometheus' gzip scrapes
//! never copy the plain body.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::{Bytes, BytesMut};

use crate::exposition::publisher::Published;
use crate::exposition::writer::{Family, Format, Kind};

/// How long one reading of /proc/self is served.
const FRESH_FOR: Duration = Duration::from_secs(1);

/// The soft limit on open file descriptors, None when unlimited or unknown.
pub(crate) fn open_files_limit() -> Option<usize> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given and nothing else.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    (ok && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur as usize)
}

/// One reading of the process series for one snapshot, served for a second.
struct Served {
    at: Instant,
    published: Arc<Published>,
    text: String,
    plain: OnceLock<Bytes>,
    gzip: OnceLock<Bytes>,
}

impl Served {
    fn plain(&self) -> Bytes {
        self.plain
            .get_or_init(|| concat(&self.published.metrics, self.text.as_bytes()))
            .clone()
    }

    fn gzip(&self) -> Bytes {
        self.gzip
            .get_or_init(|| self.published.metrics_gzip.append(self.text.as_bytes()))
            .clone()
    }
}

pub(crate) struct ProcessMetrics {
    start_time: Option<f64>,
    ticks_per_second: f64,
    page_size: f64,
    served: ArcSwapOption<Served>,
}

impl Default for ProcessMetrics {
    fn default() -> Self {
        ProcessMetrics::new()
    }
}

impl ProcessMetrics {
    pub(crate) fn new() -> ProcessMetrics {
        // SAFETY: sysconf only reads configuration values.
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        let ticks_per_second = if ticks > 0 { ticks as f64 } else { 100.0 };
        let start_time = start_time(ticks_per_second);
        ProcessMetrics {
            start_time,
            ticks_per_second,
            page_size: if page > 0 { page as f64 } else { 4096.0 },
            served: ArcSwapOption::empty(),
        }
    }

    /// `published`'s body with the process series appended: gzip-compressed, or plain.
    pub(crate) fn body(&self, published: &Arc<Published>, gzip: bool) -> Bytes {
        let served = self.served(published);
        if gzip {
            served.gzip()
        } else {
            served.plain()
        }
    }

    fn served(&self, published: &Arc<Published>) -> Arc<Served> {
        if let Some(served) = self.served.load_full() {
            if served.at.elapsed() < FRESH_FOR && Arc::ptr_eq(&served.published, published) {
                return served;
            }
        }
        let served = Arc::new(Served {
            at: Instant::now(),
            published: Arc::clone(published),
            text: self.render(),
            plain: OnceLock::new(),
            gzip: OnceLock::new(),
        });
        self.served.store(Some(Arc::clone(&served)));
        served
    }

    /// The process_* families in the text format; a value that cannot be read is left out.
    pub(crate) fn render(&self) -> String {
        let stat = std::fs::read_to_string("/proc/self/stat").ok();
        let fields: Vec<&str> = stat
            .as_deref()
            // The command name, in parentheses, may hold spaces: fields count from after it.
            .and_then(|s| s.rsplit_once(')'))
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        // Field N of proc(5) is fields[N - 3].
        let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
        let cpu = field(14)
            .zip(field(15))
            .map(|(user, system)| (user + system) / self.ticks_per_second);
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| d.count() as f64);
        let families = [
            (
                "process_cpu_seconds_total",
                "Total user and system CPU time spent in seconds.",
                Kind::Counter,
                cpu,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors.",
                Kind::Gauge,
                open_files_limit().map(|n| n as f64),
            ),
            (
                "process_open_fds",
                "Number of open file descriptors.",
                Kind::Gauge,
                open_fds,
            ),
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                Kind::Gauge,
                field(24).map(|pages| pages * self.page_size),
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                Kind::Gauge,
                self.start_time,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                Kind::Gauge,
                field(23),
            ),
        ];
        let mut out = String::with_capacity(1024);
        for (name, help, kind, value) in families {
            if let Some(value) = value {
                let mut family = Family::new(Format::Text, name, help, kind);
                family.sample(&[], value);
                family.write_to(&mut out);
            }
        }
        out
    }
}

/// Boot time plus the process's start in clock ticks after it.
fn start_time(ticks_per_second: f64) -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let boot: f64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let own = std::fs::read_to_string("/proc/self/stat").ok()?;
    let started: f64 = own
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(22 - 3)?
        .parse()
        .ok()?;
    Some(boot + started / ticks_per_second)
}

fn concat(a: &[u8], b: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(a.len() + b.len());
    out.extend_from_slice(a);
    out.extend_from_slice(b);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::State;
    use std::io::Read;

    fn sample(text: &str, name: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from\n{text}"))
    }

    #[test]
    fn reads_this_process() {
        let text = ProcessMetrics::new().render();
        assert!(
            sample(&text, "process_resident_memory_bytes") > 1e6,
            "{text}"
        );
        assert!(
            sample(&text, "process_virtual_memory_bytes")
                >= sample(&text, "process_resident_memory_bytes")
        );
        assert!(sample(&text, "process_open_fds") >= 3.0);
        assert!(sample(&text, "process_max_fds") >= sample(&text, "process_open_fds"));
        assert!(sample(&text, "process_cpu_seconds_total") >= 0.0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let started = sample(&text, "process_start_time_seconds");
        assert!(
            started <= now + 1.0 && started > now - 86_400.0,
            "{started}"
        );
    }

    #[test]
    fn appended_to_both_bodies_and_cached_for_a_second() {
        let process = ProcessMetrics::new();
        let published = Arc::new(Published::new(State::new("t", []), "x 1\n".into()));
        let asked = Instant::now();
        // One reading, both encodings of it.
        let served = process.served(&published);
        let (gzip, plain) = (served.gzip(), served.plain());
        let plain = String::from_utf8(plain.to_vec()).unwrap();
        assert!(
            plain.starts_with("x 1\n# HELP process_cpu_seconds_total"),
            "{plain}"
        );
        let mut unzipped = String::new();
        flate2::read::GzDecoder::new(&gzip[..])
            .read_to_string(&mut unzipped)
            .unwrap();
        assert_eq!(unzipped, plain, "one gzip member, the whole body");
        let again = process.body(&published, false);
        if asked.elapsed() < FRESH_FOR / 2 {
            assert_eq!(again, plain.as_bytes(), "the same reading within a second");
        }
        let newer = Arc::new(Published::new(State::new("t", []), "x 2\n".into()));
        assert!(process.body(&newer, false).starts_with(b"x 2\n"));
    }
}
