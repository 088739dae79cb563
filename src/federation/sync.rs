//! Automatic sync, run by `ceredis serve`: once the site has joined a hub, each tenant whose
//! continuity copy is enabled pulls the batches of the other sites that hold it, then is
//! pushed when it changed, every `federation.sync_interval_secs`; on the same interval the
//! site fetches what the federation publishes, and the schools that chose to adopt it. A failed push is retried after `retry_min_secs`,
//! doubled at each failure up to the interval, each wait drawn between half and one and a
//! half times its value so that sites cut off together do not come back in step. What a
//! push did or why it failed is in `ceredis federation status`, the log and `/metrics`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::app::AppState;
use crate::auth::Authorized;

use super::client;
use super::continuity;

/// What the automatic sync is doing, for the operator console: per tenant, the transfer
/// under way (a line such as `generation 4, chunk 3/10 sent`).
#[derive(Debug, Clone, Default)]
pub struct Board(std::sync::Arc<std::sync::Mutex<HashMap<String, String>>>);

impl Board {
    fn set(&self, slug: &str, line: Option<String>) {
        let mut map = match self.0.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        match line {
            Some(l) => map.insert(slug.to_string(), l),
            None => map.remove(slug),
        };
    }

    /// The transfer under way for `slug`, if any.
    pub fn transfer(&self, slug: &str) -> Option<String> {
        match self.0.lock() {
            Ok(m) => m.get(slug).cloned(),
            Err(poisoned) => poisoned.into_inner().get(slug).cloned(),
        }
    }
}

/// A tenant's place in the schedule.
#[derive(Debug, Default)]
struct Slot {
    /// The database's commit count when the last committed push took its snapshot.
    clean_at: Option<u64>,
    failures: u32,
    next: Option<Instant>,
}

/// A random factor in [0.5, 1.5).
fn jitter() -> f64 {
    let mut b = [0u8; 2];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    0.5 + f64::from(u16::from_le_bytes(b)) / 65536.0
}

/// The wait before the next try after `failures` failures in a row.
pub fn backoff(failures: u32, min: Duration, max: Duration) -> Duration {
    let base = min
        .saturating_mul(1u32 << failures.saturating_sub(1).min(20))
        .min(max);
    base.mul_f64(jitter())
}

