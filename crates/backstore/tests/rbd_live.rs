//! The rbd engine against a real, throwaway Ceph cluster (one monitor, one memstore OSD on
//! loopback), started and stopped by this test. Image features all on.

#[path = "../../../tests/support/ceph.rs"]
mod ceph;

use backstore::rbd::{RbdConfig, RbdDevice};
use backstore::{BackstoreError, BlockDevice, Publish};
use bytes::Bytes;
use ceph::Cluster;

/// Image `image` of pool `rbd` on `cluster`; `own_client`: on a RADOS client of its own
/// (a device that plays a gateway of its own), else on the shared one.
fn image_config(cluster: &Cluster, image: &str, own_client: bool) -> RbdConfig {
    RbdConfig {
        conf: cluster.conf(),
        id: None,
        pool: "rbd".into(),
        namespace: None,
        image: image.into(),
        create_size: None,
        own_client,
        gateway: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbd_engine_io_on_a_live_cluster() {
    let cluster = Cluster::start();
    cluster.rbd(&["create", "live", "--size", "64M"]);
    // Each device plays a gateway of its own.
    let cfg = image_config(&cluster, "live", true);
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
        // (Told by librbd's header update watch: the size is read again only then, or 30 s later.)
        assert!(t0.elapsed().as_secs() < 10, "the new size is seen");
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
        .metadata_compare_and_set("pr_state", None, b"v1".to_vec(), Publish::SeenByAll)
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
            .metadata_compare_and_set("pr_state", None, b"v2".to_vec(), Publish::SeenByAll)
            .await
            .unwrap(),
        "stale expectation"
    );
    assert!(other
        .metadata_compare_and_set(
            "pr_state",
            Some(b"v1".to_vec()),
            b"v2".to_vec(),
            Publish::SeenByAll
        )
        .await
        .unwrap());
    assert_eq!(
        dev.metadata_get("pr_state").await.unwrap(),
        Some(b"v2".to_vec())
    );
    dev.metadata_set("alua_owner", b"2".to_vec(), Publish::Stored)
        .await
        .unwrap();
    assert_eq!(
        other.metadata_get("alua_owner").await.unwrap(),
        Some(b"2".to_vec())
    );
    // A hung gateway (stopped, cut off) keeps its watch until the cluster times it out, and
    // acknowledges nothing meanwhile. A reservation change still waits (boundedly) for it; an
    // ownership record does not: a takeover would otherwise wait out the gateway it replaces.
    let watchers = || {
        cluster
            .try_tool("rados", &["-p", "rbd", "listwatchers", "rbdgw.presence"])
            .unwrap_or_default()
            .lines()
            .count()
    };
    let before = watchers();
    let mut hung = std::process::Command::new("rados")
        .args([
            "-c",
            &cluster.conf(),
            "-p",
            "rbd",
            "watch",
            "rbdgw.presence",
        ])
        // (It watches until its input ends.)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("rados watch");
    let t0 = std::time::Instant::now();
    while watchers() <= before {
        assert!(
            t0.elapsed().as_secs() < 30,
            "the hung watcher registers: {before} before, {:?}",
            hung.try_wait()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // Hung, not dead (SIGSTOP): its connection stays up and the cluster keeps its watch.
    let stopped = std::process::Command::new("kill")
        .args(["-STOP", &hung.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    let g = other.metadata_generation();
    let t0 = std::time::Instant::now();
    dev.metadata_set("alua_owner", b"3".to_vec(), Publish::Stored)
        .await
        .unwrap();
    let stored = t0.elapsed();
    while other.metadata_generation() == g {
        assert!(t0.elapsed().as_secs() < 5, "the live gateway hears of it");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let heard = t0.elapsed();
    let t0 = std::time::Instant::now();
    assert!(dev
        .metadata_compare_and_set(
            "pr_state",
            Some(b"v2".to_vec()),
            b"v3".to_vec(),
            Publish::SeenByAll
        )
        .await
        .unwrap());
    let seen = t0.elapsed();
    hung.kill().unwrap();
    hung.wait().unwrap();
    println!("with a hung watcher: stored {stored:?} (heard {heard:?}), seen by all {seen:?}");
    assert!(
        stored.as_millis() < 1000 && heard.as_millis() < 1000,
        "an ownership record waits for no hung gateway: {stored:?}, heard {heard:?}"
    );
    assert!(
        seen.as_millis() >= 1500,
        "a reservation change waits for every watcher, the hung one boundedly: {seen:?}"
    );
    drop(other);
    drop(dev);
    closed_before_the_cluster_goes();
    drop(cluster);
}

/// How long the fenced client of [`fenced_live_client_runs_on`] keeps running after its
/// retired connection closed (longer by hand: `RBDGW_FENCE_SOAK_SECS=300`).
fn soak() -> std::time::Duration {
    std::time::Duration::from_secs(
        std::env::var("RBDGW_FENCE_SOAK_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(15),
    )
}

/// A gateway fenced while alive and idle learns it without any I/O (its watch, its pings),
/// reconnects, and runs on past the close of its retired connection — twice — with glibc's
/// heap checks on in a process of its own: the retired connection's watch was once
/// unwatched twice (renewed on the blocklisted client, then closed), a use after free that
/// aborted fenced gateways 60 s after they reconnected.
#[test]
fn fenced_live_client_runs_on() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "fenced_client_child", "--ignored", "--nocapture"])
        .env("RBDGW_FENCED_CHILD", "1")
        .env(
            "GLIBC_TUNABLES",
            "glibc.malloc.check=3:glibc.malloc.perturb=165",
        )
        .env("LD_PRELOAD", "libc_malloc_debug.so.0")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(
        out.status.success() && text.contains("1 passed"),
        "the fenced client's process: {:?}\n{text}",
        out.status
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by fenced_live_client_runs_on in a process of its own"]
async fn fenced_client_child() {
    use std::time::{Duration, Instant};
    if std::env::var("RBDGW_FENCED_CHILD").is_err() {
        return;
    }
    let cluster = Cluster::start();
    cluster.rbd(&["create", "fence", "--size", "16M"]);
    // Each device plays a gateway of its own.
    let cfg = image_config(&cluster, "fence", true);
    let open = |cfg: &RbdConfig| {
        let c = cfg.clone();
        tokio::task::spawn_blocking(move || RbdDevice::open(&c))
    };
    let a = open(&cfg).await.unwrap().unwrap();
    let b = open(&cfg).await.unwrap().unwrap();
    a.heartbeat(1, backstore::Standing::Serving).await.unwrap();
    b.heartbeat(2, backstore::Standing::Serving).await.unwrap();
    let tags =
        |m: Vec<backstore::Member>| m.iter().map(|m| (m.tag, m.holds_lock)).collect::<Vec<_>>();
    assert!(a.try_acquire_ownership().await.unwrap());
    assert_eq!(
        tags(b.members().await.unwrap()),
        vec![(1, true), (2, false)]
    );
    for round in 0..2 {
        a.write(0, Bytes::from(vec![round as u8 + 1; 4096]).into(), false)
            .await
            .unwrap();
        // b fences a, which does nothing meanwhile: no I/O tells it. In the first round a
        // pings (and learns it from the ping's answer), in the second it does not even that:
        // its watch breaks, is renewed on the blocklisted client, fails, and that says so.
        assert!(b.break_ownership().await.unwrap(), "round {round}");
        assert!(b.try_acquire_ownership().await.unwrap());
        let t0 = Instant::now();
        while a.holds_ownership() || !a.available() || t0.elapsed() < Duration::from_secs(1) {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "round {round}: the idle fenced client noticed and reconnected"
            );
            a.heartbeat(1, backstore::Standing::Serving).await.unwrap();
            b.heartbeat(2, backstore::Standing::Serving).await.unwrap();
            if round == 0 {
                let _ = a.members().await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        println!("round {round}: fenced client back after {:?}", t0.elapsed());
        // Both answer pings; b holds the lock. Then run on past the retired connection's
        // close, pinging and reading all along.
        let t0 = Instant::now();
        let run_for = Duration::from_secs(12) + if round == 1 { soak() } else { Duration::ZERO };
        while t0.elapsed() < run_for {
            a.heartbeat(1, backstore::Standing::Serving).await.unwrap();
            b.heartbeat(2, backstore::Standing::Serving).await.unwrap();
            let m = a.members().await.unwrap();
            assert_eq!(tags(m), vec![(1, false), (2, true)], "round {round}");
            assert_eq!(a.read(0, 4096).await.unwrap()[0], round as u8 + 1);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // Hand the lock back for the next round.
        b.release_ownership().await.unwrap();
        assert!(a.try_acquire_ownership().await.unwrap());
    }
    drop(a);
    drop(b);
    closed_before_the_cluster_goes();
    drop(cluster);
}

/// Images close on threads of their own (a close waits for the cluster); as the gateway does
/// before it exits, a test waits for them while the cluster is still there. Left running, a
/// close met the cluster gone and then the process's exit tearing down librados' globals
/// under it: `terminate called after throwing an instance of 'boost::bad_get'` (SIGABRT) at
/// the exit of a test that had passed.
fn closed_before_the_cluster_goes() {
    let open = backstore::rbd::wait_for_closes(std::time::Duration::from_secs(60));
    assert_eq!(open, 0, "images still closing after 60 s");
}

/// The address of the client watching `oid` (`rados listwatchers`: `watcher=ADDR client.N
/// cookie=C`), if exactly one does.
fn watcher(cluster: &Cluster, oid: &str) -> Option<String> {
    let out = cluster.try_tool("rados", &["-p", "rbd", "listwatchers", oid])?;
    let addrs: Vec<String> = out
        .lines()
        .filter_map(|l| l.strip_prefix("watcher="))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    (addrs.len() == 1).then(|| addrs[0].clone())
}

/// The gateway's own RADOS objects (the shared config and its watch, the status documents)
/// live on the client its images use, not on one of their own; when Ceph fences that client
/// they follow the images to its replacement: the next call is tried again there, and the
/// broken config watch is renewed there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_share_the_images_client_and_follow_it_when_fenced() {
    use backstore::rbd::RadosPool;
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    let cluster = Cluster::start();
    cluster.rbd(&["create", "shared", "--size", "16M"]);
    let cfg = image_config(&cluster, "shared", false);
    let conf = cluster.conf();
    let (dev, pool) = tokio::task::spawn_blocking(move || {
        let dev = RbdDevice::open(&cfg).expect("open the image");
        let pool = RadosPool::connect(&conf, None, "rbd", None).expect("the pool");
        (dev, Arc::new(pool))
    })
    .await
    .unwrap();
    let p = pool.clone();
    let watch = tokio::task::spawn_blocking(move || {
        p.write_full("gw.cfg", b"v1").unwrap();
        p.watch("gw.cfg").unwrap()
    })
    .await
    .unwrap();
    let images = watcher(&cluster, "rbdgw.presence").expect("the images' client watches");
    assert_eq!(
        watcher(&cluster, "gw.cfg").as_deref(),
        Some(images.as_str()),
        "the config is watched on the images' client"
    );
    assert_eq!(backstore::rbd::open_connections(), 1);

    // Another gateway fences this one.
    cluster.tool("ceph", &["osd", "blocklist", "add", &images]);
    let p = pool.clone();
    let read = tokio::task::spawn_blocking(move || p.read("gw.cfg"))
        .await
        .unwrap();
    assert_eq!(
        read.expect("read again on the new client").as_deref(),
        Some(&b"v1"[..])
    );
    let t0 = Instant::now();
    while !watch.is_broken() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the fenced watch breaks"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seen = watch.generation();
    let watch = Arc::new(watch);
    let w = watch.clone();
    tokio::task::spawn_blocking(move || w.renew())
        .await
        .unwrap()
        .expect("watching again on the new client");
    assert!(!watch.is_broken());
    assert_ne!(
        watch.generation(),
        seen,
        "a reader reads again after the move"
    );
    let seen = watch.generation();
    let p = pool.clone();
    tokio::task::spawn_blocking(move || p.write_full("gw.cfg", b"v2").unwrap())
        .await
        .unwrap();
    let t0 = Instant::now();
    while watch.generation() == seen {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "a change is heard on the new watch"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The image reconnects too, on the same replacement client (the fenced client's
    // watches time out meanwhile).
    let t0 = Instant::now();
    loop {
        let on_cfg = watcher(&cluster, "gw.cfg");
        let on_presence = watcher(&cluster, "rbdgw.presence");
        if dev.available()
            && on_cfg.is_some()
            && on_cfg != Some(images.clone())
            && on_cfg == on_presence
        {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the image reconnects on the same replacement client: config watched by {on_cfg:?}, \
             presence by {on_presence:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(backstore::rbd::open_connections(), 1);
    drop(watch);
    drop(pool);
    drop(dev);
    closed_before_the_cluster_goes();
    drop(cluster);
}
