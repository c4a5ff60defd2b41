//! Helpers to run the real `tillgated` binary in end-to-end tests.
