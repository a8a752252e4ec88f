//! Admission of connections and sessions: the bounds a client cannot talk its way past.
//!
//! Every connection first takes a *login slot*, bounded per source address and in total,
//! and held at most for the login timeout. When a bound is reached, the oldest login that
//! has had more than [`Limits::login_grace`] (a second by default; a real login takes milliseconds) is closed to make
//! room: a flood of connections that never log in cannot keep a real initiator out for
//! longer than that, unless it opens more than the bound in every such interval. A login that completes trades it for a session
//! slot: discovery sessions are bounded per source and in total, and a new one evicts the
//! oldest when full (a discovery session is cheap to redo, an idle one must not keep a host
//! from discovering); normal sessions are bounded per initiator name and in total, and a
//! login beyond them is refused with "out of resources" (RFC 7143 §11.13.5, 0x0302).
//! Failed logins from one source are answered more and more slowly, without slowing anyone
//! else. Refusals are counted, and logged at most once per source and reason per interval.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tracing::warn;

/// The bounds; `rbdgw serve` flags set them.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Open connections of every kind: what keeps descriptors within the process limit.
    pub connections: usize,
    /// Connections still logging in, in total and per source address.
    pub logins: usize,
    pub logins_per_source: usize,
    /// Discovery sessions, in total and per source address.
    pub discovery_sessions: usize,
    pub discovery_per_source: usize,
    /// Normal sessions, in total and per initiator name.
    pub sessions: usize,
    pub sessions_per_initiator: usize,
    /// A login older than this may be closed to make room for a new connection.
    pub login_grace: Duration,
    /// Bytes that the commands of all sessions together may hold (data-out collected, data
    /// read, responses queued); a command beyond it is answered TASK SET FULL.
    pub command_memory: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connections: 2048,
            logins: 256,
            logins_per_source: 16,
            discovery_sessions: 128,
            discovery_per_source: 8,
            sessions: 1024,
            sessions_per_initiator: 64,
            login_grace: Duration::from_secs(1),
            command_memory: 1 << 30,
        }
    }
}

/// Why a connection or login was refused; each is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Refusal {
    Connections,
    Logins,
    LoginsPerSource,
    Sessions,
    SessionsPerInitiator,
    /// A discovery session closed to make room for a newer one.
    DiscoveryEvicted,
    /// Commands answered TASK SET FULL: immediate ones beyond the window's bound, or any
    /// beyond the gateway's command memory.
    ImmediateCommands,
    CommandMemory,
}

impl Refusal {
    pub const ALL: [Refusal; 8] = [
        Refusal::Connections,
        Refusal::Logins,
        Refusal::LoginsPerSource,
        Refusal::Sessions,
        Refusal::SessionsPerInitiator,
        Refusal::DiscoveryEvicted,
        Refusal::ImmediateCommands,
        Refusal::CommandMemory,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Connections => "connections",
            Refusal::Logins => "logins",
            Refusal::LoginsPerSource => "logins_per_source",
            Refusal::Sessions => "sessions",
            Refusal::SessionsPerInitiator => "sessions_per_initiator",
            Refusal::DiscoveryEvicted => "discovery_evicted",
            Refusal::ImmediateCommands => "immediate_commands",
            Refusal::CommandMemory => "command_memory",
        }
    }
}

/// A refusal is logged once per source and reason within this interval.
const LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Failed logins from a source are remembered this long.
const FAILURE_MEMORY: Duration = Duration::from_secs(60);
/// Failures a source may have before its answers are delayed.
const FREE_FAILURES: u32 = 3;
/// The longest delay of a failed login's answer.
const MAX_FAILURE_DELAY: Duration = Duration::from_secs(4);
/// Entries kept in the per-source tables at most; beyond it old entries are dropped first.
const MAX_TRACKED_SOURCES: usize = 4096;

struct PendingLogin {
    source: IpAddr,
    since: Instant,
    close: watch::Sender<bool>,
}

#[derive(Default)]
struct State {
    connections: usize,
    /// Connections logging in, oldest first.
    logins: BTreeMap<u64, PendingLogin>,
    logins_by_source: HashMap<IpAddr, usize>,
    next_id: u64,
    sessions: usize,
    sessions_by_initiator: HashMap<String, usize>,
    /// Live discovery sessions, oldest first: (source, what tells it to close).
    discovery: BTreeMap<u64, (IpAddr, watch::Sender<bool>)>,
    failures: HashMap<IpAddr, (u32, Instant)>,
    logged: HashMap<(IpAddr, Refusal), Instant>,
}

