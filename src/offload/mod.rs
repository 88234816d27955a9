//! Offloading frames to `cboserver`: which frames ([`policy`]), how they travel ([`client`]), and
//! how answers merge back into the stream in order ([`hold`]).

pub mod client;
pub mod hold;
pub mod planner;
pub mod policy;
pub mod sim;
