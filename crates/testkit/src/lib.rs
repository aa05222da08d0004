//! callverify's test harness, shared by the integration tests and `callverify-bench`: an
//! emulated Asterisk that speaks FastAGI, AMI and AudioSocket byte for byte as a real one
//! does, and spoken test codes in a real voice. A dev-dependency only: nothing here is in
//! the release binary.

pub mod corpus;
pub mod emulator;
