//! Events per second over the last minute, in one-second slots.

const SLOTS: usize = 60;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateWindow {
    /// (second, count) per slot, the slot being second % 60.
    slots: [(u64, u32); SLOTS],
}

impl Default for RateWindow {
    fn default() -> Self {
        RateWindow { slots: [(u64::MAX, 0); SLOTS] }
    }
}

impl RateWindow {
    pub fn add(&mut self, ts_ns: u64) {
        let s = ts_ns / 1_000_000_000;
        let slot = &mut self.slots[(s % SLOTS as u64) as usize];
        if slot.0 != s {
            *slot = (s, 0);
        }
        slot.1 += 1;
    }

    /// Events in the 60 one-second slots ending with the current one, divided by 60.
    pub fn per_second(&self, now_ns: u64) -> f64 {
        let now = now_ns / 1_000_000_000;
        let n: u64 = self
            .slots
            .iter()
            .filter(|(s, _)| *s != u64::MAX && *s <= now && now - *s < SLOTS as u64)
            .map(|(_, c)| u64::from(*c))
            .sum();
        n as f64 / SLOTS as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn counts_the_last_minute_only() {
        let mut w = RateWindow::default();
        for i in 0..120 {
            w.add(1000 * S + i * S / 2); // 2 per second over 60 s
        }
        assert_eq!(w.per_second(1059 * S), 2.0);
        assert_eq!(w.per_second(1089 * S), 1.0, "half the window has aged out");
        assert_eq!(w.per_second(1200 * S), 0.0);
        w.add(1200 * S);
        assert!((w.per_second(1200 * S) - 1.0 / 60.0).abs() < 1e-12);
    }
}
