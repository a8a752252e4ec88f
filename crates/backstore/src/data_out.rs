//! Data on its way between the network and an engine, held so that it is copied as little
//! as possible: a write's data as it arrived, a read's data where it lies.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

/// A command's Data-Out Buffer (SAM-5 §4.5.4) as it arrived: the data segments of the PDUs
/// that carried it, in order, sharing the connection's receive buffers. Gathering them into
/// one buffer was the largest user-space copy in a profile of 1 MiB writes; engines write the
/// parts with one vectored call (pwritev, rbd_aio_writev) instead.
#[derive(Clone, Debug, Default)]
pub struct DataOutBuffer {
    parts: Vec<Bytes>,
    len: usize,
}

impl DataOutBuffer {
    /// The buffer made of `parts`, in order (empty parts are left out).
    pub fn from_parts(parts: impl IntoIterator<Item = Bytes>) -> Self {
        let mut b = DataOutBuffer::default();
        for p in parts {
            b.push(p);
        }
        b
    }

    /// Appends `part` at the end.
    pub fn push(&mut self, part: Bytes) {
        if !part.is_empty() {
            self.len += part.len();
            self.parts.push(part);
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The parts, in order; none is empty.
    pub fn parts(&self) -> &[Bytes] {
        &self.parts
    }

    /// The first `len` bytes (all of them if there are fewer), without a copy.
    pub fn prefix(&self, len: usize) -> DataOutBuffer {
        if len >= self.len {
            return self.clone();
        }
        let mut out = DataOutBuffer::default();
        let mut left = len;
        for p in &self.parts {
            if left == 0 {
                break;
            }
            let n = p.len().min(left);
            out.push(p.slice(..n));
            left -= n;
        }
        out
    }

    /// The bytes in one buffer: free when there is one part, a copy otherwise. For the
    /// commands that parse their data (parameter lists) or compare it.
    pub fn to_bytes(&self) -> Bytes {
        match self.parts.as_slice() {
            [] => Bytes::new(),
            [one] => one.clone(),
            many => {
                let mut v = BytesMut::with_capacity(self.len);
                for p in many {
                    v.extend_from_slice(p);
                }
                v.freeze()
            }
        }
    }
}

impl From<Bytes> for DataOutBuffer {
    fn from(b: Bytes) -> Self {
        DataOutBuffer::from_parts([b])
    }
}

/// Bytes of a file that the kernel sends to a socket itself (sendfile), never copied through
/// user memory: read data of an engine whose file lives in memory (tmpfs, a memfd). With
/// the page cache copy gone the gateway's only work for a 1 MiB read is framing it.
#[derive(Clone)]
pub struct FileExtent {
    file: Arc<dyn AsRawFd + Send + Sync>,
    pub offset: u64,
    pub len: usize,
}

impl FileExtent {
    pub fn new(file: Arc<dyn AsRawFd + Send + Sync>, offset: u64, len: usize) -> Self {
        FileExtent { file, offset, len }
    }

    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// `len` bytes from `skip` on (a Data-In PDU's share).
    pub fn slice(&self, skip: usize, len: usize) -> FileExtent {
        debug_assert!(skip + len <= self.len);
        FileExtent {
            file: self.file.clone(),
            offset: self.offset + skip as u64,
            len,
        }
    }

    /// The bytes, read into memory (for a digest, which must see them). An extent whose file
    /// was cut short meanwhile is an error, never short data.
    pub fn read(&self) -> std::io::Result<Bytes> {
        crate::file::pread_exact(self.fd(), self.offset, self.len)
    }
}

impl std::fmt::Debug for FileExtent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "FileExtent(fd {} {}+{})",
            self.fd(),
            self.offset,
            self.len
        )
    }
}

impl PartialEq for FileExtent {
    fn eq(&self, o: &Self) -> bool {
        self.fd() == o.fd() && self.offset == o.offset && self.len == o.len
    }
}

impl Eq for FileExtent {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_and_flatten() {
        let b = DataOutBuffer::from_parts([
            Bytes::from_static(b"abc"),
            Bytes::new(),
            Bytes::from_static(b"defg"),
        ]);
        assert_eq!(b.len(), 7);
        assert_eq!(b.parts().len(), 2);
        assert_eq!(&b.to_bytes()[..], b"abcdefg");
        assert_eq!(&b.prefix(5).to_bytes()[..], b"abcde");
        assert_eq!(b.prefix(3).parts().len(), 1);
        assert_eq!(b.prefix(0).len(), 0);
        assert_eq!(b.prefix(99).len(), 7);
    }
}
