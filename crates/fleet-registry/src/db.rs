//! One small SQL surface over the two stores (SQLite embedded, PostgreSQL for several fleet
//! processes): the registry's statements are written once, in the portable subset both run,
//! with `?N` placeholders; for PostgreSQL they become `$N`. Values cross as [`Value`] (NULL,
//! 64-bit integer, text, bytes) so each statement binds and reads the same way on both.
//!
//! The method names follow rusqlite's so the registry code reads as before.

use std::cell::RefCell;

/// A bound or read value: the only types the schema uses (BIGINT, TEXT, and bytes).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{}", pg_message(.0))]
    Pg(#[from] postgres::Error),
    #[error("the query returned no rows")]
    NoRows,
    #[error("column {index}: {message}")]
    Type { index: usize, message: String },
}

fn pg_message(e: &postgres::Error) -> String {
    // The server's own message (with its detail) says more than the client's summary.
    match e.as_db_error() {
        Some(d) => match d.detail() {
            Some(detail) => format!("{} ({detail})", d.message()),
            None => d.message().to_string(),
        },
        None => e.to_string(),
    }
}

impl DbError {
    /// A PostgreSQL conflict between concurrent transactions that a retry resolves:
    /// serialization failure, deadlock, or a unique key another transaction just took.
    pub(crate) fn is_retryable(&self) -> bool {
        use postgres::error::SqlState;
        match self {
            DbError::Pg(e) => matches!(
                e.code(),
                Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE
                    || *c == SqlState::T_R_DEADLOCK_DETECTED
                    || *c == SqlState::UNIQUE_VIOLATION
            ),
            _ => false,
        }
    }
}

pub type DbResult<T> = std::result::Result<T, DbError>;

/// `rusqlite::OptionalExtension` for [`DbResult`].
pub trait OptionalExtension<T> {
    fn optional(self) -> DbResult<Option<T>>;
}

impl<T> OptionalExtension<T> for DbResult<T> {
    fn optional(self) -> DbResult<Option<T>> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(DbError::NoRows) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

pub trait ToValue {
    fn to_value(&self) -> Value;
}

impl ToValue for str {
    fn to_value(&self) -> Value {
        Value::Text(self.to_string())
    }
}
impl ToValue for String {
    fn to_value(&self) -> Value {
        Value::Text(self.clone())
    }
}
impl ToValue for [u8] {
    fn to_value(&self) -> Value {
        Value::Blob(self.to_vec())
    }
}
impl ToValue for Vec<u8> {
    fn to_value(&self) -> Value {
        Value::Blob(self.clone())
    }
}
impl ToValue for bool {
    fn to_value(&self) -> Value {
        Value::Int(*self as i64)
    }
}
macro_rules! int_to_value {
    ($($t:ty),*) => {$(
        impl ToValue for $t {
            fn to_value(&self) -> Value {
                Value::Int(*self as i64)
            }
        }
    )*};
}
int_to_value!(i64, i32, u32, u8, usize);
impl<T: ToValue + ?Sized> ToValue for &T {
    fn to_value(&self) -> Value {
        (**self).to_value()
    }
}
impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> Value {
        match self {
            Some(v) => v.to_value(),
            None => Value::Null,
        }
    }
}

/// Statement parameters: `[a, b]` of one type, `params![a, b, …]` of mixed types, or `[]`.
pub trait Params {
    fn values(&self) -> Vec<Value>;
}

impl Params for [&dyn ToValue; 0] {
    fn values(&self) -> Vec<Value> {
        vec![]
    }
}
impl Params for &[&dyn ToValue] {
    fn values(&self) -> Vec<Value> {
        self.iter().map(|v| v.to_value()).collect()
    }
}
macro_rules! array_params {
    ($($n:literal),*) => {$(
        impl<T: ToValue> Params for [T; $n] {
            fn values(&self) -> Vec<Value> {
                self.iter().map(|v| v.to_value()).collect()
            }
        }
    )*};
}
array_params!(1, 2, 3, 4, 5, 6, 7, 8);

#[macro_export]
#[doc(hidden)]
macro_rules! __db_params {
    ($($v:expr),* $(,)?) => {
        &[$(&$v as &dyn $crate::db::ToValue),*] as &[&dyn $crate::db::ToValue]
    };
}
pub(crate) use crate::__db_params as params;

pub trait FromValue: Sized {
    fn from_value(v: &Value) -> Result<Self, String>;
}

