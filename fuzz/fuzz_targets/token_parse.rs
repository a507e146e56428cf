//! Token parsing: any input is accepted exactly when it is a canonical 43-character base64url
//! encoding of 32 bytes, and then yields the SHA-256 of the token; nothing panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use session_server::token::{self, TokenHash, TOKEN_LEN};

const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Decodes unpadded base64url by hand (independently of the parser under test).
fn decode(s: &str) -> Option<Vec<u8>> {
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = vec![];
    for c in s.bytes() {
        let v = ALPHABET.iter().position(|&a| a == c)? as u32;
        bits = (bits << 6) | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    // Leftover bits must be zero for a canonical encoding.
    (bits == 0).then_some(out)
}

/// Encodes bytes as unpadded base64url by hand.
fn encode(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |acc, &b| (acc << 8) | b as u32) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    // Any 32 bytes, encoded, are a token: random input alone would rarely reach that path.
    if let Some(bytes) = data.get(..32) {
        let token = encode(bytes);
        assert_eq!(token::parse(&token), Some(TokenHash::of(&token)), "{token}");
    }
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = token::parse(raw);
    let canonical = raw.len() == TOKEN_LEN && decode(raw).is_some_and(|b| b.len() == 32);
    assert_eq!(parsed.is_some(), canonical, "{raw:?}");
    if let Some(hash) = parsed {
        assert_eq!(hash, TokenHash::of(raw));
    }
    let _ = TokenHash::from_hex(raw);
});
