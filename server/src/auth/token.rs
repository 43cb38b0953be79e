//! etcd's simple tokens (`simple_token.go`): `<16 random letters>.<raft index>`, registered on
//! every member when the Authenticate entry applies, and valid while used at least once per
//! TTL (each use restarts it). Held in memory only, as etcd's: a restarted member forgets
//! them, and clients authenticate again on `invalid auth token`.

use parking_lot::Mutex;
use rand::Rng;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Tokens held at most; past it, expired ones go first, then the ones closest to expiring.
pub const MAX_TOKENS: usize = 64 * 1024;
/// Longest token accepted for a lookup (etcd's are 16 letters, a dot and an index).
pub const MAX_TOKEN_LEN: usize = 64;

struct Entry {
    user: String,
    deadline: Instant,
}

pub struct SimpleTokens {
    ttl: Duration,
    tokens: Mutex<HashMap<String, Entry>>,
}

/// A fresh token prefix: 16 ASCII letters.
pub fn gen_prefix() -> String {
    const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut rng = rand::rng();
    (0..16)
        .map(|_| LETTERS[rng.random_range(0..LETTERS.len())] as char)
        .collect()
}

/// The raft index a simple token names, if it has etcd's shape.
pub fn token_index(token: &str) -> Option<u64> {
    let (prefix, index) = token.split_once('.')?;
    if prefix.is_empty() || index.contains('.') {
        return None;
    }
    index.parse().ok()
}

impl SimpleTokens {
    pub fn new(ttl: Duration) -> Self {
        SimpleTokens {
            ttl,
            tokens: Mutex::new(HashMap::new()),
        }
    }

    /// Registers `token` for `user` (at apply).
    pub fn assign(&self, token: String, user: &str) {
        let now = Instant::now();
        let mut t = self.tokens.lock();
        if t.len() >= MAX_TOKENS {
            t.retain(|_, e| e.deadline > now);
        }
        if t.len() >= MAX_TOKENS {
            if let Some(oldest) = t
                .iter()
                .min_by_key(|(_, e)| e.deadline)
                .map(|(k, _)| k.clone())
            {
                t.remove(&oldest);
            }
        }
        t.insert(
            token,
            Entry {
                user: user.to_string(),
                deadline: now + self.ttl,
            },
        );
    }

    /// The user a live token names; the use restarts its TTL.
    pub fn user(&self, token: &str) -> Option<String> {
        if token.len() > MAX_TOKEN_LEN {
            return None;
        }
        let now = Instant::now();
        let mut t = self.tokens.lock();
        let e = t.get_mut(token)?;
        if e.deadline <= now {
            t.remove(token);
            return None;
        }
        e.deadline = now + self.ttl;
        Some(e.user.clone())
    }

    /// Forgets every token of `user` (deleted, or its password changed).
    pub fn invalidate_user(&self, user: &str) {
        self.tokens.lock().retain(|_, e| e.user != user);
    }

    /// Forgets every token (auth disabled).
    pub fn clear(&self) {
        self.tokens.lock().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_expire_unless_used_and_go_with_their_user() {
        let t = SimpleTokens::new(Duration::from_millis(200));
        let p = gen_prefix();
        assert_eq!(p.len(), 16);
        assert!(p.bytes().all(|b| b.is_ascii_alphabetic()));
        let tok = format!("{p}.12");
        assert_eq!(token_index(&tok), Some(12));
        assert_eq!(token_index("abc"), None);
        assert_eq!(token_index("a.b.c"), None);
        assert_eq!(token_index(".5"), None);
        t.assign(tok.clone(), "alice");
        for _ in 0..4 {
            std::thread::sleep(Duration::from_millis(100));
            assert_eq!(t.user(&tok).as_deref(), Some("alice"), "use refreshes");
        }
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(t.user(&tok), None, "expired");
        t.assign(tok.clone(), "alice");
        t.assign("x.1".into(), "bob");
        t.invalidate_user("alice");
        assert_eq!(t.user(&tok), None);
        assert_eq!(t.user("x.1").as_deref(), Some("bob"));
        t.clear();
        assert_eq!(t.user("x.1"), None);
        assert_eq!(t.user(&"y".repeat(1000)), None);
    }
}