/// Command memory is counted in these units (a semaphore's permits).
const MEMORY_UNIT: u64 = 4096;

/// The gateway's admission bookkeeping, shared by every accept loop and connection.
pub struct Admission {
    limits: Limits,
    state: Mutex<State>,
    refused: [AtomicU64; Refusal::ALL.len()],
    memory: Arc<Semaphore>,
}

/// Command memory a command holds until its response is encoded.
pub type MemoryCharge = OwnedSemaphorePermit;

impl Default for Admission {
    fn default() -> Self {
        Admission::new(Limits::default())
    }
}

impl Admission {
    pub fn new(limits: Limits) -> Self {
        let units = (limits.command_memory / MEMORY_UNIT).clamp(1, Semaphore::MAX_PERMITS as u64);
        Admission {
            limits,
            state: Default::default(),
            refused: Default::default(),
            memory: Arc::new(Semaphore::new(units as usize)),
        }
    }

    /// Charges `bytes` of command memory: None for nothing to charge, Err when the budget
    /// has no room (the command is to be answered TASK SET FULL; counted and logged).
    pub fn charge(&self, source: IpAddr, bytes: u64) -> Result<Option<MemoryCharge>, Refusal> {
        if bytes == 0 {
            return Ok(None);
        }
        let units = bytes.div_ceil(MEMORY_UNIT).min(u32::MAX as u64) as u32;
        match self.memory.clone().try_acquire_many_owned(units) {
            Ok(p) => Ok(Some(p)),
            Err(_) => {
                let mut st = self.lock();
                self.refuse(
                    &mut st,
                    source,
                    Refusal::CommandMemory,
                    "command memory of the gateway used up: TASK SET FULL",
                );
                Err(Refusal::CommandMemory)
            }
        }
    }

