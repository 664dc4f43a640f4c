//! Retransmission timeout estimation (RFC 6298), with Karn's rule applied by the caller.

use std::time::Duration;

/// Smoothed RTT and variance in microseconds, and the current (backed-off) RTO.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RttEstimator {
    srtt_us: u32,
    rttvar_us: u32,
    rto_us: u32,
    has_sample: bool,
}

/// RFC 6298 2: the clock granularity G. Our samples come from 1 ms timestamps or
/// microsecond instants; 1 ms keeps RTO above SRTT even with a zero variance.
const GRANULARITY_US: u32 = 1000;

fn us(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

impl RttEstimator {
    /// RFC 6298 2.1: before any sample, RTO is the initial value (1 s by default).
    pub(crate) fn new(initial: Duration) -> Self {
        RttEstimator {
            srtt_us: 0,
            rttvar_us: 0,
            rto_us: us(initial),
            has_sample: false,
        }
    }

    /// RFC 6298 2.2/2.3: fold in a measurement and recompute RTO (which also
    /// undoes any backoff, 5.7), clamped to `[min, max]` (2.4, 2.5).
    pub(crate) fn sample(&mut self, rtt: Duration, min: Duration, max: Duration) {
        let r = us(rtt);
        if !self.has_sample {
            self.srtt_us = r;
            self.rttvar_us = r / 2;
            self.has_sample = true;
        } else {
            let delta = self.srtt_us.abs_diff(r);
            // RTTVAR <- 3/4 RTTVAR + 1/4 |SRTT - R'|; SRTT <- 7/8 SRTT + 1/8 R'
            self.rttvar_us = ((u64::from(self.rttvar_us) * 3 + u64::from(delta)) / 4) as u32;
            self.srtt_us = ((u64::from(self.srtt_us) * 7 + u64::from(r)) / 8) as u32;
        }
        let k_var = self.rttvar_us.saturating_mul(4).max(GRANULARITY_US);
        self.rto_us = self.srtt_us.saturating_add(k_var).clamp(us(min), us(max));
    }

    /// RFC 6298 5.5: on expiry, double RTO (up to `max`).
    pub(crate) fn backoff(&mut self, max: Duration) {
        self.rto_us = self.rto_us.saturating_mul(2).min(us(max));
    }

    pub(crate) fn rto(&self) -> Duration {
        Duration::from_micros(u64::from(self.rto_us))
    }

    /// SRTT in microseconds, if measured (RACK's reordering window and the
    /// tail loss probe timeout derive from it).
    pub(crate) fn srtt_us(&self) -> Option<u32> {
        self.has_sample.then_some(self.srtt_us)
    }

    #[cfg(test)]
    pub(crate) fn srtt(&self) -> Option<Duration> {
        self.has_sample
            .then(|| Duration::from_micros(u64::from(self.srtt_us)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_millis(200);
    const MAX: Duration = Duration::from_secs(60);

    #[test]
    fn first_sample_then_smoothing() {
        let mut r = RttEstimator::new(Duration::from_secs(1));
        assert_eq!(r.rto(), Duration::from_secs(1));
        assert_eq!(r.srtt(), None);
        r.sample(Duration::from_millis(100), MIN, MAX);
        // SRTT = 100, RTTVAR = 50, RTO = 100 + 200 = 300 ms
        assert_eq!(r.rto(), Duration::from_millis(300));
        r.sample(Duration::from_millis(100), MIN, MAX);
        // RTTVAR = 37.5, SRTT = 100 -> RTO = 250 ms
        assert_eq!(r.rto(), Duration::from_micros(250_000));
    }

    #[test]
    fn clamps_and_backs_off() {
        let mut r = RttEstimator::new(Duration::from_secs(1));
        r.sample(Duration::from_micros(50), MIN, MAX);
        assert_eq!(r.rto(), MIN);
        r.backoff(MAX);
        assert_eq!(r.rto(), MIN * 2);
        for _ in 0..20 {
            r.backoff(MAX);
        }
        assert_eq!(r.rto(), MAX);
        r.sample(Duration::from_micros(50), MIN, MAX);
        assert_eq!(r.rto(), MIN);
    }
}
