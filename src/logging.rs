//! The log filter, changeable at run time (a config reload may change `log.level`).

use std::sync::OnceLock;

type SetLevel = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

static SET_LEVEL: OnceLock<SetLevel> = OnceLock::new();

/// Installs the function that swaps the log filter (called once, where logging is set up).
pub fn install(set: SetLevel) {
    let _ = SET_LEVEL.set(set);
}

/// Applies a new filter (`RUST_LOG` syntax); an error names what is wrong with it.
pub fn set_level(level: &str) -> Result<(), String> {
    match SET_LEVEL.get() {
        Some(set) => set(level),
        None => Ok(()),
    }
}
