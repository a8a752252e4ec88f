//! The loopback ceilings of this machine, for `bench/run`: one connection on 127.0.0.1, one
//! thread sending 1 MiB at a time, one receiving (what a 1 MiB iSCSI transfer needs at
//! least). Prints the median MB/s of `RUNS` runs of `GIB` GiB each.
//!
//! Usage: tcp_pump [GIB] [RUNS] [store FILE]
//!   user memory to user memory: a copy on each side; with `store FILE` the receiver also
//!   writes what it gets into FILE (at rolling offsets), the least a target that keeps writes
//!   in the page cache does.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::time::Instant;

const CHUNK: usize = 1 << 20;

fn once(bytes: u64, store: Option<&File>) -> f64 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
    let addr = listener.local_addr().expect("local address");
    let store = store.map(|f| f.try_clone().expect("clone the file"));
    let reader = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut buf = vec![0u8; CHUNK];
        let mut got = 0u64;
        let size = store
            .as_ref()
            .map_or(1, |f| f.metadata().expect("stat").len().max(1));
        loop {
            match s.read(&mut buf) {
                Ok(0) => return got,
                Ok(n) => {
                    if let Some(f) = &store {
                        f.write_all_at(&buf[..n], got % size)
                            .expect("write the file");
                    }
                    got += n as u64;
                }
                Err(e) => panic!("read: {e}"),
            }
        }
    });
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).ok();
    let buf = vec![0x5au8; CHUNK];
    let t = Instant::now();
    let mut sent = 0u64;
    while sent < bytes {
        s.write_all(&buf).expect("write");
        sent += buf.len() as u64;
    }
    drop(s);
    let got = reader.join().expect("reader");
    assert_eq!(got, sent);
    sent as f64 / t.elapsed().as_secs_f64() / 1e6
}

fn main() {
    let mut args = std::env::args().skip(1);
    let gib: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(4);
    let runs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let store = match args.next().as_deref() {
        None => None,
        Some("store") => {
            let p = args.next().expect("store needs a FILE");
            Some(
                File::options()
                    .write(true)
                    .open(&p)
                    .unwrap_or_else(|e| panic!("open {p}: {e}")),
            )
        }
        Some(m) => panic!("unknown mode {m}: store FILE"),
    };
    let mut v: Vec<f64> = (0..runs).map(|_| once(gib << 30, store.as_ref())).collect();
    v.sort_by(f64::total_cmp);
    println!("{:.0}", v[v.len() / 2]);
}
