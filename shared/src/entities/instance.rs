use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "instances")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub project_id: String,
    pub name: String,
    pub status: String,
    pub datastore_type: String,
    pub datastore_version: String,
    pub flavor_id: String,
    pub volume_path: String,
    pub volume_size: Option<i32>,
    pub restore_backup_id: Option<Uuid>,
    pub restore_step: Option<i32>,
    pub restore_steps: Option<i32>,
    pub fail_reason: Option<String>,
    pub lease_owner: Option<String>,
    pub lease_expires: Option<DateTimeUtc>,
    pub attempts: i32,
    pub deleted: bool,
    pub created: DateTimeUtc,
    pub updated: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
