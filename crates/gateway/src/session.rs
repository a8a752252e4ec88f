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

/// What `rbdgw status` shows of a session.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SessionInfo {
    pub initiator: String,
    /// The ISID, as 12 hex digits.
    pub isid: String,
    pub target: String,
    /// The portal it logged in through, and where from.
    pub portal: String,
    pub peer: String,
    /// When it logged in (seconds since the Unix epoch).
    pub since: u64,
    pub header_digest: bool,
    pub data_digest: bool,
}

struct Entry {
    tsih: u16,
    info: SessionInfo,
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
    pub async fn register(
        &self,
        key: SessionKey,
        tsih: u16,
        info: SessionInfo,
        grace: Duration,
    ) -> SessionHandle {
        let (kill_tx, kill_rx) = watch::channel(false);
        let (done_tx, done_rx) = oneshot::channel();
        let old = self.lock().insert(
            key,
            Entry {
                tsih,
                info,
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

    /// The live sessions.
    pub fn list(&self) -> Vec<SessionInfo> {
        self.lock().values().map(|e| e.info.clone()).collect()
    }

    pub fn count(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SessionKey, Entry>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}
