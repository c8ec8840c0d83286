//! `gatehouse keys reencrypt`: rewrites every sealed column, and every keyed HMAC
//! that can be recomputed from a sealed value, under the current key, so that an old
//! key can be dropped from `GATEHOUSE_OLD_SECRET_KEYS`.
//!
//! Safe while serving: each batch is its own short transaction that locks only the
//! rows it rewrites (`FOR UPDATE SKIP LOCKED`; a row a request holds is left for the
//! next pass). Resumable: rows already under the current key are not selected, so a
//! run that stopped half-way simply continues where the work is left.

use async_trait::async_trait;
use sqlx::Row;
use uuid::Uuid;

use super::{PgStore, StoreError};
use crate::crypto::columns;
use crate::domain::Location;

/// A keyed HMAC column recomputed from the plaintext of a sealed column.
struct MacColumn {
    column: &'static str,
    purpose: &'static str,
    /// Index into the table's sealed columns.
    source: usize,
    /// The MAC input, from that column's plaintext (`None`: leave the column alone).
    input: fn(&[u8]) -> Option<Vec<u8>>,
}

struct SealedTable {
    table: &'static str,
    /// The table's uuid primary key.
    key: &'static str,
    sealed: &'static [(&'static str, &'static str)],
    macs: &'static [MacColumn],
}

fn same(plain: &[u8]) -> Option<Vec<u8>> {
    Some(plain.to_vec())
}

fn country_code(plain: &[u8]) -> Option<Vec<u8>> {
    serde_json::from_slice::<Location>(plain)
        .ok()?
        .country_code
        .map(String::into_bytes)
}

const TABLES: &[SealedTable] = &[
    SealedTable {
        table: "sessions",
        key: "id",
        sealed: &[
            ("ip_enc", columns::SESSION_IP),
            ("user_agent_enc", columns::SESSION_USER_AGENT),
            ("location_enc", columns::SESSION_LOCATION),
            ("risk_reason_enc", columns::SESSION_RISK_REASON),
            ("anchor_enc", columns::SESSION_ANCHOR),
        ],
        macs: &[
            MacColumn {
                column: "ip_mac",
                purpose: columns::SEEN_IP,
                source: 0,
                input: same,
            },
            MacColumn {
                column: "country_mac",
                purpose: columns::SEEN_COUNTRY,
                source: 2,
                input: country_code,
            },
        ],
    },
    SealedTable {
        table: "security_events",
        key: "id",
        sealed: &[
            ("ip_enc", columns::EVENT_IP),
            ("user_agent_enc", columns::EVENT_USER_AGENT),
            ("location_enc", columns::EVENT_LOCATION),
        ],
        macs: &[],
    },
    SealedTable {
        table: "mfa_challenges",
        key: "id",
        sealed: &[("risk_flag_enc", columns::CHALLENGE_RISK_FLAG)],
        macs: &[],
    },
    SealedTable {
        table: "devices",
        key: "id",
        sealed: &[("label_enc", columns::DEVICE_LABEL)],
        macs: &[],
    },
    SealedTable {
        table: "mail_outbox",
        key: "id",
        sealed: &[
            ("text_body", columns::MAIL_TEXT),
            ("html_body", columns::MAIL_HTML),
        ],
        macs: &[],
    },
    SealedTable {
        table: "totp_credentials",
        key: "user_id",
        sealed: &[("secret_enc", columns::TOTP_SECRET)],
        macs: &[],
    },
    SealedTable {
        table: "signing_keys",
        key: "id",
        sealed: &[("private_enc", columns::SIGNING_KEY)],
        macs: &[],
    },
    SealedTable {
        table: "upstreams",
        key: "id",
        sealed: &[("client_secret_enc", columns::UPSTREAM_CLIENT_SECRET)],
        macs: &[],
    },
];

/// What one pass over the tables did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RekeyReport {
    /// Rows rewritten under the current key.
    pub rewritten: u64,
    /// Rows with a value no key this process holds can open (left as they are).
    pub unreadable: u64,
    /// Rows still holding a value under another key after the last pass (locked by
    /// a request at the time, unreadable, or written meanwhile by a node that still
    /// seals with the old key). Zero means the old keys can go.
    pub remaining: u64,
}

#[async_trait]
pub trait RekeyStore: Send + Sync {
    /// Rewrites up to `batch` rows per transaction until no row of any sealed table
    /// is left under an older key (or only unreadable ones are).
    async fn reencrypt_all(&self, batch: i64) -> Result<RekeyReport, StoreError>;
}

