//! The PostgreSQL engine: several hosts share one counter state and one audit chain.
//!
//! `[store] url = "postgres://…"`. Writers serialize on one row
//! (`p11derive_meta`, locked `FOR UPDATE` at the start of every write
//! transaction, held only for the transaction's time on the server): the
//! chain stays a single chain, each record MACed onto the one before,
//! whichever host wrote it. The commit of a batch of signatures is one
//! statement, one round trip (see `p11derive_append` in `schema`).
//!
//! Each connection is driven here (tokio-postgres on a current-thread
//! runtime of its own): a deadline on every call, unnamed statements only
//! (PgBouncer's transaction pooling carries them), TLS as `[store] sslmode`
//! says (`pg_tls`), errors in the server's words.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use tokio_postgres::Client;

use super::db::{Db, Row, Val};
use super::pg_tls::{connect_fix, describe, Tls};
use super::StoreError;

// Config owns the meaning of `[store] url`; re-exported for the paths that
// name them here.
use crate::config::{redact, without_param, StoreSection};

/// Whether the database holds a p11derive schema.
pub fn has_schema(db: &mut Pg) -> Result<bool, StoreError> {
    let found = db.query("SELECT to_regclass('p11derive_meta') IS NOT NULL", &[])?;
    Ok(found.first().and_then(|r| r.int(0).ok()) == Some(1))
}

/// What a PostgreSQL store is opened with: `[store] url`, `sslmode`,
/// `ca_file` and `connect_timeout_ms`.
#[derive(Clone)]
pub struct Target {
    url: String,
    timeout: Duration,
    tls: Tls,
}

impl Target {
    /// The target `[store]` names (its `url` must be set); a bad `sslmode`
    /// or `ca_file` is an error naming the key.
    pub fn of(c: &StoreSection) -> Result<Target, StoreError> {
        let url = c.url.clone().unwrap_or_default();
        let bad = |m: String| StoreError::Io(PathBuf::from(redact(&url)), m);
        let mode = c.ssl_mode().map_err(bad)?;
        let tls = Tls::new(mode, c.ca_file.as_deref()).map_err(bad)?;
        Ok(Target {
            timeout: Duration::from_millis(c.connect_timeout_ms),
            tls,
            url,
        })
    }

    /// `url` with `[store]`'s other keys as in `c` (`store migrate --to`).
    pub fn with_url(c: &StoreSection, url: &str) -> Result<Target, StoreError> {
        let mut c = c.clone();
        c.url = Some(url.to_string());
        Target::of(&c)
    }
}

/// One live connection: the client, and the task that drives its socket
/// (on the `Pg`'s runtime, while a call waits).
struct Conn {
    client: Client,
    task: tokio::task::JoinHandle<()>,
}

/// One connection, opened on first use and again after it was lost. Every
/// call has a deadline (`connect_timeout_ms`): a server that does not
/// answer in time (stopped, partitioned) fails the call, and its connection
/// is closed, never used again. Statements are unnamed (parsed, bound and
/// run in one message; nothing is kept on the connection between
/// transactions), so PgBouncer's transaction pooling carries them.
pub struct Pg {
    config: tokio_postgres::Config,
    tls: Tls,
    location: PathBuf,
    timeout: Duration,
    /// Drives this connection's calls, on the calling thread.
    rt: tokio::runtime::Runtime,
    conn: Option<Conn>,
    /// A transaction is open on `conn`.
    in_tx: bool,
    /// The connection was lost inside a transaction: every statement fails
    /// until the caller rolls back (a fresh connection must not carry on
    /// what the lost one had begun).
    lost_in_tx: bool,
    /// The last call found the connection closed (it was dropped).
    dropped: bool,
    /// Every transaction read-only (`set_read_only`).
    read_only: bool,
    /// The config without the read-only startup option, for a server that
    /// refuses startup options (PgBouncer): used once, if it does.
    without_options: Option<tokio_postgres::Config>,
}

