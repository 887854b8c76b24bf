//! The status page (`GET /`), rendered on the server from the same data as `/status`, so that
//! it paints without JavaScript and reloads itself (`<meta http-equiv="refresh">`).
//!
//! It shows, top to bottom: a banner per service that fails open or has no usable target
//! (SERVFAIL or NODATA), the drains in force (who, why, until when, when known), a world map
//! drawn from the regions' coordinates (inline SVG, equirectangular, no tiles) with each
//! region's health and share of the answers, and per service the share of answers by region
//! over the last minutes and per target its state, why it is withdrawn, the last probe's
//! latency and result, and a timeline of the last hour.
//!
//! Pure: [`render`] takes what it shows and returns the HTML.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use super::history::{AnswerCounts, History, Segment};
use super::status::StatusReport;
use crate::config::Config;
use crate::health::{State, format_rfc3339};
use crate::outage::ServiceOutage;

/// The page's shell: head, CSS, and a marker for the body.
const SHELL: &str = include_str!("status.html");

/// Region colours of the share bars and the map's labels, by region index in the config.
const PALETTE: [&str; 8] = [
    "#0969da", "#8250df", "#bf3989", "#1b7c83", "#bc4c00", "#4d2d00", "#116329", "#6e7781",
];

/// A drain in force, as the page lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct DrainLine {
    /// `regions/NAME` or `targets/ADDRESS`.
    pub(super) subject: String,
    /// Who drained it, when known.
    pub(super) who: Option<String>,
    /// Why, when known.
    pub(super) reason: Option<String>,
    /// When it ends by itself.
    pub(super) expires: Option<SystemTime>,
}

/// Everything the page shows.
pub(super) struct PageData<'a> {
    pub(super) report: &'a StatusReport,
    pub(super) config: &'a Config,
    pub(super) outages: &'a [ServiceOutage],
    pub(super) drains: &'a [DrainLine],
    pub(super) history: &'a History,
    /// Answers by (service, region) over the share window, and its length (zero: since start).
    pub(super) answers: &'a AnswerCounts,
    pub(super) answers_window: Duration,
    pub(super) now: SystemTime,
}

/// Escapes text for HTML content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn colour(state: State) -> &'static str {
    match state {
        State::Up => "#1a7f37",
        State::Down => "#cf222e",
        // Lighter than the badge: on a timeline it is mostly "before the first probe".
        State::Unknown => "#d0d7de",
    }
}

fn region_colour(config: &Config, region: &str) -> &'static str {
    let i = config
        .regions
        .iter()
        .position(|r| r.name == region)
        .unwrap_or(0);
    PALETTE[i % PALETTE.len()]
}

fn percent(part: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        part as f64 * 100.0 / total as f64
    }
}

/// Renders the whole page.
pub(super) fn render(d: &PageData<'_>) -> String {
    let mut b = String::new();
    let r = d.report;
    let _ = writeln!(
        b,
        "<header><h1>Meridian</h1><span>v{} · {}{}</span><span class=\"badge {}\" id=\"ready\">{}</span>\
         <span class=\"legend\"><span class=\"addr up\">up</span><span class=\"addr down\">down</span>\
         <span class=\"addr unknown\">unknown</span><span class=\"addr up forced\">drained</span></span>\
         <span>updated {}</span></header>",
        esc(r.version),
        esc(&r.config_file),
        d.config
            .server
            .nsid
            .as_deref()
            .map(|n| format!(" · {}", esc(n)))
            .unwrap_or_default(),
        if r.ready { "ready" } else { "not-ready" },
        if r.ready { "ready" } else { "not ready" },
        format_rfc3339(d.now),
    );
    banners(&mut b, d);
    let _ = write!(b, "<div class=\"top\">");
    map(&mut b, d);
    drains_panel(&mut b, d);
    let _ = writeln!(b, "</div>");
    let _ = write!(b, "<main id=\"services\">");
    for s in &r.services {
        service(&mut b, d, s);
    }
    let _ = writeln!(b, "</main>");
    SHELL.replacen("<!--BODY-->", &b, 1)
}

