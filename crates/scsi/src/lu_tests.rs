//! The logical unit driven without a network: each error path's status and sense.

use backstore::{BlockDevice, FileDevice, Unopened};
use bytes::Bytes;

use crate::lu::{LuConfig, ResetKind};
use crate::sense::{Asc, SenseKey};
use crate::{ItNexus, LogicalUnit, ScsiCommand, ScsiResponse, ScsiStatus};

fn lu(read_only: bool) -> LogicalUnit<FileDevice> {
    let mut c = LuConfig::new(
        0,
        "0123abcd-0000-0000-0000-000000000000",
        "iqn.2026-11.org.rbdgw:t",
    );
    c.read_only = read_only;
    LogicalUnit::new(c, FileDevice::memory(1 << 20).unwrap())
}

pub(crate) fn nexus(n: u8) -> ItNexus {
    ItNexus {
        initiator: format!("iqn.2026-11.org.rbdgw:i{n}").into(),
        isid: [0x40, 0, 0, 0, 0, n],
        relative_port: 1,
    }
}

pub(crate) async fn run<B: BlockDevice>(
    lu: &LogicalUnit<B>,
    n: &ItNexus,
    cdb: &[u8],
    data: &[u8],
) -> ScsiResponse {
    let mut full = [0u8; 16];
    full[..cdb.len()].copy_from_slice(cdb);
    let cmd = ScsiCommand {
        cdb: &full,
        nexus: n,
        data_out: Bytes::copy_from_slice(data).into(),
        transfer_length: data.len() as u32,
    };
    lu.execute(&cmd).await
}

/// Runs a command on a nexus that has already seen its power-on unit attention.
async fn ready(lu: &LogicalUnit<FileDevice>, n: &ItNexus) {
    let r = run(lu, n, &[0x00], &[]).await;
    assert_eq!(r.sense.map(|s| s.asc), Some(Asc::POWER_ON_RESET));
    assert_eq!(run(lu, n, &[0x00], &[]).await.status, ScsiStatus::Good);
}

pub(crate) fn check(r: &ScsiResponse, key: SenseKey, asc: Asc) {
    assert_eq!(r.status, ScsiStatus::CheckCondition, "{r:?}");
    let s = r.sense.expect("sense");
    assert_eq!((s.key, s.asc), (key, asc), "{r:?}");
}

