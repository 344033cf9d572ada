//! Who appended which records of a stream with an S3 export: the privileges its tasks' input
//! files are opened with. Kept in memory as runs of sequence numbers (an entry only where the
//! appender changes), so a stream fed by one component costs one entry whatever its length.

use crate::file_access::FileAccess;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Run starts: record `seq` was appended by the entry with the greatest key `<= seq`; `None`
/// is an appender the store was not told about.
#[derive(Debug, Default)]
pub(crate) struct Appenders(BTreeMap<u64, Option<Arc<FileAccess>>>);

impl Appenders {
    pub(crate) fn record(&mut self, seq: u64, who: Option<&Arc<FileAccess>>) {
        let same = match self.0.last_key_value() {
            None => who.is_none(),
            Some((_, last)) => last.as_deref() == who.map(|w| &**w),
        };
        if !same {
            self.0.insert(seq, who.cloned());
        }
    }

    pub(crate) fn of(&self, seq: u64) -> Option<Arc<FileAccess>> {
        self.0
            .range(..=seq)
            .next_back()
            .and_then(|(_, w)| w.clone())
    }

    /// Drops the runs that end before `oldest` (records that no longer exist).
    pub(crate) fn forget_before(&mut self, oldest: u64) {
        if let Some(&start) = self.0.range(..=oldest).next_back().map(|(k, _)| k) {
            self.0 = self.0.split_off(&start);
        }
    }

    #[cfg(test)]
    pub(crate) fn runs(&self) -> usize {
        self.0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_answer_for_every_record_and_forget_what_is_gone() {
        let a = Arc::new(FileAccess::User {
            uid: 1,
            gid: 1,
            groups: vec![1],
        });
        let b = Arc::new(FileAccess::Own);
        let mut r = Appenders::default();
        r.record(0, None);
        assert_eq!(r.runs(), 0);
        for seq in 1..5 {
            r.record(seq, Some(&a));
        }
        r.record(5, Some(&b));
        r.record(6, None);
        // An equal identity from another connection continues the run.
        r.record(7, Some(&Arc::new(FileAccess::Own)));
        assert_eq!(r.runs(), 3 + 1);
        assert_eq!(r.of(0), None);
        assert_eq!(r.of(3).as_deref(), Some(&*a));
        assert_eq!(r.of(5).as_deref(), Some(&*b));
        assert_eq!(r.of(6), None);
        assert_eq!(r.of(100).as_deref(), Some(&*b));
        r.forget_before(4);
        assert_eq!(r.of(4).as_deref(), Some(&*a));
        assert_eq!(r.runs(), 4);
        r.forget_before(6);
        assert_eq!(r.runs(), 2);
        assert_eq!(r.of(6), None);
    }
}
