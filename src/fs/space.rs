//! Space: what `statfs` reports, and the gauges the metrics endpoint shows.

use super::{Fs, FsResult, StatFs};
use crate::metrics;
use crate::sync::lock;

impl Fs {
    /// statfs: the territory's space once known (what can be stored, bounded by what the staging
    /// disk can take now), else the space of the disk holding the staging area.
    pub fn statfs(&self) -> FsResult<StatFs> {
        let st = self.store.disk_space()?;
        let frsize = st.f_frsize.max(1);
        // Cached copies of active files give their space back on demand.
        let evictable = self.evictable_bytes() / frsize;
        let (local_free, local_avail) = (st.f_bfree + evictable, st.f_bavail + evictable);
        let (blocks, bfree, bavail) = match *lock(&self.storage) {
            Some(space) => {
                let free = space.free / frsize;
                // Free is the territory's (so used is what it holds); what a writer can use now is
                // also bounded by the staging disk.
                (space.total / frsize, free, free.min(local_avail))
            }
            None => (st.f_blocks, local_free, local_avail),
        };
        Ok(StatFs {
            blocks,
            bfree: bfree.min(blocks),
            bavail: bavail.min(blocks),
            files: st.f_files.max(1 << 20),
            ffree: st.f_ffree.max(1),
            bsize: st.f_bsize as u32,
            frsize: frsize as u32,
        })
    }
}

impl metrics::Gauges for Fs {
    fn render(&self, out: &mut String) {
        let per_state = self.store.upload_states();
        let files: Vec<_> = per_state.iter().map(|(state, n, _)| (state.word(), *n)).collect();
        let bytes: Vec<_> = per_state.iter().map(|(state, _, b)| (state.word(), *b)).collect();
        metrics::gauge(out, "cessfs_files", "Files by upload state.", "state", &files);
        metrics::gauge(out, "cessfs_file_bytes", "Bytes of files by upload state.", "state", &bytes);
        let cached = [("", self.evictable_bytes())];
        metrics::gauge(out, "cessfs_cache_bytes", "Bytes of stored files cached locally (evictable).", "", &cached);
        let limit = [("", self.config.cache_size)];
        metrics::gauge(out, "cessfs_cache_limit_bytes", "The cache size limit.", "", &limit);
        if let Some(space) = *lock(&self.storage) {
            let total = [("", space.total)];
            metrics::gauge(out, "cessfs_territory_bytes", "The territory's size, in bytes of content.", "", &total);
            let free = [("", space.free)];
            metrics::gauge(out, "cessfs_territory_free_bytes", "What the territory can still take.", "", &free);
        }
    }
}
