//! WireGuard keys as the control plane carries them: Curve25519, 32 bytes,
//! standard base64 (44 characters), the form `wg` and Coder's nodes use.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use boringtun::x25519::{PublicKey, StaticSecret};

/// A key that is not 32 bytes of standard base64.
#[derive(Debug, thiserror::Error)]
#[error("invalid WireGuard public key {shown:?}: {reason}")]
pub struct KeyError {
    shown: String,
    reason: &'static str,
}

/// A fresh private key from the OS's random source.
pub fn generate() -> StaticSecret {
    let mut bytes = [0u8; 32];
    // getrandom only fails where the OS has no random source at all, which
    // no supported platform lacks; a panic there is the honest outcome.
    #[allow(clippy::expect_used)]
    getrandom::fill(&mut bytes).expect("the OS random source is unavailable");
    StaticSecret::from(bytes)
}

/// The base64 text of a public key.
pub fn to_base64(key: &PublicKey) -> String {
    STANDARD.encode(key.as_bytes())
}

/// Parses the base64 text of a public key.
pub fn parse(text: &str) -> Result<PublicKey, KeyError> {
    let fail = |reason| KeyError {
        shown: text.chars().take(60).collect(),
        reason,
    };
    let bytes = STANDARD
        .decode(text.trim())
        .map_err(|_| fail("not standard base64"))?;
    let bytes: [u8; 32] = bytes.try_into().map_err(|_| fail("not 32 bytes long"))?;
    Ok(PublicKey::from(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let secret = generate();
        let public = PublicKey::from(&secret);
        let text = to_base64(&public);
        assert_eq!(text.len(), 44);
        assert_eq!(parse(&text).unwrap().as_bytes(), public.as_bytes());
        assert!(parse("YWJj").unwrap_err().to_string().contains("32 bytes"));
        assert!(parse("!!").unwrap_err().to_string().contains("base64"));
    }
}
