//! Small files the operator names (certificates, federated tokens, secrets), read so that a
//! wrong path can neither hang the process nor exhaust its memory.

use std::fs::OpenOptions;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// At most `max + 1` bytes of the regular file at `path`: one more than allowed, so that the
/// caller can tell a file that is too large. Anything but a regular file is refused before it
/// is read: opening a FIFO for reading would block until a writer appears, out of reach of
/// SIGTERM, and a device may never end.
pub fn read_regular(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    // O_NONBLOCK lets the open of a FIFO return at once (regular files ignore the flag); the
    // type is then checked on the open file, so the path cannot be swapped in between.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file (a FIFO, socket, device or directory)",
        ));
    }
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Test support: a FIFO at `path`, which blocks any reader that waits for a writer.
#[cfg(test)]
pub fn make_fifo(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: c_path is a valid NUL-terminated string that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
}

/// Test support: `f`'s result, or a failure when it blocks for long (on a FIFO, say) instead
/// of hanging the test run.
#[cfg(test)]
pub fn without_blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
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
    fn regular_files_are_read_up_to_one_byte_past_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "abcdef").unwrap();
        assert_eq!(read_regular(&path, 100).unwrap(), b"abcdef");
        assert_eq!(read_regular(&path, 3).unwrap(), b"abcd");
    }

    #[test]
    fn fifos_devices_and_directories_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        make_fifo(&fifo);
        for path in [fifo, "/dev/zero".into(), dir.path().to_path_buf()] {
            let error = without_blocking(move || read_regular(&path, 10)).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "{error}");
            assert!(error.to_string().contains("not a regular file"));
        }
    }
}
