//! Who did something, as the audit log names them.

/// Who did something, for the audit trail: `staff:<name>` or `api:<key id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor(String);

impl Actor {
    pub fn staff(username: &str) -> Self {
        Self(format!("staff:{username}"))
    }

    pub fn api_key(key_id: &str) -> Self {
        Self(format!("api:{key_id}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}
