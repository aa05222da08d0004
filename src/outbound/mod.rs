//! What callverify starts on its own: calls (the dialer, through AMI) and webhooks (the
//! outbox, posted to the web app).

pub mod dialer;
pub mod webhooks;
