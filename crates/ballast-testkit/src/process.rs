//! Example programs as child processes: where `cargo test` put them.

use std::path::PathBuf;

/// The path of the example `name` of the crate under test.
///
/// `cargo test` builds a package's examples next to its test binaries
/// (`target/<profile>/examples/<name>`), so a test can start one as a real process and send it
/// real signals. When only one test target was built (`cargo test --test process`), the example
/// was not: this builds it first with the cargo that runs the test, with the features named.
///
/// # Panics
///
/// When the example cannot be built: a test without its server cannot run.
pub fn example_binary(package: &str, name: &str, features: &[&str]) -> PathBuf {
    let mut dir = std::env::current_exe().expect("the test binary's path");
    dir.pop(); // the test binary
    if dir.ends_with("deps") {
        dir.pop();
    }
    let binary = dir.join("examples").join(name);
    if !binary.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut command = std::process::Command::new(cargo);
        command.args(["build", "-p", package, "--example", name]);
        if !features.is_empty() {
            command.args(["--features", &features.join(",")]);
        }
        if dir.ends_with("release") {
            command.arg("--release");
        }
        let status = command.status().expect("cargo runs");
        assert!(
            status.success(),
            "`cargo build -p {package} --example {name}` failed"
        );
    }
    assert!(binary.exists(), "{} is missing", binary.display());
    binary
}
