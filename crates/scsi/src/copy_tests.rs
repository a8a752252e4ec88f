//! EXTENDED COPY and RECEIVE COPY RESULTS driven without a network: within a LU, between two
//! LUs of one gateway, and the ways a copy is refused.

use std::sync::Arc;

use backstore::{BlockDevice, FileDevice};

use crate::copy_manager::{BoxFuture, CopyTargets, Held};
use crate::lu::LuConfig;
use crate::lu_tests::{check, nexus, run};
use crate::sense::{Asc, SenseData, SenseKey};
use crate::xcopy::Designator;
use crate::{ItNexus, LogicalUnit, ScsiResponse, ScsiStatus};

type Lu = LogicalUnit<FileDevice>;

fn memory_lu(serial: &str, read_only: bool) -> Arc<Lu> {
    let mut c = LuConfig::new(0, serial, "iqn.2026-11.org.rbdgw:t");
    c.read_only = read_only;
    Arc::new(LogicalUnit::new(c, FileDevice::memory(1 << 20).unwrap()))
}

/// The LUs of a gateway, as the gateway's own `CopyTargets` finds them; writes are admitted
/// at once and memory is not counted (one gateway, no lock to take).
struct Gateway(Vec<Arc<Lu>>);

impl CopyTargets<FileDevice> for Gateway {
    fn find(&self, d: &Designator) -> Option<Arc<Lu>> {
        self.0.iter().find(|l| l.has_designator(d)).cloned()
    }
    fn admit_write(&self, _lu: Arc<Lu>) -> BoxFuture<'static, Result<Held, SenseData>> {
        Box::pin(async { Ok(Box::new(()) as Held) })
    }
    fn reserve_memory(&self, _bytes: usize) -> BoxFuture<'static, Held> {
        Box::pin(async { Box::new(()) as Held })
    }
}

fn naa(lu: &Lu) -> [u8; 16] {
    crate::inquiry::naa_designator(&lu.config().serial)
}

/// An identification CSCD descriptor naming `naa`, 512-byte blocks.
fn cscd(naa: &[u8; 16]) -> Vec<u8> {
    let mut d = vec![0u8; 32];
    d[0] = 0xe4;
    d[4] = 0x01;
    d[5] = 0x03;
    d[7] = 16;
    d[8..24].copy_from_slice(naa);
    d[30] = 0x02; // 512
    d
}

fn segment(src: u16, dst: u16, blocks: u16, src_lba: u64, dst_lba: u64) -> Vec<u8> {
    let mut d = vec![0u8; 28];
    d[0] = 0x02;
    d[3] = 24;
    d[4..6].copy_from_slice(&src.to_be_bytes());
    d[6..8].copy_from_slice(&dst.to_be_bytes());
    d[10..12].copy_from_slice(&blocks.to_be_bytes());
    d[12..20].copy_from_slice(&src_lba.to_be_bytes());
    d[20..28].copy_from_slice(&dst_lba.to_be_bytes());
    d
}

/// A LID1 parameter list: list 1, held, these CSCDs and segments.
fn list(cscds: &[[u8; 16]], segments: &[Vec<u8>]) -> Vec<u8> {
    let mut h = vec![0u8; 16];
    h[0] = 1;
    h[2..4].copy_from_slice(&((cscds.len() * 32) as u16).to_be_bytes());
    h[8..12].copy_from_slice(&((segments.len() * 28) as u32).to_be_bytes());
    for c in cscds {
        h.extend(cscd(c));
    }
    for s in segments {
        h.extend_from_slice(s);
    }
    h
}

async fn xcopy(lu: &Lu, n: &ItNexus, params: &[u8]) -> ScsiResponse {
    let mut cdb = [0u8; 16];
    cdb[0] = 0x83;
    cdb[10..14].copy_from_slice(&(params.len() as u32).to_be_bytes());
    run(lu, n, &cdb, params).await
}

async fn copy_status(lu: &Lu, n: &ItNexus, list_id: u8) -> ScsiResponse {
    let mut cdb = [0u8; 16];
    cdb[0] = 0x84;
    cdb[2] = list_id;
    cdb[13] = 64;
    run(lu, n, &cdb, &[]).await
}