fn banners(b: &mut String, d: &PageData<'_>) {
    for o in d.outages.iter().filter(|o| o.is_all_down()) {
        let (class, what) = if o.is_failing_open() {
            (
                "failing-open",
                "is failing open: every target is down or drained, answers go to all of them"
                    .to_string(),
            )
        } else {
            (
                "all-down",
                format!(
                    "has no usable target: clients get {}",
                    if o.when_all_down == crate::config::WhenAllDown::Servfail {
                        "SERVFAIL"
                    } else {
                        "NODATA (no address)"
                    }
                ),
            )
        };
        let _ = writeln!(
            b,
            "<div class=\"banner {class}\" data-banner=\"{class}\" data-service=\"{}\">\
             {} ({}) {what} ({} down, {} drained)</div>",
            esc(&o.service),
            esc(&o.service),
            o.family.as_str(),
            o.down,
            o.drained
        );
    }
}

fn drains_panel(b: &mut String, d: &PageData<'_>) {
    let _ = write!(b, "<section class=\"panel\" id=\"drains\"><h2>Drains</h2>");
    if d.drains.is_empty() {
        let _ = write!(b, "<p class=\"detail\">Nothing is drained.</p>");
    } else {
        let _ = write!(
            b,
            "<table><tr><th>what</th><th>who</th><th>why</th><th>until</th></tr>"
        );
        for l in d.drains {
            let _ = write!(
                b,
                "<tr data-drain=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&l.subject),
                esc(&l.subject),
                esc(l.who.as_deref().unwrap_or("—")),
                esc(l.reason.as_deref().unwrap_or("—")),
                l.expires
                    .map_or("until undrained".to_string(), format_rfc3339),
            );
        }
        let _ = write!(b, "</table>");
    }
    let _ = writeln!(b, "</section>");
}

/// The world map: an equirectangular projection (x = longitude, y = latitude), a graticule
/// every 30 degrees, and a circle per region sized by its share of the answers and coloured
/// by its health.
fn map(b: &mut String, d: &PageData<'_>) {
    const W: f64 = 720.0;
    const H: f64 = 360.0;
    let xy = |lat: f64, lon: f64| ((lon + 180.0) / 360.0 * W, (90.0 - lat) / 180.0 * H);
    let _ = write!(
        b,
        "<section class=\"panel\"><h2>Regions</h2>\
         <svg class=\"map\" id=\"map\" viewBox=\"0 0 {W} {H}\" role=\"img\" \
         aria-label=\"regions on a world map\">"
    );
    for lon in (-180..=180).step_by(30) {
        let (x, _) = xy(0.0, f64::from(lon));
        let _ = write!(
            b,
            "<line x1=\"{x:.1}\" y1=\"0\" x2=\"{x:.1}\" y2=\"{H}\" stroke=\"#c9d6e3\" stroke-width=\"1\"/>"
        );
    }
    for lat in (-90..=90).step_by(30) {
        let (_, y) = xy(f64::from(lat), 0.0);
        let width = if lat == 0 { 2 } else { 1 };
        let _ = write!(
            b,
            "<line x1=\"0\" y1=\"{y:.1}\" x2=\"{W}\" y2=\"{y:.1}\" stroke=\"#c9d6e3\" stroke-width=\"{width}\"/>"
        );
    }
    // Per region: targets usable / total over every service, drained, and answers.
    let mut usable: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for s in &d.report.services {
        for r in &s.regions {
            let e = usable.entry(r.name.as_str()).or_default();
            e.0 += r.targets.iter().filter(|t| t.usable).count();
            e.1 += r.targets.len();
        }
    }
    let total: u64 = d.answers.values().sum();
    let mut by_region: BTreeMap<&str, u64> = BTreeMap::new();
    for ((_, region), n) in d.answers {
        *by_region.entry(region.as_str()).or_default() += n;
    }
    for region in &d.config.regions {
        let name = region.name.as_str();
        let Some(&(ok, all)) = usable.get(name) else {
            continue;
        };
        let drained = d.report.drained_regions.iter().any(|r| r == name);
        let (fill, health) = if drained {
            ("#9a6700", "drained")
        } else if ok == all {
            ("#1a7f37", "healthy")
        } else if ok == 0 {
            ("#cf222e", "down")
        } else {
            ("#d4a72c", "degraded")
        };
        let share = percent(by_region.get(name).copied().unwrap_or(0), total);
        let (x, y) = xy(region.latitude, region.longitude);
        let radius = 6.0 + 22.0 * (share / 100.0).sqrt();
        let _ = write!(
            b,
            "<g data-region=\"{n}\" data-health=\"{health}\" data-share=\"{share:.1}\">\
             <title>{n}: {health}, {ok}/{all} targets usable, {share:.1}% of answers</title>\
             <circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"{radius:.1}\" fill=\"{fill}\" fill-opacity=\"0.75\" \
             stroke=\"#fff\" stroke-width=\"2\"/>\
             <text x=\"{tx:.1}\" y=\"{ty:.1}\" text-anchor=\"{anchor}\" font-size=\"13\" font-weight=\"600\" fill=\"#1f2328\">{n} {share:.0}%</text></g>",
            n = esc(name),
            // Labels near the right edge go to the left of their circle.
            tx = if x > W - 140.0 {
                x - radius - 3.0
            } else {
                x + radius + 3.0
            },
            anchor = if x > W - 140.0 { "end" } else { "start" },
            ty = y + 4.0,
        );
    }
    let _ = writeln!(
        b,
        "</svg><div class=\"detail\">circle size: share of answers {}; colour: green healthy, amber degraded, red down, brown drained</div></section>",
        window_text(d.answers_window)
    );
}

