//! `server.min_rate`: while the proxy waits on a client (for request body
//! bytes, or for it to read the response), the client must keep moving
//! bytes at `min_rate` on average. It holds a time credit of at most
//! `min_rate_grace`: waiting on it spends the credit in real time, each byte
//! it moves buys `1 / min_rate` seconds back. At zero it is cut off.
//!
//! So a client may stall for up to the grace (a mobile hand-over), or fall
//! behind the rate for a while, but one that trickles a byte a second
//! holds its backend connection for about the grace, not for
//! `read_timeout` per byte. Time the proxy waits on the backend costs the
//! client nothing.

use crate::timer::Millis;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct RateCredit {
    /// Credit left at `at`, in milliseconds.
    credit_ms: u64,
    at: Millis,
    /// The proxy has waited on the client since `at`.
    owing: bool,
    /// Bytes the client moved since `at`.
    moved: u64,
}

impl RateCredit {
    /// A full credit, for a request starting at `now`.
    pub fn full(grace_ms: u64, now: Millis) -> RateCredit {
        RateCredit {
            credit_ms: grace_ms,
            at: now,
            owing: false,
            moved: 0,
        }
    }

    pub fn moved(&mut self, bytes: usize) {
        self.moved = self.moved.saturating_add(bytes as u64);
    }

    /// Brings the credit up to `now`, then records whether the proxy waits
    /// on the client from now on. Returns when the credit runs out if it
    /// does wait (`min_rate` bytes/s, `grace_ms` the cap on the credit).
    pub fn wait(
        &mut self,
        on_client: bool,
        now: Millis,
        min_rate: u64,
        grace_ms: u64,
    ) -> Option<Millis> {
        let left = self.settle(now, min_rate, grace_ms);
        self.owing = on_client;
        on_client.then(|| now.saturating_add(left))
    }

    /// The credit left at `now`; 0 means the client is too slow.
    ///
    /// The loop settles on every read and write, so the bytes counted came
    /// at `now`: a credit spent before then stays spent.
    pub fn settle(&mut self, now: Millis, min_rate: u64, grace_ms: u64) -> u64 {
        if self.owing {
            let waited = now.saturating_sub(self.at);
            if waited >= self.credit_ms {
                self.credit_ms = 0;
                self.moved = 0;
            } else {
                self.credit_ms -= waited;
            }
        }
        if self.credit_ms == 0 {
            self.at = self.at.max(now);
            return 0;
        }
        let bought = self.moved.saturating_mul(1000) / min_rate.max(1);
        self.credit_ms = self.credit_ms.saturating_add(bought).min(grace_ms);
        self.moved = 0;
        self.at = self.at.max(now);
        self.credit_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: u64 = 1000; // 1 ms of credit per byte
    const GRACE: u64 = 5_000;

    #[test]
    fn a_stall_spends_the_grace_then_runs_out() {
        let mut c = RateCredit::full(GRACE, 100);
        assert_eq!(c.wait(true, 100, RATE, GRACE), Some(5_100));
        assert_eq!(c.settle(3_100, RATE, GRACE), 2_000);
        assert_eq!(c.settle(5_100, RATE, GRACE), 0);
    }

    #[test]
    fn waiting_on_the_backend_costs_nothing() {
        let mut c = RateCredit::full(GRACE, 0);
        c.wait(true, 0, RATE, GRACE);
        c.wait(false, 1_000, RATE, GRACE); // now the backend is slow
        assert_eq!(c.wait(true, 60_000, RATE, GRACE), Some(64_000));
    }

    #[test]
    fn bytes_buy_time_back_up_to_the_grace() {
        let mut c = RateCredit::full(GRACE, 0);
        c.wait(true, 0, RATE, GRACE);
        c.moved(500);
        assert_eq!(c.settle(2_000, RATE, GRACE), 3_500);
        c.moved(1 << 30);
        assert_eq!(c.settle(2_000, RATE, GRACE), GRACE, "credit is capped");
    }

    #[test]
    fn a_trickle_below_the_rate_runs_out() {
        // 1 byte per second against 1000 B/s: 999 ms lost each second.
        let mut c = RateCredit::full(GRACE, 0);
        let mut now = 0;
        c.wait(true, now, RATE, GRACE);
        while c.settle(now, RATE, GRACE) > 0 {
            now += 1_000;
            c.moved(1);
            c.wait(true, now, RATE, GRACE);
        }
        assert_eq!(now, 6_000, "5 s of grace, 999 ms lost each second");
    }

    #[test]
    fn a_spent_credit_stays_spent() {
        let mut c = RateCredit::full(GRACE, 0);
        c.wait(true, 0, RATE, GRACE);
        c.moved(1 << 20); // arrived after the credit ran out at 5 s
        assert_eq!(c.wait(true, 6_000, RATE, GRACE), Some(6_000));
        assert_eq!(c.settle(6_000, RATE, GRACE), 0);
    }
}
