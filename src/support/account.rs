//! A support staff member's account and a signed-in console session, as the support desk
//! sees them. Value types: the store persists them and returns them.

use crate::domain::status::StaffRole;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaffAccount {
    pub id: String,
    pub username: String,
    pub password_hash: String,
    pub created_at: i64,
    pub disabled_at: Option<i64>,
    pub role: StaffRole,
    /// The IANA zone its times are shown in; none: the support line's.
    pub time_zone: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaffSession {
    pub staff_id: String,
    pub username: String,
    pub csrf_token: String,
    pub role: StaffRole,
    pub time_zone: Option<String>,
}
