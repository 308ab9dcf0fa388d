//! Compile-time tests of `#[handler(..)]`: what it accepts (`ui/pass`, compiled
//! and run) and the exact errors it reports (`ui/fail`, compared with the
//! `.stderr` files). Regenerate those with
//! `TRYBUILD=overwrite cargo test -p kafka-handler --test macro_ui`, then read them.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
