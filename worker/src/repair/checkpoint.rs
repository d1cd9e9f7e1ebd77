//! Where a backfill or a reconcile stopped (`backfill_checkpoints`), so that an interrupted run
//! resumes from there.

use sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement};

/// The checkpoint `name` (`backfill_checkpoints`): the next page's offset, and whether the run
/// finished. `(0, false)` when there is none. Shared by the backfill and the reconcile.
pub(crate) async fn checkpoint<C: ConnectionTrait>(
    db: &C,
    name: &str,
) -> Result<(u64, bool), DbErr> {
    let row = db
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT next_offset, finished_at IS NOT NULL AS finished FROM backfill_checkpoints \
             WHERE name = $1",
            vec![name.into()],
        ))
        .await?;
    Ok(match row {
        Some(row) => (
            u64::try_from(row.try_get::<i64>("", "next_offset")?).unwrap_or(0),
            row.try_get("", "finished")?,
        ),
        None => (0, false),
    })
}

/// Saves the checkpoint `name`.
pub(crate) async fn save<C: ConnectionTrait>(
    db: &C,
    name: &str,
    offset: u64,
    finished: bool,
) -> Result<(), DbErr> {
    db.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "INSERT INTO backfill_checkpoints (name, next_offset, finished_at, updated_at) \
         VALUES ($1, $2, CASE WHEN $3 THEN now() END, now()) \
         ON CONFLICT (name) DO UPDATE SET next_offset = EXCLUDED.next_offset, \
           finished_at = EXCLUDED.finished_at, updated_at = now()",
        vec![
            name.into(),
            i64::try_from(offset).unwrap_or(i64::MAX).into(),
            finished.into(),
        ],
    ))
    .await?;
    Ok(())
}