fn window_text(window: Duration) -> String {
    if window.is_zero() {
        "since start".to_string()
    } else {
        format!("over the last {} s", window.as_secs())
    }
}

fn service(b: &mut String, d: &PageData<'_>, s: &super::status::ServiceReport) {
    let _ = write!(
        b,
        "<section class=\"panel service\" data-service=\"{n}\"><h2>{n}</h2>\
         <div class=\"meta\">policy {} · ttl {}s · when all down: {}</div>",
        s.policy,
        s.ttl,
        s.when_all_down,
        n = esc(&s.name),
    );
    // Share of answers by region.
    let counts: Vec<(&str, u64)> = s
        .regions
        .iter()
        .map(|r| {
            let n = d
                .answers
                .get(&(s.name.clone(), r.name.clone()))
                .copied()
                .unwrap_or(0);
            (r.name.as_str(), n)
        })
        .collect();
    let total: u64 = counts.iter().map(|(_, n)| n).sum();
    let _ = write!(b, "<div class=\"share\" data-answers=\"{total}\">");
    for (region, n) in &counts {
        if *n > 0 {
            let _ = write!(
                b,
                "<span style=\"width:{:.2}%;background:{}\" title=\"{}: {n}\"></span>",
                percent(*n, total),
                region_colour(d.config, region),
                esc(region)
            );
        }
    }
    let _ = write!(
        b,
        "</div><div class=\"share-legend\">answers {}: ",
        window_text(d.answers_window)
    );
    if total == 0 {
        let _ = write!(b, "none");
    }
    for (region, n) in counts.iter().filter(|(_, n)| *n > 0) {
        let _ = write!(
            b,
            "<span data-share-region=\"{r}\" style=\"color:{}\">■</span> {r} {:.0}% ",
            region_colour(d.config, region),
            percent(*n, total),
            r = esc(region)
        );
    }
    let _ = write!(b, "</div>");
    for r in &s.regions {
        let degraded = r.targets.iter().any(|t| t.state == State::Down);
        let _ = write!(
            b,
            "<div class=\"region{}{}\" data-region=\"{n}\" data-drained=\"{}\"><span class=\"name\">{n}</span>{}",
            if r.drained { " drained" } else { "" },
            if degraded { " degraded" } else { "" },
            r.drained,
            if r.drained {
                "<span class=\"badge drained-badge\">DRAINED</span>"
            } else {
                ""
            },
            n = esc(&r.name),
        );
        if let Some(l) = &r.load {
            // Issue 16: the region's load and how many of its clients spill.
            let load = l
                .load
                .map_or("unknown".to_string(), |x| format!("{:.0} %", x * 100.0));
            let spill = if l.spill_fraction > 0.0 {
                format!(
                    " · <span class=\"spill\">{:.0} % of its clients spill to their next region</span>",
                    l.spill_fraction * 100.0
                )
            } else {
                String::new()
            };
            let _ = write!(
                b,
                "<span class=\"load\" data-load=\"{}\" data-spill=\"{:.3}\">load {load} (mark {:.0} %){spill}</span>",
                l.load.map_or(String::new(), |x| format!("{x:.3}")),
                l.spill_fraction,
                l.high_watermark * 100.0,
            );
        }
        for t in &r.targets {
            target(b, d, t);
        }
        let _ = write!(b, "</div>");
    }
    let _ = writeln!(b, "</section>");
}

