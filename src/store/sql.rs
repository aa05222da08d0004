//! The store's statements over two databases, without a thread hop per statement on SQLite.
//!
//! SQLite: a rusqlite connection owned by the writer's own OS thread; each group of
//! operations runs there under `futures::executor::block_on`, and since every statement
//! completes synchronously, an operation costs one hand-over (the job in, the answer out),
//! not two wake-ups per statement. Postgres: a sqlx `PgConnection` from a pool.
//!
//! The face mirrors the part of sqlx the store uses, so that the operations stay written
//! once: `query(sql).bind(v).execute(c) / fetch_optional / fetch_one / fetch_all`,
//! `Row::try_get(name)`, `Conn::begin()` → `Tx` (BEGIN, or a savepoint inside a
//! transaction), `Tx::commit()`; dropped uncommitted, a `Tx` rolls back (at once on
//! SQLite; before the next statement on Postgres, as sqlx does).
//!
//! Placeholders stay `$N`: SQLite reads `$1` as a parameter *named* "$1", so arguments are
//! bound by the number in each parameter's name (`parameter_name(i)`), not by position.

use std::borrow::Cow;
use std::sync::Arc;

use futures::future::BoxFuture;

use super::StoreError;

/// A value bound to a statement or read from a row. A NULL keeps its type: Postgres wants
/// a typed parameter even for NULL.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null(Kind),
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Int,
    Real,
    Text,
    Blob,
}

pub trait Encode {
    const KIND: Kind;
    fn encode(self) -> Value;
}

impl Encode for i64 {
    const KIND: Kind = Kind::Int;
    fn encode(self) -> Value {
        Value::Int(self)
    }
}
impl Encode for i32 {
    const KIND: Kind = Kind::Int;
    fn encode(self) -> Value {
        Value::Int(self.into())
    }
}
impl Encode for bool {
    const KIND: Kind = Kind::Int;
    fn encode(self) -> Value {
        Value::Int(self.into())
    }
}
impl Encode for f64 {
    const KIND: Kind = Kind::Real;
    fn encode(self) -> Value {
        Value::Real(self)
    }
}
impl Encode for String {
    const KIND: Kind = Kind::Text;
    fn encode(self) -> Value {
        Value::Text(self)
    }
}
impl Encode for &str {
    const KIND: Kind = Kind::Text;
    fn encode(self) -> Value {
        Value::Text(self.to_owned())
    }
}
impl<T: Encode + Clone> Encode for &T {
    const KIND: Kind = T::KIND;
    fn encode(self) -> Value {
        self.clone().encode()
    }
}
impl Encode for Vec<u8> {
    const KIND: Kind = Kind::Blob;
    fn encode(self) -> Value {
        Value::Blob(self)
    }
}
impl Encode for &[u8] {
    const KIND: Kind = Kind::Blob;
    fn encode(self) -> Value {
        Value::Blob(self.to_vec())
    }
}
impl<T: Encode> Encode for Option<T> {
    const KIND: Kind = T::KIND;
    fn encode(self) -> Value {
        self.map_or(Value::Null(T::KIND), Encode::encode)
    }
}

