//! PLACEHOLDER: the operator is being built (issue: operator foundation).
fn main() {}
