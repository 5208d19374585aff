//! Public token objects stored beside the derived keys: certificates and data objects.

use crate::audit::Record;
use crate::types::Secret32;

use super::db::{Row, Tx, Val};
use super::{first, now, Store, StoreError, Stored};

/// A public token object as stored: a certificate or a data object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    /// The row id: never reused (AUTOINCREMENT), so handles stay unique.
    pub rowid: i64,
    /// `CKO_CERTIFICATE` or `CKO_DATA`.
    pub class: crate::ck::CK_OBJECT_CLASS,
    pub label: Vec<u8>,
    /// `CKA_ID` (certificates; empty for data objects).
    pub object_id: Vec<u8>,
    pub value: Vec<u8>,
    /// `CKA_APPLICATION` and `CKA_OBJECT_ID` of a data object.
    pub application: Option<Vec<u8>>,
    pub oid: Option<Vec<u8>>,
}

impl Stored for StoredObject {
    const TABLE: &'static str = "objects";
    const COLUMNS: &'static str = "id, class, label, object_id, value, application, oid";

    fn read(r: &Row) -> Result<StoredObject, String> {
        Ok(StoredObject {
            rowid: r.int(0)?,
            class: r.int(1)? as crate::ck::CK_OBJECT_CLASS,
            label: r.blob(2)?,
            object_id: r.blob(3)?,
            value: r.blob(4)?,
            application: r.opt_blob(5)?,
            oid: r.opt_blob(6)?,
        })
    }
}

impl Store {
    /// Stores a public token object and appends its record, atomically.
    pub fn create_object(
        &self,
        new: &StoredObject,
        ak: &Secret32,
        mut record: Record,
    ) -> Result<StoredObject, StoreError> {
        let mut conn = self.lock();
        let mut tx = Tx::begin(&mut **conn)?;
        let rowid = self
            .rows(
                &mut *tx,
                "INSERT INTO objects (class, label, object_id, value, application, oid, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) RETURNING id",
                &[
                    Val::Int(new.class as i64),
                    new.label.as_slice().into(),
                    new.object_id.as_slice().into(),
                    new.value.as_slice().into(),
                    new.application.clone().into(),
                    new.oid.clone().into(),
                    now().into(),
                ],
                |r| r.int(0),
            )
            .map(first)?
            .ok_or_else(|| StoreError::Io(self.path.clone(), "no id for the new object".into()))?;
        record.detail = format!("{} (object {rowid})", record.detail);
        let head = self.append_in(&mut *tx, ak, std::slice::from_mut(&mut record))?;
        self.commit_at(tx, head)?;
        Ok(StoredObject {
            rowid,
            ..new.clone()
        })
    }

    /// Deletes a stored object and appends its record, atomically; `false`
    /// when it no longer exists.
    pub fn destroy_object(
        &self,
        rowid: i64,
        ak: &Secret32,
        mut record: Record,
    ) -> Result<bool, StoreError> {
        let mut conn = self.lock();
        let mut tx = Tx::begin(&mut **conn)?;
        let gone = tx.execute("DELETE FROM objects WHERE id = ?1", &[rowid.into()])?;
        if gone == 0 {
            return Ok(false);
        }
        let head = self.append_in(&mut *tx, ak, std::slice::from_mut(&mut record))?;
        self.commit_at(tx, head)?;
        Ok(true)
    }

    /// One stored object.
    pub fn stored_object(&self, rowid: i64) -> Result<Option<StoredObject>, StoreError> {
        let mut conn = self.lock();
        self.select(&mut **conn, "WHERE id = ?1", &[rowid.into()])
            .map(first)
    }

    /// Every stored object, oldest first.
    pub fn stored_objects(&self) -> Result<Vec<StoredObject>, StoreError> {
        let mut conn = self.lock();
        self.select(&mut **conn, "ORDER BY id", &[])
    }
}
