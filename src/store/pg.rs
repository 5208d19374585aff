//! The PostgreSQL engine: several hosts share one counter state and one audit chain.
//!
//! `[store] url = "postgres://…"`. Writers serialize on one row
//! (`p11derive_meta`, locked `FOR UPDATE` at the start of every write
//! transaction, held only for the transaction's time on the server): the
//! chain stays a single chain, each record MACed onto the one before,
//! whichever host wrote it. The commit of a batch of signatures is one
//! statement, one round trip (see `p11derive_append` in `schema`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use fallible_iterator::FallibleIterator;
use postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use postgres::{Client, NoTls, Statement};

use super::db::{Db, Row, Val};
use super::StoreError;

// Config owns the meaning of `[store] url`; re-exported for the paths that
// name them here.
use crate::config::redact;

/// Whether the database holds a p11derive schema.
pub fn has_schema(db: &mut Pg) -> Result<bool, StoreError> {
    let found = db.query("SELECT to_regclass('p11derive_meta') IS NOT NULL", &[])?;
    Ok(found.first().and_then(|r| r.int(0).ok()) == Some(1))
}

/// One connection, opened on first use and again after it was lost.
pub struct Pg {
    config: postgres::Config,
    location: PathBuf,
    client: Option<Client>,
    statements: HashMap<String, Statement>,
    /// A transaction is open on `client`.
    in_tx: bool,
    /// The connection was lost inside a transaction: every statement fails
    /// until the caller rolls back (a fresh connection must not carry on
    /// what the lost one had begun).
    lost_in_tx: bool,
    /// Channels to LISTEN on at every (re)connection.
    listen: Vec<&'static str>,
    /// A listening connection was (re)opened: what was notified while it
    /// was down is unknown, so the next `notified` says yes.
    fresh: bool,
    /// The last call found the connection closed (it was dropped).
    dropped: bool,
}

impl Pg {
    pub fn new(url: &str, timeout: Duration) -> Result<Pg, StoreError> {
        let location = PathBuf::from(redact(url));
        let mut config: postgres::Config = url.parse().map_err(|e| {
            StoreError::Io(
                location.clone(),
                format!("not a valid PostgreSQL URL ({e}); fix [store] url"),
            )
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(timeout);
        }
        // A server that stops answering (a partition, a failed host) fails
        // the call after this long instead of hanging it.
        config
            .tcp_user_timeout(timeout)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(5))
            .application_name("p11derive");
        Ok(Pg {
            config,
            location,
            client: None,
            statements: HashMap::new(),
            in_tx: false,
            lost_in_tx: false,
            listen: Vec::new(),
            fresh: false,
            dropped: false,
        })
    }

    pub fn location(&self) -> &std::path::Path {
        &self.location
    }

    /// LISTENs on `channel`, now and at every reconnection.
    pub fn listen(&mut self, channel: &'static str) -> Result<(), StoreError> {
        self.listen.push(channel);
        self.client()?;
        Ok(())
    }

    /// Whether a notification arrived (without waiting for one); an error
    /// when the connection is lost (it is opened again at the next call).
    pub fn notified(&mut self) -> Result<bool, StoreError> {
        self.client()?;
        let mut any = std::mem::take(&mut self.fresh);
        let client = self.client.as_mut().expect("connected above");
        let mut n = client.notifications();
        let mut it = n.iter();
        loop {
            match it.next() {
                Ok(Some(_)) => any = true,
                Ok(None) => break,
                Err(e) => {
                    drop(it);
                    drop(n);
                    return Err(self.fail(e));
                }
            }
        }
        Ok(any)
    }

    fn client(&mut self) -> Result<&mut Client, StoreError> {
        if self.lost_in_tx {
            return Err(self.lost("the connection was lost inside a transaction"));
        }
        if self.client.as_ref().is_some_and(Client::is_closed) {
            self.client = None;
        }
        if self.client.is_none() {
            let mut client = self.config.connect(NoTls).map_err(|e| {
                StoreError::Io(
                    self.location.clone(),
                    format!(
                        "cannot connect to PostgreSQL ({e}); check that the server runs and \
                         [store] url; p11derive connects again at the next operation"
                    ),
                )
            })?;
            for ch in &self.listen {
                client
                    .batch_execute(&format!("LISTEN {ch}"))
                    .map_err(|e| StoreError::Io(self.location.clone(), e.to_string()))?;
            }
            self.statements.clear();
            self.fresh = !self.listen.is_empty();
            self.client = Some(client);
        }
        Ok(self.client.as_mut().expect("connected above"))
    }

