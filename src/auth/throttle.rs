//! Login throttling, per account and per client address, in memory.
//!
//! Per account: after `failures_before_delay` failures in a row the account must wait
//! 1 s, then 2 s, 4 s … capped at `max_lockout_secs`; a success clears it. The real user is
//! never locked out for longer than the cap. Per address: at most `ip_failures_per_window`
//! failures per window (generous, because a whole school is often one address).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::AuthConfig;

#[derive(Debug)]
pub struct LoginThrottle {
    failures_before_delay: u32,
    max_lockout: Duration,
    ip_limit: u32,
    ip_window: Duration,
    accounts: Mutex<HashMap<String, AccountState>>,
    addresses: Mutex<HashMap<IpAddr, AddressState>>,
}

#[derive(Debug, Clone, Copy)]
struct AccountState {
    failures: u32,
    blocked_until: Instant,
}

#[derive(Debug, Clone, Copy)]
struct AddressState {
    window_start: Instant,
    failures: u32,
}

const MAX_TRACKED: usize = 50_000;

impl LoginThrottle {
    pub fn new(config: &AuthConfig) -> LoginThrottle {
        LoginThrottle {
            failures_before_delay: config.failures_before_delay.max(1),
            max_lockout: Duration::from_secs(config.max_lockout_secs.max(1)),
            ip_limit: config.ip_failures_per_window.max(1),
            ip_window: Duration::from_secs(config.ip_window_secs.max(1)),
            accounts: Mutex::new(HashMap::new()),
            addresses: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(wait)` when this attempt must be refused before checking the password.
    pub fn check(&self, account: &str, ip: IpAddr, now: Instant) -> Option<Duration> {
        let mut wait = Duration::ZERO;
        if let Ok(accounts) = self.accounts.lock()
            && let Some(s) = accounts.get(account)
            && s.blocked_until > now
        {
            wait = s.blocked_until - now;
        }
        if let Ok(addresses) = self.addresses.lock()
            && let Some(s) = addresses.get(&ip)
            && now.duration_since(s.window_start) < self.ip_window
            && s.failures >= self.ip_limit
        {
            wait = wait.max(self.ip_window - now.duration_since(s.window_start));
        }
        (wait > Duration::ZERO).then_some(wait)
    }

    pub fn record_failure(&self, account: &str, ip: IpAddr, now: Instant) {
        if let Ok(mut accounts) = self.accounts.lock() {
            if accounts.len() > MAX_TRACKED {
                accounts.retain(|_, s| s.blocked_until > now);
            }
            let s = accounts.entry(account.to_string()).or_insert(AccountState {
                failures: 0,
                blocked_until: now,
            });
            s.failures = s.failures.saturating_add(1);
            if s.failures >= self.failures_before_delay {
                let doublings = (s.failures - self.failures_before_delay).min(30);
                let delay = Duration::from_secs(1u64 << doublings).min(self.max_lockout);
                s.blocked_until = now + delay;
            }
        }
        if let Ok(mut addresses) = self.addresses.lock() {
            if addresses.len() > MAX_TRACKED {
                let window = self.ip_window;
                addresses.retain(|_, s| now.duration_since(s.window_start) < window);
            }
            let s = addresses.entry(ip).or_insert(AddressState {
                window_start: now,
                failures: 0,
            });
            if now.duration_since(s.window_start) >= self.ip_window {
                *s = AddressState {
                    window_start: now,
                    failures: 0,
                };
            }
            s.failures = s.failures.saturating_add(1);
        }
    }

    pub fn record_success(&self, account: &str) {
        if let Ok(mut accounts) = self.accounts.lock() {
            accounts.remove(account);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle() -> LoginThrottle {
        LoginThrottle::new(&AuthConfig {
            failures_before_delay: 3,
            max_lockout_secs: 10,
            ip_failures_per_window: 5,
            ip_window_secs: 60,
            ..AuthConfig::default()
        })
    }

    #[test]
    fn an_account_waits_longer_after_each_failure_but_never_past_the_cap() {
        let t = throttle();
        let ip: IpAddr = [10, 0, 0, 1].into();
        let ip2: IpAddr = [10, 0, 0, 2].into();
        let t0 = Instant::now();
        t.record_failure("amel", ip, t0);
        t.record_failure("amel", ip2, t0);
        assert_eq!(t.check("amel", ip, t0), None, "two failures cost nothing");
        t.record_failure("amel", ip2, t0);
        assert_eq!(t.check("amel", ip, t0), Some(Duration::from_secs(1)));
        for _ in 0..20 {
            t.record_failure("amel", ip2, t0);
        }
        let wait = t.check("amel", ip, t0).unwrap();
        assert_eq!(wait, Duration::from_secs(10), "capped at max_lockout_secs");
        assert_eq!(t.check("amel", ip, t0 + Duration::from_secs(10)), None);
        assert_eq!(
            t.check("other", [10, 0, 0, 3].into(), t0),
            None,
            "other accounts unaffected"
        );
    }

    #[test]
    fn the_lockout_ends_and_success_clears_it() {
        let t = throttle();
        let ip: IpAddr = [10, 0, 0, 9].into();
        let t0 = Instant::now();
        for _ in 0..3 {
            t.record_failure("zoe", ip, t0);
        }
        assert!(t.check("zoe", [10, 0, 0, 8].into(), t0).is_some());
        assert_eq!(
            t.check("zoe", [10, 0, 0, 8].into(), t0 + Duration::from_secs(2)),
            None
        );
        t.record_success("zoe");
        t.record_failure("zoe", [10, 0, 0, 7].into(), t0);
        assert_eq!(t.check("zoe", [10, 0, 0, 7].into(), t0), None);
    }

    #[test]
    fn one_address_spraying_many_accounts_is_slowed() {
        let t = throttle();
        let ip: IpAddr = [192, 0, 2, 1].into();
        let t0 = Instant::now();
        for i in 0..5 {
            t.record_failure(&format!("user{i}"), ip, t0);
        }
        assert!(t.check("fresh-account", ip, t0).is_some());
        assert_eq!(t.check("fresh-account", [192, 0, 2, 2].into(), t0), None);
        assert_eq!(
            t.check("fresh-account", ip, t0 + Duration::from_secs(61)),
            None
        );
    }
}
