//! Benchmarks of the policy hot path: `CompiledService::decide` for each policy over 20 regions.
//!
//! Run with `cargo bench --bench policy`. Most benchmarks use a fresh `HealthView` (every target
//! "unknown", counted as up: the cheapest lookup), so they measure the policy's own cost. The
//! `probed_*` ones use a `HealthView` with every target probed, to show the cost with real
//! lookups.

use std::net::IpAddr;
use std::path::Path;

use divan::{Bencher, black_box};
use meridian::config::Config;
use meridian::geo::{Located, Location, LocationSource};

use meridian::health::{HealthView, State};
use meridian::policy::{Client, CompiledService, Family};

fn main() {
    divan::main();
}

const REGIONS: usize = 20;

/// A config with 20 regions spread over the globe and one service of `policy` using them all.
fn config(policy: &str, extra: &str, bias: bool) -> Config {
    let mut text = String::from(
        "[[zone]]\norigin = \"example.net.\"\n# Validation only checks that a zone file exists.\nfile = \"Cargo.toml\"\n[check.web]\nkind = \"tcp\"\nport = 80\ninterval = \"2s\"\ntimeout = \"1s\"\n",
    );
    let mut endpoints = String::new();
    for i in 0..REGIONS {
        let lat = -60.0 + 6.0 * i as f64;
        let lon = -180.0 + 17.0 * i as f64;
        text.push_str(&format!(
            "[region.r{i}]\nlatitude = {lat}\nlongitude = {lon}\n"
        ));
        if bias && i % 3 == 0 {
            text.push_str("bias = 250.0\n");
        }
        endpoints.push_str(&format!(
            "  {{ region = \"r{i}\", addresses = [\"10.0.{i}.1\", \"10.0.{i}.2\", \"2001:db8:{i}::1\"], weight = {} }},\n",
            1 + i % 4
        ));
    }
    text.push_str(&format!(
        "[[service]]\nname = \"api.example.net.\"\npolicy = \"{policy}\"\ncheck = \"web\"\n{extra}\nendpoints = [\n{endpoints}]\n"
    ));
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench.toml");
    meridian::config::parse_str(&path, &text).expect("bench config is valid")
}

fn compile(policy: &str, extra: &str, bias: bool) -> CompiledService {
    let c = config(policy, extra, bias);
    CompiledService::new(&c.services[0], &c)
}

fn berlin() -> Located {
    Located {
        ip: "85.1.2.3".parse::<IpAddr>().unwrap(),
        location: Some(Location {
            latitude: Some(52.5),
            longitude: Some(13.4),
            country: meridian::geo::Code::new("DE"),
            continent: meridian::geo::Code::new("EU"),
        }),
        region: None,
        source: LocationSource::Database,
        prefix_len: 16,
        via: meridian::geo::Via::direct("85.1.2.3".parse::<IpAddr>().unwrap()),
    }
}

fn run(bencher: Bencher<'_, '_>, svc: &CompiledService, located: &Located, family: Family) {
    let health = HealthView::empty();
    let client = Client {
        located,
        ecs_source_prefix: Some(24),
    };
    let mut random = 0x1234_5678_9abc_def0u64;
    bencher.bench_local(|| {
        random = random.wrapping_mul(6364136223846793005).wrapping_add(1);
        black_box(svc.decide(black_box(&client), black_box(family), &health, random))
    });
}

#[divan::bench]
fn nearest_20_regions_a(bencher: Bencher<'_, '_>) {
    run(
        bencher,
        &compile("nearest", "", false),
        &berlin(),
        Family::V4,
    );
}

#[divan::bench]
fn nearest_20_regions_aaaa(bencher: Bencher<'_, '_>) {
    run(
        bencher,
        &compile("nearest", "", false),
        &berlin(),
        Family::V6,
    );
}

#[divan::bench]
fn nearest_20_regions_with_bias(bencher: Bencher<'_, '_>) {
    run(
        bencher,
        &compile("nearest", "", true),
        &berlin(),
        Family::V4,
    );
}

#[divan::bench]
fn nearest_20_regions_max_answers_4(bencher: Bencher<'_, '_>) {
    run(
        bencher,
        &compile("nearest", "max_answers = 4", false),
        &berlin(),
        Family::V4,
    );
}

