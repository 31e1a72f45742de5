//! Admission for `POST /webhook`, checked before a byte of the body is read: a rate limit
//! per source address and one for everyone together (governor's GCRA), and a bound on
//! webhooks being read or relayed at once, so neither a flood nor a crowd of slow senders
//! can grow memory or reach the app unchecked. Pure bookkeeping, no I/O.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Limits;

/// Source keys kept before stale ones are swept (each costs a few dozen bytes).
const SWEEP_ABOVE: usize = 10_000;

/// Why a webhook was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its source sent too many; try again after the duration.
    Source(Duration),
    /// Everyone together sent too many.
    Global(Duration),
    /// Too many webhooks are being read or relayed right now.
    Busy,
}

impl Refusal {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Source(_) => "webhook_source",
            Refusal::Global(_) => "webhook_global",
            Refusal::Busy => "webhook_in_flight",
        }
    }

    /// Whole seconds for `Retry-After` (at least 1).
    pub fn retry_after_secs(self) -> u64 {
        let d = match self {
            Refusal::Source(d) | Refusal::Global(d) => d,
            Refusal::Busy => Duration::from_secs(1),
        };
        (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
    }
}

/// The gate every webhook passes.
pub struct WebhookGate<C: Clock = DefaultClock> {
    per_source: RateLimiter<IpAddr, DefaultKeyedStateStore<IpAddr>, C, NoOpMiddleware<C::Instant>>,
    global: RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<C::Instant>>,
    slots: Arc<Semaphore>,
    clock: C,
    checks: AtomicU64,
    refusals: Family<LimiterLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimiterLabels {
    limiter: &'static str,
}

impl WebhookGate<DefaultClock> {
    /// A gate with the configured rates and bound.
    pub fn new(limits: &Limits) -> WebhookGate<DefaultClock> {
        WebhookGate::with_clock(limits, DefaultClock::default())
    }
}

impl<C: Clock + Clone> WebhookGate<C> {
    /// A gate on a given clock (tests use governor's fake clock).
    pub fn with_clock(limits: &Limits, clock: C) -> WebhookGate<C> {
        let quota = |rate: u32, burst: u32| {
            let rate = NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN);
            let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
            Quota::per_second(rate).allow_burst(burst)
        };
        WebhookGate {
            per_source: RateLimiter::dashmap_with_clock(
                quota(
                    limits.webhook_rate_per_source,
                    limits.webhook_burst_per_source,
                ),
                clock.clone(),
            ),
            global: RateLimiter::direct_with_clock(
                quota(limits.webhook_rate, limits.webhook_burst),
                clock.clone(),
            ),
            slots: Arc::new(Semaphore::new(limits.webhooks_in_flight)),
            clock,
            checks: AtomicU64::new(0),
            refusals: Family::default(),
        }
    }

    /// Admits one webhook from `source`; the permit is held while it is read and relayed.
    pub fn admit(&self, source: IpAddr) -> Result<OwnedSemaphorePermit, Refusal> {
        let permit = self.check(source).inspect_err(|r| {
            self.refusals
                .get_or_create(&LimiterLabels { limiter: r.label() })
                .inc();
        })?;
        if self
            .checks
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(1024)
            && self.per_source.len() > SWEEP_ABOVE
        {
            // Sources whose allowance is full again carry no state worth keeping.
            self.per_source.retain_recent();
            self.per_source.shrink_to_fit();
        }
        Ok(permit)
    }

    fn check(&self, source: IpAddr) -> Result<OwnedSemaphorePermit, Refusal> {
        let key = source_key(source);
        let now = self.clock.now();
        self.per_source
            .check_key(&key)
            .map_err(|n| Refusal::Source(n.wait_time_from(now)))?;
        self.global
            .check()
            .map_err(|n| Refusal::Global(n.wait_time_from(now)))?;
        self.slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::Busy)
    }

    /// Registers `tether_rate_limited_total{limiter}`.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "rate_limited",
            "Requests refused by a limiter: webhook_source, webhook_global (429), webhook_in_flight (503)",
            self.refusals.clone(),
        );
    }

    /// Source addresses currently tracked.
    pub fn tracked_sources(&self) -> usize {
        self.per_source.len()
    }
}

