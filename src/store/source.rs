//! What an upload reads from a content file: its bytes, or a sparse file's data ranges end to
//! end (format/extents.rs), and which ranges those are.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use crate::format::{Extents, Layout, Mode};

/// A hole shorter than this is stored as data: ranges that close together cost less as one.
const MIN_HOLE: u64 = 64 << 10;
/// The most data ranges a file's map holds (at about 8 bytes each in the tree); beyond, the
/// shortest holes are stored as data.
const MAX_EXTENTS: usize = 4096;

/// The data ranges to store of a content file of `size` bytes in `mode`, if storing only them
/// saves at least one segment (the chain charges whole segments); `None`: store it whole. A
/// file with no data at all keeps its last byte, since CESS stores no empty file.
pub fn sparse_extents(file: &File, size: u64, mode: Mode) -> io::Result<Option<Extents>> {
    let mut ranges = crate::disk::data_ranges(file, size)?;
    if ranges.is_empty() && size > 0 {
        ranges.push((size - 1, 1));
    }
    let ranges = merge_close(ranges);
    let data: u64 = ranges.iter().map(|&(_, len)| len).sum();
    let segments = |n: u64| Layout::new(n, mode).map(|l| l.segments()).unwrap_or(usize::MAX);
    if segments(data) >= segments(size) {
        return Ok(None);
    }
    Ok(Extents::new(ranges, size))
}

/// `ranges` with holes shorter than [`MIN_HOLE`] filled, and the shortest others too while there
/// are more than [`MAX_EXTENTS`] ranges.
fn merge_close(ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    let gaps = |r: &[(u64, u64)]| -> Vec<u64> { r.windows(2).map(|w| w[1].0 - (w[0].0 + w[0].1)).collect() };
    let mut fill_below = MIN_HOLE;
    if ranges.len() > MAX_EXTENTS {
        let mut sorted = gaps(&ranges);
        sorted.sort_unstable();
        fill_below = fill_below.max(sorted[ranges.len() - MAX_EXTENTS - 1] + 1);
    }
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len().min(MAX_EXTENTS));
    for (start, len) in ranges {
        match merged.last_mut() {
            Some((at, l)) if start - (*at + *l) < fill_below => *l = start + len - *at,
            _ => merged.push((start, len)),
        }
    }
    merged
}

/// A content file as the encoder's [`ChunkSource`](crate::format::ChunkSource), reporting
/// errors as `E`: its bytes, or with `extents` its data ranges end to end.
pub struct FileSource<E> {
    file: File,
    extents: Option<Extents>,
    error: std::marker::PhantomData<fn() -> E>,
}

impl<E> FileSource<E> {
    /// Reads `file`, whole or (`extents`) its data ranges.
    pub fn new(file: File, extents: Option<Extents>) -> FileSource<E> {
        FileSource { file, extents, error: std::marker::PhantomData }
    }
}

impl<E: From<io::Error> + From<crate::format::FormatError> + Send> crate::format::ChunkSource for FileSource<E> {
    type Error = E;
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), E> {
        match &self.extents {
            Some(extents) => extents.read_object(offset, buf, |at, part| Ok(self.file.read_exact_at(part, at)?)),
            None => Ok(self.file.read_exact_at(buf, offset)?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn a_sparse_file_stores_its_data_and_a_dense_one_all_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let file =
            std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(dir.path().join("f")).unwrap();
        let size = 2u64 << 30;
        file.set_len(size).unwrap();
        file.write_all_at(b"hello", 100 << 20).unwrap();
        file.write_all_at(b"world!!!!", size - 9).unwrap();
        let extents = sparse_extents(&file, size, Mode::Blocks).unwrap().expect("sparse");
        assert!(extents.data_len() < 1 << 20, "{extents:?}");
        let source = FileSource::<anyhow::Error>::new(file.try_clone().unwrap(), Some(extents.clone()));
        let mut object = vec![0u8; extents.data_len() as usize];
        crate::format::ChunkSource::read_at(&source, 0, &mut object).unwrap();
        let text: Vec<u8> = object.into_iter().filter(|&b| b != 0).collect();
        assert_eq!(text, b"helloworld!!!!");

        file.set_len(0).unwrap();
        file.write_all_at(&vec![1u8; 1 << 20], 0).unwrap();
        assert_eq!(sparse_extents(&file, 1 << 20, Mode::Blocks).unwrap(), None);
        let empty = std::fs::File::create(dir.path().join("hole")).unwrap();
        empty.set_len(size).unwrap();
        let last = sparse_extents(&empty, size, Mode::Blocks).unwrap().expect("sparse");
        assert_eq!(last.ranges(), &[(size - 1, 1)]);
    }

    #[test]
    fn close_ranges_merge_and_many_ranges_are_capped() {
        assert_eq!(merge_close(vec![(0, 10), (100, 10), (1 << 20, 5)]), vec![(0, 110), (1 << 20, 5)]);
        let many: Vec<(u64, u64)> = (0..10_000u64).map(|i| (i * (1 << 20) + (i % 7) * 4096, 4096)).collect();
        let merged = merge_close(many);
        assert!(merged.len() <= MAX_EXTENTS, "{}", merged.len());
        let data: u64 = merged.iter().map(|r| r.1).sum();
        assert!(data < 10_000 << 20);
    }
}
