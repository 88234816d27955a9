//! Offloading frames to `cboserver`: which frames (the policies, [`policy`]: per-frame rules and
//! the CBO and FastVA planners of [`planner`], all behind one [`planner::Planner`] trait), how
//! the element drives them ([`driver`], on a [`clock`]), how frames travel ([`client`], over a
//! connection shared per server, [`link`]), how answers merge back into the stream in order
//! ([`hold`]) and serve the frames after them ([`reuse`]), and the trace-driven replay of all of
//! it ([`sim`]).

pub mod client;
pub mod clock;
pub mod crossval;
pub mod driver;
#[cfg(test)]
mod equivalence;
pub mod hold;
pub mod link;
pub mod link_estimate;
pub mod merge;
pub mod planner;
pub mod policy;
pub mod reliability;
pub mod reuse;
pub mod rules;
pub mod sender;
pub mod sim;
pub mod summary;
