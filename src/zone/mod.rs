//! Static records: RFC 1035 zone files, loaded and looked up.
//!
//! Owns parsing (hickory-proto's zone-file parser, with line numbers recovered for errors), the
//! per-zone checks an authoritative server makes at load time (SOA and NS at the apex, records
//! inside the origin, CNAME alone at its name), and lookups that tell an answer from a CNAME,
//! NODATA (including empty non-terminals), NXDOMAIN, a referral below a delegation, or a wildcard
//! match (RFC 4592). It does not build DNS messages: that is `crate::dns`.
//! Key types: [`Zones`], [`Zone`], [`Found`].

mod parse;

use std::collections::HashMap;
use std::path::Path;

use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};

use crate::config::{ConfigError, ZoneSpec};

/// One RRset of a node.
#[derive(Debug, Clone)]
struct RrSet {
    rtype: RecordType,
    records: Vec<Record>,
}

/// A name in a zone: its RRsets (none for an empty non-terminal or a dynamic-only name).
#[derive(Debug, Clone, Default)]
struct Node {
    rrsets: Vec<RrSet>,
}

impl Node {
    fn get(&self, rtype: RecordType) -> Option<&[Record]> {
        self.rrsets
            .iter()
            .find(|s| s.rtype == rtype)
            .map(|s| s.records.as_slice())
    }
}

/// What a lookup in one zone found.
#[derive(Debug)]
pub enum Found<'a> {
    /// The RRset asked for (owner names as in the zone, or the query name for a wildcard match).
    Records(Vec<Record>),
    /// The name holds a CNAME (and the query was not for CNAME).
    Cname(&'a Record),
    /// The name exists (possibly as an empty non-terminal) but has no RRset of that type.
    NoData,
    /// The name does not exist.
    NxDomain,
    /// The name is at or below a delegation: the NS RRset of the cut.
    Referral(&'a [Record]),
}

/// One loaded zone.
#[derive(Debug, Clone)]
pub struct Zone {
    origin: LowerName,
    nodes: HashMap<LowerName, Node>,
    /// Delegation points below the apex (names with NS that are not the apex).
    cuts: Vec<LowerName>,
    has_wildcards: bool,
}

impl Zone {
    /// Returns the zone's origin.
    pub fn origin(&self) -> &LowerName {
        &self.origin
    }

    /// Returns the SOA record of the apex.
    pub fn soa(&self) -> &Record {
        // Invariant: `parse::load_zone` refuses a zone without exactly one SOA at the apex.
        &self.nodes[&self.origin]
            .get(RecordType::SOA)
            .expect("zone has an SOA at its apex")[0]
    }

    /// Returns the TTL to use for the SOA in negative answers (RFC 2308 §3: min(TTL, MINIMUM)).
    pub fn negative_ttl(&self) -> u32 {
        let soa = self.soa();
        match &soa.data {
            RData::SOA(s) => soa.ttl.min(s.minimum),
            _ => soa.ttl,
        }
    }

    /// Returns the NS RRset of the apex.
    pub fn apex_ns(&self) -> &[Record] {
        self.nodes[&self.origin]
            .get(RecordType::NS)
            .unwrap_or_default()
    }

    /// Returns true when `name` exists in the zone (with records, as an empty non-terminal, or
    /// as a dynamic name).
    pub fn contains(&self, name: &LowerName) -> bool {
        self.nodes.contains_key(name)
    }

    /// Looks up `name` (inside this zone) for `rtype`.
    pub fn find(&self, name: &LowerName, rtype: RecordType) -> Found<'_> {
        if let Some(ns) = self.cut_for(name) {
            // Below or at a delegation point we are not authoritative (RFC 1034 §4.3.2),
            // except for a DS query at the cut itself, which belongs to the parent.
            if !(rtype == RecordType::DS && self.cuts.contains(name)) {
                return Found::Referral(ns);
            }
        }
        match self.nodes.get(name) {
            Some(node) => Self::from_node(node, rtype, None),
            None => self.wildcard(name, rtype),
        }
    }

    fn from_node<'a>(node: &'a Node, rtype: RecordType, owner: Option<&Name>) -> Found<'a> {
        if let Some(records) = node.get(rtype) {
            let mut out = records.to_vec();
            if let Some(owner) = owner {
                for r in &mut out {
                    r.name = owner.clone();
                }
            }
            return Found::Records(out);
        }
        if rtype != RecordType::CNAME
            && let Some(c) = node.get(RecordType::CNAME)
        {
            if owner.is_some() {
                // A wildcard CNAME is synthesised with the query name as owner; the caller
                // gets it as a record list so that it can chase the target.
                let mut r = c[0].clone();
                r.name = owner.cloned().unwrap_or_else(|| r.name.clone());
                return Found::Records(vec![r]);
            }
            return Found::Cname(&c[0]);
        }
        Found::NoData
    }

    /// RFC 4592: find the closest encloser and try `*.<closest encloser>`.
    fn wildcard(&self, name: &LowerName, rtype: RecordType) -> Found<'_> {
        if !self.has_wildcards {
            return Found::NxDomain;
        }
        let mut encloser = name.base_name();
        while self.origin.zone_of(&encloser) {
            if self.nodes.contains_key(&encloser) {
                let star = LowerName::new(
                    &Name::from(encloser.clone())
                        .prepend_label("*")
                        .unwrap_or_default(),
                );
                return match self.nodes.get(&star) {
                    Some(node) => {
                        let owner = Name::from(name.clone());
                        match Self::from_node(node, rtype, Some(&owner)) {
                            Found::Records(r)
                                if rtype != RecordType::CNAME
                                    && r.first()
                                        .is_some_and(|r| r.record_type() == RecordType::CNAME) =>
                            {
                                Found::Records(r)
                            }
                            other => other,
                        }
                    }
                    None => Found::NxDomain,
                };
            }
            if encloser.is_root() {
                break;
            }
            encloser = encloser.base_name();
        }
        Found::NxDomain
    }

    /// Returns the NS RRset of the delegation `name` is at or below, if any.
    fn cut_for(&self, name: &LowerName) -> Option<&[Record]> {
        self.cuts
            .iter()
            .find(|cut| cut.zone_of(name))
            .and_then(|cut| self.nodes.get(cut))
            .and_then(|n| n.get(RecordType::NS))
    }

    /// Returns A and AAAA records for `name` when the zone has them (glue and additional data).
    pub fn addresses(&self, name: &LowerName) -> impl Iterator<Item = &Record> {
        self.nodes.get(name).into_iter().flat_map(|n| {
            n.rrsets
                .iter()
                .filter(|s| matches!(s.rtype, RecordType::A | RecordType::AAAA))
                .flat_map(|s| s.records.iter())
        })
    }

    /// Returns true when the zone has static records of `rtype` at `name`.
    pub fn has_static(&self, name: &LowerName, rtype: RecordType) -> bool {
        self.nodes.get(name).is_some_and(|n| n.get(rtype).is_some())
    }
}