/// Runs until the process ends.
pub async fn run(state: AppState) {
    let cfg = state.config.federation.clone();
    if cfg.sync_interval_secs == 0 {
        return;
    }
    let interval = Duration::from_secs(cfg.sync_interval_secs);
    let retry_min = Duration::from_secs(cfg.retry_min_secs.max(1)).min(interval);
    // How often the schedule is looked at: often enough for the shortest wait.
    let tick = retry_min.min(interval).min(Duration::from_secs(5)) / 2;
    let mut slots: HashMap<String, Slot> = HashMap::new();
    let mut publications_next = Instant::now();
    loop {
        tokio::time::sleep(tick.max(Duration::from_millis(200))).await;
        let Ok(enabled) = state.system.read(continuity::states).await else {
            continue;
        };
        // Only the tenants whose turn has come; the client is built only for them.
        let due: Vec<_> = enabled
            .into_iter()
            .filter(|(slug, _)| {
                slots
                    .get(slug)
                    .and_then(|s| s.next)
                    .is_none_or(|next| Instant::now() >= next)
            })
            .collect();
        if Instant::now() >= publications_next {
            publications_next = Instant::now() + interval.mul_f64(jitter());
            if let Ok((hub, _)) = client::client(&state.system, &state.config.data_dir).await {
                publish_and_adopt(&state, &hub).await;
            }
        }
        if due.is_empty() {
            continue;
        }
        let hub = match client::client(&state.system, &state.config.data_dir).await {
            Ok((hub, _)) => hub.rate_limited(cfg.max_kib_per_sec * 1024),
            // Not joined (yet): nothing to push to.
            Err(_) => continue,
        };
        for (slug, st) in due {
            let slot = slots.entry(slug.clone()).or_default();
            let now = Instant::now();
            let Ok(handle) = state.tenants.handle(&slug, &Authorized::console()).await else {
                continue;
            };
            let board = state.sync_board.clone();
            let shown = slug.clone();
            let progress = move |line: String| board.set(&shown, Some(line));
            // The other sites' changes first: what they erased is not sent back.
            state
                .sync_board
                .set(&slug, Some("fetching the other sites' changes".into()));
            let pulled = continuity::pull(
                &hub,
                &state.system,
                &handle,
                &state.config.data_dir,
                &progress,
            )
            .await;
            state.metrics.continuity_pull(
                if pulled.is_ok() { "ok" } else { "failed" },
                pulled.as_ref().map_or(0, |p| p.batches),
            );
            let outcome = match pulled {
                Err(e) => Err(e),
                Ok(p) => {
                    if p.batches > 0 {
                        tracing::info!(tenant = %slug, batches = p.batches,
                            statements = p.statements, conflicts = p.conflicts,
                            erasures = p.erasures, "other sites' changes applied");
                    }
                    let before = handle.db.commits();
                    let pending = st.last_error.is_some() || st.committed == 0 || p.erasures > 0;
                    if slot.clean_at == Some(before) && !pending {
                        state.sync_board.set(&slug, None);
                        slot.next = Some(now + interval.mul_f64(jitter()));
                        continue;
                    }
                    state
                        .sync_board
                        .set(&slug, Some("preparing the changes to send".into()));
                    continuity::push(
                        &hub,
                        &state.system,
                        &handle,
                        &state.config.data_dir,
                        false,
                        &progress,
                    )
                    .await
                    .map(|pushed| (pushed, before))
                }
            };
            state.sync_board.set(&slug, None);
            match outcome {
                Ok((p, before)) => {
                    tracing::info!(tenant = %slug, generation = p.generation, chunks = p.chunks,
                        sent = p.sent, batches = p.batches, through = p.batched,
                        bytes = p.bytes_sent, "continuity copy pushed");
                    state.metrics.continuity_push("ok");
                    slot.clean_at = Some(before);
                    slot.failures = 0;
                    slot.next = Some(Instant::now() + interval.mul_f64(jitter()));
                }
                Err(e) => {
                    slot.failures += 1;
                    let wait = backoff(slot.failures, retry_min, interval);
                    tracing::warn!(tenant = %slug, error = %e, failures = slot.failures,
                        retry_in_secs = wait.as_secs(), "continuity push failed");
                    state.metrics.continuity_push("failed");
                    slot.next = Some(Instant::now() + wait);
                }
            }
        }
    }
}

/// Fetches what the federation publishes, then adopts it into the schools that chose to,
/// and sends the aggregates of the schools that chose to publish them.
async fn publish_and_adopt(state: &AppState, hub: &client::HubClient) {
    match super::publications::fetch(hub, &state.system).await {
        Ok(fresh) if !fresh.is_empty() => {
            tracing::info!(count = fresh.len(), "federation publications fetched");
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "federation publications not fetched"),
    }
    if let Ok(all) = state.tenants.list().await {
        for t in all {
            let Ok(handle) = state.tenants.handle(&t.slug, &Authorized::console()).await else {
                continue;
            };
            match super::publications::adopt_all(&handle, &state.system).await {
                Ok(uris) => {
                    for uri in uris {
                        tracing::info!(tenant = %t.slug, %uri, "published framework adopted");
                    }
                }
                Err(e) => tracing::warn!(tenant = %t.slug, error = %e,
                    "published frameworks not adopted"),
            }
            if let Err(e) = super::aggregates::publish(hub, &handle).await {
                tracing::warn!(tenant = %t.slug, error = %e, "aggregates not published");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_to_the_interval_with_jitter() {
        let (min, max) = (Duration::from_secs(30), Duration::from_secs(3600));
        for failures in 1..30 {
            let base = (30u64 << (failures - 1).min(20)).min(3600) as f64;
            let wait = backoff(failures, min, max).as_secs_f64();
            assert!(
                wait >= base * 0.5 && wait < base * 1.5,
                "{failures}: {wait}"
            );
        }
        // Jitter: the waits of many sites after the same failure are not all equal.
        let waits: std::collections::BTreeSet<u128> =
            (0..20).map(|_| backoff(3, min, max).as_millis()).collect();
        assert!(waits.len() > 10);
    }
}
