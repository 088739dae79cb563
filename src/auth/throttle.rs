//! Login throttling, in memory: slows guessing without ever locking the real user out for
//! long.
//!
//! An attempt is counted when it starts (so a thousand simultaneous guesses are counted
//! before any of them is verified) and refunded when it succeeds; an account verifies one
//! attempt at a time. Three counters, each forgotten after `FORGET` without failures:
//! - per account and address: after `failures_before_delay` failures the pair waits 1 s, then
//!   2 s, 4 s … up to `max_lockout_secs`;
//! - per account, all addresses together: the same, from four times that many failures, so
//!   that guessing from many addresses is slowed too (and still locks out for at most the cap);
//! - per address: at most `ip_failures_per_window` failures per window, to stop one machine
//!   spraying many accounts. A whole school often shares one address, so an account that
//!   signed in from that address in the last day is not held back by this counter.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::AuthConfig;

const MAX_TRACKED: usize = 50_000;
/// Failures older than this, with none since, are forgotten.
const FORGET: Duration = Duration::from_secs(15 * 60);
/// How long a successful sign-in makes an (account, address) pair "known".
const KNOWN_FOR: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug)]
pub struct LoginThrottle {
    failures_before_delay: u32,
    max_lockout: Duration,
    ip_limit: u32,
    ip_window: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    pairs: HashMap<(String, IpAddr), Counter>,
    accounts: HashMap<String, Counter>,
    addresses: HashMap<IpAddr, Window>,
    known: HashMap<(String, IpAddr), Instant>,
    in_flight: HashMap<String, u32>,
}

#[derive(Debug, Clone, Copy)]
struct Counter {
    failures: u32,
    last: Instant,
    blocked_until: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    failures: u32,
}

impl Counter {
    fn fresh(now: Instant) -> Counter {
        Counter {
            failures: 0,
            last: now,
            blocked_until: now,
        }
    }

    fn current(self, now: Instant) -> Counter {
        if now.duration_since(self.last) > FORGET {
            Counter::fresh(now)
        } else {
            self
        }
    }

    fn fail(&mut self, now: Instant, threshold: u32, cap: Duration) {
        *self = self.current(now);
        self.failures = self.failures.saturating_add(1);
        self.last = now;
        if self.failures >= threshold {
            let doublings = (self.failures - threshold).min(30);
            self.blocked_until = now + Duration::from_secs(1u64 << doublings).min(cap);
        }
    }

    fn refund(&mut self) {
        self.failures = self.failures.saturating_sub(1);
    }
}

/// An attempt in progress. Dropping it without [`Attempt::succeeded`] leaves it counted as
/// a failure (a client that disconnects mid-check gains nothing).
#[derive(Debug)]
pub struct Attempt {
    throttle: Arc<LoginThrottle>,
    account: String,
    ip: IpAddr,
    succeeded: bool,
}

impl Attempt {
    pub fn succeeded(mut self) {
        self.succeeded = true;
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        self.throttle
            .finish(&self.account, self.ip, self.succeeded, Instant::now());
    }
}

impl LoginThrottle {
    pub fn new(config: &AuthConfig) -> LoginThrottle {
        LoginThrottle {
            failures_before_delay: config.failures_before_delay.max(1),
            max_lockout: Duration::from_secs(config.max_lockout_secs.max(1)),
            ip_limit: config.ip_failures_per_window.max(1),
            ip_window: Duration::from_secs(config.ip_window_secs.max(1)),
            state: Mutex::new(State::default()),
        }
    }

