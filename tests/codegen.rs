//! The project's suite: every case x every configured model, then the gate.
fn main() {}
