//! Signatures: xoflow's own, on every delivery with a secret, and the two
//! chat robots' that have one.
//!
//! - xoflow: `X-Xoflow-Signature: v1=<hex HMAC-SHA256(key = secret,
//!   message = "<timestamp>.<body>")>`, the timestamp being the
//!   `X-Xoflow-Timestamp` header (unix seconds). Binding the timestamp into
//!   the MAC lets the receiver refuse old requests (5 minutes) without
//!   remembering every signature it saw.
//! - Feishu / Lark custom bot: `sign = base64(HMAC-SHA256(key =
//!   "<timestamp>\n<secret>", message = ""))`, sent in the JSON body with
//!   `timestamp` (unix seconds, within an hour of Feishu's clock).
//! - DingTalk custom robot: `sign = urlencode(base64(HMAC-SHA256(key =
//!   secret, message = "<timestamp>\n<secret>")))`, sent as query
//!   parameters with `timestamp` (unix milliseconds, within an hour).
//!
//! Pure functions of their inputs; the tests check them against an HMAC
//! written out from its definition (RFC 2104) over SHA-256, itself checked
//! against RFC 4231's test vector.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// HMAC-SHA256 of `message` under `key`.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    // HMAC takes keys of any length: `new_from_slice` cannot fail here.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return [0; 32];
    };
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// `v1=<hex>`: the `X-Xoflow-Signature` of `body` sent at `timestamp`
/// (unix seconds).
pub fn xoflow(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut message = format!("{timestamp}.").into_bytes();
    message.extend_from_slice(body);
    format!(
        "v1={}",
        hex::encode(hmac_sha256(secret.as_bytes(), &message))
    )
}

/// The Feishu custom bot's `sign` for `timestamp` (unix seconds).
pub fn feishu(secret: &str, timestamp: i64) -> String {
    let key = format!("{timestamp}\n{secret}");
    base64::engine::general_purpose::STANDARD.encode(hmac_sha256(key.as_bytes(), b""))
}

/// The DingTalk custom robot's `sign` query parameter for `timestamp`
/// (unix milliseconds), already URL-encoded.
pub fn dingtalk(secret: &str, timestamp_ms: i64) -> String {
    let message = format!("{timestamp_ms}\n{secret}");
    let mac = hmac_sha256(secret.as_bytes(), message.as_bytes());
    percent_encode(&base64::engine::general_purpose::STANDARD.encode(mac))
}

/// Percent-encodes everything but RFC 3986's unreserved characters: the
/// base64 alphabet's `+`, `/` and `=` become `%2B`, `%2F`, `%3D`.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use sha2::Digest;

    use super::*;

    /// HMAC-SHA256 from its definition: H((K ⊕ opad) ‖ H((K ⊕ ipad) ‖ m)).
    fn hmac_by_hand(key: &[u8], message: &[u8]) -> [u8; 32] {
        let mut k = [0u8; 64];
        if key.len() > 64 {
            k[..32].copy_from_slice(&Sha256::digest(key));
        } else {
            k[..key.len()].copy_from_slice(key);
        }
        let mut inner = Sha256::new();
        inner.update(k.map(|b| b ^ 0x36));
        inner.update(message);
        let mut outer = Sha256::new();
        outer.update(k.map(|b| b ^ 0x5c));
        outer.update(inner.finalize());
        outer.finalize().into()
    }

    /// RFC 4648 base64 with padding, written out.
    fn base64_by_hand(bytes: &[u8]) -> String {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(char::from(A[(n >> (18 - 6 * i) & 63) as usize]));
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    #[test]
    fn the_hand_written_hmac_matches_rfc_4231() {
        // RFC 4231, test case 2.
        let want = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
        assert_eq!(
            hex::encode(hmac_by_hand(b"Jefe", b"what do ya want for nothing?")),
            want
        );
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            want
        );
        // Keys longer than the block are hashed first (RFC 4231 case 6).
        let long = [0xaa_u8; 131];
        let m = b"Test Using Larger Than Block-Size Key - Hash Key First";
        assert_eq!(
            hex::encode(hmac_by_hand(&long, m)),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
        assert_eq!(hmac_sha256(&long, m), hmac_by_hand(&long, m));
        assert_eq!(base64_by_hand(b"ma"), "bWE=");
        assert_eq!(base64_by_hand(b"m"), "bQ==");
        assert_eq!(base64_by_hand(b"man"), "bWFu");
    }

    #[test]
    fn xoflow_signs_timestamp_dot_body() {
        let body = "{\"summary\":\"差评：配送晚了两天\"}".as_bytes();
        let got = xoflow("s3cret", 1_767_225_600, body);
        let mut message = b"1767225600.".to_vec();
        message.extend_from_slice(body);
        assert_eq!(
            got,
            format!("v1={}", hex::encode(hmac_by_hand(b"s3cret", &message)))
        );
        assert_eq!(got.len(), 3 + 64);
        // Another timestamp or body, another signature.
        assert_ne!(got, xoflow("s3cret", 1_767_225_601, body));
        assert_ne!(got, xoflow("s3cret", 1_767_225_600, b"{}"));
    }

    #[test]
    fn feishu_keys_the_mac_with_timestamp_and_secret_over_nothing() {
        let (secret, ts) = ("qwertyuiop123", 1_599_360_473_i64);
        let want = base64_by_hand(&hmac_by_hand(format!("{ts}\n{secret}").as_bytes(), b""));
        assert_eq!(feishu(secret, ts), want);
        assert_eq!(want.len(), 44);
    }

    #[test]
    fn dingtalk_macs_timestamp_and_secret_under_the_secret_and_url_encodes() {
        let (secret, ts) = ("SECthis is secret", 1_552_920_546_388_i64);
        let b64 = base64_by_hand(&hmac_by_hand(
            secret.as_bytes(),
            format!("{ts}\n{secret}").as_bytes(),
        ));
        let want = b64
            .replace('+', "%2B")
            .replace('/', "%2F")
            .replace('=', "%3D");
        assert_eq!(dingtalk(secret, ts), want);
        assert!(
            dingtalk(secret, ts).ends_with("%3D"),
            "32 bytes pad to one ="
        );
        assert_eq!(percent_encode("a+b/c=d-_.~"), "a%2Bb%2Fc%3Dd-_.~");
    }
}