    /// Starts an attempt, or says how long to wait before trying again.
    pub fn begin(
        self: &Arc<Self>,
        account: &str,
        ip: IpAddr,
        now: Instant,
    ) -> Result<Attempt, Duration> {
        let Ok(mut s) = self.state.lock() else {
            return Err(Duration::from_secs(1));
        };
        s.prune(now, self.ip_window);
        let pair_key = (account.to_string(), ip);
        let mut wait = Duration::ZERO;
        if let Some(c) = s.pairs.get(&pair_key).map(|c| c.current(now)) {
            wait = wait.max(c.blocked_until.saturating_duration_since(now));
        }
        if let Some(c) = s.accounts.get(account).map(|c| c.current(now)) {
            wait = wait.max(c.blocked_until.saturating_duration_since(now));
        }
        let known = s
            .known
            .get(&pair_key)
            .is_some_and(|at| now.duration_since(*at) < KNOWN_FOR);
        if !known
            && let Some(w) = s.addresses.get(&ip)
            && now.duration_since(w.start) < self.ip_window
            && w.failures >= self.ip_limit
        {
            wait = wait.max(self.ip_window - now.duration_since(w.start));
        }
        if s.in_flight.get(account).copied().unwrap_or(0) > 0 {
            wait = wait.max(Duration::from_secs(1));
        }
        if wait > Duration::ZERO {
            return Err(wait);
        }
        let (threshold, cap) = (self.failures_before_delay, self.max_lockout);
        s.pairs
            .entry(pair_key)
            .or_insert_with(|| Counter::fresh(now))
            .fail(now, threshold, cap);
        s.accounts
            .entry(account.to_string())
            .or_insert_with(|| Counter::fresh(now))
            .fail(now, threshold.saturating_mul(4), cap);
        let window = self.ip_window;
        let w = s.addresses.entry(ip).or_insert(Window {
            start: now,
            failures: 0,
        });
        if now.duration_since(w.start) >= window {
            *w = Window {
                start: now,
                failures: 0,
            };
        }
        w.failures = w.failures.saturating_add(1);
        *s.in_flight.entry(account.to_string()).or_insert(0) += 1;
        Ok(Attempt {
            throttle: self.clone(),
            account: account.to_string(),
            ip,
            succeeded: false,
        })
    }

    fn finish(&self, account: &str, ip: IpAddr, success: bool, now: Instant) {
        let Ok(mut s) = self.state.lock() else {
            return;
        };
        if let Some(n) = s.in_flight.get_mut(account) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                s.in_flight.remove(account);
            }
        }
        if success {
            let pair_key = (account.to_string(), ip);
            s.pairs.remove(&pair_key);
            if let Some(c) = s.accounts.get_mut(account) {
                c.refund();
                c.blocked_until = c.last;
            }
            if let Some(w) = s.addresses.get_mut(&ip) {
                w.failures = w.failures.saturating_sub(1);
            }
            s.known.insert(pair_key, now);
        }
    }
}