/// The type a parameter is sent as, from what it accepts: the commit
/// function's typed arrays, numbers, bytes and text.
const PARAM_TYPES: [Type; 14] = [
    Type::INT8,
    Type::BYTEA,
    Type::TEXT,
    Type::INT8_ARRAY,
    Type::BYTEA_ARRAY,
    Type::TEXT_ARRAY,
    Type::INT4,
    Type::INT2,
    Type::BOOL,
    Type::INT4_ARRAY,
    Type::INT2_ARRAY,
    Type::BOOL_ARRAY,
    Type::FLOAT8,
    Type::FLOAT8_ARRAY,
];

fn param_type(p: &(dyn ToSql + Sync)) -> Option<Type> {
    let mut buf = tokio_postgres::types::private::BytesMut::new();
    PARAM_TYPES.into_iter().find(|t| {
        buf.clear();
        p.to_sql_checked(t, &mut buf).is_ok()
    })
}

/// A stored value's type: NULL's is left to the server to infer.
fn val_type(v: &Val) -> Type {
    match v {
        Val::Null => Type::UNKNOWN,
        Val::Int(_) => Type::INT8,
        Val::Text(_) => Type::TEXT,
        Val::Blob(_) => Type::BYTEA,
    }
}

impl Pg {
    pub fn new(target: &Target) -> Result<Pg, StoreError> {
        let url = &target.url;
        let location = PathBuf::from(redact(url));
        // The sslmode (libpq's names, verify-* included) is the connector's.
        let mut config: tokio_postgres::Config =
            without_param(url, "sslmode").parse().map_err(|e| {
                StoreError::Io(
                    location.clone(),
                    format!("not a valid PostgreSQL URL ({e}); fix [store] url"),
                )
            })?;
        let timeout = target.timeout;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(timeout);
        }
        // Beside the calls' deadline: the kernel gives up on a peer that
        // stopped acknowledging.
        config
            .tcp_user_timeout(timeout)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(5))
            .application_name("p11derive")
            .ssl_mode(target.tls.negotiation());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| {
                StoreError::Io(
                    location.clone(),
                    format!("cannot start its I/O driver ({e})"),
                )
            })?;
        Ok(Pg {
            config,
            tls: target.tls.clone(),
            location,
            timeout,
            rt,
            conn: None,
            in_tx: false,
            lost_in_tx: false,
            dropped: false,
            read_only: false,
            without_options: None,
        })
    }

    /// From the next connection on, every transaction is read-only on the
    /// server (`default_transaction_read_only`, sent with the connection's
    /// startup options: no statement is run for it), and a write
    /// transaction is refused here before the server is asked.
    pub fn set_read_only(&mut self) {
        self.without_options = Some(self.config.clone());
        let options = match self.config.get_options() {
            Some(o) if !o.is_empty() => format!("{o} -c default_transaction_read_only=on"),
            _ => "-c default_transaction_read_only=on".to_string(),
        };
        self.config.options(&options);
        self.read_only = true;
    }

    /// Whether every transaction is read-only (`set_read_only`).
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    pub fn location(&self) -> &Path {
        &self.location
    }

    /// A message never carries the password, even should a server or a
    /// library quote it.
    fn scrub(&self, mut text: String) -> String {
        if let Some(pw) = self.config.get_password().filter(|p| p.len() >= 3) {
            let pw = String::from_utf8_lossy(pw).into_owned();
            text = text.replace(&pw, "***");
        }
        text
    }

    fn io(&self, text: String) -> StoreError {
        StoreError::Io(self.location.clone(), self.scrub(text))
    }

    /// Runs `f` on this connection's runtime until `deadline`; `None` when
    /// the deadline passed first.
    fn wait<F: Future>(rt: &tokio::runtime::Runtime, deadline: Instant, f: F) -> Option<F::Output> {
        // The timer is made inside the runtime (it needs its driver).
        rt.block_on(async { tokio::time::timeout_at(deadline.into(), f).await })
            .ok()
    }

    /// The open connection (and the runtime to drive it), opened now if
    /// there is none (within `deadline`).
    fn connect(
        &mut self,
        deadline: Instant,
    ) -> Result<(&tokio::runtime::Runtime, &Client), StoreError> {
        if self.lost_in_tx {
            return Err(self.lost("the connection was lost inside a transaction"));
        }
        if self.conn.as_ref().is_some_and(|c| c.client.is_closed()) {
            self.conn = None;
        }
        if self.conn.is_none() {
            self.tls.reset();
            let opened = Pg::wait(&self.rt, deadline, self.config.connect(self.tls.clone()));
            let (client, connection) = match opened {
                Some(Ok(c)) => c,
                Some(Err(e))
                    if self.read_only && describe(&e).contains("unsupported startup parameter") =>
                {
                    // A pooler (PgBouncer) refuses startup options: connect
                    // without; writes stay refused here (`begin_write`).
                    let Some(plain) = self.without_options.take() else {
                        return Err(
                            self.io(format!("cannot connect to PostgreSQL ({})", describe(&e)))
                        );
                    };
                    self.config = plain;
                    crate::log::info(&format!(
                        "store {}: the server refuses startup options (a pooler such as \
                         PgBouncer): reading without default_transaction_read_only; p11derive \
                         itself refuses every write on this read-only open",
                        self.location.display()
                    ));
                    return self.connect(deadline);
                }
                Some(Err(e)) => {
                    return Err(self.io(format!(
                        "cannot connect to PostgreSQL ({}); {}; p11derive connects again at the \
                         next operation",
                        describe(&e),
                        connect_fix(&e)
                    )))
                }
                None => {
                    return Err(self.io(format!(
                        "cannot connect to PostgreSQL: no answer within {} ms ([store] \
                         connect_timeout_ms); check that the server runs and is reachable; \
                         p11derive connects again at the next operation",
                        self.timeout.as_millis()
                    )))
                }
            };
            let task = self.rt.spawn(async move {
                let _ = connection.await;
            });
            let (how, warn) = self.tls.negotiated();
            let line = format!("store {}: connected {how}", self.location.display());
            if warn {
                crate::log::warn(&line);
            } else {
                crate::log::info(&line);
            }
            self.conn = Some(Conn { client, task });
        }
        match &self.conn {
            Some(c) => Ok((&self.rt, &c.client)),
            None => Err(self.lost("no connection")),
        }
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.timeout
    }

    fn lost(&self, what: &str) -> StoreError {
        self.io(format!(
            "{what}; nothing of the operation was kept unless its audit record was \
             committed. p11derive connects again at the next operation"
        ))
    }

    /// The outcome of a call made under a deadline.
    fn settle<T>(&mut self, r: Option<Result<T, tokio_postgres::Error>>) -> Result<T, StoreError> {
        match r {
            Some(Ok(v)) => Ok(v),
            Some(Err(e)) => Err(self.fail(e)),
            None => Err(self.timed_out()),
        }
    }

    /// The deadline passed: the connection, interrupted mid-call, is closed
    /// (the server rolls back whatever it had begun of a transaction) and
    /// never used again. Not tried again: the caller fails at once.
    fn timed_out(&mut self) -> StoreError {
        if let Some(c) = self.conn.take() {
            c.task.abort();
        }
        if self.in_tx {
            self.lost_in_tx = true;
        }
        self.lost(&format!(
            "PostgreSQL did not answer within {} ms ([store] connect_timeout_ms): the call \
             failed and its connection was closed",
            self.timeout.as_millis()
        ))
    }

    /// A failed call: a lost connection is dropped (and, inside a
    /// transaction, poisons it until rolled back).
    fn fail(&mut self, e: tokio_postgres::Error) -> StoreError {
        // The server ending the session (57P01 administrator shutdown, 57P02
        // crash, 57P03 starting up) or a connection exception (08xxx) may
        // arrive before the client sees the socket close.
        let ending = e
            .code()
            .is_some_and(|c| c.code().starts_with("57P") || c.code().starts_with("08"));
        let closed =
            ending || e.is_closed() || self.conn.as_ref().is_none_or(|c| c.client.is_closed());
        if closed {
            self.conn = None;
            self.dropped = true;
            if self.in_tx {
                self.lost_in_tx = true;
            }
            return self.lost(&format!(
                "lost the connection to PostgreSQL ({})",
                describe(&e)
            ));
        }
        // 25006: read_only_sql_transaction (a write on a read-only open).
        if self.read_only && e.code().is_some_and(|c| c.code() == "25006") {
            return StoreError::OpenedReadOnly(self.location.clone());
        }
        self.io(format!("PostgreSQL: {}", describe(&e)))
    }

    /// Whether the last failed call found the connection closed (and so
    /// dropped it); cleared by asking. A call that timed out is not one:
    /// the server may still be stopped, and the caller fails at once.
    pub fn take_dropped(&mut self) -> bool {
        std::mem::take(&mut self.dropped)
    }

    /// Runs `f`, and once more on a new connection when it failed because
    /// the connection had been closed (a server restart, a failover, an idle
    /// connection cut) while no transaction was open: `f` must be a read or
    /// the start of a transaction, so that nothing of the failed attempt can
    /// have been kept.
    fn again<T>(
        &mut self,
        mut f: impl FnMut(&mut Pg) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.dropped = false;
        match f(self) {
            Err(_) if !self.in_tx && self.take_dropped() => f(self),
            done => done,
        }
    }

    /// The server-side limits of a transaction (`SET LOCAL`: they end with
    /// it, so a pooled server connection carries nothing to the next
    /// client): a statement or a lock wait the client has given up on is
    /// ended by the server too.
    /// They are 90% (statements) and 80% (lock waits) of the client's
    /// deadline, so that the server's own error (its words: "canceling
    /// statement due to lock timeout") usually arrives before the client
    /// gives up.
    fn limits(&self) -> String {
        let statement = (self.timeout.as_millis() * 9 / 10).max(1);
        let lock = self.lock_timeout_ms();
        format!("SET LOCAL statement_timeout = {statement}; SET LOCAL lock_timeout = {lock}")
    }

    /// Starts a transaction without the writers' lock (creating the schema).
    pub fn begin_plain(&mut self) -> Result<(), StoreError> {
        let sql = format!("BEGIN; {}", self.limits());
        self.again(|pg| pg.batch(&sql))?;
        self.in_tx = true;
        Ok(())
    }

    /// One statement with typed parameters (the lane commit's arrays), sent
    /// alone in its own implicit transaction: one statement on the server,
    /// one round trip. It carries no `SET LOCAL` limits: the lane commit's
    /// function sets its own lock timeout (`lock_timeout_ms`).
    pub fn query_alone(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        // Only the lane commit, a write, goes out alone.
        if self.read_only {
            return Err(StoreError::OpenedReadOnly(self.location.clone()));
        }
        let mut typed = Vec::with_capacity(params.len());
        for (i, p) in params.iter().enumerate() {
            let ty = param_type(*p).ok_or_else(|| {
                self.io(format!(
                    "parameter {} of a statement has no PostgreSQL type",
                    i + 1
                ))
            })?;
            typed.push((*p, ty));
        }
        self.run(sql, &typed)
    }

    /// The lock timeout a statement sets for itself: as `limits` sets it
    /// for a transaction, inside the call's deadline.
    pub fn lock_timeout_ms(&self) -> i64 {
        (self.timeout.as_millis() * 8 / 10).max(1) as i64
    }

    /// One unnamed statement: its rows.
    fn run(
        &mut self,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        let text = placeholders(sql);
        let deadline = self.deadline();
        let (rt, client) = self.connect(deadline)?;
        let done = Pg::wait(rt, deadline, client.query_typed(&text, params));
        self.settle(done)
    }

    /// One unnamed statement: the rows it changed.
    fn run_count(
        &mut self,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<u64, StoreError> {
        let text = placeholders(sql);
        let deadline = self.deadline();
        let (rt, client) = self.connect(deadline)?;
        let counted = async {
            let rows = client
                .query_typed_raw(&text, params.iter().map(|(p, t)| (*p, t.clone())))
                .await?;
            let mut rows = std::pin::pin!(rows);
            while rows.try_next().await?.is_some() {}
            Ok(rows.rows_affected().unwrap_or(0))
        };
        let done = Pg::wait(rt, deadline, counted);
        self.settle(done)
    }

    /// Simple statements (schema, transaction control).
    pub fn batch(&mut self, sql: &str) -> Result<(), StoreError> {
        let deadline = self.deadline();
        let (rt, client) = self.connect(deadline)?;
        let done = Pg::wait(rt, deadline, client.batch_execute(sql));
        self.settle(done)
    }
}

