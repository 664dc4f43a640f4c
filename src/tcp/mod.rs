//! The sans-IO TCP engine (RFC 9293): segments and a clock in, segments and events out.
