//! The memory behind ordered retries: which keys are in the retry path.

use std::sync::Mutex;

use bytes::Bytes;
use rustc_hash::FxHashMap as HashMap;

#[derive(Debug, Default)]
pub(super) struct Parking(Mutex<HashMap<(String, Bytes), Parked>>);

#[derive(Debug)]
struct Parked {
    /// The level of the key's oldest event in the retry path.
    level: usize,
    /// Its events in the retry path.
    in_path: usize,
}

impl Parking {
    /// The level a record at `level` (0: the source topic) must move to
    /// instead of being handled, because an earlier event of its key is
    /// further up the retry path.
    pub(super) fn parked_at(&self, topic: &str, key: &[u8], level: usize) -> Option<usize> {
        let map = self.0.lock().expect("not poisoned");
        let parked = map.get(&(topic.to_owned(), Bytes::copy_from_slice(key)))?;
        (parked.level > level).then_some(parked.level)
    }

    /// An event of the key entered the retry path at `level`, or moved up to it.
    pub(super) fn entered(&self, topic: &str, key: &[u8], level: usize, new: bool) {
        let mut map = self.0.lock().expect("not poisoned");
        let parked = map.entry((topic.to_owned(), Bytes::copy_from_slice(key))).or_insert(Parked { level, in_path: 0 });
        parked.level = parked.level.max(level);
        parked.in_path += usize::from(new);
    }

    /// An event of the key left the retry path (handled or dead-lettered).
    pub(super) fn left(&self, topic: &str, key: &[u8]) {
        let mut map = self.0.lock().expect("not poisoned");
        let k = (topic.to_owned(), Bytes::copy_from_slice(key));
        if let Some(parked) = map.get_mut(&k) {
            parked.in_path = parked.in_path.saturating_sub(1);
            if parked.in_path == 0 {
                map.remove(&k);
            }
        }
    }
}