/// Remembers which keys were already reported, so a flood logs one line per key and not one
/// per request. Bounded: past [`FirstSeen::MAX`] keys, nothing new is reported individually.
#[derive(Debug, Default)]
pub struct FirstSeen {
    seen: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl FirstSeen {
    /// Keys remembered at most.
    pub const MAX: usize = 256;

    /// Whether `key` is reported for the first time (and remembers it).
    pub fn first_time(&self, key: &str) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains(key) {
            return false;
        }
        if seen.len() >= Self::MAX {
            return false;
        }
        seen.insert(key.to_string())
    }
}

/// The key a source is limited under: IPv4 as is, IPv6 by its /64 (one host's usual share),
/// IPv4-mapped IPv6 as the IPv4 address.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut seg = v6.segments();
                seg[4..].fill(0);
                IpAddr::V6(seg.into())
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn limits(per_source: (u32, u32), global: (u32, u32), in_flight: usize) -> Limits {
        let mut l = crate::config::Config::from_yaml("")
            .expect("defaults")
            .limits;
        (l.webhook_rate_per_source, l.webhook_burst_per_source) = per_source;
        (l.webhook_rate, l.webhook_burst) = global;
        l.webhooks_in_flight = in_flight;
        l
    }

    #[test]
    fn a_source_over_its_rate_waits_and_others_do_not() {
        let clock = FakeRelativeClock::default();
        let gate = WebhookGate::with_clock(&limits((1, 2), (100, 100), 10), clock.clone());
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let b: IpAddr = "192.0.2.2".parse().expect("ip");
        assert!(gate.admit(a).is_ok());
        assert!(gate.admit(a).is_ok());
        let refused = gate.admit(a).expect_err("over the burst");
        assert!(matches!(refused, Refusal::Source(_)));
        assert_eq!(refused.retry_after_secs(), 1);
        assert!(gate.admit(b).is_ok(), "another source is not affected");
        clock.advance(Duration::from_secs(1));
        assert!(gate.admit(a).is_ok(), "the allowance refills");
    }

    #[test]
    fn the_global_rate_and_the_in_flight_bound_hold_for_everyone() {
        let clock = FakeRelativeClock::default();
        let gate = WebhookGate::with_clock(&limits((100, 100), (1, 3), 2), clock.clone());
        let ip = |i: u8| IpAddr::from([198, 51, 100, i]);
        let first = gate.admit(ip(1)).expect("1");
        let _second = gate.admit(ip(2)).expect("2");
        assert_eq!(gate.admit(ip(3)).expect_err("busy"), Refusal::Busy);
        drop(first);
        assert!(matches!(gate.admit(ip(4)), Err(Refusal::Global(_))));
    }

    #[test]
    fn refusals_are_counted_and_first_sightings_bounded() {
        let gate =
            WebhookGate::with_clock(&limits((1, 1), (100, 100), 4), FakeRelativeClock::default());
        let ip: IpAddr = "192.0.2.9".parse().expect("ip");
        let _ok = gate.admit(ip).expect("first");
        assert!(gate.admit(ip).is_err());
        let mut registry = prometheus_client::registry::Registry::default();
        gate.register_metrics(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        assert!(
            text.contains("rate_limited_total{limiter=\"webhook_source\"} 1"),
            "{text}"
        );
        let seen = FirstSeen::default();
        assert!(seen.first_time("a"));
        assert!(!seen.first_time("a"));
        for i in 0..FirstSeen::MAX {
            seen.first_time(&i.to_string());
        }
        assert!(!seen.first_time("late"), "bounded");
    }

    #[test]
    fn ipv6_sources_are_limited_per_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().expect("ip");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(source_key(a), source_key(b));
        assert_ne!(source_key(a), source_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().expect("ip");
        assert_eq!(
            source_key(mapped),
            "192.0.2.7".parse::<IpAddr>().expect("ip")
        );
    }
}
