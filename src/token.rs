//! Session and refresh tokens: 32 bytes from the OS random source, base64url without padding.
//!
//! Only the SHA-256 of a token is ever stored, cached or compared; a malformed token is rejected
//! here, before it can reach a cache or the database.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::TryRngCore;
use sha2::{Digest, Sha256};
use std::fmt;

/// Length of an encoded token: 32 bytes in unpadded base64url.
pub const TOKEN_LEN: usize = 43;

/// SHA-256 digest of a token: the only form in which a token is stored or cached.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TokenHash(pub [u8; 32]);

/// Hash maps (the session cache, the unknown-token cache) hash only the digest's first 8
/// bytes: they are already uniformly distributed, the maps' hashers are keyed per process, and
/// equality still compares all 32. A quarter of the hashing on every lookup.
impl std::hash::Hash for TokenHash {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let mut head = [0u8; 8];
        head.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(head));
    }
}

impl TokenHash {
    pub fn of(token: &str) -> Self {
        TokenHash(Sha256::digest(token.as_bytes()).into())
    }

    pub fn to_hex(&self) -> String {
        let mut out = String::with_capacity(64);
        self.push_hex(&mut out);
        out
    }

    /// Appends the digest in lower-case hex (64 characters) to `out`: through a stack buffer,
    /// because `hex::encode` collects one `char` at a time (a measurable share of a Redis
    /// lookup, which builds two keys from it).
    pub fn push_hex(&self, out: &mut String) {
        let mut buf = [0u8; 64];
        // Neither can fail: the buffer is exactly twice the digest, and hex digits are ASCII.
        if hex::encode_to_slice(self.0, &mut buf).is_ok() {
            if let Ok(hex) = std::str::from_utf8(&buf) {
                out.push_str(hex);
            }
        }
    }

    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(TokenHash(out))
    }
}

/// Logs and debug output show a short digest prefix only, never enough to look a session up.
impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash({}…)", &hex::encode(&self.0[..4]))
    }
}

impl serde::Serialize for TokenHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for TokenHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        TokenHash::from_hex(&s).ok_or_else(|| serde::de::Error::custom("invalid token hash"))
    }
}

/// A freshly issued token and its digest. The token goes to the client once and is then dropped.
pub struct IssuedToken {
    pub token: String,
    pub hash: TokenHash,
}

/// Fill `buf` from the operating system's random source.
pub fn os_random(buf: &mut [u8]) {
    // The OS source failing is unrecoverable: issuing a predictable token would be worse.
    rand::rngs::OsRng
        .try_fill_bytes(buf)
        .expect("the operating system's random source failed");
}

/// A new random token (256 bits of entropy).
pub fn generate() -> IssuedToken {
    let mut bytes = [0u8; 32];
    os_random(&mut bytes);
    let token = URL_SAFE_NO_PAD.encode(bytes);
    let hash = TokenHash::of(&token);
    IssuedToken { token, hash }
}

