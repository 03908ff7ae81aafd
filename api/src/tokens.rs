//! API tokens: created by an operator (`cairn-api token create`), carried by
//! clients in `X-Auth-Token`, revocable.
//!
//! A token reads `cairn-<id>-<secret>`: the id (a UUID in its 32-hex-digit
//! form) finds the row, and the secret (32 random bytes, hex) proves
//! possession. Only the BLAKE3 hash of the secret is stored, so the
//! database (or a backup of it) holds no usable token. The secret has 256
//! bits of entropy, so a fast hash is enough: there is nothing to brute
//! force. Hashes are compared with `blake3::Hash`'s `==`, which runs in
//! constant time, and an unknown id costs the same hash as a known one.
//!
//! The API remembers a token it has verified for `CAIRN_TOKEN_CACHE_SECONDS`
//! (default 5; [`TokenCache`]), so a busy client does not cost a database
//! round trip per request. The price: a revoked token keeps working for up
//! to that long in each API process. Only successes are remembered, keyed
//! by the BLAKE3 hash of the whole presented token, never the token itself.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use rand::RngCore;
use sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement};
use uuid::Uuid;

/// What a valid token entitles its bearer to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's id (never secret; shown in logs and `token list`).
    pub token_id: Uuid,
    /// The project the token belongs to.
    pub project: String,
    /// An admin token may use any project's paths and list across
    /// projects with `all_projects`.
    pub admin: bool,
}

/// A token as `token list` shows it: everything but the secret.
#[derive(Debug, Clone)]
pub struct TokenInfo {
    pub id: Uuid,
    pub project: String,
    pub admin: bool,
    pub description: Option<String>,
    pub created: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Why a token could not be created or revoked.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("project id must be 1-64 letters, digits, '-' or '_'")]
    BadProject,
    #[error("the description is longer than {0} characters")]
    DescriptionTooLong(usize),
    #[error("no token has the id {0}")]
    NoSuchToken(Uuid),
    #[error(transparent)]
    Db(#[from] DbErr),
}

/// The prefix every cairn token starts with, so a leaked one is easy to
/// recognise (and to scan for).
pub const PREFIX: &str = "cairn-";

/// Longest token description.
const MAX_DESCRIPTION: usize = 1024;

