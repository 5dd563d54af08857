//! The change feed over `LISTEN`/`NOTIFY` (see `backend/changes.rs`).
//!
//! One channel, `tarbox_changes`, carries the notes of every tenant (a payload starts with its
//! tenant): each engine listens once, on one connection, whatever the number of tenants it
//! serves, and filters. Announcements are queued and sent by one task, everything queued at the
//! moment in one statement, so a burst of commits costs one `NOTIFY` round trip, not one each;
//! a `NOTIFY` outside the data transaction takes PostgreSQL's notify lock only for itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::backend::changes::{self, ChangeListener, ChangeNote, FeedEvent, Listeners, Watch};
use crate::types::TenantId;

const CHANNEL: &str = "tarbox_changes";
/// PostgreSQL refuses payloads of 8,000 bytes or more.
const PAYLOAD_LIMIT: usize = 7900;
/// Notes sent in one statement at most.
const BATCH: usize = 512;
/// How often a failed announcement is tried again before it is given up (logged).
const SEND_ATTEMPTS: u32 = 5;

/// The feed of one backend: started with the first announcement or watch.
#[derive(Debug)]
pub(super) struct Feed {
    pool: PgPool,
    listeners: Arc<Listeners>,
    outbox: std::sync::OnceLock<mpsc::UnboundedSender<ChangeNote>>,
    listening: std::sync::OnceLock<Arc<AtomicBool>>,
    /// The sending and listening tasks, stopped with the feed (each holds a connection).
    tasks: std::sync::Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Drop for Feed {
    fn drop(&mut self) {
        for task in self
            .tasks
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            task.abort();
        }
    }
}

impl Feed {
    pub(super) fn new(pool: PgPool) -> Feed {
        Feed {
            pool,
            listeners: Arc::default(),
            outbox: std::sync::OnceLock::new(),
            listening: std::sync::OnceLock::new(),
            tasks: std::sync::Mutex::default(),
        }
    }

    fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let handle = runtime.spawn(task).abort_handle();
            self.tasks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(handle);
        }
    }

    pub(super) fn announce(&self, note: ChangeNote) {
        let outbox = self.outbox.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            self.spawn(send_notes(self.pool.clone(), rx));
            tx
        });
        // Fails only once the runtime is gone, when nobody is left to tell.
        let _ = outbox.send(note);
    }

    pub(super) fn watch(&self, tenant: TenantId, listener: ChangeListener) -> Watch {
        let listening = self.listening.get_or_init(|| {
            let listening = Arc::new(AtomicBool::new(false));
            self.spawn(listen(
                self.pool.clone(),
                Arc::downgrade(&self.listeners),
                listening.clone(),
            ));
            listening
        });
        // Registered first, then told: a `Resumed` from the listening task in between reaches
        // it as well, and a second one is harmless.
        let watch = self.listeners.add(tenant, listener.clone());
        if listening.load(Ordering::Acquire) {
            listener(FeedEvent::Resumed);
        }
        watch
    }
}

/// Send what is queued, in batches, until the backend is dropped.
async fn send_notes(pool: PgPool, mut outbox: mpsc::UnboundedReceiver<ChangeNote>) {
    let mut notes = Vec::with_capacity(BATCH);
    while outbox.recv_many(&mut notes, BATCH).await > 0 {
        let payloads: Vec<String> = notes
            .drain(..)
            .flat_map(|note| changes::encode(&note, PAYLOAD_LIMIT))
            .collect();
        let mut pause = Duration::from_millis(20);
        for attempt in 1..=SEND_ATTEMPTS {
            let sent = sqlx::query("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p")
                .bind(CHANNEL)
                .bind(&payloads)
                .execute(&pool)
                .await;
            match sent {
                Ok(_) => break,
                Err(e) if attempt == SEND_ATTEMPTS => {
                    // Watchers that missed these notes lost their connection too when the
                    // database went away, and start afresh when it is back.
                    warn!(error = %e, notes = payloads.len(), "announcing changes failed");
                }
                Err(e) => {
                    debug!(error = %e, attempt, "announcing changes failed: retrying");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
            }
        }
    }
}

/// Listen for notes and hand them to the watchers; on a lost connection tell them `Lost`,
/// reconnect, and tell them `Resumed` once listening again. Ends with the backend.
async fn listen(pool: PgPool, listeners: std::sync::Weak<Listeners>, listening: Arc<AtomicBool>) {
    let mut pause = Duration::from_millis(50);
    loop {
        let connected = async {
            let mut l = PgListener::connect_with(&pool).await?;
            l.eager_reconnect(false);
            l.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(l)
        }
        .await;
        let Some(hub) = listeners.upgrade() else {
            return;
        };
        let mut listener = match connected {
            Ok(l) => l,
            Err(e) => {
                debug!(error = %e, "change feed: cannot listen yet");
                drop(hub);
                if pool.is_closed() {
                    return;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        pause = Duration::from_millis(50);
        listening.store(true, Ordering::Release);
        hub.tell_all(FeedEvent::Resumed);
        drop(hub);
        let lost = loop {
            match listener.try_recv().await {
                Ok(Some(n)) => {
                    let Some(hub) = listeners.upgrade() else {
                        return;
                    };
                    match changes::decode(n.payload()) {
                        Some(note) => hub.deliver(&note),
                        None => debug!(payload = n.payload(), "change feed: not a note"),
                    }
                }
                Ok(None) => break None,
                Err(e) => break Some(e),
            }
        };
        listening.store(false, Ordering::Release);
        if let Some(hub) = listeners.upgrade() {
            hub.tell_all(FeedEvent::Lost);
        }
        match lost {
            Some(sqlx::Error::PoolClosed) => return,
            Some(e) => warn!(error = %e, "change feed lost: caches are off until it is back"),
            None => warn!("change feed lost its connection: caches are off until it is back"),
        }
    }
}
