//! etcd's `jwt` tokens: signed claims any member holding the public key can check.
//!
//! `--auth-token jwt,pub-key=<file>,priv-key=<file>,sign-method=<alg>,ttl=<duration>`.
//! A token carries etcd's claims (`username`, `revision`, `exp`), so unlike a simple
//! token it needs no table: it is valid on every member with the key, across restarts,
//! until it expires or the auth store moves past its revision (then the permission
//! check answers `auth: revision in header is old` and clients authenticate again, as
//! with etcd). A member given only the public key verifies but cannot sign (etcd's
//! verify-only mode); a token signed with another key, or an expired one, is invalid.
//!
//! The options are read as etcd 3.5 reads them: comma-separated `key=value` pairs after
//! the token type, `sign-method` required, `ttl` a Go duration (5m by default), unknown
//! keys only warned about. Signing goes through `jsonwebtoken` 9, which uses ring (the
//! project's only crypto provider); the public half of a private key is derived with
//! ring when no `pub-key` is given, and a given pair is checked to match at start.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::signature::KeyPair as _;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};

use super::AuthInfo;

/// etcd's JWT `ttl` when none is given.
pub const DEFAULT_JWT_TTL: Duration = Duration::from_secs(5 * 60);

const KNOWN_OPTIONS: [&str; 4] = ["sign-method", "pub-key", "priv-key", "ttl"];

/// Why `--auth-token` cannot be used. Each text starts with etcd's own, then names
/// the culprit.
#[derive(Debug, thiserror::Error)]
pub enum TokenOptionsError {
    #[error("auth: invalid auth options: --auth-token {options:?}: {why}")]
    InvalidOptions { options: String, why: String },
    #[error(
        "auth: invalid auth signature method: sign-method {0:?} (one of RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA, HS256, HS384, HS512)"
    )]
    InvalidSignMethod(String),
    #[error("auth: missing key data: sign-method {0} needs pub-key or priv-key")]
    MissingKey(&'static str),
    #[error("auth: public and private keys don't match: pub-key {public} and priv-key {private}")]
    KeyMismatch { public: String, private: String },
    #[error("auth: invalid auth options: cannot read {which} {path}: {source}")]
    ReadKey {
        which: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("auth: invalid auth options: {which} {path} is not a {expected} key: {why}")]
    BadKey {
        which: &'static str,
        path: String,
        expected: &'static str,
        why: String,
    },
}

/// Which tokens `--auth-token` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenOptions {
    Simple,
    Jwt(JwtOptions),
}

/// The parsed `jwt` options (keys not read yet: see [`JwtTokens::load`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtOptions {
    pub sign_method: Algorithm,
    pub public_key: Option<PathBuf>,
    pub private_key: Option<PathBuf>,
    pub ttl: Duration,
}

fn sign_method(name: &str) -> Option<Algorithm> {
    Some(match name {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        _ => return None,
    })
}

fn algorithm_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::EdDSA => "EdDSA",
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
    }
}

impl TokenOptions {
    /// etcd's reading of `--auth-token`.
    pub fn parse(options: &str) -> Result<TokenOptions, TokenOptionsError> {
        let invalid = |why: String| TokenOptionsError::InvalidOptions {
            options: options.to_owned(),
            why,
        };
        let mut parts = options.split(',');
        let kind = parts.next().unwrap_or_default();
        let mut pairs = BTreeMap::new();
        for part in parts {
            let mut kv = part.split('=');
            let (Some(key), Some(value), None) = (kv.next(), kv.next(), kv.next()) else {
                return Err(invalid(format!("{part:?} is not key=value")));
            };
            if pairs.insert(key, value).is_some() {
                return Err(invalid(format!("{key:?} is given twice")));
            }
        }
        match kind {
            "simple" => Ok(TokenOptions::Simple),
            "jwt" => {
                let unknown: Vec<&str> = pairs
                    .keys()
                    .filter(|k| !KNOWN_OPTIONS.contains(k))
                    .copied()
                    .collect();
                if !unknown.is_empty() {
                    tracing::warn!(keys = ?unknown, "unknown JWT options");
                }
                let ttl = match pairs.get("ttl").copied().unwrap_or_default() {
                    "" => DEFAULT_JWT_TTL,
                    text => crate::config::parse_go_duration(text)
                        .ok_or_else(|| invalid(format!("ttl {text:?} is not a duration")))?,
                };
                let path = |key: &str| pairs.get(key).filter(|p| !p.is_empty()).map(PathBuf::from);
                let method = pairs.get("sign-method").copied().unwrap_or_default();
                Ok(TokenOptions::Jwt(JwtOptions {
                    sign_method: sign_method(method)
                        .ok_or_else(|| TokenOptionsError::InvalidSignMethod(method.to_owned()))?,
                    public_key: path("pub-key"),
                    private_key: path("priv-key"),
                    ttl,
                }))
            }
            other => Err(invalid(format!(
                "unknown token type {other:?} (\"simple\" or \"jwt\")"
            ))),
        }
    }
}

