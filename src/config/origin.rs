/*!
[`Origin`] and [`Sourced`] live in [`crate::origin`] (rules use them too, and `rule/`
imports nothing from `config/`); re-exported here under their old path.
*/

pub use crate::origin::{Origin, Sourced};
