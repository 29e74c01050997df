//! Sparse files: which byte ranges of a file hold data. The rest (holes) reads as zeros and is
//! not stored: a sparse file's object on CESS is its data ranges end to end, and the tree keeps
//! the map. An object offset is a byte of that concatenation; a file offset, of the file.

use std::ops::Range;

use serde::{Deserialize, Serialize};

/// The data ranges of a file, as `(file offset, length)`: sorted, apart, none empty.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Extents(Vec<(u64, u64)>);

impl Extents {
    /// The map of `ranges` within a file of `size` bytes; `None` if they are not sorted, apart
    /// and non-empty, or reach past `size` (a damaged record or tree).
    pub fn new(ranges: Vec<(u64, u64)>, size: u64) -> Option<Extents> {
        let mut end = 0u64;
        for (i, &(start, len)) in ranges.iter().enumerate() {
            let next = start.checked_add(len)?;
            if len == 0 || next > size || (i > 0 && start <= end) {
                return None;
            }
            end = next;
        }
        Some(Extents(ranges))
    }

    /// The ranges, as `(file offset, length)`.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.0
    }

    /// Bytes of data: the object's size.
    pub fn data_len(&self) -> u64 {
        self.0.iter().map(|&(_, len)| len).sum()
    }

    /// The object bytes that hold the data of file bytes `file` (empty if all of them are hole).
    pub fn object_range(&self, file: Range<u64>) -> Range<u64> {
        let (mut start, mut end, mut object) = (None, 0, 0);
        for &(at, len) in &self.0 {
            let (from, to) = (file.start.max(at), file.end.min(at + len));
            if from < to {
                start.get_or_insert(object + from - at);
                end = object + to - at;
            }
            object += len;
        }
        start.map_or(0..0, |s| s..end)
    }

    /// Where object bytes `object` go in the file: `(file offset, object range)` pieces.
    pub fn pieces(&self, object: Range<u64>) -> impl Iterator<Item = (u64, Range<u64>)> + '_ {
        let mut at_object = 0;
        self.0.iter().filter_map(move |&(at, len)| {
            let here = at_object..at_object + len;
            at_object += len;
            let (from, to) = (object.start.max(here.start), object.end.min(here.end));
            (from < to).then(|| (at + from - here.start, from..to))
        })
    }

    /// `lseek(SEEK_DATA)` from file offset `offset`: the first data byte at or after it.
    pub fn next_data(&self, offset: u64) -> Option<u64> {
        self.0.iter().find(|&&(at, len)| at + len > offset).map(|&(at, _)| at.max(offset))
    }

    /// `lseek(SEEK_HOLE)` from `offset`, below the file's `size`: the first byte of a hole at or
    /// after it (`size`: the end counts as one).
    pub fn next_hole(&self, offset: u64, size: u64) -> u64 {
        match self.0.iter().find(|&&(at, len)| at + len > offset) {
            Some(&(at, len)) if at <= offset => (at + len).min(size),
            _ => offset,
        }
    }

    /// Copies object bytes from `object_offset` into `buf`, reading the file with `read_at`.
    pub fn read_object<E>(
        &self,
        object_offset: u64,
        buf: &mut [u8],
        mut read_at: impl FnMut(u64, &mut [u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        for (file_offset, part) in self.pieces(object_offset..object_offset + buf.len() as u64) {
            let into = (part.start - object_offset) as usize..(part.end - object_offset) as usize;
            read_at(file_offset, &mut buf[into])?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> Extents {
        Extents::new(vec![(10, 5), (100, 20), (1000, 1)], 1001).unwrap()
    }

    #[test]
    fn refuses_what_is_not_a_map() {
        assert!(Extents::new(vec![(10, 5), (12, 5)], 100).is_none());
        assert!(Extents::new(vec![(10, 5), (15, 5)], 100).is_none(), "touching ranges are one");
        assert!(Extents::new(vec![(10, 0)], 100).is_none());
        assert!(Extents::new(vec![(90, 11)], 100).is_none());
        assert!(Extents::new(vec![(u64::MAX, 2)], u64::MAX).is_none());
        assert!(Extents::new(vec![(20, 5), (10, 5)], 100).is_none());
    }

    #[test]
    fn maps_file_ranges_to_object_ranges() {
        let m = map();
        assert_eq!(m.data_len(), 26);
        assert_eq!(m.object_range(0..10), 0..0);
        assert_eq!(m.object_range(0..11), 0..1);
        assert_eq!(m.object_range(12..110), 2..15);
        assert_eq!(m.object_range(20..100), 0..0);
        assert_eq!(m.object_range(0..2000), 0..26);
    }

    #[test]
    fn data_and_holes_are_found_as_lseek_finds_them() {
        let m = map();
        assert_eq!((m.next_data(0), m.next_data(12), m.next_data(15)), (Some(10), Some(12), Some(100)));
        assert_eq!((m.next_data(1000), m.next_data(1001)), (Some(1000), None));
        assert_eq!((m.next_hole(0, 1001), m.next_hole(10, 1001), m.next_hole(119, 1001)), (0, 15, 120));
        assert_eq!((m.next_hole(120, 1001), m.next_hole(1000, 1001)), (120, 1001));
    }

    #[test]
    fn object_bytes_go_back_to_their_file_offsets() {
        let m = map();
        let pieces: Vec<_> = m.pieces(3..26).collect();
        assert_eq!(pieces, vec![(13, 3..5), (100, 5..25), (1000, 25..26)]);
        let file: Vec<u8> = (0..1001u32).map(|i| (i % 251) as u8).collect();
        let mut object = vec![0u8; 23];
        m.read_object(3, &mut object, |at, buf: &mut [u8]| {
            buf.copy_from_slice(&file[at as usize..at as usize + buf.len()]);
            Ok::<(), ()>(())
        })
        .unwrap();
        let expected: Vec<u8> = [&file[13..15], &file[100..120], &file[1000..1001]].concat();
        assert_eq!(object, expected);
    }
}