/// The same rule the API applies to the project in the path.
pub fn valid_project(project: &str) -> bool {
    !project.is_empty()
        && project.len() <= 64
        && project.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn hash_secret(secret: &str) -> blake3::Hash {
    blake3::hash(secret.as_bytes())
}

fn stmt(sql: &str, values: Vec<sea_orm::Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

/// Creates a token for `project`; returns its id and the full token, which
/// exists nowhere else afterwards.
pub async fn create<C: ConnectionTrait>(
    db: &C,
    project: &str,
    admin: bool,
    description: Option<&str>,
) -> Result<(Uuid, String), TokenError> {
    if !valid_project(project) {
        return Err(TokenError::BadProject);
    }
    if description.is_some_and(|d| d.chars().count() > MAX_DESCRIPTION) {
        return Err(TokenError::DescriptionTooLong(MAX_DESCRIPTION));
    }
    let id = Uuid::now_v7();
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    db.execute_raw(stmt(
        "INSERT INTO auth_tokens (id, project_id, admin, secret_hash, description) VALUES ($1, $2, $3, $4, $5)",
        vec![
            id.into(),
            project.into(),
            admin.into(),
            hash_secret(&secret).to_hex().to_string().into(),
            description.map(str::to_owned).into(),
        ],
    ))
    .await?;
    Ok((id, format!("{PREFIX}{}-{secret}", id.simple())))
}

/// Splits `cairn-<32 hex>-<secret>` into id and secret.
fn parse(token: &str) -> Option<(Uuid, &str)> {
    let rest = token.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('-')?;
    if id.len() != 32 || secret.is_empty() {
        return None;
    }
    Some((Uuid::try_parse(id).ok()?, secret))
}

/// The caller a presented token stands for, or `None` if it is malformed,
/// unknown, wrong or revoked (the caller is not told which).
pub async fn authenticate<C: ConnectionTrait>(db: &C, token: &str) -> Result<Option<Caller>, DbErr> {
    let Some((id, secret)) = parse(token) else { return Ok(None) };
    let presented = hash_secret(secret);
    let row = db
        .query_one_raw(stmt(
            "SELECT project_id, admin, secret_hash FROM auth_tokens WHERE id = $1 AND revoked_at IS NULL",
            vec![id.into()],
        ))
        .await?;
    let Some(row) = row else { return Ok(None) };
    let stored: String = row.try_get("", "secret_hash")?;
    let Ok(stored) = blake3::Hash::from_hex(stored.as_bytes()) else { return Ok(None) };
    // blake3::Hash's PartialEq is constant-time.
    if stored != presented {
        return Ok(None);
    }
    Ok(Some(Caller { token_id: id, project: row.try_get("", "project_id")?, admin: row.try_get("", "admin")? }))
}

/// Most tokens a [`TokenCache`] holds; when full, expired entries go, and
/// if none had expired, all of them.
const CACHE_CAPACITY: usize = 10_000;

/// Verified tokens, remembered for a short time.
#[derive(Debug)]
pub struct TokenCache {
    ttl: Duration,
    verified: Mutex<HashMap<[u8; 32], (Caller, Instant)>>,
}

impl TokenCache {
    /// A cache that trusts a verification for `ttl` (zero: never).
    pub fn new(ttl: Duration) -> Self {
        Self { ttl, verified: Mutex::new(HashMap::new()) }
    }

    /// [`authenticate`], answered from memory when the same token was
    /// verified less than `ttl` ago.
    pub async fn authenticate<C: ConnectionTrait>(&self, db: &C, token: &str) -> Result<Option<Caller>, DbErr> {
        if self.ttl.is_zero() {
            return authenticate(db, token).await;
        }
        let key = *blake3::hash(token.as_bytes()).as_bytes();
        if let Some((caller, at)) = self.verified.lock().expect("token cache lock").get(&key)
            && at.elapsed() < self.ttl
        {
            return Ok(Some(caller.clone()));
        }
        let caller = authenticate(db, token).await?;
        if let Some(caller) = &caller {
            let mut verified = self.verified.lock().expect("token cache lock");
            if verified.len() >= CACHE_CAPACITY {
                let ttl = self.ttl;
                verified.retain(|_, (_, at)| at.elapsed() < ttl);
                if verified.len() >= CACHE_CAPACITY {
                    verified.clear();
                }
            }
            verified.insert(key, (caller.clone(), Instant::now()));
        }
        Ok(caller)
    }
}

/// Every token (of `project`, if given), oldest first.
pub async fn list<C: ConnectionTrait>(db: &C, project: Option<&str>) -> Result<Vec<TokenInfo>, DbErr> {
    let rows = db
        .query_all_raw(stmt(
            "SELECT id, project_id, admin, description, created, revoked_at FROM auth_tokens
             WHERE $1::text IS NULL OR project_id = $1 ORDER BY created, id",
            vec![project.map(str::to_owned).into()],
        ))
        .await?;
    rows.iter()
        .map(|r| {
            Ok(TokenInfo {
                id: r.try_get("", "id")?,
                project: r.try_get("", "project_id")?,
                admin: r.try_get("", "admin")?,
                description: r.try_get("", "description")?,
                created: r.try_get("", "created")?,
                revoked_at: r.try_get("", "revoked_at")?,
            })
        })
        .collect()
}

/// Revokes a token; revoking it again is not an error.
pub async fn revoke<C: ConnectionTrait>(db: &C, id: Uuid) -> Result<(), TokenError> {
    let res = db
        .execute_raw(stmt(
            "UPDATE auth_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1",
            vec![id.into()],
        ))
        .await?;
    if res.rows_affected() == 0 {
        return Err(TokenError::NoSuchToken(id));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_takes_the_id_and_the_secret() {
        let id = Uuid::now_v7();
        let token = format!("cairn-{}-abc-def", id.simple());
        assert_eq!(parse(&token), Some((id, "abc-def")));
        for bad in ["", "cairn-", "cairn-xyz-abc", &format!("cairn-{}-", id.simple()), &format!("x-{}-a", id.simple())]
        {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn projects_follow_the_path_rule() {
        assert!(valid_project("my-project_1"));
        assert!(!valid_project(""));
        assert!(!valid_project("a/b"));
        assert!(!valid_project(&"a".repeat(65)));
    }
}
