//! The upload queue: one persistent record per regular file whose content has to reach CESS,
//! keyed by inode (not name), so renames never disturb it.

use serde::{Deserialize, Serialize};

use super::Timestamp;

/// Where a file's content is on its way to CESS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UploadState {
    /// Closed and durable locally, waiting to be uploaded.
    Staged,
}

impl UploadState {
    /// The word `user.cess.status` shows.
    pub fn word(&self) -> &'static str {
        match self {
            UploadState::Staged => "staged",
        }
    }
}

/// The upload record of one inode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRecord {
    /// Current state.
    pub state: UploadState,
    /// The inode's `content_version` this record is about.
    pub content_version: u64,
    /// When the content was staged.
    pub staged_at: Timestamp,
}

impl UploadRecord {
    /// A record for content just closed.
    pub fn staged(content_version: u64) -> UploadRecord {
        UploadRecord { state: UploadState::Staged, content_version, staged_at: Timestamp::now() }
    }
}
