//! Exponential reconnect backoff, sans-IO (the caller sleeps).

use std::time::Duration;

/// Delays between connection attempts: `initial`, doubling up to `max`,
/// each with up to 25 % random jitter subtracted so that bridges restarted
/// together do not retry in lockstep; back to `initial` after a connection
/// that worked.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// A backoff starting at `initial` and capped at `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            next: initial,
        }
    }

    /// The delay before the next attempt, given a random `jitter` in
    /// `0..=u16::MAX` (`0`: none); doubles the following one.
    pub fn next_delay(&mut self, jitter: u16) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let cut = base.mul_f64(f64::from(jitter) / f64::from(u16::MAX) * 0.25);
        base - cut
    }

    /// Starts over after a successful connection.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(1000));
        let got: Vec<Duration> = (0..6).map(|_| b.next_delay(0)).collect();
        assert_eq!(
            got,
            [ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]
        );
        b.reset();
        assert_eq!(b.next_delay(0), ms(100));
        let j = b.next_delay(u16::MAX);
        assert_eq!(j, ms(150));
    }
}
