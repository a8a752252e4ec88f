//! [`Unopened`]: the device of a LUN whose backstore has not opened yet (an image that is
//! missing, or slow to open because its pool cannot be reached). The gateway serves the LUN
//! with it meanwhile, so the LUN is listed and described, and answers every other command
//! NOT READY; the real device replaces it once its opening, retried in the background,
//! succeeds.

use bytes::Bytes;

use crate::{
    BackstoreError, BlockDevice, Capabilities, DataOutBuffer, Extent, Member, Publish, Result,
};

/// A device that is not open: every data and lock call fails with
/// [`BackstoreError::NotOpen`]; its metadata is empty.
#[derive(Debug, Default)]
pub struct Unopened;

impl BlockDevice for Unopened {
    fn size(&self) -> u64 {
        0
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }
    async fn read(&self, _offset: u64, _len: usize) -> Result<Bytes> {
        Err(BackstoreError::NotOpen)
    }
    async fn write(&self, _offset: u64, _data: DataOutBuffer, _fua: bool) -> Result<()> {
        Err(BackstoreError::NotOpen)
    }
    async fn flush(&self) -> Result<()> {
        Err(BackstoreError::NotOpen)
    }
    async fn discard(&self, _offset: u64, _len: u64) -> Result<()> {
        Err(BackstoreError::NotOpen)
    }
    async fn write_zeroes(&self, _offset: u64, _len: u64) -> Result<()> {
        Err(BackstoreError::NotOpen)
    }
    async fn compare_and_write(&self, _o: u64, _c: Bytes, _d: Bytes) -> Result<Option<u64>> {
        Err(BackstoreError::NotOpen)
    }
    async fn allocation(&self, _offset: u64, _len: u64) -> Result<Extent> {
        Err(BackstoreError::NotOpen)
    }
    // The reservation state is read before commands: an unopened device has none (and every
    // command that could change it is refused before it gets there).
    async fn metadata_get(&self, _key: &str) -> Result<Option<Vec<u8>>> {
        Ok(None)
    }
    async fn metadata_set(&self, _key: &str, _value: Vec<u8>, _publish: Publish) -> Result<()> {
        Err(BackstoreError::NotOpen)
    }
    async fn metadata_compare_and_set(
        &self,
        _key: &str,
        _expected: Option<Vec<u8>>,
        _value: Vec<u8>,
        _publish: Publish,
    ) -> Result<bool> {
        Err(BackstoreError::NotOpen)
    }
    fn metadata_generation(&self) -> u64 {
        0
    }
    async fn try_acquire_ownership(&self) -> Result<bool> {
        Err(BackstoreError::NotOpen)
    }
    async fn release_ownership(&self) -> Result<()> {
        Ok(())
    }
    fn holds_ownership(&self) -> bool {
        false
    }
    fn available(&self) -> bool {
        false
    }
    fn opened(&self) -> bool {
        false
    }
    async fn break_ownership(&self) -> Result<bool> {
        Err(BackstoreError::NotOpen)
    }
    async fn heartbeat(&self, _tag: u16, _standing: crate::Standing) -> Result<()> {
        Err(BackstoreError::NotOpen)
    }
    async fn members(&self) -> Result<Vec<Member>> {
        Err(BackstoreError::NotOpen)
    }
}