pub trait Decode: Sized {
    fn decode(v: &Value) -> Option<Self>;
}
impl Decode for i64 {
    fn decode(v: &Value) -> Option<Self> {
        match v {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
}
impl Decode for bool {
    fn decode(v: &Value) -> Option<Self> {
        i64::decode(v).map(|i| i != 0)
    }
}
impl Decode for f64 {
    fn decode(v: &Value) -> Option<Self> {
        match v {
            Value::Real(r) => Some(*r),
            Value::Int(i) => Some(*i as f64),
            _ => None,
        }
    }
}
impl Decode for String {
    fn decode(v: &Value) -> Option<Self> {
        match v {
            Value::Text(s) => Some(s.clone()),
            _ => None,
        }
    }
}
impl Decode for Vec<u8> {
    fn decode(v: &Value) -> Option<Self> {
        match v {
            Value::Blob(b) => Some(b.clone()),
            _ => None,
        }
    }
}
impl<T: Decode> Decode for Option<T> {
    fn decode(v: &Value) -> Option<Self> {
        match v {
            Value::Null(_) => Some(None),
            other => T::decode(other).map(Some),
        }
    }
}

/// `count` placeholders numbered on from `$first`, for an `IN` list: `$3, $4, $5`.
pub fn placeholder_list(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `rows` rows of `per_row` placeholders each, numbered on from `$1`, for a multi-row
/// `VALUES`: `($1, $2), ($3, $4)`.
pub fn placeholder_rows(rows: usize, per_row: usize) -> String {
    (0..rows)
        .map(|row| {
            let values = (1..=per_row)
                .map(|i| format!("${}", row * per_row + i))
                .collect::<Vec<_>>()
                .join(", ");
            format!("({values})")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A row, its columns read by name (every expression a statement returns has one).
#[derive(Debug, Clone)]
pub struct Row {
    names: Arc<[String]>,
    values: Vec<Value>,
}

impl Row {
    pub fn try_get<T: Decode>(&self, name: &str) -> Result<T, StoreError> {
        let i = self
            .names
            .iter()
            .position(|n| n == name)
            .ok_or_else(|| StoreError::NoColumn(name.to_owned()))?;
        T::decode(&self.values[i]).ok_or_else(|| StoreError::ColumnType {
            column: name.to_owned(),
            value: format!("{:?}", self.values[i]),
        })
    }
}

/// What a statement that returns no rows did.
pub struct Done {
    rows_affected: u64,
}

impl Done {
    pub fn rows_affected(&self) -> u64 {
        self.rows_affected
    }
}

pub struct Query<'q> {
    sql: Cow<'q, str>,
    args: Vec<Value>,
    /// Kept prepared on the connection (Postgres), see [`Query::once`].
    kept: bool,
}

pub fn query<'q>(sql: impl Into<Cow<'q, str>>) -> Query<'q> {
    Query {
        sql: sql.into(),
        args: Vec::new(),
        kept: true,
    }
}

impl<'q> Query<'q> {
    pub fn bind<T: Encode>(mut self, value: T) -> Self {
        self.args.push(value.encode());
        self
    }

    /// A statement whose text is made for this use (as many rows as a batch has subjects to
    /// lock, say): Postgres plans it each time rather than keep one more prepared statement
    /// on the connection, where it would push out those of every call. (SQLite keeps it in
    /// its cache like any.)
    pub fn once(mut self) -> Self {
        self.kept = false;
        self
    }

    pub async fn execute(self, c: &mut Conn) -> Result<Done, StoreError> {
        let (_, rows_affected) = c.run(&self.sql, &self.args, false, self.kept).await?;
        Ok(Done { rows_affected })
    }

    pub async fn fetch_all(self, c: &mut Conn) -> Result<Vec<Row>, StoreError> {
        Ok(c.run(&self.sql, &self.args, true, self.kept).await?.0)
    }

    pub async fn fetch_optional(self, c: &mut Conn) -> Result<Option<Row>, StoreError> {
        Ok(self.fetch_all(c).await?.into_iter().next())
    }

    /// Run an INSERT into a table keyed by an integer `id`: the new row's id. Postgres
    /// returns it (`RETURNING id`); SQLite's connection knows it, which spares the temporary
    /// table SQLite builds for a RETURNING clause.
    pub async fn insert_id(self, c: &mut Conn) -> Result<i64, StoreError> {
        c.insert_id(&self.sql, &self.args).await
    }

    pub async fn fetch_one(self, c: &mut Conn) -> Result<Row, StoreError> {
        self.fetch_optional(c).await?.ok_or(StoreError::NoRow)
    }
}

/// A connection of either database, with its transaction depth.
pub struct Conn {
    db: Db,
    depth: usize,
    /// Postgres: the depth to roll back to before the next statement (a dropped `Tx`).
    rollback_to: Option<usize>,
}

enum Db {
    Sqlite(rusqlite::Connection),
    Postgres(sqlx::pool::PoolConnection<sqlx::Postgres>),
}

impl Conn {
    pub fn sqlite(db: rusqlite::Connection) -> Self {
        Self {
            db: Db::Sqlite(db),
            depth: 0,
            rollback_to: None,
        }
    }

    pub fn postgres(conn: sqlx::pool::PoolConnection<sqlx::Postgres>) -> Self {
        Self {
            db: Db::Postgres(conn),
            depth: 0,
            rollback_to: None,
        }
    }

    /// The sqlx connection of a Postgres store (its migrations).
    pub fn as_postgres(&mut self) -> Option<&mut sqlx::PgConnection> {
        match &mut self.db {
            Db::Postgres(pg) => Some(&mut **pg),
            Db::Sqlite(_) => None,
        }
    }

    /// Whether this is a Postgres connection: for the few operations that say in one
    /// Postgres statement (a data-modifying `WITH`) what SQLite needs several for.
    pub fn is_postgres(&self) -> bool {
        matches!(self.db, Db::Postgres(_))
    }

    /// After an operation: a transaction it dropped is rolled back before the connection
    /// goes back to the pool.
    pub async fn settle(&mut self) -> Result<(), StoreError> {
        if let Some(depth) = self.rollback_to.take() {
            self.rollback(depth).await?;
        }
        Ok(())
    }

    async fn run(
        &mut self,
        sql: &str,
        args: &[Value],
        rows: bool,
        kept: bool,
    ) -> Result<(Vec<Row>, u64), StoreError> {
        self.settle().await?;
        match &mut self.db {
            Db::Sqlite(db) => sqlite_run(db, sql, args, rows),
            Db::Postgres(pg) => postgres_run(pg, sql, args, rows, kept).await,
        }
    }

    async fn insert_id(&mut self, sql: &str, args: &[Value]) -> Result<i64, StoreError> {
        self.settle().await?;
        match &mut self.db {
            Db::Sqlite(db) => {
                sqlite_run(db, sql, args, false)?;
                Ok(db.last_insert_rowid())
            }
            Db::Postgres(pg) => {
                let sql = format!("{sql} RETURNING id");
                let (rows, _) = postgres_run(pg, &sql, args, true, true).await?;
                rows.first().ok_or(StoreError::NoRow)?.try_get("id")
            }
        }
    }

    /// Whether a transaction is open (SQLite may have rolled it back on its own).
    pub fn in_transaction(&self) -> bool {
        match &self.db {
            Db::Sqlite(db) => !db.is_autocommit(),
            Db::Postgres(_) => self.depth > 0,
        }
    }

    /// BEGIN, or a savepoint inside a transaction.
    pub async fn begin(&mut self) -> Result<Tx<'_>, StoreError> {
        match self.depth {
            0 => self.begin_with("BEGIN").await,
            n => self.begin_with(&format!("SAVEPOINT sp{n}")).await,
        }
    }

    /// A transaction begun by `sql` (`BEGIN IMMEDIATE`, say), or a savepoint inside one.
    pub async fn begin_with(&mut self, sql: &str) -> Result<Tx<'_>, StoreError> {
        self.run(sql, &[], false, true).await?;
        self.depth += 1;
        Ok(Tx {
            conn: self,
            done: false,
        })
    }

    async fn rollback(&mut self, to: usize) -> Result<(), StoreError> {
        self.depth = to;
        let sql = rollback_sql(to);
        match &mut self.db {
            Db::Sqlite(db) => db.execute_batch(&sql).map_err(StoreError::from),
            Db::Postgres(pg) => {
                for statement in sql.split("; ") {
                    postgres_run(pg, statement, &[], false, true).await?;
                }
                Ok(())
            }
        }
    }
}

impl Drop for Conn {
    /// A Postgres connection left inside a transaction (its operation was cancelled) is
    /// closed, not put back in the pool.
    fn drop(&mut self) {
        if let Db::Postgres(pg) = &mut self.db {
            if self.depth > 0 || self.rollback_to.is_some() {
                pg.close_on_drop();
            }
        }
    }
}

/// What undoes the transaction begun at depth `to`.
fn rollback_sql(to: usize) -> String {
    match to {
        0 => "ROLLBACK".to_owned(),
        n => format!("ROLLBACK TO sp{n}; RELEASE sp{n}"),
    }
}

pub struct Tx<'c> {
    conn: &'c mut Conn,
    done: bool,
}

