//! The sign-in attempts a connection already completed, kept in its secret so that a callback
//! replayed later (same code, state and cookie) is refused.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// The attempt was already consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("this sign-in attempt was already used")]
pub struct AlreadyConsumed;

/// The id of one sign-in attempt and when its `state` expires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayKey {
    /// base64url SHA-256 of the attempt's nonce.
    pub id: String,
    /// Unix seconds after which the `state` is refused as expired anyway.
    #[serde(rename = "exp")]
    pub expires_at: i64,
}

/// How many consumed attempts a connection secret remembers.
pub const MAX_CONSUMED_STATES: usize = 16;

/// The sign-in attempts a connection already completed, newest last, kept in its secret.
///
/// Bounded twice: entries whose `state` has expired are dropped (an expired `state` is refused
/// before this list is consulted), and at most [`MAX_CONSUMED_STATES`] are kept. Serialises as a
/// JSON array of `{"id": …, "exp": …}`; a longer array read back is trimmed to the newest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Vec<ReplayKey>", into = "Vec<ReplayKey>")]
pub struct ConsumedStates {
    entries: VecDeque<ReplayKey>,
}

impl ConsumedStates {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `key` was already consumed.
    pub fn contains(&self, key: &ReplayKey) -> bool {
        self.entries.iter().any(|e| e.id == key.id)
    }

    /// Marks `key` consumed at `now`, or says it already was. Drops expired entries and keeps the
    /// newest [`MAX_CONSUMED_STATES`].
    pub fn record(&mut self, key: &ReplayKey, now: OffsetDateTime) -> Result<(), AlreadyConsumed> {
        if self.contains(key) {
            return Err(AlreadyConsumed);
        }
        let now = now.unix_timestamp();
        self.entries.retain(|e| e.expires_at > now);
        self.entries.push_back(key.clone());
        self.trim();
        Ok(())
    }

    /// Number of remembered attempts.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The remembered attempts, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &ReplayKey> {
        self.entries.iter()
    }

    fn trim(&mut self) {
        while self.entries.len() > MAX_CONSUMED_STATES {
            self.entries.pop_front();
        }
    }
}

impl From<Vec<ReplayKey>> for ConsumedStates {
    fn from(v: Vec<ReplayKey>) -> Self {
        let mut s = ConsumedStates { entries: v.into() };
        s.trim();
        s
    }
}

impl From<ConsumedStates> for Vec<ReplayKey> {
    fn from(s: ConsumedStates) -> Self {
        s.entries.into()
    }
}
