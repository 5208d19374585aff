//! The engine interface the store's logic is written over once: [`Db`], [`Tx`], [`Val`], [`Row`].
//!
//! Statements are in the SQL both engines (`sqlite`: one file, the default;
//! `pg`: many hosts) accept, with `?N` placeholders.

use super::StoreError;

/// A value bound to a statement or read from a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Val {
    Null,
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
}

impl From<i64> for Val {
    fn from(v: i64) -> Val {
        Val::Int(v)
    }
}

impl From<u32> for Val {
    fn from(v: u32) -> Val {
        Val::Int(v.into())
    }
}

impl From<&str> for Val {
    fn from(v: &str) -> Val {
        Val::Text(v.to_string())
    }
}

impl From<&[u8]> for Val {
    fn from(v: &[u8]) -> Val {
        Val::Blob(v.to_vec())
    }
}

impl From<Vec<u8>> for Val {
    fn from(v: Vec<u8>) -> Val {
        Val::Blob(v)
    }
}

impl<T: Into<Val>> From<Option<T>> for Val {
    fn from(v: Option<T>) -> Val {
        v.map_or(Val::Null, Into::into)
    }
}

/// One row read. A value of the wrong kind is an error naming the column:
/// never coerced into something a check might accept.
#[derive(Debug)]
pub struct Row(pub Vec<Val>);

type Cell<T> = Result<T, String>;

impl Row {
    fn at(&self, i: usize) -> Cell<&Val> {
        self.0
            .get(i)
            .ok_or_else(|| format!("a row without column {i}"))
    }

    pub fn opt_int(&self, i: usize) -> Cell<Option<i64>> {
        match self.at(i)? {
            Val::Null => Ok(None),
            Val::Int(v) => Ok(Some(*v)),
            v => Err(format!("column {i} holds {v:?} where a number belongs")),
        }
    }

    pub fn int(&self, i: usize) -> Cell<i64> {
        self.opt_int(i)?
            .ok_or_else(|| format!("column {i} is NULL where a number belongs"))
    }

    pub fn opt_u32(&self, i: usize) -> Cell<Option<u32>> {
        self.opt_int(i)?
            .map(|v| u32::try_from(v).map_err(|_| format!("column {i} holds {v}, out of range")))
            .transpose()
    }

    pub fn u32(&self, i: usize) -> Cell<u32> {
        self.opt_u32(i)?
            .ok_or_else(|| format!("column {i} is NULL where a number belongs"))
    }

    pub fn opt_text(&self, i: usize) -> Cell<Option<String>> {
        match self.at(i)? {
            Val::Null => Ok(None),
            Val::Text(v) => Ok(Some(v.clone())),
            v => Err(format!("column {i} holds {v:?} where text belongs")),
        }
    }

    pub fn text(&self, i: usize) -> Cell<String> {
        self.opt_text(i)?
            .ok_or_else(|| format!("column {i} is NULL where text belongs"))
    }

    pub fn opt_blob(&self, i: usize) -> Cell<Option<Vec<u8>>> {
        match self.at(i)? {
            Val::Null => Ok(None),
            Val::Blob(v) => Ok(Some(v.clone())),
            v => Err(format!("column {i} holds {v:?} where bytes belong")),
        }
    }

    pub fn blob(&self, i: usize) -> Cell<Vec<u8>> {
        self.opt_blob(i)?
            .ok_or_else(|| format!("column {i} is NULL where bytes belong"))
    }
}

/// A connection to the store's database.
pub trait Db: Send {
    /// The rows of a query.
    fn query(&mut self, sql: &str, params: &[Val]) -> Result<Vec<Row>, StoreError>;
    /// Runs a statement; the rows it changed.
    fn execute(&mut self, sql: &str, params: &[Val]) -> Result<u64, StoreError>;
    /// Starts a write transaction: one writer at a time, across processes
    /// (and, on PostgreSQL, hosts).
    fn begin_write(&mut self) -> Result<(), StoreError>;
    fn commit(&mut self) -> Result<(), StoreError>;
    /// Abandons the transaction (nothing of it is kept).
    fn rollback(&mut self);
    /// The PostgreSQL connection, for its one-round-trip commit.
    fn as_pg(&mut self) -> Option<&mut super::pg::Pg> {
        None
    }
}

/// A write transaction: rolled back unless committed.
pub struct Tx<'a> {
    db: &'a mut (dyn Db + 'static),
    open: bool,
}

impl<'a> Tx<'a> {
    pub fn begin(db: &'a mut (dyn Db + 'static)) -> Result<Tx<'a>, StoreError> {
        db.begin_write()?;
        Ok(Tx { db, open: true })
    }

    pub fn commit(mut self) -> Result<(), StoreError> {
        self.open = false;
        self.db.commit()
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if self.open {
            self.db.rollback();
        }
    }
}

impl std::ops::Deref for Tx<'_> {
    type Target = dyn Db + 'static;
    fn deref(&self) -> &Self::Target {
        self.db
    }
}

impl std::ops::DerefMut for Tx<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.db
    }
}
