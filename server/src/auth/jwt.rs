//! etcd's JWT tokens (`jwt.go`), chosen with `--auth-token jwt,pub-key=<file>,priv-key=<file>,
//! sign-method=<alg>[,ttl=<duration>]`: a signed `{username, revision, exp}` claim set, so any
//! member holding the public key verifies it without state. The revision in the token is the
//! auth revision it was issued at (signed by the member that served the Authenticate, off the
//! raft thread): once the auth store moves on, key checks answer `revision of
//! auth store is old` and clients log in again, as with etcd.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// etcd's default JWT lifetime.
const DEFAULT_TTL: Duration = Duration::from_secs(300);
/// Longest token accepted for a check.
const MAX_TOKEN_LEN: usize = 16 * 1024;

#[derive(serde::Serialize, serde::Deserialize)]
struct Claims {
    username: String,
    revision: u64,
    exp: u64,
}

pub struct JwtTokens {
    alg: Algorithm,
    sign: Option<EncodingKey>,
    verify: DecodingKey,
    ttl: Duration,
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("bad jwt ttl {s:?}"))?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        _ => return Err(format!("bad jwt ttl {s:?} (use s, m or h)")),
    };
    Ok(Duration::from_secs(secs))
}

fn is_ec(alg: Algorithm) -> bool {
    matches!(alg, Algorithm::ES256 | Algorithm::ES384)
}

impl JwtTokens {
    /// Builds the provider from the options after `jwt,` and the key files they name.
    pub fn from_options(options: &str) -> Result<Self, String> {
        let (mut public, mut private, mut method, mut ttl) = (None, None, None, DEFAULT_TTL);
        for opt in options.split(',').filter(|o| !o.is_empty()) {
            let (k, v) = opt
                .split_once('=')
                .ok_or_else(|| format!("jwt option {opt:?} is not key=value"))?;
            match k {
                "pub-key" => public = Some(v.to_string()),
                "priv-key" => private = Some(v.to_string()),
                "sign-method" => method = Some(v.to_string()),
                "ttl" => ttl = parse_ttl(v)?,
                _ => return Err(format!("unknown jwt option {k:?}")),
            }
        }
        let method = method.ok_or("jwt needs sign-method")?;
        let alg: Algorithm = method
            .parse()
            .map_err(|_| format!("unknown jwt sign-method {method:?}"))?;
        if !matches!(
            alg,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
                | Algorithm::ES256
                | Algorithm::ES384
        ) {
            return Err(format!("jwt sign-method {method} is not offered"));
        }
        let read = |path: &str| std::fs::read(path).map_err(|e| format!("{path}: {e}"));
        let public = public.ok_or("jwt needs pub-key")?;
        let pem = read(&public)?;
        let verify = if is_ec(alg) {
            DecodingKey::from_ec_pem(&pem)
        } else {
            DecodingKey::from_rsa_pem(&pem)
        }
        .map_err(|e| format!("{public}: {e}"))?;
        let sign = match private {
            None => None,
            Some(path) => {
                let pem = read(&path)?;
                let key = if is_ec(alg) {
                    EncodingKey::from_ec_pem(&pem)
                } else {
                    EncodingKey::from_rsa_pem(&pem)
                };
                Some(key.map_err(|e| format!("{path}: {e}"))?)
            }
        };
        Ok(JwtTokens {
            alg,
            sign,
            verify,
            ttl,
        })
    }

    /// A token for `user` at auth revision `revision`; `None` on a member without the private
    /// key (it can verify tokens, not issue them).
    pub fn sign(&self, user: &str, revision: u64) -> Option<String> {
        let key = self.sign.as_ref()?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
        let claims = Claims {
            username: user.to_string(),
            revision,
            exp: (now + self.ttl).as_secs(),
        };
        jsonwebtoken::encode(&Header::new(self.alg), &claims, key).ok()
    }

    /// The user and auth revision of a valid, unexpired token signed with this key.
    pub fn verify(&self, token: &str) -> Option<(String, u64)> {
        if token.len() > MAX_TOKEN_LEN {
            return None;
        }
        let mut v = Validation::new(self.alg);
        v.leeway = 0;
        let data = jsonwebtoken::decode::<Claims>(token, &self.verify, &v).ok()?;
        Some((data.claims.username, data.claims.revision))
    }
}