/// Every loaded zone.
#[derive(Debug, Clone, Default)]
pub struct Zones {
    /// Sorted with the longest origin first, so the first match is the closest zone.
    zones: Vec<Zone>,
}

impl Zones {
    /// Loads every zone file; `dynamic` are names answered by services (they exist in their zone
    /// even without static records). Returns every problem found.
    pub fn load(
        specs: &[ZoneSpec],
        dynamic: &[String],
        config_file: &Path,
    ) -> Result<Zones, Vec<ConfigError>> {
        let mut zones = Vec::new();
        let mut errors = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            match parse::load_zone(spec, i, config_file) {
                Ok(z) => zones.push(z),
                Err(mut e) => errors.append(&mut e),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut zones = Zones { zones };
        zones
            .zones
            .sort_by_key(|z| std::cmp::Reverse(z.origin.num_labels()));
        for name in dynamic {
            let Ok(n) = Name::from_ascii(name) else {
                continue;
            };
            let lower = LowerName::new(&n);
            if let Some(z) = zones.zones.iter_mut().find(|z| z.origin.zone_of(&lower)) {
                parse::insert_with_ancestors(z, &lower);
            }
        }
        Ok(zones)
    }

    /// Returns the zone `name` belongs to (the one with the longest matching origin).
    pub fn zone_for(&self, name: &LowerName) -> Option<&Zone> {
        self.zones.iter().find(|z| z.origin.zone_of(name))
    }

    /// Returns every zone.
    pub fn iter(&self) -> impl Iterator<Item = &Zone> {
        self.zones.iter()
    }
}

impl Zone {
    /// RFC 8482: a minimal answer to ANY: one RRset of the name (the first in type order), or
    /// `None` when the name has none.
    pub fn find_any(&self, name: &LowerName) -> Option<&[Record]> {
        let node = self.nodes.get(name)?;
        node.rrsets
            .iter()
            .min_by_key(|s| u16::from(s.rtype))
            .map(|s| s.records.as_slice())
    }
}
