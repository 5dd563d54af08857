//! The buffer of one block written since the last flush.
//!
//! A block written whole holds the whole block; a block written in part holds only the span from
//! the first to the last byte written, so a 4 KiB write into a large file holds 4 KiB, not a
//! block. Which bytes of the span were written is kept beside it (`FileState::written`); the
//! rest of the block is the one stored, laid under the written ranges by reads and flushes.

use bytes::BytesMut;

#[derive(Debug, Default)]
pub(crate) struct BlockBuf {
    /// Offset of `bytes` in the block.
    start: usize,
    bytes: BytesMut,
}

impl BlockBuf {
    /// A block written from its start (whole, or the first bytes of a block).
    pub(super) fn whole(bytes: BytesMut) -> BlockBuf {
        BlockBuf { start: 0, bytes }
    }

    /// Write `src` at `at` (within the block), growing the span to cover it.
    pub(super) fn write(&mut self, at: usize, src: &[u8]) {
        let end = at + src.len();
        if self.bytes.is_empty() {
            self.start = at;
            self.bytes = BytesMut::from(src);
            return;
        }
        let (start, old_end) = (self.start, self.start + self.bytes.len());
        if at < start {
            // Grow at the front: a new span, the old bytes moved to their place in it.
            let mut grown = BytesMut::zeroed(old_end.max(end) - at);
            grown[start - at..old_end - at].copy_from_slice(&self.bytes);
            self.start = at;
            self.bytes = grown;
        } else if end > old_end {
            self.bytes.resize(end - start, 0);
        }
        let from = at - self.start;
        self.bytes[from..from + src.len()].copy_from_slice(src);
    }

    /// Bytes `[from, to)` of the block, which must lie within the span (a written range does).
    pub(super) fn get(&self, from: usize, to: usize) -> &[u8] {
        &self.bytes[from - self.start..to - self.start]
    }

    /// The block from its start: only for a buffer holding a block written whole.
    pub(super) fn block(&self) -> &[u8] {
        debug_assert_eq!(self.start, 0, "only a block written whole starts at 0");
        &self.bytes
    }

    /// The whole block's bytes, taken out (a block written whole).
    pub(super) fn into_block(self) -> BytesMut {
        debug_assert_eq!(self.start, 0, "only a block written whole starts at 0");
        self.bytes
    }

    /// Bytes of memory this buffer holds.
    pub(super) fn held(&self) -> u64 {
        self.bytes.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_span_grows_both_ways_and_keeps_what_was_written() {
        let mut b = BlockBuf::default();
        b.write(100, b"middle");
        assert_eq!(b.held(), 6);
        b.write(10, b"front");
        b.write(200, b"back");
        assert_eq!(b.get(10, 15), b"front");
        assert_eq!(b.get(100, 106), b"middle");
        assert_eq!(b.get(200, 204), b"back");
        assert_eq!(b.held(), 194);
        b.write(102, b"DD");
        assert_eq!(b.get(100, 106), b"miDDle");
    }
}