fn write10(lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = [0x2a, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

#[tokio::test]
async fn error_paths_report_the_right_sense() {
    let lu = lu(false);
    let n = nexus(1);
    ready(&lu, &n).await;
    let blocks = lu.block_count() as u32;
    let ill = SenseKey::IllegalRequest;
    check(
        &run(&lu, &n, &[0xee], &[]).await,
        ill,
        Asc::INVALID_COMMAND_OPERATION_CODE,
    );
    check(
        &run(&lu, &n, &[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0x04], &[]).await,
        ill,
        Asc::INVALID_FIELD_IN_CDB,
    ); // NACA
    check(
        &run(&lu, &n, &write10(blocks, 1), &[0; 512]).await,
        ill,
        Asc::LBA_OUT_OF_RANGE,
    );
    check(
        &run(&lu, &n, &[0x28, 0x20, 0, 0, 0, 0, 0, 0, 1, 0], &[]).await,
        ill,
        Asc::INVALID_FIELD_IN_CDB,
    ); // RDPROTECT
    check(
        &run(&lu, &n, &write10(0, 2), &[0; 512]).await,
        ill,
        Asc::INVALID_FIELD_IN_INFORMATION_UNIT,
    ); // short data
    check(
        &run(&lu, &n, &[0x12, 0, 0x80, 0, 255, 0], &[]).await,
        ill,
        Asc::INVALID_FIELD_IN_CDB,
    ); // page without EVPD
    check(
        &run(&lu, &n, &[0x12, 1, 0x42, 0, 255, 0], &[]).await,
        ill,
        Asc::INVALID_FIELD_IN_CDB,
    ); // unknown VPD page
    check(
        &run(&lu, &n, &[0x1a, 0, 0xc8, 0, 255, 0], &[]).await,
        ill,
        Asc::SAVING_PARAMETERS_NOT_SUPPORTED,
    );
    check(
        &run(&lu, &n, &[0x42, 0, 0, 0, 0, 0, 0, 0, 4, 0], &[0; 4]).await,
        ill,
        Asc::PARAMETER_LIST_LENGTH_ERROR,
    );
    check(
        &run(&lu, &n, &[0x1b, 0, 0, 0, 0x02, 0], &[]).await,
        ill,
        Asc::INVALID_FIELD_IN_CDB,
    ); // LOEJ
    check(
        &run(&lu, &n, &[0x5e, 0x09, 0, 0, 0, 0, 0, 0, 255, 0], &[]).await,
        ill,
        Asc::INVALID_FIELD_IN_CDB,
    );
    // WRITE SAME beyond MAXIMUM WRITE SAME LENGTH.
    let mut ws = [0u8; 16];
    ws[0] = 0x93;
    ws[10..14].copy_from_slice(&0x10000u32.to_be_bytes());
    check(
        &run(&lu, &n, &ws, &[0; 512]).await,
        ill,
        Asc::INVALID_FIELD_IN_CDB,
    );
    // MODE SELECT may not change what is not changeable (the control page's QAM).
    let sense = run(&lu, &n, &[0x1a, 0x08, 0x0a, 0, 255, 0], &[]).await;
    let mut page = sense.data[4..].to_vec();
    page[3] ^= 0x10;
    let mut list = vec![0u8, 0, 0, 0];
    list.extend_from_slice(&page);
    let r = run(&lu, &n, &[0x15, 0x10, 0, 0, list.len() as u8, 0], &list).await;
    check(&r, ill, Asc::INVALID_FIELD_IN_PARAMETER_LIST);
}

#[tokio::test]
async fn compare_and_write_and_verify_miscompare_offsets() {
    let lu = lu(false);
    let n = nexus(1);
    ready(&lu, &n).await;
    assert_eq!(
        run(&lu, &n, &write10(4, 1), &[7u8; 512]).await.status,
        ScsiStatus::Good
    );
    let mut caw = [0u8; 16];
    caw[0] = 0x89;
    caw[2..10].copy_from_slice(&4u64.to_be_bytes());
    caw[13] = 1;
    let mut data = vec![7u8; 1024];
    data[10] = 0;
    let r = run(&lu, &n, &caw, &data).await;
    check(&r, SenseKey::Miscompare, Asc::MISCOMPARE_DURING_VERIFY);
    assert_eq!(r.sense.unwrap().information, Some(10));
    data[10] = 7;
    data[512..].fill(9);
    assert_eq!(run(&lu, &n, &caw, &data).await.status, ScsiStatus::Good);
    // VERIFY(10) with BYTCHK=1 against the new contents.
    let mut v = [0x2f, 0x02, 0, 0, 0, 4, 0, 0, 1, 0];
    let mut expect = vec![9u8; 512];
    assert_eq!(run(&lu, &n, &v, &expect).await.status, ScsiStatus::Good);
    expect[300] = 1;
    let r = run(&lu, &n, &v, &expect).await;
    assert_eq!(r.sense.unwrap().information, Some(300));
    v[1] = 0x04; // BYTCHK 10b is reserved
    check(
        &run(&lu, &n, &v, &expect).await,
        SenseKey::IllegalRequest,
        Asc::INVALID_FIELD_IN_CDB,
    );
}

#[tokio::test]
async fn read_only_lun_refuses_writes() {
    let lu = lu(true);
    let n = nexus(1);
    ready(&lu, &n).await;
    check(
        &run(&lu, &n, &write10(0, 1), &[0; 512]).await,
        SenseKey::DataProtect,
        Asc::WRITE_PROTECTED,
    );
    let r = run(&lu, &n, &[0x1a, 0x08, 0x3f, 0, 255, 0], &[]).await;
    assert_eq!(r.data[2] & 0x80, 0x80, "WP in the mode parameter header");
}

#[tokio::test]
async fn unit_attentions_follow_resets_and_mode_changes() {
    let lu = lu(false);
    let (a, b) = (nexus(1), nexus(2));
    ready(&lu, &a).await;
    ready(&lu, &b).await;
    lu.reset(ResetKind::LogicalUnit, Some(&a)).await;
    // INQUIRY does not report the unit attention; TEST UNIT READY does, once.
    assert_eq!(
        run(&lu, &a, &[0x12, 0, 0, 0, 36, 0], &[]).await.status,
        ScsiStatus::Good
    );
    check(
        &run(&lu, &a, &[0x00], &[]).await,
        SenseKey::UnitAttention,
        Asc::BUS_DEVICE_RESET,
    );
    assert_eq!(run(&lu, &a, &[0x00], &[]).await.status, ScsiStatus::Good);
    // REQUEST SENSE reports and clears it.
    let r = run(&lu, &b, &[0x03, 0, 0, 0, 18, 0], &[]).await;
    assert_eq!((r.data[2], r.data[12], r.data[13]), (0x06, 0x29, 0x03));
    assert_eq!(run(&lu, &b, &[0x00], &[]).await.status, ScsiStatus::Good);
    // Turning the write cache off through MODE SELECT tells the other nexus.
    let sense = run(&lu, &a, &[0x1a, 0x08, 0x08, 0, 255, 0], &[]).await;
    let mut page = sense.data[4..].to_vec();
    page[2] &= !0x04;
    let mut list = vec![0u8, 0, 0, 0];
    list.extend_from_slice(&page);
    assert_eq!(
        run(&lu, &a, &[0x15, 0x10, 0, 0, list.len() as u8, 0], &list)
            .await
            .status,
        ScsiStatus::Good
    );
    check(
        &run(&lu, &b, &[0x00], &[]).await,
        SenseKey::UnitAttention,
        Asc::MODE_PARAMETERS_CHANGED,
    );
    assert_eq!(run(&lu, &a, &[0x00], &[]).await.status, ScsiStatus::Good);
}

fn prout(sa: u8, kind: u8, key: u64, sark: u64) -> ([u8; 10], [u8; 24]) {
    let cdb = [0x5f, sa, kind, 0, 0, 0, 0, 0, 24, 0];
    let mut p = [0u8; 24];
    p[..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sark.to_be_bytes());
    (cdb, p)
}

#[tokio::test]
async fn persistent_reservations_conflict_and_persist() {
    let lu = lu(false);
    let (a, b) = (nexus(1), nexus(2));
    ready(&lu, &a).await;
    ready(&lu, &b).await;
    let (c, p) = prout(0, 0, 0, 0xaa);
    assert_eq!(run(&lu, &a, &c, &p).await.status, ScsiStatus::Good);
    // Reserve Write Exclusive with the wrong key: conflict; with the right one: good.
    let (c, p) = prout(1, 1, 0xbb, 0);
    assert_eq!(
        run(&lu, &a, &c, &p).await.status,
        ScsiStatus::ReservationConflict
    );
    let (c, p) = prout(1, 1, 0xaa, 0);
    assert_eq!(run(&lu, &a, &c, &p).await.status, ScsiStatus::Good);
    // b may read but not write.
    assert_eq!(
        run(&lu, &b, &[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[])
            .await
            .status,
        ScsiStatus::Good
    );
    assert_eq!(
        run(&lu, &b, &write10(0, 1), &[0; 512]).await.status,
        ScsiStatus::ReservationConflict
    );
    assert_eq!(
        run(&lu, &a, &write10(0, 1), &[0; 512]).await.status,
        ScsiStatus::Good
    );
    // RESERVE(6) conflicts while persistent registrations exist.
    assert_eq!(
        run(&lu, &b, &[0x16, 0, 0, 0, 0, 0], &[]).await.status,
        ScsiStatus::ReservationConflict
    );
    // READ RESERVATION shows a's key and the type.
    let r = run(&lu, &b, &[0x5e, 0x01, 0, 0, 0, 0, 0, 0, 255, 0], &[]).await;
    assert_eq!(&r.data[8..16], &0xaau64.to_be_bytes());
    assert_eq!(r.data[21], 1);
    // The state is in the backstore's metadata for the next start.
    let stored = backstore::BlockDevice::metadata_get(lu.device(), crate::pr::METADATA_KEY)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        crate::pr::PrState::decode(&stored)
            .unwrap()
            .registrations
            .len(),
        1
    );
    // b registers and preempts a: a gets REGISTRATIONS PREEMPTED.
    let (c, p) = prout(0, 0, 0, 0xcc);
    assert_eq!(run(&lu, &b, &c, &p).await.status, ScsiStatus::Good);
    let (c, p) = prout(4, 3, 0xcc, 0xaa);
    assert_eq!(run(&lu, &b, &c, &p).await.status, ScsiStatus::Good);
    check(
        &run(&lu, &a, &[0x00], &[]).await,
        SenseKey::UnitAttention,
        Asc::REGISTRATIONS_PREEMPTED,
    );
    assert_eq!(
        run(&lu, &a, &[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[])
            .await
            .status,
        ScsiStatus::ReservationConflict,
        "exclusive access"
    );
}

#[tokio::test]
async fn random_cdbs_never_panic() {
    let lu = lu(false);
    let n = nexus(1);
    let mut x: u64 = 0x1234_5678_9abc_def1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    // Every opcode we implement, with random fields, random data-out lengths, and short CDBs.
    let ops: Vec<u8> = (0..=255u8).collect();
    for round in 0..40_000 {
        let mut cdb = [0u8; 16];
        for b in cdb.iter_mut() {
            *b = next() as u8;
        }
        cdb[0] = ops[(next() % 256) as usize];
        // Keep most LBAs and lengths small so the I/O paths run, not only the range checks.
        if round % 2 == 0 {
            for b in &mut cdb[2..10] {
                *b = 0;
            }
            cdb[10] = 0;
            cdb[11] = 0;
        }
        cdb[15] &= !0x04;
        let len = (next() % 2048) as usize;
        let data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        let cut = if round % 7 == 0 {
            (next() % 16) as usize
        } else {
            16
        };
        let _ = run(&lu, &n, &cdb[..cut], &data).await;
    }
}

/// Reads small and large from an in-memory engine: small ones in memory, large ones as a file
/// extent for the transport to send; both return what was written.
#[tokio::test]
async fn reads_in_memory_and_from_the_file() {
    let lu = lu(false);
    let n = nexus(7);
    ready(&lu, &n).await;
    let data: Vec<u8> = (0..256 * 512u32).map(|i| (i % 241) as u8).collect();
    assert_eq!(
        run(&lu, &n, &write10(8, 256), &data).await.status,
        ScsiStatus::Good
    );
    let mut read10 = write10(8, 256);
    read10[0] = 0x28;
    let big = run(&lu, &n, &read10, &[]).await;
    assert!(big.data_file.is_some() && big.data.is_empty());
    assert_eq!(big.data_in().unwrap(), data);
    read10[7..9].copy_from_slice(&8u16.to_be_bytes());
    let small = run(&lu, &n, &read10, &[]).await;
    assert!(small.data_file.is_none());
    assert_eq!(small.data_in().unwrap(), data[..4096]);
}

/// REPORT TARGET PORT GROUPS as (tag, access state) per group.
async fn rtpg<B: BlockDevice>(lu: &LogicalUnit<B>, n: &ItNexus) -> Vec<(u16, u8)> {
    let r = run(lu, n, &[0xa3, 0x0a, 0, 0, 0, 0, 0, 0, 1, 0], &[]).await;
    assert_eq!(r.status, ScsiStatus::Good, "{r:?}");
    let d = r.data.to_vec();
    (0..(d.len() - 4) / 12)
        .map(|i| (d[4 + i * 12 + 3] as u16, d[4 + i * 12] & 0x0f))
        .collect()
}

/// A 1 MiB memory LU seen from TPG `local` of port groups 1..=`groups`.
fn lu_in_groups(serial: &str, local: u16, groups: u16) -> LogicalUnit<FileDevice> {
    use crate::alua::TargetPortGroup;
    let mut c = LuConfig::new(0, serial, "iqn.2026-11.org.rbdgw:t");
    c.local_tpg = local;
    c.port_groups = (1..=groups)
        .map(|tag| TargetPortGroup {
            tag,
            relative_port: tag,
        })
        .collect();
    LogicalUnit::new(c, FileDevice::memory(1 << 20).unwrap())
}

/// SPC-4 §5.16.2.6: an ALUA owner change is announced on every nexus of this gateway — the
/// new owner's own paths included — and REPORT TARGET PORT GROUPS agrees with it.
#[tokio::test]
async fn alua_owner_changes_reach_every_nexus() {
    let lu = lu_in_groups("0123abcd-0000-0000-0000-000000000000", 2, 3);
    lu.set_owner_tpg(Some(1));
    let (a, b) = (nexus(1), nexus(2));
    ready(&lu, &a).await;
    ready(&lu, &b).await;
    assert_eq!(rtpg(&lu, &a).await, vec![(1, 0), (2, 1), (3, 1)]);
    // This gateway (TPG 2) becomes the owner: its own nexuses hear of it.
    lu.set_owner_tpg(Some(2));
    for n in [&a, &b] {
        check(
            &run(&lu, n, &[0x00], &[]).await,
            SenseKey::UnitAttention,
            Asc::ASYMMETRIC_ACCESS_STATE_CHANGED,
        );
        assert_eq!(
            run(&lu, n, &[0x00], &[]).await.status,
            ScsiStatus::Good,
            "once"
        );
    }
    assert_eq!(rtpg(&lu, &b).await, vec![(1, 1), (2, 0), (3, 1)]);
    // Setting the same owner again changes nothing and raises nothing.
    lu.set_owner_tpg(Some(2));
    assert_eq!(run(&lu, &a, &[0x00], &[]).await.status, ScsiStatus::Good);
    // Another gateway takes over: announced here too.
    lu.set_owner_tpg(Some(3));
    check(
        &run(&lu, &a, &[0x00], &[]).await,
        SenseKey::UnitAttention,
        Asc::ASYMMETRIC_ACCESS_STATE_CHANGED,
    );
    assert_eq!(rtpg(&lu, &a).await, vec![(1, 1), (2, 1), (3, 0)]);
    // TPG 1's gateway is gone: Unavailable, announced; this gateway is never "gone" to itself.
    lu.set_gone_tpgs(vec![1, 2]);
    check(
        &run(&lu, &a, &[0x00], &[]).await,
        SenseKey::UnitAttention,
        Asc::ASYMMETRIC_ACCESS_STATE_CHANGED,
    );
    assert_eq!(rtpg(&lu, &a).await, vec![(1, 3), (2, 1), (3, 0)]);
    lu.set_gone_tpgs(vec![1]);
    assert_eq!(
        run(&lu, &a, &[0x00], &[]).await.status,
        ScsiStatus::Good,
        "no change"
    );
    lu.set_gone_tpgs(vec![]);
    check(
        &run(&lu, &a, &[0x00], &[]).await,
        SenseKey::UnitAttention,
        Asc::ASYMMETRIC_ACCESS_STATE_CHANGED,
    );
    assert_eq!(rtpg(&lu, &a).await, vec![(1, 1), (2, 1), (3, 0)]);
    // This gateway owns the LU and is cut off from the shared state: it no longer reports
    // itself optimized (the others may have taken over), but stays active; announced both
    // ways, and a repeat changes nothing.
    lu.set_owner_tpg(Some(2));
    let _ = run(&lu, &a, &[0x00], &[]).await;
    assert!(lu.set_isolated(true));
    assert!(!lu.set_isolated(true));
    check(
        &run(&lu, &a, &[0x00], &[]).await,
        SenseKey::UnitAttention,
        Asc::ASYMMETRIC_ACCESS_STATE_CHANGED,
    );
    assert_eq!(rtpg(&lu, &a).await, vec![(1, 1), (2, 1), (3, 1)]);
    assert_eq!(
        run(&lu, &a, &[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[])
            .await
            .status,
        ScsiStatus::Good,
        "an isolated gateway still serves (active/non-optimized)"
    );
    assert!(lu.set_isolated(false));
    check(
        &run(&lu, &a, &[0x00], &[]).await,
        SenseKey::UnitAttention,
        Asc::ASYMMETRIC_ACCESS_STATE_CHANGED,
    );
    assert_eq!(rtpg(&lu, &a).await, vec![(1, 1), (2, 0), (3, 1)]);
}

/// The abort orders a LU hands to its transport, collected.
fn collect_aborts(
    lu: &LogicalUnit<FileDevice>,
) -> std::sync::Arc<std::sync::Mutex<Vec<crate::TaskAbort>>> {
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let g = got.clone();
    lu.on_task_abort(Box::new(move |a| g.lock().unwrap().push(a)));
    got
}

#[tokio::test]
async fn preempt_and_abort_clear_task_set_and_reset_abort_other_nexuses_on_every_gateway() {
    use crate::AbortScope;
    let dir = std::env::temp_dir().join(format!("rbdgw-scsi-abort-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("pr.img");
    // Two gateways serving one image: TPG 1 and TPG 2.
    let gw = |tpg: u16| {
        let mut c = LuConfig::new(
            0,
            "0123abcd-0000-0000-0000-000000000000",
            "iqn.2026-11.org.rbdgw:t",
        );
        c.local_tpg = tpg;
        LogicalUnit::new(c, FileDevice::open(&path, Some(1 << 20)).unwrap())
    };
    let (a, b) = (gw(1), gw(2));
    a.load_persistent_state().await;
    b.load_persistent_state().await;
    let (on_a, on_b) = (collect_aborts(&a), collect_aborts(&b));
    let node1 = nexus(1);
    let node2 = ItNexus {
        relative_port: 2,
        ..nexus(2)
    };
    ready(&a, &node1).await;
    ready(&b, &node2).await;
    for (lu, n, key) in [(&a, &node1, 0xa1u64), (&b, &node2, 0xb2)] {
        let (cdb, p) = prout(0, 0, 0, key);
        assert_eq!(run(lu, n, &cdb, &p).await.status, ScsiStatus::Good);
    }
    let (cdb, p) = prout(1, 5, 0xb2, 0);
    assert_eq!(
        run(&b, &node2, &cdb, &p).await.status,
        ScsiStatus::Good,
        "reserve"
    );
    assert!(on_a.lock().unwrap().is_empty() && on_b.lock().unwrap().is_empty());

    // PREEMPT (no abort) orders nothing.
    let (cdb, p) = prout(4, 5, 0xa1, 0xb2);
    assert_eq!(run(&a, &node1, &cdb, &p).await.status, ScsiStatus::Good);
    run(&b, &node2, &[0x00], &[]).await; // b loads the change
    assert!(on_a.lock().unwrap().is_empty() && on_b.lock().unwrap().is_empty());

    // node2 registers again; node1 preempts it AND ABORTs, through gateway a: the order for
    // node2's registration is given on a (sparing the issuer) and, once b loads the state,
    // on b, where node2's tasks are.
    let (cdb, p) = prout(0, 0, 0, 0xb3);
    assert_eq!(run(&b, &node2, &cdb, &p).await.status, ScsiStatus::Good);
    let (cdb, p) = prout(5, 5, 0xa1, 0xb3);
    assert_eq!(run(&a, &node1, &cdb, &p).await.status, ScsiStatus::Good);
    let orders = std::mem::take(&mut *on_a.lock().unwrap());
    assert_eq!(orders.len(), 1, "{orders:?}");
    assert!(matches!(&orders[0].scope, AbortScope::Registrant(r) if r.key == 0xb3));
    assert_eq!(orders[0].except.as_ref(), Some(&node1));
    assert!(orders[0].applies_to(&node2) && !orders[0].applies_to(&node1));
    b.poll_shared().await;
    let orders = std::mem::take(&mut *on_b.lock().unwrap());
    assert_eq!(orders.len(), 1, "{orders:?}");
    assert!(orders[0].applies_to(&node2));
    assert_eq!(
        (orders[0].lun, orders[0].target.as_str()),
        (0, "iqn.2026-11.org.rbdgw:t")
    );
    b.poll_shared().await;
    assert!(on_b.lock().unwrap().is_empty(), "an order is given once");

    // CLEAR TASK SET and LOGICAL UNIT RESET through b: every nexus but the issuer, on both.
    b.clear_task_set(&node2).await;
    a.poll_shared().await;
    b.reset(ResetKind::LogicalUnit, Some(&node2)).await;
    a.poll_shared().await;
    let on_b_now = std::mem::take(&mut *on_b.lock().unwrap());
    assert_eq!(on_b_now.len(), 2, "{on_b_now:?}");
    assert!(on_b_now
        .iter()
        .all(|o| o.scope == AbortScope::All && !o.applies_to(&node2)));
    let on_a_now = std::mem::take(&mut *on_a.lock().unwrap());
    assert_eq!(on_a_now.len(), 2, "{on_a_now:?}");
    assert!(on_a_now.iter().all(|o| o.applies_to(&node1)));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A LUN whose image has not opened (missing, or its pool unreachable) is listed and described
/// but answers NOT READY with its port unavailable (SPC-4 §5.16.2.4.5), so an initiator uses
/// another gateway's path meanwhile; the other groups keep their states.
#[tokio::test]
async fn an_unopened_lun_is_described_and_unavailable() {
    use crate::alua::TargetPortGroup;
    let mut c = LuConfig::new(
        3,
        "0123abcd-0000-0000-0000-000000000003",
        "iqn.2026-11.org.rbdgw:t",
    );
    c.local_tpg = 2;
    c.port_groups = (1..=2)
        .map(|tag| TargetPortGroup {
            tag,
            relative_port: tag,
        })
        .collect();
    let lu = LogicalUnit::new(c, Unopened);
    lu.set_owner_tpg(Some(1));
    let n = nexus(1);
    let inq = run(&lu, &n, &[0x12, 0, 0, 0, 96, 0], &[]).await;
    assert_eq!(inq.status, ScsiStatus::Good, "{inq:?}");
    let serial = run(&lu, &n, &[0x12, 1, 0x80, 0, 96, 0], &[]).await;
    assert!(
        serial.data.windows(8).any(|w| w == b"0123abcd"),
        "{serial:?}"
    );
    // The power-on unit attention first, as on any LU; then NOT READY for everything else.
    let first = run(&lu, &n, &[0x00], &[]).await;
    check(&first, SenseKey::UnitAttention, Asc::POWER_ON_RESET);
    for cdb in [
        &[0x00u8][..],
        &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        &[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0],
        &write10(0, 1),
        &[0x5e, 0, 0, 0, 0, 0, 0, 0, 24, 0],
    ] {
        let data = if cdb[0] == 0x2a { vec![0; 512] } else { vec![] };
        let r = run(&lu, &n, cdb, &data).await;
        check(&r, SenseKey::NotReady, Asc::LU_NOT_ACCESSIBLE_UNAVAILABLE);
    }
    assert_eq!(rtpg(&lu, &n).await, vec![(1, 0x0), (2, 0x3)]);
}

/// SPC-4 §5.16.2.4.4: a drained gateway's port is in standby, on every gateway's report; through
/// it, I/O and TEST UNIT READY are answered NOT READY, TARGET PORT IN STANDBY STATE, while the
/// commands that describe the LU still work; the change is announced both ways.
#[tokio::test]
async fn a_drained_port_is_standby_and_serves_no_io() {
    let lu = lu_in_groups("0123abcd-0000-0000-0000-000000000001", 1, 2);
    lu.set_owner_tpg(Some(2));
    let a = nexus(1);
    ready(&lu, &a).await;
    lu.set_standby_tpgs(vec![1]);
    check(
        &run(&lu, &a, &[0x00], &[]).await,
        SenseKey::UnitAttention,
        Asc::ASYMMETRIC_ACCESS_STATE_CHANGED,
    );
    assert_eq!(rtpg(&lu, &a).await, vec![(1, 2), (2, 0)]);
    check(
        &run(&lu, &a, &[0x00], &[]).await,
        SenseKey::NotReady,
        Asc::LU_NOT_ACCESSIBLE_STANDBY,
    );
    check(
        &run(&lu, &a, &[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[]).await,
        SenseKey::NotReady,
        Asc::LU_NOT_ACCESSIBLE_STANDBY,
    );
    let inq = run(&lu, &a, &[0x12, 0, 0, 0, 96, 0], &[]).await;
    assert_eq!(inq.status, ScsiStatus::Good);
    // Back from maintenance.
    lu.set_standby_tpgs(vec![]);
    check(
        &run(&lu, &a, &[0x00], &[]).await,
        SenseKey::UnitAttention,
        Asc::ASYMMETRIC_ACCESS_STATE_CHANGED,
    );
    assert_eq!(run(&lu, &a, &[0x00], &[]).await.status, ScsiStatus::Good);
    assert_eq!(rtpg(&lu, &a).await, vec![(1, 1), (2, 0)]);
}