impl FromValue for i64 {
    fn from_value(v: &Value) -> Result<Self, String> {
        match v {
            Value::Int(i) => Ok(*i),
            other => Err(format!("expected an integer, found {other:?}")),
        }
    }
}
impl FromValue for u32 {
    fn from_value(v: &Value) -> Result<Self, String> {
        let i = i64::from_value(v)?;
        u32::try_from(i).map_err(|_| format!("{i} is out of range"))
    }
}
impl FromValue for bool {
    fn from_value(v: &Value) -> Result<Self, String> {
        Ok(i64::from_value(v)? != 0)
    }
}
impl FromValue for String {
    fn from_value(v: &Value) -> Result<Self, String> {
        match v {
            Value::Text(s) => Ok(s.clone()),
            other => Err(format!("expected text, found {other:?}")),
        }
    }
}
impl FromValue for Vec<u8> {
    fn from_value(v: &Value) -> Result<Self, String> {
        match v {
            Value::Blob(b) => Ok(b.clone()),
            Value::Text(s) => Ok(s.as_bytes().to_vec()),
            other => Err(format!("expected bytes, found {other:?}")),
        }
    }
}
impl<T: FromValue> FromValue for Option<T> {
    fn from_value(v: &Value) -> Result<Self, String> {
        match v {
            Value::Null => Ok(None),
            v => T::from_value(v).map(Some),
        }
    }
}

/// A column position (only `usize`, so integer literals infer to it).
pub trait RowIndex {
    fn index(self) -> usize;
}
impl RowIndex for usize {
    fn index(self) -> usize {
        self
    }
}

/// One result row, read out of the driver.
#[derive(Debug)]
pub struct Row(Vec<Value>);

impl Row {
    pub fn get<I: RowIndex, T: FromValue>(&self, index: I) -> DbResult<T> {
        let index = index.index();
        let v = self.0.get(index).ok_or_else(|| DbError::Type {
            index,
            message: "no such column".into(),
        })?;
        T::from_value(v).map_err(|message| DbError::Type { index, message })
    }
}

/// The rows of a query, walked with `next()` as rusqlite's are.
pub struct Rows {
    rows: std::vec::IntoIter<Row>,
    current: Option<Row>,
}

impl Rows {
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> DbResult<Option<&Row>> {
        self.current = self.rows.next();
        Ok(self.current.as_ref())
    }
}

/// An open transaction on either store.
pub enum Transaction<'a> {
    Sqlite(rusqlite::Transaction<'a>),
    Pg(RefCell<postgres::Transaction<'a>>),
}

pub struct Statement<'t, 'a> {
    tx: &'t Transaction<'a>,
    sql: String,
}

impl Statement<'_, '_> {
    pub fn query<P: Params>(&mut self, params: P) -> DbResult<Rows> {
        let rows = self.tx.rows(&self.sql, params.values())?;
        Ok(Rows {
            rows: rows.into_iter(),
            current: None,
        })
    }

    pub fn query_map<P: Params, T>(
        &mut self,
        params: P,
        f: impl FnMut(&Row) -> DbResult<T>,
    ) -> DbResult<std::vec::IntoIter<DbResult<T>>> {
        let rows = self.tx.rows(&self.sql, params.values())?;
        Ok(rows.iter().map(f).collect::<Vec<_>>().into_iter())
    }
}

impl<'a> Transaction<'a> {
    pub fn execute<P: Params>(&self, sql: &str, params: P) -> DbResult<usize> {
        let values = params.values();
        match self {
            Transaction::Sqlite(tx) => Ok(tx.execute(
                sql,
                rusqlite::params_from_iter(values.iter().map(sqlite_value)),
            )?),
            Transaction::Pg(tx) => {
                let refs = pg_refs(&values);
                Ok(tx.borrow_mut().execute(pg_sql(sql).as_str(), &refs)? as usize)
            }
        }
    }

    pub fn query_row<P: Params, T>(
        &self,
        sql: &str,
        params: P,
        f: impl FnOnce(&Row) -> DbResult<T>,
    ) -> DbResult<T> {
        let rows = self.rows(sql, params.values())?;
        f(rows.first().ok_or(DbError::NoRows)?)
    }

    pub fn prepare<'t>(&'t self, sql: &str) -> DbResult<Statement<'t, 'a>> {
        Ok(Statement {
            tx: self,
            sql: sql.to_string(),
        })
    }

    /// Runs several statements (no parameters), e.g. a migration.
    pub fn execute_batch(&self, sql: &str) -> DbResult<()> {
        match self {
            Transaction::Sqlite(tx) => Ok(tx.execute_batch(sql)?),
            Transaction::Pg(tx) => Ok(tx.borrow_mut().batch_execute(sql)?),
        }
    }

    pub fn commit(self) -> DbResult<()> {
        match self {
            Transaction::Sqlite(tx) => Ok(tx.commit()?),
            Transaction::Pg(tx) => Ok(tx.into_inner().commit()?),
        }
    }

    fn rows(&self, sql: &str, values: Vec<Value>) -> DbResult<Vec<Row>> {
        match self {
            Transaction::Sqlite(tx) => {
                let mut stmt = tx.prepare_cached(sql)?;
                let n = stmt.column_count();
                let mut rows =
                    stmt.query(rusqlite::params_from_iter(values.iter().map(sqlite_value)))?;
                let mut out = Vec::new();
                while let Some(r) = rows.next()? {
                    let mut row = Vec::with_capacity(n);
                    for i in 0..n {
                        use rusqlite::types::ValueRef;
                        row.push(match r.get_ref(i)? {
                            ValueRef::Null => Value::Null,
                            ValueRef::Integer(i) => Value::Int(i),
                            ValueRef::Real(f) => Value::Int(f as i64),
                            ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into()),
                            ValueRef::Blob(b) => Value::Blob(b.to_vec()),
                        });
                    }
                    out.push(Row(row));
                }
                Ok(out)
            }
            Transaction::Pg(tx) => {
                let refs = pg_refs(&values);
                let rows = tx.borrow_mut().query(pg_sql(sql).as_str(), &refs)?;
                rows.iter().map(pg_row).collect()
            }
        }
    }
}