/// etcd's claims, in the order Go's JSON encoder writes a map's keys.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    exp: u64,
    revision: u64,
    username: String,
}

/// Signs and verifies this member's JWT tokens.
pub struct JwtTokens {
    algorithm: Algorithm,
    /// None on a verify-only member (public key only).
    signing: Option<EncodingKey>,
    verifying: DecodingKey,
    ttl: Duration,
}

impl std::fmt::Debug for JwtTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtTokens")
            .field("algorithm", &self.algorithm)
            .field("verify_only", &self.signing.is_none())
            .field("ttl", &self.ttl)
            .finish()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    Rsa,
    Ec,
    Ed,
    Hmac,
}

fn family(alg: Algorithm) -> Family {
    match alg {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => Family::Rsa,
        Algorithm::ES256 | Algorithm::ES384 => Family::Ec,
        Algorithm::EdDSA => Family::Ed,
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => Family::Hmac,
    }
}

fn read(which: &'static str, path: &Path) -> Result<Vec<u8>, TokenOptionsError> {
    std::fs::read(path).map_err(|source| TokenOptionsError::ReadKey {
        which,
        path: path.display().to_string(),
        source,
    })
}

impl JwtTokens {
    /// Reads and checks the keys, as etcd does when it starts.
    pub fn load(options: &JwtOptions) -> Result<JwtTokens, TokenOptionsError> {
        let alg = options.sign_method;
        let fam = family(alg);
        let expected = match fam {
            Family::Rsa => "RSA",
            Family::Ec => "ECDSA (PKCS#8)",
            Family::Ed => "Ed25519 (PKCS#8)",
            Family::Hmac => "HMAC",
        };
        let bad = |which: &'static str, path: &Path, why: String| TokenOptionsError::BadKey {
            which,
            path: path.display().to_string(),
            expected,
            why,
        };
        if fam == Family::Hmac {
            // etcd signs HMAC tokens with the priv-key file's bytes as the secret.
            let path = options
                .private_key
                .as_deref()
                .ok_or(TokenOptionsError::MissingKey(algorithm_name(alg)))?;
            let secret = read("priv-key", path)?;
            return Ok(JwtTokens {
                algorithm: alg,
                signing: Some(EncodingKey::from_secret(&secret)),
                verifying: DecodingKey::from_secret(&secret),
                ttl: options.ttl,
            });
        }
        let public = match options.public_key.as_deref() {
            Some(path) => {
                let pem = read("pub-key", path)?;
                let key = match fam {
                    Family::Rsa => DecodingKey::from_rsa_pem(&pem),
                    Family::Ec => DecodingKey::from_ec_pem(&pem),
                    _ => DecodingKey::from_ed_pem(&pem),
                }
                .map_err(|e| bad("pub-key", path, e.to_string()))?;
                Some(key)
            }
            None => None,
        };
        let private = match options.private_key.as_deref() {
            Some(path) => {
                let pem = read("priv-key", path)?;
                let signing = match fam {
                    Family::Rsa => EncodingKey::from_rsa_pem(&pem),
                    Family::Ec => EncodingKey::from_ec_pem(&pem),
                    _ => EncodingKey::from_ed_pem(&pem),
                }
                .map_err(|e| bad("priv-key", path, e.to_string()))?;
                let derived = derive_public(alg, &pem).map_err(|why| bad("priv-key", path, why))?;
                Some((signing, derived))
            }
            None => None,
        };
        let (signing, verifying) = match (private, public) {
            (None, None) => return Err(TokenOptionsError::MissingKey(algorithm_name(alg))),
            (None, Some(public)) => (None, public),
            (Some((signing, derived)), None) => (Some(signing), derived),
            (Some((signing, _)), Some(public)) => (Some(signing), public),
        };
        let tokens = JwtTokens {
            algorithm: alg,
            signing,
            verifying,
            ttl: options.ttl,
        };
        if let (Some(public), Some(private)) = (&options.public_key, &options.private_key) {
            // A token the private key signs must pass the public key, or no token will.
            let probe = tokens.sign("", 0).ok();
            if probe.and_then(|t| tokens.verify(&t)).is_none() {
                return Err(TokenOptionsError::KeyMismatch {
                    public: public.display().to_string(),
                    private: private.display().to_string(),
                });
            }
        }
        Ok(tokens)
    }

    /// Whether this member can only verify (etcd's verify-only mode).
    pub fn verify_only(&self) -> bool {
        self.signing.is_none()
    }

    /// A token for `username` at auth revision `revision`, valid for the TTL.
    /// CPU-bound (an RSA signature takes about a millisecond): call it off the async
    /// threads and never on the Raft thread.
    pub fn sign(&self, username: &str, revision: u64) -> Result<String, JwtSignError> {
        let exp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_add(self.ttl)
            .as_secs();
        self.sign_expiring(username, revision, exp)
    }

    fn sign_expiring(
        &self,
        username: &str,
        revision: u64,
        exp: u64,
    ) -> Result<String, JwtSignError> {
        let key = self.signing.as_ref().ok_or(JwtSignError::VerifyOnly)?;
        let claims = Claims {
            exp,
            revision,
            username: username.to_owned(),
        };
        jsonwebtoken::encode(&Header::new(self.algorithm), &claims, key)
            .map_err(|e| JwtSignError::Sign(e.to_string()))
    }

    /// The user and auth revision a token was signed for, if it is signed with this
    /// cluster's key, by this sign method, and has not expired.
    pub fn verify(&self, token: &str) -> Option<AuthInfo> {
        let mut validation = Validation::new(self.algorithm);
        // etcd's JWT library allows no clock skew.
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp"]);
        match jsonwebtoken::decode::<Claims>(token, &self.verifying, &validation) {
            Ok(data) => Some(AuthInfo {
                username: data.claims.username,
                revision: data.claims.revision,
            }),
            Err(e) => {
                tracing::warn!(error = %e, "failed to parse a JWT token");
                None
            }
        }
    }
}

