//! etcd's `simple` tokens: random strings the cluster remembers, in memory.
//!
//! A token is `<16 random letters>.<log index>`. The letters are chosen by the member
//! that checked the password; the index is that of the log entry that registered it,
//! which every member applies, so the token is valid on every member (as in etcd).
//! Each member forgets a token after `--auth-token-ttl` without use (every use restarts
//! its countdown, per member), when its user is deleted or changes password, when auth
//! is disabled, and on restart. Expired tokens are dropped whenever a token is added,
//! so the table holds no more than the tokens issued within one TTL.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// etcd's `defaultSimpleTokenLength`.
const PREFIX_LENGTH: usize = 16;
const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";

struct Entry {
    user: String,
    deadline: Instant,
}

pub struct SimpleTokens {
    ttl: Duration,
    tokens: Mutex<HashMap<String, Entry>>,
}

impl SimpleTokens {
    pub fn new(ttl: Duration) -> Self {
        SimpleTokens {
            ttl,
            tokens: Mutex::default(),
        }
    }

    /// A fresh random token prefix (from the OS's random source, through ring).
    pub fn new_prefix() -> Result<String, ring::error::Unspecified> {
        use ring::rand::SecureRandom as _;
        let mut bytes = [0u8; PREFIX_LENGTH];
        ring::rand::SystemRandom::new().fill(&mut bytes)?;
        // 52 letters: the modulo bias (256 % 52 = 48) costs well under a bit of the
        // token's ~91 bits, as etcd's own.
        Ok(bytes
            .iter()
            .map(|b| LETTERS[*b as usize % LETTERS.len()] as char)
            .collect())
    }

    pub fn token(prefix: &str, index: u64) -> String {
        format!("{prefix}.{index}")
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.tokens.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn assign(&self, token: String, user: &str) {
        let now = Instant::now();
        let mut tokens = self.lock();
        tokens.retain(|_, e| e.deadline > now);
        tokens.insert(
            token,
            Entry {
                user: user.to_owned(),
                deadline: now + self.ttl,
            },
        );
    }

    /// The user a live token stands for; using it restarts its countdown.
    pub fn user_of(&self, token: &str) -> Option<String> {
        let now = Instant::now();
        let mut tokens = self.lock();
        let entry = tokens.get_mut(token)?;
        if entry.deadline <= now {
            tokens.remove(token);
            return None;
        }
        entry.deadline = now + self.ttl;
        Some(entry.user.clone())
    }

    pub fn invalidate_user(&self, user: &str) {
        self.lock().retain(|_, e| e.user != user);
    }

    pub fn clear(&self) {
        self.lock().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_expire_and_follow_their_user() {
        let t = SimpleTokens::new(Duration::from_millis(0));
        t.assign("a.1".into(), "alice");
        assert_eq!(t.user_of("a.1"), None, "a zero TTL expires at once");
        let t = SimpleTokens::new(Duration::from_secs(300));
        t.assign("a.1".into(), "alice");
        t.assign("b.2".into(), "bob");
        assert_eq!(t.user_of("a.1").as_deref(), Some("alice"));
        t.invalidate_user("alice");
        assert_eq!(t.user_of("a.1"), None);
        assert_eq!(t.user_of("b.2").as_deref(), Some("bob"));
        let p = SimpleTokens::new_prefix().unwrap();
        assert_eq!(p.len(), PREFIX_LENGTH);
        assert!(p.bytes().all(|b| b.is_ascii_alphabetic()));
    }
}