    /// Counts (and logs, rate-limited) an immediate command refused for the window's bound.
    pub fn immediate_refused(&self, source: IpAddr) {
        let mut st = self.lock();
        self.refuse(
            &mut st,
            source,
            Refusal::ImmediateCommands,
            "too many immediate commands outstanding: TASK SET FULL",
        );
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Open connections, normal sessions and discovery sessions, now.
    pub fn open(&self) -> (usize, usize, usize) {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        (st.connections, st.sessions, st.discovery.len())
    }

    /// How many times each refusal happened.
    pub fn refused(&self) -> Vec<(Refusal, u64)> {
        Refusal::ALL
            .iter()
            .map(|&r| (r, self.refused[r as usize].load(Ordering::Relaxed)))
            .collect()
    }

    /// Counts a refusal, and logs it unless this source had one like it recently.
    fn refuse(&self, st: &mut State, source: IpAddr, why: Refusal, what: &str) {
        self.refused[why as usize].fetch_add(1, Ordering::Relaxed);
        crate::metrics::metrics().refusal(why.as_str());
        let now = Instant::now();
        if st.logged.len() >= MAX_TRACKED_SOURCES {
            st.logged
                .retain(|_, t| now.duration_since(*t) < LOG_INTERVAL);
        }
        let recent = st
            .logged
            .get(&(source, why))
            .is_some_and(|t| now.duration_since(*t) < LOG_INTERVAL);
        if !recent && st.logged.len() < MAX_TRACKED_SOURCES {
            st.logged.insert((source, why), now);
            warn!(
                %source,
                limit = why.as_str(),
                total = self.refused[why as usize].load(Ordering::Relaxed),
                "{what} (logged once per {}s per source)",
                LOG_INTERVAL.as_secs()
            );
        }
    }

    /// A new connection from `source`: a login slot, or None (close it at once).
    pub fn connect(self: &Arc<Self>, source: IpAddr) -> Option<LoginSlot> {
        let mut st = self.lock();
        let l = &self.limits;
        if st.connections >= l.connections {
            self.refuse(
                &mut st,
                source,
                Refusal::Connections,
                "too many connections: refused",
            );
            return None;
        }
        let here = st.logins_by_source.get(&source).copied().unwrap_or(0);
        let full = if here >= l.logins_per_source {
            Some((Some(source), Refusal::LoginsPerSource))
        } else if st.logins.len() >= l.logins {
            Some((None, Refusal::Logins))
        } else {
            None
        };
        if let Some((of, why)) = full {
            // Room is made by closing the oldest stale login (of this source if that is
            // the bound reached); if every one is young, the new connection is refused.
            let now = Instant::now();
            let victim = st
                .logins
                .iter()
                .take_while(|(_, p)| now.duration_since(p.since) >= l.login_grace)
                .find(|(_, p)| of.is_none_or(|s| p.source == s))
                .map(|(id, _)| *id);
            let what = match (why, victim.is_some()) {
                (Refusal::Logins, true) => "too many connections logging in: closing the oldest",
                (Refusal::Logins, false) => "too many connections logging in: refused",
                (_, true) => {
                    "too many connections logging in from this address: closing its oldest"
                }
                (_, false) => "too many connections logging in from this address: refused",
            };
            self.refuse(&mut st, source, why, what);
            match victim {
                Some(id) => {
                    if let Some(p) = Self::remove_login(&mut st, id) {
                        let _ = p.close.send(true);
                    }
                }
                None => return None,
            }
        }
        let id = st.next_id;
        st.next_id += 1;
        let (close, closed) = watch::channel(false);
        st.connections += 1;
        st.logins.insert(
            id,
            PendingLogin {
                source,
                since: Instant::now(),
                close,
            },
        );
        *st.logins_by_source.entry(source).or_default() += 1;
        Some(LoginSlot {
            admission: self.clone(),
            source,
            id,
            closed,
        })
    }

    /// How long to wait before answering a failed login from `source`, which is counted:
    /// nothing for the first few, then doubling up to a few seconds.
    pub fn login_failed(&self, source: IpAddr) -> Duration {
        let mut st = self.lock();
        let now = Instant::now();
        if st.failures.len() >= MAX_TRACKED_SOURCES {
            st.failures
                .retain(|_, (_, t)| now.duration_since(*t) < FAILURE_MEMORY);
        }
        let entry = st.failures.entry(source).or_insert((0, now));
        if now.duration_since(entry.1) >= FAILURE_MEMORY {
            *entry = (0, now);
        }
        entry.0 += 1;
        entry.1 = now;
        let over = entry.0.saturating_sub(FREE_FAILURES);
        if over == 0 {
            return Duration::ZERO;
        }
        let ms = 250u64.saturating_mul(1 << over.min(10));
        Duration::from_millis(ms).min(MAX_FAILURE_DELAY)
    }

    /// A login from `source` succeeded: its failures are forgiven.
    pub fn login_succeeded(&self, source: IpAddr) {
        self.lock().failures.remove(&source);
    }

    /// Takes a login out of the books (it completed, ended or was closed).
    fn remove_login(st: &mut State, id: u64) -> Option<PendingLogin> {
        let p = st.logins.remove(&id)?;
        if let Some(n) = st.logins_by_source.get_mut(&p.source) {
            *n -= 1;
            if *n == 0 {
                st.logins_by_source.remove(&p.source);
            }
        }
        Some(p)
    }
}

impl std::fmt::Debug for LoginSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginSlot")
            .field("source", &self.source)
            .field("id", &self.id)
            .finish()
    }
}

/// A connection's place: a login slot until its login completes, then (through
/// [`LoginSlot::discovery`] or [`LoginSlot::session`]) a session's. Dropping it frees it.
pub struct LoginSlot {
    admission: Arc<Admission>,
    source: IpAddr,
    id: u64,
    /// Set when the login is closed to make room for newer connections.
    pub closed: watch::Receiver<bool>,
}

/// What a session slot holds besides the connection.
enum Held {
    Discovery(u64),
    Session(String),
}

/// A full-feature connection's place; dropping it frees it.
pub struct SessionSlot {
    slot: LoginSlot,
    held: Held,
    /// Set when the session must close to make room (discovery sessions only).
    pub evicted: watch::Receiver<bool>,
}

impl LoginSlot {
    pub fn source(&self) -> IpAddr {
        self.source
    }

    pub fn admission(&self) -> &Arc<Admission> {
        &self.admission
    }

    fn leave_login(&mut self, st: &mut State) {
        Admission::remove_login(st, self.id);
    }

