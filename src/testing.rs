//! In-memory stand-ins for the share, the database and the downstream
//! services, for unit tests of the engine without servers.
