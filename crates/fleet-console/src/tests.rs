//! Handler tests: pages render for a signed-in user, sign-in and CSRF checks, role refusals.
