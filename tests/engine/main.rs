//! Tests that need no database: the query engine against the reference computation (the
//! straightforward in-memory KPI engine of `reference/`) over simulated and hand-made data, and
//! the house rules of `src/` (layers, function length). `cargo test --test engine` runs them on
//! a machine without PostgreSQL.

mod house;
mod reference;
mod versus_reference;