/// A random URL-safe string of `bytes` random bytes, for channel tokens and order codes.
pub fn random_string(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    os_random(&mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}

/// Validates the shape of a presented token (length, alphabet, canonical encoding) and returns
/// its digest, or `None` for anything malformed.
pub fn parse(raw: &str) -> Option<TokenHash> {
    parse_bytes(raw.as_bytes())
}

/// [`parse`] of raw header bytes (a canonical token is ASCII, so the two agree).
pub fn parse_bytes(raw: &[u8]) -> Option<TokenHash> {
    canonical(raw).then(|| TokenHash(Sha256::digest(raw).into()))
}

/// Each byte's 6-bit value in the base64url alphabet, `0xFF` outside it.
static SEXTETS: [u8; 256] = {
    let mut table = [0xFF; 256];
    let mut i = 0;
    while i < 64 {
        let c = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[i];
        table[c as usize] = i as u8;
        i += 1;
    }
    table
};

/// Whether `raw` is 32 bytes in canonical unpadded base64url: [`TOKEN_LEN`] characters of the
/// alphabet, the last carrying four bits of data and two zero bits. A table check instead of a
/// decode (on every request; the property tests hold it to the decoder's verdict).
fn canonical(raw: &[u8]) -> bool {
    if raw.len() != TOKEN_LEN {
        return false;
    }
    // Values of the alphabet are below 64: one byte outside it sets the high bit.
    let all = raw
        .iter()
        .fold(0u8, |acc, &b| acc | SEXTETS[usize::from(b)]);
    all & 0x80 == 0 && SEXTETS[usize::from(raw[TOKEN_LEN - 1])] & 0b11 == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_parse_and_hash_consistently() {
        let t = generate();
        assert_eq!(t.token.len(), TOKEN_LEN);
        assert_eq!(parse(&t.token), Some(t.hash));
        assert_ne!(generate().token, t.token);
    }

    #[test]
    fn malformed_tokens_are_rejected() {
        let t = generate().token;
        assert_eq!(parse(&t[..42]), None);
        assert_eq!(parse(&format!("{t}A")), None);
        let mut bad = t.clone();
        bad.replace_range(0..1, "!");
        assert_eq!(parse(&bad), None);
        // Non-canonical trailing bits: 'B' sets a bit the encoding of 32 bytes leaves zero.
        let mut noncanon = t[..42].to_string();
        noncanon.push('B');
        assert_eq!(parse(&noncanon), None);
        assert_eq!(parse(""), None);
    }

    #[test]
    fn every_generated_token_parses_to_its_hash() {
        for _ in 0..1000 {
            let t = generate();
            assert_eq!(parse(&t.token), Some(t.hash));
        }
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn the_encoding_of_any_32_bytes_parses(bytes in any::<[u8; 32]>()) {
                let token = URL_SAFE_NO_PAD.encode(bytes);
                prop_assert_eq!(token.len(), TOKEN_LEN);
                prop_assert_eq!(parse(&token), Some(TokenHash::of(&token)));
            }

            #[test]
            fn arbitrary_strings_never_panic_and_only_canonical_tokens_parse(raw in any::<String>()) {
                let accepted = parse(&raw).is_some();
                let canonical = raw.len() == TOKEN_LEN
                    && URL_SAFE_NO_PAD
                        .decode(&raw)
                        .is_ok_and(|b| b.len() == 32 && URL_SAFE_NO_PAD.encode(&b) == raw);
                prop_assert_eq!(accepted, canonical);
            }

            /// 43 characters near the alphabet (with the standard alphabet's `+` and `/`,
            /// padding and spaces mixed in): accepted exactly when they are 32 bytes in
            /// canonical base64url.
            #[test]
            fn near_tokens_parse_only_when_canonical(raw in "[A-Za-z0-9_+/= -]{43}") {
                let canonical = URL_SAFE_NO_PAD
                    .decode(&raw)
                    .is_ok_and(|b| b.len() == 32 && URL_SAFE_NO_PAD.encode(&b) == raw);
                prop_assert_eq!(parse(&raw).is_some(), canonical);
                if canonical {
                    prop_assert_eq!(parse(&raw), Some(TokenHash::of(&raw)));
                }
            }

            #[test]
            fn any_other_length_is_refused(raw in "[A-Za-z0-9_-]{0,100}") {
                prop_assume!(raw.len() != TOKEN_LEN);
                prop_assert_eq!(parse(&raw), None);
            }

            #[test]
            fn hashes_round_trip_through_hex(bytes in any::<[u8; 32]>(), junk in any::<String>()) {
                let h = TokenHash(bytes);
                prop_assert_eq!(TokenHash::from_hex(&h.to_hex()), Some(h));
                let _ = TokenHash::from_hex(&junk);
            }
        }
    }

    #[test]
    fn hex_round_trip() {
        let h = generate().hash;
        assert_eq!(TokenHash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(TokenHash::from_hex("zz"), None);
    }
}