async fn settle(lu: &Lu, n: &ItNexus) {
    run(lu, n, &[0x00], &[]).await;
    assert_eq!(run(lu, n, &[0x00], &[]).await.status, ScsiStatus::Good);
}

async fn fill(lu: &Lu, lba: u64, blocks: usize, byte: u8) {
    lu.device()
        .write(
            lba * 512,
            bytes::Bytes::from(vec![byte; blocks * 512]).into(),
            false,
        )
        .await
        .unwrap();
}

async fn read(lu: &Lu, lba: u64, blocks: usize) -> Vec<u8> {
    lu.device()
        .read(lba * 512, blocks * 512)
        .await
        .unwrap()
        .to_vec()
}

#[tokio::test]
async fn a_copy_within_a_lu_lands_and_its_status_is_held_for_the_nexus() {
    let lu = memory_lu("1111abcd-0000-0000-0000-000000000000", false);
    let n = nexus(1);
    settle(&lu, &n).await;
    fill(&lu, 0, 8, b'A').await;
    let p = list(&[naa(&lu)], &[segment(0, 0, 8, 0, 100)]);
    let r = xcopy(&lu, &n, &p).await;
    assert_eq!(r.status, ScsiStatus::Good, "{r:?}");
    assert_eq!(read(&lu, 100, 8).await, vec![b'A'; 8 * 512]);
    // COPY STATUS: completed without errors, one segment, 4,096 bytes (SPC-4 §6.18.2).
    let s = copy_status(&lu, &n, 1).await;
    assert_eq!(s.status, ScsiStatus::Good, "{s:?}");
    assert_eq!((s.data[4], s.data[6], s.data[7]), (1, 1, 0));
    assert_eq!(&s.data[8..12], &4096u32.to_be_bytes());
    // Another nexus has no such list; the held status goes with its nexus.
    settle(&lu, &nexus(2)).await;
    check(
        &copy_status(&lu, &nexus(2), 1).await,
        SenseKey::IllegalRequest,
        Asc::INVALID_FIELD_IN_CDB,
    );
    lu.nexus_lost(&n).await;
    settle(&lu, &n).await;
    check(
        &copy_status(&lu, &n, 1).await,
        SenseKey::IllegalRequest,
        Asc::INVALID_FIELD_IN_CDB,
    );
    // The CSCD ID FFFFh names the LU itself.
    fill(&lu, 200, 4, b'B').await;
    let p = list(&[], &[segment(0xffff, 0xffff, 4, 200, 300)]);
    assert_eq!(xcopy(&lu, &n, &p).await.status, ScsiStatus::Good);
    assert_eq!(read(&lu, 300, 4).await, vec![b'B'; 4 * 512]);
}

#[tokio::test]
async fn a_copy_between_two_lus_of_the_gateway_reads_holes_as_zeroes() {
    let a = memory_lu("aaaa0123-0000-0000-0000-000000000000", false);
    let b = memory_lu("bbbb0123-0000-0000-0000-000000000000", false);
    let gw = Arc::new(Gateway(vec![a.clone(), b.clone()]));
    a.set_copy_targets(gw.clone());
    b.set_copy_targets(gw);
    let n = nexus(1);
    settle(&a, &n).await;
    // The source's first half written, its second half never (a hole); the destination full.
    fill(&a, 0, 1024, b'x').await;
    fill(&b, 0, 2048, b'y').await;
    let p = list(&[naa(&a), naa(&b)], &[segment(0, 1, 2048, 0, 0)]);
    let r = xcopy(&a, &n, &p).await;
    assert_eq!(r.status, ScsiStatus::Good, "{r:?}");
    let got = read(&b, 0, 2048).await;
    assert!(got[..512 * 1024].iter().all(|c| *c == b'x'));
    assert!(
        got[512 * 1024..].iter().all(|c| *c == 0),
        "the source's hole is zeroes at the destination"
    );
}