/// Why no token could be signed.
#[derive(Debug, thiserror::Error)]
pub enum JwtSignError {
    #[error("auth: token signing attempted with verify-only key")]
    VerifyOnly,
    #[error("auth: failed to sign a JWT token: {0}")]
    Sign(String),
}

/// The public half of a PEM private key, in the form `jsonwebtoken` verifies with
/// (ring's own public key encodings).
fn derive_public(alg: Algorithm, pem: &[u8]) -> Result<DecodingKey, String> {
    let der = PrivateKeyDer::from_pem_slice(pem).map_err(|e| format!("{e:?}"))?;
    let rng = ring::rand::SystemRandom::new();
    match (family(alg), &der) {
        (Family::Rsa, PrivateKeyDer::Pkcs1(k)) => {
            let pair =
                ring::rsa::KeyPair::from_der(k.secret_pkcs1_der()).map_err(|e| e.to_string())?;
            Ok(DecodingKey::from_rsa_der(pair.public_key().as_ref()))
        }
        (Family::Rsa, PrivateKeyDer::Pkcs8(k)) => {
            let pair =
                ring::rsa::KeyPair::from_pkcs8(k.secret_pkcs8_der()).map_err(|e| e.to_string())?;
            Ok(DecodingKey::from_rsa_der(pair.public_key().as_ref()))
        }
        (Family::Ec, PrivateKeyDer::Pkcs8(k)) => {
            let curve = if alg == Algorithm::ES384 {
                &ring::signature::ECDSA_P384_SHA384_FIXED_SIGNING
            } else {
                &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING
            };
            let pair = ring::signature::EcdsaKeyPair::from_pkcs8(curve, k.secret_pkcs8_der(), &rng)
                .map_err(|e| e.to_string())?;
            Ok(DecodingKey::from_ec_der(pair.public_key().as_ref()))
        }
        (Family::Ed, PrivateKeyDer::Pkcs8(k)) => {
            let pair =
                ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(k.secret_pkcs8_der())
                    .map_err(|e| e.to_string())?;
            Ok(DecodingKey::from_ed_der(pair.public_key().as_ref()))
        }
        (_, PrivateKeyDer::Sec1(_)) => {
            Err("a SEC1 \"EC PRIVATE KEY\"; convert it with `openssl pkcs8 -topk8 -nocrypt`".into())
        }
        _ => Err("the key is of another kind".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_read_as_etcd_reads_them() {
        assert_eq!(TokenOptions::parse("simple").unwrap(), TokenOptions::Simple);
        let TokenOptions::Jwt(o) =
            TokenOptions::parse("jwt,pub-key=/a.pub,priv-key=/a,sign-method=RS256").unwrap()
        else {
            panic!("not jwt")
        };
        assert_eq!(o.sign_method, Algorithm::RS256);
        assert_eq!(o.public_key.as_deref(), Some(Path::new("/a.pub")));
        assert_eq!(o.private_key.as_deref(), Some(Path::new("/a")));
        assert_eq!(o.ttl, DEFAULT_JWT_TTL);
        let TokenOptions::Jwt(o) = TokenOptions::parse("jwt,sign-method=EdDSA,ttl=1m30s").unwrap()
        else {
            panic!("not jwt")
        };
        assert_eq!(o.ttl, Duration::from_secs(90));
        for (bad, text) in [
            (
                "jwt,sign-method=RS256,ttl=forever",
                "auth: invalid auth options: --auth-token \"jwt,sign-method=RS256,ttl=forever\": ttl \"forever\" is not a duration",
            ),
            (
                "jwt",
                "auth: invalid auth signature method: sign-method \"\"",
            ),
            (
                "jwt,sign-method=none",
                "auth: invalid auth signature method: sign-method \"none\"",
            ),
            (
                "jwt,sign-method",
                "auth: invalid auth options: --auth-token \"jwt,sign-method\": \"sign-method\" is not key=value",
            ),
            (
                "jwt,ttl=1m,ttl=2m",
                "auth: invalid auth options: --auth-token \"jwt,ttl=1m,ttl=2m\": \"ttl\" is given twice",
            ),
            (
                "paseto",
                "auth: invalid auth options: --auth-token \"paseto\": unknown token type \"paseto\"",
            ),
        ] {
            let e = TokenOptions::parse(bad).unwrap_err().to_string();
            assert!(e.starts_with(text), "{bad}: {e}");
        }
    }

    #[test]
    fn a_missing_key_is_refused_with_etcds_text() {
        let o = JwtOptions {
            sign_method: Algorithm::RS256,
            public_key: None,
            private_key: None,
            ttl: DEFAULT_JWT_TTL,
        };
        let e = JwtTokens::load(&o).unwrap_err().to_string();
        assert!(e.starts_with("auth: missing key data"), "{e}");
    }

    #[test]
    fn hmac_tokens_round_trip_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, b"a shared secret of some length").unwrap();
        let o = JwtOptions {
            sign_method: Algorithm::HS256,
            public_key: None,
            private_key: Some(secret.clone()),
            ttl: DEFAULT_JWT_TTL,
        };
        let tokens = JwtTokens::load(&o).unwrap();
        let token = tokens.sign("alice", 7).unwrap();
        assert_eq!(
            tokens.verify(&token),
            Some(AuthInfo {
                username: "alice".into(),
                revision: 7
            })
        );
        // Another secret: refused.
        std::fs::write(&secret, b"another secret").unwrap();
        assert_eq!(JwtTokens::load(&o).unwrap().verify(&token), None);
        // Expired a second ago: refused (no leeway).
        let tokens = JwtTokens::load(&o).unwrap();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let expired = tokens.sign_expiring("alice", 7, now - 1).unwrap();
        assert_eq!(tokens.verify(&expired), None);
        let live = tokens.sign_expiring("alice", 7, now + 60).unwrap();
        assert!(tokens.verify(&live).is_some());
    }
}
