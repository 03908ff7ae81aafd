use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "outbox")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub kind: String,
    pub target_id: Uuid,
    pub attempt: i32,
    pub delay_seconds: i32,
    pub created: DateTimeUtc,
    /// Until then only the relay of the process that wrote the entry
    /// publishes it (`cairn_shared::outbox`).
    pub handed_until: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
