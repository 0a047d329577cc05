//! MD5 of file content, as `files.md5` holds it (lower-case hex): every byte
//! of every file goes through it. OpenSSL's assembly implementation, because
//! it is the fastest at hand: 1.40 s per GiB against 1.73 s for md-5 with its
//! `asm` feature and 1.44 s for coreutils' `md5sum` (2026-12-04, one core of
//! the 2-core AMD EPYC the benchmark runs on; README, Performance).

use openssl::hash::{Hasher, MessageDigest};

/// An MD5 being computed. Its errors are OpenSSL's (no MD5 in the loaded
/// provider, no memory), as I/O errors of the step that hashes.
pub struct Md5(Hasher);

impl Md5 {
    /// A new hash, over nothing yet.
    pub fn new() -> std::io::Result<Self> {
        Hasher::new(MessageDigest::md5())
            .map(Self)
            .map_err(std::io::Error::other)
    }

    /// Hashes the next bytes.
    pub fn update(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.0.update(bytes).map_err(std::io::Error::other)
    }

    /// The MD5 of everything hashed, in hex.
    pub fn finish_hex(mut self) -> std::io::Result<String> {
        self.0
            .finish()
            .map(hex::encode)
            .map_err(std::io::Error::other)
    }
}

/// The hex MD5 of `bytes`.
pub fn md5_hex(bytes: &[u8]) -> std::io::Result<String> {
    let mut h = Md5::new()?;
    h.update(bytes)?;
    h.finish_hex()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_digests() {
        // RFC 1321, appendix A.5.
        for (input, md5) in [
            ("", "d41d8cd98f00b204e9800998ecf8427e"),
            ("abc", "900150983cd24fb0d6963f7d28e17f72"),
            (
                "12345678901234567890123456789012345678901234567890123456789012345678901234567890",
                "57edf4a22be3c955ac49da2e2107b67a",
            ),
        ] {
            assert_eq!(md5_hex(input.as_bytes()).unwrap(), md5, "{input:?}");
        }
    }

    #[test]
    fn chunks_hash_as_the_whole() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut h = Md5::new().unwrap();
        for chunk in data.chunks(65_537) {
            h.update(chunk).unwrap();
        }
        assert_eq!(h.finish_hex().unwrap(), md5_hex(&data).unwrap());
    }
}
