//! Access tokens: bearer secrets that grant a role at the controllers, for operators and
//! tools whose certificate holds a lower role (or none worth trusting alone), in the
//! manner of Nomad's ACL tokens.
//!
//! A token reads `stw_ACCESSOR_SECRET`: ACCESSOR is 16 lowercase hex digits, the public id
//! that `list` shows and `revoke` takes; SECRET is 64 lowercase hex digits (32 random
//! bytes). The secret is shown once, when the token is made, and never stored: the
//! replicated state keeps a [`TokenRecord`] (the accessor, a BLAKE3 hash of the secret,
//! the role, the expiry) in the KV namespace under [`TOKENS_PREFIX`], a reserved prefix that
//! the KV API refuses to read or write (`kv::validate_key`). The first token of a cluster
//! can be made once, by `bootstrap`, and is kept at [`BOOTSTRAP_KEY`], whose presence is
//! what "bootstrapped" means (written with a compare-and-set on its absence, so two
//! concurrent bootstraps cannot both succeed).

use serde::{Deserialize, Serialize};

use crate::identity::Role;
use crate::kv::RESERVED_PREFIX;

/// Where token records live in the KV namespace (by accessor).
pub const TOKENS_PREFIX: &str = "_steward/acl/tokens/";
/// The bootstrap token's record; present once the cluster was bootstrapped (a revoked
/// bootstrap token stays, marked revoked, so that bootstrap stays done).
pub const BOOTSTRAP_KEY: &str = "_steward/acl/bootstrap";
/// Tokens one cluster holds at most (each is a few hundred bytes of state).
pub const MAX_TOKENS: usize = 10_000;
/// Longest token name.
pub const MAX_NAME_BYTES: usize = 128;
/// Longest lifetime a token may be given (ten years); none: no expiry.
pub const MAX_TTL_MS: u64 = 10 * 365 * 24 * 3600 * 1000;
/// What every token starts with.
pub const TOKEN_PREFIX: &str = "stw_";
const ACCESSOR_HEX: usize = 16;
const SECRET_HEX: usize = 64;

const _: () = assert!(TOKENS_PREFIX.len() > RESERVED_PREFIX.len());

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AclError {
    #[error("not a Steward token (expected stw_ACCESSOR_SECRET)")]
    Malformed,
    #[error("unknown token")]
    Unknown,
    #[error("token {0} was revoked")]
    Revoked(String),
    #[error("token {accessor} expired at {expired_unix_ms} (unix ms)")]
    Expired {
        accessor: String,
        expired_unix_ms: u64,
    },
    #[error("token name: {0}")]
    BadName(String),
    #[error("`{0}` is not a token accessor (16 lowercase hex digits)")]
    BadAccessor(String),
}

/// What the state keeps of one token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub accessor: String,
    /// BLAKE3 of the secret's hex text, hex.
    pub secret_hash: String,
    pub role: Role,
    pub name: String,
    /// The cluster clock when it was made.
    pub created_unix_ms: u64,
    /// Refused from this time on (`None`: never expires).
    pub expires_unix_ms: Option<u64>,
    /// Who made it (identity URI, or "insecure" on a plaintext cluster).
    pub created_by: String,
    /// Revoked (only the bootstrap token is kept revoked; others are deleted).
    #[serde(default)]
    pub revoked: bool,
}

/// A new token: its text (shown once) and the record the state keeps.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub text: String,
    pub record: TokenRecord,
}

/// The KV key of the token with `accessor`.
pub fn token_key(accessor: &str) -> String {
    format!("{TOKENS_PREFIX}{accessor}")
}

