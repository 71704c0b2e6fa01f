//! The use cases the functions run: deciding and rendering a boot, redeeming a token.

pub mod boot;
pub mod redeem;
