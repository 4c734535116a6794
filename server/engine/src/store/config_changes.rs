//! The audit trail of configuration changes: pool_config_changes.

use std::time::SystemTime;

use serde::Serialize;

use super::ControlStore;
use crate::Error;
use crate::config::FieldChange;

/// Who changed a pool's config, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChangeOrigin {
    /// The caller's role (`viewer`, `operator`, `admin`), `embedded` for an
    /// application calling the engine, or `optimizer` for automated tuning.
    pub source: String,
    /// Why, in words.
    pub reason: String,
}

impl ChangeOrigin {
    /// A change made by `source` for `reason`.
    pub fn new(source: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            source: source.into(),
            reason: reason.into(),
        }
    }
}

/// One stored change of one field.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConfigChangeRecord {
    /// The pool.
    pub pool_name: String,
    /// When.
    pub changed_at: SystemTime,
    /// The field and its values.
    pub change: FieldChange,
    /// Who and why.
    pub origin: ChangeOrigin,
    /// False when the change was refused (e.g. by the connection budget).
    pub applied: bool,
}

impl ControlStore {
    /// Records the changes of one update, applied or refused, in one statement.
    pub async fn insert_config_changes(
        &self,
        pool_name: &str,
        changes: &[FieldChange],
        origin: &ChangeOrigin,
        applied: bool,
    ) -> Result<(), Error> {
        if changes.is_empty() {
            return Ok(());
        }
        let fields: Vec<&str> = changes.iter().map(|c| c.field.as_str()).collect();
        let olds: Vec<&str> = changes.iter().map(|c| c.old_value.as_str()).collect();
        let news: Vec<&str> = changes.iter().map(|c| c.new_value.as_str()).collect();
        self.conn()
            .await?
            .execute(
                "INSERT INTO pool_config_changes (pool_name, field, old_value, new_value, reason, \
                 source, applied) \
                 SELECT $1, f, o, n, $5, $6, $7 FROM unnest($2::text[], $3::text[], $4::text[]) AS c(f, o, n)",
                &[
                    &pool_name,
                    &fields,
                    &olds,
                    &news,
                    &origin.reason,
                    &origin.source,
                    &applied,
                ],
            )
            .await
            .map_err(|source| Error::ControlQuery {
                context: "recording a config change",
                source,
            })?;
        Ok(())
    }

    /// A pool's latest config changes, newest first.
    pub async fn config_changes(
        &self,
        pool_name: &str,
        limit: u32,
    ) -> Result<Vec<ConfigChangeRecord>, Error> {
        let rows = self
            .conn()
            .await?
            .query(
                "SELECT changed_at, field, old_value, new_value, reason, source, applied \
                 FROM pool_config_changes WHERE pool_name = $1 \
                 ORDER BY changed_at DESC, id DESC LIMIT $2",
                &[&pool_name, &i64::from(limit)],
            )
            .await
            .map_err(|source| Error::ControlQuery {
                context: "reading config changes",
                source,
            })?;
        Ok(rows
            .iter()
            .map(|r| ConfigChangeRecord {
                pool_name: pool_name.to_owned(),
                changed_at: r.get(0),
                change: FieldChange {
                    field: r.get(1),
                    old_value: r.get(2),
                    new_value: r.get(3),
                },
                origin: ChangeOrigin {
                    reason: r.get(4),
                    source: r.get(5),
                },
                applied: r.get(6),
            })
            .collect())
    }
}
