//! Tests of the autoscale engine through its public API: worked examples from the Azure docs,
//! profile selection, validation, inflation rate and the simulator. Cases are data; each feature
//! has one `check` helper.

mod examples;
mod inflation;
mod profiles;
mod simulation;
mod support;
mod validation;
