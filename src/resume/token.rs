//! Resume tokens: what a returning client presents to name its session (docs/RESUME.md §4).
//! A token is `base64url(payload ‖ HMAC-SHA256(key, payload))`: unforgeable without the key,
//! bound to one session and to the credentials of its first handshake, and valid until its
//! expiry. Pure: issuing and verifying take the time as an argument.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::{digest, hmac};

/// The payload's format version. Version 1 (before tokens carried the session's trace) is
/// still read, so that sessions move across a rollout from a holdfast that issued one.
const VERSION: u8 = 2;
/// The longest application subprotocol a token carries (a header token longer than this
/// is refused at the handshake anyway).
pub const MAX_PROTOCOL: usize = 255;
const MAC_LEN: usize = 32;
/// The longest token text accepted (anything longer is malformed before it is decoded).
pub const MAX_TOKEN_TEXT: usize = 512;

/// What a token says about its session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub session: u64,
    /// When it was issued and until when it is valid (Unix milliseconds).
    pub issued_ms: u64,
    pub expires_ms: u64,
    /// How many times the session's upstream has been opened again so far, by holds and
    /// moves: a move opens it with `X-Holdfast-Resume: resumes + 1`.
    pub resumes: u32,
    /// A hash of the first handshake's `Authorization` and `Cookie` (`credentials`).
    pub credentials: [u8; 16],
    /// How many of the client's messages holdfast had received when the token was issued
    /// (what a moved session continues from).
    pub client_received: u64,
    /// The application's subprotocol as the upstream chose it.
    pub protocol: Option<String>,
    /// Given with a move (`m`): the session continues on whichever holdfast the client
    /// reaches next, from `client_received`. Only such a token opens a session elsewhere.
    pub moving: bool,
    /// The session's trace, continued by the holdfast a session moves to (`None` in a
    /// version-1 token).
    pub trace: Option<crate::trace::Trace>,
}

/// Why a token was refused; `as_str` is the `detail` the client is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token malformed")]
    Malformed,
    #[error("token not issued by this deployment")]
    Forged,
    #[error("token expired")]
    Expired,
}

/// The HMAC key every holdfast that may take over a session shares.
#[derive(Clone)]
pub struct Key(hmac::Key);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key itself is never printed.
        f.write_str("Key(..)")
    }
}

/// The shortest resume key accepted (HMAC-SHA256 wants at least its output's 32 bytes).
pub const MIN_KEY_BYTES: usize = 32;

impl Key {
    pub fn new(secret: &[u8]) -> Key {
        Key(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    /// The key in the file at `path` (`resume.key_file`): its bytes, a trailing newline
    /// removed (a key written with `echo` or `openssl rand -base64` ends in one).
    pub fn from_file(path: &std::path::Path) -> Result<Key, String> {
        let bytes =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let key = bytes
            .strip_suffix(b"\r\n")
            .or_else(|| bytes.strip_suffix(b"\n"))
            .unwrap_or(&bytes);
        if key.len() < MIN_KEY_BYTES {
            return Err(format!(
                "{} holds {} bytes; a resume key needs at least {MIN_KEY_BYTES} random bytes (e.g. `openssl rand -base64 48`)",
                path.display(),
                key.len()
            ));
        }
        Ok(Key::new(key))
    }

    /// The key of this process alone, random and the same for every `App` in it (the demo
    /// runs two while it restarts holdfast): tokens resume sessions only in this process.
    pub fn of_this_process() -> Key {
        static KEY: std::sync::OnceLock<Key> = std::sync::OnceLock::new();
        KEY.get_or_init(|| Key::new(&rand::random::<[u8; 32]>()))
            .clone()
    }

    pub fn issue(&self, claims: &Claims) -> String {
        let mut out = Vec::with_capacity(64 + MAC_LEN);
        out.push(VERSION);
        out.extend_from_slice(&claims.session.to_be_bytes());
        out.extend_from_slice(&claims.issued_ms.to_be_bytes());
        out.extend_from_slice(&claims.expires_ms.to_be_bytes());
        out.extend_from_slice(&claims.resumes.to_be_bytes());
        out.extend_from_slice(&claims.credentials);
        out.extend_from_slice(&claims.client_received.to_be_bytes());
        out.push(u8::from(claims.moving));
        let protocol = claims.protocol.as_deref().unwrap_or("").as_bytes();
        let protocol = &protocol[..protocol.len().min(MAX_PROTOCOL)];
        out.push(protocol.len() as u8);
        out.extend_from_slice(protocol);
        out.extend_from_slice(&claims.trace.map_or([0; 17], |t| t.to_bytes()));
        let tag = hmac::sign(&self.0, &out);
        out.extend_from_slice(tag.as_ref());
        URL_SAFE_NO_PAD.encode(out)
    }

    /// The claims of an authentic token that is still valid at `now_ms`.
    pub fn verify(&self, token: &str, now_ms: u64) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_TEXT {
            return Err(TokenError::Malformed);
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| TokenError::Malformed)?;
        if bytes.len() < MAC_LEN + 1 {
            return Err(TokenError::Malformed);
        }
        let (payload, tag) = bytes.split_at(bytes.len() - MAC_LEN);
        // Authentic first: nothing of an unauthenticated payload is believed.
        hmac::verify(&self.0, payload, tag).map_err(|_| TokenError::Forged)?;
        let claims = decode(payload).ok_or(TokenError::Malformed)?;
        if now_ms >= claims.expires_ms {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

/// Reads the fields of an authenticated payload.
fn decode(payload: &[u8]) -> Option<Claims> {
    let mut r = Reader(payload);
    let version = r.take::<1>()?[0];
    if version != VERSION && version != 1 {
        return None;
    }
    let session = u64::from_be_bytes(r.take()?);
    let issued_ms = u64::from_be_bytes(r.take()?);
    let expires_ms = u64::from_be_bytes(r.take()?);
    let resumes = u32::from_be_bytes(r.take()?);
    let credentials = r.take::<16>()?;
    let client_received = u64::from_be_bytes(r.take()?);
    let moving = match r.take::<1>()?[0] {
        0 => false,
        1 => true,
        _ => return None,
    };
    let len = r.take::<1>()?[0] as usize;
    let protocol = r.bytes(len)?;
    let trace = match version {
        1 => None,
        _ => crate::trace::Trace::from_bytes(r.take()?),
    };
    if !r.0.is_empty() {
        return None;
    }
    let protocol = match protocol {
        [] => None,
        p => Some(String::from_utf8(p.to_vec()).ok()?),
    };
    Some(Claims {
        session,
        issued_ms,
        expires_ms,
        resumes,
        credentials,
        client_received,
        protocol,
        moving,
        trace,
    })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.bytes(N).map(|b| b.try_into().expect("N bytes"))
    }

    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
}

/// The hash a session's credentials are bound by: SHA-256 over the first handshake's
/// `Authorization` and `Cookie` values (each length-prefixed, absent ≠ empty), truncated to
/// 16 bytes. Compared, never logged.
pub fn credentials(authorization: Option<&[u8]>, cookie: Option<&[u8]>) -> [u8; 16] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for value in [authorization, cookie] {
        match value {
            None => ctx.update(&[0]),
            Some(v) => {
                ctx.update(&[1]);
                ctx.update(&(v.len() as u64).to_be_bytes());
                ctx.update(v);
            }
        }
    }
    let hash = ctx.finish();
    hash.as_ref()[..16].try_into().expect("16 of 32 bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims {
            session: 0x8f3a_0000_1234_abcd,
            issued_ms: 1_000_000,
            expires_ms: 1_030_000,
            resumes: 2,
            credentials: credentials(Some(b"Bearer x"), None),
            client_received: 1200,
            protocol: Some("chat.v2".into()),
            moving: true,
            trace: Some(crate::trace::Trace::start([5; 16])),
        }
    }

    #[test]
    fn a_token_round_trips_and_is_a_header_token() {
        let key = Key::new(b"0123456789abcdef0123456789abcdef");
        let token = key.issue(&claims());
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "{token}"
        );
        assert_eq!(key.verify(&token, 1_000_001), Ok(claims()));
        let no_protocol = Claims {
            protocol: None,
            ..claims()
        };
        assert_eq!(
            key.verify(&key.issue(&no_protocol), 1_000_001),
            Ok(no_protocol)
        );
        // The longest subprotocol still makes a token a returning client may present.
        let longest = Claims {
            protocol: Some("p".repeat(MAX_PROTOCOL)),
            ..claims()
        };
        let token = key.issue(&longest);
        assert!(token.len() <= MAX_TOKEN_TEXT, "{}", token.len());
        assert_eq!(key.verify(&token, 1_000_001), Ok(longest));
    }