#[async_trait]
impl RekeyStore for PgStore {
    async fn reencrypt_all(&self, batch: i64) -> Result<RekeyReport, StoreError> {
        let mut report = RekeyReport::default();
        // Passes repeat until one rewrites nothing: rows skipped because a request
        // held them, or written under an old key meanwhile, are taken by a later pass.
        for _pass in 0..10 {
            let before = report.rewritten;
            report.unreadable = 0;
            for t in TABLES {
                let mut after = Uuid::nil();
                loop {
                    let (seen, last) = self.reencrypt_batch(t, after, batch, &mut report).await?;
                    match last {
                        Some(id) if seen > 0 => after = id,
                        _ => break,
                    }
                }
            }
            if report.rewritten == before {
                break;
            }
        }
        // The final word counts every row, locked or not.
        for t in TABLES {
            let sql = format!(
                "SELECT count(*) FROM {} WHERE {}",
                t.table,
                stale_condition(t)
            );
            let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .bind(self.keys.current_key_id().to_vec())
                .fetch_one(&self.pool)
                .await?;
            report.remaining += u64::try_from(n).unwrap_or(0);
        }
        Ok(report)
    }
}

/// Rows of `t` holding a sealed value or an HMAC under a key other than `$1`.
fn stale_condition(t: &SealedTable) -> String {
    let mut stale: Vec<String> = t
        .sealed
        .iter()
        .map(|(c, _)| format!("({c} IS NOT NULL AND substring({c} from 2 for 4) <> $1)"))
        .collect();
    stale.extend(t.macs.iter().map(|m| {
        format!(
            "({c} IS NOT NULL AND substring({c} from 1 for 4) <> $1)",
            c = m.column
        )
    }));
    stale.join(" OR ")
}

impl PgStore {
    /// One batch of `t` after `after` (in id order); returns how many rows it looked
    /// at and the last id.
    async fn reencrypt_batch(
        &self,
        t: &SealedTable,
        after: Uuid,
        batch: i64,
        report: &mut RekeyReport,
    ) -> Result<(usize, Option<Uuid>), StoreError> {
        let kid = self.keys.current_key_id().to_vec();
        let cols: Vec<&str> = t.sealed.iter().map(|(c, _)| *c).collect();
        let sql = format!(
            "SELECT {key}, {cols} FROM {table}
             WHERE {key} > $2 AND ({stale})
             ORDER BY {key} LIMIT $3 FOR UPDATE SKIP LOCKED",
            key = t.key,
            cols = cols.join(", "),
            table = t.table,
            stale = stale_condition(t),
        );
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&kid)
            .bind(after)
            .bind(batch)
            .fetch_all(&mut *tx)
            .await?;
        let mut last = None;
        for row in &rows {
            let id: Uuid = row.try_get(0)?;
            last = Some(id);
            let mut plains = Vec::with_capacity(t.sealed.len());
            let mut readable = true;
            for (i, (_, context)) in t.sealed.iter().enumerate() {
                let value: Option<Vec<u8>> = row.try_get(i + 1)?;
                match value.map(|v| self.keys.open(context, &v)) {
                    None => plains.push(None),
                    Some(Ok(p)) => plains.push(Some(p)),
                    Some(Err(_)) => {
                        readable = false;
                        break;
                    }
                }
            }
            if !readable {
                report.unreadable += 1;
                continue;
            }
            // Every column of the row is rewritten: simpler than tracking which one
            // was stale, and a fresh nonce costs nothing.
            let mut sets = Vec::new();
            let mut values: Vec<Option<Vec<u8>>> = Vec::new();
            for ((column, context), plain) in t.sealed.iter().zip(&plains) {
                let sealed = plain
                    .as_ref()
                    .map(|p| self.keys.seal(context, p))
                    .transpose()?;
                values.push(sealed);
                sets.push(format!("{column} = ${}", values.len() + 1));
            }
            for m in t.macs {
                if let Some(input) = plains[m.source].as_deref().and_then(m.input) {
                    values.push(Some(self.keys.mac(m.purpose, &input)));
                    sets.push(format!("{} = ${}", m.column, values.len() + 1));
                }
            }
            let update = format!(
                "UPDATE {} SET {} WHERE {} = $1",
                t.table,
                sets.join(", "),
                t.key
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(update)).bind(id);
            for v in values {
                q = q.bind(v);
            }
            q.execute(&mut *tx).await?;
            report.rewritten += 1;
        }
        tx.commit().await?;
        Ok((rows.len(), last))
    }
}