    /// The login completed as a discovery session: it always gets a slot, the oldest one of
    /// its source (or else of all) closing if the bound is reached.
    pub fn discovery(mut self) -> SessionSlot {
        let adm = self.admission.clone();
        let mut st = adm.lock();
        self.leave_login(&mut st);
        let l = &adm.limits;
        let source = self.source;
        let from_here = st.discovery.values().filter(|(s, _)| *s == source).count();
        let victim = if from_here >= l.discovery_per_source {
            st.discovery
                .iter()
                .find(|(_, (s, _))| *s == source)
                .map(|(k, _)| *k)
        } else if st.discovery.len() >= l.discovery_sessions {
            st.discovery.keys().next().copied()
        } else {
            None
        };
        if let Some(k) = victim {
            if let Some((old, tx)) = st.discovery.remove(&k) {
                let _ = tx.send(true);
                adm.refuse(
                    &mut st,
                    old,
                    Refusal::DiscoveryEvicted,
                    "too many discovery sessions: closing the oldest",
                );
            }
        }
        let id = st.next_id;
        st.next_id += 1;
        let (tx, rx) = watch::channel(false);
        st.discovery.insert(id, (source, tx));
        drop(st);
        SessionSlot {
            slot: self,
            held: Held::Discovery(id),
            evicted: rx,
        }
    }

    /// May a normal session of `initiator` start? Err(refusal) when a bound is reached;
    /// `reinstating` when it replaces a live session of the same identity (RFC 7143
    /// §6.3.5), which then frees its own slot.
    /// The slot comes back with the refusal: it still holds the connection until it closes.
    pub fn session(
        mut self,
        initiator: &str,
        reinstating: bool,
    ) -> Result<SessionSlot, (Refusal, LoginSlot)> {
        let adm = self.admission.clone();
        let mut st = adm.lock();
        let l = &adm.limits;
        let name = initiator.to_ascii_lowercase();
        let extra = usize::from(!reinstating);
        let mine = st.sessions_by_initiator.get(&name).copied().unwrap_or(0);
        let why = if st.sessions + extra > l.sessions {
            Some((Refusal::Sessions, "too many sessions: login refused"))
        } else if mine + extra > l.sessions_per_initiator {
            Some((
                Refusal::SessionsPerInitiator,
                "too many sessions of this initiator name: login refused",
            ))
        } else {
            None
        };
        if let Some((why, what)) = why {
            adm.refuse(&mut st, self.source, why, what);
            drop(st);
            return Err((why, self));
        }
        self.leave_login(&mut st);
        st.sessions += 1;
        *st.sessions_by_initiator.entry(name.clone()).or_default() += 1;
        drop(st);
        Ok(SessionSlot {
            slot: self,
            held: Held::Session(name),
            evicted: watch::channel(false).1,
        })
    }
}

impl Drop for LoginSlot {
    fn drop(&mut self) {
        let adm = self.admission.clone();
        let mut st = adm.lock();
        self.leave_login(&mut st);
        st.connections = st.connections.saturating_sub(1);
    }
}

impl SessionSlot {
    pub fn source(&self) -> IpAddr {
        self.slot.source
    }

