//! Who is alive, asked once per pool instead of once per image.
//!
//! Every image's ownership loop asks each second which gateways serve it and which of them
//! holds its lock. Asked with a notify on each image's own state object, a thousand LUNs made
//! a thousand notifies a second, each four messages through the OSD and a watch callback in
//! every gateway: most of the gateway's idle CPU. Instead every connection watches one
//! presence object per pool, [`PRESENCE_OBJECT`], and answers a ping on it for all its
//! images of that pool at once, one line per image (`<image key> <tag> <holds the lock>`).
//! A ping is one *round*, shared by every image that asks within [`FRESH`] of its start:
//! the first to find no fresh round leads one, the others wait for its result.
//!
//! The same watch hears the images' changes: an image's state object is not watched, its
//! changes are announced on the presence object with the image's key (`state.rs`), so a
//! gateway has one watch per pool, not one per image (librbd's header watch aside).
//!
//! What an image learns is what its own ping told it before: the gateways that answered
//! for it (a gateway whose control loop for that LU stalled leaves its line out, see
//! [`Presence::beat`]), and an error when this gateway's own line did not come back (cut
//! off from the OSD) or Ceph refused the client (blocklisted).

use std::collections::HashMap;
use std::ffi::CString;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use super::client::Connection;
use super::state::{parse_answer, Answers, Listeners, Presence, SharedState};
use super::{api, ceph_err, ffi};
use crate::{BackstoreError, Member, Result};

/// The object of a pool that every gateway's connection watches to answer pings.
const PRESENCE_OBJECT: &str = "rbdgw.presence";
/// A round that started this recently answers a new question too: rounds run at most a few
/// times a second however many images ask.
const FRESH: Duration = Duration::from_millis(300);
/// How long an image waits for a round led by another (a ping waits at most a second).
const ROUND_WAIT: Duration = Duration::from_secs(3);

/// The images of this connection in a pool, by key, with what each answers.
type Images = Arc<Mutex<HashMap<String, Weak<Presence>>>>;

/// One ping on a pool's presence object and what came back.
struct Round {
    started: Instant,
    /// Per image key, the gateways that answered for it; or the notify's error.
    answers: std::result::Result<HashMap<String, Vec<Member>>, i32>,
}

/// A connection's presence in one pool (and namespace).
pub(super) struct PoolLiveness {
    /// The watch on the presence object; dropped before the ioctx (see Drop).
    state: Option<SharedState>,
    /// This client's address as recorded for the gateway's next process (predecessor.rs).
    record: Option<super::predecessor::Record>,
    ioctx: ffi::IoCtx,
    images: Images,
    /// The images whose changes the watch hears.
    listeners: Listeners,
    rounds: tokio::sync::watch::Sender<Option<Arc<Round>>>,
    leading: AtomicBool,
    /// Closed after the watch and the ioctx.
    _conn: Arc<Connection>,
}

// SAFETY: the ioctx is thread-safe; the rest is synchronized.
unsafe impl Send for PoolLiveness {}
// SAFETY: as above.
unsafe impl Sync for PoolLiveness {}

impl Drop for PoolLiveness {
    fn drop(&mut self) {
        // The watch goes before the ioctx it lives on.
        self.state = None;
        if let Some(r) = self.record.take() {
            // A clean stop: the next process has no predecessor to fence.
            let oid = CString::new(PRESENCE_OBJECT).expect("no NUL");
            super::predecessor::forget(self.ioctx, &oid, &r);
        }
        if let Ok(a) = api() {
            // SAFETY: the ioctx this value created, destroyed once.
            unsafe { (a.rados_ioctx_destroy)(self.ioctx) };
        }
    }
}

