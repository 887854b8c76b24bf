//! Zone-file loading: hickory-proto's parser plus what it does not give us — line numbers for
//! errors, and the load-time checks of an authoritative server.
//!
//! The parser reports no positions, so the file is split into entries (a record may span lines
//! inside parentheses) and, when the whole file fails, the first failing entry is found by
//! bisecting over entry prefixes. That entry is reported with its line and left out, and the
//! search repeats, so that `meridian check` lists every bad entry at once (up to a bound).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use hickory_proto::dnssec::rdata::DNSSECRData;
use hickory_proto::rr::RecordSet;
use hickory_proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordType, RrKey};
use hickory_proto::serialize::txt::Parser;

use super::{Node, RrSet, Zone};
use crate::config::{ConfigError, ZoneSpec};

/// How many bad entries one zone file reports before giving up.
const MAX_ERRORS_PER_FILE: usize = 20;

/// One logical entry of a zone file: a directive or a record, possibly several lines long.
#[derive(Debug, Clone)]
struct Entry {
    /// 1-based line where the entry starts.
    line: usize,
    text: String,
}

/// Splits zone-file text into entries, tracking parentheses outside quotes and comments.
fn split_entries(text: &str) -> Vec<Entry> {
    let mut entries = Vec::new();
    let mut current = String::new();
    let mut start = 0;
    let mut depth = 0i32;
    for (i, line) in text.lines().enumerate() {
        if current.is_empty() {
            start = i + 1;
        }
        let mut in_quote = false;
        let mut escaped = false;
        for c in line.chars() {
            if escaped {
                escaped = false;
                continue;
            }
            match c {
                '\\' => escaped = true,
                '"' => in_quote = !in_quote,
                ';' if !in_quote => break,
                '(' if !in_quote => depth += 1,
                ')' if !in_quote => depth -= 1,
                _ => {}
            }
        }
        current.push_str(line);
        current.push('\n');
        if depth <= 0 {
            depth = 0;
            entries.push(Entry {
                line: start,
                text: std::mem::take(&mut current),
            });
        }
    }
    if !current.is_empty() {
        entries.push(Entry {
            line: start,
            text: current,
        });
    }
    entries
}

type Parsed = (Name, BTreeMap<RrKey, RecordSet>);

fn parse_entries(entries: &[&Entry], spec: &ZoneSpec, origin: &Name) -> Result<Parsed, String> {
    let text: String = entries.iter().map(|e| e.text.as_str()).collect();
    Parser::new(text, Some(spec.file.clone()), Some(origin.clone()))
        .parse()
        .map_err(|e| e.to_string())
}

/// Returns the index (into `entries`) of the first entry for which `bad(prefix)` turns true,
/// assuming `bad` is monotonic over prefixes and true for the whole list.
fn first_bad(entries: &[&Entry], mut bad: impl FnMut(&[&Entry]) -> bool) -> usize {
    let (mut lo, mut hi) = (0, entries.len()); // bad(entries[..hi]) holds; bad(entries[..lo]) does not
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if bad(&entries[..mid]) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    hi - 1
}