fn target(b: &mut String, d: &PageData<'_>, t: &super::status::TargetReport) {
    let address = t.address.to_string();
    let state = t.state.as_str();
    let _ = write!(
        b,
        "<div class=\"target\" data-target=\"{address}\" data-state=\"{state}\">\
         <span class=\"addr {state}{}\">{address}</span><span class=\"detail\">",
        if t.forced { " forced" } else { "" },
    );
    if let Some(check) = &t.check {
        let _ = write!(b, "check {}", esc(check));
    } else {
        let _ = write!(b, "not probed (always up)");
    }
    if let Some(o) = &t.last_check {
        let _ = write!(
            b,
            " · last probe {} in {:.1} ms",
            if o.ok { "ok" } else { "failed" },
            o.latency.as_secs_f64() * 1000.0
        );
    }
    if let Some(l) = t.load {
        let _ = write!(b, " · load {:.0} %", l * 100.0);
    }
    if let Some(w) = t.withdrawn {
        let why = match w {
            "down" => t
                .last_check
                .as_ref()
                .and_then(|o| o.error.as_ref())
                .map_or("down".to_string(), |e| format!("down: {e}")),
            "region_drained" => "withdrawn: its region is drained".to_string(),
            "target_drained" => "withdrawn: the target is drained".to_string(),
            other => other.to_string(),
        };
        let _ = write!(
            b,
            " · <span class=\"why\" data-why=\"{w}\">{}</span>",
            esc(&why)
        );
    }
    let _ = write!(b, "</span><span></span>");
    if let Some(check) = &t.check {
        timeline(b, d, t.address, check, t.state);
    }
    let _ = write!(b, "</div>");
}

/// A bar over the last hour, one coloured stretch per state, newest on the right.
fn timeline(
    b: &mut String,
    d: &PageData<'_>,
    address: std::net::IpAddr,
    check: &str,
    state: State,
) {
    let segments: Vec<Segment> = d.history.timeline(address, check, state, d.now);
    let hour = super::history::HISTORY_WINDOW.as_secs_f64();
    let start = d
        .now
        .checked_sub(super::history::HISTORY_WINDOW)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let offset = |t: SystemTime| {
        t.duration_since(start)
            .unwrap_or(Duration::ZERO)
            .as_secs_f64()
            / hour
            * 600.0
    };
    let changes = segments.len() - 1;
    let _ = write!(
        b,
        "<svg class=\"timeline\" viewBox=\"0 0 600 10\" preserveAspectRatio=\"none\" data-changes=\"{changes}\">\
         <title>last hour: {changes} change(s)</title>"
    );
    for s in &segments {
        let (x0, x1) = (offset(s.from), offset(s.to));
        // Wide enough to see even a change seconds ago, and inside the bar.
        let width = (x1 - x0).max(4.0);
        let x0 = x0.min(600.0 - width);
        let _ = write!(
            b,
            "<rect x=\"{x0:.1}\" y=\"0\" width=\"{width:.1}\" height=\"10\" fill=\"{}\"><title>{} from {}</title></rect>",
            colour(s.state),
            s.state.as_str(),
            format_rfc3339(s.from)
        );
    }
    let _ = write!(b, "</svg>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            esc("<a href=\"x\">&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;"
        );
    }
}