/// The lines a connection answers a ping with: its images whose control loop is alive.
fn answer(images: &Images) -> Option<String> {
    let mut out = String::new();
    let mut m = images.lock().unwrap_or_else(|e| e.into_inner());
    m.retain(|_, p| p.strong_count() > 0);
    for (key, p) in m.iter() {
        if let Some(a) = p.upgrade().and_then(|p| p.answer()) {
            out.push_str(key);
            out.push(' ');
            out.push_str(&a);
            out.push('\n');
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Reads every connection's answer into the gateways alive per image.
fn collect(payloads: &[Vec<u8>]) -> HashMap<String, Vec<Member>> {
    let mut by_image: HashMap<String, Vec<Member>> = HashMap::new();
    for p in payloads {
        let Ok(text) = std::str::from_utf8(p) else {
            continue;
        };
        for line in text.lines() {
            let Some((key, rest)) = line.split_once(' ') else {
                continue;
            };
            if let Some(m) = parse_answer(rest.as_bytes()) {
                by_image.entry(key.to_string()).or_default().push(m);
            }
        }
    }
    for v in by_image.values_mut() {
        v.sort_by_key(|m| m.tag);
        v.dedup_by_key(|m| m.tag);
    }
    by_image
}

type Key = (usize, String, Option<String>);

fn registry() -> &'static Mutex<HashMap<Key, Weak<PoolLiveness>>> {
    static R: OnceLock<Mutex<HashMap<Key, Weak<PoolLiveness>>>> = OnceLock::new();
    R.get_or_init(Default::default)
}

impl PoolLiveness {
    /// The presence of `conn` in `pool`, watching its presence object if nothing on this
    /// connection does yet (blocking); recorded as gateway `gateway`'s client there.
    pub fn of(
        conn: &Arc<Connection>,
        pool: &str,
        namespace: Option<&str>,
        gateway: Option<&str>,
    ) -> Result<Arc<PoolLiveness>> {
        let key = (
            Arc::as_ptr(conn) as usize,
            pool.to_string(),
            namespace.map(str::to_string),
        );
        // (A connection's address is not reused while a PoolLiveness holds it.)
        let mut r = registry().lock().unwrap_or_else(|e| e.into_inner());
        r.retain(|_, w| w.strong_count() > 0);
        if let Some(l) = r.get(&key).and_then(Weak::upgrade) {
            return Ok(l);
        }
        let ioctx = conn.ioctx(pool, namespace)?;
        let images: Images = Default::default();
        let for_watch = images.clone();
        let answers: Answers = Arc::new(move || answer(&for_watch));
        let oid = CString::new(PRESENCE_OBJECT).expect("no NUL");
        let listeners: Listeners = Default::default();
        let state = match SharedState::open_object(
            ioctx,
            oid,
            true,
            Some(answers),
            Some(listeners.clone()),
        ) {
            Ok(s) => s,
            Err(e) => {
                if let Ok(a) = api() {
                    // SAFETY: the ioctx created above, not used by anything else.
                    unsafe { (a.rados_ioctx_destroy)(ioctx) };
                }
                return Err(e);
            }
        };
        let oid = CString::new(PRESENCE_OBJECT).expect("no NUL");
        let record = gateway.and_then(|name| {
            super::predecessor::fence_and_record(conn, ioctx, &oid, (pool, namespace), name)
        });
        let l = Arc::new(PoolLiveness {
            state: Some(state),
            record,
            ioctx,
            images,
            listeners,
            rounds: tokio::sync::watch::channel(None).0,
            leading: AtomicBool::new(false),
            _conn: conn.clone(),
        });
        r.insert(key, Arc::downgrade(&l));
        Ok(l)
    }

    /// Opens the state object of `image` (blocking), its changes announced on and heard
    /// through this pool's presence object.
    pub fn open_state(&self, ioctx: ffi::IoCtx, image: ffi::Image) -> Result<SharedState> {
        let presence = CString::new(PRESENCE_OBJECT).expect("no NUL");
        SharedState::open(ioctx, image, &presence, &self.listeners)
    }

    /// Answers pings for the image `key` with `presence` from now on.
    pub fn join(&self, key: &str, presence: &Arc<Presence>) {
        self.images
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_string(), Arc::downgrade(presence));
    }

    /// Stops answering for `key` (its handle on this connection closes).
    pub fn leave(&self, key: &str) {
        self.images
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    /// Ceph refused this connection as blocklisted (seen by the presence watch or a ping).
    pub fn blocklisted(&self) -> bool {
        self.state.as_ref().is_some_and(SharedState::blocklisted)
    }

    /// Whether the watch broke, and renewing it (blocking) when it did.
    pub fn renew_watch(&self) -> Result<()> {
        match &self.state {
            Some(s) if s.watch_broken() => s.renew_watch(),
            _ => Ok(()),
        }
    }

    /// The gateways alive on image `key`, as a fresh round tells; an error when this
    /// gateway (TPG `mine`) cannot tell.
    pub async fn members(&self, key: &str, mine: u16) -> Result<Vec<Member>> {
        let asked = Instant::now();
        let mut rx = self.rounds.subscribe();
        let round = loop {
            let current = rx.borrow_and_update().clone();
            if let Some(r) = current.filter(|r| asked.saturating_duration_since(r.started) < FRESH)
            {
                break r;
            }
            if !self.leading.swap(true, Ordering::AcqRel) {
                let _lead = Leading(&self.leading);
                let started = Instant::now();
                // A cluster out of reach may never complete the notify: the round ends by
                // ROUND_WAIT regardless (the operation finishes on its own, or never).
                let answers = match &self.state {
                    Some(s) => match tokio::time::timeout(ROUND_WAIT, s.ping()).await {
                        Ok(r) => r.map(|p| collect(&p)),
                        Err(_) => Err(-libc::ETIMEDOUT),
                    },
                    None => Err(-libc::ENOTCONN),
                };
                let r = Arc::new(Round { started, answers });
                self.rounds.send_replace(Some(r.clone()));
                break r;
            }
            match tokio::time::timeout(ROUND_WAIT, rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => {
                    return Err(BackstoreError::Other(
                        "no ping round finished in time".into(),
                    ))
                }
            }
        };
        let members = match &round.answers {
            Ok(m) => m.get(key).cloned().unwrap_or_default(),
            Err(rc) => return Err(ceph_err("pinging the gateways", i64::from(*rc))),
        };
        if mine == 0 || !members.iter().any(|m| m.tag == mine) {
            return Err(BackstoreError::Other(
                "this gateway's own ping answer did not come back".into(),
            ));
        }
        Ok(members)
    }
}

/// Lets the next image lead a round when this one is done (or its future dropped).
struct Leading<'a>(&'a AtomicBool);

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_name_each_image_and_are_read_back_per_image() {
        let images: Images = Default::default();
        assert_eq!(answer(&images), None, "no image: no answer");
        let a = Arc::new(Presence::default());
        let b = Arc::new(Presence::default());
        images
            .lock()
            .unwrap()
            .insert("rbdgw.a1".into(), Arc::downgrade(&a));
        images
            .lock()
            .unwrap()
            .insert("rbdgw.b2".into(), Arc::downgrade(&b));
        assert_eq!(answer(&images), None, "not joined yet: no answer");
        a.beat(2, crate::Standing::Serving);
        b.beat(2, crate::Standing::Serving);
        b.lock_held.store(true, Ordering::Release);
        let mine = answer(&images).unwrap();
        let other = "rbdgw.a1 1 1\nrbdgw.a1 1 1\nbroken line\nrbdgw.c3 x 1\n".to_string();
        let m = collect(&[mine.into_bytes(), other.into_bytes(), vec![0xff, 0xfe]]);
        let tags = |k: &str| -> Vec<(u16, bool)> {
            m.get(k)
                .map(|v| v.iter().map(|m| (m.tag, m.holds_lock)).collect())
                .unwrap_or_default()
        };
        assert_eq!(tags("rbdgw.a1"), vec![(1, true), (2, false)]);
        assert_eq!(tags("rbdgw.b2"), vec![(2, true)]);
        assert!(tags("rbdgw.c3").is_empty());
        drop(b);
        assert_eq!(
            answer(&images).unwrap(),
            "rbdgw.a1 2 0\n",
            "a closed image leaves"
        );
    }
}