fn sqlite_value(v: &Value) -> rusqlite::types::Value {
    use rusqlite::types::Value as V;
    match v {
        Value::Null => V::Null,
        Value::Int(i) => V::Integer(*i),
        Value::Text(s) => V::Text(s.clone()),
        Value::Blob(b) => V::Blob(b.clone()),
    }
}

/// `?N` → `$N` (the registry writes no `?` inside string literals).
pub(crate) fn pg_sql(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(|d| d.is_ascii_digit()) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

fn pg_refs(values: &[Value]) -> Vec<&(dyn postgres::types::ToSql + Sync)> {
    values
        .iter()
        .map(|v| v as &(dyn postgres::types::ToSql + Sync))
        .collect()
}

fn pg_row(r: &postgres::Row) -> DbResult<Row> {
    use postgres::types::Type;
    let mut row = Vec::with_capacity(r.len());
    for (i, col) in r.columns().iter().enumerate() {
        let t = col.type_();
        let v = if *t == Type::VOID {
            None
        } else if *t == Type::INT8 {
            r.try_get::<_, Option<i64>>(i)?.map(Value::Int)
        } else if *t == Type::INT4 {
            r.try_get::<_, Option<i32>>(i)?
                .map(|v| Value::Int(v.into()))
        } else if *t == Type::INT2 {
            r.try_get::<_, Option<i16>>(i)?
                .map(|v| Value::Int(v.into()))
        } else if *t == Type::BOOL {
            r.try_get::<_, Option<bool>>(i)?
                .map(|v| Value::Int(v.into()))
        } else if *t == Type::BYTEA {
            r.try_get::<_, Option<Vec<u8>>>(i)?.map(Value::Blob)
        } else if [Type::TEXT, Type::VARCHAR, Type::BPCHAR, Type::NAME].contains(t) {
            r.try_get::<_, Option<String>>(i)?.map(Value::Text)
        } else {
            return Err(DbError::Type {
                index: i,
                message: format!("column type {t} is not one the registry reads"),
            });
        };
        row.push(v.unwrap_or(Value::Null));
    }
    Ok(Row(row))
}

impl postgres::types::ToSql for Value {
    fn to_sql(
        &self,
        ty: &postgres::types::Type,
        out: &mut postgres::types::private::BytesMut,
    ) -> std::result::Result<postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>>
    {
        use postgres::types::{IsNull, Type};
        match self {
            Value::Null => Ok(IsNull::Yes),
            // The server infers each parameter's type from the statement: encode to it.
            Value::Int(i) if *ty == Type::INT8 => i.to_sql(ty, out),
            Value::Int(i) if *ty == Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
            Value::Int(i) if *ty == Type::INT2 => i16::try_from(*i)?.to_sql(ty, out),
            Value::Int(i) if *ty == Type::BOOL => (*i != 0).to_sql(ty, out),
            Value::Int(i) => i.to_string().to_sql(ty, out),
            Value::Text(s) => s.to_sql(ty, out),
            Value::Blob(b) => b.to_sql(ty, out),
        }
    }

    fn accepts(_: &postgres::types::Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}