/// Loads and checks one zone.
pub(super) fn load_zone(
    spec: &ZoneSpec,
    index: usize,
    config_file: &Path,
) -> Result<Zone, Vec<ConfigError>> {
    let key = format!("zone[{index}]");
    let text = std::fs::read_to_string(&spec.file).map_err(|e| {
        vec![ConfigError::new(
            config_file,
            format!("{key}.file"),
            format!("cannot read zone file {}: {e}", spec.file.display()),
        )]
    })?;
    let origin = Name::from_ascii(&spec.origin).map_err(|e| {
        vec![ConfigError::new(
            config_file,
            format!("{key}.origin"),
            format!("invalid origin: {e}"),
        )]
    })?;
    let file = spec.file.as_path();
    let zerr = |line: usize, msg: String| {
        ConfigError::new(file, format!("zone {}", spec.origin), msg).at_line(line)
    };

    let entries = split_entries(&text);
    let mut kept: Vec<&Entry> = entries.iter().collect();
    let mut errors = Vec::new();
    let records = loop {
        match parse_entries(&kept, spec, &origin) {
            Ok((_, records)) => break records,
            Err(_) if errors.len() >= MAX_ERRORS_PER_FILE => return Err(errors),
            Err(_) => {
                let i = first_bad(&kept, |p| parse_entries(p, spec, &origin).is_err());
                let msg = parse_entries(&kept[..=i], spec, &origin)
                    .err()
                    .unwrap_or_else(|| "syntax error".to_string());
                errors.push(zerr(kept[i].line, format!("syntax error: {msg}")));
                kept.remove(i);
            }
        }
    };
    if !errors.is_empty() {
        return Err(errors);
    }

    let lower_origin = LowerName::new(&origin);
    // Records outside the origin: find each one's line the same way. The file is parsed again
    // only when the first parse found such a record (issue 18: a second parse of every zone
    // doubled the load time of a 100,000-record zone).
    let outside = |records: &BTreeMap<RrKey, RecordSet>| {
        records.keys().any(|k| !lower_origin.zone_of(k.name()))
    };
    let mut any_outside = outside(&records);
    while any_outside && errors.len() < MAX_ERRORS_PER_FILE {
        let i = first_bad(&kept, |p| outside(&records_of(p, spec, &origin)));
        let name = records_of(&kept[..=i], spec, &origin)
            .keys()
            .find(|k| !lower_origin.zone_of(k.name()))
            .map(|k| k.name().to_string())
            .unwrap_or_default();
        errors.push(zerr(
            kept[i].line,
            format!("record {name} is outside the zone's origin {}", spec.origin),
        ));
        kept.remove(i);
        any_outside = outside(&records_of(&kept, spec, &origin));
    }

    let mut nodes: HashMap<LowerName, Node> = HashMap::new();
    for (key, set) in records {
        let name = key.name().clone();
        let records: Box<[_]> = set.records_without_rrsigs().cloned().collect();
        if records.iter().any(|r| r.dns_class != DNSClass::IN) {
            errors.push(ConfigError::new(
                file,
                format!("zone {}", spec.origin),
                format!("{name}: only class IN is served"),
            ));
        }
        nodes.entry(name).or_default().rrsets.push(RrSet {
            rtype: set.record_type(),
            records,
        });
    }

    for node in nodes.values_mut() {
        node.rrsets.shrink_to_fit();
    }

    // Load-time checks, as BIND's named-checkzone makes them.
    let apex = nodes.get(&lower_origin);
    let soa_count = apex
        .and_then(|n| n.get(RecordType::SOA))
        .map_or(0, <[_]>::len);
    if soa_count != 1 {
        errors.push(ConfigError::new(
            file,
            format!("zone {}", spec.origin),
            format!("the apex must have exactly one SOA record (found {soa_count})"),
        ));
    }
    if apex.and_then(|n| n.get(RecordType::NS)).is_none() {
        errors.push(ConfigError::new(
            file,
            format!("zone {}", spec.origin),
            "the apex has no NS records",
        ));
    }
    for (name, node) in &nodes {
        if node.get(RecordType::SOA).is_some() && *name != lower_origin {
            errors.push(ConfigError::new(
                file,
                format!("zone {}", spec.origin),
                format!("{name}: SOA is only allowed at the apex"),
            ));
        }
        if node.get(RecordType::CNAME).is_some() && node.rrsets.len() > 1 {
            errors.push(ConfigError::new(
                file,
                format!("zone {}", spec.origin),
                format!("{name}: a CNAME cannot coexist with other records (RFC 1034 §3.6.2)"),
            ));
        }
        let problems = node
            .get(RecordType::DS)
            .map(|ds| ds_problems(name, &lower_origin, &nodes, ds))
            .unwrap_or_default();
        if !problems.is_empty() {
            // The line of the first DS at the name, found as for records outside the origin
            // (only when something is wrong: it parses prefixes of the file again).
            let has_ds = |p: &[&Entry]| {
                let key = RrKey::new(name.clone(), RecordType::DS);
                records_of(p, spec, &origin).contains_key(&key)
            };
            let line = kept[first_bad(&kept, has_ds)].line;
            for msg in problems {
                errors.push(
                    ConfigError::new(file, format!("zone {}", spec.origin), msg).at_line(line),
                );
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }

    let cuts: Vec<LowerName> = nodes
        .iter()
        .filter(|(n, node)| **n != lower_origin && node.get(RecordType::NS).is_some())
        .map(|(n, _)| n.clone())
        .collect();
    let has_wildcards = nodes.keys().any(LowerName::is_wildcard);
    let mut zone = Zone {
        origin: lower_origin,
        nodes,
        cuts,
        has_wildcards,
        signer: None,
    };
    let names: Vec<LowerName> = zone.nodes.keys().cloned().collect();
    for n in &names {
        insert_with_ancestors(&mut zone, n);
    }
    Ok(zone)
}

/// Returns what is wrong with the DS RRset `ds` at `name` (RFC 4035 §2.4: a DS belongs to
/// the parent side of a delegation point, never to the apex nor to a name that is not
/// delegated; RFC 4034 §5.1 with RFC 4509 and RFC 6605: the digest length follows its type).
fn ds_problems(
    name: &LowerName,
    origin: &LowerName,
    nodes: &HashMap<LowerName, Node>,
    ds: &[Record],
) -> Vec<String> {
    let mut out = Vec::new();
    let is_cut = |n: &LowerName| {
        n != origin
            && nodes
                .get(n)
                .is_some_and(|x| x.get(RecordType::NS).is_some())
    };
    if name == origin {
        out.push(format!(
            "{name}: DS at the apex belongs in the parent zone (RFC 4035 §2.4); publish the key \
             with `meridian dnssec ds` there"
        ));
        return out;
    }
    if !is_cut(name) {
        out.push(format!(
            "{name}: DS is only allowed at a delegation point (a name with NS records below the \
             apex), RFC 4035 §2.4"
        ));
        return out;
    }
    let mut above = name.base_name();
    while above != *origin && origin.zone_of(&above) {
        if is_cut(&above) {
            out.push(format!(
                "{name}: DS below the delegation {above} is not this zone's data"
            ));
            return out;
        }
        above = above.base_name();
    }
    for r in ds {
        let RData::DNSSEC(DNSSECRData::DS(d)) = &r.data else {
            continue;
        };
        let expected = match u8::from(d.digest_type()) {
            1 => 20,
            2 => 32,
            4 => 48,
            t => {
                out.push(format!(
                    "{name}: DS {} has digest type {t}; supported are 1 (SHA-1), 2 (SHA-256) \
                     and 4 (SHA-384)",
                    d.key_tag()
                ));
                continue;
            }
        };
        if d.digest().len() != expected {
            out.push(format!(
                "{name}: DS {} digest is {} bytes; digest type {} needs {expected} ({} hex \
                 digits)",
                d.key_tag(),
                d.digest().len(),
                u8::from(d.digest_type()),
                expected * 2
            ));
        }
    }
    out
}

fn records_of(entries: &[&Entry], spec: &ZoneSpec, origin: &Name) -> BTreeMap<RrKey, RecordSet> {
    parse_entries(entries, spec, origin)
        .map(|(_, r)| r)
        .unwrap_or_default()
}

/// Makes `name` and every ancestor up to the origin exist (ancestors as empty non-terminals).
pub(super) fn insert_with_ancestors(zone: &mut Zone, name: &LowerName) {
    zone.nodes.entry(name.clone()).or_default();
    let mut n = name.clone();
    while n != zone.origin && !n.is_root() {
        n = n.base_name();
        zone.nodes.entry(n.clone()).or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_span_parenthesised_lines() {
        let text = "$TTL 300\n@ IN SOA ns1 host (\n 1 ; serial\n 2 3 4 5 )\nwww A 192.0.2.1\n";
        let e = split_entries(text);
        assert_eq!(e.len(), 3);
        assert_eq!(e[1].line, 2);
        assert_eq!(e[2].line, 5);
    }

    #[test]
    fn parentheses_in_quotes_and_comments_are_ignored() {
        let text = "a TXT \"(\" ; (\nb A 192.0.2.1\n";
        let e = split_entries(text);
        assert_eq!(e.len(), 2);
    }

    /// Loads `body` as the zone file of `example.net.` (after an SOA and NS at the apex).
    fn load(body: &str) -> Result<Zone, Vec<ConfigError>> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("z.zone");
        let head =
            "$ORIGIN example.net.\n$TTL 300\n@ SOA ns1 host 1 2 3 4 5\n@ NS ns1\nns1 A 192.0.2.1\n";
        std::fs::write(&file, format!("{head}{body}")).unwrap();
        let spec = ZoneSpec {
            origin: "example.net.".into(),
            file,
            dnssec: None,
        };
        load_zone(&spec, 0, Path::new("meridian.toml"))
    }

    const DIGEST: &str = "2BB183AF5F22588179A53B0A98631FAD1A292118D2E3AA7B3C5B7E1E4E0D3D6B";

    #[test]
    fn rfc4035_ds_at_a_delegation_is_kept_for_the_parent_side() {
        let zone = load(&format!(
            "sec NS ns.sec\nsec DS 12345 13 2 {DIGEST}\nsec DS 54321 13 2 ( {} {} )\n\
             ns.sec A 192.0.2.2\n",
            &DIGEST[..32],
            &DIGEST[32..]
        ))
        .expect("a DS at a delegation loads");
        let cut = LowerName::new(&Name::from_ascii("sec.example.net.").unwrap());
        let ds = zone.ds_at(&cut).expect("DS kept");
        assert_eq!(ds.len(), 2);
        // The NSEC bitmap at the cut lists NS and DS (RFC 4035 §2.3), nothing of the child's.
        let mut types = zone.types_at(&cut);
        types.sort_unstable();
        assert_eq!(types, [2, 43]);
        let apex = LowerName::new(&Name::from_ascii("example.net.").unwrap());
        assert!(zone.ds_at(&apex).is_none());
    }

    #[test]
    fn misplaced_or_malformed_ds_records_are_all_reported_at_once() {
        let errors = load(&format!(
            "@ DS 1 13 2 {DIGEST}\n\
             www A 192.0.2.3\nwww DS 2 13 2 {DIGEST}\n\
             sec NS ns.sec\nsec DS 3 13 2 {short}\nsec DS 4 13 1 {DIGEST}\n\
             sec DS 5 13 9 {DIGEST}\nx.sec DS 6 13 2 {DIGEST}\n",
            short = &DIGEST[..62],
        ))
        .expect_err("bad DS records are refused");
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        let all = text.join("\n");
        assert_eq!(errors.len(), 6, "{all}");
        for want in [
            "example.net.: DS at the apex belongs in the parent zone",
            "www.example.net.: DS is only allowed at a delegation point",
            "sec.example.net.: DS 3 digest is 31 bytes; digest type 2 needs 32",
            "sec.example.net.: DS 4 digest is 32 bytes; digest type 1 needs 20",
            "sec.example.net.: DS 5 has digest type 9",
            "x.sec.example.net.: DS is only allowed at a delegation point",
        ] {
            assert!(all.contains(want), "missing {want:?} in:\n{all}");
        }
        assert!(all.contains("z.zone"), "names the file: {all}");
        // Each names the line of the first DS at its name (the head takes five lines).
        assert!(all.contains("z.zone:6:"), "the apex DS on line 6: {all}");
        assert!(all.contains("z.zone:8:"), "www's DS on line 8: {all}");
        assert!(
            all.contains("z.zone:10:"),
            "sec's first DS on line 10: {all}"
        );
    }

    #[test]
    fn first_bad_finds_the_first_failing_prefix() {
        let entries: Vec<Entry> = (0..10)
            .map(|i| Entry {
                line: i,
                text: String::new(),
            })
            .collect();
        let refs: Vec<&Entry> = entries.iter().collect();
        assert_eq!(first_bad(&refs, |p| p.len() > 6), 6);
        assert_eq!(first_bad(&refs, |p| !p.is_empty()), 0);
        assert_eq!(first_bad(&refs, |p| p.len() == 10), 9);
    }
}
