//! Offloading frames to `cboserver`: which frames (per-frame rules in [`policy`], the CBO and
//! FastVA planners in [`planner`]), how they travel ([`client`]), how answers merge back into the
//! stream in order ([`hold`]) and serve the frames after them ([`reuse`]), and the trace-driven
//! replay of all of it ([`sim`]).

pub mod client;
pub mod crossval;
pub mod hold;
pub mod planner;
pub mod policy;
pub mod reuse;
pub mod sim;
pub mod summary;
