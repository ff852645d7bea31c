//! Logging through the daemon's tracing output (WIT `log` import).
//!
//! On wasm these call the host; natively (unit tests) they print to stderr.
//! The macros [`trace!`](crate::trace), [`debug!`](crate::debug),
//! [`info!`](crate::info), [`warn!`](crate::warn) and
//! [`error!`](crate::error) take `format!` arguments.

/// Severity, mapped one to one on tracing's levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Very detailed.
    Trace,
    /// Debugging.
    Debug,
    /// Normal operation.
    Info,
    /// Something looks wrong.
    Warn,
    /// Something is wrong.
    Error,
}

/// Emit one log line at `level`.
pub fn log(level: Level, message: &str) {
    #[cfg(target_family = "wasm")]
    crate::__private::log(level, message);
    #[cfg(not(target_family = "wasm"))]
    eprintln!("[policy {level:?}] {message}");
}

/// Log at trace level.
pub fn trace(message: &str) {
    log(Level::Trace, message);
}

/// Log at debug level.
pub fn debug(message: &str) {
    log(Level::Debug, message);
}

/// Log at info level.
pub fn info(message: &str) {
    log(Level::Info, message);
}

/// Log at warn level.
pub fn warn(message: &str) {
    log(Level::Warn, message);
}

/// Log at error level.
pub fn error(message: &str) {
    log(Level::Error, message);
}

/// `trace!("fmt", args..)`: log a formatted message at trace level.
#[macro_export]
macro_rules! trace {
    ($($arg:tt)*) => { $crate::log::log($crate::log::Level::Trace, &::std::format!($($arg)*)) };
}

/// `debug!("fmt", args..)`: log a formatted message at debug level.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => { $crate::log::log($crate::log::Level::Debug, &::std::format!($($arg)*)) };
}

/// `info!("fmt", args..)`: log a formatted message at info level.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log::log($crate::log::Level::Info, &::std::format!($($arg)*)) };
}

/// `warn!("fmt", args..)`: log a formatted message at warn level.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log::log($crate::log::Level::Warn, &::std::format!($($arg)*)) };
}

/// `error!("fmt", args..)`: log a formatted message at error level.
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::log::log($crate::log::Level::Error, &::std::format!($($arg)*)) };
}
