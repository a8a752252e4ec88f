//! Sessions by identity, for session reinstatement (RFC 7143 §6.3.5): a login with the
//! initiator name and ISID of a live session to the same target replaces it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{oneshot, watch};

/// What identifies a session to a target: the initiator port and the target (RFC 7143 §4.4.3).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionKey {
    pub initiator: String,
    pub isid: [u8; 6],
    pub target: String,
}

impl SessionKey {
    pub fn new(initiator: &str, isid: [u8; 6], target: &str) -> Self {
        SessionKey {
            initiator: initiator.to_ascii_lowercase(),
            isid,
            target: target.to_ascii_lowercase(),
        }
    }
}

struct Entry {
    tsih: u16,
    kill: watch::Sender<bool>,
    done: oneshot::Receiver<()>,
}

/// Handles a live session keeps: it is told to end through `kill`, and dropping `done` tells
/// a reinstating login that it has ended.
pub struct SessionHandle {
    pub kill: watch::Receiver<bool>,
    pub done: oneshot::Sender<()>,
}

#[derive(Default)]
pub struct SessionRegistry {
    inner: Mutex<HashMap<SessionKey, Entry>>,
}

impl SessionRegistry {
    /// Registers a new session; an older one with the same key is told to end and awaited
    /// (up to `grace`), so that its commands complete before the new session starts.
    pub async fn register(&self, key: SessionKey, tsih: u16, grace: Duration) -> SessionHandle {
        let (kill_tx, kill_rx) = watch::channel(false);
        let (done_tx, done_rx) = oneshot::channel();
        let old = self.lock().insert(
            key,
            Entry {
                tsih,
                kill: kill_tx,
                done: done_rx,
            },
        );
        if let Some(old) = old {
            tracing::info!(
                old_tsih = old.tsih,
                new_tsih = tsih,
                "session reinstatement: ending the old session"
            );
            let _ = old.kill.send(true);
            let _ = tokio::time::timeout(grace, old.done).await;
        }
        SessionHandle {
            kill: kill_rx,
            done: done_tx,
        }
    }

    /// Forgets a session that ended, unless a newer one took its key.
    pub fn unregister(&self, key: &SessionKey, tsih: u16) {
        let mut m = self.lock();
        if m.get(key).is_some_and(|e| e.tsih == tsih) {
            m.remove(key);
        }
    }

    /// Is a session with this identity live (a login with it reinstates it)?
    pub fn contains(&self, key: &SessionKey) -> bool {
        self.lock().contains_key(key)
    }

    pub fn count(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SessionKey, Entry>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}
