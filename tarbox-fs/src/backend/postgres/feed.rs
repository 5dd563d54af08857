//! The change feed over `LISTEN`/`NOTIFY` (see `backend/changes.rs`).
//!
//! One channel, `tarbox_changes`, carries the notes of every tenant (a payload starts with its
//! tenant): each engine listens once, on one connection, whatever the number of tenants it
//! serves, and filters. Announcements are queued and sent by one task, everything queued within
//! a millisecond in one statement, so a burst of commits costs one `NOTIFY`, not one each;
//! a `NOTIFY` outside the data transaction takes PostgreSQL's notify lock only for itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::backend::changes::{self, ChangeListener, ChangeNote, FeedEvent, Listeners, Watch};
use crate::types::TenantId;

const CHANNEL: &str = "tarbox_changes";
/// PostgreSQL refuses payloads of 8,000 bytes or more.
const PAYLOAD_LIMIT: usize = 7900;
/// Notes sent in one statement at most.
const BATCH: usize = 512;
/// How long the sender waits after the first note of a batch for more: commits of
/// concurrent programs then share one `NOTIFY`, for a millisecond more of delay (the benchmarks
/// ran with 4 ms, batching a serial program's operations too; what other engines see late
/// weighs more than that saving).
const BATCH_WINDOW: Duration = Duration::from_millis(1);
/// The longest pause between attempts to send announcements the database refused.
const MAX_PAUSE: Duration = Duration::from_secs(1);
/// Every engine pings the channel this often: a listening connection that hears nothing,
/// not even pings, for [`SILENCE`] is taken for dead (a connection a firewall dropped
/// without telling either end never reports an error by itself).
const PING_EVERY: Duration = Duration::from_secs(5);
const SILENCE: Duration = Duration::from_secs(16);
const PING: &str = "ping";

/// What the sending task is asked.
#[derive(Debug)]
enum Outgoing {
    Note(ChangeNote),
    /// Answer once everything queued before has been sent.
    Flush(oneshot::Sender<()>),
}

/// The feed of one backend: started with the first announcement or watch.
#[derive(Debug)]
pub(super) struct Feed {
    pool: PgPool,
    listeners: Arc<Listeners>,
    outbox: std::sync::OnceLock<mpsc::UnboundedSender<Outgoing>>,
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
        let _ = outbox.send(Outgoing::Note(note));
    }

    /// Wait until every note announced so far has been sent (before an engine closes: a
    /// short-lived command's last changes must not be lost with its process).
    pub(super) async fn flush(&self, within: Duration) {
        let Some(outbox) = self.outbox.get() else {
            return;
        };
        let (tx, rx) = oneshot::channel();
        if outbox.send(Outgoing::Flush(tx)).is_ok()
            && tokio::time::timeout(within, rx).await.is_err()
        {
            warn!("announcing changes did not finish before the engine closed");
        }
    }

    pub(super) fn watch(&self, tenant: TenantId, listener: ChangeListener) -> Watch {
        let listening = self.listening.get_or_init(|| {
            let listening = Arc::new(AtomicBool::new(false));
            // A pool of its own: the listening connection never takes one of the data path's.
            let listen_pool = PgPoolOptions::new()
                .max_connections(1)
                .connect_lazy_with((*self.pool.connect_options()).clone());
            self.spawn(listen(
                listen_pool,
                Arc::downgrade(&self.listeners),
                listening.clone(),
            ));
            self.spawn(ping(self.pool.clone()));
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

/// Send what is queued, in batches and in order, until the backend is dropped. A batch the
/// database refuses is tried again until it is sent: dropping it would leave other engines
/// serving what it names (they hear of a lost feed only when their own connection breaks).
async fn send_notes(pool: PgPool, mut outbox: mpsc::UnboundedReceiver<Outgoing>) {
    let mut queued = Vec::with_capacity(BATCH);
    while outbox.recv_many(&mut queued, BATCH).await > 0 {
        tokio::time::sleep(BATCH_WINDOW).await;
        while queued.len() < BATCH {
            match outbox.try_recv() {
                Ok(item) => queued.push(item),
                Err(_) => break,
            }
        }
        let mut payloads = Vec::new();
        let mut flushed = Vec::new();
        for item in queued.drain(..) {
            match item {
                Outgoing::Note(note) => {
                    payloads.extend(changes::encode(&note, PAYLOAD_LIMIT));
                }
                Outgoing::Flush(done) => flushed.push(done),
            }
        }
        send(&pool, &payloads).await;
        for done in flushed {
            let _ = done.send(());
        }
    }
}

async fn send(pool: &PgPool, payloads: &[String]) {
    if payloads.is_empty() {
        return;
    }
    let mut pause = Duration::from_millis(20);
    let mut warned = false;
    loop {
        let sent = sqlx::query("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p")
            .bind(CHANNEL)
            .bind(payloads)
            .execute(pool)
            .await;
        match sent {
            Ok(_) => {
                if warned {
                    warn!("announcing changes works again");
                }
                return;
            }
            Err(sqlx::Error::PoolClosed) => return,
            Err(e) => {
                if !warned {
                    warn!(error = %e, "announcing changes failed: retrying");
                    warned = true;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_PAUSE);
            }
        }
    }
}

/// Ping the channel now and then, so that listeners can tell silence from a dead connection.
async fn ping(pool: PgPool) {
    loop {
        tokio::time::sleep(PING_EVERY).await;
        let pinged = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(PING)
            .execute(&pool)
            .await;
        if let Err(sqlx::Error::PoolClosed) = pinged {
            return;
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
            // Every engine pings: silence this long means the connection is gone.
            let Ok(received) = tokio::time::timeout(SILENCE, listener.try_recv()).await else {
                break None;
            };
            match received {
                Ok(Some(n)) => {
                    let Some(hub) = listeners.upgrade() else {
                        return;
                    };
                    match changes::decode(n.payload()) {
                        Some(note) => hub.deliver(&note),
                        None if n.payload() == PING => {}
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
