//! The rbd engine against a real, throwaway Ceph cluster (one monitor, one memstore OSD on
//! loopback), started and stopped by this test. Image features all on.

#[path = "../../../tests/support/ceph.rs"]
mod ceph;

use backstore::rbd::{RbdConfig, RbdDevice};
use backstore::{BackstoreError, BlockDevice};
use bytes::Bytes;
use ceph::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbd_engine_io_on_a_live_cluster() {
    let cluster = Cluster::start();
    cluster.rbd(&["create", "live", "--size", "64M"]);
    let cfg = RbdConfig {
        conf: cluster.conf(),
        id: None,
        pool: "rbd".into(),
        namespace: None,
        image: "live".into(),
        create_size: None,
    };
    let c2 = cfg.clone();
    let dev = tokio::task::spawn_blocking(move || RbdDevice::open(&c2))
        .await
        .unwrap()
        .expect("open the image");
    assert_eq!(dev.size(), 64 << 20);
    // No write without the exclusive lock.
    assert!(matches!(
        dev.write(0, Bytes::from(vec![1u8; 512]).into(), false)
            .await,
        Err(BackstoreError::NotOwner)
    ));
    assert!(dev.try_acquire_ownership().await.unwrap());
    assert!(dev.holds_ownership());
    // Writes and reads, many at once (aio).
    let mut tasks = Vec::new();
    for i in 0..32u64 {
        let d = dev.clone();
        tasks.push(tokio::spawn(async move {
            d.write(
                i * 65536,
                Bytes::from(vec![i as u8 + 1; 65536]).into(),
                i % 8 == 0,
            )
            .await
            .unwrap();
            let back = d.read(i * 65536, 65536).await.unwrap();
            assert!(back.iter().all(|b| *b == i as u8 + 1));
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    dev.flush().await.unwrap();
    // A write in several parts (rbd_aio_writev), as Data-Out PDUs deliver it.
    let parts: Vec<Bytes> = (0..5u8)
        .map(|i| Bytes::from(vec![0x40 + i; 8192 + 512 * i as usize]))
        .collect();
    let whole = parts.concat();
    dev.write(3 << 20, backstore::DataOutBuffer::from_parts(parts), false)
        .await
        .unwrap();
    assert_eq!(dev.read(3 << 20, whole.len()).await.unwrap(), whole);
    // Allocation from the object map: object 0 (0..4 MiB) holds data, the rest was never
    // written.
    let e = dev.allocation(0, 64 << 20).await.unwrap();
    assert_eq!((e.offset, e.len, e.mapped), (0, 4 << 20, true));
    let e = dev.allocation(1 << 20, 10 << 20).await.unwrap();
    assert_eq!((e.offset, e.len, e.mapped), (1 << 20, 3 << 20, true));
    let e = dev.allocation(5 << 20, 59 << 20).await.unwrap();
    assert_eq!((e.offset, e.len, e.mapped), (5 << 20, 59 << 20, false));
    // Compare and write: the offset of the first difference, then success.
    let mut cmp = vec![1u8; 512];
    cmp[77] = 9;
    let r = dev
        .compare_and_write(0, Bytes::from(cmp), Bytes::from(vec![5u8; 512]))
        .await
        .unwrap();
    assert_eq!(r, Some(77));
    let r = dev
        .compare_and_write(0, Bytes::from(vec![1u8; 512]), Bytes::from(vec![5u8; 512]))
        .await
        .unwrap();
    assert_eq!(r, None);
    assert_eq!(&dev.read(0, 512).await.unwrap()[..], &[5u8; 512][..]);
    // Discard and write zeroes read back as zeroes.
    dev.discard(65536, 65536).await.unwrap();
    assert!(dev
        .read(65536, 65536)
        .await
        .unwrap()
        .iter()
        .all(|b| *b == 0));
    dev.write_zeroes(131072, 4096).await.unwrap();
    assert!(dev
        .read(131072, 4096)
        .await
        .unwrap()
        .iter()
        .all(|b| *b == 0));
    assert!(dev.read((64 << 20) - 1, 2).await.is_err(), "beyond the end");
    // The exclusive lock: one holder at a time; released, the other gets it.
    let c3 = cfg.clone();
    let other = tokio::task::spawn_blocking(move || RbdDevice::open(&c3))
        .await
        .unwrap()
        .unwrap();
    assert!(
        !other.try_acquire_ownership().await.unwrap(),
        "the lock is held"
    );
    dev.release_ownership().await.unwrap();
    assert!(!dev.holds_ownership());
    assert!(other.try_acquire_ownership().await.unwrap());

    // Fencing: `dev` breaks the lock of `other` (as if it stopped answering); Ceph then
    // refuses `other`'s writes, and `other` reconnects as a new client without the lock.
    other
        .write(4096, Bytes::from(vec![7u8; 4096]).into(), false)
        .await
        .unwrap();
    assert!(dev.break_ownership().await.unwrap(), "a holder to fence");
    assert!(dev.try_acquire_ownership().await.unwrap());
    let late = other
        .write(4096, Bytes::from(vec![0xeeu8; 4096]).into(), false)
        .await;
    assert!(
        matches!(late, Err(BackstoreError::NotOwner)),
        "the fenced client's late write is refused: {late:?}"
    );
    assert!(!other.holds_ownership());
    assert!(
        dev.read(4096, 4096).await.unwrap().iter().all(|b| *b == 7),
        "the late write did not land"
    );
    let t0 = std::time::Instant::now();
    while !other.available() {
        assert!(t0.elapsed().as_secs() < 30, "the fenced client reconnects");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(other
        .read(4096, 4096)
        .await
        .unwrap()
        .iter()
        .all(|b| *b == 7));
    assert!(!other.try_acquire_ownership().await.unwrap());

    // Online resize reaches both openers.
    cluster.rbd(&["resize", "--size", "96M", "live"]);
    let t0 = std::time::Instant::now();
    while dev.size() != 96 << 20 || other.size() != 96 << 20 {
        assert!(t0.elapsed().as_secs() < 20, "the new size is seen");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    dev.write((96 << 20) - 512, Bytes::from(vec![3u8; 512]).into(), false)
        .await
        .unwrap();
    dev.release_ownership().await.unwrap();
    assert!(other.try_acquire_ownership().await.unwrap());

    // Auto-create: a missing image with a size is created, with exclusive-lock on.
    let created = RbdConfig {
        image: "made".into(),
        create_size: Some(8 << 20),
        ..cfg.clone()
    };
    let made = tokio::task::spawn_blocking(move || RbdDevice::open(&created))
        .await
        .unwrap()
        .expect("created");
    assert_eq!(made.size(), 8 << 20);
    assert!(made.try_acquire_ownership().await.unwrap());
    drop(made);
    // Shared metadata: compare-and-set on the OSD, seen at once by the other opener.
    assert_eq!(dev.metadata_get("pr_state").await.unwrap(), None);
    let g = other.metadata_generation();
    assert!(dev
        .metadata_compare_and_set("pr_state", None, b"v1".to_vec())
        .await
        .unwrap());
    assert!(
        other.metadata_generation() > g,
        "the notify reached the other gateway before the update returned"
    );
    assert_eq!(
        other.metadata_get("pr_state").await.unwrap(),
        Some(b"v1".to_vec())
    );
    assert!(
        !other
            .metadata_compare_and_set("pr_state", None, b"v2".to_vec())
            .await
            .unwrap(),
        "stale expectation"
    );
    assert!(other
        .metadata_compare_and_set("pr_state", Some(b"v1".to_vec()), b"v2".to_vec())
        .await
        .unwrap());
    assert_eq!(
        dev.metadata_get("pr_state").await.unwrap(),
        Some(b"v2".to_vec())
    );
    dev.metadata_set("alua_owner", b"2".to_vec()).await.unwrap();
    assert_eq!(
        other.metadata_get("alua_owner").await.unwrap(),
        Some(b"2".to_vec())
    );
    drop(other);
    drop(dev);
    drop(cluster);
}
