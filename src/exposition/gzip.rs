//! The exposition as one gzip member that a short text can be appended to without compressing
//! the body again, as zlib's gzappend does: the body's deflate blocks end in a sync flush
//! (byte-aligned, no final block), so the appended text's blocks, ending in the final one,
//! continue the same stream; the CRC-32 continues from the body's. Clients read it as the one
//! member it is (curl --compressed and zlib stop after the first member, so a second member
//! would go unread).
//!
//! Cost: appending copies the compressed body (a tenth or so of the plain one) and compresses
//! only the appended text, where compressing the whole again takes some 10 ms per MiB.

use std::io::Write;

use bytes::{BufMut, Bytes, BytesMut};
use flate2::write::DeflateEncoder;
use flate2::Compression;

/// ID, CM (deflate), FLG (none), MTIME (none), XFL, OS (unknown), as RFC 1952 lays them out.
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
/// CRC-32 and ISIZE.
const TRAILER_LEN: usize = 8;

#[derive(Debug, Clone)]
pub(crate) struct Gzip {
    /// One complete gzip member of the body.
    bytes: Bytes,
    /// Where the final (empty) deflate block begins: header and body blocks come before it.
    open: usize,
    crc: u32,
    len: u64,
}

impl Gzip {
    pub(crate) fn new(body: &[u8]) -> Gzip {
        let mut encoder = DeflateEncoder::new(
            Vec::with_capacity(HEADER.len() + body.len() / 4),
            Compression::default(),
        );
        // Into a Vec, deflate fails only when misused.
        let compressed = encoder
            .get_mut()
            .write_all(&HEADER)
            .and_then(|()| encoder.write_all(body))
            // flush is a sync flush: the blocks so far end byte-aligned, none of them final.
            .and_then(|()| encoder.flush())
            .map(|()| encoder.get_ref().len())
            .and_then(|open| Ok((open, encoder.finish()?)));
        let (open, mut out) = match compressed {
            Ok(done) => done,
            Err(e) => {
                tracing::error!("cannot compress the exposition: {e}");
                return Gzip::empty();
            }
        };
        let crc = crc32fast::hash(body);
        out.put_u32_le(crc);
        out.put_u32_le(body.len() as u32);
        Gzip {
            bytes: out.into(),
            open,
            crc,
            len: body.len() as u64,
        }
    }

    /// A gzip member of nothing (an empty final block).
    fn empty() -> Gzip {
        let mut out = BytesMut::from(&HEADER[..]);
        out.put_slice(&[0x03, 0x00]);
        out.put_u32_le(0);
        out.put_u32_le(0);
        Gzip {
            bytes: out.freeze(),
            open: HEADER.len(),
            crc: 0,
            len: 0,
        }
    }

    /// The body, compressed.
    pub(crate) fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The body followed by `tail`, compressed as one member; only `tail` is compressed now.
    pub(crate) fn append(&self, tail: &[u8]) -> Bytes {
        let mut encoder = DeflateEncoder::new(
            Vec::with_capacity(tail.len() / 2 + 16),
            Compression::default(),
        );
        let deflated = match encoder.write_all(tail).and_then(|()| encoder.finish()) {
            Ok(deflated) => deflated,
            Err(e) => {
                tracing::error!("cannot compress the exposition's tail, serving it without: {e}");
                return self.bytes.clone();
            }
        };
        let mut crc = crc32fast::Hasher::new_with_initial_len(self.crc, self.len);
        crc.update(tail);
        let mut out = BytesMut::with_capacity(self.open + deflated.len() + TRAILER_LEN);
        out.put_slice(&self.bytes[..self.open]);
        out.put_slice(&deflated);
        out.put_u32_le(crc.finalize());
        // ISIZE is the length modulo 2^32.
        out.put_u32_le((self.len + tail.len() as u64) as u32);
        out.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// The first member's text: what zlib's gzip reader (and so curl) reads.
    fn first_member(gz: &[u8]) -> String {
        let mut text = String::new();
        flate2::read::GzDecoder::new(gz)
            .read_to_string(&mut text)
            .unwrap();
        text
    }

    #[test]
    fn appended_text_is_part_of_the_one_member() {
        let body: String = (0..20_000)
            .map(|i| format!("sfb_x{{tenant=\"t{i}\"}} {i}\n"))
            .collect();
        let gzip = Gzip::new(body.as_bytes());
        assert_eq!(first_member(gzip.bytes()), body);
        let tail = "# TYPE process_open_fds gauge\nprocess_open_fds 9\n";
        let joined = gzip.append(tail.as_bytes());
        assert_eq!(first_member(&joined), format!("{body}{tail}"));
        // The gzip tool's reader checks CRC and length across members too: one member only.
        let mut all = String::new();
        flate2::read::MultiGzDecoder::new(&joined[..])
            .read_to_string(&mut all)
            .unwrap();
        assert_eq!(all, format!("{body}{tail}"));
        // The body is not compressed again: the joined member starts with the body's blocks.
        assert_eq!(joined[..gzip.open], gzip.bytes()[..gzip.open]);
        assert!(gzip.bytes().len() - gzip.open <= 8 + TRAILER_LEN);
    }

    #[test]
    fn empty_bodies_and_tails() {
        for gzip in [Gzip::new(b""), Gzip::empty()] {
            assert_eq!(first_member(gzip.bytes()), "");
            assert_eq!(first_member(&gzip.append(b"")), "");
            assert_eq!(first_member(&gzip.append(b"a 1\n")), "a 1\n");
        }
        assert_eq!(first_member(&Gzip::new(b"a 1\n").append(b"")), "a 1\n");
    }
}