impl Drop for Pg {
    /// Ends the session in good order (the server logs no lost client):
    /// the client's goodbye flushed, 100 ms at most.
    fn drop(&mut self) {
        if let Some(Conn { client, task }) = self.conn.take() {
            drop(client);
            let bye = async { tokio::time::timeout(Duration::from_millis(100), task).await };
            let _ = self.rt.block_on(bye);
        }
    }
}

/// `?N` (both engines' shared SQL) as PostgreSQL's `$N`.
fn placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

impl ToSql for Val {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut tokio_postgres::types::private::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Val::Null => Ok(IsNull::Yes),
            Val::Int(v) => match *ty {
                Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*v)?.to_sql(ty, out),
                Type::BOOL => (*v != 0).to_sql(ty, out),
                _ => v.to_sql(ty, out),
            },
            Val::Text(v) => v.as_str().to_sql(ty, out),
            Val::Blob(v) => v.as_slice().to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

fn pg_row(r: &tokio_postgres::Row) -> Result<Row, tokio_postgres::Error> {
    let mut vals = Vec::with_capacity(r.len());
    for (i, col) in r.columns().iter().enumerate() {
        let v = match *col.type_() {
            Type::INT8 => r.try_get::<_, Option<i64>>(i)?.map(Val::Int),
            Type::INT4 => r.try_get::<_, Option<i32>>(i)?.map(|v| Val::Int(v.into())),
            Type::INT2 => r.try_get::<_, Option<i16>>(i)?.map(|v| Val::Int(v.into())),
            Type::BOOL => r.try_get::<_, Option<bool>>(i)?.map(|v| Val::Int(v.into())),
            Type::BYTEA => r.try_get::<_, Option<Vec<u8>>>(i)?.map(Val::Blob),
            _ => r.try_get::<_, Option<String>>(i)?.map(Val::Text),
        };
        vals.push(v.unwrap_or(Val::Null));
    }
    Ok(Row(vals))
}