    fn lost(&self, what: &str) -> StoreError {
        StoreError::Io(
            self.location.clone(),
            format!(
                "{what}; nothing of the operation was kept unless its audit record was \
                 committed. p11derive connects again at the next operation"
            ),
        )
    }

    /// A failed call: a lost connection is dropped (and, inside a
    /// transaction, poisons it until rolled back).
    fn fail(&mut self, e: postgres::Error) -> StoreError {
        // The server ending the session (57P01 administrator shutdown, 57P02
        // crash, 57P03 starting up) or a connection exception (08xxx) may
        // arrive before the client sees the socket close.
        let ending = e
            .code()
            .is_some_and(|c| c.code().starts_with("57P") || c.code().starts_with("08"));
        let closed = ending || e.is_closed() || self.client.as_ref().is_none_or(Client::is_closed);
        if closed {
            self.client = None;
            self.statements.clear();
            self.dropped = true;
            if self.in_tx {
                self.lost_in_tx = true;
            }
            return self.lost(&format!("lost the connection to PostgreSQL ({e})"));
        }
        let detail = match e.as_db_error() {
            Some(db) => format!("{}: {}", db.code().code(), db.message()),
            None => e.to_string(),
        };
        StoreError::Io(self.location.clone(), format!("PostgreSQL: {detail}"))
    }

    /// Whether the last failed call found the connection closed (and so
    /// dropped it); cleared by asking.
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

    /// Starts a transaction without the writers' lock (creating the schema).
    pub fn begin_plain(&mut self) -> Result<(), StoreError> {
        self.again(|pg| pg.batch("BEGIN"))?;
        self.in_tx = true;
        Ok(())
    }

    fn statement(&mut self, sql: &str) -> Result<Statement, StoreError> {
        // Connect first: prepared statements belong to their connection.
        self.client()?;
        if let Some(st) = self.statements.get(sql) {
            return Ok(st.clone());
        }
        let text = placeholders(sql);
        let prepared = self.client()?.prepare(&text);
        let st = prepared.map_err(|e| self.fail(e))?;
        self.statements.insert(sql.to_string(), st.clone());
        Ok(st)
    }

    /// Runs a statement with typed parameters (the commit function's arrays).
    pub fn query_with(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<postgres::Row>, StoreError> {
        let st = self.statement(sql)?;
        let rows = self.client()?.query(&st, params);
        rows.map_err(|e| self.fail(e))
    }

    /// Simple statements (schema, transaction control).
    pub fn batch(&mut self, sql: &str) -> Result<(), StoreError> {
        let done = self.client()?.batch_execute(sql);
        done.map_err(|e| self.fail(e))
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
        out: &mut postgres::types::private::BytesMut,
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

fn pg_row(r: &postgres::Row) -> Result<Row, postgres::Error> {
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

impl Db for Pg {
    /// Outside a transaction every query the store makes is a read, tried
    /// again on a new connection when the old one turns out closed.
    fn query(&mut self, sql: &str, params: &[Val]) -> Result<Vec<Row>, StoreError> {
        let p: Vec<&(dyn ToSql + Sync)> = params.iter().map(|v| v as _).collect();
        let rows = self.again(|pg| pg.query_with(sql, &p))?;
        rows.iter()
            .map(pg_row)
            .collect::<Result<_, _>>()
            .map_err(|e| self.fail(e))
    }

    fn execute(&mut self, sql: &str, params: &[Val]) -> Result<u64, StoreError> {
        let st = self.statement(sql)?;
        let p: Vec<&(dyn ToSql + Sync)> = params.iter().map(|v| v as _).collect();
        let n = self.client()?.execute(&st, &p);
        n.map_err(|e| self.fail(e))
    }

    fn begin_write(&mut self) -> Result<(), StoreError> {
        let begun = self.again(|pg| {
            // Exclusive: every lane commit takes this lock shared
            // (`schema::PG_WRITERS_LOCK`), so none is in flight meanwhile.
            let done = pg.batch(&format!(
                "BEGIN; SELECT pg_advisory_xact_lock({}); \
                 SELECT 1 FROM p11derive_meta WHERE id = 1 FOR UPDATE",
                super::schema::PG_WRITERS_LOCK
            ));
            if done.is_err() && pg.client.is_some() {
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
