//! Containers for PINs and key ids.
//!
//! Everything a person types into a PIN pad or a reader types for a key is a credential. These
//! wrappers keep it out of `Debug` output (and so out of logs and panics) and wipe their buffer on
//! drop (with `zeroize`, whose writes the optimiser cannot drop).

use std::fmt;

use zeroize::Zeroize;

/// A secret text (PIN, raw reader frame, canonical key id). `Debug` prints `Secret(****)`.
///
/// There is deliberately no `Display`; call [`Secret::expose`] where the value is really needed
/// (hashing). Equality is not constant-time: compare hashes, not secrets, in production paths.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`; the wrapper now owns (and will wipe) the buffer.
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The secret text. Named loudly so uses are easy to audit.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Length in bytes (all framed input is ASCII, so also in characters).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for an empty secret.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(****)")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        wipe_string(&mut self.0);
    }
}

/// Secret bytes from a serial reader frame. `Debug` prints the length only.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct SecretBytes(Vec<u8>);

impl SecretBytes {
    /// Wraps `value`; the wrapper now owns (and will wipe) the buffer.
    pub fn new(value: Vec<u8>) -> Self {
        Self(value)
    }

    /// The secret bytes.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for an empty frame.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The frame as text when it is valid UTF-8 (line readers send ASCII); `None` otherwise.
    pub fn to_text(&self) -> Option<Secret> {
        std::str::from_utf8(&self.0).ok().map(Secret::from)
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes(len={})", self.0.len())
    }
}

impl Drop for SecretBytes {
    fn drop(&mut self) {
        wipe_bytes(&mut self.0);
    }
}

/// Overwrites the bytes of `buf` (its whole capacity) with zeros and empties it, keeping its
/// allocation.
///
/// Used by the framers on their accumulation buffers so a discarded partial PIN does not linger
/// in freed memory.
pub fn wipe_bytes(buf: &mut Vec<u8>) {
    buf.zeroize();
}

/// [`wipe_bytes`] for a `String` (it ends up empty, its allocation kept).
pub fn wipe_string(buf: &mut String) {
    buf.zeroize();
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let s = Secret::from("1234");
        assert_eq!(format!("{s:?}"), "Secret(****)");
        assert_eq!(format!("{:?}", Some(&s)), "Some(Secret(****))");
        let b = SecretBytes::new(b"9B00".to_vec());
        assert_eq!(format!("{b:?}"), "SecretBytes(len=4)");
    }

    #[test]
    fn wipe_keeps_capacity_and_empties() {
        let mut s = String::with_capacity(32);
        s.push_str("0042");
        wipe_string(&mut s);
        assert!(s.is_empty());
        assert!(s.capacity() >= 32);
    }

    #[test]
    fn bytes_to_text() {
        assert_eq!(
            SecretBytes::new(b"AB".to_vec()).to_text().unwrap().expose(),
            "AB"
        );
        assert!(SecretBytes::new(vec![0xff]).to_text().is_none());
    }
}
