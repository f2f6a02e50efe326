//! Fault injection: latency, throttling (429/503 with Retry-After), token endpoint outages and
//! connection resets mid-body, scoped by path prefix and driven by a seeded RNG.

use rand::{Rng as _, SeedableRng as _, rngs::StdRng};
use serde::{Deserialize, Serialize};

/// One fault rule. Rules are checked in order for every request outside `/_emulator`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FaultRule {
    /// Only requests whose path starts with this prefix (empty: every path).
    #[serde(default)]
    pub path_prefix: String,
    /// What happens.
    #[serde(flatten)]
    pub kind: FaultKind,
    /// Probability in [0, 1] that a matching request is hit (default 1).
    #[serde(default = "one")]
    pub rate: f64,
    /// How many more requests this rule may hit (None: unlimited).
    #[serde(default)]
    pub times: Option<u32>,
}

fn one() -> f64 {
    1.0
}

/// The kinds of fault.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FaultKind {
    /// Delay the response.
    Latency { ms: u64 },
    /// Answer with this status (429 or 503 typically) and `Retry-After` seconds.
    Status {
        status: u16,
        #[serde(default)]
        retry_after: Option<u64>,
    },
    /// Drop the connection (TCP reset) once this many request-body bytes have arrived.
    ResetAfter { bytes: u64 },
    /// 503 on every token endpoint (ACS, AAD v1/v2, login.live.com) under the prefix.
    TokenOutage {
        #[serde(default)]
        retry_after: Option<u64>,
    },
    /// Answer a 202 (an accepted Graph chunk) without its `nextExpectedRanges`, as Graph does
    /// at times: the client must ask the session where it stands.
    OmitNextExpectedRanges,
}

impl FaultRule {
    /// Convenience constructor for tests.
    pub fn new(path_prefix: &str, kind: FaultKind) -> FaultRule {
        FaultRule {
            path_prefix: path_prefix.into(),
            kind,
            rate: 1.0,
            times: None,
        }
    }
    /// Sets the hit probability.
    pub fn rate(mut self, rate: f64) -> FaultRule {
        self.rate = rate;
        self
    }
    /// Limits the number of hits.
    pub fn times(mut self, n: u32) -> FaultRule {
        self.times = Some(n);
        self
    }
}

pub(crate) struct Faults {
    pub rules: Vec<FaultRule>,
    rng: StdRng,
}

/// What the request pipeline must do for one request.
#[derive(Default, Debug)]
pub(crate) struct Decision {
    pub latency_ms: u64,
    pub status: Option<(u16, Option<u64>)>,
    pub reset_after: Option<u64>,
    pub omit_next_ranges: bool,
}

pub(crate) fn is_token_endpoint(path: &str) -> bool {
    let p = path.to_ascii_lowercase();
    p.ends_with("/oauth2/token")
        || p.ends_with("/oauth2/v2.0/token")
        || p.ends_with("/tokens/oauth/2")
        || p.ends_with("/oauth20_token.srf")
}

impl Faults {
    pub fn new(rules: Vec<FaultRule>, seed: u64) -> Faults {
        Faults {
            rules,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    pub fn decide(&mut self, path: &str) -> Decision {
        let mut d = Decision::default();
        for rule in &mut self.rules {
            if !path.starts_with(&rule.path_prefix) {
                continue;
            }
            if let FaultKind::TokenOutage { .. } = rule.kind
                && !is_token_endpoint(path)
            {
                continue;
            }
            if rule.times == Some(0) {
                continue;
            }
            let roll: f64 = self.rng.random();
            if roll >= rule.rate {
                continue;
            }
            if let Some(t) = rule.times.as_mut() {
                *t -= 1;
            }
            match rule.kind {
                FaultKind::Latency { ms } => d.latency_ms += ms,
                FaultKind::Status {
                    status,
                    retry_after,
                } => {
                    d.status.get_or_insert((status, retry_after));
                }
                FaultKind::TokenOutage { retry_after } => {
                    d.status.get_or_insert((503, retry_after));
                }
                FaultKind::ResetAfter { bytes } => {
                    d.reset_after.get_or_insert(bytes);
                }
                FaultKind::OmitNextExpectedRanges => d.omit_next_ranges = true,
            }
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_rate_is_deterministic() {
        let rule = FaultRule::new(
            "/graph",
            FaultKind::Status {
                status: 429,
                retry_after: Some(1),
            },
        )
        .rate(0.5);
        let run = |seed| {
            let mut f = Faults::new(vec![rule.clone()], seed);
            (0..64)
                .map(|_| f.decide("/graph/v1.0/x").status.is_some())
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        let hits = run(7).iter().filter(|h| **h).count();
        assert!(hits > 10 && hits < 54, "rate 0.5 gave {hits}/64");
    }

    #[test]
    fn scope_times_and_token_outage() {
        let mut f = Faults::new(
            vec![
                FaultRule::new("/sites", FaultKind::ResetAfter { bytes: 10 }).times(1),
                FaultRule::new("", FaultKind::TokenOutage { retry_after: None }),
            ],
            1,
        );
        assert_eq!(f.decide("/graph/v1.0/me").status, None);
        assert_eq!(f.decide("/sites/team/_api/web").reset_after, Some(10));
        assert_eq!(f.decide("/sites/team/_api/web").reset_after, None);
        assert_eq!(
            f.decide("/login/common/oauth2/v2.0/token").status,
            Some((503, None))
        );
    }

    #[test]
    fn rules_parse_from_json() {
        let r: FaultRule = serde_json::from_str(
            r#"{"path_prefix":"/graph","kind":"status","status":503,"retry_after":2,"rate":0.25}"#,
        )
        .map_err(|e| e.to_string())
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.rate, 0.25);
        assert_eq!(
            r.kind,
            FaultKind::Status {
                status: 503,
                retry_after: Some(2)
            }
        );
    }
}