impl std::ops::Deref for Tx<'_> {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        self.conn
    }
}

impl std::ops::DerefMut for Tx<'_> {
    fn deref_mut(&mut self) -> &mut Conn {
        self.conn
    }
}

impl Tx<'_> {
    pub async fn commit(mut self) -> Result<(), StoreError> {
        let depth = self.conn.depth - 1;
        let sql = match depth {
            0 => "COMMIT".to_owned(),
            n => format!("RELEASE sp{n}"),
        };
        self.conn.run(&sql, &[], false, true).await?;
        self.conn.depth = depth;
        self.done = true;
        Ok(())
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let depth = self.conn.depth - 1;
        match &mut self.conn.db {
            Db::Sqlite(db) => {
                // A failed rollback leaves the writer's group to fail at its COMMIT.
                let _ = db.execute_batch(&rollback_sql(depth));
                self.conn.depth = depth;
            }
            Db::Postgres(_) => self.conn.rollback_to = Some(depth),
        }
    }
}

fn sqlite_run(
    db: &rusqlite::Connection,
    sql: &str,
    args: &[Value],
    rows: bool,
) -> Result<(Vec<Row>, u64), StoreError> {
    use rusqlite::types::{ToSqlOutput, ValueRef};
    let mut stmt = db.prepare_cached(sql)?;
    for i in 1..=stmt.parameter_count() {
        // `$N` → argument N.
        let n: usize = stmt
            .parameter_name(i)
            .and_then(|name| name.trim_start_matches(['$', '?']).parse().ok())
            .unwrap_or(i);
        // Borrowed: SQLite takes its own copy as it binds.
        let value = match &args[n - 1] {
            Value::Null(_) => ValueRef::Null,
            Value::Int(v) => ValueRef::Integer(*v),
            Value::Real(v) => ValueRef::Real(*v),
            Value::Text(v) => ValueRef::Text(v.as_bytes()),
            Value::Blob(v) => ValueRef::Blob(v),
        };
        stmt.raw_bind_parameter(i, ToSqlOutput::Borrowed(value))?;
    }
    // A statement that writes nothing changed nothing, whatever the last write changed.
    let writes = !stmt.readonly();
    // The column names only when the rows are wanted: most statements of a call write.
    let names: Option<Arc<[String]>> =
        rows.then(|| stmt.column_names().iter().map(|n| n.to_string()).collect());
    let mut out = Vec::new();
    let mut raw = stmt.raw_query();
    while let Some(r) = raw.next()? {
        let Some(names) = &names else {
            continue;
        };
        let mut values = Vec::with_capacity(names.len());
        for i in 0..names.len() {
            values.push(match r.get_ref(i)? {
                ValueRef::Null => Value::Null(Kind::Int),
                ValueRef::Integer(v) => Value::Int(v),
                ValueRef::Real(v) => Value::Real(v),
                ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
                ValueRef::Blob(b) => Value::Blob(b.to_vec()),
            });
        }
        out.push(Row {
            names: names.clone(),
            values,
        });
    }
    drop(raw);
    Ok((out, if writes { db.changes() } else { 0 }))
}