    pub fn admission(&self) -> &Arc<Admission> {
        &self.slot.admission
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let mut st = self.slot.admission.lock();
        match &self.held {
            Held::Discovery(id) => {
                st.discovery.remove(id);
            }
            Held::Session(name) => {
                st.sessions = st.sessions.saturating_sub(1);
                if let Some(n) = st.sessions_by_initiator.get_mut(name) {
                    *n -= 1;
                    if *n == 0 {
                        st.sessions_by_initiator.remove(name);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    fn small() -> Arc<Admission> {
        Arc::new(Admission::new(Limits {
            connections: 10,
            logins: 4,
            logins_per_source: 2,
            discovery_sessions: 3,
            discovery_per_source: 2,
            sessions: 3,
            sessions_per_initiator: 2,
            login_grace: Duration::from_millis(50),
            command_memory: 64 << 10,
        }))
    }

    fn count(a: &Admission, r: Refusal) -> u64 {
        a.refused().into_iter().find(|(x, _)| *x == r).unwrap().1
    }

    #[test]
    fn logins_are_bounded_per_source_and_in_total() {
        let a = small();
        let s1 = [a.connect(ip(1)).unwrap(), a.connect(ip(1)).unwrap()];
        assert!(a.connect(ip(1)).is_none(), "per source");
        assert_eq!(count(&a, Refusal::LoginsPerSource), 1);
        let s2 = [a.connect(ip(2)).unwrap(), a.connect(ip(2)).unwrap()];
        assert!(a.connect(ip(3)).is_none(), "in total");
        assert_eq!(count(&a, Refusal::Logins), 1);
        drop(s1);
        assert!(a.connect(ip(3)).is_some(), "freed when dropped");
        // A completed login frees its login slot but keeps its connection.
        let [d, e] = s2;
        drop(e);
        let _d = d.discovery();
        let held = [a.connect(ip(2)).unwrap(), a.connect(ip(2)).unwrap()];
        assert_eq!(a.lock().connections, 3);
        drop(held);
    }

    #[test]
    fn stale_logins_make_room() {
        let a = small();
        let old = [a.connect(ip(1)).unwrap(), a.connect(ip(1)).unwrap()];
        let other = a.connect(ip(2)).unwrap();
        std::thread::sleep(Duration::from_millis(60));
        let young = a.connect(ip(3)).unwrap();
        // Its source's bound: its own oldest stale login closes.
        let again = a.connect(ip(1)).expect("room made");
        assert!(*old[0].closed.borrow() && !*old[1].closed.borrow());
        assert!(!*other.closed.borrow());
        // The total bound: the oldest stale login of any source.
        let _new = a.connect(ip(4)).expect("room made");
        assert!(*old[1].closed.borrow());
        let _new2 = a.connect(ip(5)).expect("room made");
        assert!(*other.closed.borrow() && !*young.closed.borrow());
        // Every login young: refused.
        assert!(a.connect(ip(6)).is_none());
        assert!(!*again.closed.borrow());
        drop(old);
        assert_eq!(
            a.lock().logins.len(),
            4,
            "closed logins were already taken out"
        );
    }

    #[test]
    fn discovery_sessions_evict_the_oldest() {
        let a = small();
        let d1 = a.connect(ip(1)).unwrap().discovery();
        let d2 = a.connect(ip(1)).unwrap().discovery();
        let d3 = a.connect(ip(1)).unwrap().discovery();
        assert!(*d1.evicted.borrow(), "oldest of the same source");
        assert!(!*d2.evicted.borrow());
        let d4 = a.connect(ip(2)).unwrap().discovery();
        assert!(!*d2.evicted.borrow() && !*d3.evicted.borrow());
        drop(d1);
        let _d5 = a.connect(ip(3)).unwrap().discovery();
        assert!(*d2.evicted.borrow(), "oldest of all once full");
        assert!(!*d4.evicted.borrow());
        assert_eq!(count(&a, Refusal::DiscoveryEvicted), 2);
    }

    #[test]
    fn sessions_are_bounded_per_initiator_and_in_total() {
        let a = small();
        let s1 = a.connect(ip(1)).unwrap().session("iqn.a", false).unwrap();
        let _s2 = a.connect(ip(1)).unwrap().session("IQN.A", false).unwrap();
        let c = a.connect(ip(1)).unwrap();
        let c = match c.session("iqn.a", false) {
            Err((Refusal::SessionsPerInitiator, c)) => c,
            _ => panic!("per initiator"),
        };
        // Reinstating one of its own sessions is not one more.
        let _s3 = c.session("iqn.a", true).unwrap();
        drop(s1);
        let _s4 = a.connect(ip(2)).unwrap().session("iqn.b", false).unwrap();
        let r = a.connect(ip(2)).unwrap().session("iqn.c", false).err();
        assert_eq!(r.as_ref().map(|e| e.0), Some(Refusal::Sessions));
        assert_eq!(
            a.lock().logins.len(),
            1,
            "a refused login keeps its slot until it closes"
        );
        drop(r);
        assert_eq!(a.lock().logins.len(), 0);
    }

    #[test]
    fn command_memory_is_a_budget() {
        let a = small();
        assert!(a.charge(ip(1), 0).unwrap().is_none());
        let c1 = a.charge(ip(1), 40 << 10).unwrap();
        assert!(a.charge(ip(2), 30 << 10).is_err());
        let c2 = a.charge(ip(2), 24 << 10).unwrap();
        assert!(a.charge(ip(2), 1).is_err());
        drop(c1);
        assert!(a.charge(ip(2), 30 << 10).is_ok());
        drop(c2);
        assert_eq!(count(&a, Refusal::CommandMemory), 2);
    }

    #[test]
    fn failed_logins_slow_down_their_source_only() {
        let a = small();
        for _ in 0..FREE_FAILURES {
            assert_eq!(a.login_failed(ip(1)), Duration::ZERO);
        }
        let d1 = a.login_failed(ip(1));
        let d2 = a.login_failed(ip(1));
        assert!(d1 > Duration::ZERO && d2 > d1);
        for _ in 0..20 {
            assert!(a.login_failed(ip(1)) <= MAX_FAILURE_DELAY);
        }
        assert_eq!(a.login_failed(ip(2)), Duration::ZERO, "another source");
        a.login_succeeded(ip(1));
        assert_eq!(a.login_failed(ip(1)), Duration::ZERO, "forgiven");
    }
}
