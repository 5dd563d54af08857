//! Read-ahead for sequential readers: a reader that continues where its last read ended gets the
//! next blocks fetched, decoded and verified in the background into the block cache, so its
//! next reads are served from memory while the store works ahead of it. `O_DIRECT` readers and
//! readers of a FUSE mount without kernel read-ahead (the CSI mounts, the CLI) need it most.

use std::sync::Arc;

use super::Volume;
use super::io::{FileState, OpenFile};
use crate::types::Ino;

/// How far ahead of a sequential reader blocks are fetched from the database.
const WINDOW_BYTES: u64 = 8 << 20;
/// How far ahead from a block store, where each block is a request with its own latency (tens
/// of milliseconds on S3) and only many in flight at once give bandwidth.
const STORE_WINDOW_BYTES: u64 = 32 << 20;

/// Where a file's reader is, and how far ahead was fetched.
#[derive(Debug, Default)]
pub(super) struct ReadAhead {
    /// Where a sequential read would start next.
    next: u64,
    /// Blocks before this index have been fetched ahead.
    fetched_until: u64,
}

impl Volume {
    /// Note a read of `offset..end` and, if it continues the previous one, fetch ahead.
    pub(super) fn read_ahead(
        &self,
        file: &Arc<OpenFile>,
        st: &mut FileState,
        offset: u64,
        end: u64,
    ) {
        let bs = self.block_size();
        let ra = &mut st.readahead;
        let sequential = offset == ra.next && offset > 0;
        ra.next = end;
        if !sequential {
            ra.fetched_until = 0;
            return;
        }
        let window_bytes = if self.block_store().is_some() {
            STORE_WINDOW_BYTES
        } else {
            WINDOW_BYTES
        };
        let window = (window_bytes / bs).max(2);
        let after = (end - 1) / bs + 1;
        // Fetch again when half the window has been read.
        if ra.fetched_until >= after + window / 2 {
            return;
        }
        let from = ra.fetched_until.max(after);
        let to = (after + window).min(st.stored_size.div_ceil(bs));
        if from >= to {
            return;
        }
        ra.fetched_until = to;
        let (volume, file, ino): (Volume, Arc<OpenFile>, Ino) =
            (self.clone(), file.clone(), file.ino);
        tokio::spawn(async move {
            let view = volume.view();
            let mut r = volume.reader();
            let Ok(map) = r.block_map(ino, from..to).await else {
                return;
            };
            // Into the block cache; a failure here is the next read's to report.
            if volume.fetch_blocks(r.as_mut(), &map).await.is_err() {
                return;
            }
            let mut st = file.lock_state().await;
            // The volume moved to another tree meanwhile: these mappings are of the old one.
            if volume.view() != view {
                return;
            }
            for idx in from..to {
                let hash = map.iter().find(|(i, _)| *i == idx).map(|(_, h)| *h);
                // Only where nothing newer is known: a flush since records its own mappings.
                st.map.entry(idx).or_insert(hash);
            }
        });
    }
}
