//! Small files the operator names (certificates, federated tokens, secrets), read so that a
//! wrong path can neither hang the process nor exhaust its memory.

use std::fs::OpenOptions;
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// The file at `path`, refused when it holds more than `max` bytes (only `max + 1` are ever
/// read, so a wrong path cannot eat memory). A FIFO, socket or directory is refused before it
/// is read:
/// opening a FIFO for reading would block until a writer appears, out of reach of SIGTERM.
/// Character devices are read as files are (exporter-toolkit's own test data names
/// /dev/null as a CA file): opened without blocking and capped, even /dev/zero ends.
pub(crate) fn read_bounded(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    // O_NONBLOCK lets the open of a FIFO return at once (regular files ignore the flag); the
    // type is then checked on the open file, so the path cannot be swapped in between.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let kind = file.metadata()?.file_type();
    if !(kind.is_file() || kind.is_char_device()) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file (a FIFO, socket or directory)",
        ));
    }
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {}: is it the right file?", size(max)),
        ));
    }
    Ok(bytes)
}

/// [`read_bounded`], as UTF-8 text.
pub(crate) fn read_text(path: &Path, max: u64) -> io::Result<String> {
    String::from_utf8(read_bounded(path, max)?)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"))
}

/// How deep `[` and `{` may nest in a YAML file read here. The tenants file and the web config
/// nest them three deep at most. The YAML scanner pays the nesting depth on every token, so
/// that 20,000 nested brackets take seconds and a file full of them hours: deeper files are
/// refused before they are parsed. (Block nesting costs it nothing of the kind, and the
/// parser's own recursion limit stops it.)
pub(crate) const MAX_YAML_FLOW_DEPTH: usize = 32;

#[derive(Debug, thiserror::Error)]
pub(crate) enum YamlError {
    #[error("brackets nested more than {MAX_YAML_FLOW_DEPTH} deep")]
    TooDeep,
    #[error(transparent)]
    Invalid(#[from] serde_norway::Error),
}

/// The YAML reader of the operator's files (--config.file, --web.config.file), after
/// [`read_text`] has bounded their size: nesting too deep to parse quickly is refused first.
pub(crate) fn parse_yaml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, YamlError> {
    if flow_depth_exceeds(text, MAX_YAML_FLOW_DEPTH) {
        return Err(YamlError::TooDeep);
    }
    Ok(serde_norway::from_str(text)?)
}

/// Whether `[` and `{` nest deeper than `max` anywhere in `text`. Brackets inside quoted
/// strings count too: a secret would need dozens of unbalanced ones to be refused.
fn flow_depth_exceeds(text: &str, max: usize) -> bool {
    let mut depth = 0usize;
    for b in text.bytes() {
        match b {
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// `max` as the limits are written: 64 KiB, 1 MiB.
fn size(max: u64) -> String {
    match max {
        m if m >= 1 << 20 && m % (1 << 20) == 0 => format!("{} MiB", m >> 20),
        m if m >= 1 << 10 && m % (1 << 10) == 0 => format!("{} KiB", m >> 10),
        m => format!("{m} bytes"),
    }
}

/// Secret files (client secrets, PKCS#12 passwords) are tens of bytes; the cap keeps a wrong
/// path from eating memory.
pub(crate) const MAX_SECRET_FILE: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub(crate) enum SecretFileError {
    #[error("cannot be read: {0}")]
    Io(#[from] io::Error),
    #[error("is empty")]
    Empty,
}

/// A secret kept in a file, as Docker and Kubernetes mount them: read as [`read_bounded`] reads,
/// without the line ending such files usually carry and the secret does not contain.
pub(crate) fn read_secret(path: &Path) -> Result<String, SecretFileError> {
    let raw = read_text(path, MAX_SECRET_FILE)?;
    let secret = raw.trim_end_matches(['\r', '\n']);
    if secret.trim().is_empty() {
        return Err(SecretFileError::Empty);
    }
    Ok(secret.to_string())
}

/// Test support: a FIFO at `path`, which blocks any reader that waits for a writer.
#[cfg(test)]
pub(crate) fn make_fifo(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: c_path is a valid NUL-terminated string that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
}

/// Test support: `f`'s result, or a failure when it blocks for long (on a FIFO, say) instead
/// of hanging the test run.
#[cfg(test)]
pub(crate) fn without_blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || done.send(f()));
    result
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("blocked reading the file")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_over_the_limit_are_refused_in_words() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "abcdef").unwrap();
        assert_eq!(read_bounded(&path, 6).unwrap(), b"abcdef");
        let error = read_bounded(&path, 5).unwrap_err();
        assert_eq!(
            error.to_string(),
            "larger than 5 bytes: is it the right file?"
        );
        std::fs::write(&path, vec![b'x'; 2048]).unwrap();
        let error = read_bounded(&path, 1024).unwrap_err();
        assert_eq!(
            error.to_string(),
            "larger than 1 KiB: is it the right file?"
        );
        std::fs::write(&path, [0xff, 0xfe]).unwrap();
        assert_eq!(
            read_text(&path, 10).unwrap_err().to_string(),
            "not UTF-8 text"
        );
    }

    #[test]
    fn fifos_and_directories_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        make_fifo(&fifo);
        for path in [fifo, dir.path().to_path_buf()] {
            let error = without_blocking(move || read_bounded(&path, 10)).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "{error}");
            assert!(error.to_string().contains("not a regular file"));
        }
    }

    #[test]
    fn yaml_nested_too_deep_is_refused_before_parsing() {
        let ok: serde_norway::Value = parse_yaml("a: [[{b: [1]}]]\n").unwrap();
        assert!(ok.get("a").is_some());
        let deep = format!("a: {}{}", "[".repeat(33), "]".repeat(33));
        assert!(matches!(
            parse_yaml::<serde_norway::Value>(&deep),
            Err(YamlError::TooDeep)
        ));
        let at_limit = format!("a: {}{}", "[".repeat(32), "]".repeat(32));
        assert!(parse_yaml::<serde_norway::Value>(&at_limit).is_ok());
        // Parsed as it is, this one takes minutes; refused, it takes a scan.
        let huge = format!("a: {}{}", "[".repeat(100_000), "]".repeat(100_000));
        let e = parse_yaml::<serde_norway::Value>(&huge).unwrap_err();
        assert_eq!(e.to_string(), "brackets nested more than 32 deep");
        assert!(matches!(
            parse_yaml::<serde_norway::Value>("a: [\n"),
            Err(YamlError::Invalid(_))
        ));
    }

    #[test]
    fn character_devices_are_read_and_capped() {
        assert_eq!(read_bounded(Path::new("/dev/null"), 10).unwrap(), b"");
        let zeros = without_blocking(|| read_bounded(Path::new("/dev/zero"), 10)).unwrap_err();
        assert!(
            zeros.to_string().starts_with("larger than 10 bytes"),
            "{zeros}"
        );
    }
}