    #[test]
    fn a_version_1_token_is_still_read_without_a_trace() {
        let key = Key::new(b"0123456789abcdef0123456789abcdef");
        let token = key.issue(&claims());
        let bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
        // Version 1's layout: no trace after the subprotocol.
        let mut payload = bytes[..bytes.len() - MAC_LEN - 17].to_vec();
        payload[0] = 1;
        let tag = hmac::sign(&key.0, &payload);
        payload.extend_from_slice(tag.as_ref());
        let old = URL_SAFE_NO_PAD.encode(payload);
        let expected = Claims {
            trace: None,
            ..claims()
        };
        assert_eq!(key.verify(&old, 1_000_001), Ok(expected));
    }

    #[test]
    fn forged_altered_expired_and_garbage_tokens_are_refused() {
        let key = Key::new(b"0123456789abcdef0123456789abcdef");
        let token = key.issue(&claims());
        // Another deployment's key.
        let other = Key::new(b"another key, another deployment!");
        assert_eq!(other.verify(&token, 1_000_001), Err(TokenError::Forged));
        // Any byte changed (here: the session id's last byte).
        let mut bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
        bytes[8] ^= 1;
        let altered = URL_SAFE_NO_PAD.encode(&bytes);
        assert_eq!(key.verify(&altered, 1_000_001), Err(TokenError::Forged));
        // Expired: valid up to, not at, its expiry.
        assert!(key.verify(&token, 1_029_999).is_ok());
        assert_eq!(key.verify(&token, 1_030_000), Err(TokenError::Expired));
        for garbage in ["", "!!!", "AAAA", &"A".repeat(MAX_TOKEN_TEXT + 1)] {
            assert_eq!(
                key.verify(garbage, 0),
                Err(TokenError::Malformed),
                "{garbage}"
            );
        }
        // An authentic payload of another layout is still malformed, not trusted.
        let short = hmac::sign(&key.0, &[VERSION, 1, 2]);
        let mut odd = vec![VERSION, 1, 2];
        odd.extend_from_slice(short.as_ref());
        assert_eq!(
            key.verify(&URL_SAFE_NO_PAD.encode(odd), 0),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn credentials_distinguish_absent_empty_and_swapped_values() {
        let table = [
            credentials(None, None),
            credentials(Some(b""), None),
            credentials(None, Some(b"")),
            credentials(Some(b"a"), Some(b"b")),
            credentials(Some(b"b"), Some(b"a")),
            credentials(Some(b"ab"), None),
        ];
        for (i, a) in table.iter().enumerate() {
            for b in &table[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(credentials(Some(b"a"), None), credentials(Some(b"a"), None));
    }
}