impl State {
    fn prune(&mut self, now: Instant, window: Duration) {
        if self.pairs.len() > MAX_TRACKED {
            self.pairs
                .retain(|_, c| now.duration_since(c.last) <= FORGET);
        }
        if self.accounts.len() > MAX_TRACKED {
            self.accounts
                .retain(|_, c| now.duration_since(c.last) <= FORGET);
        }
        if self.addresses.len() > MAX_TRACKED {
            self.addresses
                .retain(|_, w| now.duration_since(w.start) < window);
        }
        if self.known.len() > MAX_TRACKED {
            self.known
                .retain(|_, at| now.duration_since(*at) < KNOWN_FOR);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle() -> Arc<LoginThrottle> {
        Arc::new(LoginThrottle::new(&AuthConfig {
            failures_before_delay: 3,
            max_lockout_secs: 10,
            ip_failures_per_window: 8,
            ip_window_secs: 60,
            ..AuthConfig::default()
        }))
    }

    fn fail(t: &Arc<LoginThrottle>, account: &str, ip: IpAddr, now: Instant) {
        let a = t.begin(account, ip, now).expect("allowed");
        t.finish(&a.account, a.ip, false, now);
        std::mem::forget(a); // finished by hand with an explicit time
    }

    fn ip(last: u8) -> IpAddr {
        [10, 0, 0, last].into()
    }

    #[test]
    fn an_account_waits_longer_after_each_failure_but_never_past_the_cap() {
        let t = throttle();
        let t0 = Instant::now();
        fail(&t, "amel", ip(1), t0);
        fail(&t, "amel", ip(1), t0);
        assert!(
            t.begin("amel", ip(1), t0).is_ok(),
            "two failures cost nothing"
        );
        // That third attempt was counted when it began (it was dropped unfinished).
        assert_eq!(
            t.begin("amel", ip(1), t0).unwrap_err(),
            Duration::from_secs(1)
        );
        let mut now = t0;
        for _ in 0..10 {
            now += Duration::from_secs(11);
            fail(&t, "amel", ip(1), now);
        }
        assert_eq!(
            t.begin("amel", ip(1), now).unwrap_err(),
            Duration::from_secs(10),
            "capped"
        );
        assert!(
            t.begin("amel", ip(1), now + Duration::from_secs(10))
                .is_ok()
        );
    }

    #[test]
    fn simultaneous_guesses_are_counted_before_they_are_checked() {
        let t = throttle();
        let t0 = Instant::now();
        let first = t.begin("zoe", ip(2), t0).unwrap();
        assert!(
            t.begin("zoe", ip(2), t0).is_err(),
            "one verification at a time per account"
        );
        assert!(t.begin("zoe", ip(3), t0).is_err(), "from any address");
        drop(first);
        let mut allowed = 0;
        for _ in 0..1000 {
            if let Ok(a) = t.begin("zoe", ip(2), t0) {
                allowed += 1;
                drop(a);
            }
        }
        assert!(
            allowed <= 3,
            "{allowed} guesses got through in the same instant"
        );
    }

    #[test]
    fn success_refunds_the_attempt_and_failures_are_forgotten() {
        let t = throttle();
        let t0 = Instant::now();
        for _ in 0..2 {
            fail(&t, "leo", ip(4), t0);
        }
        t.begin("leo", ip(4), t0).unwrap().succeeded();
        for _ in 0..2 {
            fail(&t, "leo", ip(4), t0);
        }
        assert!(
            t.begin("leo", ip(4), t0).is_ok(),
            "the success cleared the earlier failures"
        );
        let later = t0 + FORGET + Duration::from_secs(1);
        for _ in 0..2 {
            fail(&t, "ines", ip(5), t0);
        }
        for _ in 0..2 {
            fail(&t, "ines", ip(5), later);
        }
        assert!(
            t.begin("ines", ip(5), later).is_ok(),
            "old failures were forgotten"
        );
    }

    #[test]
    fn an_attacker_elsewhere_does_not_lock_the_pupil_out_of_their_classroom() {
        let t = throttle();
        let t0 = Instant::now();
        let mut now = t0;
        for _ in 0..6 {
            now += Duration::from_secs(11);
            fail(&t, "noah", ip(66), now);
        }
        assert!(
            t.begin("noah", ip(66), now).is_err(),
            "the attacker's address waits"
        );
        assert!(
            t.begin("noah", ip(7), now).is_ok(),
            "the classroom's address does not"
        );
    }

    #[test]
    fn one_address_spraying_accounts_is_stopped_but_known_pupils_still_sign_in() {
        let t = throttle();
        let t0 = Instant::now();
        let school = ip(100);
        t.begin("lea", school, t0).unwrap().succeeded();
        for i in 0..8 {
            fail(&t, &format!("victim{i}"), school, t0);
        }
        assert!(
            t.begin("fresh", school, t0).is_err(),
            "spraying from one address is stopped"
        );
        assert!(
            t.begin("fresh", ip(101), t0).is_ok(),
            "other addresses are not"
        );
        assert!(
            t.begin("lea", school, t0).is_ok(),
            "a pupil who signed in from here is not held back"
        );
        assert!(
            t.begin("fresh", school, t0 + Duration::from_secs(61))
                .is_ok(),
            "the window ends"
        );
    }
}
