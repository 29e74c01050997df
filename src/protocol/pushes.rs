//! How far each file's push has come, in fragment bytes its miners took of the bytes it sends in
//! all: what `user.cess.progress` and `cessfs status` (its ETA) show while a file is pushed. In
//! memory only: after a restart, the resumed push shows it again within a second.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::sync::lock;

/// Fragment bytes of one file: sent (taken, or on their way in a request still moving) of all.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PushedBytes {
    pub sent: u64,
    pub total: u64,
}

/// The pushes under way, by the inode of their upload record.
#[derive(Default)]
pub struct Pushes(Mutex<HashMap<u64, PushedBytes>>);

impl Pushes {
    /// Records where the push of `ino` stands.
    pub fn set(&self, ino: u64, bytes: PushedBytes) {
        lock(&self.0).insert(ino, bytes);
    }

    /// Where the push of `ino` stands, if it is pushed now.
    pub fn get(&self, ino: u64) -> Option<PushedBytes> {
        lock(&self.0).get(&ino).copied()
    }

    /// The push of `ino` ended (its columns sent, or it stopped).
    pub fn end(&self, ino: u64) {
        lock(&self.0).remove(&ino);
    }
}
