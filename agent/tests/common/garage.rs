//! The shared Garage S3 server of the tests (see `cairn_testkit::garage`).

pub use cairn_testkit::garage::*;