#[tokio::test]
async fn copies_are_refused_as_writes_would_be() {
    let a = memory_lu("aaaa0123-0000-0000-0000-000000000000", false);
    let ro = memory_lu("cccc0123-0000-0000-0000-000000000000", true);
    let gw = Arc::new(Gateway(vec![a.clone(), ro.clone()]));
    a.set_copy_targets(gw);
    let n = nexus(1);
    settle(&a, &n).await;
    let blocks = a.block_count();
    // A LU the gateway does not serve: COPY ABORTED, UNREACHABLE COPY TARGET, segment 0.
    let p = list(&[naa(&a), [0x60; 16]], &[segment(0, 1, 8, 0, 0)]);
    let r = xcopy(&a, &n, &p).await;
    check(&r, SenseKey::CopyAborted, Asc::UNREACHABLE_COPY_TARGET);
    assert_eq!(r.sense.unwrap().command_specific, Some(0));
    // A CSCD index past the list.
    let p = list(
        &[naa(&a)],
        &[segment(0, 0, 8, 0, 0), segment(0, 1, 8, 0, 0)],
    );
    let r = xcopy(&a, &n, &p).await;
    check(&r, SenseKey::CopyAborted, Asc::UNREACHABLE_COPY_TARGET);
    assert_eq!(r.sense.unwrap().command_specific, Some(1));
    // Past the end.
    let p = list(&[naa(&a)], &[segment(0, 0, 8, 0, blocks - 1)]);
    check(
        &xcopy(&a, &n, &p).await,
        SenseKey::CopyAborted,
        Asc::NO_ADDITIONAL,
    );
    // A write-protected destination.
    let p = list(&[naa(&a), naa(&ro)], &[segment(0, 1, 8, 0, 0)]);
    check(
        &xcopy(&a, &n, &p).await,
        SenseKey::DataProtect,
        Asc::WRITE_PROTECTED,
    );
    // Another initiator holds Write Exclusive on the destination: a reservation conflict.
    let other = nexus(2);
    settle(&a, &other).await;
    let mut reg = [0x5f, 0x00, 0, 0, 0, 0, 0, 0, 24, 0];
    let mut params = [0u8; 24];
    params[8..16].copy_from_slice(&7u64.to_be_bytes());
    assert_eq!(
        run(&a, &other, &reg, &params).await.status,
        ScsiStatus::Good
    );
    reg[1] = 0x01;
    reg[2] = 0x01; // RESERVE, Write Exclusive
    params[..8].copy_from_slice(&7u64.to_be_bytes());
    params[8..16].fill(0);
    assert_eq!(
        run(&a, &other, &reg, &params).await.status,
        ScsiStatus::Good
    );
    let p = list(&[naa(&a)], &[segment(0, 0, 8, 0, 100)]);
    assert_eq!(
        xcopy(&a, &n, &p).await.status,
        ScsiStatus::ReservationConflict
    );
    // An empty parameter list copies nothing and is no error.
    assert_eq!(xcopy(&a, &other, &[]).await.status, ScsiStatus::Good);
}

/// POPULATE TOKEN's CDB: list `id`, parameter list of `len` bytes.
fn populate_cdb(id: u32, len: usize) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x83;
    c[1] = 0x10;
    c[6..10].copy_from_slice(&id.to_be_bytes());
    c[10..14].copy_from_slice(&(len as u32).to_be_bytes());
    c
}

/// A POPULATE TOKEN (or, at 536, WRITE USING TOKEN) parameter list with these ranges.
fn with_ranges(head: usize, ranges: &[(u64, u32)]) -> Vec<u8> {
    let mut l = vec![0u8; head];
    l[head - 2..].copy_from_slice(&((ranges.len() * 16) as u16).to_be_bytes());
    for (lba, n) in ranges {
        l.extend_from_slice(&lba.to_be_bytes());
        l.extend_from_slice(&n.to_be_bytes());
        l.extend_from_slice(&[0; 4]);
    }
    l
}

async fn populate(lu: &Lu, n: &ItNexus, id: u32, ranges: &[(u64, u32)]) -> Vec<u8> {
    let p = with_ranges(16, ranges);
    let r = run(lu, n, &populate_cdb(id, p.len()), &p).await;
    assert_eq!(r.status, ScsiStatus::Good, "{r:?}");
    // RECEIVE ROD TOKEN INFORMATION: the token after the 32-byte status, no sense, 4 + 2.
    let mut c = [0u8; 16];
    c[0] = 0x84;
    c[1] = 0x07;
    c[2..6].copy_from_slice(&id.to_be_bytes());
    c[10..14].copy_from_slice(&1024u32.to_be_bytes());
    let r = run(lu, n, &c, &[]).await;
    assert_eq!(r.status, ScsiStatus::Good, "{r:?}");
    assert_eq!(
        (r.data[4], r.data[5]),
        (0x10, 0x01),
        "POPULATE TOKEN, completed"
    );
    r.data[38..38 + 512].to_vec()
}

