//! The exporter's own process_* series, as client_golang and node_exporter expose them: read
//! from /proc/self at scrape time, at most once a second, and appended to the pre-rendered
//! body. The gzip body is compressed again with them, once a second at most (some 100 µs):
//! appending a second gzip member would be cheaper still, but curl --compressed and zlib
//! users read only the first member and would never see the process series.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::{Bytes, BytesMut};

use crate::state::{gzip, Published};

/// How long one reading of /proc/self is served.
const FRESH_FOR: Duration = Duration::from_secs(1);

/// The soft limit on open file descriptors, None when unlimited or unknown.
pub fn open_files_limit() -> Option<usize> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given and nothing else.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    (ok && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur as usize)
}

/// The bodies of one snapshot with the process series appended, for a second.
struct Served {
    at: Instant,
    published: Arc<Published>,
    plain: Bytes,
    gzip: Bytes,
}

pub struct ProcessMetrics {
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
    pub fn new() -> ProcessMetrics {
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

    /// `published`'s plain and gzip bodies with the process series appended.
    pub fn bodies(&self, published: &Arc<Published>) -> (Bytes, Bytes) {
        if let Some(served) = self.served.load().as_ref() {
            if served.at.elapsed() < FRESH_FOR && Arc::ptr_eq(&served.published, published) {
                return (served.plain.clone(), served.gzip.clone());
            }
        }
        let text = self.render();
        let plain = concat(&published.metrics, text.as_bytes());
        let served = Served {
            at: Instant::now(),
            published: Arc::clone(published),
            gzip: gzip(&plain),
            plain,
        };
        let bodies = (served.plain.clone(), served.gzip.clone());
        self.served.store(Some(Arc::new(served)));
        bodies
    }

    /// The process_* families in the text format; a value that cannot be read is left out.
    pub fn render(&self) -> String {
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
                "counter",
                cpu,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors.",
                "gauge",
                open_files_limit().map(|n| n as f64),
            ),
            (
                "process_open_fds",
                "Number of open file descriptors.",
                "gauge",
                open_fds,
            ),
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                "gauge",
                field(24).map(|pages| pages * self.page_size),
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                "gauge",
                self.start_time,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                "gauge",
                field(23),
            ),
        ];
        let mut out = String::with_capacity(1024);
        for (name, help, kind, value) in families {
            if let Some(value) = value {
                out.push_str(&format!(
                    "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
                ));
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
        let (plain, gzip) = process.bodies(&published);
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
        let (again, _) = process.bodies(&published);
        if asked.elapsed() < FRESH_FOR / 2 {
            assert_eq!(again, plain.as_bytes(), "the same reading within a second");
        }
        let newer = Arc::new(Published::new(State::new("t", []), "x 2\n".into()));
        assert!(process.bodies(&newer).0.starts_with(b"x 2\n"));
    }
}
