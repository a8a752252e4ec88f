//! The loopback TCP ceiling of this machine, for `bench/run`: one connection on 127.0.0.1,
//! one thread writing 1 MiB buffers, one reading them (what a 1 MiB iSCSI transfer needs at
//! least). Prints the median MB/s of `RUNS` runs of `GIB` GiB each.
//! Usage: tcp_pump [GIB] [RUNS]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Instant;

fn once(bytes: u64) -> f64 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
    let addr = listener.local_addr().expect("local address");
    let reader = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0u64;
        loop {
            match s.read(&mut buf) {
                Ok(0) => return got,
                Ok(n) => got += n as u64,
                Err(e) => panic!("read: {e}"),
            }
        }
    });
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).ok();
    let buf = vec![0x5au8; 1 << 20];
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
    let mut v: Vec<f64> = (0..runs).map(|_| once(gib << 30)).collect();
    v.sort_by(f64::total_cmp);
    println!("{:.0}", v[v.len() / 2]);
}
