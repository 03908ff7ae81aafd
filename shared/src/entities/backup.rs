use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "backups")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub project_id: String,
    pub instance_id: Uuid,
    pub parent_id: Option<Uuid>,
    pub name: String,
    pub description: Option<String>,
    pub status: String,
    pub datastore_type: String,
    pub datastore_version: String,
    pub bytes: Option<i64>,
    pub checksum: Option<String>,
    pub location_ref: Option<String>,
    pub artifact_prefix: Option<String>,
    pub progress_done: Option<i64>,
    pub progress_total: Option<i64>,
    pub fail_reason: Option<String>,
    pub lease_owner: Option<String>,
    pub lease_expires: Option<DateTimeUtc>,
    pub attempts: i32,
    pub verify_status: Option<String>,
    pub verify_message: Option<String>,
    pub verified_at: Option<DateTimeUtc>,
    pub created: DateTimeUtc,
    pub updated: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
