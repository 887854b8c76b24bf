//! The two text exposition formats of `/metrics` and the choice between them.
//!
//! `prometheus-client` writes OpenMetrics 1.0 text. Scrapers that ask for it in their `Accept`
//! header (Prometheus does, first) get it as is; everything else (curl, older scrapers,
//! parsers of the Prometheus text format) gets the Prometheus text format 0.0.4, converted
//! from it by [`to_prometheus_text`]. In 0.0.4 a counter's `# HELP`/`# TYPE` name the sample
//! with its `_total` suffix, there is no `# UNIT` and no `# EOF`, and only the types counter,
//! gauge, histogram, summary and untyped exist. Without the conversion a 0.0.4 parser reads
//! every counter as an untyped metric.
//!
//! Hand-written: `prometheus-client` has no 0.0.4 encoder, and the conversion is line-based
//! (sample lines are identical in both formats for what this server exports: no exemplars,
//! no `_created` samples).

/// Content type of OpenMetrics text.
pub(crate) const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of the Prometheus text format 0.0.4.
pub(crate) const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// An exposition format of `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// OpenMetrics 1.0 text.
    OpenMetrics,
    /// The Prometheus text format 0.0.4.
    Prometheus,
}

impl Format {
    /// Returns the `Content-Type` of a response in this format.
    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
            Format::Prometheus => PROMETHEUS_CONTENT_TYPE,
        }
    }
}

/// Chooses the format for an `Accept` header: OpenMetrics when the client accepts
/// `application/openmetrics-text` with a quality at least that of any other type it accepts,
/// the Prometheus text format otherwise (also without a header).
pub(crate) fn negotiate(accept: Option<&str>) -> Format {
    let Some(accept) = accept else {
        return Format::Prometheus;
    };
    let mut openmetrics: Option<f32> = None;
    let mut other: Option<f32> = None;
    for item in accept.split(',') {
        let mut parts = item.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| {
                let (k, v) = p.split_once('=')?;
                k.trim()
                    .eq_ignore_ascii_case("q")
                    .then(|| v.trim().parse::<f32>().ok())?
            })
            .next()
            .unwrap_or(1.0);
        if q <= 0.0 || media.is_empty() {
            continue;
        }
        let slot = if media == "application/openmetrics-text" {
            &mut openmetrics
        } else {
            &mut other
        };
        *slot = Some(slot.map_or(q, |old: f32| old.max(q)));
    }
    match (openmetrics, other) {
        (Some(om), Some(o)) if om >= o => Format::OpenMetrics,
        (Some(_), None) => Format::OpenMetrics,
        _ => Format::Prometheus,
    }
}

/// Converts OpenMetrics text (as `prometheus-client` writes it) into the Prometheus text
/// format 0.0.4.
pub(crate) fn to_prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // `# HELP` precedes `# TYPE`, and a counter's name changes with its type: hold the HELP
    // line until the TYPE line of the same family is seen.
    let mut help: Option<(&str, &str)> = None;
    let flush = |out: &mut String, help: &mut Option<(&str, &str)>| {
        if let Some((name, text)) = help.take() {
            out.push_str(&format!("# HELP {name} {text}\n"));
        }
    };
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            flush(&mut out, &mut help);
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            help = Some((name, text));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let (name, kind) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "info" => (format!("{name}_info"), "gauge"),
                "gauge" | "histogram" | "summary" => (name.to_string(), kind),
                // gaugehistogram, stateset, unknown: no 0.0.4 equivalent.
                _ => (name.to_string(), "untyped"),
            };
            if let Some((help_name, text)) = help.take() {
                let help_name = if help_name == rest.split(' ').next().unwrap_or("") {
                    name.as_str()
                } else {
                    help_name
                };
                out.push_str(&format!("# HELP {help_name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
        } else if line == "# EOF" || line.starts_with("# UNIT ") {
            flush(&mut out, &mut help);
        } else {
            flush(&mut out, &mut help);
            out.push_str(line);
            out.push('\n');
        }
    }
    flush(&mut out, &mut help);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_accept_header_gets_openmetrics_and_the_rest_the_text_format() {
        // What Prometheus 2.x sends.
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                          version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(
            negotiate(Some("application/openmetrics-text")),
            Format::OpenMetrics
        );
        for text in [
            None,
            Some("*/*"),
            Some("text/plain"),
            Some("text/plain;version=0.0.4"),
            Some("text/plain;q=1, application/openmetrics-text;q=0.5"),
            Some("application/openmetrics-text;q=0, text/plain"),
            Some(""),
        ] {
            assert_eq!(negotiate(text), Format::Prometheus, "{text:?}");
        }
    }

    #[test]
    fn counters_take_their_total_name_and_eof_goes() {
        let om = "# HELP meridian_dns_queries DNS queries.\n\
                  # TYPE meridian_dns_queries counter\n\
                  meridian_dns_queries_total{rcode=\"NOERROR\"} 3\n\
                  # HELP meridian_target_up Up.\n\
                  # TYPE meridian_target_up gauge\n\
                  meridian_target_up{address=\"192.0.2.1\"} 1\n\
                  # HELP x_seconds A histogram.\n\
                  # TYPE x_seconds histogram\n\
                  # UNIT x_seconds seconds\n\
                  x_seconds_bucket{le=\"+Inf\"} 1\n\
                  x_seconds_sum 0.5\n\
                  x_seconds_count 1\n\
                  # HELP y Build.\n\
                  # TYPE y info\n\
                  y_info{v=\"1\"} 1\n\
                  # TYPE z stateset\n\
                  z{z=\"a\"} 1\n\
                  # EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP meridian_dns_queries_total DNS queries.\n\
             # TYPE meridian_dns_queries_total counter\n\
             meridian_dns_queries_total{rcode=\"NOERROR\"} 3\n\
             # HELP meridian_target_up Up.\n\
             # TYPE meridian_target_up gauge\n\
             meridian_target_up{address=\"192.0.2.1\"} 1\n\
             # HELP x_seconds A histogram.\n\
             # TYPE x_seconds histogram\n\
             x_seconds_bucket{le=\"+Inf\"} 1\n\
             x_seconds_sum 0.5\n\
             x_seconds_count 1\n\
             # HELP y_info Build.\n\
             # TYPE y_info gauge\n\
             y_info{v=\"1\"} 1\n\
             # TYPE z untyped\n\
             z{z=\"a\"} 1\n"
        );
    }
}