/// Stored values with their types.
fn typed(params: &[Val]) -> Vec<(&(dyn ToSql + Sync), Type)> {
    params.iter().map(|v| (v as _, val_type(v))).collect()
}

impl Db for Pg {
    /// Outside a transaction every query the store makes is a read, tried
    /// again on a new connection when the old one turns out closed.
    fn query(&mut self, sql: &str, params: &[Val]) -> Result<Vec<Row>, StoreError> {
        let p = typed(params);
        let rows = self.again(|pg| pg.run(sql, &p))?;
        rows.iter()
            .map(pg_row)
            .collect::<Result<_, _>>()
            .map_err(|e| self.fail(e))
    }

    fn execute(&mut self, sql: &str, params: &[Val]) -> Result<u64, StoreError> {
        self.run_count(sql, &typed(params))
    }

    fn begin_write(&mut self) -> Result<(), StoreError> {
        if self.read_only {
            return Err(StoreError::OpenedReadOnly(self.location.clone()));
        }
        let begun = self.again(|pg| {
            // Exclusive: every lane commit takes this lock shared
            // (`schema::PG_WRITERS_LOCK`), so none is in flight meanwhile.
            let sql = format!(
                "BEGIN; {}; SELECT pg_advisory_xact_lock({}); \
                 SELECT 1 FROM p11derive_meta WHERE id = 1 FOR UPDATE",
                pg.limits(),
                super::schema::PG_WRITERS_LOCK
            );
            let done = pg.batch(&sql);
            if done.is_err() && pg.conn.is_some() {
                // BEGIN may have run before the lock failed.
                let _ = pg.batch("ROLLBACK");
            }
            done
        });
        begun?;
        self.in_tx = true;
        Ok(())
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        let done = self.batch("COMMIT");
        if done.is_err() {
            self.rollback();
        }
        self.in_tx = false;
        done
    }

    fn rollback(&mut self) {
        if self.in_tx && !self.lost_in_tx {
            let _ = self.batch("ROLLBACK");
        }
        self.in_tx = false;
        self.lost_in_tx = false;
    }

    fn as_pg(&mut self) -> Option<&mut Pg> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn placeholders() {
        assert_eq!(
            super::placeholders("SELECT a FROM t WHERE b = ?1 AND c = ?12 AND d = '?'"),
            "SELECT a FROM t WHERE b = $1 AND c = $12 AND d = '?'"
        );
    }
}