/// Boxed: sqlx's futures are Send only for their own lifetimes, which the store's
/// higher-ranked operations cannot name.
fn postgres_run<'a>(
    pg: &'a mut sqlx::PgConnection,
    sql: &'a str,
    args: &'a [Value],
    rows: bool,
    kept: bool,
) -> BoxFuture<'a, Result<(Vec<Row>, u64), StoreError>> {
    Box::pin(postgres_rows(pg, sql, args, rows, kept))
}

async fn postgres_rows(
    pg: &mut sqlx::PgConnection,
    sql: &str,
    args: &[Value],
    rows: bool,
    kept: bool,
) -> Result<(Vec<Row>, u64), StoreError> {
    use sqlx::{Column, Row as _, TypeInfo, ValueRef};
    let mut q = sqlx::query(sql).persistent(kept);
    for a in args {
        q = match a {
            Value::Null(Kind::Int) => q.bind(None::<i64>),
            Value::Null(Kind::Real) => q.bind(None::<f64>),
            Value::Null(Kind::Text) => q.bind(None::<String>),
            Value::Null(Kind::Blob) => q.bind(None::<Vec<u8>>),
            Value::Int(v) => q.bind(*v),
            Value::Real(v) => q.bind(*v),
            Value::Text(v) => q.bind(v.clone()),
            Value::Blob(v) => q.bind(v.clone()),
        };
    }
    if !rows {
        let done = q.execute(&mut *pg).await?;
        return Ok((Vec::new(), done.rows_affected()));
    }
    let pg_rows = q.fetch_all(&mut *pg).await?;
    let mut out = Vec::with_capacity(pg_rows.len());
    let mut names: Option<Arc<[String]>> = None;
    for r in &pg_rows {
        let names = names
            .get_or_insert_with(|| r.columns().iter().map(|c| c.name().to_owned()).collect())
            .clone();
        let mut values = Vec::with_capacity(names.len());
        for (i, c) in r.columns().iter().enumerate() {
            let null = r.try_get_raw(i)?.is_null();
            let kind = c.type_info().name();
            values.push(match (kind, null) {
                ("INT8" | "INT4" | "INT2" | "BOOL", true) => Value::Null(Kind::Int),
                ("INT8", false) => Value::Int(r.try_get::<i64, _>(i)?),
                ("INT4", false) => Value::Int(r.try_get::<i32, _>(i)?.into()),
                ("INT2", false) => Value::Int(r.try_get::<i16, _>(i)?.into()),
                ("BOOL", false) => Value::Int(r.try_get::<bool, _>(i)?.into()),
                ("FLOAT8" | "FLOAT4", true) => Value::Null(Kind::Real),
                ("FLOAT8", false) => Value::Real(r.try_get::<f64, _>(i)?),
                ("FLOAT4", false) => Value::Real(r.try_get::<f32, _>(i)?.into()),
                ("BYTEA", true) => Value::Null(Kind::Blob),
                ("BYTEA", false) => Value::Blob(r.try_get::<Vec<u8>, _>(i)?),
                (_, true) => Value::Null(Kind::Text),
                (_, false) => Value::Text(r.try_get::<String, _>(i)?),
            });
        }
        out.push(Row { names, values });
    }
    let affected = out.len() as u64;
    Ok((out, affected))
}