async fn write_using(lu: &Lu, n: &ItNexus, token: &[u8], ranges: &[(u64, u32)]) -> ScsiResponse {
    let mut p = with_ranges(536, ranges);
    p[16..16 + 512].copy_from_slice(token);
    let mut c = populate_cdb(2, p.len());
    c[1] = 0x11;
    run(lu, n, &c, &p).await
}

#[tokio::test]
async fn a_token_made_through_one_gateway_is_written_through_another_until_its_data_changes() {
    let dir = std::env::temp_dir().join(format!("rbdgw-odx-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let image = dir.join("a.img");
    let serial = "aaaa0123-0000-0000-0000-000000000000";
    let lu_on = |dev| {
        Arc::new(LogicalUnit::new(
            LuConfig::new(0, serial, "iqn.2026-11.org.rbdgw:t"),
            dev,
        ))
    };
    // One image, served by two gateways (each its own LU over it, the metadata shared).
    let a1 = lu_on(FileDevice::open(&image, Some(1 << 20)).unwrap());
    let a2 = lu_on(FileDevice::open(&image, None).unwrap());
    let b = memory_lu("bbbb0123-0000-0000-0000-000000000000", false);
    let gw2 = Arc::new(Gateway(vec![a2.clone(), b.clone()]));
    a2.set_copy_targets(gw2.clone());
    b.set_copy_targets(gw2);
    let n = nexus(1);
    for lu in [&a1, &a2, &b] {
        settle(lu, &n).await;
    }
    fill(&a1, 0, 8, b'P').await;
    fill(&a1, 100, 8, b'Q').await;
    let token = populate(&a1, &n, 1, &[(0, 8), (100, 8)]).await;
    let r = write_using(&b, &n, &token, &[(10, 16)]).await;
    assert_eq!(r.status, ScsiStatus::Good, "{r:?}");
    let got = read(&b, 10, 16).await;
    assert_eq!(&got[..8 * 512], &vec![b'P'; 8 * 512][..]);
    assert_eq!(&got[8 * 512..], &vec![b'Q'; 8 * 512][..]);

    // A write to data the token stands for (through the first gateway) revokes it.
    assert_eq!(
        run(&a1, &n, &[0x2a, 0, 0, 0, 0, 4, 0, 0, 1, 0], &[0u8; 512])
            .await
            .status,
        ScsiStatus::Good
    );
    check(
        &write_using(&b, &n, &token, &[(10, 16)]).await,
        SenseKey::IllegalRequest,
        Asc::TOKEN_REVOKED,
    );
    // A token made through one gateway is revoked by a write through the other.
    let token = populate(&a1, &n, 3, &[(0, 8)]).await;
    assert_eq!(
        run(&a2, &n, &[0x2a, 0, 0, 0, 0, 7, 0, 0, 1, 0], &[0u8; 512])
            .await
            .status,
        ScsiStatus::Good
    );
    check(
        &write_using(&b, &n, &token, &[(10, 8)]).await,
        SenseKey::IllegalRequest,
        Asc::TOKEN_REVOKED,
    );
    // A token nobody made.
    let mut forged = token.clone();
    forged[130] ^= 0xff;
    check(
        &write_using(&b, &n, &forged, &[(10, 16)]).await,
        SenseKey::IllegalRequest,
        Asc::TOKEN_UNKNOWN,
    );
    // The block device zero ROD token writes zeroes.
    let mut zero = vec![0u8; 512];
    zero[0..4].copy_from_slice(&crate::rod_token::ROD_TYPE_BLOCK_ZERO.to_be_bytes());
    assert_eq!(
        write_using(&b, &n, &zero, &[(10, 4)]).await.status,
        ScsiStatus::Good
    );
    assert_eq!(read(&b, 10, 4).await, vec![0u8; 4 * 512]);
    let _ = std::fs::remove_dir_all(&dir);
}
