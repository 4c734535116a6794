//! poolplane's PostgreSQL wire-protocol front door: applications connect to a
//! named pool (the database name of their connection string) with their own
//! driver; each transaction (or session, by the pool's `pool_mode`) is a
//! checkout of the pool's own connections, whose socket the front door speaks
//! to while it holds one.
//!
//! # Modules, in the order the data flows
//!
//! 1. [`frame`]: messages as bytes (tag and length), writers for the front
//!    door's own.
//! 2. [`scram`]: SCRAM-SHA-256(-PLUS), the server's side.
//! 3. [`users`]: the users file.
//! 4. [`state`]: what a statement leaves on a session.
//! 5. [`prepared`]: prepared statements renamed per pool.
//! 6. [`expect`]: the queue of what the backend owes.
//! 7. [`session`]: one client's session loop.
//! 8. [`startup`]: the listener, TLS, startup and authentication, cancel.
//! 9. [`clients`]: the clients as operators see them (ListClients, KillClient).
//! 10. [`admin`]: the admin console (`psql -d pgbouncer`).

mod admin;
mod clients;
mod expect;
mod frame;
mod prepared;
pub mod scram;
mod session;
mod startup;
mod state;
pub mod users;

pub use clients::{ClientSnapshot, ClientState};
pub use startup::{BoundFrontDoor, FrontDoor, FrontDoorError, FrontDoorOptions};
pub use users::Users;
