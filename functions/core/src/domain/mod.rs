//! The domain: pure types and rules, free of I/O, HTTP and AWS.

pub mod clock;
pub mod identity;
pub mod journal;
pub mod model;
pub mod query;
pub mod render;
pub mod secret_template;
pub mod token;
