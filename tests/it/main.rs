//! Integration tests: each starts the real `meridian` binary on loopback ports and queries it
#![allow(unreachable_pub)]
//! over real UDP and TCP (see `harness`).

mod admin;
mod admin_tls;
mod backend;
mod cli;
mod clients;
mod cluster;
mod dns;
mod dnssec;
mod edges;
mod farm;
mod fuzz;
mod geo;
mod harness;
mod health;
mod monitoring;
mod quic;
mod reload;
mod scale;
mod spill;
mod tls;
mod watch;
mod wire;