fn hash_secret(secret_hex: &str) -> blake3::Hash {
    blake3::hash(secret_hex.as_bytes())
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Checks an accessor given by an operator (`revoke`).
pub fn validate_accessor(accessor: &str) -> Result<(), AclError> {
    if is_lower_hex(accessor, ACCESSOR_HEX) {
        Ok(())
    } else {
        Err(AclError::BadAccessor(accessor.chars().take(40).collect()))
    }
}

/// Checks a token's name: printable, at most [`MAX_NAME_BYTES`].
pub fn validate_name(name: &str) -> Result<(), AclError> {
    if name.len() > MAX_NAME_BYTES {
        return Err(AclError::BadName(format!(
            "{} bytes, the limit is {MAX_NAME_BYTES}",
            name.len()
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(AclError::BadName("control characters".into()));
    }
    Ok(())
}

impl NewToken {
    /// A token from `random` (8 bytes for the accessor, 32 for the secret), made at
    /// `now_unix_ms` by `created_by`, valid for `ttl_ms` (`None`: no expiry).
    pub fn new(
        random: [u8; 40],
        role: Role,
        name: &str,
        now_unix_ms: u64,
        ttl_ms: Option<u64>,
        created_by: &str,
    ) -> Result<NewToken, AclError> {
        validate_name(name)?;
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let accessor = hex(&random[..8]);
        let secret = hex(&random[8..]);
        Ok(NewToken {
            text: format!("{TOKEN_PREFIX}{accessor}_{secret}"),
            record: TokenRecord {
                secret_hash: hash_secret(&secret).to_hex().to_string(),
                accessor,
                role,
                name: name.to_string(),
                created_unix_ms: now_unix_ms,
                expires_unix_ms: ttl_ms.map(|t| now_unix_ms.saturating_add(t.min(MAX_TTL_MS))),
                created_by: created_by.to_string(),
                revoked: false,
            },
        })
    }
}

/// A presented token, split: its accessor and the hash of its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presented {
    pub accessor: String,
    secret_hash: blake3::Hash,
}

/// Splits a presented token (no state needed: a malformed one is refused at once).
pub fn parse(token: &str) -> Result<Presented, AclError> {
    let rest = token
        .strip_prefix(TOKEN_PREFIX)
        .ok_or(AclError::Malformed)?;
    let (accessor, secret) = rest.split_once('_').ok_or(AclError::Malformed)?;
    if !is_lower_hex(accessor, ACCESSOR_HEX) || !is_lower_hex(secret, SECRET_HEX) {
        return Err(AclError::Malformed);
    }
    Ok(Presented {
        accessor: accessor.to_string(),
        secret_hash: hash_secret(secret),
    })
}

impl TokenRecord {
    /// The role `presented` holds by this record at `now_unix_ms`, or why none. The hashes
    /// are compared in constant time.
    pub fn check(&self, presented: &Presented, now_unix_ms: u64) -> Result<Role, AclError> {
        let stored = blake3::Hash::from_hex(&self.secret_hash).map_err(|_| AclError::Unknown)?;
        if self.accessor != presented.accessor || stored != presented.secret_hash {
            return Err(AclError::Unknown);
        }
        if self.revoked {
            return Err(AclError::Revoked(self.accessor.clone()));
        }
        match self.expires_unix_ms {
            Some(at) if now_unix_ms >= at => Err(AclError::Expired {
                accessor: self.accessor.clone(),
                expired_unix_ms: at,
            }),
            _ => Ok(self.role),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Option<TokenRecord> {
        serde_json::from_slice(bytes).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(seed: u8) -> [u8; 40] {
        let mut r = [0u8; 40];
        for (i, b) in r.iter_mut().enumerate() {
            *b = seed.wrapping_mul(31).wrapping_add(i as u8);
        }
        r
    }

    #[test]
    fn a_token_grants_its_role_until_it_expires_or_is_revoked() {
        let t = NewToken::new(
            random(1),
            Role::Operator,
            "ci",
            1_000,
            Some(500),
            "spiffe://c/client/admin/a",
        )
        .expect("token");
        assert!(t.text.starts_with("stw_"));
        assert!(
            !t.record
                .encode()
                .windows(64)
                .any(|w| t.text.as_bytes().ends_with(w)),
            "the secret is not stored"
        );
        let p = parse(&t.text).expect("parses");
        assert_eq!(p.accessor, t.record.accessor);
        assert_eq!(t.record.check(&p, 1_200), Ok(Role::Operator));
        assert!(matches!(
            t.record.check(&p, 1_500),
            Err(AclError::Expired { .. })
        ));
        let mut revoked = t.record.clone();
        revoked.revoked = true;
        assert!(matches!(
            revoked.check(&p, 1_200),
            Err(AclError::Revoked(_))
        ));
        // Another secret under the same accessor is unknown.
        let forged = format!("stw_{}_{}", t.record.accessor, "0".repeat(64));
        assert_eq!(
            t.record.check(&parse(&forged).expect("shape"), 1_200),
            Err(AclError::Unknown)
        );
        let back = TokenRecord::decode(&t.record.encode()).expect("decodes");
        assert_eq!(back, t.record);
        assert_eq!(
            token_key(&t.record.accessor),
            format!("_steward/acl/tokens/{}", t.record.accessor)
        );
    }

    #[test]
    fn malformed_tokens_names_and_accessors_are_refused() {
        for bad in [
            "",
            "stw_",
            "stw_abc_def",
            "xyz_0123456789abcdef_00",
            &format!("stw_0123456789ABCDEF_{}", "0".repeat(64)),
        ] {
            assert_eq!(parse(bad), Err(AclError::Malformed), "{bad}");
        }
        assert!(validate_accessor("0123456789abcdef").is_ok());
        assert!(validate_accessor("../../x").is_err());
        assert!(validate_name(&"n".repeat(MAX_NAME_BYTES + 1)).is_err());
        assert!(validate_name("a\nb").is_err());
        // A TTL is capped.
        let t = NewToken::new(random(2), Role::Viewer, "", 0, Some(u64::MAX), "x").expect("token");
        assert_eq!(t.record.expires_unix_ms, Some(MAX_TTL_MS));
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(s in ".{0,200}") {
            let _ = parse(&s);
        }
    }
}