#[divan::bench]
fn nearest_20_regions_nets_override(bencher: Bencher<'_, '_>) {
    let mut located = berlin();
    located.location = None;
    located.region = Some("r7".into());
    located.source = LocationSource::Nets;
    run(
        bencher,
        &compile("nearest", "", false),
        &located,
        Family::V4,
    );
}

#[divan::bench]
fn geo_country_match(bencher: Bencher<'_, '_>) {
    let extra = r#"geo = { "country:FR" = ["r3"], "DE" = ["r9", "r10"], "continent:EU" = ["r11"], "US" = ["r1"], "JP" = ["r15"], default = ["r0", "r1"] }"#;
    run(
        bencher,
        &compile("geo", extra, false),
        &berlin(),
        Family::V4,
    );
}

#[divan::bench]
fn failover_20_regions(bencher: Bencher<'_, '_>) {
    run(
        bencher,
        &compile("failover", "", false),
        &berlin(),
        Family::V4,
    );
}

#[divan::bench]
fn weighted_20_regions(bencher: Bencher<'_, '_>) {
    run(
        bencher,
        &compile("weighted", "", false),
        &berlin(),
        Family::V4,
    );
}

#[divan::bench]
fn weighted_sticky_20_regions(bencher: Bencher<'_, '_>) {
    run(
        bencher,
        &compile("weighted", "sticky = true", false),
        &berlin(),
        Family::V4,
    );
}

#[divan::bench]
fn all_20_regions_max_answers_4(bencher: Bencher<'_, '_>) {
    run(
        bencher,
        &compile("all", "max_answers = 4", false),
        &berlin(),
        Family::V4,
    );
}

#[divan::bench]
fn all_sticky_20_regions_max_answers_4(bencher: Bencher<'_, '_>) {
    run(
        bencher,
        &compile("all", "max_answers = 4\nsticky = true", false),
        &berlin(),
        Family::V4,
    );
}

/// For comparison: the explained path (allocates the trace).
#[divan::bench]
fn explain_nearest_20_regions(bencher: Bencher<'_, '_>) {
    let svc = compile("nearest", "", false);
    let located = berlin();
    let health = HealthView::empty();
    let client = Client {
        located: &located,
        ecs_source_prefix: Some(24),
    };
    bencher.bench_local(|| black_box(svc.explain(black_box(&client), Family::V4, &health, 0)));
}

/// A health view with every target of `svc` probed (check "web"): up, or down in the regions
/// listed in `down`; one region drained that no service uses, so the drain lookup is real too.
fn probed(svc: &CompiledService, down: &[&str]) -> HealthView {
    let mut view = HealthView::empty().with_drained("r-none");
    for ep in &svc.service().endpoints {
        let state = if down.contains(&ep.region.name.as_str()) {
            State::Down
        } else {
            State::Up
        };
        for a in &ep.addresses {
            view = view.with_state(*a, "web", state);
        }
    }
    view
}

fn run_probed(bencher: Bencher<'_, '_>, svc: &CompiledService, down: &[&str]) {
    let health = probed(svc, down);
    let located = berlin();
    let client = Client {
        located: &located,
        ecs_source_prefix: Some(24),
    };
    let mut random = 0x1234_5678_9abc_def0u64;
    bencher.bench_local(|| {
        random = random.wrapping_mul(6364136223846793005).wrapping_add(1);
        black_box(svc.decide_with(black_box(&client), Family::V4, &health, random))
    });
}

#[divan::bench]
fn probed_nearest_20_regions_a(bencher: Bencher<'_, '_>) {
    run_probed(bencher, &compile("nearest", "", false), &[]);
}

/// The two regions nearest to the client are down: three regions visited.
#[divan::bench]
fn probed_nearest_20_regions_two_nearest_down(bencher: Bencher<'_, '_>) {
    let svc = compile("nearest", "", false);
    let client = Client {
        located: &berlin(),
        ecs_source_prefix: None,
    };
    let e = svc.explain_with(&client, Family::V4, &probed(&svc, &[]), 0);
    let down: Vec<&str> = e.order[..2].iter().map(|r| r.region.as_str()).collect();
    run_probed(bencher, &svc, &down);
}

#[divan::bench]
fn probed_weighted_20_regions(bencher: Bencher<'_, '_>) {
    run_probed(bencher, &compile("weighted", "", false), &[]);
}

#[divan::bench]
fn probed_all_20_regions_max_answers_4(bencher: Bencher<'_, '_>) {
    run_probed(bencher, &compile("all", "max_answers = 4", false), &[]);
}
